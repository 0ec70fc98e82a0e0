"""Cyrus IMAP's POP3 server (Debian packages cyrus-pop3d and cyrus-common), under its own
``master`` with imapd.conf and cyrus.conf in the temp dir.

Users live in a SASL sasldb file in the temp dir (made with sasl2-bin's saslpasswd2: Cyrus's
own password store, no PAM), so USER/PASS, APOP and SASL PLAIN all work. Mail is delivered
over LMTP to the server's lmtpd socket, which creates the INBOX on first delivery
(autocreate). ``cyrus_user`` is "nobody": no system user is needed. The packages' shared
libraries are unpacked too, hence LD_LIBRARY_PATH.
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
from dataclasses import dataclass
from typing import ClassVar

from prefect_pop3mail.tasks.pop3.models import LoginMethod, Security
from tests.servers.unpacked import (
    UnpackedServer,
    free_port,
    unique,
    unpacked,
    wait_for_greeting,
)

REALM = "pop3mail-test"


@dataclass
class CyrusPop3d(UnpackedServer):
    package: ClassVar[str] = "cyrus-pop3d"
    name: ClassVar[str] = "cyrus-pop3d"
    #: Unpacked beside cyrus-pop3d: master, lmtpd, mbpath and the libraries.
    common: ClassVar[str] = "cyrus-common"
    #: Minutes between two logins of a user (Debian's imapd.conf says 1: LOGIN-DELAY 60).
    popminpoll: int = 0
    login_methods: ClassVar[tuple[LoginMethod, ...]] = (
        LoginMethod.USER_PASS, LoginMethod.APOP, LoginMethod.PLAIN)
    quirks: ClassVar[tuple[str, ...]] = (
        "Debian's imapd.conf sets popminpoll: 1 (LOGIN-DELAY 60: one login a minute per "
        "user); the tests set 0. A refused login is -ERR [LOGIN-DELAY], retried with backoff",
        "adds Return-Path:, Received: and (when missing) Date: at delivery (LMTP)",
    )

    def _env(self) -> dict[str, str]:
        libraries = unpacked(self.common) / "usr/lib/x86_64-linux-gnu"
        return {**os.environ, "LD_LIBRARY_PATH": str(libraries)}

    def _bin(self, name: str) -> str:
        package = self.package if name == "pop3d" else self.common
        return str(unpacked(package) / "usr/lib/cyrus/bin" / name)

    def _start(self) -> None:
        r = self.root
        for sub in ("conf", "proc", "lock", "spool", "socket"):
            (r / sub).mkdir()
        port, tls_port = free_port(), free_port()
        self.modes = {Security.NONE: port, Security.EXPLICIT: port, Security.IMPLICIT: tls_port}
        (r / "imapd.conf").write_text(f"""\
configdirectory: {r}/conf
proc_path: {r}/proc
mboxname_lockpath: {r}/lock
defaultpartition: default
partition-default: {r}/spool
cyrus_user: nobody
servername: {REALM}
unixhierarchysep: no
lmtp_downcase_rcpt: yes
popminpoll: {self.popminpoll}
autocreate_quota: 0
autocreate_post: 1
allowplaintext: yes
allowapop: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {r}/sasldb2
sasl_mech_list: PLAIN LOGIN
lmtpsocket: {r}/socket/lmtp
idlesocket: {r}/socket/idle
notifysocket: {r}/socket/notify
tls_server_cert: {r}/cert.pem
tls_server_key: {r}/key.pem
syslog_prefix: pop3mail-test-cyrus
""")
        conf = f"-C {r}/imapd.conf"
        (r / "cyrus.conf").write_text(f"""\
START {{
  recover cmd="{self._bin('ctl_cyrusdb')} {conf} -r"
}}
SERVICES {{
  pop3 cmd="{self._bin('pop3d')} {conf}" listen="127.0.0.1:{port}" prefork=0
  pop3s cmd="{self._bin('pop3d')} -s {conf}" listen="127.0.0.1:{tls_port}" prefork=0
  lmtpunix cmd="{self._bin('lmtpd')} {conf}" listen="{r}/socket/lmtp" prefork=0
}}
EVENTS {{
}}
""")
        subprocess.run(["chown", "-R", "nobody:nogroup", str(r)], check=True)
        self.process = subprocess.Popen(
            [self._bin("master"), "-C", f"{r}/imapd.conf", "-M", f"{r}/cyrus.conf",
             "-p", f"{r}/master.pid", "-D"],
            stdout=subprocess.DEVNULL, stderr=open(self.log_file, "ab"), env=self._env(),
            start_new_session=True,
        )
        wait_for_greeting(port, self.process, self.diagnostics)

    def add_user(self) -> tuple[str, str]:
        name = f"cy{next(unique)}"
        password = self.new_password(name)
        subprocess.run(
            ["saslpasswd2", "-c", "-p", "-f", str(self.root / "sasldb2"), "-u", REALM, name],
            input=password, text=True, check=True, capture_output=True,
        )
        os.chown(self.root / "sasldb2", *_nobody())
        self.users[name] = password
        return name, password

    def deliver(self, user: str, *messages: bytes) -> None:
        """Over LMTP, as an MTA would; the first delivery (or login) creates the INBOX."""
        with smtplib.LMTP(str(self.root / "socket" / "lmtp")) as lmtp:
            for raw in messages:
                refused = lmtp.sendmail("sender@example.org", [user], raw)
                assert not refused, refused

    def message_count(self, user: str) -> int:
        """From the mailbox's index (mbexamine): files of expunged messages may stay on disk
        until cyr_expire runs, so counting files would be wrong."""
        done = subprocess.run([self._bin("mbexamine"), "-C", f"{self.root}/imapd.conf",
                               f"user.{user}"], env=self._env(), capture_output=True,
                              text=True, check=False)
        found = re.search(r"Number of Messages: (\d+)", done.stdout)
        return int(found.group(1)) if found else 0  # no INBOX before a delivery or login


def _nobody() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid
