"""Prefect's API as a run of this package uses it.

Mail never waits on Prefect: the calls that only report (progress, artifacts) get a short
deadline and no retries, and after the first failure the rest of the run skips them, with
one log line rather than a minute of retries per call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prefect.settings import (
    PREFECT_API_REQUEST_TIMEOUT,
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
)

#: Seconds for each reporting call (per connect, read and write).
CALL_TIMEOUT = 5.0

T = TypeVar("T")


#: Settings with our updates, by the settings they update (building one costs ~40 ms).
_QUIET: list[tuple[object, float, object]] = []


@contextlib.contextmanager
def no_retries(timeout: float = CALL_TIMEOUT) -> Iterator[None]:
    """Prefect clients made and used inside: no retries, and ``timeout`` for clients
    made here (a client made before keeps its own)."""
    from prefect.context import SettingsContext

    context = SettingsContext.get()
    quiet = next((q for current, seconds, q in _QUIET
                  if current is context.settings and seconds == timeout), None)
    if quiet is None:
        quiet = context.settings.copy_with_update(
            updates={PREFECT_CLIENT_MAX_RETRIES: 0, PREFECT_API_REQUEST_TIMEOUT: timeout})
        _QUIET[:] = [*_QUIET[-7:], (context.settings, timeout, quiet)]
    with SettingsContext(profile=context.profile, settings=quiet):
        yield


def api_url() -> str:
    return PREFECT_API_URL.value() or "(not set: a temporary local Prefect server)"


def client(timeout: float = CALL_TIMEOUT):
    """A synchronous Prefect client of its own, with ``timeout`` for each call."""
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True, httpx_settings={"timeout": timeout})


class Reporter:
    """The run's reporting calls: each best effort, and all skipped after the first failure
    (logged once, with PREFECT_API_URL)."""

    def __init__(self, configuration: str, logger: logging.Logger | logging.LoggerAdapter):
        self.configuration = configuration
        self.logger = logger
        #: The first failure: (what was being done, the exception).
        self.failure: tuple[str, BaseException] | None = None
        self._lock = threading.Lock()
        self._client = None

    def call(self, what: str, function: Callable[..., T], *args: Any) -> T | None:
        """``function(client, *args)``, or None when Prefect failed now or before."""
        if self.failure is not None:
            return None
        try:
            with no_retries():
                if self._client is None:
                    self._client = client().__enter__()
                return function(self._client, *args)
        except Exception as exc:
            self.failed(what, exc)
            return None

    def failed(self, what: str, exc: BaseException) -> None:
        with self._lock:
            first = self.failure is None
            if first:
                self.failure = (what, exc)
        if first:
            self.logger.warning(
                "%s: %s failed: the Prefect API at %s: %s: %s; progress and artifacts are "
                "skipped for the rest of this run (the mail is not affected)",
                self.configuration, what, api_url(), type(exc).__name__, exc)

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.__exit__(None, None, None)
            self._client = None
