"""Install a peer's Debian package for the benchmark, when it is missing and we are root.

A ``/usr/sbin/policy-rc.d`` that exits 101 is in place during the install, so a package with
a service (fetchmail has one) is not started system-wide. Nothing is installed when not root:
the peer is then skipped, with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

POLICY = Path("/usr/sbin/policy-rc.d")


def ensure_command(command: str, package: str) -> str | None:
    """None when ``command`` is available (installing ``package`` if needed); else why not."""
    if shutil.which(command):
        return None
    if os.geteuid() != 0:
        return f"{command} is missing and we are not root (apt-get install {package})"
    created = not POLICY.exists()
    if created:
        POLICY.write_text("#!/bin/sh\nexit 101\n")
        POLICY.chmod(0o755)
    try:
        print(f"installing {package} with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:  # a stale package list: refresh it once
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            done = subprocess.run(install, env=env, capture_output=True, text=True)
    finally:
        if created:
            POLICY.unlink(missing_ok=True)
    if done.returncode != 0 or not shutil.which(command):
        return f"could not install {package}: {done.stderr.strip()[-300:]}"
    return None
