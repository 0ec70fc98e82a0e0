"""Replay: saved mail handed on again, from the save directory alone.

The journal names every message a mailbox saved (and, in its archive, those a prune
forgot) with the time of saving; each message folder's ``.complete`` marker keeps the
``ReceivedMail`` the saving run returned (manifest.py). Replay streams both: the journal a
line at a time, the markers a batch at a time, so a replay of any size holds one batch of
messages, whatever the journal's size. It opens the storage read-only: it never writes to
the save directory, never touches the POP3 server, and needs no active configuration.

Example:
    ```python
    from datetime import UTC, datetime
    from prefect_pop3mail.tasks.pop3.replay import SavedMail, window

    with SavedMail("orders", save_options, mailbox_key,
                   window(since=datetime(2026, 12, 1, tzinfo=UTC))) as saved:
        for mail in saved:
            print(mail.id, mail.subject)
        print(saved.report.quarantined_count, "set aside in quarantine")
    ```
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import os
import re
import stat
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pydantic import BaseModel

from prefect_pop3mail.tasks.pop3.errors import ConfigurationError
from prefect_pop3mail.tasks.pop3.models import ReceivedMail, SaveOptions, locate_result
from prefect_pop3mail.tasks.pop3.storage import manifest
from prefect_pop3mail.tasks.pop3.storage.base import JOURNAL, Storage
from prefect_pop3mail.tasks.pop3.storage.journal import Saved, read_records, saved_stamp
from prefect_pop3mail.tasks.pop3.storage.store import open_storage, record_folder, stable_id

#: Markers read at a time: one call to an object store for many folders, and what a replay
#: holds at once (each at most manifest.MAX_MARKER_BYTES).
MARKER_BATCH = 64
#: Quarantined messages and problems listed in a report, at most; the rest are counted.
MAX_LISTED = 1000
#: The markers of the quarantined messages listed take at most this much in all: a listed
#: one is a whole result, and a marker may be large.
MAX_LISTED_BYTES = 16 << 20
#: Message ids one replay may ask for.
MAX_MESSAGE_IDS = 10_000
_ID = re.compile(r"[0-9a-f]{32}")


class ReplayWindowError(ConfigurationError):
    """A replay's window (since, until, message_ids, date_since, date_until) is wrong; the
    message names the field."""


class Window(NamedTuple):
    """Which saved messages a replay hands on (see ``window``)."""

    since: datetime | None = None
    until: datetime | None = None
    message_ids: frozenset[str] | None = None
    date_since: datetime | None = None
    date_until: datetime | None = None
    quarantined: bool = False

    @property
    def by_saving(self) -> bool:
        return self.since is not None or self.until is not None


def _moment(field: str, value: Any) -> datetime | None:
    """``value`` as an aware datetime (ISO 8601 text or a datetime; naive is UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ReplayWindowError(field, f"{value[:100]!r} is not a date and time; give ISO "
                                           "8601, e.g. 2026-12-01T08:00:00+00:00") from None
    if not isinstance(value, datetime):
        raise ReplayWindowError(field, f"expected a date and time, got {type(value).__name__}")
    try:  # compared with times of saving, which are UTC
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise ReplayWindowError(field, f"{value.isoformat()} is out of range in UTC") from None


def _ids(value: Any) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple | set | frozenset):
        raise ReplayWindowError("message_ids", f"expected a list of message ids, got "
                                               f"{type(value).__name__}")
    if not value:
        raise ReplayWindowError("message_ids", "an empty list selects nothing; leave it out "
                                               "(null) to replay every message of the window")
    if len(value) > MAX_MESSAGE_IDS:
        raise ReplayWindowError("message_ids", f"{len(value)} ids; at most {MAX_MESSAGE_IDS} "
                                               "per replay (use a window of time for more)")
    ids = []
    for n, item in enumerate(value):  # bounded by MAX_MESSAGE_IDS
        text = item.strip().lower() if isinstance(item, str) else item
        if not isinstance(text, str) or not _ID.fullmatch(text):
            raise ReplayWindowError(f"message_ids[{n}]", f"{str(item)[:100]!r} is not a "
                                    "message id (32 hex digits, as ReceivedMail.id)")
        ids.append(text)
    return frozenset(ids)


def window(since: Any = None, until: Any = None, message_ids: Any = None, *,
           date_since: Any = None, date_until: Any = None, quarantined: bool = False
           ) -> Window:
    """A replay's window, checked: messages saved from ``since`` (included) to ``until``
    (excluded), of ``message_ids`` (ReceivedMail.id), whose Date header lies from
    ``date_since`` to ``date_until``; quarantined ones only when ``quarantined``. Every
    bound is optional; times are ISO 8601 text or datetimes (naive ones are UTC). Raises
    ReplayWindowError naming the field."""
    start, end = _moment("since", since), _moment("until", until)
    if start and end and start >= end:
        raise ReplayWindowError("until", f"{end.isoformat()} is not after since "
                                         f"({start.isoformat()}): the window is empty")
    dated_from, dated_to = _moment("date_since", date_since), _moment("date_until", date_until)
    if dated_from and dated_to and dated_from >= dated_to:
        raise ReplayWindowError("date_until", f"{dated_to.isoformat()} is not after "
                                              f"date_since ({dated_from.isoformat()})")
    if not isinstance(quarantined, bool):
        raise ReplayWindowError("quarantined", "expected true or false")
    return Window(start, end, _ids(message_ids), dated_from, dated_to, quarantined)


