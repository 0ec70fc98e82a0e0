"""Courier's POP3 server (Debian packages courier-pop, courier-base, courier-authlib), as
its init scripts start it, but from the unpacked tree and in a private mount namespace.

courier-authlib has its paths compiled in: /etc/courier/authdaemonrc, the authdaemond
socket under /run/courier, modules under /usr/lib/courier-authlib. The namespace covers
those folders with the test's own (the setup script creates the empty mount points, as the
packages would) and /etc/passwd, /etc/shadow with the test's copies: logins go through
authdaemond's authpam module (pam_unix). ``couriertcpd`` runs ``courierpop3login`` per
connection; ``couriertls`` does STLS and, on the second port, implicit TLS. Maildirs live
in the users' homes in the temp dir. Courier has no APOP.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from prefect_pop3mail.tasks.pop3.models import LoginMethod, Security
from tests.servers.unpacked import (
    NAMESPACE,
    NamespaceServer,
    free_port,
    maildir_count,
    maildir_deliver,
    unpacked,
    wait_for_greeting,
    wait_for_port,
)

MOUNT_POINTS = ("/etc/courier", "/run/courier", "/usr/lib/courier-authlib")


@dataclass
class CourierPop3d(NamespaceServer):
    package: ClassVar[str] = "courier-pop"
    name: ClassVar[str] = "courier-pop"
    system_users: ClassVar[dict[str, int]] = {"courier": 64020}
    binds: ClassVar[dict[str, str]] = {"/etc/courier": "courier", "/run/courier": "run"}
    login_methods: ClassVar[tuple[LoginMethod, ...]] = (LoginMethod.USER_PASS, LoginMethod.PLAIN)
    quirks: ClassVar[tuple[str, ...]] = (
        "no APOP (no timestamp in the greeting)",
        "advertises LOGIN-DELAY 10 without enforcing it",
        "couriertcpd allows 4 connections per address by default (-maxperip): raised here",
        "answers QUIT with +OK before it deletes the files (UPDATE state after the reply)",
    )

    def _start(self) -> None:
        for point in MOUNT_POINTS:  # the packages' own folders, empty: only mount points
            os.makedirs(point, exist_ok=True)
        r = self.root
        for sub in ("courier", "run/authdaemon", "home"):
            (r / sub).mkdir(parents=True)
        os.chmod(r / "run" / "authdaemon", 0o755)
        (r / "courier" / "authdaemonrc").write_text(
            'authmodulelist="authpam"\ndaemons=2\nauthdaemonvar=/run/courier/authdaemon\n'
            'DEBUG_LOGIN=0\nDEFAULTOPTIONS=""\nLOGGEROPTS=""\n')
        pem = r / "courier" / "pop3d.pem"
        pem.write_bytes((r / "key.pem").read_bytes() + (r / "cert.pem").read_bytes())
        os.chmod(pem, 0o600)
        # couriertls reads it after dropping to "courier" (Debian's package owns it so).
        os.chown(pem, self.system_users["courier"], self.gid)
        mounts = self._mounts()
        mounts["/usr/lib/courier-authlib"] = str(
            unpacked("courier-authlib") / "usr/lib/courier-authlib")
        port, tls_port = free_port(), free_port()
        self.modes = {Security.NONE: port, Security.EXPLICIT: port, Security.IMPLICIT: tls_port}
        script = r / "run.sh"
        script.write_text(self._script(mounts, port, tls_port, pem))
        self.process = subprocess.Popen(
            [*NAMESPACE, "sh", str(script)],
            stdout=subprocess.DEVNULL, stderr=open(self.log_file, "ab"),
            start_new_session=True,
        )
        wait_for_greeting(port, self.process, self.diagnostics)
        wait_for_port(tls_port, self.process, self.diagnostics)

    def _script(self, mounts: dict[str, str], port: int, tls_port: int, pem: Path) -> str:
        """authdaemond, then one couriertcpd per port, as the init scripts run them."""
        base, pop = unpacked("courier-base"), unpacked("courier-pop")
        login = pop / "usr/lib/courier/courier/courierpop3login"
        pop3d = pop / "usr/lib/courier/courier/courierpop3d"
        tcpd = (f"{base}/usr/sbin/couriertcpd -address=127.0.0.1 -nodnslookup "
                "-noidentlookup -maxprocs=100 -maxperip=100")
        env = {
            "LD_LIBRARY_PATH": f"{unpacked('courier-authlib')}/usr/lib",
            "POP3AUTH": "PLAIN LOGIN", "POP3AUTH_TLS": "PLAIN LOGIN", "MAILDIRPATH": "Maildir",
            "POP3_STARTTLS": "YES", "POP3_TLS_REQUIRED": "0",
            "COURIERTLS": f"{base}/usr/bin/couriertls", "TLS_CERTFILE": str(pem),
            "TLS_PROTOCOL": "TLSv1.2", "TLS_STARTTLS_PROTOCOL": "TLSv1.2",
            "TLS_VERIFYPEER": "NONE",
        }
        lines = ["set -e"]
        lines += [f"mount --bind {shlex.quote(s)} {shlex.quote(t)}" for t, s in mounts.items()]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        lines += [
            f"{unpacked('courier-authlib')}/usr/lib/courier/courier-authlib/authdaemond &",
            "while [ ! -S /run/courier/authdaemon/socket ]; do sleep 0.05; done",
            f"{tcpd} {tls_port} {base}/usr/bin/couriertls -server -tcpd -user=courier "
            f"{login} {pop3d} Maildir &",
            f"POP3_TLS=0 exec {tcpd} {port} {login} {pop3d} Maildir",
        ]
        return "\n".join(lines) + "\n"

    # --- users and Maildirs ------------------------------------------------------------

    def add_user(self) -> tuple[str, str]:
        name, uid, password, home = self.add_system_user()
        for sub in ("new", "cur", "tmp"):
            (home / "Maildir" / sub).mkdir(parents=True)
        subprocess.run(["chown", "-R", f"{uid}:{self.gid}", str(home)], check=True)
        return name, password

    def _maildir(self, user: str) -> Path:
        return self.root / "home" / user / "Maildir"

    def deliver(self, user: str, *messages: bytes) -> None:
        maildir_deliver(self._maildir(user), *messages, uid=self.uids[user], gid=self.gid)

    def message_count(self, user: str) -> int:
        self._wait_for_sessions(user)
        return maildir_count(self._maildir(user))

    def _wait_for_sessions(self, user: str, timeout: float = 10.0) -> None:
        """courierpop3d answers QUIT before it deletes the files: wait for the user's
        sessions (processes working in their home) to end before counting."""
        home = str(self.root / "home" / user)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(_cwd(pid).startswith(home) for pid in os.listdir("/proc")
                       if pid.isdigit()):
                return
            time.sleep(0.02)
        raise RuntimeError(f"a POP3 session of {user} did not end in {timeout:g} s")


def _cwd(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:  # gone, or not ours to see
        return ""
