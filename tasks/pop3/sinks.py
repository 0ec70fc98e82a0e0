"""Where bytes go: the one home of the sink protocol, the null sink, the hashing writer and
the spool.

The session writes a message into a sink as it arrives; the MIME parser writes decoded
parts into sinks; the layout writes files through ``FileWriter``; bytes that must wait
(a body until its charset is known, uuencode until its end line) wait in a ``Spool``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO, Protocol

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


class Spool:
    """Bytes kept in memory up to ``limit``, then in an unnamed temporary file in
    ``directory`` (the system's when None). They can be read more than once."""

    def __init__(self, directory: str | os.PathLike | None, limit: int = 1 << 20):
        self._directory = directory
        self._limit = limit
        self._memory = bytearray()
        self._file: BinaryIO | None = None

    def write(self, data: bytes, /) -> None:
        if self._file is not None:
            self._file.write(data)
            return
        self._memory += data
        if len(self._memory) > self._limit:
            self._file = tempfile.TemporaryFile(dir=self._directory)
            self._file.write(self._memory)
            self._memory = bytearray()

    def __iter__(self) -> Iterator[bytes]:
        if self._file is None:
            if self._memory:
                yield bytes(self._memory)
            return
        self._file.seek(0)
        while chunk := self._file.read(WRITE_BLOCK):
            yield chunk

    def move_to(self, sink: Sink) -> None:
        """Hand every byte to ``sink``, then let go of them."""
        for chunk in self:
            sink.write(chunk)
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._memory = bytearray()
