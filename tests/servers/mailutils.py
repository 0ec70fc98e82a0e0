"""GNU Mailutils pop3d (Debian package mailutils-pop3d), as a daemon with its own config.

Everything lives in the temp dir: users in a virtual-domain passwd file (its own
passwd-file auth, no PAM, no system users), Maildirs, the APOP database (made with the
package's popauth), lock folder, certificates. One listener offers STLS, one is implicit TLS.
Debian builds it without GNU SASL: AUTH is "-ERR Not implemented", and CAPA offers no SASL.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from prefect_pop3mail.tasks.pop3.models import LoginMethod, Security
from tests.servers.unpacked import (
    UnpackedServer,
    free_port,
    maildir_count,
    maildir_deliver,
    unique,
    unpacked,
    wait_for_greeting,
)

DOMAIN = "example.test"


@dataclass
class MailutilsPop3d(UnpackedServer):
    package: ClassVar[str] = "mailutils-pop3d"
    name: ClassVar[str] = "mailutils-pop3d"
    login_methods: ClassVar[tuple[LoginMethod, ...]] = (LoginMethod.USER_PASS, LoginMethod.APOP)
    quirks: ClassVar[tuple[str, ...]] = (
        "adds an X-UIDL: header to every message it sends (RETR and TOP)",
        "built without GNU SASL: AUTH PLAIN is -ERR Not implemented",
        "users of a virtual domain log in as user@domain",
    )

    def _start(self) -> None:
        r = self.root
        for sub in ("domains", "mail", "locks"):
            (r / sub).mkdir()
        os.chmod(r / "locks", 0o1777)
        (r / "domains" / DOMAIN).touch()
        self._popauth_source = r / "apop.txt"
        self._popauth_source.touch()
        self._make_apop_database()
        port, tls_port = free_port(), free_port()
        self.modes = {Security.NONE: port, Security.EXPLICIT: port, Security.IMPLICIT: tls_port}
        (r / "pop3d.conf").write_text(f"""
mode daemon;
foreground yes;
pidfile {r}/pop3d.pid;
logging {{ syslog no; }}
auth {{ authentication generic; authorization virtdomain; }}
virtdomain {{ passwd-dir {r}/domains; }}
apop-database-file {r}/apop.db;
mandatory-locking {{ enable yes; lock-directory {r}/locks; }}
tls {{ ssl-certificate-file {r}/cert.pem; ssl-key-file {r}/key.pem; }}
server 127.0.0.1:{port} {{ tls-mode stls; }}
server 127.0.0.1:{tls_port} {{ tls-mode connection; }}
""")
        self.process = subprocess.Popen(
            [self._bin("usr/sbin/pop3d"), f"--config-file={r}/pop3d.conf"],
            stdout=subprocess.DEVNULL, stderr=open(self.log_file, "ab"), start_new_session=True,
        )
        wait_for_greeting(port, self.process, self.diagnostics)

    def _bin(self, path: str) -> str:
        return str(unpacked(self.package) / path)

    def _make_apop_database(self) -> None:
        subprocess.run(
            [self._bin("usr/bin/popauth"), "--create", f"--file={self._popauth_source}",
             f"--output={self.root}/apop.db"],
            check=True, capture_output=True,
        )

    def add_user(self) -> tuple[str, str]:
        local = f"mu{next(unique)}"
        name = f"{local}@{DOMAIN}"
        password = self.new_password(local)
        hashed = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
        home = self.root / "mail" / local
        for sub in ("new", "cur", "tmp"):
            (home / "INBOX" / sub).mkdir(parents=True)
        with open(self.root / "domains" / DOMAIN, "a") as f:
            f.write(f"{local}:{hashed}:65534:65534::{home}:/bin/false\n")
        with open(self._popauth_source, "a") as f:
            f.write(f"{name} {password}\n")
        self._make_apop_database()
        self.users[name] = password
        return name, password

    def _maildir(self, user: str) -> Path:
        return self.root / "mail" / user.partition("@")[0] / "INBOX"

    def deliver(self, user: str, *messages: bytes) -> None:
        maildir_deliver(self._maildir(user), *messages)

    def message_count(self, user: str) -> int:
        return maildir_count(self._maildir(user))
