"""The outbox: saved messages that downstream steps have not been told about yet.

A message enters the outbox when it is journalled, and leaves it when the run that saved it
(or, if that run died first, a later one) has announced it. Announcing twice is possible
after a crash between the announcement and its acknowledgement; every announcement carries
the message's stable id, so a consumer can drop the repeat.
"""

from __future__ import annotations

import json
import os

from pydantic import ValidationError

from prefect_pop3mail.tasks.pop3.journal import mailbox_digest
from prefect_pop3mail.tasks.pop3.models import ReceivedMail
from prefect_pop3mail.tasks.pop3.statedir import StateFolder

#: Rewrite the file once it holds this many lines but few are still pending.
COMPACT_AT = 1000


class Outbox:
    """Pending announcements of one mailbox, in order."""

    def __init__(self, state: StateFolder, mailbox_key: str):
        self.state = state
        self.name = f"outbox-{mailbox_digest(mailbox_key)}.jsonl"
        self.pending: dict[str, ReceivedMail] = {}
        self._lines = 0
        self._fd = -1
        with state.keeping("outbox", self.name):
            data = state.read(self.name)
            self._load(data)
            if data and not self.pending:
                data = b""
                state.replace(self.name, data)
            elif self._lines > COMPACT_AT and len(self.pending) * 2 < self._lines:
                data = self._dump()
                state.replace(self.name, data)
            self._fd = state.open_log(self.name, data)

    def _load(self, data: bytes) -> None:
        for raw in data.split(b"\n"):
            if not raw:
                continue
            self._lines += 1
            try:
                record = json.loads(raw)
                if "ack" in record:
                    self.pending.pop(record["ack"], None)
                else:
                    mail = ReceivedMail.model_validate(record["mail"])
                    self.pending[mail.id] = mail
            except (ValueError, KeyError, TypeError, ValidationError):
                continue  # a line torn by a crash

    def _dump(self) -> bytes:
        return b"".join(self._entry(m) for m in self.pending.values())

    @staticmethod
    def _entry(mail: ReceivedMail) -> bytes:
        return b'{"mail": ' + mail.model_dump_json().encode() + b"}\n"

    def add(self, mail: ReceivedMail) -> None:
        os.write(self._fd, self._entry(mail))
        self.pending[mail.id] = mail

    def acknowledge(self, ids: list[str]) -> None:
        done = [i for i in ids if i in self.pending]
        if done:
            os.write(self._fd, "".join(json.dumps({"ack": i}) + "\n" for i in done).encode())
        for i in done:
            del self.pending[i]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
