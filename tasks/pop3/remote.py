"""Saving to object storage and remote file systems: a save directory that is an fsspec URL
(``s3://bucket/prefix``, ``gs://``, ``az://``, ``sftp://user@host/path``, ``file://``).

Storage without rename or append keeps the local promises this way:

- A message is laid out exactly as on disk (store.py), in a private folder of a temporary
  local work area, one message at a time; its files are then uploaded one by one, streamed
  from disk (s3fs uploads large ones in parts), and a completion marker ``.complete`` goes
  LAST. A folder without its marker is invisible: readers must check for it. The marker is a
  JSON manifest of the folder's files; a folder saved again (after a crash) first loses its
  marker, so it is never visible half-replaced.
- The journal, failure counts and the outbox live beside the saved files, under
  ``.pop3mail/<mailbox digest>/``, one small object per record, read with one listing per
  run. A journal record's name holds all it says, so the listing alone loads the journal;
  its content is the message's announcement until downstream steps have heard of it (then
  it is emptied), so a pending announcement is a record that is not empty, read only then.
- Every upload has returned before the next step: marker, then the journal record with its
  announcement, then DELE. There is nothing to sync.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError
from prefect_pop3mail.tasks.pop3.journal import PRUNE_AT, Journal, Saved, mailbox_digest
from prefect_pop3mail.tasks.pop3.models import ReceivedMail, SaveOptions
from prefect_pop3mail.tasks.pop3.outbox import Outbox
from prefect_pop3mail.tasks.pop3.statedir import QUARANTINE_DIR, STATE_DIR
from prefect_pop3mail.tasks.pop3.store import MessageStore

#: Written last in each message folder: the folder is complete once it exists.
MARKER = ".complete"
#: The package that gives each protocol its fsspec file system: the extra to install.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure",
          "abfss": "azure", "sftp": "sftp", "ssh": "sftp"}
_SEP = "~"
#: Object stores upload a large file in parts of this size, read from disk one at a time.
UPLOAD_PART = 8 * 1024 * 1024
#: Parts of one file in flight, and files of one message uploaded at once: at most
#: UPLOAD_PART * PARTS_AT_ONCE * UPLOAD_BATCH bytes in memory, whatever the message's size.
PARTS_AT_ONCE = 2
UPLOAD_BATCH = 4
#: Small state objects written at once (acknowledgements at the end of a run).
WRITE_BATCH = 32
ATOMIC_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


def public_url(url: str) -> str:
    """``url`` without a password: what results, events and errors may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def _storage_error(url: str, doing: str, exc: BaseException) -> SaveDirectoryError:
    """A storage fault ends the run (the next run tries again); its text never carries a
    password from the URL."""
    text = str(exc).replace(url, public_url(url)) if str(exc) else type(exc).__name__
    password = urlsplit(url).password
    if password:
        text = text.replace(password, "***")
    return SaveDirectoryError(f"save_directory: {public_url(url)}: cannot {doing}: {text[:300]}")


class KnownHostsPolicy:
    """SFTP host keys are checked against a known_hosts file, never trusted on first sight
    (fsspec's own default): the SSH counterpart of verifying TLS certificates."""

    def __init__(self, path: str):
        self.path = path

    def missing_host_key(self, client, hostname: str, key) -> None:
        import paramiko

        known = paramiko.HostKeys()
        try:
            known.load(self.path)
        except OSError as exc:
            raise paramiko.SSHException(f"cannot read known hosts {self.path}: {exc}") from exc
        entry = known.lookup(hostname)
        if entry is None or entry.get(key.get_name()) != key:
            raise paramiko.SSHException(f"host key of {hostname} is not in {self.path}; add it "
                                        "(ssh-keyscan) to trust this server")


