"""Every event stays under Prefect's size limit by construction, whatever the mail: texts and
lists are capped, the event says how many items it left out, and an event still over a
smaller limit goes out reduced rather than blocking the outbox.

Reports are generated (hypothesis) with every list and text field from empty to far past
its cap, in characters that JSON escapes to six bytes and in 4-byte UTF-8; then one real
message with 600 attachments goes through the flow against Dovecot."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_pop3mail.tasks.events import (
    EVENT_MAILBOX_FAILED,
    MAX_EVENT_BYTES,
    MAX_ITEMS,
    MAX_NAME,
    MAX_TEXT,
    bounded,
    failed_event,
    fitted,
    message_event,
    size_bytes,
    summary_event,
)
from prefect_pop3mail.tasks.pop3.errors import DiskFullError
from prefect_pop3mail.tasks.pop3.models import (
    MessageFailure,
    ReceivedMail,
    ReceiveReport,
    SavedAttachment,
)

#: Text that costs the most bytes per character once in JSON: control characters become
#: \uXXXX (6 bytes), quotes and backslashes two, and 4-byte UTF-8 stays 4.
COSTLY = st.sampled_from(["\x00", "\x1b", '"', "\\", "\U0001F4E7", "\u2028", "a"])


def text(most: int) -> st.SearchStrategy[str]:
    """A text from empty to ``most`` characters: a costly character repeated, or mixed."""
    return st.one_of(
        st.builds(lambda c, n: c * n, COSTLY, st.integers(0, most)),
        st.text(min_size=0, max_size=64),
    )


def mails(draw, configuration: str) -> ReceivedMail:
    long = MAX_TEXT * 4
    attachments = draw(st.integers(0, MAX_ITEMS * 30))
    path = draw(text(long))
    return ReceivedMail(
        id=uuid.uuid4().hex, configuration=configuration, uidl=draw(text(200)),
        message_id=draw(text(long)), sender=draw(text(long)), subject=draw(text(long)),
        date=datetime(2026, 11, 26, tzinfo=UTC), size=draw(st.integers(0, 10**12)),
        sha256="ab" * 32, folder=Path("/srv/mail") / (path or "f"),
        original_path=Path("/srv/mail") / (path or "f") / "message.eml",
        attachments=[SavedAttachment(path=Path(f"/srv/mail/{path[:300]}/a{i}"), filename="x",
                                     content_type="text/plain", size=1, sha256="0" * 64)
                     for i in range(attachments)],
        warnings=["w"] * draw(st.integers(0, 500)),
    )


@st.composite
def reports(draw) -> ReceiveReport:
    configuration = draw(text(MAX_TEXT * 2)) or "c"
    received = [mails(draw, configuration) for _ in range(draw(st.integers(0, 3)))]
    # Many more, cheaply: copies of one, with ids of their own.
    many = draw(st.integers(0, MAX_ITEMS * 5))
    template = mails(draw, configuration)
    late = [template.model_copy(update={"id": uuid.uuid4().hex}) for _ in range(many)]
    failed = [MessageFailure(uidl=str(i), number=i, error=draw(text(MAX_TEXT * 2)),
                             error_type="X") for i in range(draw(st.integers(0, 3)))]
    return ReceiveReport(configuration=configuration, received=received, late=late,
                         failed=failed, waiting=draw(st.integers(0, 10**9)))


def check(event) -> None:
    """Bounded by construction: size, every text, every list, and what was left out."""
    assert size_bytes(event) <= MAX_EVENT_BYTES, size_bytes(event)
    for label, value in event.resource.items():
        assert len(value) <= MAX_TEXT, label
    assert len(event.resource.get("prefect.resource.name", "")) <= MAX_NAME

    def walk(value) -> None:
        if isinstance(value, str):
            assert len(value) <= MAX_TEXT
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, list):
                    assert len(item) <= MAX_ITEMS, key
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(event.payload)
    json.loads(event.model_dump_json())  # and it is still an event Prefect can send


GENERATED = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@GENERATED
@given(reports())
def test_every_event_of_a_generated_report_is_bounded(report):
    for mail in report.announcements:
        event = message_event(mail, "block-id")
        check(event)
        left_out = len(mail.attachments) - MAX_ITEMS
        assert event.payload.get("attachments_more", 0) == max(left_out, 0)
    summary = summary_event(report, "block-id")
    check(summary)
    assert summary.payload["handed_on"] == len(report.announcements)
    assert summary.payload.get("messages_more", 0) == max(len(report.announcements) - MAX_ITEMS, 0)
    for handed_on in (True, False):
        failure = failed_event(report.configuration, DiskFullError("x" * 10**5), "y" * 10**5,
                               3, report, handed_on=handed_on)
        check(failure)
        assert failure.payload["attempts"] == 3


def test_the_worst_message_event_is_under_the_bound_with_room():
    """Every field at its cap in the costliest characters: the bound holds with room to
    spare, far under Prefect's 1.5 MB."""
    worst = "\x00" * (MAX_TEXT * 3)
    mail = ReceivedMail(
        id="f" * 32, configuration=worst, uidl=worst, message_id=worst, sender=worst,
        subject=worst, sha256="0" * 64, folder=Path(worst), original_path=Path(worst),
        text_path=Path(worst), html_path=Path(worst),
        attachments=[SavedAttachment(path=worst, filename="x", content_type="x", size=0,
                                     sha256="0") for _ in range(1000)])
    event = message_event(mail)
    check(event)
    assert event.payload["attachments_more"] == 1000 - MAX_ITEMS
    assert size_bytes(event) < MAX_EVENT_BYTES < 1_500_000


