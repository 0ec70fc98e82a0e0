"""Whom an S/MIME signature's certificate belongs to, and whether to believe it.

A certificate is trusted when it chains, through the certificates the message carries, to
a root in the system's CA bundle or in the configured S/MIME trust store (a PEM file), as
checked by ``cryptography.x509.verification`` with the Web PKI profile (validity now, key
usage, basic constraints, no SHA-1, RSA of 2048 bits or more) and an extended key usage
for e-mail, and when the signer's e-mail addresses lie within the name constraints of every
CA of that chain (RFC 5280 section 4.2.1.10; see :func:`outside_constraints`). Revocation
is not checked.

The signer's addresses follow RFC 8550 section 3: the subjectAltName's rfc822Names when
the certificate has a subjectAltName, the subject's emailAddress only when it has none.
"""

from __future__ import annotations

import re
import ssl
import warnings
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from prefect_pop3mail.tasks.pop3.errors import ConfigurationError

TRUST_STORE_FIELD = "smime_trust_store"
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
#: Extensions named in the verifier's complaints.
_EXTENSION_NAMES = {"2.5.29.14": "subjectKeyIdentifier", "2.5.29.15": "keyUsage",
                    "2.5.29.17": "subjectAltName", "2.5.29.19": "basicConstraints",
                    "2.5.29.35": "authorityKeyIdentifier", "2.5.29.37": "extendedKeyUsage"}
_FOR_EMAIL = {ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}


def _email_usage(policy, cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None) -> None:
    """The client verifier wants TLS client authentication; mail wants e-mail protection
    (or no restriction at all)."""
    if eku is not None and not _FOR_EMAIL & set(eku):
        raise ValueError("certificate is not for e-mail protection (extended key usage)")


_EE_POLICY = ExtensionPolicy.webpki_defaults_ee().may_be_present(
    x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _email_usage)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca().may_be_present(
    x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _email_usage)


def _certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle that parses; a bundle may hold a few odd ones."""
    found = []
    for block in _PEM.findall(data):
        try:
            with warnings.catch_warnings():  # old roots with negative serial numbers
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                found.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue
    return found


@lru_cache(maxsize=1)
def system_roots() -> tuple[x509.Certificate, ...]:
    """The system's CA bundle (SSL_CERT_FILE / SSL_CERT_DIR are honoured, as by ssl)."""
    paths = ssl.get_default_verify_paths()
    files = [Path(paths.cafile)] if paths.cafile else []
    if not files and paths.capath:
        files = sorted(p for p in Path(paths.capath).iterdir() if p.suffix in (".pem", ".crt"))
    roots: list[x509.Certificate] = []
    for file in files:
        try:
            roots += _certificates(file.read_bytes())
        except OSError:
            continue
    return tuple(roots)


