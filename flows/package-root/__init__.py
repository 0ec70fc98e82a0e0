"""pop3mail for Prefect: receive email from POP3 servers in Prefect flows.

The block, the tasks and the flows, as Prefect's integrations offer them::

    from prefect_pop3mail import POP3MailConfiguration, mail_receive_all, receive_all_mail

and ``prefect block register -m prefect_pop3mail`` registers the block type.

This file is the package's own ``__init__``. It lives in ``flows/package-root/`` (mapped in
pyproject.toml) because the repository's top level is fixed (``blocks/``, ``tasks/``,
``flows/``...) and an ``__init__.py`` at the root would make pytest import ``tests/`` as
``<clone's folder>.tests``; a folder name with a dash cannot be imported by mistake as
``prefect_pop3mail.flows.<name>``.

Names load on first use: ``pop3mail --help`` imports this package, and Prefect takes
seconds to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "POP3MailConfiguration": "prefect_pop3mail.blocks",
    "POP3MailServiceSettings": "prefect_pop3mail.blocks",
    "mail_receive": "prefect_pop3mail.tasks",
    "mail_receive_all": "prefect_pop3mail.tasks",
    "mail_list": "prefect_pop3mail.tasks",
    "check_connection": "prefect_pop3mail.tasks",
    "receive_mail": "prefect_pop3mail.flows",
    "receive_all_mail": "prefect_pop3mail.flows",
    "list_mail": "prefect_pop3mail.flows",
    "receive_from_mailboxes": "prefect_pop3mail.flows",
    "check_pop3_connection": "prefect_pop3mail.flows",
    "replay_saved_mail": "prefect_pop3mail.flows",
    "CallOptions": "prefect_pop3mail.tasks.options",
    "ReceivedMail": "prefect_pop3mail.tasks.pop3.models",
}

__all__ = [
    "POP3MailConfiguration", "POP3MailServiceSettings",
    "mail_receive", "mail_receive_all", "mail_list", "check_connection",
    "receive_mail", "receive_all_mail", "list_mail", "receive_from_mailboxes",
    "check_pop3_connection", "replay_saved_mail", "CallOptions", "ReceivedMail", "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version

        return version("prefect-pop3mail")
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # `prefect block register -m prefect_pop3mail` looks for blocks among these.
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from prefect_pop3mail.blocks import POP3MailConfiguration, POP3MailServiceSettings
    from prefect_pop3mail.flows import (
        check_pop3_connection,
        list_mail,
        receive_all_mail,
        receive_from_mailboxes,
        receive_mail,
        replay_saved_mail,
    )
    from prefect_pop3mail.tasks import check_connection, mail_list, mail_receive, mail_receive_all
    from prefect_pop3mail.tasks.options import CallOptions
    from prefect_pop3mail.tasks.pop3.models import ReceivedMail
