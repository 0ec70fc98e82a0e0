"""popa3d (Debian package popa3d), run per connection as from inetd.

Its paths are compiled in: mailboxes are /var/mail/<user> (mbox), the privilege-separated
child chroots to /var/lib/popa3d as the system user "popa3d", and logins go through PAM
(/etc/pam.d/popa3d, or "other": pam_unix). So it runs in a private mount namespace where
/var/mail is the test's folder and /etc/passwd, /etc/shadow the test's copies; the postinst's
work (user "popa3d", /var/lib/popa3d) is done there and in tests/setup/pop3-servers.sh.
It offers no CAPA, no TLS, no APOP and no SASL: USER/PASS on a plain connection only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from prefect_pop3mail.tasks.pop3.models import LoginMethod
from tests.servers.unpacked import NamespaceServer, unpacked

CHROOT = Path("/var/lib/popa3d")


@dataclass
class Popa3d(NamespaceServer):
    package: ClassVar[str] = "popa3d"
    name: ClassVar[str] = "popa3d"
    system_users: ClassVar[dict[str, int]] = {"popa3d": 64010}
    binds: ClassVar[dict[str, str]] = {"/var/mail": "mail", str(CHROOT): "chroot"}
    login_methods: ClassVar[tuple[LoginMethod, ...]] = (LoginMethod.USER_PASS,)
    quirks: ClassVar[tuple[str, ...]] = (
        "no CAPA (a bare -ERR): capabilities are probed, PIPELINING is never assumed",
        "no STLS, no implicit TLS, no APOP, no SASL: plain USER/PASS only",
    )

    def _start(self) -> None:
        # The chroot must exist to be covered; the setup script creates it as postinst does.
        CHROOT.mkdir(mode=0o755, exist_ok=True)
        for sub in ("mail", "chroot"):
            (self.root / sub).mkdir(mode=0o755)
        os.chmod(self.root / "mail", 0o1777)
        super()._start()

    def command(self) -> list[str]:
        return [str(unpacked(self.package) / "usr/sbin/popa3d")]

    def mbox(self, user: str) -> Path:
        return self.root / "mail" / user
