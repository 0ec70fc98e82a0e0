"""The save directory is not a way in, and the journal never deletes unsaved mail nor
forgets saved mail. Each test plants what someone who can write in the save directory (but
is not the worker's user) could plant, or damages the journal as a crash would."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError
from prefect_pop3mail.tasks.pop3.models import ReceiveOptions, SaveOptions
from prefect_pop3mail.tasks.pop3.receiver import MailboxReceiver, receive_mailbox
from prefect_pop3mail.tasks.pop3.storage.base import JOURNAL, STATE_DIR
from prefect_pop3mail.tasks.pop3.storage.journal import (
    PRUNE_AT,
    Journal,
    Saved,
    _line,
    mailbox_digest,
)
from prefect_pop3mail.tasks.pop3.storage.local import LocalStorage
from prefect_pop3mail.tasks.pop3.storage.statedir import StateFolder
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
    planted = first.received[0].folder.path
    os.rename(planted, tmp_path / "gone")
    planted.symlink_to(outside)
    again = receive_mailbox("c", settings_for(server), SaveOptions(directory=save),
                            ReceiveOptions(new_messages_only=False))
    assert again.received[0].folder.path == planted and planted.is_dir()
    assert not planted.is_symlink()
    assert sorted(os.listdir(outside)) == ["precious.txt"] and victim.exists()


def test_the_save_root_is_created_private_and_relative_paths_made_absolute(server, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = receive_mailbox("c", settings_for(server),
                             SaveOptions(directory=Path("a/b/mail").absolute()),
                             ReceiveOptions())
    for folder in ("a", "a/b", "a/b/mail", "a/b/mail/.pop3mail"):
        assert stat.S_IMODE(os.stat(tmp_path / folder).st_mode) == 0o700, folder
    assert all(m.folder.path.is_absolute() for m in report.received)


def test_a_block_with_a_relative_save_directory_reports_absolute_paths(tmp_path, monkeypatch):
    from prefect_pop3mail.blocks import POP3MailConfiguration

    monkeypatch.chdir(tmp_path)
    config = POP3MailConfiguration(server="127.0.0.1", user="u", password="p",
                                   save_directory="relative/mail")
    assert config.save_options().directory == tmp_path / "relative" / "mail"


# --- the journal ----------------------------------------------------------------------------


HEAD = "0123456789abcdef" * 2


def folder(i: int) -> str:
    """A folder name as the store makes them (the journal trusts no other)."""
    return f"20261125-110200-{i:012x}"


def journal_in(tmp_path: Path) -> tuple[LocalStorage, Journal]:
    storage = LocalStorage(tmp_path, mailbox_digest(KEY))
    return storage, Journal(storage.open_log(JOURNAL))


def reopened(storage: LocalStorage) -> Journal:
    return Journal(storage.open_log(JOURNAL))


def journal_file(tmp_path: Path) -> Path:
    return tmp_path / STATE_DIR / f"journal-{mailbox_digest(KEY)}.log"


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path):
    storage, journal = journal_in(tmp_path)
    journal.record("u1", Saved(folder(1), 10, HEAD))
    journal.close()
    with open(journal_file(tmp_path), "ab") as f:
        f.write(b"S\tu2\tf2\t2")  # a crash in the middle of an append
    journal = reopened(storage)
    assert "u2" not in journal
    journal.record("u3", Saved(folder(3), 30, HEAD))
    journal.close()
    again = reopened(storage)
    assert "u1" in again and "u3" in again and "u2" not in again
    assert again.get("u3") == Saved(folder(3), 30, HEAD)
    assert (again.damaged, again.rejected) == (1, 0)  # the torn line alone: ended, not joined
    again.close()
    storage.close()


def test_records_that_do_not_verify_are_ignored_and_reported(tmp_path, caplog):
    """Issue #24: a planted record with empty size and head fields (its CRC right) made a
    run delete a message never saved. Fields not as written, a damaged CRC, a version 0.1
    line: each is ignored, counted and reported; none is trusted."""
    journal_file(tmp_path).parent.mkdir(mode=0o700)
    journal_file(tmp_path).write_bytes(
        b"old-uidl\t20261125-folder\n"  # version 0.1: no CRC
        + _line("S", "u1", folder(1), 10, HEAD)[:-3] + b"00\n"  # damaged
        + _line("S", "planted", folder(2), "", "")  # empty size and head
        + _line("S", "dots", "../../etc", 10, HEAD)  # not a folder the store makes
        + _line("Q", "bad uidl", folder(3), 10, HEAD)  # a UIDL RFC 1939 refuses
        + _line("S", "good", folder(4), 10, HEAD))
    storage, journal = journal_in(tmp_path)
    assert list(journal.saved) == ["good"]
    assert (journal.rejected, journal.damaged) == (3, 2)
    assert set(journal.distrusted) == {"planted", "dots"}
    assert "3 record(s) that do not verify" in caplog.text and "planted" in caplog.text
    journal.record("planted", Saved(folder(2), 10, HEAD))  # saved for real: trusted again
    assert "planted" not in journal.distrusted
    journal.close()
    storage.close()


def test_pruning_never_runs_on_an_empty_listing_and_rewrites_privately(tmp_path):
    storage, journal = journal_in(tmp_path)
    for i in range(PRUNE_AT + 10):
        journal.record(f"u{i}", Saved(folder(i), i, HEAD))
    journal.prune(set())  # a server that listed nothing: nothing is forgotten
    assert len(journal.saved) == PRUNE_AT + 10
    journal.prune({"u0", "u1"})
    assert set(journal.saved) == {"u0", "u1"}
    journal.record("u-new", Saved(folder(7), 1, HEAD))
    assert journal.read_back() == {"u-new": Saved(folder(7), 1, HEAD)}  # after the rewrite
    journal.close()
    assert stat.S_IMODE(journal_file(tmp_path).stat().st_mode) == 0o600
    assert set(reopened(storage).saved) == {"u0", "u1", "u-new"}
    assert [p.name for p in (tmp_path / STATE_DIR).iterdir() if p.name.endswith(".tmp")] == []
    storage.close()


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
