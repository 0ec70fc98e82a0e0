"""Outlook's winmail.dat (TNEF, application/ms-tnef): the files inside, read with bounds.

Rich-text mail from Outlook and Exchange wraps its attachments in one TNEF stream
([MS-OXTNEF]): attributes (level, id, length, data, checksum), an attachment's being an
attAttachRendData followed by its title, data and MAPI properties. ``read_tnef`` lists the
files in a saved winmail.dat: each one's name (the long name, else the short one, else the
display name), MIME type, and where its bytes lie in the file, for ``copy_file`` to copy
out. Nothing large is held in memory.

A winmail.dat is hostile input like the rest of the message, and tnefparse (the usual
Python reader) does not meet our bounds (bench/README.md, issue #29: it copies the rest of
the stream for every attribute, quadratic; loops on counts the data cannot hold). Here:
every length is checked against what is left of its container before anything is read;
every loop advances through the file and stops at MAX_ITEMS attributes, properties and
values in all; names are read to a cap; embedded messages nest MAX_DEPTH deep; at most
``max_files`` files. Time is linear: one pass over the file, one more for the checksums
of the attributes used, one per nesting level over an embedded message's bytes.

What is wrong ends as little as it can, with a warning: a bad property ends its
attachment's properties (the attribute's length keeps the stream in step); a bad embedded
message ends that message; a wrong signature, the budget, or an attribute past the end
ends the stream, and the files completed before stand (a cut-off last attribute is read
as far as it goes: Outlook's data in it may be whole). A bad checksum is a warning only:
the bytes are saved as they are.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import BinaryIO

from prefect_pop3mail.tasks.pop3.message.charsets import text_codec
from prefect_pop3mail.tasks.pop3.sinks import Sink

SIGNATURE = 0x223E9F78
#: Attributes, MAPI properties and values read per winmail.dat (embedded ones included).
#: Outlook writes about 6 attributes and 30 properties per attachment: room for 600.
MAX_ITEMS = 20_000
#: Embedded messages (Outlook items attached in a rich-text message) opened this deep.
MAX_DEPTH = 4
#: Bytes of a name or MIME type read; the rest is skipped (names are cut to 200 bytes).
MAX_STRING = 2048
#: Warnings kept per winmail.dat; the rest are counted in a last one.
MAX_WARNINGS = 10
BLOCK = 256 * 1024

_LEVEL_MESSAGE, _LEVEL_ATTACHMENT = 1, 2
# Attribute ids (the low 16 bits of the attribute's id field).
_ATT_ATTACH_DATA = 0x800F
_ATT_ATTACH_TITLE = 0x8010
_ATT_ATTACH_REND_DATA = 0x9002
_ATT_ATTACHMENT = 0x9005
_ATT_OEM_CODEPAGE = 0x9007
# MAPI property ids and types.
_PR_DISPLAY_NAME = 0x3001
_PR_ATTACH_DATA = 0x3701
_PR_ATTACH_FILENAME = 0x3704
_PR_ATTACH_LONG_FILENAME = 0x3707
_PR_ATTACH_MIME_TAG = 0x370E
_PR_ATTACH_CONTENT_ID = 0x3712
_PR_ATTACHMENT_HIDDEN = 0x7FFE
_NAMES = {_PR_DISPLAY_NAME, _PR_ATTACH_FILENAME, _PR_ATTACH_LONG_FILENAME,
          _PR_ATTACH_MIME_TAG, _PR_ATTACH_CONTENT_ID}
_PT_STRING8, _PT_UNICODE, _PT_BINARY, _PT_OBJECT = 0x001E, 0x001F, 0x0102, 0x000D
_VARIABLE = {_PT_STRING8, _PT_UNICODE, _PT_BINARY, _PT_OBJECT}
#: Bytes per value of the fixed-size types, padding included.
_FIXED = {0x0002: 4, 0x0003: 4, 0x0004: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8, 0x000A: 4,
          0x000B: 4, 0x0014: 8, 0x0040: 8, 0x0048: 16}
_MULTI_VALUE = 0x1000
#: What a PtypObject value holding an embedded message starts with (IID_IMessage).
_IID_IMESSAGE = bytes.fromhex("0703020000000000c000000000000046")
_IID_LEN = 16
#: Windows code pages Python knows by another name than "cpNNNN".
_CODE_PAGES = {20127: "ascii", 20866: "koi8-r", 21866: "koi8-u", 28591: "iso-8859-1",
               28592: "iso-8859-2", 28595: "iso-8859-5", 28597: "iso-8859-7",
               28599: "iso-8859-9", 28605: "iso-8859-15", 50220: "iso-2022-jp",
               51932: "euc-jp", 65001: "utf-8"}
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_HEADER = struct.Struct("<BHHI")  # level, id, type, length


class TnefError(ValueError):
    """The stream cannot be read on from here."""


class _OverBudget(TnefError):
    """Too much work for one winmail.dat: nothing more is read."""


@dataclass
class TnefFile:
    """One file in a winmail.dat."""

    #: Its place: "2" is the second attachment, "2.1" the first in the Outlook item that
    #: the second attachment is.
    number: str
    name: str | None = None
    content_type: str | None = None
    inline: bool = False
    #: Where its bytes are in the file: (offset, length).
    extent: tuple[int, int] | None = None


@dataclass
class TnefContents:
    files: list[TnefFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def code_page_codec(number: int) -> str:
    """The codec of a Windows code page; Windows-1252 when unknown or not text."""
    return (text_codec(_CODE_PAGES.get(number, f"cp{number}")) or "cp1252")


def read_tnef(file: BinaryIO, size: int, *, max_files: int = 1000) -> TnefContents:
    """The files in the TNEF stream that ``file`` holds (``size`` bytes). Never raises for
    bad data: what could not be read is a warning, the files before it are listed."""
    contents = _Contents(max_files=max_files)
    try:
        _Stream(file, 0, size, "", contents, depth=0).read()
    except TnefError as exc:
        contents.warnings.append(str(exc))
    if contents.unsaid:
        contents.warnings.append(f"{contents.unsaid} more problems in winmail.dat not listed")
    return TnefContents(contents.files, contents.warnings)


def copy_file(file: BinaryIO, found: TnefFile, sink: Sink) -> None:
    """Copy a listed file's bytes into ``sink``, a block at a time."""
    if found.extent is None:
        return
    offset, left = found.extent
    file.seek(offset)
    while left:  # bounded: each round takes at least one byte or stops
        block = file.read(min(BLOCK, left))
        if not block:
            raise TnefError("winmail.dat changed while it was read")
        sink.write(block)
        left -= len(block)


