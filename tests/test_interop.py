"""The interoperability matrix: the same scenarios against every real POP3 server we can
run (tests/servers/matrix.py), Dovecot as the reference.

Each server's row covers every security mode and login method (a combination the server
does not offer must fail cleanly, with the error a user can act on), receive all and
receive one with removal on and off, new-only, the dry run, attachments and a message over
1 MB, pipelining where offered and the fallback where not, and one run of the flow.
Behaviour adapts to what a server offers (CAPA, or its absence), never to its name.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from email.message import EmailMessage
from pathlib import Path

import pytest
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import (
    POP3AuthError,
    POP3TLSError,
    STLSNotOfferedError,
)
from prefect_pop3mail.tasks.pop3.models import (
    ConnectionSettings,
    LoginMethod,
    ReceiveOptions,
    ReceiveReport,
    SaveOptions,
    Security,
)
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from prefect_pop3mail.tasks.pop3.receiver import MailboxReceiver
from tests.conftest import require_server, sample_message
from tests.servers import matrix

pytestmark = pytest.mark.interop

MODES = [Security.NONE, Security.EXPLICIT, Security.IMPLICIT]
METHODS = [LoginMethod.USER_PASS, LoginMethod.APOP, LoginMethod.PLAIN]


def require(name: str) -> None:
    require_server("the interoperability matrix", matrix.unavailable(name))


@pytest.fixture(scope="module", params=list(matrix.SERVERS))
def server(request, ca):
    """One running server per row; module scope, so each starts once."""
    require(request.param)
    running = matrix.start(request.param, ca)
    yield running
    running.stop()


class Box:
    """A fresh user on ``server`` and the settings to reach it."""

    def __init__(self, server):
        self.server = server
        self.user, self.password = server.add_user()

    def deliver(self, *messages: bytes) -> None:
        self.server.deliver(self.user, *messages)

    def count(self) -> int:
        return self.server.message_count(self.user)

    def settings(self, security: Security | None = None, **overrides) -> ConnectionSettings:
        security = security or matrix.best_mode(self.server)
        # A mode the server lacks is tried against its plain port: the failure must be clean.
        port = self.server.modes.get(security, self.server.modes[Security.NONE])
        values = dict(
            host="127.0.0.1" if security is Security.NONE else "localhost",
            port=port, security=security, user=self.user,
            password=SecretStr(self.password), tls_ca_file=str(self.server.ca_file), timeout=10,
        )
        values.update(overrides)
        return ConnectionSettings(**values)

    def receive(self, directory: Path, limit: int | None = None, security=None,
                **options) -> ReceiveReport:
        receiver = MailboxReceiver(
            "interop", self.settings(security), SaveOptions(directory=directory),
            ReceiveOptions(max_messages=limit, **options),
        )
        return receiver.run()


@pytest.fixture
def box(server) -> Box:
    return Box(server)


def with_attachments(i: int, attachments: dict[str, bytes]) -> bytes:
    message = EmailMessage()
    message["From"] = "Alice Example <alice@example.org>"
    message["To"] = "bob@example.org"
    message["Subject"] = f"Attachments {i}"
    message["Message-ID"] = f"<att-{i}-{uuid.uuid4().hex}@example.org>"
    message.set_content("See the attached files.\n")
    for name, data in attachments.items():
        message.add_attachment(data, maintype="application", subtype="octet-stream",
                               filename=name)
    return message.as_bytes()


def subjects(report: ReceiveReport) -> list[str]:
    return sorted(m.subject for m in report.received)


# --- security modes x login methods -------------------------------------------------------

@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
@pytest.mark.parametrize("security", MODES, ids=lambda s: s.name.lower())
def test_login(server, box, security, method):
    """Every offered combination logs in (encrypted unless None); every other one fails
    with the error that says why, and never falls back to plain text."""
    box.deliver(sample_message(1))
    settings = box.settings(security, login_method=method)
    if security not in server.modes:
        expected = STLSNotOfferedError if security is Security.EXPLICIT else POP3TLSError
        with pytest.raises(expected):
            POP3Session(settings).connect()
        return
    with POP3Session(settings) as session:
        assert session.is_encrypted is (security is not Security.NONE)
        if method in server.login_methods:
            session.login()
            assert session.stat()[0] == 1
        else:
            with pytest.raises(POP3AuthError) as refused:
                session.login()
            assert box.password not in str(refused.value)


def test_wrong_password(server, box, failing_login_source):
    """Each server words a refused login its own way ([AUTH] or no code, "bad password?"),
    and some hang up after it: all of them are POP3AuthError, and the password is never
    quoted."""
    settings = box.settings(password=SecretStr("wrong-" + box.password),
                            source_address=failing_login_source)
    # Outside the session: popa3d and solid-pop3d hang up after the -ERR, so no QUIT.
    with pytest.raises(POP3AuthError) as refused, POP3Session(settings) as session:
        session.login()
    assert not refused.value.retryable
    assert box.password not in str(refused.value)


# --- receiving ------------------------------------------------------------------------------

@pytest.mark.parametrize("remove", [False, True], ids=["keep", "remove"])
def test_receive_all(box, tmp_path, remove):
    box.deliver(*(sample_message(i, body=f"Body {i}.\n") for i in range(3)))

    report = box.receive(tmp_path, remove_after_read=remove)

    assert subjects(report) == ["Message 0", "Message 1", "Message 2"]
    assert not report.failed
    assert all(m.deleted is remove for m in report.received)
    assert all(m.original_path.path.is_file() for m in report.received)
    assert {m.text_path.read_text().strip() for m in report.received} == {
        "Body 0.", "Body 1.", "Body 2."}
    assert box.count() == (0 if remove else 3)


@pytest.mark.parametrize("remove", [False, True], ids=["keep", "remove"])
def test_receive_one_at_a_time(box, tmp_path, remove):
    """MAIL_RECEIVE: one message per run; the next run takes the next one."""
    box.deliver(sample_message(1), sample_message(2))

    first = box.receive(tmp_path, limit=1, remove_after_read=remove)
    second = box.receive(tmp_path, limit=1, remove_after_read=remove)
    third = box.receive(tmp_path, limit=1, remove_after_read=remove)

    assert [len(r.received) for r in (first, second, third)] == [1, 1, 0]
    assert subjects(first) + subjects(second) == ["Message 1", "Message 2"]
    assert box.count() == (0 if remove else 2)


def test_new_messages_only(box, tmp_path):
    box.deliver(sample_message(1), sample_message(2))
    assert len(box.receive(tmp_path).received) == 2
    box.deliver(sample_message(3))

    again = box.receive(tmp_path)
    everything = box.receive(tmp_path, new_messages_only=False)

    assert subjects(again) == ["Message 3"]
    assert again.skipped_known == 2
    assert subjects(everything) == ["Message 1", "Message 2", "Message 3"]
    assert box.count() == 3


def test_dry_run(box, tmp_path):
    box.deliver(sample_message(1), sample_message(2, From="Carol <carol@example.org>"))

    report = box.receive(tmp_path, dry_run=True, remove_after_read=True)

    assert not report.received
    assert [(m.number, m.subject) for m in report.listed] == [(1, "Message 1"),
                                                              (2, "Message 2")]
    assert "carol@example.org" in report.listed[1].sender  # from TOP's headers
    assert all(m.size > 0 and m.uidl for m in report.listed)
    assert box.count() == 2
    assert not any(p.is_file() and p.suffix == ".eml" for p in tmp_path.rglob("*"))


def test_attachments_and_a_message_over_1_mb(box, tmp_path):
    small = {"report.pdf": os.urandom(40_000), "notes.txt": b"plain\r\nnotes\r\n" * 50}
    big = {"archive.bin": os.urandom(900_000)}  # about 1.2 MB once in base64
    box.deliver(with_attachments(1, small), with_attachments(2, big))

    report = box.receive(tmp_path, remove_after_read=True)

    assert not report.failed
    by_subject = {m.subject: m for m in report.received}
    for subject, files in (("Attachments 1", small), ("Attachments 2", big)):
        saved = {a.filename: a for a in by_subject[subject].attachments}
        assert set(saved) == set(files)
        for name, data in files.items():
            assert saved[name].sha256 == hashlib.sha256(data).hexdigest()
            assert saved[name].path.read_bytes() == data
    assert by_subject["Attachments 2"].size > 1_000_000
    assert box.count() == 0


def test_dot_lines_and_a_long_line(box, tmp_path):
    """Dot-stuffing both ways, and a line far over RFC 1939's 512 octets, on every server."""
    lines = [".", "..", ".starts with a dot", "x" * 5000, "ends."]
    box.deliver(sample_message(1, body="\n".join(lines) + "\n"))

    report = box.receive(tmp_path)

    (mail,) = report.received
    assert mail.text_path.read_text().splitlines()[:5] == lines


