"""The outbox: saved messages that downstream steps have not been told about yet.

A message enters the outbox when it is journalled (just before: outbox first), and leaves it
when the run that saved it (or, if that run died first, a later one) has announced it.
Announcing twice is possible after a crash between the announcement and its
acknowledgement; every announcement carries the message's stable id, so a consumer can drop
the repeat. One append-only log per mailbox beside the journal (the storage's StateLog):
``{"mail": ...}`` per message, ``{"ack": id}`` per announcement made.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from prefect_pop3mail.tasks.pop3.models import ReceivedMail
from prefect_pop3mail.tasks.pop3.storage.base import StateLog

#: Rewrite the log once it holds this many lines but few are still pending.
COMPACT_AT = 1000


class Outbox:
    """Pending announcements of one mailbox, in order."""

    def __init__(self, log: StateLog):
        self.log = log
        self.pending: dict[str, ReceivedMail] = {}
        try:
            data = log.read()
            lines = self._load(data)
            if data and not self.pending:
                log.rewrite(b"")
            elif lines > COMPACT_AT and len(self.pending) * 2 < lines:
                log.rewrite(b"".join(self._entry(m) for m in self.pending.values()))
        except BaseException:
            log.close()
            raise

    def _load(self, data: bytes) -> int:
        """Replay the log; returns how many lines it has."""
        lines = 0
        for raw in data.split(b"\n"):
            if not raw:
                continue
            lines += 1
            try:
                record = json.loads(raw)
                if "ack" in record:
                    self.pending.pop(record["ack"], None)
                else:  # records of the release before this one carry *_url fields: read too
                    mail = ReceivedMail.model_validate(record["mail"])
                    self.pending[mail.id] = mail
            except (ValueError, KeyError, TypeError, ValidationError):
                continue  # a line torn by a crash
        return lines

    @staticmethod
    def _entry(mail: ReceivedMail) -> bytes:
        return b'{"mail": ' + mail.model_dump_json().encode() + b"}\n"

    def add(self, mail: ReceivedMail) -> None:
        self.log.append(self._entry(mail))
        self.pending[mail.id] = mail

    def acknowledge(self, ids: list[str]) -> None:
        done = [i for i in ids if i in self.pending]
        if done:
            self.log.append("".join(json.dumps({"ack": i}) + "\n" for i in done).encode())
        for i in done:
            del self.pending[i]

    def close(self) -> None:
        self.log.close()
