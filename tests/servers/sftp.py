"""A real SFTP server for tests: Debian's OpenSSH sshd on loopback, with its own config,
host key and one throwaway user key in a temporary folder (``Subsystem sftp internal-sftp``).

Clients trust it through a known_hosts file naming its host key, and log in as this
process's user with the throwaway key.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.servers import started

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def sftp_unavailable_reason() -> str | None:
    if not os.path.exists(SSHD):
        return "OpenSSH's sshd is not installed (apt-get install openssh-server, as root)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SFTPServer:
    def __init__(self):
        started("sshd (SFTP)", "sftp")
        self.root = Path(tempfile.mkdtemp(prefix="pop3mail-sshd-"))
        self.user = getpass.getuser()
        self.port = _free_port()
        self.host_key = self.root / "host_ed25519"
        self.user_key = self.root / "user_ed25519"
        for key in (self.host_key, self.user_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)
        authorized = self.root / "authorized_keys"
        authorized.write_text(Path(f"{self.user_key}.pub").read_text())
        self.known_hosts = self.root / "known_hosts"
        public = Path(f"{self.host_key}.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(public)}\n")
        config = self.root / "sshd_config"
        config.write_text(f"""\
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.root / "sshd.pid"}
AuthorizedKeysFile {authorized}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowUsers {self.user}
Subsystem sftp internal-sftp
""")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
        self.data = self.root / "data"
        self.data.mkdir()
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config), "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "wb"),
        )
        self._wait()

    def _wait(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd did not start")

    def url(self, folder: str) -> str:
        return f"sftp://{self.user}@127.0.0.1:{self.port}{self.data / folder}"

    def client_options(self) -> dict:
        """paramiko's connection options for the throwaway key, nothing else tried."""
        return {"key_filename": str(self.user_key), "look_for_keys": False,
                "allow_agent": False}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)
