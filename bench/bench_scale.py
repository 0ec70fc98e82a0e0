"""A big mailbox left on the server: 100,000 messages, 100 of them new, a new-only run.

(g) of issue #14. Dovecot holds ``POP3MAIL_BENCH_BIG_MAILBOX`` messages (small ones, so
the disk holds them), the last ``POP3MAIL_BENCH_NEW`` of them 4 KB messages with a text
and an attachment; the journal already knows every other one (written through
``Journal.record``, the records a run writes). Each engine run starts from a copy of that
state and works in a fresh interpreter, which reports its time and its peak RSS growth
(``VmHWM`` after the run minus before it, imports done). The baseline, in the same run: a
poplib client doing one UIDL listing and the new messages' RETRs, each written to a file.
Opening the journal alone is timed too. ``POP3MAIL_BENCH_PROFILE=30`` prints the engine
run's CPU profile (its top 30 functions by own time).

Run: ``.venv/bin/python -m bench scale`` (root, like every Dovecot benchmark).
"""

from __future__ import annotations

import json
import os
import poplib
import shutil
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.bench_session import fresh
from bench.common import dovecot_and_folder, table
from bench.peers_mail import small

BIG = int(os.environ.get("POP3MAIL_BENCH_BIG_MAILBOX", "100000"))
NEW = int(os.environ.get("POP3MAIL_BENCH_NEW", "100"))
REPEAT = int(os.environ.get("POP3MAIL_BENCH_REPEAT", "3"))
ROOT = Path(__file__).resolve().parent.parent
#: ``POP3MAIL_BENCH_PROFILE=30``: print the engine run's CPU profile, its top 30 lines.
PROFILE = [p for p in [os.environ.get("POP3MAIL_BENCH_PROFILE", "")] if p]

_CHILD = """
import json, sys, time
from pathlib import Path
from pydantic import SecretStr
from prefect_pop3mail.tasks.pop3.models import (ConnectionSettings, ReceiveOptions,
                                                SaveOptions, Security)
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox

def hwm():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))

host, port, user, password, ca, out = sys.argv[1:7]
settings = ConnectionSettings(host=host, port=int(port), security=Security.IMPLICIT,
                              user=user, password=SecretStr(password), tls_ca_file=ca,
                              timeout=300)
save = SaveOptions(directory=Path(out), save_text=True, save_attachments=True,
                   save_original=True)
before = hwm()
profile = None
if len(sys.argv) > 7:  # POP3MAIL_BENCH_PROFILE: a CPU profile of the run, printed to stderr
    import cProfile
    profile = cProfile.Profile(time.process_time)
    profile.enable()
start = time.perf_counter()
report = receive_mailbox("bench-scale", settings, save, ReceiveOptions())
seconds = time.perf_counter() - start
if profile:
    import pstats
    profile.disable()
    pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(int(sys.argv[7]))
print(json.dumps({"seconds": seconds, "growth_kb": hwm() - before,
                  "received": len(report.received), "known": report.skipped_known}))
"""


def _tiny(i: int) -> bytes:
    return (f"From: a@example.org\nTo: b@example.org\nSubject: old {i}\n"
            f"Message-ID: <old-{i}@example.org>\n\nold message {i}\n").encode()


def _settings(dovecot, user: str, password: str):
    from pydantic import SecretStr

    from prefect_pop3mail.tasks.pop3.models import ConnectionSettings, Security

    return ConnectionSettings(host="localhost", port=dovecot.pop3s_port,
                              security=Security.IMPLICIT, user=user,
                              password=SecretStr(password), tls_ca_file=str(dovecot.ca_file),
                              timeout=300)


def _known_state(settings, template: Path) -> None:
    """A save directory whose journal knows every message but the last NEW ones."""
    from prefect_pop3mail.tasks.pop3.models import SaveOptions
    from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
    from prefect_pop3mail.tasks.pop3.storage.journal import Saved
    from prefect_pop3mail.tasks.pop3.storage.store import MessageStore

    with POP3Session(settings) as session:
        session.login()
        uidls = session.uidl()
        sizes = session.list()
    save = SaveOptions(directory=template, save_text=True, save_attachments=True,
                       save_original=True)
    store = MessageStore(save, settings.mailbox_key, "bench-scale")
    for number in sorted(uidls)[:-NEW]:  # records as the store writes them
        store.journal.record(uidls[number], Saved(f"20261201-000000-{number:012x}",
                                                  sizes.get(number), "0" * 32))
    store.close()


