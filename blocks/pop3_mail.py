"""The POP3 Mail Configuration block: one per mailbox, fields in the form's order."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Annotated, Any

from prefect.blocks.core import Block
from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from prefect_pop3mail.blocks.service_settings import POP3MailServiceSettings, key_name_problem
from prefect_pop3mail.tasks.pop3.errors import ConfigurationError, InactiveConfigurationError
from prefect_pop3mail.tasks.pop3.locations import is_remote, local_path, location_problem
from prefect_pop3mail.tasks.pop3.models import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PORTS,
    Authentication,
    ConnectionSettings,
    HeaderFilter,
    LoginMethod,
    ReceiveOptions,
    SaveOptions,
    Security,
    Status,
)
from prefect_pop3mail.tasks.pop3.protocol.oauth.endpoints import oauth_problems
from prefect_pop3mail.tasks.pop3.protocol.oauth.providers import client_credentials

_OAUTH_METHODS = {LoginMethod.XOAUTH2, LoginMethod.OAUTHBEARER}
#: Never in a pickle: they are loaded again from the saved document on the other side.
_SECRET_FIELDS = ("password", "public_key_password", "client_secret")


def _dropdown(enum_type: type) -> WithJsonSchema:
    """Inline an enum's values: Prefect's V1 form titles a $ref'd enum field with the enum's
    class name and docstring instead of the field's title and description."""
    return WithJsonSchema({"type": "string", "enum": [m.value for m in enum_type]})


def _project_url(label: str) -> str | None:
    """A ``[project.urls]`` entry of pyproject.toml, from the installed package's metadata."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        entries = metadata("prefect-pop3mail").get_all("Project-URL") or []
    except PackageNotFoundError:
        return None
    return next((url for name, _, url in (e.partition(", ") for e in entries)
                 if name == label), None)


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


class _Problems(ValueError):
    """Settings that cannot work together, as (field, problem); the text names each field
    with its title in the form."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = _in_form_order(problems)
        super().__init__("; ".join(f"{_label(f)}: {p}" for f, p in self.problems))


