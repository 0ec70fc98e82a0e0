"""The first thin path through every layer, against a real Dovecot, in all security modes."""

from __future__ import annotations

import io

import pytest

from prefect_pop3mail.flows import receive_all_mail
from prefect_pop3mail.tasks.pop3.errors import InactiveConfigurationError
from prefect_pop3mail.tasks.pop3.models import Security
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from tests.conftest import sample_message

MODES = [Security.NONE, Security.EXPLICIT, Security.IMPLICIT]


@pytest.mark.prefect
@pytest.mark.dovecot
@pytest.mark.parametrize("security", MODES, ids=lambda s: s.name.lower())
def test_session_commands_in_every_security_mode(mailbox, security):
    mailbox.deliver(sample_message(1), sample_message(2, body=".starts with a dot\n"))
    with POP3Session(mailbox.settings(security)) as session:
        assert session.is_encrypted == (security is not Security.NONE)
        session.login()
        assert session.stat()[0] == 2
        uidls = session.uidl()
        assert len(set(uidls.values())) == 2
        body = io.BytesIO()
        session.retr(2, body)
        assert b"\r\n.starts with a dot\r\n" in body.getvalue()
        session.dele(1)
    assert mailbox.count() == 1


@pytest.mark.prefect
@pytest.mark.dovecot
@pytest.mark.parametrize("security", MODES, ids=lambda s: s.name.lower())
def test_receive_all_flow_saves_originals(mailbox, tmp_path, security):
    messages = [sample_message(i) for i in range(3)]
    mailbox.deliver(*messages)
    config = mailbox.block(tmp_path, security, remove_from_server_after_read=True)
    received = receive_all_mail(config)
    assert len(received) == 3
    assert sorted(m.original_path.read_bytes().replace(b"\r\n", b"\n") for m in received) == sorted(
        messages
    )
    assert all(m.deleted for m in received)
    assert mailbox.count() == 0


@pytest.mark.prefect
def test_inactive_configuration_fails_before_connecting(tmp_path):
    from prefect_pop3mail.blocks import POP3MailConfiguration

    # Port 9 on a TEST-NET address: any connection attempt would hang or fail differently.
    config = POP3MailConfiguration(server="192.0.2.1", port=9, user="u", password="p",
                                   status="Inactive", save_directory=str(tmp_path))
    config.save("inactive-box", overwrite=True)
    state = receive_all_mail("inactive-box", return_state=True)
    assert state.is_failed()
    assert "inactive-box" in state.message and "Inactive" in state.message
    with pytest.raises(InactiveConfigurationError):
        state.result()
