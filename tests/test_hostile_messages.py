"""Hostile messages, class by class (tests/hostile.py): saving never raises, keeps the
original, stays inside the message's folder, and says which limit it hit. Each limit also
gets a test that it holds. How fast each class is, against an ordinary message of the same
size, is measured by bench/bench_hostile.py (no timing here)."""

from __future__ import annotations

import base64
import codecs
import io
import tracemalloc
from datetime import datetime
from email.message import Message
from email.utils import getaddresses

import pytest

from prefect_pop3mail.tasks.pop3.message import charsets, decoders, headers, htmltext, layout, mime
from prefect_pop3mail.tasks.pop3.message.filenames import NameAllocator, decode_rfc2047
from prefect_pop3mail.tasks.pop3.message.headers import (
    header_fields,
    parse_date,
    parse_headers,
    read_head,
    split_addresses,
    split_params,
)
from prefect_pop3mail.tasks.pop3.sinks import Spool
from tests.hostile import CLASSES, message, ordinary
from tests.test_store_hostile import check_saved

SIZE = 256 * 1024


def warnings_for(mail, data: bytes) -> list[str]:
    """The result's warnings and the header reader's (the store adds the latter to the
    result once the lead's store change lands; until then they are read here)."""
    found: list[str] = []
    header_fields(read_head(io.BytesIO(data)), found)
    return [*mail.warnings, *found]


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_each_hostile_class_is_saved_with_its_warning(name, tmp_path):
    case = CLASSES[name]
    data = case.build(SIZE)
    mail = check_saved(tmp_path, data, name)
    assert mail is not None, "saving raised an error for a malformed message"
    assert mail.original_path.read_bytes() == data
    if case.warning:
        assert any(case.warning in w for w in warnings_for(mail, data)), mail.warnings
    assert len(mail.warnings) <= layout.MAX_WARNINGS + 1
    assert len(mail.sender) <= headers.MAX_TEXT_CHARS
    assert len(mail.subject) <= headers.MAX_TEXT_CHARS
    assert len(mail.recipients) <= headers.MAX_RECIPIENTS


def test_an_ordinary_message_gives_no_warning(tmp_path):
    data = ordinary(SIZE)
    mail = check_saved(tmp_path, data, "ordinary")
    assert warnings_for(mail, data) == []
    assert [a.filename for a in mail.attachments] == ["report.pdf"]


# --- headers ----------------------------------------------------------------------------------


def test_header_fields_are_capped_in_number_and_length():
    data = message(b"x", *(["X-A: b"] * 50_000), Subject="s" * 200_000)
    head = read_head(io.BytesIO(data))
    assert len(head) <= headers.MAX_HEADER_FIELDS
    assert all(len(str(v)) <= headers.MAX_FIELD_CHARS for _, v in head.raw_items())
    found: list[str] = []
    fields = header_fields(head, found)
    assert len(fields["subject"]) == headers.MAX_TEXT_CHARS
    assert any(f"over {headers.MAX_HEADER_FIELDS} header fields" in w for w in found)
    assert any("subject is over" in w for w in found)


def test_the_header_section_is_read_within_its_byte_cap():
    data = b"Subject: " + b"y" * (5 << 20)  # no line break, no end of headers
    head = read_head(io.BytesIO(data))
    assert len(str(head["subject"])) <= headers.MAX_FIELD_CHARS
    assert any("headers are over" in p for p in head.problems)


def test_recipients_are_capped():
    to = ", ".join(f"u{i}@example.org" for i in range(5000))
    found: list[str] = []
    fields = header_fields(parse_headers(f"To: {to}\nCc: {to}\n".encode()), found)
    assert fields["recipients"] == [f"u{i}@example.org" for i in range(headers.MAX_RECIPIENTS)]
    assert any(f"only the first {headers.MAX_RECIPIENTS}" in w for w in found)


