"""Every save directory keeps the same promises (issue #24): one suite, run against a local
folder, a ``file://`` URL, S3 (moto's server) and SFTP (OpenSSH), each through the engine
against a real Dovecot mailbox.

- atomic publish: a folder appears with its ``.complete`` marker, listing its files, or
  without one, even when a write fails halfway;
- a durability barrier before QUIT (fsync of files and folders locally), and at every DELE
  and at QUIT a fresh reader finds the message's record and marker;
- private modes where the storage has modes;
- links planted in the state area never followed;
- names bounded: shortened deterministically, the full names in the marker;
- one message's storage fault is that message's; a store that stops answering, the run's;
- removal verified: a record that does not verify, or whose folder's marker does not name
  the message, never leads to a DELE.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from email.message import EmailMessage

import pytest

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError
from prefect_pop3mail.tasks.pop3.models import ReceiveOptions
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
from prefect_pop3mail.tasks.pop3.storage import manifest
from prefect_pop3mail.tasks.pop3.storage.base import JOURNAL, MARKER
from prefect_pop3mail.tasks.pop3.storage.journal import Journal, _line, head_digest
from prefect_pop3mail.tasks.pop3.storage.store import open_storage, record_folder
from tests import storage_backends
from tests.conftest import sample_message

# The fixtures: a save directory on each storage, and the servers behind them.
backend, file_system = storage_backends.backend, storage_backends.file_system
s3_server, sftp_server = storage_backends.s3_server, storage_backends.sftp_server

pytestmark = pytest.mark.dovecot

REMOVE = ReceiveOptions(remove_after_read=True)
AGAIN = ReceiveOptions(new_messages_only=False)


def receive(mailbox, backend, options: ReceiveOptions = ReceiveOptions(), **fields):
    save = mailbox.block(backend.location, **fields).save_options()
    return receive_mailbox("cfg", mailbox.settings(), save, options)


def with_attachment(i: int, payload: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice Example <alice@example.org>"
    msg["To"] = "bob@example.org"
    msg["Subject"] = f"Invoice {i}"
    msg["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<inv-{i}@example.org>"
    msg.set_content(f"Invoice {i} attached.\n")
    msg.add_attachment(payload, maintype="application", subtype="pdf", filename=f"invoice-{i}.pdf")
    return msg.as_bytes()


def nested(levels: int, name_length: int) -> bytes:
    """A message with an attached message with an attached message... ``levels`` deep,
    each under a long file name (the layout nests a folder per level), in few bytes."""
    inner = (b'Content-Type: application/pdf\nContent-Disposition: attachment; filename="'
             + b"d" * name_length + b'.pdf"\n\n%PDF-1.4 deep\n')
    for level in range(levels):
        boundary, name = b"b%d" % level, b"%d" % level * name_length
        inner = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\n\n--" + boundary
                 + b"\n\nLevel.\n--" + boundary + b"\nContent-Type: message/rfc822\n"
                 b'Content-Disposition: attachment; filename="' + name + b'.eml"\n\n'
                 + inner + b"\n--" + boundary + b"--\n")
    return (b"From: alice@example.org\nTo: bob@example.org\nSubject: Nested\n"
            b"Date: Thu, 26 Nov 2026 10:00:00 +0000\nMIME-Version: 1.0\n" + inner)


def markers(backend) -> dict[str, dict]:
    return {folder: json.loads(files[MARKER])
            for folder, files in backend.message_folders().items() if MARKER in files}


def on_server(mailbox) -> dict[str, tuple[int, str]]:
    """UIDL -> (listed size, header digest) of each message, as the receiver sees them."""
    session = POP3Session(mailbox.settings())
    session.connect()
    session.login()
    try:
        sizes = session.list()
        return {uidl: (sizes[n], head_digest(session.top(n, 0)))
                for n, uidl in session.uidl().items()}
    finally:
        session.quit()


class Reader:
    """What a fresh run (or another worker) would read from the save directory now."""

    def __init__(self, mailbox, backend):
        self.save = mailbox.block(backend.location).save_options()
        self.key = mailbox.settings().mailbox_key

    def problems(self, uidls) -> dict[str, str]:
        """Why each of ``uidls`` is not shown saved by its record and its marker."""
        storage = open_storage(self.save, self.key)
        try:
            journal = Journal(storage.open_log(JOURNAL))
            records = {u: journal.saved.get(u) for u in uidls}
            journal.close()
            found = {u: r for u, r in records.items() if r is not None}
            data = storage.read_markers([record_folder(r) for r in found.values()])
        finally:
            storage.close()
        problems = {u: "no journal record" for u, r in records.items() if r is None}
        for (uidl, record), marker in zip(found.items(), data, strict=True):
            if problem := manifest.marker_problem(marker, uidl, record.head):
                problems[uidl] = problem
        return problems


def plant(mailbox, backend, line: bytes) -> None:
    """Append ``line`` to the mailbox's journal on that storage, as anyone who can write
    there could."""
    storage = open_storage(mailbox.block(backend.location).save_options(),
                           mailbox.settings().mailbox_key)
    try:
        log = storage.open_log(JOURNAL)
        log.append(line)
        log.flush()
        log.close()
    finally:
        storage.close()


# --- atomic publish ---------------------------------------------------------------------------


def test_every_folder_appears_with_a_marker_listing_its_files_and_naming_its_message(
        mailbox, backend):
    payload = bytes(range(256)) * 40
    mailbox.deliver(sample_message(1), with_attachment(2, payload))

    report = receive(mailbox, backend, REMOVE)

    assert len(report.received) == 2 and mailbox.count() == 0
    folders = backend.message_folders()
    assert sorted(folders) == sorted(m.folder.name for m in report.received)
    for mail in report.received:
        files = dict(folders[mail.folder.name])
        marker = json.loads(files.pop(MARKER))
        assert {f["path"]: f["size"] for f in marker["files"]} == {
            name: len(data) for name, data in files.items()}
        assert (marker["uidl"], marker["sha256"], marker["id"]) == (mail.uidl, mail.sha256,
                                                                   mail.id)
        assert hashlib.sha256(mail.original_path.read_bytes()).hexdigest() == mail.sha256
        assert mail.folder.startswith(backend.location.rstrip("/").removeprefix("file://"))
    invoice = next(m for m in report.received if m.attachments)
    assert invoice.attachments[0].path.read_bytes() == payload
    assert invoice.text_path.read_text().startswith("Invoice 2 attached.")


def fail_one_publish(backend, monkeypatch) -> list[int]:
    """Make one publish fail halfway, where that storage writes: the rename locally, the
    second file uploaded remotely. Returns a counter of the writes tried."""
    calls = [0]

    def failing_once(real, fault: BaseException, at: int):
        def write(*args, **kwargs):
            calls[0] += 1
            if calls[0] == at:
                raise fault
            return real(*args, **kwargs)
        return write

    if backend.name in ("local", "file"):  # one rename publishes: it fails, or all is there
        from prefect_pop3mail.tasks.pop3.storage import local

        monkeypatch.setattr(local, "_rename_replacing", failing_once(
            local._rename_replacing, OSError(errno.EIO, "Input/output error"), 1))
    elif backend.name == "s3":
        import s3fs

        monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", failing_once(
            s3fs.S3FileSystem._put_file, ConnectionResetError("reset while uploading"), 2))
    else:
        import paramiko

        monkeypatch.setattr(paramiko.SFTPClient, "put", failing_once(
            paramiko.SFTPClient.put, OSError(errno.EIO, "reset while uploading"), 2))
    return calls


def test_a_publish_cut_short_shows_no_complete_folder_and_fails_that_message_alone(
        mailbox, backend, monkeypatch):
    mailbox.deliver(with_attachment(1, b"%PDF-1.4 " * 500), sample_message(2))
    calls = fail_one_publish(backend, monkeypatch)

    first = receive(mailbox, backend, REMOVE)

    assert calls[0] >= 2 or backend.name in ("local", "file"), "the fault was not injected"
    assert [m.subject for m in first.received] == ["Message 2"]
    [failure] = first.failed
    assert failure.error_type in ("StorageError", "SaveError") and failure.attempts == 1
    assert mailbox.count() == 1, "deleted though its folder is not complete"
    saved = first.received[0].folder.name
    for folder, files in backend.message_folders().items():
        assert folder == saved or MARKER not in files, "a half-written folder is complete"

    second = receive(mailbox, backend, REMOVE)  # the storage works again

    assert [m.subject for m in second.received] == ["Invoice 1"] and mailbox.count() == 0
    assert sorted(markers(backend)) == sorted([saved, second.received[0].folder.name])


# --- durability and verified removal ------------------------------------------------------------


def test_each_dele_and_quit_come_after_the_record_and_marker_are_readable(
        mailbox, backend, monkeypatch):
    """At each DELE and at QUIT, a fresh reader (the next run, another worker) finds the
    message's journal record and its folder's marker; locally, every file and folder saved
    and the logs were fsynced before QUIT."""
    mailbox.deliver(*(sample_message(i) for i in range(3)))
    reader = Reader(mailbox, backend)
    synced: list[str] = []
    seen: dict[str, dict] = {}
    numbers: dict[int, str] = {}
    real_fsync, real_uidl = os.fsync, POP3Session.uidl
    real_dele, real_quit = POP3Session.dele, POP3Session.quit

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def uidl(session):
        numbers.update(real_uidl(session))
        return numbers

    def dele(session, number):
        seen[f"DELE {number}"] = reader.problems([numbers[number]])
        return real_dele(session, number)

    def quit_(session):
        seen["QUIT"] = reader.problems(list(numbers.values()))
        seen["synced before QUIT"] = {"paths": list(synced)}
        return real_quit(session)

    for cls, name, replacement in ((os, "fsync", fsync), (POP3Session, "uidl", uidl),
                                   (POP3Session, "dele", dele), (POP3Session, "quit", quit_)):
        monkeypatch.setattr(cls, name, replacement)

    report = receive(mailbox, backend, REMOVE)

    assert len(report.received) == 3 and mailbox.count() == 0
    assert sorted(k for k in seen if k.startswith("DELE")) == ["DELE 1", "DELE 2", "DELE 3"]
    assert all(seen[k] == {} for k in seen if k.startswith("DELE")), seen
    assert seen["QUIT"] == {}
    if backend.name in ("local", "file"):
        paths = set(seen["synced before QUIT"]["paths"])
        for mail in report.received:
            files = {str(backend.root / mail.folder.name / n)
                     for n in backend.message_folders()[mail.folder.name]}
            assert {mail.folder.path.as_posix(), *files} <= paths
        state = backend.root / ".pop3mail"
        assert {str(p) for p in state.glob("journal-*.log")} <= paths
        assert {str(p) for p in state.glob("outbox-*.jsonl")} <= paths
        assert {str(backend.root), str(state)} <= paths


def test_a_planted_record_with_empty_size_and_head_never_deletes_a_message_never_saved(
        mailbox, backend):
    """Issue #24's example: such a record made a run delete a message it never saved."""
    mailbox.deliver(sample_message(1))
    [uidl] = on_server(mailbox)
    plant(mailbox, backend, _line("S", uidl, "20261126-100000-0123456789ab", "", ""))

    report = receive(mailbox, backend, REMOVE)

    [mail] = report.received
    assert any("did not verify" in w for w in mail.warnings), mail.warnings
    assert mail.original_path.read_bytes().replace(b"\r\n", b"\n") == sample_message(1)
    assert mail.deleted and mailbox.count() == 0  # deleted once saved, not before
    assert Reader(mailbox, backend).problems([uidl]) == {}


