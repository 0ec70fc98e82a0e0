""""Verified" means trusted: a signature's integrity, its signer's chain to a trusted root,
the part it covers and the signer-versus-From match are reported apart, for every signer.

The certificates come from a throwaway CA built here (root, intermediate, leaves), with the
extensions a real S/MIME CA issues; the trust store is a PEM file of its root."""

from __future__ import annotations

import base64
import datetime
import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr

from prefect_pop3mail.blocks import POP3MailConfiguration
from prefect_pop3mail.tasks.pop3.errors import ConfigurationError
from prefect_pop3mail.tasks.pop3.models import SaveOptions, SignatureInfo
from prefect_pop3mail.tasks.pop3.storage.store import MessageStore
from prefect_pop3mail.tasks.pop3.trust import asn1, certificates, smime

NOW = datetime.datetime.now(datetime.UTC)
CONTENT = b"Content-Type: text/plain\r\n\r\nPay invoice 42 today.\r\n"
DIGESTS = {name: hashlib.new(name, CONTENT).digest() for name in ("sha1", "sha224", "sha256", "sha384", "sha512")}
ALICE = "Alice Example <alice@example.org>"


@dataclass
class Identity:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    cert: x509.Certificate


def issue(common_name: str, issuer: Identity | None = None, *, ca: bool = False,
          email: str | None = None, eku=(ExtendedKeyUsageOID.EMAIL_PROTECTION,),
          key=None, subject_email: str | None = None,
          constraints: x509.NameConstraints | None = None) -> Identity:
    """A certificate as a real S/MIME CA issues it (key identifiers, key usage, SAN, EKU);
    self-signed when there is no issuer. An EC key unless ``key`` is given;
    ``subject_email`` an emailAddress in the subject, ``constraints`` a CA's name
    constraints."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if subject_email:
        names.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, subject_email))
    subject = x509.Name(names)
    signer = issuer or Identity(key, None)
    builder = (
        x509.CertificateBuilder().subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.key.public_key()),
                       critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
    )
    if email:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]),
                                        critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if constraints:
        builder = builder.add_extension(constraints, critical=True)
    return Identity(key, builder.sign(signer.key, hashes.SHA256()))


@dataclass
class Pki:
    root: Identity
    intermediate: Identity
    alice: Identity
    trust_store: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    root = issue("Test Root CA", ca=True, eku=())
    intermediate = issue("Test S/MIME CA", root, ca=True)
    alice = issue("Alice Example", intermediate, email="alice@example.org")
    store = tmp_path_factory.mktemp("trust") / "roots.pem"
    store.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    return Pki(root, intermediate, alice, store)


def sign(*signers: Identity, content: bytes = CONTENT, carry: list[x509.Certificate] = (),
         detached: bool = True) -> bytes:
    """CMS SignedData over ``content``, carrying each signer's certificate and ``carry``."""
    builder = pkcs7.PKCS7SignatureBuilder().set_data(content)
    for signer in signers:
        builder = builder.add_signer(signer.cert, signer.key, hashes.SHA256())
    for cert in carry:
        builder = builder.add_certificate(cert)
    options = [pkcs7.PKCS7Options.Binary]
    if detached:
        options.append(pkcs7.PKCS7Options.DetachedSignature)
    return builder.sign(serialization.Encoding.DER, options)


# --- trusted, or not ------------------------------------------------------------------------


def test_a_self_signed_ceo_is_intact_but_not_trusted(pki):
    ceo = issue("Chief Executive Officer", email="ceo@example.org")
    info = smime.verify_detached(sign(ceo), DIGESTS, sender="CEO <ceo@example.org>",
                                 trust_store=pki.trust_store)
    assert info.signature_valid and info.signer_matches_from is True
    assert not info.signer_trusted and not info.verified
    assert "signer not trusted: self-signed certificate, not in the trust store" in info.detail
    assert info.model_dump()["verified"] is False  # downstream steps see it too


def test_a_self_signed_signer_in_the_trust_store_is_trusted(tmp_path):
    """A small organisation may trust one person's certificate directly."""
    ceo = issue("Chief Executive Officer", email="ceo@example.org")
    store = tmp_path / "people.pem"
    store.write_bytes(ceo.cert.public_bytes(serialization.Encoding.PEM))
    info = smime.verify_detached(sign(ceo), DIGESTS, sender="ceo@example.org", trust_store=store)
    assert info.verified, info.detail


