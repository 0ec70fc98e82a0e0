"""Secrets never leak: every flow runs with known password, client secret and token values,
then logs, artifacts, events, flow-run records, results and exception texts are searched
for them. Zero hits."""

from __future__ import annotations

import logging
import traceback
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.events.worker import EventsWorker

from prefect_pop3mail.blocks import POP3MailConfiguration
from prefect_pop3mail.flows import (
    check_pop3_connection,
    receive_all_mail,
    receive_from_mailboxes,
    receive_mail,
)
from prefect_pop3mail.tasks.pop3.models import Security
from tests.conftest import Mailbox, sample_message
from tests.servers.faultserver import FaultServer
from tests.test_oauth_login import idp, oauth_dovecot  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.dovecot, pytest.mark.prefect]

MARK = uuid.uuid4().hex[:12]
PASSWORD = f"pw-{MARK}-Correct"
WRONG_PASSWORD = f"pw-{MARK}-Wrong"
KEY_PASSWORD = f"pk-{MARK}-KeyStore"
WRONG_CLIENT_SECRET = f"cs-{MARK}-Wrong"


def texts_from_the_server() -> list[str]:
    """Everything Prefect stored: logs, artifacts, events, flow and task runs."""
    EventsWorker.drain_all()
    out: list[str] = []
    with get_client(sync_client=True) as client:
        out += [log.message for log in client.read_logs(limit=200)]
        out += [a.model_dump_json() for a in client.read_artifacts(limit=200)]
        out += [r.model_dump_json() for r in client.read_flow_runs(limit=200)]
        out += [r.model_dump_json() for r in client.read_task_runs(limit=200)]
        page = client.read_events(limit=50)
        while True:
            out += [e.model_dump_json() for e in page.events]
            if not page.next_page:
                break
            page = client.read_events_page(page.next_page)
    return out


def run(flow, *args, **kwargs) -> list[str]:
    """Run a flow; return its result, state message and exception as text."""
    state = flow(*args, return_state=True, **kwargs)
    out = [str(state.message)]
    try:
        result = state.result()
        out.append(repr(result))
        if hasattr(result, "model_dump_json"):
            out.append(result.model_dump_json())
        elif isinstance(result, list | dict):
            out.append(repr([getattr(r, "model_dump_json", lambda r=r: repr(r))() for r in
                             (result.values() if isinstance(result, dict) else result)]))
    except Exception as exc:  # failures are part of what is searched
        out += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    return out


def test_no_secret_reaches_logs_artifacts_events_results_or_errors(
    dovecot, oauth_dovecot, idp, tmp_path, caplog  # noqa: F811
):
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []

    # Basic authentication against Dovecot, with a known password.
    box = Mailbox(dovecot)
    dovecot.users[box.user] = PASSWORD
    (dovecot.root / "users" / box.user).write_text(f"{box.user}:{{PLAIN}}{PASSWORD}::::::\n")
    box.password = PASSWORD
    box.deliver(*(sample_message(i) for i in range(3)))
    basic = box.block(tmp_path / "basic", Security.IMPLICIT, remove_from_server_after_read=True,
                      public_key_name="", public_key_password="")
    basic.save(f"basic-{MARK}")
    inactive = box.block(tmp_path / "inactive", status="Inactive")
    inactive.save(f"inactive-{MARK}")

    seen += run(receive_mail, f"basic-{MARK}")
    seen += run(receive_all_mail, f"basic-{MARK}")
    seen += run(receive_all_mail, basic)  # a block instance as the parameter
    seen += run(check_pop3_connection, f"basic-{MARK}")
    seen += run(receive_from_mailboxes, [f"basic-{MARK}", f"inactive-{MARK}"])
    seen += run(receive_all_mail, f"inactive-{MARK}")

    # A wrong password, refused by a server that (unlike Dovecot) adds no login penalty.
    with FaultServer([sample_message(9)]) as server:
        POP3MailConfiguration(
            server="127.0.0.1", port=server.port, security="None", user=server.user,
            password=WRONG_PASSWORD, save_directory=str(tmp_path / "wrong"), timeout=5,
        ).save(f"wrong-{MARK}")
        seen += run(receive_all_mail, f"wrong-{MARK}")
        seen += run(check_pop3_connection, f"wrong-{MARK}")

    # OAUTH2 against the local identity provider and Dovecot's oauth2 passdb.
    oauth_box = Mailbox(oauth_dovecot)
    client = idp.register(oauth_box.user)
    oauth_box.deliver(sample_message(20))
    for name, secret in ((f"oauth-{MARK}", client.secret), (f"badsecret-{MARK}", WRONG_CLIENT_SECRET)):
        oauth_box.block(
            tmp_path / name, Security.IMPLICIT, authentication="OAUTH2", password="",
            client_id=client.client_id, client_secret=secret,
            token_endpoint=idp.entra_token_endpoint, tls_ca_file=str(oauth_dovecot.ca_file),
        ).save(name)
        seen += run(receive_all_mail, name)
        seen += run(check_pop3_connection, name)
    tokens = [t for t, issued in idp.tokens.items() if issued.client is client]
    assert tokens, "the OAuth2 flows got no token: the check would prove nothing"

    seen += texts_from_the_server()
    seen += [caplog.text]
    haystack = "\n".join(seen)
    assert "Message 1" in haystack and f"basic-{MARK}" in haystack  # we searched real output

    secrets = [PASSWORD, WRONG_PASSWORD, client.secret, WRONG_CLIENT_SECRET, *tokens]
    secrets += [t.rsplit(".", 1)[1] for t in tokens]  # a JWT's signature alone is enough
    leaks = {f"{s[:3]}...{s[-6:]}": haystack.count(s) for s in secrets if s in haystack}
    assert leaks == {}, f"secrets leaked: {leaks}"
