"""Replay: saved mail handed on again from the save directory alone, against a real Dovecot
mailbox and a real S3-compatible server (moto).

Mail is received for real, a downstream step breaks, and the replay of a window hands it
exactly the window's messages, with the ids it saw the first time. A replay never contacts
the server (a listening socket counts the connections), never changes a byte of the save
directory (hashed before and after), and works when the configuration is inactive.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_pop3mail.tasks.pop3.errors import ConfigurationError
from prefect_pop3mail.tasks.pop3.models import ReceivedMail, ReceiveOptions, SaveOptions
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
from prefect_pop3mail.tasks.pop3.replay import (
    ReplayWindowError,
    SavedMail,
    replay_saved,
    window,
)
from prefect_pop3mail.tasks.pop3.storage.journal import PRUNE_AT
from tests import storage_backends
from tests.conftest import sample_message
from tests.storage_backends import use_s3, use_sftp

#: Dovecot for every test; the flows, the events and the CLI reach Prefect's API.
pytestmark = [pytest.mark.dovecot, pytest.mark.prefect]

s3_server, sftp_server = storage_backends.s3_server, storage_backends.sftp_server


@pytest.fixture(params=["local", storage_backends.S3, storage_backends.SFTP])
def where(request, tmp_path, monkeypatch) -> SaveOptions:
    """A save directory: a local folder, a bucket of moto's S3 server, or a folder of a
    private OpenSSH sftp server."""
    if request.param == "local":
        return SaveOptions(directory=tmp_path / "mail")
    if request.param == "s3":
        return SaveOptions(url=use_s3(storage_backends.server_for("s3", request), monkeypatch))
    return SaveOptions(url=use_sftp(storage_backends.server_for("sftp", request), monkeypatch))


def receive(mailbox, save: SaveOptions, *messages: bytes, **options) -> list[ReceivedMail]:
    """Deliver ``messages`` and receive them (removal on: the server holds only new mail)."""
    mailbox.deliver(*messages)
    report = receive_mailbox("cfg", mailbox.settings(), save,
                             ReceiveOptions(remove_after_read=True, **options))
    assert not report.failed, report.failed
    return report.received


def as_saved(mail: ReceivedMail) -> dict:
    """A result as it was when saved: deletion is decided after saving."""
    return mail.model_dump(exclude={"deleted", "warnings"})


def tree_digest(save: SaveOptions) -> dict[str, str]:
    """Every file of the save directory (state folder included) and its SHA-256."""
    if save.directory is not None:
        return {str(p.relative_to(save.directory)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(save.directory.rglob("*")) if p.is_file()}
    from prefect_pop3mail.tasks.pop3.storage.connect import connect

    fs, root = connect(save.url)
    return {p: hashlib.sha256(fs.cat_file(p)).hexdigest() for p in sorted(fs.find(root))}


def test_a_replay_hands_on_the_window_with_the_ids_of_the_first_time(mailbox, where):
    before = receive(mailbox, where, *(sample_message(i) for i in range(3)))
    time.sleep(0.01)
    start = datetime.now(UTC)
    inside = receive(mailbox, where, *(sample_message(i) for i in range(3, 7)))
    end = datetime.now(UTC)
    time.sleep(0.01)
    after = receive(mailbox, where, sample_message(7))
    seen_first = {m.id: m for m in inside}  # what a downstream step was handed
    assert len(before) == 3 and len(inside) == 4 and len(after) == 1
    digest = tree_digest(where)

    mails, report = replay_saved("cfg", where, mailbox.settings().mailbox_key,
                                 window(since=start, until=end))

    assert [m.id for m in mails] == [m.id for m in inside]
    assert [as_saved(m) for m in mails] == [as_saved(seen_first[m.id]) for m in mails]
    assert report.replayed == 4 and report.problems_count == 0
    assert mails[0].original_path.read_bytes() == inside[0].original_path.read_bytes()
    everything, _ = replay_saved("cfg", where, mailbox.settings().mailbox_key)
    assert [m.id for m in everything] == [m.id for m in before + inside + after]
    assert tree_digest(where) == digest, "a replay changed the save directory"


def test_replay_by_message_id_and_by_the_date_header(mailbox, where):
    dates = ["Mon, 02 Nov 2026 10:00:00 +0000", "Tue, 10 Nov 2026 10:00:00 +0000",
             "Fri, 20 Nov 2026 10:00:00 +0000"]
    saved = receive(mailbox, where, *(sample_message(i, Date=d) for i, d in enumerate(dates)))
    key = mailbox.settings().mailbox_key

    by_id, _ = replay_saved("cfg", where, key, window(message_ids=[saved[2].id.upper(),
                                                                   saved[0].id]))
    by_date, _ = replay_saved("cfg", where, key, window(date_since="2026-11-05T00:00:00",
                                                        date_until="2026-11-15T00:00:00Z"))

    assert sorted(m.id for m in by_id) == sorted([saved[0].id, saved[2].id])
    assert [m.id for m in by_date] == [saved[1].id]


def test_quarantined_messages_are_listed_apart_and_replayed_only_when_asked(
        mailbox, where, monkeypatch):
    storage_backends.break_parsing_of_poison(monkeypatch)
    mailbox.deliver(sample_message(1, Subject="poison"), sample_message(2))
    options = ReceiveOptions(quarantine_after=1)
    first = receive_mailbox("cfg", mailbox.settings(), where, options)
    second = receive_mailbox("cfg", mailbox.settings(), where, options)
    quarantined = next(m for m in first.received + second.received if m.quarantined)
    good = next(m for m in first.received + second.received if not m.quarantined)
    key = mailbox.settings().mailbox_key

    mails, report = replay_saved("cfg", where, key)
    asked, asked_report = replay_saved("cfg", where, key, window(quarantined=True))

    assert [m.id for m in mails] == [good.id]
    assert report.quarantined_count == 1 and report.quarantined[0].id == quarantined.id
    assert report.quarantined[0].original_path.read_bytes() == \
        quarantined.original_path.read_bytes()
    assert sorted(m.id for m in asked) == sorted([good.id, quarantined.id])
    assert asked_report.quarantined_count == 0


def test_messages_the_journal_pruned_are_replayed_from_its_archive(mailbox, tmp_path):
    save = SaveOptions(directory=tmp_path / "mail")
    key = mailbox.settings().mailbox_key
    old = receive(mailbox, save, *(sample_message(i) for i in range(PRUNE_AT)))
    newer = receive(mailbox, save, sample_message(PRUNE_AT))  # the run prunes the old ones

    journal = next((save.directory / ".pop3mail").glob("journal-*.log")).read_bytes()
    assert old[0].uidl.encode() not in journal, "the journal did not prune"
    mails, report = replay_saved("cfg", save, key)

    assert [m.id for m in mails] == [m.id for m in old + newer]
    assert report.problems_count == 0


def watch_connections(monkeypatch) -> list:
    """Every address this process connects a socket to, from now on."""
    real_connect = socket.socket.connect
    reached: list = []

    def watched(self, address):
        reached.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", watched)
    return reached


def to_pop3(mailbox, reached: list) -> list:
    ports = {mailbox.server.pop3_port, mailbox.server.pop3s_port}
    return [a for a in reached if isinstance(a, tuple) and a[1] in ports]


def test_the_flow_replays_an_inactive_configuration_without_contacting_the_server(
        mailbox, where, monkeypatch):
    from prefect_pop3mail.flows import replay_saved_mail

    saved = receive(mailbox, where, sample_message(1), sample_message(2))
    inactive = mailbox.block(where.directory or where.url, status="Inactive")
    digest = tree_digest(where)
    reached = watch_connections(monkeypatch)

    mails = replay_saved_mail(inactive, announce=False)

    assert [m.id for m in mails] == [m.id for m in saved]
    assert [as_saved(m) for m in mails] == [as_saved(m) for m in saved]
    assert to_pop3(mailbox, reached) == []
    assert tree_digest(where) == digest, "a replay changed the save directory"


def test_the_engine_never_contacts_the_server(mailbox, where, monkeypatch):
    saved = receive(mailbox, where, sample_message(1))
    reached = watch_connections(monkeypatch)
    mails, _ = replay_saved("cfg", where, mailbox.settings().mailbox_key)
    assert [m.id for m in mails] == [saved[0].id]
    assert to_pop3(mailbox, reached) == []


@pytest.mark.parametrize(("arguments", "field"), [
    ({"since": "yesterday"}, "since"),
    ({"until": "2026-13-01"}, "until"),
    ({"since": "2026-12-02", "until": "2026-12-01"}, "until"),
    ({"since": "2026-12-01T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "until"),
    ({"since": 12}, "since"),
    ({"message_ids": ["0" * 32, "not-an-id"]}, "message_ids[1]"),
    ({"message_ids": ["0" * 31]}, "message_ids[0]"),
    ({"message_ids": 5}, "message_ids"),
    ({"message_ids": ["0" * 32] * 10_001}, "message_ids"),
    ({"date_since": "2026-12-02", "date_until": "2026-11-01"}, "date_until"),
    ({"date_until": "soon"}, "date_until"),
    ({"message_ids": []}, "message_ids"),
    ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
    ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
])
def test_a_bad_window_names_its_field(arguments, field):
    with pytest.raises(ReplayWindowError) as caught:
        window(**arguments)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_a_save_directory_never_used_replays_nothing_and_creates_nothing(tmp_path):
    root = tmp_path / "mail"
    root.mkdir()
    mails, report = replay_saved("cfg", SaveOptions(directory=root), "u@h:110")
    assert mails == [] and report.replayed == 0
    assert list(root.iterdir()) == []
    with pytest.raises(Exception, match="save_directory: .*does not exist"):
        replay_saved("cfg", SaveOptions(directory=tmp_path / "none"), "u@h:110")
    assert not (tmp_path / "none").exists()


def test_a_damaged_marker_is_that_message_s_problem(mailbox, tmp_path):
    save = SaveOptions(directory=tmp_path / "mail")
    saved = receive(mailbox, save, sample_message(1), sample_message(2))
    marker = Path(saved[0].folder) / ".complete"
    os.chmod(marker, 0o600)
    marker.write_bytes(b'{"version": 3, "uidl": "x"')

    with SavedMail("cfg", save, mailbox.settings().mailbox_key,
                   window(since=datetime.now(UTC) - timedelta(hours=1))) as replay:
        mails = list(replay)

    assert [m.id for m in mails] == [saved[1].id]
    assert replay.report.problems_count == 1
    assert replay.report.problems[0].uidl == saved[0].uidl
    assert "cannot be read" in replay.report.problems[0].problem


def _tampered(result: dict, folder: str, record_quarantined: bool, id_of) -> dict:
    """Ways a writer of the save directory may change one saved result (a marker is plain
    JSON): each must make that message a problem, never something handed on."""
    other = "0" * 32
    return {
        "legacy URL fields out of the folder": {
            **result, "original_path": None, "original_url": "/etc/passwd",
            "text_url": "s3://other-bucket/secret.txt"},
        "an attachment's legacy URL": {
            **result, "attachments": [{**a, "path": None, "url": "https://evil.example/x",
                                       "parent_url": "../../../../etc/shadow"}
                                      for a in result["attachments"]] or [
                {"url": "https://evil.example/x", "filename": "x", "content_type": "a/b",
                 "size": 1, "sha256": "0"}]},
        "a path out of the folder": {**result, "text_path": f"{folder}/../../etc/passwd"},
        "an id that is not hex": {**result, "id": "not-hex\x1b[31m"},
        "another message's id": {**result, "id": id_of},
        "an id the mailbox did not give": {**result, "id": other},
        "another content": {**result, "sha256": "f" * 64},
        "the quarantine flag flipped": {**result, "quarantined": not record_quarantined},
    }


def test_a_tampered_result_is_that_message_s_problem_never_handed_on(mailbox, tmp_path):
    import json

    save = SaveOptions(directory=tmp_path / "mail")
    saved = receive(mailbox, save, sample_message(1, Subject="first"),
                    sample_message(2, Subject="second"))
    target = Path(saved[0].folder) / ".complete"
    original = json.loads(target.read_bytes())
    os.chmod(target, 0o600)
    ways = _tampered(original["result"], original["result"]["folder"], False, saved[1].id)
    for how, result in ways.items():
        marker = {**original, "result": result}
        if how in ("an id that is not hex", "another message's id",
                   "an id the mailbox did not give"):
            marker["id"] = result["id"]  # the marker's identity changed along with it
        target.write_text(json.dumps(marker))
        mails, report = replay_saved("cfg", save, mailbox.settings().mailbox_key)
        assert [m.id for m in mails] == [saved[1].id], how
        assert report.problems_count == 1 and report.problems[0].uidl == saved[0].uidl, how
        assert report.quarantined_count == 0, how


_RESULT_FIELDS = ("id", "uidl", "sha256", "folder", "original_path", "text_path",
                  "html_path", "quarantined", "original_url", "text_url", "folder_url")
_HOSTILE_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=40),
    st.sampled_from(["/etc/passwd", "../../etc/passwd", "s3://other-bucket/x",
                     "https://evil.example/x", "0" * 32, "f" * 64, "\x1b[31m", ""]),
    st.builds(lambda tail: "{folder}/" + tail, st.sampled_from(
        ["../x", "./text.txt", "text.txt/..", "/abs", "a//b", "message.eml"])))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.dictionaries(st.sampled_from(_RESULT_FIELDS), _HOSTILE_VALUES,
                               min_size=1, max_size=4))
def test_any_change_to_a_saved_result_is_handed_on_as_saved_or_is_a_problem(
        tampering, changes):
    """The class of the examples above: whatever a writer of the save directory changes in
    a result, replay hands on the message it saved (its identity as saved, every location
    inside its own folder; a location blanked or pointed at another file of the folder is
    the marker's word), or reports it as a problem; never an error for the whole replay."""
    import json

    save, saved, target, original, key = tampering
    folder = original["result"]["folder"]
    result = {**original["result"], **{
        name: value.replace("{folder}", folder) if isinstance(value, str) else value
        for name, value in changes.items()}}
    marker = {**original, "result": result}
    if "id" in changes:
        marker["id"] = result["id"]
    target.write_text(json.dumps(marker))

    mails, report = replay_saved("cfg", save, key)

    assert len(mails) + report.problems_count == 1
    for mail in mails:
        first = saved[0]
        assert (mail.id, mail.uidl, mail.sha256, mail.quarantined, mail.folder) == \
            (first.id, first.uidl, first.sha256, first.quarantined, first.folder)
        assert all(str(p).startswith(f"{first.folder}/") and ".." not in str(p).split("/")
                   for p in mail.saved_paths)


@pytest.fixture
def tampering(mailbox, tmp_path):
    import json

    save = SaveOptions(directory=tmp_path / "mail")
    saved = receive(mailbox, save, sample_message(1))
    target = Path(saved[0].folder) / ".complete"
    os.chmod(target, 0o600)
    return save, saved, target, json.loads(target.read_bytes()), mailbox.settings().mailbox_key


def test_a_link_planted_in_a_saved_folder_is_not_handed_on(mailbox, tmp_path):
    save = SaveOptions(directory=tmp_path / "mail")
    saved = receive(mailbox, save, sample_message(1), sample_message(2))
    planted = Path(saved[0].original_path)
    planted.unlink()
    planted.symlink_to("/etc/passwd")

    mails, report = replay_saved("cfg", save, mailbox.settings().mailbox_key)

    assert [m.id for m in mails] == [saved[1].id]
    assert "not a file of the save directory" in report.problems[0].problem


def test_archive_pieces_named_again_are_read_once(mailbox, tmp_path, monkeypatch):
    """A journal naming one archive piece many times costs one read of it, not one per
    line (linear in the journal)."""
    from prefect_pop3mail.tasks.pop3.storage.local import LocalStorage

    save = SaveOptions(directory=tmp_path / "mail")
    receive(mailbox, save, sample_message(1))
    opened = []
    real = LocalStorage.open_archive

    def counting(self, name, piece):
        opened.append(piece)
        return real(self, name, piece)

    monkeypatch.setattr(LocalStorage, "open_archive", counting)
    records = iter([("piece-1", object())] * 500)
    monkeypatch.setattr("prefect_pop3mail.tasks.pop3.replay.read_records",
                        lambda chunks: records)
    with SavedMail("cfg", save, mailbox.settings().mailbox_key) as replay:
        assert list(replay) == []
    assert opened == ["piece-1"]


# --- through the flows, with a downstream step and the Prefect server's events ------------


def stored_replays(mail_id: str) -> list[dict]:
    """The ``pop3mail.message.received`` events the Prefect server holds for a message."""
    from prefect_pop3mail.tasks.events import EVENT_RECEIVED
    from tests.test_failed_runs import stored_events

    return stored_events([EVENT_RECEIVED], f"pop3mail.message.{mail_id}")


def wait_for(check, timeout: float = 20.0):
    """``check()`` once it is true (the server stores events as they stream in)."""
    deadline = time.monotonic() + timeout
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.3)
    return found


