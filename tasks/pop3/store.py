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

import contextlib
import errno
import hashlib
import io
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from datetime import datetime
from email.message import Message
from pathlib import Path

from prefect_pop3mail.tasks.pop3 import smime
from prefect_pop3mail.tasks.pop3.errors import (
    DiskFullError,
    POP3MailError,
    SaveDirectoryError,
    SaveError,
)
from prefect_pop3mail.tasks.pop3.headers import header_fields
from prefect_pop3mail.tasks.pop3.headers import read_head as _read_head
from prefect_pop3mail.tasks.pop3.journal import HEAD_DIGEST_BYTES, head_digest, mailbox_digest
from prefect_pop3mail.tasks.pop3.layout import (
    ATTACHMENTS_DIR,
    HTML_NAME,
    TEXT_NAME,
    Findings,
    FolderLayout,
    LayoutOptions,
)
from prefect_pop3mail.tasks.pop3.mime import Part, parse_file
from prefect_pop3mail.tasks.pop3.models import ReceivedMail, SavedAttachment, SaveOptions
from prefect_pop3mail.tasks.pop3.statedir import (
    QUARANTINE_DIR,
    StateFolder,
    open_private_dir,
    shown,
)

log = logging.getLogger("pop3mail.store")

ORIGINAL_NAME = "message.eml"
#: Encrypted inside signed inside encrypted...: more layers than this are not unwrapped.
MAX_SMIME_LAYERS = 4
#: S/MIME is opened in memory (the cryptography package takes bytes): a larger container is
#: kept as the original only, so one message cannot take more than a few times this.
MAX_SMIME_BYTES = 64 << 20


