"""Plain data the engine takes and returns. No Prefect here: the block converts itself
into these, and downstream steps receive ``ReceivedMail``."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    computed_field,
    model_validator,
)
from pydantic_core import core_schema

from prefect_pop3mail.tasks.pop3.locations import (
    is_remote,
    is_url,
    local_path,
    location_problem,
    open_url,
)
from prefect_pop3mail.tasks.pop3.tokens import CallableTokenSource, TokenSource


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


def _token_source(value: Any) -> TokenSource | None:
    """A plain function returning a token is accepted too, wrapped as a TokenSource."""
    if value is None or isinstance(value, TokenSource):
        return value
    if callable(value):
        return CallableTokenSource(value)
    raise ValueError("token_provider: must be a TokenSource or a function returning a token")


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
    #: Gives fresh OAuth2 access tokens; set for OAUTH2 configurations.
    token_provider: Annotated[TokenSource | None, BeforeValidator(_token_source)] = Field(
        default=None, exclude=True, repr=False
    )

    @property
    def mailbox_key(self) -> str:
        """Identifies the mailbox (not the configuration): its journal and work folder."""
        return f"{self.user.casefold()}@{self.host.casefold()}:{self.port}"


class SaveOptions(BaseModel):
    """What to save for each message, and where: a local ``directory``, or the ``url`` of
    durable storage (tasks/pop3/storage/), whose journal then lives beside the saved files.
    A ``file://`` URL is a local directory."""

    model_config = ConfigDict(frozen=True)

    directory: Path | None = None
    #: An fsspec URL of a protocol locations.py allows (s3://, gs://, az://, sftp://).
    url: str | None = None
    #: Extra arguments for the fsspec file system (endpoint, key file...); not secrets.
    storage_options: dict[str, Any] = {}
    save_text: bool = True
    save_attachments: bool = True
    save_original: bool = True
    private: bool = True
    #: PKCS#12 key store and its password, for S/MIME decryption.
    key_store: Path | None = None
    key_password: SecretStr | None = None
    #: PEM file of roots trusted for S/MIME signers, besides the system's.
    trust_store: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _durable_url(cls, data: Any) -> Any:
        """Only durable storage; a local folder's URL is that folder."""
        url = data.get("url") if isinstance(data, dict) else None
        if isinstance(url, str):
            if problem := location_problem(url):
                raise ValueError(f"save_directory: {problem}")
            if not is_remote(url):
                data = {**data, "directory": local_path(url), "url": None}
        return data

    @model_validator(mode="after")
    def _one_location(self) -> SaveOptions:
        if (self.directory is None) == (self.url is None):
            raise ValueError("save_directory: give a local folder or a storage URL")
        return self


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


#: Large enough for real mail (providers cap messages at 25 to 150 MB), small enough that an
#: endless message cannot fill the disk.
DEFAULT_MAX_MESSAGE_SIZE = 200 * 1024 * 1024


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
    #: A message that failed this many runs is set aside: its original alone is saved
    #: under quarantine/ and it is then treated as saved.
    quarantine_after: int = 3


def _as_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


class Location(str):
    """Where a saved file or folder is: a local absolute path, or a storage URL
    (``s3://bucket/prefix/...``, ``sftp://...``) when the save directory is one.

    A ``str``: results, events, artifacts and JSON carry it as the text it is, and both
    kinds read the same way, ``location.read_bytes()`` or ``with location.open() as f``
    (fsspec for a URL). ``location.path`` is the ``pathlib.Path`` of a local one.
    """

    __slots__ = ()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(
            _as_text,
            core_schema.no_info_after_validator_function(cls, core_schema.str_schema()),
            serialization=core_schema.to_string_ser_schema(),
        )

    @property
    def is_url(self) -> bool:
        """On storage (a URL), rather than a local path."""
        return is_url(self)

    @property
    def path(self) -> Path:
        """The local path; ValueError for a location on storage (open it instead)."""
        if self.is_url:
            raise ValueError(f"{self} is on storage, not a local path; use its open()")
        return Path(self)

    @property
    def name(self) -> str:
        """The last part: the file's or folder's name."""
        return self.rstrip("/").rsplit("/", 1)[-1]

    def open(self, mode: str = "rb"):
        """Open it: a local file, or through fsspec (with the worker's credentials)."""
        if not self.is_url:
            return open(self, mode)  # noqa: SIM115 - the caller closes it
        return open_url(self, mode)

    def read_bytes(self) -> bytes:
        with self.open("rb") as f:
            return f.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)


