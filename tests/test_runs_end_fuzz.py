"""A property of runs, over random server behaviour and random batch settings (issue #23).

Each example is a mailbox on the fault server where each message misbehaves its own way
(refused, refused once, a dropped connection, a trickle past the reply deadline, a size LIST
lies about, a header section over the TOP cap, a message our code cannot save, a slow but
good reply...), received run after run with random batch settings. It must hold that:

- every run ends within its session cap (batches + MAX_EXTRA_SESSIONS), with each failed
  message reported at most once;
- no message is lost (gone from the server means saved), none is saved twice, none is set
  aside before it failed in ``quarantine_after`` runs;
- after N runs every message ends saved, quarantined, or failed-and-kept (on the server and
  reported failed, or too large, in the last run); a message whose fault passes ends saved.

A fixed small budget by default; POP3MAIL_SOAK=1 runs far more examples.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_pop3mail.tasks.pop3.errors import (
    POP3ConnectionError,
    POP3MailError,
    POP3ProtocolError,
)
from prefect_pop3mail.tasks.pop3.models import HeaderFilter, ReceiveOptions, SaveOptions
from prefect_pop3mail.tasks.pop3.receiver import MAX_EXTRA_SESSIONS, MailboxReceiver
from tests.conftest import sample_message
from tests.servers.faultserver import FaultServer, delay, drop, reply, trickle
from tests.test_faults import settings_for
from tests.test_runs_end import POISON, poison_reader  # noqa: F401

SOAK = os.environ.get("POP3MAIL_SOAK") == "1"
EXAMPLES = 400 if SOAK else 25

#: Over the header section of "big-head", under the body of "size-lie".
MAX_SIZE = 1_500_000
#: Faults that pass: the message must end saved.
PASSING = {"ok", "slow", "refused-once", "drop-once"}
# Weighted by repetition: the slow faults (a trickle costs its reply deadline) rarer.
FAULTS = st.sampled_from(["ok", "ok", "slow", "refused", "refused-once", "drop", "drop-once",
                          "size-lie", "big-head", "poison", "top-refused", "ok", "drop",
                          "refused-once", "drop-once", "size-lie", "trickle"])


def build(i: int, fault: str) -> bytes:
    headers = {}
    body = "Hello.\n"
    if fault == "poison":
        headers["Subject"] = f"{POISON} {i}"
    elif fault == "big-head":
        headers["X_Long"] = "\n ".join(["y" * 70] * 16_000)  # 1.1 MB of header section
    elif fault == "size-lie":
        body = ("x" * 998 + "\n") * 2000
    return sample_message(i, body=body, **headers).replace(b"\n", b"\r\n")


def arm(server: FaultServer, uid: str, fault: str) -> None:
    if fault == "refused":
        server.on("RETR", reply("-ERR [SYS/PERM] no"), message=uid)
    elif fault == "refused-once":
        server.on("RETR", reply("-ERR [SYS/TEMP] later"), message=uid, times=1)
    elif fault == "drop":
        server.on("RETR", drop(), message=uid)
    elif fault == "drop-once":
        server.on("RETR", drop(), message=uid, times=1)
    elif fault == "trickle":
        server.on("RETR", trickle(b"+OK\r\n" + b"x" * 5000, 0.05), message=uid)
    elif fault == "slow":
        server.on("RETR", delay(0.05), message=uid)
    elif fault == "top-refused":
        server.on("TOP", reply("-ERR no TOP for that one"), message=uid)
    elif fault == "size-lie":
        server.listed_sizes[uid] = 100


@st.composite
def scenarios(draw):
    faults = draw(st.lists(FAULTS, min_size=1, max_size=5))
    options = dict(
        max_messages=draw(st.sampled_from([None, 1, 2])),
        commit_every=draw(st.sampled_from([None, 1, 2])),
        remove_after_read=draw(st.booleans()),
        pipelining=draw(st.sampled_from([None, False])),
        quarantine_after=draw(st.integers(1, 3)),
    )
    if draw(st.booleans()):
        options["filters"] = HeaderFilter(sender="example")
    return faults, options


def saved_originals(root: Path) -> Counter:
    found = [*root.glob("*/message.eml"), *root.glob("quarantine/*/message.eml")]
    return Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in found)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not SOAK,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenario=scenarios())
def test_every_run_ends_and_every_message_ends_somewhere(poison_reader, scenario):  # noqa: F811
    faults, options = scenario
    quarantine_after = options["quarantine_after"]
    mail = [build(i, fault) for i, fault in enumerate(faults)]
    digests = [hashlib.sha256(m).hexdigest() for m in mail]
    runs = 3 * len(mail) + 2 * quarantine_after + 4
    with tempfile.TemporaryDirectory() as tmp, FaultServer(mail) as server:
        uids = server.uids
        fault_of = dict(zip(uids, faults, strict=True))
        for uid, fault in fault_of.items():
            arm(server, uid, fault)
        settings_ = settings_for(server, timeout=0.5)
        save = SaveOptions(directory=Path(tmp))
        receive = ReceiveOptions(max_message_size=MAX_SIZE, in_use_retries=2,
                                 in_use_backoff=0.05, **options)
        failed_runs: Counter = Counter()
        report = None
        for _ in range(runs):
            listed, before = len(server.uids), server.sessions
            with MailboxReceiver("fuzz", settings_, save, receive) as receiver:
                try:
                    report = receiver.run()
                except POP3MailError as exc:
                    # Only a session dying under a message (among others) ends a run.
                    assert isinstance(exc, POP3ConnectionError | POP3ProtocolError), exc
                    report = exc.partial_report
            every = options["commit_every"]
            wanted = listed if options["max_messages"] is None else min(
                listed, options["max_messages"])
            cap = (max(1, math.ceil(wanted / every)) if every else 1) + MAX_EXTRA_SESSIONS
            assert report.sessions <= cap, (report.sessions, cap, report.stopped)
            assert report.sessions <= server.sessions - before <= 3 * report.sessions
            charged = Counter(f.uidl for f in report.failed)
            assert not charged or max(charged.values()) == 1, charged  # once per run
            for mail_ in report.received:
                if mail_.quarantined:  # set aside only after quarantine_after failed runs
                    assert failed_runs[mail_.uidl] >= quarantine_after - 1
            failed_runs.update(charged)
        assert report is not None
        on_server = set(server.uids)
        originals = saved_originals(Path(tmp))
        assert not originals or max(originals.values()) == 1  # nothing saved twice
        last_failed = {f.uidl for f in report.failed} | set(report.skipped_too_large)
        for uid, digest in zip(uids, digests, strict=True):
            saved = digest in originals
            assert saved or uid in on_server, f"{fault_of[uid]} message lost"
            assert saved or uid in last_failed, (
                f"{fault_of[uid]} message neither saved nor reported failed after {runs} runs")
            if fault_of[uid] in PASSING:
                assert saved, f"a {fault_of[uid]} message is not saved after {runs} runs"
            if saved and options["remove_after_read"]:
                assert uid not in on_server, f"a saved {fault_of[uid]} message is not deleted"
