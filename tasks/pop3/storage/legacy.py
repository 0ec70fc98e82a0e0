"""State that the release before the storage seam kept on storage (and on ``file://`` save
directories), read once and moved into the journal and outbox logs.

That layout had one object per record directly under ``.pop3mail/<mailbox digest>/``. The
name held the record: ``S~stamp~uidl~folder~size~head`` (``Q~`` when quarantined),
``F~stamp~uidl~kind`` and ``V~stamp~1``, the UIDL in base32. A save record's content was the
message's announcement (a ReceivedMail with ``*_url`` fields) until it was made.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

from pydantic import ValidationError

from prefect_pop3mail.tasks.pop3.models import ReceivedMail
from prefect_pop3mail.tasks.pop3.storage.journal import _line
from prefect_pop3mail.tasks.pop3.storage.outbox import Outbox

_NAME = re.compile(r"[SQFV]~[0-9]{20}~[^/]*")


def is_legacy(name: str) -> bool:
    """Whether ``name`` (relative to the mailbox's state folder) is such a record."""
    return bool(_NAME.fullmatch(name))


def _uidl(key: str) -> str | None:
    try:
        return base64.b32decode(key.upper() + "=" * (-len(key) % 8)).decode("ascii")
    except (binascii.Error, ValueError):
        return None  # a UIDL too long to be valid, kept as a digest


def convert(sizes: dict[str, int], read: Callable[[list[str]], dict[str, bytes]]
            ) -> tuple[bytes, bytes]:
    """The journal and outbox logs that the records ``sizes`` (name -> size) say, in the
    order they were written; ``read`` gives the content of the named records. The journal
    verifies the records as any other when it reads them."""
    records = sorted((name.split("~") for name in sizes if is_legacy(name)),
                     key=lambda fields: fields[1])
    journal, announcing = [], []
    for fields in records:
        uidl = _uidl(fields[2]) if len(fields) > 2 else None
        if uidl is None:
            continue
        if fields[0] in ("S", "Q") and len(fields) == 6:
            journal.append(_line(fields[0], uidl, *fields[3:]))
            name = "~".join(fields)
            if sizes[name]:
                announcing.append(name)
        elif fields[0] == "F" and len(fields) == 4:
            journal.append(_line("F", uidl, fields[3]))
    contents = read(announcing) if announcing else {}
    outbox = []
    for name in announcing:
        try:
            outbox.append(Outbox._entry(ReceivedMail.model_validate_json(contents[name])))
        except (KeyError, ValueError, ValidationError):
            continue  # gone, or not an announcement
    return b"".join(journal), b"".join(outbox)
