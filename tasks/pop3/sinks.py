"""Where bytes go: the one home of the sink protocol, the null sink and the hashing writer.

The session writes a message into a sink as it arrives; the MIME parser writes decoded
parts into sinks; the layout writes files through ``FileWriter``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol

WRITE_BLOCK = 256 * 1024


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Discard:
    """A sink that drops everything (a skipped part, the rest of a refused message)."""

    def write(self, data: bytes, /) -> None:
        pass


DISCARD = _Discard()


class FileWriter:
    """A new file (never an existing one), written in large blocks, hashed as it goes.

    ``dir_fd``: the path is relative to that open directory (no symlink is followed).
    """

    def __init__(self, path: os.PathLike | str, mode: int, *, dir_fd: int | None = None):
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
        self._fd = os.open(path, flags, mode, dir_fd=dir_fd)
        self._buf = bytearray()
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> None:
        self._hash.update(data)
        self.size += len(data)
        self._buf += data
        if len(self._buf) >= WRITE_BLOCK:
            self._flush()

    def _flush(self) -> None:
        with memoryview(self._buf) as view:
            done = 0
            while done < len(view):
                done += os.write(self._fd, view[done:])
        self._buf.clear()

    def close(self) -> str:
        """Flush, close and return the SHA-256."""
        if self._fd >= 0:
            try:
                self._flush()
            finally:
                os.close(self._fd)
                self._fd = -1
        return self._hash.hexdigest()