def test_lists_and_texts_are_capped_at_any_depth():
    payload = bounded({"a": list(range(MAX_ITEMS + 7)), "b": {"c": ["x" * (MAX_TEXT + 5)] * 60},
                       "d": object()})
    assert payload["a_more"] == 7 and len(payload["a"]) == MAX_ITEMS
    assert payload["b"]["c_more"] == 10 and len(payload["b"]["c"][0]) == MAX_TEXT
    assert isinstance(payload["d"], str)


def test_an_event_over_a_smaller_limit_goes_out_reduced():
    """A server set to a smaller event limit (PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES):
    the event is reduced to its ids and counts rather than refused."""
    from prefect.settings import PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES, temporary_settings

    mail = ReceivedMail(id="e" * 32, configuration="c", uidl="u1", sha256="0" * 64,
                        subject="s" * 900, attachments=[
                            SavedAttachment(path=Path(f"/m/{'a' * 200}{i}"), filename="x",
                                            content_type="x", size=0, sha256="0")
                            for i in range(100)])
    event = message_event(mail)
    assert fitted(event) is event  # under the default limit: as it is
    with temporary_settings(updates={PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES: 4000}):
        small = fitted(event)
        assert size_bytes(small) <= 4000
        assert small.payload["reduced"] is True
        assert small.payload["uidl"] == "u1" and small.payload["id"] == "e" * 32
        assert small.id == event.id  # still the message's own event id
    with temporary_settings(updates={PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES: 500}):
        tiny = fitted(event)
        assert size_bytes(tiny) <= 500 or tiny.payload == {"reduced": True}


def many_attachments(count: int) -> bytes:
    from tests.test_interop import with_attachments

    return with_attachments(count, {f"part-{i:04d}.csv": f"row {i}\n".encode()
                                    for i in range(count)})


@pytest.mark.prefect
@pytest.mark.dovecot
def test_a_message_with_600_attachments_is_announced_and_the_next_run_is_not_blocked(
        mailbox, tmp_path):
    """The example that made a 1.7 MB event: the run completes, its event lists 50
    attachments and says 550 more, and the next run is not held up by it."""
    from prefect_pop3mail.flows import receive_all_mail
    from prefect_pop3mail.tasks.events import EVENT_RECEIVED
    from prefect_pop3mail.tasks.pop3.models import Security
    from tests.test_failed_runs import stored_events

    mailbox.deliver(many_attachments(600))
    name = f"many-{uuid.uuid4().hex[:8]}"
    mailbox.block(tmp_path, Security.IMPLICIT, remove_from_server_after_read=True,
                  emit_message_events=True).save(name)
    [mail] = receive_all_mail(name)
    assert len(mail.attachments) == 600
    resource = f"pop3mail.message.{mail.id}"
    for _ in range(60):  # the server stores events as they stream in
        if stored := stored_events([EVENT_RECEIVED], resource):
            break
        time.sleep(0.3)
    [event] = stored
    assert len(event["payload"]["attachments"]) == MAX_ITEMS
    assert event["payload"]["attachments_more"] == 600 - MAX_ITEMS
    assert len(json.dumps(event)) < MAX_EVENT_BYTES
    mailbox.deliver(many_attachments(3))
    assert [len(m.attachments) for m in receive_all_mail(name)] == [3]


def test_a_failed_event_names_the_error_and_the_attempts():
    report = ReceiveReport(configuration="box", waiting=4)
    event = failed_event("box", DiskFullError("no space"), "no space", 2, report)
    assert event.event == EVENT_MAILBOX_FAILED
    assert event.payload["error_type"] == "DiskFullError" and event.payload["attempts"] == 2
    assert event.payload["waiting"] == 4 and event.payload["handed_on"] == 0
    assert event.resource["pop3mail.mail-fetched"] == "false"
