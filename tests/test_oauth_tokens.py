"""OAuth2 client-credentials tokens against a local HTTPS identity provider (no Dovecot).

The Entra-shaped endpoint goes through msal (OIDC discovery, msal's cache); the generic one
through our RFC 6749 request. Failures carry the provider's words and never the secret.
"""

from __future__ import annotations

import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import quote, quote_plus

import pytest
import trustme
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3 import tokens
from prefect_pop3mail.tasks.pop3.errors import (
    ConfigurationError,
    OAuth2EndpointUnreachableError,
    OAuth2Error,
    OAuth2InvalidClientError,
    OAuth2InvalidScopeError,
    OAuth2ResponseError,
    OAuth2TLSError,
)
from prefect_pop3mail.tasks.pop3.protocol.diagnostics import token_scopes
from prefect_pop3mail.tasks.pop3.protocol.oauth import endpoints, providers
from tests.servers.dovecot import free_port
from tests.servers.idp import (
    ENTRA_RESOURCE,
    GENERIC_AUDIENCE,
    IdentityProvider,
    RecordingServer,
    start_identity_provider,
)

ENDPOINTS = ["entra", "generic"]


@pytest.fixture(scope="module")
def idp(ca: trustme.CA):
    provider = start_identity_provider(ca)
    yield provider
    provider.stop()


@pytest.fixture(autouse=True)
def fresh_providers():
    providers.forget_providers()
    yield
    providers.forget_providers()


@pytest.fixture
def secret_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    # The capture handler takes the level of the last call: DEBUG comes last.
    caplog.set_level(logging.INFO, logger="prefect")
    caplog.set_level(logging.DEBUG, logger="pop3mail")
    caplog.set_level(logging.DEBUG, logger="msal")
    return caplog


def endpoint_of(idp: IdentityProvider, kind: str) -> str:
    return idp.entra_token_endpoint if kind == "entra" else idp.generic_token_endpoint


def provider_for(idp: IdentityProvider, kind: str, client, **overrides) -> providers.TokenProvider:
    values = dict(
        token_endpoint=endpoint_of(idp, kind),
        client_id=client.client_id,
        client_secret=SecretStr(client.secret),
        scope="" if kind == "entra" else "pop3",
        ca_file=str(idp.ca_file),
        timeout=5,
    )
    values.update(overrides)
    return providers.client_credentials(**values)


def token_requests(idp: IdentityProvider, kind: str) -> int:
    return idp.requests[endpoint_of(idp, kind).split(str(idp.port), 1)[1]]


# --- getting and caching tokens --------------------------------------------------------


def test_entra_endpoint_goes_through_msal_with_the_exchange_default_scope(idp):
    client = idp.register("orders@example.org")
    provider = provider_for(idp, "entra", client)

    token = provider.fetch()

    assert isinstance(provider, providers.EntraClientCredentials)
    assert provider.authority == f"{idp.base}/{idp.tenant}"
    assert idp.last_token_request["form"]["scope"] == endpoints.ENTRA_DEFAULT_SCOPE
    claims = token.claims()
    assert claims["aud"] == ENTRA_RESOURCE and claims["appid"] == client.client_id
    assert token_scopes(claims) == ["POP.AccessAsApp"]
    lifetime = (token.expires - datetime.now(UTC)).total_seconds()
    assert 3500 < lifetime <= 3600


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_one_token_serves_every_task_of_the_process_until_near_expiry(idp, kind):
    client = idp.register("shared@example.org")
    before = token_requests(idp, kind)

    first = provider_for(idp, kind, client).fetch()
    # Other tasks build their own provider from the same configuration, some in threads.
    with ThreadPoolExecutor(8) as pool:
        later = list(pool.map(lambda _: provider_for(idp, kind, client).fetch(), range(16)))

    assert token_requests(idp, kind) - before == 1
    assert not first.from_cache and all(t.from_cache for t in later)
    assert {t.value.get_secret_value() for t in later} == {first.value.get_secret_value()}


def test_a_corrected_secret_gets_its_own_provider(idp):
    client = idp.register("rotated@example.org")
    wrong = provider_for(idp, "generic", client, client_secret=SecretStr("old-secret"))
    right = provider_for(idp, "generic", client)
    assert wrong is not right
    with pytest.raises(OAuth2InvalidClientError):
        wrong()
    assert right().get_secret_value()


