"""Production scale: 200 mailboxes on a Prefect server backed by PostgreSQL, received by
scheduled deployment runs on two process workers of one work pool, with new mail arriving
all the time and one worker killed in the middle of a run.

The mailboxes are received by two deployments of ``receive_from_mailboxes`` (one fan-out
flow run per shard, its mailboxes on the flow's thread task runner), not by one deployment
run per mailbox: a flow run on a process worker is a new Python process (about 1 s of CPU
and 100 MB before it does anything), so 200 runs per schedule tick would cost the workers
far more than the mail does. The two shards share their first ``SHARED`` mailboxes and
start together on the two workers at every tick; at the first tick another holder keeps
those mailboxes until the threads of both runs queue on them. The per-mailbox lock, not
the layout, has to keep their sessions apart.

One scenario runs once for the module (``scenario``); each test checks one promise in its
facts: every message saved exactly once, never two sessions of one mailbox at once, the
killed run's mailboxes received by a later run once their lease lapsed, and runs that were
scheduled and ran on both workers.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from prefect_pop3mail.flows.receiving import MAILBOX_WORKERS
from prefect_pop3mail.tasks.lock import LEASE_SECONDS, RENEW_EVERY, SLOTS, lock_name, record_name
from tests.conftest import require_dovecot, require_server, sample_message
from tests.fleet import (
    TERMINAL,
    Session,
    Shard,
    Stack,
    client_ports,
    kill_worker,
    overlapping,
    peak_concurrent,
    scale_stack,
    utc_in,
    wait_for,
)
from tests.servers.postgres import postgres_unavailable_reason

pytestmark = [pytest.mark.postgres, pytest.mark.dovecot, pytest.mark.prefect, pytest.mark.slow,
              pytest.mark.timeout(1200)]

MAILBOXES = 200
#: The first mailboxes of both shards: at each tick both runs start with them.
SHARED = 20
#: Seconds between two scheduled runs of each shard.
EVERY = 30
#: A new message every this many seconds, to a mailbox picked at random, all along.
MAIL_EVERY = 0.25
#: The lease is renewed every ``RENEW_EVERY``: a dead holder's lease lapses at the earliest
#: this long after the kill (less a margin for the clocks of the log and of this process).
LAPSE_AT_LEAST = LEASE_SECONDS - RENEW_EVERY - 5


def require_postgres() -> None:
    require_dovecot()  # the mailboxes
    require_server("the PostgreSQL tests", postgres_unavailable_reason())


@dataclass
class Facts:
    stack: Stack
    shards: dict[str, list[str]]
    deployments: dict[str, dict]
    worker_logs: list[Path]
    killed_at: float = 0.0
    killed_run: str = ""
    #: Client ports of the killed flow run's POP3 connections at the kill.
    killed_ports: set[int] = field(default_factory=set)
    flow_runs: list[dict] = field(default_factory=list)
    task_runs: dict[str, list[dict]] = field(default_factory=dict)
    sessions: list[Session] = field(default_factory=list)
    #: Shared mailboxes whose task runs in the two shards' runs overlapped in time.
    contended: set[str] = field(default_factory=set)
    timeline: list[str] = field(default_factory=list)

    def diagnostics(self) -> str:
        tail = "\n".join(p.read_text(errors="replace")[-3000:] for p in self.worker_logs
                         if p.exists())
        return ("\n".join(self.timeline) + f"\nworker logs:\n{tail}\nserver log:\n"
                + self.stack.prefect.diagnostics(3000))


class Mailman(threading.Thread):
    """Delivers a new message to a mailbox picked at random, every ``MAIL_EVERY`` s."""

    def __init__(self, stack: Stack, names: list[str]):
        super().__init__(daemon=True, name="mailman")
        self.stack, self.names = stack, names
        self.done = threading.Event()
        self.random = random.Random(27)

    def run(self) -> None:
        while not self.done.wait(MAIL_EVERY):
            name = self.random.choice(self.names)
            self.stack.deliver(name, message(name, "between runs"))


def message(name: str, when: str) -> bytes:
    tag = uuid.uuid4().hex[:12]
    return sample_message(0, body=f"{name}, {when}: {tag}.\n", Subject=f"{name} {when}",
                          Message_ID=f"<{tag}@scale.example.org>")


def saved(stack: Stack, name: str) -> Counter:
    return Counter(p.read_bytes().replace(b"\r\n", b"\n")
                   for p in (stack.top / name).glob("*/message.eml"))


def all_saved(stack: Stack) -> bool:
    return all(sum(saved(stack, name).values()) >= len(stack.deliveries[name])
               for name in stack.users)


def worker_of(facts: Facts, flow_run_id: str) -> int | None:
    """Which worker (its index) submitted the flow run, from the workers' logs."""
    for index, log in enumerate(facts.worker_logs):
        if f"submitting flow run '{flow_run_id}'" in log.read_text(errors="replace"):
            return index
    return None


