"""Flows that users schedule, run from the UI, and call as steps of larger flows."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_pop3mail.blocks import POP3MailConfiguration
from prefect_pop3mail.tasks.activities import (
    Configuration,
    check_connection,
    mail_receive,
    mail_receive_all,
    resolve_configuration,
)
from prefect_pop3mail.tasks.pop3.errors import POP3MailError
from prefect_pop3mail.tasks.pop3.models import ConnectionReport, ReceivedMail


def _usable(configuration: Configuration) -> POP3MailConfiguration:
    """The configuration, refused (raised, so the run ends Failed naming it) if inactive."""
    config = resolve_configuration(configuration)
    config.ensure_active()
    return config


@flow(name="receive-mail", log_prints=True)
def receive_mail(
    configuration: Configuration,
    save_mail_text: bool | None = None,
    save_mail_attachments: bool | None = None,
    save_directory: str | None = None,
) -> ReceivedMail | None:
    """Receive one message (MAIL_RECEIVE): the first one not received yet.

    Args:
        configuration: The saved POP3 Mail Configuration's name (or the block itself).
        save_mail_text: Override "Save mail text" for this run.
        save_mail_attachments: Override "Save mail attachments" for this run.
        save_directory: Override the save directory for this run.
    """
    config = _usable(configuration)
    return mail_receive(
        config,
        save_mail_text=save_mail_text,
        save_mail_attachments=save_mail_attachments,
        save_directory=save_directory,
    )


@flow(name="receive-all-mail", log_prints=True)
def receive_all_mail(
    configuration: Configuration,
    save_mail_text: bool | None = None,
    save_mail_attachments: bool | None = None,
    save_directory: str | None = None,
    max_messages: int | None = None,
    sender_filter: str | None = None,
    recipient_filter: str | None = None,
    subject_filter: str | None = None,
    dry_run: bool = False,
) -> list:
    """Receive every message of a mailbox (MAIL_RECEIVEALL) and hand the saved files on.

    The result is a list of ReceivedMail (paths of the saved original, bodies and
    attachments); each message is also announced as a ``pop3mail.message.received`` event.
    """
    config = _usable(configuration)
    return mail_receive_all(
        config,
        save_mail_text=save_mail_text,
        save_mail_attachments=save_mail_attachments,
        save_directory=save_directory,
        max_messages=max_messages,
        sender_filter=sender_filter,
        recipient_filter=recipient_filter,
        subject_filter=subject_filter,
        dry_run=dry_run,
    )


class MailboxesFailedError(POP3MailError):
    """Some mailboxes of a receive_from_mailboxes run failed; ``received`` has the others'."""

    def __init__(self, message: str, received: dict[str, list[ReceivedMail]]):
        super().__init__(message)
        self.received = received


#: Mailboxes received at once by default: enough to overlap network waits, few enough to
#: keep the load on the Prefect API flat. Override with .with_options(task_runner=...).
MAILBOX_WORKERS = 8


@flow(name="receive-from-mailboxes", log_prints=True,
      task_runner=ThreadPoolTaskRunner(max_workers=MAILBOX_WORKERS))
def receive_from_mailboxes(
    configurations: list[Configuration],
    max_messages: int | None = None,
) -> dict[str, list[ReceivedMail]]:
    """Receive many mailboxes concurrently through the flow's task runner.

    Every mailbox runs even when others fail; the flow then ends Failed with a
    MailboxesFailedError that names them and carries the received mail of the others.
    """
    received: dict[str, list[ReceivedMail]] = {}
    failures: dict[str, str] = {}
    futures = {}
    for item in configurations:
        label = item if isinstance(item, str) else getattr(item, "configuration_name", "?")
        try:
            config = _usable(item)
        except POP3MailError as exc:
            failures[label] = str(exc)
            continue
        futures[config.configuration_name] = mail_receive_all.submit(
            config, max_messages=max_messages
        )
    for name, future in futures.items():
        future.wait()
        state = future.state
        if state.is_completed():
            received[name] = future.result()
        else:
            failures[name] = state.message or "failed"
    if failures:
        detail = "; ".join(f"{name}: {why}" for name, why in failures.items())
        raise MailboxesFailedError(
            f"{len(failures)} of {len(configurations)} mailbox(es) failed: {detail}", received
        )
    return received


@flow(name="check-pop3-connection", log_prints=True)
def check_pop3_connection(configuration: Configuration) -> ConnectionReport:
    """Check a configuration: TLS, capabilities, login, messages waiting. Retrieves nothing."""
    config = _usable(configuration)
    return check_connection(config)