@pytest.mark.parametrize("value", [
    "(" * 2000, "(" * 2000 + "a@b" + ")" * 2000, "(a(b(c" * 3000 + "<x@y>", '"' * 5001,
    "<" * 5000, "\\" * 5001, ":" * 3000 + ";" * 3000, "a@b, " * 20000, "=?utf-8?q?" * 5000,
])
def test_hostile_address_lists_are_read_without_error(value):
    pairs = split_addresses(value)
    assert isinstance(pairs, list)
    fields = header_fields(parse_headers(f"From: {value}\nTo: {value}\n".encode()))
    assert len(fields["recipients"]) <= headers.MAX_RECIPIENTS


@pytest.mark.parametrize("value", [
    "Alice Example <alice@example.org>",
    '"Doe, John" <john@example.org>, bob@example.org',
    "bob@example.org (Bob Smith)",
    "Team: a@example.org, b@example.org;, c@example.org",
    "<plain@example.org>",
    '"quoted \\" name" <q@example.org>',
    "undisclosed-recipients:;",
])
def test_ordinary_address_lists_read_as_the_email_package_reads_them(value):
    expected = [(n, a) for n, a in getaddresses([value]) if a]
    assert [(n, a) for n, a in split_addresses(value) if a] == expected


def test_comments_name_an_address_only_when_it_has_no_name():
    assert split_addresses("Alice (x (y)) <a@example.org>, b@example.org (Bob (B))") == [
        ("Alice", "a@example.org"), ("Bob (B)", "b@example.org")]


@pytest.mark.parametrize("value", [
    "Mon, 1 Jan 99999999999 00:00:00 +0000", "Mon, 1 Jan 10000 00:00:00 +0000",
    "1 Jan 2026 99:99:99 +0000", "1 Jan 2026 10:00:00 +99999999", "31 Feb 2026 10:00:00 +0000",
    "1 Jan " + "9" * 5000 + " 10:00:00", "x" * 10_000, "", "((((", "1 Jan 2026 10:00:00 -2400",
])
def test_absurd_dates_are_no_date(value):
    assert parse_date(value) is None
    found: list[str] = []
    assert header_fields(parse_headers(f"Date: {value}\n".encode()), found)["date"] is None
    if value.strip():
        assert any("is not a date" in w for w in found)


def test_dates_are_always_aware():
    assert parse_date("Tue, 01 Dec 2026 10:00:00 -0000").tzinfo is not None
    assert parse_date("Tue, 01 Dec 2026 10:00:00").utcoffset().total_seconds() == 0
    assert parse_date("Tue, 01 Dec 2026 10:00:00 +0130") == datetime.fromisoformat("2026-12-01T10:00:00+01:30")


def test_a_header_that_cannot_be_read_is_a_warning_not_an_error(monkeypatch):
    def broken(value):
        raise RecursionError("deep")

    monkeypatch.setattr(headers, "split_addresses", broken)
    found: list[str] = []
    fields = header_fields(parse_headers(b"From: a@b\nSubject: s\n"), found)
    assert fields["sender"] == "" and fields["subject"] == "s"
    assert any("From header could not be read (RecursionError)" in w for w in found)


# --- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [
    "text/plain; name*0=a; name*=b", "a/b; filename*0*=utf-8''%; filename*=x; filename*1=y",
    'a/b; x="' + ';"' * 20000, "a/b; " + "x*99999999999999=1; " * 1000, "a/b; =; ==; ;;; *=; **=",
    "a/b; name*0*=zlib_codec''%78%9c; name*1=x", "a/b; name*=punycode''abc-" + "9" * 10_000,
])
def test_hostile_parameters_are_read_without_error(value):
    parsed = split_params(value)
    assert len(parsed.params) <= headers.MAX_PARAMS
    part = mime.Part(headers=parse_headers(f"Content-Type: {value}\nContent-Disposition: {value}\n".encode()),
                     number="1")
    assert part.content_type and (part.filename is None or isinstance(part.filename, str))