@pytest.mark.parametrize("folder", ["missing", "another message's"])
def test_a_well_formed_record_whose_folder_does_not_show_the_message_never_deletes_it(
        mailbox, backend, folder):
    """A record may match the message on the server (size, headers: anyone who has seen
    it knows them), yet without a marker naming that message nothing proves it saved."""
    mailbox.deliver(sample_message(1), sample_message(2))
    identity = on_server(mailbox)
    first = receive(mailbox, backend) if folder != "missing" else None  # removal off
    victim = sorted(identity)[1]
    other = "20261126-100000-0123456789ab" if first is None else next(
        m.folder.name for m in first.received if m.uidl != victim)
    size, head = identity[victim]
    plant(mailbox, backend, _line("S", victim, other, size, head))

    report = receive(mailbox, backend, REMOVE)

    again = [m for m in report.received if m.uidl == victim]
    assert len(again) == 1, "deleted unseen, or not received"
    assert any("not deleted unseen" in w for w in again[0].warnings), again[0].warnings
    assert again[0].original_path.read_bytes().replace(b"\r\n", b"\n") == sample_message(2)
    assert mailbox.count() == 0


def test_a_record_that_does_not_read_back_leaves_its_message_on_the_server(
        mailbox, backend, monkeypatch):
    mailbox.deliver(sample_message(1), sample_message(2))
    read_back = Journal.read_back
    monkeypatch.setattr(Journal, "read_back", lambda self: {})  # the storage lost them

    report = receive(mailbox, backend, REMOVE)

    assert len(report.received) == 2 and not any(m.deleted for m in report.received)
    assert {f.error_type for f in report.failed} == {"StorageError"}
    assert all("did not read back" in f.error for f in report.failed)
    assert mailbox.count() == 2

    monkeypatch.setattr(Journal, "read_back", read_back)
    again = receive(mailbox, backend, REMOVE)  # records and markers are there: deleted

    assert again.received == [] and mailbox.count() == 0


