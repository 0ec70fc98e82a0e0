"""OAuth2 client-credentials tokens for POP3 login (RFC 6749 section 4.4).

Microsoft Entra ID endpoints (``https://<host>/<tenant>/oauth2/v2.0/token``) go through msal's
ConfidentialClientApplication and its token cache; any other endpoint gets the plain RFC 6749
request, authenticating with client_secret_basic and falling back to client_secret_post.

Providers are shared per configuration within the process (see :func:`client_credentials`),
so every task that uses one configuration reuses one token until shortly before it expires.
Errors carry the provider's own error and description, never the secret (in any of the
forms it travels in) or a token.

Where requests go: only to the origin (scheme, host, port) of the configured https://
token endpoint, and never on through a redirect: the client secret is sent once, there.

How long and how much: each request, from connecting to the last byte of the reply, ends
within the configured timeout (a provider that sends a byte now and then cannot hold a run),
and a reply over :data:`MAX_REPLY_BYTES` is refused.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import io
import json
import logging
import re
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus, urlencode, urlsplit

from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import (
    ConfigurationError,
    OAuth2EndpointUnreachableError,
    OAuth2Error,
    OAuth2InvalidClientError,
    OAuth2InvalidScopeError,
    OAuth2ResponseError,
    OAuth2TLSError,
)
from prefect_pop3mail.tasks.pop3.protocol.tls import client_context
from prefect_pop3mail.tasks.pop3.redaction import Redactor

log = logging.getLogger("pop3mail.oauth")

ENTRA_DEFAULT_SCOPE = "https://outlook.office365.com/.default"
#: Tokens are renewed this long before they expire (msal uses the same margin) ...
REFRESH_MARGIN = 300.0
#: ... or this share of their lifetime, for tokens that live less than 50 minutes.
REFRESH_SHARE = 0.1

_ENTRA_ENDPOINT = re.compile(r"^(https://[^/?#]+/[^/?#]+)/oauth2/v2\.0/token/?$", re.I)
_ENTRA_V1_ENDPOINT = re.compile(r"^https://login\.[^/]+/[^/]+/oauth2/token/?$", re.I)
_SHARED_TENANTS = {"common", "organizations", "consumers"}
_CLIENT_ERRORS = {"invalid_client", "unauthorized_client"}
_REPLY_SNIPPET = 400
#: A token reply is a few kB (an Entra access token about 2 kB), OIDC discovery as much.
MAX_REPLY_BYTES = 1 << 20

# Monkeypatched by tests to move the clock; everything here reads time through it.
_now = time.time


# --- the token ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessToken:
    """An access token and what is known about it. ``repr`` never shows the token."""

    value: SecretStr
    expires_at: float | None = None
    #: When the provider issued it (our clock), to know its lifetime.
    obtained_at: float | None = None
    #: The "scope" field of the token response, when the provider sent one.
    granted_scope: str | None = None
    from_cache: bool = False

    @property
    def expires(self) -> datetime | None:
        return datetime.fromtimestamp(self.expires_at, UTC) if self.expires_at else None

    def claims(self) -> dict[str, Any] | None:
        """The payload of a JWT token, unverified (for diagnostics only); None if opaque."""
        return jwt_claims(self.value)

    def fresh_at(self, now: float) -> bool:
        """Still usable at ``now``, with the refresh margin to spare."""
        if self.expires_at is None:
            return False
        lifetime = self.expires_at - (self.obtained_at if self.obtained_at else now)
        return self.expires_at - now > refresh_margin(lifetime)


def refresh_margin(lifetime: float) -> float:
    return min(REFRESH_MARGIN, max(lifetime, 0) * REFRESH_SHARE)


def jwt_claims(token: SecretStr) -> dict[str, Any] | None:
    parts = token.get_secret_value().split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


# --- HTTP ------------------------------------------------------------------------------


@dataclass
class HttpResponse:
    """The response shape msal expects (msal.oauth2cli.http.Response)."""

    status_code: int
    text: str
    headers: dict[str, str] = field(default_factory=dict)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise OAuth2EndpointUnreachableError(
                f"the identity provider answered HTTP {self.status_code}"
            )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a 301/302/303 as a GET that keeps the Authorization header
    (client_secret_basic) to any URL, plain HTTP included: follow none."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _DeadlineReader(io.RawIOBase):
    """The reading end of a socket, each read given what is left of ``deadline``: a
    reply trickled a byte at a time ends at the deadline, not at the read timeout."""

    def __init__(self, sock, deadline: float):
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # counts as a reference to the socket
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(_left(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineConnection(http.client.HTTPSConnection):
    """An HTTPS connection whose connect, TLS handshake, request and reply together end
    by ``deadline`` (a time.monotonic value)."""

    def __init__(self, *args, deadline: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def connect(self) -> None:
        self.timeout = _left(self._deadline)  # the handshake's deadline, as a whole
        super().connect()

    def send(self, data) -> None:
        if self.sock is not None:
            self.sock.settimeout(_left(self._deadline))
        super().send(data)

    @property
    def response_class(self):
        return functools.partial(_DeadlineResponse, deadline=self._deadline)


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, deadline: float, **kwargs):
        super().__init__(sock, *args, **kwargs)
        self.fp.close()  # http.client's own reader, unused: it holds a socket reference
        self.fp = io.BufferedReader(_DeadlineReader(sock, deadline))


class _DeadlineHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, seconds: float):
        super().__init__(context=context)
        self._seconds = seconds

    def https_open(self, req):
        deadline = time.monotonic() + self._seconds
        return self.do_open(functools.partial(_DeadlineConnection, deadline=deadline), req,
                            context=self._context)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the whole request took longer than the timeout")
    return left


class HttpClient:
    """Minimal HTTPS client for the token endpoint, also handed to msal.

    Certificates are always verified (the client secret travels here): the system's CAs
    plus ``ca_file``. Requests go only to ``token_endpoint``'s origin, and a redirect is an
    error, never followed: msal's OIDC discovery cannot send the secret elsewhere either.
    Replies that are not a success in JSON (errors, HTML pages) come back with every form of
    the secret masked, as msal logs them. Transport failures become OAuth2 errors that name
    the endpoint. Each request as a whole (connect, TLS, request, reply) ends within
    ``timeout`` seconds, and its reply is at most MAX_REPLY_BYTES.
    """

    def __init__(self, ca_file: str | None, timeout: float, token_endpoint: str,
                 redactor: Redactor | None = None):
        self.timeout = timeout
        self.token_endpoint = token_endpoint
        self._origin = _origin(token_endpoint)
        self._redactor = redactor or Redactor()
        #: The last response, so an error can describe what the provider sent.
        self.last_response: HttpResponse | None = None
        self._opener = urllib.request.build_opener(
            _DeadlineHandler(client_context(ca_file), timeout), _NoRedirects()
        )

    def get(self, url: str, params=None, headers=None, **_ignored) -> HttpResponse:
        return self._request("GET", _with_query(url, params), None, headers)

    def post(self, url: str, params=None, data=None, headers=None, **_ignored) -> HttpResponse:
        body = urlencode(data) if isinstance(data, dict) else data
        headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self._request("POST", _with_query(url, params), body, headers)

    def close(self) -> None:
        pass

    def _request(self, method: str, url: str, body: str | None, headers) -> HttpResponse:
        if _origin(url) != self._origin:
            raise OAuth2ResponseError(
                f"refusing to send a request to {_origin_text(url)}: only the origin of "
                f"token_endpoint ({_origin_text(self.token_endpoint)}) is contacted"
            )
        request = urllib.request.Request(
            url, data=body.encode() if body is not None else None, method=method,
            headers=headers or {},
        )
        log.debug("%s %s", method, _without_query(url))
        try:
            with self._opener.open(request, timeout=self.timeout) as r:
                response = HttpResponse(r.status, self._body(url, r), dict(r.headers.items()))
        except urllib.error.HTTPError as reply:  # 4xx/5xx still carry the provider's JSON
            with reply:
                response = HttpResponse(reply.code, self._body(url, reply), dict(reply.headers))
        except urllib.error.URLError as exc:
            raise _transport_error(url, exc.reason) from exc
        except (TimeoutError, OSError) as exc:
            raise _transport_error(url, exc) from exc
        if 300 <= response.status_code < 400:
            raise self._redirected(url, response)
        if not (200 <= response.status_code < 300 and _is_json(response.text)):
            response.text = self._redactor.text(response.text)
        self.last_response = response
        return response

    @staticmethod
    def _body(url: str, reply) -> str:
        data = reply.read(MAX_REPLY_BYTES + 1)
        if len(data) > MAX_REPLY_BYTES:
            raise OAuth2ResponseError(
                f"{_without_query(url)} sent a reply over {MAX_REPLY_BYTES >> 20} MB "
                "(MAX_REPLY_BYTES); a token reply is a few kB: is token_endpoint the "
                "provider's token URL?")
        return _text(data)

    def _redirected(self, url: str, response: HttpResponse) -> OAuth2Error:
        location = {k.lower(): v for k, v in response.headers.items()}.get("location", "")
        target = _origin_text(location) if urlsplit(location).scheme else "the same host"
        return OAuth2ResponseError(
            f"{_without_query(url)} answered HTTP {response.status_code}, redirecting to "
            f"{target}; redirects are not followed, so the client secret goes nowhere else: "
            "set token_endpoint to the provider's own https:// token URL"
        )


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme.lower())
    except ValueError:  # a port that is not a number
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _origin_text(url: str) -> str:
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}"


def _transport_error(url: str, reason: object) -> OAuth2Error:
    where = _without_query(url)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return OAuth2TLSError(
            f"the certificate of {where} is not trusted ({reason.verify_message}); if the "
            "provider uses a private CA, put that CA in tls_ca_file"
        )
    if isinstance(reason, ssl.SSLError):
        return OAuth2TLSError(f"TLS with {where} failed: {reason}")
    if isinstance(reason, TimeoutError):
        return OAuth2EndpointUnreachableError(f"the token endpoint {where} did not answer in time")
    detail = getattr(reason, "strerror", None) or reason
    return OAuth2EndpointUnreachableError(
        f"cannot reach the token endpoint {where}: {detail}; check token_endpoint and the "
        "network path to it"
    )


def _with_query(url: str, params: dict | None) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}" if params else url


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


# --- providers -------------------------------------------------------------------------


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


class CallableTokenSource:
    """A plain function that returns a token, as a TokenSource: no expiry known, nothing
    cached to forget."""

    client_id = ""
    is_microsoft = False

    def __init__(self, get_token: Callable[[], SecretStr]):
        self._get_token = get_token

    def __call__(self) -> SecretStr:
        return self._get_token()

    def fetch(self) -> AccessToken:
        return AccessToken(self._get_token())

    def forget_token(self) -> None:
        pass


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
        match = _ENTRA_ENDPOINT.match(self.token_endpoint)
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


def is_entra_endpoint(token_endpoint: str) -> bool:
    return bool(_ENTRA_ENDPOINT.match(token_endpoint.strip()))


def default_scope(token_endpoint: str, scope: str = "") -> str:
    """The scope to request: the one set, else Exchange Online's for Entra endpoints."""
    scope = scope.strip()
    if not scope and is_entra_endpoint(token_endpoint):
        return ENTRA_DEFAULT_SCOPE
    return scope


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


