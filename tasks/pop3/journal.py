"""The journal: which messages of a mailbox are saved, and which keep failing, by UIDL.

One append-only file per mailbox in the private state folder. A record is appended after a
message's files are in place and before its DELE is sent, so a rerun after a crash neither
loses nor re-saves it. Each record carries a CRC: a line torn by a crash is ignored, and the
next record starts on a line of its own.

Records (tab-separated):
    S  uidl  folder  size  head-digest  crc     saved
    Q  uidl  folder  size  head-digest  crc     set aside in quarantine (counts as saved)
    F  uidl  kind  crc                          one more failed attempt ("save" or "retr")
    uidl  folder                                saved, written by version 0.1
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import hashlib
import itertools
import operator
import os
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from prefect_pop3mail.tasks.pop3.statedir import StateFolder

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


class Saved(NamedTuple):
    """What the journal knows of a saved message, enough to tell a reused UIDL.

    A named tuple, not a frozen dataclass: every run builds one per journalled message
    (100,000 for a big mailbox left on the server), ten times faster (bench scale)."""

    folder: str
    size: int | None = None
    head: str = ""
    quarantined: bool = False


#: Saved from a tuple of its fields, without a Python call per record.
_SAVED = functools.partial(tuple.__new__, Saved)
_SAVE_KINDS = frozenset(("S", "Q"))
#: Save records decoded at a time: their fields are six strings each until sorted out.
_RUN = 10_000
#: A save record's line without its tab and CRC: what the CRC covers.
_BODY = slice(None, -9)


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

    def __init__(self, state: StateFolder, mailbox_key: str):
        self.state = state
        self.name = f"journal-{mailbox_digest(mailbox_key)}.log"
        self.saved: dict[str, Saved] = {}
        self.failures: dict[str, list[str]] = {}
        self._fd = -1
        with state.keeping("journal", self.name):
            data = state.read(self.name)
            self._fd = state.open_log(self.name, data)
        try:
            if len(data) < BACKGROUND_BYTES:
                self._load(data)
            else:  # replayed while the session connects, logs in and waits for UIDL
                self._replay = _Replay(self._load, data)
        except BaseException:
            os.close(self._fd)
            raise

    def _ready(self) -> None:
        """Wait for a background replay; its error, if any, is raised here."""
        if self._replay is not None:
            self._replay.wait()  # raises each time when it failed: no half-loaded journal
            self._replay = None

    def _load(self, data: bytes) -> None:
        """Replay the records in order. A big journal is read at every run (bench scale),
        so the lines with a save record's five tabs are taken a run at a time, by columns;
        any other line (a failure, a version 0.1 line, a torn one) alone, in its place."""
        lines = data.split(b"\n")
        tabs = map(bytes.count, lines, itertools.repeat(b"\t"))
        start = 0
        with _gc_paused():
            for end in [*itertools.compress(range(len(lines)), map((5).__ne__, tabs)),
                        len(lines)]:
                for run in range(start, end, _RUN):  # runs of a bounded size: bounded memory
                    self._load_saves(lines[run:min(run + _RUN, end)])
                if end < len(lines):
                    self._load_line(lines[end])
                start = end + 1

    def _load_saves(self, lines: list[bytes]) -> None:
        """Lines of five tabs each: save records, or lines that count for nothing (a CRC
        that does not match, another kind). The CRC is of the line's bytes (records are
        written as UTF-8) before its last tab: when it matches, the CRC field is eight ASCII
        characters, so that is all but the last nine bytes."""
        fields = b"\t".join(lines).decode("utf-8", "replace").split("\t")
        kinds, uidls, folders, sizes, heads, crcs = (fields[i::6] for i in range(6))
        computed = map(zlib.crc32, map(operator.getitem, lines, itertools.repeat(_BODY)))
        good = list(map(operator.and_, map(str.__eq__, map("%08x".__mod__, computed), crcs),
                        map(_SAVE_KINDS.__contains__, kinds)))
        if not all(good):
            kinds, uidls, folders, sizes, heads = (
                list(itertools.compress(column, good))
                for column in (kinds, uidls, folders, sizes, heads))
        numbers = (map(int, sizes) if all(sizes) and "".join(sizes).isdecimal()
                   else [int(size) if size.isdecimal() else None for size in sizes])
        records = map(_SAVED, zip(folders, numbers, heads, map("Q".__eq__, kinds), strict=True))
        self.saved.update(zip(uidls, records, strict=True))
        if self.failures:  # a save ends the failure count
            for uidl in self.failures.keys() & set(uidls):
                del self.failures[uidl]

    def _load_line(self, raw: bytes) -> None:
        """One line that is not a well-formed save record."""
        if raw.count(b"\t") == 1:  # version 0.1: uidl, folder
            uidl, folder = raw.decode("utf-8", "replace").split("\t")
            if uidl not in ("", "S", "Q", "F"):
                self.saved[uidl] = Saved(folder)
                self.failures.pop(uidl, None)
            return
        body, _, crc = raw.rpartition(b"\t")
        if crc != b"%08x" % zlib.crc32(body):
            return  # torn or damaged
        fields = body.decode("utf-8", "replace").split("\t")
        kind, uidl = fields[0], fields[1] if len(fields) > 1 else ""
        if kind in ("S", "Q") and len(fields) == 5:
            # isdecimal, not isdigit: int() refuses digits such as "²"
            size = int(fields[3]) if fields[3].isdecimal() else None
            self.saved[uidl] = Saved(fields[2], size, fields[4], kind == "Q")
            self.failures.pop(uidl, None)
        elif kind == "F" and len(fields) == 3:
            self.failures.setdefault(uidl, []).append(fields[2])

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
        """Append one record. Unbuffered: it is in the OS once this returns."""
        self._ready()
        kind = "Q" if saved.quarantined else "S"
        size = "" if saved.size is None else saved.size
        os.write(self._fd, _line(kind, uidl, saved.folder, size, saved.head))
        self.saved[uidl] = saved
        self.failures.pop(uidl, None)

    def record_failure(self, uidl: str, kind: str) -> int:
        """Count one more failed attempt at ``uidl``; returns the count."""
        self._ready()
        os.write(self._fd, _line("F", uidl, kind))
        self.failures.setdefault(uidl, []).append(kind)
        return len(self.failures[uidl])

    def sync(self) -> None:
        """Make the journal and everything saved on its file system durable.

        Called once before QUIT (where the server applies deletions), instead of an fsync
        per file: one barrier per session keeps the promise at a fraction of the cost.
        """
        os.fsync(self._fd)
        if not _syncfs(self._fd):
            os.sync()

    def prune(self, on_server: set[str]) -> None:
        """Forget messages no longer on the server once they are most of the journal.

        Never on an empty listing (a server fault or an emptied mailbox cannot tell "gone"
        from "not shown"), and by an atomic rewrite.
        """
        if not on_server:
            return
        self._ready()
        stale = [u for u in self.saved if u not in on_server]
        if len(stale) < PRUNE_AT or len(stale) * 2 < len(self.saved):
            return
        for uidl in stale:
            del self.saved[uidl]
        for uidl in [u for u in self.failures if u not in on_server]:
            del self.failures[uidl]
        lines = [
            _line("Q" if s.quarantined else "S", u, s.folder, "" if s.size is None else s.size,
                  s.head)
            for u, s in self.saved.items()
        ]
        lines += [_line("F", u, kind) for u, kinds in self.failures.items() for kind in kinds]
        self.state.replace(self.name, b"".join(lines))
        os.close(self._fd)
        self._fd = self.state.open(self.name, os.O_WRONLY | os.O_APPEND)

    def close(self) -> None:
        replay, self._replay = self._replay, None
        if replay is not None:
            replay.join()  # not left running; an error it had no longer matters
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


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


def _load_syncfs():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _load_syncfs()


def _syncfs(fd: int) -> bool:
    return _SYNCFS is not None and _SYNCFS(fd) == 0
