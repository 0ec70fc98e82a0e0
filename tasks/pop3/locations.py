"""Which save directories are allowed (a local folder, or a URL of durable storage), how
they are shown (never with a password), and how a saved file's URL is opened.

A save directory may be chosen per run (the flows' ``save_directory`` parameter), so this
is checked when a configuration is validated and again when a run starts. Only protocols
whose writes stay written once acknowledged are allowed: ``memory://`` would "save" mail
into a process that ends with the run, and ``http(s)://`` would send a mailbox to whatever
web server the worker reaches.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: A local folder, the way fsspec names one.
LOCAL_PROTOCOLS = frozenset(("file", "local"))
#: Durable remote storage, and the extra of prefect-pop3mail that installs its fsspec file
#: system.
REMOTE_PROTOCOLS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure",
                    "abfs": "azure", "abfss": "azure", "sftp": "sftp", "ssh": "sftp"}
ALLOWED = ", ".join(sorted(LOCAL_PROTOCOLS | set(REMOTE_PROTOCOLS)))


def is_url(location: str) -> bool:
    """Whether ``location`` is written as a URL (``scheme://...``) rather than a path."""
    return bool(_URL.match(location))


def protocol(location: str) -> str | None:
    """The URL's protocol, lowercase; None for a path."""
    return location.split("://", 1)[0].lower() if is_url(location) else None


def is_remote(location: str) -> bool:
    """Whether ``location`` names fsspec storage (not a local folder, nor ``file://``)."""
    return protocol(location) in REMOTE_PROTOCOLS


def location_problem(location: str) -> str | None:
    """Why ``location`` cannot be a save directory, or None (the text follows the field
    name, ``save_directory``)."""
    if "::" in location.split("/", 1)[0] or (is_url(location) and "::" in location):
        return ("a chained fsspec URL (with '::') is not allowed; name the storage itself "
                f"(a local folder, or one of {ALLOWED})")
    scheme = protocol(location)
    if scheme is None:
        return None
    if scheme not in LOCAL_PROTOCOLS and scheme not in REMOTE_PROTOCOLS:
        return (f"{scheme}:// is not durable storage; use a local folder or a URL of one "
                f"of {ALLOWED}")
    parts = urlsplit(location)
    if parts.password is not None:
        return ("a storage URL must not hold a password (it would be shown and stored in "
                "clear); give the worker its credentials in its environment")
    if scheme in LOCAL_PROTOCOLS and parts.netloc not in ("", "localhost"):
        return f"{scheme}:// names a folder of this machine; {parts.netloc!r} is another host"
    return None


def local_path(location: str) -> Path:
    """The local folder ``location`` names (a path, ``file://`` or ``local://``), absolute.
    ValueError for remote storage."""
    scheme = protocol(location)
    if scheme is None:
        return Path(location).expanduser().absolute()
    if scheme not in LOCAL_PROTOCOLS:
        raise ValueError(f"{public_url(location)} is not a local folder")
    parts = urlsplit(location)
    return Path(unquote(parts.path) or "/").absolute()


def public_url(url: str) -> str:
    """``url`` without a password: what results, events and errors may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


# --- opening a location on storage -------------------------------------------------------


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


def open_url(url: str, mode: str = "rb"):
    """Open a saved file's URL as the store reached it (SFTP: the same known hosts)."""
    import fsspec

    return fsspec.open(url, mode, **connection_options(protocol(url) or "", {}))
