"""The token request is bounded (issue #23): a provider that sends a byte now and then, each
read well inside the timeout, used to hold the run indefinitely; a reply had no size cap.
Against the local HTTPS identity provider, on both token endpoints (msal's and ours)."""

from __future__ import annotations

import time

import pytest

from prefect_pop3mail.tasks.pop3.errors import OAuth2EndpointUnreachableError, OAuth2ResponseError
from prefect_pop3mail.tasks.pop3.protocol.oauth import transport
from tests.test_oauth_tokens import ENDPOINTS, fresh_providers, idp, provider_for  # noqa: F401


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_a_trickling_token_endpoint_ends_at_the_timeout(idp, kind, monkeypatch):  # noqa: F811
    client = idp.register("trickle@example.org")
    monkeypatch.setattr(idp, "trickle", 0.25)  # a byte every 0.25 s: no read times out
    started = time.monotonic()
    with pytest.raises(OAuth2EndpointUnreachableError) as caught:
        provider_for(idp, kind, client, timeout=1.5)()
    elapsed = time.monotonic() - started
    assert "did not answer in time" in str(caught.value) and caught.value.retryable
    # The whole request ends with the timeout, where each reply (over 200 bytes at 4 bytes
    # a second) would take a minute or more.
    assert elapsed < 1.5 + 3, elapsed


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_a_token_reply_over_the_size_cap_is_refused(idp, kind, monkeypatch):  # noqa: F811
    client = idp.register("huge@example.org")
    provider = provider_for(idp, kind, client)
    if kind == "entra":
        provider._application()  # discovery as usual; the token reply is the huge one
    monkeypatch.setattr(idp, "pad_reply", transport.MAX_REPLY_BYTES)
    with pytest.raises(OAuth2ResponseError) as caught:
        provider()
    assert "over 1 MB (MAX_REPLY_BYTES)" in str(caught.value)
    assert client.secret not in str(caught.value)


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_a_reply_just_under_the_cap_still_gives_a_token(idp, kind, monkeypatch):  # noqa: F811
    client = idp.register("big@example.org")
    monkeypatch.setattr(idp, "pad_reply", transport.MAX_REPLY_BYTES - 64 * 1024)
    assert provider_for(idp, kind, client)().get_secret_value()
