"""The "no mail fetched for 30 minutes" automation, built on the run summary event: created
through the Prefect API, and the label it watches set by real runs against Dovecot."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from prefect.automations import Automation

from prefect_pop3mail.flows import receive_all_mail
from prefect_pop3mail.tasks.automations import quiet_mailbox_automation
from prefect_pop3mail.tasks.events import (
    EVENT_MAILBOX_FAILED,
    EVENT_MAILBOX_RECEIVED,
    MAIL_FETCHED_LABEL,
    mailbox_resource_id,
)
from prefect_pop3mail.tasks.pop3.models import Security
from tests.conftest import sample_message


@pytest.mark.prefect
def test_the_automation_is_created_through_the_api_and_watches_fetching_runs():
    name = f"quiet-{uuid.uuid4().hex[:8]}"
    created = quiet_mailbox_automation(name).create()
    try:
        stored = Automation.read(id=created.id)
        trigger = stored.trigger
        assert stored.name == f"pop3mail: no mail fetched from {name} for 30 minutes"
        assert trigger.posture == "Proactive"
        # A run that stopped early after handing mail on sends a failed event instead.
        assert trigger.expect == {EVENT_MAILBOX_RECEIVED, EVENT_MAILBOX_FAILED}
        assert trigger.within == timedelta(minutes=30)
        assert trigger.threshold == 1
        assert dict(trigger.match.items()) == {  # the server stores each value as a list
            "prefect.resource.id": [mailbox_resource_id(name)], MAIL_FETCHED_LABEL: ["true"]}
    finally:
        created.delete()


def summaries(configuration: str, count: int, timeout: float = 20.0) -> list:
    from prefect.events.schemas.events import ReceivedEvent

    from tests.test_failed_runs import stored_events

    deadline = time.monotonic() + timeout
    while True:  # through the REST API: Prefect 3.4's client has no read_events
        events = stored_events([EVENT_MAILBOX_RECEIVED], mailbox_resource_id(configuration))
        if len(events) >= count or time.monotonic() > deadline:
            return sorted((ReceivedEvent.model_validate(e) for e in events),
                          key=lambda e: e.occurred)
        time.sleep(0.3)


@pytest.mark.prefect
@pytest.mark.dovecot
def test_runs_label_their_summary_by_whether_they_fetched_mail(mailbox, tmp_path):
    mailbox.deliver(sample_message(1))
    name = f"quiet-{uuid.uuid4().hex[:8]}"
    mailbox.block(tmp_path, Security.IMPLICIT).save(name)

    assert len(receive_all_mail(name)) == 1
    assert receive_all_mail(name) == []  # nothing new: the run still reports, as quiet

    first, second = summaries(name, 2)
    assert first.resource[MAIL_FETCHED_LABEL] == "true"
    assert first.payload["received"] == 1
    assert second.resource[MAIL_FETCHED_LABEL] == "false"
    assert second.payload["received"] == 0
