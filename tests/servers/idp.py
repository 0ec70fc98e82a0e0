"""A local OAuth2 identity provider for tests: HTTPS with its own throwaway CA.

It issues client-credentials tokens (RS256 JWTs) at two token endpoints:

- ``/<tenant>/oauth2/v2.0/token``, shaped like Microsoft Entra ID, with OIDC discovery at
  ``/<tenant>/v2.0/.well-known/openid-configuration``, so msal accepts it as an authority;
- ``/oauth/token``, a plain RFC 6749 endpoint accepting client_secret_basic and
  client_secret_post (each client may be limited to one), discovery at
  ``/.well-known/openid-configuration``.

``/introspect`` (RFC 7662, flat JSON) lets Dovecot's oauth2 passdb validate tokens. A
client is registered for one mailbox, as an Exchange service principal is given access to
one mailbox: introspection reports that mailbox as the token's username.

Failure modes on demand: wrong secrets and scopes are refused the way Entra refuses them;
``clock_offset`` ages every token (expiry); ``reply_html`` makes the token endpoints answer
like a captive portal; ``redirect_to`` makes them redirect elsewhere, and
``discovery_token_endpoint`` makes Entra's OIDC discovery name another token endpoint;
``echo_request`` puts the whole request (form and Authorization header) into the error
reply; ``trickle`` sends every reply (status line and headers included) a byte every that
many seconds; ``pad_reply`` adds that many bytes to token replies; ``stop()`` takes the
provider down.

``RecordingServer`` is the "elsewhere": an HTTP or HTTPS server that records every request.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote_plus, urlsplit

import trustme
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ENTRA_RESOURCE = "https://outlook.office365.com"
GENERIC_AUDIENCE = "pop3mail-test"
GENERIC_SCOPES = {"pop3", "mail.read"}


@dataclass
class Client:
    client_id: str
    secret: str
    mailbox: str
    #: Application permissions, as Entra puts them in the "roles" claim.
    roles: list[str] = field(default_factory=lambda: ["POP.AccessAsApp"])
    #: None: client_secret_basic and client_secret_post; or just "basic" / "post".
    auth_method: str | None = None


@dataclass
class Issued:
    client: Client
    expires_at: float
    scope: str


class IdentityProvider:
    def __init__(self, ca: trustme.CA, root: Path, token_lifetime: int = 3600):
        self.ca = ca
        self.root = root
        self.tenant = str(uuid.uuid4())
        self.token_lifetime = token_lifetime
        self.clock_offset = 0.0
        self.reply_html = False
        #: Put the secret a client sent into the error description (some providers do).
        self.echo_secrets = False
        #: "json" or "html": refuse every token request, echoing its body and Authorization.
        self.echo_request: str | None = None
        #: Token endpoints answer with this redirect status, to this URL.
        self.redirect_to: str | None = None
        self.redirect_status = 302
        #: Entra's OIDC discovery names this token endpoint instead of its own.
        self.discovery_token_endpoint: str | None = None
        #: Seconds between the bytes of every reply (None: all at once).
        self.trickle: float | None = None
        #: Bytes of padding in every token reply (a reply far larger than a token).
        self.pad_reply = 0
        self.clients: dict[str, Client] = {}
        self.tokens: dict[str, Issued] = {}
        #: Requests per path, so tests can see what was (not) sent.
        self.requests: Counter[str] = Counter()
        #: The Authorization header and form of the last token request, for tests.
        self.last_token_request: dict[str, object] = {}
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = secrets.token_hex(8)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> IdentityProvider:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # Dovecot's auth process reads the CA file here
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert = self.ca.issue_cert("localhost", "127.0.0.1")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def ca_file(self) -> Path:
        return self.root / "idp-ca.pem"

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def entra_token_endpoint(self) -> str:
        return f"{self.base}/{self.tenant}/oauth2/v2.0/token"

    @property
    def generic_token_endpoint(self) -> str:
        return f"{self.base}/oauth/token"

    @property
    def introspection_url(self) -> str:
        return f"{self.base}/introspect"

    def dovecot_passdb(self) -> str:
        """A Dovecot 2.3 oauth2 passdb that validates tokens by introspection (RFC 7662)."""
        args = self.root / "dovecot-oauth2.conf.ext"
        args.write_text(
            f"introspection_mode = post\n"
            f"introspection_url = {self.introspection_url}\n"
            f"tls_ca_cert_file = {self.ca_file}\n"
            "force_introspection = yes\n"
            "username_attribute = username\n"
            "username_format = %Lu\n"
            "active_attribute = active\n"
            "active_value = true\n"
            f"openid_configuration_url = {self.base}/.well-known/openid-configuration\n"
        )
        os.chmod(args, 0o644)
        return (
            "passdb {\n"
            "  driver = oauth2\n"
            "  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {args}\n"
            "}\n"
        )

    # --- clients and tokens ---------------------------------------------------------

    def register(self, mailbox: str, **options) -> Client:
        client = Client(
            client_id=str(uuid.uuid4()),
            secret=f"Qx8~{secrets.token_urlsafe(24)}",
            mailbox=mailbox,
            **options,
        )
        self.clients[client.client_id] = client
        return client

    def now(self) -> float:
        return time.time() + self.clock_offset

    def issue(self, client: Client, scope: str, audience: str, lifetime: int) -> dict:
        now = int(self.now())
        claims = {
            "iss": f"{self.base}/{self.tenant}/v2.0",
            "aud": audience,
            "tid": self.tenant,
            "appid": client.client_id,
            "azp": client.client_id,
            "sub": client.client_id,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": secrets.token_hex(8),
        }
        if audience == ENTRA_RESOURCE:
            claims["roles"] = client.roles
        else:
            claims["scope"] = scope
        token = self._sign(claims)
        self.tokens[token] = Issued(client, now + lifetime, scope)
        return {
            "token_type": "Bearer",
            "access_token": token,
            "expires_in": lifetime,
            **({"scope": scope} if audience != ENTRA_RESOURCE else {}),
        }

    def _sign(self, claims: dict) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": self._kid}
        signing_input = f"{_b64(json.dumps(header))}.{_b64(json.dumps(claims))}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def introspect(self, token: str) -> dict:
        issued = self.tokens.get(token)
        if issued is None or issued.expires_at <= self.now():
            return {"active": False}
        return {
            "active": True,
            "username": issued.client.mailbox,
            "client_id": issued.client.client_id,
            "scope": issued.scope,
            "exp": int(issued.expires_at),
        }

    def discovery(self, tenant: str | None) -> dict:
        if tenant:
            prefix = f"{self.base}/{tenant}"
            return {
                "issuer": f"{prefix}/v2.0",
                "authorization_endpoint": f"{prefix}/oauth2/v2.0/authorize",
                "token_endpoint": self.discovery_token_endpoint
                or f"{prefix}/oauth2/v2.0/token",
                "jwks_uri": f"{self.base}/keys",
                "token_endpoint_auth_methods_supported": ["client_secret_post",
                                                          "client_secret_basic"],
            }
        return {
            "issuer": self.base,
            "token_endpoint": self.generic_token_endpoint,
            "introspection_endpoint": self.introspection_url,
            "jwks_uri": f"{self.base}/keys",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"],
        }

    def jwks(self) -> dict:
        numbers = self._key.public_key().public_numbers()
        return {"keys": [{
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self._kid,
            "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64(numbers.e.to_bytes(3, "big")),
        }]}

    # --- the token endpoints ---------------------------------------------------------

    def token(self, entra: bool, authorization: str | None, form: dict[str, str]):
        """(status, reply) for a token request, refusing it the way Entra or RFC 6749 do."""
        self.last_token_request = {"authorization": authorization, "form": dict(form)}
        if form.get("grant_type") != "client_credentials":
            return 400, _error("unsupported_grant_type", "only client_credentials")
        client_id, secret, method = _client_authentication(authorization, form)
        client = self.clients.get(client_id or "")
        if client is None:
            return 400 if entra else 401, _error(
                "unauthorized_client" if entra else "invalid_client",
                f"AADSTS700016: Application with identifier '{client_id}' was not found in "
                f"the directory '{self.tenant}'.",
            )
        if client.auth_method and method != client.auth_method:
            return 401, _error("invalid_client", f"client_secret_{method} is not allowed")
        if secret != client.secret:
            echoed = f" Received: {secret}." if self.echo_secrets else ""
            return 401, _error(
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent "
                f"in the request is the client secret value, not the client secret ID.{echoed}",
            )
        scope = form.get("scope", "")
        if entra:
            if scope != f"{ENTRA_RESOURCE}/.default":
                return 400, _error(
                    "invalid_scope",
                    f"AADSTS1002012: The provided value for scope {scope} is not valid. "
                    "Client credential flows must have a scope value with /.default suffixed "
                    "to the resource identifier (application ID URI).",
                )
            return 200, self.issue(client, scope, ENTRA_RESOURCE, self.token_lifetime)
        unknown = set(scope.split()) - GENERIC_SCOPES
        if unknown:
            return 400, _error("invalid_scope", f"unknown scope: {' '.join(sorted(unknown))}")
        return 200, self.issue(client, scope, GENERIC_AUDIENCE, self.token_lifetime)


def _client_authentication(authorization: str | None, form: dict[str, str]):
    if authorization and authorization.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(authorization[6:]).decode()
            client_id, _, secret = decoded.partition(":")
            return unquote_plus(client_id), unquote_plus(secret), "basic"
        except ValueError:
            return None, None, "basic"
    return form.get("client_id"), form.get("client_secret"), "post"


def _error(code: str, description: str) -> dict:
    return {"error": code, "error_description": description}


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _handler(idp: IdentityProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # keep test output quiet
            pass

        def _reply(self, status: int, body: dict | str, content_type="application/json"):
            data = (json.dumps(body) if isinstance(body, dict) else body).encode()
            if idp.trickle:
                return self._trickle(status, data, content_type)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _trickle(self, status: int, data: bytes, content_type: str) -> None:
            head = (f"HTTP/1.1 {status} {self.responses[status][0]}\r\nContent-Type: "
                    f"{content_type}\r\nContent-Length: {len(data)}\r\n\r\n").encode()
            self.close_connection = True
            for byte in head + data:
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    return  # the client gave up
                time.sleep(idp.trickle)

        def do_GET(self):
            path = urlsplit(self.path).path
            idp.requests[path] += 1
            parts = path.strip("/").split("/")
            if path == "/.well-known/openid-configuration":
                return self._reply(200, idp.discovery(None))
            if parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                if parts[0] != idp.tenant:
                    return self._reply(400, _error(
                        "invalid_tenant", f"AADSTS90002: Tenant '{parts[0]}' not found."))
                return self._reply(200, idp.discovery(parts[0]))
            if path == "/keys":
                return self._reply(200, idp.jwks())
            self._reply(404, _error("not_found", path))

        def do_POST(self):
            path = urlsplit(self.path).path
            idp.requests[path] += 1
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            form = {k: v[0] for k, v in parse_qs(body).items()}
            if path == "/introspect":
                return self._reply(200, idp.introspect(form.get("token", "")))
            entra = path == f"/{idp.tenant}/oauth2/v2.0/token"
            if not entra and path != "/oauth/token":
                return self._reply(404, _error("not_found", path))
            if idp.redirect_to:
                self.send_response(idp.redirect_status)
                self.send_header("Location", idp.redirect_to)
                self.send_header("Content-Length", "0")
                return self.end_headers()
            if idp.reply_html:
                return self._reply(200, "<html><body>Sign in to continue</body></html>",
                                   "text/html")
            if idp.echo_request:
                echoed = f"body={body} authorization={self.headers.get('Authorization')}"
                if idp.echo_request == "html":
                    return self._reply(400, f"<html><pre>{echoed}</pre></html>", "text/html")
                return self._reply(400, _error("invalid_request", f"Bad request: {echoed}"))
            status, reply = idp.token(entra, self.headers.get("Authorization"), form)
            if idp.pad_reply:
                reply["padding"] = "x" * idp.pad_reply
            self._reply(status, reply)

    return Handler


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: str


class RecordingServer:
    """Answers every request 200 with a token-shaped reply, and records it: the place a
    redirect or a forged discovery document would send the client secret to."""

    def __init__(self, ca: trustme.CA | None = None):
        self.requests: list[Recorded] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace")
                recorded.append(Recorded(self.command, self.path, dict(self.headers), body))
                data = json.dumps({"access_token": "stolen", "expires_in": 3600}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _record

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if ca is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://localhost:{self.port}/collect/token"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_identity_provider(ca: trustme.CA | None = None, **options) -> IdentityProvider:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="pop3mail-idp-"))
    return IdentityProvider(ca or trustme.CA(), root, **options).start()