def test_generic_token_is_renewed_shortly_before_it_expires(idp, monkeypatch):
    client = idp.register("clock@example.org")
    provider = provider_for(idp, "generic", client)
    start = providers._now()
    first = provider.fetch()
    before = token_requests(idp, "generic")

    monkeypatch.setattr(providers, "_now", lambda: start + 3600 - 301)
    assert provider.fetch().from_cache
    assert token_requests(idp, "generic") == before

    monkeypatch.setattr(providers, "_now", lambda: start + 3600 - 299)
    renewed = provider.fetch()
    assert not renewed.from_cache
    assert token_requests(idp, "generic") == before + 1
    assert renewed.value.get_secret_value() != first.value.get_secret_value()


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_a_forgotten_token_is_fetched_anew(idp, kind):
    provider = provider_for(idp, kind, idp.register("forget@example.org"))
    first = provider.fetch()
    assert provider.fetch().from_cache
    provider.forget_token()
    renewed = provider.fetch()
    assert not renewed.from_cache
    assert renewed.value.get_secret_value() != first.value.get_secret_value()


def test_short_lived_tokens_keep_a_tenth_of_their_life_as_margin():
    assert tokens.refresh_margin(3600) == 300
    assert tokens.refresh_margin(60) == 6
    token = tokens.AccessToken(SecretStr("t"), expires_at=1000.0, obtained_at=940.0)
    assert token.fresh_at(993.0)  # 7 s left of a 60 s token: margin 6 s
    assert not token.fresh_at(995.0)
    assert not tokens.AccessToken(SecretStr("t")).fresh_at(0)  # no expiry: never cached


def test_generic_endpoint_uses_client_secret_basic_first(idp):
    client = idp.register("basic@example.org")
    token = provider_for(idp, "generic", client).fetch()

    request = idp.last_token_request
    assert str(request["authorization"]).startswith("Basic ")
    assert "client_secret" not in request["form"]
    assert token.granted_scope == "pop3"
    assert token.claims()["aud"] == GENERIC_AUDIENCE


def test_generic_endpoint_falls_back_to_client_secret_post_and_remembers_it(idp, monkeypatch):
    client = idp.register("post@example.org", auth_method="post")
    provider = provider_for(idp, "generic", client)
    before = token_requests(idp, "generic")

    assert provider().get_secret_value()
    assert token_requests(idp, "generic") == before + 2  # basic refused, then post
    assert idp.last_token_request["form"]["client_secret"] == client.secret

    monkeypatch.setattr(providers, "_now", lambda: time.time() + 7200)  # cache expired
    assert provider().get_secret_value()
    assert token_requests(idp, "generic") == before + 3  # straight to post


def test_client_auth_can_be_forced_to_post(idp):
    client = idp.register("forced@example.org")
    provider_for(idp, "generic", client, client_auth="post")()
    assert idp.last_token_request["authorization"] is None
    assert idp.last_token_request["form"]["client_id"] == client.client_id


def test_secrets_with_reserved_characters_are_form_encoded_for_basic(idp):
    client = idp.register("chars@example.org")
    client.secret = "a:b+c/d=e%f g~"
    assert provider_for(idp, "generic", client)().get_secret_value()


