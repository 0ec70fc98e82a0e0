"""How results reach people and automations: artifacts, events, the per-mailbox lock.

Payloads carry paths and metadata, never bodies or secrets.
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.events import emit_event
from prefect.exceptions import ObjectAlreadyExists

from prefect_pop3mail.tasks.pop3.errors import POP3MailError
from prefect_pop3mail.tasks.pop3.models import ReceivedMail, ReceiveReport

EVENT_RECEIVED = "pop3mail.message.received"
LOCK_LEASE_SECONDS = 60
#: Longest wait between two tries for a held mailbox (the server suggests up to 30 s).
MAX_LOCK_POLL = 5.0
#: Quick tries while the server answers "busy" before Prefect's client (and its slow
#: back-off) takes over.
BUSY_RETRIES = 30
#: Quick tries after the connection dropped, within those.
DROPPED_RETRIES = 3
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)


def artifact_key(configuration: str, suffix: str = "") -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", f"pop3mail-{configuration}-{suffix}".lower()).strip("-")
    return re.sub(r"-{2,}", "-", key)


def lock_name(configuration: str) -> str:
    return f"pop3mail-mailbox-{configuration}"


class MailboxBusyError(POP3MailError):
    """Another run held the mailbox's lock for longer than this run would wait."""

    retryable = True


@contextlib.contextmanager
def mailbox_lock(configuration: str, timeout_seconds: float | None = 600) -> Iterator[None]:
    """Hold the mailbox's global concurrency slot (limit 1): one session per mailbox at a
    time, across processes and workers, since the Prefect server keeps the count.

    Two API calls when nobody else holds it: take the slot with a lease, give it back. The
    limit is created by the first run that finds it missing. A thread renews the lease while
    the run lives; a crashed run frees the slot when its lease expires, about a minute.
    (``prefect.concurrency.sync.concurrency`` does the same through a service thread per
    limit name and cost about 0.1 s uncontended and seconds with many mailboxes: bench/.)
    """
    name = lock_name(configuration)
    with get_client(sync_client=True) as client:
        lease_id = _acquire(client, name, timeout_seconds)
        try:
            with _LeaseRenewal(client, lease_id, name):
                yield
        finally:
            client.release_concurrency_slots_with_lease(lease_id)


def _acquire(client, name: str, timeout_seconds: float | None) -> uuid.UUID:
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    created = False
    while True:
        try:
            response = _increment(client, name)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:  # 423 Locked: another run holds it
                raise
            wait = min(float(exc.response.headers.get("Retry-After") or 1), MAX_LOCK_POLL)
            if deadline is not None and time.monotonic() + wait > deadline:
                raise MailboxBusyError(
                    f"mailbox {name!r} is held by another run; gave up after "
                    f"{timeout_seconds:g} s") from None
            time.sleep(max(wait, 0.05))
            continue
        granted = response.json()
        if granted.get("limits"):
            return uuid.UUID(granted["lease_id"])
        if created:
            raise MailboxBusyError(f"concurrency limit {name!r} could not be created")
        _create_limit(client, name)
        created = True


def _increment(client, name: str) -> httpx.Response:
    """Take the slot with a lease: one POST, and more only while the server is busy.

    A Prefect server on SQLite answers 503 when its database is locked by another write;
    Prefect's client then sleeps 2, 4, 8... seconds before trying again, which was most of
    a 50-mailbox fan-out's time (bench fanout: 65 such answers, 259 s slept). The lock
    tries again itself after 20 ms to 1 s, and at once after a dropped connection. Any other
    answer but 200 and 423 (a server that wants a CSRF token, say), or a connection that keeps
    failing, goes through Prefect's client as usual.
    """
    holder = _holder()
    transport = getattr(client, "_client", None)  # the client's own httpx.Client
    if isinstance(transport, httpx.Client):
        body = {"names": [name], "slots": 1, "mode": "concurrency",
                "lease_duration": LOCK_LEASE_SECONDS}
        if holder is not None:
            body["holder"] = holder.model_dump(mode="json")
        dropped = 0
        for attempt in range(BUSY_RETRIES):
            request = transport.build_request(
                "POST", "/v2/concurrency_limits/increment-with-lease", json=body)
            try:
                response = httpx.Client.send(transport, request)  # without Prefect's retries
            except httpx.TransportError as exc:
                # Most often a kept-alive connection the server closed as it was reused;
                # Prefect's client would sleep 2 s before trying again.
                dropped += 1
                if not isinstance(exc, _DROPPED) or dropped > DROPPED_RETRIES:
                    break
                time.sleep(random.uniform(0.01, 0.05))
                continue
            if response.status_code in (200, 423):
                response.raise_for_status()  # 423 Locked: the caller waits its turn
                return response
            if response.status_code != 503:
                break
            time.sleep(random.uniform(0.02, 0.1) * min(2 ** attempt, 10))
    holder_argument = {"holder": holder} if holder is not None else {}
    return client.increment_concurrency_slots_with_lease(
        names=[name], slots=1, mode="concurrency", lease_duration=LOCK_LEASE_SECONDS,
        **holder_argument)


