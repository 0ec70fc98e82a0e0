"""Automations on a mailbox's run events, ready to create."""

from __future__ import annotations

from prefect_pop3mail.tasks.events import (
    EVENT_MAILBOX_FAILED,
    EVENT_MAILBOX_RECEIVED,
    MAIL_FETCHED_LABEL,
    mailbox_resource_id,
)


def quiet_mailbox_automation(configuration: str, minutes: int = 30,
                             actions: list | None = None):
    """An automation (not yet created: call ``.create()``) that fires when no run of
    ``configuration`` handed mail on for ``minutes``: a proactive trigger on the run events
    (received, or failed after saving some) whose "mail fetched" label is true. ``actions``
    default to doing nothing (the automation's firing is still shown and can be notified on
    from the UI)."""
    from datetime import timedelta

    from prefect.automations import Automation, DoNothing, EventTrigger

    return Automation(
        name=f"pop3mail: no mail fetched from {configuration} for {minutes} minutes",
        description=f"No {EVENT_MAILBOX_RECEIVED} or {EVENT_MAILBOX_FAILED} event with "
        f"{MAIL_FETCHED_LABEL}=true from {configuration} in {minutes} minutes.",
        trigger=EventTrigger(
            expect={EVENT_MAILBOX_RECEIVED, EVENT_MAILBOX_FAILED},
            match={"prefect.resource.id": mailbox_resource_id(configuration),
                   MAIL_FETCHED_LABEL: "true"},
            posture="Proactive",
            threshold=1,
            within=timedelta(minutes=minutes),
        ),
        actions=actions or [DoNothing()],
    )
