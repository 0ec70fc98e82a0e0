"""How results reach people and automations: artifacts, events, the per-mailbox lock.

Payloads carry paths and metadata, never bodies or secrets.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
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


def message_resource_id(mail: ReceivedMail) -> str:
    digest = hashlib.sha256(f"{mail.configuration}\0{mail.uidl}".encode()).hexdigest()[:16]
    return f"pop3mail.message.{digest}"


def emit_received(mail: ReceivedMail, configuration_id: str | None = None) -> None:
    related = {
        "prefect.resource.id": f"pop3mail.configuration.{mail.configuration}",
        "prefect.resource.role": "configuration",
        "prefect.resource.name": mail.configuration,
    }
    if configuration_id:
        related["pop3mail.block-document.id"] = configuration_id
    emit_event(
        event=EVENT_RECEIVED,
        resource={
            "prefect.resource.id": message_resource_id(mail),
            "prefect.resource.name": mail.subject[:200] or "(no subject)",
        },
        related=[related],
        payload={
            "configuration": mail.configuration,
            "uidl": mail.uidl,
            "message_id": mail.message_id,
            "sender": mail.sender,
            "subject": mail.subject[:200],
            "date": mail.date.isoformat() if mail.date else None,
            "size": mail.size,
            "sha256": mail.sha256,
            "folder": str(mail.folder) if mail.folder else None,
            "original_path": str(mail.original_path) if mail.original_path else None,
            "text_path": str(mail.text_path) if mail.text_path else None,
            "html_path": str(mail.html_path) if mail.html_path else None,
            "attachments": [str(a.path) for a in mail.attachments],
            "deleted": mail.deleted,
            "warnings": len(mail.warnings),
        },
    )


def publish_report(report: ReceiveReport, configuration_id: str | None = None) -> None:
    """One event per received message, and a table artifact of them."""
    for mail in report.received:
        emit_received(mail, configuration_id)
    rows = [
        {
            "subject": m.subject,
            "from": m.sender,
            "date": m.date.isoformat() if m.date else "",
            "files": ", ".join(str(p) for p in m.saved_paths),
            "deleted": "yes" if m.deleted else "no",
        }
        for m in report.received
    ]
    create_table_artifact(
        table=rows,
        key=artifact_key(report.configuration, "received"),
        description=f"{len(rows)} message(s) received from {report.configuration}",
    )
    if report.failed:
        lines = "\n".join(
            f"| {f.uidl} | {f.error_type} | {f.error.replace('|', '/')} |" for f in report.failed
        )
        create_markdown_artifact(
            markdown="| UIDL | error | detail |\n|---|---|---|\n" + lines,
            key=artifact_key(report.configuration, "failed"),
            description=f"{len(report.failed)} message(s) left on the server",
        )
