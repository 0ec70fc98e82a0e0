"""Faults on purpose: dropped connections at random points, a locked mailbox, a save
directory that cannot be written, endless replies. Nothing may be lost or duplicated."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import (
    MessageTooLargeError,
    POP3ConnectionError,
    POP3InUseError,
    POP3MailError,
    POP3ProtocolError,
    POP3TimeoutError,
    SaveDirectoryError,
)
from prefect_pop3mail.tasks.pop3.models import (
    ConnectionSettings,
    ReceiveOptions,
    SaveOptions,
    Security,
)
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
from tests.conftest import sample_message
from tests.servers.faultserver import FaultServer, raw, trickle

DROPS = int(os.environ.get("POP3MAIL_DROPS", "30"))


def settings_for(server: FaultServer, **overrides) -> ConnectionSettings:
    values = dict(host="127.0.0.1", port=server.port, security=Security.NONE, user=server.user,
                  password=SecretStr(server.password), timeout=5)
    values.update(overrides)
    return ConnectionSettings(**values)


def originals(directory: Path) -> Counter:
    return Counter(hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in directory.glob("*/message.eml"))


def test_connection_dropped_at_random_points_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random(int(os.environ.get("POP3MAIL_DROP_SEED", "20261126")))
    messages = [sample_message(i, body="text line\r\n" * rng.randrange(1, 300)).replace(
        b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") for i in range(120)]
    options = ReceiveOptions(remove_after_read=True, in_use_retries=0)
    drops = 0
    with FaultServer(messages) as server:
        save = SaveOptions(directory=tmp_path)
        total = sum(len(m) for m in messages)
        for _ in range(DROPS):
            if not server.messages:
                break
            server.cut_output_at = rng.randrange(50, total // 4)
            try:
                receive_mailbox("drops", settings_for(server), save, options)
            except POP3ConnectionError:
                drops += 1
        server.cut_output_at = None
        while server.messages:
            receive_mailbox("drops", settings_for(server), save, options)
    print(f"{drops} connection drops over {len(messages)} messages")
    assert drops >= DROPS // 2, f"only {drops} drops happened"
    got = originals(tmp_path)
    assert set(got) == {hashlib.sha256(m).hexdigest() for m in messages}
    assert max(got.values()) == 1


@pytest.mark.dovecot
@pytest.mark.slow
def test_locked_mailbox_is_retried_then_received(mailbox, tmp_path):
    """Dovecot's pop3_lock_session answers a second session [IN-USE] (after ~13 s)."""
    mailbox.deliver(sample_message(1))
    holder = POP3Session(mailbox.settings(timeout=60))
    holder.connect()
    holder.login()
    threading.Timer(15, holder.quit).start()  # the other client finishes in a while
    report = receive_mailbox(
        "locked", mailbox.settings(timeout=60), SaveOptions(directory=tmp_path),
        ReceiveOptions(remove_after_read=True, in_use_retries=2, in_use_backoff=1.0),
    )
    assert [m.subject for m in report.received] == ["Message 1"]
    assert mailbox.count() == 0


def test_locked_mailbox_gives_a_clear_error_after_the_retries(tmp_path):
    with FaultServer([sample_message(1)]) as server:
        server.on("PASS", lambda conn, args: conn.sendline(
            "-ERR [IN-USE] Mailbox is locked by another POP3 session.") or True)
        started = time.monotonic()
        with pytest.raises(POP3InUseError) as info:
            receive_mailbox("locked", settings_for(server), SaveOptions(directory=tmp_path),
                            ReceiveOptions(in_use_retries=2, in_use_backoff=0.2))
        assert time.monotonic() - started >= 0.2 + 0.4  # backed off twice
        assert sum(c.startswith("PASS") for c in server.commands) == 3
        assert "still refused after 3 attempts" in str(info.value)
        assert server.password not in str(info.value)
        assert len(server.messages) == 1


@contextmanager
def mounted_tmpfs(path: Path, options: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_unwritable_save_directory_is_refused_before_anything_is_read(tmp_path):
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as readonly, \
            FaultServer([sample_message(1)]) as server:
        with pytest.raises(SaveDirectoryError, match="save_directory") as info:
            receive_mailbox("ro", settings_for(server), SaveOptions(directory=readonly / "mail"),
                            ReceiveOptions(remove_after_read=True))
        assert "Read-only" in str(info.value) or "cannot" in str(info.value)
        assert not any(c.startswith(("RETR", "DELE")) for c in server.commands)
        assert len(server.messages) == 1


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (raw(b"x" * (10 * 1024 * 1024), close=True), POP3ProtocolError),  # endless line
        (raw(b"+OK here it comes\r\n" + b"line\r\n" * 400_000), MessageTooLargeError),
        (raw(b"\x00\xff garbage \x1b[2J\r\n"), POP3ProtocolError),
    ],
    ids=["endless-line", "endless-message", "garbage"],
)
def test_hostile_replies_are_stopped_by_limits(tmp_path, fault, error):
    with FaultServer([sample_message(1, body="short\r\n")]) as server:
        server.on("RETR", fault)
        run = lambda: receive_mailbox(  # noqa: E731
            "hostile", settings_for(server), SaveOptions(directory=tmp_path),
            ReceiveOptions(remove_after_read=True, max_message_size=100_000))
        if error is MessageTooLargeError:  # that message's failure: the run goes on
            assert [f.error_type for f in run().failed] == ["MessageTooLargeError"]
        else:
            with pytest.raises(error):
                run()
        assert len(server.messages) == 1  # nothing deleted
    assert not list(tmp_path.glob("*/message.eml"))


def test_a_silent_server_times_out_and_deletes_nothing(tmp_path):
    with FaultServer([sample_message(1)]) as server:
        server.on("RETR", lambda conn, args: time.sleep(3) or True)
        with pytest.raises(POP3TimeoutError):
            receive_mailbox("slow", settings_for(server, timeout=1), SaveOptions(directory=tmp_path),
                            ReceiveOptions(remove_after_read=True))
        assert len(server.messages) == 1


def test_a_trickling_server_ends_the_run_at_the_reply_deadline(tmp_path):
    """One byte every 20 ms never trips the 1 s read timeout; the reply deadline does."""
    with FaultServer([sample_message(1), sample_message(2)]) as server:
        server.on("RETR", trickle(b"+OK\r\n" + b"x" * 100_000), args=("2",))
        with pytest.raises(POP3TimeoutError, match="reply to RETR is too slow"):
            receive_mailbox("trickle", settings_for(server, timeout=1),
                            SaveOptions(directory=tmp_path),
                            ReceiveOptions(remove_after_read=True, pipelining=False))
        assert len(server.messages) == 2  # the session died: not even message 1 was deleted
    assert len(list(tmp_path.glob("*/message.eml"))) == 1  # but it is saved and journalled


def test_invalid_and_shared_uidls_leave_those_messages_and_receive_the_rest(tmp_path):
    messages = [sample_message(i) for i in range(1, 6)]
    listing = b"1 good-1\r\n2 bad\x7fuid\r\n3 shared\r\n4 shared\r\n5 good-5\r\n.\r\n"
    with FaultServer(messages) as server:
        server.on("UIDL", raw(b"+OK\r\n" + listing))
        report = receive_mailbox("uidls", settings_for(server), SaveOptions(directory=tmp_path),
                                 ReceiveOptions(remove_after_read=True))
        assert sorted(m.uidl for m in report.received) == ["good-1", "good-5"]
        assert server.messages == messages[1:4]  # never deleted: the journal cannot name them


def test_every_engine_error_is_one_tree():
    for error in (POP3InUseError, POP3TimeoutError, POP3ProtocolError, SaveDirectoryError):
        assert issubclass(error, POP3MailError)


def test_a_refused_deletion_does_not_undo_the_others(tmp_path):
    with FaultServer([sample_message(i) for i in range(1, 5)]) as server:
        server.on("DELE", lambda conn, args: conn.sendline("-ERR [SYS/PERM] cannot delete") or True,
                  args=("2",))
        report = receive_mailbox("dele", settings_for(server), SaveOptions(directory=tmp_path),
                                 ReceiveOptions(remove_after_read=True))
        deleted = {m.subject: m.deleted for m in report.received}
        assert deleted == {"Message 1": True, "Message 2": False, "Message 3": True,
                           "Message 4": True}
        refused = next(m for m in report.received if m.subject == "Message 2")
        assert any("SYS/PERM" in w for w in refused.warnings)
        assert len(server.messages) == 1  # only the refused one is left
        server.clear_faults()
        again = receive_mailbox("dele", settings_for(server), SaveOptions(directory=tmp_path),
                                ReceiveOptions(remove_after_read=True))
        assert again.received == [] and server.messages == []  # deleted, not saved twice
    assert len(list(tmp_path.glob("*/message.eml"))) == 4


def test_a_dropped_connection_leaves_no_partial_file(tmp_path):
    from tests.servers.faultserver import cut_after

    with FaultServer([sample_message(1, body="x" * 50_000 + "\r\n")]) as server:
        server.on("RETR", cut_after(20_000))
        with pytest.raises(POP3ConnectionError):
            receive_mailbox("cut", settings_for(server), SaveOptions(directory=tmp_path),
                            ReceiveOptions(remove_after_read=True))
    state = tmp_path / ".pop3mail"  # the journal and the outbox live there, not mail
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != state]
    assert leftovers == []


def test_a_full_disk_stops_the_run_and_the_rest_waits_on_the_server(tmp_path):
    messages = [sample_message(i, body="y" * 60_000 + "\r\n") for i in range(1, 9)]
    with mounted_tmpfs(tmp_path / "small", "size=300k") as small, FaultServer(messages) as server:
        save = SaveOptions(directory=small / "mail")
        report = receive_mailbox("full", settings_for(server), save,
                                 ReceiveOptions(remove_after_read=True))
        saved = len(report.received)
        assert 0 < saved < len(messages)
        assert [f.error_type for f in report.failed] == ["DiskFullError"]
        assert "no space" in report.failed[0].error
        assert len(server.messages) == len(messages) - saved  # the rest waits
        assert all(m.deleted for m in report.received)
        subprocess.run(["mount", "-o", "remount,size=2m", str(small)], check=True)
        rest = receive_mailbox("full", settings_for(server), save,
                               ReceiveOptions(remove_after_read=True))
        assert saved + len(rest.received) == len(messages) and not server.messages
        got = originals(small / "mail")
        assert len(got) == len(messages) and max(got.values()) == 1


def test_commit_every_n_messages_quits_and_reconnects(tmp_path):
    with FaultServer([sample_message(i) for i in range(10)]) as server:
        report = receive_mailbox("commit", settings_for(server), SaveOptions(directory=tmp_path),
                                 ReceiveOptions(remove_after_read=True, commit_every=3))
        assert len(report.received) == 10 and all(m.deleted for m in report.received)
        assert server.sessions == 4  # 3 + 3 + 3 + 1, each committed by its QUIT
        assert sum(c == "QUIT" for c in server.commands) == 4
        assert server.messages == []
