"""The journal: which messages of a mailbox are saved, and which keep failing, by UIDL.

One append-only log per mailbox in the state area of the save directory (a file locally,
segments on storage: the storage's StateLog). A record is appended once a message's folder
is published, and read back before its DELE is sent, so a rerun after a crash neither loses
nor re-saves it.

Records (tab-separated, one per line, each with the CRC of the rest of its line):
    S  uidl  folder  size  head-digest  crc     saved
    Q  uidl  folder  size  head-digest  crc     set aside in quarantine (counts as saved)
    F  uidl  kind  crc                          one more failed attempt ("save" or "retr")

A record is trusted only when it verifies: its CRC (a line torn by a crash fails it), and
fields of the shape this code writes (a UIDL as RFC 1939 allows, a folder name as the store
makes, a size, a 32-digit head digest). Any other line is ignored and reported: a planted
record with empty size and head fields must never make a run delete mail it never saved.
Even a record that verifies leads to a DELE only once the message on the server matches it
(size, header digest) and its folder's marker names the same message (store.py).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import itertools
import logging
import operator
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import NamedTuple

from prefect_pop3mail.tasks.pop3.storage.base import StateLog

logger = logging.getLogger("pop3mail.journal")

#: Prune once this many journalled messages are gone from the server (and most are gone).
PRUNE_AT = 1000
#: A journal this big (about 10,000 records) is replayed on a thread of its own, while the
#: session opens: bench scale, 100,000 records, 0.13-0.17 s.
BACKGROUND_BYTES = 1 << 20


#: How much of a message's header section identifies it.
HEAD_DIGEST_BYTES = 64 * 1024


def mailbox_digest(mailbox_key: str) -> str:
    return hashlib.sha256(mailbox_key.encode("utf-8")).hexdigest()[:16]


def head_digest(data: bytes) -> str:
    """Identifies a message by its header section (from RETR, or from TOP n 0), so that a
    UIDL the server gave to another message since is not taken for the saved one."""
    head = data[:HEAD_DIGEST_BYTES].replace(b"\r\n", b"\n")
    end = head.find(b"\n\n")
    return hashlib.sha256(head[: end + 1] if end >= 0 else head).hexdigest()[:32]


def saved_stamp(moment: datetime | None) -> str:
    """A time of saving as the journal writes it (UTC, to the microsecond); "" for None."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


class Saved(NamedTuple):
    """What the journal knows of a saved message, enough to tell a reused UIDL.

    A named tuple, not a frozen dataclass: every run builds one per journalled message
    (100,000 for a big mailbox left on the server), ten times faster (bench scale)."""

    folder: str
    size: int | None = None
    head: str = ""
    quarantined: bool = False
    #: When it was saved, as ``saved_stamp`` writes it; "" when a release before replay
    #: saved it (its record has no such field).
    saved: str = ""


#: Saved from a tuple of its fields, without a Python call per record.
_SAVED = functools.partial(tuple.__new__, Saved)
_SAVE_KINDS = frozenset(("S", "Q"))
#: Save records decoded at a time: their fields are seven strings each until sorted out.
_RUN = 10_000
#: Tabs in a save record's line: without a time of saving (releases before replay), with.
_SAVE_TABS = (5, 6)
#: A save record's line without its tab and CRC: what the CRC covers; and its CRC.
_BODY = slice(None, -9)
_CRC = slice(-8, None)
#: Records as this code writes them (CRC aside): a UIDL is 1 to 70 characters of 0x21-0x7E
#: (RFC 1939, as the session accepts them), a folder is what the store names one.
_SAVE_RECORD = re.compile(rb"[SQ]\t[\x21-\x7e]{1,70}\t(?:[0-9]{8}-[0-9]{6}|undated)-[0-9a-f]{12}"
                          rb"\t[0-9]{1,15}\t[0-9a-f]{32}(?:\t[0-9]{8}T[0-9]{6}\.[0-9]{6}Z)?"
                          rb"\t[0-9a-f]{8}")
