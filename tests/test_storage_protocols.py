"""What a save directory may be, and how results say where mail is (issue #24).

Only durable protocols: ``memory://`` with removal on "saved" every message into the
worker's memory and deleted it from the server; ``http(s)://`` could send a mailbox to any
web server the worker reaches. ``save_directory`` is also a parameter of every run, so the
check is made when a configuration is validated (or loaded) and when a run starts.

``ReceivedMail`` has one location type: a local path or a URL in the same fields. Results
written by the release before (``*_url`` fields, in outboxes) still load.
"""

from __future__ import annotations

import json
import pickle
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from prefect_pop3mail.blocks import POP3MailConfiguration
from prefect_pop3mail.tasks.pop3.errors import ConfigurationError
from prefect_pop3mail.tasks.pop3.locations import (
    LOCAL_PROTOCOLS,
    REMOTE_PROTOCOLS,
    location_problem,
)
from prefect_pop3mail.tasks.pop3.models import Location, ReceivedMail, SaveOptions
from tests.conftest import sample_message

REFUSED = ["memory://mail", "http://collector.example/mail", "https://collector.example/x",
           "ftp://files.example/mail", "github://org:repo@main/", "zip://a.zip",
           "simplecache::s3://bucket/mail", "s3://bucket/a::b", "file://otherhost/srv/mail",
           "sftp://mailer:pw@host/srv/mail"]
ALLOWED = ["/srv/mail", "relative/mail", "~/mail", "file:///srv/mail", "local:///srv/mail",
           "s3://bucket/mail", "S3://bucket/mail", "s3a://bucket/mail", "gs://bucket/mail",
           "gcs://bucket/mail", "az://container/mail", "abfs://container/mail",
           "abfss://container@account.dfs.core.windows.net/mail", "sftp://mailer@host/srv/mail",
           "ssh://mailer@host/srv/mail"]


def config(**fields) -> POP3MailConfiguration:
    return POP3MailConfiguration(server="127.0.0.1", user="u", password="pw", **fields)


@pytest.mark.parametrize("location", REFUSED)
def test_anything_but_durable_storage_is_refused_naming_the_field(location):
    with pytest.raises(ValidationError, match="save_directory") as caught:
        config(save_directory=location)
    assert "pw@" not in str(caught.value)
    local = config(save_directory="/srv/mail")
    with pytest.raises(ConfigurationError, match="save_directory") as at_run_start:
        local.save_options(save_directory=location)  # the run's own save_directory
    assert at_run_start.value.field == "save_directory"
    with pytest.raises(ValidationError, match="save_directory"):
        SaveOptions(url=location)  # the engine, called directly


@pytest.mark.parametrize("location", ALLOWED)
def test_local_folders_and_durable_storage_are_allowed(location):
    options = config(save_directory=location).save_options()
    assert (options.url is None) == (location.split("://")[0].lower() in ("file", "local")
                                     or "://" not in location)


@settings(max_examples=200, deadline=None)
@given(scheme=st.from_regex(r"[A-Za-z][A-Za-z0-9+.-]{0,11}", fullmatch=True))
def test_only_the_allow_list_passes_whatever_the_scheme(scheme):
    problem = location_problem(f"{scheme}://bucket/mail")
    name = scheme.lower()
    if name in REMOTE_PROTOCOLS:
        assert problem is None
    elif name in LOCAL_PROTOCOLS:
        assert "another host" in problem  # "bucket" would be a host: not this machine
    else:
        assert "not durable storage" in problem


@pytest.mark.prefect
def test_a_saved_configuration_with_such_a_directory_fails_to_load_naming_it():
    from tests.test_block_loading import BASE, save_unchecked

    name = save_unchecked({**BASE, "save_directory": "memory://mail"})
    with pytest.raises(ConfigurationError, match=r"save_directory \(Save directory\): "
                                                 r"memory:// is not durable storage"):
        POP3MailConfiguration.load_checked(name)


@pytest.mark.prefect
@pytest.mark.dovecot
def test_a_run_given_such_a_directory_fails_before_touching_the_mailbox(mailbox, tmp_path):
    from prefect_pop3mail.flows import receive_all_mail

    mailbox.deliver(sample_message(1))
    name = f"memory-{uuid.uuid4().hex[:8]}"
    mailbox.block(tmp_path, remove_from_server_after_read=True).save(name)

    state = receive_all_mail(name, save_directory="memory://mail", return_state=True)

    assert state.is_failed() and "save_directory" in state.message
    assert "not durable storage" in state.message
    assert mailbox.count() == 1


# --- one location type -----------------------------------------------------------------------


def test_a_location_is_text_that_opens_wherever_it_is(tmp_path):
    path = tmp_path / "message.eml"
    path.write_bytes(b"Subject: hi\n\nhello\n")
    mail = ReceivedMail(configuration="c", uidl="u", folder=tmp_path, original_path=path)
    assert isinstance(mail.original_path, Location) and isinstance(mail.original_path, str)
    assert mail.original_path == str(path) and mail.original_path.path == path
    assert mail.original_path.read_bytes() == b"Subject: hi\n\nhello\n"
    assert not mail.original_path.is_url and mail.original_path.name == "message.eml"
    dumped = json.loads(mail.model_dump_json())
    assert dumped["original_path"] == str(path) and dumped["folder"] == str(tmp_path)
    assert ReceivedMail.model_validate_json(mail.model_dump_json()) == mail
    assert pickle.loads(pickle.dumps(mail)) == mail
    remote = Location("s3://bucket/mail/f/message.eml")
    assert remote.is_url and remote.name == "message.eml"
    with pytest.raises(ValueError, match="on storage"):
        _ = remote.path
    schema = ReceivedMail.model_json_schema()["properties"]["original_path"]
    assert {"type": "string"} in schema["anyOf"]


def test_results_written_by_the_release_before_still_load():
    """An outbox line of the release before: storage locations in ``*_url`` fields."""
    line = {"id": "i", "configuration": "c", "uidl": "u", "folder": None,
            "folder_url": "s3://b/mail/f", "original_path": None,
            "original_url": "s3://b/mail/f/message.eml", "text_url": "s3://b/mail/f/text.txt",
            "html_url": None, "attachments": [{
                "path": None, "url": "s3://b/mail/f/attachments/x.eml", "filename": "x.eml",
                "content_type": "message/rfc822", "size": 3, "sha256": "0", "parent": None,
                "parent_url": None}, {
                "path": None, "url": "s3://b/mail/f/attachments/x/attachments/y.pdf",
                "filename": "y.pdf", "content_type": "application/pdf", "size": 1,
                "sha256": "1", "parent_url": "s3://b/mail/f/attachments/x.eml"}]}
    mail = ReceivedMail.model_validate(line)
    assert (mail.folder, mail.original_path, mail.text_path, mail.html_path) == (
        "s3://b/mail/f", "s3://b/mail/f/message.eml", "s3://b/mail/f/text.txt", None)
    assert [a.path for a in mail.attachments] == [
        "s3://b/mail/f/attachments/x.eml", "s3://b/mail/f/attachments/x/attachments/y.pdf"]
    assert mail.attachments[1].parent == "s3://b/mail/f/attachments/x.eml"
    assert mail.location == "s3://b/mail/f" and len(mail.saved_paths) == 4
    assert "folder_url" not in mail.model_dump() and "url" not in mail.model_dump()["attachments"][0]
    local = {"configuration": "c", "uidl": "u", "folder": "/srv/mail/f",
             "original_path": "/srv/mail/f/message.eml", "folder_url": None}
    assert ReceivedMail.model_validate(local).original_path.path.name == "message.eml"
