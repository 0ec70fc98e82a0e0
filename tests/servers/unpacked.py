"""What Debian's other POP3 servers share in the tests: the private tree they are unpacked
into (tests/setup/pop3-servers.sh), a temp dir per server, certificates from the test CA,
throwaway system users in a private mount namespace, and mbox delivery.

Debian's POP3 servers all conflict on `pop3-server`, so none is installed as a package: the
setup script unpacks them under ``POP3MAIL_SERVERS_ROOT``. Servers with compiled-in paths
(PAM reading /etc/passwd and /etc/shadow, popa3d's /var/mail) run under
````unshare --mount --pid`` with the test's own files bind-mounted over those paths.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import trustme

from prefect_pop3mail.tasks.pop3.models import LoginMethod, Security
from tests.servers import started

SERVERS_ROOT = Path(os.environ.get("POP3MAIL_SERVERS_ROOT", "/var/cache/pop3mail-servers"))
SETUP = "tests/setup/pop3-servers.sh"
INETD = Path(__file__).with_name("inetd.py")
unique = itertools.count()
#: Test users of the namespace servers get uids from here: a uid must name one user only,
#: since the servers look users up by uid as well as by name.
_uids = itertools.count(61000)


#: A private mount namespace (bind mounts seen by the server only) in a PID namespace of its
#: own, whose processes all die with its first: servers that make their own process groups
#: (couriertcpd) cannot outlive the fixture that started them.
NAMESPACE = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
             "--kill-child=SIGKILL", "--"]


def unpacked(package: str) -> Path:
    return SERVERS_ROOT / package


def package_version(package: str) -> str:
    path = unpacked(package) / ".version"
    return path.read_text().strip() if path.exists() else "?"


def unavailable_reason(package: str, namespace: bool = False) -> str | None:
    """Why ``package`` cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return f"{package} needs root (it changes to the mail user's uid)"
    if not (unpacked(package) / ".unpacked").exists():
        return f"{package} is not unpacked under {SERVERS_ROOT}: run `bash {SETUP}` as root"
    if namespace and not _mount_namespaces_work():
        return f"{package} needs a private mount namespace (unshare --mount), refused here"
    return None


_namespace_ok: bool | None = None