def test_a_broken_downstream_step_sees_exactly_the_window_again(mailbox, where):
    from prefect_pop3mail.flows import receive_all_mail, replay_saved_mail

    name = f"replay-{uuid.uuid4().hex[:8]}"
    mailbox.block(where.directory or where.url, remove_from_server_after_read=True,
                  emit_message_events=True).save(name)
    seen: dict[str, list[str]] = {}  # the downstream step's record: id -> what it read
    broken = False

    def downstream(mail: ReceivedMail) -> None:
        if broken:
            raise ConnectionError("the database is down")
        seen.setdefault(mail.id, []).append(
            hashlib.sha256(mail.original_path.read_bytes()).hexdigest())

    def run(*messages: bytes) -> list[ReceivedMail]:
        mailbox.deliver(*messages)
        received = receive_all_mail(name)
        missed = []
        for mail in received:
            try:
                downstream(mail)
            except ConnectionError:
                missed.append(mail)
        return missed

    assert run(sample_message(0), sample_message(1)) == []
    broken, start = True, datetime.now(UTC)
    missed = run(sample_message(2), sample_message(3)) + run(sample_message(4))
    broken, end = False, datetime.now(UTC)
    assert run(sample_message(5)) == [] and len(missed) == 3 and len(seen) == 3

    replayed = replay_saved_mail(name, since=start, until=end)
    for mail in replayed:
        downstream(mail)

    assert [m.id for m in replayed] == [m.id for m in missed]
    assert all(seen[m.id] == [m.sha256] for m in missed), "not the message saved then"
    assert all(len(reads) == 1 for reads in seen.values())
    # Each one's event again, marked replay, with the id of the first announcement.
    for mail in replayed:
        events = wait_for(lambda m=mail: len(stored_replays(m.id)) >= 2 and stored_replays(m.id))
        assert sorted(e["payload"]["replay"] for e in events) == [False, True]
        assert {e["payload"]["id"] for e in events} == {mail.id}