@pytest.fixture(scope="module")
def scenario(ca, tmp_path_factory) -> Facts:
    require_postgres()
    work = tmp_path_factory.mktemp("scale")
    settings = {
        # Look for lapsed leases every 2 s instead of 15 s: a shorter test.
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2",
        # Schedule two minutes ahead, not an hour: a few runs to clean up, not 120.
        "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT2M",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "10"}
    with scale_stack(ca=ca, durable=False, server_settings=settings) as stack:
        yield run_scenario(stack, work)


def run_scenario(stack: Stack, work: Path) -> Facts:
    names = stack.add_mailboxes(MAILBOXES, "scale", remove_from_server_after_read=True)
    half = SHARED + (MAILBOXES - SHARED) // 2
    shards = {"shard-a": names[:half], "shard-b": names[:SHARED] + names[half:]}
    for name in names:
        stack.deliver(name, message(name, "before the first run"))
    start = utc_in(15)
    deployments = stack.deploy(
        [Shard(shard, members, every=EVERY, anchor=start) for shard, members in shards.items()],
        work)
    ids = [d["id"] for d in deployments.values()]
    facts = Facts(stack, shards, deployments, [work / f"worker-{i}.log" for i in range(3)])
    note = facts.timeline.append
    mailman = Mailman(stack, names)
    t0 = time.monotonic()

    def runs(state: str | None = None) -> list[dict]:
        found = stack.flow_runs(ids)
        return [r for r in found if state is None or r["state"]["type"] == state]

    # Someone holds the shared mailboxes (a run from the UI, say) as the first tick comes:
    # the threads of both runs queue on them, on two workers, and race when they are free.
    held = hold(stack, shards["shard-a"][:SHARED])
    try:
        with stack.worker(facts.worker_logs[1], limit=1):
            with stack.worker(facts.worker_logs[0], limit=1) as first:
                mailman.start()

                def both_waiting() -> bool:
                    under_way = runs("RUNNING")
                    return len(under_way) == 2 and all(
                        sum(t["state"]["type"] == "RUNNING" for t in stack.task_runs(r["id"]))
                        >= MAILBOX_WORKERS for r in under_way)

                wait_for("both first runs waiting for the shared mailboxes", both_waiting,
                         600, facts.diagnostics, every=1)
                release(stack, held)
                note(f"{time.monotonic() - t0:.0f} s: shared mailboxes let go")
                wait_for("the first run of each shard", lambda: len(runs("COMPLETED")) >= 2,
                         600, facts.diagnostics, every=2)
                note(f"{time.monotonic() - t0:.0f} s: first runs completed")

                # A later run on the first worker, while it is logged in to a mailbox (Dovecot
                # logged the login of one of its connections): kill the worker and its flow
                # run, as when a machine dies.
                def in_session(pid: int) -> set[int]:
                    open_ports = {s.port for s in stack.sessions() if s.end is None}
                    return client_ports(pid, stack.dovecot.pop3s_port) & open_ports

                def victim() -> tuple[int, set[int]] | None:
                    """A flow run frozen (SIGSTOP) in a POP3 session, and its ports. A session
                    lasts a fraction of a second: the run is frozen first, then looked at
                    again once Dovecot has logged whatever was under way (a QUIT already
                    sent), so the session still open is one the kill cuts."""
                    for child in _children(first.pid):
                        if not in_session(child):
                            continue
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child, signal.SIGSTOP)
                            time.sleep(0.5)
                            if ports := in_session(child):
                                return child, ports
                            os.kill(child, signal.SIGCONT)
                    return None

                pid, facts.killed_ports = wait_for("a run of the first worker in a POP3 "
                                                   "session", victim, 600, facts.diagnostics,
                                                   every=0.1)
                facts.killed_at = time.time()
                kill_worker(first, signal.SIGKILL)
                killed = [r for r in runs() if r.get("infrastructure_pid") == str(pid)]
                facts.killed_run = killed[0]["id"] if killed else ""
                note(f"{time.monotonic() - t0:.0f} s: killed the first worker and flow run "
                     f"{facts.killed_run} (pid {pid})")

            # A new worker takes its place, as an orchestrator would start one.
            with stack.worker(facts.worker_logs[2], limit=1):
                time.sleep(10)  # mail keeps arriving after the kill
                mailman.done.set()
                mailman.join()
                note(f"{time.monotonic() - t0:.0f} s: last mail delivered")
                wait_for("every message saved", lambda: all_saved(stack), 600,
                         facts.diagnostics, every=2)
                note(f"{time.monotonic() - t0:.0f} s: every message saved")
                stack.stop_schedules(ids)
                wait_for("the runs under way", lambda: not [
                    r for r in runs() if r["state"]["type"] not in TERMINAL
                    and r["id"] != facts.killed_run], 300, facts.diagnostics, every=2)
                note(f"{time.monotonic() - t0:.0f} s: runs finished")
    finally:
        mailman.done.set()
        if mailman.is_alive():
            mailman.join(10)
        release(stack, held)
    # Prefect 3 records task runs from their events (the server's task run recorder): under
    # load the last states of a finished run reach the database seconds after the run ends.
    members = {d["id"]: facts.shards[shard] for shard, d in deployments.items()}
    wait_for("Prefect to record every task run of the finished runs",
             lambda: all(recorded(stack, r, len(members[r["deployment_id"]]))
                         for r in runs("COMPLETED")), 120, facts.diagnostics, every=2)
    # The last Disconnected lines may reach Dovecot's log a moment after the runs end.
    shutil.copy(stack.dovecot.log_file, work / "dovecot-at-end.log")
    wait_for("Dovecot to log the end of every session",
             lambda: all(s.end is not None for s in stack.sessions()), 30,
             lambda: str([s for s in stack.sessions() if s.end is None]), every=0.5)

    facts.flow_runs = runs()
    facts.task_runs = {r["id"]: stack.task_runs(r["id"]) for r in facts.flow_runs}
    facts.sessions = stack.sessions()
    shutil.copy(stack.dovecot.log_file, work / "dovecot.log")  # kept for a failure's reader
    facts.contended = contended(facts)
    cut = cut_sessions(facts)
    note(f"{sum(map(len, stack.deliveries.values()))} messages, {len(facts.sessions)} "
         f"sessions (peak {peak_concurrent(facts.sessions)} at once), "
         f"{len(facts.flow_runs)} flow runs, {len(facts.contended)} shared mailboxes "
         f"contended, {len(cut)} sessions cut by the kill")
    for session in cut:
        later = [s.start for s in facts.sessions if s.user == session.user and s.start > session.start]
        note(f"{session.user}: cut by the kill; next session {later[0] - facts.killed_at:.1f} s "
             "after the kill" if later else f"{session.user}: cut, no session since")
    print("\n".join(facts.timeline))  # shown with -s or -rP
    return facts


