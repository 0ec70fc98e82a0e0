"""Solid POP3 (Debian package solid-pop3d), run per connection as from inetd.

Logins go through PAM (pam_unix), and the server looks up its own system user "spop3d"
(the postinst's adduser), so it runs in a private mount namespace over the test's copies of
/etc/passwd and /etc/shadow. Its configuration (-f) and mbox maildrops live in the temp dir.
APOP secrets are the user's ~/.spop3d, as the package's pop_auth writes it. No CAPA, no TLS,
no SASL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from prefect_pop3mail.tasks.pop3.models import LoginMethod
from tests.servers.unpacked import NamespaceServer, unpacked


@dataclass
class SolidPop3d(NamespaceServer):
    package: ClassVar[str] = "solid-pop3d"
    name: ClassVar[str] = "solid-pop3d"
    system_users: ClassVar[dict[str, int]] = {"spop3d": 64011}
    login_methods: ClassVar[tuple[LoginMethod, ...]] = (LoginMethod.USER_PASS, LoginMethod.APOP)
    quirks: ClassVar[tuple[str, ...]] = (
        "no CAPA (-ERR unknown command): capabilities are probed, PIPELINING never assumed",
        "no STLS, no implicit TLS, no SASL: USER/PASS and APOP on a plain connection",
        "mbox: the blank separator line before the next From_ line is sent as part of the "
        "message (one extra empty line at the end)",
        "a missing bulletin folder is a fatal error at login: AddBulletins no",
    )

    def _start(self) -> None:
        mail = self.root / "mail"
        mail.mkdir()
        os.chmod(mail, 0o1777)  # users create their own dot-lock files here
        (self.root / "spop3d.conf").write_text(
            "<Global>\n"
            f'\tMailDropName\t"{mail}/%s"\n'
            "\tMailDropType\tmailbox\n"
            "\tAllowAPOP\tyes\n"
            "\tAddBulletins\tno\n"
            "\tLogStatistics\tno\n"
            "</Global>\n"
        )
        super()._start()

    def command(self) -> list[str]:
        return [str(unpacked(self.package) / "usr/sbin/solid-pop3d"),
                "-f", str(self.root / "spop3d.conf")]

    def mbox(self, user: str) -> Path:
        return self.root / "mail" / user

    def add_user(self) -> tuple[str, str]:
        name, password = super().add_user()
        self._set_apop_secret(name, password)
        return name, password

    def _set_apop_secret(self, user: str, secret: str) -> None:
        """~/.spop3d as pop_auth(1) writes it: each byte of the secret inverted, in hex
        (pop_auth itself prompts on a terminal)."""
        home = self.root / "home" / user
        path = home / ".spop3d"
        inverted = "".join(f"{~b & 0xFF:02x}" for b in secret.encode())
        path.write_text(f"APOPSecret {inverted} \n")
        os.chown(path, self.uids[user], self.gid)
        os.chmod(path, 0o600)
