"""The session against a real Dovecot: every security mode and login method, pipelining on
and off, 1,000 messages, a 50 MB message, dot-stuffed lines, 8-bit and UTF-8 headers."""

from __future__ import annotations

import hashlib
import io
import logging

import pytest
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import (
    POP3AuthError,
    POP3AuthResponseError,
    POP3ReplyError,
    POP3TLSError,
)
from prefect_pop3mail.tasks.pop3.models import LoginMethod, Security
from prefect_pop3mail.tasks.pop3.protocol.lineio import CHUNK
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from tests.conftest import Mailbox, require_dovecot, sample_message
from tests.servers.dovecot import start_dovecot
from tests.servers.latency_proxy import LatencyProxy

pytestmark = pytest.mark.dovecot

MODES = [Security.NONE, Security.EXPLICIT, Security.IMPLICIT]


def crlf(message: bytes) -> bytes:
    """What a POP3 server sends for a stored message: CRLF line ends, a final CRLF."""
    text = message.replace(b"\r\n", b"\n")
    return (text if text.endswith(b"\n") else text + b"\n").replace(b"\n", b"\r\n")


def retrieve_all(session: POP3Session, delete: bool = False, **kwargs) -> dict[int, bytes]:
    numbers = sorted(session.list())
    results = {}
    for number, sink, refused in session.retrieve(numbers, lambda _n: io.BytesIO(), **kwargs):
        assert refused is None, refused
        results[number] = sink.getvalue()
        if delete:
            session.dele(number)
    return results


@pytest.fixture(scope="module")
def apop_dovecot(ca):
    """A Dovecot that also offers APOP (its passwords are stored in plain text)."""
    require_dovecot()
    server = start_dovecot(ca=ca, auth_mechanisms="plain login apop")
    yield server
    server.stop()


# --- security modes and login methods ----------------------------------------------------

LOGINS = {
    "user": dict(login_method=LoginMethod.USER_PASS),
    "apop": dict(login_method=LoginMethod.APOP),
    "plain-initial-response": dict(login_method=LoginMethod.PLAIN, sasl_initial_response=True),
    "plain-two-step": dict(login_method=LoginMethod.PLAIN, sasl_initial_response=False),
}


@pytest.mark.parametrize("login", LOGINS, ids=str)
@pytest.mark.parametrize("security", MODES, ids=lambda s: s.name.lower())
def test_every_security_mode_and_login_method(apop_dovecot, security, login):
    box = Mailbox(apop_dovecot)
    box.deliver(sample_message(1), sample_message(2))
    with POP3Session(box.settings(security, **LOGINS[login])) as session:
        assert session.is_encrypted is (security is not Security.NONE)
        assert b"<" in session.greeting  # the APOP timestamp
        session.login()
        assert session.stat() == (2, sum(session.list().values()))
        session.dele(1)
    assert box.count() == 1


def test_explicit_tls_reports_the_upgraded_connection(mailbox):
    with POP3Session(mailbox.settings(Security.EXPLICIT)) as session:
        assert "STLS" not in session.capabilities  # CAPA again after the upgrade
        version, subject, expires = session.tls_info()
        assert version in ("TLSv1.2", "TLSv1.3") and subject and expires


def test_plain_text_login_warns_loudly(mailbox, caplog):
    with caplog.at_level(logging.WARNING, logger="pop3mail.session"):
        with POP3Session(mailbox.settings(Security.NONE)) as session:
            session.login()
    assert "UNENCRYPTED" in caplog.text and mailbox.password not in caplog.text


def test_server_refusing_plain_text_is_a_login_error(mailbox, failing_login_source):
    settings = mailbox.settings(Security.NONE, source_address=failing_login_source)
    with POP3Session(settings) as session:
        assert "USER" not in session.capabilities  # Dovecot: not from a non-local address
        with pytest.raises(POP3AuthResponseError, match="[Pp]laintext") as caught:
            session.login()
    assert not caught.value.retryable and mailbox.password not in str(caught.value)


@pytest.mark.parametrize("login", ["user", "plain-two-step"])
def test_wrong_password_is_an_auth_error_without_the_secret(mailbox, failing_login_source,
                                                            login):
    wrong = "not-the-password-4711"
    settings = mailbox.settings(Security.IMPLICIT, host="127.0.0.1", password=SecretStr(wrong),
                                source_address=failing_login_source, **LOGINS[login])
    with POP3Session(settings) as session:
        with pytest.raises(POP3AuthError) as caught:
            session.login()
    assert not caught.value.retryable
    assert caught.value.reply.startswith("-ERR")
    assert wrong not in str(caught.value) and wrong not in caught.value.reply


def test_untrusted_certificate_is_refused(mailbox):
    with pytest.raises(POP3TLSError, match="not trusted"):
        POP3Session(mailbox.settings(Security.IMPLICIT, tls_ca_file=None)).connect()


def test_host_name_mismatch_is_refused_unless_checks_are_off(mailbox, caplog):
    # The certificate names localhost, 127.0.0.1 and ::1; 127.0.0.2 reaches the same server.
    with LatencyProxy("127.0.0.1", mailbox.server.pop3s_port, delay=0, host="127.0.0.2") as p:
        mismatch = mailbox.settings(Security.IMPLICIT, host=p.host, port=p.port)
        with pytest.raises(POP3TLSError, match="not trusted|mismatch"):
            POP3Session(mismatch).connect()
        unchecked = mismatch.model_copy(update={"tls_verify": False})
        with caplog.at_level(logging.WARNING, logger="pop3mail.session"):
            with POP3Session(unchecked) as session:
                session.login()
                assert session.is_encrypted
    assert "verification is OFF" in caplog.text


