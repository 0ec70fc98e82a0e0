"""Saving to S3: the engine receiving a Dovecot mailbox into a local S3-compatible server
(moto in its own process, tests/servers/s3.py), against a plain boto3 upload loop of the originals alone.

Workloads: (a) 1,000 messages of 4 KB; (b) 20 messages of 1 MB (a 740 KB attachment). For
each: the median of REPEAT runs of
  - boto3 loop: put_object of each original (already in memory), nothing else;
  - pop3mail -> S3: receive_mailbox() into a fresh prefix (RETR pipelined, layout in a temp
    work folder, an upload per file, the .complete marker, outbox and journal objects);
  - pop3mail -> local disk: the same into a fresh local folder, for reference.
The ratio "S3 / boto3" is what the whole receive costs over uploading the originals alone;
"S3 / local" what storage costs over the local disk.

(c) Memory: one message with a BENCH_REMOTE_MB (default 100) MB attachment received to S3 in a
fresh child process, against a 4 KB message the same way: the difference of their peak RSS is
what grows with the message (the constant cost of boto's models is in both).

Run: .venv/bin/python -m bench remote   (needs root for Dovecot, and moto[server], s3fs)
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from pydantic import SecretStr

from bench.common import child_peak_rss, table
from prefect_pop3mail.tasks.pop3.models import (
    ConnectionSettings,
    ReceiveOptions,
    SaveOptions,
    Security,
)
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
from tests.servers.dovecot import dovecot_unavailable_reason, start_dovecot

REPEAT = int(os.environ.get("BENCH_REMOTE_REPEAT", "3"))
BIG_MB = int(os.environ.get("BENCH_REMOTE_MB", "100"))

MEMORY_CHILD = """
import json, resource, sys
from pydantic import SecretStr
from prefect_pop3mail.tasks.pop3.models import (
    ConnectionSettings, ReceiveOptions, SaveOptions, Security)
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
host, port, user, password, ca, url = sys.argv[1:7]
settings = ConnectionSettings(host=host, port=int(port), security=Security.IMPLICIT, user=user,
                              password=SecretStr(password), tls_ca_file=ca, timeout=120)
report = receive_mailbox("bench", settings, SaveOptions(url=url), ReceiveOptions())
mail = report.received[0]
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "size": mail.size, "saved": sum(a.size for a in mail.attachments)}))
"""


def small(i: int) -> bytes:
    body = "".join(f"Line {n} of message {i}, some ordinary text.\n" for n in range(90))
    return (f"From: a@example.org\nTo: b@example.org\nSubject: small {i}\n"
            f"Message-ID: <s{i}@example.org>\nDate: Thu, 26 Nov 2026 10:00:00 +0000\n\n"
            f"{body}").encode()[:4096]


def large(i: int) -> bytes:
    import base64

    data = base64.encodebytes(os.urandom(740 * 1024)).decode()
    return (f"From: a@example.org\nTo: b@example.org\nSubject: large {i}\n"
            f"Message-ID: <l{i}@example.org>\nDate: Thu, 26 Nov 2026 10:00:00 +0000\n"
            "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=B\n\n"
            "--B\nContent-Type: text/plain\n\nSee the attachment.\n"
            "--B\nContent-Type: application/octet-stream; name=data.bin\n"
            f"Content-Transfer-Encoding: base64\n\n{data}--B--\n").encode()


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def workload(name: str, messages: list[bytes], dovecot, server, bucket: str,
             work: Path) -> dict:
    user, password = dovecot.add_user()
    dovecot.deliver(user, *messages)
    settings = ConnectionSettings(host="localhost", port=dovecot.pop3s_port,
                                  security=Security.IMPLICIT, user=user,
                                  password=SecretStr(password),
                                  tls_ca_file=str(dovecot.ca_file), timeout=60)
    client = server.client()
    originals = [m.replace(b"\n", b"\r\n") for m in messages]

    def boto3_loop() -> None:
        prefix = uuid.uuid4().hex
        for i, data in enumerate(originals):
            client.put_object(Bucket=bucket, Key=f"{prefix}/{i}.eml", Body=data)

    def receive(save: SaveOptions) -> None:
        report = receive_mailbox("bench", settings, save, ReceiveOptions())
        assert len(report.received) == len(messages), report.failed[:3]

    def to_s3() -> None:
        receive(SaveOptions(url=f"s3://{bucket}/{uuid.uuid4().hex}"))

    def to_disk() -> None:
        folder = work / uuid.uuid4().hex
        receive(SaveOptions(directory=folder))
        shutil.rmtree(folder)

    times: dict[str, list[float]] = {"boto3": [], "s3": [], "local": []}
    for _ in range(REPEAT):  # interleaved, so a busy machine weighs on each alike
        times["boto3"].append(timed(boto3_loop))
        times["s3"].append(timed(to_s3))
        times["local"].append(timed(to_disk))
    m = {k: statistics.median(v) for k, v in times.items()}
    return {"workload": name, "boto3 loop s": f"{m['boto3']:.2f}",
            "pop3mail->S3 s": f"{m['s3']:.2f}", "pop3mail->local s": f"{m['local']:.2f}",
            "S3 / boto3": f"{m['s3'] / m['boto3']:.2f}x",
            "S3 / local": f"{m['s3'] / m['local']:.2f}x",
            "runs (s3)": " ".join(f"{t:.2f}" for t in times["s3"])}


def memory_rows(dovecot, bucket: str, work: Path) -> list[dict]:
    from bench.bench_store import write_big_message

    big = work / "big.eml"
    write_big_message(big, BIG_MB)
    rows, peaks = [], {}
    for name, raw in (("4 KB message", small(0)), (f"{BIG_MB} MB attachment", big.read_bytes())):
        user, password = dovecot.add_user()
        dovecot.deliver(user, raw)
        result = child_peak_rss(MEMORY_CHILD, "localhost", str(dovecot.pop3s_port), user,
                                password, str(dovecot.ca_file),
                                f"s3://{bucket}/{uuid.uuid4().hex}")
        peaks[name] = result["peak"]
        rows.append({"workload": f"(c) {name} to S3", "message MB": f"{result['size'] / 2**20:.1f}",
                     "peak RSS MB": f"{result['peak'] / 2**20:.0f}"})
    growth = peaks[f"{BIG_MB} MB attachment"] - peaks["4 KB message"]
    rows.append({"workload": "(c) grows with the message", "peak RSS MB": f"{growth / 2**20:.1f}"})
    big.unlink()
    return rows


def main() -> None:
    if reason := dovecot_unavailable_reason():
        print(f"skipped: {reason}")
        return
    try:
        from tests.servers.s3 import S3Server
    except ImportError as exc:
        print(f"skipped: {exc}")
        return
    server = S3Server(separate_process=True)
    os.environ.update(server.env())
    dovecot = start_dovecot()
    work = Path(tempfile.mkdtemp(prefix="pop3mail-bench-remote-"))
    try:
        bucket = server.new_bucket()
        rows = [
            workload("(a) 1,000 x 4 KB", [small(i) for i in range(1000)], dovecot, server,
                     bucket, work),
            workload("(b) 20 x 1 MB", [large(i) for i in range(20)], dovecot, server, bucket,
                     work),
        ]
        print(table(rows, list(rows[0])))
        memory = memory_rows(dovecot, bucket, work)
        print(table(memory, ["workload", "message MB", "peak RSS MB"]))
        print(f"medians of {REPEAT} runs; S3 = moto server on 127.0.0.1 (its own process, "
              "in memory); Dovecot over implicit TLS on loopback")
    finally:
        dovecot.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