def _mount_namespaces_work() -> bool:
    global _namespace_ok
    if _namespace_ok is None:
        probe = subprocess.run([*NAMESPACE, "true"], capture_output=True)
        _namespace_ok = probe.returncode == 0
    return _namespace_ok


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_greeting(port: int, process: subprocess.Popen, diagnostics, timeout=15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {diagnostics()}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5) as s:
                s.settimeout(3)
                if s.recv(200).startswith(b"+OK"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server did not greet on port {port}: {diagnostics()}")


def wait_for_port(port: int, process: subprocess.Popen, diagnostics, timeout=15.0) -> None:
    """For a TLS port, where the greeting only comes after a handshake."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {diagnostics()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}: {diagnostics()}")


def stop_process(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def mbox_append(path: Path, *messages: bytes, uid: int, gid: int) -> None:
    """Append messages to an mbox, as an MDA would: a From_ line each, From-quoting
    (mboxrd), a blank line after each."""
    with open(path, "ab") as f:
        for raw in messages:
            body = raw.replace(b"\r\n", b"\n")
            body = b"\n".join(
                b">" + line if line.lstrip(b">").startswith(b"From ") else line
                for line in body.split(b"\n")
            )
            if not body.endswith(b"\n"):
                body += b"\n"
            f.write(b"From sender@example.org Thu Nov 26 10:00:00 2026\n" + body + b"\n")
    os.chown(path, uid, gid)
    os.chmod(path, 0o600)


def maildir_deliver(maildir: Path, *messages: bytes, uid: int = -1, gid: int = -1) -> None:
    """Into Maildir/new through tmp/, as an MDA would (uid/gid -1: left as they are)."""
    for raw in messages:
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(unique)}.test"
        (maildir / "tmp" / name).write_bytes(raw)
        os.chown(maildir / "tmp" / name, uid, gid)
        os.rename(maildir / "tmp" / name, maildir / "new" / name)


def maildir_count(maildir: Path) -> int:
    return sum(1 for sub in ("new", "cur") for p in (maildir / sub).iterdir() if p.is_file())


def mbox_count(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.startswith(b"From "))


@dataclass
class UnpackedServer:
    """A POP3 server from the private tree, in a temp dir of its own.

    Subclasses set ``package``, ``modes`` (security mode -> port, once started) and
    ``login_methods``, and implement ``_start``, ``add_user``, ``deliver`` and
    ``message_count``. ``quirks`` lists what the matrix found, for the README."""

    ca: trustme.CA
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pop3mail-srv-")))
    modes: dict[Security, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    users: dict[str, str] = field(default_factory=dict)

    package: ClassVar[str] = ""
    name: ClassVar[str] = ""
    namespace: ClassVar[bool] = False
    login_methods: ClassVar[tuple[LoginMethod, ...]] = (LoginMethod.USER_PASS,)
    quirks: ClassVar[tuple[str, ...]] = ()

    @property
    def version(self) -> str:
        return package_version(self.package)

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    def start(self) -> UnpackedServer:
        started(f"{type(self).__name__} (a real POP3 server)", "interop")
        os.chmod(self.root, 0o755)
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        cert = self.ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
        cert.private_key_pem.write_to_path(str(self.root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.root / "cert.pem"))
        os.chmod(self.root / "key.pem", 0o600)
        self._start()
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def diagnostics(self) -> str:
        return self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.root, ignore_errors=True)

    def new_password(self, name: str) -> str:
        return f"pw-{name}-{os.urandom(6).hex()}"

    def add_user(self) -> tuple[str, str]:
        raise NotImplementedError

    def deliver(self, user: str, *messages: bytes) -> None:
        raise NotImplementedError

    def message_count(self, user: str) -> int:
        raise NotImplementedError


@dataclass
class NamespaceServer(UnpackedServer):
    """A per-connection (inetd) server run by tests/servers/inetd.py in a private mount
    namespace, where /etc/passwd and /etc/shadow are the test's copies with its users
    appended, and ``binds`` name more paths to cover (target -> folder under root)."""

    namespace: ClassVar[bool] = True
    #: System users the package's postinst would create (name -> uid), e.g. privsep users.
    system_users: ClassVar[dict[str, int]] = {}
    binds: ClassVar[dict[str, str]] = {}
    gid: ClassVar[int] = 65534  # nogroup: the mail files need no group of their own
    uids: dict[str, int] = field(default_factory=dict)

    def command(self) -> list[str]:
        raise NotImplementedError

    def _mounts(self) -> dict[str, str]:
        """Make the namespace's passwd and shadow; returns what to bind (target -> source)."""
        etc = self.root / "etc"
        etc.mkdir()
        shutil.copy("/etc/passwd", etc / "passwd")
        shutil.copy("/etc/shadow", etc / "shadow")
        for name, uid in self.system_users.items():
            self._append_user(name, uid, "/nonexistent", "*", shell="/usr/sbin/nologin")
        mounts = {"/etc/passwd": str(etc / "passwd"), "/etc/shadow": str(etc / "shadow")}
        mounts.update({target: str(self.root / sub) for target, sub in self.binds.items()})
        return mounts

    def _start(self) -> None:
        mounts = self._mounts()
        port = free_port()
        self.modes = {Security.NONE: port}
        args = [
            *NAMESPACE, sys.executable, str(INETD), "--listen", f"127.0.0.1:{port}", "--log",
            str(self.log_file),
            *(f"--bind={source}={target}" for target, source in mounts.items()),
            "--", *self.command(),
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=open(self.log_file, "ab"),
            start_new_session=True,
        )
        wait_for_greeting(port, self.process, self.diagnostics)

    def _append_user(self, name: str, uid: int, home: str, hashed: str,
                     shell: str = "/bin/sh") -> None:
        # Appended in place: the namespace has these very files bind-mounted.
        with open(self.root / "etc" / "passwd", "a") as f:
            f.write(f"{name}:x:{uid}:{self.gid}::{home}:{shell}\n")
        with open(self.root / "etc" / "shadow", "a") as f:
            f.write(f"{name}:{hashed}:19000:0:99999:7:::\n")

    def add_system_user(self, password: str | None = None) -> tuple[str, int, str, Path]:
        """A user in the namespace's passwd and shadow; returns (name, uid, password, home)."""
        name = f"pm{next(unique)}x{os.getpid() % 1000}"
        password = password or self.new_password(name)
        uid = next(_uids)
        home = self.root / "home" / name
        home.mkdir(parents=True)
        os.chown(home, uid, self.gid)
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
        self._append_user(name, uid, str(home), hashed)
        self.users[name], self.uids[name] = password, uid
        return name, uid, password, home

    # --- mbox maildrops (both namespace servers read mbox files) ---------------------

    def mbox(self, user: str) -> Path:
        raise NotImplementedError

    def add_user(self) -> tuple[str, str]:
        name, uid, password, _home = self.add_system_user()
        mbox_append(self.mbox(name), uid=uid, gid=self.gid)
        return name, password

    def deliver(self, user: str, *messages: bytes) -> None:
        mbox_append(self.mbox(user), *messages, uid=self.uids[user], gid=self.gid)

    def message_count(self, user: str) -> int:
        return mbox_count(self.mbox(user))
