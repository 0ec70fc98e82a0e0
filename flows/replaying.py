"""Replay: saved mail handed on to downstream steps again, without the server."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from prefect_pop3mail.tasks.activities import Configuration
from prefect_pop3mail.tasks.pop3.models import ReceivedMail
from prefect_pop3mail.tasks.pop3.replay import window
from prefect_pop3mail.tasks.replaying import mail_replay

__all__ = ["replay_saved_mail"]


@flow(name="replay-saved-mail", log_prints=True)
def replay_saved_mail(
    configuration: Configuration,
    since: datetime | None = None,
    until: datetime | None = None,
    message_ids: list[str] | None = None,
    announce: bool = True,
    date_since: datetime | None = None,
    date_until: datetime | None = None,
    quarantined: bool = False,
) -> list[ReceivedMail]:
    """Hand saved mail on again: the messages saved from ``since`` to ``until``, as the
    runs that saved them returned them (the same ids), read from the save directory's
    journal and folders. Never contacts the POP3 server, never changes the saved mail or
    the journal, and works when the configuration is inactive: replaying is not receiving.

    Args:
        configuration: The name of a saved POP3 Mail Configuration (Blocks in the UI).
        since: Messages saved at or after this time (UTC when no zone is given).
        until: Messages saved before this time.
        message_ids: Only these messages (``ReceivedMail.id``, the ``id`` of their events).
        announce: Send each message's ``pop3mail.message.received`` event again, marked
            ``replay: true`` (at most 1000 per run; the summary event counts the rest).
        date_since: Only messages whose Date header is at or after this time.
        date_until: Only messages whose Date header is before this time.
        quarantined: Replay messages set aside in quarantine too (by default they are only
            listed in the run's log).

    Returns:
        The saved messages of the window, oldest saved first.

    Example:
        ```python
        from prefect import flow
        from prefect_pop3mail.flows import replay_saved_mail

        @flow
        def reprocess_last_week():
            for mail in replay_saved_mail("orders-mailbox", since="2026-11-28T00:00:00Z",
                                          announce=False):
                print(mail.id, mail.subject)
        ```
    """
    chosen = window(since, until, message_ids, date_since=date_since, date_until=date_until,
                    quarantined=quarantined)
    return mail_replay(configuration, chosen, announce)