def test_a_signer_chaining_to_the_trust_store_is_trusted(pki):
    info = smime.verify_detached(sign(pki.alice, carry=[pki.intermediate.cert]), DIGESTS,
                                 sender=ALICE, trust_store=pki.trust_store)
    assert info.signature_valid and info.signer_trusted, info.detail
    assert info.signer_matches_from is True and info.covers == "whole message"
    assert info.verified
    assert "signer trusted (chain to Test Root CA)" in info.detail
    assert [s.signer for s in info.signers] == [ALICE]


def test_without_the_trust_store_the_same_signer_is_not_trusted(pki):
    info = smime.verify_detached(sign(pki.alice, carry=[pki.intermediate.cert]), DIGESTS,
                                 sender=ALICE)
    assert info.signature_valid and not info.signer_trusted and not info.verified


def test_a_missing_intermediate_breaks_the_chain(pki):
    info = smime.verify_detached(sign(pki.alice), DIGESTS, sender=ALICE, trust_store=pki.trust_store)
    assert info.signature_valid and not info.signer_trusted
    assert "no chain to a trusted root" in info.detail


def test_a_certificate_not_meant_for_email_is_not_trusted(pki):
    server = issue("Web Server", pki.intermediate, email="alice@example.org",
                   eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    info = smime.verify_detached(sign(server, carry=[pki.intermediate.cert]), DIGESTS,
                                 sender=ALICE, trust_store=pki.trust_store)
    assert info.signature_valid and not info.signer_trusted
    assert "not for e-mail protection" in info.detail


def test_a_trusted_signer_for_another_address_does_not_match_from(pki):
    info = smime.verify_detached(sign(pki.alice, carry=[pki.intermediate.cert]), DIGESTS,
                                 sender="The CEO <ceo@example.org>", trust_store=pki.trust_store)
    assert info.signature_valid and info.signer_trusted
    assert info.signer_matches_from is False and not info.verified
    assert "signer address alice@example.org does not match From ceo@example.org" in info.detail


def test_addresses_match_without_regard_to_case(pki):
    info = smime.verify_detached(sign(pki.alice, carry=[pki.intermediate.cert]), DIGESTS,
                                 sender="ALICE@Example.ORG", trust_store=pki.trust_store)
    assert info.signer_matches_from is True and info.verified


def test_without_a_from_address_the_match_is_unknown_and_not_verified(pki):
    info = smime.verify_detached(sign(pki.alice, carry=[pki.intermediate.cert]), DIGESTS,
                                 trust_store=pki.trust_store)
    assert info.signer_matches_from is None and not info.verified


# --- algorithms -------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("digest, label", [("sha1", "SHA-1"), ("md5", "MD5")])
def test_sha1_and_md5_signatures_are_not_valid(pki, tmp_path, digest, label):
    """cryptography refuses to make them, so OpenSSL does; a real one, not a relabelled one.
    RSA, as there is no ECDSA with MD5."""
    signer = issue("Alice Example", pki.intermediate, email="alice@example.org",
                   key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    (tmp_path / "cert.pem").write_bytes(signer.cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(signer.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "content").write_bytes(CONTENT)
    made = subprocess.run(
        ["openssl", "cms", "-sign", "-binary", "-md", digest, "-signer", tmp_path / "cert.pem",
         "-inkey", tmp_path / "key.pem", "-in", tmp_path / "content", "-outform", "DER"],
        capture_output=True, check=False)
    if made.returncode:
        pytest.skip(f"this OpenSSL refuses {digest}: {made.stderr.decode()[:200]}")
    info = smime.verify_detached(made.stdout, DIGESTS, sender=ALICE, trust_store=pki.trust_store)
    assert not info.signature_valid and not info.verified
    assert f"{label} is broken and not accepted" in info.detail


# --- every signer ---------------------------------------------------------------------------


def _signature_values(der: bytes) -> list[asn1.Node]:
    signed = asn1.read(der).children()[1].children()[0].children()
    return [signer.children()[-1] for signer in signed[-1].children()]


def test_every_signer_is_checked_and_one_bad_signature_fails_the_whole(pki):
    bob = issue("Bob Example", pki.intermediate, email="bob@example.org")
    der = bytearray(sign(pki.alice, bob, carry=[pki.intermediate.cert]))
    second = _signature_values(bytes(der))[1]
    der[second.content_end - 1] ^= 0x01  # damage the second signer's signature only (DER order)
    info = smime.verify_detached(bytes(der), DIGESTS, sender=ALICE, trust_store=pki.trust_store)
    assert [s.signature_valid for s in info.signers] == [True, False]
    assert [s.signer_trusted for s in info.signers] == [True, True]
    assert not info.signature_valid and not info.verified
    assert "signer 2: signature not valid" in info.detail
    assert sorted(s.signer for s in info.signers) == [ALICE, "Bob Example <bob@example.org>"]


def test_an_untrusted_second_signer_makes_the_signature_untrusted(pki):
    ceo = issue("Chief Executive Officer", email="ceo@example.org")
    info = smime.verify_detached(sign(pki.alice, ceo, carry=[pki.intermediate.cert]), DIGESTS,
                                 sender=ALICE, trust_store=pki.trust_store)
    assert info.signature_valid
    trusted = {s.signer: s.signer_trusted for s in info.signers}
    assert trusted == {ALICE: True, "Chief Executive Officer <ceo@example.org>": False}
    assert not info.signer_trusted and not info.verified
    assert info.signer_matches_from is True  # Alice signed, among others


def test_too_many_signers_are_refused_not_checked(pki):
    many = sign(*[pki.alice] * (smime.MAX_SIGNERS + 1), carry=[pki.intermediate.cert])
    info = smime.verify_detached(many, DIGESTS, sender=ALICE, trust_store=pki.trust_store)
    assert not info.signature_valid and "MAX_SIGNERS" in info.detail


def test_too_many_certificates_are_refused_not_read(pki):
    carried = [pki.intermediate.cert] * smime.MAX_CERTIFICATES  # and the signer's own
    info = smime.verify_detached(sign(pki.alice, carry=carried), DIGESTS, sender=ALICE,
                                 trust_store=pki.trust_store)
    assert not info.signature_valid and "MAX_CERTIFICATES" in info.detail
    fits = sign(pki.alice, carry=carried[1:])
    assert smime.verify_detached(fits, DIGESTS, sender=ALICE, trust_store=pki.trust_store).verified


# --- what the signature covers, through the store -----------------------------------------


def _message(top_type: str, body: bytes, sender: str = ALICE) -> bytes:
    return (f"From: {sender}\r\nTo: bob@example.org\r\nSubject: Invoice\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: {top_type}\r\n\r\n").encode() + body


def _signed_body(entity: bytes, signature: bytes) -> bytes:
    wrapped = b"\r\n".join(base64.encodebytes(signature).split(b"\n"))
    return (b"--S\r\n" + entity + b"\r\n--S\r\n"
            b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + wrapped + b"\r\n--S--\r\n")


SIGNED_TYPE = 'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary=S'


def _save(tmp_path: Path, data: bytes, trust_store: Path | None):
    store = MessageStore(SaveOptions(directory=tmp_path / "saved", trust_store=trust_store),
                         "trust@test:110", "trust")
    incoming = store.incoming()
    incoming.write(data)
    incoming.finish()
    return store.save(incoming, "u1")


def test_a_signed_message_from_a_trusted_sender_is_verified_whole(pki, tmp_path):
    entity = b"Content-Type: text/plain\r\n\r\nPay invoice 42 today."
    message = _message(SIGNED_TYPE, _signed_body(entity, sign(pki.alice, content=entity,
                                                            carry=[pki.intermediate.cert])))
    mail = _save(tmp_path, message, pki.trust_store)
    assert mail.signature.verified, mail.signature.detail
    assert mail.signature.covers == "whole message"
    assert not [w for w in mail.warnings if "S/MIME" in w]


def test_a_signed_part_wrapped_in_unsigned_text_covers_only_that_part(pki, tmp_path):
    entity = b"Content-Type: text/plain\r\n\r\nPay invoice 42 today."
    signed = _signed_body(entity, sign(pki.alice, content=entity, carry=[pki.intermediate.cert]))
    body = (b"--M\r\nContent-Type: " + SIGNED_TYPE.encode() + b"\r\n\r\n" + signed
            + b"\r\n--M\r\nContent-Type: text/plain\r\n\r\nAlso: wire 10,000 EUR to the new account."
            + b"\r\n--M\r\nContent-Type: application/pdf; name=bank.pdf\r\n\r\n%PDF-1.4\r\n--M--\r\n")
    mail = _save(tmp_path, _message("multipart/mixed; boundary=M", body), pki.trust_store)
    info = mail.signature
    assert info.signature_valid and info.signer_trusted and info.signer_matches_from
    assert info.covers == "part 1" and not info.verified
    assert any("covers only part 1: the rest of the message is not signed" in w
               for w in mail.warnings), mail.warnings


def test_a_third_part_beside_the_signed_content_is_not_covered(pki, tmp_path):
    entity = b"Content-Type: text/plain\r\n\r\nPay invoice 42 today."
    signed = _signed_body(entity, sign(pki.alice, content=entity, carry=[pki.intermediate.cert]))
    extra = signed.replace(b"--S--\r\n", b"--S\r\nContent-Type: text/plain\r\n\r\nUnsigned.\r\n--S--\r\n")
    mail = _save(tmp_path, _message(SIGNED_TYPE, extra), pki.trust_store)
    assert mail.signature.signature_valid and mail.signature.covers == "part 1"
    assert not mail.signature.verified


def test_the_store_compares_the_signer_with_the_messages_from(pki, tmp_path):
    entity = b"Content-Type: text/plain\r\n\r\nPay invoice 42 today."
    signed = _signed_body(entity, sign(pki.alice, content=entity, carry=[pki.intermediate.cert]))
    mail = _save(tmp_path, _message(SIGNED_TYPE, signed, sender="CEO <ceo@example.org>"),
                 pki.trust_store)
    assert mail.signature.signer_matches_from is False and not mail.signature.verified
    assert any("does not match From ceo@example.org" in w for w in mail.warnings)


def test_an_opaque_signed_message_is_checked_against_from_and_trust(pki, tmp_path):
    entity = b"Content-Type: text/plain\r\n\r\nPay invoice 42 today.\r\n"
    der = sign(pki.alice, content=entity, carry=[pki.intermediate.cert], detached=False)
    body = b"\r\n".join(base64.encodebytes(der).split(b"\n"))
    message = _message("application/pkcs7-mime; smime-type=signed-data; name=smime.p7m",
                       b"", ).replace(b"\r\n\r\n", b"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
    mail = _save(tmp_path, message + body, pki.trust_store)
    assert mail.signature.verified, mail.signature.detail
    assert mail.text_path.read_text() == "Pay invoice 42 today.\n"


# --- the trust store setting ----------------------------------------------------------------


def test_the_block_field_reaches_the_save_options(pki, tmp_path):
    config = POP3MailConfiguration(server="mail.example.org", user="u", password="pw",
                                   save_directory=str(tmp_path),
                                   smime_trust_store=f" {pki.trust_store} ")
    field = POP3MailConfiguration.model_fields["smime_trust_store"]
    assert field.title == "S/MIME trust store" and field.description.endswith(".")
    assert config.save_options().trust_store == pki.trust_store
    unset = POP3MailConfiguration(server="m", user="u", password=SecretStr("pw"),
                                  save_directory=str(tmp_path))
    assert unset.save_options().trust_store is None


@pytest.mark.parametrize("content", [None, b"not a certificate\n"], ids=["missing", "no-pem"])
def test_an_unusable_trust_store_names_the_field(tmp_path, content):
    path = tmp_path / "roots.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigurationError, match="^smime_trust_store: "):
        certificates.check_trust_store(path)


def test_system_roots_are_read_from_the_system_bundle():
    assert certificates.system_roots(), "the system CA bundle (ca-certificates) gave no roots"


def test_signature_info_is_verified_only_when_every_fact_holds():
    facts = dict(signature_valid=True, signer_trusted=True, signer_matches_from=True,
                 covers="whole message")
    assert SignatureInfo(**facts).verified
    for name, wrong in [("signature_valid", False), ("signer_trusted", False),
                        ("signer_matches_from", None), ("signer_matches_from", False),
                        ("covers", "part 2")]:
        assert not SignatureInfo(**dict(facts, **{name: wrong})).verified, name
