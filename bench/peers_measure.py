"""Sizes, timing and the machine's description for the peer benchmark."""

from __future__ import annotations

import logging
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

from bench.bench_session import fresh
from bench.common import median_seconds
from bench.peers_tools import Run


@dataclass(frozen=True)
class Sizes:
    """Workload sizes; each can be overridden by ``POP3MAIL_BENCH_<NAME>`` (upper case),
    e.g. ``POP3MAIL_BENCH_SMALL_MESSAGES=100 POP3MAIL_BENCH_WORKLOADS=af`` for a quick run."""

    workloads: str = "abcdefg"
    repeat: int = 3
    small_messages: int = 1000
    large_messages: int = 20
    attachment_bytes: int = 1 << 20
    wan_messages: int = 1000
    huge_bytes: int = 100 << 20
    mailboxes: int = 50
    per_mailbox: int = 100
    overhead_messages: int = 10

    @classmethod
    def from_environment(cls) -> Sizes:
        values = {}
        for item in fields(cls):
            raw = os.environ.get(f"POP3MAIL_BENCH_{item.name.upper()}")
            if raw:
                values[item.name] = raw if item.type == "str" else int(raw)
        return cls(**values)

    def is_full(self) -> bool:
        return self == Sizes(workloads=self.workloads)


@dataclass
class Outcome:
    """One tool on one workload: wall times of each run, peak RSS of a child tool."""

    workload: str
    tool: str
    times: list[float] = field(default_factory=list)
    median: float = 0.0
    peak_rss_kb: int = 0
    discarded: int = 0
    skipped: str = ""
    #: Why a run failed: the tool could not do the work (the benchmark goes on).
    failed: str = ""

    @property
    def key(self) -> str:
        return self.workload[1]  # "(a) ..." -> "a"

    def line(self) -> str:
        if self.skipped:
            return f"{self.workload} | {self.tool}: skipped, {self.skipped}"
        if self.failed:
            return f"{self.workload} | {self.tool}: FAILED after {len(self.times)} run(s): " \
                   f"{self.failed}"
        runs = ", ".join(f"{t:.2f}" for t in self.times)
        note = f"; {self.discarded} run(s) discarded for a tool bug" if self.discarded else ""
        return f"{self.workload} | {self.tool}: median {self.median:.3f} s ({runs}){note}"


def measure(workload: str, tool: str, run: Callable[[Path], Run], out: Path, expected: int,
            repeat: int) -> Outcome:
    """Median wall time of ``run(out)`` over ``repeat`` runs, each into an emptied ``out``;
    every run must save ``expected`` messages."""
    outcome = Outcome(workload, tool)
    times = outcome.times

    def timed() -> None:
        start = time.perf_counter()
        result = run(out)
        times.append(time.perf_counter() - start - result.discarded_seconds)
        outcome.discarded += result.discarded
        if result.saved != expected:
            raise RuntimeError(f"{workload}: {tool} saved {result.saved} of {expected} messages")
        outcome.peak_rss_kb = max(outcome.peak_rss_kb, result.peak_rss_kb)

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        median_seconds(timed, repeat, setup=lambda: fresh(out))
    except Exception as exc:  # one tool failing must not hide the others' figures
        outcome.failed = f"{type(exc).__name__}: {str(exc)[:300]}"
        return outcome
    outcome.median = statistics.median(times)  # of the tool's own time, checks excluded
    return outcome


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return "not installed"
    text = (done.stdout or done.stderr).strip().splitlines()
    return next((line for line in text if "release" in line or line[:1].isdigit()
                 or line.startswith("getmail")), text[0] if text else "?")


def describe_machine() -> dict[str, str]:
    """What the figures were measured on, with the load average at this moment."""
    one, five, fifteen = os.getloadavg()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.system()} "
                   f"{platform.release()}",
        "python": platform.python_version(),
        "dovecot": _version(["dovecot", "--version"]),
        "getmail6": _version(["getmail", "--version"]),
        "fetchmail": _version(["fetchmail", "--version"]),
        "load average": f"{one:.2f} {five:.2f} {fifteen:.2f}",
    }


def quiet_prefect_console() -> None:
    """Flow and task run logs still go to the Prefect API, as in production; only the
    console copy is limited to warnings, so the benchmark's own lines stay readable."""
    import prefect.main  # noqa: F401  (configures Prefect's logging)
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in
                                      list(logging.Logger.manager.loggerDict))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.WARNING)