def _create_limit(client, name: str) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    try:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    except ObjectAlreadyExists:
        pass  # another run created it first


def _holder():
    """The task run (or flow run) that holds the slot, shown in the Prefect UI; None with
    older Prefect releases (3.4), whose leases name no holder."""
    try:
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    except ImportError:
        return None
    from prefect.context import FlowRunContext, TaskRunContext

    task_run = TaskRunContext.get()
    if task_run and task_run.task_run:
        return ConcurrencyLeaseHolder(type="task_run", id=task_run.task_run.id)
    flow_run = FlowRunContext.get()
    if flow_run and flow_run.flow_run:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_run.flow_run.id)
    return None


class _LeaseRenewal:
    """Renews the lease every third of its duration on a daemon thread; exits at once.
    It shares the run's client (httpx clients are thread-safe): a new one costs ~30 ms."""

    def __init__(self, client, lease_id: uuid.UUID, name: str):
        self._client = client
        self._lease_id = lease_id
        self._name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                         name=f"pop3mail-lease-{name}")

    def __enter__(self) -> _LeaseRenewal:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.wait(LOCK_LEASE_SECONDS / 3 if not failures else 2):
            try:
                self._client.renew_concurrency_lease(lease_id=self._lease_id,
                                                     lease_duration=LOCK_LEASE_SECONDS)
                failures = 0
            except Exception as exc:  # the server away for a moment: try again soon
                failures += 1
                logging.getLogger("pop3mail").error(
                    "%s: renewing the mailbox lock failed (%s: %s); once its lease "
                    "expires another run may enter the mailbox", self._name,
                    type(exc).__name__, exc)


class ProgressArtifact:
    """A progress artifact for a MAIL_RECEIVEALL run, updated at most once a second and
    once a percent."""

    def __init__(self, configuration: str):
        self._id = create_progress_artifact(
            progress=0.0,
            key=artifact_key(configuration, "progress"),
            description=f"Messages received from {configuration}",
        )
        self._last = 0.0
        self._progress = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        progress = 100.0 * done / max(total, 1)
        # At most once a second and once a percent: at most 100 API calls, however long.
        if done < total and (now - self._last < 1.0 or progress - self._progress < 1.0):
            return
        self._last = now
        self._update(progress)

    def finish(self) -> None:
        self._update(100.0)

    def _update(self, progress: float) -> None:
        if progress != self._progress:  # one API call fewer when the last message said 100
            self._progress = progress
            update_progress_artifact(artifact_id=self._id, progress=progress)


#: Rows in a run's table artifact; the rest is counted in a line below it.
MAX_TABLE_ROWS = 200
#: Message ids and folders carried by the run's summary event.
MAX_SUMMARY_MESSAGES = 50
EVENT_MAILBOX_RECEIVED = "pop3mail.mailbox.received"


def message_resource_id(mail: ReceivedMail) -> str:
    return f"pop3mail.message.{mail.id}"


def _event_id(mail: ReceivedMail) -> uuid.UUID:
    """The event's own id is stable too: the Prefect server keeps one copy of a repeat."""
    return uuid.UUID(hex=mail.id[:32].ljust(32, "0"))


def _configuration_resource(configuration: str, configuration_id: str | None) -> dict:
    related = {
        "prefect.resource.id": f"pop3mail.configuration.{configuration}",
        "prefect.resource.role": "configuration",
        "prefect.resource.name": configuration,
    }
    if configuration_id:
        related["pop3mail.block-document.id"] = configuration_id
    return related


def _path(path) -> str | None:
    return str(path) if path else None


def emit_received(mail: ReceivedMail, configuration_id: str | None = None) -> None:
    emit_event(
        event=EVENT_RECEIVED,
        id=_event_id(mail),
        resource={
            "prefect.resource.id": message_resource_id(mail),
            "prefect.resource.name": mail.subject[:200] or "(no subject)",
        },
        related=[_configuration_resource(mail.configuration, configuration_id)],
        payload={
            "id": mail.id,
            "configuration": mail.configuration,
            "uidl": mail.uidl,
            "message_id": mail.message_id,
            "sender": mail.sender[:200],
            "subject": mail.subject[:200],
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
        },
    )


