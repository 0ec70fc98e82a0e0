"""Talking to the servers: a POP3 session, and the OAuth2 token endpoint it logs in with.

What this package promises:

- **One method per POP3 command** (``session.POP3Session``, after CPython's poplib), with
  RFC 2449 PIPELINING when the server offers it, and errors that carry the server's reply.
- **Secure by default**: certificates are verified (``tls``), explicit TLS never falls back
  to plain text, and no secret (password, client secret, token) reaches a log, an error or
  a result.
- **Bounded replies**: every status line, multi-line reply and token reply has a byte cap
  and an overall deadline (``lineio``, ``oauth.transport``); a message body streams into a
  sink, never into memory.
- **Errors that name the setting to change**: a failure a setting explains is looked at
  again (``probes``), and the connection check (``diagnostics``) reports what a user needs
  before the first run.

Nothing here parses a message or saves a file. Import the submodules; this package itself
imports nothing.
"""
