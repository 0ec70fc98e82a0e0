"""Saving to storage URLs, what only remote storage has: a real S3-compatible server (moto)
and a real SFTP server (OpenSSH), through the flow against a real Dovecot mailbox. The
promises every save directory keeps are in tests/test_storage_promises.py.

What a reader sees: only folders with their ``.complete`` marker, whose files open with
``fsspec.open(url)``; the journal and outbox live beside them on the same storage.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import fsspec
import pytest
from pydantic import ValidationError

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError
from prefect_pop3mail.tasks.pop3.locations import public_url
from prefect_pop3mail.tasks.pop3.models import ReceivedMail, ReceiveOptions, SaveOptions
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
from prefect_pop3mail.tasks.pop3.storage import objects
from prefect_pop3mail.tasks.pop3.storage.base import JOURNAL, MARKER, OUTBOX
from prefect_pop3mail.tasks.pop3.storage.connect import connect
from prefect_pop3mail.tasks.pop3.storage.journal import PRUNE_AT, Journal, Saved, mailbox_digest
from prefect_pop3mail.tasks.pop3.storage.objects import FsspecStorage
from prefect_pop3mail.tasks.pop3.storage.outbox import Outbox
from tests import storage_backends
from tests.conftest import sample_message
from tests.storage_backends import use_s3, use_sftp

pytestmark = pytest.mark.dovecot

s3_server, sftp_server = storage_backends.s3_server, storage_backends.sftp_server
HEAD = "0123456789abcdef" * 2
KEY = "me@host:110"


@pytest.fixture(params=[storage_backends.S3, storage_backends.SFTP])
def storage(request, monkeypatch) -> str:
    """A storage URL on a fresh bucket or folder of each remote back-end."""
    server = storage_backends.server_for(request.param, request)
    return (use_s3 if request.param == "s3" else use_sftp)(server, monkeypatch)


@pytest.fixture
def s3_url(s3_server, monkeypatch) -> str:
    return use_s3(s3_server, monkeypatch)


def objects_under(url: str) -> dict[str, bytes]:
    """Everything under ``url``, read back the way a downstream step would."""
    fs, root = connect(url)
    root = root.rstrip("/")
    if not fs.exists(root):
        return {}
    return {p[len(root) + 1:]: fs.cat_file(p) for p in fs.find(root)}


def message_folders(url: str) -> dict[str, set[str]]:
    """Message folder -> its file names (state and quarantine left out)."""
    found: dict[str, set[str]] = {}
    for name in objects_under(url):
        folder, _, rest = name.partition("/")
        if folder not in (".pop3mail", "quarantine"):
            found.setdefault(folder, set()).add(rest)
    return found


def with_attachment(i: int, payload: bytes) -> bytes:
    from tests.test_storage_promises import with_attachment as build

    return build(i, payload)


def folder(i: int) -> str:
    return f"20261125-110200-{i:012x}"


@pytest.mark.prefect
def test_flow_saves_to_storage_and_a_rerun_saves_no_duplicate(mailbox, storage):
    from prefect_pop3mail.flows import receive_all_mail

    payload = bytes(range(256)) * 40
    mailbox.deliver(sample_message(1), with_attachment(2, payload))
    block = mailbox.block(storage)  # removal off: the journal alone prevents duplicates

    first = receive_all_mail(block)

    assert len(first) == 2
    for mail in first:
        assert mail.folder.is_url and mail.folder.startswith(storage.rstrip("/") + "/")
        assert hashlib.sha256(mail.original_path.read_bytes()).hexdigest() == mail.sha256
        with fsspec.open(f"{mail.folder}/{MARKER}", "rb",
                         **objects_options(storage)) as f:  # as a downstream step reads it
            names = {entry["path"] for entry in json.load(f)["files"]}
        assert "message.eml" in names and "text.txt" in names
    invoice = next(m for m in first if m.attachments)
    assert invoice.attachments[0].path.read_bytes() == payload
    assert invoice.text_path.read_text().startswith("Invoice 2 attached.")
    before = message_folders(storage)
    assert len(before) == 2 and all(MARKER in files for files in before.values())

    second = receive_all_mail(block)

    assert second == [] and mailbox.count() == 2
    assert message_folders(storage) == before, "a rerun changed the saved mail"


def objects_options(url: str) -> dict:
    from prefect_pop3mail.tasks.pop3.locations import connection_options

    return connection_options(url.split(":")[0], {})


@pytest.mark.s3
def test_a_run_costs_the_same_requests_whatever_the_journal_holds(mailbox, s3_server,
                                                                  monkeypatch):
    """The journal and outbox are read in a bounded number of requests (a listing, the
    segments since the last rewrite), never one per record."""
    import s3fs

    requests = []
    call = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        requests.append(method)
        return await call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    counts = {}
    for known in (6, 40):
        box = type(mailbox)(mailbox.server)
        box.deliver(*(sample_message(i) for i in range(known)))
        save = SaveOptions(url=use_s3(s3_server, monkeypatch))
        receive_mailbox("cfg", box.settings(), save, ReceiveOptions())  # saves them all
        receive_mailbox("cfg", box.settings(), save, ReceiveOptions())  # tidies the outbox
        requests.clear()
        report = receive_mailbox("cfg", box.settings(), save, ReceiveOptions())
        assert report.received == [] and report.skipped_known == known
        counts[known] = sorted(requests)
    assert counts[6] == counts[40], counts
    assert len(counts[40]) <= 6, counts[40]


@pytest.mark.s3
def test_a_large_attachment_is_uploaded_in_parts(mailbox, s3_url, s3_server):
    payload = hashlib.sha256(b"seed").digest() * (17 * 1024 * 1024 // 32 + 1)
    mailbox.deliver(with_attachment(1, payload))

    report = receive_mailbox("cfg", mailbox.settings(), SaveOptions(url=s3_url),
                             ReceiveOptions())

    attachment = report.received[0].attachments[0]
    assert attachment.sha256 == hashlib.sha256(payload).hexdigest()
    bucket, _, prefix = s3_url[len("s3://"):].partition("/")
    key = attachment.path[len(f"s3://{bucket}/"):]
    entry = s3_server.keys(bucket, prefix)[key]
    assert entry["Size"] == len(payload)
    assert "-" in entry["ETag"], "uploaded in one request, not in parts"


def open_state(url: str) -> tuple[FsspecStorage, Journal, Outbox]:
    storage = FsspecStorage.open(url, None, mailbox_digest(KEY))
    return storage, Journal(storage.open_log(JOURNAL)), Outbox(storage.open_log(OUTBOX))


def close_state(storage: FsspecStorage, journal: Journal, outbox: Outbox) -> None:
    outbox.log.flush()
    journal.log.flush()
    journal.compact()
    journal.close()
    outbox.close()
    storage.close()


def segments(url: str, kind: str) -> list[str]:
    state = f".pop3mail/{mailbox_digest(KEY)}/{kind}/"
    return sorted(n[len(state):] for n in objects_under(url) if n.startswith(state))


def test_the_journal_on_storage_keeps_latest_records_failures_and_prunes(storage):
    state = open_state(storage)
    journal = state[1]
    assert journal.record_failure("odd~uidl", "save") == 1
    assert journal.record_failure("odd~uidl", "retr") == 2
    journal.record("u1", Saved(folder(1), 10, HEAD))
    journal.record("u1", Saved(folder(2), 11, HEAD))  # the UIDL now names another message
    close_state(*state)

    state = open_state(storage)
    again = state[1]
    assert again.get("u1") == Saved(folder(2), 11, HEAD)
    assert again.failure_count("odd~uidl") == 2 and again.last_failure("odd~uidl") == "retr"
    again.record("odd~uidl", Saved(folder(3), 5, HEAD, quarantined=True))
    for i in range(PRUNE_AT):
        again.record(f"gone-{i}", Saved(folder(100 + i), i, HEAD))
    again.prune({"u1", "odd~uidl"})  # rewritten as one snapshot; the older segments go
    close_state(*state)

    assert [n.rsplit(".", 1)[1] for n in segments(storage, JOURNAL)] == ["snap"]
    state = open_state(storage)
    assert state[1].saved == {"u1": Saved(folder(2), 11, HEAD),
                              "odd~uidl": Saved(folder(3), 5, HEAD, True)}
    assert state[1].failures == {}
    close_state(*state)


@pytest.mark.s3
def test_a_journal_in_many_segments_is_read_as_one_after_the_run(s3_url):
    for i in range(objects.MAX_SEGMENTS + 2):  # a run per record: a segment each
        state = open_state(s3_url)
        state[1].record(f"u{i}", Saved(folder(i), i, HEAD))
        close_state(*state)
    names = segments(s3_url, JOURNAL)
    assert len(names) <= objects.MAX_SEGMENTS + 1 and names[0].endswith(".snap")
    state = open_state(s3_url)
    assert sorted(state[1].saved) == sorted(f"u{i}" for i in range(objects.MAX_SEGMENTS + 2))
    close_state(*state)


def test_pending_announcements_survive_runs_in_order(storage):
    state = open_state(storage)
    journal, outbox = state[1], state[2]
    mails = [ReceivedMail(id=f"id{i}", configuration="c", uidl=f"u{i}") for i in range(4)]
    for mail in mails:  # the store's order: the outbox, then the journal
        outbox.add(mail)
        journal.record(mail.uidl, Saved(folder(int(mail.id[2:])), 1, HEAD))
    outbox.acknowledge(["id1"])
    close_state(*state)

    state = open_state(storage)
    assert list(state[2].pending) == ["id0", "id2", "id3"]
    assert state[2].pending["id2"] == mails[2]
    state[2].acknowledge(["id0", "id2", "id3"])
    close_state(*state)
    state = open_state(storage)
    assert state[2].pending == {}
    close_state(*state)


@pytest.mark.s3
def test_the_state_the_previous_release_kept_on_storage_is_adopted(mailbox, s3_url, s3_server):
    """The release before kept one object per record (``S~stamp~uidl~folder~size~head``,
    the UIDL in base32), with a pending announcement (``*_url`` fields) as its content."""
    import base64

    def key(uidl: str) -> str:
        return base64.b32encode(uidl.encode()).decode().rstrip("=").lower()

    bucket = s3_url[len("s3://"):].split("/")[0]
    state = f"mail/.pop3mail/{mailbox_digest(KEY)}"
    old_mail = {"id": "old-id", "configuration": "c", "uidl": "u2", "folder_url": f"{s3_url}/f2",
                "original_url": f"{s3_url}/f2/message.eml",
                "attachments": [{"url": f"{s3_url}/f2/attachments/a.pdf", "filename": "a.pdf",
                                 "content_type": "application/pdf", "size": 1, "sha256": "0"}]}
    client = s3_server.client()
    for name, body in ((f"V~{1:020d}~1", b""),
                       (f"S~{2:020d}~{key('u1')}~{folder(1)}~10~{HEAD}", b""),
                       (f"S~{3:020d}~{key('u2')}~{folder(2)}~20~{HEAD}",
                        json.dumps(old_mail).encode()),
                       (f"F~{4:020d}~{key('u3')}~save", b"")):
        client.put_object(Bucket=bucket, Key=f"{state}/{name}", Body=body)

    storage, journal, outbox = open_state(s3_url)
    assert journal.saved == {"u1": Saved(folder(1), 10, HEAD), "u2": Saved(folder(2), 20, HEAD)}
    assert journal.failures == {"u3": ["save"]}
    [pending] = outbox.pending.values()
    assert pending.folder == f"{s3_url}/f2" and pending.original_path == f"{s3_url}/f2/message.eml"
    assert pending.attachments[0].path == f"{s3_url}/f2/attachments/a.pdf"
    close_state(storage, journal, outbox)
    left = [n for n in objects_under(s3_url) if "~" in n]
    assert left == [], "the old records stay beside the adopted ones"


@pytest.mark.sftp
def test_sftp_refuses_a_server_whose_host_key_is_not_known(sftp_server, monkeypatch, tmp_path):
    use_sftp(sftp_server, monkeypatch)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    monkeypatch.setenv("POP3MAIL_SFTP_KNOWN_HOSTS", str(empty))

    with pytest.raises(SaveDirectoryError, match="not in .*known_hosts"):
        FsspecStorage.open(sftp_server.url("x"), None, "digest")


def test_a_password_in_the_url_never_shows_and_the_block_refuses_it(mailbox):
    url = "sftp://mailer:s3cret-pw@127.0.0.1:1/srv/mail"
    assert public_url(url) == "sftp://mailer@127.0.0.1:1/srv/mail"
    with pytest.raises(SaveDirectoryError) as caught:
        connect(url)
    assert "s3cret-pw" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)
    with pytest.raises(ValidationError, match="save_directory") as refused:
        mailbox.block(url)
    assert "s3cret-pw" not in str(refused.value)
    with pytest.raises(ValueError, match="save_directory") as refused:
        SaveOptions(url=url)
    assert "s3cret-pw" not in str(refused.value.errors(include_input=False))


@pytest.mark.s3
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
    try:
        import gcsfs  # noqa: F401
        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    with pytest.raises(SaveDirectoryError, match=r"prefect-pop3mail\[gcs\]"):
        connect("gs://bucket/mail")


def test_a_local_folder_or_file_url_is_a_directory_and_storage_a_url(mailbox, tmp_path):
    block = mailbox.block(tmp_path / "mail")
    assert block.save_options().directory == tmp_path / "mail"
    assert block.save_options().url is None
    assert mailbox.block((tmp_path / "a b").as_uri()).save_options().directory == tmp_path / "a b"
    assert mailbox.block("s3://bucket/prefix").save_options().url == "s3://bucket/prefix"


@pytest.mark.s3
def test_a_message_failing_run_after_run_is_quarantined_on_storage(mailbox, s3_url,
                                                                   monkeypatch):
    storage_backends.break_parsing_of_poison(monkeypatch)
    mailbox.deliver(sample_message(1, Subject="poison"), sample_message(2))
    save, options = SaveOptions(url=s3_url), ReceiveOptions(quarantine_after=2)

    first = receive_mailbox("cfg", mailbox.settings(), save, options)
    second = receive_mailbox("cfg", mailbox.settings(), save, options)
    third = receive_mailbox("cfg", mailbox.settings(), save, options)

    assert len(first.received) == 1 and first.failed[0].attempts == 1
    assert second.received[0].quarantined, "counts were not kept on storage"
    quarantined = second.received[0]
    assert "/quarantine/" in quarantined.folder
    assert b"Subject: poison" in quarantined.original_path.read_bytes()
    assert json.loads(type(quarantined.folder)(f"{quarantined.folder}/{MARKER}").read_bytes())
    assert third.received == [] and third.skipped_known == 2