# --- modes and links --------------------------------------------------------------------------


@pytest.mark.parametrize("private", [True, False])
def test_saved_mail_and_state_get_private_modes(mailbox, file_system, private):
    backend = file_system  # an object store has no modes
    mailbox.deliver(with_attachment(1, b"%PDF-1.4 data"), nested(1, 20))
    old = os.umask(0o022)  # the modes must not come from the worker's umask
    try:
        report = receive(mailbox, backend, REMOVE, private_files=private)
    finally:
        os.umask(old)

    assert len(report.received) == 2
    for name, mode in backend.modes().items():
        is_dir = (backend.root / name).is_dir()
        if name.startswith(".pop3mail") or private:
            assert mode == (0o700 if is_dir else 0o600), (name, oct(mode))
        elif name != ".":
            assert mode == (0o755 if is_dir else 0o644), (name, oct(mode))


def outside_victim(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "precious.txt"
    victim.write_text("not yours\n")
    return outside, victim


@pytest.mark.parametrize("planted_at", ["the state folder", "the journal"])
def test_a_link_planted_in_the_state_area_is_refused_and_never_followed(
        mailbox, file_system, tmp_path, planted_at):
    backend = file_system  # an object store has no links
    outside, victim = outside_victim(tmp_path)
    mailbox.deliver(sample_message(1))
    if planted_at == "the state folder":
        backend.root.mkdir(parents=True, exist_ok=True)
        link, target = backend.root / ".pop3mail", outside
    else:  # after a run: locally a file, on SFTP the folder of its segments
        receive(mailbox, backend)
        state = backend.root / ".pop3mail"
        link = next(state.glob("journal-*.log"), None) or next(state.glob("*/journal"))
        os.rename(link, tmp_path / "moved-away")
        target = victim if link.name.endswith(".log") else outside
    link.symlink_to(target)

    with pytest.raises(SaveDirectoryError, match=r"save_directory: .*(symbolic link|journal)"):
        receive(mailbox, backend, REMOVE)

    assert sorted(os.listdir(outside)) == ["precious.txt"] and victim.read_text() == "not yours\n"
    assert mailbox.count() == 1


def test_a_link_planted_at_a_message_folder_is_replaced_not_followed(mailbox, file_system,
                                                                     tmp_path):
    backend = file_system  # an object store has no links
    outside, victim = outside_victim(tmp_path)
    mailbox.deliver(sample_message(1))
    planted = backend.root / receive(mailbox, backend).received[0].folder.name
    os.rename(planted, tmp_path / "gone")
    planted.symlink_to(outside)

    again = receive(mailbox, backend, AGAIN)

    assert again.received[0].folder.name == planted.name
    assert planted.is_dir() and not planted.is_symlink() and (planted / MARKER).is_file()
    assert sorted(os.listdir(outside)) == ["precious.txt"] and victim.read_text() == "not yours\n"


# --- names ---------------------------------------------------------------------------------------


def test_every_name_fits_the_storage_and_the_marker_keeps_the_full_ones(mailbox, backend):
    """Issue #24: a 2 KB message with nested attached messages makes names over 1,024 bytes,
    which S3, GCS and Azure refuse."""
    data = nested(4, 196)  # deeper, and the copies pass MAX_COPY_FACTOR: not laid out
    assert len(data) < 2048
    mailbox.deliver(data)

    report = receive(mailbox, backend, REMOVE)

    [mail] = report.received
    assert not report.failed and mailbox.count() == 0
    stored = backend.message_folders()[mail.folder.name]
    assert all(len(f"{mail.folder.name}/{name}".encode()) <= backend.limit for name in stored)
    marker = markers(backend)[mail.folder.name]
    longest = max(len(f"{mail.folder.name}/{f['name']}".encode()) for f in marker["files"])
    assert longest > 1024  # the full names, as laid out, are kept in the marker
    shortened = [f for f in marker["files"] if f["path"] != f["name"]]
    assert bool(shortened) == (backend.name == "s3")
    for a in mail.attachments:
        assert hashlib.sha256(a.path.read_bytes()).hexdigest() == a.sha256


def test_names_over_the_limit_are_shortened_the_same_way_every_time(mailbox, backend,
                                                                    monkeypatch):
    """The same with a 200-byte limit, so that every storage shortens."""
    seal = manifest.seal
    monkeypatch.setattr(manifest, "seal", lambda staging, folder, limit, *args, **kwargs:
                        seal(staging, folder, min(limit, 200), *args, **kwargs))
    mailbox.deliver(nested(2, 60))

    first, second = receive(mailbox, backend, AGAIN), receive(mailbox, backend, AGAIN)

    mail = first.received[0]
    assert [a.path for a in mail.attachments] == [a.path for a in second.received[0].attachments]
    stored = backend.message_folders()[mail.folder.name]
    assert all(len(f"{mail.folder.name}/{name}".encode()) <= 200 for name in stored)
    files = markers(backend)[mail.folder.name]["files"]
    shortened = {f["name"]: f["path"] for f in files if f["path"] != f["name"]}
    assert shortened and all(p.startswith("long-names/") and p.endswith((".pdf", ".eml", ".txt"))
                             for p in shortened.values())
    assert {f["path"] for f in files} == set(stored) - {MARKER}
    for a in mail.attachments:
        assert hashlib.sha256(a.path.read_bytes()).hexdigest() == a.sha256


# --- faults ------------------------------------------------------------------------------------


def test_a_store_that_stops_answering_ends_the_run_and_deletes_nothing(mailbox, backend,
                                                                      monkeypatch):
    mailbox.deliver(sample_message(1), sample_message(2))
    if backend.name in ("local", "file"):
        from prefect_pop3mail.tasks.pop3.storage import local

        def read_only(*args):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(local, "_rename_replacing", read_only)
    else:
        from prefect_pop3mail.tasks.pop3.storage import objects

        opened = objects.FsspecStorage.__init__

        def cut_off_after_opening(self, *args, **kwargs):
            opened(self, *args, **kwargs)

            def unreachable(*args, **kwargs):
                raise ConnectionRefusedError("connection refused")
            self.fs = type("Gone", (), {"__getattr__": lambda _, name: unreachable})()

        monkeypatch.setattr(objects.FsspecStorage, "__init__", cut_off_after_opening)

    report = receive(mailbox, backend, REMOVE)

    # The run stopped at the first message: the second was not tried, nothing was deleted.
    assert report.received == [] and [f.error_type for f in report.failed] == [
        "SaveDirectoryError"]
    assert "save_directory" in report.failed[0].error
    assert mailbox.count() == 2