def oauth_problems(
    token_endpoint: str, client_id: str, client_secret: SecretStr
) -> list[tuple[str, str]]:
    """(field, problem) for each OAUTH2 setting that cannot work; empty when all can."""
    problems: list[tuple[str, str]] = []
    parts = urlsplit(token_endpoint)
    entra = _ENTRA_ENDPOINT.match(token_endpoint)
    if not token_endpoint:
        problems.append(("token_endpoint", "required when Authentication is OAUTH2"))
    elif parts.scheme.lower() != "https" or not parts.hostname:
        problems.append(("token_endpoint", "must be an https:// URL (the client secret is "
                                           "sent there)"))
    elif _ENTRA_V1_ENDPOINT.match(token_endpoint):
        problems.append((
            "token_endpoint",
            "this is the Entra ID v1 endpoint; use the v2.0 one: "
            "https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token",
        ))
    elif entra and entra.group(1).rsplit("/", 1)[1].lower() in _SHARED_TENANTS:
        problems.append((
            "token_endpoint",
            "client credentials need your own tenant (its ID or domain) in place of "
            f"{entra.group(1).rsplit('/', 1)[1]!r}",
        ))
    if not client_id:
        problems.append(("client_id", "required when Authentication is OAUTH2"))
    if not client_secret.get_secret_value():
        problems.append(("client_secret", "required when Authentication is OAUTH2"))
    return problems
