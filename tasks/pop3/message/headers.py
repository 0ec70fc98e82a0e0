"""Reading header sections and header values, with bounded work on hostile input.

Everything here is linear in its input and capped: a header section, a field, a parameter
list, an address list, a date. The email package's own readers are not used on raw values:
``getaddresses`` recurses on nested comments (RecursionError) and is quadratic on some
inputs, ``get_param`` raises TypeError/IndexError on some RFC 2231 mixes and is quadratic
on many quotes, ``parsedate_to_datetime`` raises OverflowError on absurd years. Malformed
input gives an empty or raw value and a warning, never an exception.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from email.message import Message
from email.utils import parsedate_tz
from typing import BinaryIO, NamedTuple
from urllib.parse import unquote_to_bytes

from prefect_pop3mail.tasks.pop3.message import charsets
from prefect_pop3mail.tasks.pop3.message.filenames import decode_rfc2047

#: A header section (top-level or of one part) is read up to this many bytes; the rest is
#: read as body.
MAX_HEADER_BYTES = 1 << 20
#: Header fields kept per section; more are dropped (real mail has a few dozen).
MAX_HEADER_FIELDS = 1000
#: One field's value, folding included, is cut to this many characters.
MAX_FIELD_CHARS = 64 * 1024
#: Parameters read from one Content-Type or Content-Disposition field.
MAX_PARAMS = 256
#: Subject, sender, Message-ID and each recipient in results are cut to this many characters.
MAX_TEXT_CHARS = 1000
#: Recipients (To and Cc together) listed in results.
MAX_RECIPIENTS = 100
#: A Date value longer than this is not a date.
MAX_DATE_CHARS = 256

_CUT = "…"


class Headers(Message):
    """A compat32 header block, with what was cut or dropped while reading it, the bytes it
    was read from, and its raw values by lower-case name (looked up, not scanned for)."""

    def __init__(self, raw: bytes = b""):
        super().__init__()
        self.problems: list[str] = []
        self.raw = raw
        self.by_name: dict[str, list[str]] = {}

    def raw_values(self, name: str) -> list[str]:
        """The raw values of field ``name`` (lower case), in order."""
        return self.by_name.get(name, [])


def parse_headers(data: bytes, default_type: str = "text/plain") -> Headers:
    """A header block as a compat32 Message, as the email package's parser builds it (name
    up to the colon, value with its folding), without its per-message machinery, within
    MAX_HEADER_FIELDS fields of MAX_FIELD_CHARS characters each.

    Raw 8-bit values (RFC 6532 allows UTF-8; older clients send their own charset) are
    decoded first: compat32 would make them "unknown-8bit" Header objects and lose the text.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    message = Headers(data)
    if default_type != "text/plain":
        message.set_default_type(default_type)
    name: str | None = None
    lines: list[str] = []
    count = dropped = 0
    for line in text.split("\n"):
        if line[:1] in (" ", "\t"):
            if name is not None:
                lines.append(line)
            continue
        if name is not None:
            _set(message, name, lines)
        name = None
        colon = line.find(":")
        if colon <= 0:  # a line without one ("From " envelope lines) is no header
            continue
        if count >= MAX_HEADER_FIELDS:
            dropped += 1
            continue
        count += 1
        name, lines = line[:colon], [line[colon + 1:].lstrip(" \t")]
    if name is not None:
        _set(message, name, lines)
    if dropped:
        message.problems.append(f"over {MAX_HEADER_FIELDS} header fields; {dropped} were ignored")
    return message


def _set(message: Headers, name: str, lines: list[str]) -> None:
    value = "\n".join(lines).rstrip("\r\n")
    if len(value) > MAX_FIELD_CHARS:
        value = value[:MAX_FIELD_CHARS]
        message.problems.append(f"header {clip(name, 40)!r} is over {MAX_FIELD_CHARS} "
                                "characters; the rest was ignored")
    message.set_raw(name, value)
    message.by_name.setdefault(name.lower(), []).append(value)


def read_head(f: BinaryIO) -> Headers:
    """The header section at the start of an open message file, within MAX_HEADER_BYTES."""
    data = f.read(MAX_HEADER_BYTES)
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        return parse_headers(b"")
    ends = [i for i in (data.find(b"\n\n"), data.find(b"\n\r\n")) if i >= 0]
    head = parse_headers(data[: min(ends) + 1] if ends else data)
    if not ends and len(data) >= MAX_HEADER_BYTES:
        head.problems.append(f"headers are over {MAX_HEADER_BYTES >> 20} MB; the rest was ignored")
    return head


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - 1] + _CUT


# --- ReceivedMail's fields -------------------------------------------------------------------


