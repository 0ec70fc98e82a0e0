"""The per-mailbox lock across processes: one holder at a time, the other waits or fails
cleanly, and Dovecot never sees two sessions of one mailbox at once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from prefect_pop3mail.tasks.lock import SLOTS, MailboxBusyError, lock_name, mailbox_lock
from prefect_pop3mail.tasks.pop3.models import Security
from tests.conftest import sample_message
from tests.test_many_mailboxes import log_sessions, saved_originals, wait_until

pytestmark = [pytest.mark.dovecot, pytest.mark.slow, pytest.mark.prefect]

ROOT = Path(__file__).resolve().parent.parent


def child(code: str, *args: str) -> subprocess.Popen:
    """Another worker: a fresh interpreter on the same Prefect API."""
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PYTHONPATH=str(ROOT),
               PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


HOLD = """
    import sys
    from prefect_pop3mail.tasks.lock import mailbox_lock
    with mailbox_lock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.readline()  # until the test says so
    print("released", flush=True)
"""


def active_slots(name: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(lock_name(name)).active_slots


def test_a_mailbox_held_by_another_process_fails_cleanly_without_a_session(mailbox):
    name = f"lock-{uuid.uuid4().hex[:8]}"
    holder = child(HOLD, name)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MailboxBusyError, match="held by another run") as caught:
            with mailbox_lock(name, timeout_seconds=1.5):
                pytest.fail("entered a mailbox another process holds")
        assert caught.value.retryable
        assert log_sessions(mailbox.server, mailbox.user)[0] == 0
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
    finally:
        holder.kill()
        holder.wait(30)
    with mailbox_lock(name, timeout_seconds=5):  # free again, at once
        assert active_slots(name) == SLOTS
    assert active_slots(name) == 0


def test_the_waiting_process_enters_when_the_holder_leaves(mailbox):
    name = f"lock-{uuid.uuid4().hex[:8]}"
    holder = child(HOLD, name)
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = child(HOLD, name)
        try:
            assert not wait_until(lambda: waiter.poll() is not None, timeout=2)
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert waiter.stdout.readline().strip() == "held"
            assert holder.stdout.readline().strip() == "released"
            waiter.stdin.write("\n")
            waiter.stdin.flush()
            assert waiter.stdout.readline().strip() == "released"
        finally:
            waiter.kill()
            waiter.wait(30)
    finally:
        holder.kill()
        holder.wait(30)
    assert active_slots(name) == 0


def test_two_flow_runs_of_one_mailbox_at_once_in_two_processes(dovecot, mailbox, tmp_path):
    """Both start together; Dovecot's log shows one session, then the other, never two."""
    name = f"lock-{uuid.uuid4().hex[:8]}"
    messages = [sample_message(i, Message_ID=f"<{name}-{i}@example.org>") for i in range(5)]
    mailbox.deliver(*messages)
    mailbox.block(tmp_path, Security.IMPLICIT, remove_from_server_after_read=True).save(name)
    run = """
        import sys
        from prefect_pop3mail.flows import receive_all_mail
        sys.stdin.readline()  # start together
        print(len(receive_all_mail(sys.argv[1])), flush=True)
    """
    runs = [child(run, name) for _ in range(2)]
    try:
        for process in runs:
            process.stdin.write("\n")
            process.stdin.flush()
        counts = sorted(int(process.stdout.readline()) for process in runs)
    finally:
        for process in runs:
            process.kill()
            process.wait(30)

    assert counts == [0, 5]
    assert wait_until(lambda: log_sessions(dovecot, mailbox.user)[2] == 0)
    assert log_sessions(dovecot, mailbox.user) == (2, 1, 0)
    assert saved_originals(tmp_path) == Counter(m.replace(b"\r\n", b"\n") for m in messages)
    assert active_slots(name) == 0


def test_the_slot_is_given_back_when_the_run_fails(mailbox):
    name = f"lock-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError, match="boom"):
        with mailbox_lock(name):
            raise RuntimeError("boom")
    assert active_slots(name) == 0
