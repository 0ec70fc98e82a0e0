"""The POP3 Mail Configuration block: standards, round-trip, validation, fallbacks."""

from __future__ import annotations

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr, ValidationError

from prefect_pop3mail.blocks import POP3MailConfiguration, POP3MailServiceSettings
from prefect_pop3mail.tasks.pop3.errors import ConfigurationError, InactiveConfigurationError
from prefect_pop3mail.tasks.pop3.models import (
    Authentication,
    LoginMethod,
    Security,
    Status,
)
from prefect_pop3mail.tasks.pop3.tokens import TokenSource

SEED_FIELDS = [
    "description", "status", "server", "user", "password", "port", "security",
    "public_key_name", "public_key_password", "save_mail_text", "save_mail_attachments",
    "save_directory", "remove_from_server_after_read", "authentication", "client_id",
    "client_secret", "token_endpoint", "scope",
]


class TestBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return POP3MailConfiguration

    def test_has_a_valid_image(self, block):
        assert block._logo_url is None  # a web address breaks offline: the UI's own icon
        pytest.skip("no logo on purpose: Prefect takes only a web address, broken offline")


def make(**fields) -> POP3MailConfiguration:
    values = {"server": "mail.example.org", "user": "u", "password": "pw",
              "save_directory": "/tmp/pop3mail-test"}
    values.update(fields)
    return POP3MailConfiguration(**values)


def test_fields_follow_the_seed_order_then_ours():
    names = list(POP3MailConfiguration.model_fields)
    assert names[: len(SEED_FIELDS)] == SEED_FIELDS
    for added in ("tls_verify", "tls_ca_file", "save_original", "new_messages_only", "timeout"):
        assert added in names[len(SEED_FIELDS):]


def test_every_field_has_a_title_and_a_sentence():
    for name, field in POP3MailConfiguration.model_fields.items():
        assert field.title, name
        assert field.description and field.description.endswith("."), name


def test_schema_renders_enums_as_dropdowns_and_secrets_as_passwords():
    schema = POP3MailConfiguration.model_json_schema()
    props = schema["properties"]
    assert props["status"]["enum"] == ["Active", "Inactive"]
    assert props["security"]["enum"] == ["None", "Explicit SSL/TLS", "Implicit SSL/TLS"]
    assert props["authentication"]["enum"] == ["Basic", "OAUTH2"]
    assert props["security"]["title"] == "Use secure connection (SSL)"  # not the enum's name
    for secret in ("password", "public_key_password", "client_secret"):
        assert schema["properties"][secret]["format"] == "password"
    assert set(schema["secret_fields"]) >= {"password", "public_key_password", "client_secret"}


def test_secure_defaults():
    c = make()
    assert c.security is Security.IMPLICIT
    assert c.tls_verify is True
    assert c.status is Status.ACTIVE
    assert c.connection_settings().port == 995


@pytest.mark.parametrize(("security", "port"), [("None", 110), ("Explicit SSL/TLS", 110),
                                                ("Implicit SSL/TLS", 995)])
def test_default_ports(security, port):
    assert make(security=security).connection_settings().port == port


def test_enums_accept_values_case_insensitively():
    c = make(status="inactive", security="explicit ssl/tls", authentication="basic")
    assert (c.status, c.security, c.authentication) == (
        Status.INACTIVE, Security.EXPLICIT, Authentication.BASIC)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"save_directory": ""}, "save_directory"),
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"authentication": "OAUTH2"}, "client_id"),
        ({"authentication": "OAUTH2", "client_id": "c", "client_secret": "s",
          "token_endpoint": "http://idp/token"}, "token_endpoint"),
        ({"login_method": "xoauth2"}, "login_method"),
        ({"authentication": "OAUTH2", "client_id": "c", "client_secret": "s",
          "token_endpoint": "https://idp/token", "login_method": "apop"}, "login_method"),
        ({"authentication": "OAUTH2", "client_id": "c", "client_secret": "s",
          "token_endpoint": "https://login.microsoftonline.com/common/oauth2/v2.0/token"},
         "token_endpoint"),
        ({"public_key_name": "../../etc/passwd"}, "public_key_name"),
        ({"security": "Sometimes"}, "security"),
    ],
)
def test_bad_configuration_names_the_field_and_its_title(fields, named):
    with pytest.raises(ValidationError) as info:
        make(**fields)
    title = POP3MailConfiguration.model_fields[named].title
    assert named in str(info.value)
    if not info.value.errors()[0]["loc"]:  # a combination: the text names field and title
        assert f"{named} ({title})" in str(info.value)


def test_every_missing_oauth_setting_is_named_at_once():
    with pytest.raises(ValidationError) as info:
        make(authentication="OAUTH2")
    for named, title in (("client_id", "Client ID"), ("client_secret", "Client Secret"),
                         ("token_endpoint", "Authentication Token Endpoint")):
        assert f"{named} ({title}): required when Authentication is OAUTH2" in str(info.value)