def _in_form_order(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    order = {name: i for i, name in enumerate(POP3MailConfiguration.model_fields)}
    return sorted(problems, key=lambda problem: order.get(problem[0], len(order)))


def _label(field: str) -> str:
    """``client_id (Client ID)``: the field as code names it and as the form shows it."""
    info = POP3MailConfiguration.model_fields.get(field)
    return f"{field} ({info.title})" if info is not None and info.title else field


def _problems_in(error: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for line in error.errors(include_url=False, include_input=False):
        found = (line.get("ctx") or {}).get("error")
        if isinstance(found, _Problems):
            problems += found.problems
            continue
        field = str(line["loc"][0]) if line["loc"] else "configuration"
        problems.append((field, line["msg"].removeprefix("Value error, ")))
    return _in_form_order(problems)


class POP3MailConfiguration(Block):
    """Details of a POP3 mail server and how to retrieve its mail. The name it is saved
    under is the configuration's ID (lowercase letters, digits and dashes).

    Attributes:
        description: What this configuration is for.
        status: Active or Inactive; an inactive configuration cannot be used.
        server: Host name or IP address of the POP3 server.
        user: The user profile (mailbox) to log in as.
        password: The password for the user profile.
        port: The POP3 port; 0 means 110, or 995 for Implicit SSL/TLS.
        security: None, Explicit SSL/TLS (STLS) or Implicit SSL/TLS.
        public_key_name: Names the private key store used to decrypt S/MIME mail.
        public_key_password: Password of that key store.
        save_mail_text: Save each message's text (and HTML) body.
        save_mail_attachments: Save each message's attachments.
        save_directory: Where saved mail goes, one folder per message.
        remove_from_server_after_read: Delete messages once everything is saved.
        authentication: Basic (password) or OAUTH2 (client credentials token).
        client_id: OAuth2 client (application) ID.
        client_secret: OAuth2 client secret.
        token_endpoint: OAuth2 token endpoint URL.
        scope: OAuth2 scope.

    Example:
        Load a saved configuration and receive its mail:
        ```python
        from prefect_pop3mail.blocks import POP3MailConfiguration
        from prefect_pop3mail.flows import receive_all_mail

        config = POP3MailConfiguration.load("BLOCK_NAME")
        received = receive_all_mail(config)
        ```
    """

    # Validation errors must not echo the input: it may hold the password.
    model_config = ConfigDict(hide_input_in_errors=True)

    _block_type_name = "POP3 Mail Configuration"
    _block_type_slug = "pop3-mail-configuration"
    # No logo: Prefect takes only a web address, which breaks offline (the UIs then show
    # their own block icon, which always works).
    _logo_url = None
    _documentation_url = _project_url("Documentation")  # type: ignore[assignment]

    # --- the configuration's own fields, in the original product's order --------------------------------------------
    description: str = Field(
        default="", title="Description", description="What this configuration is for."
    )
    status: Annotated[Status, _dropdown(Status)] = Field(
        default=Status.ACTIVE,
        title="Status",
        description="Active or Inactive. Runs that use an inactive configuration end in error.",
    )
    server: str = Field(
        default="",
        title="POP3 Mail Server",
        description="Host name or IP address of the mail server. If empty, POP3MAIL_SERVER "
        "from the environment or .env is used.",
    )
    user: str = Field(
        default="",
        title="POP3 Mail Server user profile",
        description="User profile (usually the mailbox address) to log in with. If empty, "
        "POP3MAIL_USER is used.",
    )
    password: SecretStr = Field(
        default=SecretStr(""),
        title="POP3 Mail Server password",
        description="Password for the user profile. If empty, POP3MAIL_PASSWORD is used. "
        "Not used with OAUTH2.",
    )
    port: int = Field(
        default=0,
        title="POP3 port",
        description="Optional. 0 means the default: 110, or 995 for Implicit SSL/TLS.",
        ge=0,
        le=65535,
    )
    security: Annotated[Security, _dropdown(Security)] = Field(
        default=Security.IMPLICIT,
        title="Use secure connection (SSL)",
        description="None (plain text), Explicit SSL/TLS (STLS on port 110, never falls "
        "back to plain text) or Implicit SSL/TLS (TLS from the start, port 995).",
    )
    public_key_name: str = Field(
        default="",
        title="Public key name",
        description="Optional. Names the private key store '<name>.p12' in POP3MAIL_KEY_STORE_DIR "
        "used to decrypt S/MIME messages encrypted with your public key.",
    )
    public_key_password: SecretStr = Field(
        default=SecretStr(""),
        title="Public key password",
        description="Optional. Password of the key store named by the public key name.",
    )
    save_mail_text: bool = Field(
        default=True,
        title="Save mail text",
        description="Save the text of each message (and its HTML body) in the save directory.",
    )
    save_mail_attachments: bool = Field(
        default=True,
        title="Save mail attachments",
        description="Save each message's attachments in the save directory.",
    )
    save_directory: str = Field(
        default="",
        title="Save directory",
        description="Where mail is saved, one folder per message: a folder on the machine "
        "running the flow, or a storage URL (s3://bucket/prefix, gs://, az://, "
        "sftp://user@host/path) for workers without a lasting disk; credentials come from "
        "the worker's environment. Required when anything is saved.",
    )
    remove_from_server_after_read: bool = Field(
        default=False,
        title="Remove from server after read",
        description="Delete each message from the server once everything for it is saved. If "
        "off, messages stay and 'New messages only' decides whether they are read again.",
    )
    authentication: Annotated[Authentication, _dropdown(Authentication)] = Field(
        default=Authentication.BASIC,
        title="Authentication",
        description="Basic (user profile and password) or OAUTH2 (token-based, for example "
        "Microsoft 365).",
    )
    client_id: str = Field(
        default="",
        title="Client ID",
        description="OAUTH2 only: the application (client) ID registered with the provider.",
    )
    client_secret: SecretStr = Field(
        default=SecretStr(""),
        title="Client Secret",
        description="OAUTH2 only: the application's secret, known only to it and the provider.",
    )
    token_endpoint: str = Field(
        default="",
        title="Authentication Token Endpoint",
        description="OAUTH2 only: the provider's token URL, e.g. "
        "https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token.",
    )
    scope: str = Field(
        default="",
        title="Authentication Scope",
        description="OAUTH2 only: the scope to request. Empty means "
        "https://outlook.office365.com/.default for Microsoft endpoints.",
    )

    # --- fields we add ----------------------------------------------------------------
    tls_verify: bool = Field(
        default=True,
        title="Verify TLS certificate",
        description="Check the server's certificate and host name. Turn off only for testing.",
    )
    tls_ca_file: str = Field(
        default="",
        title="TLS CA file",
        description="Optional PEM file of the CA that signed the server's (and token "
        "endpoint's) certificate, for private CAs.",
    )
    save_original: bool = Field(
        default=True,
        title="Save original",
        description="Keep each message's original as message.eml in its folder.",
    )
    new_messages_only: bool = Field(
        default=True,
        title="New messages only",
        description="Skip messages already saved by an earlier run (recorded by UIDL in a "
        "journal beside the saved files). Turn off to read messages left on the server again.",
    )
    timeout: float = Field(
        default=60.0,
        title="Timeout (seconds)",
        description="How long to wait for the server to connect or answer.",
        gt=0,
        le=3600,
    )
    login_method: Annotated[LoginMethod, _dropdown(LoginMethod)] = Field(
        default=LoginMethod.AUTO,
        title="Login method",
        description="auto uses USER/PASS for Basic and XOAUTH2 for OAUTH2; apop, plain "
        "(SASL PLAIN) and oauthbearer are available on request.",
    )
    max_message_size: int = Field(
        default=DEFAULT_MAX_MESSAGE_SIZE,
        title="Maximum message size (bytes)",
        description="Messages larger than this (200 MB by default) are skipped with a warning "
        "and left on the server. 0 means no limit.",
        ge=0,
    )
    max_messages: int = Field(
        default=0,
        title="Maximum messages per run",
        description="Receive at most this many messages in one run. 0 means no limit.",
        ge=0,
    )
    commit_every: int = Field(
        default=0,
        title="Commit every N messages",
        description="With removal on, end the session and reconnect after this many "
        "messages so deletions are committed as the run goes. 0 means once at the end.",
        ge=0,
    )
    private_files: bool = Field(
        default=True,
        title="Private files",
        description="Make saved folders and files readable by their owner only.",
    )
    quarantine_after: int = Field(
        default=3,
        title="Quarantine after N failures",
        description="A message that fails this many runs is set aside: its original alone is "
        "saved under quarantine/ in the save directory, and it is then treated as received.",
        ge=1,
        le=100,
    )
    run_timeout: int = Field(
        default=3600,
        title="Run timeout (seconds)",
        description="A receive task still running after this long is stopped and fails. "
        "0 means no limit.",
        ge=0,
    )
    smime_trust_store: str = Field(
        default="",
        title="S/MIME trust store",
        description="Optional PEM file of root certificates trusted for S/MIME signers, besides "
        "the system's CAs. A signature counts as verified only if its signer chains to one.",
    )
    emit_message_events: bool = Field(
        default=False,
        title="An event per message",
        description="Besides the run's pop3mail.mailbox.received event, emit a "
        "pop3mail.message.received event for each saved message, for automations that start "
        "a flow per message. Costs the Prefect server about 1 ms per message.",
    )

    # --- validation -------------------------------------------------------------------
    @field_validator("server", "user", "save_directory", "client_id", "token_endpoint",
                     "scope", "public_key_name", "tls_ca_file", "description")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @model_validator(mode="after")
    def _check_combinations(self) -> POP3MailConfiguration:
        """Refuse only settings that cannot work. Merely irrelevant ones (a CA file while
        Security is None, a key password without a key name...) stay, so the form takes
        edits in any order."""
        problems: list[tuple[str, str]] = []
        saves = self.save_mail_text or self.save_mail_attachments or self.save_original
        if saves and not self.save_directory:
            problems.append(("save_directory", "required when mail text, attachments or "
                                               "originals are saved"))
        if problem := location_problem(self.save_directory):
            problems.append(("save_directory", problem))
        if self.public_key_name and (problem := key_name_problem(self.public_key_name)):
            problems.append(("public_key_name", problem))
        if self.authentication is Authentication.OAUTH2:
            problems += oauth_problems(self.token_endpoint, self.client_id, self.client_secret)
            if self.login_method not in _OAUTH_METHODS | {LoginMethod.AUTO}:
                problems.append(("login_method", f"{self.login_method.value} cannot be used "
                                 "when Authentication is OAUTH2; choose auto, xoauth2 or "
                                 "oauthbearer"))
        elif self.login_method in _OAUTH_METHODS:
            problems.append(("login_method", f"{self.login_method.value} needs "
                                             "Authentication OAUTH2"))
        if problems:
            raise _Problems(problems)
        return self

    # --- loading -------------------------------------------------------------------------
    @classmethod
    def load_checked(cls, name: str) -> POP3MailConfiguration:
        """Load a saved configuration. One saved (from the UI or the API, where these
        validators do not run) with settings that cannot work raises a ConfigurationError
        naming each field and its title, e.g. "client_id (Client ID): required when
        Authentication is OAUTH2". A name that is not saved raises ValueError."""
        try:
            return cls.load(name, _sync=True)
        except RuntimeError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            problems = _problems_in(exc.__cause__)
        first, problem = problems[0]
        others = "".join(f"; {_label(f)}: {p}" for f, p in problems[1:])
        error = ConfigurationError(
            _label(first), f"{problem}{others} (saved POP3 Mail Configuration {name!r}: "
            "correct it in the Prefect UI)"
        )
        error.field = first
        raise error

    @classmethod
    def create_page_url(cls) -> str | None:
        """The Prefect UI's form that creates a configuration, on the server this process
        uses; None without PREFECT_API_URL (no lasting server to link to). It is the
        current UI's form: the link `prefect block register` prints opens the older UI (V1
        in Prefect 3.9), which shows the secrets in clear."""
        import prefect
        from prefect.settings import get_current_settings

        settings = get_current_settings()
        if not (settings.api.url and settings.ui_url):
            return None
        page = f"blocks/catalog/{cls._block_type_slug}/create"
        if settings.api.url.startswith(settings.cloud.api_url):
            return f"{settings.ui_url}/settings/{page}"
        current = "/v2" if hasattr(prefect, "__ui_v2_static_path__") else ""
        return f"{settings.ui_url}{current}/{page}"

    # --- pickling (Dask and other task runners that send the block to other processes) ---
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickle without secrets: the other side loads them from the saved document.

        Threads share the block and never pickle it, so an unsaved block works there; an
        unsaved block that holds a secret cannot be pickled (save it, or pass its name).
        """
        fields = {n: getattr(self, n) for n in type(self).model_fields if n not in _SECRET_FIELDS}
        holding = [n for n in _SECRET_FIELDS if _secret(getattr(self, n))]
        name = self._block_document_name
        if holding and not (name and self._secrets_are_saved(name)):
            where = f"differ from the saved configuration {name!r}" if name else "are not saved"
            raise pickle.PicklingError(
                f"POP3 Mail Configuration: the block holds secrets ({', '.join(holding)}) "
                f"that {where}, and secrets never travel in a pickle (a Dask task runner "
                "pickles task parameters): save the configuration and pass its name"
            )
        return _unpickle, (type(self), fields, dict(self.__pydantic_private__ or {}),
                           name if holding else None)

    def _secrets_are_saved(self, name: str) -> bool:
        saved = type(self).load_checked(name)
        return all(_secret(getattr(saved, n)) == _secret(getattr(self, n))
                   for n in _SECRET_FIELDS)

    # --- what the engine needs ----------------------------------------------------------
    @property
    def configuration_name(self) -> str:
        """The configuration's ID: the saved block document's name."""
        return getattr(self, "_block_document_name", None) or "unsaved-configuration"

    def ensure_active(self) -> None:
        if self.status is not Status.ACTIVE:
            raise InactiveConfigurationError(self.configuration_name)

    def mailbox_key(self, service: POP3MailServiceSettings | None = None) -> str:
        """What names the mailbox's journal (user, server, port), as ``connection_settings``
        has it, without needing a secret: replay reads saved mail with it."""
        service = service or POP3MailServiceSettings()
        return ConnectionSettings(
            host=self.server or service.server or "-", user=self.user or service.user or "-",
            port=self.port or DEFAULT_PORTS[self.security], security=self.security,
        ).mailbox_key

    def connection_settings(self, service: POP3MailServiceSettings | None = None
                            ) -> ConnectionSettings:
        """Everything the engine needs to connect and log in, complete: empty fields come
        from the service settings (errors name both places), and OAUTH2 gets its token
        provider (one per configuration and process, so tasks share its token)."""
        service = service or POP3MailServiceSettings()
        server = self.server or service.server
        user = self.user or service.user
        if not server:
            raise ConfigurationError(
                "server", "not set in the configuration nor as POP3MAIL_SERVER (environment or .env)"
            )
        if not user:
            raise ConfigurationError(
                "user", "not set in the configuration nor as POP3MAIL_USER (environment or .env)"
            )
        password = token_provider = None
        if self.authentication is Authentication.BASIC:
            secret = _secret(self.password) or _secret(service.password)
            if not secret:
                raise ConfigurationError(
                    "password",
                    "not set in the configuration nor as POP3MAIL_PASSWORD (environment or .env)",
                )
            password = SecretStr(secret)
        else:
            token_provider = client_credentials(
                token_endpoint=self.token_endpoint,
                client_id=self.client_id,
                client_secret=self.client_secret,
                scope=self.scope,
                ca_file=self.tls_ca_file or None,
                timeout=self.timeout,
            )
        return ConnectionSettings(
            host=server,
            port=self.port or DEFAULT_PORTS[self.security],
            security=self.security,
            user=user,
            password=password,
            login_method=self.login_method,
            tls_verify=self.tls_verify,
            tls_ca_file=self.tls_ca_file or None,
            timeout=self.timeout,
            token_provider=token_provider,
        )

    def save_options(
        self,
        service: POP3MailServiceSettings | None = None,
        *,
        save_mail_text: bool | None = None,
        save_mail_attachments: bool | None = None,
        save_directory: str | None = None,
        decrypting: bool = True,
    ) -> SaveOptions:
        """What to save, with optional per-call overrides. Without `decrypting` (a replay
        reads what was saved), the key store is neither needed nor looked up."""
        directory = save_directory or self.save_directory
        if not directory:
            raise ConfigurationError("save_directory", "must be set to save mail")
        key_store = None
        if self.public_key_name and decrypting:
            service = service or POP3MailServiceSettings()
            key_store = service.key_store_for(self.public_key_name)
            if key_store is None:
                raise ConfigurationError(
                    "public_key_name",
                    f"{self.public_key_name!r} needs POP3MAIL_KEY_STORE_DIR (environment or "
                    ".env), the folder holding its .p12 key store",
                )
        if problem := location_problem(directory):  # the run's own save_directory, too
            raise ConfigurationError("save_directory", problem)
        where = ({"url": directory} if is_remote(directory)
                 else {"directory": local_path(directory)})
        return SaveOptions(
            **where,
            save_text=self.save_mail_text if save_mail_text is None else save_mail_text,
            save_attachments=(
                self.save_mail_attachments if save_mail_attachments is None
                else save_mail_attachments
            ),
            save_original=self.save_original,
            private=self.private_files,
            key_store=key_store,
            key_password=self.public_key_password if _secret(self.public_key_password) else None,
            trust_store=(Path(self.smime_trust_store.strip()).expanduser()
                         if self.smime_trust_store.strip() else None),
        )

    def receive_options(
        self,
        *,
        max_messages: int | None = None,
        filters: HeaderFilter | None = None,
        dry_run: bool = False,
        remove_from_server_after_read: bool | None = None,
        new_messages_only: bool | None = None,
        pipelining: bool = True,
    ) -> ReceiveOptions:
        """How to receive, with optional per-call overrides. ``pipelining`` False never
        pipelines; True pipelines when the server offers it (RFC 2449 allows no more)."""
        remove = (
            self.remove_from_server_after_read
            if remove_from_server_after_read is None
            else remove_from_server_after_read
        )
        return ReceiveOptions(
            remove_after_read=remove,
            new_messages_only=self.new_messages_only if new_messages_only is None
            else new_messages_only,
            max_messages=max_messages or self.max_messages or None,
            max_message_size=self.max_message_size or None,
            filters=filters or HeaderFilter(),
            dry_run=dry_run,
            commit_every=(self.commit_every or None) if remove else None,
            quarantine_after=self.quarantine_after,
            pipelining=None if pipelining else False,
        )


def _unpickle(
    cls: type[POP3MailConfiguration], fields: dict[str, Any], private: dict[str, Any],
    saved_name: str | None,
) -> POP3MailConfiguration:
    """The other side of ``__reduce__``: the pickled fields, the secrets from the saved
    document (re-checked there, so a document broken meanwhile fails with its fields)."""
    secrets: dict[str, Any] = {}
    if saved_name:
        saved = cls.load_checked(saved_name)
        secrets = {n: getattr(saved, n) for n in _SECRET_FIELDS}
    block = cls.model_construct(**fields, **secrets)
    block.__pydantic_private__ = private
    return block