_FAILURE_RECORD = re.compile(rb"F\t[\x21-\x7e]{1,70}\t[\x21-\x7e]{1,32}\t[0-9a-f]{8}")
#: An archive piece's name: the storage's stamp, 20 digits.
_ARCHIVE_RECORD = re.compile(rb"A\t[0-9]{20}\t[0-9]{1,15}\t[0-9a-f]{8}")
#: A line longer than this is no record (the longest is about 200 bytes): a streaming
#: reader skips it without holding it.
MAX_LINE = 4096
_UIDL = re.compile(rb"[\x21-\x7e]{1,70}")
#: UIDLs whose record did not verify, kept to warn on their message: at most this many.
MAX_DISTRUSTED = 1000


_gc_lock = threading.Lock()
_gc_pauses = 0  # replays under way; the collector is the process's, not the thread's
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while the records are built. They are all kept, and
    as tuple subclasses never left out of its passes: collecting while 100,000 of them
    are made found nothing and took a third of the time (bench scale). Counted, so that
    two journals replayed at once (a fan-out) leave the collector as they found it."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def _crc(text: str) -> str:
    return f"{zlib.crc32(text.encode('utf-8')):08x}"


def _line(*fields: object) -> bytes:
    body = "\t".join(str(f) for f in fields)
    return f"{body}\t{_crc(body)}\n".encode()


