"""The session against our fault server: the failures Dovecot does not produce on demand.

Each test checks two things: the error is the specific one (with the server's reply and no
secret), and the mailbox is intact (a session that fails deletes nothing).
"""

from __future__ import annotations

import io
import logging
import socket
from contextlib import contextmanager

import pytest
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import (
    DuplicateUIDLError,
    InvalidUIDLError,
    MessageTooLargeError,
    POP3AuthError,
    POP3AuthResponseError,
    POP3ConnectionError,
    POP3InUseError,
    POP3LoginDelayError,
    POP3MailError,
    POP3ProtocolError,
    POP3ReplyError,
    POP3SysPermError,
    POP3SysTempError,
    POP3TimeoutError,
    POP3TLSError,
    STLSNotOfferedError,
    UntrustedCertificateError,
    WrongSecurityModeError,
)
from prefect_pop3mail.tasks.pop3.models import ConnectionSettings, LoginMethod, Security
from prefect_pop3mail.tasks.pop3.protocol.lineio import CHUNK, MAX_CAPA_BYTES, MAX_LISTING_BYTES
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from tests.conftest import sample_message
from tests.servers.faultserver import (
    FaultServer,
    cut_after,
    delay,
    drop,
    endless,
    raw,
    reply,
    trickle,
)

MESSAGES = [sample_message(i, body=f"Body {i}.\n.dot line\n") for i in range(1, 7)]


def settings_for(server: FaultServer, security: Security = Security.NONE, **overrides):
    values = dict(
        host="localhost" if server.ca_file else server.host,
        port=server.port,
        security=security,
        user=server.user,
        password=SecretStr(server.password),
        tls_ca_file=str(server.ca_file) if server.ca_file else None,
        timeout=5,
    )
    values.update(overrides)
    return ConnectionSettings(**values)


def crlf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


@contextmanager
def logged_in(settings: ConnectionSettings, **options):
    """A session that is closed, never QUIT, at the end: for tests that break it."""
    session = POP3Session(settings, **options)
    session.connect()
    try:
        session.login()
        yield session
    finally:
        session.close()


def retrieve_all(session: POP3Session, numbers, delete: bool = False, **kwargs):
    """number -> bytes, or number -> the error the server refused it with."""
    results: dict[int, bytes | POP3ReplyError] = {}
    for number, sink, refused in session.retrieve(numbers, lambda _n: io.BytesIO(), **kwargs):
        results[number] = refused if refused is not None else sink.getvalue()
        if delete and refused is None:
            session.dele(number)
    return results


@pytest.fixture
def server():
    with FaultServer(MESSAGES) as srv:
        yield srv


# --- streaming faults -------------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [None, False], ids=["pipelined", "sequential"])
def test_connection_dropped_mid_retr_deletes_nothing(server, pipelining):
    server.on("RETR", cut_after(200), args=("3",))
    # Pipelined, the hang-up may surface as a failed send of a DELE instead.
    with pytest.raises(POP3ConnectionError, match="middle of a message|connection lost"):
        with POP3Session(settings_for(server), pipelining=pipelining) as session:
            session.login()
            retrieve_all(session, range(1, 7), delete=True)
    assert server.messages == MESSAGES  # DELEs of 1 and 2 were sent, but no QUIT


def test_dropped_session_refuses_further_commands_and_quit(server):
    server.on("RETR", cut_after(50))
    session = POP3Session(settings_for(server))
    session.connect()
    session.login()
    with pytest.raises(POP3ConnectionError):
        session.retr(1, io.BytesIO())
    with pytest.raises(POP3ConnectionError, match="earlier error.*nothing was deleted"):
        session.quit()


def session_that_deletes(server: FaultServer) -> None:
    with POP3Session(settings_for(server)) as session:
        session.login()
        session.list()
        retrieve_all(session, [1, 2], delete=True)


def test_drop_at_a_byte_offset_anywhere_in_the_session_is_a_clean_error():
    with FaultServer(MESSAGES[:2]) as srv:
        session_that_deletes(srv)
    # Up to the reply to QUIT (the server commits before it answers: POP3's own race).
    quit_reply_at = srv.bytes_sent[0] - len(b"+OK bye\r\n")
    for offset in range(0, quit_reply_at, 23):  # the greeting, CAPA, login, LIST, RETRs
        with FaultServer(MESSAGES[:2]) as srv:
            srv.cut_output_at = offset
            with pytest.raises(POP3ConnectionError):
                session_that_deletes(srv)
            assert srv.messages == MESSAGES[:2], f"cut at byte {offset}"


