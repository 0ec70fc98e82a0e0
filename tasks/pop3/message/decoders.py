"""Transfer-encoding decoders: base64, quoted-printable and uuencode bodies into bytes, as
they stream by, each one linear in its input with bounded memory.

They decode what the email package decodes, the way it does (tests/test_mime_differential.py
and tests/test_uuencode.py compare them with it): junk in base64 is dropped, a quoted-printable line
without a break is decoded in pieces (MAX_QP_LINE), a uuencode line of megabytes is summed
up as it goes (MAX_UU_LINE), and a body that cannot be decoded says so instead of raising.
"""

from __future__ import annotations

import binascii
import re

from prefect_pop3mail.tasks.pop3.sinks import Sink, Spool

#: A quoted-printable line longer than this is decoded in pieces, so a body without line
#: breaks is not copied again and again while waiting for one.
MAX_QP_LINE = 64 * 1024
#: Bytes a uuencoded body keeps in memory; beyond, they wait in a scratch file.
HELD_BYTES = 256 * 1024

_B64_KEEP = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_B64_DROP = bytes(b for b in range(256) if b not in _B64_KEEP)
_B64_AND_SPACE = _B64_KEEP + b"\r\n\t "
_EQUALS = re.compile(b"=+")


class Base64Decoder:
    """Chunked base64 with binascii's leniency, as the email package decodes it: junk
    characters are skipped, a completed padding ends the data, a missing padding is added."""

    undecoded = False

    def __init__(self, sink: Sink):
        self.sink = sink
        self._carry = b""
        self._done = False
        self.junk = False
        self.problem: str | None = None

    def write(self, data: bytes) -> None:
        if self._done:
            return
        if not self.junk and data.translate(None, _B64_AND_SPACE):
            self.junk = True
        data = self._carry + data.translate(None, _B64_DROP)
        if b"=" in data:
            data = self._padding(data)
            if self._done:
                return
        whole = len(data) - len(data) % 4
        if whole:
            self.sink.write(binascii.a2b_base64(data[:whole]))
        self._carry = data[whole:]

    def _padding(self, data: bytes) -> bytes:
        """binascii's rules for '=': ignored where it cannot pad; where it completes a
        group, the data ends there. A run of '=' is taken at once, so the work is one step
        per run, not per byte."""
        first = data.index(b"=")
        out = [data[:first]]
        quad, pos = first % 4, first
        for run in _EQUALS.finditer(data, first):
            start, end = run.span()
            if start > pos:
                out.append(data[pos:start])
                quad = (quad + start - pos) % 4
            pos = end
            if quad < 2:
                continue  # cannot pad here: ignored
            if quad + end - start >= 4:
                out.append(b"=" * (4 - quad))
                self._done = True
                self.sink.write(binascii.a2b_base64(b"".join(out)))
                return b""
            if end == len(data):
                # An unfinished padding waits for the next block with the group it may complete.
                out.append(data[start:end])
        out.append(data[pos:])
        return b"".join(out)

    def close(self) -> None:
        rest, self._carry = self._carry, b""
        if not rest or self._done:
            return
        if len(rest) % 4 == 1:
            self.problem = "base64 data has one character too many; it was dropped"
            rest = rest[:-1]
        else:
            self.problem = "base64 data is missing its padding"
            rest += b"=" * (-len(rest) % 4)
        if rest:
            self.sink.write(binascii.a2b_base64(rest))


class QuotedPrintableDecoder:
    """Quoted-printable, decoded a whole line at a time so soft breaks join correctly."""

    undecoded = False

    def __init__(self, sink: Sink):
        self.sink = sink
        self._carry = b""
        self.problem: str | None = None

    def write(self, data: bytes) -> None:
        data = self._carry + data
        cut = data.rfind(b"\n") + 1
        if not cut and len(data) > MAX_QP_LINE:
            cut = _qp_cut(data)
        if cut:
            self.sink.write(binascii.a2b_qp(data[:cut]))
        self._carry = data[cut:]

    def close(self) -> None:
        if self._carry:
            self.sink.write(binascii.a2b_qp(self._carry))
            self._carry = b""


def _qp_cut(data: bytes) -> int:
    """Where a long line without a break can be decoded in two pieces: after two bytes that
    are not "=", so no escape ("=XX", "==") spans the cut. Garbage with "=" every other
    byte is cut anyway: bounded work matters more than its exact bytes."""
    end = len(data) - 2
    for cut in range(end, max(end - 64, 2), -1):
        if 0x3D not in data[cut - 2:cut]:
            return cut
    return end


class IdentityDecoder:
    def __init__(self, sink: Sink):
        self.sink = sink
        self.write = sink.write
        self.problem: str | None = None
        self.undecoded = False

    def close(self) -> None:
        pass


