"""A Prefect restart or outage never stops a mailbox, and Prefect's calls never decide what
happens to mail.

Each test runs receive-all-mail (or the bare mailbox lock) in processes of their own
(tests/outage/child.py) against a real Prefect server of its own and Dovecot, and restarts,
kills or slows that server under them (or fills the save directory). Each then counts, by
content: mail lost, duplicated, deleted from the server unsaved, and left unannounced (all
must be 0), and checks that the next run of the mailbox gets in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from prefect_pop3mail.tasks.events import (
    EVENT_MAILBOX_FAILED,
    EVENT_MAILBOX_RECEIVED,
    EVENT_RECEIVED,
    MAIL_FETCHED_LABEL,
)
from prefect_pop3mail.tasks.lock import SLOTS, lock_name, record_name
from tests.conftest import IN_CI, sample_message
from tests.servers.latency_proxy import LatencyProxy
from tests.servers.prefect_server import PrefectServer, start_prefect_server
from tests.test_many_mailboxes import log_sessions, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.prefect]

ROOT = Path(__file__).resolve().parent.parent
#: The lock's waits, shortened for the children (the real ones are minutes; see
#: tasks/lock.py): renewals every 2 s, a holder's lease looked at after 3 s of waiting,
#: slots reclaimed once that lease has been gone for 8 s.
FAST_LOCK = "RENEW_EVERY=2,PROBE_AFTER=3,PROBE_EVERY=3,GRACE=8"


@pytest.fixture
def prefect():
    server = start_prefect_server()
    yield server
    server.stop()
    shutil.rmtree(server.home, ignore_errors=True)


class Child:
    """tests/outage/child.py in a process of its own, talking to ``api`` (the server's
    URL unless a proxy stands in front of it). Its output lines are read as they come."""

    def __init__(self, server: PrefectServer, log: Path, *args: str, api: str | None = None,
                 **env: str):
        environment = server.env(PYTHONPATH=str(ROOT), **env,
                                 PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore")
        if api:
            environment["PREFECT_API_URL"] = api
        self.log = log
        with open(log, "ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.outage.child", *args], cwd=ROOT,
                env=environment, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=stderr, text=True)
        self.lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def line(self, timeout: float = 120) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output in {timeout} s: {self.stderr()[-3000:]}") from None
        assert line is not None, f"the child ended: {self.stderr()[-3000:]}"
        return line

    def result(self, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            line = self.line(max(deadline - time.monotonic(), 0.1))
            if line.startswith("RESULT "):
                self.process.wait(60)
                return json.loads(line[len("RESULT "):])

    def say(self, text: str = "") -> None:
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)


def first_to_say(children: list[Child], prefix: str, timeout: float = 120) -> Child:
    """The child whose next line starts with ``prefix`` first (the others keep theirs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children:
            try:
                line = child.lines.get(timeout=0.05)
            except queue.Empty:
                continue
            assert line is not None and line.startswith(prefix), (line, child.stderr()[-3000:])
            return child
    raise AssertionError(f"none said {prefix!r} within {timeout} s")


def save_configuration(prefect: PrefectServer, mailbox, save_dir: Path, tmp_path: Path,
                       **fields) -> str:
    name = f"outage-{uuid.uuid4().hex[:8]}"
    block = mailbox.block(save_dir, remove_from_server_after_read=True,
                          emit_message_events=True, **fields)
    values = {k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v)
              for k, v in block.model_dump().items() if k in type(block).model_fields}
    saver = Child(prefect, tmp_path / "save.log", "save", name, json.dumps(values, default=str))
    try:
        assert saver.line() == "saved"
    finally:
        saver.stop()
    return name


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()


