"""How runs and messages reach automations and downstream deployments: Prefect events.

Every event is bounded by construction: each text at most ``MAX_TEXT`` characters (names
and subjects ``MAX_NAME``), each list at most ``MAX_ITEMS`` items with a ``<name>_more``
count of what was left out (the result and the artifacts have all of it). So an event's
JSON stays under ``MAX_EVENT_BYTES`` whatever the mail, and one that is still over a
smaller limit set on the server goes out reduced to its ids; it never blocks the outbox.

A run's events are sent on one connection and confirmed by the server (a ping answered
after the last one) before the outbox lets go of the mail they announce: a run that cannot
reach Prefect leaves it for the next run, which announces it under the same ids.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import uuid
from typing import Any

from prefect.events import Event

from prefect_pop3mail.tasks.pop3.models import ReceivedMail, ReceiveReport
from prefect_pop3mail.tasks.prefect_api import api_url, no_retries

log = logging.getLogger("pop3mail.events")

EVENT_RECEIVED = "pop3mail.message.received"
EVENT_MAILBOX_RECEIVED = "pop3mail.mailbox.received"
EVENT_MAILBOX_FAILED = "pop3mail.mailbox.failed"
#: A label of the run's event, so triggers (which match labels, not payloads) can tell runs
#: that handed mail on: see ``quiet_mailbox_automation``.
MAIL_FETCHED_LABEL = "pop3mail.mail-fetched"

MAX_TEXT = 1000
MAX_NAME = 200
MAX_ITEMS = 50
#: What the bounds above add up to for our events, JSON-escaped (a character may take six
#: bytes), with room to spare; Prefect's own limit is 1.5 MB.
MAX_EVENT_BYTES = 512 * 1024
#: Seconds to send a run's events, plus this much per event.
SEND_DEADLINE = 20.0
SEND_DEADLINE_PER_EVENT = 0.02


def mailbox_resource_id(configuration: str) -> str:
    return f"pop3mail.mailbox.{configuration}"


def message_resource_id(mail: ReceivedMail) -> str:
    return f"pop3mail.message.{mail.id}"


def bounded(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with every text cut to ``MAX_TEXT`` and every list to ``MAX_ITEMS``
    (and ``<key>_more`` saying how many items were left out), at any depth."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, list | tuple):
            out[key] = [_bounded_value(v) for v in value[:MAX_ITEMS]]
            if len(value) > MAX_ITEMS:
                out[f"{key}_more"] = len(value) - MAX_ITEMS
        else:
            out[key] = _bounded_value(value)
    return out


def _bounded_value(value: Any) -> Any:
    if isinstance(value, str):
        return value[:MAX_TEXT]
    if isinstance(value, dict):
        return bounded(value)
    if isinstance(value, list | tuple):
        return bounded({"items": value})["items"]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:MAX_TEXT]


def _name(text: str | None, empty: str = "") -> str:
    return (text or "")[:MAX_NAME] or empty


def _configuration_resource(configuration: str, configuration_id: str | None) -> dict:
    related = {
        "prefect.resource.id": f"pop3mail.configuration.{configuration}"[:MAX_TEXT],
        "prefect.resource.role": "configuration",
        "prefect.resource.name": _name(configuration),
    }
    if configuration_id:
        related["pop3mail.block-document.id"] = configuration_id[:MAX_NAME]
    return related


def _path(path) -> str | None:
    return str(path) if path else None


def message_event(mail: ReceivedMail, configuration_id: str | None = None) -> Event:
    """One saved message: its paths and metadata, never its body. The event's id derives
    from the message's, so the Prefect server keeps one copy of a repeat."""
    return Event(
        event=EVENT_RECEIVED,
        id=uuid.UUID(hex=mail.id[:32].ljust(32, "0")),
        resource={
            "prefect.resource.id": message_resource_id(mail)[:MAX_TEXT],
            "prefect.resource.name": _name(mail.subject, "(no subject)"),
        },
        related=[_configuration_resource(mail.configuration, configuration_id)],
        payload=bounded({
            "id": mail.id,
            "configuration": mail.configuration,
            "uidl": mail.uidl,
            "message_id": mail.message_id,
            "sender": _name(mail.sender),
            "subject": _name(mail.subject),
            "date": mail.date.isoformat() if mail.date else None,
            "size": mail.size,
            "sha256": mail.sha256,
            "folder": mail.location or None,
            "original_path": _path(mail.original_path),
            "text_path": _path(mail.text_path),
            "html_path": _path(mail.html_path),
            "attachments": [str(a.path) for a in mail.attachments],
            "deleted": mail.deleted,
            "quarantined": mail.quarantined,
            "warnings": len(mail.warnings),
            "replay": False,  # replay_saved_mail's events say true
        }),
    )