def test_replay_events_are_bounded_in_count_and_say_what_was_left_out(mailbox, tmp_path,
                                                                      monkeypatch):
    from prefect_pop3mail.flows import replay_saved_mail
    from prefect_pop3mail.tasks import replaying
    from prefect_pop3mail.tasks.events import EVENT_MAILBOX_RECEIVED, mailbox_resource_id
    from tests.test_failed_runs import stored_events

    save = SaveOptions(directory=tmp_path / "mail")
    saved = receive(mailbox, save, *(sample_message(i) for i in range(5)))
    name = f"bounded-{uuid.uuid4().hex[:8]}"
    mailbox.block(save.directory, status="Inactive").save(name)
    monkeypatch.setattr(replaying, "MAX_REPLAY_EVENTS", 3)
    monkeypatch.setattr(replaying, "EVENT_BATCH", 2)

    assert [m.id for m in replay_saved_mail(name)] == [m.id for m in saved]

    summaries = wait_for(lambda: stored_events([EVENT_MAILBOX_RECEIVED],
                                               mailbox_resource_id(name)))
    [summary] = summaries
    assert summary["payload"]["replay"] is True
    assert summary["resource"]["pop3mail.replay"] == "true"
    assert summary["resource"]["pop3mail.mail-fetched"] == "false"
    assert (summary["payload"]["replayed"], summary["payload"]["announced"],
            summary["payload"]["not_announced"]) == (5, 3, 2)
    assert [m["id"] for m in summary["payload"]["messages"]] == [m.id for m in saved[:3]]
    sent = [m.id for m in saved if wait_for(lambda m=m: stored_replays(m.id), timeout=3)]
    assert sent == [m.id for m in saved[:3]]
    assert all(stored_replays(i)[0]["payload"]["replay"] is True for i in sent)


