"""The per-mailbox lock: one POP3 session per mailbox at a time, across processes and workers.

The lock is Prefect's global concurrency limit ``pop3mail-mailbox-<configuration>``, taken
with a lease that a thread renews while the run lives; a crashed run's slots come back when
its lease lapses (a minute, plus up to 15 s for Prefect's repossessor). Prefect offers
leases only through its client, and its ``concurrency()`` helper neither survives a lost
lease nor is fast with many mailboxes (bench/README.md), so the lease client is here.

What Prefect's own lease storage does not cover, and how this module covers it:

- **The server forgets a lease** (its default lease storage is in memory: a restart empties
  it, while the limit's taken slots stay in the database and nothing frees them). The
  limit has ``SLOTS`` = 2 slots and a run takes both; a run whose renewal finds its lease
  gone (404/410) gives one slot back by name, takes one with a new lease, then gives the
  other back. At no moment are both slots free, so no other run (which needs two) can
  enter while it swaps; and it then holds one slot under a live lease again.
- **A holder that is gone with its lease** (killed while the server restarted) leaves slots
  no lease will free. Each run writes its lease in the Prefect variable
  ``pop3mail-lock-<configuration>`` before its session (``HolderRecord``). A run kept
  waiting for ``PROBE_AFTER`` looks at that lease every ``PROBE_EVERY``; once the record
  has named the same lease, and that lease has been gone, for ``GRACE``, it frees the
  slots the record names, by name, and competes for them like any other run.
- **Two parties acting on one lost lease** (the holder recovering it, waiters reclaiming
  it) are kept apart by a marker variable per lost lease that only one of them can create;
  the winner then checks that the record still names that lease before it frees anything.

The timings make the guarantee: a live holder renews every ``RENEW_EVERY`` (20 s) and
recovers its own lost lease at once, far inside ``GRACE`` (90 s); one that cannot renew for
``LOST_AFTER`` (45 s) has lost the lock and stops after the message in hand
(``MailboxLockLostError``), before a waiter may reclaim (``GRACE``) and before its lease
could lapse on the server (``LEASE_SECONDS``). Each record is written within
``RECORD_TRIES`` tries of taking the slots, or the slots are given back before any session.

With a lease storage that outlives restarts (Prefect's file or Redis lease storage, see the
README) the server never forgets a lease, and none of this is needed, but all of it holds.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectAlreadyExists

from prefect_pop3mail.tasks.pop3.errors import POP3MailError
from prefect_pop3mail.tasks.prefect_api import api_url, no_retries

log = logging.getLogger("pop3mail.lock")

#: Slots of each mailbox's limit; a run takes them all, and keeps one while it swaps leases.
SLOTS = 2
LEASE_SECONDS = 60  # Prefect's shortest lease
RENEW_EVERY = LEASE_SECONDS / 3
#: A holder that could not renew for this long has lost the lock.
LOST_AFTER = 45.0
#: A waiter looks at the holder's lease only after waiting this long: by then a crashed
#: holder's lease has lapsed and been repossessed, and a look (a renewal) cannot revive it.
PROBE_AFTER = 90.0
PROBE_EVERY = 90.0
#: The holder record must have named a lease that is gone for this long before a waiter
#: frees the slots it names.
GRACE = 90.0
#: Seconds for each call of the lock (per connect, read and write).
CALL_TIMEOUT = 10.0
#: Tries to write the holder record after taking the slots (so within about 31 s, far
#: inside ``GRACE``), or the slots go back before any session.
RECORD_TRIES = 3
#: Longest wait between two tries for a held mailbox (the server suggests up to 30 s).
MAX_LOCK_POLL = 5.0
#: Quick tries while the server answers "busy" before Prefect's client (and its slow
#: back-off) takes over.
BUSY_RETRIES = 30
#: Quick tries after the connection dropped, within those.
DROPPED_RETRIES = 3
#: Quick tries of the lock's other calls while the server answers "busy" (503).
BUSY_CALL_RETRIES = 5
#: Marker variables tried per lost lease: a marker whose creator died is passed over after
#: ``GRACE``.
MAX_MARKERS = 8
_DROPPED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError)
_GONE = (404, 410)  # a lease the server does not know: 404 in Prefect 3.4, 410 later


def lock_name(configuration: str) -> str:
    return f"pop3mail-mailbox-{configuration}"


def record_name(configuration: str) -> str:
    """Variable names allow letters, digits, dashes and underscores, up to 255."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", configuration)
    if len(safe) > 150:
        safe = f"{safe[:120]}-{uuid.uuid5(uuid.NAMESPACE_OID, configuration).hex[:16]}"
    return f"pop3mail-lock-{safe}"


