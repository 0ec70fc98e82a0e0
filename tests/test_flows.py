"""The flows and tasks under prefect_test_harness, against Dovecot: states, results,
artifacts, events, and the options users expect."""

from __future__ import annotations

import time
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

from prefect_pop3mail.flows import (
    check_pop3_connection,
    list_mail,
    receive_all_mail,
    receive_mail,
)
from prefect_pop3mail.tasks.activities import _retry_when_transient
from prefect_pop3mail.tasks.artifacts import artifact_key
from prefect_pop3mail.tasks.events import EVENT_RECEIVED
from prefect_pop3mail.tasks.lock import SLOTS, lock_name
from prefect_pop3mail.tasks.pop3.errors import POP3AuthError, POP3ConnectionError, POP3InUseError
from prefect_pop3mail.tasks.pop3.models import ListedMessage, ReceivedMail, Security
from tests.conftest import sample_message

pytestmark = [pytest.mark.dovecot, pytest.mark.prefect]


def saved(mailbox, tmp_path, **fields) -> str:
    name = f"flow-{uuid.uuid4().hex[:10]}"
    mailbox.block(tmp_path, Security.IMPLICIT, **fields).save(name)
    return name


def wait_for_events(configuration: str, count: int, timeout: float = 20.0) -> list:
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    related = EventRelatedFilter(id=[f"pop3mail.configuration.{configuration}"])
    wanted = EventFilter(event=EventNameFilter(name=[EVENT_RECEIVED]), related=related)
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=wanted, limit=50).events
            if len(events) >= count or time.monotonic() > deadline:
                return events
            time.sleep(0.3)


def test_receive_all_results_artifacts_and_events(mailbox, tmp_path):
    mailbox.deliver(*(sample_message(i, body=f"Body text {i}.\n") for i in range(3)))
    name = saved(mailbox, tmp_path, remove_from_server_after_read=True,
                 emit_message_events=True)

    state = receive_all_mail(name, return_state=True)

    assert state.is_completed()
    received = state.result()
    assert [type(m) for m in received] == [ReceivedMail] * 3
    assert {m.subject for m in received} == {"Message 0", "Message 1", "Message 2"}
    assert all(m.deleted and m.original_path.path.is_file() for m in received)
    assert mailbox.count() == 0

    with get_client(sync_client=True) as client:
        table = client.read_latest_artifacts()
    by_key = {a.key: a for a in table}
    rows = by_key[artifact_key(name, "received")].data
    rows = rows if isinstance(rows, list) else __import__("json").loads(rows)
    assert sorted(r["subject"] for r in rows) == ["Message 0", "Message 1", "Message 2"]
    assert by_key[artifact_key(name, "progress")].data == 100.0

    events = wait_for_events(name, 3)
    assert len(events) == 3
    by_uidl = {m.uidl: m for m in received}
    for event in events:
        mail = by_uidl[event.payload["uidl"]]
        assert event.payload["original_path"] == str(mail.original_path)
        assert event.payload["configuration"] == name
        assert "Body text" not in str(event.payload)  # paths and metadata, never bodies
        assert event.resource.id.startswith("pop3mail.message.")


def test_mail_receive_takes_one_new_message_at_a_time(mailbox, tmp_path):
    mailbox.deliver(sample_message(1), sample_message(2))
    name = saved(mailbox, tmp_path)

    first, second, third = (receive_mail(name) for _ in range(3))

    assert (first.subject, second.subject) == ("Message 1", "Message 2")
    assert third is None
    assert mailbox.count() == 2  # removal is off: both stay on the server


def test_seed_behaviour_reads_messages_left_on_the_server_again(mailbox, tmp_path):
    mailbox.deliver(sample_message(1), sample_message(2))
    name = saved(mailbox, tmp_path, new_messages_only=False)

    first = receive_all_mail(name)
    again = receive_all_mail(name)

    assert len(first) == len(again) == 2
    assert {m.folder for m in first} == {m.folder for m in again}  # same folders, no copies
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_new_messages_only_skips_what_was_saved(mailbox, tmp_path):
    mailbox.deliver(sample_message(1))
    name = saved(mailbox, tmp_path)
    assert len(receive_all_mail(name)) == 1
    mailbox.deliver(sample_message(2))
    again = receive_all_mail(name)
    assert [m.subject for m in again] == ["Message 2"]


