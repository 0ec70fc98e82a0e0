"""The POP3 session against a plain poplib loop, on the same Dovecot mailboxes, in one run.

(a) 1,000 messages of 4 KB over implicit TLS on loopback, each saved to a file;
(b) 500 messages through our latency proxy, 10 ms each way (a WAN-like round trip);
(c) peak RSS of a fresh process retrieving one 50 MB message (the engine to a file; poplib
    with the email package, the way a script built on the standard library does it).

Nothing is deleted, so every repetition reads the same mailbox. Run:
``.venv/bin/python -m bench session``.
"""

from __future__ import annotations

import os
import poplib
import shutil
import ssl
import sys
import tempfile
import uuid
from pathlib import Path

from pydantic import SecretStr

from bench.common import child_peak_rss, median_seconds, table
from prefect_pop3mail.tasks.pop3.models import ConnectionSettings, Security
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from tests.servers.dovecot import dovecot_unavailable_reason, start_dovecot
from tests.servers.latency_proxy import LatencyProxy

REPEAT = 5
WAN_REPEAT = 3
WAN_DELAY = 0.010


def message(i: int, size: int = 4096) -> bytes:
    head = (f"From: Alice <alice@example.org>\nTo: bob@example.org\nSubject: Bench {i}\n"
            f"Message-ID: <bench-{i}@example.org>\n\n").encode()
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij.\n"
    body = (line * (size // len(line) + 1))[: size - len(head)]
    return head + body


def engine_run(settings: ConnectionSettings, out: Path, pipelining: bool | None = None) -> int:
    """Retrieve every message to its own file; returns the count."""
    count = 0
    with POP3Session(settings, pipelining=pipelining) as session:
        session.login()
        numbers = range(1, session.stat()[0] + 1)
        for _number, sink, refused in session.retrieve(
            numbers, lambda n: open(out / f"engine-{n}.eml", "wb")  # noqa: SIM115
        ):
            assert refused is None and sink is not None
            sink.close()
            count += 1
    return count


def poplib_run(host: str, port: int, user: str, password: str, ca_file: str, out: Path) -> int:
    """The baseline a user could write: RETR each message and save its lines."""
    client = poplib.POP3_SSL(host, port, context=ssl.create_default_context(cafile=ca_file))
    try:
        client.user(user)
        client.pass_(password)
        count = client.stat()[0]
        for number in range(1, count + 1):
            _reply, lines, _octets = client.retr(number)
            with open(out / f"poplib-{number}.eml", "wb") as file:
                file.write(b"\r\n".join(lines) + b"\r\n")
    finally:
        client.quit()
    return count


def fresh(out: Path) -> None:
    """An empty folder before each run, the previous one renamed aside, not deleted.

    Rewriting files in place costs ext4 more (it flushes a truncated-and-rewritten file on
    close). Deleting costs the next run even more: for about 30 s after thousands of inodes
    are freed, ext4 makes every new inode skip them (``recently_deleted``, 0.1-0.9 ms per
    file here instead of 0.03 ms), which would charge one tool for the files of the run
    before it. The spent folders stay beside ``out`` until the benchmark removes its
    temporary folder."""
    if out.exists():
        out.rename(out.with_name(f".spent-{out.name}-{uuid.uuid4().hex[:12]}"))
    out.mkdir()


def compare(label: str, engine, baseline, repeat: int, out: Path) -> dict:
    engine_s = median_seconds(engine, repeat, setup=lambda: fresh(out))
    poplib_s = median_seconds(baseline, repeat, setup=lambda: fresh(out))
    return {"case": label, "engine s": f"{engine_s:.3f}", "poplib s": f"{poplib_s:.3f}",
            "poplib/engine": f"{poplib_s / engine_s:.1f}x"}


_RSS_CHILD = """
import json, sys


def high_water_kb():
    # VmHWM is this process's own peak; ru_maxrss would carry the parent's over exec.
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))


mode, host, port, user, password, ca_file, out = sys.argv[1:]
port = int(port)
if mode == "engine":
    from pydantic import SecretStr
    from prefect_pop3mail.tasks.pop3.models import ConnectionSettings
    from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
else:
    import email, email.policy, poplib, ssl
base = high_water_kb()
if mode == "engine":
    settings = ConnectionSettings(host=host, port=port, user=user, password=SecretStr(password),
                                  tls_ca_file=ca_file)
    with POP3Session(settings) as session, open(out, "wb") as sink:
        session.login()
        session.retr(1, sink)
else:
    client = poplib.POP3_SSL(host, port, context=ssl.create_default_context(cafile=ca_file))
    client.user(user); client.pass_(password)
    _reply, lines, _octets = client.retr(1)
    raw = b"\\r\\n".join(lines) + b"\\r\\n"
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    with open(out, "wb") as file:
        file.write(parsed.as_bytes())
    client.quit()
peak = high_water_kb()
print(json.dumps({"baseline_kb": base, "peak_kb": peak}))
"""


def rss_rows(host: str, port: int, user: str, password: str, ca_file: str, out: Path,
             size: int) -> list[dict]:
    rows = []
    for mode in ("engine", "poplib+email"):
        result = child_peak_rss(_RSS_CHILD, mode, host, str(port), user, password, ca_file,
                                str(out / f"rss-{mode}.eml"))
        grown = (result["peak_kb"] - result["baseline_kb"]) * 1024
        rows.append({"case": f"(c) one {size >> 20} MB message", "client": mode,
                     "baseline MB": f"{result['baseline_kb'] / 1024:.0f}",
                     "peak MB": f"{result['peak_kb'] / 1024:.0f}",
                     "growth MB": f"{grown / (1 << 20):.1f}",
                     "growth / message": f"{grown / size:.2f}x"})
    return rows


def main() -> None:
    reason = dovecot_unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return
    dovecot = start_dovecot()
    top = Path(tempfile.mkdtemp(prefix="pop3mail-bench-session-"))
    out = top / "out"
    out.mkdir()
    try:
        ca_file = str(dovecot.ca_file)

        def settings(user: str, password: str, port: int) -> ConnectionSettings:
            return ConnectionSettings(host="localhost", port=port, security=Security.IMPLICIT,
                                      user=user, password=SecretStr(password),
                                      tls_ca_file=ca_file, timeout=60)

        # (a) 1,000 x 4 KB over TLS on loopback.
        user_a, pw_a = dovecot.add_user()
        dovecot.deliver(user_a, *[message(i) for i in range(1000)])
        port = dovecot.pop3s_port
        loopback = settings(user_a, pw_a, port)
        assert engine_run(loopback, out) == poplib_run("localhost", port, user_a, pw_a,
                                                       ca_file, out) == 1000
        rows = [compare("(a) 1,000 x 4 KB, TLS, loopback",
                        lambda: engine_run(loopback, out),
                        lambda: poplib_run("localhost", port, user_a, pw_a, ca_file, out),
                        REPEAT, out)]
        sequential = median_seconds(lambda: engine_run(loopback, out, pipelining=False), REPEAT,
                                    setup=lambda: fresh(out))
        rows.append({"case": "(a') same, engine with pipelining off",
                     "engine s": f"{sequential:.3f}"})

        # (b) 500 messages, 10 ms each way.
        user_b, pw_b = dovecot.add_user()
        dovecot.deliver(user_b, *[message(i) for i in range(500)])
        with LatencyProxy("127.0.0.1", port, delay=WAN_DELAY) as proxy:
            wan = settings(user_b, pw_b, proxy.port)
            rows.append(compare(f"(b) 500 x 4 KB, TLS, +{WAN_DELAY * 1000:.0f} ms each way",
                                lambda: engine_run(wan, out),
                                lambda: poplib_run("localhost", proxy.port, user_b, pw_b,
                                                   ca_file, out),
                                WAN_REPEAT, out))
        print(table(rows, ["case", "engine s", "poplib s", "poplib/engine"]))
        print(f"(medians of {REPEAT} runs, {WAN_REPEAT} for (b); Python {sys.version.split()[0]}, "
              f"{os.cpu_count()} CPUs)")

        # (c) peak RSS, one 50 MB message, each client in a fresh process.
        user_c, pw_c = dovecot.add_user()
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ=+/.,;:\n"
        size = 50 << 20
        dovecot.deliver(user_c, b"Subject: big\n\n" + line * (size // len(line)))
        print()
        print(table(rss_rows("localhost", port, user_c, pw_c, ca_file, out, size),
                    ["case", "client", "baseline MB", "peak MB", "growth MB",
                     "growth / message"]))
    finally:
        dovecot.stop()
        shutil.rmtree(top, ignore_errors=True)
        shutil.rmtree(dovecot.root, ignore_errors=True)


if __name__ == "__main__":
    main()