class Ledger:
    """Where every delivered message is: on the server, saved (how often), announced."""

    def __init__(self, mailbox, messages: list[bytes], save_dir: Path):
        self.mailbox = mailbox
        self.delivered = {sha(m) for m in messages}
        assert len(self.delivered) == len(messages)
        self.save_dir = save_dir

    def on_server(self) -> set[str]:
        maildir = self.mailbox.server.maildir(self.mailbox.user)
        return {sha(p.read_bytes()) for sub in ("new", "cur") for p in (maildir / sub).iterdir()
                if p.is_file()}

    def saved(self) -> Counter:
        return Counter(sha(p.read_bytes()) for p in self.save_dir.glob("*/message.eml"))

    def raw_saved(self) -> set[str]:
        """SHA-256 of each saved original as received (what the events carry)."""
        return {hashlib.sha256(p.read_bytes()).hexdigest()
                for p in self.save_dir.glob("*/message.eml")}

    def deleted_unsaved(self) -> int:
        return len(self.delivered - self.on_server() - set(self.saved()))

    def duplicated(self) -> int:
        return sum(n - 1 for n in self.saved().values())

    def lost(self) -> int:
        return len(self.delivered - set(self.saved()) - self.on_server())

    def unannounced(self, prefect: PrefectServer, name: str) -> int:
        """Saved messages no ``pop3mail.message.received`` event on the server names
        (it stores events as they stream in: waited for)."""
        saved = self.raw_saved()
        missing = saved
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            announced = {e["payload"]["sha256"] for e in events(prefect, name, EVENT_RECEIVED)}
            missing = saved - announced
            if not missing:
                break
            time.sleep(1)
        return len(missing)


def events(prefect: PrefectServer, configuration: str, *names: str) -> list[dict]:
    """Every stored event of ``configuration`` with one of ``names``, oldest first."""
    body = {"filter": {"event": {"name": list(names)},
                       "any_resource": {"id": [f"pop3mail.configuration.{configuration}",
                                               f"pop3mail.mailbox.{configuration}"]},
                       "order": "ASC"},
            "limit": 50}
    page = prefect.api("POST", "/events/filter", json=body)
    found = list(page["events"])
    while page.get("next_page"):
        import httpx

        page = httpx.get(page["next_page"], timeout=30).json()
        found += page["events"]
    return found


def limit(prefect: PrefectServer, configuration: str) -> dict:
    return prefect.api("GET", f"/v2/concurrency_limits/{lock_name(configuration)}")


def assert_nothing_lost(ledger: Ledger, prefect: PrefectServer, name: str) -> dict:
    counts = {"lost": ledger.lost(), "duplicated": ledger.duplicated(),
              "deleted unsaved": ledger.deleted_unsaved(),
              "unannounced": ledger.unannounced(prefect, name)}
    print(counts)
    assert counts == {"lost": 0, "duplicated": 0, "deleted unsaved": 0, "unannounced": 0}
    return counts


def next_run_gets_in(prefect: PrefectServer, name: str, tmp_path: Path, **env) -> dict:
    """The next run of the mailbox enters it and completes."""
    result = Child(prefect, tmp_path / "next.log", "run", name, **env).result()
    assert result["state"] == "COMPLETED", result
    return result


# --- the lock ----------------------------------------------------------------------------


def test_a_holder_keeps_the_mailbox_through_a_restart_and_a_waiter_enters_after_it(
        prefect, tmp_path):
    """The restart empties the server's lease storage; the holder's next renewal finds its
    lease gone and takes a new one without letting the waiter in; the waiter enters only
    once the holder leaves."""
    name = f"lock-{uuid.uuid4().hex[:8]}"
    holder = Child(prefect, tmp_path / "holder.log", "hold", name,
                   POP3MAIL_TEST_LOCK_TIMINGS=FAST_LOCK)
    waiter = None
    try:
        first_lease = holder.line().split()[1]
        waiter = Child(prefect, tmp_path / "waiter.log", "hold", name,
                       POP3MAIL_TEST_LOCK_TIMINGS=FAST_LOCK)
        assert waiter.line() == "waiting"
        prefect.restart()
        # The holder's renewals (every 2 s) find the lease gone and replace it.
        assert wait_until(lambda: "keeps the mailbox under a new lease" in holder.stderr(),
                          timeout=30), holder.stderr()[-3000:]
        record = prefect.api("GET", f"/variables/name/{record_name(name)}")["value"]
        assert record["lease"] != first_lease and record["slots"] == 2
        # Well past the waiter's grace period: it still waits, as the lease is alive.
        assert not wait_until(lambda: waiter.process.poll() is not None or
                              "reclaimed" in waiter.stderr(), timeout=15)
        assert limit(prefect, name)["active_slots"] == 1  # one slot, under the new lease
        holder.say()
        assert holder.line() == "leaving recovered=1 lost=None"
        assert holder.line() == "released"
        assert waiter.line().startswith("held ")
        assert "reclaimed" not in waiter.stderr()
        waiter.say()
        assert waiter.line().startswith("leaving recovered=0")
        assert waiter.line() == "released"
    finally:
        holder.stop()
        if waiter:
            waiter.stop()
    assert limit(prefect, name)["active_slots"] == 0