def test_the_downstream_example_records_a_replayed_message_once(mailbox, tmp_path):
    from prefect_pop3mail.flows import replay_saved_mail
    from prefect_pop3mail.flows.downstream_example import MANIFEST_NAME, record_received_mail

    save = SaveOptions(directory=tmp_path / "mail")
    [mail] = receive(mailbox, save, sample_message(1))
    name = f"example-{uuid.uuid4().hex[:8]}"
    mailbox.block(save.directory).save(name)

    def handle(m: ReceivedMail, replay: bool) -> dict:  # what the trigger passes
        return record_received_mail(folder=str(m.folder), original_path=str(m.original_path),
                                    text_path=str(m.text_path), configuration=name,
                                    subject=m.subject, mail_id=m.id, replay=replay)

    first = handle(mail, False)
    manifest = Path(mail.folder) / MANIFEST_NAME
    written = manifest.stat().st_mtime_ns
    [again] = replay_saved_mail(name, message_ids=[mail.id], announce=False)
    second = handle(again, True)

    assert first["id"] == mail.id and "already_recorded" not in first
    assert second == {**first, "already_recorded": True}
    assert manifest.stat().st_mtime_ns == written, "recorded twice"


def test_replay_events_stay_under_the_event_bound():
    from prefect_pop3mail.tasks.events import MAX_EVENT_BYTES, MAX_ITEMS, size_bytes
    from prefect_pop3mail.tasks.pop3.replay import ReplayReport
    from prefect_pop3mail.tasks.replaying import replay_event, replay_summary

    worst = ReceivedMail(id="f" * 32, configuration="c" * 5000, uidl="u" * 5000,
                         subject="\x00" * 100_000, sender="\u2028" * 50_000,
                         attachments=[{"path": "/" + "\x1b" * 5000, "filename": "x",
                                       "content_type": "a/b", "size": 1,
                                       "sha256": "0"}] * 2000)
    sent = [(worst.id, worst.location)] * 1000
    report = ReplayReport(configuration="c" * 5000, replayed=5000)

    event = replay_event(worst)
    summary = replay_summary(report, sent, 4000)

    assert event.payload["replay"] is True and event.payload["id"] == worst.id
    assert str(event.id).replace("-", "") != worst.id, "the server would drop it as a repeat"
    assert size_bytes(event) < MAX_EVENT_BYTES and size_bytes(summary) < MAX_EVENT_BYTES
    assert len(summary.payload["messages"]) == MAX_ITEMS
    assert summary.payload["messages_more"] == 1000 - MAX_ITEMS
    assert summary.payload["not_announced"] == 4000


