"""A save directory on this machine: a path, or a ``file://`` URL (a mounted volume).

Everything goes through directory descriptors (statedir.py): the state folder is private
and never reached through a link; a message folder is laid out in the private work folder
and renamed into place, so it is complete or absent, and a link planted where it goes is
moved aside, never followed. The journal and the outbox are append-only files in the state
folder. The durability barrier is one ``syncfs`` of the file system, then an fsync of every
file and folder published (or verified for a deletion) since the last barrier, of the logs
and of their folders: nearly free once syncfs has written everything, and the promise
where syncfs does not reach (network file systems).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError
from prefect_pop3mail.tasks.pop3.storage import legacy
from prefect_pop3mail.tasks.pop3.storage.base import (
    JOURNAL,
    MARKER,
    OUTBOX,
    QUARANTINE_DIR,
    FileCopy,
    StateLog,
    Storage,
)
from prefect_pop3mail.tasks.pop3.storage.manifest import MAX_MARKER_BYTES
from prefect_pop3mail.tasks.pop3.storage.statedir import (
    StateFolder,
    open_private_dir,
    save_errors,
)

#: Linux's limit on a path handed to the kernel.
PATH_MAX = 4096
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_LOG_NAMES = {JOURNAL: "journal-{}.log", OUTBOX: "outbox-{}.jsonl"}


def _archive_name(kind: str, digest: str, piece: str) -> str:
    return f"{kind}-{digest}-{piece}.archive"


class LocalLog(StateLog):
    """An append-only file of the state folder; its archive pieces are files beside it."""

    def __init__(self, state: StateFolder, name: str, what: str, digest: str):
        self._state, self.name, self._what, self._digest = state, name, what, digest
        self._fd = -1
        with state.keeping(what, name):
            self._data = state.read(name)
            self._fd = state.open_log(name, self._data)
            self._mark = os.lseek(self._fd, 0, os.SEEK_END)

    def read(self) -> bytes:
        data, self._data = self._data, b""  # handed over once: a big journal is not kept twice
        return data

    def append(self, data: bytes) -> None:
        with self._state.keeping(self._what, self.name):
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]

    def flush(self) -> None:
        """Nothing buffered: appends are in the OS when they return (synced by the barrier)."""

    def read_back(self) -> bytes:
        with self._state.keeping(self._what, self.name):
            end = os.lseek(self._fd, 0, os.SEEK_END)
            parts = []
            while self._mark < end:
                part = os.pread(self._fd, end - self._mark, self._mark)
                if not part:
                    break  # cut short since: what is there is all there is
                parts.append(part)
                self._mark += len(part)
            self._mark = end
        return b"".join(parts)

    def rewrite(self, data: bytes) -> None:
        with self._state.keeping(self._what, self.name):
            self._state.replace(self.name, data)
            os.close(self._fd)
            self._fd = -1
            self._fd = self._state.open(self.name, os.O_RDWR | os.O_APPEND)
            self._mark = len(data)

    def archive(self, data: bytes) -> str:
        with self._state.keeping(f"{self._what} archive", self.name):
            stamp = time.time_ns()
            while True:  # a stamp of its own, past any piece already there
                piece = f"{stamp:020d}"
                name = _archive_name(self._what, self._digest, piece)
                try:
                    os.close(self._state.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
                    break
                except FileExistsError:
                    stamp += 1
            self._state.replace(name, data)
        return piece

    def sync(self) -> None:
        if self._fd >= 0:
            with self._state.keeping(self._what, self.name):
                os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LocalStorage(Storage):
    """A folder of this machine, opened for one mailbox (``digest``)."""

    def __init__(self, root: Path, digest: str, *, private: bool = True,
                 read_only: bool = False):
        self.root = root
        self.shown = str(root)
        self.file_mode = 0o600 if private else 0o644
        self.dir_mode = 0o700 if private else 0o755
        self._digest = digest
        self.state = StateFolder(root, f"work-{digest}", self.dir_mode, read_only=read_only)
        self.name_limit = PATH_MAX - len(os.fsencode(root)) - 1
        self._logs: list[LocalLog] = []
        #: Message folders to make durable at the next barrier.
        self._unsynced: set[str] = set()
        self._read_only = read_only
        if read_only:
            return
        try:
            self.work = self.state.work
            with save_errors(root):
                probe = f".probe-{uuid.uuid4().hex}"
                os.close(self.state.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
                os.unlink(probe, dir_fd=self.state.fd)
            self.state.remove_leftovers()
            self._adopt_legacy_state()
        except BaseException:
            self.state.close()
            raise

    # --- state ----------------------------------------------------------------------------

    def open_log(self, kind: str) -> LocalLog:
        log = LocalLog(self.state, _LOG_NAMES[kind].format(self._digest), kind, self._digest)
        self._logs.append(log)
        return log

    def copy_log(self, kind: str) -> FileCopy | None:
        return self._copy(kind, _LOG_NAMES[kind].format(self._digest))

    def open_archive(self, kind: str, piece: str) -> FileCopy | None:
        return self._copy(f"{kind} archive", _archive_name(kind, self._digest, piece))

    def _copy(self, what: str, name: str) -> FileCopy | None:
        """The state file ``name`` as it is now (its descriptor); None when there is none."""
        with self.state.keeping(what, name):
            try:
                fd = self.state.open(name, os.O_RDONLY)
            except FileNotFoundError:
                return None
            try:
                return FileCopy(fd, str(self.state.path / name))
            except BaseException:
                os.close(fd)
                raise

    def _adopt_legacy_state(self) -> None:
        """Move the state the release before kept for a ``file://`` URL (legacy.py) into
        the logs, unless they were started already; then remove it."""
        try:
            fd = os.open(self._digest, _DIR_FLAGS, dir_fd=self.state.fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self.state_error(f"{self._digest} cannot be opened", exc) from exc
        try:
            sizes = {name: os.stat(name, dir_fd=fd, follow_symlinks=False).st_size
                     for name in os.listdir(fd) if legacy.is_legacy(name)}
            logs = [_LOG_NAMES[kind].format(self._digest) for kind in _LOG_NAMES]
            if not any(self.state.read(name) for name in logs):
                data = legacy.convert(sizes, lambda names: {n: _read(fd, n) for n in names})
                for name, content in zip(logs, data, strict=True):
                    self.state.replace(name, content)
            for name in os.listdir(fd):
                os.unlink(name, dir_fd=fd)
            os.rmdir(self._digest, dir_fd=self.state.fd)
        except OSError as exc:
            raise self.state_error("the previous release's state cannot be moved", exc) \
                from exc
        finally:
            os.close(fd)

    def state_error(self, problem: str, exc: OSError) -> SaveDirectoryError:
        return SaveDirectoryError(f"save_directory: {self.state.path}: {problem}: "
                                  f"{exc.strerror or exc}")

    # --- message folders --------------------------------------------------------------------

    def publish(self, staging: str, relative: str) -> None:
        parent, _, name = relative.rpartition("/")
        with save_errors(self.root / relative), self._folder(parent) as parent_fd:
            _rename_replacing(self.state.work_fd, staging, parent_fd, name)
        self._unsynced.add(relative)

    @contextlib.contextmanager
    def _folder(self, relative: str) -> Iterator[int]:
        """The descriptor of the save directory (``""``) or of ``quarantine``."""
        if not relative:
            yield self.state.root_fd
            return
        assert relative == QUARANTINE_DIR, relative
        fd = open_private_dir(self.state.root_fd, relative, self.root / relative,
                              self.dir_mode, private=False)
        try:
            yield fd
        finally:
            os.close(fd)

    def read_markers(self, folders: list[str]) -> list[bytes | None]:
        found = [self._read_marker(folder) for folder in folders]
        # A folder a deletion is to rely on is made durable by the barrier, too (a reader's
        # storage has no barrier: it keeps nothing per folder read).
        if not self._read_only:
            self._unsynced.update(f for f, data in zip(folders, found, strict=True) if data)
        return found

    def _read_marker(self, relative: str) -> bytes | None:
        """By descriptors, each step refused if it is a link."""
        opened: list[int] = []
        try:
            fd = self.state.root_fd
            for part in relative.split("/"):
                fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                opened.append(fd)
            return _read(fd, MARKER, MAX_MARKER_BYTES + 1)
        except OSError:
            return None
        finally:
            for fd in opened:
                os.close(fd)

    def barrier(self) -> None:
        with self.state.keeping("saved mail", ""):
            for log in self._logs:
                log.sync()
            _syncfs(self.state.root_fd)
            parents = set()
            for relative in sorted(self._unsynced):
                self._fsync_tree(relative)
                parents.add(relative.rpartition("/")[0])
            for parent in sorted(parents):
                with contextlib.suppress(FileNotFoundError), self._folder(parent) as fd:
                    os.fsync(fd)
            os.fsync(self.state.fd)
            os.fsync(self.state.root_fd)
        self._unsynced.clear()

    def _fsync_tree(self, relative: str) -> None:
        """fsync every file and folder of a published folder; links are not followed."""
        try:
            top = os.open(relative, _DIR_FLAGS, dir_fd=self.state.root_fd)
        except FileNotFoundError:
            return  # replaced since, and synced with its replacement
        try:
            for _, _, files, folder_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
                for name in files:
                    try:
                        fd = os.open(name, _FILE_FLAGS, dir_fd=folder_fd)
                    except OSError as exc:
                        if exc.errno == errno.ELOOP:
                            continue
                        raise
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                os.fsync(folder_fd)
        finally:
            os.close(top)

    def locate(self, relative: str) -> str:
        return str(self.root / relative)

    def close(self) -> None:
        self.state.close()


def _rename_replacing(work_fd: int, staging: str, parent_fd: int, name: str) -> None:
    """Rename ``staging`` (in the work folder) to ``name`` (in ``parent_fd``), replacing an
    earlier save of it. Whatever was planted under that name is moved into the work folder
    and removed there without following a link."""
    try:
        os.rename(staging, name, src_dir_fd=work_fd, dst_dir_fd=parent_fd)
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    old = f"replaced-{name}-{uuid.uuid4().hex[:8]}"
    os.rename(name, old, src_dir_fd=parent_fd, dst_dir_fd=work_fd)
    os.rename(staging, name, src_dir_fd=work_fd, dst_dir_fd=parent_fd)
    try:
        if stat.S_ISDIR(os.lstat(old, dir_fd=work_fd).st_mode):
            shutil.rmtree(old, dir_fd=work_fd)
        else:
            os.unlink(old, dir_fd=work_fd)
    except OSError:
        pass  # removed with the leftovers later


def _read(dir_fd: int, name: str, limit: int = -1) -> bytes:
    fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit)


def _load_syncfs():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _load_syncfs()


def _syncfs(fd: int) -> None:
    """Write back the whole file system at once (the fsyncs after it find little to do)."""
    if _SYNCFS is None or _SYNCFS(fd) != 0:
        os.sync()
