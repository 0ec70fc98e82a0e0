"""The line layer on its own: status lines, and bodies copied block by block.

A socket here returns the bytes in the pieces the test chooses, because the hard cases sit at
block boundaries (a terminator split after its dot, a stuffed dot at the start of a block),
and a real connection does not cut where a test asks. Whole sessions run in
test_session_faults.py and test_session_dovecot.py.
"""

from __future__ import annotations

import io
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_pop3mail.tasks.pop3.errors import (
    MessageTooLargeError,
    POP3ConnectionError,
    POP3ProtocolError,
    POP3TimeoutError,
)
from prefect_pop3mail.tasks.pop3.protocol import lineio
from prefect_pop3mail.tasks.pop3.protocol.lineio import (
    CHUNK,
    MAX_STATUS_LINE,
    MIN_TRANSFER_RATE,
    LineReader,
)


class PiecewiseSocket:
    """recv() hands out the given pieces one by one, then end of stream."""

    def __init__(self, *pieces: bytes):
        self.pieces = list(pieces)

    def recv(self, size: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > size:
            self.pieces.insert(0, piece[size:])
            piece = piece[:size]
        return piece


class RecordingSink:
    def __init__(self):
        self.writes: list[int] = []
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.writes.append(len(data))
        self.data += data


def stuff(lines: list[bytes]) -> bytes:
    """What a server sends for these lines (each with its own line end)."""
    return b"".join(b"." + line if line.startswith(b".") else line for line in lines)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    return [p for p in pieces if p]  # an empty recv() means the end of the stream


line_text = st.one_of(
    st.sampled_from([b"", b".", b"..", b".x", b"\r", b".\r", b"..\r", b"From x", b"\xff\xfe"]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
)
line_end = st.sampled_from([b"\r\n", b"\n"])
lines = st.lists(st.tuples(line_text, line_end).map(lambda t: t[0] + t[1]), max_size=30)


@settings(max_examples=300, deadline=None)
@given(lines=lines, terminator=line_end, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_body_round_trips_at_any_block_boundary(lines, terminator, cuts):
    wire = stuff(lines) + b"." + terminator + b"+OK next\r\n"
    reader = LineReader(PiecewiseSocket(*split_at(wire, cuts)))
    sink = io.BytesIO()
    assert reader.copy_body(sink) == len(b"".join(lines))
    assert sink.getvalue() == b"".join(lines)
    assert reader.status_line() == b"+OK next"  # stopped exactly after the terminator


def test_status_lines_accept_crlf_and_bare_lf():
    reader = LineReader(PiecewiseSocket(b"+OK a\r", b"\n+OK b\n-ERR c\r\n"))
    assert [reader.status_line() for _ in range(3)] == [b"+OK a", b"+OK b", b"-ERR c"]
    with pytest.raises(POP3ConnectionError, match="closed"):
        reader.status_line()


def test_endless_status_line_is_refused_after_a_bounded_read():
    endless = PiecewiseSocket(*[b"+OK " + b"x" * CHUNK] * 1000)
    with pytest.raises(POP3ProtocolError, match="too long"):
        LineReader(endless).status_line()
    assert len(endless.pieces) > 990  # gave up after a few blocks, not after 64 MB


def test_status_line_just_under_the_cap_is_fine():
    line = b"+OK " + b"y" * (MAX_STATUS_LINE - 4)
    assert LineReader(PiecewiseSocket(line + b"\r\n")).status_line() == line


def test_ten_megabyte_line_without_crlf_streams_in_bounded_pieces():
    ten_mb = b"z" * (10 * 1024 * 1024)
    sink = RecordingSink()
    reader = LineReader(PiecewiseSocket(*split_at(ten_mb, list(range(0, len(ten_mb), 1000003)))))
    with pytest.raises(POP3ConnectionError, match="middle of a message"):
        reader.copy_body(sink)
    assert bytes(sink.data) == ten_mb
    assert max(sink.writes) <= CHUNK


def test_ten_megabyte_line_then_terminator_is_one_message():
    ten_mb = b"z" * (10 * 1024 * 1024)
    sink = RecordingSink()
    reader = LineReader(PiecewiseSocket(ten_mb, b"\r\n.\r\n"))
    assert reader.copy_body(sink) == len(ten_mb) + 2
    assert bytes(sink.data) == ten_mb + b"\r\n"


def test_limit_stops_an_endless_message():
    endless = PiecewiseSocket(*[b"line\r\n" * 1000] * 10_000)
    sink = RecordingSink()
    with pytest.raises(MessageTooLargeError, match="limit of 100000"):
        LineReader(endless).copy_body(sink, limit=100_000)
    assert len(sink.data) <= 100_000


def test_limit_allows_a_body_of_exactly_the_limit():
    body = b"a\r\n" * 10
    sink = io.BytesIO()
    assert LineReader(PiecewiseSocket(body + b".\r\n")).copy_body(sink, limit=len(body)) == 30


def test_connection_closed_right_after_a_dot_is_an_error():
    with pytest.raises(POP3ConnectionError):
        LineReader(PiecewiseSocket(b"body\r\n.")).copy_body(io.BytesIO())


def test_multi_line_reply_unstuffs_and_stops_at_the_dot():
    reader = LineReader(PiecewiseSocket(b"1 10\r\n..odd\r\n2 20\n.\r\n+OK after\r\n"))
    assert reader.body_lines() == [b"1 10", b".odd", b"2 20"]
    assert reader.status_line() == b"+OK after"


def test_timeout_and_reset_become_pop3_errors():
    server, client = socket.socketpair()
    with server, client:
        client.settimeout(0.05)
        with pytest.raises(POP3TimeoutError):
            LineReader(client).status_line()
        server.close()
        with pytest.raises(POP3ConnectionError):
            LineReader(client).status_line()


def test_buffered_reports_what_arrived_beyond_the_line():
    reader = LineReader(PiecewiseSocket(b"+OK begin TLS\r\n+OK injected\r\n"))
    reader.status_line()
    assert reader.buffered == len(b"+OK injected\r\n")


# --- the per-reply deadline, on a fake clock ------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ClockedSocket:
    """Hands out ``piece`` forever, each recv taking ``seconds`` of ``clock``; a recv that
    the socket's timeout cuts short raises TimeoutError, as a real socket's would."""

    def __init__(self, clock: Clock, piece: bytes, seconds: float, timeout: float):
        self.clock, self.piece, self.seconds, self.timeout = clock, piece, seconds, timeout

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def recv(self, size: int) -> bytes:
        if self.seconds > self.timeout:
            self.clock.now += self.timeout
            raise TimeoutError
        self.clock.now += self.seconds
        return self.piece


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(lineio, "monotonic", fake)
    return fake


def test_a_body_faster_than_the_minimum_rate_is_never_cut(clock):
    piece = b"x" * 9998 + b"\r\n"
    rate = 2 * MIN_TRANSFER_RATE
    sock = ClockedSocket(clock, piece, len(piece) / rate, timeout=1)
    reader = LineReader(sock, 1)
    reader.begin("RETR")
    with pytest.raises(MessageTooLargeError):  # the limit, not the clock, ends it
        reader.copy_body(io.BytesIO(), limit=20 * 1024 * 1024)
    assert clock.now > 100  # a long transfer, at a rate above the floor: allowed


@pytest.mark.parametrize("slowdown", [2, 10, 1000])
def test_a_body_slower_than_the_minimum_rate_is_cut_at_its_deadline(clock, slowdown):
    piece = b"y" * 98 + b"\r\n"
    rate = MIN_TRANSFER_RATE / slowdown
    sock = ClockedSocket(clock, piece, len(piece) / rate, timeout=1)
    reader = LineReader(sock, 1)
    reader.begin("RETR")
    with pytest.raises(POP3TimeoutError, match="reply to RETR is too slow") as caught:
        reader.copy_body(io.BytesIO())
    received = reader._received
    # Cut once the time passed the grace plus what the bytes received would need at the floor.
    assert clock.now == pytest.approx(1 + received / MIN_TRANSFER_RATE, abs=2 * sock.seconds)
    assert f"{received} bytes" in str(caught.value)


def test_the_deadline_restarts_with_each_reply(clock):
    sock = ClockedSocket(clock, b"+OK\r\n", 0.9, timeout=1)
    reader = LineReader(sock, 1)
    for command in ("STAT", "NOOP", "LIST 1"):  # each within its own second
        reader.begin(command)
        assert reader.status_line() == b"+OK"
    assert sock.timeout == 1  # a cut read timeout is restored for the next reply


def test_a_silent_server_is_named_in_the_timeout(clock):
    sock = ClockedSocket(clock, b"", 5, timeout=1)
    reader = LineReader(sock, 1)
    reader.begin("UIDL")
    with pytest.raises(POP3TimeoutError, match=r"^the server did not answer UIDL within 1 s "
                       r"\(nothing received\); if the server is only slow, raise 'Timeout "
                       r"\(seconds\)' \(timeout\)$"):
        reader.status_line()


def test_endless_short_reply_is_cut_at_its_byte_cap():
    endless = PiecewiseSocket(*[b"1 abc\r\n" * 1000] * 1000)
    reader = LineReader(endless)
    reader.begin("UIDL")
    with pytest.raises(POP3ProtocolError, match="reply to UIDL is longer than its cap of 4096"):
        reader.body_lines(max_bytes=4096)
    assert len(endless.pieces) > 990


def test_errors_quote_server_bytes_redacted_before_they_are_cut():
    secret = b"S3cret-pass"
    line = b"-ERR " + b"z" * (lineio.QUOTE - 8) + secret + b"z" * MAX_STATUS_LINE
    reader = LineReader(PiecewiseSocket(line + b"\r\n"),
                        redact=lambda data: data.replace(secret, b"****"))
    with pytest.raises(POP3ProtocolError, match="too long") as caught:
        reader.status_line()
    assert b"S3c".decode() not in str(caught.value)  # not even the part before the cut