def test_slots_of_a_holder_gone_with_its_lease_are_reclaimed_after_the_grace_period(
        prefect, tmp_path):
    """The holder is killed while the server restarts: its slots stay taken with no lease
    to free them. Two waiters: after the grace period one reclaims them; they then enter
    one after the other, never together."""
    name = f"lock-{uuid.uuid4().hex[:8]}"
    holder = Child(prefect, tmp_path / "holder.log", "hold", name,
                   POP3MAIL_TEST_LOCK_TIMINGS=FAST_LOCK)
    assert holder.line().startswith("held ")
    prefect.kill()
    holder.stop()  # gone, with its lease
    prefect.start()
    assert limit(prefect, name)["active_slots"] == SLOTS  # taken, and no lease will free them
    waiters = [Child(prefect, tmp_path / f"waiter{i}.log", "hold", name,
                     POP3MAIL_TEST_LOCK_TIMINGS=FAST_LOCK) for i in range(2)]
    try:
        started = time.monotonic()
        assert [w.line() for w in waiters] == ["waiting", "waiting"]
        first = first_to_say(waiters, "held ")
        assert time.monotonic() - started >= 8  # not before the grace period
        other = waiters[1] if first is waiters[0] else waiters[0]
        assert sum("reclaimed 2 slot(s)" in w.stderr() for w in waiters) == 1
        # The other still waits while the first is inside: it does not reclaim again.
        assert not wait_until(lambda: not other.lines.empty(), timeout=15)
        assert limit(prefect, name)["active_slots"] == SLOTS
        first.say()
        assert first.line().startswith("leaving") and first.line() == "released"
        assert other.line().startswith("held ")
        assert sum("reclaimed" in w.stderr() for w in waiters) == 1
        other.say()
        assert other.line().startswith("leaving") and other.line() == "released"
    finally:
        for waiter in waiters:
            waiter.stop()
    assert limit(prefect, name)["active_slots"] == 0


def test_a_release_that_finds_its_lease_gone_gives_the_slots_back_by_name(prefect, tmp_path):
    name = f"lock-{uuid.uuid4().hex[:8]}"
    holder = Child(prefect, tmp_path / "holder.log", "hold", name,
                   POP3MAIL_TEST_LOCK_TIMINGS="RENEW_EVERY=600")  # no renewal before leaving
    try:
        assert holder.line().startswith("held ")
        prefect.restart()
        assert limit(prefect, name)["active_slots"] == SLOTS
        holder.say()
        assert holder.line() == "leaving recovered=0 lost=None"
        assert holder.line() == "released"
    finally:
        holder.stop()
    assert "the mailbox lock was given back by name" in holder.stderr()
    assert limit(prefect, name)["active_slots"] == 0  # free at once, not after a grace period


# --- runs of receive-all-mail ---------------------------------------------------------------


def deliver(mailbox, count: int, tag: str, body_lines: int = 20) -> list[bytes]:
    messages = [sample_message(i, Message_ID=f"<{tag}-{i}@example.org>",
                               body=f"{tag} body {i}.\n" + "some text\n" * body_lines)
                for i in range(count)]
    mailbox.deliver(*messages)
    return messages


def saved_count(save_dir: Path) -> int:
    return len(list(save_dir.glob("*/message.eml")))