@pytest.mark.parametrize("pipelining", [None, False], ids=["pipelined", "sequential"])
def test_err_on_retr_skips_that_message_only(server, pipelining):
    server.on("RETR", reply("-ERR [SYS/TEMP] message 2 is being scanned"), args=("2",))
    with POP3Session(settings_for(server), pipelining=pipelining) as session:
        session.login()
        results = retrieve_all(session, range(1, 7), delete=True)
    refused = results.pop(2)
    assert isinstance(refused, POP3SysTempError) and refused.retryable
    assert "being scanned" in refused.reply
    assert results == {n: crlf(MESSAGES[n - 1]) for n in (1, 3, 4, 5, 6)}
    assert server.messages == [MESSAGES[1]]  # only the refused one is left


def test_err_on_pipelined_dele_is_recorded_and_the_others_commit(server):
    server.on("DELE", reply("-ERR [SYS/PERM] read-only mailbox"), args=("2",))
    with POP3Session(settings_for(server)) as session:
        session.login()
        retrieve_all(session, range(1, 7), delete=True)
    assert list(session.refused_deletions) == [2]
    assert isinstance(session.refused_deletions[2], POP3SysPermError)
    assert "read-only" in str(session.refused_deletions[2])
    assert server.messages == [MESSAGES[1]]


def test_slow_server_hits_the_read_timeout(server):
    server.on("STAT", delay(1.5))
    with logged_in(settings_for(server, timeout=0.3)) as session:
        with pytest.raises(POP3TimeoutError, match=f"^{server.host}:{server.port} did not "
                           "answer STAT within 0.3 s"):
            session.stat()


def test_silent_server_times_out_on_the_greeting():
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never speaks
        host, port = listener.getsockname()
        settings = ConnectionSettings(host=host, port=port, security=Security.NONE, user="u",
                                      password=SecretStr("p"), timeout=0.3)
        # The server, the phase and the setting to change.
        with pytest.raises(POP3TimeoutError, match=rf"^{host}:{port} sent no greeting within "
                           r"0.3 s \(nothing received\); if the server is only slow, raise "
                           r"'Timeout \(seconds\)' \(timeout\)$"):
            POP3Session(settings).connect()


def test_connection_refused_is_a_connection_error():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
    settings = ConnectionSettings(host="127.0.0.1", port=port, security=Security.NONE,
                                  user="u", timeout=2)
    with pytest.raises(POP3ConnectionError, match=f"127.0.0.1:{port}"):
        POP3Session(settings).connect()


def test_server_that_lies_about_pipelining():
    with FaultServer(MESSAGES, pipelining="lie") as srv:
        with pytest.raises(POP3TimeoutError, match="PIPELINING.*pipelining off"):
            with POP3Session(settings_for(srv, timeout=0.5)) as session:
                session.login()
                assert session.pipelining  # it was offered
                retrieve_all(session, range(1, 7), delete=True)
        assert srv.messages == MESSAGES
        # The remedy the error names: the same server works with pipelining off.
        with POP3Session(settings_for(srv, timeout=2), pipelining=False) as session:
            session.login()
            results = retrieve_all(session, range(1, 7), delete=True)
        assert results == {n: crlf(m) for n, m in enumerate(MESSAGES, 1)}
        assert srv.messages == []


@pytest.mark.parametrize("garbage", [b"HELLO? \x00\xff\r\n", b"+Ok lower case\r\n", b"\r\n"])
def test_garbage_reply_is_a_protocol_error_and_ends_the_session(server, garbage):
    server.on("STAT", raw(garbage))
    with logged_in(settings_for(server)) as session:
        with pytest.raises(POP3ProtocolError, match="unexpected reply to STAT"):
            session.stat()
        with pytest.raises(POP3ConnectionError, match="earlier error"):
            session.noop()


