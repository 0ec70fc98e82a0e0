"""What one message's folder holds besides its original: its S/MIME layers opened (at most
MAX_SMIME_LAYERS, each at most MAX_SMIME_BYTES in memory), then its text, HTML and
attachments laid out (``layout``). A parser bug costs the message its parts, never the
batch: the folder keeps the original, and a warning says so."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import uuid
from email.message import Message
from pathlib import Path

from prefect_pop3mail.tasks.pop3.errors import POP3MailError
from prefect_pop3mail.tasks.pop3.message.headers import read_head
from prefect_pop3mail.tasks.pop3.message.layout import (
    ATTACHMENTS_DIR,
    HTML_NAME,
    TEXT_NAME,
    Findings,
    FolderLayout,
    LayoutOptions,
)
from prefect_pop3mail.tasks.pop3.message.mime import Part, parse_file
from prefect_pop3mail.tasks.pop3.models import SaveOptions
from prefect_pop3mail.tasks.pop3.trust import smime

log = logging.getLogger("pop3mail.store")

#: Encrypted inside signed inside encrypted...: more layers than this are not unwrapped.
MAX_SMIME_LAYERS = 4
#: S/MIME is opened in memory (the cryptography package takes bytes): a larger container is
#: kept as the original only, so one message cannot take more than a few times this.
MAX_SMIME_BYTES = 64 << 20


class ContentWriter:
    """Writes the contents of saved originals as ``options`` asks (text, attachments), with
    the configuration's key store and S/MIME trust store. The key store is read here, once:
    a wrong password fails before any mail is touched."""

    def __init__(self, options: SaveOptions, file_mode: int, dir_mode: int):
        self.options = options
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self._keys = (smime.KeyStore(options.key_store, options.key_password)
                      if options.key_store else None)

    def write(self, original: str, folder: str, findings: Findings, uidl: str, *,
              work: Path, head: Message | None = None) -> None:
        """Write the text, HTML and attachments of ``original`` (whose top headers are
        ``head``, when already read) into ``folder``; ``work`` is a private folder for
        decrypted layers and spooled parts."""
        opts = self.options
        if not (opts.save_text or opts.save_attachments):
            return
        plaintexts: list[Path] = []
        try:
            unwrapped = self._unwrap(original, findings, plaintexts, head, work)
            if unwrapped is not None:
                self._lay_out(*unwrapped, folder, findings, uidl, work,
                             os.path.getsize(original))
        finally:
            for path in plaintexts:  # decrypted content lives on only in the saved files
                path.unlink(missing_ok=True)

    def _lay_out(self, source: str | Path, root: Part, folder: str, findings: Findings,
                 uidl: str, work: Path, message_size: int | None = None) -> None:
        opts = self.options
        layout = FolderLayout(
            folder,
            LayoutOptions(opts.save_text, opts.save_attachments, self.file_mode, self.dir_mode),
            work,
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
                headers: Message | None, work: Path) -> tuple[str | Path, Part] | None:
        """Decrypt and open S/MIME layers: the content to lay out and its top part; None
        when there is nothing more to save."""
        for _ in range(MAX_SMIME_LAYERS):
            root = _RootBody()
            if headers is None:
                with open(source, "rb") as f:
                    headers = read_head(f)
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
            source = work / f"plain-{uuid.uuid4().hex}.eml"
            plaintexts.append(source)
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as f:
                f.write(content)
        findings.warnings.append("too many S/MIME layers; the innermost content is not saved")
        return None


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