# --- errors that say what to fix ------------------------------------------------------


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_wrong_secret(idp, kind, secret_logs):
    client = idp.register("wrong-secret@example.org")
    wrong = "Zz9~definitely-not-the-secret"
    with pytest.raises(OAuth2InvalidClientError) as caught:
        provider_for(idp, kind, client, client_secret=SecretStr(wrong))()
    error = caught.value
    assert error.error == "invalid_client"
    assert "AADSTS7000215: Invalid client secret provided" in str(error)
    assert "client_secret" in str(error) and client.client_id in str(error)
    assert not error.retryable
    assert wrong not in str(error) and wrong not in secret_logs.text


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_unknown_client(idp, kind):
    with pytest.raises(OAuth2InvalidClientError) as caught:
        provider_for(idp, kind, idp.register("x@example.org"), client_id="no-such-app")()
    assert "AADSTS700016" in str(caught.value) and "no-such-app" in str(caught.value)


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_wrong_scope(idp, kind):
    client = idp.register("scope@example.org")
    scope = "https://graph.microsoft.com/.default" if kind == "entra" else "admin"
    with pytest.raises(OAuth2InvalidScopeError) as caught:
        provider_for(idp, kind, client, scope=scope)()
    error = caught.value
    assert error.error == "invalid_scope" and scope in str(error)
    assert endpoints.ENTRA_DEFAULT_SCOPE in str(error)  # what to use instead
    assert ("AADSTS1002012" if kind == "entra" else "unknown scope: admin") in str(error)


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_provider_down(idp, kind):
    client = idp.register("down@example.org")
    endpoint = endpoint_of(idp, kind).replace(str(idp.port), str(free_port()))
    with pytest.raises(OAuth2EndpointUnreachableError) as caught:
        provider_for(idp, kind, client, token_endpoint=endpoint)()
    assert "cannot reach" in str(caught.value) and "Connection refused" in str(caught.value)
    assert caught.value.retryable


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_a_reply_that_is_not_json(idp, kind, monkeypatch):
    client = idp.register("html@example.org")
    provider = provider_for(idp, kind, client)
    if kind == "entra":
        provider._application()  # discovery still works; only the token reply is HTML
    monkeypatch.setattr(idp, "reply_html", True)
    with pytest.raises(OAuth2ResponseError) as caught:
        provider()
    text = str(caught.value)
    assert "did not answer with JSON (HTTP 200, text/html)" in text
    assert "Sign in to continue" in text  # what the endpoint sent instead


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_untrusted_certificate(idp, kind):
    client = idp.register("tls@example.org")
    with pytest.raises(OAuth2TLSError) as caught:
        provider_for(idp, kind, client, ca_file=None)()
    assert "not trusted" in str(caught.value) and "tls_ca_file" in str(caught.value)
    assert not caught.value.retryable


def test_unknown_tenant_is_named(idp):
    client = idp.register("tenant@example.org")
    endpoint = f"{idp.base}/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token"
    with pytest.raises(OAuth2ResponseError) as caught:
        provider_for(idp, "entra", client, token_endpoint=endpoint)()
    assert "check the tenant" in str(caught.value) and "AADSTS90002" in str(caught.value)


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_a_secret_echoed_by_the_provider_is_masked(idp, kind, monkeypatch, secret_logs):
    client = idp.register("echo@example.org")
    wrong = "Yy7~echoed-back-by-the-provider"
    monkeypatch.setattr(idp, "echo_secrets", True)
    with pytest.raises(OAuth2InvalidClientError) as caught:
        provider_for(idp, kind, client, client_secret=SecretStr(wrong))()
    assert "Received: ****" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in (caught.value.description or "")
    # msal logs its cache events at DEBUG; the secret must not be there either.
    assert wrong not in secret_logs.text


@pytest.mark.parametrize(
    ("endpoint", "field", "words"),
    [
        ("http://idp.example/oauth/token", "token_endpoint", "https://"),
        ("https://login.microsoftonline.com/contoso.com/oauth2/token", "token_endpoint", "v2.0"),
        ("https://login.microsoftonline.com/common/oauth2/v2.0/token", "token_endpoint",
         "your own tenant"),
    ],
)
def test_configuration_mistakes_name_the_field(endpoint, field, words):
    with pytest.raises(ConfigurationError) as caught:
        providers.client_credentials(
            token_endpoint=endpoint, client_id="app", client_secret=SecretStr("s")
        )
    assert caught.value.field == field and words in str(caught.value)


def test_missing_client_id_and_secret_are_named():
    endpoint = "https://idp.example/oauth/token"
    with pytest.raises(ConfigurationError, match="client_id"):
        providers.client_credentials(token_endpoint=endpoint, client_id=" ",
                                 client_secret=SecretStr("s"))
    with pytest.raises(ConfigurationError, match="client_secret"):
        providers.client_credentials(token_endpoint=endpoint, client_id="app",
                                 client_secret=SecretStr(""))


# --- secrets stay secret ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_secret_and_token_never_reach_logs_or_reprs(idp, kind, secret_logs):
    client = idp.register("quiet@example.org")
    provider = provider_for(idp, kind, client)
    token = provider.fetch()
    provider.fetch()  # a cache hit logs too
    access = token.value.get_secret_value()

    assert secret_logs.records, "expected DEBUG records from pop3mail/msal"
    for text in (secret_logs.text, repr(provider), repr(token), str(token)):
        assert client.secret not in text
        assert access not in text
    # And the logs do say what happened, without the secrets.
    assert "new token for client" in secret_logs.text


