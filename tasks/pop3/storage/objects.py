"""A save directory on fsspec storage: an object store (``s3://bucket/prefix``, ``gs://``,
``az://``), or an SFTP server (sftp.py builds on this class).

- A message is laid out in a private local temporary folder (the work area), one message
  at a time, then uploaded file by file, streamed from disk (s3fs uploads large files in
  parts), its ``.complete`` marker LAST: a folder without its marker is not complete, and
  readers must check for it. Each object is replaced whole, so a folder saved again (after
  a crash) stays readable file by file.
- The journal and the outbox live beside the mail under ``.pop3mail/<mailbox digest>/``,
  each a log of segments (``SegmentLog``): ``<stamp>.log`` per flush, ``<stamp>.snap`` per
  rewrite, which makes the earlier ones obsolete. Opening lists that folder once and reads
  the segments from the latest snapshot on. A prune's archive pieces are objects of
  ``<kind>-archive/``, never read by a receiving run.
- A call returns once the store has acknowledged the write: that is the durability
  barrier, so before QUIT there is nothing to do but flush the logs.
- A write that fails is that message's failure when the store still answers a probe (a
  small write and its removal), the run's when it does not.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError, SaveError, StorageError
from prefect_pop3mail.tasks.pop3.locations import protocol, public_url
from prefect_pop3mail.tasks.pop3.storage import legacy
from prefect_pop3mail.tasks.pop3.storage.base import (
    CHUNK,
    JOURNAL,
    MARKER,
    OUTBOX,
    STATE_DIR,
    FileCopy,
    StateLog,
    Storage,
)
from prefect_pop3mail.tasks.pop3.storage.connect import connect, storage_error
from prefect_pop3mail.tasks.pop3.storage.manifest import MAX_MARKER_BYTES, folder_files

log = logging.getLogger("pop3mail.storage")

#: Object stores upload a large file in parts of this size, read from disk one at a time.
UPLOAD_PART = 8 * 1024 * 1024
#: Parts of one file in flight, and files of one message uploaded at once: at most
#: UPLOAD_PART * PARTS_AT_ONCE * UPLOAD_BATCH bytes in memory, whatever the message's size.
PARTS_AT_ONCE = 2
UPLOAD_BATCH = 4
#: S3, GCS and Azure keep object names of at most this many bytes.
KEY_LIMIT = 1024
#: Appends buffered in a log are flushed once there are this many lines or bytes, or once
#: the oldest is this old: what a crash without deletions can cost is receiving them again.
FLUSH_LINES = 256
FLUSH_BYTES = 1 << 20
FLUSH_SECONDS = 10.0
#: A log in more segments than this is rewritten as one at the end of the run.
MAX_SEGMENTS = 8
_SEGMENT = re.compile(r"([0-9]{20})\.(log|snap)")
#: A log copied for reading (copy_log) is listed again this many times when a segment
#: vanished under the copy (a receiving run rewrote the log meanwhile).
COPY_ATTEMPTS = 3


def _live(entries: dict[str, int]) -> tuple[list[str], list[str]]:
    """A log folder's segment names (with sizes ``entries``): those made obsolete by the
    latest snapshot, and the latest snapshot with what follows it (the log), in order."""
    names = sorted(n for n in entries if _SEGMENT.fullmatch(n))
    snaps = [i for i, name in enumerate(names) if name.endswith(".snap")]
    first = snaps[-1] if snaps else 0
    return names[:first], names[first:]


def _archive_folder(kind: str) -> str:
    return f"{kind}-archive"


class FsspecStorage(Storage):
    """The storage under one URL, opened for one mailbox (``digest``)."""

    @staticmethod
    def open(url: str, storage_options: dict[str, Any] | None, digest: str, *,
             private: bool = True, read_only: bool = False) -> FsspecStorage:
        if protocol(url) in ("sftp", "ssh"):
            from prefect_pop3mail.tasks.pop3.storage.sftp import SFTPStorage

            return SFTPStorage(url, storage_options, digest, private=private,
                               read_only=read_only)
        return FsspecStorage(url, storage_options, digest, private=private,
                             read_only=read_only)

    def __init__(self, url: str, storage_options: dict[str, Any] | None, digest: str, *,
                 private: bool = True, read_only: bool = False):
        self.secret_url = url.rstrip("/")
        self.shown = self.url = public_url(self.secret_url)
        self.file_mode = 0o600 if private else 0o644
        self.dir_mode = 0o700 if private else 0o755
        self.state = f"{STATE_DIR}/{digest}"
        self.fs, root = connect(self.secret_url, storage_options)
        self.root = root.rstrip("/")
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        # Object stores upload a large file in parts, a few at a time: memory stays flat
        # (s3fs would otherwise hold 10 parts of a file at once).
        self._put: dict[str, int] = {}
        if protocols & {"s3", "s3a"}:
            self._put = {"chunksize": UPLOAD_PART, "max_concurrency": PARTS_AT_ONCE}
        elif protocols & {"gs", "gcs"}:
            self._put = {"chunksize": UPLOAD_PART}
        self.work = Path(tempfile.mkdtemp(prefix="pop3mail-"))  # 0700, this user's
        try:
            if not read_only:
                self._prepare()
                self.probe()
            self._entries = self._list(self.state)
            if not read_only:
                self._adopt_legacy_state()
        except BaseException:
            self.close()
            raise
        self.name_limit = self._name_limit()

    def _name_limit(self) -> int:
        key = self.root.partition("/")[2]  # the bucket or container is not in the name
        return KEY_LIMIT - len(key.encode()) - (1 if key else 0)

    def _prepare(self) -> None:
        """Make the storage ready for this run (an object store needs nothing)."""

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def call(self, doing: str, action, *args, **kwargs):
        """Run one storage call; its faults become a SaveDirectoryError naming the URL."""
        try:
            return action(*args, **kwargs)
        except (FileNotFoundError, NotADirectoryError):
            raise
        except Exception as exc:
            raise storage_error(self.secret_url, doing, exc) from exc

    # --- state ----------------------------------------------------------------------------

    def probe(self) -> None:
        """Write and remove a small object in the state area: SaveDirectoryError when the
        store cannot be reached or written (the run's fault)."""
        name = f"{self.state}/probe-{uuid.uuid4().hex}"
        self.write(name, b"")
        self.remove([name])

    def write(self, relative: str, data: bytes) -> None:
        try:
            self.call(f"write {relative}", self.fs.pipe_file, self.path(relative), data)
        except FileNotFoundError as exc:  # a bucket is never created
            raise storage_error(self.secret_url, f"write {relative}",
                                OSError("the bucket or container does not exist")) from exc

    def read_objects(self, relatives: list[str]) -> dict[str, bytes]:
        if not relatives:
            return {}
        paths = {self.path(r): r for r in relatives}
        contents = self.call("read the state", self.fs.cat, list(paths))
        return {paths[p]: data for p, data in contents.items()}

    def remove(self, relatives: list[str]) -> None:
        """Remove objects; those already gone are no fault."""
        if not relatives:
            return
        paths = [self.path(r) for r in relatives]
        try:
            self.call("remove old state", self.fs.rm, paths)
        except FileNotFoundError:
            for path in paths:
                try:
                    self.call("remove old state", self.fs.rm_file, path)
                except FileNotFoundError:
                    pass

    def _list(self, relative: str) -> dict[str, int]:
        """Names below ``relative`` (with their sizes), fresh, in one listing: on an object
        store, one request per 1,000 names. A link is refused, never followed."""
        path = self.path(relative)
        self.fs.invalidate_cache(path)
        try:
            entries = self.call(f"list {relative}", self.fs.find, path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        found = {}
        for name, info in entries.items():
            name = name.rstrip("/")
            if not name.startswith(path + "/"):
                continue
            if info.get("type") == "link":
                raise SaveDirectoryError(f"save_directory: {self.url}/{relative}/"
                                         f"{name[len(path) + 1:]}: is a symbolic link; refused")
            found[name[len(path) + 1:]] = info.get("size") or 0
        return found

    def open_log(self, kind: str) -> SegmentLog:
        prefix = f"{kind}/"
        entries = {n[len(prefix):]: size for n, size in self._entries.items()
                   if n.startswith(prefix)}
        return SegmentLog(self, f"{self.state}/{kind}", entries)

    def state_folder(self, relative: str) -> None:
        """Make sure the state folder ``relative`` exists before a file is written in it
        (an object store needs nothing)."""

    def copy_log(self, kind: str) -> FileCopy | None:
        """The log's segments, from the latest snapshot on, copied in order into one local
        file: a consistent copy, listed again when a segment vanished under it."""
        folder = f"{self.state}/{kind}"
        for _ in range(COPY_ATTEMPTS):
            names = _live(self._list(folder))[1]
            if not names:
                return None
            try:
                return self._copy([f"{folder}/{name}" for name in names], f"the {kind}")
            except FileNotFoundError:
                continue  # rewritten meanwhile: its new snapshot holds the same records
        raise SaveDirectoryError(f"save_directory: {self.url}/{folder}: the {kind} was "
                                 f"rewritten {COPY_ATTEMPTS} times while it was read; try again")

    def open_archive(self, kind: str, piece: str) -> FileCopy | None:
        try:
            return self._copy([f"{self.state}/{_archive_folder(kind)}/{piece}.log"],
                              f"the {kind} archive")
        except FileNotFoundError:
            return None

    def _copy(self, relatives: list[str], what: str) -> FileCopy:
        """The objects ``relatives``, one after the other (each ended by a line break), in
        a private temporary file of this machine, streamed: memory stays flat."""
        with tempfile.TemporaryFile(dir=self.work) as out:
            for relative in relatives:
                ended = True
                with self.call(f"read {what}", self.fs.open, self.path(relative), "rb") as f:
                    while chunk := self.call(f"read {what}", f.read, CHUNK):
                        out.write(chunk)
                        ended = chunk.endswith(b"\n")
                if not ended:
                    out.write(b"\n")  # a segment cut short must not run into the next
            out.flush()
            return FileCopy(os.dup(out.fileno()), f"{self.url}/{relatives[-1]}")

    def _adopt_legacy_state(self) -> None:
        """Move the state the release before kept here (legacy.py) into the logs, unless
        they were started already; then remove it."""
        old = {n: size for n, size in self._entries.items() if legacy.is_legacy(n)}
        if not old:
            return
        if not any(n.startswith((f"{JOURNAL}/", f"{OUTBOX}/")) for n in self._entries):
            data = legacy.convert(old, lambda names: {
                n[len(self.state) + 1:]: content for n, content in
                self.read_objects([f"{self.state}/{n}" for n in names]).items()})
            stamp = f"{time.time_ns():020d}.snap"
            for kind, content in zip((JOURNAL, OUTBOX), data, strict=True):
                self.write(f"{self.state}/{kind}/{stamp}", content)
                self._entries[f"{kind}/{stamp}"] = len(content)
        self.remove([f"{self.state}/{n}" for n in old])
        for name in old:
            del self._entries[name]

    # --- message folders --------------------------------------------------------------------

    def publish(self, staging: str, relative: str) -> None:
        local = self.work / staging
        try:
            self._upload(local, relative)
        except Exception as exc:
            raise self.fault(f"write {relative}", exc) from exc
        shutil.rmtree(local, ignore_errors=True)

    def _upload(self, local: Path, relative: str) -> None:
        """Every file, then the marker (``folder_files`` puts it last) on its own."""
        files = folder_files(local)
        for batch in (files[:-1], files[-1:]):
            if not batch:
                continue
            lpaths = [os.fspath(path) for _, path in batch]
            rpaths = [self.path(f"{relative}/{name}") for name, _ in batch]
            if getattr(self.fs, "async_impl", False):  # s3fs, gcsfs, adlfs: concurrently
                self.fs.put(lpaths, rpaths, batch_size=UPLOAD_BATCH, **self._put)
            else:
                for lpath, rpath in zip(lpaths, rpaths, strict=True):
                    self.fs.put_file(lpath, rpath, **self._put)

    def fault(self, doing: str, exc: BaseException) -> SaveError:
        """A failed write: the message's (StorageError) if the store still answers, the
        run's (SaveDirectoryError) if it does not."""
        try:
            self.probe()
        except SaveDirectoryError:
            return storage_error(self.secret_url, doing, exc)
        return storage_error(self.secret_url, doing, exc, StorageError)

    def read_markers(self, folders: list[str]) -> list[bytes | None]:
        if not folders:
            return []
        paths = [self.path(f"{folder}/{MARKER}") for folder in folders]
        found = self.call("read back markers", self.fs.cat, paths, on_error="omit",
                          start=0, end=MAX_MARKER_BYTES + 1)
        return [found.get(path) for path in paths]

    def barrier(self) -> None:
        """Nothing to wait for: every write was acknowledged when its call returned."""

    def locate(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        client = getattr(getattr(self, "fs", None), "client", None)  # an SFTP connection
        if client is not None and hasattr(client, "close"):
            client.close()


class SegmentLog(StateLog):
    """A log as objects in ``folder``: ``<stamp>.log`` per flush, ``<stamp>.snap`` per
    rewrite. Stamps only grow (past the largest seen, whatever the clocks of workers say),
    so names sort in the order written; the latest snapshot and what follows it are the
    log."""

    def __init__(self, storage: FsspecStorage, folder: str, entries: dict[str, int]):
        self._storage, self._folder = storage, folder
        obsolete, self._names = _live(entries)
        names = obsolete + self._names
        self._last = int(names[-1][:20]) if names else 0
        self.fragmented = len(self._names) > MAX_SEGMENTS
        wanted = [self._at(n) for n in self._names if entries[n]]  # empty ones: nothing to read
        contents = storage.read_objects(wanted)
        self._data = b"".join(_ended(contents[path]) for path in wanted)
        self._buffer = bytearray()
        self._lines = 0
        self._oldest = 0.0
        self._unread: list[str] = []  # segments written since the last read-back
        self._discard(obsolete)

    def _at(self, name: str) -> str:
        return f"{self._folder}/{name}"

    def _next(self, suffix: str) -> str:
        stamp = max(time.time_ns(), self._last + 1)
        self._last = stamp
        return f"{stamp:020d}.{suffix}"

    def _discard(self, names: list[str]) -> None:
        """Remove obsolete segments; left behind, they are removed by a later run."""
        try:
            self._storage.remove([self._at(n) for n in names])
        except SaveDirectoryError as exc:
            log.warning("Could not remove obsolete state segments: %s", exc)

    @property
    def due(self) -> bool:
        return self._lines >= FLUSH_LINES or len(self._buffer) >= FLUSH_BYTES or (
            self._lines > 0 and time.monotonic() - self._oldest >= FLUSH_SECONDS)

    def read(self) -> bytes:
        data, self._data = self._data, b""
        return data

    def append(self, data: bytes) -> None:
        if not self._lines:
            self._oldest = time.monotonic()
        self._buffer += data
        self._lines += data.count(b"\n")

    def flush(self) -> None:
        if not self._buffer:
            return
        name = self._next("log")
        self._storage.write(self._at(name), bytes(self._buffer))
        self._names.append(name)
        self._unread.append(name)
        self._buffer.clear()
        self._lines = 0

    def read_back(self) -> bytes:
        wanted = [self._at(n) for n in self._unread]
        contents = self._storage.read_objects(wanted)
        self._unread.clear()
        return b"".join(_ended(contents[path]) for path in wanted)

    def archive(self, data: bytes) -> str:
        piece = self._next("log")[:20]
        folder = f"{self._folder}-archive"
        self._storage.state_folder(folder)
        self._storage.write(f"{folder}/{piece}.log", data)
        return piece

    def rewrite(self, data: bytes) -> None:
        name = self._next("snap")
        self._storage.write(self._at(name), data)
        old, self._names = self._names, [name]
        self._buffer.clear()  # what was buffered is in the state rewritten
        self._lines = 0
        self._unread.clear()
        self.fragmented = False
        self._discard(old)

    def close(self) -> None:
        self._buffer.clear()
        self._lines = 0


def _ended(data: bytes) -> bytes:
    """A segment cut short (SFTP, a crash mid-write) must not run into the next one."""
    return data if not data or data.endswith(b"\n") else data + b"\n"
