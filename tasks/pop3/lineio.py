"""Line I/O under the POP3 session: status lines, and multi-line bodies streamed to a sink.

The reader keeps one receive buffer of its own instead of a ``makefile`` reader, for two
reasons: a body is copied in whole received blocks (one ``find`` per block instead of one
``readline`` per line), and the session can ask whether the server sent anything beyond a
reply, which matters before a TLS upgrade. Memory stays bounded by one block plus one
status line, so a 10 MB line (or one with no CRLF at all) never sits whole in memory and
never desynchronises the session the way poplib's 2,048-byte cap does.
"""

from __future__ import annotations

import socket

from prefect_pop3mail.tasks.pop3.errors import (
    MessageTooLargeError,
    POP3ConnectionError,
    POP3ProtocolError,
    POP3TimeoutError,
)
from prefect_pop3mail.tasks.pop3.sinks import Sink

#: RFC 2449 allows 512 octets for a status line; real servers stay far below this.
MAX_STATUS_LINE = 8192
#: Bytes asked of the socket per receive; a TLS socket returns at most one record (16 KiB).
CHUNK = 64 * 1024


class LineReader:
    """Reads POP3 lines from a connected socket (plain or TLS)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def close(self) -> None:
        self._buf, self._pos = b"", 0

    @property
    def buffered(self) -> int:
        """Bytes received but not consumed yet."""
        return len(self._buf) - self._pos

    def _fill(self) -> bool:
        """Receive one more block, keeping the unconsumed rest; False at end of stream."""
        try:
            data = self._sock.recv(CHUNK)
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            raise POP3TimeoutError("the server did not answer in time") from exc
        except OSError as exc:
            raise POP3ConnectionError(f"connection lost: {exc.strerror or exc}") from exc
        if not data:
            return False
        rest = self._buf[self._pos:]
        self._buf = rest + data if rest else data
        self._pos = 0
        return True

    def status_line(self) -> bytes:
        """One status or continuation line, without its line ending."""
        while True:
            end = self._buf.find(b"\n", self._pos)
            if end >= 0:
                line = self._buf[self._pos:end]
                self._pos = end + 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) > MAX_STATUS_LINE:
                    raise POP3ProtocolError("status line too long", line[:80])
                return line
            if self.buffered > MAX_STATUS_LINE + 1:
                raise POP3ProtocolError(
                    "status line too long or unterminated", self._buf[self._pos:self._pos + 80]
                )
            if not self._fill():
                where = " in the middle of a line" if self.buffered else ""
                raise POP3ConnectionError(f"the server closed the connection{where}")

    def copy_body(self, sink: Sink, limit: int | None = None) -> int:
        """Copy a dot-stuffed multi-line body to ``sink``; return the bytes written.

        Removes the byte-stuffing dot and stops at the lone-dot terminator (CRLF or bare LF).
        ``limit`` bounds the body so an endless message cannot fill the disk; past it,
        :class:`MessageTooLargeError` is raised with the rest of the body unread.
        """
        write = sink.write
        total = 0
        at_line_start = True
        while True:
            if self._pos >= len(self._buf) and not self._fill():
                raise POP3ConnectionError("the connection closed in the middle of a message")
            if at_line_start and self._buf[self._pos] == 0x2E:  # "."
                ending = self._after_dot()
                if ending:
                    self._pos += 1 + ending  # the terminator: ".\r\n" or ".\n"
                    return total
                self._pos += 1  # drop the byte-stuffing dot
            buf, pos = self._buf, self._pos
            stop = buf.find(b"\n.", pos)
            if stop < 0:
                end = len(buf)
                at_line_start = buf.endswith(b"\n")
            else:
                end = stop + 1
                at_line_start = True
            total += end - pos
            if limit is not None and total > limit:
                raise MessageTooLargeError(f"message longer than the limit of {limit} bytes")
            if end > pos:
                write(buf if pos == 0 and end == len(buf) else buf[pos:end])
            self._pos = end

    def _after_dot(self) -> int:
        """With a dot at the start of a line: the length of the line ending right after it
        (2 for CRLF, 1 for LF), or 0 when the line goes on (a stuffed dot)."""
        while True:
            following = self._buf[self._pos + 1:self._pos + 3]
            if following == b"\r\n":
                return 2
            if following[:1] == b"\n":
                return 1
            if len(following) == 2 or following[:1] not in (b"", b"\r"):
                return 0
            if not self._fill():  # too few bytes to decide yet
                raise POP3ConnectionError("the connection closed in the middle of a message")

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
