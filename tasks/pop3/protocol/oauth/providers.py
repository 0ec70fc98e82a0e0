"""Token providers: client-credentials tokens for one configuration, cached until shortly
before they expire.

Microsoft Entra ID endpoints (``https://<host>/<tenant>/oauth2/v2.0/token``) go through msal's
ConfidentialClientApplication and its token cache; any other endpoint gets the plain RFC 6749
request, authenticating with client_secret_basic and falling back to client_secret_post.

Providers are shared per configuration within the process (see :func:`client_credentials`),
so every task that uses one configuration reuses one token until shortly before it expires.
Errors carry the provider's own error and description, never the secret (in any of the
forms it travels in) or a token. The requests themselves go through ``transport``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote, quote_plus

from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import (
    ConfigurationError,
    OAuth2EndpointUnreachableError,
    OAuth2Error,
    OAuth2InvalidClientError,
    OAuth2InvalidScopeError,
    OAuth2ResponseError,
)
from prefect_pop3mail.tasks.pop3.protocol.oauth.endpoints import (
    ENTRA_DEFAULT_SCOPE,
    ENTRA_ENDPOINT,
    default_scope,
    is_entra_endpoint,
    oauth_problems,
)
from prefect_pop3mail.tasks.pop3.protocol.oauth.transport import HttpClient, HttpResponse
from prefect_pop3mail.tasks.pop3.redaction import Redactor
from prefect_pop3mail.tasks.pop3.tokens import AccessToken, jwt_claims

log = logging.getLogger("pop3mail.oauth")

_CLIENT_ERRORS = {"invalid_client", "unauthorized_client"}
_REPLY_SNIPPET = 400

# Monkeypatched by tests to move the clock; everything here reads time through it.
_now = time.time


class TokenProvider:
    """Gets client-credentials tokens for one configuration. Call it for the token.

    Thread-safe: concurrent tasks wait for one request instead of each sending their own.
    """

    #: Microsoft Entra ID issues the tokens (the connection check's hints are Microsoft's).
    is_microsoft = False
    client_hint = "check client_id and client_secret"

    def __init__(
        self,
        token_endpoint: str,
        client_id: str,
        client_secret: SecretStr,
        scope: str,
        ca_file: str | None,
        timeout: float,
    ):
        self.token_endpoint = token_endpoint
        self.client_id = client_id
        self.scope = scope
        self._secret = client_secret
        self._redactor = Redactor()
        self._redactor.remember(*_as_sent(client_id, client_secret.get_secret_value()))
        self._http = HttpClient(ca_file, timeout, token_endpoint, self._redactor)
        self._lock = threading.Lock()

    def __call__(self) -> SecretStr:
        return self.fetch().value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.token_endpoint!r}, client_id={self.client_id!r})"

    def fetch(self) -> AccessToken:
        """A token that stays valid for a while: the cached one, or a new one."""
        with self._lock:
            return self._fetch()

    def forget_token(self) -> None:
        """Drop the cached token, e.g. after a server refused it: permissions granted since
        it was issued (a role, admin consent) only show in a new token."""
        with self._lock:
            self._forget()

    def _fetch(self) -> AccessToken:
        raise NotImplementedError

    def _forget(self) -> None:
        raise NotImplementedError

    def _error(self, reply: dict[str, Any], status: int | None = None) -> OAuth2Error:
        """The error for an RFC 6749 section 5.2 error reply, saying what to fix."""
        code = self._redact(str(reply.get("error") or ""))
        description = reply.get("error_description")
        description = self._redact(str(description)) if description else None
        where = f"the token endpoint {self.token_endpoint}"
        if code in _CLIENT_ERRORS:
            return OAuth2InvalidClientError(
                f"{where} refused client {self.client_id!r}: {self.client_hint}",
                code, description,
            )
        if code == "invalid_scope":
            return OAuth2InvalidScopeError(
                f"{where} refused the scope {self.scope!r}: set scope to one the provider grants "
                f"this client (Microsoft 365: {ENTRA_DEFAULT_SCOPE})",
                code, description,
            )
        if code:
            return OAuth2Error(f"{where} refused the token request", code, description)
        return OAuth2ResponseError(
            f"{where} answered{f' HTTP {status}' if status else ''} without an access token"
        )

    def _not_json(self, response: HttpResponse | None) -> OAuth2Error:
        """A reply that is not JSON: a proxy's page, an outage, or the wrong URL."""
        if response is None:
            return OAuth2ResponseError(f"the token endpoint {self.token_endpoint} did not answer")
        if response.status_code >= 500:
            return OAuth2EndpointUnreachableError(
                f"the token endpoint {self.token_endpoint} failed with HTTP "
                f"{response.status_code}; try again later",
                description=self._redact(response.text),
            )
        kind = {k.lower(): v for k, v in response.headers.items()}.get("content-type")
        return OAuth2ResponseError(
            f"the token endpoint {self.token_endpoint} did not answer with JSON (HTTP "
            f"{response.status_code}, {kind or 'no content type'}): is token_endpoint the "
            "provider's token URL?",
            description=self._redact(response.text),
        )

    def _provider_words(
        self, response: HttpResponse | None, fallback: str
    ) -> tuple[str | None, str]:
        """The provider's (error, error_description), else what it sent, else ``fallback``."""
        try:
            reply = json.loads(response.text) if response is not None else None
        except ValueError:
            reply = None
        if isinstance(reply, dict) and reply.get("error"):
            description = reply.get("error_description") or ""
            return self._redact(str(reply["error"])), self._redact(str(description))
        return None, self._redact(response.text if response is not None else fallback)

    def _redact(self, text: str) -> str:
        """Provider text with the secret masked, in case a provider echoes the request."""
        return _snippet(self._redactor.text(text))


