"""The POP3 Mail Configuration block: standards, round-trip, validation, fallbacks."""

from __future__ import annotations

import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import SecretStr, ValidationError

from prefect_pop3mail.blocks import POP3MailConfiguration, POP3MailServiceSettings
from prefect_pop3mail.tasks.pop3.errors import ConfigurationError, InactiveConfigurationError
from prefect_pop3mail.tasks.pop3.models import Authentication, LoginMethod, Security, Status

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
        pytest.skip("downloading the logo needs the internet")


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
        ({"public_key_password": "x"}, "public_key_password"),
        ({"security": "None", "tls_ca_file": "/ca.pem"}, "tls_ca_file"),
        ({"commit_every": 10}, "commit_every"),
        ({"security": "Sometimes"}, "security"),
    ],
)
def test_bad_configuration_names_the_field(fields, named):
    with pytest.raises(ValidationError) as info:
        make(**fields)
    assert named in str(info.value)


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


def test_oauth_configuration_defaults_the_microsoft_scope():
    c = make(authentication="OAUTH2", client_id="id", client_secret=SecretStr("s"),
             token_endpoint="https://login.microsoftonline.com/t/oauth2/v2.0/token")
    assert c.effective_scope() == "https://outlook.office365.com/.default"
    assert c.login_method is LoginMethod.AUTO
