"""The downstream example reads only message folders under its configuration's save
directory: an event's paths are input, not trust."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from prefect_pop3mail.blocks import POP3MailConfiguration
from prefect_pop3mail.flows.downstream_example import MANIFEST_NAME, record_received_mail
from prefect_pop3mail.tasks.pop3.errors import ConfigurationError

pytestmark = pytest.mark.prefect  # each test saves its configuration


@pytest.fixture
def saved(tmp_path: Path) -> tuple[str, Path]:
    """A saved configuration and one message folder in its save directory."""
    root = tmp_path / "mail"
    folder = root / "2026-11-26_msg-1"
    (folder / "attachments").mkdir(parents=True)
    (folder / "message.eml").write_bytes(b"Subject: hi\n\nhello\n")
    (folder / "attachments" / "order.csv").write_text("id,qty\n1,2\n")
    (root / ".pop3mail").mkdir()
    (root / ".pop3mail" / "journal").write_text("S uidl-1\n")
    name = f"downstream-{uuid.uuid4().hex[:8]}"
    POP3MailConfiguration(server="127.0.0.1", user="u", password="pw",
                          save_directory=str(root)).save(name)
    return name, folder


def test_files_in_the_message_folder_are_recorded(saved):
    name, folder = saved
    manifest = record_received_mail(
        folder=str(folder), original_path=str(folder / "message.eml"),
        attachments=[str(folder / "attachments" / "order.csv")], configuration=name,
    )
    assert [f["role"] for f in manifest["files"]] == ["original", "attachment"]
    assert json.loads((folder / MANIFEST_NAME).read_text()) == manifest


@pytest.mark.parametrize(
    ("field", "path"),
    [
        ("original_path", "/etc/passwd"),
        ("attachments", "{folder}/../../outside.txt"),
        ("attachments", "{folder}/link-out"),  # a symbolic link inside, to a file outside
        ("text_path", "{root}/.pop3mail/journal"),  # the state folder is not a message
    ],
)
def test_paths_outside_the_message_folder_are_refused(saved, tmp_path, field, path):
    name, folder = saved
    (tmp_path / "outside.txt").write_text("not mail\n")
    (folder / "link-out").symlink_to(tmp_path / "outside.txt")
    path = path.format(folder=folder, root=folder.parent)
    arguments = {"attachments": [path]} if field == "attachments" else {field: path}
    with pytest.raises(ValueError, match=f"^{field}: .* is not in a message folder"):
        record_received_mail(folder=str(folder), configuration=name, **arguments)
    assert not (folder / MANIFEST_NAME).exists()


@pytest.mark.parametrize("folder", ["{tmp}", "{root}", "{root}/.pop3mail", "{root}/../x"])
def test_a_folder_outside_the_save_directory_is_refused(saved, tmp_path, folder):
    name, message_folder = saved
    folder = folder.format(tmp=tmp_path, root=message_folder.parent)
    with pytest.raises(ValueError, match="^folder: .* under the save directory of"):
        record_received_mail(folder=folder, configuration=name)


def test_without_a_configuration_nothing_is_read(saved):
    _, folder = saved
    with pytest.raises(ConfigurationError) as caught:
        record_received_mail(folder=str(folder))
    assert caught.value.field == "configuration"
