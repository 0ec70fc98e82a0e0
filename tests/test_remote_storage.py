"""Saving to storage URLs: a real S3-compatible server (moto), a real SFTP server (OpenSSH),
and file:// URLs, through the whole flow against a real Dovecot mailbox.

What a reader sees: only folders with their ``.complete`` marker, whose files open with
``fsspec.open(url)``; the journal and outbox live beside them on the same storage.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from email.message import EmailMessage
from pathlib import Path

import fsspec
import pytest

from prefect_pop3mail.tasks.pop3 import remote
from prefect_pop3mail.tasks.pop3.errors import ConfigurationError, SaveDirectoryError
from prefect_pop3mail.tasks.pop3.storage.journal import PRUNE_AT, Saved
from prefect_pop3mail.tasks.pop3.models import ReceiveOptions, SaveOptions
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
from prefect_pop3mail.tasks.pop3.remote import (
    MARKER,
    RemoteJournal,
    RemoteOutbox,
    RemoteState,
    RemoteTarget,
    public_url,
)
from tests.conftest import sample_message
from tests.servers.sftp import SFTPServer, sftp_unavailable_reason

BACKENDS = ["s3", "sftp", "file"]


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("s3fs", reason="needs prefect-pop3mail[s3]")
    pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
    from tests.servers.s3 import S3Server

    server = S3Server()
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec.open() must not reuse an earlier server's
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sftp_server():
    pytest.importorskip("paramiko", reason="needs prefect-pop3mail[sftp]")
    if reason := sftp_unavailable_reason():
        pytest.skip(reason)
    server = SFTPServer()
    yield server
    server.stop()


def use_s3(server, monkeypatch) -> str:
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    return f"s3://{server.new_bucket()}/mail"


def use_sftp(server, monkeypatch) -> str:
    """Credentials the ecosystem's way: fsspec's configuration (FSSPEC_SFTP_* in a
    worker's environment) and a known_hosts file."""
    monkeypatch.setenv("POP3MAIL_SFTP_KNOWN_HOSTS", str(server.known_hosts))
    monkeypatch.setitem(fsspec.config.conf, "sftp", server.client_options())
    return server.url(f"save-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=BACKENDS)
def storage(request, monkeypatch, tmp_path) -> str:
    """A storage URL on a fresh bucket or folder of each back-end."""
    if request.param == "s3":
        return use_s3(request.getfixturevalue("s3_server"), monkeypatch)
    if request.param == "sftp":
        return use_sftp(request.getfixturevalue("sftp_server"), monkeypatch)
    return (tmp_path / "store").as_uri()


@pytest.fixture
def s3_url(s3_server, monkeypatch) -> str:
    return use_s3(s3_server, monkeypatch)


def objects(url: str) -> dict[str, bytes]:
    """Everything under ``url``, read back the way a downstream step would."""
    fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True,
                                     **remote._host_key_options(url.split(":")[0], {}))
    root = root.rstrip("/")
    if not fs.exists(root):
        return {}
    return {p[len(root) + 1:]: fs.cat_file(p) for p in fs.find(root)}


def message_folders(url: str) -> dict[str, set[str]]:
    """Message folder -> its file names (state and quarantine left out)."""
    found: dict[str, set[str]] = {}
    for name in objects(url):
        folder, _, rest = name.partition("/")
        if folder not in (".pop3mail", "quarantine"):
            found.setdefault(folder, set()).add(rest)
    return found


def with_attachment(i: int, payload: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice Example <alice@example.org>"
    msg["To"] = "bob@example.org"
    msg["Subject"] = f"Invoice {i}"
    msg["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<inv-{i}@example.org>"
    msg.set_content(f"Invoice {i} attached.\n")
    msg.add_attachment(payload, maintype="application", subtype="pdf",
                       filename=f"invoice-{i}.pdf")
    return msg.as_bytes()


def read(url: str) -> bytes:
    kwargs = remote._host_key_options(url.split(":")[0], {})
    with fsspec.open(url, "rb", **kwargs) as f:
        return f.read()


def test_flow_saves_to_storage_and_a_rerun_saves_no_duplicate(mailbox, storage):
    from prefect_pop3mail.flows import receive_all_mail

    payload = bytes(range(256)) * 40
    mailbox.deliver(sample_message(1), with_attachment(2, payload))
    block = mailbox.block(storage)  # removal off: the journal alone prevents duplicates

    first = receive_all_mail(block)

    assert len(first) == 2
    for mail in first:
        assert mail.folder is None and mail.original_path is None
        assert mail.folder_url.startswith(storage.rstrip("/") + "/")
        assert hashlib.sha256(read(mail.original_url)).hexdigest() == mail.sha256
        manifest = json.loads(read(f"{mail.folder_url}/{MARKER}"))
        names = {f["path"] for f in manifest["files"]}
        assert "message.eml" in names and "text.txt" in names
    invoice = next(m for m in first if m.attachments)
    assert read(invoice.attachments[0].url) == payload
    assert invoice.attachments[0].path is None
    assert read(invoice.text_url).startswith(b"Invoice 2 attached.")
    folders = message_folders(storage)
    assert len(folders) == 2 and all(MARKER in files for files in folders.values())

    before = objects(storage)
    second = receive_all_mail(block)

    assert second == []
    assert mailbox.count() == 2
    after = objects(storage)
    assert after == before, "a rerun changed the storage"
    records = [n for n in after if n.startswith(".pop3mail/") and "/S~" in n]
    assert len(records) == 2
    assert all(after[n] == b"" for n in records), "announced, yet still pending"


def test_flow_with_removal_empties_the_mailbox_into_storage(mailbox, storage):
    from prefect_pop3mail.flows import receive_all_mail

    messages = [sample_message(i, body=f"Body {i}.\n") for i in range(4)]
    mailbox.deliver(*messages)

    received = receive_all_mail(mailbox.block(storage, remove_from_server_after_read=True))

    assert mailbox.count() == 0
    assert all(m.deleted for m in received)
    saved = {hashlib.sha256(read(m.original_url)).hexdigest() for m in received}
    assert saved == {hashlib.sha256(m.replace(b"\n", b"\r\n")).hexdigest() for m in messages}
    assert all(MARKER in files for files in message_folders(storage).values())


def test_one_listing_per_run_loads_journal_and_outbox(mailbox, s3_url, monkeypatch):
    import s3fs

    requests = []
    call = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        requests.append(method)
        return await call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    mailbox.deliver(*(sample_message(i) for i in range(6)))
    save = SaveOptions(url=s3_url)
    receive_mailbox("cfg", mailbox.settings(), save, ReceiveOptions())  # creates the state
    pending = [n for n, data in objects(s3_url).items() if "/S~" in n and data]
    requests.clear()

    report = receive_mailbox("cfg", mailbox.settings(), save, ReceiveOptions())

    assert report.received == [] and report.skipped_known == 6
    assert requests == ["list_objects_v2"], "more than one listing, or reads of records"
    assert pending == [], "announced, yet still pending"


def test_a_failed_upload_leaves_the_folder_invisible_and_the_next_run_completes_it(
        mailbox, s3_url, monkeypatch):
    mailbox.deliver(with_attachment(1, b"%PDF-1.4 " * 500))
    put_all = RemoteTarget.put_all

    def failing(self, files):
        put_all(self, [f for f in files if not f[1].endswith("/text.txt")])
        raise remote._storage_error(self.secret_url, "upload text.txt",
                                    ConnectionResetError("connection reset"))

    monkeypatch.setattr(RemoteTarget, "put_all", failing)
    save = SaveOptions(url=s3_url)
    options = ReceiveOptions(remove_after_read=True)

    report = receive_mailbox("cfg", mailbox.settings(), save, options)

    assert report.received == [] and report.failed[0].error_type == "SaveDirectoryError"
    assert mailbox.count() == 1, "deleted though its files never all arrived"
    folders = message_folders(s3_url)
    assert len(folders) == 1
    assert MARKER not in next(iter(folders.values())), "a half-uploaded folder is visible"

    monkeypatch.setattr(RemoteTarget, "put_all", put_all)
    report = receive_mailbox("cfg", mailbox.settings(), save, options)

    assert len(report.received) == 1 and mailbox.count() == 0
    assert message_folders(s3_url).keys() == folders.keys(), "saved twice"
    assert MARKER in message_folders(s3_url)[next(iter(folders))]


def test_a_large_attachment_is_uploaded_in_parts(mailbox, s3_url, s3_server):
    payload = hashlib.sha256(b"seed").digest() * (17 * 1024 * 1024 // 32 + 1)
    mailbox.deliver(with_attachment(1, payload))

    report = receive_mailbox("cfg", mailbox.settings(), SaveOptions(url=s3_url),
                             ReceiveOptions())

    attachment = report.received[0].attachments[0]
    assert attachment.sha256 == hashlib.sha256(payload).hexdigest()
    bucket, _, prefix = s3_url[len("s3://"):].partition("/")
    key = attachment.url[len(f"s3://{bucket}/"):]
    entry = s3_server.keys(bucket, prefix)[key]
    assert entry["Size"] == len(payload)
    assert "-" in entry["ETag"], "uploaded in one request, not in parts"


def test_the_journal_on_storage_keeps_latest_records_failures_and_prunes(tmp_path):
    url = (tmp_path / "store").as_uri()
    target = RemoteTarget(url)
    odd = "a/b~c..\\%20É"  # path separators, our own separator, non-ASCII
    journal = RemoteJournal(RemoteState(target, "me@host:110"))
    assert journal.record_failure(odd, "save") == 1
    assert journal.record_failure(odd, "retr") == 2
    journal.record("u1", Saved("f1", 10, "h1"))
    journal.record("u1", Saved("f2", 11, "h2"))  # the UIDL now names another message

    again = RemoteJournal(RemoteState(target, "me@host:110"))
    assert again.get("u1") == Saved("f2", 11, "h2")
    assert again.failure_count(odd) == 2 and again.last_failure(odd) == "retr"
    assert odd not in again
    again.record(odd, Saved("f3", None, "", quarantined=True))
    state = RemoteState(target, "me@host:110")
    assert len([n for n in state.names if not n.startswith("V~")]) == 2, "older records stay"
    third = RemoteJournal(state)
    assert third.get(odd) == Saved("f3", None, "", True) and third.failure_count(odd) == 0

    for i in range(PRUNE_AT):
        third.record(f"gone-{i}", Saved(f"g{i}"))
    third.prune({"u1", odd})
    assert len(RemoteState(target, "me@host:110").names) == 3  # u1, odd and the version
    assert RemoteJournal(RemoteState(target, "me@host:110")).get("u1") is not None


def test_pending_announcements_ride_on_journal_records_in_order(tmp_path):
    from prefect_pop3mail.tasks.pop3.models import ReceivedMail

    target = RemoteTarget((tmp_path / "store").as_uri())
    state = RemoteState(target, "me@host:110")
    journal, outbox = RemoteJournal(state), RemoteOutbox(state)
    mails = [ReceivedMail(id=f"id{i}", configuration="c", uidl=f"u{i}") for i in range(4)]
    for mail in mails[:3]:  # the receiver's order: the outbox, then the journal
        outbox.add(mail)
        journal.record(mail.uidl, Saved(f"f-{mail.id}"))
    journal.record("u3", Saved("f-id3"))  # recorded first, announced after: still kept
    outbox.add(mails[3])
    outbox.acknowledge(["id1"])

    state = RemoteState(target, "me@host:110")
    pending = RemoteOutbox(state).pending
    assert list(pending) == ["id0", "id2", "id3"]
    assert pending["id2"] == mails[2]
    assert all(RemoteJournal(state).get(f"u{i}") == Saved(f"f-id{i}") for i in range(4))


def test_a_pending_announcement_survives_a_reused_uidl(tmp_path):
    from prefect_pop3mail.tasks.pop3.models import ReceivedMail

    target = RemoteTarget((tmp_path / "store").as_uri())
    state = RemoteState(target, "me@host:110")
    journal, outbox = RemoteJournal(state), RemoteOutbox(state)
    old = ReceivedMail(id="old", configuration="c", uidl="u")
    outbox.add(old)
    journal.record("u", Saved("f-old"))
    new = ReceivedMail(id="new", configuration="c", uidl="u")  # the server reused "u"
    outbox.add(new)
    journal.record("u", Saved("f-new"))

    state = RemoteState(target, "me@host:110")
    assert list(RemoteOutbox(state).pending) == ["old", "new"]
    assert RemoteJournal(state).get("u") == Saved("f-new")


def test_sftp_refuses_a_server_whose_host_key_is_not_known(sftp_server, monkeypatch, tmp_path):
    use_sftp(sftp_server, monkeypatch)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    monkeypatch.setenv("POP3MAIL_SFTP_KNOWN_HOSTS", str(empty))

    with pytest.raises(SaveDirectoryError, match="not in .*known_hosts"):
        RemoteTarget(sftp_server.url("x"))


def test_a_password_in_the_url_never_shows_and_the_block_refuses_it(mailbox):
    url = "sftp://mailer:s3cret-pw@127.0.0.1:1/srv/mail"
    assert public_url(url) == "sftp://mailer@127.0.0.1:1/srv/mail"
    with pytest.raises(SaveDirectoryError) as caught:
        RemoteTarget(url)
    assert "s3cret-pw" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)
    with pytest.raises(ConfigurationError, match="save_directory") as refused:
        mailbox.block(url).save_options()
    assert "s3cret-pw" not in str(refused.value)


def test_a_missing_bucket_is_named_and_never_created(mailbox, s3_server, s3_url):
    missing = f"mail-missing-{uuid.uuid4().hex[:8]}"
    mailbox.deliver(sample_message(1))

    with pytest.raises(SaveDirectoryError, match="bucket or container does not exist"):
        receive_mailbox("cfg", mailbox.settings(), SaveOptions(url=f"s3://{missing}/mail"),
                        ReceiveOptions(remove_after_read=True))

    assert mailbox.count() == 1
    buckets = [b["Name"] for b in s3_server.client().list_buckets()["Buckets"]]
    assert missing not in buckets


def test_a_missing_back_end_names_the_extra_to_install():
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401
        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    with pytest.raises(SaveDirectoryError, match=r"prefect-pop3mail\[gcs\]"):
        RemoteTarget("gs://bucket/mail")


def test_a_local_save_directory_is_unchanged(mailbox, tmp_path):
    block = mailbox.block(tmp_path / "mail")
    assert block.save_options().directory == tmp_path / "mail"
    assert block.save_options().url is None
    assert mailbox.block("s3://bucket/prefix").save_options().url == "s3://bucket/prefix"


def test_a_message_failing_run_after_run_is_quarantined_on_storage(mailbox, s3_url,
                                                                   monkeypatch):
    from prefect_pop3mail.tasks.pop3.storage.store import MessageStore

    write_contents = MessageStore.write_contents

    def breaks_on_poison(self, original, folder, findings, uidl, head=None):
        if b"Subject: poison" in Path(original).read_bytes():
            raise ValueError("a parser bug")
        return write_contents(self, original, folder, findings, uidl, head)

    monkeypatch.setattr(MessageStore, "write_contents", breaks_on_poison)
    mailbox.deliver(sample_message(1, Subject="poison"), sample_message(2))
    save, options = SaveOptions(url=s3_url), ReceiveOptions(quarantine_after=2)

    first = receive_mailbox("cfg", mailbox.settings(), save, options)
    second = receive_mailbox("cfg", mailbox.settings(), save, options)
    third = receive_mailbox("cfg", mailbox.settings(), save, options)

    assert len(first.received) == 1 and first.failed[0].attempts == 1
    assert second.received[0].quarantined, "counts were not kept on storage"
    quarantined = second.received[0]
    assert "/quarantine/" in quarantined.folder_url
    assert b"Subject: poison" in read(quarantined.original_url)
    assert read(f"{quarantined.folder_url}/{MARKER}")
    assert third.received == [] and third.skipped_known == 2
