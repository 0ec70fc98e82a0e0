"""Flows of pop3mail."""

from prefect_pop3mail.flows.receiving import (
    check_pop3_connection,
    list_mail,
    receive_all_mail,
    receive_from_mailboxes,
    receive_mail,
)

__all__ = ["receive_mail", "receive_all_mail", "list_mail", "receive_from_mailboxes",
           "check_pop3_connection"]