class ReplayProblem(BaseModel):
    """A message the journal names that could not be handed on again, and why."""

    uidl: str
    folder: str
    problem: str


class ReplayReport(BaseModel):
    """What a replay found besides the messages it handed on."""

    configuration: str
    #: Messages handed on again.
    replayed: int = 0
    #: Messages of the window set aside in quarantine, not replayed (unless asked): the
    #: first ``MAX_LISTED``, and how many in all.
    quarantined: list[ReceivedMail] = []
    quarantined_count: int = 0
    #: Messages of the window that could not be rebuilt (marker gone, altered, or written
    #: by a release before replay): the first ``MAX_LISTED``, and how many in all.
    problems: list[ReplayProblem] = []
    problems_count: int = 0
    #: Saved by a release before replay: no time of saving, so outside any since/until.
    undated: int = 0


class Digests:
    """A set of 8-byte digests of texts in 8 bytes each (a Python set takes about 70): a
    small set for the latest, and sorted arrays of doubling sizes for the rest, merged as
    a binary counter carries, so adding n costs O(n log n) and a lookup O(log^2 n)."""

    #: Digests kept in the small set before it is merged into the arrays.
    RECENT = 4096

    def __init__(self):
        self._recent: set[int] = set()
        self._levels: list[array] = []  # sorted; at most about log2(n / RECENT) of them

    @staticmethod
    def key(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest())

    def __contains__(self, key: int) -> bool:
        if key in self._recent:
            return True
        for level in self._levels:  # bounded by log2 of the count
            at = bisect.bisect_left(level, key)
            if at < len(level) and level[at] == key:
                return True
        return False

    def add(self, key: int) -> None:
        self._recent.add(key)
        if len(self._recent) < self.RECENT:
            return
        merged = array("Q", sorted(self._recent))
        self._recent = set()
        while self._levels and len(self._levels[-1]) <= len(merged):  # carries: log2 n
            merged = array("Q", heapq.merge(self._levels.pop(), merged))
        self._levels.append(merged)