class IncomingMessage:
    """A sink for one message as it arrives: written to a temp file, hashed on the way."""

    def __init__(self, path: str, mode: int):
        self.path = path
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._file = os.fdopen(os.open(path, flags, mode), "wb", buffering=256 * 1024)
        self._hash = hashlib.sha256()
        self._head = bytearray()  # the start of the message, until its header ends
        self.size = 0
        self._error: OSError | None = None

    def write(self, data: bytes) -> None:
        if self._error is not None:
            return  # the disk failed: drop the rest, but let the session read it to the end
        self._hash.update(data)
        if len(self._head) < HEAD_DIGEST_BYTES and not _header_ended(self._head):
            self._head += data[:HEAD_DIGEST_BYTES]
        try:
            self._file.write(data)
        except OSError as exc:
            self._error = exc
            return
        self.size += len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def head_digest(self) -> str:
        return head_digest(bytes(self._head))

    def finish(self) -> None:
        """Flush to the OS, so a crash of this process cannot lose it."""
        with _save_errors(self.path):
            if self._error is not None:
                raise self._error
            self._file.close()

    def discard(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # a full disk fails the flush too; the file goes anyway
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _header_ended(head: bytes | bytearray) -> bool:
    return b"\n\n" in head or b"\n\r\n" in head


class MessageStore:
    """Turns retrieved originals into saved folders for one mailbox."""

    #: The ReceivedMail fields that say where a message's files are: local paths here,
    #: URLs in RemoteMessageStore (see ``_locate``).
    WHERE = {"folder": "folder", "original": "original_path", "text": "text_path",
             "html": "html_path", "file": "path", "parent": "parent"}

    def __init__(self, options: SaveOptions, mailbox_key: str, configuration: str,
                 state: StateFolder | None = None):
        self.options = options
        self.configuration = configuration
        self._mailbox = mailbox_key
        self.file_mode = 0o600 if options.private else 0o644
        self.dir_mode = 0o700 if options.private else 0o755
        self.root = options.directory
        self._keys = smime.KeyStore(options.key_store, options.key_password) if options.key_store else None
        self._owns_state = state is None
        self.state = state or StateFolder(self.root, f"work-{mailbox_digest(mailbox_key)}",
                                          self.dir_mode)
        self._work = self.state.work
        with _save_errors(self.root):
            probe = self._work / f".probe-{uuid.uuid4().hex}"
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            probe.unlink()
        self.state.remove_leftovers()

    def close(self) -> None:
        if self._owns_state:
            self.state.close()

    def incoming(self) -> IncomingMessage:
        return IncomingMessage(os.path.join(self._work, f"incoming-{uuid.uuid4().hex}.eml"),
                               self.file_mode)

    def folder_name(self, uidl: str, date: datetime | None, sha256: str) -> str:
        """Stable for a message of this mailbox: its date and a hash of its UIDL and
        content, so saving it again replaces its folder, and a message that a server gave
        a reused UIDL gets a folder of its own."""
        stamp = date.strftime("%Y%m%d-%H%M%S") if date else "undated"
        return f"{stamp}-{self.stable_id(uidl, sha256)[:12]}"

    def stable_id(self, uidl: str, sha256: str) -> str:
        """The id a message keeps across runs: a reused UIDL gets another one."""
        return hashlib.sha256(f"{self._mailbox}\0{uidl}\0{sha256}".encode()).hexdigest()[:32]

    def save(self, incoming: IncomingMessage, uidl: str) -> ReceivedMail:
        """Save everything for one message; the incoming file is consumed."""
        with _save_errors(incoming.path), open(incoming.path, "rb") as f:
            head = _read_head(f)
        header_warnings: list[str] = []
        headers = header_fields(head, header_warnings)
        name = self.folder_name(uidl, headers["date"], incoming.sha256)
        staging_name = f"staging-{name}-{uuid.uuid4().hex[:8]}"
        staging = os.path.join(self._work, staging_name)
        findings = Findings(sender=headers["sender"], warnings=header_warnings)
        try:
            with _save_errors(staging):
                os.mkdir(staging, self.dir_mode)
                original = os.path.join(staging, ORIGINAL_NAME)
                os.replace(incoming.path, original)
                self.write_contents(original, staging, findings, uidl, head)
                if not self.options.save_original:
                    os.unlink(original)
                self._publish(staging_name, self.state.root_fd, name)
        except BaseException:
            self._undo(staging, incoming)
            raise
        return self._received(incoming, uidl, headers, name, findings)

    @staticmethod
    def _undo(staging: str, incoming: IncomingMessage) -> None:
        """After a failure: the original goes back to where it arrived (the caller may
        still set it aside, or discards it), and the staging folder goes."""
        try:
            os.replace(os.path.join(staging, ORIGINAL_NAME), incoming.path)
        except OSError:
            pass
        shutil.rmtree(staging, ignore_errors=True)

    def quarantine(self, incoming: IncomingMessage, uidl: str, reason: str) -> ReceivedMail:
        """Set a message aside: its original alone, under ``quarantine/``, nothing parsed
        but what the results need (and that only as far as it reads)."""
        try:
            with open(incoming.path, "rb") as f:
                headers = header_fields(_read_head(f))
        except Exception:  # the message is here because reading it fails
            headers = {}
        name = self.folder_name(uidl, headers.get("date"), incoming.sha256)
        staging_name = f"staging-{name}-{uuid.uuid4().hex[:8]}"
        staging = os.path.join(self._work, staging_name)
        quarantine_fd = open_private_dir(self.state.root_fd, QUARANTINE_DIR,
                                         self.root / QUARANTINE_DIR, self.dir_mode,
                                         private=False)
        try:
            with _save_errors(staging):
                os.mkdir(staging, self.dir_mode)
                os.replace(incoming.path, os.path.join(staging, ORIGINAL_NAME))
                self._publish(staging_name, quarantine_fd, name)
        except BaseException:
            self._undo(staging, incoming)
            raise
        finally:
            os.close(quarantine_fd)
        findings = Findings(warnings=[f"set aside in quarantine: {reason}"])
        return self._received(incoming, uidl, headers, f"{QUARANTINE_DIR}/{name}", findings,
                              quarantined=True)

    def _locate(self, relative: str) -> Path | str:
        """Where a saved file is for downstream steps (``relative`` to the save directory)."""
        return self.root / relative

    def _received(self, incoming: IncomingMessage, uidl: str, headers: dict, folder: str,
                  findings: Findings, *, quarantined: bool = False) -> ReceivedMail:
        """The message's result, built once from ``findings``, whose paths are relative to
        its ``folder`` (itself relative to the save directory)."""

        def at(path: str | None) -> Path | str | None:
            return self._locate(f"{folder}/{path}") if path else None

        where, text, html = self.WHERE, findings.text, findings.html
        keep_original = self.options.save_original or quarantined
        return ReceivedMail(
            id=self.stable_id(uidl, incoming.sha256),
            configuration=self.configuration,
            uidl=uidl,
            size=incoming.size,
            sha256=incoming.sha256,
            **headers,
            **{where["folder"]: self._locate(folder),
               where["original"]: at(ORIGINAL_NAME) if keep_original else None,
               where["text"]: at(text and text.path), where["html"]: at(html and html.path)},
            text_sha256=text and text.sha256,
            html_sha256=html and html.sha256,
            attachments=[
                SavedAttachment(**{where["file"]: at(a.file.path), where["parent"]: at(a.parent)},
                                filename=a.filename, content_type=a.content_type,
                                size=a.file.size, sha256=a.file.sha256, inline=a.inline,
                                part=a.part)
                for a in findings.attachments
            ],
            decrypted=findings.decrypted,
            signature=findings.signature,
            quarantined=quarantined,
            warnings=findings.warnings,
        )

    def write_contents(self, original: str, folder: str, findings: Findings, uidl: str,
                       head: Message | None = None) -> None:
        """Write the text, HTML and attachments of ``original`` (whose top headers are
        ``head``, when already read) into ``folder``."""
        opts = self.options
        if not (opts.save_text or opts.save_attachments):
            return
        plaintexts: list[Path] = []
        try:
            unwrapped = self._unwrap(original, findings, plaintexts, head)
            if unwrapped is not None:
                self._lay_out(*unwrapped, folder, findings, uidl, os.path.getsize(original))
        finally:
            for path in plaintexts:  # decrypted content lives on only in the saved files
                path.unlink(missing_ok=True)

    def _lay_out(self, source: str | Path, root: Part, folder: str, findings: Findings,
                 uidl: str, message_size: int | None = None) -> None:
        opts = self.options
        layout = FolderLayout(
            folder,
            LayoutOptions(opts.save_text, opts.save_attachments, self.file_mode, self.dir_mode),
            self._work,
            parse=parse_file,
            verify=lambda signature, digests, covers: smime.verify_detached(
                signature, digests, covers, sender=findings.sender, trust_store=opts.trust_store),
            findings=findings,
            message_size=message_size,
        )
        warned, signature = len(findings.warnings), findings.signature
        try:
            parse_file(source, layout, root=root)
            layout.finish()
        except (OSError, POP3MailError):
            layout.abort()
            raise
        except Exception as exc:  # a parser bug must cost this message's parts, not the batch
            layout.abort()
            log.exception("Laying out message %s failed", uidl)
            for name in (TEXT_NAME, HTML_NAME, ATTACHMENTS_DIR):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
            findings.text = findings.html = None
            findings.attachments.clear()
            findings.signature = signature
            del findings.warnings[warned:]
            findings.warnings.append(f"internal error reading the message "
                                     f"({type(exc).__name__}); only the original is saved")

    def _unwrap(self, source: str | Path, findings: Findings, plaintexts: list[Path],
                headers: Message | None) -> tuple[str | Path, Part] | None:
        """Decrypt and open S/MIME layers: the content to lay out and its top part; None
        when there is nothing more to save."""
        for _ in range(MAX_SMIME_LAYERS):
            root = _RootBody()
            if headers is None:
                with open(source, "rb") as f:
                    headers = _read_head(f)
            head = Part(headers=headers, number="")
            headers = None
            kind = smime.smime_kind(head.content_type, head.param("smime-type"), head.param("name"))
            if kind is None:
                return source, head
            parse_file(source, root)
            if root.overflow:
                findings.warnings.append(
                    f"S/MIME content over {MAX_SMIME_BYTES >> 20} MB (MAX_SMIME_BYTES) is not "
                    "opened; only the original is saved")
                return None
            der = root.data.getvalue()
            if kind == "unknown":
                kind = "signed" if smime.is_signed_data(der) else "enveloped"
            if kind == "enveloped":
                if self._keys is None:
                    findings.warnings.append("the message is S/MIME encrypted and the "
                                             "configuration names no public key; only the "
                                             "original is saved")
                    return None
                content = self._keys.decrypt(der)
                findings.decrypted = True
            else:
                content, info = smime.verify_opaque(der, sender=findings.sender,
                                                    trust_store=self.options.trust_store)
                findings.signature = findings.signature or info
                if not info.verified:
                    findings.warnings.append(f"S/MIME signature not verified: {info.detail}")
                if content is None:
                    return None
            source = self._work / f"plain-{uuid.uuid4().hex}.eml"
            plaintexts.append(source)
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as f:
                f.write(content)
        findings.warnings.append("too many S/MIME layers; the innermost content is not saved")
        return None

    def _publish(self, staging_name: str, parent_fd: int, name: str) -> None:
        """Rename the finished folder into place, replacing an earlier save of it.

        By descriptors: whatever was planted under that name is moved away and removed
        without following a symlink.
        """
        work_fd = self.state.work_fd
        try:
            os.rename(staging_name, name, src_dir_fd=work_fd, dst_dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
            old = f"replaced-{name}-{uuid.uuid4().hex[:8]}"
            os.rename(name, old, src_dir_fd=parent_fd, dst_dir_fd=work_fd)
            os.rename(staging_name, name, src_dir_fd=work_fd, dst_dir_fd=parent_fd)
            try:
                if stat.S_ISDIR(os.lstat(old, dir_fd=work_fd).st_mode):
                    shutil.rmtree(old, dir_fd=work_fd)
                else:
                    os.unlink(old, dir_fd=work_fd)
            except OSError:
                pass  # removed with the leftovers later


class _RootBody:
    """A visitor that keeps the decoded body of a single-part message in memory, up to
    MAX_SMIME_BYTES (``overflow`` says when it was more)."""

    def __init__(self):
        self.data = io.BytesIO()
        self.overflow = False

    def write(self, data: bytes) -> None:
        if self.data.tell() + len(data) > MAX_SMIME_BYTES:
            self.overflow = True
            return
        self.data.write(data)

    def begin_leaf(self, part: Part):
        return self if part.parent is None else None

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


@contextlib.contextmanager
def _save_errors(path: str | Path) -> Iterator[None]:
    """Turns OSError into the store's errors, naming the path."""
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
