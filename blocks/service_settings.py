"""Service-wide fallbacks (the original product's "POP3MailService properties file").

A configuration that leaves server, user or password empty takes them from here.
Values come from ``POP3MAIL_*`` environment variables and a ``.env`` file.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from prefect_pop3mail.tasks.pop3.errors import ConfigurationError

#: A public key name becomes the file name "<name>.p12": one safe name, no folders, no "..".
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$")
_KEY_NAME_MAX = 100


def key_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a key store, or None when it can."""
    if len(name) > _KEY_NAME_MAX or not _KEY_NAME.match(name):
        return (
            f"must be a plain file name of at most {_KEY_NAME_MAX} letters, digits, '-', '_' "
            "and single dots, without '/', '\\' or '..' (it names '<name>.p12')"
        )
    return None


class POP3MailServiceSettings(BaseSettings):
    """Service-wide POP3 settings: ``POP3MAIL_SERVER``, ``POP3MAIL_USER``,
    ``POP3MAIL_PASSWORD`` and ``POP3MAIL_KEY_STORE_DIR``, from the environment or ``.env``.

    Example:
        ```python
        from prefect_pop3mail.blocks import POP3MailServiceSettings

        settings = POP3MailServiceSettings()  # reads the environment and ./.env
        print(settings.server)
        ```
    """

    model_config = SettingsConfigDict(
        env_prefix="POP3MAIL_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    server: str = Field(default="", description="Mail server used when a configuration has none.")
    user: str = Field(default="", description="User profile used when a configuration has none.")
    password: SecretStr = Field(
        default=SecretStr(""), description="Password used when a configuration has none."
    )
    key_store_dir: Path | None = Field(
        default=None,
        description="Folder of private key stores, one '<public key name>.p12' per key.",
    )

    def key_store_for(self, public_key_name: str) -> Path | None:
        """``<key store dir>/<public key name>.p12``; None when no folder is configured."""
        problem = key_name_problem(public_key_name)
        if problem:
            raise ConfigurationError("public_key_name", problem)
        if self.key_store_dir is None:
            return None
        return self.key_store_dir / f"{public_key_name}.p12"
