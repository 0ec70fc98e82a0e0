"""A message as it arrives from the server: written to a new file in the storage's private
work area, hashed on the way, and flushed to the OS before anything else happens to it."""

from __future__ import annotations

import contextlib
import hashlib
import os

from prefect_pop3mail.tasks.pop3.storage.journal import HEAD_DIGEST_BYTES, head_digest
from prefect_pop3mail.tasks.pop3.storage.statedir import save_errors


class IncomingMessage:
    """A sink for one message as it arrives: written to a temp file, hashed on the way."""

    def __init__(self, path: str, mode: int):
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._file = os.fdopen(os.open(path, flags, mode), "wb", buffering=256 * 1024)
        self._hash = hashlib.sha256()
        self._head = bytearray()  # the start of the message, until its header ends
        self.size = 0
        self._error: OSError | None = None

    def write(self, data: bytes) -> None:
        if self._error is not None:
            return  # the disk failed: drop the rest, but let the session read it to the end
        self._hash.update(data)
        if len(self._head) < HEAD_DIGEST_BYTES and not _header_ended(self._head):
            self._head += data[:HEAD_DIGEST_BYTES]
        try:
            self._file.write(data)
        except OSError as exc:
            self._error = exc
            return
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def head_digest(self) -> str:
        return head_digest(bytes(self._head))

    def finish(self) -> None:
        """Flush to the OS, so a crash of this process cannot lose it."""
        with save_errors(self.path):
            if self._error is not None:
                raise self._error
            self._file.close()

    def discard(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # a full disk fails the flush too; the file goes anyway
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _header_ended(head: bytes | bytearray) -> bool:
    return b"\n\n" in head or b"\n\r\n" in head
