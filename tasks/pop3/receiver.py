"""Receiving a mailbox: plan, retrieve (pipelined), save, journal, delete, commit.

The order per message is the promise of no loss and no duplicate:
the original reaches the disk, its files are saved, its UIDL is journalled (and the message
enters the outbox), the store reads back its record and its folder's marker, then DELE is
sent. Deletions take effect only at QUIT, after one durability barrier.

One message never stops a mailbox: whatever goes wrong while saving one message is that
message's failure, counted in the journal; after ``quarantine_after`` failed runs its
original alone is set aside under ``quarantine/``. Only session faults (the connection, the
protocol, a full disk, an unusable save directory) end a run.

A run ends by construction. It works on the messages of its first listing. Whatever fails
on a message (a refusal, a cap, its headers, saving it, the session dying while it was read)
is charged to that message once per run, and a message settled in a run (saved, failed,
skipped) is not looked at again in it: so each session settles at least one message or ends
the run. A failed message is replaced by the next one in the same session (a batch counts
what was received), so only a message that breaks its session costs a new one. The session
cap (:data:`MAX_EXTRA_SESSIONS` beyond the batches the run needs) is the backstop, and a run
stopped by it says so in ``ReceiveReport.stopped``. The journal counts runs, never attempts:
``quarantine_after`` runs, whatever the batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NoReturn

from prefect_pop3mail.tasks.pop3.errors import (
    DiskFullError,
    MessageTooLargeError,
    POP3ConnectionError,
    POP3InUseError,
    POP3LoginDelayError,
    POP3MailError,
    POP3ProtocolError,
    POP3ReplyError,
    SaveDirectoryError,
    StorageError,
    UIDLNotSupportedError,
)
from prefect_pop3mail.tasks.pop3.message.headers import header_fields
from prefect_pop3mail.tasks.pop3.message.mime import MAX_HEADER_BYTES, parse_headers
from prefect_pop3mail.tasks.pop3.models import (
    ConnectionSettings,
    ListedMessage,
    MessageFailure,
    ReceivedMail,
    ReceiveOptions,
    ReceiveReport,
    SaveOptions,
)
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from prefect_pop3mail.tasks.pop3.storage.incoming import IncomingMessage
from prefect_pop3mail.tasks.pop3.storage.journal import Saved, head_digest
from prefect_pop3mail.tasks.pop3.storage.store import MessageStore

log = logging.getLogger("pop3mail.receiver")

Progress = Callable[[int, int], None]

#: Faults of the run, not of one message: they end it (what is saved stays saved).
_RUN_FAULTS = (DiskFullError, SaveDirectoryError)
#: Faults that end a session: the connection, the protocol, a reply over its cap.
_SESSION_FAULTS = (POP3ConnectionError, POP3ProtocolError, MessageTooLargeError)

# The journal's failure kinds, by what later runs do with a message whose last failure it is.
#: Saving it failed: after ``quarantine_after`` runs its original is set aside in quarantine.
SAVE_FAILED = "save"
#: It hit a cap (its size, its headers) or broke its session while tried alone: after
#: ``quarantine_after`` runs it is left on the server and reported, never retrieved again.
BROKE_SESSION = "retr"
#: Its session died while it was being read, with other messages in flight: later runs try
#: it alone, after the others are committed (which tells the message from the network).
LOST_SESSION = "lost"
_SUSPECT = (BROKE_SESSION, LOST_SESSION)

#: Sessions a run may open beyond the batches it needs (1, or ceil(messages / commit_every)):
#: one for each message that broke a session (a cap, a dropped connection) and each message
#: tried alone. Past it the run stops, says why in ``ReceiveReport.stopped``, and the rest
#: waits for the next run.
MAX_EXTRA_SESSIONS = 10
#: TOP n 0 (the filters, a dry run, checking a journalled message before DELE) reads at most
#: this much; a longer header section ends the session and is that message's failure.
MAX_TOP_BYTES = MAX_HEADER_BYTES


@dataclass
class _Plan:
    fetch: list[int] = field(default_factory=list)
    delete_known: list[int] = field(default_factory=list)
    #: UIDLs that broke a session in an earlier run: each tried alone, after the others.
    alone: list[str] = field(default_factory=list)


@dataclass
class _Listing:
    uidls: dict[int, str]
    sizes: dict[int, int]


class _SessionLost(Exception):
    """The session ended under a message, which is charged for it: the run goes on in a
    new session without that message."""


class _Feed:
    """The messages one session asks for, as the pipeline makes room: never so many in
    flight that the session could receive more than ``batch``, so a message that fails is
    replaced by the next one (a batch counts received messages, not attempts). Bounded by
    ``numbers``; asked again after it said "no more", it may go on once results came in."""

    def __init__(self, numbers: list[int], batch: int | None):
        self.numbers = numbers
        self.batch = batch
        self.sent = self.done = self.received = 0

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self.sent >= len(self.numbers):
            raise StopIteration
        if self.batch is not None and self.received + self.sent - self.done >= self.batch:
            raise StopIteration
        self.sent += 1
        return self.numbers[self.sent - 1]

    @property
    def in_flight(self) -> int | None:
        """The message whose reply is being read (results come in order)."""
        return self.numbers[self.done] if self.sent > self.done else None

    @property
    def left(self) -> bool:
        """Messages of the plan never asked for."""
        return self.sent < len(self.numbers)


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
        #: The run's messages: the UIDLs of its first listing (None before it).
        self._scope: set[str] | None = None
        self._cap = 1 + MAX_EXTRA_SESSIONS  # set from the first listing
        self._batches = 1
        #: Settled this run (received, failed, skipped...): not looked at again in it.
        self._settled: set[str] = set()
        #: Failed this run: charged once.
        self._charged: set[str] = set()
        #: Passed the filters this run (their TOP is not sent again).
        self._matched: set[str] = set()
        #: Journalled, but too big a header section to check by TOP: received again.
        self._recheck: set[str] = set()
        #: Suspects waiting to be tried alone, from the last full plan.
        self._alone: list[str] = []
        #: Regular messages of the last plan not yet asked for, or a plan cut short.
        self._regular_left = True
        #: Received in a session that died: deleted by a later session's DELE.
        self._undeleted: dict[str, ReceivedMail] = {}
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
        if not self.options.dry_run:
            self.report.late = list(self.outbox.pending.values())
        alone: str | None = None
        try:
            while self._room() != 0:
                if self.report.sessions >= self._cap:
                    self._stop(
                        f"the session cap of {self._cap} sessions was reached ({self._batches} "
                        f"for the batches of this run, plus MAX_EXTRA_SESSIONS = "
                        f"{MAX_EXTRA_SESSIONS} for messages that broke a session or were tried "
                        "alone); the rest waits for the next run")
                    break
                more, alone = self._session(alone)
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

    def _room(self) -> int | None:
        """How many more messages this run may receive (None: no limit)."""
        limit = self.options.max_messages
        return None if limit is None else max(0, limit - len(self.report.received))

    def _stop(self, why: str) -> None:
        self.report.stopped = why
        log.warning("%s: run stopped: %s", self.configuration, why)

    # --- one session ------------------------------------------------------------------

    def _session(self, alone: str | None) -> tuple[bool, str | None]:
        """One POP3 session: the run's regular messages, or the suspect ``alone``. Returns
        whether work remains, and the suspect to try next (None: regular messages)."""
        received = self.report.received
        first = len(received)
        session = self._open()
        self.report.sessions += 1
        pending: list[str] = []  # deleted at this session's QUIT, or by a later session
        saved: dict[int, tuple[Saved, ReceivedMail]] = {}  # to delete once verified
        plan = _Plan()
        try:
            listing = _Listing(self._uidls(session), session.list())
            for number, error in session.invalid_uidls.items():
                # Never journalled or deleted: the journal could not name this message.
                self._charge(number, error.uidl or f"(message {number})", error)
            if self._scope is None:
                self._begin(listing, session)
            if alone is None:
                self._regular_left = False
            plan = self._plan(session, listing, alone)
            if self.options.dry_run:
                session.quit()
                self.report.waiting = self._waiting(listing)
                return self._next(), None
            for number in plan.delete_known:
                session.dele(number)  # saved by an earlier run that died before QUIT
                pending.append(listing.uidls[number])
            self._settled.update(pending)
            stopped = self._retrieve(session, plan.fetch, listing, alone is not None, saved)
            self._delete_verified(session, listing, saved)
            if plan.delete_known or (self.options.remove_after_read and len(received) > first):
                self.store.barrier()
        except _SessionLost:
            session.close()  # no QUIT: the server deletes nothing of this session
            if alone is None:
                self._regular_left = True
            if self.options.remove_after_read:  # a later session deletes them (by the journal)
                self._settled.difference_update(pending)
                self._settled.difference_update(m.uidl for m in received[first:])
                self._undeleted.update((m.uidl, m) for m in received[first:])
            return self._after(alone)
        except BaseException:
            session.close()  # no QUIT: the server deletes nothing of this session
            raise
        session.quit()
        self.report.waiting = self._waiting(listing)
        if self.options.remove_after_read:  # QUIT succeeded: the deletions are applied
            self._mark_deleted(session, listing, first, plan.delete_known)
        if stopped:
            return False, None
        return self._after(alone)

    def _waiting(self, listing: _Listing) -> int:
        """Messages on the server that no run has saved."""
        return len(listing.uidls) - self.journal.count_saved(listing.uidls.values())

    def _after(self, alone: str | None) -> tuple[bool, str | None]:
        """What comes after a session: regular messages left, else the next suspect."""
        if alone is not None:
            self._settled.add(alone)  # tried alone once this run, whatever came of it
        return self._next(), self._next_alone()

    def _next(self) -> bool:
        return self._regular_left or self._next_alone() is not None

    def _next_alone(self) -> str | None:
        """The next suspect to try alone, once no regular message is left."""
        if self._regular_left or self.options.dry_run:
            return None
        return next((u for u in self._alone if u not in self._settled), None)

    def _begin(self, listing: _Listing, session: POP3Session) -> None:
        """The run's first listing: its messages, and its session cap."""
        self._scope = set(listing.uidls.values())
        every = self.options.commit_every
        wanted = len(self._scope)
        if self.options.max_messages is not None:
            wanted = min(wanted, self.options.max_messages)
        self._batches = max(1, math.ceil(wanted / every)) if every and not self.options.dry_run else 1
        self._cap = self._batches + MAX_EXTRA_SESSIONS
        if not self.options.dry_run:
            shared = {e.uidl for e in session.invalid_uidls.values() if e.uidl}
            self.store.prune(self._scope | shared)

    def _mark_deleted(self, session: POP3Session, listing: _Listing, first: int,
                      delete_known: list[int]) -> None:
        received = self.report.received
        refused = {listing.uidls[n]: e for n, e in session.refused_deletions.items()}
        # Deletion is known only after QUIT: the results made before it are completed.
        later = [self._undeleted.pop(listing.uidls[n], None) for n in delete_known]
        for mail in [*received[first:], *filter(None, later)]:
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

    def _plan(self, session: POP3Session, listing: _Listing, alone: str | None) -> _Plan:
        """What this session does: every unsettled message of the run (a regular session),
        or only ``alone``. Settles what it decides (known, too large, filtered, given up)."""
        plan = _Plan()
        opts = self.options
        # Counted here (the report validates every assignment); the same in every session
        # of a run, as known messages are not deleted without removal.
        known = 0
        sizes = listing.sizes
        numbers = sorted(listing.uidls)
        uidls = list(map(listing.uidls.__getitem__, numbers))
        first = self.report.sessions == 1
        settled, scope = self._settled, self._scope
        # One pass over the journal: a mailbox left on the server lists 100,000 (bench scale).
        for number, uidl, saved in zip(numbers, uidls, self.journal.get_many(uidls),
                                       strict=True):
            if not first and (uidl in settled or uidl not in scope):
                continue  # settled this run, or arrived during it (the next run's)
            if alone is not None and uidl != alone:
                continue
            size = sizes.get(number, 0)
            if (saved is not None and opts.new_messages_only and not opts.remove_after_read
                    and saved.size == size):
                known += 1
                continue
            if self._gives_up_on(number, uidl):
                continue
            if alone is None and not opts.dry_run and self.journal.last_failure(uidl) in _SUSPECT:
                plan.alone.append(uidl)  # it broke a session before: alone, after the rest
                continue
            if saved is not None and (opts.remove_after_read or opts.new_messages_only):
                if uidl in self._recheck:
                    log.info("%s: receiving %s again to delete it: its header section is too "
                             "big to check by TOP", self.configuration, uidl)
                elif opts.remove_after_read and self._is_saved(session, number, uidl, size,
                                                                saved, alone is not None):
                    if (problem := self._marker_problem(uidl, saved)) is None:
                        plan.delete_known.append(number)  # settled once its DELE is sent
                        continue
                    log.warning("%s: UIDL %s: %s; receiving it again", self.configuration,
                                uidl, problem)
                else:
                    log.warning("%s: UIDL %s now names another message than the one saved; "
                                "receiving it as new", self.configuration, uidl)
            if opts.max_message_size and size > opts.max_message_size:
                log.warning(
                    "Message %s (%d bytes) is over the maximum size of %d bytes; left on "
                    "the server.", uidl, size, opts.max_message_size
                )
                self.report.skipped_too_large.append(uidl)
                settled.add(uidl)
                continue
            if (not opts.filters.is_empty() or opts.dry_run) and uidl not in self._matched:
                head = self._head(session, number, uidl, alone is not None)
                if head is None:
                    continue  # charged
                settled.add(uidl)
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
                settled.discard(uidl)  # to be received
                self._matched.add(uidl)
            plan.fetch.append(number)
        if alone is None:
            self.report.skipped_known = known
            self._alone = plan.alone
        return plan

    def _head(self, session: POP3Session, number: int, uidl: str, alone: bool) -> dict | None:
        """One message's header fields by TOP n 0, for the filters and a dry run; None when
        that failed (charged to the message)."""
        try:
            data = self._top(session, number, uidl, alone)
        except MessageTooLargeError:
            self._charge(number, uidl, MessageTooLargeError(
                f"its header section is over {MAX_TOP_BYTES >> 20} MB (MAX_TOP_BYTES): it "
                "cannot be filtered or listed; left on the server"), BROKE_SESSION)
            raise _SessionLost from None
        except POP3ReplyError as exc:
            self._charge(number, uidl, exc)
            return None
        try:
            return header_fields(parse_headers(data))
        except Exception as exc:  # its headers: this message's failure alone
            self._charge(number, uidl, exc, BROKE_SESSION)
            return None

    def _top(self, session: POP3Session, number: int, uidl: str, alone: bool) -> bytes:
        """TOP n 0. A dying session is charged to the message (see :meth:`_lost`)."""
        try:
            return session.top(number, 0, limit=MAX_TOP_BYTES)
        except (POP3ConnectionError, POP3ProtocolError) as exc:
            self._lost(number, uidl, exc, alone)

    def _is_saved(self, session: POP3Session, number: int, uidl: str, size: int,
                  saved: Saved, alone: bool) -> bool:
        """Whether message ``number`` is the one the journal saved under its UIDL (a server
        may give a UIDL to a new message once the old one is gone)."""
        if saved.size != size or not saved.head:
            return False  # a record that cannot tell the message never deletes it
        try:
            return head_digest(self._top(session, number, uidl, alone)) == saved.head
        except POP3ReplyError:
            return False  # no TOP: receive it again rather than delete unseen mail
        except MessageTooLargeError:
            # A header section over the TOP cap: received again (into the same folder),
            # then deleted, rather than checked by TOP in every session.
            self._recheck.add(uidl)
            raise _SessionLost from None

    def _marker_problem(self, uidl: str, saved: Saved) -> str | None:
        """Why the folder of a journalled message does not show it saved (its marker, read
        back, must name it); None when it does. The message is then received again, and
        says why when saved."""
        problem = self.store.verify({uidl: saved}, recorded_now=False).get(uidl)
        if problem is not None:
            self.journal.distrusted[uidl] = f"not deleted unseen: {problem}"
        return problem

    def _gives_up_on(self, number: int, uidl: str) -> bool:
        """A message that hit a cap or broke its session alone, run after run, is left on
        the server and reported, so the rest of the mailbox moves on."""
        if self.journal.last_failure(uidl) != BROKE_SESSION:
            return False
        attempts = self.journal.failure_count(uidl)
        if attempts < self.options.quarantine_after:
            return False
        self._charged.add(uidl)
        self._settled.add(uidl)
        self.report.failed.append(MessageFailure(
            uidl=uidl, number=number, attempts=attempts, error_type="RetrieveFailedError",
            error=f"retrieving it failed {attempts} times; left on the server and skipped"))
        return True

    # --- retrieving -----------------------------------------------------------------------

    def _retrieve(self, session: POP3Session, numbers: list[int], listing: _Listing,
                  alone: bool, saved: dict[int, tuple[Saved, ReceivedMail]]) -> bool:
        """Retrieve and save (into ``saved``, what is to be deleted); returns True when the
        run must stop (disk full...)."""
        room = self._room()
        batch = 1 if alone else self.options.commit_every or None
        if room is not None:
            batch = min(batch or room, room)
        feed = _Feed(numbers, batch)
        total = len(numbers)
        limit = self.options.max_message_size
        arriving: list[tuple[int, IncomingMessage]] = []  # the message being received

        def open_sink(number: int) -> IncomingMessage:
            arriving[:] = [(number, self.store.incoming())]
            return arriving[0][1]

        messages = session.retrieve(
            feed,
            open_sink,
            window=self.options.pipeline_window,
            limit=(limit + limit // 10 + 1024) if limit else None,
        )
        try:
            for number, sink, refused in self._charging(messages, feed, arriving, listing,
                                                        alone):
                feed.done += 1
                uidl = listing.uidls[number]
                if refused is not None:
                    self._charge(number, uidl, refused)
                    continue
                assert isinstance(sink, IncomingMessage)
                arriving.clear()
                try:
                    mail = self._save(number, uidl, sink)
                except _RUN_FAULTS as exc:
                    sink.discard()
                    self._charge(number, uidl, exc)
                    self._stop(f"{exc}; later messages wait on the server")
                    return True
                if mail is None:
                    continue
                record = self.store.record(mail, listing.sizes.get(number, sink.size),
                                           sink.head_digest)
                if self.options.remove_after_read:
                    saved[number] = (record, mail)  # DELE once read back
                self.report.received.append(mail)
                self._settled.add(uidl)
                feed.received += 1
                if self.progress:
                    self.progress(feed.done, total)
        except BaseException:
            for _, sink in arriving:  # cut off mid-message: leave no partial file behind
                sink.discard()
            raise
        finally:
            messages.close()
        if feed.left and not alone:
            self._regular_left = True
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
            self._charge(number, mail.uidl, StorageError(f"saved, but not deleted from the "
                                                         f"server: {problem}"))

    def _save(self, number: int, uidl: str, sink: IncomingMessage) -> ReceivedMail | None:
        """Save one message; None when it failed (charged, and set aside when it failed
        too many runs). Run faults propagate."""
        sink.finish()
        if self.journal.last_failure(uidl) == SAVE_FAILED:
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
            attempts = self.journal.record_failure(uidl, SAVE_FAILED)
            if attempts < self.options.quarantine_after:
                self._charge(number, uidl, exc, attempts=attempts)
                sink.discard()
                return None
            log.warning("%s: message %s failed %d runs; setting it aside in quarantine",
                        self.configuration, uidl, attempts)
            return self.store.quarantine(sink, uidl, f"failed {attempts} times; last: "
                                         f"{type(exc).__name__}: {_describe(exc)}")

    # --- failures -------------------------------------------------------------------------

    def _charge(self, number: int, uidl: str, error: BaseException, kind: str | None = None,
                *, attempts: int = 1) -> None:
        """One message failed: reported, and not tried again this run. Once per run: a
        second failure of the same message in the run is not counted. ``kind`` also counts
        it in the journal (never in a dry run)."""
        if uidl in self._charged:
            return
        self._charged.add(uidl)
        self._settled.add(uidl)
        if kind is not None and not self.options.dry_run:
            attempts = self.journal.record_failure(uidl, kind)
        self._fail(number, uidl, error, attempts=attempts)

    def _lost(self, number: int, uidl: str, error: POP3MailError, alone: bool) -> NoReturn:
        """The session died while ``uidl``'s reply was read (called where ``error`` is
        handled). Among other messages, the network may be to blame: the run ends (``error``
        is raised) and later runs try the message alone. Alone, the message is to blame: it
        is charged for it, and the run goes on in a new session."""
        self._charge(number, uidl, error, BROKE_SESSION if alone else LOST_SESSION)
        if not alone:
            raise error
        raise _SessionLost from error

    def _charging(self, messages: Iterator, feed: _Feed,
                      arriving: list[tuple[int, IncomingMessage]], listing: _Listing,
                      alone: bool) -> Iterator:
        """``messages`` (session.retrieve), with a session fault charged to the message whose
        reply was being read: over the size limit while arriving, the connection lost, garbage."""
        while True:
            try:
                item = next(messages)
            except StopIteration:
                return
            except _SESSION_FAULTS as exc:
                number = arriving[0][0] if arriving else feed.in_flight
                for _, sink in arriving:
                    sink.discard()
                arriving.clear()
                if number is None:
                    raise
                uidl = listing.uidls[number]
                if isinstance(exc, MessageTooLargeError):
                    self._charge(number, uidl, MessageTooLargeError(
                        "larger than the maximum message size"), BROKE_SESSION)
                    raise _SessionLost from exc
                self._lost(number, uidl, exc, alone)
            yield item

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
