"""Hostile messages against ordinary ones: for the worst case of each class in
tests/hostile.py, the time (median of 5), peak traced memory and bytes written to disk of
MessageStore.save, as ratios to an ordinary message of the same size (text, HTML for the
HTML classes, one plain base64 attachment for the uuencode and winmail.dat classes),
measured in the same run; then the worst winmail.dat and uuencode cases. "disk" is what the
message's folder holds (the original included) as a multiple of the message's size.

    .venv/bin/python -m bench hostile                 # every class, 1 MB
    POP3MAIL_BENCH_SIZE=4194304 .venv/bin/python -m bench hostile
    .venv/bin/python -m bench.bench_hostile many_parts html_unclosed_tags

A ratio far above the others, or one that grows with the size, marks work that is not
linear in the message.
"""

from __future__ import annotations

import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

from bench.common import median_seconds, table
from prefect_pop3mail.tasks.pop3.models import SaveOptions
from prefect_pop3mail.tasks.pop3.storage.store import MessageStore
from tests.hostile import CLASSES, ordinary

SIZE = int(os.environ.get("POP3MAIL_BENCH_SIZE", 1 << 20))
REPEAT = 5


class _Saver:
    def __init__(self, root: Path):
        self.store = MessageStore(SaveOptions(directory=root), "bench@hostile:110", "bench")
        self.count = 0

    def __call__(self, data: bytes) -> int:
        """Save ``data``; returns the bytes its folder holds."""
        self.count += 1
        incoming = self.store.incoming()
        incoming.write(data)
        incoming.finish()
        mail = self.store.save(incoming, f"u{self.count}")
        return sum(p.stat().st_size for p in Path(mail.folder).rglob("*") if p.is_file())


def peak_bytes(save: _Saver, data: bytes) -> int:
    tracemalloc.start()
    try:
        save(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(save: _Saver, data: bytes) -> tuple[float, int, float]:
    """Median seconds, peak traced bytes, and disk as a multiple of the message's size."""
    disk = save(data) / len(data)
    return median_seconds(lambda: save(data), repeat=REPEAT), peak_bytes(save, data), disk


def main(names: list[str] | None = None) -> None:
    names = names or sorted(CLASSES)
    rows = []
    baselines: dict[tuple[str, int], tuple[float, int, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        save = _Saver(Path(tmp))
        for name in names:
            case = CLASSES[name]
            data = case.build(SIZE)
            key = (case.baseline, len(data))
            if key not in baselines:
                baselines[key] = measure(save, ordinary(len(data), case.baseline))
            base_time, base_peak, base_disk = baselines[key]
            seconds, peak, disk = measure(save, data)
            rows.append({
                "class": name, "size": f"{len(data) / 1e6:.2f} MB", "baseline": case.baseline,
                "time": f"{seconds * 1000:.0f} ms", "x time": f"{seconds / base_time:.1f}",
                "peak": f"{peak / 1e6:.1f} MB", "x peak": f"{peak / max(base_peak, 1):.1f}",
                "disk": f"{disk:.1f}", "x disk": f"{disk / base_disk:.1f}",
            })
            print(f"  {name}: {seconds * 1000:.0f} ms", file=sys.stderr, flush=True)
    print(f"MessageStore.save, hostile vs ordinary of the same size (medians of {REPEAT}; "
          "peak = tracemalloc peak of one save; disk = the folder's bytes / the message's)")
    print(table(rows, ["class", "size", "baseline", "time", "x time", "peak", "x peak",
                       "disk", "x disk"]))
    for family, what in (("tnef_", "winmail.dat (TNEF)"), ("uuencode_", "uuencode")):
        mine = [r for r in rows if r["class"].startswith(family)]
        if mine:
            slow = max(mine, key=lambda r: float(r["x time"]))
            big = max(mine, key=lambda r: float(r["x peak"]))
            print(f"{what} worst case against a plain attachment of the same size: "
                  f"{slow['x time']}x time ({slow['class']}), {big['x peak']}x peak ({big['class']})")


if __name__ == "__main__":
    main(sys.argv[1:])
