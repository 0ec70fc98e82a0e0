"""The save directory is not a way in, and the journal never deletes unsaved mail nor
forgets saved mail. Each test plants what someone who can write in the save directory (but
is not the worker's user) could plant, or damages the journal as a crash would."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError
from prefect_pop3mail.tasks.pop3.journal import PRUNE_AT, Journal, Saved, mailbox_digest
from prefect_pop3mail.tasks.pop3.models import ReceiveOptions, SaveOptions
from prefect_pop3mail.tasks.pop3.receiver import MailboxReceiver, receive_mailbox
from prefect_pop3mail.tasks.pop3.statedir import STATE_DIR, StateFolder
from tests.conftest import sample_message
from tests.servers.faultserver import FaultServer
from tests.test_faults import originals, settings_for

KEY = "alice@127.0.0.1:110"


def crlf(message: bytes) -> bytes:
    return message.replace(b"\n", b"\r\n")


def old_file(folder: Path, name: str = "precious.txt") -> Path:
    """A file outside the save directory, older than the leftover cleanup's hour."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("not yours\n")
    os.utime(path, (1, 1))
    return path


@pytest.fixture
def server():
    with FaultServer([crlf(sample_message(i)) for i in range(3)]) as s:
        yield s


def test_a_symlinked_state_folder_is_refused_and_its_target_untouched(server, tmp_path):
    save, outside = tmp_path / "save", tmp_path / "outside"
    victim = old_file(outside)
    save.mkdir()
    (save / STATE_DIR).symlink_to(outside)
    with pytest.raises(SaveDirectoryError, match=r"save_directory: .*\.pop3mail: is a symbolic link"):
        receive_mailbox("c", settings_for(server), SaveOptions(directory=save), ReceiveOptions())
    assert victim.read_text() == "not yours\n" and sorted(os.listdir(outside)) == ["precious.txt"]
    assert len(server.messages) == 3


def test_a_symlink_planted_as_the_work_folder_is_refused(server, tmp_path):
    save, outside = tmp_path / "save", tmp_path / "outside"
    victim = old_file(outside)
    receive_mailbox("c", settings_for(server), SaveOptions(directory=save), ReceiveOptions())
    work = save / STATE_DIR / f"work-{mailbox_digest(settings_for(server).mailbox_key)}"
    os.rename(work, tmp_path / "moved-away")
    work.symlink_to(outside)  # the landed code's cleanup deleted old files behind this
    with pytest.raises(SaveDirectoryError, match="symbolic link"):
        receive_mailbox("c", settings_for(server), SaveOptions(directory=save), ReceiveOptions())
    assert victim.exists()


def test_a_symlinked_journal_is_not_appended_to(server, tmp_path):
    save, outside = tmp_path / "save", tmp_path / "outside"
    victim = old_file(outside, "journal-target")
    key = mailbox_digest(settings_for(server).mailbox_key)
    StateFolder(save, f"work-{key}").close()
    (save / STATE_DIR / f"journal-{key}.log").symlink_to(victim)
    with pytest.raises(SaveDirectoryError, match="cannot keep the journal"):
        receive_mailbox("c", settings_for(server), SaveOptions(directory=save), ReceiveOptions())
    assert victim.read_text() == "not yours\n"


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o701])
def test_a_state_folder_open_to_others_is_refused(server, tmp_path, mode):
    save = tmp_path / "save"
    (save / STATE_DIR).mkdir(parents=True)
    os.chmod(save / STATE_DIR, mode)
    with pytest.raises(SaveDirectoryError, match=f"mode 0700, .*mode {mode:o}"):
        receive_mailbox("c", settings_for(server), SaveOptions(directory=save), ReceiveOptions())


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_state_folder_owned_by_another_user_is_refused(server, tmp_path):
    save = tmp_path / "save"
    (save / STATE_DIR).mkdir(parents=True, mode=0o700)
    os.chown(save / STATE_DIR, 65534, 65534)
    with pytest.raises(SaveDirectoryError, match="owned by uid 65534"):
        receive_mailbox("c", settings_for(server), SaveOptions(directory=save), ReceiveOptions())
    assert len(server.messages) == 3


def test_a_symlink_planted_at_a_message_folder_is_replaced_not_followed(server, tmp_path):
    save, outside = tmp_path / "save", tmp_path / "outside"
    victim = old_file(outside)
    first = receive_mailbox("c", settings_for(server), SaveOptions(directory=save),
                            ReceiveOptions(new_messages_only=False))
    planted = first.received[0].folder
    os.rename(planted, tmp_path / "gone")
    planted.symlink_to(outside)
    again = receive_mailbox("c", settings_for(server), SaveOptions(directory=save),
                            ReceiveOptions(new_messages_only=False))
    assert again.received[0].folder == planted and planted.is_dir() and not planted.is_symlink()
    assert sorted(os.listdir(outside)) == ["precious.txt"] and victim.exists()


