"""Plain data the engine takes and returns. No Prefect here: the block converts itself
into these, and downstream steps receive ``ReceivedMail``."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _CaseInsensitiveEnum(StrEnum):
    @classmethod
    def _missing_(cls, value: object):
        if isinstance(value, str):
            wanted = value.strip().casefold()
            for member in cls:
                if member.value.casefold() == wanted or member.name.casefold() == wanted:
                    return member
        return None


class Status(_CaseInsensitiveEnum):
    ACTIVE = "Active"
    INACTIVE = "Inactive"


class Security(_CaseInsensitiveEnum):
    NONE = "None"
    EXPLICIT = "Explicit SSL/TLS"
    IMPLICIT = "Implicit SSL/TLS"


# String values above, ports here: POP3 and STLS share 110, so ports can't be enum values.
DEFAULT_PORTS = {Security.NONE: 110, Security.EXPLICIT: 110, Security.IMPLICIT: 995}


class Authentication(_CaseInsensitiveEnum):
    BASIC = "Basic"
    OAUTH2 = "OAUTH2"


class LoginMethod(_CaseInsensitiveEnum):
    """How to log in. AUTO picks USER/PASS for Basic and XOAUTH2 for OAUTH2."""

    AUTO = "auto"
    USER_PASS = "user"
    APOP = "apop"
    PLAIN = "plain"
    XOAUTH2 = "xoauth2"
    OAUTHBEARER = "oauthbearer"


class ConnectionSettings(BaseModel):
    """Where and how to connect and log in. Secrets stay SecretStr until the wire."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    host: str
    port: int
    security: Security = Security.IMPLICIT
    user: str
    password: SecretStr | None = None
    login_method: LoginMethod = LoginMethod.AUTO
    tls_verify: bool = True
    tls_ca_file: str | None = None
    timeout: float = 60.0
    #: SASL: send the response with AUTH (True) or after the server's "+" (False, the form
    #: Microsoft 365 requires).
    sasl_initial_response: bool = False
    source_address: str | None = None
    #: Returns a fresh OAuth2 access token; set for OAUTH2 configurations.
    token_provider: Callable[[], SecretStr] | None = Field(default=None, exclude=True, repr=False)

    @property
    def mailbox_key(self) -> str:
        """Identifies the mailbox (not the configuration) for journals and locks."""
        return f"{self.user.casefold()}@{self.host.casefold()}:{self.port}"


class SaveOptions(BaseModel):
    """What to save for each message, and where."""

    model_config = ConfigDict(frozen=True)

    directory: Path
    save_text: bool = True
    save_attachments: bool = True
    save_original: bool = True
    private: bool = True
    #: PKCS#12 key store and its password, for S/MIME decryption.
    key_store: Path | None = None
    key_password: SecretStr | None = None


class HeaderFilter(BaseModel):
    """Regular expressions (case-insensitive search) a message's headers must match."""

    model_config = ConfigDict(frozen=True)

    sender: str | None = None
    recipient: str | None = None
    subject: str | None = None

    def is_empty(self) -> bool:
        return not (self.sender or self.recipient or self.subject)

    def matches(self, sender: str, recipients: list[str], subject: str) -> bool:
        def hit(pattern: str | None, *values: str) -> bool:
            return pattern is None or any(re.search(pattern, v, re.I) for v in values)

        return (
            hit(self.sender, sender)
            and hit(self.recipient, *(recipients or [""]))
            and hit(self.subject, subject)
        )


class ReceiveOptions(BaseModel):
    """How one run receives: limits, filters, deletion, journalling."""

    model_config = ConfigDict(frozen=True)

    remove_after_read: bool = False
    new_messages_only: bool = True
    max_messages: int | None = None
    max_message_size: int | None = None
    filters: HeaderFilter = HeaderFilter()
    dry_run: bool = False
    #: QUIT and reconnect after this many deletions, so a long run commits as it goes.
    commit_every: int | None = None
    #: None: use PIPELINING when the server offers it.
    pipelining: bool | None = None
    pipeline_window: int = 64
    #: A locked mailbox ([IN-USE], [LOGIN-DELAY]) is tried again this often, waiting
    #: in_use_backoff, then twice that, and so on.
    in_use_retries: int = 3
    in_use_backoff: float = 2.0


class SavedAttachment(BaseModel):
    path: Path
    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool = False
    #: The MIME part number ("2", "1.3"), within ``parent`` when that is set.
    part: str = ""
    #: The attached message (.eml) this file was laid out from; None for the message itself.
    parent: Path | None = None


class SignatureInfo(BaseModel):
    signer: str | None = None
    #: The signature matches the content and the signer's certificate (the certificate's
    #: chain to a trusted root is not checked; ``detail`` says what was).
    verified: bool = False
    detail: str = ""
    signed_at: datetime | None = None


class ReceivedMail(BaseModel):
    """One received message, as handed to downstream steps."""

    configuration: str
    uidl: str
    message_id: str | None = None
    sender: str = ""
    recipients: list[str] = []
    subject: str = ""
    date: datetime | None = None
    size: int = 0
    sha256: str = ""
    folder: Path | None = None
    original_path: Path | None = None
    text_path: Path | None = None
    text_sha256: str | None = None
    html_path: Path | None = None
    html_sha256: str | None = None
    attachments: list[SavedAttachment] = []
    decrypted: bool = False
    signature: SignatureInfo | None = None
    deleted: bool = False
    warnings: list[str] = []

    @property
    def saved_paths(self) -> list[Path]:
        paths = [self.original_path, self.text_path, self.html_path]
        return [p for p in paths if p] + [a.path for a in self.attachments]


class MessageFailure(BaseModel):
    """A message that could not be received this run; it stays on the server."""

    uidl: str
    number: int
    error: str
    error_type: str


class ListedMessage(BaseModel):
    """What a dry run reports: a message that would be received."""

    number: int
    uidl: str
    size: int
    sender: str = ""
    subject: str = ""


class ReceiveReport(BaseModel):
    """Everything one run did."""

    configuration: str
    received: list[ReceivedMail] = []
    failed: list[MessageFailure] = []
    skipped_known: int = 0
    skipped_too_large: list[str] = []
    skipped_filtered: int = 0
    listed: list[ListedMessage] = []
    waiting: int = 0


class ConnectionReport(BaseModel):
    """What a connection check found. Retrieves nothing."""

    configuration: str
    host: str
    port: int
    security: Security
    greeting: str = ""
    capabilities: list[str] = []
    tls_version: str | None = None
    certificate_subject: str | None = None
    certificate_expires: datetime | None = None
    login_ok: bool = False
    login_error: str | None = None
    messages_waiting: int | None = None
    mailbox_size: int | None = None
    token_expires: datetime | None = None
    token_scopes: list[str] = []
    token_audience: str | None = None
    sasl_mechanisms: list[str] = []
    hints: list[str] = []