def test_garbage_in_a_listing_is_a_protocol_error(server):
    server.on("UIDL", raw(b"+OK\r\n1 abc\r\nnot a listing\r\n.\r\n"))
    with logged_in(settings_for(server)) as session:
        with pytest.raises(POP3ProtocolError, match="malformed UIDL line"):
            session.uidl()


def test_ten_megabyte_body_line_without_crlf_then_hangup(server):
    writes: list[int] = []

    class Sink:
        def write(self, data: bytes) -> None:
            writes.append(len(data))

    server.on("RETR", raw(b"+OK\r\n" + b"x" * (10 << 20), close=True))
    with logged_in(settings_for(server, timeout=10)) as session:
        with pytest.raises(POP3ConnectionError, match="middle of a message"):
            session.retr(1, Sink())
    assert sum(writes) == 10 << 20 and max(writes) <= CHUNK  # streamed, never held whole
    assert server.messages == MESSAGES


def test_ten_megabyte_status_line_is_refused_early(server):
    server.on("STAT", raw(b"+OK " + b"9" * (10 << 20)))
    with logged_in(settings_for(server, timeout=10)) as session:
        with pytest.raises(POP3ProtocolError, match="too long"):
            session.stat()


def test_body_over_the_limit_ends_the_session_and_keeps_the_message(server):
    big = sample_message(9, body="x" * 70 + "\n" * 5000)
    with FaultServer([big, MESSAGES[0]]) as srv:
        with pytest.raises(MessageTooLargeError, match="limit of 1000"):
            with POP3Session(settings_for(srv)) as session:
                session.login()
                session.dele(2)
                retrieve_all(session, [1, 2], limit=1000)
        assert srv.messages == [big, MESSAGES[0]]


def test_bare_lf_and_final_line_without_newline_are_kept_exactly():
    stored = [b"Subject: lf\n\n.leading dot\n..two dots\nlast line without newline",
              b"Subject: mixed\r\n\nbare\rcr\n.\n"]
    with FaultServer(stored, bare_lf=True) as srv:
        with POP3Session(settings_for(srv)) as session:
            session.login()
            results = retrieve_all(session, [1, 2])
    assert results == {1: stored[0] + b"\n", 2: stored[1]}


def test_closing_retrieve_early_drains_the_pipeline(server):
    with POP3Session(settings_for(server)) as session:
        session.login()
        messages = session.retrieve(range(1, 7), lambda _n: io.BytesIO(), window=4)
        number, sink, _ = next(messages)
        session.dele(number)
        messages.close()  # RETR 2..4 were in flight
        assert session.stat() == (5, sum(server.size(m) for m in MESSAGES[1:]))
        assert session.uidl(2)  # still in step: the reply is to this command
    assert server.messages == MESSAGES[1:]


def test_pipelined_commands_travel_in_batches(server):
    with POP3Session(settings_for(server)) as session:
        session.login()
        assert len(retrieve_all(session, range(1, 7), window=64)) == 6
    retrs = [c for c in server.commands if c.startswith("RETR")]
    assert retrs == [f"RETR {n}" for n in range(1, 7)]
    # The first pipelined batch starts with two NOOPs that prove the server keeps them all.
    first = server.commands.index("RETR 1")
    assert server.commands[first - 2:first] == ["NOOP", "NOOP"]
    assert server.commands.count("NOOP") == 2


# --- bounded work per server (issue #11) ------------------------------------------------------
# A trickle never lets one read time out (a byte every 20 ms, timeout 0.5 s); without the
# per-reply deadline each of these would take the trickle's full length, minutes to hours.
TRICKLE = 100_000  # bytes: at one per 20 ms, over half an hour


def sent_to_last_session(server: FaultServer) -> int:
    """Bytes the server sent to the last session, once that session has ended there."""
    server.stop()  # waits for the session threads to record how they ended
    return server.bytes_sent[-1]


def assert_ended_and_intact(session: POP3Session, server: FaultServer) -> None:
    """The session closed itself (no QUIT, so nothing deleted) and says why."""
    with pytest.raises(POP3ConnectionError, match="earlier error.*nothing was deleted"):
        session.noop()
    assert server.messages == MESSAGES


