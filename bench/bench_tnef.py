"""Why winmail.dat has a reader of our own: tnefparse (the usual Python TNEF library, a
test dependency here) against tasks/pop3/message/tnef.py on hostile TNEF, each parse in a child
process with a time limit and a 2 GB address-space limit.

    .venv/bin/python -m bench tnef

Per case and size: wall time of one parse (median of 3), peak RSS of the child, and how
it ended. A time that grows faster than the size is not linear; "killed" is the time limit.
"""

from __future__ import annotations

import io
import json
import logging
import re
import resource
import statistics
import struct
import subprocess
import sys
import time

from bench.common import table
from tests import tnef_writer as tw

LIMIT_SECONDS = 30
LIMIT_BYTES = 2 << 30


def tiny_attributes(size: int) -> bytes:
    """Empty attributes to the end (tnefparse copies the rest of the stream for each)."""
    one = tw.attribute(tw.MESSAGE, (0x8004, 0x0001), b"")
    return tw.tnef([]) + one * (size // len(one))


def huge_property_count(size: int) -> bytes:
    """A file, then an attachment whose properties claim 2**32-1 entries in 12 bytes."""
    bad = tw.attribute(tw.ATTACHMENT, tw.ATT_ATTACHMENT, tw.properties(count=0xFFFFFFFF)
                       + struct.pack("<HHI", tw.PT_LONG, 0x1234, 0))
    return tw.tnef([tw.File("a.bin", b"x" * size)]) + bad


def huge_multi_value_count(size: int) -> bytes:
    """A property claiming 2**31-1 short values in 4 bytes."""
    bad = tw.attribute(tw.ATTACHMENT, tw.ATT_ATTACHMENT, tw.properties(
        struct.pack("<HHI", tw.PT_SHORT | tw.MV, 0x1234, 0x7FFFFFFF)))
    return tw.tnef([tw.File("a.bin", b"x" * size)]) + bad


def nested_items(size: int) -> bytes:
    """Outlook items in Outlook items, 2,000 deep, a file at the bottom."""
    inner = tw.tnef([tw.File("deep.bin", b"x" * size)])
    for _ in range(2000):
        inner = tw.tnef([tw.File("item", embedded=inner)])
    return inner


def one_big_file(size: int) -> bytes:
    """The ordinary case, for scale."""
    return tw.tnef([tw.File("big.bin", b"x" * size)])


CASES = {f.__name__: f for f in (one_big_file, tiny_attributes, huge_property_count,
                                 huge_multi_value_count, nested_items)}
SIZES = {"tiny_attributes": [1 << 16, 1 << 18, 1 << 20]}


def child(reader: str, case: str, size: int) -> None:
    logging.disable(logging.CRITICAL)
    data = CASES[case](size)
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))
    times, outcome = [], "ok"
    for _ in range(3):  # once only when slow
        if times and times[-1] > 1:
            break
        start = time.perf_counter()
        try:
            if reader == "tnefparse":
                import tnefparse

                files = len(tnefparse.TNEF(data).attachments)
            else:
                from prefect_pop3mail.tasks.pop3.message import tnef

                found = tnef.read_tnef(io.BytesIO(data), len(data))
                files = len(found.files)
            outcome = f"{files} files"
        except BaseException as exc:  # what the library does with it is the measurement
            outcome = type(exc).__name__
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": statistics.median(times), "peak": peak, "outcome": outcome,
                      "bytes": len(data)}))


def run(reader: str, case: str, size: int) -> dict:
    try:
        done = subprocess.run([sys.executable, "-m", "bench.bench_tnef", reader, case, str(size)],
                              capture_output=True, text=True, timeout=LIMIT_SECONDS)
    except subprocess.TimeoutExpired:
        return {"outcome": f"killed after {LIMIT_SECONDS} s"}
    lines = done.stdout.strip().splitlines()
    if lines:
        return json.loads(lines[-1])
    errors = re.findall(r"\b\w+Error\b", done.stderr)
    return {"outcome": f"{errors[-1] if errors else 'exit ' + str(done.returncode)}, process died"}


def main() -> None:
    rows = []
    for case in CASES:
        for size in SIZES.get(case, [1 << 16]):
            for reader in ("tnefparse", "pop3mail"):
                got = run(reader, case, size)
                rows.append({
                    "case": case, "file data": f"{size >> 10} kB", "reader": reader,
                    "stream": f"{got['bytes'] / 1e6:.2f} MB" if "bytes" in got else "",
                    "time": f"{got['seconds'] * 1000:.1f} ms" if "seconds" in got else "",
                    "peak RSS": f"{got['peak'] / 1e6:.0f} MB" if "peak" in got else "",
                    "outcome": got["outcome"],
                })
                print(f"  {case} {size} {reader}: {got['outcome']}", file=sys.stderr, flush=True)
    print("One parse of a hostile winmail.dat (median of up to 3, child process, "
          f"{LIMIT_BYTES >> 30} GB address space)")
    print(table(rows, ["case", "file data", "reader", "stream", "time", "peak RSS", "outcome"]))


if __name__ == "__main__":
    if len(sys.argv) == 4:
        child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
    else:
        main()
