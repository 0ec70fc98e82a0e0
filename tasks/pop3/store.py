"""Saving messages: one folder per message under the save directory, built in a staging
folder and renamed into place, so a folder is complete or absent, never half-written.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import uuid
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path

from .errors import DiskFullError, SaveDirectoryError, SaveError
from .journal import STATE_DIR, mailbox_digest
from .models import ReceivedMail, SaveOptions

ORIGINAL_NAME = "message.eml"
MAX_HEADER_BYTES = 1 << 20


class IncomingMessage:
    """A sink for one message as it arrives: written to a temp file, hashed on the way."""

    def __init__(self, path: Path, mode: int):
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        self._file = os.fdopen(fd, "wb", buffering=256 * 1024)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> None:
        """Flush to the OS, so a crash of this process cannot lose it."""
        with _os_errors(self.path):
            self._file.close()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class MessageStore:
    """Turns retrieved originals into saved folders for one mailbox."""

    def __init__(self, options: SaveOptions, mailbox_key: str, configuration: str):
        self.options = options
        self.configuration = configuration
        self._mailbox = mailbox_key
        self.file_mode = 0o600 if options.private else 0o644
        self.dir_mode = 0o700 if options.private else 0o755
        self.root = options.directory
        self._work = self.root / STATE_DIR / f"work-{mailbox_digest(mailbox_key)}"
        with _os_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            self._work.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root / STATE_DIR, 0o700)
            probe = self._work / f".probe-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()

    def incoming(self) -> IncomingMessage:
        return IncomingMessage(self._work / f"incoming-{uuid.uuid4().hex}.eml", self.file_mode)

    def folder_name(self, uidl: str, date: datetime | None) -> str:
        """Stable for a message of this mailbox: its date and a hash of its UIDL."""
        stamp = date.strftime("%Y%m%d-%H%M%S") if date else "undated"
        digest = hashlib.sha256(f"{self._mailbox}\0{uidl}".encode()).hexdigest()[:12]
        return f"{stamp}-{digest}"

    def save(self, incoming: IncomingMessage, uidl: str) -> ReceivedMail:
        """Save everything for one message; the incoming file is consumed."""
        headers = read_headers(incoming.path)
        mail = ReceivedMail(
            configuration=self.configuration,
            uidl=uidl,
            size=incoming.size,
            sha256=incoming.sha256,
            **headers,
        )
        name = self.folder_name(uidl, mail.date)
        staging = self._work / f"staging-{name}-{uuid.uuid4().hex[:8]}"
        final = self.root / name
        try:
            with _os_errors(staging):
                staging.mkdir(mode=self.dir_mode)
                original = staging / ORIGINAL_NAME
                os.replace(incoming.path, original)
                self.write_contents(original, staging, mail)
                if not self.options.save_original:
                    original.unlink()
                self._publish(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            incoming.path.unlink(missing_ok=True)
            raise
        return self._relocate(mail, staging, final)

    def write_contents(self, original: Path, folder: Path, mail: ReceivedMail) -> None:
        """Write the text, HTML and attachments of ``original`` into ``folder``."""

    def _publish(self, staging: Path, final: Path) -> None:
        """Rename the finished folder into place, replacing an earlier save of it."""
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            old = self._work / f"replaced-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(staging, final)
            shutil.rmtree(old, ignore_errors=True)

    def _relocate(self, mail: ReceivedMail, staging: Path, final: Path) -> ReceivedMail:
        def moved(path: Path | None) -> Path | None:
            return final / path.relative_to(staging) if path else None

        original = final / ORIGINAL_NAME
        return mail.model_copy(
            update={
                "folder": final,
                "original_path": original if self.options.save_original else None,
                "text_path": moved(mail.text_path),
                "html_path": moved(mail.html_path),
                "attachments": [
                    a.model_copy(update={"path": moved(a.path)}) for a in mail.attachments
                ],
            }
        )


def read_headers(path: Path) -> dict:
    """Sender, recipients, subject, date and Message-ID from the top of a saved message."""
    with open(path, "rb") as f:
        head = bytearray()
        for line in f:
            head += line
            if line in (b"\r\n", b"\n") or len(head) > MAX_HEADER_BYTES:
                break
    message = BytesHeaderParser(policy=default_policy).parsebytes(bytes(head))
    return {
        "message_id": _header(message, "Message-ID") or None,
        "sender": _addresses(message, "From")[0] if _addresses(message, "From") else "",
        "recipients": _addresses(message, "To") + _addresses(message, "Cc"),
        "subject": _header(message, "Subject"),
        "date": _date(message),
    }


def _header(message, name: str) -> str:
    try:
        value = message.get(name)
        return str(value).strip() if value is not None else ""
    except Exception:  # a malformed header must not stop the save
        raw = message.get_all(name, failobj=[""])
        return str(raw[0]).strip()


def _addresses(message, name: str) -> list[str]:
    values = [str(v) for v in message.get_all(name) or []]
    return [f"{display} <{addr}>" if display else addr for display, addr in getaddresses(values) if addr]


def _date(message) -> datetime | None:
    raw = message.get("Date")
    if raw is None:
        return None
    try:
        return parsedate_to_datetime(str(raw))
    except (TypeError, ValueError, IndexError):
        return None


class _os_errors:
    """Turns OSError into the store's errors, naming the path."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, OSError) or isinstance(exc, SaveError):
            return False
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left to save in {self.path}") from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR):
            raise SaveDirectoryError(
                f"save_directory: cannot write {self.path}: {exc.strerror}"
            ) from exc
        raise SaveError(f"cannot save in {self.path}: {exc.strerror or exc}") from exc
