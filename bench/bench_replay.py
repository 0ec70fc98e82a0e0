"""Replay: time per message and peak memory to replay 100,000 saved messages, against a
replay of 10,000 in the same run (memory must stay flat: the replay streams).

A message is saved for real (the store, with its marker and journal record); the save
directory is then filled with copies of its folder's marker under 100,000 folders and
journal records, as 100,000 saved messages leave them (the files the markers name are not
copied: replay reads markers, never the mail). Each replay runs in a fresh child process
that iterates the engine's ``SavedMail`` over the whole window, holding nothing; the
child reports the peak of what Python allocated during the replay (tracemalloc, in runs
of their own) and its peak RSS above what it had after opening the save directory.
Medians of ``REPEAT`` runs each.

Run: .venv/bin/python -m bench replay   (BENCH_REPLAY_N=20000 for a quicker run)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import child_peak_rss, table

LARGE = int(os.environ.get("BENCH_REPLAY_N", "100000"))
BASELINE = max(LARGE // 10, 1)
REPEAT = 3
KEY = "bench@localhost:110"

CHILD = """
import json, resource, sys, time, tracemalloc
from pathlib import Path
from prefect_pop3mail.tasks.pop3.models import SaveOptions
from prefect_pop3mail.tasks.pop3.replay import SavedMail
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
count = 0
traced = sys.argv[3] == "memory"
with SavedMail("bench", SaveOptions(directory=Path(sys.argv[1])), sys.argv[2]) as saved:
    baseline = rss()
    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    for mail in saved:
        count += 1
    seconds = time.perf_counter() - start
    heap = tracemalloc.get_traced_memory()[1] if traced else 0
print(json.dumps({"baseline": baseline, "peak": rss(), "seconds": seconds, "count": count,
                  "heap": heap, "problems": saved.report.problems_count}))
"""


def _template(root: Path) -> tuple[dict, str, str]:
    """One message saved for real: its marker, its folder and its journal record's head."""
    from prefect_pop3mail.tasks.pop3.models import SaveOptions
    from prefect_pop3mail.tasks.pop3.storage.store import MessageStore
    from tests.conftest import sample_message

    with MessageStore(SaveOptions(directory=root), KEY, "bench") as store:
        incoming = store.incoming()
        incoming.write(sample_message(1, body="Hello.\n" * 40))
        incoming.finish()
        head = incoming.head_digest
        mail = store.save(incoming, "template")
    folder = Path(mail.folder).name
    marker = json.loads((root / folder / ".complete").read_bytes())
    shutil.rmtree(root)
    return marker, folder, head


def fill(root: Path, count: int) -> None:
    """A save directory as ``count`` saved messages leave it (markers and journal)."""
    from prefect_pop3mail.tasks.pop3.storage.journal import Saved, _save_line, mailbox_digest
    from prefect_pop3mail.tasks.pop3.storage.store import stable_id

    marker, template, head = _template(root)
    text = json.dumps(marker)
    state = root / ".pop3mail"
    state.mkdir(parents=True, mode=0o700)
    saved_at = datetime(2026, 12, 1, tzinfo=UTC)
    with open(state / f"journal-{mailbox_digest(KEY)}.log", "wb") as journal:
        for i in range(count):  # bounded by count
            mail_id = stable_id(KEY, f"u{i}", marker["sha256"])  # as replay checks it
            folder = f"{template[:15]}-{mail_id[:12]}"
            data = (text.replace(template, folder).replace(marker["id"], mail_id)
                    .replace('"uidl": "template"', f'"uidl": "u{i}"'))
            (root / folder).mkdir(mode=0o700)
            (root / folder / ".complete").write_text(data)
            stamp = (saved_at + timedelta(milliseconds=i)).strftime("%Y%m%dT%H%M%S.%fZ")
            journal.write(_save_line(f"u{i}", Saved(folder, marker["size"], head, False,
                                                    stamp)))


def measure(roots: list[Path]) -> list[dict]:
    """Time runs, then memory runs (traced: every Python allocation's peak, which RSS
    hides below the peak the imports left), the sizes interleaved run by run so that the
    load of the machine falls on both alike."""
    timed: dict[Path, list[dict]] = {root: [] for root in roots}
    traced: dict[Path, list[dict]] = {root: [] for root in roots}
    for runs, mode in ((timed, "time"), (traced, "memory")):
        for _ in range(REPEAT):
            for root in roots:
                runs[root].append(child_peak_rss(CHILD, str(root), KEY, mode))
    rows = []
    for root in roots:
        count = timed[root][0]["count"]
        every = timed[root] + traced[root]
        assert all(r["count"] == count and not r["problems"] for r in every), every
        rows.append({
            "messages": count,
            "us_per_message": statistics.median(r["seconds"] for r in timed[root])
            / count * 1e6,
            "heap_peak_mb": statistics.median(r["heap"] for r in traced[root]) / 2**20,
            "rss_growth_mb": statistics.median(r["peak"] - r["baseline"]
                                               for r in timed[root]) / 2**20,
        })
    return rows


def main() -> None:
    top = Path(tempfile.mkdtemp(prefix="pop3mail-bench-replay-"))
    try:
        roots = [top / f"n{count}" for count in (BASELINE, LARGE)]
        for root, count in zip(roots, (BASELINE, LARGE), strict=True):
            fill(root, count)
        rows = measure(roots)
        small, large = rows
        print(table([{k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in r.items()}
                     for r in rows], ["messages", "us_per_message", "heap_peak_mb",
                                                "rss_growth_mb"]))
        print(f"time per message, {large['messages']:,} vs {small['messages']:,}: "
              f"{large['us_per_message'] / small['us_per_message']:.2f}x")
        print(f"peak memory of the replay, {large['messages']:,} vs {small['messages']:,}: "
              f"{large['heap_peak_mb']:.2f} MB vs {small['heap_peak_mb']:.2f} MB, "
              f"{large['heap_peak_mb'] / small['heap_peak_mb']:.2f}x for "
              f"{large['messages'] // small['messages']}x the messages")
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