def test_trickled_status_line_hits_the_reply_deadline(server):
    server.on("STAT", trickle(b"+OK " + b"1" * TRICKLE))
    with logged_in(settings_for(server, timeout=0.5)) as session:
        with pytest.raises(POP3TimeoutError, match="reply to STAT is too slow"):
            session.stat()
        assert_ended_and_intact(session, server)
    assert sent_to_last_session(server) < 2000  # gave up after about a second's worth


def test_trickled_message_body_hits_the_reply_deadline(server):
    server.on("RETR", trickle(b"+OK\r\n" + b"x" * TRICKLE), args=("2",))
    with logged_in(settings_for(server, timeout=0.5)) as session:
        results = {}
        with pytest.raises(POP3TimeoutError, match="reply to RETR is too slow"):
            for number, sink, _refused in session.retrieve([1, 2, 3], lambda _n: io.BytesIO()):
                results[number] = sink.getvalue()
        assert list(results) == [1]  # the message before the trickle arrived whole
        assert_ended_and_intact(session, server)


def test_trickled_greeting_hits_the_reply_deadline(server):
    server.on("GREETING", trickle(b"+OK " + b"g" * TRICKLE))
    with pytest.raises(POP3TimeoutError, match="reply to greeting is too slow"):
        POP3Session(settings_for(server, timeout=0.5)).connect()


def test_trickled_sasl_challenge_hits_the_reply_deadline(server):
    server.on("AUTH", trickle(b"+ " + b"A" * TRICKLE))
    session = POP3Session(settings_for(server, timeout=0.5, login_method=LoginMethod.PLAIN))
    session.connect()
    with pytest.raises(POP3TimeoutError, match="reply to AUTH is too slow"):
        session.login()
    assert_ended_and_intact(session, server)


@pytest.mark.parametrize(
    ("command", "piece", "cap"),
    [
        ("UIDL", b"1 " + b"u" * 70 + b"\r\n", MAX_LISTING_BYTES),
        ("LIST", b"1 " + b"9" * 70 + b"\r\n", MAX_LISTING_BYTES),
    ],
)
def test_endless_listing_stops_at_its_cap(server, command, piece, cap):
    server.on(command, endless(b"+OK\r\n", piece))
    with logged_in(settings_for(server, timeout=10)) as session:
        with pytest.raises(POP3ProtocolError, match=f"reply to {command} is longer than its "
                                                    f"cap of {cap} bytes"):
            session.uidl() if command == "UIDL" else session.list()
        assert_ended_and_intact(session, server)
    assert sent_to_last_session(server) < cap + (16 << 20)  # the cap and socket buffers


def test_huge_capa_stops_at_its_cap_during_connect(server):
    server.on("CAPA", endless(b"+OK\r\n", b"X-EXTENSION " + b"y" * 100 + b"\r\n"))
    with pytest.raises(POP3ProtocolError, match=f"reply to CAPA is longer than its cap of "
                                                f"{MAX_CAPA_BYTES} bytes"):
        POP3Session(settings_for(server, timeout=10)).connect()
    assert sent_to_last_session(server) < MAX_CAPA_BYTES + (16 << 20)


def test_endless_top_stops_at_its_limit(server):
    server.on("TOP", endless(b"+OK\r\n", b"X-Header: " + b"h" * 60 + b"\r\n"))
    with logged_in(settings_for(server, timeout=10)) as session:
        with pytest.raises(MessageTooLargeError, match="limit of 65536"):
            session.top(1, 0, limit=65536)
        assert_ended_and_intact(session, server)


@pytest.mark.parametrize("pipelining", [None, False], ids=["pipelined", "sequential"])
def test_endless_retr_stops_at_the_limit_and_keeps_the_mailbox(server, pipelining):
    server.on("RETR", endless(b"+OK\r\n", b"x" * 998 + b"\r\n"), args=("2",))
    limit = 1 << 20
    sinks: dict[int, io.BytesIO] = {}

    def open_sink(number: int) -> io.BytesIO:
        sinks[number] = io.BytesIO()
        return sinks[number]

    with logged_in(settings_for(server, timeout=10), pipelining=pipelining) as session:
        done = []
        with pytest.raises(MessageTooLargeError, match=f"limit of {limit}"):
            for number, _sink, _refused in session.retrieve([1, 2, 3], open_sink, limit=limit):
                done.append(number)
                session.dele(number)
        assert done == [1]
        assert len(sinks[2].getvalue()) <= limit  # nothing past the limit reached the sink
        assert_ended_and_intact(session, server)  # DELE 1 was sent, but never committed


