"""The one TLS client context (tasks/pop3/protocol/tls.py): the system's CAs, plus tls_ca_file when set,
for the POP3 server and the token endpoint alike. "The system's CAs" are a throwaway CA put
in place through OpenSSL's SSL_CERT_FILE, so the tests stay offline."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from prefect_pop3mail.tasks.pop3.errors import ConfigurationError, POP3TLSError
from prefect_pop3mail.tasks.pop3.models import Security
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session
from prefect_pop3mail.tasks.pop3.protocol.tls import client_context
from tests.conftest import Mailbox


class TLSServer:
    """Accepts TLS handshakes on loopback with a certificate from ``ca``."""

    def __init__(self, ca: trustme.CA):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("localhost").configure_cert(self.context)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

    def handshake(self, context: ssl.SSLContext) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.recv(2)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def system_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> trustme.CA:
    """A CA that stands for the system's store (and the only one in it)."""
    ca = trustme.CA()
    path = tmp_path / "system-cas.pem"
    ca.cert_pem.write_to_path(str(path))
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    return ca


@pytest.fixture
def private_ca(tmp_path: Path) -> tuple[trustme.CA, str]:
    ca = trustme.CA()
    path = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, str(path)


@pytest.fixture
def servers(system_ca, private_ca) -> Iterator[tuple[TLSServer, TLSServer]]:
    public, private = TLSServer(system_ca), TLSServer(private_ca[0])
    yield public, private
    public.close()
    private.close()


def test_tls_ca_file_is_trusted_in_addition_to_the_system_cas(servers, private_ca):
    public, private = servers
    context = client_context(private_ca[1])
    assert public.handshake(context) == b"ok"
    assert private.handshake(context) == b"ok"


def test_without_tls_ca_file_only_the_system_cas_are_trusted(servers):
    public, private = servers
    context = client_context(None)
    assert public.handshake(context) == b"ok"
    with pytest.raises(ssl.SSLCertVerificationError):
        private.handshake(context)


def test_verification_off_trusts_anything_and_still_needs_tls_1_2(servers):
    context = client_context(None, verify=False)
    assert all(server.handshake(context) == b"ok" for server in servers)
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_a_context_is_shared_until_a_ca_file_it_read_changes(servers, private_ca, tmp_path):
    public, private = servers
    assert client_context(private_ca[1]) is client_context(private_ca[1])
    assert client_context(None, verify=False) is client_context(None, verify=False)
    path = tmp_path / "rotated-ca.pem"
    other = trustme.CA()
    other.cert_pem.write_to_path(str(path))
    before = client_context(str(path))
    with pytest.raises(ssl.SSLCertVerificationError):
        private.handshake(before)
    private_ca[0].cert_pem.write_to_path(str(path))  # the private CA rotated in, same name
    after = client_context(str(path))
    assert after is not before
    assert private.handshake(after) == b"ok" and public.handshake(after) == b"ok"


def test_a_ca_file_rewritten_in_place_with_its_size_and_mtime_kept_is_read_again(
        servers, private_ca, tmp_path):
    """What ``cp -p`` or ``rsync --inplace -t`` leaves: same inode, size and mtime."""
    public, private = servers
    path = tmp_path / "ca.pem"
    old, new = trustme.CA().cert_pem.bytes(), private_ca[0].cert_pem.bytes()
    size = max(len(old), len(new))
    path.write_bytes(old.ljust(size, b"\n"))
    before = client_context(str(path))
    kept = path.stat()
    with open(path, "r+b") as f:  # in place: same inode
        f.write(new.ljust(size, b"\n"))
    os.utime(path, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    now = path.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (kept.st_ino, kept.st_size,
                                                          kept.st_mtime_ns)
    after = client_context(str(path))
    assert after is not before
    assert private.handshake(after) == b"ok"
    with pytest.raises(ssl.SSLCertVerificationError):
        private.handshake(before)


def test_a_context_follows_the_system_ca_locations(servers, private_ca, monkeypatch):
    public, private = servers
    assert public.handshake(client_context(None)) == b"ok"
    monkeypatch.setenv("SSL_CERT_FILE", private_ca[1])  # now the system store is that CA
    moved = client_context(None)
    assert private.handshake(moved) == b"ok"
    with pytest.raises(ssl.SSLCertVerificationError):
        public.handshake(moved)


def test_an_unreadable_ca_file_names_the_field(tmp_path):
    bad = tmp_path / "not-a-certificate.pem"
    bad.write_text("hello\n")
    for path in (bad, tmp_path / "missing.pem"):
        with pytest.raises(ConfigurationError) as caught:
            client_context(str(path))
        assert caught.value.field == "tls_ca_file"


@pytest.mark.dovecot
def test_pop3_trusts_the_system_cas_and_tls_ca_file(dovecot, ca, tmp_path, monkeypatch,
                                                   private_ca):
    # Dovecot's CA is "in the system store"; tls_ca_file names an unrelated private CA.
    system = tmp_path / "system-cas.pem"
    ca.cert_pem.write_to_path(str(system))
    monkeypatch.setenv("SSL_CERT_FILE", str(system))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    box = Mailbox(dovecot)
    with POP3Session(box.settings(Security.IMPLICIT, tls_ca_file=private_ca[1])) as session:
        session.login()
        assert session.stat()[0] == 0
    # And the private CA alone does not make Dovecot's certificate trusted.
    monkeypatch.setenv("SSL_CERT_FILE", private_ca[1])
    with pytest.raises(POP3TLSError):
        POP3Session(box.settings(Security.IMPLICIT, tls_ca_file=private_ca[1])).connect()
