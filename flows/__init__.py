"""Flows of pop3mail (they load on first use: the console command lives here too)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["receive_mail", "receive_all_mail", "list_mail", "receive_from_mailboxes",
           "check_pop3_connection", "MailboxesFailedError", "replay_saved_mail"]


def __getattr__(name: str) -> Any:
    if name == "replay_saved_mail":
        from prefect_pop3mail.flows import replaying

        return replaying.replay_saved_mail
    if name in __all__:
        from prefect_pop3mail.flows import receiving

        return getattr(receiving, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from prefect_pop3mail.flows.receiving import (
        MailboxesFailedError,
        check_pop3_connection,
        list_mail,
        receive_all_mail,
        receive_from_mailboxes,
        receive_mail,
    )
    from prefect_pop3mail.flows.replaying import replay_saved_mail
