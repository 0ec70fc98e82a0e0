"""Fuzzing the session with hostile servers: whatever bytes come back, the client raises an
error from its own tree (or succeeds), never hangs, and writes nothing outside the save
directory. A fixed budget in CI; POP3MAIL_SOAK=1 runs far more examples."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import POP3MailError
from prefect_pop3mail.tasks.pop3.models import (
    ConnectionSettings,
    ReceiveOptions,
    SaveOptions,
    Security,
)
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox

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