def _host_key_options(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    if protocol not in ("sftp", "ssh"):
        return options
    import fsspec.config
    import paramiko

    if "host_key_policy" in options or "host_key_policy" in fsspec.config.conf.get(protocol, {}):
        return options  # the user chose (FSSPEC_SFTP_HOST_KEY_POLICY, or in code)
    known = options.pop("known_hosts", None) or os.environ.get("POP3MAIL_SFTP_KNOWN_HOSTS") \
        or os.path.expanduser("~/.ssh/known_hosts")
    policy = type("KnownHosts", (KnownHostsPolicy, paramiko.MissingHostKeyPolicy), {})(known)
    return {**options, "host_key_policy": policy}


class RemoteTarget:
    """The storage under one URL: uploads finished message folders, marker last."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        import fsspec

        self.secret_url = url.rstrip("/")
        self.url = public_url(self.secret_url)
        protocol = urlsplit(url).scheme.lower()
        try:
            options = _host_key_options(protocol, dict(storage_options or {}))
            self.fs, root = fsspec.core.url_to_fs(self.secret_url, skip_instance_cache=True,
                                                  **options)
        except ImportError as exc:
            extra = EXTRAS.get(protocol)
            hint = f"; install prefect-pop3mail[{extra}]" if extra else ""
            raise SaveDirectoryError(f"save_directory: {self.url}: no file system for "
                                     f"{protocol}:// is installed{hint}") from exc
        except Exception as exc:
            raise _storage_error(url, "connect", exc) from exc
        self.root = root.rstrip("/")
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        # Object stores upload a large file in parts, a few at a time: memory stays flat
        # (s3fs would otherwise hold 10 parts of a file at once).
        self._put: dict[str, int] = {}
        if protocols & {"s3", "s3a"}:
            self._put = {"chunksize": UPLOAD_PART, "max_concurrency": PARTS_AT_ONCE}
        elif protocols & {"gs", "gcs"}:
            self._put = {"chunksize": UPLOAD_PART}
        #: Each upload replaces an object whole, so an earlier save of a folder stays
        #: readable, file by file, while it is saved again (same files, same bytes).
        self.atomic_objects = bool(protocols & ATOMIC_OBJECT_STORES)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def url_of(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    def call(self, doing: str, action, *args, **kwargs):
        """Run one storage call; its faults become a SaveDirectoryError naming the URL."""
        try:
            return action(*args, **kwargs)
        except (FileNotFoundError, NotADirectoryError):
            raise
        except Exception as exc:
            raise _storage_error(self.secret_url, doing, exc) from exc

    def put(self, local: Path, relative: str) -> None:
        """Stream one local file to storage (s3fs: multipart for large files)."""
        self._creating_parents(relative, self.fs.put_file, os.fspath(local),
                               self.path(relative), **self._put)

    def _creating_parents(self, relative: str, action, *args, **kwargs) -> None:
        """Write ``relative``; on a file system with folders (sftp, file://) create the
        missing ones. An object store has none to create: a bucket is never created."""
        try:
            self.call(f"write {relative}", action, *args, **kwargs)
        except FileNotFoundError as exc:
            if self.atomic_objects:
                raise _storage_error(self.secret_url, f"write {relative}",
                                     OSError("the bucket or container does not exist")) from exc
            self.call(f"create {relative}", self.fs.makedirs,
                      self.fs._parent(self.path(relative)), exist_ok=True)
            self.call(f"write {relative}", action, *args, **kwargs)

    def put_all(self, files: list[tuple[Path, str]]) -> None:
        """Upload files (local path, relative name): concurrently on an asynchronous file
        system (s3fs, gcsfs, adlfs), one after the other elsewhere."""
        if not files:
            return  # nothing kept but the marker (no original, no text, no attachments)
        if not getattr(self.fs, "async_impl", False):
            for local, relative in files:
                self.put(local, relative)
            return
        self._creating_parents(files[0][1], self.fs.put,
                               [os.fspath(local) for local, _ in files],
                               [self.path(relative) for _, relative in files],
                               batch_size=UPLOAD_BATCH, **self._put)

    def write(self, relative: str, data: bytes) -> None:
        self._creating_parents(relative, self.fs.pipe_file, self.path(relative), data)

    def remove(self, relatives: list[str]) -> None:
        """Remove objects; those already gone are no fault."""
        if not relatives:
            return
        paths = [self.path(r) for r in relatives]
        try:
            self.call("remove old records", self.fs.rm, paths)
        except FileNotFoundError:
            for path in paths:
                try:
                    self.call("remove old records", self.fs.rm_file, path)
                except FileNotFoundError:
                    pass

    def list(self, relative: str, *, sizes: bool = False):
        """Names in one flat folder (with their sizes), fresh, never cached: on an object
        store, one listing request per 1,000 names."""
        path = self.path(relative)
        self.fs.invalidate_cache(path)
        try:
            entries = self.call(f"list {relative}", self.fs.find, path, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            entries = {}
        found = {p.rstrip("/").rsplit("/", 1)[-1]: info.get("size") or 0
                 for p, info in entries.items()}
        return found if sizes else list(found)

    def write_all(self, objects: dict[str, bytes]) -> None:
        """Write several small objects: at once on an asynchronous file system."""
        if getattr(self.fs, "async_impl", False) and len(objects) > 1:
            self.call("write records", self.fs.pipe,
                      {self.path(r): data for r, data in objects.items()},
                      batch_size=WRITE_BATCH)
            return
        for relative, data in objects.items():
            self.write(relative, data)

    def publish(self, local: Path, relative: str) -> None:
        """Upload the finished folder ``local`` as ``relative``, its marker last."""
        files = _files(local)
        if not self.atomic_objects:  # a file rewritten in place is seen half-written
            try:
                self.call(f"replace {relative}", self.fs.rm_file,
                          self.path(f"{relative}/{MARKER}"))
            except FileNotFoundError:
                pass  # the usual case: saved for the first time
        self.put_all([(path, f"{relative}/{name}") for name, path in files])
        manifest = {"files": [{"path": name, "size": path.stat().st_size} for name, path in files]}
        self.write(f"{relative}/{MARKER}", json.dumps(manifest).encode())

    def close(self) -> None:
        client = getattr(self.fs, "client", None)  # an SFTP connection
        if client is not None and hasattr(client, "close"):
            client.close()


def _files(folder: Path) -> list[tuple[str, Path]]:
    """The regular files under ``folder`` (relative POSIX names), symlinks never followed."""
    found = []
    for top, _dirs, names in os.walk(folder, followlinks=False):
        for name in names:
            path = Path(top, name)
            if path.is_file() and not path.is_symlink():
                found.append((path.relative_to(folder).as_posix(), path))
    return sorted(found)


class RemoteMessageStore(MessageStore):
    """A MessageStore whose finished folders go to storage instead of being renamed into
    place. Its local work area is a temporary folder, removed on close."""

    def __init__(self, options: SaveOptions, mailbox_key: str, configuration: str):
        assert options.url is not None
        self.target = RemoteTarget(options.url, options.storage_options)
        self._temp = Path(tempfile.mkdtemp(prefix="pop3mail-"))
        try:
            local = options.model_copy(update={"directory": self._temp, "url": None})
            super().__init__(local, mailbox_key, configuration)
        except BaseException:
            shutil.rmtree(self._temp, ignore_errors=True)
            self.target.close()
            raise
        self.options = options

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self._temp, ignore_errors=True)
            self.target.close()

    def _publish(self, staging_name: str, parent_fd: int, name: str) -> None:
        relative = name if parent_fd == self.state.root_fd else f"{QUARANTINE_DIR}/{name}"
        staging = self._work / staging_name
        self.target.publish(staging, relative)
        shutil.rmtree(staging, ignore_errors=True)

    WHERE = {"folder": "folder_url", "original": "original_url", "text": "text_url",
             "html": "html_url", "file": "url", "parent": "parent_url"}

    def _locate(self, relative: str) -> str:
        """Saved files are on storage: downstream steps open their URLs."""
        return self.target.url_of(relative)


def _uidl_key(uidl: str) -> str:
    """A UIDL as part of an object name: base32 (any byte, any case-insensitive file
    system), or a digest when that would be too long for one path component."""
    encoded = base64.b32encode(uidl.encode("utf-8")).decode().rstrip("=").lower()
    return encoded if len(encoded) <= 120 else "h" + hashlib.sha256(uidl.encode()).hexdigest()


class RemoteState:
    """The state folder of one mailbox on storage, listed once when opened.

    A journal record holds, as its content, the announcement of the message it records
    until downstream steps have heard of it: journalling and entering the outbox are one
    upload, and a record with content is a pending announcement.
    """

    def __init__(self, target: RemoteTarget, mailbox_key: str):
        self.target = target
        self.folder = f"{STATE_DIR}/{mailbox_digest(mailbox_key)}"
        self._last = 0
        #: name -> size, in the order records were written.
        self.entries = dict(sorted(target.list(self.folder, sizes=True).items(),
                                   key=lambda item: item[0].split(_SEP)[1:2]))
        if not self.entries:
            # The layout's version. It also keeps the folder from being empty: an object
            # store answers an empty listing with more requests to tell "empty" from "absent".
            self.write(self.key("V", "1"))
        #: Announcements waiting for their journal record (uidl key -> the message).
        self.announcing: dict[str, ReceivedMail] = {}
        #: Records written this run with no announcement yet (uidl key -> name), and
        #: records holding a pending announcement (mail id -> name).
        self.unannounced: dict[str, str] = {}
        self.pending: dict[str, str] = {}

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def key(self, *fields: str) -> str:
        """A new record's name: its kind, a time that orders records, then its fields."""
        stamp = max(time.time_ns(), self._last + 1)
        self._last = stamp
        return _SEP.join((fields[0], f"{stamp:020d}", *fields[1:]))

    def write(self, name: str, data: bytes = b"") -> None:
        self.target.write(f"{self.folder}/{name}", data)

    def write_all(self, records: dict[str, bytes]) -> None:
        self.target.write_all({f"{self.folder}/{n}": data for n, data in records.items()})

    def remove(self, names: list[str]) -> None:
        self.target.remove([f"{self.folder}/{n}" for n in names])


class RemoteJournal(Journal):
    """The journal as objects: ``S~time~uidl~folder~size~head`` per saved message (``Q``
    when quarantined), ``F~time~uidl~kind`` per failed attempt. The latest record of a UIDL
    wins; the older ones are removed once it is written, unless still announcing."""

    def __init__(self, state: RemoteState):  # no file to open: Journal's own is not called
        self.remote = state
        self.saved: dict[str, Saved] = {}
        self.failures: dict[str, list[str]] = {}
        self._names: dict[str, list[str]] = {}  # uidl key -> its record objects
        self._fd = -1
        for name in state.entries:
            self._load(name)

    def _load(self, name: str) -> None:
        fields = name.split(_SEP)
        if fields[0] in ("S", "Q") and len(fields) == 6:
            uidl, folder, size, head = fields[2:]
            self.saved[uidl] = Saved(folder, int(size) if size.isdecimal() else None, head,
                                     fields[0] == "Q")
            self.failures.pop(uidl, None)
        elif fields[0] == "F" and len(fields) == 4:
            self.failures.setdefault(fields[2], []).append(fields[3])
        else:
            return  # the layout's version, or not ours
        self._names.setdefault(fields[2], []).append(name)

    def __contains__(self, uidl: str) -> bool:
        return _uidl_key(uidl) in self.saved

    def get(self, uidl: str) -> Saved | None:
        return self.saved.get(_uidl_key(uidl))

    def get_many(self, uidls: list[str]) -> list[Saved | None]:
        return list(map(self.saved.get, map(_uidl_key, uidls)))

    def count_saved(self, uidls: Iterable[str]) -> int:
        return sum(map(self.saved.__contains__, map(_uidl_key, uidls)))

    def failure_count(self, uidl: str) -> int:
        return len(self.failures.get(_uidl_key(uidl), ()))

    def last_failure(self, uidl: str) -> str | None:
        kinds = self.failures.get(_uidl_key(uidl))
        return kinds[-1] if kinds else None

    def record(self, uidl: str, saved: Saved) -> None:
        """Write one record, with the message's announcement when the outbox has it; it is
        durable once this returns."""
        key = _uidl_key(uidl)
        size = "" if saved.size is None else str(saved.size)
        name = self.remote.key("Q" if saved.quarantined else "S", key, saved.folder, size,
                               saved.head)
        mail = self.remote.announcing.pop(key, None)
        self.remote.write(name, mail.model_dump_json().encode() if mail else b"")
        if mail is None:
            self.remote.unannounced[key] = name
        else:
            self.remote.unannounced.pop(key, None)
            self.remote.pending[mail.id] = name
        self.saved[key] = saved
        self.failures.pop(key, None)
        announcing = set(self.remote.pending.values())
        older, self._names[key] = self._names.get(key, []), [name]
        self.remote.remove([n for n in older if n not in announcing])

    def record_failure(self, uidl: str, kind: str) -> int:
        key = _uidl_key(uidl)
        name = self.remote.key("F", key, kind)
        self.remote.write(name)
        self._names.setdefault(key, []).append(name)
        self.failures.setdefault(key, []).append(kind)
        return len(self.failures[key])

    def sync(self) -> None:
        """Nothing to do: every record was durable when its upload returned."""

    def prune(self, on_server: set[str]) -> None:
        """Forget messages gone from the server once they are most of the journal (their
        announcements, if still pending, stay)."""
        if not on_server:
            return
        present = {_uidl_key(u) for u in on_server}
        stale = [k for k in self.saved if k not in present]
        if len(stale) < PRUNE_AT or len(stale) * 2 < len(self.saved):
            return
        gone = stale + [k for k in self.failures if k not in present and k not in self.saved]
        announcing = set(self.remote.pending.values())
        self.remote.remove([n for k in gone for n in self._names.pop(k, [])
                            if n not in announcing])
        for key in gone:
            self.saved.pop(key, None)
            self.failures.pop(key, None)

    def close(self) -> None:
        pass


class RemoteOutbox(Outbox):
    """Pending announcements: journal records that still hold their message. ``add``
    hands the message to the journal record that follows it (the receiver adds, then
    records); acknowledging empties the records."""

    def __init__(self, state: RemoteState):  # no file to open: Outbox's own is not called
        self.remote = state
        self.pending: dict[str, ReceivedMail] = {}
        self._fd = -1
        names = [n for n, size in state.entries.items() if size and n[:2] in ("S~", "Q~")]
        if not names:
            return
        paths = {state.target.path(f"{state.folder}/{n}"): n for n in names}
        contents = state.target.call("read the outbox", state.target.fs.cat, list(paths),
                                     on_error="omit")
        for path, name in paths.items():  # in the order they were written
            try:
                mail = ReceivedMail.model_validate_json(contents[path])
            except (KeyError, ValueError, ValidationError):
                continue  # gone since the listing, or not ours
            self.pending[mail.id] = mail
            state.pending[mail.id] = name

    def add(self, mail: ReceivedMail) -> None:
        key = _uidl_key(mail.uidl)
        self.pending[mail.id] = mail
        name = self.remote.unannounced.pop(key, None)
        if name is None:
            self.remote.announcing[key] = mail  # written with its journal record
            return
        self.remote.write(name, mail.model_dump_json().encode())  # recorded first: rewrite
        self.remote.pending[mail.id] = name

    def acknowledge(self, ids: list[str]) -> None:
        done = [i for i in ids if i in self.pending]
        names = [self.remote.pending.pop(i) for i in done if i in self.remote.pending]
        self.remote.write_all(dict.fromkeys(names, b""))
        for i in done:
            del self.pending[i]

    def close(self) -> None:
        pass


def open_store(save: SaveOptions, mailbox_key: str, configuration: str) -> MessageStore:
    """The message store for ``save``: local disk, or storage when it names a URL."""
    if save.url is not None:
        return RemoteMessageStore(save, mailbox_key, configuration)
    return MessageStore(save, mailbox_key, configuration)


def open_records(store: MessageStore, mailbox_key: str) -> tuple[Journal, Outbox]:
    """The journal and outbox beside ``store``'s saved files."""
    if isinstance(store, RemoteMessageStore):
        state = RemoteState(store.target, mailbox_key)
        return RemoteJournal(state), RemoteOutbox(state)
    journal = Journal(store.state, mailbox_key)
    try:
        return journal, Outbox(store.state, mailbox_key)
    except BaseException:
        journal.close()
        raise