class Journal:
    """UIDL -> what was saved, and failure counts, for one mailbox."""

    _replay: _Replay | None = None

    def __init__(self, log: StateLog):
        self.log = log
        self.saved: dict[str, Saved] = {}
        self.failures: dict[str, list[str]] = {}
        #: UIDL -> why its record was not trusted (reported on the message when saved).
        self.distrusted: dict[str, str] = {}
        #: The archive's pieces, oldest first: (name, records in it). One per prune.
        self.archives: list[tuple[str, int]] = []
        self.rejected = 0  # intact lines that are not records as written here
        self.damaged = 0  # lines whose CRC fails: torn by a crash, or altered
        self._reported = False
        try:
            data = log.read()
            if len(data) < BACKGROUND_BYTES:
                self._load(data)
                self._report()
            else:  # replayed while the session connects, logs in and waits for UIDL
                self._replay = _Replay(self._load, data)
        except BaseException:
            log.close()
            raise

    def _ready(self) -> None:
        """Wait for a background replay; its error, if any, is raised here."""
        if self._replay is not None:
            self._replay.wait()  # raises each time when it failed: no half-loaded journal
            self._replay = None
            self._report()

    def _report(self) -> None:
        """Say once (on the caller's thread, so it reaches the run's log) what was ignored."""
        if self._reported or not (self.rejected or self.damaged):
            return
        self._reported = True
        if self.rejected:
            shown = ", ".join(sorted(self.distrusted)[:10])
            logger.warning("The journal has %d record(s) that do not verify (fields not as "
                        "written by pop3mail%s); they are ignored, so those messages are "
                        "received again rather than deleted unseen", self.rejected,
                        f"; UIDLs {shown}" if shown else "")
        if self.damaged:
            logger.info("The journal has %d damaged line(s) (a write torn by a crash, or "
                     "altered); ignored", self.damaged)

    def _load(self, data: bytes) -> None:
        """Replay the records in order. A big journal is read at every run (bench scale),
        so the lines with a save record's tabs are taken a run at a time, by columns; any
        other line (a failure, an archive piece, a torn or foreign one) alone, in its
        place."""
        lines = data.split(b"\n")
        start = 0
        with _gc_paused():
            for tabs, group in itertools.groupby(map(bytes.count, lines, itertools.repeat(b"\t"))):
                end = start + len(list(group))
                if tabs in _SAVE_TABS:
                    for run in range(start, end, _RUN):  # runs of a bounded size: bounded memory
                        self._load_saves(lines[run:min(run + _RUN, end)], tabs + 1)
                else:
                    for line in lines[start:end]:
                        self._load_line(line)
                start = end

    def _load_saves(self, lines: list[bytes], width: int) -> None:
        """Lines of ``width`` fields each: save records, or lines that are ignored (a CRC
        that does not match, fields not as written here). A record that verifies is
        ASCII."""
        computed = map(zlib.crc32, map(operator.getitem, lines, itertools.repeat(_BODY)))
        intact = map(bytes.__eq__, map(b"%08x".__mod__, computed),
                     map(operator.getitem, lines, itertools.repeat(_CRC)))
        good = list(map(operator.and_, intact, map(bool, map(_SAVE_RECORD.fullmatch, lines))))
        if not all(good):
            for line in itertools.compress(lines, map(operator.not_, good)):
                self._reject(line)
            lines = list(itertools.compress(lines, good))
            if not lines:
                return
        fields = b"\t".join(lines).decode("ascii").split("\t")
        kinds, uidls, folders, sizes, heads = (fields[i::width] for i in range(5))
        stamps = fields[5::width] if width == 7 else itertools.repeat("", len(uidls))
        records = map(_SAVED, zip(folders, map(int, sizes), heads, map("Q".__eq__, kinds),
                                  stamps, strict=True))
        self.saved.update(zip(uidls, records, strict=True))
        for ended in (self.failures, self.distrusted):  # a save ends both
            if ended:
                for uidl in ended.keys() & set(uidls):
                    del ended[uidl]

    def _load_line(self, raw: bytes) -> None:
        """One line that is not a save record: a failure, an archive piece, or one to
        ignore."""
        if not raw:
            return
        if _FAILURE_RECORD.fullmatch(raw) and _intact(raw):
            _, uidl, kind = raw[_BODY].decode("ascii").split("\t")
            self.failures.setdefault(uidl, []).append(kind)
            return
        if _ARCHIVE_RECORD.fullmatch(raw) and _intact(raw):
            _, piece, count = raw[_BODY].decode("ascii").split("\t")
            self.archives.append((piece, int(count)))
            return
        self._reject(raw)

    def _reject(self, raw: bytes) -> None:
        """Count a line that is ignored; keep its UIDL when it names one."""
        body, _, crc = raw.rpartition(b"\t")
        if crc != b"%08x" % zlib.crc32(body):
            self.damaged += 1
            return
        self.rejected += 1
        fields = body.split(b"\t")
        if (len(fields) > 1 and _UIDL.fullmatch(fields[1])
                and len(self.distrusted) < MAX_DISTRUSTED):
            self.distrusted[fields[1].decode("ascii")] = (
                "its journal record did not verify (fields not as written by pop3mail) and "
                "was ignored")

    def __contains__(self, uidl: str) -> bool:
        self._ready()
        return uidl in self.saved

    def get(self, uidl: str) -> Saved | None:
        self._ready()
        return self.saved.get(uidl)

    def get_many(self, uidls: list[str]) -> list[Saved | None]:
        """What ``get`` gives for each of ``uidls``, in one pass (a listing of 100,000)."""
        self._ready()
        return list(map(self.saved.get, uidls))

    def count_saved(self, uidls: Iterable[str]) -> int:
        """How many of ``uidls`` are saved."""
        self._ready()
        return sum(map(self.saved.__contains__, uidls))

    def failure_count(self, uidl: str) -> int:
        self._ready()
        return len(self.failures.get(uidl, ()))

    def last_failure(self, uidl: str) -> str | None:
        self._ready()
        kinds = self.failures.get(uidl)
        return kinds[-1] if kinds else None

    def record(self, uidl: str, saved: Saved) -> None:
        """Append one record (in the OS once this returns locally; remotely at the next
        flush)."""
        self._ready()
        self.log.append(_save_line(uidl, saved))
        self.saved[uidl] = saved
        self.failures.pop(uidl, None)
        self.distrusted.pop(uidl, None)

    def record_failure(self, uidl: str, kind: str) -> int:
        """Count one more failed attempt at ``uidl``; returns the count."""
        self._ready()
        self.log.append(_line("F", uidl, kind))
        self.failures.setdefault(uidl, []).append(kind)
        return len(self.failures[uidl])

    def read_back(self) -> dict[str, Saved]:
        """The save records appended since the last read-back, as the storage returns them
        now, verified as when the journal is opened (the latest record of a UIDL)."""
        back = Journal.__new__(Journal)
        back.saved, back.failures, back.distrusted = {}, {}, {}
        back.rejected = back.damaged = 0
        back._load(self.log.read_back())
        return back.saved

    def prune(self, on_server: set[str]) -> None:
        """Forget messages no longer on the server once they are most of the journal.

        Never on an empty listing (a server fault or an emptied mailbox cannot tell "gone"
        from "not shown"), and by an atomic rewrite. What it forgets goes to a new piece of
        the archive first, which the rewritten journal names (replay reads it).
        """
        if not on_server:
            return
        self._ready()
        stale = [u for u in self.saved if u not in on_server]
        if len(stale) < PRUNE_AT or len(stale) * 2 < len(self.saved):
            return
        piece = self.log.archive(b"".join(_save_line(u, self.saved[u]) for u in stale))
        self.archives.append((piece, len(stale)))
        for uidl in stale:
            del self.saved[uidl]
        for uidl in [u for u in self.failures if u not in on_server]:
            del self.failures[uidl]
        self.log.rewrite(self._dump())

    def compact(self) -> None:
        """Rewrite the log when it is in many pieces (segments on storage), so that the next
        run reads one."""
        if self.log.fragmented and self._replay is None:
            self.log.rewrite(self._dump())

    def _dump(self) -> bytes:
        lines = [_line("A", piece, count) for piece, count in self.archives]
        lines += [_save_line(u, s) for u, s in self.saved.items()]
        lines += [_line("F", u, kind) for u, kinds in self.failures.items() for kind in kinds]
        return b"".join(lines)

    def close(self) -> None:
        replay, self._replay = self._replay, None
        if replay is not None:
            replay.join()  # not left running; an error it had no longer matters
        self.log.close()