def _mailbox_resource(configuration: str, handed_on: bool) -> dict:
    return {
        "prefect.resource.id": mailbox_resource_id(configuration)[:MAX_TEXT],
        "prefect.resource.name": _name(configuration),
        MAIL_FETCHED_LABEL: "true" if handed_on else "false",
    }


def _counts(report: ReceiveReport) -> dict[str, Any]:
    return {
        "configuration": report.configuration,
        "received": len(report.received),
        "announced_late": len(report.late),
        "handed_on": len(report.announcements),
        "failed": len(report.failed),
        "quarantined": len(report.quarantined),
        "waiting": report.waiting,
    }


def summary_event(report: ReceiveReport, configuration_id: str | None = None) -> Event:
    """One event per run that ended well, even when nothing arrived: what "no mail for 30
    minutes" automations watch. Mail announced late counts as handed on."""
    mails = report.announcements
    return Event(
        event=EVENT_MAILBOX_RECEIVED,
        resource=_mailbox_resource(report.configuration, bool(mails)),
        related=[_configuration_resource(report.configuration, configuration_id)],
        payload=bounded({
            **_counts(report),
            "messages": [{"id": m.id, "folder": m.location or None} for m in mails],
        }),
    )


def failed_event(configuration: str, error: BaseException, message: str, attempts: int,
                 report: ReceiveReport | None = None, handed_on: bool = False,
                 configuration_id: str | None = None) -> Event:
    """The one event of a run that failed: the error, the attempts, and what the run did.
    ``handed_on``: this event announces the report's mail (a run that stopped early)."""
    payload: dict[str, Any] = {
        "configuration": configuration,
        "error_type": type(error).__name__,
        "error": message,
        "attempts": attempts,
    }
    if report is not None:
        payload.update(_counts(report))
        if not handed_on:
            payload["handed_on"] = 0
            payload["to_announce"] = len(report.announcements)
        else:
            payload["messages"] = [{"id": m.id, "folder": m.location or None}
                                   for m in report.announcements]
    mails = handed_on and report is not None and bool(report.announcements)
    return Event(
        event=EVENT_MAILBOX_FAILED,
        resource=_mailbox_resource(configuration, mails),
        related=[_configuration_resource(configuration, configuration_id)],
        payload=bounded(payload),
    )


def size_bytes(event: Event) -> int:
    """The event's JSON size, as Prefect measures it (``Event.size_bytes`` in 3.5+)."""
    return len(event.model_dump_json().encode())


def fitted(event: Event) -> Event:
    """The event as it is when it fits the size limit of Prefect's settings, else reduced
    to its ids and counts (and ``reduced``: True)."""
    from prefect.settings import get_current_settings

    limit = get_current_settings().server.events.maximum_size_bytes
    if size_bytes(event) <= limit:
        return event
    small = {k: v for k, v in event.payload.items()
             if isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 100)}
    small["reduced"] = True
    reduced = event.model_copy(update={"payload": small})
    if size_bytes(reduced) <= limit:
        return reduced
    return event.model_copy(update={"payload": {"reduced": True}})


