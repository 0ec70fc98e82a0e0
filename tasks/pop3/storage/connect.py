"""Reaching fsspec storage: the file system for a URL (SFTP host keys checked as
``locations.connection_options`` says), and the errors that name the URL without its
password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError, SaveError
from prefect_pop3mail.tasks.pop3.locations import (
    REMOTE_PROTOCOLS,
    connection_options,
    protocol,
    public_url,
)


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
