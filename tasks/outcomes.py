"""How a run that did not end well says so: what stopped it, and what became of its mail.

A run that stops early (a full disk, an unusable save directory, the session cap) or cannot
hand its mail on (the Prefect API out of reach) ends Failed with one of these errors, whose
``partial_report`` has what it did; the message says, in numbers, what was saved, deleted,
and left for the next run.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import DiskFullError, POP3MailError, SaveDirectoryError
from prefect_pop3mail.tasks.pop3.models import ReceiveReport
from prefect_pop3mail.tasks.pop3.redaction import Redactor
from prefect_pop3mail.tasks.prefect_api import api_url

#: Failures the engine records when a fault of the whole run stopped it.
_RUN_FAULTS = frozenset({DiskFullError.__name__, SaveDirectoryError.__name__})


def stop_reason(report: ReceiveReport) -> str | None:
    """Why the run stopped before the mailbox was done, or None when it did not: a reason
    the engine gives (``report.stopped``, when it has that field), or a run fault it
    recorded against the message it was saving."""
    stopped = getattr(report, "stopped", None)
    if isinstance(stopped, str) and stopped:
        return stopped
    for failure in report.failed:
        if failure.error_type in _RUN_FAULTS:
            return f"{failure.error_type}: {failure.error}"
    return None


def mail_outcome(report: ReceiveReport, deleting: bool, announced: bool) -> str:
    """What happened to the mail of a run that ended early, in numbers."""
    saved = len(report.received)
    parts = [f"Saved {saved} message(s)"]
    if deleting:
        gone = sum(1 for m in report.received if m.deleted)
        parts.append(f"deleted {gone} from the server")
        if gone < saved:
            parts.append(f"{saved - gone} to be deleted by the next run")
    pending = len(report.announcements)
    if pending and not announced:
        parts.append(f"{pending} to be announced by the next run (they wait in the outbox)")
    if report.waiting:
        parts.append(f"{report.waiting} waiting on the server for the next run")
    return "; ".join(parts) + "."


class RunStoppedEarlyError(POP3MailError):
    """The run stopped before the mailbox was done (a full disk, an unusable save
    directory, the session cap). What it saved was handed on; the rest waits on the
    server. Not retried: the cause needs a person, and the next run goes on from here."""

    def __init__(self, report: ReceiveReport, reason: str, deleting: bool):
        self.partial_report = report
        self.reason = reason
        super().__init__(f"{report.configuration}: the run stopped early: {reason}. "
                         + mail_outcome(report, deleting, announced=True))


class PrefectUnavailableError(POP3MailError):
    """The Prefect API did not answer, so what the run saved could not be handed on now.
    The mail is safe: saved, journalled, and deleted from the server when removal is on;
    the next run announces it under the same ids. Not retried: the next run does it."""

    def __init__(self, report: ReceiveReport, what: str, cause: BaseException, deleting: bool,
                 stopped: str | None = None):
        self.partial_report = report
        stop = f" The run had also stopped early: {stopped}." if stopped else ""
        super().__init__(
            f"{report.configuration}: the Prefect API at {api_url()} (PREFECT_API_URL) did "
            f"not answer while {what} ({type(cause).__name__}: {cause}).{stop} "
            + mail_outcome(report, deleting, announced=False))


def note_failure(error: BaseException, configuration: str,
                 secrets: Iterable[SecretStr | str | None] = ()) -> None:
    """Mark ``error`` with its configuration and its text with every secret cut out, for
    the run's failed event (``events.announce_failure``)."""
    redact = Redactor()
    redact.remember(*(s.get_secret_value() if isinstance(s, SecretStr) else s
                      for s in secrets if s))
    try:
        error.pop3mail_configuration = configuration  # type: ignore[attr-defined]
        error.pop3mail_message = redact.text(str(error) or type(error).__name__)[:1000]  # type: ignore[attr-defined]
    except AttributeError:  # an exception type with slots: the hook then skips it
        pass
