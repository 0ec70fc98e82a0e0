"""OAuth2 end to end: tokens from the local identity provider, Dovecot's oauth2 passdb
validating them by introspection, SASL XOAUTH2 and OAUTHBEARER in both forms, the connection
check's report and hints, and the Prefect flows with an OAUTH2 configuration.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import trustme
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import OAuth2InvalidClientError, POP3AuthError
from prefect_pop3mail.tasks.pop3.models import ConnectionSettings, LoginMethod, Security
from prefect_pop3mail.tasks.pop3.protocol.diagnostics import check_mailbox, token_scopes
from prefect_pop3mail.tasks.pop3.protocol.oauth import providers
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from tests import test_oauth_tokens as token_tests
from tests.conftest import Mailbox, require_dovecot, sample_message
from tests.servers.dovecot import Dovecot, start_dovecot
from tests.servers.idp import ENTRA_RESOURCE, GENERIC_AUDIENCE, IdentityProvider

pytestmark = pytest.mark.dovecot

# Shared with the token tests: the identity provider, a clean provider registry per test,
# and log capture at DEBUG.
idp = token_tests.idp
fresh_providers = token_tests.fresh_providers
secret_logs = token_tests.secret_logs

ENDPOINTS = ["entra", "generic"]


@pytest.fixture(scope="module")
def oauth_dovecot(ca: trustme.CA, idp: IdentityProvider):
    """A Dovecot whose XOAUTH2/OAUTHBEARER logins are checked against ``idp``."""
    require_dovecot()
    server = start_dovecot(
        ca=ca,
        auth_mechanisms="plain login xoauth2 oauthbearer",
        passwd_mechanisms="plain login",
        extra_passdb=idp.dovecot_passdb(),
    )
    yield server
    server.stop()


class OAuthMailbox:
    """A Dovecot mailbox plus an identity-provider client allowed into it."""

    def __init__(self, server: Dovecot, idp: IdentityProvider, **client_options):
        self.box = Mailbox(server)
        self.idp = idp
        self.client = idp.register(self.box.user, **client_options)

    def endpoint(self, kind: str) -> str:
        return self.idp.entra_token_endpoint if kind == "entra" else self.idp.generic_token_endpoint

    def provider(self, kind: str, **overrides) -> providers.TokenProvider:
        values = dict(
            token_endpoint=self.endpoint(kind),
            client_id=self.client.client_id,
            client_secret=SecretStr(self.client.secret),
            scope="" if kind == "entra" else "pop3",
            ca_file=str(self.idp.ca_file),
            timeout=10,
        )
        values.update(overrides)
        return providers.client_credentials(**values)

    def settings(self, kind: str = "entra", provider=None, **overrides) -> ConnectionSettings:
        return self.box.settings(
            Security.IMPLICIT,
            password=None,
            token_provider=provider or self.provider(kind),
            **overrides,
        )


@pytest.fixture
def account(oauth_dovecot: Dovecot, idp: IdentityProvider) -> OAuthMailbox:
    return OAuthMailbox(oauth_dovecot, idp)


# --- login ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ENDPOINTS)
@pytest.mark.parametrize("method", [LoginMethod.XOAUTH2, LoginMethod.OAUTHBEARER])
@pytest.mark.parametrize("initial_response", [False, True], ids=["two-step", "initial-response"])
def test_login_and_retrieve(account, kind, method, initial_response):
    account.box.deliver(sample_message(1), sample_message(2, body="Second.\n"))
    settings = account.settings(kind, login_method=method, sasl_initial_response=initial_response)
    with POP3Session(settings) as session:
        session.login()
        assert session.stat()[0] == 2
        assert b"Second." in session.top(2, 5)
    assert account.idp.tokens, "the token came from the identity provider"


def test_auto_login_with_a_token_provider_uses_xoauth2_two_step(account, secret_logs):
    settings = account.settings("entra")
    assert settings.login_method is LoginMethod.AUTO and not settings.sasl_initial_response
    with POP3Session(settings) as session:
        session.login()
    assert "C: AUTH XOAUTH2" in secret_logs.text  # the two-step form: no response on it
    log = (account.box.server.log_file).read_text()
    assert f"user=<{account.box.user}>, method=XOAUTH2" in log


@pytest.mark.parametrize("method", [LoginMethod.XOAUTH2, LoginMethod.OAUTHBEARER])
@pytest.mark.parametrize("initial_response", [False, True], ids=["two-step", "initial-response"])
def test_expired_token_is_refused_with_the_servers_reason(
    account, method, initial_response, failing_login_source, monkeypatch
):
    provider = account.provider("entra")
    provider()  # obtained now, then an hour and more passes on the provider's clock
    monkeypatch.setattr(account.idp, "clock_offset", 2 * 3600)
    settings = account.settings(
        provider=provider, login_method=method, sasl_initial_response=initial_response,
        source_address=failing_login_source,
    )
    session = POP3Session(settings)
    session.connect()
    try:
        with pytest.raises(POP3AuthError) as caught:
            session.login()
    finally:
        session.close()
    text = str(caught.value)
    assert text.startswith("AUTH failed: -ERR [AUTH]")
    # Dovecot's error challenge (RFC 7628) is answered and reported, not taken for +OK.
    assert "server said:" in text and '"status"' in text
    assert session._sasl_failure_detail and "openid-configuration" in session._sasl_failure_detail
    # The refused token is dropped from the cache: the next login gets a new one.
    assert not provider.fetch().from_cache


def test_wrong_secret_fails_before_the_server_sees_a_token(account, failing_login_source):
    provider = account.provider("generic", client_secret=SecretStr("not-it"))
    settings = account.settings(provider=provider, source_address=failing_login_source)
    with pytest.raises(OAuth2InvalidClientError) as caught:
        with POP3Session(settings) as session:
            session.login()
    assert "invalid_client" in str(caught.value) and "not-it" not in str(caught.value)


# --- the connection check ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_check_reports_the_token_and_the_login(account, kind, secret_logs):
    account.box.deliver(sample_message(1))
    provider = account.provider(kind)
    report = check_mailbox("orders", account.settings(provider=provider))

    assert report.login_ok and report.login_error is None
    assert report.messages_waiting == 1
    assert {"XOAUTH2", "OAUTHBEARER"} <= set(report.sasl_mechanisms)
    remaining = (report.token_expires - datetime.now(UTC)).total_seconds()
    assert 3500 < remaining <= 3600
    if kind == "entra":
        assert report.token_scopes == ["POP.AccessAsApp"]
        assert report.token_audience == ENTRA_RESOURCE
    else:
        assert report.token_scopes == ["pop3"]
        assert report.token_audience == GENERIC_AUDIENCE
    assert report.hints == []
    assert_no_secrets(report.model_dump_json(), secret_logs.text,
                      account.client.secret, provider)


def test_check_hints_at_the_usual_microsoft_365_mistakes(
    oauth_dovecot, idp, failing_login_source, secret_logs
):
    # The app may read another mailbox only (no mailbox permission here) and has no
    # POP.AccessAsApp role: the token is valid, and the server refuses it.
    box = Mailbox(oauth_dovecot)
    client = idp.register("someone-else@example.org", roles=[])
    provider = providers.client_credentials(
        token_endpoint=idp.entra_token_endpoint, client_id=client.client_id,
        client_secret=SecretStr(client.secret), ca_file=str(idp.ca_file), timeout=10,
    )
    settings = box.settings(
        Security.IMPLICIT, password=None, token_provider=provider,
        source_address=failing_login_source,
    )
    refused = provider().get_secret_value()
    report = check_mailbox("orders", settings)

    assert not report.login_ok
    assert report.login_error.startswith("AUTH failed: -ERR [AUTH]")
    assert report.token_audience == ENTRA_RESOURCE and report.token_scopes == []
    hints = "\n".join(report.hints)
    assert "POP.AccessAsApp" in hints
    assert f"New-ServicePrincipal -AppId {client.client_id}" in hints
    assert f"Add-MailboxPermission -Identity {box.user}" in hints
    assert "Set-CASMailbox" in hints
    for text in (report.model_dump_json(), secret_logs.text):
        assert client.secret not in text and refused not in text
    # Once the role is granted, the next check must not reuse the refused token.
    client.roles = ["POP.AccessAsApp"]
    renewed = provider.fetch()
    assert not renewed.from_cache and token_scopes(renewed.claims()) == ["POP.AccessAsApp"]


def test_check_reports_a_refused_token_request_with_what_to_fix(account, secret_logs):
    wrong = "Ww1~a-mistyped-secret"
    provider = account.provider("entra", client_secret=SecretStr(wrong))
    report = check_mailbox("orders", account.settings(provider=provider))

    assert not report.login_ok
    assert report.login_error.startswith("no access token:")
    assert "AADSTS7000215" in report.login_error
    assert any("secret's Value" in hint for hint in report.hints)
    assert "XOAUTH2" in report.sasl_mechanisms  # the server part is still checked
    assert report.token_expires is None
    assert wrong not in report.model_dump_json() and wrong not in secret_logs.text


def test_check_says_when_the_server_lacks_the_mechanism(dovecot, idp):
    box = Mailbox(dovecot)  # the shared Dovecot offers PLAIN and LOGIN only
    client = idp.register(box.user)
    provider = providers.client_credentials(
        token_endpoint=idp.entra_token_endpoint, client_id=client.client_id,
        client_secret=SecretStr(client.secret), ca_file=str(idp.ca_file), timeout=10,
    )
    settings = box.settings(Security.IMPLICIT, password=None, token_provider=provider)
    report = check_mailbox("orders", settings)

    assert not report.login_ok
    assert any("does not offer SASL XOAUTH2" in hint for hint in report.hints)


# --- through Prefect ----------------------------------------------------------------------


@pytest.mark.prefect
@pytest.mark.parametrize("kind", ENDPOINTS)
def test_receive_all_mail_flow_with_an_oauth2_configuration(account, kind, tmp_path,
                                                           secret_logs):
    from prefect_pop3mail.flows import receive_all_mail

    account.box.deliver(sample_message(1), sample_message(2))
    config = oauth_block(account, kind, tmp_path)
    received = receive_all_mail(config)

    assert sorted(mail.subject for mail in received) == ["Message 1", "Message 2"]
    assert all(mail.original_path.path.exists() for mail in received)
    assert account.box.count() == 0  # removed after read, over the OAuth2 session
    assert_no_secrets(
        "".join(m.model_dump_json() for m in received), secret_logs.text,
        account.client.secret, oauth_provider_for(config),
    )


@pytest.mark.prefect
def test_check_pop3_connection_flow_reports_the_token(account, tmp_path, secret_logs):
    from prefect_pop3mail.flows import check_pop3_connection

    config = oauth_block(account, "entra", tmp_path)
    report = check_pop3_connection(config)

    assert report.login_ok
    assert report.token_expires and report.token_expires > datetime.now(UTC)
    assert report.token_scopes == ["POP.AccessAsApp"]
    assert report.token_audience == ENTRA_RESOURCE
    assert "XOAUTH2" in report.sasl_mechanisms
    assert_no_secrets(report.model_dump_json(), secret_logs.text, account.client.secret,
                      oauth_provider_for(config))


def oauth_block(account: OAuthMailbox, kind: str, save_directory):
    return account.box.block(
        save_directory,
        password="",
        authentication="OAUTH2",
        client_id=account.client.client_id,
        client_secret=account.client.secret,
        token_endpoint=account.endpoint(kind),
        scope="" if kind == "entra" else "pop3",
        # One CA signed both the POP3 server's and the identity provider's certificates.
        tls_ca_file=str(account.idp.ca_file),
        remove_from_server_after_read=True,
    )


def oauth_provider_for(config) -> providers.TokenProvider:
    """The provider the tasks used: the process-wide one for this configuration."""
    provider = config.connection_settings().token_provider
    assert isinstance(provider, providers.TokenProvider)
    return provider


def assert_no_secrets(*texts_then_secret_and_provider) -> None:
    *texts, secret, provider = texts_then_secret_and_provider
    token = provider().get_secret_value()  # cached: the token the run used
    for text in texts:
        assert secret not in text
        assert token not in text


@pytest.mark.prefect
def test_a_wrong_secret_fails_the_flow_at_once_naming_the_field(account, tmp_path, secret_logs):
    from prefect.states import State

    from prefect_pop3mail.flows import receive_all_mail

    account.box.deliver(sample_message(1))
    wrong = "Vv3~not-the-registered-secret"
    config = oauth_block(account, "entra", tmp_path).model_copy(
        update={"client_secret": SecretStr(wrong)}
    )
    before = account.idp.requests.copy()
    state = receive_all_mail(config, return_state=True)

    assert isinstance(state, State) and state.is_failed()
    with pytest.raises(OAuth2InvalidClientError) as caught:
        state.result()
    assert "client_secret" in str(caught.value) and "AADSTS7000215" in str(caught.value)
    token_path = account.endpoint("entra").split(str(account.idp.port), 1)[1]
    assert account.idp.requests[token_path] - before[token_path] == 1  # never retried
    assert account.box.count() == 1  # nothing was touched
    assert wrong not in secret_logs.text and wrong not in str(state.message)
