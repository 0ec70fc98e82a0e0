"""A POP3 client session (RFC 1939, 2449, 2595, 5034): one method per protocol command.

Differences from poplib: bodies stream to a sink, no line-length cap breaks the session,
SASL (PLAIN, XOAUTH2, OAUTHBEARER), RFC 2449 PIPELINING, and errors mapped from the
RFC 2449/3206 response codes. Secrets never reach logs or exception text.
"""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import logging
import re
import selectors
import socket
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime

from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import (
    RESPONSE_CODE_ERRORS,
    TIMEOUT_HINT,
    ConfigurationError,
    DuplicateUIDLError,
    InvalidUIDLError,
    POP3AuthError,
    POP3ConnectionError,
    POP3ConnectionRefusedError,
    POP3HostNotFoundError,
    POP3MailError,
    POP3ProtocolError,
    POP3ReplyError,
    POP3TimeoutError,
    POP3TLSError,
    STLSNotOfferedError,
    UntrustedCertificateError,
    WrongSecurityModeError,
)
from prefect_pop3mail.tasks.pop3.models import (
    DEFAULT_PORTS,
    ConnectionSettings,
    LoginMethod,
    Security,
)
from prefect_pop3mail.tasks.pop3.protocol import probes
from prefect_pop3mail.tasks.pop3.protocol.lineio import (
    MAX_CAPA_BYTES,
    MAX_LISTING_BYTES,
    QUOTE,
    LineReader,
)
from prefect_pop3mail.tasks.pop3.protocol.tls import client_context
from prefect_pop3mail.tasks.pop3.redaction import Redactor
from prefect_pop3mail.tasks.pop3.sinks import DISCARD, Sink

log = logging.getLogger("pop3mail.session")

# RFC 2449 section 8: codes are hierarchical ("SYS/TEMP/..." is a SYS/TEMP) and we match
# them case-insensitively, as some servers write them in lower case.
_RESPONSE_CODE = re.compile(rb"^-ERR \[([A-Za-z0-9/-]+)")
_APOP_STAMP = re.compile(rb"<[^<>@]+@[^<>]+>")
# A -ERR to these is a refused login. USER is here because servers that refuse plain text
# (Dovecot on an unencrypted connection) say so in the reply to USER.
_AUTH_COMMANDS = {"USER", "PASS", "APOP", "AUTH"}
_PIPELINING_CHECK = "NOOP (pipelining check)"
#: RFC 1939 section 7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E.
_UIDL = re.compile(rb"[\x21-\x7e]{1,70}")
_NUMBER = re.compile(rb"[0-9]{1,12}")
# A whole listing in one pass, when it is as servers send it: "number uid" or "number
# size", one space, a line each (joined with LF, as Latin-1: a character per byte). Any other
# listing goes line by line, which says what is wrong with it.
_UIDL_LISTING = re.compile(r"(?:[1-9][0-9]{0,11} [\x21-\x7e]{1,70}\n)*")
_LIST_LISTING = re.compile(r"(?:[1-9][0-9]{0,11} [0-9]{1,12}\n)*")
#: One good UIDL listing line: the message number and the UIDL, in the white space that
#: bytes.split() takes.
_UIDL_LINE = re.compile(rb"(?:%s)*([0-9]{1,12})(?:%s)+([\x21-\x7e]{1,70})(?:%s)*"
                        % ((rb"[ \t\n\r\x0b\x0c]",) * 3))
#: What getaddrinfo says when the name does not exist: a retry within the run cannot help.
#: EAI_AGAIN ("try again": the name server did not answer) is not here, so it is retried.
_NAME_NOT_FOUND = {getattr(socket, name) for name in
                   ("EAI_NONAME", "EAI_NODATA", "EAI_ADDRFAMILY", "EAI_FAIL", "EAI_SERVICE")
                   if hasattr(socket, name)}
#: How the errors tell the user to turn pipelining off (the per-call option).
_PIPELINING_OFF = "turn the option pipelining off (pop3mail receive --no-pipelining)"
#: Without implicit TLS, how long a port may stay silent before we look whether it waits
#: for a TLS handshake instead (a greeting that never comes would cost the whole timeout).
GREETING_PATIENCE = 2.0


