"""Flows that users schedule, run from the UI, and call as steps of larger flows."""

from __future__ import annotations

from typing import Any

from prefect import Task, flow
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_pop3mail.blocks import POP3MailConfiguration
from prefect_pop3mail.tasks.activities import (
    Configuration,
    check_connection,
    mail_list,
    mail_receive,
    mail_receive_all,
    resolve_configuration,
)
from prefect_pop3mail.tasks.options import LIST, MANY, RECEIVE_ALL, RECEIVE_ONE, CallOptions, takes
from prefect_pop3mail.tasks.pop3.errors import MailboxesFailedError, POP3MailError
from prefect_pop3mail.tasks.pop3.models import ConnectionReport, ListedMessage, ReceivedMail

__all__ = ["receive_mail", "receive_all_mail", "list_mail", "receive_from_mailboxes",
           "check_pop3_connection", "MailboxesFailedError"]


def _active(configuration: Configuration) -> POP3MailConfiguration:
    """The configuration, refused (raised, so the run ends Failed naming it) if inactive."""
    config = resolve_configuration(configuration)
    config.ensure_active()
    return config


def _for_tasks(configuration: Configuration, config: POP3MailConfiguration) -> Configuration:
    """What the tasks get: the saved name when the flow was given one (each task loads it,
    so no block, and no secret, travels to a task runner), else the block itself."""
    return configuration.strip() if isinstance(configuration, str) else config


def _timed(task: Task, config: POP3MailConfiguration) -> Task:
    """The task with the configuration's run timeout: a hung run surfaces as a failure."""
    return task.with_options(timeout_seconds=config.run_timeout or None)


def _run(task: Task, names: tuple[str, ...], configuration: Configuration,
         options: dict[str, Any]) -> Any:
    """A flow's one task: its options checked first (a wrong one fails before any
    connection), then the task on the active configuration, within its run timeout."""
    given = CallOptions.of(options, names).pick(names)
    config = _active(configuration)
    return _timed(task, config)(_for_tasks(configuration, config), **given)


@flow(name="receive-mail", log_prints=True)
@takes(*RECEIVE_ONE)
def receive_mail(configuration: Configuration, **options: Any) -> ReceivedMail | None:
    """Receive one message (MAIL_RECEIVE): the first one not received yet.

    Args:
        configuration: The name of a saved POP3 Mail Configuration (Blocks in the UI).

    Returns:
        The received message, with the paths of its saved files; None when none is waiting.

    Example:
        ```python
        from prefect import flow
        from prefect_pop3mail.flows import receive_mail

        @flow
        def process_next_order():
            mail = receive_mail("orders-mailbox")
            if mail:
                print(mail.subject, mail.original_path)
        ```
    """
    return _run(mail_receive, RECEIVE_ONE, configuration, options)


@flow(name="receive-all-mail", log_prints=True)
@takes(*RECEIVE_ALL)
def receive_all_mail(configuration: Configuration, **options: Any) -> list[ReceivedMail]:
    """Receive every message of a mailbox (MAIL_RECEIVEALL) and hand the saved files on.

    Each run is announced as one `pop3mail.mailbox.received` event, for automations and
    downstream deployments; with the configuration's "An event per message" on, each saved
    message also as a `pop3mail.message.received` event.

    Args:
        configuration: The name of a saved POP3 Mail Configuration (Blocks in the UI).

    Returns:
        The received messages, with the paths of their saved original, bodies and
        attachments.

    Example:
        ```python
        from prefect import flow
        from prefect_pop3mail.flows import receive_all_mail

        @flow
        def nightly_invoices():
            for mail in receive_all_mail("invoices-mailbox", subject_filter="(?i)invoice"):
                print(mail.sender, [a.path for a in mail.attachments])
        ```
    """
    return _run(mail_receive_all, RECEIVE_ALL, configuration, options)


@flow(name="list-mail", log_prints=True)
@takes(*LIST)
def list_mail(configuration: Configuration, **options: Any) -> list[ListedMessage]:
    """List what receive-all-mail would receive (a dry run): retrieves, saves and deletes
    nothing.

    Args:
        configuration: The name of a saved POP3 Mail Configuration (Blocks in the UI).

    Returns:
        Number, UIDL, size, sender and subject of each message that would be received.

    Example:
        ```python
        from prefect import flow
        from prefect_pop3mail.flows import list_mail

        @flow
        def what_is_waiting():
            return [m.subject for m in list_mail("orders-mailbox")]
        ```
    """
    return _run(mail_list, LIST, configuration, options)


#: Mailboxes received at once by default: enough to overlap network waits, few enough to
#: keep the load on the Prefect API flat. Override with .with_options(task_runner=...).
MAILBOX_WORKERS = 8


@flow(name="receive-from-mailboxes", log_prints=True,
      task_runner=ThreadPoolTaskRunner(max_workers=MAILBOX_WORKERS))
@takes(*MANY)
def receive_from_mailboxes(configurations: list[Configuration], **options: Any
                           ) -> dict[str, list[ReceivedMail]]:
    """Receive many mailboxes concurrently through the flow's task runner.

    Every mailbox runs even when others fail; the flow then ends Failed with a
    MailboxesFailedError that names them and carries the received mail of the others.

    Args:
        configurations: Names of saved POP3 Mail Configurations.

    Returns:
        The received messages, by configuration name.

    Example:
        ```python
        from prefect import flow
        from prefect_pop3mail.flows import receive_from_mailboxes

        @flow
        def all_shops():
            received = receive_from_mailboxes(["shop-de", "shop-fr", "shop-it"])
            return {name: len(mails) for name, mails in received.items()}
        ```
    """
    given = CallOptions.of(options, MANY).pick(MANY)
    received: dict[str, list[ReceivedMail]] = {}
    failures: dict[str, str] = {}
    futures = {}
    for item in configurations:
        label = item if isinstance(item, str) else getattr(item, "configuration_name", "?")
        try:
            config = _active(item)
        except POP3MailError as exc:
            failures[label] = str(exc)
            continue
        futures[config.configuration_name] = _timed(mail_receive_all, config).submit(
            _for_tasks(item, config), **given
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
    """Check a configuration: TLS, capabilities, login, messages waiting. Retrieves nothing.

    Args:
        configuration: The name of a saved POP3 Mail Configuration (Blocks in the UI).

    Returns:
        Greeting, capabilities, TLS version and certificate, whether login works, the
        messages waiting and, for OAUTH2, the token's facts and hints for the usual mistakes.

    Example:
        ```python
        from prefect import flow
        from prefect_pop3mail.flows import check_pop3_connection

        @flow
        def check_before_go_live():
            report = check_pop3_connection("orders-mailbox")
            assert report.login_ok, report.hints
        ```
    """
    config = _active(configuration)
    return check_connection(_for_tasks(configuration, config))