def header_fields(message: Message, warnings: list[str] | None = None) -> dict:
    """ReceivedMail's header fields, decoded from raw values and capped. A field that cannot
    be read is left empty; why, and what was cut, is appended to ``warnings`` (with the
    problems met while reading the header section)."""
    found = list(getattr(message, "problems", ()))

    def safely(what: str, read, empty):
        try:
            return read()
        except Exception as exc:  # one bad header costs that field, never the message
            found.append(f"the {what} header could not be read ({type(exc).__name__})")
            return empty

    senders = safely("From", lambda: _addresses(message, "From"), [])
    recipients = safely("To/Cc", lambda: _addresses(message, "To") + _addresses(message, "Cc"), [])
    if len(recipients) > MAX_RECIPIENTS:
        found.append(f"over {MAX_RECIPIENTS} recipients; only the first {MAX_RECIPIENTS} are listed")
        recipients = recipients[:MAX_RECIPIENTS]
    fields = {
        "message_id": safely("Message-ID", lambda: _header(message, "Message-ID"), "") or None,
        "sender": senders[0] if senders else "",
        "recipients": recipients,
        "subject": safely("Subject", lambda: _header(message, "Subject"), ""),
        "date": safely("Date", lambda: _date(message, found), None),
    }
    for key, what in (("message_id", "Message-ID"), ("sender", "sender"), ("subject", "subject")):
        value = fields[key]
        if value and len(value) > MAX_TEXT_CHARS:
            found.append(f"the {what} is over {MAX_TEXT_CHARS} characters; it was cut")
            fields[key] = clip(value)
    if any(len(r) > MAX_TEXT_CHARS for r in recipients):
        found.append(f"a recipient is over {MAX_TEXT_CHARS} characters; it was cut")
        fields["recipients"] = [clip(r) for r in recipients]
    if warnings is not None:
        warnings.extend(found)
    return fields


def _text(raw: str) -> str:
    """A raw header value as text: unfolded, encoded words decoded."""
    return decode_rfc2047(" ".join(raw.split()))


def _raw(message: Message, name: str) -> list[str]:
    """Raw values: compat32's get() could return Header objects."""
    wanted = name.lower()
    if isinstance(message, Headers):
        return message.raw_values(wanted)
    return [str(v) for k, v in message.raw_items() if k.lower() == wanted]


def _header(message: Message, name: str) -> str:
    values = _raw(message, name)
    return _text(values[0]) if values else ""


def _addresses(message: Message, name: str) -> list[str]:
    out = []
    for value in _raw(message, name):
        for display, addr in split_addresses(value):
            if addr:
                display = " ".join(_text(display).split())
                out.append(f"{display} <{addr}>" if display else addr)
            if len(out) > MAX_RECIPIENTS:
                return out  # one more than the cap, so the caller can say it cut
    return out


# --- addresses -------------------------------------------------------------------------------