def _save_line(uidl: str, saved: Saved) -> bytes:
    size = "" if saved.size is None else saved.size
    kind = "Q" if saved.quarantined else "S"
    if not saved.saved:  # kept as a release before replay wrote it
        return _line(kind, uidl, saved.folder, size, saved.head)
    return _line(kind, uidl, saved.folder, size, saved.head, saved.saved)


def _intact(raw: bytes) -> bool:
    """The line's CRC matches the rest of it."""
    return raw[_CRC] == b"%08x" % zlib.crc32(raw[_BODY])


def read_records(chunks: Iterable[bytes]) -> Iterator[tuple[str, Saved] | tuple[str, int]]:
    """The records of a journal (or of an archive piece) given in ``chunks``, in order,
    checked as the journal checks them when it opens, one line at a time: ``(uidl,
    Saved)`` per save record, ``(piece, count)`` per archive piece. Memory is bounded by
    a chunk and ``MAX_LINE``, whatever the journal's size; a line that does not verify is
    skipped."""
    for raw in _lines(chunks):
        if _SAVE_RECORD.fullmatch(raw) and _intact(raw):
            kind, uidl, folder, size, head, *stamp = raw[_BODY].decode("ascii").split("\t")
            yield uidl, Saved(folder, int(size), head, kind == "Q", *stamp)
        elif _ARCHIVE_RECORD.fullmatch(raw) and _intact(raw):
            _, piece, count = raw[_BODY].decode("ascii").split("\t")
            yield piece, int(count)


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of ``chunks``; a line over ``MAX_LINE`` is dropped as it streams by."""
    tail = b""
    overlong = False  # dropping a line until its end
    for chunk in chunks:  # bounded by the log: each chunk once
        lines = (tail + chunk).split(b"\n")
        tail = lines.pop()
        for line in lines:
            if not overlong:
                yield line
            overlong = False
        if len(tail) > MAX_LINE:
            tail, overlong = b"", True
    if tail and not overlong:
        yield tail


class _Replay:
    """``load(data)`` on a thread of its own. The replay logs nothing, so nothing of the
    run's log is lost on that thread; an exception is kept and raised by ``wait``."""

    def __init__(self, load: Callable[[bytes], None], data: bytes):
        self._error: BaseException | None = None
        self._traceback = None
        self._thread = threading.Thread(target=self._run, args=(load, data),
                                        name="pop3mail-journal-replay", daemon=True)
        self._thread.start()

    def _run(self, load: Callable[[bytes], None], data: bytes) -> None:
        try:
            load(data)
        except BaseException as exc:  # raised again where the records are first needed
            self._error, self._traceback = exc, exc.__traceback__

    def join(self) -> None:
        self._thread.join()

    def wait(self) -> None:
        self._thread.join()
        if self._error is not None:  # with the replay's traceback, not every caller's
            raise self._error.with_traceback(self._traceback)
