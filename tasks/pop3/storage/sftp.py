"""SFTP save directories: fsspec's paramiko client, keeping the local folder's promises.

- Host keys are checked against a known_hosts file, never trusted on first sight
  (connect.py): the SSH counterpart of verifying TLS certificates.
- The state folder and its parts are checked with lstat at every run: a link is refused,
  never followed, and so is a state folder that others may enter (it is created 0700).
- A message folder is uploaded into a private staging folder inside the state folder, then
  renamed into place (posix-rename@openssh.com), an earlier save moved aside first: complete
  or absent, as on a local disk. Folders get 0700 and files 0600 (0755 and 0644 without
  private files); state files 0600 always, created exclusively (a planted name is refused).
- Every write is acknowledged by the server before its call returns (uploads are also
  confirmed by size): the durability barrier.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
import uuid
from pathlib import Path

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError
from prefect_pop3mail.tasks.pop3.storage.base import JOURNAL, OUTBOX, STATE_DIR
from prefect_pop3mail.tasks.pop3.storage.manifest import folder_files
from prefect_pop3mail.tasks.pop3.storage.objects import FsspecStorage

#: Linux's limit on a path; the staging folder's longer name is kept room for.
PATH_MAX = 4096
_STAGING_ROOM = 64
#: Staging and replaced folders older than this were left by a killed run.
LEFTOVER_SECONDS = 3600


class SFTPStorage(FsspecStorage):
    """A folder on an SFTP server."""

    @property
    def _sftp(self):
        return self.fs.ftp

    def _name_limit(self) -> int:
        return PATH_MAX - len(self.root.encode()) - _STAGING_ROOM

    def _prepare(self) -> None:
        self.call("create the save directory", self.fs.makedirs, self.root, exist_ok=True,
                  mode=self.dir_mode)
        for relative in (STATE_DIR, self.state, f"{self.state}/{JOURNAL}",
                         f"{self.state}/{OUTBOX}"):
            self._folder(relative, 0o700, private=True)
        self._remove_leftovers()

    def state_folder(self, relative: str) -> None:
        self._folder(relative, 0o700, private=True)

    def _refuse(self, relative: str, problem: str) -> SaveDirectoryError:
        return SaveDirectoryError(f"save_directory: {self.url}/{relative}: {problem}")

    def _folder(self, relative: str, mode: int, *, private: bool) -> None:
        """Make sure ``relative`` is a folder, not a link (created with ``mode``); with
        ``private``, refused when others may enter it."""
        path = self.path(relative)
        try:
            info = self.call(f"look at {relative}", self._sftp.lstat, path)
        except FileNotFoundError:
            self.call(f"create {relative}", self._sftp.mkdir, path, mode)
            self.call(f"create {relative}", self._sftp.chmod, path, mode)  # whatever the umask
            return
        if stat.S_ISLNK(info.st_mode):
            raise self._refuse(relative, "is a symbolic link; refused")
        if not stat.S_ISDIR(info.st_mode):
            raise self._refuse(relative, "is not a folder")
        if private and info.st_mode & 0o077:
            raise self._refuse(relative, f"must have mode 0700, but has mode "
                               f"{stat.S_IMODE(info.st_mode):o}; fix its mode, or remove it")

    def _remove_leftovers(self) -> None:
        """Staging and replaced folders of killed runs, untouched for an hour."""
        cutoff = time.time() - LEFTOVER_SECONDS
        for entry in self.call("list the state", self._sftp.listdir_attr, self.path(self.state)):
            if entry.filename.startswith(("staging-", "replaced-")) and \
                    (entry.st_mtime or 0) < cutoff:
                with contextlib.suppress(OSError):
                    self._remove_tree(self.path(f"{self.state}/{entry.filename}"))

    def _remove_tree(self, path: str) -> None:
        """Remove ``path`` and what is in it; a link is removed, never followed."""
        if stat.S_ISDIR(self._sftp.lstat(path).st_mode):
            for entry in self._sftp.listdir_attr(path):
                self._remove_tree(f"{path}/{entry.filename}")
            self._sftp.rmdir(path)
        else:
            self._sftp.remove(path)

    def write(self, relative: str, data: bytes) -> None:
        """A new state file, 0600, created exclusively: never through a planted link."""

        def create() -> None:
            with self._sftp.open(self.path(relative), "wbx") as f:
                f.chmod(0o600)
                f.write(data)

        self.call(f"write {relative}", create)

    def remove(self, relatives: list[str]) -> None:
        for relative in relatives:
            with contextlib.suppress(FileNotFoundError):
                self.call("remove old state", self._sftp.remove, self.path(relative))

    def publish(self, staging: str, relative: str) -> None:
        local = self.work / staging
        remote = f"{self.state}/staging-{uuid.uuid4().hex}"
        try:
            self._upload_tree(local, remote)
            self._rename_into_place(remote, relative)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._remove_tree(self.path(remote))
            raise self.fault(f"write {relative}", exc) from exc
        shutil.rmtree(local, ignore_errors=True)

    def _upload_tree(self, local: Path, remote: str) -> None:
        """``local`` into the new folder ``remote`` of the private state folder, with the
        modes of saved mail; the marker last."""
        made: set[str] = set()

        def folder(relative: str) -> None:
            if relative in made:
                return
            parent = relative.rpartition("/")[0]
            if parent.startswith(remote):
                folder(parent)
            self._sftp.mkdir(self.path(relative), self.dir_mode)
            self._sftp.chmod(self.path(relative), self.dir_mode)
            made.add(relative)

        folder(remote)
        for name, path in folder_files(local):
            target = f"{remote}/{name}"
            folder(target.rpartition("/")[0])
            self._sftp.put(os.fspath(path), self.path(target), confirm=True)
            self._sftp.chmod(self.path(target), self.file_mode)

    def _rename_into_place(self, remote: str, relative: str) -> None:
        parent = relative.rpartition("/")[0]
        if parent:  # quarantine: created if missing, never a link
            self._folder(parent, self.dir_mode, private=False)
        target = self.path(relative)
        try:
            self._sftp.lstat(target)
        except FileNotFoundError:
            self._sftp.posix_rename(self.path(remote), target)
            return
        aside = self.path(f"{self.state}/replaced-{uuid.uuid4().hex}")
        self._sftp.posix_rename(target, aside)  # a link moves as a link: not followed
        self._sftp.posix_rename(self.path(remote), target)
        with contextlib.suppress(OSError):
            self._remove_tree(aside)