#: Around "end", what str.strip removes in the email package (it sees no line breaks).
_UU_BLANKS = b" \t\f"
#: What binascii.a2b_uu accepts after a line's data.
_UU_PADDING = b" `"
#: A uuencoded line's data is its length character and at most 84 more (63 bytes).
_UU_DATA = 85
#: Lines up to this long are read whole; a longer one is summed up as it streams by.
MAX_UU_LINE = 4096
_SEARCH, _BODY, _DONE, _FAILED = range(4)
# Possessive: a repeated group would otherwise keep a backtracking point per repetition.
_OCTAL_RUN = re.compile(rb"[0-7]*+(?:_[0-7]++)*+")
#: The whitespace int() skips that a begin line's mode can hold (no space, no line break).
_MODE_SPACE = re.compile(rb"[\t\x0b\x0c]*")


class OctalToken:
    """Whether a begin line's mode is what ``int(mode, 8)`` accepts (the email package's
    test): whitespace, a sign, "0o" and one underscore, octal digits with single
    underscores between them, whitespace. Read in pieces, so a mode of any length costs
    linear time and no memory; runs are taken by regular expressions, not byte by byte."""

    def __init__(self):
        self.state = "lead"

    @property
    def valid(self) -> bool:
        return self.state in ("zero", "digits", "trail")

    def feed(self, piece: bytes) -> None:  # noqa: C901 - one branch per state
        i, n = 0, len(piece)
        while i < n and self.state != "bad":  # each pass consumes a byte or changes state
            state, c = self.state, piece[i]
            if state == "lead":
                i = _MODE_SPACE.match(piece, i).end()
                if i < n:
                    i += piece[i] in b"+-"
                    self.state = "first"
            elif state == "first":
                self.state = "zero" if c == 0x30 else "digits" if 0x31 <= c <= 0x37 else "bad"
                i += 1
            elif state == "zero":  # a leading 0: a digit, or the start of "0o"
                if c in b"oO":
                    self.state = "prefix"
                    i += 1
                else:
                    self.state = "digits"
            elif state == "prefix":  # one underscore may follow "0o"
                self.state = "after_" if c == 0x5F else "digits" if 0x30 <= c <= 0x37 else "bad"
                i += 1
            elif state == "after_":  # an underscore: a digit must follow
                self.state = "digits" if 0x30 <= c <= 0x37 else "bad"
                i += 1
            elif state == "digits":
                i = _OCTAL_RUN.match(piece, i).end()
                if i < n:
                    c = piece[i]
                    self.state = "after_" if c == 0x5F else "trail" if c in b"\t\x0b\x0c" else "bad"
                    i += c == 0x5F
            else:  # trail: whitespace only
                i = _MODE_SPACE.match(piece, i).end()
                if i < n:
                    self.state = "bad"


def _is_begin(line: bytes) -> bool:
    """The email package's begin line: "begin ", then a mode int(mode, 8) reads."""
    if not line.startswith(b"begin "):
        return False
    token = OctalToken()
    token.feed(line[6:].partition(b" ")[0])
    return token.valid


