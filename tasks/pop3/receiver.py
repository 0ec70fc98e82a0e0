"""Receiving a mailbox: plan, retrieve (pipelined), save, journal, delete, commit.

The order per message is the promise of no loss and no duplicate:
the original reaches the disk, its files are saved, its UIDL is journalled, then DELE is
sent. Deletions take effect only at QUIT, after one durability barrier.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prefect_pop3mail.tasks.pop3.errors import (
    DiskFullError,
    POP3InUseError,
    POP3LoginDelayError,
    POP3MailError,
    SaveDirectoryError,
    SaveError,
)
from prefect_pop3mail.tasks.pop3.journal import Journal
from prefect_pop3mail.tasks.pop3.mime import parse_headers
from prefect_pop3mail.tasks.pop3.models import (
    ConnectionSettings,
    ListedMessage,
    MessageFailure,
    ReceivedMail,
    ReceiveOptions,
    ReceiveReport,
    SaveOptions,
)
from prefect_pop3mail.tasks.pop3.session import POP3Session
from prefect_pop3mail.tasks.pop3.store import IncomingMessage, MessageStore, header_fields

log = logging.getLogger("pop3mail.receiver")

Progress = Callable[[int, int], None]


@dataclass
class _Plan:
    fetch: list[int] = field(default_factory=list)
    delete_known: list[int] = field(default_factory=list)


class MailboxReceiver:
    """Receives one mailbox with one configuration."""

    def __init__(
        self,
        configuration: str,
        connection: ConnectionSettings,
        save: SaveOptions,
        options: ReceiveOptions,
        *,
        store: MessageStore | None = None,
        progress: Progress | None = None,
    ):
        self.configuration = configuration
        self.connection = connection
        self.options = options
        self.store = store or MessageStore(save, connection.mailbox_key, configuration)
        self.progress = progress
        self.report = ReceiveReport(configuration=configuration)

    def run(self, limit: int | None = None) -> ReceiveReport:
        """Receive up to ``limit`` (or the configured maximum) messages."""
        limit = limit or self.options.max_messages
        journal = Journal(self.store.root, self.connection.mailbox_key)
        try:
            while True:
                remaining = None if limit is None else limit - len(self.report.received)
                if remaining is not None and remaining <= 0:
                    break
                batch = remaining
                if self.options.commit_every:
                    batch = min(remaining or self.options.commit_every, self.options.commit_every)
                more = self._session(journal, batch)
                if not more:
                    break
        except POP3MailError as exc:
            # Saved and journalled messages are safe on disk; say so on the way out.
            exc.partial_report = self.report  # type: ignore[attr-defined]
            raise
        finally:
            journal.close()
        return self.report

    # --- one session ------------------------------------------------------------------

    def _session(self, journal: Journal, batch: int | None) -> bool:
        """One POP3 session; returns True when messages remain for another session."""
        received = self.report.received
        first = len(received)
        session = self._open()
        try:
            uidls = session.uidl()
            sizes = session.list()
            self.report.waiting = len(uidls)
            if not self.options.dry_run:
                journal.prune(set(uidls.values()))
            plan = self._plan(session, uidls, sizes, journal)
            if self.options.dry_run:
                session.quit()
                return False
            fetch = plan.fetch[:batch] if batch is not None else plan.fetch
            more = batch is not None and len(plan.fetch) > batch
            for number in plan.delete_known:
                session.dele(number)  # saved by an earlier run that died before QUIT
            stopped = self._retrieve(session, fetch, uidls, journal, received)
            if plan.delete_known or (self.options.remove_after_read and len(received) > first):
                journal.sync()
        except BaseException:
            session.close()  # no QUIT: the server deletes nothing of this session
            raise
        session.quit()
        if self.options.remove_after_read:  # QUIT succeeded: the deletions are applied
            refused = {uidls[n]: e for n, e in session.refused_deletions.items()}
            for i in range(first, len(received)):
                error = refused.get(received[i].uidl)
                update = {"deleted": error is None}
                if error is not None:
                    update["warnings"] = [*received[i].warnings, f"not deleted from the "
                                          f"server ({error.reply}); tried again next run"]
                received[i] = received[i].model_copy(update=update)
            for error in refused.values():
                log.warning("%s: the server refused a deletion: %s", self.configuration, error)
        return more and not stopped

    def _open(self) -> POP3Session:
        """Connect and log in; a locked mailbox ([IN-USE]) is retried with backoff."""
        retries, delay = self.options.in_use_retries, self.options.in_use_backoff
        for attempt in range(retries + 1):
            session = POP3Session(self.connection, pipelining=self.options.pipelining)
            session.connect()
            try:
                session.login()
                return session
            except (POP3InUseError, POP3LoginDelayError) as exc:
                session.close()
                if attempt == retries:
                    raise type(exc)(
                        exc.command,
                        f"{exc.reply} (still refused after {retries + 1} attempts; another "
                        "client is probably reading this mailbox)",
                    ) from exc
                wait = delay * 2**attempt
                log.warning("%s: %s; trying again in %.1f s", self.configuration, exc, wait)
                time.sleep(wait)
            except BaseException:
                session.close()
                raise
        raise AssertionError("unreachable")

    def _plan(self, session: POP3Session, uidls: dict[int, str], sizes: dict[int, int],
              journal: Journal) -> _Plan:
        plan = _Plan()
        opts = self.options
        for number in sorted(uidls):
            uidl = uidls[number]
            if uidl in journal:
                if opts.remove_after_read:
                    plan.delete_known.append(number)
                    continue
                if opts.new_messages_only:
                    self.report.skipped_known += 1
                    continue
            size = sizes.get(number, 0)
            if opts.max_message_size and size > opts.max_message_size:
                log.warning(
                    "Message %s (%d bytes) is over the maximum size of %d bytes; left on "
                    "the server.", uidl, size, opts.max_message_size
                )
                self.report.skipped_too_large.append(uidl)
                continue
            sender = subject = ""
            if not opts.filters.is_empty() or opts.dry_run:
                head = header_fields(parse_headers(session.top(number, 0)))
                sender, subject = head["sender"], head["subject"]
                if not opts.filters.matches(sender, head["recipients"], subject):
                    self.report.skipped_filtered += 1
                    continue
            if opts.dry_run:
                self.report.listed.append(
                    ListedMessage(number=number, uidl=uidl, size=size, sender=sender,
                                  subject=subject)
                )
            else:
                plan.fetch.append(number)
        if opts.dry_run and opts.max_messages:
            self.report.listed = self.report.listed[: opts.max_messages]
        return plan

    def _retrieve(self, session: POP3Session, numbers: list[int], uidls: dict[int, str],
                  journal: Journal, received: list[ReceivedMail]) -> bool:
        """Retrieve and save; returns True when the batch stopped early (disk full...)."""
        total = len(numbers)
        limit = self.options.max_message_size
        arriving: list[IncomingMessage] = []  # the message being received, if any

        def open_sink(_number: int) -> IncomingMessage:
            arriving[:] = [self.store.incoming()]
            return arriving[0]

        messages = session.retrieve(
            numbers,
            open_sink,
            window=self.options.pipeline_window,
            limit=(limit + limit // 10 + 1024) if limit else None,
        )
        try:
            for done, (number, sink, refused) in enumerate(messages, 1):
                uidl = uidls[number]
                if refused is not None:
                    self._fail(number, uidl, refused)
                    continue
                assert isinstance(sink, IncomingMessage)
                arriving.clear()
                try:
                    sink.finish()
                    mail = self.store.save(sink, uidl)
                except (DiskFullError, SaveDirectoryError) as exc:
                    sink.discard()
                    self._fail(number, uidl, exc)
                    log.error("Stopping this run: %s. Later messages wait on the server.", exc)
                    return True
                except (SaveError, POP3MailError) as exc:
                    sink.discard()
                    self._fail(number, uidl, exc)
                    continue
                journal.record(uidl, mail.folder.name if mail.folder else "")
                if self.options.remove_after_read:
                    session.dele(number)
                received.append(mail)
                if self.progress:
                    self.progress(done, total)
        except BaseException:
            for sink in arriving:  # cut off mid-message: leave no partial file behind
                sink.discard()
            raise
        finally:
            messages.close()
        return False

    def _fail(self, number: int, uidl: str, error: Exception) -> None:
        log.warning("Message %s not received, left on the server: %s", uidl, error)
        self.report.failed.append(
            MessageFailure(uidl=uidl, number=number, error=str(error),
                           error_type=type(error).__name__)
        )


def receive_mailbox(configuration: str, connection: ConnectionSettings, save: SaveOptions,
                    options: ReceiveOptions, *, limit: int | None = None,
                    progress: Progress | None = None) -> ReceiveReport:
    """Receive one mailbox: the engine's entry point."""
    return MailboxReceiver(configuration, connection, save, options, progress=progress).run(limit)
