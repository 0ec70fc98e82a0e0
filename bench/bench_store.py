"""Saving messages: memory for a large attachment, time per small message.

1. Peak RSS growth while saving a message with a 200 MB attachment (base64, ~270 MB on
   the wire): the streaming store against the email package (parse, decode, write), each
   in a fresh child process. Target: under 100 MB for the store.
2. Time per message to save a 4 KB message with text and an attachment, against writing
   the original only (what a poplib loop that saves originals does) and against the store
   told to keep the original only. Median of several runs of 300 messages each.

Run: .venv/bin/python -m bench store   (BENCH_STORE_MB=50 for a quicker memory run)
"""

from __future__ import annotations

import base64
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import child_peak_rss, table

ATTACHMENT_MB = int(os.environ.get("BENCH_STORE_MB", "200"))
SMALL_MESSAGES = 300
REPEAT = 5

_CHILD_PRELUDE = """
import json, resource, sys
from pathlib import Path
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""

STORE_CHILD = _CHILD_PRELUDE + """
from prefect_pop3mail.tasks.pop3.models import SaveOptions
from prefect_pop3mail.tasks.pop3.storage.store import MessageStore
source, out = Path(sys.argv[1]), Path(sys.argv[2])
store = MessageStore(SaveOptions(directory=out), "bench@localhost:110", "bench")
baseline = rss()
incoming = store.incoming()
with open(source, "rb") as f:
    while block := f.read(64 * 1024):   # as the POP3 session streams it
        incoming.write(block)
incoming.finish()
mail = store.save(incoming, "big")
print(json.dumps({"baseline": baseline, "peak": rss(),
                  "saved": sum(a.size for a in mail.attachments)}))
"""

EMAIL_CHILD = _CHILD_PRELUDE + """
import email
from email.policy import default
source, out = Path(sys.argv[1]), Path(sys.argv[2])
baseline = rss()
with open(source, "rb") as f:
    message = email.message_from_binary_file(f, policy=default)
saved = 0
for part in message.iter_attachments():
    data = part.get_payload(decode=True)
    (out / part.get_filename()).write_bytes(data)
    saved += len(data)
print(json.dumps({"baseline": baseline, "peak": rss(), "saved": saved}))
"""


def write_big_message(path: Path, megabytes: int) -> None:
    """A message with one attachment of ``megabytes`` MB, written without holding it."""
    block = os.urandom(57 * 1024)  # 57 bytes make one 76-character base64 line
    with open(path, "wb") as f:
        f.write(b"From: a@example.org\r\nTo: b@example.org\r\nSubject: big\r\n"
                b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BIG\r\n\r\n"
                b"--BIG\r\nContent-Type: text/plain\r\n\r\nA big file.\r\n"
                b"--BIG\r\nContent-Type: application/octet-stream; name=big.bin\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n")
        written = 0
        while written < megabytes * 1024 * 1024:
            encoded = base64.encodebytes(block).replace(b"\n", b"\r\n")
            f.write(encoded)
            written += len(block)
        f.write(b"--BIG--\r\n")


def memory_rows() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        source = Path(tmp) / "big.eml"
        write_big_message(source, ATTACHMENT_MB)
        for name, code in (("streaming store", STORE_CHILD), ("email package", EMAIL_CHILD)):
            out = Path(tmp) / name.replace(" ", "-")
            out.mkdir()
            start = time.perf_counter()
            result = child_peak_rss(code, str(source), str(out))
            seconds = time.perf_counter() - start
            growth = result["peak"] - result["baseline"]
            rows.append({
                "parser": name,
                "message MB": f"{source.stat().st_size / 2**20:.0f}",
                "attachment MB": f"{result['saved'] / 2**20:.0f}",
                "peak RSS growth MB": f"{growth / 2**20:.1f}",
                "x attachment": f"{growth / result['saved']:.2f}",
                "seconds": f"{seconds:.1f}",
            })
            for path in out.rglob("*"):
                if path.is_file():
                    path.unlink()
    return rows


def small_message() -> bytes:
    text = ("Hello Bob,\r\n\r\nthe figures for this week are attached. Totals are up 3% on last "
            "week.\r\n\r\nAlice\r\n") * 4
    attachment = base64.encodebytes(os.urandom(2048)).replace(b"\n", b"\r\n")
    return (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: Weekly figures\r\n"
            b"Date: Tue, 03 Mar 2026 09:15:00 +0100\r\nMessage-ID: <weekly@example.org>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text.encode()
            + b"\r\n--b1\r\nContent-Type: text/csv; name=\"figures.csv\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"--b1--\r\n")


def _per_message(run_batch) -> float:
    """Median microseconds per message over REPEAT batches, each in a fresh directory."""
    times = []
    for _ in range(REPEAT):
        with tempfile.TemporaryDirectory(prefix="bench-small-") as tmp:
            start = time.perf_counter()
            run_batch(Path(tmp))
            times.append((time.perf_counter() - start) / SMALL_MESSAGES)
    return statistics.median(times) * 1e6


def speed_rows() -> list[dict]:
    from prefect_pop3mail.tasks.pop3.models import SaveOptions
    from prefect_pop3mail.tasks.pop3.storage.store import MessageStore

    data = small_message()

    def originals_only(root: Path) -> None:
        # A poplib loop that writes each original to its own file.
        for i in range(SMALL_MESSAGES):
            tmp = root / f"{i}.eml.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, root / f"{i}.eml")

    def store(save_text: bool, save_attachments: bool):
        def run(root: Path) -> None:
            s = MessageStore(SaveOptions(directory=root, save_text=save_text,
                                         save_attachments=save_attachments), "b@h:110", "bench")
            for i in range(SMALL_MESSAGES):
                incoming = s.incoming()
                incoming.write(data)
                incoming.finish()
                s.save(incoming, f"uidl-{i}")
        return run

    baseline = _per_message(originals_only)
    rows = [{"what": "write the original only (poplib-style loop)", "us/message": f"{baseline:.0f}",
             "ratio": "1.00"}]
    for label, runner in (
        ("store: original only", store(False, False)),
        ("store: original + text + attachments", store(True, True)),
    ):
        us = _per_message(runner)
        rows.append({"what": label, "us/message": f"{us:.0f}", "ratio": f"{us / baseline:.2f}"})
    return rows


def main() -> None:
    print(f"Peak RSS growth saving a {ATTACHMENT_MB} MB attachment (child processes):")
    print(table(memory_rows(), ["parser", "message MB", "attachment MB", "peak RSS growth MB",
                                "x attachment", "seconds"]))
    print(f"\nSaving a {len(small_message())}-byte message with text and an attachment "
          f"(median of {REPEAT} x {SMALL_MESSAGES} messages):")
    print(table(speed_rows(), ["what", "us/message", "ratio"]))


if __name__ == "__main__":
    main()