INVALID_UIDLS = {
    2: (b"2 " + b"L" * 71, "71 characters long"),
    3: (b"3 bad\x01uid", "outside 0x21-0x7E"),
    4: ("4 caf\u00e9".encode(), "outside 0x21-0x7E"),
    5: (b"5", "missing"),
    6: (b"6 two words", "white space"),
}


def test_invalid_uidls_are_set_aside_per_message(server):
    lines = [b"1 good-1", *(line for line, _ in INVALID_UIDLS.values()), b"7 " + b"k" * 70]
    server.on("UIDL", raw(b"+OK\r\n" + b"".join(line + b"\r\n" for line in lines) + b".\r\n"))
    with logged_in(settings_for(server)) as session:
        assert session.uidl() == {1: "good-1", 7: "k" * 70}  # 70 characters is still fine
        assert sorted(session.invalid_uidls) == sorted(INVALID_UIDLS)
        for number, (_line, problem) in INVALID_UIDLS.items():
            error = session.invalid_uidls[number]
            assert type(error) is InvalidUIDLError and error.number == number
            assert f"message {number}:" in str(error) and problem in str(error)
            assert not error.retryable
        assert session.stat()[0] == len(MESSAGES)  # still in step with the server


def test_duplicate_uidls_set_aside_every_holder(server):
    listing = b"1 same\r\n2 other\r\n3 same\r\n4 twice-a\r\n4 twice-b\r\n5 same\r\n.\r\n"
    server.on("UIDL", raw(b"+OK\r\n" + listing))
    with logged_in(settings_for(server)) as session:
        assert session.uidl() == {2: "other"}
        shared = {n: e for n, e in session.invalid_uidls.items() if isinstance(e, DuplicateUIDLError)}
        assert sorted(shared) == [1, 3, 5]
        assert "also the UIDL of message 3, 5" in str(shared[1])
        assert {e.uidl for e in shared.values()} == {"same"}  # kept for the journal's prune
        assert "listed twice" in str(session.invalid_uidls[4])
        server.clear_faults()  # the next clean listing replaces the record
        assert len(session.uidl()) == len(MESSAGES) and session.invalid_uidls == {}


def test_invalid_uidl_of_one_message_asked_for_alone_is_raised(server):
    server.on("UIDL", reply("+OK 2 " + "L" * 80), args=("2",))
    with logged_in(settings_for(server)) as session:
        with pytest.raises(InvalidUIDLError, match="message 2: .*80 characters"):
            session.uidl(2)
        assert session.uidl(1) == {1: server._uids[0]}


# --- replies and response codes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "error", "retryable"),
    [
        ("-ERR [IN-USE] locked", POP3InUseError, True),
        ("-ERR [LOGIN-DELAY] wait 60 s", POP3LoginDelayError, True),
        ("-ERR [SYS/TEMP] disk busy", POP3SysTempError, True),
        ("-ERR [SYS/TEMP/QUOTA] later", POP3SysTempError, True),  # RFC 2449 hierarchy
        ("-ERR [sys/perm] gone for good", POP3SysPermError, False),
        ("-ERR [AUTH] bad credentials", POP3AuthResponseError, False),
        ("-ERR [UNKNOWN-CODE] no idea", POP3AuthError, False),
        ("-ERR no code", POP3AuthError, False),
    ],
)
def test_response_codes_map_to_distinct_errors_on_login(server, line, error, retryable):
    server.on("PASS", reply(line))
    with POP3Session(settings_for(server)) as session:
        with pytest.raises(error) as caught:
            session.login()
    assert type(caught.value) is error
    assert caught.value.reply == line and caught.value.retryable is retryable
    assert isinstance(caught.value, POP3MailError)