def test_ipv6(mailbox):
    if not mailbox.server.ipv6:
        pytest.skip("no IPv6 loopback on this machine")
    mailbox.deliver(sample_message(1))
    with POP3Session(mailbox.settings(Security.IMPLICIT, host="::1")) as session:
        session.login()
        assert retrieve_all(session) == {1: crlf(sample_message(1))}


# --- content ------------------------------------------------------------------------------

AWKWARD = [
    # Dot-stuffed lines of every kind, a line that is just a dot, no final newline.
    sample_message(1, body=".\n..\n...\n.dot first\n . not first\nx\n.\nlast line, no newline"),
    # 8-bit header bytes (Latin-1, undeclared) and raw UTF-8 headers (RFC 6532).
    sample_message(2, body="Gr\u00fc\u00dfe.\n").replace(b"Subject: Message 2",
                                                        b"Subject: Caf\xe9 cr\xe8me"),
    sample_message(3, Subject="Gr\u00fc\u00dfe aus K\u00f6ln \u2013 \u65e5\u672c",
                   From="J\u00fcrgen M\u00fcller <j\u00fcrgen@b\u00fccher.example>"),
    # A line far over poplib's 2,048 bytes.
    sample_message(4, body="L" * 100_000 + "\n"),
    # CRLF already in the file, and a line of only a CR-free dot at the end.
    b"Subject: crlf\r\n\r\nline\r\n.\r\n",
]


def test_awkward_content_arrives_byte_for_byte(mailbox):
    mailbox.deliver(*AWKWARD)
    with POP3Session(mailbox.settings(Security.IMPLICIT)) as session:
        session.login()
        got = retrieve_all(session)
        head = session.top(3, 0)
    assert got == {n: crlf(m) for n, m in enumerate(AWKWARD, 1)}
    assert crlf(AWKWARD[2]).split(b"\r\n\r\n")[0] + b"\r\n\r\n" == head


@pytest.mark.slow
def test_pipelining_on_and_off_give_identical_results_for_1000_messages(mailbox):
    messages = [sample_message(i, body=f"Line {i}.\n.dot\n" + "x" * (i % 300)) for i in range(995)]
    messages += AWKWARD
    mailbox.deliver(*messages)
    expected = sorted(crlf(m) for m in messages)
    with POP3Session(mailbox.settings(Security.IMPLICIT)) as session:
        session.login()
        assert session.pipelining
        pipelined = retrieve_all(session, window=64)
    with POP3Session(mailbox.settings(Security.IMPLICIT), pipelining=False) as session:
        session.login()
        assert not session.pipelining
        sequential = retrieve_all(session, delete=True)
    assert pipelined == sequential
    assert sorted(pipelined.values()) == expected
    assert mailbox.count() == 0  # the sequential session deleted all at QUIT


def test_pipelined_deletions_apply_at_quit_only(mailbox):
    mailbox.deliver(*[sample_message(i) for i in range(20)])
    with pytest.raises(RuntimeError):
        with POP3Session(mailbox.settings(Security.IMPLICIT)) as session:
            session.login()
            retrieve_all(session, delete=True)
            raise RuntimeError("the caller fails before the end")
    assert mailbox.count() == 20
    with POP3Session(mailbox.settings(Security.IMPLICIT)) as session:
        session.login()
        retrieve_all(session, delete=True)
    assert mailbox.count() == 0


def test_listing_commands_and_rset(mailbox):
    mailbox.deliver(*[sample_message(i) for i in range(3)])
    with POP3Session(mailbox.settings(Security.IMPLICIT)) as session:
        session.login()
        sizes, uidls = session.list(), session.uidl()
        assert len(uidls) == 3 and session.invalid_uidls == {}  # a real server's UIDLs pass
        assert session.list(2) == {2: sizes[2]} and session.uidl(3) == {3: uidls[3]}
        session.dele(2)
        session.noop()  # the pipelined DELE's reply is read before NOOP's
        with pytest.raises(POP3ReplyError, match="deleted"):
            session.retr(2, io.BytesIO())
        assert session.stat()[0] == 2
        session.rset()
        assert session.list() == sizes
    assert mailbox.count() == 3


class HashingSink:
    def __init__(self):
        self.hash = hashlib.sha256()
        self.size = 0
        self.largest_write = 0

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)
        self.largest_write = max(self.largest_write, len(data))


@pytest.mark.slow
def test_fifty_megabyte_message_streams_in_bounded_pieces(mailbox):
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ=+/.,;:\r\n"
    big = b"Subject: big\r\n\r\n" + line * (50 * 1024 * 1024 // len(line))
    mailbox.deliver(big)
    sink = HashingSink()
    with POP3Session(mailbox.settings(Security.IMPLICIT)) as session:
        session.login()
        assert session.retr(1, sink) == len(big)
    assert sink.hash.hexdigest() == hashlib.sha256(big).hexdigest()
    assert sink.largest_write <= CHUNK
