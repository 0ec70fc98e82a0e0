"""S/MIME: decrypt enveloped messages with the configured key store, check signatures.

Decryption uses the cryptography package (PKCS#12 key store, PKCS#7 EnvelopedData).
cryptography cannot verify PKCS#7 signatures, so ``verify`` reads the SignedData itself
(asn1.py) and checks, with cryptography's primitives:

- the message digest in the signed attributes equals the digest of the content;
- the signature over the signed attributes (or the content) with the signer's certificate
  from the message (RSA PKCS#1 v1.5, RSA-PSS, ECDSA);
- the certificate's validity period at the signing time (or now, when undated).

It does not check the certificate's chain to a trusted root or its revocation: the
configuration names no trust store. ``SignatureInfo.detail`` says so.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import pkcs7, pkcs12
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3 import asn1
from prefect_pop3mail.tasks.pop3.errors import (
    SMIMEDecryptError,
    SMIMEKeyNotFoundError,
    SMIMEKeyPasswordError,
)
from prefect_pop3mail.tasks.pop3.models import SignatureInfo

ENVELOPED_TYPES = {"application/pkcs7-mime", "application/x-pkcs7-mime"}

_SIGNED_DATA = "1.2.840.113549.1.7.2"
_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_SIGNING_TIME = "1.2.840.113549.1.9.5"
_DIGESTS = {
    "1.3.14.3.2.26": "sha1",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
_HASHES = {"sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
           "sha384": hashes.SHA384, "sha512": hashes.SHA512}
_RSA_PSS = "1.2.840.113549.1.1.10"
NOT_CHAINED = "certificate chain to a trusted root not checked (no trust store configured)"


def smime_kind(content_type: str, smime_type: str | None, name: str | None) -> str | None:
    """"enveloped", "signed" (opaque) or None for a top-level Content-Type."""
    if content_type not in ENVELOPED_TYPES:
        return None
    kind = (smime_type or "").lower()
    if kind == "signed-data":
        return "signed"
    if kind in ("enveloped-data", "authenveloped-data"):
        return "enveloped"
    # Old clients leave smime-type out; the name tells (p7m is enveloped or signed: try it).
    return "unknown" if (name or "").lower().endswith(".p7m") or not kind else None


class KeyStore:
    """The private key and certificate of one public key name, loaded on first use."""

    def __init__(self, path: Path, password: SecretStr | None):
        self.path = path
        self.name = path.stem
        self._password = password
        self._loaded: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None

    def load(self) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
        if self._loaded is None:
            try:
                data = self.path.read_bytes()
            except OSError as exc:
                raise SMIMEKeyNotFoundError(
                    f"public_key_name: key store for {self.name!r} not found at {self.path} "
                    f"({exc.strerror or exc})"
                ) from None
            secret = self._password.get_secret_value().encode() if self._password else None
            try:
                key, cert, _ = pkcs12.load_key_and_certificates(data, secret)
            except (ValueError, TypeError):
                raise SMIMEKeyPasswordError(
                    f"public_key_password: cannot open the key store of {self.name!r} "
                    "(wrong password, or not a PKCS#12 file)"
                ) from None
            if not isinstance(key, rsa.RSAPrivateKey) or cert is None:
                raise SMIMEKeyPasswordError(
                    f"public_key_name: the key store of {self.name!r} must hold an RSA key "
                    "and its certificate"
                )
            self._loaded = (key, cert)
        return self._loaded

    def decrypt(self, der: bytes) -> bytes:
        key, cert = self.load()
        try:
            return pkcs7.pkcs7_decrypt_der(der, cert, key, [])
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise SMIMEDecryptError(
                f"cannot decrypt: the message is not encrypted for public key {self.name!r}, "
                f"or it is damaged ({exc})"
            ) from None


def is_signed_data(der: bytes) -> bool:
    try:
        return asn1.read(der).children()[0].oid() == _SIGNED_DATA
    except (asn1.ASN1Error, IndexError):
        return False


def verify_opaque(der: bytes) -> tuple[bytes | None, SignatureInfo]:
    """The content of an opaque signed message and what its signature says."""
    try:
        signed = _SignedData(der)
    except (asn1.ASN1Error, IndexError, ValueError) as exc:
        return None, SignatureInfo(detail=f"signature structure unreadable: {exc}")
    if signed.content is None:
        return None, SignatureInfo(detail="signed-data carries no content")
    digests = {name: hashes_of(signed.content, name) for name in _HASHES}
    return signed.content, signed.check(digests)


def verify_detached(signature: bytes, digests: dict[str, bytes]) -> SignatureInfo:
    """What a multipart/signed signature says about content with these digests."""
    try:
        return _SignedData(signature).check(digests)
    except (asn1.ASN1Error, IndexError, ValueError) as exc:
        return SignatureInfo(detail=f"signature structure unreadable: {exc}")


def hashes_of(data: bytes, name: str) -> bytes:
    digest = hashes.Hash(_HASHES[name]())
    digest.update(data)
    return digest.finalize()


class _SignedData:
    """The parts of a CMS SignedData (RFC 5652) that verification needs."""

    def __init__(self, der: bytes):
        info = asn1.read(der).children()
        if info[0].oid() != _SIGNED_DATA:
            raise ValueError("not a signed-data structure")
        fields = info[1].children()[0].children()
        encapsulated = fields[2].children()
        self.content = None
        if len(encapsulated) > 1:
            self.content = b"".join(n.octets() for n in encapsulated[1].children())
        self.certificates: list[x509.Certificate] = []
        for node in fields[3:-1]:
            if node.tag == 0xA0:
                for cert in node.children():
                    if cert.tag == asn1.SEQUENCE:
                        self.certificates.append(x509.load_der_x509_certificate(cert.raw))
        self.signers = fields[-1].children()
        if fields[-1].tag != asn1.SET or not self.signers:
            raise ValueError("no signer")

    def check(self, digests: dict[str, bytes]) -> SignatureInfo:
        node = self.signers[0].children()
        sid, digest_oid = node[1], node[2].children()[0].oid()
        rest = node[3:]
        attrs = rest.pop(0) if rest and rest[0].tag == 0xA0 else None
        sig_alg, signature = rest[0].children()[0].oid(), rest[1].octets()
        cert = self._certificate(sid)
        signer = _describe(cert) if cert else None
        name = _DIGESTS.get(digest_oid)
        if name is None:
            return SignatureInfo(signer=signer, detail=f"unsupported digest {digest_oid}")
        digest = digests[name]
        signed_at = None
        if attrs is not None:
            values = _attributes(attrs)
            if values.get(_MESSAGE_DIGEST, b"") != digest:
                return SignatureInfo(signer=signer, detail="content changed after signing "
                                     "(message digest mismatch)")
            signed_at = values.get(_SIGNING_TIME)
        if cert is None:
            return SignatureInfo(detail="signer certificate not included in the message",
                                 signed_at=signed_at)
        if attrs is not None:
            if not attrs.definite:
                return SignatureInfo(signer=signer, detail="signed attributes not DER-encoded")
            data, algorithm = bytes([asn1.SET]) + attrs.raw[1:], _HASHES[name]()
        else:
            data, algorithm = digest, Prehashed(_HASHES[name]())
        try:
            _verify_with(cert.public_key(), signature, data, algorithm, sig_alg)
        except InvalidSignature:
            return SignatureInfo(signer=signer, signed_at=signed_at,
                                 detail="signature does not match the content")
        except (UnsupportedAlgorithm, TypeError, ValueError) as exc:
            return SignatureInfo(signer=signer, signed_at=signed_at,
                                 detail=f"signature algorithm not supported ({exc})")
        when = signed_at or datetime.now(UTC)
        if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
            return SignatureInfo(signer=signer, signed_at=signed_at,
                                 detail=f"signer certificate not valid at {when:%Y-%m-%d %H:%M}Z")
        return SignatureInfo(signer=signer, verified=True, signed_at=signed_at,
                             detail=f"signature and content digest ({name}) match the signer "
                             f"certificate, valid at signing time; {NOT_CHAINED}")

    def _certificate(self, sid: asn1.Node) -> x509.Certificate | None:
        if sid.tag == asn1.SEQUENCE:
            issuer, serial = sid.children()
            for cert in self.certificates:
                if cert.serial_number == serial.integer() and cert.issuer.public_bytes() == issuer.raw:
                    return cert
        elif sid.tag == 0x80:
            for cert in self.certificates:
                try:
                    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
                except x509.ExtensionNotFound:
                    continue
                if ski.value.digest == sid.content:
                    return cert
        return None


def _attributes(attrs: asn1.Node) -> dict[str, object]:
    values: dict[str, object] = {}
    for attribute in attrs.children():
        oid_node, value_set = attribute.children()
        oid = oid_node.oid()
        first = value_set.children()[0]
        if oid == _MESSAGE_DIGEST:
            values[oid] = first.octets()
        elif oid == _SIGNING_TIME:
            values[oid] = _time(first)
    return values


def _time(node: asn1.Node) -> datetime | None:
    text = node.content.decode("ascii", "replace").rstrip("Z")
    try:
        if node.tag == asn1.UTC_TIME:
            moment = datetime.strptime(text[:12], "%y%m%d%H%M%S")
        else:
            moment = datetime.strptime(text[:14], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC)


def _verify_with(key, signature: bytes, data: bytes, algorithm, sig_alg: str) -> None:
    if isinstance(key, rsa.RSAPublicKey):
        if sig_alg == _RSA_PSS:
            hash_alg = algorithm._algorithm if isinstance(algorithm, Prehashed) else algorithm
            pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=padding.PSS.AUTO)
        else:
            pad = padding.PKCS1v15()
        key.verify(signature, data, pad, algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(algorithm))
    else:
        raise UnsupportedAlgorithm(f"{type(key).__name__} keys")


def _describe(cert: x509.Certificate) -> str:
    def first(oid) -> str | None:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else None

    email = first(x509.NameOID.EMAIL_ADDRESS)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        email = next(iter(names.value.get_values_for_type(x509.RFC822Name)), email)
    except x509.ExtensionNotFound:
        pass
    common = first(x509.NameOID.COMMON_NAME)
    if common and email:
        return f"{common} <{email}>"
    return email or common or cert.subject.rfc4514_string()
