"""Fixtures: a session-wide Prefect test harness, a real Dovecot, a throwaway CA."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.models import ConnectionSettings, Security
from tests.servers.dovecot import Dovecot, dovecot_unavailable_reason, start_dovecot

# Tests talk to loopback only: no telemetry from Prefect's test server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Dovecot slows down repeated failed logins from one address; tests that fail a login on
# purpose take their own loopback source address from here.
_failing_login_sources = (f"127.0.0.{i}" for i in itertools.count(3))


def require_server(what: str, reason: str | None) -> None:
    """Skip when ``reason`` says a real server cannot run here; in CI, fail instead."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI must run {what}, but: {reason}")
    pytest.skip(reason)


def require_dovecot() -> None:
    require_server("the Dovecot tests", dovecot_unavailable_reason())


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def dovecot(ca: trustme.CA) -> Iterator[Dovecot]:
    """One Dovecot for the session; tests get isolated users from ``mailbox``."""
    require_dovecot()
    server = start_dovecot(ca=ca)
    yield server
    server.stop()


class Mailbox:
    """A fresh Dovecot user with helpers to deliver mail and build settings."""

    def __init__(self, server: Dovecot):
        self.server = server
        self.user, self.password = server.add_user()

    def deliver(self, *messages: bytes) -> None:
        self.server.deliver(self.user, *messages)

    def count(self) -> int:
        return self.server.message_count(self.user)

    def port_for(self, security: Security) -> int:
        return self.server.pop3s_port if security is Security.IMPLICIT else self.server.pop3_port

    def settings(self, security: Security = Security.IMPLICIT, **overrides) -> ConnectionSettings:
        values = dict(
            host="localhost" if security is not Security.NONE else "127.0.0.1",
            port=self.port_for(security),
            security=security,
            user=self.user,
            password=SecretStr(self.password),
            tls_ca_file=str(self.server.ca_file),
            timeout=10,
        )
        values.update(overrides)
        return ConnectionSettings(**values)

    def block(self, save_directory: Path, security: Security = Security.IMPLICIT, **fields):
        from prefect_pop3mail.blocks import POP3MailConfiguration

        values = dict(
            server="localhost" if security is not Security.NONE else "127.0.0.1",
            port=self.port_for(security),
            security=security,
            user=self.user,
            password=self.password,
            tls_ca_file="" if security is Security.NONE else str(self.server.ca_file),
            save_directory=str(save_directory),
            timeout=10,
        )
        values.update(fields)
        return POP3MailConfiguration(**values)


@pytest.fixture
def mailbox(dovecot: Dovecot) -> Mailbox:
    return Mailbox(dovecot)


@pytest.fixture
def failing_login_source() -> str:
    """A loopback source address of its own, for a test that fails a login on purpose."""
    return next(_failing_login_sources)


def sample_message(i: int = 0, body: str = "Hello.\n", **headers: str) -> bytes:
    """A small realistic message."""
    fields = {
        "From": "Alice Example <alice@example.org>",
        "To": "bob@example.org",
        "Subject": f"Message {i}",
        "Date": "Thu, 26 Nov 2026 10:00:00 +0000",
        "Message-ID": f"<msg-{i}@example.org>",
        "MIME-Version": "1.0",
        "Content-Type": "text/plain; charset=utf-8",
    }
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    head = "".join(f"{k}: {v}\n" for k, v in fields.items())
    return (head + "\n" + body).encode("utf-8")
