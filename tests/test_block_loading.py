"""Loading and pickling the block against the Prefect API of the test harness.

A document saved from the UI or the API skips our validators: loading it must fail with the
fields and their titles, not Prefect's "try loading again with validate=False". A pickled
block (a Dask task runner pickles task parameters) carries no secret in any form.
"""

from __future__ import annotations

import base64
import pickle
import uuid
from urllib.parse import quote, quote_plus

import cloudpickle
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentCreate
from pydantic import SecretStr

from prefect_pop3mail.blocks import POP3MailConfiguration, POP3MailServiceSettings
from prefect_pop3mail.flows import receive_all_mail
from prefect_pop3mail.tasks.activities import resolve_configuration
from prefect_pop3mail.tasks.pop3.errors import ConfigurationError

pytestmark = pytest.mark.prefect

MARK = uuid.uuid4().hex[:10]
PASSWORD = f"pw/{MARK}+Pass word=1"
CLIENT_SECRET = f"cs~{MARK}:Secret&2"
KEY_PASSWORD = f"pk%{MARK}/Key 3"


def save_unchecked(data: dict) -> str:
    """Save a document through the API as the UI does: no validator of ours runs."""
    POP3MailConfiguration.register_type_and_schema()
    name = f"unchecked-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug(POP3MailConfiguration.get_block_type_slug())
        schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
        client.create_block_document(BlockDocumentCreate(
            name=name, data=data, block_type_id=block_type.id, block_schema_id=schema.id,
        ))
    return name


BASE = {"server": "127.0.0.1", "user": "u", "password": "pw", "save_directory": "/tmp/x"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"authentication": "OAUTH2", "password": ""},
         ["client_id (Client ID): required when Authentication is OAUTH2",
          "client_secret (Client Secret): required when Authentication is OAUTH2",
          "token_endpoint (Authentication Token Endpoint): required when Authentication is "
          "OAUTH2"]),
        ({"save_directory": "", "save_mail_text": True},
         ["save_directory (Save directory): required when mail text"]),
        ({"authentication": "OAUTH2", "client_id": "c", "client_secret": "s",
          "token_endpoint": "http://idp.example/token"},
         ["token_endpoint (Authentication Token Endpoint): must be an https:// URL"]),
        ({"public_key_name": "../../etc/shadow"}, ["public_key_name (Public key name): "]),
        ({"port": 70000}, ["port (POP3 port): Input should be less than or equal to 65535"]),
        ({"security": "Sometimes"}, ["security (Use secure connection (SSL)): Input should"]),
    ],
)
def test_a_saved_document_that_cannot_work_names_each_field_and_title(data, expected):
    name = save_unchecked({**BASE, **data})
    with pytest.raises(ConfigurationError) as caught:
        POP3MailConfiguration.load_checked(name)
    text = str(caught.value)
    for words in expected:
        assert words in text
    assert name in text and "validate=False" not in text
    assert caught.value.field == expected[0].split(" ", 1)[0]
    assert not caught.value.retryable


def test_irrelevant_settings_saved_from_the_form_still_load():
    # Security switched to None while a CA file is set; a key password without a key name.
    name = save_unchecked({**BASE, "security": "None", "tls_ca_file": "/etc/ca.pem",
                           "public_key_password": "x", "commit_every": 5})
    assert POP3MailConfiguration.load_checked(name).tls_ca_file == "/etc/ca.pem"


def test_an_unknown_name_is_still_reported_as_not_saved():
    with pytest.raises(ConfigurationError, match="no POP3 Mail Configuration named"):
        resolve_configuration(f"never-saved-{MARK}")


def test_the_flow_fails_with_the_fields_and_runs_no_task():
    name = save_unchecked({**BASE, "authentication": "OAUTH2", "password": ""})
    state = receive_all_mail(name, return_state=True)
    assert state.is_failed()
    message = str(state.message)
    assert "client_id (Client ID): required when Authentication is OAUTH2" in message
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        assert run.run_count == 1
        tasks = client.read_task_runs()
    assert not [t for t in tasks if t.flow_run_id == run.id]


