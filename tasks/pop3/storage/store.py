"""Saving messages: one folder per message under the save directory, laid out in the
storage's private work area, sealed with its ``.complete`` marker and published whole, so a
folder is complete or absent, never half-written. Written once for every storage (base.py).

    <date>-<hash of the UIDL>/
        message.eml        the original as received (encrypted, if it was)
        text.txt           the text body, UTF-8            (Save mail text)
        body.html          the HTML body, UTF-8            (Save mail text)
        attachments/...    every other part                (Save mail attachments)
        long-names/...     files whose full names would pass the storage's limit
        .complete          the manifest (manifest.py)

What the folder holds besides the original is message/contents.py's (S/MIME opened, parts
laid out); a message arrives through storage/incoming.py. The store also keeps the mailbox's journal and outbox, and verifies a saved
message (its journal record and its marker, read back) before the receiver may delete it
from the server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from datetime import UTC, datetime

from prefect_pop3mail.tasks.pop3.errors import POP3MailError, SaveDirectoryError
from prefect_pop3mail.tasks.pop3.message.contents import ContentWriter
from prefect_pop3mail.tasks.pop3.message.headers import header_fields
from prefect_pop3mail.tasks.pop3.message.headers import read_head as _read_head
from prefect_pop3mail.tasks.pop3.message.layout import Findings
from prefect_pop3mail.tasks.pop3.models import (
    ReceivedMail,
    SavedAttachment,
    SaveOptions,
    locate_result,
)
from prefect_pop3mail.tasks.pop3.storage import manifest
from prefect_pop3mail.tasks.pop3.storage.base import JOURNAL, OUTBOX, QUARANTINE_DIR, Storage
from prefect_pop3mail.tasks.pop3.storage.incoming import IncomingMessage
from prefect_pop3mail.tasks.pop3.storage.journal import (
    Journal,
    Saved,
    mailbox_digest,
    saved_stamp,
)
from prefect_pop3mail.tasks.pop3.storage.local import LocalStorage
from prefect_pop3mail.tasks.pop3.storage.objects import FsspecStorage
from prefect_pop3mail.tasks.pop3.storage.outbox import Outbox
from prefect_pop3mail.tasks.pop3.storage.statedir import save_errors

log = logging.getLogger("pop3mail.store")

ORIGINAL_NAME = "message.eml"


def open_storage(options: SaveOptions, mailbox_key: str, *, read_only: bool = False
                 ) -> Storage:
    """The storage of ``options``' save directory, opened for one mailbox; ``read_only``
    (replay): nothing in it is created, written or removed."""
    digest = mailbox_digest(mailbox_key)
    if options.directory is not None:
        return LocalStorage(options.directory, digest, private=options.private,
                            read_only=read_only)
    assert options.url is not None
    return FsspecStorage.open(options.url, options.storage_options, digest,
                              private=options.private, read_only=read_only)


class MessageStore:
    """Turns retrieved originals into saved folders for one mailbox, and keeps its journal
    and outbox. Close it (or use it as a context manager) when the run is over."""

    def __init__(self, options: SaveOptions, mailbox_key: str, configuration: str):
        self.options = options
        self.configuration = configuration
        self._mailbox = mailbox_key
        self.file_mode = 0o600 if options.private else 0o644
        self.dir_mode = 0o700 if options.private else 0o755
        self.contents = ContentWriter(options, self.file_mode, self.dir_mode)
        self.storage = open_storage(options, mailbox_key)
        try:
            if self.storage.name_limit < manifest.MIN_NAME_ROOM:
                raise SaveDirectoryError(
                    f"save_directory: {self.storage.shown} is too long: names below it may "
                    f"take only {self.storage.name_limit} bytes on this storage, and saved "
                    f"mail needs {manifest.MIN_NAME_ROOM}")
            self.journal = Journal(self.storage.open_log(JOURNAL))
            try:
                self.outbox = Outbox(self.storage.open_log(OUTBOX))
            except BaseException:
                self.journal.close()
                raise
        except BaseException:
            self.storage.close()
            raise
        self._work = self.storage.work

    def __enter__(self) -> MessageStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Write what the logs still buffer (outbox first), then release everything."""
        try:
            self.flush()
            self.journal.compact()
        except POP3MailError as exc:  # not durable yet: a later run saves these again
            log.error("The journal or outbox could not be written at the end of the run: "
                      "%s", exc)
        finally:
            self.journal.close()
            self.outbox.close()
            self.storage.close()

    # --- the journal and the outbox ----------------------------------------------------------

    def record(self, mail: ReceivedMail, size: int, head: str) -> Saved:
        """Journal a saved message (listed with ``size``, its header digest ``head``), and
        put it in the outbox first: a crash between the two saves it again into the same
        folder and announces it under the same id, never not at all. Returns the record."""
        record = Saved(_folder_name(mail), size, head, mail.quarantined,
                       saved_stamp(mail.saved_at))
        self.outbox.add(mail)
        self.journal.record(mail.uidl, record)
        if self.journal.log.due or self.outbox.log.due:
            self.flush()
        return record

    def prune(self, on_server: set[str]) -> None:
        """The journal forgets messages gone from the server (journal.py), after the outbox
        has written what it buffers (the rewrite must not get ahead of it)."""
        self.outbox.log.flush()
        self.journal.prune(on_server)

    def flush(self) -> None:
        """Write what the logs buffer, the outbox first."""
        self.outbox.log.flush()
        self.journal.log.flush()

    def barrier(self) -> None:
        """Everything saved and journalled so far is durable when this returns (before
        QUIT, where the server applies deletions)."""
        self.flush()
        self.storage.barrier()

    def verify(self, saved: dict[str, Saved], *, recorded_now: bool) -> dict[str, str]:
        """Which of ``saved`` (UIDL -> its journal record) may not be deleted from the
        server, and why: each record, read back from the storage when ``recorded_now``
        (this run's records), must be as written, and its folder's marker, read back, must
        name the same message."""
        problems: dict[str, str] = {}
        if recorded_now and saved:
            self.flush()
            back = self.journal.read_back()
            problems = {uidl: "its journal record did not read back as written"
                        for uidl, record in saved.items() if back.get(uidl) != record}
        folders = {uidl: record_folder(record) for uidl, record in saved.items()
                   if uidl not in problems}
        markers = self.storage.read_markers(list(folders.values()))
        for (uidl, _), data in zip(folders.items(), markers, strict=True):
            problem = manifest.marker_problem(data, uidl, saved[uidl].head)
            if problem:
                problems[uidl] = problem
        return problems

    # --- saving -----------------------------------------------------------------------------

    def incoming(self) -> IncomingMessage:
        return IncomingMessage(os.path.join(self._work, f"incoming-{uuid.uuid4().hex}.eml"),
                               self.file_mode)

    def folder_name(self, uidl: str, date: datetime | None, sha256: str) -> str:
        """Stable for a message of this mailbox: its date and a hash of its UIDL and
        content, so saving it again replaces its folder, and a message that a server gave
        a reused UIDL gets a folder of its own."""
        stamp = f"{date.year:04d}{date:%m%d-%H%M%S}" if date else "undated"
        return f"{stamp}-{self.stable_id(uidl, sha256)[:12]}"

    def stable_id(self, uidl: str, sha256: str) -> str:
        """The id a message keeps across runs: a reused UIDL gets another one."""
        return stable_id(self._mailbox, uidl, sha256)

    def save(self, incoming: IncomingMessage, uidl: str) -> ReceivedMail:
        """Save everything for one message; the incoming file is consumed."""
        with save_errors(incoming.path), open(incoming.path, "rb") as f:
            head = _read_head(f)
        header_warnings: list[str] = []
        headers = header_fields(head, header_warnings)
        name = self.folder_name(uidl, headers["date"], incoming.sha256)
        findings = Findings(sender=headers["sender"], warnings=header_warnings)
        self._warn_if_distrusted(uidl, findings)

        def lay_out(staging: str) -> None:
            original = os.path.join(staging, ORIGINAL_NAME)
            os.replace(incoming.path, original)
            self.contents.write(original, staging, findings, uidl, work=self._work, head=head)
            if not self.options.save_original:
                os.unlink(original)

        return self._publish(incoming, uidl, name, lay_out, lambda moved: self._result(
            incoming, uidl, headers, name, findings, moved))

    def quarantine(self, incoming: IncomingMessage, uidl: str, reason: str) -> ReceivedMail:
        """Set a message aside: its original alone, under ``quarantine/``, nothing parsed
        but what the results need (and that only as far as it reads)."""
        try:
            with open(incoming.path, "rb") as f:
                headers = header_fields(_read_head(f))
        except Exception:  # the message is here because reading it fails
            headers = {}
        name = self.folder_name(uidl, headers.get("date"), incoming.sha256)
        findings = Findings(warnings=[f"set aside in quarantine: {reason}"])
        self._warn_if_distrusted(uidl, findings)
        folder = f"{QUARANTINE_DIR}/{name}"
        return self._publish(
            incoming, uidl, folder,
            lambda staging: os.replace(incoming.path, os.path.join(staging, ORIGINAL_NAME)),
            lambda moved: self._result(incoming, uidl, headers, folder, findings, moved,
                                       quarantined=True))

    def _warn_if_distrusted(self, uidl: str, findings: Findings) -> None:
        problem = self.journal.distrusted.get(uidl)
        if problem:
            findings.warnings.append(f"received again: {problem}")

    def _publish(self, incoming: IncomingMessage, uidl: str, folder: str, lay_out, result
                 ) -> ReceivedMail:
        """Lay out ``folder`` in a staging folder of the work area (``lay_out``), bound its
        names, seal it with its marker and publish it. The marker keeps the message's
        ``result`` (given the names moved to fit); the result returned is built from it as
        replay builds it (``locate_result``), so both are the same."""
        staging_name = f"staging-{uuid.uuid4().hex}"
        staging = os.path.join(self._work, staging_name)
        kept: list[dict] = []

        def keep(moved: dict[str, str]) -> dict:
            kept.append(result(moved))
            return kept[0]

        try:
            with save_errors(staging):
                os.mkdir(staging, self.dir_mode)
                lay_out(staging)
                manifest.seal(staging, folder, self.storage.name_limit, {
                    "id": self.stable_id(uidl, incoming.sha256), "uidl": uidl,
                    "head": incoming.head_digest, "sha256": incoming.sha256,
                    "size": incoming.size}, dir_mode=self.dir_mode, file_mode=self.file_mode,
                    result=keep)
            self.storage.publish(staging_name, folder)
        except BaseException:
            self._undo(staging, incoming)
            raise
        return ReceivedMail.model_validate(locate_result(kept[0], folder, self.storage.locate))

    @staticmethod
    def _undo(staging: str, incoming: IncomingMessage) -> None:
        """After a failure: the original goes back to where it arrived (the caller may
        still set it aside, or discards it), and the staging folder goes."""
        try:
            os.replace(os.path.join(staging, ORIGINAL_NAME), incoming.path)
        except OSError:
            pass
        shutil.rmtree(staging, ignore_errors=True)

    def _result(self, incoming: IncomingMessage, uidl: str, headers: dict, folder: str,
                findings: Findings, moved: dict[str, str], *,
                quarantined: bool = False) -> dict:
        """The message's result as its marker keeps it, built once from ``findings``: JSON,
        every location relative to the save directory (``folder`` is); ``moved`` gives the
        stored name of files whose names were too long."""

        def at(path: str | None) -> str | None:
            return f"{folder}/{moved.get(path, path)}" if path else None

        text, html = findings.text, findings.html
        keep_original = self.options.save_original or quarantined
        return ReceivedMail(
            id=self.stable_id(uidl, incoming.sha256),
            configuration=self.configuration,
            uidl=uidl,
            size=incoming.size,
            sha256=incoming.sha256,
            **headers,
            folder=folder,
            original_path=at(ORIGINAL_NAME) if keep_original else None,
            text_path=at(text and text.path),
            text_sha256=text and text.sha256,
            html_path=at(html and html.path),
            html_sha256=html and html.sha256,
            attachments=[
                SavedAttachment(path=at(a.file.path), parent=at(a.parent), filename=a.filename,
                                content_type=a.content_type, size=a.file.size,
                                sha256=a.file.sha256, inline=a.inline, part=a.part)
                for a in findings.attachments
            ],
            decrypted=findings.decrypted,
            signature=findings.signature,
            quarantined=quarantined,
            warnings=findings.warnings,
            saved_at=datetime.now(UTC),
        ).model_dump(mode="json")


def stable_id(mailbox_key: str, uidl: str, sha256: str) -> str:
    """The id of a message of mailbox ``mailbox_key`` with ``uidl`` and content ``sha256``:
    the same in every run, another one for a reused UIDL."""
    return hashlib.sha256(f"{mailbox_key}\0{uidl}\0{sha256}".encode()).hexdigest()[:32]


def _folder_name(mail: ReceivedMail) -> str:
    """The name of a saved message's folder (its last path component)."""
    return str(mail.folder or "").rstrip("/").rsplit("/", 1)[-1]


def record_folder(record: Saved) -> str:
    """A journalled message's folder below the save directory."""
    return f"{QUARANTINE_DIR}/{record.folder}" if record.quarantined else record.folder
