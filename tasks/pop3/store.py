"""Saving messages: one folder per message under the save directory, built in a staging
folder and renamed into place, so a folder is complete or absent, never half-written.

    <date>-<hash of the UIDL>/
        message.eml        the original as received (encrypted, if it was)
        text.txt           the text body, UTF-8            (Save mail text)
        body.html          the HTML body, UTF-8            (Save mail text)
        attachments/...    every other part                (Save mail attachments)

What goes where is layout.py; the parsing is mime.py; S/MIME is smime.py.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import shutil
import time
import uuid
from datetime import datetime
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path

from prefect_pop3mail.tasks.pop3 import smime
from prefect_pop3mail.tasks.pop3.errors import (
    DiskFullError,
    POP3MailError,
    SaveDirectoryError,
    SaveError,
)
from prefect_pop3mail.tasks.pop3.filenames import decode_rfc2047
from prefect_pop3mail.tasks.pop3.journal import STATE_DIR, mailbox_digest
from prefect_pop3mail.tasks.pop3.layout import (
    ATTACHMENTS_DIR,
    HTML_NAME,
    TEXT_NAME,
    FolderLayout,
    LayoutOptions,
)
from prefect_pop3mail.tasks.pop3.mime import Part, parse_file, parse_headers
from prefect_pop3mail.tasks.pop3.models import ReceivedMail, SaveOptions

log = logging.getLogger("pop3mail.store")

ORIGINAL_NAME = "message.eml"
MAX_HEADER_BYTES = 1 << 20
#: Encrypted inside signed inside encrypted...: more layers than this are not unwrapped.
MAX_SMIME_LAYERS = 4


class IncomingMessage:
    """A sink for one message as it arrives: written to a temp file, hashed on the way."""

    def __init__(self, path: Path, mode: int):
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        self._file = os.fdopen(fd, "wb", buffering=256 * 1024)
        self._hash = hashlib.sha256()
        self.size = 0
        self._error: OSError | None = None

    def write(self, data: bytes) -> None:
        if self._error is not None:
            return  # the disk failed: drop the rest, but let the session read it to the end
        self._hash.update(data)
        try:
            self._file.write(data)
        except OSError as exc:
            self._error = exc
            return
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def finish(self) -> None:
        """Flush to the OS, so a crash of this process cannot lose it."""
        with _os_errors(self.path):
            if self._error is not None:
                raise self._error
            self._file.close()

    def discard(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # a full disk fails the flush too; the file goes anyway
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
        self._keys = smime.KeyStore(options.key_store, options.key_password) if options.key_store else None
        self._work = self.root / STATE_DIR / f"work-{mailbox_digest(mailbox_key)}"
        with _os_errors(self.root):
            self.root.mkdir(parents=True, exist_ok=True)
            self._work.mkdir(parents=True, exist_ok=True)
            os.chmod(self.root / STATE_DIR, 0o700)
            probe = self._work / f".probe-{uuid.uuid4().hex}"
            probe.touch()
            probe.unlink()
        self._remove_leftovers()

    def _remove_leftovers(self, older_than: float = 3600.0) -> None:
        """Drop what killed runs left in the work folder (partial originals, staging folders).

        Only entries untouched for an hour: a live run of another configuration of the same
        mailbox writes its files continuously and renames them away within moments.
        """
        cutoff = time.time() - older_than
        for entry in self._work.iterdir():
            try:
                if entry.lstat().st_mtime < cutoff:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            except OSError:
                continue

    def incoming(self) -> IncomingMessage:
        return IncomingMessage(self._work / f"incoming-{uuid.uuid4().hex}.eml", self.file_mode)

    def folder_name(self, uidl: str, date: datetime | None) -> str:
        """Stable for a message of this mailbox: its date and a hash of its UIDL."""
        stamp = date.strftime("%Y%m%d-%H%M%S") if date else "undated"
        digest = hashlib.sha256(f"{self._mailbox}\0{uidl}".encode()).hexdigest()[:12]
        return f"{stamp}-{digest}"

    def save(self, incoming: IncomingMessage, uidl: str) -> ReceivedMail:
        """Save everything for one message; the incoming file is consumed."""
        with _os_errors(incoming.path), open(incoming.path, "rb") as f:
            head = _read_head(f)
        headers = header_fields(head)
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
                self.write_contents(original, staging, mail, head)
                if not self.options.save_original:
                    original.unlink()
                self._publish(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            incoming.path.unlink(missing_ok=True)
            raise
        return self._relocate(mail, staging, final)

    def write_contents(self, original: Path, folder: Path, mail: ReceivedMail,
                       head: Message | None = None) -> None:
        """Write the text, HTML and attachments of ``original`` (whose top headers are
        ``head``, when already read) into ``folder``."""
        opts = self.options
        if not (opts.save_text or opts.save_attachments):
            return
        plaintexts: list[Path] = []
        try:
            source = self._unwrap(original, mail, plaintexts, head)
            if source is not None:
                self._lay_out(source, folder, mail)
        finally:
            for path in plaintexts:  # decrypted content lives on only in the saved files
                path.unlink(missing_ok=True)

    def _lay_out(self, source: Path, folder: Path, mail: ReceivedMail) -> None:
        opts = self.options
        layout = FolderLayout(
            folder,
            LayoutOptions(opts.save_text, opts.save_attachments, self.file_mode, self.dir_mode),
            self._work,
            parse=parse_file,
            verify=smime.verify_detached,
        )
        try:
            parse_file(source, layout)
            result = layout.finish()
        except (OSError, POP3MailError):
            layout.abort()
            raise
        except Exception as exc:  # a parser bug must cost this message's parts, not the batch
            layout.abort()
            log.exception("Laying out message %s failed", mail.uidl)
            for name in (TEXT_NAME, HTML_NAME, ATTACHMENTS_DIR):
                shutil.rmtree(folder / name, ignore_errors=True)
                (folder / name).unlink(missing_ok=True)
            mail.warnings.append(f"internal error reading the message ({type(exc).__name__}); "
                                 "only the original is saved")
            return
        mail.text_path, mail.text_sha256 = result.text_path, result.text_sha256
        mail.html_path, mail.html_sha256 = result.html_path, result.html_sha256
        mail.attachments = result.attachments
        mail.warnings.extend(result.warnings)
        if mail.signature is None:
            mail.signature = result.signature

    def _unwrap(self, source: Path, mail: ReceivedMail, plaintexts: list[Path],
                headers: Message | None) -> Path | None:
        """Decrypt and open S/MIME layers; None when there is nothing more to save."""
        for _ in range(MAX_SMIME_LAYERS):
            root = _RootBody()
            if headers is None:
                with open(source, "rb") as f:
                    headers = _read_head(f)
            head = Part(headers=headers, number="")
            headers = None
            kind = smime.smime_kind(head.content_type, head.param("smime-type"), head.param("name"))
            if kind is None:
                return source
            parse_file(source, root)
            der = root.data.getvalue()
            if kind == "unknown":
                kind = "signed" if smime.is_signed_data(der) else "enveloped"
            if kind == "enveloped":
                if self._keys is None:
                    mail.warnings.append("the message is S/MIME encrypted and the configuration "
                                         "names no public key; only the original is saved")
                    return None
                content = self._keys.decrypt(der)
                mail.decrypted = True
            else:
                content, info = smime.verify_opaque(der)
                mail.signature = mail.signature or info
                if not info.verified:
                    mail.warnings.append(f"S/MIME signature not verified: {info.detail}")
                if content is None:
                    return None
            source = self._work / f"plain-{uuid.uuid4().hex}.eml"
            plaintexts.append(source)
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as f:
                f.write(content)
        mail.warnings.append("too many S/MIME layers; the innermost content is not saved")
        return None

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
                    a.model_copy(update={"path": moved(a.path), "parent": moved(a.parent)})
                    for a in mail.attachments
                ],
            }
        )


class _RootBody:
    """A visitor that keeps the decoded body of a single-part message in memory."""

    def __init__(self):
        self.data = io.BytesIO()

    def begin_leaf(self, part: Part):
        return self.data if part.parent is None else None

    def end_leaf(self, part, sink) -> None:
        pass

    def begin_multipart(self, part) -> None:
        pass

    def end_multipart(self, part) -> None:
        pass

    def raw_tap(self, part):
        return None

    def warn(self, part, text) -> None:
        pass


def _read_head(f) -> Message:
    head = bytearray()
    for line in f:
        if line in (b"\r\n", b"\n") or len(head) > MAX_HEADER_BYTES:
            break
        head += line
    return parse_headers(bytes(head))


def header_fields(message: Message) -> dict:
    """ReceivedMail's header fields. Raw values, decoded here: a malformed header must not
    stop the save."""
    senders = _addresses(message, "From")
    return {
        "message_id": _header(message, "Message-ID") or None,
        "sender": senders[0] if senders else "",
        "recipients": _addresses(message, "To") + _addresses(message, "Cc"),
        "subject": _header(message, "Subject"),
        "date": _date(message),
    }


def _text(raw: str) -> str:
    """A raw header value as text: unfolded, encoded words decoded."""
    return decode_rfc2047(" ".join(raw.split()))


def _raw(message: Message, name: str) -> list[str]:
    """Raw values: compat32's get() could return Header objects."""
    wanted = name.lower()
    return [str(v) for k, v in message.raw_items() if k.lower() == wanted]


def _header(message: Message, name: str) -> str:
    values = _raw(message, name)
    return _text(values[0]) if values else ""


def _addresses(message: Message, name: str) -> list[str]:
    values = [" ".join(v.split()) for v in _raw(message, name)]
    try:
        pairs = getaddresses(values)
    except (ValueError, IndexError, TypeError):
        return [_text(v) for v in values if v.strip()]
    return [f"{_text(display)} <{addr}>" if display else addr for display, addr in pairs if addr]


def _date(message: Message) -> datetime | None:
    raw = _raw(message, "Date")
    if not raw:
        return None
    try:
        return parsedate_to_datetime(raw[0])
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