class SavedMail:
    """The saved messages of one mailbox in a window, as an iterator of ``ReceivedMail``
    (oldest journal records first); ``report`` fills as it goes. Close it (or use it as a
    context manager) when done."""

    def __init__(self, configuration: str, options: SaveOptions, mailbox_key: str,
                 chosen: Window = Window()):
        self.configuration = configuration
        self._mailbox = mailbox_key
        self.window = chosen
        self.report = ReplayReport(configuration=configuration)
        self._since = saved_stamp(chosen.since)
        self._until = saved_stamp(chosen.until)
        self._prefixes = ({i[:12] for i in chosen.message_ids}
                          if chosen.message_ids is not None else None)
        #: Folders handed on: a message journalled twice (saved again into its folder) is
        #: replayed once. The one thing that grows with the replay: 8 bytes a message.
        self._seen = Digests()
        self._listed_bytes = 0
        self.storage: Storage = open_storage(options, mailbox_key, read_only=True)
        #: A local save directory (resolved): what a result names must be a file in it,
        #: reached without a link.
        self._root = (os.path.realpath(options.directory) if options.directory is not None
                      else None)
        self._directory = options.directory

    def __enter__(self) -> SavedMail:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.storage.close()

    def __iter__(self) -> Iterator[ReceivedMail]:
        batch: list[tuple[str, Saved]] = []
        for uidl, record in self._records():  # bounded by the journal and its archive
            if self._wanted(record):
                batch.append((uidl, record))
            if len(batch) >= MARKER_BATCH:
                yield from self._rebuilt(batch)
                batch = []
        yield from self._rebuilt(batch)

    # --- the journal -----------------------------------------------------------------------

    def _records(self) -> Iterator[tuple[str, Saved]]:
        """Every save record, archived ones where the journal names their piece."""
        journal = self.storage.copy_log(JOURNAL)
        if journal is None:
            return  # nothing was ever saved here
        pieces: set[str] = set()  # each read once, however often the journal names it
        with journal:
            for key, value in read_records(journal.chunks()):
                if isinstance(value, Saved):
                    yield key, value
                elif key not in pieces:
                    pieces.add(key)
                    yield from self._archived(key)

    def _archived(self, piece: str) -> Iterator[tuple[str, Saved]]:
        copy = self.storage.open_archive(JOURNAL, piece)
        if copy is None:
            self._problem("", f"{JOURNAL} archive {piece}",
                          "the journal's archive piece is gone: what it kept is not replayed")
            return
        with copy:
            for key, value in read_records(copy.chunks()):
                if isinstance(value, Saved):  # pieces hold save records only
                    yield key, value

    def _wanted(self, record: Saved) -> bool:
        """In the window by what the journal says (time of saving, id prefix)."""
        if self.window.by_saving:
            if not record.saved:
                self.report.undated += 1
                return False
            if (self._since and record.saved < self._since) or \
                    (self._until and record.saved >= self._until):
                return False
        return self._prefixes is None or record.folder[-12:] in self._prefixes

    # --- the markers -----------------------------------------------------------------------

    def _rebuilt(self, batch: list[tuple[str, Saved]]) -> Iterator[ReceivedMail]:
        folders = [record_folder(record) for _, record in batch]
        markers = self.storage.read_markers(folders)
        for (uidl, record), folder, data in zip(batch, folders, markers, strict=True):
            key = Digests.key(folder)
            if key in self._seen:
                continue
            try:  # anything wrong with one message is that message's problem
                mail = self._mail(uidl, record, folder, data)
            except Exception as exc:
                self._problem(uidl, folder, f"{type(exc).__name__}: {str(exc)[:300]}")
                continue
            if mail is None:
                continue
            self._seen.add(key)
            if mail.quarantined and not self.window.quarantined:
                self.report.quarantined_count += 1
                if (len(self.report.quarantined) < MAX_LISTED
                        and self._listed_bytes + len(data or b"") <= MAX_LISTED_BYTES):
                    self._listed_bytes += len(data or b"")
                    self.report.quarantined.append(mail)
                continue
            self.report.replayed += 1
            yield mail

    def _mail(self, uidl: str, record: Saved, folder: str, data: bytes | None
              ) -> ReceivedMail | None:
        """The message as its saving run returned it; None when outside the window (or
        listed as a problem)."""
        marker, problem = manifest.read_marker(data, uidl, record.head)
        if marker is None:
            self._problem(uidl, folder, problem or "")
            return None
        result = marker.get("result")
        if not isinstance(result, dict):
            self._problem(uidl, folder, "its .complete marker keeps no result (a release "
                                        "before replay saved it, or it has too many files)")
            return None
        mail = ReceivedMail.model_validate(locate_result(result, folder, self.storage.locate))
        if problem := self._not_as_saved(mail, marker, uidl, record):
            self._problem(uidl, folder, f"its .complete marker's result {problem}")
            return None
        ids = self.window.message_ids
        if ids is not None and mail.id not in ids:
            return None
        return mail if _dated_in(mail, self.window) else None

    def _not_as_saved(self, mail: ReceivedMail, marker: dict, uidl: str, record: Saved
                      ) -> str | None:
        """Why a rebuilt result is not what this mailbox's run saved in its folder (a
        marker is plain JSON that anyone who can write there can change); None when it is."""
        sha256 = marker.get("sha256")
        if mail.uidl != uidl or mail.sha256 != sha256 or not isinstance(sha256, str):
            return "names another message"
        if mail.id != marker.get("id") or mail.id != stable_id(self._mailbox, uidl, sha256) \
                or not record.folder.endswith(f"-{mail.id[:12]}"):
            return "has an id this mailbox did not give it"
        if mail.quarantined != record.quarantined:
            return "says quarantined where the journal does not, or the other way round"
        return self._outside(mail)

    def _outside(self, mail: ReceivedMail) -> str | None:
        """Locally: a file the result names that is not a regular file reached without a
        link in the save directory (objects have no links). A file gone since is handed on
        as named: reading it fails where it is read, and nothing else is reached."""
        if self._root is None:
            return None
        for location in mail.saved_paths:  # bounded by the result (the marker's size)
            path = os.path.abspath(location.path)
            below = os.path.relpath(path, self._directory)
            try:
                regular = stat.S_ISREG(os.lstat(path).st_mode)
            except FileNotFoundError:
                continue
            if not regular or os.path.realpath(path) != os.path.join(self._root, below):
                return f"names {below}, which is not a file of the save directory (a link?)"
        return None

    def _problem(self, uidl: str, folder: str, problem: str) -> None:
        self.report.problems_count += 1
        if len(self.report.problems) < MAX_LISTED:
            self.report.problems.append(ReplayProblem(uidl=uidl, folder=folder,
                                                      problem=problem))


def _dated_in(mail: ReceivedMail, chosen: Window) -> bool:
    """The message's Date header lies in the window's (always, without one)."""
    if chosen.date_since is None and chosen.date_until is None:
        return True
    if mail.date is None:
        return False
    date = mail.date if mail.date.tzinfo else mail.date.replace(tzinfo=UTC)
    return not ((chosen.date_since and date < chosen.date_since)
                or (chosen.date_until and date >= chosen.date_until))


def replay_saved(configuration: str, options: SaveOptions, mailbox_key: str,
                 chosen: Window = Window()) -> tuple[list[ReceivedMail], ReplayReport]:
    """All of a window's messages at once, and the report: for small replays and tests;
    large ones iterate a ``SavedMail``."""
    with SavedMail(configuration, options, mailbox_key, chosen) as saved:
        mails = list(saved)
    return mails, saved.report
