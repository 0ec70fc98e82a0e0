"""Fan-out: 20 mailboxes at once through receive_from_mailboxes, on the default task runner
and on Dask; and the per-mailbox lock, seen from Dovecot's own log."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from prefect_pop3mail.flows import receive_all_mail, receive_from_mailboxes
from prefect_pop3mail.flows.receiving import MailboxesFailedError
from prefect_pop3mail.tasks.lock import mailbox_lock
from prefect_pop3mail.tasks.pop3.models import Security
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from tests.conftest import Mailbox, sample_message

pytestmark = [pytest.mark.dovecot, pytest.mark.slow, pytest.mark.prefect]

MAILBOXES = 20
MESSAGES_EACH = 3
INACTIVE = 7  # this one's configuration is saved with status Inactive

_LOGIN = re.compile(r"pop3-login: Info: Login: user=<(?P<user>[^>]*)>.*session=<(?P<id>[^>]+)>")
_LOGOUT = re.compile(r"pop3\((?P<user>[^)]*)\)<\d+><(?P<id>[^>]+)>: Info: Disconnected")


def sessions_in_log(log: str, user: str) -> tuple[int, int, int]:
    """(sessions, most open at once, open at the end) for ``user``, from Dovecot's log in
    its order: a session is open from its Login line to its Disconnected line."""
    open_now: set[str] = set()
    sessions = most = 0
    for line in log.splitlines():
        if (m := _LOGIN.search(line)) and m["user"] == user:
            sessions += 1
            open_now.add(m["id"])
            most = max(most, len(open_now))
        elif (m := _LOGOUT.search(line)) and m["user"] == user:
            open_now.discard(m["id"])
    return sessions, most, len(open_now)


def log_sessions(dovecot, user: str) -> tuple[int, int, int]:
    return sessions_in_log(dovecot.log_file.read_text(errors="replace"), user)


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def normalized(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n")


def saved_originals(save_dir: Path) -> Counter:
    return Counter(normalized(p.read_bytes()) for p in save_dir.glob("*/message.eml"))


def dask_runner():
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 2, "processes": False,
                        "dashboard_address": None}
    )


class Fleet:
    """20 Dovecot users and their saved configurations, one folder for all their mail (as
    a team's shared inbox would be), and every message delivered to them so far."""

    def __init__(self, dovecot, save_dir: Path):
        self.save_dir = save_dir
        tag = uuid.uuid4().hex[:8]
        self.boxes = {f"fleet-{tag}-{i:02d}": Mailbox(dovecot) for i in range(MAILBOXES)}
        self.inactive = list(self.boxes)[INACTIVE]
        self.delivered: dict[str, list[bytes]] = {name: [] for name in self.boxes}
        for name in self.boxes:
            self.save(name, active=name != self.inactive)

    def save(self, name: str, active: bool) -> None:
        self.boxes[name].block(
            self.save_dir, Security.IMPLICIT, remove_from_server_after_read=True,
            status="Active" if active else "Inactive",
        ).save(name, overwrite=True)

    def deliver(self, run: str) -> dict[str, list[bytes]]:
        """A few new messages for every mailbox; returns them by configuration."""
        new = {}
        for i, (name, box) in enumerate(self.boxes.items()):
            new[name] = [
                sample_message(i * 10 + j, body=f"{run}: mailbox {i}, message {j}.\n",
                               Message_ID=f"<{run}-{i}-{j}-{uuid.uuid4().hex[:6]}@example.org>")
                for j in range(MESSAGES_EACH)
            ]
            box.deliver(*new[name])
            self.delivered[name] += new[name]
        return new

    def all_delivered(self) -> Counter:
        return Counter(normalized(raw) for raws in self.delivered.values() for raw in raws)


@pytest.fixture(scope="module")
def fleet(dovecot, tmp_path_factory) -> Fleet:
    return Fleet(dovecot, tmp_path_factory.mktemp("fleet"))


@pytest.mark.parametrize("runner", ["threads", "dask"])
def test_twenty_mailboxes_at_once_one_inactive(fleet, runner):
    fleet.save(fleet.inactive, active=False)
    new = fleet.deliver(runner)
    flow = receive_from_mailboxes
    if runner == "dask":
        flow = receive_from_mailboxes.with_options(task_runner=dask_runner())

    state = flow(list(fleet.boxes), return_state=True)

    assert state.is_failed()
    assert f"1 of {MAILBOXES} mailbox(es) failed: {fleet.inactive}: " in state.message
    assert "Inactive" in state.message
    error = state.result(raise_on_failure=False)
    assert isinstance(error, MailboxesFailedError)
    received = error.received
    active = [name for name in fleet.boxes if name != fleet.inactive]
    assert sorted(received) == sorted(active)
    for name in active:
        assert sorted(normalized(m.original_path.read_bytes()) for m in received[name]) == \
            sorted(normalized(raw) for raw in new[name]), name
        assert all(m.deleted and m.configuration == name for m in received[name])
        assert fleet.boxes[name].count() == 0, name
    assert fleet.boxes[fleet.inactive].count() == MESSAGES_EACH  # never connected to
    # Every message of the 19 saved exactly once (with all earlier runs' mail, once each);
    # nothing of the inactive one.
    waiting = Counter(normalized(raw) for raw in new[fleet.inactive])
    assert saved_originals(fleet.save_dir) == fleet.all_delivered() - waiting

    # Activated, the 20th mailbox is received on the next run; nothing is saved twice.
    fleet.save(fleet.inactive, active=True)
    again = flow([fleet.inactive], return_state=True)
    assert again.is_completed(), again.message
    assert len(again.result()[fleet.inactive]) == MESSAGES_EACH
    assert fleet.boxes[fleet.inactive].count() == 0
    assert saved_originals(fleet.save_dir) == fleet.all_delivered()


def test_log_shows_overlapping_sessions_when_there_are_some(dovecot):
    """The control for the lock test below: its log reading does see an overlap."""
    box = Mailbox(dovecot)
    box.deliver(sample_message(1))
    second_logged_in = threading.Event()

    def second_session() -> None:
        with POP3Session(box.settings()) as session:
            session.login()  # Dovecot holds this one until the first session quits
        second_logged_in.set()

    with POP3Session(box.settings()) as first:
        first.login()
        other = threading.Thread(target=second_session)
        other.start()
        assert wait_until(lambda: log_sessions(dovecot, box.user)[0] == 2)
    other.join(15)
    assert second_logged_in.is_set()
    assert wait_until(lambda: log_sessions(dovecot, box.user)[2] == 0)
    assert log_sessions(dovecot, box.user) == (2, 2, 0)


def test_two_runs_of_one_mailbox_never_hold_a_session_at_once(dovecot, mailbox, tmp_path):
    name = f"lock-{uuid.uuid4().hex[:8]}"
    messages = [sample_message(i, Message_ID=f"<lock-{name}-{i}@example.org>") for i in range(3)]
    mailbox.deliver(*messages)
    mailbox.block(tmp_path, Security.IMPLICIT, remove_from_server_after_read=True).save(name)
    states = {}

    def run(key: str) -> None:
        states[key] = receive_all_mail(name, return_state=True)

    runs = [threading.Thread(target=run, args=(key,)) for key in ("a", "b")]
    with mailbox_lock(name):  # someone else holds the mailbox: both runs must wait
        for thread in runs:
            thread.start()
        time.sleep(2.0)
        assert log_sessions(dovecot, mailbox.user) == (0, 0, 0)
        assert mailbox.count() == 3
    for thread in runs:
        thread.join(90)

    assert all(state.is_completed() for state in states.values()), states
    assert sorted(len(state.result()) for state in states.values()) == [0, 3]
    assert wait_until(lambda: log_sessions(dovecot, mailbox.user)[2] == 0)
    assert log_sessions(dovecot, mailbox.user) == (2, 1, 0)
    assert saved_originals(tmp_path) == Counter(normalized(m) for m in messages)
    assert mailbox.count() == 0
