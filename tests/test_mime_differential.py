"""Differential test: the streaming parser and the email package save the same files.

Both drive the same ``FolderLayout`` (the policy of what goes where), so any difference in
the saved files comes from parsing and decoding: boundaries, line endings, transfer
encodings, header defaults. Runs over the golden corpus and over random MIME trees.

S/MIME is left out on both sides (``verify=None``): it is checked by the corpus test.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.message
import hashlib
import os
import quopri
from email.message import Message
from email.policy import compat32
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_pop3mail.tasks.pop3.message.decoders import DECODED_ENCODINGS, UUENCODE
from prefect_pop3mail.tasks.pop3.message.layout import FolderLayout, LayoutOptions
from prefect_pop3mail.tasks.pop3.message.mime import Part, parse_file, parse_headers
from tests.test_store_corpus import CASES, CORPUS

# A small fixed budget in CI; POP3MAIL_SOAK=1 for a long run.
EXAMPLES = 5000 if os.environ.get("POP3MAIL_SOAK") else 300


def email_package_parse(path: Path | str, visitor: FolderLayout, *, nested: bool = False) -> None:
    """The reference: the email package's parse tree, walked into the same visitor."""
    raw = Path(path).read_bytes()
    linesep = "\r\n" if b"\r\n" in raw else "\n"
    _walk(email.message_from_bytes(raw, policy=compat32), visitor, None, 0, linesep)


def _walk(msg: Message, visitor, parent: Part | None, index: int, linesep: str) -> None:
    number = "" if parent is None else (f"{parent.number}.{index + 1}" if parent.number else str(index + 1))
    part = Part(headers=_same_header_reading(msg), number=number, parent=parent, index=index,
                depth=0 if parent is None else parent.depth + 1)
    if msg.get_content_maintype() == "multipart" and msg.is_multipart():
        visitor.begin_multipart(part)
        for i, sub in enumerate(msg.get_payload()):
            part.children += 1
            _walk(sub, visitor, part, i, linesep)
        visitor.end_multipart(part)
        return
    part.undecoded = part.transfer_encoding not in DECODED_ENCODINGS
    sink = visitor.begin_leaf(part)
    if sink is not None:
        part.undecoded = part.undecoded or _uudecode_fails(msg)
        policy = compat32.clone(linesep=linesep, max_line_length=0)
        if msg.get_content_type() == "message/rfc822" and msg.is_multipart():
            sink.write(msg.get_payload(0).as_bytes(policy=policy))
        elif msg.is_multipart():
            # message/delivery-status: the email package keeps a list of header blocks,
            # each printed with its blank line; the last blank line is the boundary's.
            blocks = b"".join(block.as_bytes(policy=policy) for block in msg.get_payload())
            sink.write(blocks[:-len(linesep)])
        else:
            sink.write(msg.get_payload(decode=True) or b"")
    visitor.end_leaf(part, sink)


def _uudecode_fails(msg: Message) -> bool:
    """Whether the email package gives up on a uuencoded body (and keeps it as it came)."""
    if msg.is_multipart() or msg.get_content_maintype() == "multipart":
        return False
    if str(msg.get("content-transfer-encoding", "")).lower() not in UUENCODE:
        return False
    try:
        email.message._decode_uu(msg.get_payload().encode("ascii", "surrogateescape"))
    except ValueError:
        return True
    return False


def _same_header_reading(msg: Message) -> Message:
    """The part's headers read the way the store reads them (raw 8-bit values as UTF-8):
    the comparison is about bodies, boundaries and decoding, not header charsets."""
    raw = "".join(f"{k}: {v}\n" for k, v in msg.raw_items())
    headers = parse_headers(raw.encode("ascii", "surrogateescape"), msg.get_default_type())
    return headers


def lay_out(source: Path, folder: Path, parse) -> dict[str, str]:
    folder.mkdir()
    work = folder.parent / f"{folder.name}-work"
    work.mkdir()
    layout = FolderLayout(folder, LayoutOptions(True, True), work, parse=parse)
    parse(source, layout)
    result = layout.finish()
    files = {p.relative_to(folder).as_posix(): hashlib.sha256(_comparable(p)).hexdigest()
             for p in sorted(folder.rglob("*")) if p.is_file()}
    files["(attachments)"] = repr(sorted(
        (a.file.path, a.filename, a.content_type, a.inline, a.part)
        for a in result.attachments))
    return files


def _comparable(path: Path) -> bytes:
    """A file's bytes, or for an attached message only that it exists.

    The reference cannot give an attached message's raw bytes, only the email package's
    regeneration of its parse tree, which differs from the original for broken MIME. What
    an attached message contains is compared through the files laid out from it, and its
    exact bytes are checked against the corpus (tests/test_store_corpus.py).
    """
    return b"attached message" if path.suffix == ".eml" else path.read_bytes()


