"""Hostile messages, one builder per class of attack on the message parser.

Each builder takes a size in bytes (roughly the size of the message it returns) and gives
the worst case of its class at that size, as a POP3 server would hand it over (CRLF,
7-bit-clean unless the class is about 8-bit bytes). ``CLASSES`` lists them with the warning
the store must give (None when the input is simply read, with no limit to report).

Used by tests/test_hostile_messages.py (each class through MessageStore.save),
tests/test_hostile_dovecot.py (each between two ordinary messages, through a real server)
and bench/bench_hostile.py (time and memory against an ordinary message of the same size).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from tests import tnef_writer as tw

CRLF = b"\r\n"


@dataclass(frozen=True)
class Hostile:
    name: str
    build: Callable[[int], bytes]
    #: A substring one of the saved message's warnings must contain, or None.
    warning: str | None
    #: The ordinary message of the same size to compare with: "text", "html", or
    #: "attachment" (a short text and one base64 attachment, for attachment classes).
    baseline: str = "text"


CLASSES: dict[str, Hostile] = {}


def hostile(warning: str | None = None, baseline: str = "text"):
    def register(fn: Callable[[int], bytes]) -> Callable[[int], bytes]:
        CLASSES[fn.__name__] = Hostile(fn.__name__, fn, warning, baseline)
        return fn

    return register


def head(*lines: str, content_type: str = "text/plain; charset=utf-8", **fields: str) -> bytes:
    base = {
        "From": "Alice <alice@example.org>",
        "To": "bob@example.org",
        "Subject": "hostile",
        "Date": "Tue, 01 Dec 2026 10:00:00 +0000",
        "Message-ID": "<hostile@example.org>",
        "MIME-Version": "1.0",
        "Content-Type": content_type,
    }
    base.update({k.replace("_", "-"): v for k, v in fields.items()})
    text = "".join(f"{k}: {v}\r\n" for k, v in base.items()) + "".join(f"{x}\r\n" for x in lines)
    return text.encode("utf-8")


def message(body: bytes, *lines: str, **fields: str) -> bytes:
    return head(*lines, **fields) + CRLF + body


def _lines(unit: bytes, size: int) -> bytes:
    return unit * max(1, size // len(unit))


def _filler(size: int) -> bytes:
    """Ordinary text lines, about ``size`` bytes."""
    return _lines(b"The quick brown fox jumps over the lazy dog, again and again.\r\n", size)


# --- ordinary messages, the baselines -------------------------------------------------------


def ordinary(size: int, kind: str = "text") -> bytes:
    """An ordinary message of about ``size`` bytes: a text (or HTML) body and a base64
    attachment, as mail clients send them."""
    half = max(size // 2, 64)
    if kind == "attachment":  # nearly all of it one plain attachment
        half, size = 64, size - 64
    if kind == "html":
        body = _lines(b"<p>The quick <b>brown</b> fox <a href='https://example.org/'>jumps"
                      b"</a> over the lazy dog.</p>\r\n", half)
        first = b"Content-Type: text/html; charset=utf-8\r\n\r\n" + body
    else:
        first = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + _filler(half)
    rest = size - half if kind == "attachment" else half
    blob = hashlib.sha256(b"x").digest() * (rest * 3 // 4 // 32 + 1)
    attachment = (b'Content-Type: application/pdf; name="report.pdf"\r\n'
                  b"Content-Transfer-Encoding: base64\r\n"
                  b'Content-Disposition: attachment; filename="report.pdf"\r\n\r\n'
                  + base64.encodebytes(blob).replace(b"\n", CRLF))
    return message(b"--B\r\n" + first + b"\r\n--B\r\n" + attachment + b"--B--\r\n",
                   content_type='multipart/mixed; boundary="B"')


# --- headers ----------------------------------------------------------------------------------


@hostile()
def nested_comments(size: int) -> bytes:
    """From: with thousands of nested comments (the email package recurses: RecursionError)."""
    n = max(2000, size // 4)
    sender = "(" * n + "x" + ")" * (n // 2) + " <a@example.org>"
    return message(b"hello\r\n", From=sender, To="(" * n + "b@example.org", Cc="(" * n)


@hostile("is not a date")
def absurd_date(size: int) -> bytes:
    """A Date with an absurd year (OverflowError in parsedate_to_datetime)."""
    return message(_filler(size), Date="Mon, 1 Jan 99999999999 25:61:61 +99999")


@hostile()
def rfc2231_mixed(size: int) -> bytes:
    """RFC 2231 continuations mixed with an unnumbered section (TypeError in get_param)."""
    return message(_filler(size), content_type="text/plain; name*0=a; name*=b; charset*0=utf; "
                   "charset*=''x", Content_Disposition="attachment; filename*0*=utf-8''a%; "
                   "filename*=b; filename*1=c; filename*99999999999=d")


@hostile()
def rfc2231_continuations(size: int) -> bytes:
    """A filename in tens of thousands of RFC 2231 sections."""
    n = max(1000, size // 16)
    sections = "; ".join(f"filename*{i}*=%41" for i in range(n))
    return message(b"x\r\n", content_type="application/octet-stream",
                   Content_Disposition=f"attachment; {sections}")


@hostile()
def quoted_params(size: int) -> bytes:
    """Many quotes and semicolons in one parameter list (quadratic in the email package)."""
    n = max(1000, size // 4)
    return message(b"x\r\n", content_type='application/octet-stream; name="' + ';"' * n,
                   Content_Disposition="attachment; " + 'a="b;' * n)


@hostile("over 1000 header fields")
def many_header_fields(size: int) -> bytes:
    """Hundreds of thousands of tiny header fields."""
    n = min(size, (1 << 20) - 4096) // 8
    return message(b"hello\r\n", *(["X-A: b"] * n))


@hostile("characters; the rest was ignored")
def long_header_line(size: int) -> bytes:
    """One header field of many megabytes (a Subject without a line break)."""
    return message(b"hello\r\n", Subject="x" * max(size, 100_000))


@hostile("headers are over 1 MB")
def huge_header_section(size: int) -> bytes:
    """A header section over the 1 MB cap, in folded lines of one field."""
    fold = "\r\n ".join(["y" * 70] * max((1 << 20) // 72 + 100, size // 72))
    return message(b"hello\r\n", X_Long=fold)


@hostile("only the first 100 are listed")
def many_recipients(size: int) -> bytes:
    """Tens of thousands of recipients."""
    n = max(1000, size // 60)
    return message(b"hello\r\n", To=", ".join(f"User {i} <u{i}@example.org>" for i in range(n)))


@hostile("subject is over 1000 characters")
def encoded_word_flood(size: int) -> bytes:
    """A Subject of a hundred thousand encoded words, some in hostile charsets."""
    n = max(1000, size // 40)
    words = ["=?utf-8?B?w6k=?=", "=?zlib_codec?B?eJxLBAAAYgBi?=", "=?punycode?Q?abc-?=",
             "=?x-unknown?Q?a?="]
    return message(b"hello\r\n", Subject=" ".join(words[i % 4] for i in range(n)))


@hostile()
def address_quotes(size: int) -> bytes:
    """Address lists of quotes, angle brackets and backslashes only."""
    n = max(1000, size // 6)
    return message(b"hello\r\n", From='"' * n, To="<" * n + ">" * n, Cc="\\" * n + ",:;" * n)


# --- charsets ---------------------------------------------------------------------------------


@hostile("not a text charset")
def compressing_charset(size: int) -> bytes:
    """A body labelled charset=zlib_codec holding a zlib bomb (100 times its size)."""
    bomb = zlib.compress(b"\0" * max(size, 1 << 16) * 100, 9)
    body = base64.encodebytes(bomb).replace(b"\n", CRLF)
    return message(body, "Content-Transfer-Encoding: base64",
                   content_type="text/plain; charset=zlib_codec")


@hostile("not a text charset")
def punycode_charset(size: int) -> bytes:
    """charset=punycode: quadratic decoding."""
    return message(b"a" * size + b"-" + b"9" * 1000 + CRLF, content_type="text/plain; charset=punycode")


@hostile("not a text charset", baseline="html")
def binary_codec_html(size: int) -> bytes:
    """An HTML body labelled with a binary codec (bz2_codec)."""
    return message(_lines(b"<p>x</p>\r\n", size), content_type="text/html; charset=bz2_codec")


# --- MIME structure ---------------------------------------------------------------------------


def _multipart(parts: list[bytes], boundary: str = "B") -> bytes:
    b = boundary.encode()
    body = b"".join(b"--" + b + CRLF + p + CRLF for p in parts) + b"--" + b + b"--" + CRLF
    return message(body, content_type=f'multipart/mixed; boundary="{boundary}"')


@hostile("over 1000 MIME parts")
def many_parts(size: int) -> bytes:
    """Tens of thousands of tiny attachments."""
    part = b"Content-Type: application/octet-stream\r\n\r\nx"
    return _multipart([part] * max(3000, size // 56))


@hostile()
def equal_filenames(size: int) -> bytes:
    """Parts that all claim the same file name (de-duplication must not be quadratic)."""
    part = b'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="a.pdf"\r\n\r\nx'
    return _multipart([part] * min(990, max(100, size // 90)))


@hostile("over 1000 MIME parts")
def many_attached_messages(size: int) -> bytes:
    """Many attached messages, each with many parts: the part cap covers them all."""
    inner = _multipart([b"Content-Type: application/octet-stream\r\n\r\nx"] * 50, "I")
    part = b"Content-Type: message/rfc822\r\n\r\n" + inner
    return _multipart([part] * max(100, size // len(part)))


@hostile("nested too deeply")
def nested_multiparts(size: int) -> bytes:
    """Fifty thousand nested multiparts, each with its own boundary."""
    n = max(50_000, size // 60)
    out = [f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode() for i in range(n)]
    return message(b"--b0\r\n" + b"".join(out[1:]) + b"x\r\n",
                   content_type='multipart/mixed; boundary="b0"')


def _nest(body: bytes, levels: int) -> bytes:
    data = b"Content-Type: text/plain\r\n\r\n" + body
    for _ in range(levels):
        data = b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + data
    return message(data.split(CRLF + CRLF, 1)[1], content_type="message/rfc822")


@hostile("nest too deeply")
def nested_messages(size: int) -> bytes:
    """Small messages attached inside messages, far deeper than the nesting cap, beside a
    large text body."""
    chain = _nest(b"hello\r\n", 40).split(CRLF + CRLF, 1)[1]
    return _multipart([b"Content-Type: text/plain\r\n\r\n" + _filler(size),
                       b"Content-Type: message/rfc822\r\n\r\n" + chain])


@hostile("MAX_COPY_FACTOR")
def nested_messages_big(size: int) -> bytes:
    """A large body in attached messages nested just under the nesting cap: each level
    copies the levels inside it into its .eml (nine times the message's bytes on disk)."""
    return _nest(_filler(size), 7)


def _signed(content: bytes, boundary: str) -> bytes:
    signature = base64.encodebytes(b"\x30\x03\x02\x01\x01" * 20).replace(b"\n", CRLF)
    return (f'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
            f'micalg=sha-256; boundary="{boundary}"\r\n\r\n--{boundary}\r\n').encode() + (
        content + f"\r\n--{boundary}\r\nContent-Type: application/pkcs7-signature; "
        f'name="smime.p7s"\r\nContent-Transfer-Encoding: base64\r\n\r\n'.encode()
        + signature + f"--{boundary}--\r\n".encode())


@hostile("MAX_SIGNED_PARTS")
def signed_layers(size: int) -> bytes:
    """A body in 63 nested multipart/signed layers, each signature a junk one: each layer
    hashed the bytes under it (86 times the CPU of an attachment of the same size)."""
    data = b"Content-Type: text/plain\r\n\r\n" + _filler(size)
    for i in range(63):
        data = _signed(data, f"s{i}")
    return message(data.split(CRLF + CRLF, 1)[1],
                   content_type=data.split(CRLF, 1)[0].split(b": ", 1)[1].decode())


@hostile("MAX_SIGNED_PARTS")
def signed_attached_messages(size: int) -> bytes:
    """Signed messages attached side by side: their signed parts count with the message's
    own."""
    n = 12
    inner = _signed(b"Content-Type: text/plain\r\n\r\n" + _filler(size // n), "s")
    part = b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + inner
    return _multipart([part] * n)


@hostile()
def boundary_lines(size: int) -> bytes:
    """Megabytes of lines that start like a delimiter but are not one."""
    return _multipart([b"Content-Type: text/plain\r\n\r\n" + _lines(b"\n--", size)])


@hostile()
def boundary_prefix_lines(size: int) -> bytes:
    """Lines that are the boundary plus junk, and delimiter-long lines."""
    unit = b"--B" + b"x" * 60 + CRLF + b"--" + b"B" * 5000 + CRLF
    return _multipart([b"Content-Type: text/plain\r\n\r\n" + _lines(unit, size)])


@hostile()
def boundary_near_misses(size: int) -> bytes:
    """Short lines that start with the (one-letter) boundary and then differ."""
    return _multipart([b"Content-Type: text/plain\r\n\r\n" + _lines(b"--Bx\r\n--B-\r\n", size)])


@hostile("no blank line between headers and body")
def no_header_end(size: int) -> bytes:
    """Parts whose headers never end, and a body of one endless line."""
    part = b"Content-Type: text/plain\r\nX: " + b"y" * 100 + b"\r\nnot a header"
    return _multipart([part] * 100 + [b"Content-Type: text/plain\r\n\r\n" + b"z" * size])


# --- transfer encodings -----------------------------------------------------------------------


@hostile()
def qp_without_line_breaks(size: int) -> bytes:
    """A quoted-printable body of one line of many megabytes, escapes throughout."""
    return message(b"=41=" * (size // 4), "Content-Transfer-Encoding: quoted-printable")


@hostile("base64 data has invalid characters")
def base64_padding_junk(size: int) -> bytes:
    """Base64 where '=' appears everywhere it cannot pad, and junk between."""
    return message(_lines(b"AAAA=!", size), "Content-Transfer-Encoding: base64",
                   content_type="application/octet-stream")


# --- attachments: uuencode, winmail.dat (TNEF) -----------------------------------------------


def _blob(size: int) -> bytes:
    return hashlib.sha256(b"blob").digest() * (max(size, 32) // 32)


def _attachment(body: bytes, encoding: str, name: str, content_type: str = "application/zip") -> bytes:
    return _multipart([b"Content-Type: text/plain\r\n\r\nSee attachment.",
                       f'Content-Type: {content_type}; name="{name}"\r\n'
                       f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode() + body])


@hostile(baseline="attachment")
def uuencode_attachment(size: int) -> bytes:
    """An ordinary uuencoded attachment: held until its end line, then decoded."""
    data = _blob(size * 3 // 4 - 200)
    lines = [binascii.b2a_uu(data[i:i + 45]).rstrip(b"\n") for i in range(0, len(data), 45)]
    return _attachment(CRLF.join([b"begin 644 big.zip", *lines, b"`", b"end"]), "x-uuencode", "big.zip")


@hostile("saved undecoded", baseline="attachment")
def uuencode_long_lines_undecodable(size: int) -> bytes:
    """uuencode whose lines are megabytes of padding, and an empty line before its end:
    held, then kept as it came."""
    line = b"M" + b"A" * 60 + b"`" * max(size // 4, 1)
    return _attachment(CRLF.join([b"begin 644 x.zip", line, line, line, b"", b"end"]), "uuencode", "x.zip")


@hostile("no begin line", baseline="attachment")
def uuencode_without_begin(size: int) -> bytes:
    """A body labelled uuencode that has no begin line: all of it held, then kept."""
    return _attachment(_lines(b"M" + b"A" * 60 + CRLF, size), "x-uue", "nothing.zip")


def _winmail(stream: bytes) -> bytes:
    return _attachment(base64.encodebytes(stream).replace(b"\n", CRLF), "base64", "winmail.dat",
                       "application/ms-tnef")


def _tnef_room(size: int) -> int:
    """TNEF bytes that make a message of about ``size`` once in base64."""
    return max(size * 3 // 4 - 400, 64)


@hostile(baseline="attachment")
def tnef_one_big_file(size: int) -> bytes:
    """An ordinary winmail.dat: one file, kept and saved beside it (read twice: checksum, copy)."""
    return _winmail(tw.tnef([tw.File("big.pdf", _blob(_tnef_room(size) - 400))]))


@hostile("over 20000 TNEF attributes", baseline="attachment")
def tnef_tiny_attributes(size: int) -> bytes:
    """A file, then empty attributes to the end: the reader stops at its budget."""
    one = tw.attribute(tw.MESSAGE, (0x8004, 0x0001), b"")
    head = tw.tnef([tw.File("first.txt", b"first")])
    return _winmail(head + one * max((_tnef_room(size) - len(head)) // len(one), 20_100))


@hostile("files in winmail.dat", baseline="attachment")
def tnef_many_files(size: int) -> bytes:
    """Thousands of tiny files in one winmail.dat: each counts against the part cap."""
    one = tw.attachment_attributes(tw.File("a.txt", b"x"))
    count = max(_tnef_room(size) // len(one), 1100)
    return _winmail(tw.tnef([]) + one * count)


@hostile("count is larger than its data", baseline="attachment")
def tnef_huge_counts(size: int) -> bytes:
    """A file, then properties that claim 2**31 values in a few bytes, again and again."""
    bad = tw.attribute(tw.ATTACHMENT, tw.ATT_ATTACHMENT, tw.properties(
        struct.pack("<HHI", tw.PT_SHORT | tw.MV, 0x1234, 0x7FFFFFFF)))
    head = tw.tnef([tw.File("first.bin", _blob(_tnef_room(size) // 2))])
    return _winmail(head + bad * ((_tnef_room(size) - len(head)) // len(bad)))


@hostile("nest over", baseline="attachment")
def tnef_nested_items(size: int) -> bytes:
    """Outlook items in Outlook items, twenty deep, a big file at the bottom."""
    inner = tw.tnef([tw.File("deep.bin", _blob(_tnef_room(size) - 4000))])
    for _ in range(20):
        inner = tw.tnef([tw.File("item", embedded=inner)])
    return _winmail(inner)


@hostile("bad checksum", baseline="attachment")
def tnef_bad_checksums(size: int) -> bytes:
    """One big file whose checksum is wrong: a warning, the bytes kept."""
    return _winmail(tw.tnef([tw.File("bad.bin", _blob(_tnef_room(size) - 400), bad_checksum=True)]))


@hostile("runs past the end of winmail.dat", baseline="attachment")
def tnef_truncated(size: int) -> bytes:
    """A winmail.dat whose last file's data says it is 4 GB."""
    head = tw.tnef([tw.File("first.txt", b"first")])
    cut = tw.attribute(tw.ATTACHMENT, tw.ATT_ATTACH_DATA, _blob(_tnef_room(size) - len(head)),
                       length=0xFFFFFF00)
    return _winmail(head + tw.attachment_attributes(tw.File(None)) + cut)


# --- HTML -------------------------------------------------------------------------------------


def _html(body: bytes) -> bytes:
    return message(body, content_type="text/html; charset=utf-8")


@hostile(baseline="html")
def html_unclosed_tags(size: int) -> bytes:
    """"<a" repeated: html.parser is quadratic on it."""
    return _html(b"<a" * (size // 2))


@hostile(baseline="html")
def html_unclosed_end_tags(size: int) -> bytes:
    return _html(b"</" * (size // 2))


@hostile(baseline="html")
def html_unterminated_comment(size: int) -> bytes:
    return _html(b"<p>before</p><!--" + b"-" * size)


@hostile(baseline="html")
def html_unterminated_declaration(size: int) -> bytes:
    return _html(b"<p>before</p><!" + b"a" * size)


@hostile(baseline="html")
def html_lone_brackets(size: int) -> bytes:
    return _html(b"<" * size)


@hostile("renders only its start", baseline="html")
def html_huge(size: int) -> bytes:
    """An HTML body larger than the rendering cap."""
    return _html(_lines(b"<p>The quick <b>brown</b> fox.</p>\r\n", max(size, 5 << 20)))


# --- S/MIME -----------------------------------------------------------------------------------


@hostile("S/MIME")
def smime_garbage(size: int) -> bytes:
    """An S/MIME container that is random bytes."""
    junk = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(size // 32))
    return message(base64.encodebytes(junk).replace(b"\n", CRLF), "Content-Transfer-Encoding: base64",
                   content_type='application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"')


@hostile("S/MIME")
def smime_nested_der(size: int) -> bytes:
    """A signed-data container whose DER nests deeper and deeper."""
    n = max(1000, size // 4)
    der = b"\x30\x80" * n  # indefinite-length SEQUENCEs, never closed
    return message(base64.encodebytes(der).replace(b"\n", CRLF), "Content-Transfer-Encoding: base64",
                   content_type='application/pkcs7-mime; smime-type=signed-data; name="smime.p7m"')


# --- big but well formed ----------------------------------------------------------------------


@hostile()
def big_text_body(size: int) -> bytes:
    """A large 8-bit text body in a legacy charset (decoded as a stream)."""
    return message(_lines("Grüße aus Köln, schöne Straße.\r\n".encode("latin-1"), size),
                   content_type="text/plain; charset=iso-8859-1")