def connect_error(settings: ConnectionSettings, exc: OSError | UnicodeError
                  ) -> POP3ConnectionError:
    """Why a connection could not be opened, naming the server and what to check. An
    unknown host and a refused connection are not retried; a timeout or an unreachable
    network may pass, and are."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, TimeoutError):
        return POP3TimeoutError(
            f"connecting to {where} timed out after {settings.timeout:g} s: nothing answered "
            "(a firewall, or the wrong POP3 Mail Server or POP3 port?); " + TIMEOUT_HINT)
    if isinstance(exc, UnicodeError):  # the IDNA codec: an empty or over-long label
        return POP3HostNotFoundError(
            f"cannot connect to {where}: {settings.host!r} is not a valid host name ({exc}); "
            "check 'POP3 Mail Server' (server)")
    if isinstance(exc, socket.gaierror) and exc.errno in _NAME_NOT_FOUND:
        return POP3HostNotFoundError(
            f"cannot connect to {where}: the host name {settings.host!r} is not known "
            f"({exc.strerror}); check 'POP3 Mail Server' (server)")
    if isinstance(exc, ConnectionRefusedError):
        return POP3ConnectionRefusedError(
            f"cannot connect to {where}: connection refused, nothing listens on port "
            f"{settings.port} there; check 'POP3 Mail Server' (server), 'POP3 port' (port) "
            "and 'Use secure connection (SSL)' (security)")
    return POP3ConnectionError(f"cannot connect to {where}: {exc.strerror or exc}")


def tls_context(settings: ConnectionSettings) -> ssl.SSLContext:
    """The shared client context (system CAs plus tls_ca_file), or unverified on request."""
    if not settings.tls_verify:
        log.warning(
            "TLS certificate verification is OFF for %s: anyone on the path can read the "
            "password and the mail. Use tls_ca_file for a private CA instead.",
            settings.host,
        )
    return client_context(settings.tls_ca_file, verify=settings.tls_verify)


class POP3Session:
    """A connected POP3 session. Use it as a context manager.

    Leaving the ``with`` block normally sends QUIT, which commits deletions. Leaving it by an
    exception only closes the socket: the server then deletes nothing (RFC 1939 section 6).
    A -ERR reply leaves the session usable; a transport or protocol fault (timeout, hang-up,
    garbage, a body over its limit) closes it at once, because later replies could no longer
    be matched to commands, and every later command, QUIT included, raises.
    """

    def __init__(self, settings: ConnectionSettings, *, pipelining: bool | None = None):
        """``pipelining``: None uses PIPELINING when the server offers it, False never does.
        (True cannot force it: RFC 2449 forbids pipelining to a server that does not offer
        it.) ``pipelining`` may also be set on the session after :meth:`capa`."""
        self.settings = settings
        self.greeting = b""
        self.capabilities: dict[str, list[str]] = {}
        self.pipelining = False
        self._allow_pipelining = pipelining is not False
        self._sock: socket.socket | None = None
        self._reader: LineReader | None = None
        self._pending: deque[str] = deque()
        self._out = bytearray()
        self._unsent = 0  # the last commands in _pending, still in _out
        self._pipelining_checked = False
        #: Every secret sent in this session, cut out of any server text we quote.
        self._redact = Redactor()
        #: Why the session was closed under the caller, for the error of the next command.
        self._broken: str | None = None
        #: DELEs the server refused (-ERR), with its reply; the messages stay on the server.
        self.refused_deletions: dict[int, POP3ReplyError] = {}
        self._deletions: deque[int] = deque()  # numbers of the DELEs in _pending, in order
        #: Messages the last full UIDL listing left out: their UIDL breaks RFC 1939 or is
        #: shared (number -> error). They cannot be journalled safely.
        self.invalid_uidls: dict[int, InvalidUIDLError] = {}

    # --- connection -----------------------------------------------------------------

    def __enter__(self) -> POP3Session:
        self.connect()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.quit()
        else:
            self.close()

    def connect(self) -> bytes:
        s = self.settings
        source = (s.source_address, 0) if s.source_address else None
        try:
            sock = socket.create_connection((s.host, s.port), s.timeout, source_address=source)
        except (OSError, UnicodeError) as exc:  # TimeoutError and socket.gaierror included
            raise connect_error(s, exc) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        try:
            if s.security is Security.IMPLICIT:
                self._start_tls(implicit=True)
            else:
                self._expect_plain_greeting()
            self._reader = self._new_reader()
            self.greeting = self._status("greeting")
            log.debug("S: %s", self.greeting.decode("utf-8", "replace"))
            self.capa()
            if s.security is Security.EXPLICIT:
                if "STLS" not in self.capabilities:
                    raise STLSNotOfferedError(
                        f"{s.host}:{s.port} does not offer STLS, and security is Explicit "
                        "SSL/TLS: refusing to continue without encryption"
                    )
                self.stls()
        except BaseException:
            self.close()
            raise
        return self.greeting

    @property
    def where(self) -> str:
        """The server as errors name it: host:port."""
        return f"{self.settings.host}:{self.settings.port}"

    def _new_reader(self) -> LineReader:
        assert self._sock is not None
        return LineReader(self._sock, self.settings.timeout, redact=self._redact,
                          peer=self.where)

    def _expect_plain_greeting(self) -> None:
        """A port that stays silent may be waiting for a TLS handshake (implicit TLS): ask
        it, instead of waiting the whole timeout for a greeting that never comes."""
        assert self._sock is not None
        s = self.settings
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            if selector.select(min(GREETING_PATIENCE, s.timeout)) or not probes.speaks_tls(s):
                return
        raise WrongSecurityModeError(
            f"the server at {s.host}:{s.port} sends no POP3 greeting and answers a TLS "
            f"handshake: it expects implicit TLS. Set Security to '{Security.IMPLICIT.value}' "
            f"for this port, or use port {DEFAULT_PORTS[s.security]} for '{s.security.value}'"
        )

    def _start_tls(self, implicit: bool = False) -> None:
        assert self._sock is not None
        s = self.settings
        try:
            self._sock = tls_context(s).wrap_socket(self._sock, server_hostname=s.host)
        except ssl.SSLCertVerificationError as exc:
            raise self._untrusted(exc) from exc
        except TimeoutError as exc:
            raise POP3TimeoutError(
                f"the TLS handshake with {self.where} timed out after {s.timeout:g} s; "
                + TIMEOUT_HINT) from exc
        except (ssl.SSLError, OSError) as exc:
            if implicit and probes.greets_in_plain_text(s):
                raise WrongSecurityModeError(
                    f"the server at {s.host}:{s.port} speaks plain POP3, not implicit TLS: set "
                    f"Security to '{Security.EXPLICIT.value}' (or '{Security.NONE.value}') for "
                    f"this port, or use port {DEFAULT_PORTS[Security.IMPLICIT]} for "
                    f"'{Security.IMPLICIT.value}'"
                ) from exc
            raise POP3TLSError(f"TLS handshake with {s.host}:{s.port} failed: {exc}") from exc

    def _untrusted(self, exc: ssl.SSLCertVerificationError) -> UntrustedCertificateError:
        """Say whose certificate it is, and name the two settings that decide trust."""
        s = self.settings
        der = probes.peer_certificate(s)
        seen = f"; it is {probes.describe_certificate(der)}" if der else ""
        trusted = (f"the system's CAs and those in TLS CA file {s.tls_ca_file}"
                   if s.tls_ca_file else "the system's CAs only")
        return UntrustedCertificateError(
            f"the certificate of {s.host}:{s.port} is not trusted ({exc.verify_message})"
            f"{seen}. Trusted are {trusted}. For a private or self-signed CA, set 'TLS CA "
            "file' (tls_ca_file) to the CA's PEM file; turning 'Verify TLS certificate' "
            "(tls_verify) off skips the check, for testing only"
        )

    @property
    def is_encrypted(self) -> bool:
        return isinstance(self._sock, ssl.SSLSocket)

    def tls_info(self) -> tuple[str | None, str | None, datetime | None]:
        """TLS version, certificate subject and expiry, or Nones on a plain connection."""
        if not isinstance(self._sock, ssl.SSLSocket):
            return None, None, None
        from cryptography import x509

        der = self._sock.getpeercert(binary_form=True)
        if not der:
            return self._sock.version(), None, None
        cert = x509.load_der_x509_certificate(der)
        expires = cert.not_valid_after_utc.astimezone(UTC)
        return self._sock.version(), cert.subject.rfc4514_string(), expires

    def close(self) -> None:
        """Close the socket without QUIT: the server deletes nothing."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        self._pending.clear()
        self._out = bytearray()
        self._unsent = 0

    def _give_up(self, error: Exception) -> None:
        """Close after a transport or protocol fault: the reply stream can no longer be
        trusted to line up with our commands, and QUIT would commit deletions."""
        if self._sock is not None:
            self._broken = f"{type(error).__name__}: {error}"
        self.close()

    # --- line layer -----------------------------------------------------------------

    def _send(self, command: str, line: str | None = None) -> None:
        """Queue ``command``; ``line``, when given, is the wire text and holds a secret."""
        log.debug("C: %s", command if line is None else f"{command} ****")
        self._out += ((command if line is None else line) + "\r\n").encode("utf-8")
        self._pending.append(command.split(" ", 1)[0].upper())
        self._unsent += 1

    def _flush(self) -> None:
        if not self._out:
            return
        if self._sock is None:
            raise self._not_connected()
        if self._unsent > 1 and self.pipelining and not self._pipelining_checked:
            self._check_pipelining()
        self._unsent = 0
        try:
            self._sock.sendall(self._out)
            if hasattr(socket, "TCP_QUICKACK"):
                # ACK the reply at once: servers that write it in pieces with Nagle on
                # (popa3d, solid-pop3d) would wait ~40 ms per command for a delayed ACK.
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except TimeoutError as exc:
            command = self._pending[-1] if self._pending else "a command"
            self._give_up(exc)
            raise POP3TimeoutError(
                f"sending {command} to {self.where} timed out after "
                f"{self.settings.timeout:g} s: the server does not read; {TIMEOUT_HINT}"
            ) from exc
        except OSError as exc:
            self._give_up(exc)
            raise POP3ConnectionError(f"connection lost: {exc.strerror or exc}") from exc
        finally:
            # A new buffer, not clear(): a send cut short leaves views of the old one alive
            # in its traceback, and resizing an exported bytearray raises BufferError.
            self._out = bytearray()

    def _check_pipelining(self) -> None:
        """Put two NOOPs before the first pipelined batch, in the same write.

        Some servers offer PIPELINING but take each read from the socket as one command and
        drop the rest. Replies would then be matched to the wrong commands: a message saved
        under another message's number. Both NOOPs must answer +OK before any later reply is
        trusted, and this costs no round trip."""
        self._pipelining_checked = True
        at = len(self._pending) - self._unsent
        self._out[:0] = b"NOOP\r\nNOOP\r\n"
        self._pending.insert(at, _PIPELINING_CHECK)
        self._pending.insert(at, _PIPELINING_CHECK)
        self._unsent += 2

    def _not_connected(self) -> POP3ConnectionError:
        if self._broken:
            return POP3ConnectionError(
                f"the session was closed after an earlier error ({self._broken}); "
                "nothing was deleted on the server"
            )
        return POP3ConnectionError("not connected")

    def _status(self, command: str) -> bytes:
        """Read one status line and raise the mapped error on -ERR."""
        if self._reader is None:
            raise self._not_connected()
        self._reader.begin(command)
        try:
            line = self._reader.status_line()
        except POP3TimeoutError as exc:
            in_flight = len(self._pending) + 1
            self._give_up(exc)
            if in_flight > 1 and self.pipelining:
                raise POP3TimeoutError(
                    f"no reply from {self.where} to {command} with {in_flight} pipelined "
                    "commands in flight: the server offers PIPELINING but may not honour it; "
                    + _PIPELINING_OFF
                ) from exc
            raise
        except POP3MailError as exc:
            self._give_up(exc)
            raise
        if line.startswith(b"+OK"):
            return line
        if command == _PIPELINING_CHECK:
            error = POP3ProtocolError(
                f"{self.where} offers PIPELINING but answered a pipelined NOOP with "
                f"something else; {_PIPELINING_OFF}", self._redact(line))
            self._give_up(error)
            raise error
        if line.startswith(b"-ERR"):
            raise _reply_error(command, line, self._redact)
        error = POP3ProtocolError(f"unexpected reply to {command}", self._redact(line))
        self._give_up(error)
        raise error

    def _copy_body(self, sink: Sink, limit: int | None = None) -> int:
        """The multi-line body that follows a +OK; a fault inside it ends the session."""
        if self._reader is None:
            raise self._not_connected()
        try:
            return self._reader.copy_body(sink, limit)
        except BaseException as exc:  # a failing sink leaves the body half read, too
            self._give_up(exc)
            raise

    def _reply(self) -> bytes:
        """Flush queued commands and read the reply to the oldest one.

        A refused DELE is recorded in ``refused_deletions``, not raised: one message the
        server will not delete must not undo the deletions of the others at QUIT.
        """
        self._flush()
        command = self._pending.popleft()
        if command != "DELE":
            return self._status(command)
        number = self._deletions.popleft()
        try:
            return self._status(command)
        except POP3ReplyError as refused:
            self.refused_deletions[number] = refused
            return b""

    def _shortcmd(self, command: str, line: str | None = None) -> bytes:
        self._drain()
        self._send(command, line)
        return self._reply()

    def _longcmd(self, command: str, max_bytes: int = MAX_LISTING_BYTES) -> list[bytes]:
        self._shortcmd(command)
        assert self._reader is not None
        try:
            return self._reader.body_lines(max_bytes)
        except POP3MailError as exc:
            self._give_up(exc)
            raise

    def _drain(self) -> None:
        """Read the replies of commands still in flight (pipelined DELEs)."""
        while self._pending:
            self._reply()

    # --- commands -------------------------------------------------------------------

    def capa(self) -> dict[str, list[str]]:
        try:
            lines = self._longcmd("CAPA", MAX_CAPA_BYTES)
        except POP3ReplyError:
            lines = []
        caps: dict[str, list[str]] = {}
        for raw in lines:
            words = raw.decode("ascii", "replace").split()
            if words:
                caps[words[0].upper()] = words[1:]
        self.capabilities = caps
        self.pipelining = "PIPELINING" in caps and self._allow_pipelining
        return caps

    def stls(self) -> bytes:
        """Upgrade to TLS (RFC 2595). Any failure raises POP3TLSError: never plain text."""
        try:
            reply = self._shortcmd("STLS")
        except POP3ReplyError as exc:
            raise POP3TLSError(f"the server refused STLS: {exc.reply}") from exc
        assert self._reader is not None
        if self._reader.buffered:
            # Plain text sent after the +OK would be read as if it came over TLS: the
            # command injection of CVE-2011-0411. Refuse rather than skip it.
            error = POP3TLSError("the server sent data after +OK to STLS, before TLS began")
            self._give_up(error)
            raise error
        self._reader = None  # nothing may be buffered from before the upgrade
        try:
            self._start_tls()
        except POP3TLSError as exc:
            self._give_up(exc)
            raise
        assert self._sock is not None
        self._reader = self._new_reader()
        self.capa()  # capabilities may change once encrypted (RFC 2595 section 4)
        return reply

    def user(self, name: str) -> bytes:
        return self._shortcmd(f"USER {name}")

    def pass_(self, password: SecretStr) -> bytes:
        secret = password.get_secret_value()
        self._redact.remember(secret)
        return self._shortcmd("PASS", f"PASS {secret}")

    def apop(self, name: str, password: SecretStr) -> bytes:
        stamp = _APOP_STAMP.search(self.greeting)
        if not stamp:
            raise POP3AuthError("APOP", "-ERR the server greeting has no APOP timestamp")
        digest = hashlib.md5(stamp.group(0) + password.get_secret_value().encode()).hexdigest()
        self._redact.remember(password.get_secret_value(), digest)
        return self._shortcmd("APOP", f"APOP {name} {digest}")

    def auth(self, mechanism: str, response: bytes, initial_response: bool = True) -> bytes:
        """SASL AUTH (RFC 5034) with a one-message mechanism (PLAIN, XOAUTH2, OAUTHBEARER).

        With ``initial_response`` False, send ``AUTH MECH``, wait for ``+``, then the
        response: the two-step form Microsoft 365 requires (a bearer token also makes the
        one-line form longer than RFC 2449's 255 octets). A challenge after the response
        is the server's error report (XOAUTH2, RFC 7628 section 3.2.2): it is kept in
        ``_sasl_failure_detail``, answered with the dummy response, and the -ERR that
        follows is raised as POP3AuthError.
        """
        self._sasl_failure_detail = None
        encoded = base64.b64encode(response) or b"="
        self._redact.remember(response)
        self._drain()
        if initial_response:
            self._send("AUTH", f"AUTH {mechanism} {encoded.decode('ascii')}")
        else:
            self._send(f"AUTH {mechanism}")
        line = self._continue_sasl(None)
        if not initial_response and _is_challenge(line):
            line = self._continue_sasl(encoded)
        if _is_challenge(line):
            self._sasl_failure_detail = _decode_challenge(line, self._redact)
            line = self._continue_sasl(_SASL_ERROR_ACK.get(mechanism.upper(), b""))
        self._pending.popleft()
        if line.startswith(b"+OK"):
            return line
        if line.startswith(b"-ERR"):
            if self._sasl_failure_detail:
                line += f" (server said: {self._sasl_failure_detail})".encode()
            raise _reply_error("AUTH", line, self._redact)
        # poplib's _shortcmd would take any other "+" line for success; it is not one.
        error = POP3ProtocolError("unexpected reply to AUTH", self._redact(line))
        self._give_up(error)
        raise error

    def _continue_sasl(self, data: bytes | None) -> bytes:
        """Send what is queued plus one SASL line (never logged: it may hold a secret),
        and read the server's next line. A transport fault ends the session."""
        if self._reader is None:
            raise self._not_connected()
        if data is not None:
            log.debug("C: <SASL response>")
            self._out += data + b"\r\n"
        self._flush()
        self._reader.begin("AUTH")
        try:
            return self._reader.status_line()
        except POP3MailError as exc:
            self._give_up(exc)
            raise

    def stat(self) -> tuple[int, int]:
        words = self._shortcmd("STAT").split()
        # Checked, not caught: a ValueError would quote the reply, unredacted, as its cause.
        if len(words) < 3 or not (_NUMBER.fullmatch(words[1]) and _NUMBER.fullmatch(words[2])):
            raise POP3ProtocolError("malformed STAT reply", self._quote(b" ".join(words)))
        return int(words[1]), int(words[2])

    def list(self, number: int | None = None) -> dict[int, int]:
        """Message number to size in octets, for every message or just ``number``."""
        lines = self._listing("LIST", number)
        scanned = _scan(_LIST_LISTING, lines) if number is None else None
        if scanned is not None:
            return dict(zip(scanned[0], map(int, scanned[1]), strict=True))
        sizes: dict[int, int] = {}
        entries = [self._entry("LIST", raw) for raw in lines]  # every number first
        for (n, words), raw in zip(entries, lines, strict=True):
            if not words or not _NUMBER.fullmatch(words[0]):
                raise POP3ProtocolError("malformed LIST line", self._quote(raw))
            sizes[n] = int(words[0])
        return sizes

    def uidl(self, number: int | None = None) -> dict[int, str]:
        """Message number to unique id, for every message or just ``number``.

        A UIDL that breaks RFC 1939 (1-70 characters 0x21-0x7E), a message listed twice,
        and a UIDL several messages share are left out and recorded in ``invalid_uidls``
        instead: one bad entry must not stop the mailbox, and such a message cannot be
        journalled safely. Asked for one ``number``, its InvalidUIDLError is raised.
        """
        lines = self._listing("UIDL", number)
        scanned = _scan(_UIDL_LISTING, lines) if number is None else None
        if scanned is not None:
            uids = scanned[1]
            found = dict(zip(scanned[0], uids, strict=True))
            if len(found) == len(uids) == len(set(uids)):  # no number or UIDL twice
                self.invalid_uidls = {}
                return found
        found, invalid = self._check_uidls(lines)
        if number is None:
            self.invalid_uidls = invalid
        elif number in invalid:
            raise invalid[number]
        return found

    def _check_uidls(
        self, lines: list[bytes]
    ) -> tuple[dict[int, str], dict[int, InvalidUIDLError]]:
        """The UIDL listing line by line: the valid UIDLs, and why each other one is not."""
        found: dict[int, str] = {}
        invalid: dict[int, InvalidUIDLError] = {}
        for raw in lines:
            match = _UIDL_LINE.fullmatch(raw)
            if match and int(match[1]) >= 1:
                n, uid, problem = int(match[1]), match[2].decode("ascii"), None
            else:
                n, words = self._entry("UIDL", raw)  # a bad number raises
                problem = _uidl_problem(words)  # set: the pattern takes every good line
                uid = words[0].decode("ascii") if problem is None else ""
            if n in found or n in invalid:
                problem = "listed twice in one UIDL listing"
                found.pop(n, None)
            if problem:
                invalid[n] = InvalidUIDLError(n, problem, self._quote(raw))
            else:
                found[n] = uid
        if len(set(found.values())) == len(found):
            return found, invalid
        holders: dict[str, list[int]] = {}
        for n, uid in found.items():
            holders.setdefault(uid, []).append(n)
        for uid, numbers in holders.items():
            for n in numbers if len(numbers) > 1 else ():
                others = ", ".join(str(m) for m in numbers if m != n)
                invalid[n] = DuplicateUIDLError(
                    n, f"its UIDL is also the UIDL of message {others}", uid)
                del found[n]
        return found, invalid

    def _listing(self, command: str, number: int | None) -> list[bytes]:
        """The lines of a listing, or the one line of ``number``'s."""
        if number is None:
            return self._longcmd(command)
        # "+OK 3 120": the scan listing of one message follows +OK on the status line.
        return [self._shortcmd(f"{command} {number}")[3:].strip()]

    def _entry(self, command: str, raw: bytes) -> tuple[int, list[bytes]]:
        """A listing line's message number and its other words; a line without a message
        number is not attributable and fails the whole listing."""
        words = raw.split()
        if not words or not _NUMBER.fullmatch(words[0]) or int(words[0]) < 1:
            raise POP3ProtocolError(f"malformed {command} line", self._quote(raw))
        return int(words[0]), words[1:]

    def _quote(self, data: bytes) -> bytes:
        """Server bytes for an error: secrets cut out first, then cut to length."""
        return self._redact(data)[:QUOTE]

    def top(self, number: int, lines: int = 0, limit: int = 1 << 20) -> bytes:
        """The headers and the first ``lines`` body lines of a message (at most ``limit``
        bytes: a longer head raises MessageTooLargeError and ends the session)."""
        self._shortcmd(f"TOP {number} {lines}")
        buffer = io.BytesIO()
        self._copy_body(buffer, limit)
        return buffer.getvalue()

    def retr(self, number: int, sink: Sink, limit: int | None = None) -> int:
        """Stream one message to ``sink``; return its size in bytes.

        A body over ``limit`` raises MessageTooLargeError and ends the session (no QUIT, so
        nothing is deleted): its unread rest would otherwise be taken for replies."""
        self._shortcmd(f"RETR {number}")
        return self._copy_body(sink, limit)

    def retrieve(
        self,
        numbers: Iterable[int],
        open_sink: Callable[[int], Sink],
        *,
        window: int = 64,
        limit: int | None = None,
    ) -> Iterator[tuple[int, Sink | None, POP3ReplyError | None]]:
        """RETR many messages, ``window`` at a time when the server offers PIPELINING.

        Yields ``(number, sink, None)`` once a message is complete, or
        ``(number, None, error)`` when the server refused it. The caller may call
        :meth:`dele` between yields; those DELEs travel in the same pipeline. Closing the
        generator early reads and drops the RETRs already sent. A transport fault, a body
        over ``limit`` or a failing sink ends the session without QUIT.
        """
        window = max(1, window) if self.pipelining else 1
        refill_at = window // 2  # top the window up in batches: fewer, larger sends
        todo = iter(numbers)
        in_flight: deque[int] = deque()
        in_sync = True
        self._drain()
        try:
            while True:
                if len(in_flight) <= refill_at:
                    for number in itertools.islice(todo, window - len(in_flight)):
                        self._send(f"RETR {number}")
                        in_flight.append(number)
                if not in_flight:
                    return
                self._flush()
                number = in_flight.popleft()
                while self._pending[0] != "RETR":
                    self._reply()  # a DELE sent earlier
                try:
                    self._reply()
                except POP3ReplyError as refused:
                    yield number, None, refused
                    continue
                in_sync = False  # from here until the terminator, the body is unread
                sink = open_sink(number)
                self._copy_body(sink, limit)
                in_sync = True
                yield number, sink, None
        finally:
            if not in_sync:
                self._give_up(POP3ProtocolError("a message was left half read"))
            elif in_flight and self._reader is not None:
                self._discard(len(in_flight))

    def _discard(self, count: int) -> None:
        """Read and drop the replies of RETRs already sent, to end a batch early."""
        for _ in range(count):
            while self._pending[0] != "RETR":
                self._reply()
            try:
                self._reply()
            except POP3ReplyError:
                continue
            self._copy_body(DISCARD)

    def dele(self, number: int) -> None:
        """Mark a message deleted. Pipelined: the reply is checked with later replies."""
        self._send(f"DELE {number}")
        self._deletions.append(number)
        if not self.pipelining:
            self._reply()

    def rset(self) -> bytes:
        return self._shortcmd("RSET")

    def noop(self) -> bytes:
        return self._shortcmd("NOOP")

    def quit(self) -> bytes:
        """End the session; the server applies deletions now (UPDATE state)."""
        try:
            return self._shortcmd("QUIT")
        finally:
            self.close()

    # --- login ----------------------------------------------------------------------

    def login(self) -> None:
        """Log in with the configured method; a refusal raises POP3AuthError."""
        s = self.settings
        method = s.login_method
        if method is LoginMethod.AUTO:
            method = LoginMethod.XOAUTH2 if s.token_provider else LoginMethod.USER_PASS
        oauth = method in (LoginMethod.XOAUTH2, LoginMethod.OAUTHBEARER)
        if oauth and s.token_provider is None:
            raise ConfigurationError("authentication", f"{method.value} needs OAUTH2")
        if not oauth and s.password is None:
            raise ConfigurationError("password", "no password is configured")
        self._check_plain_text_allowed("access token" if oauth else "password")
        if oauth:
            assert s.token_provider is not None
            self._oauth_login(method, s.token_provider())
            return
        assert s.password is not None
        if method is LoginMethod.APOP:
            self.apop(s.user, s.password)
        elif method is LoginMethod.PLAIN:
            secret = s.password.get_secret_value()
            self._redact.remember(secret)
            self.auth("PLAIN", f"\0{s.user}\0{secret}".encode(), s.sasl_initial_response)
        else:
            self.user(s.user)
            self.pass_(s.password)

    def _check_plain_text_allowed(self, secret: str) -> None:
        """Credentials go over plain text only when security None was chosen, and loudly."""
        if self.is_encrypted:
            return
        if self._sock is None:
            raise self._not_connected()
        if self.settings.security is not Security.NONE:
            raise POP3TLSError(
                f"refusing to send the {secret} over an unencrypted connection: security is "
                f"{self.settings.security.value}"
            )
        log.warning(
            "Sending the %s for %s over an UNENCRYPTED connection, as security 'None' was "
            "chosen: anyone on the path can read it and the mail.", secret, self.settings.user
        )

    def _oauth_login(self, method: LoginMethod, token: SecretStr) -> None:
        """XOAUTH2 or OAUTHBEARER (RFC 7628) as the configured user, the mailbox address."""
        user, bearer = self.settings.user, token.get_secret_value()
        self._redact.remember(bearer)
        if method is LoginMethod.XOAUTH2:
            message = f"user={user}\x01auth=Bearer {bearer}\x01\x01"
        else:
            # RFC 5801 saslname: "," and "=" in the authorization identity are escaped.
            authzid = user.replace("=", "=3D").replace(",", "=2C")
            message = f"n,a={authzid},\x01auth=Bearer {bearer}\x01\x01"
        try:
            self.auth(method.value.upper(), message.encode(), self.settings.sasl_initial_response)
        except POP3AuthError:
            # The next login gets a fresh token, with any permission granted since.
            if self.settings.token_provider is not None:
                self.settings.token_provider.forget_token()
            raise

    # Kept for diagnostics (connection check); never contains the token.
    _sasl_failure_detail: str | None = None


