"""Secrets on the session's paths (issue #12): whatever a server sends back - the password
with its spaces, the SASL response in base64, the decoded payload, a challenge, a multi-line
reply to PASS - no form of a secret reaches an exception's text, its causes, or a log line.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import (
    POP3AuthError,
    POP3MailError,
    POP3ProtocolError,
)
from prefect_pop3mail.tasks.pop3.models import LoginMethod
from prefect_pop3mail.tasks.pop3.protocol.lineio import QUOTE
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from prefect_pop3mail.tasks.pop3.redaction import secret_forms
from tests.servers.faultserver import FaultServer, raw
from tests.test_session_faults import settings_for

SOAK = os.environ.get("POP3MAIL_SOAK") == "1"
USER = "alice"


def plain_payload(secret: str) -> bytes:
    return f"\0{USER}\0{secret}".encode()


def xoauth2_payload(secret: str) -> bytes:
    return f"user={USER}\x01auth=Bearer {secret}\x01\x01".encode()


def echoes(secret: str) -> dict[str, bytes]:
    """The forms a server could send a secret back in."""
    forms = {
        "as sent": secret.encode(),
        "upper case": secret.upper().encode(),
        "base64": base64.b64encode(secret.encode()),
        "PLAIN response": base64.b64encode(plain_payload(secret)),
        "PLAIN payload": plain_payload(secret),
        "XOAUTH2 response": base64.b64encode(xoauth2_payload(secret)),
        "XOAUTH2 payload": xoauth2_payload(secret),
    }
    try:
        forms["Latin-1"] = secret.encode("latin-1")
    except UnicodeEncodeError:
        pass
    return forms


def leaks(secret: str, text: str) -> list[str]:
    """The forms of ``secret`` found in ``text`` (as text, and as Python escapes them)."""
    found = []
    for name, form in echoes(secret).items():
        decoded = form.decode("utf-8", "replace")
        if decoded in text or repr(form)[2:-1] in text or repr(decoded)[1:-1] in text:
            found.append(name)
    return found


def error_texts(error: BaseException) -> Iterator[str]:
    """str() and repr() of the error and of every error it was raised from or during."""
    seen: BaseException | None = error
    while seen is not None:
        yield str(seen)
        yield repr(seen)
        yield str(getattr(seen, "reply", ""))
        seen = seen.__cause__ or seen.__context__


def challenge_then_refuse(payload: bytes):
    """XOAUTH2's error report: a challenge (base64 JSON), then -ERR after the client's ack."""
    def action(conn, args) -> bool:
        conn.send(b"+ " + base64.b64encode(payload) + b"\r\n")
        conn.readline()
        conn.sendline("-ERR [AUTH] invalid credentials")
        return True
    return action


def replies(echo: bytes) -> dict[str, object]:
    """Replies to the login command that carry ``echo``: each a fault action."""
    return {
        "-ERR": raw(b"-ERR [AUTH] wrong password " + echo + b" (try again)\r\n"),
        "challenge": raw(b"+ " + echo + b"\r\n"),
        "+OK with garbage": raw(b"+OK welcome " + echo + b"\r\n"),
        "multi-line +OK": raw(b"+OK\r\n" + echo + b"\r\n.\r\n"),
        "line too long": raw(b"-ERR " + b"z" * (QUOTE - 9) + echo + b"z" * 9000 + b"\r\n"),
        "JSON challenge": challenge_then_refuse(b'{"status":"401","token":"' + echo + b'"}'),
    }


LOGINS = {
    "USER/PASS": ("PASS", dict(login_method=LoginMethod.USER_PASS)),
    "SASL PLAIN": ("AUTH", dict(login_method=LoginMethod.PLAIN, sasl_initial_response=True)),
    "SASL PLAIN two-step": ("AUTH", dict(login_method=LoginMethod.PLAIN)),
    "XOAUTH2": ("AUTH", dict(login_method=LoginMethod.XOAUTH2, sasl_initial_response=True)),
}


class Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def recorded_logs() -> Iterator[Recorder]:
    logger = logging.getLogger("pop3mail")
    recorder, level = Recorder(), logger.level
    logger.addHandler(recorder)
    logger.setLevel(logging.DEBUG)
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)


def attempt(server: FaultServer, secret: str, login: str, reply: str, echo: bytes) -> list[str]:
    """Log in with ``secret`` while the server answers with ``reply`` carrying ``echo``, then
    use the session once; return every text a user could see: errors and log lines."""
    command, options = LOGINS[login]
    server.clear_faults()
    server.on(command, replies(echo)[reply], times=1)
    if options["login_method"] is LoginMethod.XOAUTH2:
        options = dict(options, password=None, token_provider=lambda: SecretStr(secret))
    else:
        options = dict(options, password=SecretStr(secret))
    texts: list[str] = []
    with recorded_logs() as logs:
        session = POP3Session(settings_for(server, **options))
        try:
            session.connect()
            session.login()
            session.stat()  # a multi-line reply to the login surfaces here
        except POP3MailError as exc:
            texts.extend(error_texts(exc))
        finally:
            session.close()
    return texts + logs.lines


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer([b"Subject: x\r\n\r\nbody\r\n"], user=USER) as srv:
        yield srv


# --- examples a reader can follow ----------------------------------------------------------

SECRETS = {
    "spaces": "correct horse battery staple",
    "regex metacharacters": r"p@ss.w*rd+(x)?[y]{2}|^$\1",
    "non-ASCII": "pässwörd-ünïcödé-密码",
    "quotes and backslashes": "it's a \"secret\" \\ really",
}


@pytest.mark.parametrize("reply", list(replies(b"")), ids=str)
@pytest.mark.parametrize("login", list(LOGINS), ids=str)
@pytest.mark.parametrize("kind", list(SECRETS), ids=str)
def test_echoed_secret_in_every_form_never_reaches_errors_or_logs(server, kind, login, reply):
    secret = SECRETS[kind]
    for form, echo in echoes(secret).items():
        texts = attempt(server, secret, login, reply, echo)
        assert not [leak for text in texts for leak in leaks(secret, text)], (form, texts)


def test_refused_password_error_keeps_the_rest_of_the_reply(server):
    texts = attempt(server, SECRETS["spaces"], "USER/PASS", "-ERR", SECRETS["spaces"].encode())
    assert "PASS failed: -ERR [AUTH] wrong password **** (try again)" in texts


def test_a_partial_echo_of_a_multi_word_password_is_cut_too(server):
    secret = SECRETS["spaces"]
    texts = attempt(server, secret, "USER/PASS", "-ERR", b"horse battery")
    assert "wrong password **** **** (try again)" in texts[0]


def test_a_challenge_in_reply_to_pass_is_a_protocol_error_without_the_secret(server):
    server.clear_faults()
    server.on("PASS", raw(b"+ " + base64.b64encode(b"you sent: hunter2-hunter2") + b"\r\n"))
    session = POP3Session(settings_for(server, password=SecretStr("hunter2-hunter2")))
    session.connect()
    with pytest.raises(POP3ProtocolError, match="unexpected reply to PASS") as caught:
        session.login()
    assert "hunter2" not in str(caught.value)
    assert base64.b64encode(b"hunter2-hunter2").decode()[:12] not in str(caught.value)


def test_json_error_challenge_keeps_its_detail_without_the_token(server):
    token = "tok-" + "Z" * 40
    texts = attempt(server, token, "XOAUTH2", "JSON challenge", token.encode())
    assert any('server said: {"status":"401","token":"****"}' in t for t in texts), texts
    assert not [t for t in texts if token in t]


def test_secret_forms_cover_the_encodings_a_server_echoes():
    forms = secret_forms("pässwort two")
    for expected in ("pässwort two".encode(), "PÄSSWORT TWO".encode(), "pässwort two".encode(
            "latin-1"), base64.b64encode("pässwort two".encode()).rstrip(b"="), b"p\xc3\xa4sswort",
            b"two" * 0 + b"p\xe4sswort"):
        assert expected in forms
    assert b"two" not in forms  # a short common word alone is not evidence of the secret


# --- the property: any secret, any echo, any shape -----------------------------------------

secrets = st.one_of(
    st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=8,
             max_size=40),
    st.builds(" ".join, st.lists(st.text("abcXYZ.*+?[](){}|^$\\", min_size=4, max_size=9),
                                 min_size=2, max_size=4)),
).filter(lambda s: s.strip() == s and len(s.strip()) >= 8)


@settings(max_examples=1500 if SOAK else 120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(secret=secrets, login=st.sampled_from(list(LOGINS)),
       reply=st.sampled_from(list(replies(b""))), form=st.sampled_from(list(echoes("x"))),
       prefix=st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")))
def test_property_no_form_of_any_secret_leaks(server, secret, login, reply, form, prefix):
    echo = echoes(secret).get(form, secret.encode())
    texts = attempt(server, secret, login, reply, prefix + echo)
    assert not [leak for text in texts for leak in leaks(secret, text)], texts


def test_the_property_test_would_see_a_leak():
    """The oracle itself: an unredacted echo is found in every form."""
    secret = SECRETS["non-ASCII"]
    for form, echo in echoes(secret).items():
        error = POP3AuthError("PASS", b"-ERR " + echo)
        assert leaks(secret, " ".join(error_texts(error))), form


@settings(max_examples=2000 if SOAK else 300, deadline=None)
@given(secret=secrets, pieces=st.lists(st.one_of(st.binary(max_size=12),
                                                  st.sampled_from(["as sent", "upper case",
                                                                   "base64", "PLAIN response",
                                                                   "XOAUTH2 response"])),
                                        max_size=8))
def test_property_the_redactor_leaves_no_form_and_keeps_the_rest(secret, pieces):
    from prefect_pop3mail.tasks.pop3.redaction import MASK, Redactor

    forms = echoes(secret)
    data = b"".join(forms[p] if isinstance(p, str) else p for p in pieces)
    redactor = Redactor()
    redactor.remember(secret)
    out = redactor(data)
    assert not leaks(secret, out.decode("utf-8", "replace"))
    if MASK not in out:
        assert out == data  # nothing was found, nothing was changed


@pytest.mark.parametrize("secret", ["0000000\uf900", "pass\u2126word", "caf\u00e9 \ufb01x"])
def test_secrets_that_normalisation_changes_are_masked_as_sent(secret):
    """Found by the property test: a singleton decomposition changes a secret even in NFC,
    so the form as typed must be masked too."""
    from prefect_pop3mail.tasks.pop3.redaction import Redactor

    redact = Redactor()
    redact.remember(secret)
    echoed = f"-ERR [AUTH] wrong password {secret} (try again)".encode()
    assert secret.encode() not in redact(echoed)
    assert redact(echoed).startswith(b"-ERR [AUTH] wrong password ")