@pytest.mark.parametrize("pipelining", [None, False], ids=["offered", "off"])
def test_pipelining_used_where_offered(server, box, tmp_path, pipelining):
    """PIPELINING is used only when CAPA offers it; without CAPA (or with pipelining off),
    commands go one at a time, and the results are the same."""
    box.deliver(*(sample_message(i) for i in range(12)))
    with POP3Session(box.settings(), pipelining=pipelining) as session:
        session.login()
        offered = "PIPELINING" in session.capabilities
        assert session.pipelining is (offered and pipelining is None)

    report = box.receive(tmp_path, remove_after_read=True, pipelining=pipelining,
                         pipeline_window=4)

    assert subjects(report) == sorted(f"Message {i}" for i in range(12))
    assert box.count() == 0


@pytest.mark.prefect
def test_flow_receive_all_mail(server, box, tmp_path):
    """One run of the flow per server, through a saved POP3MailConfiguration block."""
    from prefect_pop3mail.blocks import POP3MailConfiguration
    from prefect_pop3mail.flows import receive_all_mail

    security = matrix.best_mode(server)
    box.deliver(sample_message(1), with_attachments(2, {"a.bin": b"\x00\x01" * 100}))
    name = f"interop-{uuid.uuid4().hex[:10]}"
    POP3MailConfiguration(
        server="localhost" if security is not Security.NONE else "127.0.0.1",
        port=server.modes[security], security=security, user=box.user,
        password=box.password, login_method=server.login_methods[-1],
        tls_ca_file="" if security is Security.NONE else str(server.ca_file),
        save_directory=str(tmp_path), remove_from_server_after_read=True, timeout=10,
    ).save(name)

    state = receive_all_mail(name, return_state=True)

    assert state.is_completed(), state.message
    received = state.result()
    assert sorted(m.subject for m in received) == ["Attachments 2", "Message 1"]
    assert all(m.deleted for m in received)
    assert box.count() == 0


# --- quirks a matrix row cannot show ---------------------------------------------------------

def test_login_delay_from_debians_default_cyrus(ca, tmp_path):
    """Debian's Cyrus allows one POP3 login a minute per user (popminpoll: 1). The second
    run in that minute is refused with [LOGIN-DELAY]: a retryable error that says so,
    after the retries, and nothing is lost or deleted."""
    from prefect_pop3mail.tasks.pop3.errors import POP3LoginDelayError
    from tests.servers.cyrus import CyrusPop3d

    require("cyrus-pop3d")
    server = CyrusPop3d(ca=ca, popminpoll=1).start()
    try:
        box = Box(server)
        box.deliver(sample_message(1))
        with POP3Session(box.settings()) as session:
            assert session.capabilities["LOGIN-DELAY"] == ["60"]
            session.login()
        box.deliver(sample_message(2))

        with pytest.raises(POP3LoginDelayError) as refused:
            box.receive(tmp_path, remove_after_read=True, in_use_retries=1,
                        in_use_backoff=0.01)

        assert refused.value.retryable
        assert "LOGIN-DELAY" in str(refused.value)
        assert box.count() == 2
    finally:
        server.stop()
