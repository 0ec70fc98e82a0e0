"""The engine logs to the "pop3mail" logger, which knows nothing of Prefect; while a task
runs, what it logs from the task's thread goes to the run's logs too (the UI shows them)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

ENGINE_LOGGER = "pop3mail"


class _ToRunLogger(logging.Handler):
    def __init__(self, target: logging.Logger | logging.LoggerAdapter):
        super().__init__()
        self.target = target
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        # Other mailboxes' tasks run in other threads of the same process.
        return record.thread == self.thread and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.target.log(record.levelno, "%s", record.getMessage())
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def engine_logs_to_run(target: logging.Logger | logging.LoggerAdapter) -> Iterator[None]:
    """Forward the engine's records of this thread to ``target`` (a run logger)."""
    if isinstance(target, logging.Logger) and target.name.startswith(ENGINE_LOGGER):
        yield  # no run: the engine's logger is the target already
        return
    handler = _ToRunLogger(target)
    engine = logging.getLogger(ENGINE_LOGGER)
    engine.addHandler(handler)
    try:
        yield
    finally:
        engine.removeHandler(handler)
