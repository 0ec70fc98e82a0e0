"""Which part of a message becomes which file: the policy, apart from the parsing.

A ``FolderLayout`` is the visitor that the streaming parser (or, in the differential test,
a walk over the email package's tree) calls for every part. It writes, into one folder:

    text.txt            the text body (UTF-8; a rendering of the HTML when there is no text)
    body.html           the HTML body (UTF-8)
    attachments/NAME    every other leaf part; attached messages as NAME.eml, with what they
                        contain laid out the same way in attachments/NAME/; the files in an
                        Outlook winmail.dat (TNEF) beside it, under their own names

A part whose transfer encoding is unknown, or whose data does not decode, is saved as it
came, under its name with ".encoded" added: the bytes are not in the format the name says.

Bounded per message, whatever its structure: parts laid out (MAX_PARTS), attached messages
in attached messages (MAX_NESTED_MESSAGES), multipart/signed parts whose content is hashed
(MAX_SIGNED_PARTS, with only the digests their micalg names), the .eml files of attached
messages (MAX_COPY_FACTOR times the message: each level copies the levels inside it), and
all bytes written (MAX_WRITE_FACTOR times the message, plus MAX_WRITE_SLACK). Past a bound,
the rest stays in the original (or in the .eml holding it) and a warning says so.
"""

from __future__ import annotations

import hashlib
import io
import os
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import unquote
from mimetypes import MimeTypes
from typing import NamedTuple

from prefect_pop3mail.tasks.pop3.message import charsets, htmltext, tnef
from prefect_pop3mail.tasks.pop3.message.filenames import (
    NameAllocator,
    decode_rfc2047,
    safe_filename,
)
from prefect_pop3mail.tasks.pop3.message.headers import MAX_TEXT_CHARS, clip
from prefect_pop3mail.tasks.pop3.message.htmltext import HTMLToText
from prefect_pop3mail.tasks.pop3.message.mime import Part, parse_headers
from prefect_pop3mail.tasks.pop3.models import SignatureInfo
from prefect_pop3mail.tasks.pop3.sinks import WRITE_BLOCK, FileWriter, Sink, Spool

TEXT_NAME = "text.txt"
HTML_NAME = "body.html"
ATTACHMENTS_DIR = "attachments"
#: A body is held in memory up to this size, then spilled to a temporary file.
SPOOL_BYTES = 1 << 20
#: A detached S/MIME signature is kept in memory up to this size (real ones are a few kB).
MAX_SIGNATURE_BYTES = 1 << 20
#: Messages attached in messages are laid out this deep; deeper ones are kept as .eml only.
MAX_NESTED_MESSAGES = 8
#: MIME parts (leaves and multiparts, attached messages' included) laid out per message;
#: beyond it parts stay only in the original.
MAX_PARTS = 1000
#: Warnings kept per message; further ones are counted in a last warning.
MAX_WARNINGS = 50
#: Only this much of an HTML body (characters) is rendered into text.txt.
MAX_HTML_RENDER = 4 << 20
#: multipart/signed parts per message whose content is hashed for verification (real mail
#: has one, two for a signed message forwarded signed); each deeper one costs a pass over
#: the bytes it covers, so more are left unverified.
MAX_SIGNED_PARTS = 4
#: The .eml files of attached messages take at most this many times the message's size in
#: all: a message forwarded as an attachment, itself holding one, fits; a third level of the
#: same bytes is kept only in the .eml holding it (it wrote the innermost body once per
#: level: nine times at the nesting cap).
MAX_COPY_FACTOR = 2
#: Bytes the layout writes per message (text, HTML, attachments, attached messages and their
#: contents) are at most this many times the message's size, plus MAX_WRITE_SLACK. Ordinary
#: mail writes about its size again (decoded attachments, a text body); the most a body can
#: take is six times (an HTML body in a charset of 3-byte UTF-8 characters, in body.html and
#: again in its text rendering). Past it, the file being written is dropped (text.txt and
#: body.html are kept cut short) and later parts are only in the original.
MAX_WRITE_FACTOR = 6
MAX_WRITE_SLACK = 1 << 20