def run_events(prefect: PrefectServer, name: str, kind: str, at_least: int = 1) -> list[dict]:
    """The run events of ``kind`` stored so far, once there are ``at_least`` (the server
    stores events as they stream in), or after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        found = [e for e in events(prefect, name, kind)
                 if e["resource"]["prefect.resource.id"] == f"pop3mail.mailbox.{name}"]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.dovecot
def test_restart_while_a_run_holds_the_lock(prefect, mailbox, tmp_path):
    """The server restarts (SIGTERM, then a start on the same database) in the middle of a
    run's session while a second run waits for the mailbox. The first keeps the mailbox
    under a new lease and finishes; the second enters after it, never beside it."""
    messages = deliver(mailbox, 150, "restart")
    save_dir = tmp_path / "mail"
    name = save_configuration(prefect, mailbox, save_dir, tmp_path)
    ledger = Ledger(mailbox, messages, save_dir)
    slow = {"POP3MAIL_TEST_LOCK_TIMINGS": FAST_LOCK, "POP3MAIL_TEST_MESSAGE_DELAY": "0.3"}
    first = Child(prefect, tmp_path / "first.log", "run", name, **slow)
    second = None
    try:
        assert wait_until(lambda: saved_count(save_dir) >= 3, timeout=120), first.stderr()
        second = Child(prefect, tmp_path / "second.log", "run", name,
                       POP3MAIL_TEST_LOCK_TIMINGS=FAST_LOCK)
        assert second.line() == "waiting"  # turned away by the held limit
        prefect.restart()
        assert saved_count(save_dir) < len(messages), "the session ended before the restart"
        done = first.result()
        assert done == {"state": "COMPLETED", "message": done["message"], "received": 150}
        assert "keeps the mailbox under a new lease" in first.stderr()
        after = second.result()
        assert after["state"] == "COMPLETED" and after["received"] == 0, after
    finally:
        first.stop()
        if second:
            second.stop()
    assert wait_until(lambda: log_sessions(mailbox.server, mailbox.user)[2] == 0)
    sessions, most_at_once, _ = log_sessions(mailbox.server, mailbox.user)
    assert sessions == 2 and most_at_once == 1  # one session, then the other
    assert limit(prefect, name)["active_slots"] == 0
    assert mailbox.count() == 0
    assert_nothing_lost(ledger, prefect, name)
    next_run_gets_in(prefect, name, tmp_path)


@pytest.mark.dovecot
def test_the_api_killed_mid_run_with_removal_on(prefect, mailbox, tmp_path):
    """SIGKILL of the Prefect server while 300 messages are being saved. The session still
    ends with QUIT (the saved messages are deleted); the run fails with an error that names
    PREFECT_API_URL and what happened to the mail; once the server is back, the next run
    reclaims the lock the dead server forgot and announces the 300 late."""
    messages = deliver(mailbox, 300, "kill")
    save_dir = tmp_path / "mail"
    name = save_configuration(prefect, mailbox, save_dir, tmp_path)
    ledger = Ledger(mailbox, messages, save_dir)
    run = Child(prefect, tmp_path / "run.log", "run", name, POP3MAIL_TEST_LOCK_TIMINGS=FAST_LOCK,
                POP3MAIL_TEST_MESSAGE_DELAY="0.02",
                PREFECT_CLIENT_MAX_RETRIES="1")  # Prefect's own engine gives up sooner
    try:
        assert wait_until(lambda: saved_count(save_dir) >= 30, timeout=120), run.stderr()
        prefect.kill()
        killed_at = saved_count(save_dir)
        outcome = run.result()
    finally:
        run.stop()
    assert killed_at < len(messages), "the session ended before the kill"
    assert outcome["state"] != "COMPLETED", outcome
    log = run.stderr()
    assert "PrefectUnavailableError" in log and "(PREFECT_API_URL)" in log, log[-4000:]
    assert ("Saved 300 message(s); deleted 300 from the server; 300 to be announced by the "
            "next run") in log
    assert mailbox.count() == 0  # QUIT went out: the deletions of saved mail took effect
    assert ledger.deleted_unsaved() == 0 and ledger.duplicated() == 0

    prefect.start()  # the same database; its lease storage (in memory) is empty
    assert limit(prefect, name)["active_slots"] == SLOTS  # held, with no lease to free it
    started = time.monotonic()
    after = next_run_gets_in(prefect, name, tmp_path, POP3MAIL_TEST_LOCK_TIMINGS=FAST_LOCK)
    assert after["received"] == 0 and time.monotonic() - started < 120
    summary = run_events(prefect, name, EVENT_MAILBOX_RECEIVED)[-1]
    assert summary["payload"]["announced_late"] == 300
    assert summary["payload"]["handed_on"] == 300
    assert summary["resource"][MAIL_FETCHED_LABEL] == "true"  # "no mail" automations see it
    assert_nothing_lost(ledger, prefect, name)


@pytest.mark.dovecot
def test_a_slow_api_never_slows_the_session(prefect, mailbox, tmp_path):
    """Every request to Prefect goes through a proxy that adds 150 ms each way. The run
    completes, and no request to Prefect is made from the session's thread while its POP3
    session is open: the progress bar, the artifacts and the events wait their turn
    elsewhere, and the lock is renewed on its own thread."""
    messages = deliver(mailbox, 200, "slow")
    save_dir = tmp_path / "mail"
    name = save_configuration(prefect, mailbox, save_dir, tmp_path)
    ledger = Ledger(mailbox, messages, save_dir)
    requests = tmp_path / "requests.json"
    with LatencyProxy("127.0.0.1", prefect.port, delay=0.150) as proxy:
        api = f"http://127.0.0.1:{proxy.port}/api"
        run = Child(prefect, tmp_path / "run.log", "run", name, api=api,
                    POP3MAIL_TEST_REQUESTS=str(requests), POP3MAIL_TEST_MESSAGE_DELAY="0.05")
        try:
            outcome = run.result()
        finally:
            run.stop()
    assert outcome["state"] == "COMPLETED" and outcome["received"] == 200, outcome
    seen = json.loads(requests.read_text())
    assert len(seen["sessions"]) == 1
    thread, opened, closed = seen["sessions"][0]
    during = [path for t, at, path in seen["requests"] if t == thread and opened < at < closed]
    assert during == [], during
    # ... while other threads did talk to Prefect during the session (the progress bar).
    assert any(opened < at < closed and "artifacts" in path for _, at, path in seen["requests"])
    progress = prefect.api("POST", "/artifacts/filter",
                           json={"artifacts": {"key": {"any_": [f"pop3mail-{name}-progress"]}}})
    assert [a["data"] for a in progress] == [100.0]
    assert mailbox.count() == 0
    assert_nothing_lost(ledger, prefect, name)
    next_run_gets_in(prefect, name, tmp_path)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` at ``path``; root only (in CI that is a failure, not a skip)."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root, but this test is not: it cannot mount a tmpfs")
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.dovecot
def test_a_save_directory_that_fills_up_ends_the_run_failed(prefect, mailbox, tmp_path):
    """A 400 KB tmpfs for 10 messages of 60 KB. The run saves what fits, stops, and ends
    Failed with a message that names the save directory as configured, with one
    pop3mail.mailbox.failed event that announces what it saved (and no "received" event);
    with room again, the next run gets in and takes the rest."""
    messages = deliver(mailbox, 10, "full", body_lines=6000)
    with small_tmpfs(tmp_path / "small", "400k") as small:
        save_dir = small / "mail"
        name = save_configuration(prefect, mailbox, save_dir, tmp_path)
        ledger = Ledger(mailbox, messages, save_dir)
        outcome = Child(prefect, tmp_path / "run.log", "run", name).result()
        assert outcome["state"] == "FAILED", outcome
        saved = saved_count(save_dir)
        assert 0 < saved < 10
        message = outcome["message"]
        assert "RunStoppedEarlyError" in message and "the run stopped early" in message
        assert f"no space left to save in {save_dir}/" in message and "/proc/" not in message
        assert f"Saved {saved} message(s); deleted {saved} from the server" in message
        assert mailbox.count() == 10 - saved
        assert ledger.deleted_unsaved() == 0
        failed = run_events(prefect, name, EVENT_MAILBOX_FAILED)
        assert len(failed) == 1
        assert run_events(prefect, name, EVENT_MAILBOX_RECEIVED, at_least=0) == []
        payload = failed[0]["payload"]
        assert payload["error_type"] == "RunStoppedEarlyError" and payload["attempts"] == 1
        assert payload["handed_on"] == saved and len(payload["messages"]) == saved
        assert failed[0]["resource"][MAIL_FETCHED_LABEL] == "true"
        progress = prefect.api("POST", "/artifacts/filter", json={
            "artifacts": {"key": {"any_": [f"pop3mail-{name}-progress"]}}})
        assert "stopped early" in progress[0]["description"]

        subprocess.run(["mount", "-o", "remount,size=4m", str(small)], check=True)
        after = next_run_gets_in(prefect, name, tmp_path)
        assert after["received"] == 10 - saved
        assert mailbox.count() == 0
        assert_nothing_lost(ledger, prefect, name)