class MailboxBusyError(POP3MailError):
    """Another run held the mailbox's lock for longer than this run would wait."""

    retryable = True


class LockUnavailableError(POP3MailError):
    """The Prefect API did not answer while this run waited to take the mailbox's lock
    (for as long as it would wait for another run); no session was opened."""

    retryable = True


class MailboxLockLostError(POP3MailError):
    """The run could not keep the mailbox's lock (the Prefect API out of reach for too
    long), so it stopped before another run could enter the mailbox. What it saved is
    safe and journalled; the next run deletes and announces it."""

    retryable = True


@dataclass(frozen=True)
class HolderRecord:
    """What the Prefect variable says of the run that holds a mailbox: its lease, and how
    many of the limit's slots that run holds (``SLOTS``, or one after a swap)."""

    lease: str
    slots: int
    holder: str = ""

    @classmethod
    def read(cls, client, configuration: str) -> HolderRecord | None:
        response = _call(client, "GET", f"/variables/name/{record_name(configuration)}",
                         missing_ok=True)
        value = response.json().get("value") if response is not None else None
        if not isinstance(value, dict) or "lease" not in value:
            return None
        return cls(str(value["lease"]), int(value.get("slots") or SLOTS),
                   str(value.get("holder") or ""))

    def write(self, client, configuration: str) -> None:
        name = record_name(configuration)
        value = {"lease": self.lease, "slots": self.slots, "holder": self.holder,
                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path = f"/variables/name/{name}"
        if _call(client, "PATCH", path, json={"value": value}, missing_ok=True) is None:
            if _call(client, "POST", "/variables/", json={"name": name, "value": value},
                     exists_ok=True) is None:  # another run made it first: ours is newer
                _call(client, "PATCH", path, json={"value": value})


def _holder_label() -> str:
    """Who holds the mailbox, for people reading the variable in the UI."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_run = TaskRunContext.get()
    if task_run and task_run.task_run:
        return f"task run {task_run.task_run.id}"
    flow_run = FlowRunContext.get()
    if flow_run and flow_run.flow_run:
        return f"flow run {flow_run.flow_run.id}"
    return f"process {os.getpid()} on {socket.gethostname()}"


class MailboxLock:
    """A held mailbox: its lease, renewed on a daemon thread, and what became of it."""

    def __init__(self, client, configuration: str, lease: uuid.UUID, slots: int):
        self.configuration = configuration
        self.name = lock_name(configuration)
        self._client = client
        self.holder = _holder_label()
        self.lease: uuid.UUID | None = lease
        self.slots = slots  # of the limit, held under ``lease``
        self.loose = 0  # held with no lease (while a lost lease is replaced)
        #: Why the lock was lost, once it is (the run must stop).
        self.lost: str | None = None
        self.recovered = 0  # leases replaced after the server lost them
        self._record_due = False
        self._marker: _Marker | None = None  # won for the lease being replaced
        self._state = threading.Lock()  # the renewal thread and release never overlap
        self._stop = threading.Event()
        context = contextvars.copy_context()  # the run's settings and run context
        self._thread = threading.Thread(target=context.run, args=(self._renew_loop,),
                                        daemon=True, name=f"pop3mail-lease-{configuration}")

    def check(self) -> None:
        """Raise when the lock is lost: called between messages."""
        if self.lost:
            raise MailboxLockLostError(f"{self.configuration}: {self.lost}")

    def start(self) -> None:
        self._thread.start()

    # --- renewing ---------------------------------------------------------------------

    def _renew_loop(self) -> None:
        last_ok = time.monotonic()
        failures = 0
        while not self.lost and not self._stop.wait(RENEW_EVERY if not failures else 2.0):
            with self._state:
                if self._stop.is_set():
                    return
                try:
                    with no_retries():
                        self._renew_or_replace()
                except Exception as exc:  # the API away for a moment: try again soon
                    failures += 1
                    silent = time.monotonic() - last_ok
                    if failures == 1:
                        log.warning(
                            "%s: renewing the mailbox lock failed (%s: %s); trying again "
                            "every 2 s; if it cannot be renewed within %d s of the last "
                            "renewal, the run stops after the message in hand", self.name,
                            type(exc).__name__, exc, LOST_AFTER)
                    if silent > LOST_AFTER:
                        self._lose(f"the mailbox lock could not be renewed for {silent:.0f} s "
                                   f"(the Prefect API: {type(exc).__name__}: {exc}); the run "
                                   "stopped so that no other run enters the mailbox beside it")
                    continue
                if failures:
                    log.info("%s: the mailbox lock is renewed again", self.name)
                failures = 0
                last_ok = time.monotonic()

    def _renew_or_replace(self) -> None:
        """Renew the lease; when the server no longer knows it, keep the mailbox under a
        new one. Each step is recorded, so a failure part way resumes on the next try."""
        if self.lease is not None and not _lease_alive(self._client, str(self.lease)):
            marker = _Marker(self._client, self.configuration, str(self.lease), 0)
            if not marker.create():
                self.lease, self.slots = None, 0  # the reclaimer gives them back
                self._lose("Prefect lost this run's lease on the mailbox lock, and another "
                           "run reclaimed the lock; the run stopped")
                return
            self._marker = marker
            self.lease, self.loose, self.slots = None, self.loose + self.slots, 0
        if self.lease is None:
            if self.loose > 1:  # keep one slot taken while a new lease takes the other
                _give_back(self._client, self.name, self.loose - 1)
                self.loose = 1
            try:
                granted = _increment(self._client, self.name, 1).json()
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise
                self.loose = 0  # someone gave them back meanwhile: not ours any more
                self._lose("Prefect lost this run's lease on the mailbox lock, and its slots "
                           "were taken by another run; the run stopped")
                return
            self.lease, self.slots = uuid.UUID(granted["lease_id"]), 1
            self._record_due = True
        if self._record_due:
            HolderRecord(str(self.lease), self.slots + self.loose, self.holder).write(
                self._client, self.configuration)
            self._record_due = False
        if self._settle():
            self.recovered += 1
            log.warning("%s: Prefect no longer knew this run's lease on the mailbox lock (a "
                        "restart of the Prefect server empties its in-memory lease storage); "
                        "the run keeps the mailbox under a new lease", self.name)

    def _lose(self, why: str) -> None:
        self.lost = why
        log.error("%s: %s", self.name, why)

    # --- releasing --------------------------------------------------------------------

    def release(self) -> None:
        """Give the slots back; never raises (a failure is logged, and the run's own
        outcome stands). A lease the server lost is given back by name."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        with self._state:
            try:
                with no_retries():
                    self._release()
            except Exception as exc:
                log.warning(
                    "%s: giving the mailbox lock back failed (%s: %s); its lease lapses "
                    "within %d s, or, if the Prefect server forgot it, the next run "
                    "reclaims the lock after about %d s", self.name, type(exc).__name__, exc,
                    LEASE_SECONDS, PROBE_AFTER + GRACE)

    def _release(self) -> None:
        if self.lease is not None:
            if not _lease_alive(self._client, str(self.lease)):
                marker = _Marker(self._client, self.configuration, str(self.lease), 0)
                if marker.create():  # else a waiter reclaimed them already
                    _give_back(self._client, self.name, self.slots + self.loose)
                    marker.delete()
                    log.warning("%s: Prefect no longer knew this run's lease (the Prefect "
                                "server restarted?); the mailbox lock was given back by "
                                "name", self.name)
                self.lease, self.slots, self.loose = None, 0, 0
            else:
                _call(self._client, "POST", "/v2/concurrency_limits/decrement-with-lease",
                      json={"lease_id": str(self.lease)})
                self.lease, self.slots = None, 0
        self._settle()

    def _settle(self) -> bool:
        """Give back the slots held with no lease, and drop the marker won for a lost lease
        (whether there was one)."""
        if self.loose:
            _give_back(self._client, self.name, self.loose)
            self.loose = 0
        if self._marker is None:
            return False
        self._marker.delete()
        self._marker = None
        return True


def _give_back(client, name: str, slots: int) -> None:
    """Free ``slots`` of the limit by name (with no lease: Prefect's decrement)."""
    if slots > 0:
        _call(client, "POST", "/v2/concurrency_limits/decrement",
              json={"names": [name], "slots": slots, "occupancy_seconds": 1.0})


def _renew(client, lease: uuid.UUID) -> None:
    _call(client, "POST", f"/v2/concurrency_limits/leases/{lease}/renew",
          json={"lease_duration": LEASE_SECONDS})


def _call(client, method: str, path: str, *, missing_ok: bool = False, exists_ok: bool = False,
          **kwargs) -> httpx.Response | None:
    """One request of the lock's, through Prefect's client, with the lock's own deadline
    and none of the client's retries (it would try again for about a minute); a "busy"
    answer (503: SQLite locked) is tried again within a second or so. None for a 404 with
    ``missing_ok`` or a 409 with ``exists_ok``."""
    for attempt in itertools.count():
        try:
            with no_retries():
                return client.request(method, path, timeout=CALL_TIMEOUT, **kwargs)
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            if (missing_ok and status == 404) or (exists_ok and status == 409):
                return None
            if status != 503 or attempt >= BUSY_CALL_RETRIES:
                raise
            time.sleep(random.uniform(0.02, 0.1) * 2 ** attempt)
    raise AssertionError("unreachable")


class _Marker:
    """The one variable per lost lease that only one party can create: it decides who acts
    on that lease (recovers it, or reclaims its slots)."""

    def __init__(self, client, configuration: str, lease: str, index: int):
        self._client = client
        self.name = f"{record_name(configuration)}-lost-{lease}-{index}"

    def create(self) -> bool:
        return _call(self._client, "POST", "/variables/", exists_ok=True,
                     json={"name": self.name, "value": _holder_label()}) is not None

    def delete(self) -> None:
        _call(self._client, "DELETE", f"/variables/name/{self.name}", missing_ok=True)


@contextlib.contextmanager
def mailbox_lock(configuration: str, timeout_seconds: float | None = 600) -> Iterator[MailboxLock]:
    """Hold the mailbox's global concurrency limit: one session per mailbox at a time,
    across processes and workers, since the Prefect server keeps the count.

    Three API calls when nobody else holds it (take the slots, write the holder record,
    give them back, after a renewal that checks the lease is still known); the limit is
    created by the first run that finds it missing. Yields the ``MailboxLock``: call its
    ``check()`` between messages. Leaving never raises for the lock's sake.
    """
    with get_client(sync_client=True) as client:  # a task run's own, when there is one
        lock = _acquire(client, configuration, timeout_seconds)
        lock.start()
        try:
            yield lock
        finally:
            lock.release()


def _acquire(client, configuration: str, timeout_seconds: float | None) -> MailboxLock:
    name = lock_name(configuration)
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    watch = _OrphanWatch(client, configuration)
    created = widened = False
    unanswered: BaseException | None = None
    while True:
        try:
            response = _increment(client, name, SLOTS)
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else 0
            if status == 422 and not widened:  # a limit below SLOTS: an earlier version's
                _widen(client, name)
                widened = True
                continue
            if status != 423 and not (status >= 500 or status == 0):
                raise
            if status != 423:  # Prefect away (a restart?): wait for it as for a holder
                if unanswered is None:
                    log.warning("%s: the Prefect API at %s did not answer while taking the "
                                "mailbox lock (%s: %s); trying again", name, api_url(),
                                type(exc).__name__, exc)
                unanswered = exc
                wait = 2.0
                if deadline is not None and time.monotonic() + wait > deadline:
                    raise LockUnavailableError(
                        f"{configuration}: the Prefect API at {api_url()} (PREFECT_API_URL) "
                        f"did not answer while taking the mailbox lock, for "
                        f"{timeout_seconds:g} s ({type(exc).__name__}: {exc}); no session "
                        "was opened") from exc
                time.sleep(wait)
                continue
            if watch.look():
                continue  # slots no lease would ever free were given back: try at once
            wait = min(float(exc.response.headers.get("Retry-After") or 1), MAX_LOCK_POLL)
            if deadline is not None and time.monotonic() + wait > deadline:
                raise MailboxBusyError(
                    f"mailbox {name!r} is held by another run; gave up after "
                    f"{timeout_seconds:g} s") from None
            time.sleep(max(wait, 0.05))
            continue
        granted = response.json()
        if granted.get("limits"):
            lock = MailboxLock(client, configuration, uuid.UUID(granted["lease_id"]), SLOTS)
            _record(client, lock)
            watch.done()
            return lock
        if created:
            raise MailboxBusyError(f"concurrency limit {name!r} could not be created")
        _create_limit(client, name)
        created = True


def _record(client, lock: MailboxLock) -> None:
    """Write the holder record before any session; if that fails, give the slots back."""
    record = HolderRecord(str(lock.lease), lock.slots, lock.holder)
    for attempt in range(RECORD_TRIES):
        try:
            record.write(client, lock.configuration)
            return
        except Exception as exc:
            if attempt + 1 < RECORD_TRIES:
                time.sleep(0.5)
                continue
            lock.release()
            raise MailboxLockLostError(
                f"{lock.configuration}: the mailbox lock was taken, but Prefect did not "
                f"store who holds it ({type(exc).__name__}: {exc}); it was given back "
                "before any session") from exc


class _OrphanWatch:
    """A waiting run's view of the holder: whether the lease the holder record names has
    been gone for ``GRACE``; if so, the slots it names are given back by name."""

    def __init__(self, client, configuration: str):
        self._client = client
        self._configuration = configuration
        self._since = time.monotonic()
        self._probed = -PROBE_EVERY
        self._suspect: tuple[HolderRecord | None, float] | None = None
        self._markers: dict[str, float] = {}
        self._won: _Marker | None = None

    def look(self) -> bool:
        now = time.monotonic()
        if now - self._since < PROBE_AFTER or now - self._probed < PROBE_EVERY:
            return False
        self._probed = now
        try:
            return self._look(now)
        except Exception as exc:  # cannot tell: keep waiting
            log.info("%s: could not look at the mailbox lock's holder (%s: %s)",
                     lock_name(self._configuration), type(exc).__name__, exc)
            return False

    def _look(self, now: float) -> bool:
        record = HolderRecord.read(self._client, self._configuration)
        if record is not None and _lease_alive(self._client, record.lease):
            self._suspect = None
            return False
        if self._suspect is None or self._suspect[0] != record:
            self._suspect = (record, now)
            return False
        if now - self._suspect[1] < GRACE:
            return False
        return self._reclaim(record, now)

    def _reclaim(self, record: HolderRecord | None, now: float) -> bool:
        name = lock_name(self._configuration)
        lease = record.lease if record else "none"
        for index in range(MAX_MARKERS):
            marker = _Marker(self._client, self._configuration, lease, index)
            if marker.create():
                break
            seen = self._markers.setdefault(marker.name, now)
            if now - seen < GRACE:
                return False  # another party is acting on that lease: wait for it
        else:
            return False
        if HolderRecord.read(self._client, self._configuration) != record:
            marker.delete()  # the holder moved on meanwhile: nothing is orphaned
            self._suspect = None
            return False
        held = int(_call(self._client, "GET", f"/v2/concurrency_limits/{name}").json()
                   ["active_slots"])
        freed = min(record.slots if record else held, held)
        _give_back(self._client, name, freed)
        self._won = marker
        self._suspect = None
        log.warning(
            "%s: reclaimed %d slot(s) of the mailbox lock: the lease of its holder (%s) "
            "has been unknown to Prefect for over %d s (a restart of the Prefect server "
            "while that run held the mailbox, and the run is gone)", name, freed,
            (record.holder or "unknown") if record else "no holder record", GRACE)
        return True

    def done(self) -> None:
        """This run holds the mailbox, and its record is written: the marker it won is
        no longer needed."""
        if self._won is not None:
            with contextlib.suppress(Exception):
                self._won.delete()


def _lease_alive(client, lease: str) -> bool:
    """Whether the server knows the lease (a renewal: it cannot revive one that lapsed,
    because a waiter looks only after ``PROBE_AFTER``)."""
    try:
        _renew(client, uuid.UUID(lease))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code in _GONE:
            return False
        raise
    except ValueError:
        return False  # not a lease id at all
    return True


def _widen(client, name: str) -> None:
    _call(client, "PATCH", f"/v2/concurrency_limits/{name}", json={"limit": SLOTS})


def _increment(client, name: str, slots: int) -> httpx.Response:
    """Take slots with a lease: one POST, and more only while the server is busy.

    A Prefect server on SQLite answers 503 when its database is locked by another write;
    Prefect's client then sleeps 2, 4, 8... seconds before trying again, which was most of
    a 50-mailbox fan-out's time (bench fanout: 65 such answers, 259 s slept). The lock
    tries again itself after 20 ms to 1 s, and at once after a dropped connection. Any other
    answer but 200, 422 and 423 (a server that wants a CSRF token, say), or a connection
    that keeps failing, goes through Prefect's client as usual.
    """
    holder = _holder()
    transport = getattr(client, "_client", None)  # the client's own httpx.Client
    if isinstance(transport, httpx.Client):
        body = {"names": [name], "slots": slots, "mode": "concurrency",
                "lease_duration": LEASE_SECONDS}
        if holder is not None:
            body["holder"] = holder.model_dump(mode="json")
        dropped = 0
        for attempt in range(BUSY_RETRIES):
            request = transport.build_request(
                "POST", "/v2/concurrency_limits/increment-with-lease", json=body)
            try:
                response = httpx.Client.send(transport, request)  # without Prefect's retries
            except httpx.TransportError as exc:
                # Most often a kept-alive connection the server closed as it was reused;
                # Prefect's client would sleep 2 s before trying again.
                dropped += 1
                if not isinstance(exc, _DROPPED) or dropped > DROPPED_RETRIES:
                    break
                time.sleep(random.uniform(0.01, 0.05))
                continue
            if response.status_code in (200, 422, 423):
                response.raise_for_status()  # 423 Locked: the caller waits its turn
                return response
            if response.status_code != 503:
                break
            time.sleep(random.uniform(0.02, 0.1) * min(2 ** attempt, 10))
    holder_argument = {"holder": holder} if holder is not None else {}
    return client.increment_concurrency_slots_with_lease(
        names=[name], slots=slots, mode="concurrency", lease_duration=LEASE_SECONDS,
        **holder_argument)


def _create_limit(client, name: str) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    try:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name,
                                                                            limit=SLOTS))
    except ObjectAlreadyExists:
        pass  # another run created it first


def _holder():
    """The task run (or flow run) that holds the slots, shown in the Prefect UI; None with
    older Prefect releases (3.4), whose leases name no holder."""
    try:
        from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    except ImportError:
        return None
    from prefect.context import FlowRunContext, TaskRunContext

    task_run = TaskRunContext.get()
    if task_run and task_run.task_run:
        return ConcurrencyLeaseHolder(type="task_run", id=task_run.task_run.id)
    flow_run = FlowRunContext.get()
    if flow_run and flow_run.flow_run:
        return ConcurrencyLeaseHolder(type="flow_run", id=flow_run.flow_run.id)
    return None
