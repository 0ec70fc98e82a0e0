"""A streaming MIME parser: reads a saved message in blocks and hands each part's decoded
body to a visitor as it goes, so memory does not grow with the message.

It follows the email package's feedparser where the two could disagree (what ends a part,
which line ending belongs to a boundary, how base64 with junk decodes), and
tests/test_mime_differential.py checks that they save the same files. It never raises for
malformed MIME: it reports a warning and carries on.
"""

from __future__ import annotations

import binascii
import os
import re
from dataclasses import dataclass
from email.message import Message
from functools import lru_cache
from typing import BinaryIO, Protocol

from prefect_pop3mail.tasks.pop3.message.headers import (
    MAX_HEADER_BYTES,
    MAX_PARAMS,
    Headers,
    Params,
    clip,
    parse_headers,
    split_params,
)
from prefect_pop3mail.tasks.pop3.sinks import DISCARD, Sink, Spool

__all__ = ["DECODED_ENCODINGS", "MAX_HEADER_BYTES", "Part", "StreamParser", "Visitor", "parse_file",
           "parse_headers"]

BLOCK = 256 * 1024
#: A boundary line longer than this is not a boundary (RFC 2046 caps boundaries at 70).
MAX_DELIMITER_LINE = 4096
#: Multiparts nested deeper than this are read as leaves (their content stays in the original).
MAX_DEPTH = 64
#: A content type longer than this is not one (RFC 6838: 127 characters per name).
MAX_TYPE_CHARS = 255
#: A quoted-printable line longer than this is decoded in pieces, so a body without line
#: breaks is not copied again and again while waiting for one.
MAX_QP_LINE = 64 * 1024

# The email package's test for a header line (feedparser.headerRE).
_HEADER_LINE = re.compile(rb"^(From |[\041-\071\073-\176]*:|[\t ])")
# Where a line that is not a header line starts, and where the header block ends.
_NOT_A_HEADER_LINE = re.compile(rb"^(?!From |[\041-\071\073-\176]*:|[\t ])", re.M)
_BLANK_LINE = re.compile(rb"\n\r?\n")


class _cached:
    """Computed on first read, then an ordinary attribute of the instance: functools'
    cached_property without its lock, which 3.11 takes at every first read."""

    def __init__(self, func):
        self.func = func
        self.name = func.__name__

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.func(obj)
        return value


@dataclass
class Part:
    """One MIME entity: its headers, where it sits, and what the parser found wrong."""

    headers: Message
    number: str
    parent: Part | None = None
    index: int = 0
    children: int = 0
    depth: int = 0
    #: Its body is saved as it came, still transfer-encoded: the encoding is unknown, or
    #: its data could not be decoded (uuencode without a begin line...). Set before
    #: ``begin_leaf`` when the encoding is unknown, before ``end_leaf`` otherwise.
    undecoded: bool = False

    @property
    def label(self) -> str:
        """The IMAP-style part number; a single-part message's body is part 1."""
        return self.number or "1"

    def _first(self, name: str) -> str | None:
        if isinstance(self.headers, Headers):
            values = self.headers.raw_values(name)
            return values[0] if values else None
        for key, value in self.headers.raw_items():
            if key.lower() == name:
                return str(value)
        return None

    @_cached
    def _type(self) -> Params | None:
        value = self._first("content-type")
        return None if value is None else split_params(value)

    @_cached
    def _disposition(self) -> Params | None:
        value = self._first("content-disposition")
        return None if value is None else split_params(value)

    def problems(self) -> list[str]:
        """What in this part's MIME headers was past a limit (and so ignored)."""
        found = []
        for field, parsed in (("Content-Type", self._type), ("Content-Disposition", self._disposition)):
            if parsed is not None and parsed.cut:
                found.append(f"{field} has over {MAX_PARAMS} parameters; the rest were ignored")
        if self._type is not None and len(self._type.main) > MAX_TYPE_CHARS:
            found.append(f"content type over {MAX_TYPE_CHARS} characters; read as text/plain")
        return found

    @_cached
    def content_type(self) -> str:
        """As the email package reads it: the default when absent, text/plain when invalid."""
        if self._type is None:
            return self.headers.get_default_type()
        main = self._type[0]
        if main.count("/") != 1 or len(main) > MAX_TYPE_CHARS:
            return "text/plain"
        return main

    @property
    def maintype(self) -> str:
        return self.content_type.partition("/")[0]

    @property
    def subtype(self) -> str:
        return self.content_type.partition("/")[2]

    @_cached
    def disposition(self) -> str | None:
        return self._disposition[0] if self._disposition else None

    @_cached
    def transfer_encoding(self) -> str:
        return (self._first("content-transfer-encoding") or "").strip().lower()

    def param(self, name: str) -> str | None:
        """A Content-Type parameter (RFC 2231 resolved), None when absent."""
        return self._type[1].get(name.lower()) if self._type else None

    @_cached
    def filename(self) -> str | None:
        """The name the sender gives the part: Content-Disposition's filename, else
        Content-Type's name; None when neither is there or it is empty."""
        params = self._disposition[1] if self._disposition else {}
        name = params["filename"] if "filename" in params else self.param("name")
        name = (name or "").strip()
        return name or None


