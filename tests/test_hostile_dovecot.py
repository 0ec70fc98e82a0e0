"""Each class of hostile message (tests/hostile.py) through a real Dovecot, between two
ordinary messages: the run does not abort, both ordinary messages are saved, and the hostile
one is saved too (its original kept, its problems as warnings)."""

from __future__ import annotations

import pytest

from prefect_pop3mail.tasks.pop3.models import ReceiveOptions, SaveOptions
from prefect_pop3mail.tasks.pop3.receiver import MailboxReceiver
from tests.conftest import sample_message
from tests.hostile import CLASSES

pytestmark = pytest.mark.dovecot

SIZE = 64 * 1024


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_a_hostile_message_between_two_ordinary_ones(name, mailbox, tmp_path):
    hostile = CLASSES[name].build(SIZE)
    mailbox.deliver(sample_message(1), hostile, sample_message(2))
    with MailboxReceiver("hostile", mailbox.settings(), SaveOptions(directory=tmp_path),
                         ReceiveOptions()) as receiver:
        report = receiver.run()
    by_id = {mail.message_id: mail for mail in report.received}
    for i in (1, 2):
        mail = by_id[f"<msg-{i}@example.org>"]
        assert mail.text_path.read_text() == "Hello.\n"
        assert mail.warnings == []
    assert report.failed == [], report.failed
    assert len(report.received) == 3
    (saved,) = [m for m in report.received if m.message_id not in
                ("<msg-1@example.org>", "<msg-2@example.org>")]
    assert saved.original_path.path.stat().st_size >= len(hostile) * 0.9
    if CLASSES[name].warning:
        assert any(CLASSES[name].warning in w for w in saved.warnings), saved.warnings