# --- pickling -----------------------------------------------------------------------------


def forms(secret: str) -> list[bytes]:
    return [f.encode() for f in (
        secret, quote_plus(secret), quote(secret, safe=""),
        base64.b64encode(secret.encode()).decode().rstrip("="),
        base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
    )]


def saved_block(**fields) -> POP3MailConfiguration:
    values = dict(BASE, password=PASSWORD, client_secret=CLIENT_SECRET,
                  public_key_name="finance", public_key_password=KEY_PASSWORD)
    values.update(fields)
    block = POP3MailConfiguration(**values)
    block.save(f"pickled-{uuid.uuid4().hex[:8]}")
    return POP3MailConfiguration.load_checked(block._block_document_name)


@pytest.mark.parametrize("dumps", [
    *(lambda b, p=p: pickle.dumps(b, protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)),
    cloudpickle.dumps,
], ids=[*(f"pickle-{p}" for p in range(pickle.HIGHEST_PROTOCOL + 1)), "cloudpickle"])
def test_a_pickled_saved_block_holds_no_secret_and_comes_back_equal(dumps, tmp_path):
    block = saved_block()
    data = dumps(block)
    for secret in (PASSWORD, CLIENT_SECRET, KEY_PASSWORD):
        for form in forms(secret):
            assert form not in data, f"{form!r} is in the pickle"
    assert block._block_document_name.encode() in data  # what it carries instead

    back = pickle.loads(data)
    assert back == block
    assert back.configuration_name == block.configuration_name
    assert back.connection_settings().password.get_secret_value() == PASSWORD
    options = back.save_options(POP3MailServiceSettings(key_store_dir=tmp_path))
    assert options.key_password.get_secret_value() == KEY_PASSWORD


def test_local_changes_that_are_not_secret_travel_in_the_pickle():
    block = saved_block().model_copy(update={"save_directory": "/srv/elsewhere"})
    back = pickle.loads(pickle.dumps(block))
    assert back.save_directory == "/srv/elsewhere"
    assert back.password.get_secret_value() == PASSWORD


def test_a_secret_that_is_not_saved_is_never_pickled():
    unsaved = POP3MailConfiguration(**{**BASE, "password": PASSWORD})
    with pytest.raises(pickle.PicklingError, match=r"\(password\) that are not saved"):
        pickle.dumps(unsaved)
    changed = saved_block().model_copy(
        update={"client_secret": SecretStr("cs-typed-in-the-flow")})
    with pytest.raises(pickle.PicklingError, match="differ from the saved configuration"):
        pickle.dumps(changed)


def test_an_unsaved_block_without_secrets_pickles_as_it_is():
    block = POP3MailConfiguration(**{**BASE, "password": ""})
    assert pickle.loads(pickle.dumps(block)) == block


def test_copies_in_the_same_process_keep_their_secrets():
    # Threads share the block (and Prefect copies, never pickles, it there).
    import copy

    unsaved = POP3MailConfiguration(**{**BASE, "password": PASSWORD})
    for copied in (copy.copy(unsaved), copy.deepcopy(unsaved), unsaved.model_copy()):
        assert copied.password.get_secret_value() == PASSWORD


def test_a_dask_cluster_of_processes_gets_a_usable_block_without_its_secrets_in_transit(
    monkeypatch,
):
    """The real thing: a Dask task runner with worker processes pickles the block."""
    pytest.importorskip("prefect_dask")
    from prefect import flow, task
    from prefect.settings import PREFECT_API_URL
    from prefect_dask import DaskTaskRunner

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # for the workers
    block = saved_block()

    @task
    def secrets_arrived(config: POP3MailConfiguration) -> list[bool]:
        return [config.password.get_secret_value() == PASSWORD,
                config.client_secret.get_secret_value() == CLIENT_SECRET,
                config.configuration_name == block.configuration_name]

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={
        "n_workers": 1, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
    }))
    def on_dask(config: POP3MailConfiguration) -> list[bool]:
        return secrets_arrived.submit(config).result()

    assert on_dask(block) == [True, True, True]
