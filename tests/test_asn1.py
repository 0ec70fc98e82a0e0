"""The BER reader's limits, each held and each named when hit, and S/MIME containers fuzzed:
random and mutated CMS (SignedData, EnvelopedData), truncated, with huge lengths and deep
nesting, never raise anything but the engine's own errors."""

from __future__ import annotations

import os
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import SMIMEError
from prefect_pop3mail.tasks.pop3.trust import asn1, smime
from prefect_pop3mail.tasks.pop3.trust.asn1 import (
    MAX_ARC_BYTES,
    MAX_DEPTH,
    MAX_ELEMENTS,
    MAX_OID_BYTES,
    ASN1Error,
    ASN1LimitError,
)
from tests.test_smime_trust import (
    ALICE,
    DIGESTS,
    SIGNED_TYPE,
    _message,
    _save,
    _signed_body,
    issue,
    sign,
)
from tests.test_store_corpus import CORPUS, KEY_PASSWORD

# A small fixed budget in CI; POP3MAIL_SOAK=1 for a long run.
EXAMPLES = 5000 if os.environ.get("POP3MAIL_SOAK") else 200


def tlv(tag: int, content: bytes = b"") -> bytes:
    """A definite-length element."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def indefinite(tag: int, content: bytes = b"") -> bytes:
    return bytes([tag, 0x80]) + content + b"\0\0"


def nested(levels: int, wrap=tlv, tag: int = asn1.SEQUENCE, core: bytes = b"\x05\x00") -> bytes:
    data = core
    for _ in range(levels):
        data = wrap(tag, data)
    return data


def walk(node: asn1.Node) -> int:
    """Visit every element below ``node`` (depth first, with a stack); how many there were."""
    seen, pending = 0, [node]
    while pending:
        current = pending.pop()
        seen += 1
        if current.constructed:
            pending.extend(current.children())
    return seen


# --- MAX_DEPTH ----------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [tlv, indefinite], ids=["definite", "indefinite"])
def test_nesting_up_to_max_depth_is_read(wrap):
    assert walk(asn1.read(nested(MAX_DEPTH, wrap))) == MAX_DEPTH + 1


@pytest.mark.parametrize("wrap", [tlv, indefinite], ids=["definite", "indefinite"])
def test_nesting_beyond_max_depth_is_refused_and_named(wrap):
    with pytest.raises(ASN1LimitError, match="nesting too deep .limit MAX_DEPTH = 32") as caught:
        walk(asn1.read(nested(MAX_DEPTH + 1, wrap)))
    assert caught.value.limit == "MAX_DEPTH"


@pytest.mark.parametrize("wrap", [tlv, indefinite], ids=["definite", "indefinite"])
def test_a_very_deep_constructed_string_is_a_limit_not_a_recursion_error(wrap):
    """Joining a constructed OCTET STRING once recursed: 5,000 levels raised RecursionError."""
    data = nested(5000, wrap, tag=0x24, core=tlv(asn1.OCTET_STRING, b"x"))
    with pytest.raises(ASN1LimitError, match="MAX_DEPTH"):
        asn1.read(data).octets()


# --- MAX_ELEMENTS -------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [tlv, indefinite], ids=["definite", "indefinite"])
def test_element_count_up_to_the_limit_is_read(wrap):
    data = wrap(asn1.SET, b"\x05\x00" * (MAX_ELEMENTS - 1))  # and the SET itself
    assert len(asn1.read(data).children()) == MAX_ELEMENTS - 1


@pytest.mark.parametrize("wrap", [tlv, indefinite], ids=["definite", "indefinite"])
def test_element_count_beyond_the_limit_is_refused_and_named(wrap):
    data = wrap(asn1.SET, b"\x05\x00" * MAX_ELEMENTS)
    with pytest.raises(ASN1LimitError, match="MAX_ELEMENTS") as caught:
        asn1.read(data).children()
    assert caught.value.limit == "MAX_ELEMENTS"


def test_nested_indefinite_lengths_are_scanned_once_not_once_per_level():
    """Each indefinite element's end is found once: walking costs about twice the elements
    (the scan, then the walk), however deep, instead of depth times more."""
    level = b"\x04\x01x" * 10
    data = level
    for _ in range(MAX_DEPTH - 1):
        data = indefinite(asn1.SEQUENCE, level + data)
    root = asn1.read(data)
    elements = walk(root)
    assert root.doc.elements == elements
    assert root.doc.reads <= 2 * elements


# --- MAX_OID_BYTES, MAX_ARC_BYTES ---------------------------------------------------------


def test_an_oid_of_max_bytes_is_read_and_one_more_is_refused():
    assert asn1.read(tlv(asn1.OID, b"\x2a" + b"\x01" * (MAX_OID_BYTES - 1))).oid().startswith("1.2.1.1")
    with pytest.raises(ASN1LimitError, match="MAX_OID_BYTES"):
        asn1.read(tlv(asn1.OID, b"\x2a" + b"\x01" * MAX_OID_BYTES)).oid()


def test_an_arc_of_max_bytes_is_read_and_one_more_is_refused():
    arc = b"\xff" * (MAX_ARC_BYTES - 1) + b"\x7f"
    assert asn1.read(tlv(asn1.OID, b"\x2a" + arc)).oid() == f"1.2.{2 ** (7 * MAX_ARC_BYTES) - 1}"
    with pytest.raises(ASN1LimitError, match="MAX_ARC_BYTES"):
        asn1.read(tlv(asn1.OID, b"\x2a\xff" + arc)).oid()


def test_a_uuid_oid_fits_the_arc_limit():
    dotted = f"2.25.{uuid.UUID('f81d4fae-7dec-11d0-a765-00a0c91e6bf6').int}"
    assert asn1.read(tlv(asn1.OID, _oid_content(dotted))).oid() == dotted


def _oid_content(dotted: str) -> bytes:
    first, second, *rest = map(int, dotted.split("."))
    out = bytearray()
    for arc in [40 * first + second, *rest]:
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | (arc & 0x7F))
        out += bytes(reversed(chunk))
    return bytes(out)


@pytest.mark.parametrize("content", [b"\x2a\x86", b"\x2a\x80\x01"], ids=["unfinished", "padded"])
def test_malformed_oids_are_errors(content):
    with pytest.raises(ASN1Error):
        asn1.read(tlv(asn1.OID, content)).oid()


# --- a limit hit is a warning that names it -----------------------------------------------


def _deep_signature() -> bytes:
    """A ContentInfo for signed-data whose content nests too deep (indefinite lengths, so
    merely finding where it ends goes all the way down)."""
    oid = tlv(asn1.OID, _oid_content("1.2.840.113549.1.7.2"))
    return tlv(asn1.SEQUENCE, oid + tlv(0xA0, nested(MAX_DEPTH + 5, indefinite)))


def test_the_signature_detail_names_the_limit():
    info = smime.verify_detached(_deep_signature(), DIGESTS)
    assert not info.signature_valid
    assert "signature structure unreadable: ASN.1 nesting too deep (limit MAX_DEPTH = 32)" in info.detail


def test_the_message_warning_names_the_limit(tmp_path):
    entity = b"Content-Type: text/plain\r\n\r\nHello."
    mail = _save(tmp_path, _message(SIGNED_TYPE, _signed_body(entity, _deep_signature())), None)
    assert mail.text_path.read_text() == "Hello."
    assert any("S/MIME signature not verified" in w and "MAX_DEPTH" in w for w in mail.warnings)


# --- fuzzing ------------------------------------------------------------------------------


def _samples() -> dict[str, bytes]:
    signer = issue("Alice Example", email="alice@example.org")
    bob = x509.load_pem_x509_certificate((CORPUS / "keys" / "bob.crt").read_bytes())
    return {
        "detached": sign(signer),
        "opaque": sign(signer, detached=False),
        "enveloped": pkcs7.PKCS7EnvelopeBuilder().set_data(b"Content-Type: text/plain\r\n\r\nhi\r\n")
        .add_recipient(bob).encrypt(serialization.Encoding.DER, []),
    }


SAMPLES = _samples()
BOB = smime.KeyStore(CORPUS / "keys" / "bob.p12", SecretStr(KEY_PASSWORD))

_HUGE_LENGTHS = [b"\x84\xff\xff\xff\xff", b"\x88" + b"\xff" * 8, b"\x89" + b"\x01" * 9, b"\x80",
                 b"\x82\xff\xff", b"\x00"]


@st.composite
def mutated_cms(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SAMPLES)))
    data = bytearray(SAMPLES[name])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "truncate", "length", "nest", "insert"]))
        if how == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "truncate":
            del data[at:]
        elif how == "length":  # a length field claims far more, or indefinite
            data[at + 1:at + 2] = draw(st.sampled_from(_HUGE_LENGTHS))
        elif how == "nest":  # wrap a tail in many constructed layers
            data[at:] = nested(draw(st.integers(1, 200)), draw(st.sampled_from([tlv, indefinite])),
                               tag=draw(st.sampled_from([0x30, 0x31, 0x24, 0xA0])), core=bytes(data[at:]))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        if not data:
            break
    return name, bytes(data)


def _element(children):
    tags = st.sampled_from([0x30, 0x31, 0xA0, 0xA1, 0x24, 0x04, 0x06, 0x02, 0x05, 0x17, 0x80, 0x00])
    leaf = st.builds(lambda t, c: tlv(t & ~0x20, c), tags, st.binary(max_size=24))
    node = st.builds(lambda t, wrap, kids: wrap(t | 0x20, b"".join(kids)), tags,
                     st.sampled_from([tlv, indefinite]), st.lists(children, max_size=4))
    return st.one_of(leaf, node)


random_ber = st.recursive(st.builds(tlv, st.just(0x05), st.just(b"")), _element, max_leaves=60)


def _check_all(data: bytes) -> None:
    """Every S/MIME entry point, on any bytes: reported, never raised (decryption raises
    the engine's SMIMEError, which the store turns into a failed message)."""
    info = smime.verify_detached(data, DIGESTS, sender=ALICE)
    assert not info.verified
    content, opaque = smime.verify_opaque(data, sender=ALICE)
    assert not opaque.verified
    smime.is_signed_data(data)
    try:
        BOB.decrypt(data)
    except SMIMEError:
        pass


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_cms())
def test_mutated_cms_never_raises(sample):
    _check_all(sample[1])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_ber, st.sampled_from([b"", b"\x30\x80", tlv(asn1.OID, _oid_content("1.2.840.113549.1.7.2"))]))
def test_random_ber_never_raises(body, prefix):
    _check_all(tlv(asn1.SEQUENCE, prefix + body) if prefix else body)


def test_a_certificate_with_an_unknown_version_is_reported():
    """Found by fuzzing: cryptography raises InvalidVersion, not a ValueError."""
    v3 = b"\xa0\x03\x02\x01\x02"
    assert v3 in SAMPLES["detached"]
    info = smime.verify_detached(SAMPLES["detached"].replace(v3, b"\xa0\x03\x02\x01\x42", 1), DIGESTS)
    assert "signature structure unreadable: 66 is not a valid X509 version" in info.detail


def test_the_unmutated_samples_are_what_the_fuzzer_starts_from():
    assert smime.verify_detached(SAMPLES["detached"], DIGESTS).signature_valid
    content, info = smime.verify_opaque(SAMPLES["opaque"])
    assert info.signature_valid and content
    assert BOB.decrypt(SAMPLES["enveloped"]).endswith(b"hi\r\n")
