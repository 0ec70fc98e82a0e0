"""Fixtures: a Prefect test harness (for the tests marked ``prefect``), a real Dovecot, a
throwaway CA; and the checks that keep the server markers complete (tests/servers/)."""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from pydantic import SecretStr

import tests.servers as servers
from prefect_pop3mail.tasks.pop3.models import ConnectionSettings, Security
from tests.servers.dovecot import Dovecot, dovecot_unavailable_reason, start_dovecot
from tests.servers.tripwire import Tripwire

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


#: Fixtures that hand out a running real server, and the markers a test using one must carry
#: (a server's own start checks the same: tests/servers/__init__.py).
SERVER_FIXTURES = {
    "dovecot": ("Dovecot", ("dovecot", "interop")),
    "prefect_harness": ("the Prefect test server", ("prefect",)),
    "prefect_server": ("a Prefect server", ("prefect",)),
    "s3_server": ("moto's S3 server", ("s3",)),
    "sftp_server": ("sshd (SFTP)", ("sftp",)),
    "browser": ("Chromium", ("browser",)),
}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.get_closest_marker("prefect"):
            item.fixturenames.append("prefect_harness")  # started once, on first use


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Before any fixture starts a server: the test carries the marker of each it uses."""
    for fixture, (server, markers) in SERVER_FIXTURES.items():
        if fixture in item.fixturenames:
            servers.require_marker(item, server, *markers)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    servers.current_test = item
    try:
        return (yield)
    finally:
        servers.current_test = None


def pytest_sessionfinish(session, exitstatus) -> None:
    if servers.unmarked and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    for problem in servers.unmarked:
        terminalreporter.write_line(f"UNMARKED: {problem}", red=True)


@pytest.fixture(scope="session")
def _prefect_test_server() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def prefect_harness(_prefect_test_server) -> None:
    """Prefect's test server (SQLite in a temporary folder), started on first use and kept
    for the session; every test marked ``prefect`` gets it."""


@pytest.fixture(scope="session")
def _tripwire() -> Iterator[Tripwire]:
    tripwire = Tripwire()
    yield tripwire
    tripwire.stop()


@pytest.fixture(autouse=True)
def _no_prefect_unless_marked(request, _tripwire: Tripwire, monkeypatch) -> Iterator[None]:
    """A test not marked ``prefect`` that reaches for a Prefect API fails: the API it finds
    refuses every request and reports the test."""
    if request.node.get_closest_marker("prefect"):
        yield
        return
    monkeypatch.setenv("PREFECT_API_URL", _tripwire.api_url)
    monkeypatch.setenv("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "false")
    _tripwire.take()
    if "prefect.settings" in sys.modules:  # a settings context already made: override it
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: _tripwire.api_url}):
            yield
    else:
        yield
    if hits := _tripwire.take():
        problem = (f"{request.node.nodeid} reached for the Prefect API ({', '.join(hits[:3])}) "
                   "but is not marked @pytest.mark.prefect: mark it, so it gets the test server")
        servers.unmarked.append(problem)
        pytest.fail(problem)


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