def emit_summary(report: ReceiveReport, configuration_id: str | None = None) -> None:
    """One event per run, even when nothing arrived: what "no mail for 30 minutes"
    automations watch."""
    shown = report.announcements[:MAX_SUMMARY_MESSAGES]
    emit_event(
        event=EVENT_MAILBOX_RECEIVED,
        resource={
            "prefect.resource.id": mailbox_resource_id(report.configuration),
            "prefect.resource.name": report.configuration,
            # A label, so a trigger can tell runs that fetched mail (triggers match labels,
            # not payloads): see quiet_mailbox_automation.
            MAIL_FETCHED_LABEL: "true" if report.received else "false",
        },
        related=[_configuration_resource(report.configuration, configuration_id)],
        payload={
            "configuration": report.configuration,
            "received": len(report.received),
            "announced_late": len(report.late),
            "failed": len(report.failed),
            "quarantined": len(report.quarantined),
            "waiting": report.waiting,
            "messages": [{"id": m.id, "folder": m.location or None} for m in shown],
            "more_messages": len(report.announcements) - len(shown),
        },
    )


MAIL_FETCHED_LABEL = "pop3mail.mail-fetched"


def mailbox_resource_id(configuration: str) -> str:
    return f"pop3mail.mailbox.{configuration}"


def quiet_mailbox_automation(configuration: str, minutes: int = 30,
                             actions: list | None = None):
    """An automation (not yet created: call ``.create()``) that fires when no run of
    ``configuration`` fetched mail for ``minutes``: a proactive trigger on the run summary
    events whose "mail fetched" label is true. ``actions`` default to doing nothing (the
    automation's firing is still shown and can be notified on from the UI)."""
    from datetime import timedelta

    from prefect.automations import Automation, DoNothing, EventTrigger

    return Automation(
        name=f"pop3mail: no mail fetched from {configuration} for {minutes} minutes",
        description=f"No {EVENT_MAILBOX_RECEIVED} event with {MAIL_FETCHED_LABEL}=true from "
        f"{configuration} in {minutes} minutes.",
        trigger=EventTrigger(
            expect={EVENT_MAILBOX_RECEIVED},
            match={"prefect.resource.id": mailbox_resource_id(configuration),
                   MAIL_FETCHED_LABEL: "true"},
            posture="Proactive",
            threshold=1,
            within=timedelta(minutes=minutes),
        ),
        actions=actions or [DoNothing()],
    )


def markdown_cell(text: str) -> str:
    """Server and message text inside a markdown table: inert, one line, short."""
    text = " ".join(str(text).split())[:500]
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~-])", r"\\\1", text)


def _row(mail: ReceivedMail) -> dict:
    return {
        "subject": mail.subject[:200],
        "from": mail.sender[:200],
        "date": mail.date.isoformat() if mail.date else "",
        "folder": mail.location,
        "files": len(mail.saved_paths),
        "deleted": "yes" if mail.deleted else "no",
        "quarantined": "yes" if mail.quarantined else "no",
    }


def publish_report(report: ReceiveReport, configuration_id: str | None = None,
                   message_events: bool = True) -> None:
    """Events and artifacts of a run: a bounded number of API calls and bytes, whatever the
    number of messages, except the event per message when ``message_events`` (the block's
    "An event per message") asks for it."""
    mails = report.announcements
    if message_events:
        for mail in mails:
            emit_received(mail, configuration_id)
    emit_summary(report, configuration_id)
    if mails:
        rows = [_row(m) for m in mails[:MAX_TABLE_ROWS]]
        more = len(mails) - len(rows)
        create_table_artifact(
            table=rows,
            key=artifact_key(report.configuration, "received"),
            description=f"{len(mails)} message(s) received from {report.configuration}"
            + (f"; the first {len(rows)} are listed, {more} more are not" if more else ""),
        )
    if report.failed:
        shown = report.failed[:MAX_TABLE_ROWS]
        lines = "\n".join(
            f"| {markdown_cell(f.uidl)} | {f.attempts} | {markdown_cell(f.error_type)} "
            f"| {markdown_cell(f.error)} |"
            for f in shown
        )
        more = len(report.failed) - len(shown)
        tail = f"\n\n{more} more not listed." if more else ""
        create_markdown_artifact(
            markdown="| UIDL | attempts | error | detail |\n|---|---|---|---|\n" + lines + tail,
            key=artifact_key(report.configuration, "failed"),
            description=f"{len(report.failed)} message(s) left on the server",
        )