def test_jwt_claims_of_an_opaque_token_are_none():
    assert tokens.jwt_claims(SecretStr("opaque-token")) is None
    assert tokens.jwt_claims(SecretStr("a.!!!.c")) is None



# --- where the secret goes: the configured origin, once; never through a redirect ------


@pytest.fixture(params=["http", "https"])
def elsewhere(request, ca: trustme.CA):
    """A second server, trusted for HTTPS, that records whatever reaches it."""
    server = RecordingServer(ca if request.param == "https" else None)
    yield server
    server.stop()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("kind", ENDPOINTS)
def test_a_redirect_is_an_error_and_the_secret_stays_home(
    idp, kind, status, elsewhere, monkeypatch, secret_logs
):
    client = idp.register("redirect@example.org")
    provider = provider_for(idp, kind, client)
    if kind == "entra":
        provider._application()  # discovery first; only the token endpoint redirects
    monkeypatch.setattr(idp, "redirect_to", elsewhere.url)
    monkeypatch.setattr(idp, "redirect_status", status)
    before = token_requests(idp, kind)

    with pytest.raises(OAuth2ResponseError) as caught:
        provider()

    text = str(caught.value)
    assert f"HTTP {status}" in text and "token_endpoint" in text
    assert f"{elsewhere.scheme}://localhost:{elsewhere.port}" in text  # where it pointed
    assert not caught.value.retryable
    assert token_requests(idp, kind) - before == 1  # sent once, to the configured endpoint
    assert elsewhere.requests == []
    assert client.secret not in secret_logs.text


def test_discovery_cannot_send_the_token_request_to_another_origin(idp, elsewhere, monkeypatch):
    client = idp.register("forged-discovery@example.org")
    monkeypatch.setattr(idp, "discovery_token_endpoint", elsewhere.url)
    with pytest.raises(OAuth2ResponseError) as caught:
        provider_for(idp, "entra", client)()
    # msal itself refuses a plain-HTTP endpoint in the document; we refuse another origin.
    words = "refusing" if elsewhere.scheme == "https" else "OpenID discovery"
    assert "token_endpoint" in str(caught.value) and words in str(caught.value)
    assert elsewhere.requests == []


# --- every form of the secret stays masked ----------------------------------------------


def forms_of(client_id: str, secret: str) -> set[str]:
    """The secret as sent: raw, form- and URL-encoded, and in client_secret_basic."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {secret, quote_plus(secret), quote(secret, safe=""),
            base64.b64encode(pair).decode().rstrip("="),
            base64.b64encode(f"{client_id}:{secret}".encode()).decode().rstrip("=")}


@pytest.mark.parametrize("echo", ["json", "html"])
@pytest.mark.parametrize(("kind", "client_auth"),
                         [("generic", "basic"), ("generic", "post"), ("entra", "auto")])
def test_an_echoed_request_shows_no_form_of_the_secret(
    idp, kind, client_auth, echo, monkeypatch, secret_logs
):
    client = idp.register("echo-all@example.org")
    client.secret = "Qx8~a+b/c=d e%f&g:h\"i"  # every character that encodes differently
    provider = provider_for(idp, kind, client, client_auth=client_auth)
    if kind == "entra":
        provider._application()
    monkeypatch.setattr(idp, "echo_request", echo)

    with pytest.raises(OAuth2ResponseError if echo == "html" else OAuth2Error) as caught:
        provider()

    error = caught.value
    shown = [str(error), repr(error), error.description or "", error.error or "",
             secret_logs.text]
    assert "body=" in str(error) and "****" in str(error)  # the request was echoed, masked
    leaked = {form for form in forms_of(client.client_id, client.secret)
              for text in shown if form in text}
    assert leaked == set()


# --- tls_ca_file is trusted in addition to the system's CAs --------------------------------


def test_the_token_endpoint_trusts_the_system_cas_and_tls_ca_file(tmp_path, monkeypatch, ca):
    public = start_identity_provider(trustme.CA())  # a "public" CA: in the system store
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(public.ca_file))
        monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
        private_ca = tmp_path / "private-ca.pem"
        ca.cert_pem.write_to_path(str(private_ca))  # unrelated to the provider
        client = public.register("system-ca@example.org")
        assert provider_for(public, "generic", client, ca_file=str(private_ca))()
        assert provider_for(public, "entra", client, ca_file=str(private_ca))()
    finally:
        public.stop()