def _file_roots(path: Path) -> tuple[x509.Certificate, ...]:
    try:
        stat = path.stat()
    except OSError as exc:
        raise ConfigurationError(TRUST_STORE_FIELD, f"cannot read {path} ({exc.strerror or exc})") from None
    return _file_roots_cached(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _file_roots_cached(path: str, mtime_ns: int, size: int) -> tuple[x509.Certificate, ...]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(TRUST_STORE_FIELD, f"cannot read {path} ({exc.strerror or exc})") from None
    roots = _certificates(data)
    if not roots:
        raise ConfigurationError(TRUST_STORE_FIELD, f"{path} holds no PEM certificate")
    return tuple(roots)


def check_trust_store(path: Path | None) -> None:
    """Raise ConfigurationError naming the field when the trust store file is unusable."""
    if path is not None:
        _file_roots(path)


def anchors(trust_store: Path | None) -> tuple[Store | None, frozenset[x509.Certificate]]:
    """The trusted roots, the system's plus the trust store file's: as the verifier's store
    (None when there are none) and as a set."""
    return _store(_file_roots(trust_store) if trust_store is not None else ())


@lru_cache(maxsize=8)
def _store(extra: tuple[x509.Certificate, ...]) -> tuple[Store | None, frozenset[x509.Certificate]]:
    roots = system_roots() + extra
    return (Store(list(roots)) if roots else None), frozenset(roots)


def chain_to_root(cert: x509.Certificate, carried: list[x509.Certificate],
                  trust_store: Path | None, signed_at: datetime | None) -> tuple[bool, str]:
    """(trusted, why): does ``cert`` chain to a trusted root now (through ``carried``)?"""
    if signed_at is not None and not cert.not_valid_before_utc <= signed_at <= cert.not_valid_after_utc:
        return False, f"signer not trusted: certificate not valid at signing time {signed_at:%Y-%m-%d %H:%M}Z"
    roots, known = anchors(trust_store)
    if roots is None:
        return False, "signer not trusted: no trusted roots (no system CA bundle, no S/MIME trust store)"
    if cert.issuer == cert.subject and cert not in known:
        return False, "signer not trusted: self-signed certificate, not in the trust store"
    verifier = (PolicyBuilder().store(roots).time(datetime.now(UTC))
                .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
                .build_client_verifier())
    try:
        chain = verifier.verify(cert, carried).chain
    except VerificationError as exc:
        return False, f"signer not trusted: {_reason(exc)}"
    outside = outside_constraints(addresses(cert), chain[1:])
    if outside:
        return False, f"signer not trusted: {outside}"
    return True, f"signer trusted (chain to {describe(chain[-1])})"


def outside_constraints(emails: list[str], authorities: list[x509.Certificate]) -> str | None:
    """Why one of ``emails`` is outside the name constraints of one of ``authorities`` (the
    CAs of the chain), or None when every address is within all of them.

    RFC 5280's rules for rfc822Name subtrees ("a@host", "host", ".domain"), applied to the
    addresses as RFC 8550 reads them (the subject's emailAddress too, when there is no
    subjectAltName). Stricter than RFC 5280 in one way, as the point is whom mail may come
    from: a CA whose permitted or excluded subtrees name DNS domains but no e-mail addresses
    limits the domains of e-mail addresses too (a CA "limited to partner.example" cannot
    vouch for ceo@corp.example).
    """
    for ca in authorities:
        try:
            limits = ca.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            continue
        except ValueError:
            return f"the name constraints of {describe(ca)} cannot be read"
        for email in emails:
            if any(_within(email, s) for s in _for_email(limits.excluded_subtrees)):
                return f"{email} is excluded by the name constraints of {describe(ca)}"
            permitted = _for_email(limits.permitted_subtrees)
            if permitted and not any(_within(email, s) for s in permitted):
                return f"{email} is outside the name constraints of {describe(ca)}"
    return None


def _for_email(subtrees) -> list[x509.GeneralName]:
    """The subtrees that speak of e-mail addresses: the rfc822Names, else the DNS names."""
    subtrees = list(subtrees or ())
    mail = [s for s in subtrees if isinstance(s, x509.RFC822Name)]
    return mail or [s for s in subtrees if isinstance(s, x509.DNSName)]


def _within(email: str, subtree: x509.GeneralName) -> bool:
    address = email.casefold()
    domain = address.rpartition("@")[2]
    limit = str(subtree.value).casefold()
    if isinstance(subtree, x509.RFC822Name):
        if "@" in limit:  # one mailbox
            return address == limit
        if limit.startswith("."):  # any host within the domain, not the domain itself
            return domain.endswith(limit)
        return domain == limit  # every mailbox on that host
    limit = limit.lstrip(".")  # a DNS name: the domain and everything within it
    return bool(limit) and (domain == limit or domain.endswith("." + limit))


def _reason(exc: VerificationError) -> str:
    text = str(exc).removeprefix("validation failed: ").split(" (encountered processing", 1)[0]
    if "candidates exhausted" in text:
        return "no chain to a trusted root"
    for oid, name in _EXTENSION_NAMES.items():
        text = text.replace(oid, name)
    return text


def addresses(cert: x509.Certificate) -> list[str]:
    """The certificate's e-mail addresses (RFC 8550 section 3): the subjectAltName's
    rfc822Names when it has a subjectAltName, the subject's emailAddress only when it has
    none. An address in the subject beside a subjectAltName for another is not the
    signer's: no CA checked it."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)]
    return names.value.get_values_for_type(x509.RFC822Name)


def address_of(sender: str) -> str:
    """The address in a From value such as 'Name <a@b>' or 'a@b'."""
    sender = sender.strip()
    if sender.endswith(">") and "<" in sender:
        return sender[sender.rindex("<") + 1:-1].strip()
    return sender


def matches_sender(cert: x509.Certificate, sender: str | None) -> tuple[bool | None, str]:
    """(matches, why): does one of the certificate's addresses equal the From address?"""
    wanted = address_of(sender or "")
    if not wanted:
        return None, "no From address to compare with the signer"
    own = addresses(cert)
    if not own:
        return False, "signer certificate names no e-mail address"
    if wanted.casefold() in {a.casefold() for a in own}:
        return True, "signer address matches From"
    return False, f"signer address {own[0]} does not match From {wanted}"


def describe(cert: x509.Certificate) -> str:
    """'Common Name <address>', or what the certificate has of it."""
    common = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    name = str(common[0].value) if common else None
    email = next(iter(addresses(cert)), None)
    if name and email:
        return f"{name} <{email}>"
    return email or name or cert.subject.rfc4514_string()