# --- pop3mail replay ------------------------------------------------------------------------


def test_the_command_replays_a_window_of_an_inactive_configuration(capsys, mailbox, tmp_path):
    from tests.test_cli import OK, run

    save = SaveOptions(directory=tmp_path / "mail")
    early = receive(mailbox, save, sample_message(1, Subject="early \x1b[31mred"))
    start = datetime.now(UTC)
    later = receive(mailbox, save, sample_message(2), sample_message(3))
    name = f"cli-replay-{uuid.uuid4().hex[:8]}"
    mailbox.block(save.directory, status="Inactive").save(name)

    code, out, err = run(capsys, "replay", name, "--since", start.isoformat(),
                         "--no-announce")
    assert code == OK, err
    assert out.splitlines()[-1] == "2 message(s) replayed (no events sent)."
    listed = [line.split()[0] for line in out.splitlines()
              if line.startswith("  ") and not line.startswith("    ")]
    assert listed == [m.id for m in later]
    assert f"    {later[0].folder}" in out.splitlines()
    code, out, err = run(capsys, "replay", name, "--message-id", early[0].id, "--no-announce")
    assert code == OK, err
    assert early[0].id in out and "\\x1b[31mred" in out and "\x1b" not in out


@pytest.mark.parametrize(("argv", "field"), [
    (("--since", "last tuesday"), "since"),
    (("--since", "2026-12-02", "--until", "2026-12-01"), "until"),
    (("--message-id", "nope"), "message_ids[0]"),
])
def test_the_command_names_a_bad_window_in_one_line(capsys, mailbox, tmp_path, argv, field):
    from tests.test_cli import USAGE, run

    name = f"cli-replay-{uuid.uuid4().hex[:8]}"
    mailbox.block(tmp_path / "mail").save(name)
    code, out, err = run(capsys, "replay", name, *argv)
    assert code == USAGE and out == ""
    assert err.startswith(f"pop3mail replay {name}: {field}: ") and err.count("\n") == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1) | st.integers(0, 40), max_size=3000),
       st.integers(1, 64))