def _uu_line(line: bytes) -> bytes:
    """One line of data as the email package decodes it (binascii.Error if it cannot)."""
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        # The email package's workaround for encoders that pad lines: only the data.
        return binascii.a2b_uu(line[:(((line[0] - 32) & 63) * 4 + 5) // 3])


class _LongLine:
    """A line over MAX_UU_LINE, summed up as it streams by into a short line that the
    email package's rules read the same way: for a begin line, its first bytes and whether
    its mode is octal; for a data line, its first 85 bytes (all a2b_uu reads), what
    follows them (padding only, or not), and whether the whole line is "end"."""

    def __init__(self, searching: bool):
        self.searching = searching
        self.head = b""
        self.mode: OctalToken | None = None
        self.mode_done = False
        self.clean = True
        self.backtick = False
        # "end" between blanks: blanks so far, how much of "end" came, nothing after it.
        self.lead = True
        self.matched = 0
        self.maybe_end = True

    def feed(self, piece: bytes) -> None:
        keep = 6 if self.searching else _UU_DATA
        rest = piece
        if len(self.head) < keep:
            room = keep - len(self.head)
            self.head += piece[:room]
            rest = piece[room:]
        if self.searching:
            if self.head == b"begin " and not self.mode_done:
                self.mode = self.mode or OctalToken()
                token, space, _ = rest.partition(b" ")
                self.mode.feed(token)
                self.mode_done = bool(space)
            return
        if rest.translate(None, _UU_PADDING):
            self.clean = False
        self.backtick = self.backtick or b"`" in rest
        self._feed_end(piece)

    def _feed_end(self, piece: bytes) -> None:
        if not self.maybe_end:
            return
        if self.lead:
            piece = piece.lstrip(_UU_BLANKS)
            if not piece:
                return
            self.lead = False
        if self.matched < 3:
            take = piece[:3 - self.matched]
            if b"end"[self.matched:self.matched + len(take)] != take:
                self.maybe_end = False
                return
            self.matched += len(take)
            piece = piece[len(take):]
        if piece.translate(None, _UU_BLANKS):
            self.maybe_end = False

    def summary(self) -> bytes:
        if self.searching:
            return b"begin 0" if self.mode is not None and self.mode.valid else b"-"
        if self.maybe_end and self.matched == 3:
            return b"end"
        if not self.clean:
            return self.head + b"~"  # "Trailing garbage": the data alone is decoded
        return self.head + (b"`" if self.backtick else b" ")


class UUDecoder:
    """uuencode as the email package decodes it (email.message._decode_uu): from the first
    "begin <octal mode>" line to an "end" line, line by line, with binascii's leniency.
    Where the email package gives up and keeps the payload as it came (no begin line, an
    empty line or a line it cannot decode before "end"), so does this decoder
    (``undecoded``). Until that is known, the raw and the decoded bytes are held (a block
    in memory, the rest in scratch files): linear time, bounded memory, any line length."""

    def __init__(self, sink: Sink, scratch: str | None = None):
        self.sink = sink
        self.problem: str | None = None
        self.undecoded = False
        self._state = _SEARCH
        self._raw: Spool | None = Spool(scratch, HELD_BYTES)
        self._out: Spool | None = Spool(scratch, HELD_BYTES)
        self._pending = b""
        self._long: _LongLine | None = None
        self._cr = False  # the last block ended with CR: a LF next belongs to it

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._state >= _DONE:
            if self._state == _FAILED:
                self.sink.write(data)
            return
        self._raw.write(data)
        if self._cr and data.startswith(b"\n"):
            data = data[1:]
        self._cr = data.endswith(b"\r")
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        if not cut:
            self._partial(data)
            return
        lines = data[:cut].splitlines()
        lines[0] = self._finish_line(lines[0])
        self._lines(lines)
        if self._state < _DONE:
            self._partial(data[cut:])

    def _partial(self, piece: bytes) -> None:
        """Part of a line whose end has not come yet."""
        if self._long is not None:
            self._long.feed(piece)
            return
        self._pending += piece
        if len(self._pending) > MAX_UU_LINE:
            self._long = _LongLine(self._state == _SEARCH)
            self._long.feed(self._pending)
            self._pending = b""

    def _finish_line(self, piece: bytes) -> bytes:
        if self._long is not None:
            self._long.feed(piece)
            line, self._long = self._long.summary(), None
            return line
        line, self._pending = self._pending + piece, b""
        return line

    def _lines(self, lines: list[bytes]) -> None:
        """Complete lines, each at most MAX_UU_LINE long (or summed up)."""
        index = 0
        if self._state == _SEARCH:
            for index, line in enumerate(lines, 1):  # noqa: B007 - where the data starts
                if _is_begin(line):
                    self._state = _BODY
                    break
            else:
                return
        out = self._out
        for line in lines[index:]:
            if not line:
                return self._fail("has an empty line before its end line")
            if line.strip(_UU_BLANKS) == b"end":
                self._state = _DONE
                self._out = None
                out.move_to(self.sink)
                self._raw.close()
                self._raw = None
                return
            try:
                out.write(_uu_line(line))
            except binascii.Error:
                return self._fail("has a line that cannot be decoded")

    def _fail(self, why: str) -> None:
        self._state = _FAILED
        self.undecoded = True
        self.problem = f"uuencoded data {why}; saved undecoded"
        self._out.close()
        self._out = None
        self._raw.move_to(self.sink)
        self._raw = None

    def close(self) -> None:
        if self._state < _DONE and (self._pending or self._long is not None):
            self._lines([self._finish_line(b"")])
        if self._state == _SEARCH:
            self._fail("has no begin line")
        elif self._state == _BODY:
            self.problem = "uuencoded data has no end line; decoded to where it stops"
            self._state = _DONE
            self._out.move_to(self.sink)
            self._raw.close()
        self._raw = self._out = None


#: The transfer encodings the email package decodes as uuencode.
UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
#: Transfer encodings whose bodies are decoded (or need no decoding).
DECODED_ENCODINGS = frozenset({"", "7bit", "8bit", "binary", "base64", "quoted-printable",
                               *UUENCODE})


def decoder_for(encoding: str, sink: Sink, scratch: str | None = None):
    """The decoder for a transfer encoding; ``scratch``: a folder for held bytes."""
    if encoding == "base64":
        return Base64Decoder(sink)
    if encoding == "quoted-printable":
        return QuotedPrintableDecoder(sink)
    if encoding in UUENCODE:
        return UUDecoder(sink, scratch)
    return IdentityDecoder(sink)
