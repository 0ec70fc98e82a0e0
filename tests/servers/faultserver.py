"""A small, correct, threaded POP3 server with faults on demand, for what Dovecot cannot do.

Dovecot is the real server in the tests; this one exists for the faults a real server does
not produce when asked: a connection dropped in the middle of RETR, -ERR on any command, slow
replies, a server that lies about PIPELINING, garbage, endless lines and messages.

Without faults it is a correct RFC 1939/2449/2595/5034 server: USER/PASS, APOP, AUTH (PLAIN,
XOAUTH2, OAUTHBEARER, with or without an initial response), CAPA, STLS, STAT, LIST, UIDL, TOP,
RETR, DELE, RSET, NOOP, QUIT. One session at a time holds the maildrop ([IN-USE] for a
second), and DELE takes effect only at QUIT: a session that ends any other way deletes nothing.

API::

    from tests.servers.faultserver import (FaultServer, reply, drop, delay, raw, cut_after,
                                           trickle, endless)

    with FaultServer([b"Subject: a\\r\\n\\r\\nbody\\r\\n"], ca=ca, security="plain") as server:
        server.host, server.port, server.user, server.password, server.ca_file
        server.on("RETR", reply("-ERR [SYS/TEMP] try later"), args=("2",), times=1)
        server.on("DELE", drop())                     # hang up instead of answering
        server.on("RETR", cut_after(1000))            # answer, but hang up 1,000 bytes in
        server.on("STAT", delay(3))                   # answer 3 s late
        server.on("RETR", trickle(b"+OK\\r\\n" + body))   # one byte at a time, for ages
        server.on("UIDL", endless(b"+OK\\r\\n", b"1 a\\r\\n"))  # a listing that never ends
        server.on("GREETING", trickle(b"+OK hi\\r\\n"))  # faults on the greeting, too
        server.cut_output_at = 5000                   # hang up once 5,000 bytes were sent
        server.on("RETR", drop(), message=server.uids[2])  # that message, wherever its number
        server.listed_sizes[server.uids[0]] = 100     # LIST lies about that message's size
        server.deliver(b"Subject: new\r\n\r\nmail\r\n")  # mail arriving: returns its UIDLs
        ...connect a client...
        server.messages                               # the maildrop now (after QUITs)
        server.commands                               # every command line received, in order
        server.bytes_sent                             # bytes sent to each finished session
        server.sessions                               # how many connections were accepted

Constructor options: ``security`` "plain" (STLS offered when a CA is given), "implicit" (TLS
from the first byte) or "explicit-only" (USER/PASS refused before STLS); ``ca`` a trustme.CA
(the server's certificate covers localhost, 127.0.0.1 and ::1; ``ca_file`` is its PEM);
``pipelining`` True, False, or "lie" (CAPA lists PIPELINING, but each read from the socket
is taken as one command and the rest of the read is dropped, as naive servers do);
``bare_lf`` sends bodies with LF line ends as stored instead of CRLF (dot-stuffed all the
same); ``tokens`` OAuth2 bearer tokens that log ``user`` in; ``host`` "127.0.0.1" or "::1".

A fault is ``action(conn, args) -> bool``: return True when it handled the command (the normal
handler is skipped), False to go on with the normal handler. ``conn`` has ``send(bytes)``,
``sendline(str)``, ``close()`` and ``respond(command, args)`` (the normal handler). ``on()``
matches a command name, optionally its exact ``args`` or the UIDL of the ``message`` its first
argument names (message numbers move as messages are deleted; UIDLs do not), for ``times``
commands (None: always). Faults are checked in the order they were added; the first that
matches fires.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

Action = Callable[["Connection", list[str]], bool]

CHUNK = 64 * 1024


# --- fault actions ----------------------------------------------------------------------


def reply(line: str | bytes) -> Action:
    """Answer with ``line`` instead of the normal reply."""
    data = line.encode() if isinstance(line, str) else line

    def action(conn: Connection, args: list[str]) -> bool:
        conn.send(data + b"\r\n")
        return True

    return action


def raw(data: bytes, close: bool = False) -> Action:
    """Send ``data`` as it is (garbage, an endless line...), then hang up if ``close``."""

    def action(conn: Connection, args: list[str]) -> bool:
        for start in range(0, len(data), CHUNK):
            conn.send(data[start:start + CHUNK])
        if close:
            conn.close()
        return True

    return action


def drop() -> Action:
    """Hang up without answering."""

    def action(conn: Connection, args: list[str]) -> bool:
        conn.close()
        return True

    return action


def delay(seconds: float) -> Action:
    """Answer normally, ``seconds`` late."""

    def action(conn: Connection, args: list[str]) -> bool:
        time.sleep(seconds)
        return False

    return action


def cut_after(nbytes: int) -> Action:
    """Answer normally, but hang up once ``nbytes`` of this answer were sent."""

    def action(conn: Connection, args: list[str]) -> bool:
        conn.cut_output_at = conn.sent + nbytes
        return False

    return action


def trickle(data: bytes, interval: float = 0.02) -> Action:
    """Send ``data`` one byte every ``interval`` seconds: a stalled or hostile server that
    never lets a read time out. Stops early when the client hangs up."""

    def action(conn: Connection, args: list[str]) -> bool:
        for byte in data:
            if conn.closed:
                break
            conn.send(bytes([byte]))
            time.sleep(interval)
        return True

    return action


def endless(head: bytes, piece: bytes) -> Action:
    """Send ``head``, then ``piece`` over and over until the client hangs up (an endless
    listing, CAPA or message)."""

    def action(conn: Connection, args: list[str]) -> bool:
        conn.send(head)
        block = piece * max(1, CHUNK // len(piece))
        while not conn.closed:
            conn.send(block)
        return True

    return action


@dataclass
class _Fault:
    command: str
    action: Action
    args: tuple[str, ...] | None
    times: int | None
    message: str | None = None


# --- the server --------------------------------------------------------------------------


class FaultServer:
    """A threaded POP3 server on loopback. Use as a context manager, or start()/stop()."""

    def __init__(
        self,
        messages: Iterable[bytes] = (),
        *,
        user: str = "alice",
        password: str = "secret-password",
        security: str = "plain",
        ca=None,
        pipelining: bool | str = True,
        bare_lf: bool = False,
        tokens: Iterable[str] = (),
        host: str = "127.0.0.1",
    ):
        if security not in ("plain", "implicit", "explicit-only"):
            raise ValueError(f"security: unknown mode {security!r}")
        if security != "plain" and ca is None:
            raise ValueError(f"security {security!r} needs a ca")
        self.messages: list[bytes] = list(messages)
        self.user, self.password = user, password
        self.security = security
        self.pipelining = pipelining
        self.bare_lf = bare_lf
        self.tokens = set(tokens)
        self.host = host
        self.commands: list[str] = []
        self.sessions = 0
        #: Bytes sent to each finished session, in the order they ended.
        self.bytes_sent: list[int] = []
        #: Hang up any session once this many bytes were sent to it.
        self.cut_output_at: int | None = None
        #: UIDL -> the size LIST and STAT report for that message (a server that lies).
        self.listed_sizes: dict[str, int] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._maildrop_lock = threading.Lock()
        self._connections: set[Connection] = set()
        self._uid_seed = os.urandom(4).hex()
        self._uids = [f"{self._uid_seed}-{i}" for i in range(len(self.messages))]
        self._delivered = len(self.messages)  # the next UIDL's number: never one reused
        self._dir: Path | None = None
        self.ca_file: Path | None = None
        self.tls_context: ssl.SSLContext | None = None
        if ca is not None:
            self._setup_tls(ca)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _TCPServer((host, 0), _Handler, family, self)
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def _setup_tls(self, ca) -> None:
        import tempfile

        self._dir = Path(tempfile.mkdtemp(prefix="pop3mail-faultserver-"))
        self.ca_file = self._dir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("localhost", "127.0.0.1", "::1").configure_cert(context)
        self.tls_context = context

    # lifecycle

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            live = list(self._connections)
        for conn in live:
            conn.close()
        if self._thread:
            self._thread.join(5)
        deadline = time.monotonic() + 5  # let session threads record how they ended
        while self._connections and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # faults

    def deliver(self, *messages: bytes) -> list[str]:
        """New mail: ``messages`` join the maildrop (for sessions that log in from now on);
        returns their UIDLs."""
        with self._lock:
            first, self._delivered = self._delivered, self._delivered + len(messages)
            uids = [f"{self._uid_seed}-{n}" for n in range(first, self._delivered)]
            self.messages += messages
            self._uids += uids
        return uids

    @property
    def uids(self) -> list[str]:
        """The UIDLs of the messages in the maildrop now, in order."""
        with self._lock:
            return list(self._uids)

    def on(self, command: str, action: Action, *, args: Iterable[str] | None = None,
           times: int | None = None, message: str | None = None) -> None:
        """Run ``action`` for ``command`` (with exactly ``args``, or about the message whose
        UIDL is ``message``, when given)."""
        fault = _Fault(command.upper(), action, tuple(args) if args is not None else None, times,
                       message)
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _fault_for(self, command: str, args: list[str], conn: Connection | None = None
                   ) -> Action | None:
        with self._lock:
            for fault in self._faults:
                if fault.message is not None and (conn is None or conn.uid(args) != fault.message):
                    continue
                if fault.command == command and fault.args in (None, tuple(args)):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault.action
        return None

    # maildrop

    def _commit(self, deleted: set[int]) -> None:
        """Apply a session's deletions (0-based indexes) at QUIT."""
        with self._lock:
            keep = [i for i in range(len(self.messages)) if i not in deleted]
            self.messages = [self.messages[i] for i in keep]
            self._uids = [self._uids[i] for i in keep]

    def _snapshot(self) -> tuple[list[bytes], list[str]]:
        with self._lock:
            return list(self.messages), list(self._uids)

    def wire_lines(self, message: bytes) -> list[bytes]:
        """The message's lines with the line ends it is sent with (CRLF, or as stored)."""
        lines = message.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        if self.bare_lf:
            return [line + b"\n" for line in lines]
        return [line.rstrip(b"\r") + b"\r\n" for line in lines]

    def size(self, message: bytes) -> int:
        """The size LIST and STAT report: the message as sent, before dot-stuffing."""
        return sum(len(line) for line in self.wire_lines(message))

    def wire_body(self, message: bytes) -> bytes:
        """The message as RETR sends it, dot-stuffed and terminated."""
        out = [b"." + line if line.startswith(b".") else line
               for line in self.wire_lines(message)]
        out.append(b".\n" if self.bare_lf else b".\r\n")
        return b"".join(out)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, family, owner: FaultServer):
        self.address_family = family
        self.owner = owner
        super().__init__(address, handler)