def _moved_url_fields(data: Any, pairs: tuple[tuple[str, str], ...]) -> Any:
    """Results of the release before this one kept storage locations in ``*_url`` fields
    (the path fields then empty): read them into the one location field."""
    if isinstance(data, dict) and any(data.get(url) for _, url in pairs):
        data = dict(data)
        for path, url in pairs:
            if data.get(url) and not data.get(path):
                data[path] = data[url]
    return data


class SavedAttachment(BaseModel):
    #: Where it was saved: a local path, or a URL on storage.
    path: Location | None = None
    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool = False
    #: The MIME part number ("2", "1.3"), within ``parent`` when that is set; for a file
    #: from a winmail.dat, its number in it ("2", or "2.1" inside an Outlook item).
    part: str = ""
    #: The attached message (.eml) or the winmail.dat this file was laid out from; None for
    #: the message's own parts.
    parent: Location | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_url_fields(cls, data: Any) -> Any:
        return _moved_url_fields(data, (("path", "url"), ("parent", "parent_url")))


class SignatureInfo(BaseModel):
    """What an S/MIME signature says, each fact on its own; ``verified`` only when all hold.

    With several signers the top-level facts hold for all of them (the From match for one)
    and ``signers`` has each one's own."""

    signer: str | None = None
    #: Intact: the content is what was signed, the signature matches the signer's
    #: certificate, and no broken algorithm (SHA-1, MD5) was used.
    signature_valid: bool = False
    #: The signer's certificate chains to a trusted root (system CAs, S/MIME trust store).
    signer_trusted: bool = False
    #: "whole message", or the part the signature covers ("part 2"): the rest is unsigned.
    covers: str = "whole message"
    #: One of the certificate's addresses is the From address; None when there is no From.
    signer_matches_from: bool | None = None
    detail: str = ""
    signed_at: datetime | None = None
    signers: list[SignatureInfo] = []

    @computed_field
    @property
    def verified(self) -> bool:
        """Valid, trusted, covering the whole message, and from the From address."""
        return (self.signature_valid and self.signer_trusted and self.signer_matches_from is True
                and self.covers == "whole message")


class ReceivedMail(BaseModel):
    """One received message, as handed to downstream steps."""

    #: Stable for this message of this mailbox across runs (mailbox, UIDL and the SHA-256
    #: of the original): a consumer told twice about a message can drop the repeat.
    id: str = ""
    configuration: str
    uidl: str
    message_id: str | None = None
    sender: str = ""
    recipients: list[str] = []
    subject: str = ""
    date: datetime | None = None
    size: int = 0
    sha256: str = ""
    #: Where the message's folder and files are: local paths, or URLs on storage (a save
    #: directory such as s3://...); each opens with ``.open()`` or ``.read_bytes()``.
    folder: Location | None = None
    original_path: Location | None = None
    text_path: Location | None = None
    text_sha256: str | None = None
    html_path: Location | None = None
    html_sha256: str | None = None
    attachments: list[SavedAttachment] = []
    decrypted: bool = False
    signature: SignatureInfo | None = None
    deleted: bool = False
    #: Failed too often to be laid out: only the original was saved, under quarantine/.
    quarantined: bool = False
    warnings: list[str] = []
    #: When it was saved (UTC): what replay's window is about. None in results of releases
    #: before replay.
    saved_at: datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_url_fields(cls, data: Any) -> Any:
        return _moved_url_fields(data, (("folder", "folder_url"), ("original_path", "original_url"),
                                        ("text_path", "text_url"), ("html_path", "html_url")))

    @property
    def saved_paths(self) -> list[Location]:
        """Every file saved for the message (local paths or URLs)."""
        paths = [self.original_path, self.text_path, self.html_path]
        return [p for p in paths if p] + [a.path for a in self.attachments if a.path]

    @property
    def location(self) -> str:
        """The message's folder, as a local path or a storage URL ("" when not saved)."""
        return str(self.folder or "")