def test_the_set_of_folders_handed_on_answers_as_a_set_does(keys, recent):
    from prefect_pop3mail.tasks.pop3.replay import Digests

    digests, reference = Digests(), set()
    digests.RECENT = recent  # small: many merges
    for key in keys:
        assert (key in digests) == (key in reference)
        if key not in digests:
            digests.add(key)
            reference.add(key)
    assert all(key in digests for key in reference)


def test_a_configuration_without_its_password_replays_its_mail(mailbox, tmp_path):
    """Replay needs no secret: the mailbox's user, server and port name its journal."""
    from prefect_pop3mail.flows import replay_saved_mail

    save = SaveOptions(directory=tmp_path / "mail")
    saved = receive(mailbox, save, sample_message(1))
    block = mailbox.block(save.directory, status="Inactive")
    assert block.mailbox_key() == block.connection_settings().mailbox_key
    without = block.model_copy(update={"password": None})

    assert [m.id for m in replay_saved_mail(without, announce=False)] == [saved[0].id]


def test_a_configuration_whose_key_store_is_gone_replays_its_mail(mailbox, tmp_path,
                                                                 monkeypatch):
    """Replay reads what was saved, decrypted or not: the key store is not needed, while
    receiving with the same configuration still refuses to run without it."""
    from prefect_pop3mail.flows import replay_saved_mail

    save = SaveOptions(directory=tmp_path / "mail")
    saved = receive(mailbox, save, sample_message(1))
    monkeypatch.delenv("POP3MAIL_KEY_STORE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env with a key store here
    block = mailbox.block(save.directory, status="Inactive", public_key_name="gone")
    with pytest.raises(ConfigurationError, match="public_key_name"):
        block.save_options()

    assert [m.id for m in replay_saved_mail(block, announce=False)] == [saved[0].id]


def test_a_message_journalled_twice_is_replayed_once(mailbox, tmp_path):
    save = SaveOptions(directory=tmp_path / "mail")
    saved = receive(mailbox, save, sample_message(1), sample_message(2))
    journal = next((save.directory / ".pop3mail").glob("journal-*.log"))
    lines = journal.read_bytes().splitlines(keepends=True)
    first = next(line for line in lines if saved[0].uidl.encode() in line)
    os.chmod(journal, 0o600)
    journal.write_bytes(b"".join(lines) + first)  # saved again into its folder, as after a crash

    mails, report = replay_saved("cfg", save, mailbox.settings().mailbox_key)

    assert [m.id for m in mails] == [saved[0].id, saved[1].id]
    assert report.replayed == 2
