"""OAuth2 client-credentials tokens (RFC 6749 section 4.4) for a POP3 login.

Where requests go: only to the origin of the configured https:// token endpoint, and never
on through a redirect. How long and how much: each request ends within the configured
timeout, and a reply over ``transport.MAX_REPLY_BYTES`` is refused. Errors carry the
provider's own error and description, never the secret or a token.

Import the submodules; this package itself imports nothing.
"""
