"""How a run's results reach people: artifacts in the Prefect UI.

All of it is best effort (``prefect_api.Reporter``): a failed call never touches the mail,
and the progress bar is updated from a thread of its own, so a slow API never slows the
session down.
"""

from __future__ import annotations

import contextvars
import re
import threading

from prefect_pop3mail.tasks.pop3.models import ReceivedMail, ReceiveReport
from prefect_pop3mail.tasks.prefect_api import Reporter

#: Rows in a run's table artifact; the rest is counted in a line below it.
MAX_TABLE_ROWS = 200
#: Seconds between two progress updates, at most.
PROGRESS_EVERY = 1.0


def artifact_key(configuration: str, suffix: str = "") -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    key = re.sub(r"[^a-z0-9-]+", "-", f"pop3mail-{configuration}-{suffix}".lower()).strip("-")
    return re.sub(r"-{2,}", "-", key)


def markdown_cell(text: str) -> str:
    """Server and message text inside a markdown table: inert, one line, short."""
    text = " ".join(str(text).split())[:500]
    return re.sub(r"([\\`*_{}\[\]()<>#+!|~-])", r"\\\1", text)


def _run_ids() -> dict:
    from prefect.context import FlowRunContext, TaskRunContext

    task_run = TaskRunContext.get()
    flow_run = FlowRunContext.get()
    ids = {}
    if task_run and task_run.task_run:
        ids["task_run_id"] = task_run.task_run.id
        ids["flow_run_id"] = task_run.task_run.flow_run_id
    elif flow_run and flow_run.flow_run:
        ids["flow_run_id"] = flow_run.flow_run.id
    return ids


def _create(client, artifact) -> object:
    """Create one of Prefect's artifact objects through ``client``, linked to the run."""
    from prefect.client.schemas.actions import ArtifactCreate

    created = client.create_artifact(ArtifactCreate(
        type=artifact.type, key=artifact.key, description=artifact.description,
        data=artifact.format(_sync=True), **_run_ids()))
    return created.id


class ProgressArtifact:
    """A progress bar for a MAIL_RECEIVEALL run. The engine's calls only note how far it
    is; a thread sends the latest figure at most once a second and once a percent."""

    def __init__(self, configuration: str, reporter: Reporter):
        from prefect.artifacts import ProgressArtifact as Progress

        self._reporter = reporter
        self._description = f"Messages received from {configuration}"
        self._id = reporter.call("creating the progress artifact", _create, Progress(
            progress=0.0, key=artifact_key(configuration, "progress"),
            description=self._description))
        self._wanted = self._sent = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        context = contextvars.copy_context()  # the run's settings
        self._thread = threading.Thread(target=context.run, args=(self._run,), daemon=True,
                                        name=f"pop3mail-progress-{configuration}")
        if self._id is not None:
            self._thread.start()

    def __call__(self, done: int, total: int) -> None:
        self._wanted = 100.0 * done / max(total, 1)
        if self._wanted - self._sent >= 1.0:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            self._send(self._wanted)
            self._stop.wait(PROGRESS_EVERY)

    def _send(self, progress: float, description: str | None = None) -> None:
        from prefect.client.schemas.actions import ArtifactUpdate

        if self._id is None or (progress == self._sent and description is None):
            return
        update = {"data": progress}
        if description is not None:
            update["description"] = description
        self._reporter.call("updating the progress artifact",
                            lambda client: client.update_artifact(self._id,
                                                                  ArtifactUpdate(**update)))
        self._sent = progress

    def _halt(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def finish(self) -> None:
        self._halt()
        self._send(100.0)

    def stopped(self, what: str) -> None:
        """The run ended early: the bar stays where it got to, and says what happened."""
        self._halt()
        self._send(self._wanted, f"{self._description}: {what}"[:2000])


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


def publish_artifacts(report: ReceiveReport, reporter: Reporter) -> None:
    """The run's table of messages and its failures: a bounded number of calls and bytes,
    whatever the number of messages."""
    from prefect.artifacts import MarkdownArtifact, TableArtifact

    mails = report.announcements
    if mails:
        rows = [_row(m) for m in mails[:MAX_TABLE_ROWS]]
        more = len(mails) - len(rows)
        reporter.call("creating the table artifact", _create, TableArtifact(
            table=rows, key=artifact_key(report.configuration, "received"),
            description=f"{len(mails)} message(s) received from {report.configuration}"
            + (f"; the first {len(rows)} are listed, {more} more are not" if more else "")))
    if report.failed:
        shown = report.failed[:MAX_TABLE_ROWS]
        lines = "\n".join(
            f"| {markdown_cell(f.uidl)} | {f.attempts} | {markdown_cell(f.error_type)} "
            f"| {markdown_cell(f.error)} |"
            for f in shown
        )
        more = len(report.failed) - len(shown)
        tail = f"\n\n{more} more not listed." if more else ""
        reporter.call("creating the failures artifact", _create, MarkdownArtifact(
            markdown="| UIDL | attempts | error | detail |\n|---|---|---|---|\n" + lines + tail,
            key=artifact_key(report.configuration, "failed"),
            description=f"{len(report.failed)} message(s) left on the server"))
