"""OAuth2 access tokens, and where they come from: the words the settings, the session and
the token providers share (``protocol/oauth/`` holds the providers themselves).

``repr`` never shows a token; ``jwt_claims`` reads a JWT's payload unverified, for the
connection check's report only.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import SecretStr

#: Tokens are renewed this long before they expire (msal uses the same margin) ...
REFRESH_MARGIN = 300.0
#: ... or this share of their lifetime, for tokens that live less than 50 minutes.
REFRESH_SHARE = 0.1


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


@runtime_checkable
class TokenSource(Protocol):
    """Where OAuth2 access tokens come from: ``protocol/oauth/providers.py``'s providers,
    or a plain function (``CallableTokenSource``)."""

    client_id: str
    #: Microsoft Entra ID issues the tokens: the connection check's hints are Microsoft's.
    is_microsoft: bool

    def __call__(self) -> SecretStr:
        """A token that is valid now."""

    def fetch(self) -> AccessToken:
        """That token with what is known about it (expiry, scope, from the cache or not)."""

    def forget_token(self) -> None:
        """Drop a cached token the server refused, so the next one is new."""


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
