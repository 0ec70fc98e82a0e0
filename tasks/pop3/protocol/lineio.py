"""Line I/O under the POP3 session: status lines, and multi-line bodies streamed to a sink.

The reader keeps one receive buffer of its own instead of a ``makefile`` reader, for two
reasons: a body is copied in whole received blocks (one ``find`` per block instead of one
``readline`` per line), and the session can ask whether the server sent anything beyond a
reply, which matters before a TLS upgrade. Memory stays bounded by one block plus one
status line, so a 10 MB line (or one with no CRLF at all) never sits whole in memory and
never desynchronises the session the way poplib's 2,048-byte cap does.

Time is bounded as well as memory. Each read waits at most the connection's timeout, and each
reply as a whole, from :meth:`LineReader.begin` on, must arrive within that timeout plus one
second per :data:`MIN_TRANSFER_RATE` bytes received: a server that trickles a byte now and
then cannot hold a run for hours, while a large message on a slow link still gets the time
its size needs.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from time import monotonic

from prefect_pop3mail.tasks.pop3.errors import (
    TIMEOUT_HINT,
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
#: The slowest transfer we wait for, in bytes per second, once a reply's first ``timeout``
#: seconds are spent: 100 kB/s (1 MB per 10 s, 0.8 Mbit/s). A 100 MB message may take
#: timeout + 1,000 s; a server sending below this rate is cut off as stalled.
MIN_TRANSFER_RATE = 100_000
#: Caps on the multi-line replies kept in memory. A real CAPA is a few hundred bytes; a
#: listing line is at most ~85 bytes (a 70-character UIDL), so 32 MiB holds the listing of
#: some 400,000 messages (over a million with Dovecot's 16-character UIDLs).
MAX_CAPA_BYTES = 64 * 1024
MAX_LISTING_BYTES = 32 * 1024 * 1024
#: How many bytes of a bad reply an error quotes.
QUOTE = 80


def _as_is(data: bytes) -> bytes:
    return data


class LineReader:
    """Reads POP3 lines from a connected socket (plain or TLS)."""

    def __init__(self, sock: socket.socket, timeout: float | None = None, *,
                 min_rate: float = MIN_TRANSFER_RATE,
                 redact: Callable[[bytes], bytes] = _as_is, peer: str = "the server"):
        """``timeout``: the socket's own per-read timeout, which is also each reply's grace
        before ``min_rate`` applies (None: no per-reply deadline). ``redact`` removes
        secrets from server bytes quoted in errors; ``peer`` (host:port) names the server
        in them."""
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._timeout = timeout
        self._min_rate = min_rate
        self.redact = redact
        self.peer = peer
        self._command = "the command"
        self._started: float | None = None
        self._received = 0

    def begin(self, command: str) -> None:
        """Start the clock for the reply to ``command`` (its status line and any body)."""
        self._command = command
        self._started = monotonic()
        self._received = 0

    def quote(self, data: bytes) -> bytes:
        """A short, redacted excerpt of server bytes for an error (redacted before it is
        cut, so a secret across the cut cannot leave a prefix behind)."""
        return self.redact(bytes(data))[:QUOTE]

    def close(self) -> None:
        self._buf, self._pos = b"", 0

    @property
    def buffered(self) -> int:
        """Bytes received but not consumed yet."""
        return len(self._buf) - self._pos

    def _fill(self) -> bool:
        """Receive one more block, keeping the unconsumed rest; False at end of stream."""
        wait = self._wait_at_most()
        try:
            data = self._sock.recv(CHUNK)
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            if wait is not None and self._received:
                raise self._too_slow() from exc
            raise self._silent() from exc
        except OSError as exc:
            raise POP3ConnectionError(f"connection lost: {exc.strerror or exc}") from exc
        finally:
            if wait is not None:  # sends and later replies get the whole timeout again
                self._sock.settimeout(self._timeout)
        if not data:
            return False
        self._received += len(data)
        rest = self._buf[self._pos:]
        self._buf = rest + data if rest else data
        self._pos = 0
        return True

    def _wait_at_most(self) -> float | None:
        """When the reply's deadline comes before the read timeout would, cut the socket's
        timeout to it and return it; None when the read timeout comes first."""
        if self._timeout is None or self._started is None:
            return None
        allowed = self._timeout + self._received / self._min_rate
        remaining = self._started + allowed - monotonic()
        if remaining <= 0:
            raise self._too_slow()
        if remaining >= self._timeout:
            return None
        self._sock.settimeout(remaining)
        return remaining

    def _silent(self) -> POP3TimeoutError:
        """Nothing at all within the timeout: which server, which phase, which setting."""
        what = ("sent no greeting" if self._command == "greeting"
                else f"did not answer {self._command}")
        within = f" within {self._timeout:g} s" if self._timeout else ""
        return POP3TimeoutError(f"{self.peer} {what}{within} (nothing received); {TIMEOUT_HINT}")

    def _too_slow(self) -> POP3TimeoutError:
        assert self._started is not None
        return POP3TimeoutError(
            f"the reply to {self._command} is too slow: {self.peer} sent {self._received} "
            f"bytes in {monotonic() - self._started:.1f} s, below the minimum of "
            f"{self._min_rate / 1000:g} kB/s after the first {self._timeout:g} s; "
            + TIMEOUT_HINT
        )

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
                    raise self._too_long(line)
                return line
            self._fill_line()

    def _fill_line(self) -> None:
        """With no line ending buffered: receive more, unless the line is over the cap."""
        if self.buffered > MAX_STATUS_LINE + 1:
            raise POP3ProtocolError(
                f"status line too long or unterminated (reply to {self._command})",
                self.quote(self._buf[self._pos:]),
            )
        if not self._fill():
            where = " in the middle of a line" if self.buffered else ""
            raise POP3ConnectionError(f"the server closed the connection{where}")

    def _too_long(self, line: bytes) -> POP3ProtocolError:
        return POP3ProtocolError(f"status line too long (reply to {self._command})",
                                 self.quote(line))

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

    def body_lines(self, max_bytes: int = MAX_LISTING_BYTES) -> list[bytes]:
        """A short multi-line reply (CAPA, LIST, UIDL) as a list of lines, at most
        ``max_bytes`` long on the wire (beyond, POP3ProtocolError names the command).

        The complete lines of each received block are split at once, instead of one
        :meth:`status_line` per line (a 100,000-line UIDL listing, bench scale): same
        lines, same errors, same reads from the socket as reading line by line."""
        lines: list[bytes] = []
        size = 0
        while True:
            buf, pos = self._buf, self._pos
            start, end = _terminator(buf, pos)
            if start < 0:  # no terminator yet: take the complete lines
                start = end = max(buf.rfind(b"\n", pos) + 1, pos)
            if start > pos:
                block = buf[pos:start]
                batch = _split_lines(block)
                size = self._add_size(batch, size, max_bytes)
                if block.startswith(b".") or b"\n." in block:  # byte-stuffed lines
                    batch = [line[1:] if line[:1] == b"." else line for line in batch]
                lines += batch
            self._pos = end
            if end > start:
                return lines
            self._fill_line()

    def _add_size(self, batch: list[bytes], size: int, max_bytes: int) -> int:
        """The reply's wire size with ``batch``, checked against ``max_bytes`` and each
        line against the status line cap; the first line over either raises, as when
        read one by one."""
        total = size + sum(map(len, batch)) + 2 * len(batch)
        if total <= max_bytes and max(map(len, batch)) <= MAX_STATUS_LINE:
            return total
        for line in batch:
            self._pos = self._buf.find(b"\n", self._pos) + 1  # consumed, as status_line does
            if len(line) > MAX_STATUS_LINE:
                raise self._too_long(line)
            size += len(line) + 2
            if size > max_bytes:
                raise POP3ProtocolError(
                    f"the reply to {self._command} is longer than its cap of {max_bytes} bytes"
                )
        return size


def _terminator(buf: bytes, pos: int) -> tuple[int, int]:
    """Where the first lone-dot line at or after ``pos`` (a line start) begins, and where
    it ends past its CRLF or bare LF; (-1, -1) when none is buffered yet."""
    if buf.startswith(b".\r\n", pos):
        return pos, pos + 3
    if buf.startswith(b".\n", pos):
        return pos, pos + 2
    crlf, lf = buf.find(b"\n.\r\n", pos), buf.find(b"\n.\n", pos)
    if lf >= 0 and not 0 <= crlf < lf:
        return lf + 1, lf + 3
    if crlf >= 0:
        return crlf + 1, crlf + 4
    return -1, -1


def _split_lines(block: bytes) -> list[bytes]:
    """The lines of ``block`` (which ends with LF) without their CRLF or bare LF."""
    if b"\r" not in block:
        return block[:-1].split(b"\n")
    if block.count(b"\r\n") == block.count(b"\n"):
        return block[:-2].split(b"\r\n")
    return [line[:-1] if line.endswith(b"\r") else line for line in block[:-1].split(b"\n")]
