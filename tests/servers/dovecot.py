"""A real Dovecot POP3 server for tests and benchmarks, with its own config in a temp dir.

Listens on 127.0.0.1 (and ::1 when available) on free unprivileged ports: one plain
listener that offers STLS, one implicit-TLS listener. Certificates come from a throwaway CA,
so clients keep verification on. Users live in a passwd-file; their Maildirs are seeded by
writing files, the way a delivery agent would.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from tests.servers import started

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
_unique = itertools.count()


def dovecot_unavailable_reason() -> str | None:
    """Why Dovecot cannot run here, or None when it can."""
    if not os.path.exists(DOVECOT):
        return "Dovecot is not installed (apt-get install dovecot-core dovecot-pop3d, as root)"
    if os.geteuid() != 0:
        return "Dovecot tests need root: its login processes change user"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@dataclass
class Dovecot:
    """A running Dovecot. ``extra_config`` is appended to the generated dovecot.conf."""

    root: Path
    ca: trustme.CA
    extra_config: str = ""
    #: Dovecot's auth_mechanisms, and extra passdb blocks (e.g. oauth2) placed before the
    #: passwd-file passdb; ``passwd_mechanisms`` limits the passwd-file passdb.
    auth_mechanisms: str = "plain login"
    extra_passdb: str = ""
    passwd_mechanisms: str = ""
    host: str = "127.0.0.1"
    pop3_port: int = 0
    pop3s_port: int = 0
    ipv6: bool = False
    process: subprocess.Popen | None = None
    users: dict[str, str] = field(default_factory=dict)

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    @property
    def log_file(self) -> Path:
        return self.root / "dovecot.log"

    def start(self) -> Dovecot:
        started("Dovecot", "dovecot", "interop")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        nobody = pwd.getpwnam("nobody")
        self._uid, self._gid = nobody.pw_uid, nobody.pw_gid
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        # A common name too: fetchmail-style clients ignore subjectAltName without one.
        cert = self.ca.issue_cert("localhost", "127.0.0.1", "::1", common_name="localhost")
        cert.private_key_pem.write_to_path(str(self.root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.root / "cert.pem"))
        for name in ("run", "state", "mail"):
            (self.root / name).mkdir(exist_ok=True)
        (self.root / "users").mkdir(exist_ok=True)
        self.ipv6 = ipv6_loopback_available()
        self.pop3_port, self.pop3s_port = free_port(), free_port()
        conf = self.root / "dovecot.conf"
        conf.write_text(self._config())
        self.process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "dovecot.stderr", "wb"),
            start_new_session=True,
        )
        self._wait_listening()
        return self

    def _config(self) -> str:
        r = self.root
        listen = "127.0.0.1, ::1" if self.ipv6 else "127.0.0.1"
        return f"""
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
info_log_path = {r}/dovecot.log
protocols = pop3
listen = {listen}
ssl = yes
ssl_cert = <{r}/cert.pem
ssl_key = <{r}/key.pem
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = {self.auth_mechanisms}
auth_failure_delay = 0
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
# A second session on a mailbox gets -ERR [IN-USE], as on most production servers.
pop3_lock_session = yes
mail_max_lock_timeout = 2s
first_valid_uid = 1
{self.extra_passdb}
passdb {{
  driver = passwd-file
  # One file per user: Dovecot re-reads a passwd-file at most once a second.
  args = scheme=PLAIN username_format=%u {r}/users/%u
  {f"mechanisms = {self.passwd_mechanisms}" if self.passwd_mechanisms else ""}
}}
userdb {{
  driver = static
  args = uid={self._uid} gid={self._gid} home={r}/mail/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
{self.extra_config}
"""

    def _wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"dovecot exited: {self.diagnostics()}")
            try:
                with socket.create_connection((self.host, self.pop3_port), 0.5) as s:
                    s.settimeout(2)
                    if s.recv(100).startswith(b"+OK"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"dovecot did not start listening: {self.diagnostics()}")

    def diagnostics(self) -> str:
        out = []
        for name in ("dovecot.stderr", "dovecot.log"):
            path = self.root / name
            if path.exists():
                out.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    # --- users and mail -----------------------------------------------------------

    def add_user(self, name: str | None = None, password: str | None = None) -> tuple[str, str]:
        """Create a user with an empty Maildir; returns (name, password)."""
        name = name or f"user{next(_unique)}"
        password = password or f"pw-{name}-{os.urandom(6).hex()}"
        self.users[name] = password
        path = self.root / "users" / name
        path.write_text(f"{name}:{{PLAIN}}{password}::::::\n")
        os.chmod(path, 0o644)
        maildir = self.maildir(name)
        for sub in ("new", "cur", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        self._chown(self.root / "mail" / name)
        return name, password

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user / "Maildir"

    def deliver(self, user: str, *messages: bytes) -> list[Path]:
        """Put messages in the user's Maildir/new, as an MDA would."""
        maildir = self.maildir(user)
        paths = []
        for raw in messages:
            name = f"{time.time_ns()}.P{os.getpid()}Q{next(_unique)}.test"
            tmp = maildir / "tmp" / name
            tmp.write_bytes(raw)
            os.chown(tmp, self._uid, self._gid)
            final = maildir / "new" / name
            os.rename(tmp, final)
            paths.append(final)
        return paths

    def message_count(self, user: str) -> int:
        maildir = self.maildir(user)
        return sum(
            1 for sub in ("new", "cur") for p in (maildir / sub).iterdir() if p.is_file()
        )

    def _chown(self, top: Path) -> None:
        for dirpath, _dirs, files in os.walk(top):
            os.chown(dirpath, self._uid, self._gid)
            for f in files:
                os.chown(os.path.join(dirpath, f), self._uid, self._gid)


def start_dovecot(ca: trustme.CA | None = None, **options) -> Dovecot:
    """Start a Dovecot; ``options`` are Dovecot's dataclass fields (extra_config...)."""
    root = Path(tempfile.mkdtemp(prefix="pop3mail-dovecot-"))
    return Dovecot(root=root, ca=ca or trustme.CA(), **options).start()
