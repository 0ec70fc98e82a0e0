"""The streaming parser's own promises: the same result whatever the block size, decoders
that match the email package chunk by chunk, and raw bytes for signature checks."""

from __future__ import annotations

import base64
import binascii
import io
from email._encoded_words import decode_b

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_pop3mail.tasks.pop3.message import decoders, mime
from tests.test_mime_differential import lay_out
from tests.test_store_corpus import CORPUS

# Cases whose shapes stress the scanner: CRLF split across blocks, delimiters at block ends,
# nested and broken multiparts, LF endings, padding and junk in base64.
STRESS_CASES = [
    "apple_mail_style", "forwarded_twice", "digest", "missing_closing_boundary",
    "outer_boundary_closes_inner", "boundary_with_transport_padding", "boundary_lookalike_lines",
    "base64_with_junk", "base64_missing_padding", "part_without_blank_line", "lf_line_endings",
    "quoted_printable_soft_breaks", "related_inline_images",
]


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7, 64, 4099])
def test_block_size_does_not_change_what_is_saved(block, tmp_path, monkeypatch):
    expected = {}
    for name in STRESS_CASES:
        expected[name] = lay_out(CORPUS / name / "message.eml", tmp_path / f"{name}-ref", mime.parse_file)
    monkeypatch.setattr(mime, "BLOCK", block)
    for name in STRESS_CASES:
        got = lay_out(CORPUS / name / "message.eml", tmp_path / f"{name}-{block}", mime.parse_file)
        assert got == expected[name], name


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


_B64_TEXT = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij0123456789+/=\r\n !*-"),
                    max_size=200)


@settings(max_examples=300, deadline=None)
@given(text=_B64_TEXT, cuts=st.lists(st.integers(0, 400), max_size=8))
def test_base64_decoder_matches_the_email_package_in_any_chunks(text, cuts):
    data = text.encode()
    expected, defects = decode_b(b"".join(data.splitlines()))
    out = io.BytesIO()
    decoder = decoders.Base64Decoder(out)
    for chunk in _chunked(data, cuts):
        decoder.write(chunk)
    decoder.close()
    if any(type(d).__name__ == "InvalidBase64LengthDefect" for d in defects):
        # The email package then keeps the encoded text; we drop the one stray character,
        # decode the rest and warn.
        assert decoder.problem and "one character too many" in decoder.problem
        return
    assert out.getvalue() == expected


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=400), cuts=st.lists(st.integers(0, 800), max_size=8))
def test_quoted_printable_decoder_matches_binascii_in_any_chunks(payload, cuts):
    data = binascii.b2a_qp(payload).replace(b"\n", b"\r\n")
    out = io.BytesIO()
    decoder = decoders.QuotedPrintableDecoder(out)
    for chunk in _chunked(data, cuts):
        decoder.write(chunk)
    decoder.close()
    assert out.getvalue() == binascii.a2b_qp(data)


def test_base64_junk_is_reported_but_whitespace_is_not():
    clean, junky = io.BytesIO(), io.BytesIO()
    good = decoders.Base64Decoder(clean)
    good.write(b"SGVs\r\n bG8=\t\r\n")
    good.close()
    bad = decoders.Base64Decoder(junky)
    bad.write(b"SGVs!!bG8=")
    bad.close()
    assert clean.getvalue() == junky.getvalue() == b"Hello"
    assert not good.junk and bad.junk


@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 600), max_size=6))
def test_canonical_tap_makes_every_line_ending_crlf(data, cuts):
    out = io.BytesIO()
    tap = mime.CanonicalTap(out)
    for chunk in _chunked(data, cuts):
        tap.write(chunk)
    tap.close()
    assert out.getvalue() == data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class _Recorder:
    """Records the parser's calls, with each leaf's decoded body."""

    def __init__(self, tap_for: str | None = None):
        self.events: list[tuple] = []
        self.bodies: dict[str, io.BytesIO] = {}
        self.tapped = io.BytesIO()
        self.tap_for = tap_for

    def begin_multipart(self, part):
        self.events.append(("begin", part.label, part.content_type))

    def end_multipart(self, part):
        self.events.append(("end", part.label))

    def begin_leaf(self, part):
        self.bodies[part.label] = io.BytesIO()
        return self.bodies[part.label]

    def end_leaf(self, part, sink):
        self.events.append(("leaf", part.label, part.content_type, sink.getvalue()))

    def raw_tap(self, part):
        return self.tapped if part.content_type == self.tap_for else None

    def warn(self, part, text):
        self.events.append(("warn", part.label if part else None, text))


def parse_bytes(data: bytes, visitor) -> None:
    mime.StreamParser(visitor).parse(io.BytesIO(data))


def test_raw_tap_sees_exactly_the_signed_part():
    signed = (b"Content-Type: multipart/mixed; boundary=in\n\n--in\nContent-Type: text/plain\n\n"
              b"a\n--in--\n")
    data = (b"Content-Type: multipart/signed; boundary=out; protocol=x\n\npreamble\n--out\n"
            + signed + b"\n--out\nContent-Type: application/x-pkcs7-signature\n\nSIG\n--out--\n")
    recorder = _Recorder(tap_for="multipart/signed")
    parse_bytes(data, recorder)
    assert recorder.tapped.getvalue() == signed.replace(b"\n", b"\r\n")
    assert recorder.bodies["1.1"].getvalue() == b"a"
    assert recorder.bodies["2"].getvalue() == b"SIG"


def test_events_for_a_nested_structure():
    data = (b"Content-Type: multipart/mixed; boundary=a\n\n--a\n"
            b"Content-Type: multipart/alternative; boundary=b\n\n--b\n\nplain\n--b\n"
            b"Content-Type: text/html\n\n<p>x</p>\n--b--\n--a\nContent-Type: image/png\n"
            b"Content-Transfer-Encoding: base64\n\n" + base64.b64encode(b"\x89PNG") + b"\n--a--\n")
    recorder = _Recorder()
    parse_bytes(data, recorder)
    assert recorder.events == [
        ("begin", "1", "multipart/mixed"),
        ("begin", "1", "multipart/alternative"),
        ("leaf", "1.1", "text/plain", b"plain"),
        ("leaf", "1.2", "text/html", b"<p>x</p>"),
        ("end", "1"),
        ("leaf", "2", "image/png", b"\x89PNG"),
        ("end", "1"),
    ]


def test_deep_nesting_is_cut_off_with_a_warning():
    depth = mime.MAX_DEPTH + 10
    head = b"".join(b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1)
                    for i in range(depth))
    data = b"Content-Type: multipart/mixed; boundary=b0\n\n" + head + b"deep\n"
    recorder = _Recorder()
    parse_bytes(data, recorder)
    warnings = [e for e in recorder.events if e[0] == "warn"]
    assert any("nested too deeply" in w[2] for w in warnings)


def test_an_endless_header_line_does_not_hold_the_message_in_memory():
    data = b"Subject: " + b"x" * (mime.MAX_HEADER_BYTES + 10) + b"\n\nbody\n"
    recorder = _Recorder()
    parse_bytes(data, recorder)
    assert any(e[0] == "warn" and "over 1 MB" in e[2] for e in recorder.events)
