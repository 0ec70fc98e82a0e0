"""The save directory's private state folder, reached only through directory descriptors.

Workers often run as root, and others may write in the save directory. So the state folder
(journal, outbox, work area) is opened without following symlinks, refused unless this
process's user owns it with mode 0700, and every file in it is reached relative to an open
descriptor: a symlink or a folder swapped in later cannot redirect a write, an append or a
cleanup outside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from prefect_pop3mail.tasks.pop3.errors import DiskFullError, SaveDirectoryError, SaveError
from prefect_pop3mail.tasks.pop3.storage.base import STATE_DIR

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PROC_FD = Path("/proc/self/fd")


@contextlib.contextmanager
def save_errors(path: str | Path) -> Iterator[None]:
    """OSError on this machine's disk becomes the store's errors, naming the path: a full
    disk or a folder that cannot be written ends the run; anything else is the message's."""
    try:
        yield
    except SaveError:
        raise
    except OSError as exc:
        path = shown(path)  # as configured, not the /proc/self/fd path it was reached by
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left to save in {path}") from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
            raise SaveDirectoryError(f"save_directory: cannot write {path}: {exc.strerror}") from exc
        raise SaveError(f"cannot save in {path}: {exc.strerror or exc}") from exc


def _refuse(path: Path, problem: str) -> SaveDirectoryError:
    return SaveDirectoryError(f"save_directory: {path}: {problem}")


def _os_problem(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "is a symbolic link; refused"
    if exc.errno == errno.ENOTDIR:
        return "is not a folder"
    return exc.strerror or str(exc)


def open_root(root: Path, dir_mode: int) -> int:
    """Open (creating what is missing, with ``dir_mode``) the save directory itself.

    The configured path may contain symlinks: it is the user's choice, not an attacker's.
    """
    missing = []
    probe = root
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        for folder in reversed(missing):
            try:
                os.mkdir(folder, dir_mode)
            except FileExistsError:
                pass
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _refuse(root, f"cannot open or create it: {_os_problem(exc)}") from exc


def open_existing_root(root: Path) -> int:
    """Open the save directory itself for reading; it must exist (nothing is created)."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise _refuse(root, "does not exist: nothing was saved there") from exc
    except OSError as exc:
        raise _refuse(root, f"cannot be read: {_os_problem(exc)}") from exc


def open_private_dir(parent_fd: int, name: str, shown: Path, mode: int = 0o700, *,
                     private: bool = True, create: bool = True) -> int:
    """Open the folder ``name`` under ``parent_fd``, creating it with ``mode`` (unless not
    ``create``: FileNotFoundError when it is missing).

    Never through a symlink. With ``private``, refused unless owned by this user with no
    access for group or others.
    """
    try:
        if create:
            os.mkdir(name, mode, dir_fd=parent_fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _refuse(shown, f"cannot create it: {_os_problem(exc)}") from exc
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if not create and isinstance(exc, FileNotFoundError):
            raise  # the caller's "nothing here"
        problem = _os_problem(exc)
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.lstat(name, dir_fd=parent_fd).st_mode):
                problem = "is a symbolic link; refused"
        raise _refuse(shown, problem) from exc
    if private:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            os.close(fd)
            raise _refuse(
                shown,
                f"must be owned by this worker's user (uid {os.geteuid()}) with mode 0700, "
                f"but is owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):o}; "
                "fix its owner and mode, or remove it",
            )
    return fd


#: The name each folder reached through ``fd_path`` was opened under, by descriptor.
_NAMES: dict[int, Path] = {}


def fd_path(fd: int, fallback: Path) -> Path:
    """A path that resolves to the folder behind ``fd`` even if its name is swapped later."""
    path = _PROC_FD / str(fd)
    if not path.is_dir():
        return fallback
    _NAMES[fd] = fallback
    return path


def shown(path: str | Path) -> str:
    """``path`` as the user would name it (under the save directory as configured), not
    through /proc/self/fd: for messages."""
    text = str(path)
    number, _, rest = text.removeprefix(f"{_PROC_FD}/").partition("/")
    name = _NAMES.get(int(number)) if text.startswith(f"{_PROC_FD}/") and number.isdigit() else None
    if name is None:
        return text
    return str(name / rest) if rest else str(name)


class StateFolder:
    """``<save directory>/.pop3mail`` and one mailbox's work folder in it. ``read_only``:
    nothing is created (the save directory must exist; a missing state folder reads as
    empty) and there is no work folder."""

    fd = work_fd = root_fd = -1

    def __init__(self, root: Path, work_name: str, dir_mode: int = 0o700, *,
                 read_only: bool = False):
        self.root = root
        self.path = root / STATE_DIR
        self.root_fd = open_existing_root(root) if read_only else open_root(root, dir_mode)
        try:
            if read_only:
                with contextlib.suppress(FileNotFoundError):
                    self.fd = open_private_dir(self.root_fd, STATE_DIR, self.path, create=False)
                self.work = None
                return
            self.fd = open_private_dir(self.root_fd, STATE_DIR, self.path)
            self.work_fd = open_private_dir(self.fd, work_name, self.path / work_name)
        except BaseException:
            self.close()
            raise
        #: The work folder as a path for code that takes paths (parser, layout).
        self.work = fd_path(self.work_fd, self.path / work_name)

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """Open a file of the state folder; never through a symlink."""
        if self.fd < 0:
            raise FileNotFoundError(name)  # read-only, and nothing was ever kept here
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)

    def read(self, name: str) -> bytes:
        try:
            fd = self.open(name, os.O_RDONLY)
        except FileNotFoundError:
            return b""
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def open_log(self, name: str, data: bytes) -> int:
        """Open the append-only file ``name`` (whose content is ``data``) for appending, and
        for reading back what was appended. A last line torn by a crash is ended first, so
        the next record gets its own line."""
        fd = self.open(name, os.O_RDWR | os.O_APPEND | os.O_CREAT)
        if data and not data.endswith(b"\n"):
            os.write(fd, b"\n")
        return fd

    @contextlib.contextmanager
    def keeping(self, what: str, name: str) -> Iterator[None]:
        """OSError while keeping a state file becomes an error naming the setting: both
        end the run, for the state of every message is there."""
        try:
            yield
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(f"no space left to keep the {what} {self.path / name}") \
                    from exc
            raise SaveDirectoryError(
                f"save_directory: cannot keep the {what} {self.path / name}: "
                f"{exc.strerror or exc}"
            ) from exc

    def replace(self, name: str, data: bytes, mode: int = 0o600) -> None:
        """Write ``name`` atomically: a temporary file, fsync, rename, fsync the folder."""
        temp = f".{name}.{os.getpid()}.tmp"
        fd = self.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        os.fsync(self.fd)

    def remove_leftovers(self, older_than: float = 3600.0) -> None:
        """Drop what killed runs left in the work folder (partial originals, staging folders).

        Only entries untouched for an hour: a live run of another configuration of the same
        mailbox writes its files continuously and renames them away within moments. Symlinks
        are removed, never followed.
        """
        cutoff = time.time() - older_than
        for name in os.listdir(self.work_fd):
            try:
                info = os.lstat(name, dir_fd=self.work_fd)
                if info.st_mtime >= cutoff:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    shutil.rmtree(name, dir_fd=self.work_fd)
                else:
                    os.unlink(name, dir_fd=self.work_fd)
            except OSError:
                continue

    def close(self) -> None:
        _NAMES.pop(getattr(self, "work_fd", -1), None)
        for attr in ("work_fd", "fd", "root_fd"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
