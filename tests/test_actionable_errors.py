"""Errors a user can act on (issue #13), through the flow a user runs, against a real Dovecot.

A security mode that does not match the port, and a certificate nobody vouches for, are
configuration mistakes: the run must end within seconds (no waiting out the timeout, no
retries), and the message must say which setting to change and to what.
"""

from __future__ import annotations

import time

import pytest

from prefect_pop3mail.flows import receive_all_mail
from prefect_pop3mail.tasks.pop3.errors import (
    POP3MailError,
    UntrustedCertificateError,
    WrongSecurityModeError,
)
from prefect_pop3mail.tasks.pop3.models import Security
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from tests.conftest import sample_message

pytestmark = [pytest.mark.dovecot, pytest.mark.prefect]

#: Far longer than any of these runs may take: waiting it out would show.
TIMEOUT = 120
#: The task retries a retryable error after 5 and 30 s: a run under this did not retry.
NO_RETRIES = 30


def failed_run(config) -> POP3MailError:
    """Run the flow; return the error it failed with, after checking it failed fast."""
    started = time.monotonic()
    state = receive_all_mail(config, return_state=True)
    elapsed = time.monotonic() - started
    assert state.is_failed()
    with pytest.raises(POP3MailError) as caught:
        state.result()
    assert elapsed < NO_RETRIES, f"the run took {elapsed:.0f} s"
    assert not caught.value.retryable
    return caught.value


def test_implicit_tls_on_the_plain_port_says_what_to_set(mailbox, tmp_path):
    mailbox.deliver(sample_message(1))
    port = mailbox.server.pop3_port
    config = mailbox.block(tmp_path, Security.IMPLICIT, port=port, timeout=TIMEOUT)

    error = failed_run(config)

    assert isinstance(error, WrongSecurityModeError)
    assert str(error) == (
        f"the server at localhost:{port} speaks plain POP3, not implicit TLS: set Security "
        "to 'Explicit SSL/TLS' (or 'None') for this port, or use port 995 for "
        "'Implicit SSL/TLS'"
    )
    assert mailbox.count() == 1


@pytest.mark.parametrize("security", [Security.EXPLICIT, Security.NONE], ids=["explicit", "none"])
def test_no_greeting_from_the_implicit_tls_port_says_what_to_set(mailbox, tmp_path, security):
    mailbox.deliver(sample_message(1))
    port = mailbox.server.pop3s_port
    config = mailbox.block(tmp_path, security, port=port, timeout=TIMEOUT)
    host = config.server

    error = failed_run(config)

    assert isinstance(error, WrongSecurityModeError)
    assert str(error) == (
        f"the server at {host}:{port} sends no POP3 greeting and answers a TLS handshake: "
        "it expects implicit TLS. Set Security to 'Implicit SSL/TLS' for this port, or use "
        f"port 110 for '{security.value}'"
    )
    assert mailbox.count() == 1


@pytest.mark.parametrize("security", [Security.IMPLICIT, Security.EXPLICIT],
                         ids=["implicit", "explicit"])
def test_untrusted_certificate_names_its_issuer_and_the_settings(mailbox, tmp_path, security):
    mailbox.deliver(sample_message(1))
    config = mailbox.block(tmp_path, security, tls_ca_file="", timeout=TIMEOUT)
    port = config.port

    error = failed_run(config)

    assert isinstance(error, UntrustedCertificateError)
    text = str(error)
    assert text.startswith(f"the certificate of localhost:{port} is not trusted (unable to "
                           "get local issuer certificate); it is issued by ")
    assert "trustme" in text  # the throwaway CA's name: the issuer the user must trust
    assert "for localhost, 127.0.0.1, ::1" in text
    assert "Trusted are the system's CAs only" in text
    assert "'TLS CA file' (tls_ca_file)" in text and "(tls_verify)" in text
    assert mailbox.count() == 1


def test_wrong_ca_file_is_named_in_the_error(mailbox, tmp_path):
    import trustme

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    settings = mailbox.settings(Security.IMPLICIT, tls_ca_file=str(other_ca))
    with pytest.raises(UntrustedCertificateError,
                       match=f"Trusted are the system's CAs and those in TLS CA file {other_ca}"):
        POP3Session(settings).connect()


def test_the_right_settings_from_the_messages_work(mailbox, tmp_path):
    """What the errors above advise does work on the same server."""
    mailbox.deliver(sample_message(1), sample_message(2))
    for security in (Security.EXPLICIT, Security.NONE):  # on the plain port
        with POP3Session(mailbox.settings(security)) as session:
            session.login()
            assert session.stat()[0] == 2
    with POP3Session(mailbox.settings(Security.IMPLICIT)) as session:  # on the TLS port
        session.login()
        assert session.stat()[0] == 2
