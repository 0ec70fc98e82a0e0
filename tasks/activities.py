"""MAIL_RECEIVE and MAIL_RECEIVEALL as Prefect tasks, plus a connection check.

Thin on purpose: resolve the configuration, refuse it when inactive (before any
connection), hold the mailbox's lock, run the engine, publish the results.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from pydantic import WithJsonSchema

from prefect_pop3mail.blocks import POP3MailConfiguration, POP3MailServiceSettings
from prefect_pop3mail.tasks.artifacts import ProgressArtifact, publish_artifacts
from prefect_pop3mail.tasks.events import announce, announce_failure
from prefect_pop3mail.tasks.lock import MailboxLock, mailbox_lock
from prefect_pop3mail.tasks.options import LIST, RECEIVE_ALL, RECEIVE_ONE, CallOptions, takes
from prefect_pop3mail.tasks.outcomes import (
    PrefectUnavailableError,
    RunStoppedEarlyError,
    note_failure,
    stop_reason,
)
from prefect_pop3mail.tasks.pop3.errors import (
    ConfigurationError,
    MessagesNotReceivedError,
    POP3MailError,
)
from prefect_pop3mail.tasks.pop3.models import (
    ConnectionReport,
    ConnectionSettings,
    ListedMessage,
    ReceivedMail,
    ReceiveReport,
)
from prefect_pop3mail.tasks.pop3.protocol.diagnostics import check_mailbox
from prefect_pop3mail.tasks.pop3.receiver import MailboxReceiver
from prefect_pop3mail.tasks.prefect_api import Reporter
from prefect_pop3mail.tasks.run_logs import engine_logs_to_run

#: A saved configuration's name, or the block itself. Prefect's run form shows a text field
#: for the name (the way to pass it: a name carries no secret); Python may pass the block.
Configuration = Annotated[POP3MailConfiguration | str, WithJsonSchema({"type": "string"})]


def resolve_configuration(configuration: Configuration) -> POP3MailConfiguration:
    """A block instance as it is, or a saved one loaded by its name (the configuration's ID)."""
    if isinstance(configuration, POP3MailConfiguration):
        return configuration
    if not isinstance(configuration, str) or not configuration.strip():
        raise ConfigurationError("configuration", "give a POP3MailConfiguration or its saved name")
    try:
        return POP3MailConfiguration.load_checked(configuration.strip())
    except ConfigurationError:  # saved, but with settings that cannot work: names them
        raise
    except ValueError as exc:
        raise ConfigurationError("configuration", _not_saved(configuration.strip())) from exc


def _not_saved(name: str) -> str:
    """Where the configuration was looked for, and where to create it."""
    from prefect.settings import get_current_settings

    api, page = get_current_settings().api.url, POP3MailConfiguration.create_page_url()
    if not api:
        return (f"no POP3 Mail Configuration named {name!r} was found: PREFECT_API_URL is "
                "not set, so there is no Prefect server to load it from (at most a temporary "
                "one on this machine's local database); start one with `prefect server "
                "start`, set PREFECT_API_URL to its API (http://127.0.0.1:4200/api) and create "
                "the configuration in its UI")
    where = f"create it at {page}" if page else "create it in the Prefect UI"
    return f"no POP3 Mail Configuration named {name!r} is saved in the Prefect API at {api}; {where}"


def connection_for(config: POP3MailConfiguration) -> ConnectionSettings:
    """The block's complete connection settings (with the token provider for OAUTH2)."""
    return config.connection_settings()


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("pop3mail")


def _retry_when_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry connection troubles and a locked mailbox; never a bad login or configuration."""
    try:
        state.result()
    except POP3MailError as exc:
        return exc.retryable
    except Exception:
        return False
    return False


def _receive(
    configuration: Configuration,
    call: CallOptions,
    *,
    dry_run: bool,
    progress: bool,
    stop_fails: bool = True,
) -> ReceiveReport:
    name = configuration.strip() if isinstance(configuration, str) else "?"
    secrets: list = []
    try:
        config = resolve_configuration(configuration)
        name = config.configuration_name
        config.ensure_active()
        service = POP3MailServiceSettings()  # the environment and .env, read once per run
        connection = config.connection_settings(service)
        secrets = [connection.password, config.client_secret, config.public_key_password]
        # Per-call overrides merge into the options here, once; the engine reads options only.
        save = config.save_options(service, **call.save_overrides())
        options = config.receive_options(**call.receive_overrides(), dry_run=dry_run)
        return _run(config, connection, save, options, progress=progress and not dry_run,
                    stop_fails=stop_fails)
    except Exception as exc:
        note_failure(exc, name, secrets)  # for the run's one failed event
        raise


def _run(config: POP3MailConfiguration, connection: ConnectionSettings, save, options,
         progress: bool, stop_fails: bool) -> ReceiveReport:
    """One run under the mailbox's lock. Prefect's calls never decide what happens to the
    mail: the session ends with QUIT whatever they do, and only then does the run say (by
    raising) that its mail could not be handed on, or (``stop_fails``) that it stopped
    early."""
    name = config.configuration_name
    logger = _logger()
    reporter = Reporter(name, logger)
    stopped = unannounced = None
    try:
        with engine_logs_to_run(logger), mailbox_lock(name) as lock:
            tracker = ProgressArtifact(name, reporter) if progress else None
            between = _BetweenMessages(lock, tracker)
            with MailboxReceiver(name, connection, save, options, progress=between) as receiver:
                try:
                    report = receiver.run()
                except POP3MailError as exc:
                    if tracker:
                        tracker.stopped(f"failed: {type(exc).__name__}: {exc}")
                    raise
                reason = stop_reason(report)
                if reason:
                    stopped = RunStoppedEarlyError(report, reason, options.remove_after_read)
                if not options.dry_run:
                    unannounced = _announce(receiver, report, config, stopped)
            if unannounced is not None:
                reporter.failed("announcing the saved mail", unannounced)
            if tracker:
                if stopped or unannounced:
                    tracker.stopped(str(stopped or "not announced"))
                else:
                    tracker.finish()
            if not options.dry_run:
                publish_artifacts(report, reporter)
    finally:
        reporter.close()
    if options.dry_run:
        _log_listing(logger, report)
    else:
        _log_summary(logger, report, options.remove_after_read)
    if unannounced is not None:
        raise PrefectUnavailableError(report, "announcing the saved mail", unannounced,
                                      options.remove_after_read,
                                      stopped.reason if stopped else None) from unannounced
    if stopped is not None and stop_fails:
        raise stopped
    return report


class _BetweenMessages:
    """What the engine calls after each message: the lock's check (a run that lost its
    lock stops), then the progress bar, which never waits on Prefect."""

    def __init__(self, lock: MailboxLock, tracker: ProgressArtifact | None):
        self.lock = lock
        self.tracker = tracker

    def __call__(self, done: int, total: int) -> None:
        self.lock.check()
        if self.tracker is not None:
            self.tracker(done, total)


def receive_report(configuration: Configuration, call: CallOptions = CallOptions(), *,
                   dry_run: bool = False) -> ReceiveReport:
    """Receive as MAIL_RECEIVEALL does (or, with ``dry_run``, list as POP3_LIST does) and
    return the whole report: received, failed (left on the server), quarantined, waiting.

    For callers that act on failures themselves, such as the ``pop3mail`` command, which
    exits 1 when a message could not be received. A run that stopped early (a full disk)
    returns its report too: the message it stopped on is in ``failed``, with the cause.
    Not a task: wrap it in one to run it as a task run.

    Example:
        ```python
        from prefect_pop3mail.tasks.activities import receive_report
        from prefect_pop3mail.tasks.options import CallOptions

        report = receive_report("orders-mailbox", CallOptions(max_messages=10))
        for failure in report.failed:
            print(failure.uidl, failure.error)
        ```
    """
    return _receive(configuration, call, dry_run=dry_run, progress=not dry_run,
                    stop_fails=False)


def _announce(receiver: MailboxReceiver, report: ReceiveReport,
              config: POP3MailConfiguration, stopped: RunStoppedEarlyError | None
              ) -> Exception | None:
    """Hand the run's mail on (events, then the outbox lets go of it); the failure, if the
    Prefect API did not confirm them, in which case the mail stays in the outbox. A run
    that stopped early sends its one failed event instead of the summary."""
    failure = None
    if stopped is not None:
        note_failure(stopped, report.configuration)
        stopped.pop3mail_announced = True  # type: ignore[attr-defined]
        failure = (stopped, stopped.pop3mail_message, _attempt())  # type: ignore[attr-defined]
    try:
        announce(receiver, report, str(getattr(config, "_block_document_id", "") or "") or None,
                 config.emit_message_events, failure)
    except Exception as exc:
        if stopped is not None:
            stopped.pop3mail_announced = False  # type: ignore[attr-defined]
        return exc
    return None


def _attempt() -> int:
    from prefect.context import TaskRunContext

    context = TaskRunContext.get()
    return getattr(getattr(context, "task_run", None), "run_count", 1) or 1


def _log_summary(logger, report: ReceiveReport, removed: bool) -> None:
    name = report.configuration
    logger.info(
        "%s: %d received%s (%d quarantined), %d failed, %d already saved, %d too large, "
        "%d filtered out, %d waiting",
        name,
        len(report.received),
        " and deleted" if removed else "",
        len(report.quarantined),
        len(report.failed),
        report.skipped_known,
        len(report.skipped_too_large),
        report.skipped_filtered,
        report.waiting,
    )
    if report.late:
        logger.info("%s: %d message(s) saved by an earlier run announced now", name,
                    len(report.late))
    for failure in report.failed:
        logger.error("%s: message %s left on the server (attempt %d): %s", name, failure.uidl,
                     failure.attempts, failure.error)


def _log_listing(logger, report: ReceiveReport) -> None:
    logger.info(
        "%s: dry run: %d message(s) would be received, %d could not be listed, %d already "
        "saved, %d too large, %d filtered out, %d on the server not saved yet; nothing was "
        "retrieved, saved or deleted",
        report.configuration,
        len(report.listed),
        len(report.failed),
        report.skipped_known,
        len(report.skipped_too_large),
        report.skipped_filtered,
        report.waiting,
    )


#: A backstop for a hung worker: each command has its own deadline, so a run outlives this
#: only on a mailbox far larger than one hour's worth. Flows apply the block's run_timeout.
TASK_TIMEOUT_SECONDS = 6 * 3600

_RECEIVING = dict(
    cache_policy=NO_CACHE,  # it changes the outside world
    retries=2,
    retry_delay_seconds=[5, 30],
    retry_condition_fn=_retry_when_transient,
    timeout_seconds=TASK_TIMEOUT_SECONDS,
    on_failure=[announce_failure],  # the run's one failed event, after its last attempt
)


@task(name="MAIL_RECEIVE", **_RECEIVING)
@takes(*RECEIVE_ONE)
def mail_receive(configuration: Configuration, **options: Any) -> ReceivedMail | None:
    """MAIL_RECEIVE: receive the first message not received yet.

    Args:
        configuration: The name a POP3 Mail Configuration was saved under, or the block.

    Returns:
        The received message (paths of its saved files, headers, hashes), or None when no
        message is waiting.

    Example:
        ```python
        from prefect import flow
        from prefect_pop3mail.tasks import mail_receive

        @flow
        def next_order():
            mail = mail_receive("orders-mailbox")
            if mail:
                print(mail.subject, mail.original_path)
        ```
    """
    call = CallOptions.of(options, RECEIVE_ONE, max_messages=1)
    report = _receive(configuration, call, dry_run=False, progress=False)
    _raise_if_nothing_saved(report)
    return report.received[0] if report.received else None


@task(name="MAIL_RECEIVEALL", **_RECEIVING)
@takes(*RECEIVE_ALL)
def mail_receive_all(configuration: Configuration, **options: Any) -> list[ReceivedMail]:
    """MAIL_RECEIVEALL: receive every message in the mailbox, in one POP3 session.

    A message that cannot be saved stays on the server and is reported (log, failures
    artifact); the others are still received. One that fails run after run is set aside
    in quarantine (its original kept). Fails only when no message at all could be saved.

    Args:
        configuration: The name a POP3 Mail Configuration was saved under, or the block.

    Returns:
        The received messages, in server order, with the paths of their saved files.

    Example:
        ```python
        from prefect import flow
        from prefect_pop3mail.tasks import mail_receive_all

        @flow
        def orders():
            for mail in mail_receive_all("orders-mailbox", subject_filter="^Order "):
                print(mail.subject, [a.path for a in mail.attachments])
        ```
    """
    report = _receive(configuration, CallOptions.of(options, RECEIVE_ALL), dry_run=False,
                      progress=True)
    _raise_if_nothing_saved(report)
    return report.received


@task(name="POP3_LIST", **_RECEIVING)
@takes(*LIST)
def mail_list(configuration: Configuration, **options: Any) -> list[ListedMessage]:
    """List the messages MAIL_RECEIVEALL would receive: a dry run. Reads their headers
    (TOP), retrieves, saves and deletes nothing.

    Args:
        configuration: The name a POP3 Mail Configuration was saved under, or the block.

    Returns:
        Number, UIDL, size, sender and subject of each message that would be received.

    Example:
        ```python
        from prefect import flow
        from prefect_pop3mail.tasks import mail_list

        @flow
        def waiting():
            return [m.subject for m in mail_list("orders-mailbox")]
        ```
    """
    report = _receive(configuration, CallOptions.of(options, LIST), dry_run=True,
                      progress=False)
    return report.listed


def _raise_if_nothing_saved(report: ReceiveReport) -> None:
    """A run where every message failed is an error (a full disk, a missing key...)."""
    if report.failed and not report.received:
        first = report.failed[0]
        raise MessagesNotReceivedError(
            f"{report.configuration}: {len(report.failed)} message(s) could not be received "
            f"and stay on the server; first: {first.uidl}: {first.error_type}: {first.error}"
        )


@task(name="POP3_CHECK_CONNECTION", cache_policy=NO_CACHE)
def check_connection(configuration: Configuration) -> ConnectionReport:
    """Connect, and report greeting, capabilities, TLS, login and the messages waiting.
    Retrieves and deletes nothing.

    Args:
        configuration: The name a POP3 Mail Configuration was saved under, or the block.

    Returns:
        What the check found, with hints for the usual OAuth2 mistakes.

    Example:
        ```python
        from prefect import flow
        from prefect_pop3mail.tasks import check_connection

        @flow
        def check():
            report = check_connection("orders-mailbox")
            assert report.login_ok, report.login_error
        ```
    """
    config = resolve_configuration(configuration)
    config.ensure_active()
    report = check_mailbox(config.configuration_name, connection_for(config))
    _logger().info(
        "%s: login %s, %s message(s) waiting",
        report.configuration,
        "ok" if report.login_ok else f"FAILED ({report.login_error})",
        report.messages_waiting,
    )
    return report