def recorded(stack: Stack, flow_run: dict, mailboxes: int) -> bool:
    """Whether the server has the flow run's task runs, one per mailbox, all ended."""
    task_runs = stack.task_runs(flow_run["id"])
    return len(task_runs) >= mailboxes and all(
        t["state"]["type"] in TERMINAL for t in task_runs)


def hold(stack: Stack, names: list[str]) -> dict[str, str]:
    """Take the mailboxes' locks through the API, as another run would (all the limit's
    slots, and the holder record that names the lease, so that no waiter reclaims them);
    lease ids."""
    leases = {}
    for name in names:
        stack.prefect.api("POST", "/v2/concurrency_limits/",
                          {"name": lock_name(name), "limit": SLOTS})
        granted = stack.prefect.api("POST", "/v2/concurrency_limits/increment-with-lease", {
            "names": [lock_name(name)], "slots": SLOTS, "mode": "concurrency",
            "lease_duration": 900})
        leases[name] = granted["lease_id"]
        stack.prefect.api("POST", "/variables/", {"name": record_name(name), "value": {
            "lease": granted["lease_id"], "slots": SLOTS, "holder": "the scale test"}})
    return leases


def release(stack: Stack, leases: dict[str, str]) -> None:
    while leases:
        _name, lease_id = leases.popitem()
        stack.prefect.api("POST", "/v2/concurrency_limits/decrement-with-lease",
                          {"lease_id": lease_id})


def cut_sessions(facts: Facts) -> list[Session]:
    """The killed run's sessions that the kill cut: logged in on its connections, still
    open when the signal was sent, and never logged out."""
    return [s for s in facts.sessions
            if s.port in facts.killed_ports and s.start < facts.killed_at
            and (s.end is None or s.end >= facts.killed_at) and s.reason != "Logged out"]


