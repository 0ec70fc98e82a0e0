"""The engine logs to the "pop3mail" logger, which knows nothing of Prefect; while a task
runs, what it logs goes to the run's logs too (the UI shows them): from the task's thread,
and from the threads the run starts in a copy of its context (the lock's renewals, the
progress bar, the events)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator

ENGINE_LOGGER = "pop3mail"

#: The handler of the run whose context this is.
_current: contextvars.ContextVar[_ToRunLogger | None] = contextvars.ContextVar(
    "pop3mail_run_logs", default=None)


class _ToRunLogger(logging.Handler):
    def __init__(self, target: logging.Logger | logging.LoggerAdapter):
        super().__init__()
        self.target = target
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        # Other mailboxes' tasks run in other threads of the same process.
        ours = record.thread == self.thread or _current.get() is self
        return ours and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.target.log(record.levelno, "%s", record.getMessage())
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def engine_logs_to_run(target: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """Forward the engine's records of this run to ``target`` (a run logger)."""
    if isinstance(target, logging.Logger) and target.name.startswith(ENGINE_LOGGER):
        yield  # no run: the engine's logger is the target already
        return
    handler = _ToRunLogger(target)
    engine = logging.getLogger(ENGINE_LOGGER)
    engine.addHandler(handler)
    token = _current.set(handler)
    try:
        yield
    finally:
        _current.reset(token)
        engine.removeHandler(handler)
