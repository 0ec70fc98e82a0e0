"""Second looks at a server that failed in a way a setting explains, so the error can say
which setting to change: does the port speak TLS from the first byte or plain POP3, and
which certificate does it show.

Each look opens a new connection, sends no credential, reads a few bytes and gives up after
a few seconds; any failure only means "cannot tell", never an error of its own.
"""

from __future__ import annotations

import socket

from prefect_pop3mail.tasks.pop3.models import ConnectionSettings, Security
from prefect_pop3mail.tasks.pop3.protocol.lineio import LineReader
from prefect_pop3mail.tasks.pop3.protocol.tls import client_context

#: How long one look may take, at most (the connection's timeout, if shorter).
PROBE_TIMEOUT = 3.0


def _connect(settings: ConnectionSettings) -> socket.socket:
    source = (settings.source_address, 0) if settings.source_address else None
    timeout = min(PROBE_TIMEOUT, settings.timeout)
    return socket.create_connection((settings.host, settings.port), timeout,
                                    source_address=source)


def speaks_tls(settings: ConnectionSettings) -> bool:
    """True when the port completes a TLS handshake right away (implicit TLS)."""
    try:
        with _connect(settings) as sock:
            # Unverified on purpose: this only asks whether the port speaks TLS at all.
            with client_context(verify=False).wrap_socket(sock,
                                                          server_hostname=settings.host):
                return True
    except OSError:  # ssl.SSLError included
        return False


def greets_in_plain_text(settings: ConnectionSettings) -> bool:
    """True when the port greets with "+OK" before the client says anything (plain POP3)."""
    try:
        with _connect(settings) as sock:
            received = b""
            while len(received) < 3 and (data := sock.recv(3 - len(received))):
                received += data
            return received == b"+OK"
    except OSError:
        return False


def peer_certificate(settings: ConnectionSettings) -> bytes | None:
    """The server's certificate (DER), unverified, over implicit TLS or after STLS; None
    when it cannot be had."""
    try:
        with _connect(settings) as sock:
            if settings.security is Security.EXPLICIT:
                reader = LineReader(sock, sock.gettimeout())
                reader.begin("the greeting")
                if not reader.status_line().startswith(b"+OK"):
                    return None
                sock.sendall(b"STLS\r\n")
                reader.begin("STLS")
                if not reader.status_line().startswith(b"+OK") or reader.buffered:
                    return None
            with client_context(verify=False).wrap_socket(
                sock, server_hostname=settings.host
            ) as tls:
                return tls.getpeercert(binary_form=True) or None
    except Exception:  # a look that fails tells nothing; the first error stands
        return None


def describe_certificate(der: bytes) -> str:
    """Who issued the certificate, to whom, and the names it covers."""
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
        names: list[str] = []
        try:
            extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = [str(n.value) for n in extension.value]
        except x509.ExtensionNotFound:
            pass
        text = f"issued by {cert.issuer.rfc4514_string() or '(no name)'} to " \
               f"{cert.subject.rfc4514_string() or '(no name)'}"
        if cert.issuer == cert.subject:
            text += " (self-signed)"
        return text + (f", for {', '.join(names)}" if names else "")
    except ValueError:
        return "an unreadable certificate"