def contended(facts: Facts) -> set[str]:
    """Mailboxes that a task run of each shard was receiving at the same moment."""
    mailbox = facts.stack.mailbox_of_task_runs([r["id"] for r in facts.flow_runs])
    shard_of = {d["id"]: shard for shard, d in facts.deployments.items()}
    spans: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for flow_run in facts.flow_runs:
        shard = shard_of[flow_run["deployment_id"]]
        for task_run in facts.task_runs[flow_run["id"]]:
            name = mailbox.get(task_run["id"])
            if name and task_run["start_time"] and task_run["end_time"]:
                spans.setdefault(name, {}).setdefault(shard, []).append(
                    (_when(task_run["start_time"]), _when(task_run["end_time"])))
    return {name for name, by_shard in spans.items() if len(by_shard) == 2 and any(
        a_start < b_end and b_start < a_end
        for a_start, a_end in by_shard["shard-a"] for b_start, b_end in by_shard["shard-b"])}


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def test_every_message_is_saved_exactly_once_and_leaves_the_server(scenario: Facts):
    stack = scenario.stack
    delivered = sum(len(m) for m in stack.deliveries.values())
    assert delivered > 2 * MAILBOXES, delivered  # mail arrived between and during runs
    for name, messages in stack.deliveries.items():
        expected = Counter(m.replace(b"\r\n", b"\n") for m in messages)
        assert saved(stack, name) == expected, name
        assert stack.dovecot.message_count(stack.users[name]) == 0, name
        assert not (stack.top / name / "quarantine").exists(), name


def test_no_mailbox_ever_has_two_sessions_at_once(scenario: Facts):
    sessions = scenario.sessions
    assert not overlapping(sessions), overlapping(sessions)[:5]
    still_open = [s for s in sessions if s.end is None]
    assert not still_open, still_open
    # Each worker runs one flow run at a time, each run MAILBOX_WORKERS mailboxes at once.
    assert peak_concurrent(sessions) <= 2 * MAILBOX_WORKERS, peak_concurrent(sessions)

    # And the workers did compete: both shards' task runs for one shared mailbox were
    # under way at the same time, on two workers, yet their sessions (above) never met.
    # At least the first mailbox of each of the runs' threads, which queued behind the
    # holder of the shared mailboxes.
    assert len(scenario.contended) >= MAILBOX_WORKERS, scenario.contended
    assert scenario.contended <= set(scenario.shards["shard-a"]) & set(
        scenario.shards["shard-b"])


def test_runs_were_scheduled_and_ran_on_both_workers(scenario: Facts):
    flow_runs = scenario.flow_runs
    done = [r for r in flow_runs if r["state"]["type"] == "COMPLETED"]
    assert all(r["created_by"] and r["created_by"]["type"] == "SCHEDULE" for r in flow_runs)
    assert len({r["deployment_id"] for r in done}) == 2
    workers = {worker_of(scenario, r["id"]) for r in done}
    assert {0, 1} <= workers or {1, 2} <= workers, workers
    failed = [r for r in flow_runs if r["state"]["type"] not in ("COMPLETED", "SCHEDULED")
              and r["id"] != scenario.killed_run]
    assert not failed, [(r["name"], r["state"]) for r in failed]
    shard_of = {d["id"]: shard for shard, d in scenario.deployments.items()}
    for flow_run in done:  # one task run per mailbox of its shard, each completed
        states = Counter(t["state"]["type"] for t in scenario.task_runs[flow_run["id"]])
        mailboxes = len(scenario.shards[shard_of[flow_run["deployment_id"]]])
        assert states == {"COMPLETED": mailboxes}, (flow_run["name"], states)


def test_a_killed_runs_mailboxes_wait_for_the_lease_then_a_later_run_takes_them(
        scenario: Facts):
    killed_at = scenario.killed_at
    cut = cut_sessions(scenario)
    assert cut, "the kill did not cut a session"
    assert all(s.end is not None and s.end - killed_at < 5 for s in cut), cut
    for session in cut:
        later = [s for s in scenario.sessions if s.user == session.user and s.start > session.end]
        assert later, f"{session.user}: no session after the kill"
        waited = later[0].start - killed_at
        assert waited >= LAPSE_AT_LEAST, (session.user, waited)
    assert scenario.killed_run, "the killed flow run was not found"
    killed = [r for r in scenario.flow_runs if r["id"] == scenario.killed_run][0]
    assert killed["state"]["type"] == "RUNNING"  # nobody told Prefect: it just died
