"""The golden corpus: every case in tests/corpus saved by the store, compared file by file
with what the case put in (see tests/corpus/README.md)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3 import errors
from prefect_pop3mail.tasks.pop3.models import SaveOptions
from prefect_pop3mail.tasks.pop3.storage.store import ORIGINAL_NAME, MessageStore

CORPUS = Path(__file__).parent / "corpus"
KEY_PASSWORD = "corpus-only-not-a-secret"
CASES = sorted(p.name for p in CORPUS.iterdir() if (p / "expected.json").exists())


def corpus_case(name: str) -> tuple[bytes, dict]:
    folder = CORPUS / name
    return (folder / "message.eml").read_bytes(), json.loads((folder / "expected.json").read_text("utf-8"))


def options_for(expected: dict, directory: Path, **overrides) -> SaveOptions:
    key = expected["options"].get("key")
    values = dict(directory=directory)
    if key:
        values["key_store"] = CORPUS / "keys" / f"{key}.p12"
        values["key_password"] = SecretStr(expected["options"].get("password", KEY_PASSWORD))
    values.update(overrides)
    return SaveOptions(**values)


def save(store: MessageStore, data: bytes, uidl: str):
    incoming = store.incoming()
    incoming.write(data)
    incoming.finish()
    return store.save(incoming, uidl)


def saved_files(folder) -> dict[str, dict]:
    """The files saved in a message folder but its .complete marker (tested as a storage
    promise, tests/test_storage_promises.py)."""
    folder = Path(folder)
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != ".complete":
            data = path.read_bytes()
            found[path.relative_to(folder).as_posix()] = {
                "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return found


def is_log(path: Path) -> bool:
    """The mailbox's journal and outbox (the store opens them), as opposed to leftovers."""
    return path.parent.name == ".pop3mail" and path.name.startswith(("journal-", "outbox-"))


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", CASES)
def test_corpus_case(name, tmp_path):
    data, expected = corpus_case(name)
    store = MessageStore(options_for(expected, tmp_path), "corpus@test:110", "corpus")
    if expected["error"]:
        with pytest.raises(getattr(errors, expected["error"])) as caught:
            save(store, data, name)
        assert KEY_PASSWORD not in str(caught.value)
        assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
        return
    mail = save(store, data, name)

    files = saved_files(mail.folder)
    original = files.pop(ORIGINAL_NAME)
    assert original == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert files == expected["files"]

    # The result lists every saved file with its SHA-256.
    listed = {ORIGINAL_NAME: mail.sha256}
    if mail.text_path:
        listed[mail.text_path.path.relative_to(mail.folder.path).as_posix()] = mail.text_sha256
    if mail.html_path:
        listed[mail.html_path.path.relative_to(mail.folder.path).as_posix()] = mail.html_sha256
    for a in mail.attachments:
        listed[a.path.path.relative_to(mail.folder.path).as_posix()] = a.sha256
        assert a.size == expected["files"][a.path.path.relative_to(mail.folder.path).as_posix()]["size"]
    assert listed == {ORIGINAL_NAME: original["sha256"]} | {
        path: entry["sha256"] for path, entry in expected["files"].items()}

    # What the result says of an attachment: its name, type, and where it came from.
    for path, facts in expected.get("attachments", {}).items():
        [found] = [a for a in mail.attachments
                   if a.path.path.relative_to(mail.folder.path).as_posix() == path]
        parent = found.parent and found.parent.path.relative_to(mail.folder.path).as_posix()
        for fact, value in facts.items():
            assert (parent if fact == "parent" else getattr(found, fact)) == value, (path, fact)

    assert len(mail.warnings) == len(expected["warnings"]), mail.warnings
    for wanted, got in zip(sorted(expected["warnings"]), sorted(mail.warnings), strict=True):
        assert wanted in got, mail.warnings
    assert mail.decrypted == expected["decrypted"]
    if expected["signature"]:
        assert mail.signature is not None
        for fact, value in expected["signature"].items():  # signer, verified, trusted...
            assert getattr(mail.signature, fact) == value, (fact, mail.signature.detail)
    else:
        assert mail.signature is None


