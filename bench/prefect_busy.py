"""Which Prefect API calls a benchmark makes, and which the server answered "busy" (503).

``with api_calls() as calls: ...`` counts every response the Prefect client receives in
this process, by method and path (ids folded to ``{id}``); ``calls.busy`` are the 503s
and the requests that got no answer (a connection the server closed, say, named by the
exception), after which the client sleeps and tries again. For benchmarks only: it wraps httpx's
``send``, which Prefect's sync and async clients both go through. ``Retries`` counts the
client's retries from its debug log, and ``dovecot_and_prefect`` starts what the Prefect-layer
benchmarks run against.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections import Counter
from collections.abc import Iterator

_ID = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class Calls:
    def __init__(self):
        self.all: Counter[str] = Counter()
        self.busy: Counter[str] = Counter()

    def record(self, request, status: int | None, error: str = "") -> None:
        key = f"{request.method} {_ID.sub('/{id}', request.url.path)}"
        self.all[key] += 1
        if status == 503:
            self.busy[key] += 1
        elif error:
            self.busy[f"{key} ({error})"] += 1

    def take(self) -> tuple[Counter[str], Counter[str]]:
        taken = (self.all, self.busy)
        self.all, self.busy = Counter(), Counter()
        return taken


def summary(counts: Counter[str], top: int = 6) -> str:
    return ", ".join(f"{key} x{n}" for key, n in counts.most_common(top)) or "none"


@contextlib.contextmanager
def api_calls() -> Iterator[Calls]:
    import httpx

    calls = Calls()
    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send

    def send(self, request, *args, **kwargs):
        try:
            response = sync_send(self, request, *args, **kwargs)
        except httpx.TransportError as exc:
            calls.record(request, None, type(exc).__name__)
            raise
        calls.record(request, response.status_code)
        return response

    async def asend(self, request, *args, **kwargs):
        try:
            response = await async_send(self, request, *args, **kwargs)
        except httpx.TransportError as exc:
            calls.record(request, None, type(exc).__name__)
            raise
        calls.record(request, response.status_code)
        return response

    httpx.Client.send, httpx.AsyncClient.send = send, asend
    try:
        yield calls
    finally:
        httpx.Client.send, httpx.AsyncClient.send = sync_send, async_send


_SLEPT = re.compile(r"Another attempt will be made in ([0-9.]+)s")
_STATUS = re.compile(r"retryable status code (\d+)")


class Retries(logging.Handler):
    """Counts the Prefect client's retries and the seconds it slept before them, by cause:
    the status code it was answered, or the exception it got instead of an answer."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0
        self.seconds = 0.0
        self.causes: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if m := _SLEPT.search(text):
            self.count += 1
            self.seconds += float(m[1])
            self.causes[_cause(record, text)] += 1

    def take(self) -> str:
        causes = ", ".join(f"{cause} x{n}" for cause, n in self.causes.most_common())
        text = f"{self.count} ({self.seconds:.1f} s{'; ' + causes if causes else ''})"
        self.count, self.seconds, self.causes = 0, 0.0, Counter()
        return text


def _cause(record: logging.LogRecord, text: str) -> str:
    if record.exc_info and record.exc_info[0]:
        return record.exc_info[0].__name__
    status = _STATUS.search(text)
    return status[1] if status else "?"


@contextlib.contextmanager
def dovecot_and_prefect(name: str) -> Iterator[tuple[object, object, Retries] | None]:
    """``bench.common.dovecot_and_folder`` with a temporary Prefect server (the default local
    server, SQLite) around it, its console quiet and its client's retries counted: yields
    (dovecot, folder, retries), or None where Dovecot cannot run."""
    from prefect.testing.utilities import prefect_test_harness

    from bench.common import dovecot_and_folder
    from bench.peers_measure import quiet_prefect_console

    with dovecot_and_folder(name) as started:
        if started is None:
            yield None
            return
        retries = Retries()
        client_log = logging.getLogger("prefect.client")
        with prefect_test_harness(server_startup_timeout=120):
            quiet_prefect_console()
            client_log.setLevel(logging.DEBUG)
            client_log.addHandler(retries)
            try:
                yield (*started, retries)
            finally:
                client_log.removeHandler(retries)