@dataclass
class _Contents:
    max_files: int
    files: list[TnefFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    items: int = 0

    unsaid: int = 0

    def warn(self, text: str) -> None:
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(text)
        else:
            self.unsaid += 1

    def spend(self, count: int = 1) -> None:
        self.items += count
        if self.items > MAX_ITEMS:
            raise _OverBudget(f"over {MAX_ITEMS} TNEF attributes and properties; "
                            "the rest is only in winmail.dat")


@dataclass
class _Attachment:
    number: str
    title: str | None = None
    filename: str | None = None
    long_filename: str | None = None
    display_name: str | None = None
    mime_tag: str | None = None
    content_id: str | None = None
    hidden: bool = False
    data: tuple[int, int] | None = None
    #: The data is an Outlook item: a TNEF stream of its own.
    embedded: tuple[int, int] | None = None


class _Stream:
    """One TNEF stream: the file between ``start`` and ``end``."""

    def __init__(self, file: BinaryIO, start: int, end: int, prefix: str, contents: _Contents,
                 depth: int):
        self.file = file
        self.pos = start
        self.end = end
        self.prefix = prefix
        self.contents = contents
        self.depth = depth
        self.codec = "cp1252"
        self.count = 0
        self.current: _Attachment | None = None
        self.truncated = False

    # --- bytes -----------------------------------------------------------------------

    def _read(self, offset: int, length: int, end: int) -> bytes:
        if length < 0 or offset + length > end:
            raise TnefError("TNEF data is truncated or a length in it is wrong")
        self.file.seek(offset)
        data = self.file.read(length)
        if len(data) != length:
            raise TnefError("TNEF data is truncated")
        return data

    def _checksum(self, offset: int, length: int) -> int:
        total = 0
        self.file.seek(offset)
        while length:  # bounded: the region was checked to lie in the file
            block = self.file.read(min(BLOCK, length))
            if not block:
                raise TnefError("TNEF data is truncated")
            total += sum(block)
            length -= len(block)
        return total & 0xFFFF

    # --- attributes --------------------------------------------------------------------

    def read(self) -> None:
        if _U32.unpack(self._read(self.pos, 6, self.end)[:4])[0] != SIGNATURE:
            raise TnefError("winmail.dat is not TNEF data (wrong signature); kept as it is")
        self.pos += 6  # signature and legacy key
        try:
            self._attributes()
        except _OverBudget:
            self._finish_attachment(stopping=True)  # what was read of it stands
            raise
        self._finish_attachment()

    def _attributes(self) -> None:
        # An attribute is 11 bytes at least: fewer left over is padding, ignored.
        while self.end - self.pos >= 11:  # bounded: each round moves pos on by 11 or more
            self.contents.spend()
            level, ident, _kind, length = _HEADER.unpack(self._read(self.pos, 9, self.end))
            data = self.pos + 9
            if length > self.end - data - 2:
                # Truncated: what is there is read (Outlook's data may be whole), unchecked.
                self.truncated = True
                self.contents.warn(
                    f"TNEF attribute {ident:#06x} runs past the end of winmail.dat "
                    "(truncated); read as far as it goes")
                self.pos = self.end
                self._attribute(level, ident, data, self.end - data, whole=False)
                break
            self.pos = data + length + 2
            self._attribute(level, ident, data, length, whole=True)

    def _attribute(self, level: int, ident: int, data: int, length: int, *, whole: bool) -> None:
        """One attribute; not ``whole`` when the file ends inside it: then only values
        whose own lengths fit in what is there are kept."""
        if level == _LEVEL_MESSAGE:
            if ident == _ATT_OEM_CODEPAGE and length >= 4:
                self._verify(ident, data, length)
                number = _U32.unpack(self._read(data, 4, data + length))[0]
                self.codec = code_page_codec(number)
            return
        if level != _LEVEL_ATTACHMENT:
            return
        if ident == _ATT_ATTACH_REND_DATA or self.current is None:
            self._finish_attachment()
            self.count += 1
            self.current = _Attachment(f"{self.prefix}{self.count}")
        attachment = self.current
        if ident == _ATT_ATTACH_DATA and whole:
            self._verify(ident, data, length)
            attachment.data = (data, length)
        elif ident == _ATT_ATTACH_TITLE:
            self._verify(ident, data, length)
            attachment.title = self._string8(data, length)
        elif ident == _ATT_ATTACHMENT:
            self._verify(ident, data, length)
            try:
                _Properties(self, attachment, data, data + length).read()
            except _OverBudget:
                raise
            except TnefError as exc:  # the attribute's length keeps the stream in step
                self.contents.warn(
                    f"attachment {attachment.number} of winmail.dat: {exc}; its other "
                    "properties are skipped")

    def _verify(self, ident: int, data: int, length: int) -> None:
        """Checksums are checked at the top level only: an embedded message's bytes are
        inside an attribute whose checksum covers them."""
        if self.depth or self.truncated:
            return  # a cut-off attribute has no checksum
        expected = _U16.unpack(self._read(data + length, 2, self.end))[0]
        if self._checksum(data, length) != expected:
            where = f"attachment {self.current.number}" if self.current else "the message"
            self.contents.warn(
                f"TNEF attribute {ident:#06x} of {where} has a bad checksum; saved as read")

    def _string8(self, offset: int, length: int) -> str:
        raw = self._read(offset, min(length, MAX_STRING), offset + length)
        return raw.split(b"\0", 1)[0].decode(self.codec, "replace").strip()

    # --- attachments -------------------------------------------------------------------

    def _finish_attachment(self, *, stopping: bool = False) -> None:
        """List the attachment read last; ``stopping``: the reading ends, what is read of
        it counts (an Outlook item in it is not opened)."""
        attachment, self.current = self.current, None
        if attachment is None:
            return
        if attachment.embedded is not None:
            if not stopping:
                self._open_embedded(attachment)
            return
        if attachment.data is None:
            return  # nothing to save (a link, or an attachment Outlook left empty)
        contents = self.contents
        if len(contents.files) >= contents.max_files:
            if stopping:
                return
            raise _OverBudget(f"over {contents.max_files} files in winmail.dat; "
                            "the rest are only in winmail.dat")
        name = (attachment.long_filename or attachment.filename or attachment.title
                or attachment.display_name or None)
        contents.files.append(TnefFile(
            number=attachment.number, name=name, content_type=_mime_type(attachment.mime_tag),
            inline=attachment.hidden or bool(attachment.content_id), extent=attachment.data))

    def _open_embedded(self, attachment: _Attachment) -> None:
        if self.depth + 1 >= MAX_DEPTH:
            self.contents.warn(
                f"Outlook items in winmail.dat nest over {MAX_DEPTH} deep; attachment "
                f"{attachment.number}'s files are only in winmail.dat")
            return
        start, length = attachment.embedded
        inner = _Stream(self.file, start, start + length, f"{attachment.number}.",
                        self.contents, self.depth + 1)
        try:
            inner.read()
        except _OverBudget:
            raise
        except TnefError as exc:  # the outer stream goes on after the item
            self.contents.warn(
                f"in the Outlook item that is attachment {attachment.number} of "
                f"winmail.dat: {exc}")


class _Properties:
    """An attAttachment attribute: MAPI properties, of which a few are kept."""

    def __init__(self, stream: _Stream, attachment: _Attachment, start: int, end: int):
        self.stream = stream
        self.attachment = attachment
        self.pos = start
        self.end = end

    def _u32(self) -> int:
        value = _U32.unpack(self.stream._read(self.pos, 4, self.end))[0]
        self.pos += 4
        return value

    def _skip(self, length: int) -> None:
        if length > self.end - self.pos:
            raise TnefError("a TNEF property runs past the end of its attribute")
        self.pos += length

    def read(self) -> None:
        count = self._u32()
        contents = self.stream.contents
        for _ in range(count):  # bounded: a property takes 4 bytes at least, and spend()
            contents.spend()
            if self.end - self.pos < 4:
                raise TnefError("TNEF properties end before their count says")
            kind, ident = struct.unpack("<HH", self.stream._read(self.pos, 4, self.end))
            self.pos += 4
            if ident >= 0x8000:  # a named property: its GUID, then a number or a name
                self._skip(16)
                if self._u32() == 0:
                    self._skip(4)
                else:
                    self._skip(_padded(self._u32()))
            self._values(kind & ~_MULTI_VALUE, ident, bool(kind & _MULTI_VALUE))

    def _values(self, kind: int, ident: int, multi: bool) -> None:
        if kind in _FIXED:
            count = self._u32() if multi else 1
            size = _FIXED[kind]
            if not multi and ident == _PR_ATTACHMENT_HIDDEN:
                value = _U16.unpack(self.stream._read(self.pos, 2, self.end))[0]
                self.attachment.hidden = bool(value)
            if count > (self.end - self.pos) // size:
                raise TnefError("a TNEF property's count is larger than its data")
            self._skip(count * size)
            return
        if kind not in _VARIABLE:
            raise TnefError(f"unknown TNEF property type {kind:#06x}")
        count = self._u32()
        if count > (self.end - self.pos) // 4:
            raise TnefError("a TNEF property's count is larger than its data")
        self.stream.contents.spend(count)
        for index in range(count):  # bounded: the check above and spend()
            length = self._u32()
            offset = self.pos
            self._skip(_padded(length))
            if index == 0 and not multi:
                self._keep(kind, ident, offset, length)

    def _keep(self, kind: int, ident: int, offset: int, length: int) -> None:
        attachment = self.attachment
        if ident == _PR_ATTACH_DATA and kind in (_PT_BINARY, _PT_OBJECT):
            if kind == _PT_OBJECT and length >= _IID_LEN:
                iid = self.stream._read(offset, _IID_LEN, self.end)
                offset, length = offset + _IID_LEN, length - _IID_LEN
                if iid == _IID_IMESSAGE:
                    attachment.embedded = (offset, length)
                    return
            attachment.data = (offset, length)
        elif ident in _NAMES and kind in (_PT_STRING8, _PT_UNICODE):
            raw = self.stream._read(offset, min(length, MAX_STRING), self.end)
            if kind == _PT_UNICODE:
                text = raw[:len(raw) & ~1].decode("utf-16-le", "replace")
            else:
                text = raw.decode(self.stream.codec, "replace")
            text = text.split("\0", 1)[0].strip()
            name = {_PR_DISPLAY_NAME: "display_name", _PR_ATTACH_FILENAME: "filename",
                    _PR_ATTACH_LONG_FILENAME: "long_filename", _PR_ATTACH_MIME_TAG: "mime_tag",
                    _PR_ATTACH_CONTENT_ID: "content_id"}[ident]
            setattr(attachment, name, text or None)


def _padded(length: int) -> int:
    return length + (-length % 4)


def _mime_type(tag: str | None) -> str | None:
    """A MIME type as written in PR_ATTACH_MIME_TAG, when it looks like one."""
    tag = (tag or "").strip().lower()
    main, slash, sub = tag.partition("/")
    if not slash or not main or not sub or len(tag) > 127 or not tag.isascii():
        return None
    if any(c in tag for c in ' \t;,"()<>@:\\[]?='):
        return None
    return tag
