"""The connection check: what a user needs to know before the first real run.

For OAUTH2 it also reports the token (expiry; scopes and audience when it is a JWT), the
SASL mechanisms the server offers, and - when a valid token is refused - the usual
Microsoft 365 mistakes, so that the first real run works.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect_pop3mail.tasks.pop3.errors import (
    OAuth2EndpointUnreachableError,
    OAuth2Error,
    OAuth2InvalidClientError,
    OAuth2InvalidScopeError,
    OAuth2TLSError,
    POP3AuthError,
    POP3MailError,
)
from prefect_pop3mail.tasks.pop3.models import (
    ConnectionReport,
    ConnectionSettings,
    LoginMethod,
)
from prefect_pop3mail.tasks.pop3.protocol.oauth.endpoints import ENTRA_DEFAULT_SCOPE
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from prefect_pop3mail.tasks.pop3.tokens import AccessToken, CallableTokenSource, TokenSource

EXCHANGE_AUDIENCES = {"https://outlook.office365.com", "00000002-0000-0ff1-ce00-000000000000"}
POP_ROLE = "POP.AccessAsApp"
_MICROSOFT_HOSTS = ("outlook.office365.com", "outlook.office.com", "office365.com")


def check_mailbox(configuration: str, connection: ConnectionSettings) -> ConnectionReport:
    """Greeting, capabilities, TLS details, token, login, and the number of waiting messages.

    Connection and TLS failures raise; a refused login or token request is reported, with
    hints, not raised.
    """
    report = ConnectionReport(
        configuration=configuration,
        host=connection.host,
        port=connection.port,
        security=connection.security,
    )
    token: AccessToken | None = None
    provider = connection.token_provider  # kept: hints ask it whose tokens they are
    if provider is not None:
        try:
            token = provider.fetch()
        except OAuth2Error as exc:
            report.login_error = f"no access token: {exc}"
            report.hints.extend(_token_error_hints(exc))
        else:
            _describe_token(report, token)
            # Log in with exactly the token described above.
            pinned = CallableTokenSource(lambda: token.value)
            connection = connection.model_copy(update={"token_provider": pinned})
    session = POP3Session(connection)
    session.connect()
    try:
        report.greeting = session.greeting.decode("utf-8", "replace")
        report.capabilities = [
            " ".join([name, *args]) for name, args in session.capabilities.items()
        ]
        report.sasl_mechanisms = session.capabilities.get("SASL", [])
        report.tls_version, report.certificate_subject, report.certificate_expires = (
            session.tls_info()
        )
        if connection.token_provider is not None:
            report.hints.extend(_mechanism_hints(connection, report.sasl_mechanisms))
        if report.login_error:  # no token: nothing to log in with
            session.close()
            return report
        try:
            session.login()
        except POP3AuthError as exc:
            report.login_error = str(exc)
            if provider is not None and token is not None:
                report.hints.extend(_refused_token_hints(connection, provider, token))
                provider.forget_token()  # the next check sees permissions granted meanwhile
            session.close()
            return report
        report.login_ok = True
        report.messages_waiting, report.mailbox_size = session.stat()
        session.quit()
    except POP3MailError:
        session.close()
        raise
    return report


def _describe_token(report: ConnectionReport, token: AccessToken) -> None:
    claims = token.claims() or {}
    report.token_expires = token.expires or _claim_time(claims.get("exp"))
    report.token_scopes = token_scopes(claims, token.granted_scope)
    audience = claims.get("aud")
    if isinstance(audience, list):
        audience = " ".join(str(a) for a in audience)
    report.token_audience = str(audience) if audience else None


def token_scopes(claims: dict[str, Any], granted_scope: str | None = None) -> list[str]:
    """Application roles (Entra's "roles") and scopes ("scp"/"scope"), in that order."""
    found: list[str] = []
    roles = claims.get("roles")
    if isinstance(roles, list):
        found += [str(r) for r in roles]
    for name in ("scp", "scope"):
        value = claims.get(name)
        if isinstance(value, str):
            found += value.split()
        elif isinstance(value, list):
            found += [str(v) for v in value]
    if not found and granted_scope:
        found = granted_scope.split()
    return list(dict.fromkeys(found))


def _claim_time(value: object) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else None


# --- hints -----------------------------------------------------------------------------


def _is_microsoft(connection: ConnectionSettings, provider: TokenSource) -> bool:
    return provider.is_microsoft or connection.host.lower().endswith(_MICROSOFT_HOSTS)


def _login_mechanism(connection: ConnectionSettings) -> str:
    method = connection.login_method
    return "OAUTHBEARER" if method is LoginMethod.OAUTHBEARER else "XOAUTH2"


def _mechanism_hints(connection: ConnectionSettings, offered: list[str]) -> list[str]:
    wanted = _login_mechanism(connection)
    if not offered or wanted in (m.upper() for m in offered):
        return []
    other = "OAUTHBEARER" if wanted == "XOAUTH2" else "XOAUTH2"
    also = f"; it offers {other}: set login_method to {other.lower()}" if other in offered else ""
    return [f"The server does not offer SASL {wanted} (it offers {' '.join(offered)}){also}."]


def _token_error_hints(exc: OAuth2Error) -> list[str]:
    if isinstance(exc, OAuth2InvalidClientError):
        return [
            "Check client_id (the Application (client) ID) and client_secret. In Microsoft "
            "Entra ID, use the secret's Value (shown once, when it is created), not its "
            "Secret ID, and check that it has not expired."
        ]
    if isinstance(exc, OAuth2InvalidScopeError):
        return [f"For Microsoft 365 POP3 the scope must be {ENTRA_DEFAULT_SCOPE}."]
    if isinstance(exc, OAuth2TLSError):
        return ["The token endpoint's certificate is not trusted: for a private CA, set "
                "tls_ca_file to a PEM file holding it."]
    if isinstance(exc, OAuth2EndpointUnreachableError):
        return ["Check token_endpoint and that this machine can reach it (proxy, firewall)."]
    return ["Check token_endpoint: it must be the provider's token URL, for Microsoft "
            "https://login.microsoftonline.com/<tenant ID>/oauth2/v2.0/token."]


def _refused_token_hints(
    connection: ConnectionSettings, provider: TokenSource, token: AccessToken
) -> list[str]:
    """Why a server may refuse a token the provider issued."""
    claims = token.claims() or {}
    hints: list[str] = []
    expires = token.expires or _claim_time(claims.get("exp"))
    if expires and expires <= datetime.now(UTC):
        hints.append(f"The token expired at {expires.isoformat()}: check this machine's clock.")
    if not _is_microsoft(connection, provider):
        hints.append(
            f"The server refused a token the provider issued: check that the token grants "
            f"access to the mailbox {connection.user!r} (the user must be that mailbox) and "
            "that the server accepts tokens from this provider."
        )
        return hints
    audience = claims.get("aud")
    if claims and audience not in EXCHANGE_AUDIENCES:
        hints.append(
            f"The token is for {audience!r}, not Exchange Online: set scope to "
            f"{ENTRA_DEFAULT_SCOPE}."
        )
    roles = claims.get("roles")
    if claims and POP_ROLE not in (roles if isinstance(roles, list) else []):
        hints.append(
            f"The token has no {POP_ROLE} role: in the app registration add the API "
            f"permission Office 365 Exchange Online > Application permissions > {POP_ROLE}, "
            "then grant admin consent."
        )
    client_id = provider.client_id or "<client id>"
    hints += [
        "Register the app's service principal in Exchange Online (PowerShell): "
        f"New-ServicePrincipal -AppId {client_id} -ObjectId <object ID of the Enterprise "
        "application, not of the App registration>.",
        f"Give it access to the mailbox: Add-MailboxPermission -Identity {connection.user} "
        "-User <service principal ID> -AccessRights FullAccess.",
        f"The user must be the mailbox's address ({connection.user!r}), and POP3 must be "
        f"enabled for it: Set-CASMailbox -Identity {connection.user} -PopEnabled $true. "
        "Permission changes can take up to an hour to apply.",
    ]
    return hints


__all__ = ["check_mailbox", "token_scopes"]
