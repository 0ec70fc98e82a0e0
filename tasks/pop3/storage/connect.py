"""Reaching fsspec storage: the file system for a URL, SFTP host keys checked, and the
errors that name the URL without its password. Used by the storage and by whoever opens a
saved file's URL (``Location.open``).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError, SaveError
from prefect_pop3mail.tasks.pop3.locations import REMOTE_PROTOCOLS, protocol, public_url


class KnownHostsPolicy:
    """Accept an SFTP server's host key only when it is in the known_hosts file ``path``,
    never on first sight (fsspec's own default)."""

    def __init__(self, path: str):
        self.path = path

    def missing_host_key(self, client, hostname: str, key) -> None:
        import paramiko

        known = paramiko.HostKeys()
        try:
            known.load(self.path)
        except OSError as exc:
            raise paramiko.SSHException(f"cannot read known hosts {self.path}: {exc}") from exc
        entry = known.lookup(hostname)
        if entry is None or entry.get(key.get_name()) != key:
            raise paramiko.SSHException(f"host key of {hostname} is not in {self.path}; add it "
                                        "(ssh-keyscan) to trust this server")


def connection_options(scheme: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for fsspec, with the known-hosts check for SFTP unless the user chose a
    policy (FSSPEC_SFTP_HOST_KEY_POLICY, or in code)."""
    if scheme not in ("sftp", "ssh"):
        return options
    import fsspec.config
    import paramiko

    if "host_key_policy" in options or "host_key_policy" in fsspec.config.conf.get(scheme, {}):
        return options
    known = options.pop("known_hosts", None) or os.environ.get("POP3MAIL_SFTP_KNOWN_HOSTS") \
        or os.path.expanduser("~/.ssh/known_hosts")
    policy = type("KnownHosts", (KnownHostsPolicy, paramiko.MissingHostKeyPolicy), {})(known)
    return {**options, "host_key_policy": policy}


def storage_error(url: str, doing: str, exc: BaseException,
                  kind: type[SaveError] = SaveDirectoryError) -> SaveError:
    """The error for a storage fault; its text never carries a password from the URL."""
    text = str(exc).replace(url, public_url(url)) if str(exc) else type(exc).__name__
    password = urlsplit(url).password
    if password:
        text = text.replace(password, "***")
    return kind(f"save_directory: {public_url(url)}: cannot {doing}: {text[:300]}")


def connect(url: str, storage_options: dict[str, Any] | None = None):
    """fsspec's file system for ``url`` and the path of its root."""
    import fsspec

    scheme = protocol(url) or ""
    try:
        options = connection_options(scheme, dict(storage_options or {}))
        return fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
    except ImportError as exc:
        extra = REMOTE_PROTOCOLS.get(scheme)
        hint = f"; install prefect-pop3mail[{extra}]" if extra else ""
        raise SaveDirectoryError(f"save_directory: {public_url(url)}: no file system for "
                                 f"{scheme}:// is installed{hint}") from exc
    except Exception as exc:
        raise storage_error(url, "connect", exc) from exc


def open_url(url: str, mode: str = "rb"):
    """Open a saved file's URL as the store reached it (SFTP: the same known hosts)."""
    import fsspec

    return fsspec.open(url, mode, **connection_options(protocol(url) or "", {}))