class Visitor(Protocol):
    """What the parser calls. ``begin_leaf`` returns where the decoded body goes (or None
    to skip it); ``raw_tap`` lets a multipart/signed visitor see its first child's raw bytes.

    A visitor may have a ``work`` attribute: a folder for the parser's scratch files (a
    uuencoded body waits there until its end shows whether it decodes); without it, the
    system's temporary folder."""

    def begin_multipart(self, part: Part) -> None: ...
    def end_multipart(self, part: Part) -> None: ...
    def begin_leaf(self, part: Part) -> Sink | None: ...
    def end_leaf(self, part: Part, sink: Sink | None) -> None: ...
    def raw_tap(self, part: Part) -> Sink | None: ...
    def warn(self, part: Part | None, text: str) -> None: ...


# --- decoders: transfer encoding -> bytes ----------------------------------------------------

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
        self._raw: Spool | None = Spool(scratch, BLOCK)
        self._out: Spool | None = Spool(scratch, BLOCK)
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


# --- reading ---------------------------------------------------------------------------------


class _Source:
    """A block buffer over the message file, with an optional tap of consumed raw bytes."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.buf = b""
        self.pos = 0
        self.eof = False
        self.taps: list[tuple[int, CanonicalTap]] = []

    def fill(self) -> bool:
        if self.eof:
            return False
        block = self.file.read(BLOCK)
        if not block:
            self.eof = True
            return False
        self.buf = self.buf[self.pos:] + block
        self.pos = 0
        return True

    def take(self, end: int, level: int = 1 << 30) -> bytes:
        """Consume up to ``end``. Taps above ``level`` do not see it (their own delimiter)."""
        data = self.buf[self.pos:end]
        self.pos = end
        for tap_level, tap in self.taps:
            if tap_level < level:
                tap.write(data)
        return data

    def peek_line(self, limit: int) -> bytes:
        while True:
            nl = self.buf.find(b"\n", self.pos, self.pos + limit)
            if nl >= 0:
                return self.buf[self.pos:nl + 1]
            if len(self.buf) - self.pos >= limit or not self.fill():
                return self.buf[self.pos:self.pos + limit]


class CanonicalTap:
    """Feeds raw bytes, with line endings made CRLF, to ``sink`` (S/MIME signs CRLF text)."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self._cr = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._cr:
            data = b"\r" + data
        self._cr = data.endswith(b"\r")
        if self._cr:
            data = data[:-1]
        self.sink.write(data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))

    def close(self) -> None:
        if self._cr:
            self.sink.write(b"\r")
            self._cr = False


@dataclass
class _End:
    """What ended a part: the delimiter at ``level`` (an index in the stack), closing or not."""

    level: int
    closing: bool


@dataclass(frozen=True)
class _Delimiters:
    """A stack of delimiters ready for scanning: what each delimiter line (without its line
    ending) ends, one lookup however deep the stack; and the first ``prefix`` bytes every
    delimiter line starts with, to pass over other lines that start with "--" at once."""

    ends: dict[bytes, _End]
    prefixes: frozenset[bytes]
    prefix: int
    #: A line ending and what every delimiter starts with (at least "--"): what to search.
    needle: bytes


@lru_cache(maxsize=256)
def _delimiters(stack: tuple[bytes, ...]) -> _Delimiters:
    ends: dict[bytes, _End] = {}
    for level, delimiter in enumerate(stack):  # inner levels overwrite: the innermost wins
        ends[delimiter] = _End(level, False)
        ends[delimiter + b"--"] = _End(level, True)
    prefix = min(map(len, stack), default=2)
    common = os.path.commonprefix(list(stack)) if stack else b"--"
    return _Delimiters(ends, frozenset(d[:prefix] for d in stack), prefix, b"\n" + common)


