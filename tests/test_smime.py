"""S/MIME: key stores, decryption errors, what signature checking accepts and refuses as
intact (``signature_valid``; trust, coverage and the From match are in test_smime_trust.py), and
the batch promise against a real Dovecot: a message that cannot be decrypted stays on the
server while the rest of the batch is saved."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import (
    SMIMEDecryptError,
    SMIMEKeyNotFoundError,
    SMIMEKeyPasswordError,
)
from prefect_pop3mail.tasks.pop3.models import ReceiveOptions, SaveOptions
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
from prefect_pop3mail.tasks.pop3.trust import smime
from tests.conftest import sample_message
from tests.test_store_corpus import CORPUS, KEY_PASSWORD

CONTENT = b"Content-Type: text/plain\r\n\r\nSigned words.\r\n"
DIGESTS = {name: hashlib.new(name, CONTENT).digest() for name in ("sha1", "sha224", "sha256", "sha384", "sha512")}


def identity(key, *, valid_from=datetime.datetime(2020, 1, 1), valid_to=datetime.datetime(2120, 1, 1)):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Signer"),
                      x509.NameAttribute(NameOID.EMAIL_ADDRESS, "signer@example.org")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid_from.replace(tzinfo=datetime.UTC))
            .not_valid_after(valid_to.replace(tzinfo=datetime.UTC))
            .sign(key, hashes.SHA256()))
    return key, cert


@pytest.fixture(scope="module")
def rsa_signer():
    return identity(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def detached(signer, digest=hashes.SHA256(), *options, content=CONTENT) -> bytes:
    key, cert = signer
    return (pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(cert, key, digest)
            .sign(serialization.Encoding.DER,
                  [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary, *options]))


@pytest.mark.parametrize("digest", [hashes.SHA256(), hashes.SHA384(), hashes.SHA512()],
                         ids=lambda d: d.name)
def test_rsa_signature_is_intact(rsa_signer, digest):
    info = smime.verify_detached(detached(rsa_signer, digest), DIGESTS,
                                 sender="Test Signer <signer@example.org>")
    assert info.signature_valid, info.detail
    assert f"signature intact ({digest.name})" in info.detail
    assert info.signer == "Test Signer <signer@example.org>"
    assert info.signed_at is not None
    assert info.signer_matches_from is True
    # Intact is not verified: this self-signed certificate chains to nothing trusted.
    assert not info.signer_trusted and not info.verified
    assert "signer not trusted" in info.detail


def test_ecdsa_signature_is_intact():
    info = smime.verify_detached(detached(identity(ec.generate_private_key(ec.SECP256R1()))), DIGESTS)
    assert info.signature_valid, info.detail


def test_signature_without_signed_attributes_is_checked_over_the_content(rsa_signer):
    info = smime.verify_detached(
        detached(rsa_signer, hashes.SHA256(), pkcs7.PKCS7Options.NoAttributes), DIGESTS)
    assert info.signature_valid, info.detail
    assert info.signed_at is None
    changed = dict(DIGESTS, sha256=hashlib.sha256(b"other").digest())
    assert not smime.verify_detached(
        detached(rsa_signer, hashes.SHA256(), pkcs7.PKCS7Options.NoAttributes), changed
    ).signature_valid


def test_changed_content_is_reported(rsa_signer):
    changed = dict(DIGESTS, sha256=hashlib.sha256(CONTENT + b"x").digest())
    info = smime.verify_detached(detached(rsa_signer), changed)
    assert not info.signature_valid and "message digest mismatch" in info.detail
    assert info.signer == "Test Signer <signer@example.org>"


def test_a_damaged_signature_value_does_not_verify(rsa_signer):
    der = bytearray(detached(rsa_signer))
    der[-5] ^= 0xFF  # inside the signature value, the last field
    info = smime.verify_detached(bytes(der), DIGESTS)
    assert not info.signature_valid
    assert "does not match the content" in info.detail


def test_a_missing_signer_certificate_is_reported(rsa_signer):
    info = smime.verify_detached(detached(rsa_signer, hashes.SHA256(), pkcs7.PKCS7Options.NoCerts), DIGESTS)
    assert not info.signature_valid and not info.signer_trusted and "not included" in info.detail


def test_a_signer_certificate_expired_at_signing_time_is_not_trusted():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    old = identity(key, valid_from=datetime.datetime(2001, 1, 1), valid_to=datetime.datetime(2002, 1, 1))
    info = smime.verify_detached(detached(old), DIGESTS)
    assert not info.signer_trusted and not info.verified
    assert "not valid at signing time" in info.detail


@pytest.mark.parametrize("junk", [b"", b"\x30\x80", b"\x30\x03\x02\x01", b"not asn.1 at all" * 10,
                                  bytes(range(256))])
def test_garbage_signatures_are_reported_not_raised(junk):
    info = smime.verify_detached(junk, DIGESTS)
    assert not info.signature_valid and not info.verified
    assert info.detail.startswith("signature structure unreadable")


def test_opaque_signed_data_gives_its_content(rsa_signer):
    key, cert = rsa_signer
    der = (pkcs7.PKCS7SignatureBuilder().set_data(CONTENT).add_signer(cert, key, hashes.SHA256())
           .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary]))
    content, info = smime.verify_opaque(der)
    assert content == CONTENT and info.signature_valid, info.detail
    assert info.covers == smime.WHOLE_MESSAGE


# --- key stores --------------------------------------------------------------------------


def test_missing_key_store_names_the_field(tmp_path):
    store = smime.KeyStore(tmp_path / "orders.p12", SecretStr("pw"))
    with pytest.raises(SMIMEKeyNotFoundError, match="public_key_name: key store for 'orders'"):
        store.decrypt(b"")


def test_wrong_password_names_the_field_and_not_the_password():
    store = smime.KeyStore(CORPUS / "keys" / "bob.p12", SecretStr("hunter2-wrong"))
    with pytest.raises(SMIMEKeyPasswordError, match="public_key_password") as caught:
        store.decrypt(b"")
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value.args)


def test_a_key_store_without_an_rsa_key_is_refused(tmp_path):
    key, cert = identity(ec.generate_private_key(ec.SECP256R1()))
    path = tmp_path / "ec.p12"
    path.write_bytes(pkcs12.serialize_key_and_certificates(
        b"ec", key, cert, None, serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(SMIMEKeyPasswordError, match="must hold an RSA key"):
        smime.KeyStore(path, SecretStr("pw")).decrypt(b"")


def test_damaged_ciphertext_is_a_decrypt_error():
    store = smime.KeyStore(CORPUS / "keys" / "bob.p12", SecretStr(KEY_PASSWORD))
    with pytest.raises(SMIMEDecryptError, match="not encrypted for public key 'bob'"):
        store.decrypt(b"\x30\x03\x02\x01\x00")


# --- the batch, against a real server ----------------------------------------------------


@pytest.mark.dovecot
def test_an_undecryptable_message_stays_on_the_server_and_the_batch_goes_on(mailbox, tmp_path):
    for_bob = (CORPUS / "smime_encrypted" / "message.eml").read_bytes()
    for_mallory = (CORPUS / "smime_encrypted_for_someone_else" / "message.eml").read_bytes()
    mailbox.deliver(for_bob, sample_message(1), for_mallory, sample_message(2))
    save = SaveOptions(directory=tmp_path, key_store=CORPUS / "keys" / "bob.p12",
                       key_password=SecretStr(KEY_PASSWORD))
    report = receive_mailbox("smime-box", mailbox.settings(), save,
                             ReceiveOptions(remove_after_read=True))
    assert len(report.received) == 3
    decrypted = [m for m in report.received if m.decrypted]
    assert len(decrypted) == 1
    assert decrypted[0].text_path.read_text("utf-8") == "Signed text.\n"
    assert [a.path.name for a in decrypted[0].attachments] == ["contract.pdf"]
    assert [(f.error_type, "bob" in f.error) for f in report.failed] == [("SMIMEDecryptError", True)]
    assert mailbox.count() == 1  # only the message for Mallory is left

    # The next run tries it again (and fails the same way): nothing was lost.
    again = receive_mailbox("smime-box", mailbox.settings(), save, ReceiveOptions(remove_after_read=True))
    assert [f.error_type for f in again.failed] == ["SMIMEDecryptError"]
    assert mailbox.count() == 1


def test_an_smime_container_over_the_memory_cap_keeps_only_the_original(tmp_path, monkeypatch):
    from prefect_pop3mail.tasks.pop3.message import contents
    from prefect_pop3mail.tasks.pop3.storage.store import MessageStore

    monkeypatch.setattr(contents, "MAX_SMIME_BYTES", 4096)  # the real cap is 64 MB
    big = (CORPUS / "smime_signed_opaque_ber" / "message.eml").read_bytes()  # over 4 kB
    keeper = MessageStore(SaveOptions(directory=tmp_path), "m@h:1", "c")
    incoming = keeper.incoming()
    incoming.write(big)
    incoming.finish()
    mail = keeper.save(incoming, "u1")
    keeper.close()
    assert mail.original_path.read_bytes() == big and mail.text_path is None
    assert any("MAX_SMIME_BYTES" in w for w in mail.warnings), mail.warnings
