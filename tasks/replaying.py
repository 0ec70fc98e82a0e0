"""MAIL_REPLAY: saved mail handed on again (tasks/pop3/replay.py), as a Prefect task, and
its events.

Replaying is not receiving: the configuration may be inactive, no lock is taken (nothing
changes), the server is never contacted. With ``announce``, each message's
``pop3mail.message.received`` goes out again marked ``replay: true``, with the message's
own id (its event gets an id of its own: the server keeps one copy of an event id, and
the first announcement had that one), at most ``MAX_REPLAY_EVENTS`` per run; the run's
``pop3mail.mailbox.received`` summary, marked the same way, says how many were sent and
how many were left out.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.events import Event

from prefect_pop3mail.blocks import POP3MailConfiguration, POP3MailServiceSettings
from prefect_pop3mail.tasks.activities import Configuration, _logger, resolve_configuration
from prefect_pop3mail.tasks.events import (
    EVENT_MAILBOX_RECEIVED,
    _configuration_resource,
    _mailbox_resource,
    bounded,
    message_event,
    send,
)
from prefect_pop3mail.tasks.pop3.models import ReceivedMail
from prefect_pop3mail.tasks.pop3.replay import ReplayReport, SavedMail, Window
from prefect_pop3mail.tasks.run_logs import engine_logs_to_run

#: Message events one replay sends at most; the rest are counted in its summary.
MAX_REPLAY_EVENTS = 1000
#: Message events sent on one connection: what a replay holds of them at once.
EVENT_BATCH = 200
#: A label on replayed events, so triggers can tell them from first announcements.
REPLAY_LABEL = "pop3mail.replay"


def replay_event(mail: ReceivedMail, configuration_id: str | None = None) -> Event:
    """The message's ``pop3mail.message.received`` again: same payload and message id,
    marked ``replay: true``, under an event id of its own."""
    first = message_event(mail, configuration_id)
    return Event(event=first.event, id=uuid.uuid4(),
                 resource={**first.resource.root, REPLAY_LABEL: "true"},
                 related=first.related, payload={**first.payload, "replay": True})


def replay_summary(report: ReplayReport, sent: list[tuple[str, str]], left_out: int,
                   configuration_id: str | None = None) -> Event:
    """The replay's ``pop3mail.mailbox.received``: marked ``replay: true`` (and not
    "mail fetched": nothing came from the server), with the numbers sent and left out."""
    resource = {**_mailbox_resource(report.configuration, False), REPLAY_LABEL: "true"}
    return Event(
        event=EVENT_MAILBOX_RECEIVED,
        resource=resource,
        related=[_configuration_resource(report.configuration, configuration_id)],
        payload=bounded({
            "configuration": report.configuration,
            "replay": True,
            "replayed": report.replayed,
            "announced": len(sent),
            "not_announced": left_out,
            "quarantined": report.quarantined_count,
            "problems": report.problems_count,
            "messages": [{"id": id, "folder": folder or None} for id, folder in sent],
        }),
    )


class _Announcer:
    """Sends message events in batches as a replay goes, up to ``MAX_REPLAY_EVENTS``."""

    def __init__(self, configuration_id: str | None):
        self.configuration_id = configuration_id
        #: (id, folder) of each message announced: at most MAX_REPLAY_EVENTS.
        self.sent: list[tuple[str, str]] = []
        self.left_out = 0
        self._batch: list[tuple[tuple[str, str], Event]] = []  # events are bounded in size

    def __call__(self, mail: ReceivedMail) -> None:
        if len(self.sent) + len(self._batch) >= MAX_REPLAY_EVENTS:
            self.left_out += 1
            return
        try:
            event = replay_event(mail, self.configuration_id)
        except Exception as exc:  # one message's event, not the replay
            self.left_out += 1
            _logger().warning("%s: replay: no event for %s: %s: %s", mail.configuration,
                              mail.id, type(exc).__name__, str(exc)[:200])
            return
        self._batch.append(((mail.id, mail.location), event))
        if len(self._batch) >= EVENT_BATCH:
            self.flush()

    def flush(self) -> None:
        send([event for _, event in self._batch])
        self.sent += [sent for sent, _ in self._batch]
        self._batch = []

    def finish(self, report: ReplayReport) -> None:
        self.flush()
        send([replay_summary(report, self.sent, self.left_out, self.configuration_id)])


def replay_report(configuration: Configuration, chosen: Window, *, announce: bool = True,
                  each: Any = None, keep: bool = True
                  ) -> tuple[list[ReceivedMail], ReplayReport]:
    """The window's saved messages (none unless ``keep``: a caller that takes each one as
    it comes holds none) and the replay's report; ``each`` (if given) is called with each
    message as it is read. Not a task: ``mail_replay`` and the command wrap it."""
    config = resolve_configuration(configuration)  # inactive is fine: nothing is received
    save, key = _where(config)
    announcer = _Announcer(str(getattr(config, "_block_document_id", "") or "") or None) \
        if announce else None
    mails: list[ReceivedMail] = []
    with engine_logs_to_run(_logger()), SavedMail(config.configuration_name, save, key,
                                                  chosen) as saved:
        for mail in saved:  # bounded by the journal
            if keep:
                mails.append(mail)
            if each is not None:
                each(mail)
            if announcer is not None:
                announcer(mail)
    if announcer is not None:
        announcer.finish(saved.report)
    _log(saved.report, announcer)
    return mails, saved.report


def _where(config: POP3MailConfiguration) -> tuple[Any, str]:
    """The save directory and the mailbox's key (what names its journal), from the
    configuration alone: nothing is contacted."""
    service = POP3MailServiceSettings()
    return config.save_options(service, decrypting=False), config.mailbox_key(service)


def _log(report: ReplayReport, announcer: _Announcer | None) -> None:
    logger = _logger()
    announced = ("not announced" if announcer is None else
                 f"{len(announcer.sent)} announced, {announcer.left_out} not announced "
                 f"(at most {MAX_REPLAY_EVENTS} events per replay)")
    logger.info("%s: replay: %d message(s) handed on again, %s; %d quarantined not "
                "replayed, %d could not be read, %d saved before replay existed",
                report.configuration, report.replayed, announced, report.quarantined_count,
                report.problems_count, report.undated)
    for mail in report.quarantined:  # listed apart: replay_saved_mail(quarantined=True)
        logger.info("%s: replay: quarantined, not replayed: %s %r (%s)", report.configuration,
                    mail.id, mail.subject[:200], mail.location)
    for problem in report.problems:
        logger.warning("%s: replay: %s (%s): %s", report.configuration, problem.folder,
                       problem.uidl, problem.problem)


@task(name="MAIL_REPLAY", cache_policy=NO_CACHE)
def mail_replay(configuration: Configuration, chosen: Window, announce: bool = True
                ) -> list[ReceivedMail]:
    """MAIL_REPLAY: the saved messages of ``chosen`` (a ``replay.window``), as the runs
    that saved them returned them; with ``announce``, their events again, marked replay.

    Example:
        ```python
        from prefect import flow
        from prefect_pop3mail.tasks.replaying import mail_replay
        from prefect_pop3mail.tasks.pop3.replay import window

        @flow
        def again():
            return mail_replay("orders-mailbox", window(since="2026-12-01T00:00:00Z"))
        ```
    """
    return replay_report(configuration, chosen, announce=announce)[0]
