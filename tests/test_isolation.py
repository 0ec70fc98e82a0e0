"""One message never stops a mailbox, a message that keeps failing is set aside, and every
saved message is announced to downstream steps, in its own run or the next one.

A message our code cannot save is simulated by making the header reader fail for it: no
real message should do that (see tests/test_hostile_messages.py), which is the point of
this safety net: it must hold for the bug nobody has found yet.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

from prefect_pop3mail.flows import receive_all_mail
from prefect_pop3mail.tasks.artifacts import artifact_key
from prefect_pop3mail.tasks.events import EVENT_MAILBOX_RECEIVED, EVENT_RECEIVED
from prefect_pop3mail.tasks.pop3.errors import POP3ConnectionError
from prefect_pop3mail.tasks.pop3.models import ReceiveOptions, SaveOptions, Security
from prefect_pop3mail.tasks.pop3.receiver import MailboxReceiver
from prefect_pop3mail.tasks.pop3.storage import store as store_module
from tests.conftest import sample_message
from tests.servers.faultserver import FaultServer, cut_after
from tests.test_faults import settings_for
from tests.test_flows import wait_for_events

POISON = "Poison pill"


@pytest.fixture
def poison_reader(monkeypatch):
    """The header reader fails, with an exception not of ours, for the poison message."""
    real = store_module.header_fields

    def failing(message, *args):
        if POISON in str(message.get("Subject", "")):
            raise RecursionError("maximum recursion depth exceeded (simulated)")
        return real(message, *args)

    monkeypatch.setattr(store_module, "header_fields", failing)


def crlf(message: bytes) -> bytes:
    return message.replace(b"\n", b"\r\n")


def events_named(name: str, configuration: str) -> list:
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    related = EventRelatedFilter(id=[f"pop3mail.configuration.{configuration}"])
    with get_client(sync_client=True) as client:
        return client.read_events(
            filter=EventFilter(event=EventNameFilter(name=[name]), related=related), limit=50
        ).events


@pytest.mark.prefect
@pytest.mark.dovecot
def test_a_poison_message_fails_alone_then_is_set_aside(mailbox, tmp_path, poison_reader):
    mailbox.deliver(sample_message(1), sample_message(2, Subject=POISON), sample_message(3))
    name = f"poison-{uuid.uuid4().hex[:8]}"
    mailbox.block(tmp_path, Security.IMPLICIT, remove_from_server_after_read=True,
                  quarantine_after=3, emit_message_events=True).save(name)

    first = receive_all_mail(name, return_state=True)
    assert first.is_completed()
    assert sorted(m.subject for m in first.result()) == ["Message 1", "Message 3"]
    assert mailbox.count() == 1  # the two ordinary messages are saved and deleted

    second = receive_all_mail(name, return_state=True)  # attempt 2: nothing else to save
    assert second.is_failed() and "RecursionError" in second.message
    assert mailbox.count() == 1

    third = receive_all_mail(name, return_state=True)
    assert third.is_completed()
    [aside] = third.result()
    assert aside.quarantined and aside.deleted and mailbox.count() == 0
    assert aside.folder.path.parent == tmp_path / "quarantine"
    assert aside.original_path.read_bytes().replace(b"\r\n", b"\n") == sample_message(
        2, Subject=POISON)
    assert aside.text_path is None and "quarantine" in aside.warnings[0]

    [event] = [e for e in wait_for_events(name, 3) if e.payload["uidl"] == aside.uidl]
    assert event.payload["quarantined"] is True
    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_latest_artifacts()}
    failed = artifacts[artifact_key(name, "failed")]
    assert "RecursionError" in failed.data and "| 2 |" in failed.data
    assert "exceeded \\(simulated\\)" in failed.data  # server and message text is escaped
    rows = json.loads(artifacts[artifact_key(name, "received")].data)
    assert [r["quarantined"] for r in rows] == ["yes"]


def test_a_poison_message_between_two_ordinary_ones_does_not_stop_the_run(tmp_path,
                                                                          poison_reader):
    messages = [crlf(sample_message(1)), crlf(sample_message(2, Subject=POISON)),
                crlf(sample_message(3))]
    with FaultServer(messages) as server:
        with MailboxReceiver("c", settings_for(server), SaveOptions(directory=tmp_path),
                             ReceiveOptions(remove_after_read=True)) as receiver:
            report = receiver.run()
        assert [m.subject for m in report.received] == ["Message 1", "Message 3"]
        [failure] = report.failed
        assert failure.error_type == "RecursionError" and failure.attempts == 1
        assert len(server.messages) == 1  # QUIT was sent: the two others are deleted


def test_a_message_too_large_run_after_run_is_skipped_so_the_rest_moves(tmp_path):
    """A server that lies about a size: the body is far larger than LIST said. It ends
    the session each time; after quarantine_after runs it is left alone."""
    big = crlf(sample_message(1, Subject="Huge", body="x" * 200_000 + "\n"))
    messages = [big, crlf(sample_message(2))]
    options = ReceiveOptions(remove_after_read=True, max_message_size=50_000,
                             quarantine_after=2, in_use_retries=0)
    save = SaveOptions(directory=tmp_path)
    with FaultServer(messages) as server:
        server.on("LIST", lambda conn, args: conn.send(b"+OK\r\n1 100\r\n2 100\r\n.\r\n")
                  or True)
        with MailboxReceiver("c", settings_for(server), save, options) as receiver:
            first = receiver.run()  # the huge one ends a session; the run goes on without it
        assert [m.subject for m in first.received] == ["Message 2"]
        assert [(f.error_type, f.attempts) for f in first.failed] == [("MessageTooLargeError", 1)]
        with MailboxReceiver("c", settings_for(server), save, options) as receiver:
            second = receiver.run()
        assert [(f.error_type, f.attempts) for f in second.failed] == [("MessageTooLargeError", 2)]
        before = len(server.commands)
        with MailboxReceiver("c", settings_for(server), save, options) as receiver:
            third = receiver.run()  # given up: not even retrieved
        assert [f.error_type for f in third.failed] == ["RetrieveFailedError"]
        assert len(server.messages) == 1
        assert not [c for c in server.commands[before:] if c.startswith("RETR")]


def test_messages_saved_before_a_lost_connection_are_announced_by_that_run(tmp_path):
    messages = [crlf(sample_message(i, body="line\n" * 200)) for i in range(6)]
    with FaultServer(messages) as server:
        server.on("RETR", cut_after(100), args=("4",), times=1)
        with MailboxReceiver("c", settings_for(server), SaveOptions(directory=tmp_path),
                             ReceiveOptions(remove_after_read=True, in_use_retries=0)) as rx:
            with pytest.raises(POP3ConnectionError) as caught:
                rx.run()
            partial = caught.value.partial_report
            saved = len(partial.received)  # the cut can also take the end of a message before
            assert saved >= 2
            assert [m.subject for m in partial.received] == [f"Message {i}" for i in range(saved)]
            # The caller announces the partial report, then acknowledges it.
            rx.acknowledge(partial.announcements)
        with MailboxReceiver("c", settings_for(server), SaveOptions(directory=tmp_path),
                             ReceiveOptions(remove_after_read=True)) as rx:
            report = rx.run()
        assert report.late == []  # announced already
        subjects = [m.subject for m in report.received]
        assert sorted(subjects) == [f"Message {i}" for i in range(saved, 6)]
        # The message the connection was lost under is tried alone, after the others.
        assert subjects[-1] == f"Message {saved}" and report.sessions == 2


def test_messages_a_dead_run_never_announced_are_announced_by_the_next(tmp_path):
    messages = [crlf(sample_message(i)) for i in range(3)]
    save = SaveOptions(directory=tmp_path)
    with FaultServer(messages) as server:
        with MailboxReceiver("c", settings_for(server), save, ReceiveOptions()) as rx:
            first = rx.run()  # the run "dies" here: no announcement, no acknowledgement
        with MailboxReceiver("c", settings_for(server), save, ReceiveOptions()) as rx:
            second = rx.run()
            assert second.received == []
            assert [m.id for m in second.late] == [m.id for m in first.received]
            assert [m.folder for m in second.late] == [m.folder for m in first.received]
            rx.acknowledge(second.announcements)
        with MailboxReceiver("c", settings_for(server), save, ReceiveOptions()) as rx:
            assert rx.run().late == []


@pytest.mark.prefect
@pytest.mark.dovecot
def test_every_run_emits_one_summary_event_even_when_nothing_arrived(mailbox, tmp_path):
    name = f"summary-{uuid.uuid4().hex[:8]}"
    mailbox.block(tmp_path, Security.IMPLICIT, emit_message_events=True).save(name)
    assert receive_all_mail(name) == []
    mailbox.deliver(sample_message(1))
    [mail] = receive_all_mail(name)
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    import time

    for _ in range(60):
        summaries = events_named(EVENT_MAILBOX_RECEIVED, name)
        if len(summaries) >= 2:
            break
        time.sleep(0.3)
    payloads = sorted((e.payload for e in summaries), key=lambda p: p["received"])
    assert [p["received"] for p in payloads] == [0, 1]
    assert payloads[1]["messages"] == [{"id": mail.id, "folder": str(mail.folder)}]
    assert all(p["failed"] == 0 and p["waiting"] == 0 for p in payloads)
    [received] = events_named(EVENT_RECEIVED, name)
    assert received.id == uuid.UUID(mail.id) and received.payload["id"] == mail.id
    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_latest_artifacts()}
    assert artifact_key(name, "received") in keys


@pytest.mark.parametrize("text", [
    "| forged | row |\n|---|", "![img](http://evil.example/x.png)", "<script>alert(1)</script>",
    "[click](javascript:alert(1))", "# heading\n* item", "`code` **bold** _it_ ~~del~~",
])
def test_text_in_a_markdown_artifact_is_inert(text):
    from prefect_pop3mail.tasks.artifacts import markdown_cell

    cell = markdown_cell(text)
    assert "\n" not in cell
    unescaped = re.findall(r"(?<!\\)[|\[\]()<>`*_#!~]", cell)
    assert unescaped == [], cell