def _poplib(dovecot, user: str, password: str, out: Path) -> float:
    start = time.perf_counter()
    client = poplib.POP3_SSL("localhost", dovecot.pop3s_port,
                             context=ssl.create_default_context(cafile=str(dovecot.ca_file)))
    client.user(user)
    client.pass_(password)
    listing = client.uidl()[1]
    for line in listing[-NEW:]:
        number = int(line.split()[0])
        (out / f"{number}.eml").write_bytes(b"\r\n".join(client.retr(number)[1]) + b"\r\n")
    client.quit()
    return time.perf_counter() - start


def _journal_open(settings, save_dir: Path) -> float:
    from prefect_pop3mail.tasks.pop3.storage.base import JOURNAL
    from prefect_pop3mail.tasks.pop3.storage.journal import Journal, mailbox_digest
    from prefect_pop3mail.tasks.pop3.storage.local import LocalStorage

    storage = LocalStorage(save_dir, mailbox_digest(settings.mailbox_key))
    start = time.perf_counter()
    journal = Journal(storage.open_log(JOURNAL))
    journal.count_saved([])  # a big journal replays on a thread: wait for it
    seconds = time.perf_counter() - start
    journal.close()
    storage.close()
    return seconds


def main() -> None:
    with dovecot_and_folder("scale") as started:
        if started is None:
            return
        runs = _measure(*started)
    _report(runs)


def _measure(dovecot, top: Path) -> dict[str, list[float]]:
    user, password = dovecot.add_user()
    start = time.perf_counter()
    dovecot.deliver(user, *(_tiny(i) for i in range(BIG - NEW)))
    dovecot.deliver(user, *(small(i) for i in range(NEW)))
    settings = _settings(dovecot, user, password)
    template, work, plain = top / "template", top / "work", top / "plain"
    _known_state(settings, template)  # also Dovecot's first, slow, indexing session
    print(f"{BIG:,} messages delivered and journalled in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    runs: dict[str, list[float]] = {"engine": [], "poplib": [], "journal": [], "mb": []}
    for _ in range(REPEAT):
        fresh(plain)  # renamed aside, not deleted: see bench_session.fresh
        runs["poplib"].append(_poplib(dovecot, user, password, plain))
        fresh(work)
        shutil.copytree(template, work, symlinks=True, dirs_exist_ok=True)
        runs["journal"].append(_journal_open(settings, work))
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, "localhost", str(dovecot.pop3s_port), user,
             password, str(dovecot.ca_file), str(work), *PROFILE],
            capture_output=True, text=True, check=True, cwd=ROOT)
        if PROFILE:
            print(out.stderr, flush=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["received"] == NEW and result["known"] == BIG - NEW, result
        runs["engine"].append(result["seconds"])
        runs["mb"].append(result["growth_kb"] / 1024)
        print(f"engine {runs['engine'][-1]:.2f} s ({runs['mb'][-1]:.1f} MB growth), "
              f"poplib {runs['poplib'][-1]:.2f} s, journal open "
              f"{runs['journal'][-1]:.3f} s", flush=True)
    return runs


def _report(runs: dict[str, list[float]]) -> None:
    median = {key: statistics.median(values) for key, values in runs.items()}
    rows = [
        {"what": f"engine, new-only run ({NEW} new of {BIG:,})",
         "median s": f"{median['engine']:.3f}",
         "runs": " ".join(f"{t:.2f}" for t in runs["engine"])},
        {"what": f"poplib: one UIDL listing + {NEW} RETR", "median s": f"{median['poplib']:.3f}",
         "runs": " ".join(f"{t:.2f}" for t in runs["poplib"])},
        {"what": "opening the journal (replayed while the session opens)",
         "median s": f"{median['journal']:.3f}",
         "runs": " ".join(f"{t:.3f}" for t in runs["journal"])},
        {"what": "engine peak RSS growth, MB", "median s": f"{median['mb']:.1f}",
         "runs": " ".join(f"{m:.1f}" for m in runs["mb"])},
    ]
    print("\n" + table(rows, ["what", "median s", "runs"]))
    ratio = median["engine"] / median["poplib"]
    print(f"\n(g) time: engine / baseline = {ratio:.2f}x (target under 2x): "
          f"{'holds' if ratio < 2 else 'MISSES'}; memory growth {median['mb']:.1f} MB "
          f"(target under 100 MB): {'holds' if median['mb'] < 100 else 'MISSES'}; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
