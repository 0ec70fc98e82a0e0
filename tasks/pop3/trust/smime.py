"""S/MIME: decrypt enveloped messages with the configured key store, check signatures.

Decryption uses the cryptography package (PKCS#12 key store, PKCS#7 EnvelopedData).
cryptography cannot verify PKCS#7 signatures, so this module reads the SignedData itself
(asn1.py, bounded) and reports, for every signer, four facts apart (``SignatureInfo``):

- ``signature_valid``: the message digest in the signed attributes equals the digest of
  the content, and the signature over them (or over the content) matches the signer's
  certificate (RSA PKCS#1 v1.5, RSA-PSS, ECDSA). SHA-1 and MD5 are refused as broken.
- ``signer_trusted``: the certificate chains to a trusted root (certificates.py).
- ``covers``: the whole message, or only one part of it (the caller knows which).
- ``signer_matches_from``: one of the certificate's addresses is the From address.

``verified`` is all four. A signature never raises: what cannot be read is reported.
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

from prefect_pop3mail.tasks.pop3.errors import (
    SMIMEDecryptError,
    SMIMEKeyNotFoundError,
    SMIMEKeyPasswordError,
)
from prefect_pop3mail.tasks.pop3.models import SignatureInfo
from prefect_pop3mail.tasks.pop3.trust import asn1, certificates

ENVELOPED_TYPES = {"application/pkcs7-mime", "application/x-pkcs7-mime"}
WHOLE_MESSAGE = "whole message"
#: Signers checked in one signature; more make the signature unreadable (each costs a
#: public-key operation and a chain search).
MAX_SIGNERS = 8
#: Certificates read from one signature (the signer's and its intermediates).
MAX_CERTIFICATES = 32

_SIGNED_DATA = "1.2.840.113549.1.7.2"
_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_SIGNING_TIME = "1.2.840.113549.1.9.5"
_DIGESTS = {
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}
#: Digest and signature algorithms broken by collisions: a signature made with one proves
#: nothing, so it is reported as not valid.
_BROKEN = {
    "1.3.14.3.2.26": "SHA-1", "1.2.840.113549.2.5": "MD5", "1.2.840.113549.2.2": "MD2",
    "1.2.840.113549.1.1.5": "SHA-1", "1.3.14.3.2.29": "SHA-1", "1.2.840.10045.4.1": "SHA-1",
    "1.2.840.10040.4.3": "SHA-1", "1.2.840.113549.1.1.4": "MD5", "1.2.840.113549.1.1.2": "MD2",
}
_HASHES = {"sha224": hashes.SHA224, "sha256": hashes.SHA256,
           "sha384": hashes.SHA384, "sha512": hashes.SHA512}
_RSA_PSS = "1.2.840.113549.1.1.10"
#: What a malformed structure can raise while it is read, from asn1 or from cryptography.
_UNREADABLE = (asn1.ASN1Error, IndexError, ValueError, TypeError, UnsupportedAlgorithm,
               x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


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


def verify_opaque(der: bytes, *, sender: str | None = None,
                  trust_store: Path | None = None) -> tuple[bytes | None, SignatureInfo]:
    """The content of an opaque signed message (it covers the whole message) and what its
    signature says; ``sender`` is the From address, ``trust_store`` extra trusted roots."""
    try:
        signed = _SignedData(der)
    except _UNREADABLE as exc:
        return None, SignatureInfo(detail=f"signature structure unreadable: {exc}")
    if signed.content is None:
        return None, SignatureInfo(detail="signed-data carries no content")
    return signed.content, signed.check(_Digests(signed.content), WHOLE_MESSAGE, sender,
                                        trust_store)


def verify_detached(signature: bytes, digests: dict[str, bytes], covers: str = WHOLE_MESSAGE,
                    *, sender: str | None = None, trust_store: Path | None = None) -> SignatureInfo:
    """What a multipart/signed signature says about content with these digests; ``covers``
    says which part of the message that content is."""
    try:
        return _SignedData(signature).check(digests, covers, sender, trust_store)
    except _UNREADABLE as exc:
        return SignatureInfo(covers=covers, detail=f"signature structure unreadable: {exc}")


def hashes_of(data: bytes, name: str) -> bytes:
    digest = hashes.Hash(_HASHES[name]())
    digest.update(data)
    return digest.finalize()


class _Digests(dict):
    """The digests of ``data``, each computed when a signer first asks for it: one pass
    over the content per algorithm the signers use, not per algorithm we know."""

    def __init__(self, data: bytes):
        super().__init__()
        self._data = data

    def __missing__(self, name: str) -> bytes:
        value = self[name] = hashes_of(self._data, name)
        return value

    def get(self, name: str, default=None):
        return self[name] if name in _HASHES else default


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
                certs = [c for c in node.children() if c.tag == asn1.SEQUENCE]
                if len(certs) > MAX_CERTIFICATES:
                    raise ValueError(f"more than {MAX_CERTIFICATES} certificates (MAX_CERTIFICATES)")
                self.certificates += [x509.load_der_x509_certificate(c.raw) for c in certs]
        self.signers = fields[-1].children()
        if fields[-1].tag != asn1.SET or not self.signers:
            raise ValueError("no signer")
        if len(self.signers) > MAX_SIGNERS:
            raise ValueError(f"more than {MAX_SIGNERS} signers (MAX_SIGNERS)")

    def check(self, digests: dict[str, bytes], covers: str, sender: str | None,
              trust_store: Path | None) -> SignatureInfo:
        """Every signer checked; the summary holds only when it holds for all of them."""
        each = []
        for node in self.signers:
            try:
                each.append(self._signer(node, digests, covers, sender, trust_store))
            except _UNREADABLE as exc:
                each.append(SignatureInfo(covers=covers, detail=f"signer info unreadable: {exc}"))
        return _summary(each, covers)

    def _signer(self, node: asn1.Node, digests: dict[str, bytes], covers: str,
                sender: str | None, trust_store: Path | None) -> SignatureInfo:
        fields = node.children()
        sid, digest_oid = fields[1], fields[2].children()[0].oid()
        rest = fields[3:]
        attrs = rest.pop(0) if rest and rest[0].tag == 0xA0 else None
        sig_alg, signature = rest[0].children()[0].oid(), rest[1].octets()
        cert = self._certificate(sid)
        values = _attributes(attrs) if attrs is not None else {}
        signed_at = values.get(_SIGNING_TIME)
        valid, integrity = _integrity(cert, digest_oid, sig_alg, attrs, values, digests, signature)
        if cert is None:
            return SignatureInfo(covers=covers, signed_at=signed_at, detail=integrity)
        trusted, chain = certificates.chain_to_root(cert, self.certificates, trust_store, signed_at)
        matches, address = certificates.matches_sender(cert, sender)
        return SignatureInfo(
            signer=certificates.describe(cert), signature_valid=valid, signer_trusted=trusted,
            covers=covers, signer_matches_from=matches, signed_at=signed_at,
            detail="; ".join((integrity, chain, address)),
        )

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


def _integrity(cert: x509.Certificate | None, digest_oid: str, sig_alg: str,
               attrs: asn1.Node | None, values: dict[str, object], digests: dict[str, bytes],
               signature: bytes) -> tuple[bool, str]:
    """(signature_valid, why): is the signature intact, with an algorithm worth trusting?"""
    broken = _BROKEN.get(digest_oid) or _BROKEN.get(sig_alg)
    if broken:
        return False, f"signature not valid: {broken} is broken and not accepted"
    name = _DIGESTS.get(digest_oid)
    if name is None:
        return False, f"signature not valid: unsupported digest {digest_oid}"
    digest = digests.get(name)
    if digest is None:  # not hashed: the message's micalg names another algorithm
        return False, (f"signature not valid: it uses {name}, which the message's micalg "
                       "does not declare")
    if attrs is not None and values.get(_MESSAGE_DIGEST, b"") != digest:
        return False, "signature not valid: content changed after signing (message digest mismatch)"
    if cert is None:
        return False, "signature not valid: signer certificate not included in the message"
    if attrs is not None:
        if not attrs.definite:
            return False, "signature not valid: signed attributes not DER-encoded"
        data, algorithm = bytes([asn1.SET]) + attrs.raw[1:], _HASHES[name]()
    else:
        data, algorithm = digest, Prehashed(_HASHES[name]())
    try:
        _verify_with(cert.public_key(), signature, data, algorithm, sig_alg)
    except InvalidSignature:
        return False, "signature not valid: it does not match the content"
    except (UnsupportedAlgorithm, TypeError, ValueError) as exc:
        return False, f"signature not valid: algorithm not supported ({exc})"
    return True, f"signature intact ({name})"


def _summary(each: list[SignatureInfo], covers: str) -> SignatureInfo:
    """One SignatureInfo for the whole signature: every signer valid and trusted, one of
    them the From address."""
    matches = [s.signer_matches_from for s in each if s.signer_matches_from is not None]
    if len(each) == 1:
        detail = each[0].detail
    else:
        detail = "; ".join(f"signer {n}: {s.detail}" for n, s in enumerate(each, 1))
    if covers != WHOLE_MESSAGE:
        detail += f"; covers only {covers}: the rest of the message is not signed"
    return SignatureInfo(
        signer=", ".join(s.signer or "unknown signer" for s in each),
        signature_valid=all(s.signature_valid for s in each),
        signer_trusted=all(s.signer_trusted for s in each),
        covers=covers,
        signer_matches_from=any(matches) if matches else None,
        signed_at=next((s.signed_at for s in each if s.signed_at), None),
        detail=detail,
        signers=each,
    )


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
