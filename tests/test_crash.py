"""No mail lost, none duplicated, none unannounced, under SIGKILL at random moments.

300 messages in Dovecot; a child process runs MAIL_RECEIVEALL with removal on and kills
itself at a random moment; this repeats 30 times, then a clean run empties the mailbox. Every
message must be saved exactly once (by Message-ID and SHA-256), none left on the server, and
every saved message announced, never twice by one run, always under the same id.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from prefect_pop3mail.tasks.lock import lock_name
from prefect_pop3mail.tasks.pop3.models import Security
from tests.conftest import sample_message

pytestmark = [pytest.mark.dovecot, pytest.mark.slow, pytest.mark.prefect]

MESSAGES = int(os.environ.get("POP3MAIL_CRASH_MESSAGES", "300"))
KILLS = int(os.environ.get("POP3MAIL_CRASH_KILLS", "30"))
MOMENTS = ["retr", "before-journal", "before-dele", "before-quit", "after-quit",
           "before-announce", "before-ack"]
ONCE_PER_RUN = ("before-quit", "after-quit", "before-announce", "before-ack")
ROOT = Path(__file__).resolve().parent.parent


def release_lock_of_killed_run(name: str) -> None:
    """Stand in for the lease expiry that frees a killed run's slot after a minute."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(
            lock_name(name), GlobalConcurrencyLimitUpdate(active_slots=0)
        )


class Children:
    """A fork server of crash-test children (tests/crash/child.py)."""

    def __init__(self, announce_log: Path):
        env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT),
                   PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
                   POP3MAIL_ANNOUNCE_LOG=str(announce_log))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.crash.child", "serve"], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def run(self, name: str, moment: str, n: int, batch: int = 0) -> int:
        self.process.stdin.write(f"{name} {moment} {n} {batch}\n")
        self.process.stdin.flush()
        while True:  # the child's own output comes first
            line = self.process.stdout.readline()
            assert line, "the crash-test fork server died"
            if line.strip().lstrip("-").isdigit():
                code = int(line)
                break
        if code == -9:
            release_lock_of_killed_run(name)
        elif moment == "none":
            assert code == 0, f"a clean run failed with {code}"
        return code

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


def saved_originals(directory: Path) -> list[bytes]:
    return [p.read_bytes() for p in directory.glob("*/message.eml")]


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(mailbox, tmp_path):
    crash_test(mailbox, tmp_path, str(tmp_path), lambda: saved_originals(tmp_path),
               MESSAGES, KILLS, MOMENTS)


@pytest.mark.s3
def test_sigkill_with_s3_storage_loses_and_duplicates_nothing(mailbox, tmp_path, monkeypatch):
    """The same promises with the save directory on S3 (a real S3-compatible server): no
    rename, no append; a folder counts once its marker is there."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from tests.servers.s3 import S3Server

    server = S3Server()
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)  # the children inherit them
        bucket = server.new_bucket()

        def originals() -> list[bytes]:
            keys = server.keys(bucket, "mail/")
            folders = {k.rsplit("/", 2)[-2] for k in keys if not k.startswith("mail/.pop3mail/")}
            half = [f for f in folders if f"mail/{f}/.complete" not in keys]
            assert not half, f"folders left without their marker: {half}"
            return [server.read(bucket, f"mail/{f}/message.eml") for f in folders]

        crash_test(mailbox, tmp_path, f"s3://{bucket}/mail", originals,
                   int(os.environ.get("POP3MAIL_CRASH_S3_MESSAGES", "80")),
                   int(os.environ.get("POP3MAIL_CRASH_S3_KILLS", "10")),
                   ["mid-upload", *MOMENTS])
    finally:
        server.stop()


def crash_test(mailbox, tmp_path: Path, save_directory: str, read_originals, count: int,
               kill_count: int, moments: list[str]) -> None:
    seed = int(os.environ.get("POP3MAIL_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    messages = [
        sample_message(i, body=f"Crash test body {i}.\n" + "line of text\n" * rng.randrange(1, 400))
        for i in range(count)
    ]
    mailbox.deliver(*messages)
    name = f"crash-{uuid.uuid4().hex[:8]}"
    mailbox.block(save_directory, Security.IMPLICIT, remove_from_server_after_read=True,
                  emit_message_events=True).save(name)

    kills = Counter()
    # Every moment equally often (when there are kills enough), in any order.
    plan = moments * (kill_count // len(moments)) + rng.sample(moments, kill_count % len(moments))
    rng.shuffle(plan)
    announce_log = tmp_path.parent / f"{tmp_path.name}-announced.log"
    children = Children(announce_log)
    for _ in range(kill_count):
        remaining = mailbox.count()
        if remaining == 0:
            break
        moment = plan.pop()
        batch = rng.randrange(3, 12)  # a run takes a few messages, so kills spread out
        # "retr" counts blocks written (a small message is one), the others messages.
        n = 1 if moment in ONCE_PER_RUN else rng.randrange(1, batch + 1)
        if children.run(name, moment, n, batch) == -9:
            kills[moment] += 1
    children.run(name, "none", 0)
    children.close()

    print(f"seed={seed} kills={dict(kills)}")
    assert sum(kills.values()) >= kill_count * 2 // 3, f"too few kills happened: {kills} (seed {seed})"
    if kill_count >= len(moments):
        assert len(kills) == len(moments), f"not every moment was hit: {kills} (seed {seed})"
    assert mailbox.count() == 0, f"mail left on the server (seed {seed})"
    originals = read_originals()
    expected = {hashlib.sha256(m.replace(b"\n", b"\r\n")).hexdigest() for m in messages}
    got = Counter(hashlib.sha256(o).hexdigest() for o in originals)
    assert set(got) == expected, f"lost: {len(expected - set(got))} (seed {seed})"
    assert max(got.values()) == 1, f"duplicated: {[h for h, c in got.items() if c > 1]}"
    ids = Counter(o.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0] for o in originals)
    assert len(ids) == count and max(ids.values()) == 1
    check_hand_off(announce_log, set(got), name)


def check_hand_off(announce_log: Path, saved: set[str], configuration: str) -> None:
    """Every saved message was announced; no run announced one twice; ids are stable."""
    announced = [line.split() for line in announce_log.read_text().splitlines()]
    per_run = Counter((pid, mail_id) for pid, mail_id, _ in announced)
    assert max(per_run.values()) == 1, "a run announced a message twice"
    id_of: dict[str, set[str]] = {}
    for _, mail_id, sha in announced:
        id_of.setdefault(sha, set()).add(mail_id)
    assert set(id_of) == saved, f"never announced: {len(saved - set(id_of))}"
    assert all(len(i) == 1 for i in id_of.values()), "a message was announced under two ids"
    deadline = time.monotonic() + 60  # the server stores events as they stream in
    while (stored := events_stored(configuration)) < len(saved) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stored == len(saved), f"{stored} events stored for {len(saved)} messages"


def events_stored(configuration: str) -> int:
    """Distinct message events the Prefect server holds (a repeat has the same event id)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    from prefect_pop3mail.tasks.events import EVENT_RECEIVED

    wanted = EventFilter(
        event=EventNameFilter(name=[EVENT_RECEIVED]),
        related=EventRelatedFilter(id=[f"pop3mail.configuration.{configuration}"]),
    )
    with get_client(sync_client=True) as client:
        return client.read_events(filter=wanted, limit=1).total