class Connection:
    """One client session on the server side."""

    def __init__(self, server: FaultServer, sock: socket.socket):
        self.server = server
        self.sock = sock
        self.sent = 0
        self.cut_output_at = server.cut_output_at
        self.closed = False
        self.tls = False
        self._rfile = sock.makefile("rb")
        self.user: str | None = None
        self.authenticated = False
        self.holds_lock = False
        self.deleted: set[int] = set()
        self.stamp = f"<{os.getpid()}.{time.time_ns()}@faultserver>"
        self.messages: list[bytes] = []
        self.uids: list[str] = []

    # output

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.cut_output_at is not None and self.sent + len(data) >= self.cut_output_at:
            data = data[: max(0, self.cut_output_at - self.sent)]
            self._sendall(data)
            self.close()
            return
        self._sendall(data)

    def _sendall(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
            self.sent += len(data)
        except OSError:
            self.close()

    def sendline(self, text: str) -> None:
        self.send(text.encode() + b"\r\n")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    # input

    def readline(self) -> bytes:
        if self.server.pipelining == "lie":
            # A naive server: each recv is one command; anything after its first line is lost.
            data = self.sock.recv(65536)
            return data.split(b"\n", 1)[0] + b"\n" if data else b""
        return self._rfile.readline(65536)

    def start_tls(self) -> None:
        assert self.server.tls_context is not None
        self.sock = self.server.tls_context.wrap_socket(self.sock, server_side=True)
        self._rfile = self.sock.makefile("rb")
        self.tls = True

    # session

    def run(self) -> None:
        srv = self.server
        if srv.security == "implicit":
            try:
                self.start_tls()
            except (ssl.SSLError, OSError):
                self.close()
                return
        greeting = srv._fault_for("GREETING", [])
        if greeting is None or not greeting(self, []):
            self.sendline(f"+OK faultserver ready {self.stamp}")
        while not self.closed:
            try:
                line = self.readline()
            except (OSError, ValueError):
                break
            if not line:
                break
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            with srv._lock:
                srv.commands.append(text)
            words = text.split(" ")
            command, args = words[0].upper(), [w for w in words[1:] if w]
            action = srv._fault_for(command, args, self)
            if action is not None and action(self, args):
                continue
            if not self.closed:
                self.respond(command, args)
        self.close()
        if self.holds_lock:
            srv._maildrop_lock.release()
            self.holds_lock = False

    def respond(self, command: str, args: list[str]) -> None:
        """The normal handler of a command."""
        handler = getattr(self, f"cmd_{command.lower()}", None)
        if handler is None:
            self.sendline(f"-ERR unknown command {command[:20]}")
            return
        if command in _TRANSACTION and not self.authenticated:
            self.sendline("-ERR log in first")
            return
        handler(args)

    # authorization state

    def cmd_capa(self, args: list[str]) -> None:
        srv = self.server
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "USER"]
        if srv.pipelining:
            caps.append("PIPELINING")
        if srv.tls_context is not None and not self.tls:
            caps.append("STLS")
        caps.append("SASL PLAIN XOAUTH2 OAUTHBEARER")
        self.send(("+OK\r\n" + "".join(c + "\r\n" for c in caps) + ".\r\n").encode())

    def cmd_stls(self, args: list[str]) -> None:
        if self.server.tls_context is None or self.tls:
            self.sendline("-ERR STLS not available")
            return
        self.sendline("+OK begin TLS")
        try:
            self.start_tls()
        except (ssl.SSLError, OSError):
            self.close()

    def _plain_refused(self) -> bool:
        if self.server.security == "explicit-only" and not self.tls:
            self.sendline("-ERR [AUTH] plain text login refused, use STLS first")
            return True
        return False

    def cmd_user(self, args: list[str]) -> None:
        if self._plain_refused():
            return
        self.user = args[0] if args else ""
        self.sendline("+OK send PASS")

    def cmd_pass(self, args: list[str]) -> None:
        if self._plain_refused():
            return
        password = " ".join(args)
        self._login(self.user == self.server.user and password == self.server.password)

    def cmd_apop(self, args: list[str]) -> None:
        expected = hashlib.md5((self.stamp + self.server.password).encode()).hexdigest()
        self._login(args == [self.server.user, expected])

    def cmd_auth(self, args: list[str]) -> None:
        if not args:
            self.send(b"+OK\r\nPLAIN\r\nXOAUTH2\r\nOAUTHBEARER\r\n.\r\n")
            return
        mechanism = args[0].upper()
        if mechanism not in ("PLAIN", "XOAUTH2", "OAUTHBEARER"):
            self.sendline("-ERR unsupported mechanism")
            return
        if len(args) > 1:
            response = args[1]
        else:
            self.sendline("+ ")
            response = self.readline().decode("ascii", "replace").strip()
        if response == "*":
            self.sendline("-ERR authentication cancelled")
            return
        try:
            decoded = base64.b64decode(response, validate=True).decode("utf-8")
        except ValueError:
            self.sendline("-ERR malformed base64")
            return
        if mechanism == "PLAIN":
            _authzid, user, password = (decoded.split("\0") + ["", "", ""])[:3]
            self._login(user == self.server.user and password == self.server.password)
            return
        fields = dict(f.split("=", 1) for f in decoded.replace(",", "\x01").split("\x01")
                      if "=" in f)
        user = fields.get("user") or fields.get("a")
        token = fields.get("auth", "").removeprefix("Bearer ")
        if user == self.server.user and token in self.server.tokens:
            self._login(True)
            return
        # Like Google and Microsoft: a JSON error as a challenge, then -ERR.
        error = base64.b64encode(b'{"status":"401","schemes":"bearer"}').decode()
        self.sendline(f"+ {error}")
        self.readline()
        self._login(False)

    def _login(self, ok: bool) -> None:
        if not ok:
            self.sendline("-ERR [AUTH] invalid credentials")
            return
        if not self.server._maildrop_lock.acquire(timeout=1):
            self.sendline("-ERR [IN-USE] maildrop is locked by another session")
            return
        self.holds_lock = True
        self.authenticated = True
        self.messages, self.uids = self.server._snapshot()
        self.sendline("+OK logged in")

    # transaction state

    def _message(self, args: list[str]) -> int | None:
        try:
            index = int(args[0]) - 1
        except (IndexError, ValueError):
            self.sendline("-ERR message number required")
            return None
        if not 0 <= index < len(self.messages) or index in self.deleted:
            self.sendline("-ERR no such message")
            return None
        return index

    def uid(self, args: list[str]) -> str | None:
        """The UIDL of the message a command's first argument names, if it names one."""
        try:
            index = int(args[0]) - 1
        except (IndexError, ValueError):
            return None
        return self.uids[index] if 0 <= index < len(self.uids) else None

    def _size(self, index: int) -> int:
        lie = self.server.listed_sizes.get(self.uids[index])
        return self.server.size(self.messages[index]) if lie is None else lie

    def _live(self) -> list[int]:
        return [i for i in range(len(self.messages)) if i not in self.deleted]

    def cmd_stat(self, args: list[str]) -> None:
        live = self._live()
        self.sendline(f"+OK {len(live)} {sum(self._size(i) for i in live)}")

    def _listing(self, args: list[str], value: Callable[[int], object]) -> None:
        if args:
            index = self._message(args)
            if index is not None:
                self.sendline(f"+OK {index + 1} {value(index)}")
            return
        lines = "".join(f"{i + 1} {value(i)}\r\n" for i in self._live())
        self.send(f"+OK\r\n{lines}.\r\n".encode())

    def cmd_list(self, args: list[str]) -> None:
        self._listing(args, self._size)

    def cmd_uidl(self, args: list[str]) -> None:
        self._listing(args, lambda i: self.uids[i])

    def _send_body(self, body: bytes) -> None:
        for start in range(0, len(body), CHUNK):
            self.send(body[start:start + CHUNK])

    def cmd_retr(self, args: list[str]) -> None:
        index = self._message(args)
        if index is not None:
            self.send(f"+OK {self._size(index)} octets\r\n".encode())
            self._send_body(self.server.wire_body(self.messages[index]))

    def cmd_top(self, args: list[str]) -> None:
        index = self._message(args)
        if index is None:
            return
        try:
            count = int(args[1])
        except (IndexError, ValueError):
            self.sendline("-ERR TOP needs a line count")
            return
        head, sep, rest = self.messages[index].replace(b"\r\n", b"\n").partition(b"\n\n")
        body_lines = rest.split(b"\n")[:count] if count else []
        self.sendline("+OK top of message follows")
        self._send_body(self.server.wire_body(b"\n".join([head, b"", *body_lines])))

    def cmd_dele(self, args: list[str]) -> None:
        index = self._message(args)
        if index is not None:
            self.deleted.add(index)
            self.sendline(f"+OK message {index + 1} deleted")

    def cmd_rset(self, args: list[str]) -> None:
        self.deleted.clear()
        self.sendline("+OK")

    def cmd_noop(self, args: list[str]) -> None:
        self.sendline("+OK")

    def cmd_quit(self, args: list[str]) -> None:
        if self.authenticated:
            self.server._commit({i for i in self.deleted})
        self.sendline("+OK bye")
        self.close()


_TRANSACTION = {"STAT", "LIST", "UIDL", "TOP", "RETR", "DELE", "RSET"}


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        owner: FaultServer = self.server.owner  # type: ignore[attr-defined]
        self.request.settimeout(30)  # a forgotten client never pins a thread for long
        conn = Connection(owner, self.request)
        with owner._lock:
            owner.sessions += 1
            owner._connections.add(conn)
        try:
            conn.run()
        finally:
            with owner._lock:
                owner._connections.discard(conn)
                owner.bytes_sent.append(conn.sent)
