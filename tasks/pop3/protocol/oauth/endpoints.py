"""What the OAUTH2 settings mean before any request: which endpoints are Microsoft Entra
ID's, which scope to ask for, and which settings cannot work (each problem names its
field)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import SecretStr

ENTRA_DEFAULT_SCOPE = "https://outlook.office365.com/.default"
#: A v2.0 token endpoint of Microsoft Entra ID; group 1 is its authority.
ENTRA_ENDPOINT = re.compile(r"^(https://[^/?#]+/[^/?#]+)/oauth2/v2\.0/token/?$", re.I)
_ENTRA_V1_ENDPOINT = re.compile(r"^https://login\.[^/]+/[^/]+/oauth2/token/?$", re.I)
_SHARED_TENANTS = {"common", "organizations", "consumers"}


def is_entra_endpoint(token_endpoint: str) -> bool:
    return bool(ENTRA_ENDPOINT.match(token_endpoint.strip()))


def default_scope(token_endpoint: str, scope: str = "") -> str:
    """The scope to request: the one set, else Exchange Online's for Entra endpoints."""
    scope = scope.strip()
    if not scope and is_entra_endpoint(token_endpoint):
        return ENTRA_DEFAULT_SCOPE
    return scope


def oauth_problems(
    token_endpoint: str, client_id: str, client_secret: SecretStr
) -> list[tuple[str, str]]:
    """(field, problem) for each OAUTH2 setting that cannot work; empty when all can."""
    problems: list[tuple[str, str]] = []
    parts = urlsplit(token_endpoint)
    entra = ENTRA_ENDPOINT.match(token_endpoint)
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
