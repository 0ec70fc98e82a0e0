"""The servers of the interoperability matrix (tests/test_interop.py, bench peers), behind
one small interface: ``modes`` (security mode -> port), ``login_methods``, ``add_user``,
``deliver``, ``message_count``, ``ca_file``, ``version``, ``quirks``, ``stop``.

Dovecot is the reference. The others are Debian's packages unpacked by
tests/setup/pop3-servers.sh; a server that cannot run here says why (``unavailable``).
"""

from __future__ import annotations

import subprocess
from typing import ClassVar

import trustme

from prefect_pop3mail.tasks.pop3.models import LoginMethod, Security
from tests.servers.courier import CourierPop3d
from tests.servers.cyrus import CyrusPop3d
from tests.servers.dovecot import DOVECOT, Dovecot, dovecot_unavailable_reason, start_dovecot
from tests.servers.mailutils import MailutilsPop3d
from tests.servers.popa3d import Popa3d
from tests.servers.solid_pop3d import SolidPop3d
from tests.servers.unpacked import unavailable_reason


class DovecotServer:
    """Dovecot with APOP as well (plain-text passwords) and plain-text logins allowed on
    the unencrypted port, so that every cell of its row can be green."""

    name: ClassVar[str] = "dovecot"
    login_methods: ClassVar[tuple[LoginMethod, ...]] = (
        LoginMethod.USER_PASS, LoginMethod.APOP, LoginMethod.PLAIN)
    quirks: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ca: trustme.CA):
        self.dovecot: Dovecot = start_dovecot(
            ca=ca, auth_mechanisms="plain login apop",
            extra_config="disable_plaintext_auth = no\n",
        )
        d = self.dovecot
        self.modes = {Security.NONE: d.pop3_port, Security.EXPLICIT: d.pop3_port,
                      Security.IMPLICIT: d.pop3s_port}
        self.ca_file = d.ca_file

    @property
    def version(self) -> str:
        return subprocess.run([DOVECOT, "--version"], capture_output=True, text=True,
                              check=False).stdout.split()[0]

    def add_user(self) -> tuple[str, str]:
        return self.dovecot.add_user()

    def deliver(self, user: str, *messages: bytes) -> None:
        self.dovecot.deliver(user, *messages)

    def message_count(self, user: str) -> int:
        return self.dovecot.message_count(user)

    def diagnostics(self) -> str:
        return self.dovecot.diagnostics()

    def stop(self) -> None:
        self.dovecot.stop()


#: name -> (class, reason it cannot run here or None)
SERVERS = {
    "dovecot": DovecotServer,
    "mailutils-pop3d": MailutilsPop3d,
    "popa3d": Popa3d,
    "solid-pop3d": SolidPop3d,
    "cyrus-pop3d": CyrusPop3d,
    "courier-pop": CourierPop3d,
}


def unavailable(name: str) -> str | None:
    if name == "dovecot":
        return dovecot_unavailable_reason()
    server = SERVERS[name]
    return unavailable_reason(server.package, namespace=server.namespace)  # type: ignore[attr-defined]


def start(name: str, ca: trustme.CA):
    server = SERVERS[name]
    if name == "dovecot":
        return server(ca)
    return server(ca=ca).start()


def best_mode(server) -> Security:
    """The most secure mode the server offers: what a user would pick."""
    for mode in (Security.IMPLICIT, Security.EXPLICIT, Security.NONE):
        if mode in server.modes:
            return mode
    raise AssertionError("a server with no mode")