def test_the_save_root_is_created_private_and_relative_paths_made_absolute(server, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = receive_mailbox("c", settings_for(server),
                             SaveOptions(directory=Path("a/b/mail").absolute()),
                             ReceiveOptions())
    for folder in ("a", "a/b", "a/b/mail", "a/b/mail/.pop3mail"):
        assert stat.S_IMODE(os.stat(tmp_path / folder).st_mode) == 0o700, folder
    assert all(m.folder.is_absolute() for m in report.received)


def test_a_block_with_a_relative_save_directory_reports_absolute_paths(tmp_path, monkeypatch):
    from prefect_pop3mail.blocks import POP3MailConfiguration

    monkeypatch.chdir(tmp_path)
    config = POP3MailConfiguration(server="127.0.0.1", user="u", password="p",
                                   save_directory="relative/mail")
    assert config.save_options().directory == tmp_path / "relative" / "mail"


# --- the journal ----------------------------------------------------------------------------


def journal_in(tmp_path: Path) -> tuple[StateFolder, Journal]:
    state = StateFolder(tmp_path, "work-x")
    return state, Journal(state, KEY)


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    state, journal = journal_in(tmp_path)
    journal.record("u1", Saved("f1", 10, "h1"))
    journal.close()
    path = tmp_path / STATE_DIR / f"journal-{mailbox_digest(KEY)}.log"
    with open(path, "ab") as f:
        f.write(b"S\tu2\tf2\t2")  # a crash in the middle of an append
    journal = Journal(state, KEY)
    assert "u2" not in journal
    journal.record("u3", Saved("f3", 30, "h3"))
    journal.close()
    again = Journal(state, KEY)
    assert "u1" in again and "u3" in again and "u2" not in again
    assert again.get("u3") == Saved("f3", 30, "h3")
    again.close()
    state.close()


def test_damaged_records_are_ignored_and_version_0_1_records_read(tmp_path):
    state = StateFolder(tmp_path, "work-x")
    path = tmp_path / STATE_DIR / f"journal-{mailbox_digest(KEY)}.log"
    path.write_bytes(b"old-uidl\t20261125-folder\nS\tu9\tf\t1\th\t00000000\n")
    journal = Journal(state, KEY)
    assert "old-uidl" in journal and "u9" not in journal
    journal.close()
    state.close()


def test_pruning_never_runs_on_an_empty_listing_and_rewrites_privately(tmp_path):
    state, journal = journal_in(tmp_path)
    for i in range(PRUNE_AT + 10):
        journal.record(f"u{i}", Saved(f"f{i}", i, "h"))
    journal.prune(set())  # a server that listed nothing: nothing is forgotten
    assert len(journal.saved) == PRUNE_AT + 10
    journal.prune({"u0", "u1"})
    assert set(journal.saved) == {"u0", "u1"}
    journal.record("u-new", Saved("f", 1, "h"))
    journal.close()
    path = tmp_path / STATE_DIR / f"journal-{mailbox_digest(KEY)}.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(Journal(state, KEY).saved) == {"u0", "u1", "u-new"}
    assert [p.name for p in (tmp_path / STATE_DIR).iterdir() if p.name.endswith(".tmp")] == []
    state.close()


def test_a_reused_uidl_is_received_not_deleted_unseen(tmp_path):
    first, second = crlf(sample_message(1)), crlf(sample_message(2, body="Another one.\n"))
    save = SaveOptions(directory=tmp_path)
    with FaultServer([first]) as server:
        uidl = server._uids[0]
        receive_mailbox("c", settings_for(server), save, ReceiveOptions())
        # The first message is gone (another client took it); the server gives its UIDL
        # to a new message, as RFC 1939 allows.
        server.messages, server._uids = [second], [uidl]
        report = receive_mailbox("c", settings_for(server), save,
                                 ReceiveOptions(remove_after_read=True))
        assert [m.uidl for m in report.received] == [uidl] and server.messages == []
    saved = originals(tmp_path)
    assert len(saved) == 2  # both messages, neither lost


def test_a_reused_uidl_of_another_size_is_not_skipped_as_known(tmp_path):
    first, second = crlf(sample_message(1)), crlf(sample_message(2, body="Longer body.\n" * 9))
    save = SaveOptions(directory=tmp_path)
    with FaultServer([first]) as server:
        uidl = server._uids[0]
        receive_mailbox("c", settings_for(server), save, ReceiveOptions())
        server.messages, server._uids = [second], [uidl]
        report = receive_mailbox("c", settings_for(server), save, ReceiveOptions())
    assert len(report.received) == 1 and report.skipped_known == 0


def test_the_same_message_left_by_a_crash_is_deleted_without_saving_it_again(tmp_path):
    message = crlf(sample_message(1))
    save = SaveOptions(directory=tmp_path)
    with FaultServer([message]) as server:
        with MailboxReceiver("c", settings_for(server), save, ReceiveOptions()) as receiver:
            receiver.run()  # saved and journalled; not deleted (removal off)
        report = receive_mailbox("c", settings_for(server), save,
                                 ReceiveOptions(remove_after_read=True))
        assert report.received == [] and server.messages == []
        assert any(c.startswith("TOP 1 0") for c in server.commands)


def test_a_server_without_uidl_gets_an_error_that_says_what_needs_it(tmp_path):
    from prefect_pop3mail.tasks.pop3.errors import UIDLNotSupportedError
    from tests.servers.faultserver import reply

    with FaultServer([crlf(sample_message(1))]) as server:
        server.on("UIDL", reply("-ERR command not implemented"))
        with pytest.raises(UIDLNotSupportedError, match="new_messages_only") as caught:
            receive_mailbox("c", settings_for(server), SaveOptions(directory=tmp_path),
                            ReceiveOptions(remove_after_read=True))
        assert "command not implemented" in str(caught.value) and not caught.value.retryable
        assert len(server.messages) == 1
