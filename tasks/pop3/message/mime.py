"""A streaming MIME parser: reads a saved message in blocks and hands each part's decoded
body to a visitor as it goes, so memory does not grow with the message.

It follows the email package's feedparser where the two could disagree (what ends a part,
which line ending belongs to a boundary, how base64 with junk decodes), and
tests/test_mime_differential.py checks that they save the same files. It never raises for
malformed MIME: it reports a warning and carries on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from email.message import Message
from functools import lru_cache
from typing import BinaryIO, Protocol

from prefect_pop3mail.tasks.pop3.message.decoders import (
    DECODED_ENCODINGS,
    Base64Decoder,
    decoder_for,
)
from prefect_pop3mail.tasks.pop3.message.headers import (
    MAX_HEADER_BYTES,
    MAX_PARAMS,
    Headers,
    Params,
    clip,
    parse_headers,
    split_params,
)
from prefect_pop3mail.tasks.pop3.sinks import DISCARD, Sink

__all__ = ["DECODED_ENCODINGS", "MAX_HEADER_BYTES", "Part", "StreamParser", "Visitor", "parse_file",
           "parse_headers"]

BLOCK = 256 * 1024
#: A boundary line longer than this is not a boundary (RFC 2046 caps boundaries at 70).
MAX_DELIMITER_LINE = 4096
#: Multiparts nested deeper than this are read as leaves (their content stays in the original).
MAX_DEPTH = 64
#: A content type longer than this is not one (RFC 6838: 127 characters per name).
MAX_TYPE_CHARS = 255

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