@pytest.mark.parametrize("value", [
    'attachment; filename="report.pdf"',
    "attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf",
    "attachment; filename*0*=utf-8''r%C3%A9; filename*1*=sum%C3%A9.pdf",
    'attachment; filename="plain.pdf"; filename*=utf-8\'\'fancy.pdf',
    'attachment; filename="C:\\\\Users\\\\x\\\\a.pdf"',
    r'attachment; filename="C:\Users\x\a.pdf"',
    'attachment; filename="say \\"hi\\".txt"',
    "attachment; filename=<angle.pdf>",
    "attachment; FileName=Upper.PDF",
])
def test_ordinary_parameters_read_as_the_email_package_reads_them(value):
    reference = Message()
    reference["Content-Disposition"] = value
    part = mime.Part(headers=parse_headers(f"Content-Disposition: {value}\n".encode()), number="1")
    assert part.filename == reference.get_filename()


def _leaf_warnings(tmp_path, content_type: str, body: bytes = b"x") -> list[str]:
    mail = check_saved(tmp_path, message(body, content_type=content_type), "u")
    return mail.warnings


def test_parameters_beyond_the_cap_are_a_warning(tmp_path):
    params = "; ".join(f"p{i}=v" for i in range(headers.MAX_PARAMS + 50))
    warnings = _leaf_warnings(tmp_path, f"application/pdf; {params}; name=late.pdf")
    assert any(f"over {headers.MAX_PARAMS} parameters" in w for w in warnings)
    assert split_params(f"a/b; {params}").cut


def test_an_over_long_content_type_is_a_warning(tmp_path):
    warnings = _leaf_warnings(tmp_path, "application/" + "x" * 300)
    assert any(f"content type over {mime.MAX_TYPE_CHARS}" in w for w in warnings)


def test_markup_longer_than_a_tag_can_be_is_text_and_a_warning(tmp_path):
    body = b"<p>before</p><b " + b"c" * (htmltext.MAX_TAG + 10) + b"><p>after</p>"
    mail = check_saved(tmp_path, message(body, content_type="text/html"), "u")
    text = mail.text_path.read_text()
    assert text.startswith("before\n<b ccc") and text.endswith("after\n")
    assert any("HTML markup over" in w for w in mail.warnings)


# --- charsets ---------------------------------------------------------------------------------

_NOT_TEXT = ["zlib_codec", "zlib", "bz2", "bz2_codec", "base64_codec", "base64", "hex", "hex_codec",
             "uu", "uu_codec", "rot13", "rot_13", "quopri", "punycode", "idna", "undefined"]


@pytest.mark.parametrize("label", _NOT_TEXT)
def test_only_text_codecs_decode(label):
    assert charsets.text_codec(label) is None
    decoding = charsets.choose([b"x\x9c\x00"], label)
    info = codecs.lookup(decoding.codec)
    assert info._is_text_encoding and info.name in ("utf-8", "cp1252")
    assert "not a text charset" in decoding.warning
    word = f"=?{label}?B?{base64.b64encode(b'abc').decode()}?="
    assert decode_rfc2047(word) == word


def test_decoding_a_large_body_keeps_memory_flat(tmp_path):
    spool = Spool(tmp_path)
    for _ in range(20):
        spool.write("Grüße aus Köln\r\n".encode("latin-1") * 65536)  # 20 x ~1 MB
    tracemalloc.start()
    try:
        decoding = charsets.choose(spool, "iso-8859-1")
        for _ in charsets.decode_chunks(spool, decoding):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        spool.close()
    assert peak < 4 << 20, peak


# --- MIME -------------------------------------------------------------------------------------


def test_parts_beyond_the_cap_are_not_laid_out(tmp_path):
    data = CLASSES["many_parts"].build(0)
    mail = check_saved(tmp_path, data, "u")
    assert len(mail.attachments) <= layout.MAX_PARTS
    assert any(f"over {layout.MAX_PARTS} MIME parts" in w for w in mail.warnings)
    assert mail.original_path.read_bytes() == data


