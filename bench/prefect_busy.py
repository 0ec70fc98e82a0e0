"""Which Prefect API calls a benchmark makes, and which the server answered "busy" (503).

``with api_calls() as calls: ...`` counts every response the Prefect client receives in
this process, by method and path (ids folded to ``{id}``); ``calls.busy`` are the 503s
and the requests that got no answer (a connection the server closed, say, named by the
exception), after which the client sleeps and tries again. For benchmarks only: it wraps httpx's
``send``, which Prefect's sync and async clients both go through.
"""

from __future__ import annotations

import contextlib
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
