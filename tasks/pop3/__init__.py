"""The engine: receiving one mailbox, without Prefect. Its parts, each a sub-package:

- ``protocol/``: talking to the servers (POP3, and the OAuth2 token endpoint);
- ``message/``: one message's bytes into saved files;
- ``trust/``: what a signature or an encryption layer means, and whom to believe;
- ``storage/``: where saved mail and the mailbox's state live, on every back-end.

At the root, what one run needs and every part shares: ``receiver`` (one run of one
mailbox), ``models`` (the plain data it takes and returns), ``errors``, ``redaction``,
``sinks`` (where bytes go), ``locations`` (where saved mail may be), ``tokens`` (OAuth2
tokens, as the settings, the session and the providers speak of them).
tests/test_layers.py holds which part may import which (a DAG; CONTRIBUTING.md, the map).
"""