@pytest.mark.parametrize(
    "fields",
    [
        # Merely irrelevant: the form must accept edits in any order.
        {"security": "None", "tls_ca_file": "/ca.pem"},
        {"public_key_password": "x"},
        {"commit_every": 10},
        {"token_endpoint": "http://not-used-with-basic/token", "client_id": "c"},
    ],
)
def test_irrelevant_combinations_are_accepted(fields):
    assert make(**fields)


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", ".hidden", "a..b", "x" * 101, "a b"])
def test_public_key_name_is_a_safe_file_name(name, tmp_path):
    with pytest.raises(ValidationError, match=r"public_key_name \(Public key name\)"):
        make(public_key_name=name)
    service = POP3MailServiceSettings(key_store_dir=tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        service.key_store_for(name)
    assert caught.value.field == "public_key_name"


def test_public_key_names_that_are_file_names_are_kept(tmp_path):
    service = POP3MailServiceSettings(key_store_dir=tmp_path)
    for name in ("finance", "Finance_2024", "orders.key-1"):
        assert make(public_key_name=name).save_options(service).key_store == (
            tmp_path / f"{name}.p12")


def test_validation_errors_never_echo_secrets():
    with pytest.raises(ValidationError) as info:
        make(password="hunter2-secret", client_secret="cs-secret", authentication="OAUTH2")
    assert "hunter2-secret" not in str(info.value)
    assert "cs-secret" not in str(info.value)


def test_nothing_saved_needs_no_directory():
    c = make(save_directory="", save_mail_text=False, save_mail_attachments=False,
             save_original=False)
    with pytest.raises(ConfigurationError, match="save_directory"):
        c.save_options()


def test_inactive_is_refused_by_name():
    c = make(status="Inactive")
    c._block_document_name = "sales-inbox"
    with pytest.raises(InactiveConfigurationError, match="sales-inbox"):
        c.ensure_active()


@pytest.mark.prefect
def test_round_trip_masks_secrets():
    c = make(password="pw-round-trip", client_secret="cs-round-trip",
             public_key_name="me", public_key_password="pk-round-trip")
    c.save("round-trip-test", overwrite=True)
    loaded = POP3MailConfiguration.load("round-trip-test")
    assert loaded.password.get_secret_value() == "pw-round-trip"
    assert loaded.public_key_password.get_secret_value() == "pk-round-trip"
    assert loaded.configuration_name == "round-trip-test"
    shown = repr(loaded) + str(loaded.model_dump()) + loaded.model_dump_json()
    for secret in ("pw-round-trip", "cs-round-trip", "pk-round-trip"):
        assert secret not in shown


def test_service_settings_fill_empty_fields(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "POP3MAIL_SERVER=env.example.org\nPOP3MAIL_USER=envuser\nPOP3MAIL_PASSWORD=envpw\n"
        "UNRELATED_KEY=ignored\n"
    )
    c = make(server="", user="", password="")
    settings = c.connection_settings()
    assert (settings.host, settings.user) == ("env.example.org", "envuser")
    assert settings.password.get_secret_value() == "envpw"
    monkeypatch.setenv("POP3MAIL_SERVER", "override.example.org")
    assert c.connection_settings().host == "override.example.org"


def test_missing_everywhere_names_both_places(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in ("POP3MAIL_SERVER", "POP3MAIL_USER", "POP3MAIL_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigurationError) as info:
        make(server="").connection_settings()
    assert "server" in str(info.value) and "POP3MAIL_SERVER" in str(info.value)
    with pytest.raises(ConfigurationError, match="POP3MAIL_PASSWORD"):
        make(password="").connection_settings()


def test_key_store_comes_from_service_settings(tmp_path):
    service = POP3MailServiceSettings(key_store_dir=tmp_path)
    options = make(public_key_name="finance").save_options(service)
    assert options.key_store == tmp_path / "finance.p12"
    with pytest.raises(ConfigurationError, match="POP3MAIL_KEY_STORE_DIR"):
        make(public_key_name="finance").save_options(POP3MailServiceSettings(key_store_dir=None))


def test_oauth_connection_settings_are_complete_with_the_microsoft_default_scope():
    c = make(authentication="OAUTH2", client_id="id", client_secret=SecretStr("s"),
             password="", token_endpoint="https://login.microsoftonline.com/t/oauth2/v2.0/token")
    settings = c.connection_settings()  # nothing is requested until a token is needed
    provider = settings.token_provider
    assert isinstance(provider, TokenSource) and provider.is_microsoft
    assert provider.scope == "https://outlook.office365.com/.default"
    assert settings.password is None and c.login_method is LoginMethod.AUTO
    assert c.connection_settings().token_provider is provider  # one per configuration
    assert make().connection_settings().token_provider is None
