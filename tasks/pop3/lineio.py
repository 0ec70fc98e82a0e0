"""Line I/O under the POP3 session: status lines, and multi-line bodies streamed to a sink.

Bodies are read in bounded chunks, so a 10 MB line (or one with no CRLF at all) never
sits whole in memory and never desynchronises the session the way poplib's
2,048-byte cap does.
"""

from __future__ import annotations

import socket
from typing import BinaryIO, Protocol

from .errors import POP3ConnectionError, POP3ProtocolError, POP3TimeoutError

#: RFC 2449 allows 512 octets for a status line; real servers stay far below this.
MAX_STATUS_LINE = 8192
#: Body lines are copied in pieces of at most this size.
CHUNK = 64 * 1024


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class LineReader:
    """Reads POP3 lines from a connected socket."""

    def __init__(self, sock: socket.socket):
        self._file: BinaryIO = sock.makefile("rb", buffering=CHUNK)

    def close(self) -> None:
        self._file.close()

    def _readline(self, limit: int) -> bytes:
        try:
            return self._file.readline(limit)
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            raise POP3TimeoutError("the server did not answer in time") from exc
        except OSError as exc:
            raise POP3ConnectionError(f"connection lost: {exc.strerror or exc}") from exc

    def status_line(self) -> bytes:
        """One status or continuation line, without its line ending."""
        line = self._readline(MAX_STATUS_LINE + 1)
        if not line:
            raise POP3ConnectionError("the server closed the connection")
        if not line.endswith(b"\n"):
            raise POP3ProtocolError("status line too long or unterminated", line[:80])
        return line.rstrip(b"\r\n")

    def copy_body(self, sink: Sink, limit: int | None = None) -> int:
        """Copy a dot-stuffed multi-line body to ``sink``; return the bytes written.

        Removes the byte-stuffing dot and stops at the lone-dot terminator (CRLF or bare LF).
        ``limit`` bounds the body so an endless message cannot fill the disk.
        """
        readline = self._readline
        write = sink.write
        at_line_start = True
        total = 0
        while True:
            chunk = readline(CHUNK)
            if not chunk:
                raise POP3ConnectionError("the connection closed in the middle of a message")
            if at_line_start and chunk[:1] == b".":
                if chunk in (b".\r\n", b".\n"):
                    return total
                chunk = chunk[1:]
            at_line_start = chunk[-1:] == b"\n"
            total += len(chunk)
            if limit is not None and total > limit:
                raise POP3ProtocolError(f"message longer than the limit of {limit} bytes")
            write(chunk)

    def body_lines(self, max_lines: int = 1_000_000) -> list[bytes]:
        """A short multi-line reply (CAPA, LIST, UIDL) as a list of lines."""
        lines: list[bytes] = []
        while True:
            line = self.status_line()
            if line == b".":
                return lines
            if line.startswith(b"."):
                line = line[1:]
            lines.append(line)
            if len(lines) > max_lines:
                raise POP3ProtocolError("multi-line reply is endless")
