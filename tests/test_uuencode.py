"""uuencode in the streaming decoder, against the email package's own decoder.

``email.message._decode_uu`` is what ``get_payload(decode=True)`` runs for x-uuencode,
uuencode, uue and x-uue; where it raises, the email package keeps the payload as it came.
The streaming decoder must give the same bytes whatever the input and however it is cut
into blocks, and say when it kept them undecoded.
"""

from __future__ import annotations

import binascii
import email.message
import io
import os
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_pop3mail.tasks.pop3.message import decoders
from prefect_pop3mail.tasks.pop3.message.decoders import MAX_UU_LINE, OctalToken, UUDecoder

EXAMPLES = 5000 if os.environ.get("POP3MAIL_SOAK") else 400


def reference(payload: bytes) -> tuple[bytes, bool]:
    """The email package's bytes, and whether it gave up (kept them undecoded)."""
    try:
        return email.message._decode_uu(payload), False
    except ValueError:
        return payload, True


def streamed(payload: bytes, cuts: list[int]) -> tuple[bytes, UUDecoder]:
    out = io.BytesIO()
    decoder = UUDecoder(out)
    start = 0
    for cut in sorted(cuts):
        decoder.write(payload[start:cut])
        start = cut
    decoder.write(payload[start:])
    decoder.close()
    return out.getvalue(), decoder


def encoded_lines(data: bytes) -> list[bytes]:
    return [binascii.b2a_uu(data[i:i + 45]).rstrip(b"\n") for i in range(0, len(data), 45)]


_LINE = st.one_of(
    st.builds(lambda d: encoded_lines(d)[0] if d else b"`", st.binary(max_size=45)),
    st.sampled_from([b"begin 644 a.bin", b"begin 0o_6 x", b"begin  644 x", b"begin -7", b"begin ",
                     b"begin 6x4 a", b"begin 0O7", b"begin \t7\x0b y", b"begin 7_", b"end", b"  end\t",
                     b"\fend \t", b"end x", b"`", b" ", b"", b"M", b"\x00", b"#0V%T", b"M" + b"`" * 70,
                     b"M" + b"A" * 60 + b"!", b"\xff\xfe", b"begin 644 " + "é".encode()]),
    st.binary(max_size=20),
    # Lines longer than what the decoder holds: summed up as they stream by.
    st.builds(lambda head, n, tail: head + tail * n,
              st.sampled_from([b"M" + b"A" * 60, b"begin ", b"begin 0", b"begin 7_", b" ", b"e", b"\t"]),
              st.integers(MAX_UU_LINE - 10, 3 * MAX_UU_LINE),
              st.sampled_from([b" ", b"`", b"0", b"_7", b"7", b"\t", b"x", b" end", b"A"])),
)
_BREAK = st.sampled_from([b"\n", b"\r\n", b"\r", b"\r\r\n", b"\n\n"])


@st.composite
def uu_payloads(draw) -> bytes:
    lines = draw(st.lists(st.tuples(_LINE, _BREAK), max_size=12))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), (b"begin 644 file", b"\r\n"))
    payload = b"".join(line + brk for line, brk in lines)
    if draw(st.booleans()):
        payload = payload.rstrip(b"\r\n")
    return payload


@settings(max_examples=EXAMPLES, deadline=None)
@given(payload=uu_payloads(), data=st.data())
def test_streamed_uudecode_is_the_email_packages(payload, data):
    cuts = data.draw(st.lists(st.integers(0, len(payload)), max_size=8))
    got, decoder = streamed(payload, cuts)
    want, gave_up = reference(payload)
    assert got == want
    assert decoder.undecoded == gave_up
    if gave_up:
        assert decoder.problem and "saved undecoded" in decoder.problem


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.binary(max_size=3000), newline=st.sampled_from([b"\n", b"\r\n"]),
       end=st.sampled_from([b"`\r\nend\r\n", b"end", b" \r\nend \r\ntrailing junk\r\n", b""]))
def test_real_uuencoded_files_decode_to_their_bytes(data, newline, end):
    payload = newline.join([b"begin 644 f.bin", *encoded_lines(data), b""]) + end
    got, decoder = streamed(payload, [len(payload) // 3])
    assert got == data
    assert not decoder.undecoded
    assert (decoder.problem is None) == (b"end" in end)


_MODE = st.one_of(
    st.text(st.sampled_from("01234567_oO+- \t\x0b\x0c\x1c89ax\x00"), max_size=12).map(str.encode),
    st.binary(max_size=8),
)


@settings(max_examples=EXAMPLES * 5, deadline=None)
@given(token=_MODE, data=st.data())
def test_octal_token_is_what_int_accepts(token, data):
    """The begin line's test (the email package: int(mode, 8)), read in pieces. A mode
    holds no space (it ends at one) and no line break."""
    token = token.partition(b" ")[0].replace(b"\r", b"").replace(b"\n", b"")
    try:
        int(token, 8)
        want = True
    except ValueError:
        want = False
    parsed = OctalToken()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(token)), max_size=4)))
    for start, end in zip([0, *cuts], [*cuts, len(token)], strict=True):
        parsed.feed(token[start:end])
    assert parsed.valid == want


@pytest.mark.parametrize("line", [
    b"M" + b"A" * 60 + b" " * (8 << 20),               # data, then megabytes of padding
    b" " * (8 << 20) + b"end",                           # an "end" after megabytes of blanks
    b"begin " + b"0_7" * (3 << 20) + b" name",          # a mode of megabytes
    b"M" + b"\x00" * (8 << 20),                          # an undecodable line of megabytes
])
def test_a_line_of_megabytes_costs_no_memory(line):
    payload = b"begin 644 x\r\n" + line + b"\r\nM" + b"A" * 60 + b"\r\nend\r\n"
    if line.startswith(b"begin"):
        payload = line + b"\r\nM" + b"A" * 60 + b"\r\nend\r\n"
    want, _ = reference(payload)
    tracemalloc.start()
    try:
        out = io.BytesIO()
        decoder = UUDecoder(out)
        for i in range(0, len(payload), decoders.HELD_BYTES):
            decoder.write(payload[i:i + decoders.HELD_BYTES])
        decoder.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.getvalue() == want
    # Blocks, the held bytes (a block in memory), the output: never the line.
    assert peak - len(out.getvalue()) < 6 * decoders.HELD_BYTES, peak


def test_held_bytes_spill_to_the_visitors_work_folder(tmp_path):
    """A large uuencoded body waits in scratch files of the layout's work folder."""
    data = os.urandom(3 * decoders.HELD_BYTES)
    payload = b"\r\n".join([b"begin 644 big.bin", *encoded_lines(data), b"`", b"end", b""])
    out = io.BytesIO()
    decoder = decoders.decoder_for("x-uuencode", out, str(tmp_path))
    decoder.write(payload[:len(payload) // 2])
    # Unnamed temporary files: the folder shows nothing, the descriptors point into it.
    held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")
            and os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path))]
    assert held, "nothing spilled to the work folder"
    decoder.write(payload[len(payload) // 2:])
    decoder.close()
    assert out.getvalue() == data


@pytest.mark.parametrize("encoding", sorted(decoders.UUENCODE))
def test_every_uuencode_name_is_decoded(encoding):
    assert isinstance(decoders.decoder_for(encoding, io.BytesIO()), UUDecoder)
    assert encoding in decoders.DECODED_ENCODINGS