def _locations(model: type[BaseModel]) -> tuple[str, ...]:
    """The model's fields that hold a Location."""
    return tuple(name for name, field in model.model_fields.items()
                 if Location in (field.annotation, *get_args(field.annotation)))


_MAIL_LOCATIONS = _locations(ReceivedMail)
_ATTACHMENT_LOCATIONS = _locations(SavedAttachment)


def locate_result(data: dict[str, Any], folder: str, locate: Callable[[str], str]
                  ) -> dict[str, Any]:
    """A result as a ``.complete`` marker keeps it (``ReceivedMail`` as JSON, its
    locations relative to the save directory) with each location where ``locate`` puts
    it: the store builds what a run returns this way, and replay what it hands on again.
    Every location must lie in the message's ``folder`` (relative too); ValueError names
    the one that does not."""

    def place(item: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
        for name in _LEGACY_URL_FIELDS:  # read into the location fields by the models
            if item.get(name):
                raise ValueError(f"{name}: a saved result keeps no URL field (its locations "
                                 "are relative to the save directory)")
        placed = dict(item)
        for name in fields:
            relative = item.get(name)
            if not relative:
                continue
            if not isinstance(relative, str) or not _within(relative, folder):
                raise ValueError(f"{name}: {str(relative)[:200]!r} is not in the message's "
                                 f"folder {folder}")
            placed[name] = locate(relative)
        return placed

    if data.get("folder") != folder:
        raise ValueError(f"folder: {str(data.get('folder'))[:200]!r} is not {folder}")
    placed = place({**data, "folder": None}, _MAIL_LOCATIONS)
    placed["folder"] = locate(folder)
    attachments = data.get("attachments") or []
    if not isinstance(attachments, list):
        raise ValueError("attachments: not a list")
    placed["attachments"] = [place(a, _ATTACHMENT_LOCATIONS) if isinstance(a, dict) else a
                             for a in attachments]
    return placed


#: Where the release before kept storage locations (see ``_moved_url_fields``).
_LEGACY_URL_FIELDS = ("folder_url", "original_url", "text_url", "html_url", "url",
                      "parent_url")


def _within(relative: str, folder: str) -> bool:
    """``relative`` names something inside ``folder``, with no way out of it."""
    return (relative.startswith(f"{folder}/") and not relative.startswith("/")
            and posixpath.normpath(relative) == relative
            and ".." not in relative.split("/"))


class MessageFailure(BaseModel):
    """A message that could not be received this run; it stays on the server."""

    uidl: str
    number: int
    error: str
    error_type: str
    #: Failed attempts so far, this one included (runs that got this far with it).
    attempts: int = 1


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
    #: Saved by an earlier run that ended before announcing them; announced by this one.
    late: list[ReceivedMail] = []
    failed: list[MessageFailure] = []
    skipped_known: int = 0
    skipped_too_large: list[str] = []
    skipped_filtered: int = 0
    listed: list[ListedMessage] = []
    #: Messages still on the server and not saved when the run ended.
    waiting: int = 0
    #: POP3 sessions the run opened (at most its batches plus receiver.MAX_EXTRA_SESSIONS).
    sessions: int = 0
    #: Why the run stopped before it was done (the session cap, a full disk), else None;
    #: what it did not do waits on the server for the next run.
    stopped: str | None = None

    @property
    def quarantined(self) -> list[ReceivedMail]:
        return [m for m in self.received if m.quarantined]

    @property
    def announcements(self) -> list[ReceivedMail]:
        """What downstream steps must hear of: this run's messages and late ones, each
        once (a message saved again after a crash is both)."""
        fresh = {m.id for m in self.received}
        return [*(m for m in self.late if m.id not in fresh), *self.received]


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