# The dummy response that asks for the final -ERR after an error challenge: empty for
# XOAUTH2 (Google's and Microsoft's documentation), %x01 for OAUTHBEARER (RFC 7628 3.2.3).
_SASL_ERROR_ACK = {"OAUTHBEARER": base64.b64encode(b"\x01")}


def _is_challenge(line: bytes) -> bool:
    """A SASL continuation ("+ data" or a bare "+"), as opposed to "+OK"."""
    return line == b"+" or line.startswith(b"+ ")


def _decode_challenge(line: bytes, redact: Callable[[bytes], bytes]) -> str | None:
    """The text of a server challenge (XOAUTH2/OAUTHBEARER send a JSON error), bounded,
    with any echoed secret cut out before it is shortened."""
    try:
        data = base64.b64decode(line[2:].strip(), validate=True)
    except ValueError:
        return None
    text = redact(data).decode("utf-8", "replace")
    return " ".join(text.split())[:300] or None


def _scan(pattern: re.Pattern[str], lines: list[bytes]) -> tuple[list[int], list[str]] | None:
    """A whole listing's message numbers and UIDLs (or sizes) in one pass, or None when
    ``pattern`` does not match it all."""
    if not lines:
        return [], []
    text = b"\n".join([*lines, b""]).decode("latin-1")
    if not pattern.fullmatch(text):
        return None
    words = text.split()  # two a line: nothing but the one space and LF is white space
    return list(map(int, words[0::2])), words[1::2]


def _uidl_problem(words: list[bytes]) -> str | None:
    """Why a listed UIDL breaks RFC 1939, or None."""
    if not words:
        return "the UIDL is missing"
    if len(words) > 1:
        return "the UIDL contains white space"
    if len(words[0]) > 70:
        return f"the UIDL is {len(words[0])} characters long, over RFC 1939's 70"
    if not _UIDL.fullmatch(words[0]):
        return "the UIDL has characters outside 0x21-0x7E"
    return None


def _reply_error(command: str, line: bytes, redact: Callable[[bytes], bytes]) -> POP3ReplyError:
    """The error for a -ERR: its class from the reply as sent, its text redacted."""
    error_class = POP3AuthError if command in _AUTH_COMMANDS else POP3ReplyError
    match = _RESPONSE_CODE.match(line)
    if match:
        code = match.group(1).decode("ascii").upper()
        while code:  # the most specific code we know: SYS/TEMP/FULL -> SYS/TEMP
            if code in RESPONSE_CODE_ERRORS:
                error_class = RESPONSE_CODE_ERRORS[code]
                break
            code = code.rpartition("/")[0]
    return error_class(command, redact(line))


__all__ = ["POP3Session", "tls_context"]
