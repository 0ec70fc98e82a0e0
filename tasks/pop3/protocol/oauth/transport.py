"""The HTTPS client for a token endpoint, also handed to msal.

Where requests go: only to the origin (scheme, host, port) of the configured https://
token endpoint, and never on through a redirect: the client secret is sent once, there.

How long and how much: each request, from connecting to the last byte of the reply, ends
within the configured timeout (a provider that sends a byte now and then cannot hold a run),
and a reply over :data:`MAX_REPLY_BYTES` is refused.
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from prefect_pop3mail.tasks.pop3.errors import (
    OAuth2EndpointUnreachableError,
    OAuth2Error,
    OAuth2ResponseError,
    OAuth2TLSError,
)
from prefect_pop3mail.tasks.pop3.protocol.tls import client_context
from prefect_pop3mail.tasks.pop3.redaction import Redactor

log = logging.getLogger("pop3mail.oauth")

#: A token reply is a few kB (an Entra access token about 2 kB), OIDC discovery as much.
MAX_REPLY_BYTES = 1 << 20


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