_SIGNATURE_TYPES = {"application/pkcs7-signature", "application/x-pkcs7-signature"}
_TNEF_TYPES = {"application/ms-tnef", "application/vnd.ms-tnef"}
_TNEF_NAMES = {"winmail.dat", "win.dat"}
#: Added to the name of an attachment saved still transfer-encoded.
ENCODED_SUFFIX = ".encoded"
_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/calendar": ".ics",
    "message/rfc822": ".eml",
    "message/delivery-status": ".txt",
    "application/octet-stream": ".bin",
    "application/ms-tnef": ".dat",
    "application/pkcs7-mime": ".p7m",
    "application/x-pkcs7-mime": ".p7m",
    "application/pkcs7-signature": ".p7s",
    "image/jpeg": ".jpg",
}
# Built-in types only: the system's mime.types would make names differ between machines.
_MIME_TYPES = MimeTypes(filenames=())


def extension_for(content_type: str) -> str:
    known = _EXTENSIONS.get(content_type) or _MIME_TYPES.guess_extension(content_type)
    return known or (".txt" if content_type.startswith("text/") else ".bin")


class _Capture(io.BytesIO):
    """A small in-memory sink (S/MIME signatures), capped so junk cannot fill memory."""

    def write(self, data) -> int:
        room = MAX_SIGNATURE_BYTES - self.tell()
        return super().write(data[: max(room, 0)])


class _MultiDigest:
    """The digests S/MIME signers may use, over the same bytes: those a multipart/signed's
    micalg names (and SHA-256, the usual one), or all when it names none we know. SHA-1 and
    MD5 are not computed: a signature made with them is not valid anyway."""

    NAMES = ("sha224", "sha256", "sha384", "sha512")
    _BROKEN = {"sha1", "md5", "md2"}

    def __init__(self, micalg: str | None = None):
        declared = {n.strip().lower().replace("-", "") for n in (micalg or "").split(",")}
        declared.discard("")
        if not declared or declared - set(self.NAMES) - self._BROKEN:
            names = set(self.NAMES)
        else:
            names = (declared & set(self.NAMES)) | {"sha256"}
        self.hashes = {name: hashlib.new(name) for name in sorted(names)}

    def write(self, data: bytes) -> None:
        for h in self.hashes.values():
            h.update(data)

    def digests(self) -> dict[str, bytes]:
        return {name: h.digest() for name, h in self.hashes.items()}


class _MeteredWriter(FileWriter):
    """A file that takes bytes only while the message's write budget lasts (and its copy
    budget, for an attached message's .eml); ``cut`` says it lost some."""

    def __init__(self, path: str, mode: int, budget: _Budget, *, copy: bool = False):
        super().__init__(path, mode)
        self._budget = budget
        self.copy = copy
        self.cut = False

    def write(self, data: bytes, /) -> None:
        if self.cut:
            return
        room = self._budget.spend(len(data), copy=self.copy)
        if room < len(data):
            self.cut = True
            data = data[:room]
        super().write(data)


class _Role:
    """What a leaf part being written is for: its sink, and what finishes it (with the
    extra arguments it needs) once the part ends; None for a part only captured."""

    __slots__ = ("finish", "sink", "extra")

    def __init__(self, finish: Callable[..., None] | None, sink, *extra):
        self.finish, self.sink, self.extra = finish, sink, extra


class SavedFile(NamedTuple):
    """A file written for a message, its path relative to the message's folder (POSIX), so
    it stays right when the finished folder is renamed into place or uploaded."""

    path: str
    sha256: str
    size: int


class FoundAttachment(NamedTuple):
    file: SavedFile
    filename: str
    content_type: str
    inline: bool
    #: The MIME part number, within ``parent`` when set: an attached message's .eml, or
    #: for a file from a winmail.dat, the winmail.dat (the number of the file in it).
    part: str = ""
    parent: str | None = None


