"""What a user sees in the Prefect UI and API: the engine's warnings in the run's logs, help
for every parameter of the run form, no empty artifacts, and a save directory error that
names the setting and the path."""

from __future__ import annotations

import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.utilities.callables import parameter_schema

from prefect_pop3mail.flows import (
    check_pop3_connection,
    list_mail,
    receive_all_mail,
    receive_from_mailboxes,
    receive_mail,
)
from prefect_pop3mail.tasks import check_connection, mail_list, mail_receive, mail_receive_all
from prefect_pop3mail.tasks.artifacts import artifact_key
from prefect_pop3mail.tasks.pop3.models import Security
from tests.conftest import sample_message

FLOWS = [receive_mail, receive_all_mail, list_mail, receive_from_mailboxes,
         check_pop3_connection]
TASKS = [mail_receive, mail_receive_all, mail_list, check_connection]


@pytest.mark.parametrize("runnable", FLOWS + TASKS, ids=lambda r: r.name)
def test_every_parameter_has_help_in_the_run_form(runnable):
    schema = parameter_schema(runnable.fn).model_dump()
    missing = [name for name, spec in schema["properties"].items()
               if not spec.get("description")]
    assert missing == [], f"{runnable.name}: no description for {missing}"
    doc = runnable.fn.__doc__
    assert "Returns:" in doc and "Example:" in doc and "@flow" in doc


def test_results_are_precisely_typed():
    assert receive_all_mail.fn.__annotations__["return"] == "list[ReceivedMail]"
    assert list_mail.fn.__annotations__["return"] == "list[ListedMessage]"


def run_logs(flow_run_id) -> list[str]:
    with get_client(sync_client=True) as client:
        for _ in range(40):  # logs reach the API in batches
            logs = client.read_logs(log_filter=LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            if any("UNENCRYPTED" in log.message for log in logs):
                break
            time.sleep(0.5)
    return [log.message for log in logs]


@pytest.mark.prefect
@pytest.mark.dovecot
def test_the_engines_warnings_reach_the_runs_logs(mailbox, tmp_path):
    mailbox.deliver(sample_message(1))
    name = f"ux-{uuid.uuid4().hex[:8]}"
    mailbox.block(tmp_path, Security.NONE).save(name)
    state = receive_all_mail(name, return_state=True)
    assert state.is_completed()
    messages = run_logs(state.state_details.flow_run_id)
    assert any("UNENCRYPTED connection" in m for m in messages), messages
    assert mailbox.password not in " ".join(messages)


@pytest.mark.prefect
@pytest.mark.dovecot
def test_an_empty_run_leaves_no_table_artifact(mailbox, tmp_path):
    name = f"ux-{uuid.uuid4().hex[:8]}"
    mailbox.block(tmp_path).save(name)
    assert receive_all_mail(name) == []
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_latest_artifacts()}
    assert artifact_key(name, "received") not in keys
    assert artifact_key(name, "failed") not in keys


@pytest.mark.prefect
@pytest.mark.dovecot
def test_a_save_directory_that_cannot_be_made_names_the_setting_and_path(mailbox, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    name = f"ux-{uuid.uuid4().hex[:8]}"
    mailbox.deliver(sample_message(1))
    mailbox.block(blocker / "mail").save(name)
    started = time.monotonic()
    state = receive_all_mail(name, return_state=True)
    assert state.is_failed() and time.monotonic() - started < 30
    assert "save_directory" in state.message and str(blocker / "mail") in state.message
    assert mailbox.count() == 1