def test_the_part_cap_covers_attached_messages(tmp_path):
    mail = check_saved(tmp_path, CLASSES["many_attached_messages"].build(SIZE), "u")
    assert len(mail.attachments) <= layout.MAX_PARTS
    assert any(f"over {layout.MAX_PARTS} MIME parts" in w for w in mail.warnings)


def test_warnings_are_capped(tmp_path):
    part = b"Content-Type: text/plain\r\nnot a header\r\n"
    body = b"".join(b"--B\r\n" + part for _ in range(500)) + b"--B--\r\n"
    mail = check_saved(tmp_path, message(body, content_type='multipart/mixed; boundary="B"'), "u")
    assert len(mail.warnings) == layout.MAX_WARNINGS + 1
    assert "more warnings" in mail.warnings[-1]


def test_equal_names_are_made_unique_in_constant_time_each():
    calls = 0

    class Counting(NameAllocator):
        def _is_taken(self, candidate, also):
            nonlocal calls
            calls += 1
            return super()._is_taken(candidate, also)

    names = Counting()
    got = [names.claim("a.pdf") for _ in range(10_000)]
    assert len({n.casefold() for n in got}) == 10_000
    assert got[:3] == ["a.pdf", "a (2).pdf", "a (3).pdf"]
    assert calls <= 2 * 10_000


def test_deep_nesting_is_read_as_a_leaf(tmp_path):
    mail = check_saved(tmp_path, CLASSES["nested_multiparts"].build(0), "u")
    assert any("nested too deeply" in w for w in mail.warnings)


class _Collect:
    def __init__(self):
        self.data = bytearray()

    def write(self, data):
        self.data += data


def test_quoted_printable_without_line_breaks_is_decoded_in_pieces():
    out = _Collect()
    decoder = decoders.QuotedPrintableDecoder(out)
    block = b"=41=" * 65536  # escapes cut at every possible place across blocks
    for _ in range(8):
        decoder.write(block)
        assert len(decoder._carry) <= decoders.MAX_QP_LINE + len(block)
    decoder.close()
    import binascii

    assert bytes(out.data) == binascii.a2b_qp(block * 8)


def test_base64_with_padding_everywhere_decodes_as_binascii_does():
    import binascii

    data = b"AAAA=!" * 100_000
    out = _Collect()
    decoder = decoders.Base64Decoder(out)
    for i in range(0, len(data), 4096):
        decoder.write(data[i:i + 4096])
    decoder.close()
    assert bytes(out.data) == binascii.a2b_base64(data.replace(b"!", b""))


def test_boundary_lookalike_lines_are_body(tmp_path):
    body = b"\n--" * 100_000
    data = message(b"--B\r\nContent-Type: application/octet-stream\r\n\r\n" + body + b"\r\n--B--\r\n",
                   content_type='multipart/mixed; boundary="B"')
    mail = check_saved(tmp_path, data, "u")
    assert mail.attachments[0].path.read_bytes() == body


# --- HTML -------------------------------------------------------------------------------------


@pytest.mark.parametrize("html, text", [
    ("<a" * 50_000, "<a" * 50_000),  # markup never closed is text
    ("</" * 50_000, "</" * 50_000),
    ("<" * 100_000, "<" * 100_000),
    ("<p>a</p><!--" + "-" * 100_000, "a\n"),
    ("x<!" + "a" * 100_000, "x<!" + "a" * 100_000),
    ("<p>x" + "<b " + "c" * (htmltext.MAX_TAG + 10), None),
])
def test_pathological_markup_renders(html, text):
    rendered = htmltext.render(html[i:i + 8192] for i in range(0, len(html), 8192))
    if text is not None:
        assert rendered == text


def test_html_rendering_is_capped(tmp_path):
    mail = check_saved(tmp_path, CLASSES["html_huge"].build(0), "u")
    assert mail.text_path.path.stat().st_size <= layout.MAX_HTML_RENDER
    assert any("renders only its start" in w for w in mail.warnings)
