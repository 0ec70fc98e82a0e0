"""Bounded at every exit, per message, whatever its structure (issue #23): the bytes the
layout writes (MAX_WRITE_FACTOR times the message, plus MAX_WRITE_SLACK), the signed parts
whose content is hashed (MAX_SIGNED_PARTS, with the digests their micalg names), and the
bytes parsed and hashed, which bound the CPU. Checked for every hostile class and for
random MIME trees (hypothesis); a file cut at the budget never passes for whole.

Work is counted (bytes written, parsed and hashed), not timed: how fast each class is
against a plain message of the same size is bench/bench_hostile.py's job.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_pop3mail.tasks.pop3.message import contents, layout
from prefect_pop3mail.tasks.pop3.message.layout import (
    MAX_COPY_FACTOR,
    MAX_SIGNED_PARTS,
    MAX_WRITE_FACTOR,
    MAX_WRITE_SLACK,
    write_budget,
)
from prefect_pop3mail.tasks.pop3.models import SaveOptions
from prefect_pop3mail.tasks.pop3.storage.store import ORIGINAL_NAME, MessageStore
from prefect_pop3mail.tasks.pop3.trust import smime
from tests.hostile import CLASSES, CRLF, _filler, message
from tests.test_smime_trust import SIGNED_TYPE, _message, _signed_body, pki  # noqa: F401

SOAK = os.environ.get("POP3MAIL_SOAK") == "1"
EXAMPLES = 300 if SOAK else 40


@dataclass
class Work:
    parsed: int = 0
    hashed: int = 0
    verified: int = 0


@pytest.fixture
def work(monkeypatch) -> Work:
    """Counts the bytes every parse reads, the bytes every digest takes, and the
    signatures checked."""
    counted = Work()
    parse_file = contents.parse_file

    def parse(path, visitor, **kwargs):
        counted.parsed += os.path.getsize(path)
        return parse_file(path, visitor, **kwargs)

    digest_write = layout._MultiDigest.write

    def hash_bytes(self, data):
        counted.hashed += len(data) * len(self.hashes)
        return digest_write(self, data)

    verify = smime.verify_detached

    def verify_counted(*args, **kwargs):
        counted.verified += 1
        return verify(*args, **kwargs)

    monkeypatch.setattr(contents, "parse_file", parse)
    monkeypatch.setattr(layout._MultiDigest, "write", hash_bytes)
    monkeypatch.setattr(smime, "verify_detached", verify_counted)
    return counted


def save(root: Path, data: bytes):
    store = MessageStore(SaveOptions(directory=root), "bounds@test:110", "bounds")
    incoming = store.incoming()
    incoming.write(data)
    incoming.finish()
    return store.save(incoming, hashlib.sha256(data).hexdigest()[:16])


def check_bounded(mail, data: bytes, work: Work) -> int:
    """The bounds for one saved message; returns the bytes its layout wrote."""
    folder = Path(mail.folder)
    files = {p for p in folder.rglob("*") if p.is_file() and p.name != ".complete"}
    recorded = {Path(p) for p in (mail.original_path, mail.text_path, mail.html_path,
                                  *(a.path for a in mail.attachments)) if p}
    assert files == recorded, "a file was left behind that the result does not list"
    for a in mail.attachments:  # a file cut at the budget is dropped, never kept as whole
        assert a.path.path.stat().st_size == a.size
        assert hashlib.sha256(a.path.read_bytes()).hexdigest() == a.sha256
    written = sum(p.stat().st_size for p in files if p.name != ORIGINAL_NAME)
    assert written <= write_budget(len(data)), (written, len(data))
    copies = sum(a.size for a in mail.attachments if a.content_type == "message/rfc822")
    assert copies <= MAX_COPY_FACTOR * len(data), (copies, len(data))
    assert work.verified <= MAX_SIGNED_PARTS
    # CPU: every byte parsed comes from the message or from what the layout wrote, and
    # every byte hashed from at most MAX_SIGNED_PARTS passes (line ends made CRLF: twice).
    assert work.parsed <= len(data) + written
    assert work.hashed <= MAX_SIGNED_PARTS * 2 * len(data) * len(layout._MultiDigest.NAMES)
    return written


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_hostile_class_stays_within_the_bounds(name, tmp_path, work):
    data = CLASSES[name].build(300 * 1024)
    check_bounded(save(tmp_path, data), data, work)


@pytest.mark.parametrize("size", [64 * 1024, 2 << 20])
def test_nested_messages_are_copied_twice_where_they_were_copied_eight_times(tmp_path, work,
                                                                           size):
    data = CLASSES["nested_messages_big"].build(size)
    mail = save(tmp_path, data)
    written = check_bounded(mail, data, work)
    assert written <= MAX_COPY_FACTOR * len(data)  # eight .eml copies, at the nesting cap
    assert any("MAX_COPY_FACTOR" in w for w in mail.warnings)
    emls = [a for a in mail.attachments if a.content_type == "message/rfc822"]
    assert len(emls) == 2  # two levels laid out; the third and deeper in their .eml only
    assert work.parsed <= (1 + MAX_COPY_FACTOR) * len(data)


def test_deep_signed_layers_hash_only_the_first_few_with_one_digest(tmp_path, work):
    data = CLASSES["signed_layers"].build(1 << 20)
    mail = save(tmp_path, data)
    check_bounded(mail, data, work)
    assert work.verified == MAX_SIGNED_PARTS
    # micalg=sha-256: one digest per pass, where there were five for each of 63 layers.
    assert work.hashed <= MAX_SIGNED_PARTS * 1.1 * len(data)
    assert mail.text_path.path.stat().st_size > 0.9 * len(data)


def test_a_write_cut_short_keeps_the_body_and_says_so(tmp_path, work):
    """Past what any body can take: an attached message (its .eml, 1x) whose HTML body is in
    a charset of 3-byte UTF-8 characters (body.html 3x, and its text rendering 3x). The text
    is where the budget runs out: kept cut short, with a warning."""
    size = 2 << 20
    inner = (b"Subject: Thai\r\nContent-Type: text/html; charset=tis-620\r\n\r\n<p>"
             + b"\xa1" * size + b"</p>\r\n")
    data = message(inner, content_type="message/rfc822")
    mail = save(tmp_path, data)
    check_bounded(mail, data, work)
    assert any("text.txt is cut short at the write budget" in w for w in mail.warnings)
    [text] = [a for a in mail.attachments if a.filename == "text.txt"]
    [html] = [a for a in mail.attachments if a.filename == "body.html"]
    assert html.size > 3 * size and 0 < text.size < 3 * size


# --- micalg: the digests hashed ------------------------------------------------------------


def _signed_with(pki, algorithm, micalg: str, tmp_path) -> object:  # noqa: F811
    entity = b"Content-Type: text/plain\r\n\r\nPay invoice 42 today."
    der = (pkcs7.PKCS7SignatureBuilder().set_data(entity)
           .add_signer(pki.alice.cert, pki.alice.key, algorithm)
           .add_certificate(pki.intermediate.cert)
           .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary,
                                               pkcs7.PKCS7Options.DetachedSignature]))
    data = _message(SIGNED_TYPE.replace("micalg=sha-256", f"micalg={micalg}"),
                    _signed_body(entity, der))
    store = MessageStore(SaveOptions(directory=tmp_path, trust_store=pki.trust_store),
                         "micalg@test:110", "micalg")
    incoming = store.incoming()
    incoming.write(data)
    incoming.finish()
    return store.save(incoming, micalg).signature


@pytest.mark.parametrize(("algorithm", "micalg"), [
    (hashes.SHA512(), "sha-512"), (hashes.SHA384(), "SHA384"), (hashes.SHA256(), "sha-512"),
    (hashes.SHA384(), "x-unknown"), (hashes.SHA224(), ""), (hashes.SHA512(), "sha-1, sha-512"),
])
def test_a_signature_with_the_declared_digest_is_verified(pki, tmp_path, algorithm,  # noqa: F811
                                                          micalg):
    info = _signed_with(pki, algorithm, micalg, tmp_path)
    assert info.verified, info.detail


def test_a_signature_with_another_digest_than_declared_is_not_valid(pki, tmp_path):  # noqa: F811
    info = _signed_with(pki, hashes.SHA512(), "sha-384", tmp_path)
    assert not info.signature_valid
    assert "uses sha512, which the message's micalg does not declare" in info.detail


# --- random structures ---------------------------------------------------------------------


def _junk_signature() -> bytes:
    return base64.encodebytes(b"\x30\x03\x02\x01\x01" * 10).replace(b"\n", CRLF)


leaf_size = st.integers(0, 150_000)


def _leaf(kind: str, size: int) -> bytes:
    if kind == "text":
        return b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\n" + "ü".encode(
            "latin-1") * size
    if kind == "html":
        return b"Content-Type: text/html\r\n\r\n" + b"<p>x</p>" * (size // 8)
    blob = base64.encodebytes(b"\xff" * size).replace(b"\n", CRLF)
    return (b"Content-Type: application/octet-stream; name=a.bin\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + blob)


def _wrap(kind: str, children: list[bytes], depth: int) -> bytes:
    boundary = f"b{depth}-{len(children)}"
    if kind == "message":
        return b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + children[0]
    if kind == "signed":
        b = boundary.encode()
        return (b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
                b'micalg=sha-256; boundary="' + b + b'"\r\n\r\n--' + b + CRLF + children[0]
                + b"\r\n--" + b + b"\r\nContent-Type: application/pkcs7-signature\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n" + _junk_signature()
                + b"--" + b + b"--\r\n")
    b = boundary.encode()
    return (b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\n'
            + b"".join(b"--" + b + CRLF + c + CRLF for c in children) + b"--" + b + b"--\r\n")


@st.composite
def entities(draw, depth: int = 0) -> bytes:
    kinds = ["text", "html", "attachment"] + (["mixed", "signed", "message"] * 2
                                              if depth < 9 else [])
    kind = draw(st.sampled_from(kinds))
    if kind in ("text", "html", "attachment"):
        return _leaf(kind, draw(leaf_size))
    count = draw(st.integers(1, 3)) if kind == "mixed" else 1
    children = [draw(entities(depth + 1)) for _ in range(count)]
    return _wrap(kind, children, depth)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not SOAK,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(entity=entities())
def test_any_structure_stays_within_the_bounds(tmp_path_factory, work, entity):
    work.parsed = work.hashed = work.verified = 0
    head, _, body = entity.partition(b"\r\n\r\n")
    data = message(body, content_type=head.split(b": ", 1)[1].decode())
    check_bounded(save(tmp_path_factory.mktemp("any"), data), data, work)


def test_the_budget_is_documented_as_it_is():
    assert write_budget(1000) == MAX_WRITE_FACTOR * 1000 + MAX_WRITE_SLACK
    assert _filler(100)  # the hostile builders' filler is what the classes use
