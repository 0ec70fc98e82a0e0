"""The storage interface: what the message store, the journal and the outbox ask of a save
directory, and nothing more. ``local.LocalStorage`` and ``objects.FsspecStorage`` implement
it; the promises are in this package's docstring.

Names below the save directory are relative POSIX paths: ``<folder>`` for a message,
``quarantine/<folder>`` for one set aside. A message folder is laid out first in the
storage's local work area (``work``), then published whole.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from prefect_pop3mail.tasks.pop3.errors import SaveDirectoryError

#: The private state folder under the save directory: journal, outbox, work area.
STATE_DIR = ".pop3mail"
QUARANTINE_DIR = "quarantine"
#: In every message folder: the manifest, present once the folder is complete.
MARKER = ".complete"
#: The logs of a mailbox's state.
JOURNAL, OUTBOX = "journal", "outbox"


class StateLog(ABC):
    """One append-only log of a mailbox's state (the journal, or the outbox), read whole
    when opened. Records are lines; a line torn by a crash is the reader's to skip."""

    #: Whether a rewrite would make the next read cheaper (many pieces on storage).
    fragmented = False
    #: Whether buffered appends are due to be flushed (many, or for a while).
    due = False

    @abstractmethod
    def read(self) -> bytes:
        """Everything in the log when it was opened, in the order appended."""

    @abstractmethod
    def append(self, data: bytes) -> None:
        """Add whole lines. Locally they are in the OS when this returns; remotely they are
        buffered until ``flush``."""

    @abstractmethod
    def flush(self) -> None:
        """Write buffered appends to the storage; durable once this returns remotely."""

    @abstractmethod
    def read_back(self) -> bytes:
        """What was appended since the last ``read_back`` (or the opening, or a rewrite),
        as the storage returns it now."""

    @abstractmethod
    def rewrite(self, data: bytes) -> None:
        """Replace the whole log with ``data``, atomically."""

    @abstractmethod
    def archive(self, data: bytes) -> str:
        """Keep ``data`` (records the next ``rewrite`` forgets) as a new piece of this log's
        archive, durably; returns the piece's name (20 digits). Receiving runs never read
        it; ``Storage.open_archive`` does."""

    @abstractmethod
    def close(self) -> None:
        """Release the log; buffered appends not flushed are dropped."""


#: What a reader of a copied log gets at a time.
CHUNK = 1 << 20


class FileCopy:
    """A state file as it was when opened: a descriptor of this machine and the size then,
    read as often as needed, a chunk at a time (whatever is appended or renamed over it
    meanwhile). Owns the descriptor; ``shown`` names the file in errors."""

    def __init__(self, fd: int, shown: str):
        self.fd = fd
        self.shown = shown
        self.size = os.fstat(fd).st_size

    def chunks(self) -> Iterator[bytes]:
        offset = 0
        while offset < self.size:  # bounded by the size when opened
            try:
                chunk = os.pread(self.fd, min(CHUNK, self.size - offset), offset)
            except OSError as exc:
                raise SaveDirectoryError(f"save_directory: cannot read {self.shown}: "
                                         f"{exc.strerror or exc}") from exc
            if not chunk:
                return  # cut short since: what is there is all there is
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FileCopy:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class Storage(ABC):
    """One save directory, opened for one mailbox. Opened ``read_only`` (replay), it
    creates, writes and removes nothing in the save directory: it reads the logs
    (``copy_log``, ``open_archive``) and the markers, and says where things are."""

    #: The local folder where a message is laid out before it is published; private.
    work: Path
    #: The longest name below the save directory, in UTF-8 bytes, that this back-end keeps.
    name_limit: int
    #: Shown in errors and logs: the save directory's path or URL, without a password.
    shown: str

    @abstractmethod
    def open_log(self, kind: str) -> StateLog:
        """This mailbox's JOURNAL or OUTBOX log."""

    @abstractmethod
    def publish(self, staging: str, relative: str) -> None:
        """Publish the finished folder ``work/staging`` as ``relative``, replacing an
        earlier save of it, atomically (its marker, already in it, goes last). It is
        consumed. A fault of this message raises SaveError; a save directory that cannot be
        used raises SaveDirectoryError or DiskFullError (the run's faults)."""

    @abstractmethod
    def read_markers(self, folders: list[str]) -> list[bytes | None]:
        """The marker of each message folder as stored now; None where there is none."""

    @abstractmethod
    def barrier(self) -> None:
        """Make everything published and appended so far durable (before QUIT)."""

    @abstractmethod
    def copy_log(self, kind: str) -> FileCopy | None:
        """This mailbox's JOURNAL or OUTBOX log as stored now, for reading without holding
        it in memory; None when there is none. Works on a storage opened read-only."""

    @abstractmethod
    def open_archive(self, kind: str, piece: str) -> FileCopy | None:
        """A piece of the log's archive (``StateLog.archive``); None when it is gone."""

    @abstractmethod
    def locate(self, relative: str) -> str:
        """Where ``relative`` is for downstream steps: a local absolute path, or a URL."""

    @abstractmethod
    def close(self) -> None:
        """Release the storage (descriptors, connections, the work area)."""
