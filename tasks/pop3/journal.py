"""The journal: which messages of a mailbox are saved, by UIDL, beside the saved files.

One append-only file per mailbox. A record is appended after a message's files are in
place and before its DELE is sent, so a rerun after a crash neither loses nor re-saves it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
from pathlib import Path

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError

STATE_DIR = ".pop3mail"


def mailbox_digest(mailbox_key: str) -> str:
    return hashlib.sha256(mailbox_key.encode("utf-8")).hexdigest()[:16]


class Journal:
    """UIDL -> saved folder name, for one mailbox."""

    def __init__(self, directory: Path, mailbox_key: str):
        self.path = directory / STATE_DIR / f"journal-{mailbox_digest(mailbox_key)}.log"
        self.entries: dict[str, str] = {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._load()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SaveDirectoryError(
                f"save_directory: cannot keep the journal {self.path}: {exc.strerror or exc}"
            ) from exc

    def _load(self) -> None:
        if not self.path.exists():
            return
        for line in self.path.read_bytes().split(b"\n")[:-1]:  # a torn last line is dropped
            uidl, _, folder = line.decode("utf-8", "replace").partition("\t")
            if uidl:
                self.entries[uidl] = folder

    def __contains__(self, uidl: str) -> bool:
        return uidl in self.entries

    def record(self, uidl: str, folder: str) -> None:
        """Append one record. Unbuffered: it is in the OS once this returns."""
        os.write(self._fd, f"{uidl}\t{folder}\n".encode())
        self.entries[uidl] = folder

    def sync(self) -> None:
        """Make the journal and everything saved on its file system durable.

        Called once before QUIT (where the server applies deletions), instead of an fsync
        per file: one barrier per session keeps the promise at a fraction of the cost.
        """
        os.fsync(self._fd)
        if not _syncfs(self._fd):
            os.sync()

    def prune(self, on_server: set[str]) -> None:
        """Forget messages no longer on the server once they are most of the journal."""
        stale = [u for u in self.entries if u not in on_server]
        if len(stale) < 1000 or len(stale) * 2 < len(self.entries):
            return
        for uidl in stale:
            del self.entries[uidl]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{u}\t{f}\n" for u, f in self.entries.items()), "utf-8")
        os.replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o600)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _load_syncfs():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _load_syncfs()


def _syncfs(fd: int) -> bool:
    return _SYNCFS is not None and _SYNCFS(fd) == 0
