"""How results reach people and automations: artifacts, events, the per-mailbox lock.

Payloads carry paths and metadata, never bodies or secrets.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Iterator

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.events import emit_event
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from prefect_pop3mail.tasks.pop3.models import ReceivedMail, ReceiveReport

EVENT_RECEIVED = "pop3mail.message.received"
LOCK_LEASE_SECONDS = 60


def artifact_key(configuration: str, suffix: str = "") -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", f"pop3mail-{configuration}-{suffix}".lower()).strip("-")
    return re.sub(r"-{2,}", "-", key)


def lock_name(configuration: str) -> str:
    return f"pop3mail-mailbox-{configuration}"


@contextlib.contextmanager
def mailbox_lock(configuration: str, timeout_seconds: float | None = 600) -> Iterator[None]:
    """Hold the mailbox's concurrency slot (limit 1): one session per mailbox at a time.

    The lease is renewed while the run lives; a crashed run frees the slot when its lease
    expires, so a short lease keeps the mailbox blocked for about a minute, not five.
    """
    name = lock_name(configuration)
    _ensure_limit(name)
    with concurrency(name, occupy=1, timeout_seconds=timeout_seconds, strict=True,
                     lease_duration=LOCK_LEASE_SECONDS):
        yield


def _ensure_limit(name: str) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
            except ObjectAlreadyExists:
                pass  # another run created it first


class ProgressArtifact:
    """A progress artifact for a MAIL_RECEIVEALL run, updated at most once a second."""

    def __init__(self, configuration: str):
        self._id = create_progress_artifact(
            progress=0.0,
            key=artifact_key(configuration, "progress"),
            description=f"Messages received from {configuration}",
        )
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._last < 1.0:
            return
        self._last = now
        update_progress_artifact(artifact_id=self._id, progress=100.0 * done / max(total, 1))

    def finish(self) -> None:
        update_progress_artifact(artifact_id=self._id, progress=100.0)


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
            "folder": _path(mail.folder),
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
            "prefect.resource.id": f"pop3mail.mailbox.{report.configuration}",
            "prefect.resource.name": report.configuration,
        },
        related=[_configuration_resource(report.configuration, configuration_id)],
        payload={
            "configuration": report.configuration,
            "received": len(report.received),
            "announced_late": len(report.late),
            "failed": len(report.failed),
            "quarantined": len(report.quarantined),
            "waiting": report.waiting,
            "messages": [{"id": m.id, "folder": _path(m.folder)} for m in shown],
            "more_messages": len(report.announcements) - len(shown),
        },
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
        "folder": _path(mail.folder) or "",
        "files": len(mail.saved_paths),
        "deleted": "yes" if mail.deleted else "no",
        "quarantined": "yes" if mail.quarantined else "no",
    }


def publish_report(report: ReceiveReport, configuration_id: str | None = None) -> None:
    """Events (one per saved message, one per run) and artifacts of a run."""
    mails = report.announcements
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
