"""Shared measuring helpers for benchmarks: medians, ratios, peak RSS of a child process."""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def median_seconds(run: Callable[[], object], repeat: int = 5, setup: Callable[[], object] | None = None) -> float:
    """Median wall time of ``run`` over ``repeat`` runs; ``setup`` runs untimed before each."""
    times = []
    for _ in range(repeat):
        if setup:
            setup()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def child_peak_rss(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON object. Adds the child's
    baseline RSS (after imports, before work) and peak RSS in bytes when the code reports
    ``baseline_rss`` itself via ``resource``."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    line = " | ".join(c.ljust(widths[c]) for c in columns)
    sep = "-+-".join("-" * widths[c] for c in columns)
    body = "\n".join(" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows)
    return f"{line}\n{sep}\n{body}"


@contextlib.contextmanager
def dovecot_and_folder(name: str) -> Iterator[tuple[object, Path] | None]:
    """A started Dovecot and an empty temporary folder, both removed afterwards; None (and
    the reason printed) where Dovecot cannot run, as on a laptop without root."""
    from tests.servers.dovecot import dovecot_unavailable_reason, start_dovecot

    reason = dovecot_unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        yield None
        return
    top = Path(tempfile.mkdtemp(prefix=f"pop3mail-bench-{name}-"))
    dovecot = start_dovecot()
    try:
        yield dovecot, top
    finally:
        dovecot.stop()
        shutil.rmtree(dovecot.root, ignore_errors=True)
        shutil.rmtree(top, ignore_errors=True)