def test_refused_password_is_never_in_the_error_even_when_echoed(server):
    server.on("PASS", reply(f"-ERR [AUTH] wrong password {server.password}"))
    with POP3Session(settings_for(server)) as session:
        with pytest.raises(POP3AuthResponseError) as caught:
            session.login()
    assert server.password not in str(caught.value) and server.password not in repr(
        caught.value.args
    )
    assert "wrong password ****" in caught.value.reply


def test_err_on_user_is_a_login_failure(server):
    server.on("USER", reply("-ERR plain text logins are disabled"))
    with POP3Session(settings_for(server)) as session:
        with pytest.raises(POP3AuthError, match="disabled"):
            session.login()


def test_maildrop_in_use_by_another_session(server):
    with POP3Session(settings_for(server)) as first:
        first.login()
        with POP3Session(settings_for(server)) as second:
            with pytest.raises(POP3InUseError, match=r"\[IN-USE\]"):
                second.login()


def test_apop_login(server):
    with POP3Session(settings_for(server, login_method=LoginMethod.APOP)) as session:
        session.login()
        assert session.stat()[0] == len(MESSAGES)
    assert server.password not in " ".join(server.commands)  # only the digest travelled


# --- TLS ------------------------------------------------------------------------------------


def test_explicit_tls_without_stls_offered_fails_before_login(server):
    with pytest.raises(STLSNotOfferedError, match="does not offer STLS"):
        POP3Session(settings_for(server, security=Security.EXPLICIT)).connect()
    assert not any(c.startswith(("USER", "PASS")) for c in server.commands)


def test_explicit_tls_refused_stls_never_falls_back(ca):
    with FaultServer(MESSAGES, ca=ca) as srv:
        srv.on("STLS", reply("-ERR [SYS/TEMP] TLS unavailable"))
        with pytest.raises(POP3TLSError, match="refused STLS.*TLS unavailable"):
            POP3Session(settings_for(srv, security=Security.EXPLICIT)).connect()
        assert srv.commands == ["CAPA", "STLS"]


def test_stls_upgrade_failure_is_a_tls_error(ca):
    with FaultServer(MESSAGES, ca=ca) as srv:
        srv.on("STLS", raw(b"+OK go ahead\r\n", close=True))
        with pytest.raises(POP3TLSError, match="handshake"):
            POP3Session(settings_for(srv, security=Security.EXPLICIT)).connect()


def test_stls_response_injection_is_refused(ca):
    with FaultServer(MESSAGES, ca=ca) as srv:
        srv.on("STLS", raw(b"+OK begin TLS\r\n+OK injected\r\n"))
        with pytest.raises(POP3TLSError, match="before TLS began"):
            POP3Session(settings_for(srv, security=Security.EXPLICIT)).connect()


@pytest.mark.parametrize("security", [Security.EXPLICIT, Security.IMPLICIT])
def test_tls_modes_retrieve_and_delete(ca, security):
    mode = "implicit" if security is Security.IMPLICIT else "explicit-only"
    with FaultServer(MESSAGES, ca=ca, security=mode) as srv:
        with POP3Session(settings_for(srv, security=security)) as session:
            assert session.is_encrypted
            session.login()
            assert retrieve_all(session, [1, 2], delete=True) == {1: crlf(MESSAGES[0]),
                                                                   2: crlf(MESSAGES[1])}
        assert srv.messages == MESSAGES[2:]


def test_untrusted_certificate_is_refused(ca):
    with FaultServer(MESSAGES, ca=ca, security="implicit") as srv:
        with pytest.raises(POP3TLSError, match="not trusted"):
            POP3Session(settings_for(srv, security=Security.IMPLICIT,
                                     tls_ca_file=None)).connect()
        assert srv.commands == []


def test_implicit_tls_against_a_plain_port_says_so(server):
    with pytest.raises(WrongSecurityModeError, match=f"{server.host}:{server.port} speaks plain "
                                                     "POP3.*use port 995"):
        POP3Session(settings_for(server, security=Security.IMPLICIT)).connect()


@pytest.mark.parametrize("security", [Security.NONE, Security.EXPLICIT])
def test_plain_or_stls_against_an_implicit_tls_port_says_so(ca, security):
    with FaultServer(MESSAGES, ca=ca, security="implicit") as srv:
        with pytest.raises(WrongSecurityModeError, match="expects implicit TLS. Set Security "
                                                         "to 'Implicit SSL/TLS'"):
            POP3Session(settings_for(srv, security=security, timeout=60)).connect()
        assert srv.commands == []  # nothing was sent in plain text


