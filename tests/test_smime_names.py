"""Whose mail a signature vouches for (issue #23): the signer's addresses as RFC 8550 reads
them (the subjectAltName's rfc822Names when there is a subjectAltName, the subject's
emailAddress only when there is none), and the name constraints of every CA of the chain
(RFC 5280 section 4.2.1.10). A trust-store CA limited to partner.example cannot make mail
from ceo@corp.example verified."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from prefect_pop3mail.tasks.pop3.trust import certificates, smime
from tests.test_smime_trust import DIGESTS, issue, sign

CEO = "The CEO <ceo@corp.example>"


def store_of(tmp_path, *roots) -> object:
    path = tmp_path / "roots.pem"
    path.write_bytes(b"".join(r.cert.public_bytes(serialization.Encoding.PEM) for r in roots))
    return path


def limited(*permitted: x509.GeneralName, excluded=()) -> x509.NameConstraints:
    return x509.NameConstraints(permitted_subtrees=list(permitted) or None,
                                excluded_subtrees=list(excluded) or None)


def test_a_subject_address_beside_a_subject_alt_name_for_another_is_not_the_signers(tmp_path):
    """The issue's example: SAN bob@partner.example, emailAddress=ceo@corp.example in the
    subject. Only the SAN counts: it does not match From."""
    root = issue("Root", ca=True, eku=())
    signer = issue("Bob", root, email="bob@partner.example", subject_email="ceo@corp.example")
    info = smime.verify_detached(sign(signer), DIGESTS, sender=CEO,
                                 trust_store=store_of(tmp_path, root))
    assert info.signature_valid and info.signer_trusted
    assert info.signer_matches_from is False and not info.verified
    assert "bob@partner.example does not match From ceo@corp.example" in info.detail
    assert certificates.addresses(signer.cert) == ["bob@partner.example"]


def test_the_subject_address_counts_only_without_a_subject_alt_name():
    root = issue("Root", ca=True, eku=())
    plain = issue("CEO", root, subject_email="ceo@corp.example")
    assert certificates.addresses(plain.cert) == ["ceo@corp.example"]
    assert certificates.matches_sender(plain.cert, CEO)[0] is True
    assert certificates.matches_sender(plain.cert, "x@corp.example")[0] is False


@pytest.mark.parametrize("constraint", [
    limited(x509.RFC822Name("partner.example")),
    limited(x509.RFC822Name(".partner.example"), x509.RFC822Name("partner.example")),
    limited(x509.DNSName("partner.example")),
    limited(excluded=[x509.RFC822Name("corp.example")]),
    limited(excluded=[x509.DNSName("corp.example")]),
], ids=["rfc822-host", "rfc822-domain", "dns", "excluded-rfc822", "excluded-dns"])
@pytest.mark.parametrize("where", ["root", "intermediate"])
def test_a_ca_limited_to_partner_example_cannot_vouch_for_corp_example(tmp_path, constraint,
                                                                      where):
    root = issue("Partner Root", ca=True, eku=(),
                 constraints=constraint if where == "root" else None)
    middle = issue("Partner S/MIME CA", root, ca=True,
                   constraints=constraint if where == "intermediate" else None)
    store = store_of(tmp_path, root)
    ceo = issue("CEO", middle, email="ceo@corp.example")
    info = smime.verify_detached(sign(ceo, carry=[middle.cert]), DIGESTS, sender=CEO,
                                 trust_store=store)
    assert info.signature_valid and info.signer_matches_from is True
    assert not info.signer_trusted and not info.verified, info.detail
    # The same CA still vouches for its own partner's mail.
    bob = issue("Bob", middle, email="bob@partner.example")
    ok = smime.verify_detached(sign(bob, carry=[middle.cert]), DIGESTS,
                               sender="Bob <bob@partner.example>", trust_store=store)
    assert ok.verified, ok.detail


@pytest.mark.parametrize(("subtree", "inside", "outside"), [
    (x509.RFC822Name("ceo@corp.example"), ["CEO@Corp.Example"], ["cfo@corp.example"]),
    (x509.RFC822Name("corp.example"), ["a@corp.example"], ["a@mail.corp.example",
                                                           "a@notcorp.example"]),
    (x509.RFC822Name(".corp.example"), ["a@mail.corp.example"], ["a@corp.example",
                                                                 "a@xcorp.example"]),
    (x509.DNSName("corp.example"), ["a@corp.example", "a@mail.corp.example"],
     ["a@notcorp.example", "a@corp.example.evil"]),
])
def test_name_constraint_forms(subtree, inside, outside):
    root = issue("Root", ca=True, eku=(), constraints=limited(subtree))
    for email in inside:
        assert certificates.outside_constraints([email], [root.cert]) is None, email
    for email in outside:
        assert "outside the name constraints of Root" in certificates.outside_constraints(
            [email], [root.cert]), email
    assert certificates.outside_constraints(inside + outside[:1], [root.cert]) is not None


def test_constraints_on_other_name_types_say_nothing_of_mail():
    root = issue("Root", ca=True, eku=(),
                 constraints=limited(x509.DirectoryName(x509.Name([]))))
    assert certificates.outside_constraints(["a@anywhere.example"], [root.cert]) is None