@dataclass
class Findings:
    """What saving one message found, gathered until its ReceivedMail is built (once): the
    layout's files, warnings and signature; the store's decryption and sender."""

    warnings: list[str] = field(default_factory=list)
    text: SavedFile | None = None
    html: SavedFile | None = None
    attachments: list[FoundAttachment] = field(default_factory=list)
    signature: SignatureInfo | None = None
    decrypted: bool = False
    #: The From address, which an S/MIME signer's certificate must name.
    sender: str | None = None


@dataclass
class LayoutOptions:
    save_text: bool
    save_attachments: bool
    file_mode: int = 0o600
    dir_mode: int = 0o700


#: Parses a message file, calling a visitor for each part (the streaming parser, or the
#: email package in the differential test); ``nested=True`` for an attached message.
ParseFunction = Callable[..., None]
#: Checks a detached S/MIME signature: (signature DER, digests of the signed content, what
#: of the message it covers: "whole message" or "part N").
VerifyFunction = Callable[[bytes, dict[str, bytes], str], SignatureInfo]


def _filename(part: Part) -> str | None:
    name = part.filename
    return clip(name, MAX_TEXT_CHARS) if name else None


def _in_body_position(part: Part) -> bool:
    """Where the email package's get_body() looks: not inside an attachment, only the root
    of a multipart/related, only the content of a multipart/signed."""
    node = part
    while node.parent is not None:
        parent = node.parent
        if node.disposition == "attachment":
            return False
        if parent.content_type == "multipart/related":
            start = parent.param("start")
            if start:
                content_id = unquote(str(node.headers.get("content-id", "")).strip())
                if content_id != unquote(start.strip()):
                    return False
            elif node.index != 0:
                return False
        elif parent.content_type == "multipart/signed" and node.index != 0:
            return False
        node = parent
    return node.disposition != "attachment"


