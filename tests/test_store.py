"""The store through a real Dovecot, and its failure paths: a full disk, a parser bug."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from prefect_pop3mail.tasks.pop3.errors import DiskFullError
from prefect_pop3mail.tasks.pop3.message import layout
from prefect_pop3mail.tasks.pop3.models import ReceiveOptions, SaveOptions
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
from prefect_pop3mail.tasks.pop3.storage.store import ORIGINAL_NAME, MessageStore
from tests.test_store_corpus import corpus_case, is_log, save, saved_files

THROUGH_DOVECOT = ["gmail_style", "outlook_style", "apple_mail_style", "forwarded_message",
                   "related_inline_images", "hostile_filenames", "shift_jis_body", "smime_signed_multipart",
                   "base64_with_junk", "lf_line_endings"]


@pytest.mark.dovecot
def test_corpus_messages_received_from_dovecot_save_their_expected_files(mailbox, tmp_path):
    cases = {name: corpus_case(name) for name in THROUGH_DOVECOT}
    mailbox.deliver(*(data for data, _ in cases.values()))
    report = receive_mailbox("corpus", mailbox.settings(), SaveOptions(directory=tmp_path),
                             ReceiveOptions(remove_after_read=True))
    assert not report.failed
    by_subject = {m.subject: m for m in report.received}
    assert len(by_subject) == len(cases)
    for name, (data, expected) in cases.items():
        subject = next(line for line in data.decode("utf-8", "replace").splitlines()
                       if line.startswith("Subject: "))[len("Subject: "):]
        mail = next(m for s, m in by_subject.items() if s == _decoded(subject))
        files = saved_files(mail.folder)
        assert files.pop(ORIGINAL_NAME)["size"] == mail.size
        assert files == expected["files"], name
        assert (mail.signature is not None) == bool(expected["signature"]), name
    assert mailbox.count() == 0


def _decoded(subject: str) -> str:
    from prefect_pop3mail.tasks.pop3.message.filenames import decode_rfc2047

    return decode_rfc2047(subject)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KB tmpfs: a real ENOSPC. Needs root (mount)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    where = tmp_path / "tiny"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(where)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_full_disk_is_disk_full_and_leaves_nothing_half_written(tiny_disk):
    from tests.corpus.build import b64, leaf, message, multipart

    big = os.urandom(180 * 1024)
    body = multipart("full", [
        leaf({"Content-Type": "text/plain"}, b"A big attachment.\r\n"),
        leaf({"Content-Type": 'application/octet-stream; name="big.bin"',
              "Content-Transfer-Encoding": "base64"}, b64(big)),
    ])
    data = message("Big", {"Content-Type": 'multipart/mixed; boundary="full"'}, body)
    store = MessageStore(SaveOptions(directory=tiny_disk), "m@h:1", "c")
    incoming = store.incoming()
    incoming.write(data)
    incoming.finish()
    with pytest.raises(DiskFullError, match="no space left"):
        store.save(incoming, "u1")
    incoming.discard()  # after a failure the original is the caller's again (to set aside)
    assert [p.name for p in tiny_disk.iterdir()] == [".pop3mail"]
    assert [p for p in (tiny_disk / ".pop3mail").rglob("*") if p.is_file() and not is_log(p)] == []
    # Once there is room again, the same message saves.
    small = save(store, data.replace(b64(big), b64(big[:20000])), "u1")
    assert small.attachments[0].size == 20000
    store.close()  # its folder descriptors would keep the file system busy


def test_a_parser_bug_costs_the_parts_not_the_message(tmp_path, monkeypatch):
    data, _ = corpus_case("gmail_style")

    def broken(self, part, sink):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(layout.FolderLayout, "end_leaf", broken)
    mail = save(MessageStore(SaveOptions(directory=tmp_path), "m@h:1", "c"), data, "u1")
    assert list(saved_files(mail.folder)) == [ORIGINAL_NAME]
    assert mail.text_path is None and mail.attachments == []
    assert mail.warnings == ["internal error reading the message (RuntimeError); only the original is saved"]


def test_leftovers_of_killed_runs_are_removed_after_an_hour(tmp_path):
    import os
    import time

    from prefect_pop3mail.tasks.pop3.models import SaveOptions
    from prefect_pop3mail.tasks.pop3.storage.store import MessageStore

    store = MessageStore(SaveOptions(directory=tmp_path), "user@host:995", "cfg")
    old_file, old_dir = Path(store.incoming().path), store._work / "staging-x"
    old_dir.mkdir()
    fresh = store.incoming()
    fresh.write(b"live")
    hour_ago = time.time() - 3700
    for path in (old_file, old_dir):
        os.utime(path, (hour_ago, hour_ago))
    MessageStore(SaveOptions(directory=tmp_path), "user@host:995", "cfg")
    assert not old_file.exists() and not old_dir.exists()
    assert Path(fresh.path).exists()