def send(events: list[Event], deadline: float | None = None) -> None:
    """Send ``events`` on one connection and wait until the server confirms them, within
    ``deadline`` seconds (by default ``SEND_DEADLINE`` plus a little per event); raise
    when they are not confirmed. Nothing is sent when this process emits no events."""
    from prefect.events.worker import should_emit_events

    if not events or not should_emit_events():
        return
    deadline = deadline or SEND_DEADLINE + SEND_DEADLINE_PER_EVENT * len(events)
    outcome: list[BaseException] = []
    context = contextvars.copy_context()  # the run's settings and run context

    def run() -> None:
        try:
            with no_retries():
                asyncio.run(asyncio.wait_for(_send([fitted(e) for e in events]), deadline))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=context.run, args=(run,), daemon=True,
                              name="pop3mail-events")
    thread.start()
    thread.join(deadline + 5)
    if thread.is_alive():
        raise TimeoutError(f"the events were not confirmed within {deadline:.0f} s")
    if outcome:
        exc = outcome[0]
        if isinstance(exc, asyncio.TimeoutError):
            raise TimeoutError(f"the events were not confirmed within {deadline:.0f} s") from exc
        raise exc


async def _send(events: list[Event]) -> None:
    from prefect.events.clients import get_events_client

    events = await _with_run_resources(events)
    # A checkpoint (ping, pong) after the last event: the server has them all.
    async with get_events_client(reconnection_attempts=1,
                                 checkpoint_every=len(events)) as client:
        for event in events:
            await client.emit(event)


async def _with_run_resources(events: list[Event]) -> list[Event]:
    """The flow run, task run, flow, deployment... as related resources, as Prefect's own
    events worker adds them, so the events show on the run's page."""
    from prefect.client.orchestration import get_client
    from prefect.events.related import related_resources_from_run_context
    from prefect.settings import get_current_settings

    try:
        async with get_client() as client:
            extra = await related_resources_from_run_context(client)
    except Exception as exc:  # the events still go; the API answers them or not
        log.debug("no run resources for the events: %s", exc)
        return events
    maximum = get_current_settings().server.events.maximum_related_resources
    out = []
    for event in events:
        known = {r.id for r in event.involved_resources}
        more = [r for r in extra if r.id not in known][:max(maximum - len(event.related), 0)]
        out.append(event.model_copy(update={"related": [*event.related, *more]}))
    return out


def announce(receiver, report: ReceiveReport, configuration_id: str | None,
             message_events: bool, failure: tuple[BaseException, str, int] | None = None
             ) -> None:
    """Tell downstream steps of every saved message (late ones too), then take them out of
    the outbox: a crash in between announces them again, under the same ids.

    The run's own event is its summary, or, for a run that stopped early (``failure``:
    the error, its message, the attempt), its one failed event, which then carries the
    summary. Raises when the server did not confirm the events; the mail stays in the
    outbox."""
    mails = report.announcements
    events = [message_event(m, configuration_id) for m in mails] if message_events else []
    if failure is None:
        events.append(summary_event(report, configuration_id))
    else:
        error, message, attempts = failure
        events.append(failed_event(report.configuration, error, message, attempts, report,
                                   handed_on=True, configuration_id=configuration_id))
    send(events)
    receiver.acknowledge(mails)


def announce_failure(task, task_run, state) -> None:
    """A task's ``on_failure`` hook: the run's one ``pop3mail.mailbox.failed`` event, after
    its last attempt (never one per attempt), unless the run sent it itself."""
    error = state.result(raise_on_failure=False)
    if not isinstance(error, BaseException) or getattr(error, "pop3mail_announced", False):
        return
    configuration = getattr(error, "pop3mail_configuration", None)
    if not configuration:
        return  # not a run of ours that got as far as naming its configuration
    message = getattr(error, "pop3mail_message", None) or str(error) or type(error).__name__
    event = failed_event(configuration, error, message, getattr(task_run, "run_count", 1),
                         getattr(error, "partial_report", None))
    try:
        send([event])
    except Exception as exc:
        log.warning("%s: the %s event could not be sent to the Prefect API at %s: %s: %s",
                    configuration, EVENT_MAILBOX_FAILED, api_url(), type(exc).__name__, exc)