@pytest.mark.parametrize("name", ["outlook_style", "forwarded_message"])
def test_saved_files_are_private(name, tmp_path):
    data, expected = corpus_case(name)
    mail = save(MessageStore(options_for(expected, tmp_path), "m@h:1", "c"), data, "u1")
    for path in [mail.folder.path, *mail.folder.path.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_files_follow_the_users_choice_when_not_private(tmp_path):
    data, expected = corpus_case("forwarded_message")
    old = os.umask(0o022)
    try:
        mail = save(MessageStore(options_for(expected, tmp_path, private=False), "m@h:1", "c"), data, "u1")
    finally:
        os.umask(old)
    for path in [mail.folder.path, *mail.folder.path.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


@pytest.mark.parametrize(
    ("text", "attachments", "wanted"),
    [
        (True, False, {"text.txt", "body.html"}),
        (False, True, {"attachments/Invoice 2026-03.pdf"}),
        (False, False, set()),
    ],
)
def test_save_text_and_attachments_switches(tmp_path, text, attachments, wanted):
    data, expected = corpus_case("gmail_style")
    opts = options_for(expected, tmp_path, save_text=text, save_attachments=attachments)
    mail = save(MessageStore(opts, "m@h:1", "c"), data, "u1")
    assert set(saved_files(mail.folder)) - {ORIGINAL_NAME} == wanted
    assert (mail.text_path is not None) == text
    assert len(mail.attachments) == (1 if attachments else 0)


def test_original_can_be_turned_off(tmp_path):
    data, expected = corpus_case("gmail_style")
    mail = save(MessageStore(options_for(expected, tmp_path, save_original=False), "m@h:1", "c"),
                data, "u1")
    assert mail.original_path is None
    assert ORIGINAL_NAME not in saved_files(mail.folder)
    assert mail.text_path.read_text("utf-8").startswith("Hi Bob,")


def test_saving_again_replaces_the_folder(tmp_path):
    data, expected = corpus_case("forwarded_message")
    store = MessageStore(options_for(expected, tmp_path), "m@h:1", "c")
    first = save(store, data, "same-uidl")
    second = save(store, data, "same-uidl")
    assert first.folder == second.folder
    folders = [p for p in tmp_path.iterdir() if p.name != ".pop3mail"]
    assert folders == [first.folder.path]
    assert set(saved_files(second.folder)) - {ORIGINAL_NAME} == set(expected["files"])
    work = tmp_path / ".pop3mail"
    assert not [p for p in work.rglob("*") if p.is_file() and not is_log(p)]


def test_decrypted_plaintext_is_not_left_behind(tmp_path):
    data, expected = corpus_case("smime_encrypted")
    mail = save(MessageStore(options_for(expected, tmp_path), "m@h:1", "c"), data, "u1")
    assert mail.decrypted
    # the encrypted original is what is kept
    assert mail.original_path.read_bytes() == data
    leftovers = [p for p in (tmp_path / ".pop3mail").rglob("*") if p.is_file() and not is_log(p)]
    assert leftovers == []


def test_a_failed_message_leaves_no_folder(tmp_path):
    data, expected = corpus_case("smime_encrypted_for_someone_else")
    store = MessageStore(options_for(expected, tmp_path), "m@h:1", "c")
    incoming = store.incoming()
    incoming.write(data)
    incoming.finish()
    with pytest.raises(errors.SMIMEDecryptError, match="not encrypted for public key 'bob'"):
        store.save(incoming, "u1")
    assert [p.name for p in tmp_path.iterdir()] == [".pop3mail"]
    # The original is back where it arrived, for the caller to set aside or discard.
    assert Path(incoming.path).read_bytes() == data
    incoming.discard()
    assert [p for p in (tmp_path / ".pop3mail").rglob("*") if p.is_file() and not is_log(p)] == []