def assert_same_files(source: Path, tmp: Path) -> None:
    streamed = lay_out(source, tmp / "streamed", parse_file)
    reference = lay_out(source, tmp / "reference", email_package_parse)
    assert streamed == reference


#: Corpus cases past one of our limits (MIME depth), where the email package has none.
BEYOND_LIMITS = {"hostile_deep_nesting"}


@pytest.mark.parametrize("name", [c for c in CASES if c not in BEYOND_LIMITS])
def test_streaming_parser_and_email_package_agree_on_the_corpus(name, tmp_path):
    assert_same_files(CORPUS / name / "message.eml", tmp_path)


# --- random MIME trees -------------------------------------------------------------------

_TEXT = st.text(st.sampled_from("abc xyz\n-=.é€\t"), max_size=120)
_BYTES = st.binary(max_size=300)


@st.composite
def mime_leaf(draw) -> bytes:
    ctype = draw(st.sampled_from(["text/plain", "text/html", "application/octet-stream",
                                  "image/png", "text/csv"]))
    encoding = draw(st.sampled_from(["7bit", "base64", "quoted-printable", None, *sorted(UUENCODE),
                                     "X-UUENCODE", "x-unknown"]))
    params = ""
    if ctype.startswith("text/"):
        params += "; charset=" + draw(st.sampled_from(["utf-8", "iso-8859-1", "us-ascii"]))
    headers = [f"Content-Type: {ctype}{params}"]
    if draw(st.booleans()):
        name = draw(st.sampled_from(["a.txt", "../x.bin", "CON", "r\u00e9sum\u00e9.pdf", "a.txt"]))
        disposition = draw(st.sampled_from(["attachment", "inline"]))
        headers.append(f'Content-Disposition: {disposition}; filename="{name}"')
    if ctype.startswith("text/"):
        payload = draw(_TEXT).replace("\n", "\r\n").encode("utf-8")
    else:
        payload = draw(_BYTES)
    if encoding == "base64":
        body = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    elif encoding == "quoted-printable":
        # quopri leaves a bare CR as it is; RFC 2045 wants it encoded.
        encoded = quopri.encodestring(payload.replace(b"\r\n", b"\n")).replace(b"\r", b"=0D")
        body = encoded.replace(b"\n", b"\r\n")
    elif encoding and encoding.lower() in UUENCODE:
        body = draw(uuencoded(payload))
    else:
        # Raw bytes could hold a line that looks like a boundary; keep them text-like.
        body = payload if ctype.startswith("text/") else payload.hex().encode()
    if encoding:
        headers.append(f"Content-Transfer-Encoding: {encoding}")
    return "\r\n".join(headers).encode() + b"\r\n\r\n" + body


@st.composite
def uuencoded(draw, payload: bytes) -> bytes:
    """uuencode as senders write it, or broken the ways it breaks: no begin line, no end
    line, an empty line inside, padding, junk (the email package then keeps it as it is)."""
    lines = [binascii.b2a_uu(payload[i:i + 45]).rstrip(b"\n") for i in range(0, len(payload), 45)]
    lines = [draw(st.sampled_from([b"begin 644 a.bin", b"begin 0644 x y", b"", b"begin x a"])),
             *lines, draw(st.sampled_from([b"`", b" ", b""])), draw(st.sampled_from([b"end", b"end  ", b""]))]
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))),
                     draw(st.sampled_from([b"", b"junk line", b"M" + b"A" * 60 + b"``", b"M!!"])))
    return b"\r\n".join(lines)


def mime_tree(depth: int = 3):
    counter = iter(range(10**6))

    @st.composite
    def node(draw, level: int) -> bytes:
        if level >= depth or draw(st.integers(0, 2)) == 0:
            return draw(mime_leaf())
        subtype = draw(st.sampled_from(["mixed", "alternative", "related", "digest"]))
        boundary = f"b{next(counter)}-{draw(st.integers(0, 99))}"
        children = draw(st.lists(node(level + 1), min_size=0, max_size=4))
        if subtype == "digest":
            children = [b"\r\n" + c if draw(st.booleans()) else c for c in children]
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + c + b"\r\n" for c in children)
        if draw(st.booleans()):
            body += b"--" + boundary.encode() + b"--\r\n"  # sometimes never closed
        return (f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
                + draw(st.sampled_from([b"", b"preamble\r\n"])) + body)

    return node(0)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=mime_tree())
def test_streaming_parser_and_email_package_agree_on_random_trees(tree, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diff")
    source = tmp / "m.eml"
    source.write_bytes(b"From: a@b\r\nSubject: random\r\nMIME-Version: 1.0\r\n" + tree)
    assert_same_files(source, tmp)
