"""The one TLS client context, for the POP3 server and the OAuth2 token endpoint alike.

The system's CAs are always trusted; ``tls_ca_file``, when set, is trusted in addition to
them (``ssl.create_default_context(cafile=...)`` alone would trust that file *instead*).
"""

from __future__ import annotations

import ssl

from prefect_pop3mail.tasks.pop3.errors import ConfigurationError


def client_context(ca_file: str | None = None, *, verify: bool = True) -> ssl.SSLContext:
    """A client context: TLS 1.2 at least; certificates and host names checked unless
    ``verify`` is False (POP3 testing only: the token endpoint always verifies)."""
    if verify:
        context = ssl.create_default_context()
        if ca_file:
            try:
                context.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigurationError("tls_ca_file", f"cannot load CA file: {exc}") from exc
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


__all__ = ["client_context"]
