"""A failed run says so: one ``pop3mail.mailbox.failed`` event per run (never one per
attempt, never a "received" event with zero counts), naming the configuration, the error
class, the message with secrets cut out, and the attempts; and its progress artifact says
what happened instead of standing at 0%."""

from __future__ import annotations

import socket
import time
import uuid

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from prefect_pop3mail.flows import receive_all_mail
from prefect_pop3mail.tasks.activities import mail_receive_all
from prefect_pop3mail.tasks.artifacts import artifact_key
from prefect_pop3mail.tasks.events import (
    EVENT_MAILBOX_FAILED,
    EVENT_MAILBOX_RECEIVED,
    mailbox_resource_id,
)
from prefect_pop3mail.tasks.pop3.models import Security


def stored_events(names: list[str], resource_id: str) -> list[dict]:
    """Events the Prefect server holds, through its REST API (Prefect 3.4's client has no
    read_events)."""
    body = {"filter": {"event": {"name": names}, "resource": {"id": [resource_id]}},
            "limit": 50}
    with get_client(sync_client=True) as client:
        return client.request("POST", "/events/filter", json=body).json()["events"]


def run_events(configuration: str, wanted: int, timeout: float = 20.0) -> dict[str, list]:
    """The run events of ``configuration`` by name, once ``wanted`` are stored (or after
    ``timeout``, then a little longer to see that no more come)."""
    names = [EVENT_MAILBOX_FAILED, EVENT_MAILBOX_RECEIVED]
    resource = mailbox_resource_id(configuration)
    deadline = time.monotonic() + timeout
    while len(stored_events(names, resource)) < wanted and time.monotonic() < deadline:
        time.sleep(0.3)
    time.sleep(1.5)  # anything more would have arrived with them
    found = stored_events(names, resource)
    return {name: [e for e in found if e["event"] == name] for name in names}


def progress_description(configuration: str) -> str | None:
    with get_client(sync_client=True) as client:
        for artifact in client.read_latest_artifacts():
            if artifact.key == artifact_key(configuration, "progress"):
                return artifact.description
    return None


@pytest.mark.prefect
@pytest.mark.dovecot
def test_a_wrong_password_sends_one_failed_event_and_no_received_event(mailbox, tmp_path):
    name = f"failed-{uuid.uuid4().hex[:8]}"
    secret = f"Wrong-{uuid.uuid4().hex}"
    mailbox.block(tmp_path, Security.IMPLICIT, password=secret).save(name)

    state = receive_all_mail(name, return_state=True)

    assert state.is_failed()
    events = run_events(name, 1)
    assert events[EVENT_MAILBOX_RECEIVED] == []
    [failed] = events[EVENT_MAILBOX_FAILED]
    assert failed["payload"]["configuration"] == name
    assert failed["payload"]["error_type"] in ("POP3AuthError", "POP3AuthResponseError")
    assert failed["payload"]["attempts"] == 1  # a bad login is not tried again
    assert secret not in str(failed)
    assert failed["resource"]["pop3mail.mail-fetched"] == "false"
    assert "failed: POP3Auth" in (progress_description(name) or "")


@pytest.mark.prefect
@pytest.mark.dovecot
def test_a_failed_cli_receive_sends_the_failed_event_too(mailbox, tmp_path, capsys):
    from prefect_pop3mail.flows.cli import FAILED, main

    name = f"failed-cli-{uuid.uuid4().hex[:8]}"
    secret = f"Wrong-{uuid.uuid4().hex}"
    mailbox.block(tmp_path, Security.IMPLICIT, password=secret).save(name)

    assert main(["receive", name]) == FAILED
    events = run_events(name, 1)
    assert events[EVENT_MAILBOX_RECEIVED] == []
    [failed] = events[EVENT_MAILBOX_FAILED]
    assert failed["payload"]["configuration"] == name and secret not in str(failed)

    assert main(["receive", name, "--dry-run"]) == FAILED  # a dry run announces nothing
    assert len(run_events(name, 2, timeout=3)[EVENT_MAILBOX_FAILED]) == 1
    assert secret not in capsys.readouterr().err


class SilentServer:
    """Accepts connections (the kernel does) and never says a word: a hung POP3 server."""

    def __enter__(self):
        self.socket = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.port = self.socket.getsockname()[1]
        return self

    def __exit__(self, *exc):
        self.socket.close()


@pytest.mark.prefect
def test_a_failure_retried_twice_sends_one_failed_event_with_three_attempts(tmp_path):
    """A silent server (a timeout, which is retried): three attempts, one event."""
    from prefect_pop3mail.blocks import POP3MailConfiguration

    name = f"silent-{uuid.uuid4().hex[:8]}"
    with SilentServer() as server:
        POP3MailConfiguration(server="127.0.0.1", port=server.port, security="None",
                              user="u", password="p", save_directory=str(tmp_path),
                              timeout=1).save(name)

        @flow
        def attempts_three_times():
            return mail_receive_all.with_options(retries=2, retry_delay_seconds=0)(name)

        state = attempts_three_times(return_state=True)

    assert state.is_failed()
    events = run_events(name, 1)
    assert events[EVENT_MAILBOX_RECEIVED] == []
    [failed] = events[EVENT_MAILBOX_FAILED]
    assert failed["payload"]["attempts"] == 3
    assert failed["payload"]["error_type"] == "POP3TimeoutError"
    assert "127.0.0.1" in failed["payload"]["error"] or "greeting" in failed["payload"]["error"]
    assert "failed: POP3TimeoutError" in (progress_description(name) or "")