class FolderLayout:
    """Saves one message's parts into ``folder`` (see the module docstring)."""

    def __init__(self, folder: str, options: LayoutOptions, work: str, *,
                 parse: ParseFunction, verify: VerifyFunction | None = None,
                 findings: Findings | None = None, prefix: str = "",
                 within: str | None = None, depth: int = 0, budget: _Budget | None = None,
                 message_size: int | None = None):
        """``folder`` is where files are written; ``prefix`` is its place in the message's
        folder ("" or "attachments/NAME/"), which the recorded paths start with;
        ``within`` the attached message's .eml (relative) this layout lays out;
        ``message_size`` the size of the message, which sets what may be written (None:
        no cap)."""
        self.folder = os.fspath(folder)
        self.options = options
        self.work = work
        self.parse = parse
        self.verify = verify
        self.findings = findings if findings is not None else Findings()
        self.prefix = prefix
        self.within = within
        self.depth = depth
        self._budget = budget or _Budget.for_message(message_size)
        self._unsaid = 0
        self._names = NameAllocator()
        self._attachments_dir: str | None = None
        self._text: FileWriter | None = None
        self._text_ends_line = True  # no separator needed before the first text part
        self._text_parent: Part | None = None
        self._html_taken = False
        self._signed: dict[int, _MultiDigest] = {}
        self._signatures: dict[int, _Capture] = {}
        self._roles: dict[int, _Role] = {}

    # --- visitor ------------------------------------------------------------------------

    def warn(self, part: Part | None, text: str) -> None:
        where = f"part {part.label}: " if part is not None and part.number else ""
        self._add_warning(f"{where}{text}")

    def _add_warning(self, text: str) -> None:
        warnings = self.findings.warnings
        if len(warnings) < MAX_WARNINGS:
            warnings.append(text)
            return
        self._unsaid += 1
        if len(warnings) == MAX_WARNINGS:
            warnings.append("")
        warnings[-1] = f"{self._unsaid} more warnings (over {MAX_WARNINGS}) not listed"

    def _over_budget(self) -> bool:
        """Counts a part; True when it is one too many to lay out (warned once)."""
        budget = self._budget
        budget.parts += 1
        if budget.parts == MAX_PARTS + 1:
            self._add_warning(f"over {MAX_PARTS} MIME parts; the rest are only in the original")
        return budget.parts > MAX_PARTS

    def _out_of_bytes(self, part: Part) -> bool:
        """True once the write budget is spent (warned once): no more files."""
        if not self._budget.cut:
            return False
        self._say_cut(part)
        return True

    def _say_cut(self, part: Part | None, copy: bool = False) -> None:
        """Warn, once each, that the write budget or the copy budget is spent."""
        budget = self._budget
        kind = "copy" if copy and not budget.cut else "write"
        if kind in budget.warned:
            return
        budget.warned.add(kind)
        where = f" at part {part.label}" if part is not None else ""
        if kind == "copy":
            self._add_warning(f"attached messages take over {MAX_COPY_FACTOR}x the message's "
                              f"size (MAX_COPY_FACTOR){where}; deeper ones are kept only in "
                              "the .eml that holds them")
        else:
            self._add_warning(f"over the write budget of {MAX_WRITE_FACTOR}x the message's "
                              f"size plus {MAX_WRITE_SLACK >> 20} MB (MAX_WRITE_FACTOR){where}; "
                              "the rest is only in the original")

    def _writer(self, path: str, *, copy: bool = False) -> _MeteredWriter:
        return _MeteredWriter(path, self.options.file_mode, self._budget, copy=copy)

    def begin_multipart(self, part: Part) -> None:
        self._over_budget()

    def raw_tap(self, part: Part) -> Sink | None:
        if part.content_type != "multipart/signed" or self.verify is None:
            return None
        budget = self._budget
        budget.signed += 1
        if budget.signed > MAX_SIGNED_PARTS:
            if budget.signed == MAX_SIGNED_PARTS + 1:
                self.warn(part, f"over {MAX_SIGNED_PARTS} multipart/signed parts "
                          "(MAX_SIGNED_PARTS); this one and later ones are not verified")
            return None
        digest = self._signed[id(part)] = _MultiDigest(part.param("micalg"))
        return digest

    def end_multipart(self, part: Part) -> None:
        digest = self._signed.pop(id(part), None)
        if digest is None:
            return
        signature = self._signatures.pop(id(part), None)
        if signature is None:
            self.warn(part, "multipart/signed has no S/MIME signature part; not verified")
            return
        # Whole only as the message's root with just content and signature: anything
        # beside it (a wrapping multipart/mixed, a third part) is unsigned.
        whole = part.parent is None and part.children == 2
        covers = "whole message" if whole else f"part {part.label}"
        if self.within is not None:
            covers = f"{covers} of attached message {posixpath.basename(self.within)}"
        info = self.verify(signature.getvalue(), digest.digests(), covers)
        if self.findings.signature is None:
            self.findings.signature = info
        if not info.verified:
            self.warn(part, f"S/MIME signature not verified: {info.detail}")

    def begin_leaf(self, part: Part) -> Sink | None:
        if self._over_budget():
            return None
        parent = part.parent
        if (parent is not None and id(parent) in self._signed and part.index == 1
                and part.content_type in _SIGNATURE_TYPES):
            capture = self._signatures[id(parent)] = _Capture()
            self._roles[id(part)] = _Role(None, capture)
            return capture
        if part.maintype == "multipart":
            return None  # a broken multipart: the parser has warned
        if self._out_of_bytes(part):
            return None
        kind = self._body_kind(part)
        if kind == "text" and self.options.save_text:
            return self._begin_text(part)
        if kind == "html" and self.options.save_text:
            self._html_taken = True
            spool = Spool(self.work, SPOOL_BYTES)
            self._roles[id(part)] = _Role(self._end_html, spool)
            return spool
        if kind is None and self.options.save_attachments:
            return self._begin_attachment(part)
        return None

    def end_leaf(self, part: Part, sink: Sink | None) -> None:
        role = self._roles.pop(id(part), None)
        if role is not None and role.finish is not None:
            role.finish(part, role.sink, *role.extra)

    # --- bodies ---------------------------------------------------------------------------

    def _body_kind(self, part: Part) -> str | None:
        """"text" or "html" when the part is a message body, None when an attachment."""
        if part.maintype != "text" or part.subtype not in ("plain", "html"):
            return None
        if _filename(part) is not None or not _in_body_position(part):
            return None
        if part.content_type == "text/html":
            return None if self._html_taken else "html"
        if self._text is None and self.findings.text is None:
            return "text"
        # Apple Mail splits a body around inline images: more text in the same mixed part
        # continues the body.
        same_mixed = part.parent is self._text_parent and part.parent is not None
        if same_mixed and part.parent.content_type == "multipart/mixed" and self._text:
            return "text"
        return None

    def _begin_text(self, part: Part) -> Sink:
        if self._text is None:
            self._text = self._writer(os.path.join(self.folder, TEXT_NAME))
            self._text_parent = part.parent
        spool = Spool(self.work, SPOOL_BYTES)
        self._roles[id(part)] = _Role(self._end_text, spool)
        return spool

    def _decoded(self, part: Part, spool: Spool) -> tuple[charsets.Decoding, Iterator[str]]:
        decoding = charsets.choose(spool, part.param("charset"))
        if decoding.warning:
            self.warn(part, decoding.warning)
        return decoding, charsets.decode_chunks(spool, decoding)

    def _end_text(self, part: Part, spool: Spool) -> None:
        out = self._text
        assert out is not None
        if not self._text_ends_line:
            out.write(b"\n")
        _, texts = self._decoded(part, spool)
        for text in texts:
            out.write(text.encode("utf-8"))
            self._text_ends_line = text.endswith("\n")
        spool.close()

    def _end_html(self, part: Part, spool: Spool) -> None:
        out = self._writer(os.path.join(self.folder, HTML_NAME))
        decoding, texts = self._decoded(part, spool)
        if not decoding.is_utf8:
            # Its own <meta charset> would now lie; the first declaration wins.
            out.write(b'<meta charset="utf-8">\n')
        for text in texts:
            out.write(text.encode("utf-8"))
        spool.close()
        self.findings.html = self._saved(HTML_NAME, out)

    def _saved(self, name: str, writer: FileWriter) -> SavedFile:
        sha256 = writer.close()
        if getattr(writer, "cut", False):  # a body is kept, cut short
            self._say_cut(None)
            self._add_warning(f"{self.prefix}{name} is cut short at the write budget")
        return SavedFile(self.prefix + name, sha256, writer.size)

    def finish(self) -> Findings:
        """Close the text body, or render it from the HTML when there was none."""
        findings = self.findings
        if self._text is None and findings.html is not None and self.options.save_text:
            self._text = self._writer(os.path.join(self.folder, TEXT_NAME))
            renderer = HTMLToText()
            left = MAX_HTML_RENDER
            with open(os.path.join(self.folder, HTML_NAME), encoding="utf-8",
                      errors="replace") as html:
                while left and (chunk := html.read(min(WRITE_BLOCK, left))):
                    left -= len(chunk)
                    renderer.feed(chunk)
                    self._text.write(renderer.take().encode("utf-8"))
                if not left and html.read(1):
                    self._add_warning(f"the HTML body is over {MAX_HTML_RENDER >> 20} M "
                                      "characters; text.txt renders only its start")
            renderer.close()
            self._text.write(renderer.take().encode("utf-8"))
            if renderer.long_markup:
                self._add_warning(f"HTML markup over {htmltext.MAX_TAG // 1024} kB without its "
                                  "'>' was rendered as text")
        if self._text is not None:
            findings.text = self._saved(TEXT_NAME, self._text)
            self._text = None
        return findings

    def abort(self) -> None:
        """Close open files after a failure (the caller removes the folder)."""
        if self._text is not None:
            self._text.close()
        for role in self._roles.values():
            role.sink.close()

    # --- attachments ----------------------------------------------------------------------

    def _attachments(self) -> str:
        if self._attachments_dir is None:
            self._attachments_dir = os.path.join(self.folder, ATTACHMENTS_DIR)
            os.mkdir(self._attachments_dir, self.options.dir_mode)
        return self._attachments_dir

    def _begin_attachment(self, part: Part) -> Sink:
        raw_name = _filename(part)
        if part.content_type == "message/rfc822":
            temp = os.path.join(self._attachments(), f".message-{part.label}.tmp")
            writer = self._writer(temp, copy=True)
            self._roles[id(part)] = _Role(self._end_message, writer, raw_name)
            return writer
        fallback = f"part-{part.label}{extension_for(part.content_type)}"
        if part.content_type in _TNEF_TYPES and not raw_name:
            fallback = "winmail.dat"
        safe = safe_filename(raw_name, fallback)
        name = self._names.claim(_encoded(safe) if part.undecoded else safe)
        writer = self._writer(os.path.join(self._attachments(), name))
        self._roles[id(part)] = _Role(self._end_attachment, writer, name, raw_name or name,
                                      part.undecoded)
        return writer

    def _inline(self, part: Part) -> bool:
        disposition = part.disposition
        if disposition is not None:
            return disposition == "inline"
        return part.parent is not None and part.parent.content_type == "multipart/related"

    def _record(self, part: Part, writer: FileWriter, name: str, filename: str,
                content_type: str) -> None:
        saved = self._saved(f"{ATTACHMENTS_DIR}/{name}", writer)
        self.findings.attachments.append(FoundAttachment(
            saved, filename, content_type, self._inline(part), part.label, self.within))

    def _dropped(self, part: Part, writer: _MeteredWriter) -> bool:
        """A file cut short at the write budget is not kept: it would pass for whole."""
        if not writer.cut:
            return False
        writer.close()
        os.unlink(writer.path)
        self._say_cut(part, writer.copy)
        return True
    def _end_attachment(self, part: Part, writer: _MeteredWriter, name: str, filename: str,
                        named_undecoded: bool) -> None:
        if self._dropped(part, writer):
            return
        if part.undecoded and not named_undecoded:  # known only at its end (uuencode)
            writer.close()
            encoded = self._names.claim(_encoded(name))
            folder = self._attachments()
            os.rename(os.path.join(folder, name), os.path.join(folder, encoded))
            name = encoded
        if part.undecoded:
            self._record(part, writer, name, filename, "application/octet-stream")
            return
        self._record(part, writer, name, filename, part.content_type)
        if part.content_type in _TNEF_TYPES or (
                filename.lower() in _TNEF_NAMES and part.content_type == "application/octet-stream"):
            self._expand_tnef(part, name)

    def _expand_tnef(self, part: Part, name: str) -> None:
        """Save the files in a winmail.dat beside it, listed as coming from it."""
        folder = self._attachments()
        container = f"{self.prefix}{ATTACHMENTS_DIR}/{name}"
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        with open(os.open(os.path.join(folder, name), flags), "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if file.read(4) != tnef.SIGNATURE.to_bytes(4, "little"):
                if part.content_type in _TNEF_TYPES:
                    self.warn(part, f"{part.content_type} is not TNEF data; kept as it is")
                return
            room = MAX_PARTS - self._budget.parts  # each file counts as a part
            if room <= 0:
                return  # over the part budget (warned)
            try:
                contents = tnef.read_tnef(file, size, max_files=room)
            except Exception as exc:  # a reader bug costs this part's contents, not the message
                self.warn(part, f"{name}: could not be read ({type(exc).__name__}); only the "
                          "winmail.dat is saved")
                return
            self._budget.parts += len(contents.files)
            stem = posixpath.splitext(name)[0]
            for found in contents.files:
                ext = extension_for(found.content_type) if found.content_type else ".bin"
                saved = self._names.claim(safe_filename(found.name, f"{stem}-{found.number}{ext}"))
                writer = self._writer(os.path.join(folder, saved))
                try:
                    tnef.copy_file(file, found, writer)
                finally:
                    writer.close()
                if self._dropped(part, writer):
                    break  # the write budget is spent: the rest stays in the winmail.dat
                content_type = (found.content_type or _MIME_TYPES.guess_type(saved)[0]
                                or "application/octet-stream")
                self.findings.attachments.append(FoundAttachment(
                    self._saved(f"{ATTACHMENTS_DIR}/{saved}", writer),
                    clip(found.name, MAX_TEXT_CHARS) if found.name else saved, content_type,
                    found.inline, found.number, container))
        for warning in contents.warnings:
            self.warn(part, f"{name}: {warning}")

    def _end_message(self, part: Part, writer: _MeteredWriter, raw_name: str | None) -> None:
        """Name an attached message after its subject, then lay out what it contains."""
        if self._dropped(part, writer):
            return
        writer.close()
        temp = writer.path
        subject = _subject_of(temp)
        stem = raw_name[:-4] if raw_name and raw_name.lower().endswith(".eml") else raw_name
        stem = safe_filename(stem or subject, f"message-{part.label}")
        stem = self._names.claim(stem, also=".eml")
        final = os.path.join(self._attachments(), stem + ".eml")
        os.rename(temp, final)
        self._record(part, writer, stem + ".eml", raw_name or stem + ".eml", "message/rfc822")
        if self.depth + 1 >= MAX_NESTED_MESSAGES:
            self.warn(part, "attached messages nest too deeply; this one is kept only as .eml")
            return
        if self._budget.parts >= MAX_PARTS:
            return  # over the part budget (warned): kept only as .eml
        folder = os.path.join(self._attachments(), stem)
        os.mkdir(folder, self.options.dir_mode)
        inside = f"{self.prefix}{ATTACHMENTS_DIR}/{stem}"
        child = FolderLayout(folder, self.options, self.work, parse=self.parse,
                             verify=self.verify, prefix=inside + "/", within=inside + ".eml",
                             depth=self.depth + 1, budget=self._budget)
        try:
            self.parse(final, child, nested=True)
        except BaseException:
            child.abort()
            raise
        self._adopt(inside + ".eml", child.finish())

    def _adopt(self, eml: str, inner: Findings) -> None:
        """List what an attached message contains among this message's attachments."""
        for saved, content_type in ((inner.text, "text/plain"), (inner.html, "text/html")):
            if saved is not None:
                self.findings.attachments.append(FoundAttachment(
                    saved, posixpath.basename(saved.path), content_type, True, "", eml))
        self.findings.attachments.extend(inner.attachments)
        name = posixpath.basename(eml)
        for warning in inner.warnings:
            self._add_warning(f"in attached message {name}: {warning}")


@dataclass
class _Budget:
    """Shared by a message's layout and its attached messages' layouts."""

    parts: int = 0
    #: multipart/signed parts met.
    signed: int = 0
    #: Bytes the files may still take, and the .eml files of attached messages; None: no cap.
    bytes_left: int | None = None
    copies_left: int | None = None
    #: The write budget is spent: no more files.
    cut: bool = False
    #: The warnings given ("write", "copy").
    warned: set[str] = field(default_factory=set)

    @classmethod
    def for_message(cls, size: int | None) -> _Budget:
        if size is None:
            return cls()
        return cls(bytes_left=write_budget(size), copies_left=MAX_COPY_FACTOR * size)

    def spend(self, size: int, *, copy: bool = False) -> int:
        """Take up to ``size`` bytes of the budget (and of the copy budget, for a copy);
        returns how many there were: fewer, and the file is cut."""
        room = size if self.bytes_left is None else min(size, self.bytes_left)
        if room < size:
            self.cut = True
        if copy and self.copies_left is not None:
            room = min(room, self.copies_left)
            self.copies_left -= room
        if self.bytes_left is not None:
            self.bytes_left -= room
        return room


def write_budget(size: int) -> int:
    """What the layout of a message of ``size`` bytes may write in all."""
    return MAX_WRITE_FACTOR * size + MAX_WRITE_SLACK


def _encoded(name: str) -> str:
    """``name`` with ENCODED_SUFFIX, still within the length a name may have."""
    return safe_filename(name + ENCODED_SUFFIX, "part" + ENCODED_SUFFIX)


def _subject_of(path: str) -> str:
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    end = min((i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0),
              default=len(head))
    return decode_rfc2047(str(parse_headers(head[:end] + b"\n").get("subject", "")))