@dataclass
class StreamParser:
    """Parses one message file, calling ``visitor`` for each part.

    ``nested``: the file is an attached message cut out of another one, whose last line
    ending already went to the boundary that followed it.
    """

    visitor: Visitor
    nested: bool = False

    def parse(self, file: BinaryIO, root: Part | None = None) -> None:
        """``root``: the message's top part, when the caller has read it already; used
        only if its headers were read from the very bytes this parser reads."""
        self._src = _Source(file)
        block = self._read_headers(None, [])
        if root is None or getattr(root.headers, "raw", None) != block:
            root = Part(headers=parse_headers(block), number="")
        for problem in root.problems():
            self._warn(root, problem)
        self._entity(root, [])

    # Delimiter lines ------------------------------------------------------------------------

    @staticmethod
    def _match(line: bytes, ends: dict[bytes, _End]) -> _End | None:
        if not line.startswith(b"--") or not ends:
            return None
        return ends.get(line.rstrip(b"\r\n").rstrip(b" \t"))

    def _scan(self, sink: Sink, stack: list[bytes]) -> _End | None:
        """Copy body bytes to ``sink`` up to the next delimiter of ``stack`` and consume that
        delimiter line. The line ending before a delimiter belongs to the delimiter. Starts at
        the beginning of a line; returns None at the end of the file."""
        src = self._src
        write = sink.write
        at_line_start = True
        known = _delimiters(tuple(stack))
        ends, prefixes, prefix, needle = known.ends, known.prefixes, known.prefix, known.needle
        # Where to look for the next candidate line; the bytes before it (from src.pos) are
        # body, written in one piece when a delimiter, the end of the block or a refill
        # comes, not line by line: lines of "--" cost a search, not a write each.
        search = src.pos
        while True:
            buf = src.buf
            if not stack:
                write(src.take(len(buf)))
                if not src.fill():
                    return None
                continue
            if at_line_start and len(buf) - src.pos < 2 and not src.eof:
                src.fill()  # too little to tell whether a delimiter starts here
                search = src.pos
                continue
            if at_line_start and buf.startswith(b"--", src.pos):
                start = eol_start = src.pos
            else:
                hit = buf.find(needle, search)
                if hit < 0:
                    # Keep a tail that could begin "\r\n--..." for the next block.
                    end = max(len(buf) - len(needle), search)
                    if end > src.pos:
                        write(src.take(end))
                        at_line_start = False
                    filled = src.fill()
                    search = src.pos
                    if not filled:
                        # The end of the file inside a multipart: like the email package,
                        # the last line ending goes, as if a boundary had followed.
                        tail = src.buf[-2:]
                        cut = 2 if tail == b"\r\n" else 1 if tail[-1:] in (b"\n", b"\r") else 0
                        if self.nested:
                            cut = 0
                        write(src.take(len(src.buf) - cut))
                        src.take(len(src.buf))
                        return None
                    continue
                start = hit + 1
                if buf[start:start + prefix] not in prefixes and len(buf) - start >= prefix:
                    search = start + 2  # starts with "--" but with no delimiter
                    continue
                eol_start = hit - 1 if hit > src.pos and buf[hit - 1] == 0x0D else hit
            nl = buf.find(b"\n", start, start + MAX_DELIMITER_LINE)
            if nl < 0 and len(buf) - start < MAX_DELIMITER_LINE and not src.eof:
                write(src.take(eol_start))  # the candidate line is incomplete: read on
                at_line_start = eol_start == start
                src.fill()
                search = src.pos
                continue
            line = buf[start:nl + 1] if nl >= 0 else buf[start:start + MAX_DELIMITER_LINE]
            found = self._match(line, ends)
            if found is None:
                search = start + 2
                at_line_start = False
                continue
            write(src.take(eol_start))
            src.take(start + len(line), found.level)
            return found

    # Headers --------------------------------------------------------------------------------

    def _read_headers(self, part: Part | None, stack: list[bytes]) -> bytes:
        """The header block, up to and including the blank line. A line that is neither a
        header nor blank starts the body, as in the email package."""
        src = self._src
        whole = self._whole_header_block()
        if whole is not None:
            return whole
        lines = []
        size = 0
        ends = _delimiters(tuple(stack)).ends
        while True:
            line = src.peek_line(MAX_HEADER_BYTES)
            if not line:
                break
            if line in (b"\r\n", b"\n"):
                src.take(src.pos + len(line))
                break
            if self._match(line, ends):
                break
            if not _HEADER_LINE.match(line):
                self._warn(part, "no blank line between headers and body")
                break
            if size + len(line) >= MAX_HEADER_BYTES:
                self._warn(part, f"headers are over {MAX_HEADER_BYTES >> 20} MB; the rest is read as body")
                break
            src.take(src.pos + len(line))
            lines.append(line if line.endswith(b"\n") else line + b"\n")
            size += len(line)
        return b"".join(lines)

    def _whole_header_block(self) -> bytes | None:
        """The common case at C speed: a header block that ends with a blank line within
        the cap, where every line is a header line and none starts with "--". None when it
        is anything else; the line-by-line reading then decides."""
        src = self._src
        while True:
            limit = src.pos + MAX_HEADER_BYTES
            blank = _BLANK_LINE.search(src.buf, src.pos, limit)
            if blank is not None or len(src.buf) >= limit or not src.fill():
                break
        if blank is None or blank.start() == src.pos:
            return None
        buf, start, end = src.buf, src.pos, blank.start() + 1
        if (buf.startswith(b"--", start) or buf.find(b"\n--", start, end) >= 0
                or _NOT_A_HEADER_LINE.search(buf, start, end - 1)):
            return None
        block = src.take(end)
        src.take(blank.end())
        return block

    # Entities -------------------------------------------------------------------------------

    def _entity(self, part: Part, stack: list[bytes]) -> _End | None:
        boundary = part.param("boundary") if part.maintype == "multipart" else None
        if boundary and part.depth < MAX_DEPTH:
            return self._multipart(part, stack, b"--" + boundary.encode("utf-8", "surrogateescape"))
        if part.maintype == "multipart":
            reason = "has no boundary" if not boundary else "is nested too deeply"
            self._warn(part, f"{part.content_type} {reason}; its content is only in the original")
        return self._leaf(part, stack)

    def _leaf(self, part: Part, stack: list[bytes]) -> _End | None:
        visitor = self.visitor
        encoding = part.transfer_encoding
        part.undecoded = encoding not in DECODED_ENCODINGS
        sink = visitor.begin_leaf(part)
        if sink is None:
            end = self._scan(DISCARD, stack)
        else:
            decoder = decoder_for(encoding, sink, getattr(visitor, "work", None))
            if part.undecoded:
                self._warn(part, f"unknown transfer encoding {clip(encoding, 40)!r}; saved undecoded")
            end = self._scan(decoder, stack)
            decoder.close()
            part.undecoded = part.undecoded or decoder.undecoded
            if isinstance(decoder, Base64Decoder) and decoder.junk:
                self._warn(part, "base64 data has invalid characters; they were skipped")
            if decoder.problem:
                self._warn(part, decoder.problem)
        visitor.end_leaf(part, sink)
        return end

    def _multipart(self, part: Part, stack: list[bytes], delimiter: bytes) -> _End | None:
        visitor = self.visitor
        inner = [*stack, delimiter]
        level = len(stack)
        visitor.begin_multipart(part)
        end = self._scan(DISCARD, inner)  # the preamble
        if end is None or end.level < level:
            self._warn(part, "multipart start boundary not found; its content is only in the original")
            visitor.end_multipart(part)
            return end
        default = "message/rfc822" if part.content_type == "multipart/digest" else "text/plain"
        while not end.closing:
            index = part.children
            part.children += 1
            tap = visitor.raw_tap(part) if index == 0 else None
            if tap is not None:
                canonical = CanonicalTap(tap)
                self._src.taps.append((level, canonical))
            raw = self._read_headers(part, inner)
            headers = parse_headers(raw, default)
            child = Part(
                headers=headers,
                number=f"{part.number}.{index + 1}" if part.number else str(index + 1),
                parent=part,
                index=index,
                depth=part.depth + 1,
            )
            for problem in headers.problems:  # the top level's go with ReceivedMail's fields
                self._warn(child, problem)
            for problem in child.problems():
                self._warn(child, problem)
            end = self._entity(child, inner)
            if tap is not None:
                self._src.taps.pop()
                canonical.close()
            if end is None:
                self._warn(part, "multipart closing boundary missing")
                visitor.end_multipart(part)
                return None
            if end.level < level:
                self._warn(part, "multipart ended by an outer boundary")
                visitor.end_multipart(part)
                return end
        visitor.end_multipart(part)
        return self._scan(DISCARD, stack)  # the epilogue

    def _warn(self, part: Part | None, text: str) -> None:
        self.visitor.warn(part, text)


def parse_file(path, visitor: Visitor, *, nested: bool = False, root: Part | None = None) -> None:
    with open(path, "rb", buffering=0) as file:
        StreamParser(visitor, nested).parse(file, root)

