"""No mail lost, none duplicated, under SIGKILL at chosen random moments (against Dovecot).

300 messages; a child process runs MAIL_RECEIVEALL with removal on and kills itself at a
random moment; this repeats 30 times, then a clean run empties the mailbox. Every message must
be saved exactly once (by Message-ID and SHA-256) and none left on the server.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL

from prefect_pop3mail.tasks.pop3.models import Security
from prefect_pop3mail.tasks.publish import lock_name
from tests.conftest import sample_message

pytestmark = [pytest.mark.dovecot, pytest.mark.slow]

MESSAGES = int(os.environ.get("POP3MAIL_CRASH_MESSAGES", "300"))
KILLS = int(os.environ.get("POP3MAIL_CRASH_KILLS", "30"))
MOMENTS = ["retr", "before-journal", "before-dele", "before-quit", "after-quit"]
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

    def __init__(self):
        env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT),
                   PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore")
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
    seed = int(os.environ.get("POP3MAIL_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    messages = [
        sample_message(i, body=f"Crash test body {i}.\n" + "line of text\n" * rng.randrange(1, 400))
        for i in range(MESSAGES)
    ]
    mailbox.deliver(*messages)
    name = f"crash-{uuid.uuid4().hex[:8]}"
    mailbox.block(tmp_path, Security.IMPLICIT, remove_from_server_after_read=True).save(name)

    kills = Counter()
    children = Children()
    for _ in range(KILLS):
        remaining = mailbox.count()
        if remaining == 0:
            break
        moment = rng.choice(MOMENTS)
        batch = rng.randrange(3, 12)  # a run takes a few messages, so kills spread out
        # "retr" counts blocks written (a small message is one), the others messages.
        n = 1 if moment.endswith("quit") else rng.randrange(1, batch + 1)
        if children.run(name, moment, n, batch) == -9:
            kills[moment] += 1
    children.run(name, "none", 0)
    children.close()

    print(f"seed={seed} kills={dict(kills)}")
    assert sum(kills.values()) >= KILLS * 2 // 3, f"too few kills happened: {kills} (seed {seed})"
    assert len(kills) == len(MOMENTS), f"not every moment was hit: {kills} (seed {seed})"
    assert mailbox.count() == 0, f"mail left on the server (seed {seed})"
    originals = saved_originals(tmp_path)
    expected = {hashlib.sha256(m.replace(b"\n", b"\r\n")).hexdigest() for m in messages}
    got = Counter(hashlib.sha256(o).hexdigest() for o in originals)
    assert set(got) == expected, f"lost: {len(expected - set(got))} (seed {seed})"
    assert max(got.values()) == 1, f"duplicated: {[h for h, c in got.items() if c > 1]}"
    ids = Counter(o.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0] for o in originals)
    assert len(ids) == MESSAGES and max(ids.values()) == 1