def test_a_slow_greeting_on_a_plain_port_is_waited_for(server):
    """Silence past the greeting patience, then a greeting: the probe finds no TLS, and
    the session goes on as usual."""
    server.on("GREETING", delay(2.5), times=1)
    with POP3Session(settings_for(server, timeout=10)) as session:
        session.login()
        assert session.stat()[0] == len(MESSAGES)


def test_untrusted_certificate_error_names_issuer_and_settings(ca):
    with FaultServer(MESSAGES, ca=ca, security="implicit") as srv:
        with pytest.raises(UntrustedCertificateError) as caught:
            POP3Session(settings_for(srv, security=Security.IMPLICIT, tls_ca_file=None)).connect()
    text = str(caught.value)
    assert f"localhost:{srv.port} is not trusted" in text and "issued by" in text
    assert "trustme" in text and "tls_ca_file" in text and "tls_verify" in text


def test_missing_ca_file_names_the_field(ca, tmp_path):
    with FaultServer(MESSAGES, ca=ca, security="implicit") as srv:
        with pytest.raises(POP3MailError, match="tls_ca_file"):
            POP3Session(settings_for(srv, security=Security.IMPLICIT,
                                     tls_ca_file=str(tmp_path / "missing.pem"))).connect()


def test_plain_text_password_only_with_security_none_and_a_warning(server, caplog):
    with caplog.at_level(logging.WARNING, logger="pop3mail.session"):
        with POP3Session(settings_for(server)) as session:
            session.login()
    assert "UNENCRYPTED" in caplog.text and server.password not in caplog.text
    # A connection that is plain although TLS was configured never carries the password:
    # login() checks the socket itself, not only what connect() was asked to do.
    commands_before = len(server.commands)
    plain = POP3Session(settings_for(server))
    plain.connect()
    plain.settings = settings_for(server, security=Security.IMPLICIT)
    with pytest.raises(POP3TLSError, match="refusing to send the password"):
        plain.login()
    plain.close()
    assert server.commands[commands_before:] == ["CAPA"]


# --- SASL wire forms --------------------------------------------------------------------------


def test_xoauth2_two_step_form_microsoft_requires():
    with FaultServer(MESSAGES, tokens={"token-123"}) as srv:
        settings = settings_for(srv, password=None, login_method=LoginMethod.XOAUTH2,
                                token_provider=lambda: SecretStr("token-123"))
        with POP3Session(settings) as session:
            session.login()
            assert session.stat()[0] == len(MESSAGES)
        assert srv.commands[1] == "AUTH XOAUTH2"  # no initial response
        assert srv.commands[2].endswith("=") or srv.commands[2].isalnum()  # base64 alone


def test_xoauth2_initial_response_and_refused_token():
    with FaultServer(MESSAGES, tokens={"token-123"}) as srv:
        settings = settings_for(srv, password=None, login_method=LoginMethod.XOAUTH2,
                                sasl_initial_response=True,
                                token_provider=lambda: SecretStr("wrong-token"))
        with POP3Session(settings) as session:
            with pytest.raises(POP3AuthError) as caught:
                session.login()
        assert srv.commands[1].startswith("AUTH XOAUTH2 ")
        assert "wrong-token" not in str(caught.value)


@pytest.mark.parametrize("initial", [True, False])
def test_sasl_plain_both_forms(server, initial):
    settings = settings_for(server, login_method=LoginMethod.PLAIN, sasl_initial_response=initial)
    with POP3Session(settings) as session:
        session.login()
        assert session.noop().startswith(b"+OK")
    auth = [c for c in server.commands if c.startswith("AUTH")]
    assert auth == (["AUTH PLAIN " + auth[0].split(" ")[-1]] if initial else ["AUTH PLAIN"])


def test_drop_during_login_is_a_connection_error_not_an_auth_error(server):
    server.on("PASS", drop())
    with pytest.raises(POP3ConnectionError) as caught:
        with POP3Session(settings_for(server)) as session:
            session.login()
    assert not isinstance(caught.value, POP3AuthError)
