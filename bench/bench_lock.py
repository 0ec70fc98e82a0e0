"""The per-mailbox lock: ways of holding a Prefect global concurrency slot, uncontended.

Each variant takes and frees the slot of one mailbox ``REPEAT`` times against one
temporary Prefect server (``prefect_test_harness``, SQLite, the default local server), in
one run; the table gives the median and the slowest. Two cases: the same mailbox again (a
schedule's steady state) and a new mailbox each time (the first run of a configuration).

Run: ``.venv/bin/python -m bench lock``.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import contextlib  # noqa: E402
import itertools  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

from bench.common import table  # noqa: E402

REPEAT = int(os.environ.get("POP3MAIL_BENCH_REPEAT", "21"))
_names = (f"bench-lock-{i}" for i in itertools.count())


def _ensure(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextlib.contextmanager
def before(name: str) -> Iterator[None]:
    """The lock as it was: the limit read (or created) every run, then ``concurrency()``."""
    from prefect.concurrency.sync import concurrency

    _ensure(name)
    with concurrency(name, occupy=1, timeout_seconds=600, strict=True, lease_duration=60):
        yield


_known: set[str] = set()


@contextlib.contextmanager
def concurrency_cached(name: str) -> Iterator[None]:
    """``concurrency()`` as before, the limit's existence remembered per process."""
    from prefect.concurrency.sync import concurrency

    if name not in _known:
        _ensure(name)
        _known.add(name)
    with concurrency(name, occupy=1, timeout_seconds=600, strict=True, lease_duration=60):
        yield


@contextlib.contextmanager
def lease_only(name: str) -> Iterator[None]:
    """The lock before it survived lost leases (issue #30): take the slots with a lease,
    give them back; no holder record, no check of the lease on the way out."""
    from prefect.client.orchestration import get_client

    from prefect_pop3mail.tasks.lock import SLOTS, _create_limit, _increment, lock_name

    with get_client(sync_client=True) as client:
        granted = _increment(client, lock_name(name), SLOTS).json()
        if not granted.get("limits"):
            _create_limit(client, lock_name(name))
            granted = _increment(client, lock_name(name), SLOTS).json()
        try:
            yield
        finally:
            client.release_concurrency_slots_with_lease(granted["lease_id"])


def _variants() -> dict[str, Callable[[str], contextlib.AbstractContextManager]]:
    from prefect_pop3mail.tasks.lock import mailbox_lock

    return {
        "before: read limit + concurrency(strict)": before,
        "concurrency(strict), limit cached": concurrency_cached,
        "lease only (2 calls, before #30)": lease_only,
        "now: lock.mailbox_lock (lease, holder record, checked release)": mailbox_lock,
    }


def _time(lock: Callable[[str], contextlib.AbstractContextManager], names: Iterator[str]
          ) -> list[float]:
    """Inside a client context, as in a task run (Prefect's task engine opens one)."""
    from prefect.context import SyncClientContext

    times = []
    with SyncClientContext.get_or_create():
        for name in itertools.islice(names, REPEAT):
            start = time.perf_counter()
            with lock(name):
                pass
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    from prefect.testing.utilities import prefect_test_harness

    rows = []
    with prefect_test_harness(server_startup_timeout=120):
        for label, lock in _variants().items():
            same = next(_names)
            _time(lock, itertools.repeat(same, 2))  # warm: the limit exists, the client is up
            for case, names in (("same mailbox", itertools.repeat(same)),
                                ("new mailbox each time", _names)):
                times = _time(lock, names)
                rows.append({"variant": label, "case": case,
                             "median ms": f"{statistics.median(times) * 1e3:.1f}",
                             "max ms": f"{max(times) * 1e3:.1f}"})
                print(rows[-1], flush=True)
    print("\n" + table(rows, ["variant", "case", "median ms", "max ms"]))
    print(f"\n{REPEAT} acquisitions + releases per line, uncontended; load average "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
