"""The engine's error tree.

Every error carries what the server or provider said (``reply``), never a secret.
Callers catch ``POP3MailError`` for everything, or a subclass for one failure.
"""

from __future__ import annotations


class POP3MailError(Exception):
    """Base of every error this package raises."""

    #: False when retrying cannot help (a bad password stays bad).
    retryable: bool = False


# --- configuration -------------------------------------------------------------------


class ConfigurationError(POP3MailError, ValueError):
    """A configuration value is missing or wrong; the message names the field."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(f"{field}: {problem}")


class InactiveConfigurationError(POP3MailError):
    """The configuration's status is Inactive, so it may not be used."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(
            f"POP3 mail configuration {name!r} is Inactive; set its Status to Active to use it"
        )


# --- transport -----------------------------------------------------------------------

#: How a timeout error names the setting that changes it (the block's title and field).
TIMEOUT_HINT = "if the server is only slow, raise 'Timeout (seconds)' (timeout)"


class POP3ConnectionError(POP3MailError):
    """The server could not be reached, or the connection broke."""

    retryable = True


class POP3TimeoutError(POP3ConnectionError):
    """The server did not answer within the timeout. The message names the server, the
    phase (connecting, TLS, the greeting, a command's reply) and the Timeout field."""


class POP3HostNotFoundError(POP3ConnectionError):
    """The server's host name is not known (DNS says so). Not retried: it will not appear
    within a run; a name server that is down (try again later) is retried instead."""

    retryable = False


class POP3ConnectionRefusedError(POP3ConnectionError):
    """The host refused the connection: nothing listens on that port. Not retried."""

    retryable = False


class POP3TLSError(POP3ConnectionError):
    """The TLS handshake or the certificate check failed."""

    retryable = False


class STLSNotOfferedError(POP3TLSError):
    """Explicit TLS was required but the server does not offer STLS."""


class WrongSecurityModeError(POP3TLSError):
    """The port speaks another security mode than the configured one (implicit TLS on a
    plain POP3 port, or the reverse). The message says which setting to change."""


class UntrustedCertificateError(POP3TLSError):
    """The server's certificate does not chain to a trusted CA, or does not name the host.
    The message names its issuer and the settings that fix it."""


class POP3ProtocolError(POP3MailError):
    """The server sent something that is not POP3 (garbage, an endless line...)."""

    retryable = True

    def __init__(self, message: str, reply: bytes | str | None = None):
        self.reply = _as_text(reply)
        super().__init__(message if reply is None else f"{message}: {self.reply!r}")


class InvalidUIDLError(POP3ProtocolError):
    """One message's UIDL breaks RFC 1939 (1-70 characters 0x21-0x7E) or is shared with
    another message. The session reports it for that message only (``number``); the
    message cannot be journalled safely, so it stays on the server."""

    retryable = False
    #: The UIDL when it is well-formed but shared (DuplicateUIDLError), else None.
    uidl: str | None = None

    def __init__(self, number: int, problem: str, reply: bytes | str | None = None):
        self.number = number
        super().__init__(f"message {number}: {problem}", reply)


class DuplicateUIDLError(InvalidUIDLError):
    """Two or more messages of one listing share a UIDL: the journal could not tell them
    apart, so none of them is received or deleted."""

    def __init__(self, number: int, problem: str, uidl: str):
        super().__init__(number, problem, uidl)
        self.uidl = uidl


# --- replies ---------------------------------------------------------------------------


class POP3ReplyError(POP3MailError):
    """The server answered -ERR. ``command`` has no arguments, so no secret leaks."""

    def __init__(self, command: str, reply: bytes | str):
        self.command = command
        self.reply = _as_text(reply)
        super().__init__(f"{command} failed: {self.reply}")


class UIDLNotSupportedError(POP3ReplyError):
    """The server refused UIDL: without unique ids there is no journal, so neither "New
    messages only" nor a safe rerun after a crash (that would delete or save again)."""


class POP3AuthError(POP3ReplyError):
    """Login was refused. Never retried: the same credentials fail the same way."""


class POP3InUseError(POP3ReplyError):
    """[IN-USE]: another session holds the maildrop lock (RFC 2449)."""

    retryable = True


class POP3LoginDelayError(POP3ReplyError):
    """[LOGIN-DELAY]: the server wants more time between logins (RFC 2449)."""

    retryable = True


class POP3SysTempError(POP3ReplyError):
    """[SYS/TEMP]: a temporary server failure (RFC 3206)."""

    retryable = True


class POP3SysPermError(POP3ReplyError):
    """[SYS/PERM]: a permanent server failure (RFC 3206)."""


class POP3AuthResponseError(POP3AuthError):
    """[AUTH]: the credentials are wrong, as opposed to a server fault (RFC 3206)."""


RESPONSE_CODE_ERRORS: dict[str, type[POP3ReplyError]] = {
    "IN-USE": POP3InUseError,
    "LOGIN-DELAY": POP3LoginDelayError,
    "SYS/TEMP": POP3SysTempError,
    "SYS/PERM": POP3SysPermError,
    "AUTH": POP3AuthResponseError,
}


# --- runs -----------------------------------------------------------------------------


class MessagesNotReceivedError(POP3MailError):
    """No message of the run could be saved; they all stay on the server."""


class MailboxesFailedError(POP3MailError):
    """Some mailboxes of a many-mailbox run failed; ``received`` has the others' mail, by
    configuration name."""

    def __init__(self, message: str, received: dict):
        super().__init__(message)
        self.received = received


# --- OAuth2 ----------------------------------------------------------------------------


class OAuth2Error(POP3MailError):
    """A token could not be obtained. Carries the provider's own error text."""

    def __init__(self, message: str, error: str | None = None, description: str | None = None):
        self.error = error
        self.description = description
        detail = ": ".join(p for p in (error, description) if p)
        super().__init__(f"{message} ({detail})" if detail else message)


class OAuth2InvalidClientError(OAuth2Error):
    """invalid_client: wrong client ID or client secret."""


class OAuth2InvalidScopeError(OAuth2Error):
    """invalid_scope: the scope is not known to the provider or not granted."""


class OAuth2EndpointUnreachableError(OAuth2Error):
    """The token endpoint could not be reached."""

    retryable = True


class OAuth2TLSError(OAuth2EndpointUnreachableError):
    """The token endpoint's certificate is not trusted, or TLS with it failed."""

    retryable = False


class OAuth2ResponseError(OAuth2Error):
    """The token endpoint answered with something that is not a token (not JSON...)."""


# --- saving ----------------------------------------------------------------------------


class SaveError(POP3MailError):
    """A message could not be saved; it stays on the server."""


class DiskFullError(SaveError):
    """No space left on the device holding the save directory."""


class SaveDirectoryError(SaveError):
    """The save directory cannot be created or written."""


class StorageError(SaveError):
    """Storage refused one message's files (a name, a size, a policy) though it still
    answers: that message's failure, not the run's."""


class MessageTooLargeError(POP3MailError):
    """A message exceeds the configured maximum size; it is left on the server."""


class SMIMEError(POP3MailError):
    """An S/MIME message could not be decrypted or checked."""


class SMIMEKeyNotFoundError(SMIMEError):
    """The key store named by the public key name does not exist."""


class SMIMEKeyPasswordError(SMIMEError):
    """The key store could not be opened with the public key password."""


class SMIMEDecryptError(SMIMEError):
    """The message is not encrypted for the configured key, or is damaged."""


def _as_text(reply: bytes | str | None) -> str:
    if reply is None:
        return ""
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return reply.rstrip("\r\n")[:500]