def test_dry_run_lists_and_changes_nothing(mailbox, tmp_path):
    mailbox.deliver(sample_message(1, Subject="Invoice 7"), sample_message(2))
    name = saved(mailbox, tmp_path, remove_from_server_after_read=True)

    listed = list_mail(name)

    assert [type(m) for m in listed] == [ListedMessage, ListedMessage]
    assert [m.subject for m in listed] == ["Invoice 7", "Message 2"]
    assert all(m.size > 0 and m.uidl for m in listed)
    # One channel per setting: the per-call limit reaches the dry run too.
    assert [m.subject for m in list_mail(name, max_messages=1)] == ["Invoice 7"]
    assert [m.subject for m in list_mail(name, subject_filter="^Message")] == ["Message 2"]
    assert mailbox.count() == 2
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_a_dry_run_counts_what_waits_on_the_server(mailbox, tmp_path):
    """The dry run's report (and its log line) says how many messages no run has saved."""
    from prefect_pop3mail.tasks.activities import receive_report

    mailbox.deliver(sample_message(1), sample_message(2))
    name = saved(mailbox, tmp_path)
    assert receive_report(name, dry_run=True).waiting == 2
    receive_all_mail(name, max_messages=1)
    assert receive_report(name, dry_run=True).waiting == 1


def test_header_filters_and_maximum_count(mailbox, tmp_path):
    mailbox.deliver(
        sample_message(1, Subject="Invoice 1"),
        sample_message(2, Subject="Newsletter"),
        sample_message(3, Subject="INVOICE 3", From="billing@vendor.example"),
        sample_message(4, Subject="Invoice 4"),
    )
    name = saved(mailbox, tmp_path, remove_from_server_after_read=True)

    invoices = receive_all_mail(name, subject_filter=r"^invoice", max_messages=2)
    assert [m.subject for m in invoices] == ["Invoice 1", "INVOICE 3"]
    from_vendor = receive_all_mail(name, sender_filter=r"@vendor\.example$")
    assert from_vendor == []  # already received and deleted
    rest = receive_all_mail(name)
    assert sorted(m.subject for m in rest) == ["Invoice 4", "Newsletter"]
    assert mailbox.count() == 0


def test_oversized_message_is_skipped_and_left(mailbox, tmp_path):
    mailbox.deliver(sample_message(1), sample_message(2, body="x" * 20_000 + "\n"))
    name = saved(mailbox, tmp_path, remove_from_server_after_read=True, max_message_size=5_000)

    received = receive_all_mail(name)

    assert [m.subject for m in received] == ["Message 1"]
    assert mailbox.count() == 1


def test_each_mailbox_gets_its_own_lock(mailbox, tmp_path):
    mailbox.deliver(sample_message(1))
    name = saved(mailbox, tmp_path)
    receive_all_mail(name)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(lock_name(name))
    assert limit.limit == SLOTS  # a run takes them all (see tasks/lock.py)
    assert limit.active_slots == 0  # released after the run


def test_connection_check_reports_without_retrieving(mailbox, tmp_path):
    mailbox.deliver(sample_message(1), sample_message(2))
    name = saved(mailbox, tmp_path)

    report = check_pop3_connection(name)

    assert report.login_ok and report.login_error is None
    assert report.greeting.startswith("+OK")
    assert "PIPELINING" in report.capabilities and "UIDL" in report.capabilities
    assert report.tls_version in ("TLSv1.2", "TLSv1.3")
    assert "trustme" in report.certificate_subject
    assert report.certificate_expires.year >= 2027
    assert report.messages_waiting == 2
    assert mailbox.count() == 2


def test_connection_check_reports_a_refused_login(mailbox, failing_login_source):
    from prefect_pop3mail.tasks.pop3.protocol.diagnostics import check_mailbox

    settings = mailbox.settings(
        Security.EXPLICIT, password=__import__("pydantic").SecretStr("wrong-password"),
        source_address=failing_login_source,
    )
    report = check_mailbox("wrong-password", settings)

    assert not report.login_ok
    assert "AUTH" in report.login_error or "failed" in report.login_error
    assert "wrong-password" not in report.model_dump_json().replace('"wrong-password"', "")


class _State:
    def __init__(self, error: Exception):
        self.error = error

    def result(self):
        raise self.error


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (POP3AuthError("PASS", "-ERR [AUTH] Authentication failed."), False),
        (POP3InUseError("PASS", "-ERR [IN-USE] Mailbox locked"), True),
        (POP3ConnectionError("connection lost"), True),
        (ValueError("a bug"), False),
    ],
)
def test_only_transient_failures_are_retried(error, retried):
    assert _retry_when_transient(None, None, _State(error)) is retried