# Tokens of an address list. Every alternative starts with a different character, so the
# scan never backtracks; an unterminated quoted string runs to the end.
_ADDRESS_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|\\.?|\(+|\)+|[<>,:;]|[^"\\()<>,:;]+', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)


def split_addresses(value: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of an address list (RFC 5322 with the usual sloppiness:
    comments, groups, quoted names, bare addresses). One pass, no recursion: comments may
    nest to any depth."""
    pairs: list[tuple[str, str]] = []
    display: list[str] = []
    addr: list[str] | None = None  # what is between < and >, once a < is seen
    in_angle = False
    comments: list[str] = []
    comment: list[str] = []
    depth = 0

    def finish() -> None:
        nonlocal display, addr, comments, in_angle
        if addr is not None:
            address = "".join("".join(addr).split()).rpartition(":")[2]  # drop "@a,@b:"
            name = " ".join("".join(display).split())
        else:
            address, name = "".join("".join(display).split()), ""
        if not name and comments:
            name = " ".join(comments[0].split())
        if address or name:
            pairs.append((name, address))
        display, addr, comments, in_angle = [], None, [], False

    for match in _ADDRESS_TOKENS.finditer(value[:MAX_FIELD_CHARS]):
        token = match.group()
        first = token[0]
        if first == "(":  # a run of "(" opens a comment and nests in it
            comment.append(token[1:] if not depth else token)
            depth += len(token)
        elif depth:
            if first == ")":
                closing = min(depth, len(token))
                depth -= closing
                if not depth:
                    comment.append(token[:closing - 1])
                    comments.append("".join(comment))
                    comment = []
                    continue
            comment.append(token[1:] if first == "\\" else token)
        elif in_angle:
            if token == ">":
                in_angle = False
            elif addr is not None:
                addr.append(token)
        elif token == "<":
            addr, in_angle = [], True
        elif token in (",", ";"):
            finish()
        elif token == ":":
            display = []  # a group's name
        elif token[0] == '"':
            display.append(_unquote(token))
        elif token[0] == "\\":
            display.append(token[1:])
        elif first not in ")>":
            display.append(token)
    finish()
    return pairs


def _unquote(token: str) -> str:
    inner = token[1:-1] if len(token) > 1 and token.endswith('"') else token[1:]
    return _QUOTED_PAIR.sub(r"\1", inner)


# --- dates -----------------------------------------------------------------------------------


def _date(message: Message, warnings: list[str]) -> datetime | None:
    raw = _raw(message, "Date")
    if not raw:
        return None
    date = parse_date(raw[0])
    if date is None:
        warnings.append(f"the Date header {clip(' '.join(raw[0].split()), 60)!r} is not a date")
    return date


def parse_date(value: str) -> datetime | None:
    """An RFC 5322 date as an aware datetime (UTC when the zone is unknown or "-0000"), or
    None when it is not one: year 1..9999, a real day, an offset within a day."""
    value = " ".join(value.split())
    if not value or len(value) > MAX_DATE_CHARS:
        return None
    try:
        parsed = parsedate_tz(value)
        if parsed is None:
            return None
        year, month, day, hour, minute, second = parsed[:6]
        offset = parsed[9] or 0
        if not (1 <= year <= 9999 and abs(offset) < 24 * 3600):
            return None
        zone = timezone(timedelta(seconds=offset))
        return datetime(year, month, day, hour, minute, min(second, 59), tzinfo=zone)
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


# --- parameters (RFC 2045, RFC 2231) ---------------------------------------------------------

_PARAM_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|;|[^";]+', re.S)
_EXTENDED_NAME = re.compile(r"^([^*]*)\*(\d{1,6})?(\*?)$")


class Params(NamedTuple):
    main: str
    params: dict[str, str]
    #: More than MAX_PARAMS parameters: the rest were ignored.
    cut: bool = False


def split_params(value: str) -> Params:
    """The main value of a Content-Type or Content-Disposition field (lower case) and its
    parameters by lower-case name, RFC 2231 continuations and charsets resolved.

    As the email package decides: a plain ``name=`` wins over ``name*=``; of repeated
    parameters the first wins; a quoted value loses its quotes and its escaped quotes and
    backslashes (other backslashes stay: "C:\\dir\\a.pdf" is a Windows path).
    """
    pieces: list[list[str]] = [[]]
    cut = False
    for match in _PARAM_TOKENS.finditer(value[:MAX_FIELD_CHARS]):
        token = match.group()
        if token == ";":
            if len(pieces) > MAX_PARAMS:
                cut = True
                break
            pieces.append([])
        else:
            pieces[-1].append(token)
    main = "".join(pieces[0]).strip().lower()
    plain: dict[str, str] = {}
    extended: dict[str, dict[int, tuple[str, bool]]] = {}
    for piece in pieces[1:]:
        text = "".join(piece)
        name, eq, raw = text.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            continue
        raw = raw.strip()
        star = _EXTENDED_NAME.match(name)
        if star is None:
            plain.setdefault(name, _unquote_value(raw))
            continue
        base, number, encoded = star.group(1), int(star.group(2) or 0), bool(star.group(3))
        if star.group(2) is None:
            encoded = True  # "name*=charset''value"
        text_value = _unquote_value(raw)
        extended.setdefault(base, {}).setdefault(number, (text_value, encoded))
    params = dict(plain)
    for base, sections in extended.items():
        if base not in params:
            params[base] = _join_sections(sections)
    return Params(main, params, cut)


def _unquote_value(raw: str) -> str:
    """As email.utils.unquote: only a fully quoted value is unquoted."""
    if len(raw) > 1 and raw[0] == raw[-1] == '"':
        return raw[1:-1].replace("\\\\", "\\").replace('\\"', '"')
    if len(raw) > 1 and raw[0] == "<" and raw[-1] == ">":
        return raw[1:-1]
    return raw


def _join_sections(sections: dict[int, tuple[str, bool]]) -> str:
    """RFC 2231: sections in order; encoded ones percent-decoded in the charset the first
    section names (text charsets only; UTF-8 otherwise)."""
    charset = "us-ascii"
    out: list[str] = []
    raw = bytearray()
    for number in sorted(sections):
        text, encoded = sections[number]
        if encoded and number == 0 and text.count("'") >= 2:
            charset, _, rest = text.split("'", 2)
            text = rest
        if encoded:
            raw += unquote_to_bytes(text)
        else:
            if raw:
                out.append(_decode(bytes(raw), charset))
                raw = bytearray()
            out.append(text)
    if raw:
        out.append(_decode(bytes(raw), charset))
    return "".join(out)


def _decode(data: bytes, charset: str) -> str:
    codec = charsets.text_codec(charset.strip().lower() or "us-ascii") or "utf-8"
    if codec == "ascii":
        codec = "utf-8"
    return data.decode(codec, "replace")
