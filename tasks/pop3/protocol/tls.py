"""The one TLS client context, for the POP3 server and the OAuth2 token endpoint alike.

The system's CAs are always trusted; ``tls_ca_file``, when set, is trusted in addition to
them (``ssl.create_default_context(cafile=...)`` alone would trust that file *instead*).

Contexts are shared: loading the system's CAs costs 35-40 ms, once per session before, 50
times in a 50-mailbox fan-out. A context is made again when a CA file it read changes or
the system's CA locations do (``SSL_CERT_FILE``, ``SSL_CERT_DIR``).
"""

from __future__ import annotations

import functools
import os
import ssl

from prefect_pop3mail.tasks.pop3.errors import ConfigurationError


def client_context(ca_file: str | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client context: TLS 1.2 at least; certificates and host names checked unless
    ``verify`` is False (POP3 testing only: the token endpoint always verifies). Shared:
    do not change it."""
    if not verify:
        return _context(None, False, ())
    system = ssl.get_default_verify_paths()
    files = (ca_file, system.cafile, system.capath)
    return _context(ca_file, True, tuple((path, _version(path)) for path in files))


def _version(path: str | None) -> tuple[int, int, int, int] | None:
    try:
        found = os.stat(path) if path else None
    except OSError:
        return None
    # ctime too: a file rewritten in place at its size with its mtime kept (cp -p) changes it
    return found and (found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


@functools.lru_cache(maxsize=16)
def _context(ca_file: str | None, verify: bool, _sources: tuple) -> ssl.SSLContext:
    """``_sources``: what the context is made of, with versions; a change makes a new one."""
    if verify:
        context = ssl.create_default_context()
        if ca_file:
            try:
                context.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:  # missing, unreadable, not PEM
                raise ConfigurationError("tls_ca_file", f"cannot load the CA file {ca_file!r}: "
                                         f"{exc.strerror or exc}") from exc
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


__all__ = ["client_context"]
