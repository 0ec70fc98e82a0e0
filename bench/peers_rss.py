"""(d) Peak memory receiving one huge message: each Python client in a fresh process, the
peers as child processes (their peak RSS from ``wait4``)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import child_peak_rss
from bench.peers_tools import Mailbox, Run

CHILD = "from bench.peers_rss_child import main; main()"


def _mb(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def rss_rows(box: Mailbox, top: Path, size: int,
             peers: dict[str, Callable[[Mailbox, Path], Run]]) -> list[dict]:
    rows = []
    for mode, tool in (("engine", "pop3mail engine+store"), ("poplib+email", "poplib+email")):
        out = top / mode
        result = child_peak_rss(CHILD, mode, box.host, str(box.port), box.user, box.password,
                                box.ca_file, str(out))
        shutil.rmtree(out, ignore_errors=True)
        if result["saved"] != 1:
            raise RuntimeError(f"(d): {tool} saved {result['saved']} of 1 message")
        growth = result["peak_kb"] - result["baseline_kb"]
        rows.append({"tool": tool, "seconds": f"{result['seconds']:.2f}",
                     "baseline MB": _mb(result["baseline_kb"]), "peak MB": _mb(result["peak_kb"]),
                     "growth MB": _mb(growth), "growth / message": f"{growth * 1024 / size:.2f}x",
                     "growth_kb": growth})
    for tool, run in peers.items():
        out = top / tool
        out.mkdir(parents=True)
        start = time.perf_counter()
        result = run(box, out)
        seconds = time.perf_counter() - start
        shutil.rmtree(out, ignore_errors=True)
        if result.saved != 1:
            raise RuntimeError(f"(d): {tool} saved {result.saved} of 1 message")
        rows.append({"tool": f"{tool} (whole process)", "seconds": f"{seconds:.2f}",
                     "peak MB": _mb(result.peak_rss_kb),
                     "growth / message": f"{result.peak_rss_kb * 1024 / size:.2f}x (peak)"})
    return rows
