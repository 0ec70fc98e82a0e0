"""Receiving a mailbox: plan, retrieve (pipelined), save, journal, delete, commit.

The order per message is the promise of no loss and no duplicate:
the original reaches the disk, its files are saved, its UIDL is journalled (and the message
enters the outbox), the store reads back its record and its folder's marker, then DELE is
sent. Deletions take effect only at QUIT, after one durability barrier.

One message never stops a mailbox: whatever goes wrong while saving one message is that
message's failure, counted in the journal; after ``quarantine_after`` failed runs its
original alone is set aside under ``quarantine/``. Only session faults (the connection, the
protocol, a full disk, an unusable save directory) end a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prefect_pop3mail.tasks.pop3.errors import (
    DiskFullError,
    MessageTooLargeError,
    POP3InUseError,
    POP3LoginDelayError,
    POP3MailError,
    POP3ReplyError,
    SaveDirectoryError,
    StorageError,
    UIDLNotSupportedError,
)
from prefect_pop3mail.tasks.pop3.headers import header_fields
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
from prefect_pop3mail.tasks.pop3.storage.journal import Saved, head_digest
from prefect_pop3mail.tasks.pop3.storage.store import IncomingMessage, MessageStore

log = logging.getLogger("pop3mail.receiver")

Progress = Callable[[int, int], None]

#: Faults of the run, not of one message: they end it (what is saved stays saved).
_RUN_FAULTS = (DiskFullError, SaveDirectoryError)


@dataclass
class _Plan:
    fetch: list[int] = field(default_factory=list)
    delete_known: list[int] = field(default_factory=list)


@dataclass
class _Listing:
    uidls: dict[int, str]
    sizes: dict[int, int]


class MailboxReceiver:
    """Receives one mailbox with one configuration. Use as a context manager, or call
    :meth:`close`: the journal and outbox stay open until the run is announced."""

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
        # Beside the saved files, on the same storage: the store keeps them.
        self.journal, self.outbox = self.store.journal, self.store.outbox
        self.progress = progress
        self.report = ReceiveReport(configuration=configuration)
        #: Messages that ended a session this run: not tried again in it.
        self._broke_session: set[str] = set()
        #: Saved this run but not deleted: their record or marker did not read back.
        self._kept: set[str] = set()

    def __enter__(self) -> MailboxReceiver:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    def run(self) -> ReceiveReport:
        """Receive up to ``options.max_messages`` messages (all, when None).

        A run fault raises a POP3MailError whose ``partial_report`` has what was saved.
        """
        limit = self.options.max_messages
        if not self.options.dry_run:
            self.report.late = list(self.outbox.pending.values())
        try:
            while True:
                remaining = None if limit is None else limit - len(self.report.received)
                if remaining is not None and remaining <= 0:
                    break
                batch = remaining
                if self.options.commit_every:
                    batch = min(remaining or self.options.commit_every, self.options.commit_every)
                try:
                    more = self._session_leaves_more(batch)
                except MessageTooLargeError:
                    more = True  # counted against that message and skipped; the rest goes on
                if not more:
                    break
        except POP3MailError as exc:
            # Saved and journalled messages are safe on disk; say so on the way out.
            exc.partial_report = self.report  # type: ignore[attr-defined]
            raise
        return self.report

    def acknowledge(self, mails: list[ReceivedMail]) -> None:
        """Downstream steps have been told of ``mails``: take them out of the outbox."""
        self.outbox.acknowledge([m.id for m in mails])

    # --- one session ------------------------------------------------------------------

    def _session_leaves_more(self, batch: int | None) -> bool:
        """One POP3 session. Returns whether messages remain for another session."""
        received = self.report.received
        first = len(received)
        session = self._open()
        try:
            listing = _Listing(self._uidls(session), session.list())
            for number, error in session.invalid_uidls.items():
                # Never journalled or deleted: the journal could not name this message.
                self._fail(number, error.uidl or f"(message {number})", error)
            if not self.options.dry_run:
                shared = {e.uidl for e in session.invalid_uidls.values() if e.uidl}
                self.store.prune(set(listing.uidls.values()) | shared)
            plan = self._plan(session, listing)
            if self.options.dry_run:
                session.quit()
                return False
            fetch = plan.fetch[:batch] if batch is not None else plan.fetch
            more = batch is not None and len(plan.fetch) > batch
            for number in plan.delete_known:
                session.dele(number)  # saved by an earlier run that died before QUIT
            saved: dict[int, tuple[Saved, ReceivedMail]] = {}  # to delete once verified
            stopped = self._retrieve(session, fetch, listing, saved)
            self._delete_verified(session, listing, saved)
            if plan.delete_known or (self.options.remove_after_read and len(received) > first):
                self.store.barrier()
        except BaseException:
            session.close()  # no QUIT: the server deletes nothing of this session
            raise
        session.quit()
        self.report.waiting = len(listing.uidls) - self.journal.count_saved(listing.uidls.values())
        if self.options.remove_after_read:  # QUIT succeeded: the deletions are applied
            self._mark_deleted(session, listing, first)
        return more and not stopped

    def _mark_deleted(self, session: POP3Session, listing: _Listing, first: int) -> None:
        received = self.report.received
        refused = {listing.uidls[n]: e for n, e in session.refused_deletions.items()}
        # Deletion is known only after QUIT: the results made before it are completed.
        for mail in received[first:]:
            if mail.uidl in self._kept:
                continue  # not sent a DELE: its warning says why
            error = refused.get(mail.uidl)
            mail.deleted = error is None
            if error is not None:
                mail.warnings.append(f"not deleted from the server ({error.reply}); tried "
                                     "again next run")
        for error in refused.values():
            log.warning("%s: the server refused a deletion: %s", self.configuration, error)

    @staticmethod
    def _uidls(session: POP3Session) -> dict[int, str]:
        try:
            return session.uidl()
        except POP3ReplyError as exc:
            if isinstance(exc, UIDLNotSupportedError):
                raise
            raise UIDLNotSupportedError(
                "UIDL", f"{exc.reply} (the server gives messages no unique ids, which the "
                "journal needs: new_messages_only (New messages only) and receiving again "
                "safely after a crash cannot work with it)") from exc

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

    # --- planning -----------------------------------------------------------------------

    def _plan(self, session: POP3Session, listing: _Listing) -> _Plan:
        plan = _Plan()
        opts = self.options
        known = 0  # counted here: the report validates every assignment
        sizes = listing.sizes
        numbers = sorted(listing.uidls)
        uidls = list(map(listing.uidls.__getitem__, numbers))
        # One pass over the journal: a mailbox left on the server lists 100,000 (bench scale).
        records = self.journal.get_many(uidls)
        trusted, untrusted = (self._verified_saves(session, numbers, uidls, records, sizes)
                              if opts.remove_after_read else (set(), {}))
        for number, uidl, saved in zip(numbers, uidls, records, strict=True):
            size = sizes.get(number, 0)
            if saved is not None and (opts.remove_after_read or opts.new_messages_only):
                if number in trusted:
                    plan.delete_known.append(number)
                    continue
                if not opts.remove_after_read and saved.size == size:
                    known += 1
                    continue
                log.warning("%s: UIDL %s: %s; receiving it again", self.configuration, uidl,
                            untrusted.get(number, "it now names another message than the "
                                                  "one saved"))
            if opts.max_message_size and size > opts.max_message_size:
                log.warning(
                    "Message %s (%d bytes) is over the maximum size of %d bytes; left on "
                    "the server.", uidl, size, opts.max_message_size
                )
                self.report.skipped_too_large.append(uidl)
                continue
            if uidl in self._broke_session or self._gives_up_on(number, uidl):
                continue
            if not opts.filters.is_empty() or opts.dry_run:
                try:
                    head = header_fields(parse_headers(session.top(number, 0)))
                except POP3ReplyError as exc:
                    self._fail(number, uidl, exc)
                    continue
                except POP3MailError:
                    raise  # the session's fault, not this message's
                except Exception as exc:  # its headers: this message's failure alone
                    self._fail(number, uidl, exc)
                    continue
                if not opts.filters.matches(head["sender"], head["recipients"], head["subject"]):
                    self.report.skipped_filtered += 1
                    continue
                if opts.dry_run:
                    self.report.listed.append(ListedMessage(
                        number=number, uidl=uidl, size=size, sender=head["sender"],
                        subject=head["subject"]))
                    if opts.max_messages and len(self.report.listed) >= opts.max_messages:
                        break
                    continue
            plan.fetch.append(number)
        self.report.skipped_known += known
        return plan

    def _verified_saves(self, session: POP3Session, numbers: list[int], uidls: list[str],
                        records: list[Saved | None], sizes: dict[int, int]
                        ) -> tuple[set[int], dict[int, str]]:
        """The messages the journal says are saved that may be deleted without receiving
        them again: the message on the server is the one recorded (``_is_saved``), and its
        folder's marker, read back, names it. Also why the others whose marker does not
        (reported on each when it is saved again)."""
        candidates = {number: (uidl, saved) for number, uidl, saved
                      in zip(numbers, uidls, records, strict=True)
                      if saved is not None and self._is_saved(session, number,
                                                              sizes.get(number, 0), saved)}
        problems = self.store.verify(dict(candidates.values()), recorded_now=False)
        untrusted = {n: problems[u] for n, (u, _) in candidates.items() if u in problems}
        for number, problem in untrusted.items():
            self.journal.distrusted[candidates[number][0]] = f"not deleted unseen: {problem}"
        return candidates.keys() - untrusted.keys(), untrusted

    def _is_saved(self, session: POP3Session, number: int, size: int, saved: Saved) -> bool:
        """Whether message ``number`` is the one the journal saved under its UIDL (a server
        may give a UIDL to a new message once the old one is gone)."""
        if saved.size != size or not saved.head:
            return False  # a record that cannot tell the message never deletes it
        try:
            return head_digest(session.top(number, 0)) == saved.head
        except POP3ReplyError:
            return False  # no TOP: receive it again rather than delete unseen mail

    def _gives_up_on(self, number: int, uidl: str) -> bool:
        """A message that broke the session in run after run (too large, endless) is left
        on the server and reported, so the rest of the mailbox moves on."""
        attempts = self.journal.failure_count(uidl)
        if attempts < self.options.quarantine_after or self.journal.last_failure(uidl) != "retr":
            return False
        self.report.failed.append(MessageFailure(
            uidl=uidl, number=number, attempts=attempts, error_type="RetrieveFailedError",
            error=f"retrieving it failed {attempts} times; left on the server and skipped"))
        return True

    # --- retrieving -----------------------------------------------------------------------

    def _retrieve(self, session: POP3Session, numbers: list[int], listing: _Listing,
                  saved: dict[int, tuple[Saved, ReceivedMail]]) -> bool:
        """Retrieve and save (into ``saved``, what is to be deleted); returns True when
        the batch stopped early (disk full...)."""
        total = len(numbers)
        limit = self.options.max_message_size
        arriving: list[tuple[int, IncomingMessage]] = []  # the message being received

        def open_sink(number: int) -> IncomingMessage:
            arriving[:] = [(number, self.store.incoming())]
            return arriving[0][1]

        messages = session.retrieve(
            numbers,
            open_sink,
            window=self.options.pipeline_window,
            limit=(limit + limit // 10 + 1024) if limit else None,
        )
        try:
            for done, (number, sink, refused) in enumerate(messages, 1):
                uidl = listing.uidls[number]
                if refused is not None:
                    self._fail(number, uidl, refused)
                    continue
                assert isinstance(sink, IncomingMessage)
                arriving.clear()
                try:
                    mail = self._save(number, uidl, sink)
                except _RUN_FAULTS as exc:
                    sink.discard()
                    self._fail(number, uidl, exc)
                    log.error("Stopping this run: %s. Later messages wait on the server.", exc)
                    return True
                if mail is None:
                    continue
                record = self.store.record(mail, listing.sizes.get(number, sink.size),
                                           sink.head_digest)
                if self.options.remove_after_read:
                    saved[number] = (record, mail)  # DELE once read back
                self.report.received.append(mail)
                if self.progress:
                    self.progress(done, total)
        except MessageTooLargeError:
            self._count_session_failure(arriving, listing)
            raise
        except BaseException:
            for _, sink in arriving:  # cut off mid-message: leave no partial file behind
                sink.discard()
            raise
        finally:
            messages.close()
        return False

    def _delete_verified(self, session: POP3Session, listing: _Listing,
                         saved: dict[int, tuple[Saved, ReceivedMail]]) -> None:
        """DELE each message saved this session once the store has read back its journal
        record and its folder's marker; any other stays on the server, reported."""
        if not saved:
            return
        problems = self.store.verify({listing.uidls[n]: record for n, (record, _) in saved.items()},
                                     recorded_now=True)
        for number, (_, mail) in saved.items():
            problem = problems.get(mail.uidl)
            if problem is None:
                session.dele(number)
                continue
            self._kept.add(mail.uidl)
            mail.warnings.append(f"not deleted from the server: {problem}; tried again next run")
            self._fail(number, mail.uidl, StorageError(f"saved, but not deleted from the "
                                                       f"server: {problem}"))

    def _save(self, number: int, uidl: str, sink: IncomingMessage) -> ReceivedMail | None:
        """Save one message; None when it failed (recorded, and set aside when it failed
        too often). Run faults propagate."""
        sink.finish()
        attempts = self.journal.failure_count(uidl)
        if attempts >= self.options.quarantine_after:
            return self.store.quarantine(sink, uidl, f"failed {attempts} times before")
        try:
            return self.store.save(sink, uidl)
        except _RUN_FAULTS:
            raise
        except Exception as exc:  # any fault of this one message is its own
            if not isinstance(exc, POP3MailError):
                log.exception("%s: saving message %s failed", self.configuration, uidl)
            attempts = self.journal.record_failure(uidl, "save")
            if attempts < self.options.quarantine_after:
                self._fail(number, uidl, exc, attempts=attempts)
                sink.discard()
                return None
            log.warning("%s: message %s failed %d times; setting it aside in quarantine",
                        self.configuration, uidl, attempts)
            return self.store.quarantine(sink, uidl, f"failed {attempts} times; last: "
                                         f"{type(exc).__name__}: {_describe(exc)}")

    def _count_session_failure(self, arriving: list[tuple[int, IncomingMessage]],
                               listing: _Listing) -> None:
        """A message that ends the session (over the size limit while arriving) is counted,
        so it cannot block the mailbox forever."""
        for number, sink in arriving:
            sink.discard()
            uidl = listing.uidls[number]
            self._broke_session.add(uidl)
            self._fail(number, uidl, MessageTooLargeError("larger than the maximum message size"),
                       attempts=self.journal.record_failure(uidl, "retr"))

    def _fail(self, number: int, uidl: str, error: BaseException, *, attempts: int = 1) -> None:
        """Report one message's failure this run; it stays on the server."""
        log.warning("Message %s not received, left on the server: %s", uidl, error)
        self.report.failed.append(
            MessageFailure(uidl=uidl, number=number, error=_describe(error),
                           error_type=type(error).__name__, attempts=attempts)
        )


def _describe(error: BaseException) -> str:
    text = str(error)
    return text[:1000] if text else type(error).__name__


def receive_mailbox(configuration: str, connection: ConnectionSettings, save: SaveOptions,
                    options: ReceiveOptions, *, progress: Progress | None = None
                    ) -> ReceiveReport:
    """Receive one mailbox and take what it saved out of the outbox: the engine's entry
    point for callers that announce nothing themselves."""
    with MailboxReceiver(configuration, connection, save, options, progress=progress) as rx:
        report = rx.run()
        rx.acknowledge(report.announcements)
    return report