def _as_sent(client_id: str, secret: str) -> list[str]:
    """The secret as it travels: as is, form- and URL-encoded, JSON-escaped, and as
    client_secret_basic's "id:secret" pair (the redactor adds every Base64 form)."""
    if not secret:
        return []
    return [secret, quote_plus(secret), quote(secret, safe=""), json.dumps(secret)[1:-1],
            f"{quote_plus(client_id)}:{quote_plus(secret)}", f"{client_id}:{secret}"]


class GenericClientCredentials(TokenProvider):
    """RFC 6749 section 4.4 against any token endpoint, with our own cache."""

    def __init__(self, *args, client_auth: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        if client_auth not in ("auto", "basic", "post"):
            raise ConfigurationError("client_auth", "must be auto, basic or post")
        # "auto" starts with client_secret_basic (every server must support it, RFC 6749
        # section 2.3.1) and switches to client_secret_post if the server refuses it.
        self._auth_methods = ["basic", "post"] if client_auth == "auto" else [client_auth]
        self._cached: AccessToken | None = None

    def _fetch(self) -> AccessToken:
        now = _now()
        if self._cached is not None and self._cached.fresh_at(now):
            log.debug("token for %s from the cache", self.client_id)
            return replace(self._cached, from_cache=True)
        for attempt, method in enumerate(self._auth_methods):
            status, reply = self._request(method)
            refused_client = reply.get("error") in _CLIENT_ERRORS
            if refused_client and attempt + 1 < len(self._auth_methods):
                log.debug("client_secret_%s refused; trying the next method", method)
                continue
            break
        if "access_token" not in reply or reply.get("error"):
            raise self._error(reply, status)
        # Later fetches go straight to the method that worked.
        self._auth_methods = [method]
        token = _token_from_reply(reply, now)
        self._cached = token if token.expires_at else None
        log.info("new token for client %s, expires %s", self.client_id, token.expires)
        return token

    def _forget(self) -> None:
        self._cached = None

    def _request(self, method: str) -> tuple[int, dict[str, Any]]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        headers = {"Accept": "application/json"}
        secret = self._secret.get_secret_value()
        if method == "basic":
            # RFC 6749 section 2.3.1: form-encode both parts before Base64.
            pair = f"{quote_plus(self.client_id)}:{quote_plus(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form.update(client_id=self.client_id, client_secret=secret)
        response = self._http.post(self.token_endpoint, data=form, headers=headers)
        return response.status_code, self._json(response)

    def _json(self, response: HttpResponse) -> dict[str, Any]:
        try:
            reply = json.loads(response.text)
        except ValueError:
            reply = None
        if isinstance(reply, dict):
            return reply
        raise self._not_json(response)


class EntraClientCredentials(TokenProvider):
    """Microsoft Entra ID through msal, which keeps its own token cache."""

    is_microsoft = True
    client_hint = (
        "check client_id and client_secret (use the secret's Value, not its Secret ID; "
        "secrets expire)"
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        match = ENTRA_ENDPOINT.match(self.token_endpoint)
        assert match, "EntraClientCredentials needs a .../<tenant>/oauth2/v2.0/token endpoint"
        self.authority = match.group(1)
        self._app = None

    def _application(self):
        """msal's application, created on first use: creating it fetches OIDC discovery."""
        if self._app is None:
            import msal

            try:
                self._app = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self._secret.get_secret_value(),
                    authority=self.authority,
                    http_client=self._http,
                    # Skip the world-wide instance discovery: the tenant's own OIDC
                    # discovery validates the authority, and private clouds stay offline.
                    instance_discovery=False,
                )
            except OAuth2Error:
                raise
            except (ValueError, msal.exceptions.MsalServiceError) as exc:
                response = self._http.last_response
                if response is not None and response.status_code >= 500:
                    raise self._not_json(response) from None
                error, description = self._provider_words(response, str(exc))
                raise OAuth2ResponseError(
                    f"OpenID discovery for {self.authority} failed: check the tenant in "
                    "token_endpoint (https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token)",
                    error, description,
                ) from None
        return self._app

    def _forget(self) -> None:
        if self._app is not None:
            self._app.remove_tokens_for_client()

    def _fetch(self) -> AccessToken:
        import msal

        app = self._application()
        now = _now()
        self._http.last_response = None
        try:
            reply = app.acquire_token_for_client(scopes=self.scope.split())
        except OAuth2Error:
            raise
        except (msal.exceptions.MsalServiceError, ValueError) as exc:
            if self._http.last_response is None:  # msal refused the request itself
                raise OAuth2InvalidScopeError(
                    f"msal refused the scope {self.scope!r}; Microsoft 365 needs "
                    f"{ENTRA_DEFAULT_SCOPE}", description=self._redact(str(exc)),
                ) from None
            raise self._not_json(self._http.last_response) from None  # HTTP 5xx, not JSON
        if "access_token" not in reply:
            raise self._error(reply)
        from_cache = reply.get("token_source") == "cache"
        token = _token_from_reply(reply, now, from_cache=from_cache)
        if not from_cache:
            log.info("new token for client %s, expires %s", self.client_id, token.expires)
        return token


def _token_from_reply(reply: dict[str, Any], now: float, from_cache: bool = False) -> AccessToken:
    value = SecretStr(str(reply["access_token"]))
    expires_at = None
    try:
        expires_at = now + float(reply["expires_in"])
    except (KeyError, TypeError, ValueError):
        exp = (jwt_claims(value) or {}).get("exp")
        if isinstance(exp, int | float):
            expires_at = float(exp)
    scope = reply.get("scope")
    return AccessToken(value, expires_at, now, str(scope) if scope else None, from_cache)


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REPLY_SNIPPET else text[:_REPLY_SNIPPET] + "..."


# --- one provider per configuration, per process -----------------------------------------

_providers: dict[tuple, TokenProvider] = {}
_providers_lock = threading.Lock()


def client_credentials(
    *,
    token_endpoint: str,
    client_id: str,
    client_secret: SecretStr,
    scope: str = "",
    ca_file: str | None = None,
    timeout: float = 60.0,
    client_auth: str = "auto",
) -> TokenProvider:
    """The token provider for this configuration; the same one for the whole process.

    Nothing is requested until the provider is called. ``scope`` defaults to
    https://outlook.office365.com/.default for Microsoft Entra endpoints. ``client_auth``
    (auto, basic or post) applies to non-Entra endpoints.
    """
    token_endpoint, client_id = token_endpoint.strip(), client_id.strip()
    for name, problem in oauth_problems(token_endpoint, client_id, client_secret):
        raise ConfigurationError(name, problem)
    entra = is_entra_endpoint(token_endpoint)
    scope = default_scope(token_endpoint, scope)
    # The secret is part of the key (hashed), so a corrected secret gets a new provider.
    digest = hashlib.sha256(client_secret.get_secret_value().encode()).hexdigest()
    key = (token_endpoint, client_id, digest, scope, ca_file, client_auth)
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            arguments = (token_endpoint, client_id, client_secret, scope, ca_file, timeout)
            provider = (
                EntraClientCredentials(*arguments)
                if entra
                else GenericClientCredentials(*arguments, client_auth=client_auth)
            )
            _providers[key] = provider
        return provider


def forget_providers() -> None:
    """Drop every shared provider and its cached tokens (tests, credential rotation)."""
    with _providers_lock:
        _providers.clear()

