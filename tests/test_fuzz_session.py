"""Fuzzing the session with hostile servers: whatever bytes come back, the client raises an
error from its own tree (or succeeds), never hangs, and writes nothing outside the save
directory. A fixed budget in CI; POP3MAIL_SOAK=1 runs far more examples."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import InvalidUIDLError, POP3MailError
from prefect_pop3mail.tasks.pop3.models import (
    ConnectionSettings,
    ReceiveOptions,
    SaveOptions,
    Security,
)
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
from tests.servers.faultserver import FaultServer, raw
from tests.test_session_faults import logged_in, settings_for

SOAK = os.environ.get("POP3MAIL_SOAK") == "1"
EXAMPLES = 2000 if SOAK else 120

# Lines a POP3 server could plausibly send, mixed with arbitrary bytes.
PLAUSIBLE = [
    b"+OK", b"+OK ready <1.2@host>", b"-ERR no", b"-ERR [IN-USE] locked", b"-ERR [SYS/TEMP] x",
    b"+OK 2 200", b"1 100", b"2 100", b"1 uid-1", b"2 ../../etc/passwd", b".", b"..dot",
    b"PIPELINING", b"UIDL", b"USER", b"+ ", b"Subject: =?utf-8?b?w6k=?=", b"",
    b"Content-Type: multipart/mixed; boundary=\"b\"", b"--b", b"--b--",
    b"Content-Disposition: attachment; filename=\"../../x\"",
]
line = st.one_of(st.sampled_from(PLAUSIBLE), st.binary(max_size=300))
ending = st.sampled_from([b"\r\n", b"\n", b"\r", b""])
script = st.lists(st.tuples(line, ending), max_size=60).map(
    lambda parts: b"".join(a + b for a, b in parts))


class ScriptedServer:
    """Greets, then answers every connection with ``payload`` and hangs up."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            try:
                conn.sendall(b"+OK fuzz <1@fuzz>\r\n" + self.payload)
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(4096):  # read commands until the client goes
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def outside(root: Path, inside: Path) -> set[Path]:
    """Everything under ``root`` that is neither ``inside`` nor below it."""
    return {p for p in root.rglob("*") if p != inside and inside not in p.parents}


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=script)
def test_any_server_reply_ends_in_our_error_or_success(tmp_path_factory, payload):
    root = tmp_path_factory.mktemp("fuzz")
    save_dir = root / "mail"
    outside_before = outside(root, save_dir)
    server = ScriptedServer(payload)
    settings_ = ConnectionSettings(host="127.0.0.1", port=server.port, security=Security.NONE,
                                   user="fuzz", password=SecretStr("fuzz-pw"), timeout=2)
    try:
        receive_mailbox("fuzz", settings_, SaveOptions(directory=save_dir),
                        ReceiveOptions(remove_after_read=True, in_use_retries=0,
                                       max_message_size=1 << 20))
    except POP3MailError as exc:
        assert "fuzz-pw" not in str(exc)
    finally:
        server.close()
    assert outside(root, save_dir) == outside_before


# --- UIDL listings: any entry, one verdict per message --------------------------------------

uid_bytes = st.one_of(
    st.sampled_from([b"uid-1", b"uid-2", b"x" * 70, b"x" * 71, b"", b"a b", b"caf\xc3\xa9"]),
    st.binary(max_size=80).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")),
)
entries = st.lists(st.tuples(st.integers(1, 12), uid_bytes), max_size=30)


@pytest.fixture(scope="module")
def listing_server():
    with FaultServer([b"Subject: x\r\n\r\nx\r\n"]) as server:
        yield server


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(listing=entries)
def test_any_uidl_listing_gives_valid_unique_uidls_and_a_verdict_per_message(
    listing_server, listing
):
    wire = b"".join(b"%d %s\r\n" % (n, uid) for n, uid in listing)
    wire = b"".join(b"." + line if line.startswith(b".") else line
                    for line in wire.splitlines(keepends=True))
    listing_server.clear_faults()
    listing_server.on("UIDL", raw(b"+OK\r\n" + wire + b".\r\n"))
    with logged_in(settings_for(listing_server)) as session:
        valid = session.uidl()
        invalid = session.invalid_uidls
        assert session.noop().startswith(b"+OK")  # still in step with the server
    listed = {n for n, _ in listing}
    assert set(valid) | set(invalid) == listed and not set(valid) & set(invalid)
    assert len(set(valid.values())) == len(valid)  # unique
    assert all(0 < len(u) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in u)
               for u in valid.values())
    assert all(isinstance(e, InvalidUIDLError) and e.number == n for n, e in invalid.items())
