"""Writes TNEF streams (Outlook's winmail.dat, [MS-OXTNEF]) for the tests, the golden
corpus and the benchmarks, in the shape Outlook writes them: the message's attributes
(version, code page, class, MAPI properties), then per attachment attAttachRendData,
attAttachTitle (the 8.3 name), attAttachData (the bytes) and attAttachment (MAPI
properties: the long name, the MIME type; the bytes instead of attAttachData for OLE
objects and Outlook items).

Every piece can be written wrong on purpose (checksums, lengths, counts), for the tests of
hostile input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SIGNATURE = struct.pack("<I", 0x223E9F78)
MESSAGE, ATTACHMENT = 1, 2
# Attribute ids and their types (atpWord... as Outlook writes them).
ATT_TNEF_VERSION = (0x9006, 0x0008)
ATT_OEM_CODEPAGE = (0x9007, 0x0006)
ATT_MESSAGE_CLASS = (0x8008, 0x0007)
ATT_MAPI_PROPS = (0x9003, 0x0006)
ATT_ATTACH_REND_DATA = (0x9002, 0x0006)
ATT_ATTACH_TITLE = (0x8010, 0x0001)
ATT_ATTACH_DATA = (0x800F, 0x0006)
ATT_ATTACHMENT = (0x9005, 0x0006)
# MAPI property types and ids.
PT_SHORT, PT_LONG, PT_BOOLEAN, PT_SYSTIME = 0x0002, 0x0003, 0x000B, 0x0040
PT_STRING8, PT_UNICODE, PT_BINARY, PT_OBJECT = 0x001E, 0x001F, 0x0102, 0x000D
MV = 0x1000
PR_SUBJECT = 0x0037
PR_DISPLAY_NAME = 0x3001
PR_ATTACH_DATA = 0x3701
PR_ATTACH_EXTENSION = 0x3703
PR_ATTACH_FILENAME = 0x3704
PR_ATTACH_METHOD = 0x3705
PR_ATTACH_LONG_FILENAME = 0x3707
PR_ATTACH_MIME_TAG = 0x370E
PR_ATTACH_CONTENT_ID = 0x3712
PR_ATTACHMENT_HIDDEN = 0x7FFE
IID_IMESSAGE = bytes.fromhex("0703020000000000c000000000000046")
IID_ISTORAGE = bytes.fromhex("0b00000000000000c000000000000046")


def checksum(data: bytes) -> int:
    return sum(data) & 0xFFFF


def attribute(level: int, which: tuple[int, int], data: bytes, *, check: int | None = None,
              length: int | None = None) -> bytes:
    ident, kind = which
    head = struct.pack("<BHHI", level, ident, kind, len(data) if length is None else length)
    return head + data + struct.pack("<H", checksum(data) if check is None else check)


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def prop(kind: int, ident: int, value: bytes | int | str) -> bytes:
    """One single-valued MAPI property as TNEF writes it."""
    if isinstance(value, str):
        value = value.encode("utf-16-le" if kind == PT_UNICODE else "cp1252", "replace") + (
            b"\0\0" if kind == PT_UNICODE else b"\0")
    if kind in (PT_STRING8, PT_UNICODE, PT_BINARY, PT_OBJECT):
        return struct.pack("<HHII", kind, ident, 1, len(value)) + pad(value)
    size = {PT_SHORT: 2, PT_BOOLEAN: 2, PT_LONG: 4, PT_SYSTIME: 8}[kind]
    raw = value.to_bytes(size, "little") if isinstance(value, int) else value
    return struct.pack("<HH", kind, ident) + pad(raw)


def properties(*items: bytes, count: int | None = None) -> bytes:
    return struct.pack("<I", len(items) if count is None else count) + b"".join(items)


@dataclass
class File:
    """An attachment: ``name`` is its long name, ``short`` its 8.3 title."""

    name: str | None
    data: bytes = b""
    short: str | None = None
    mime: str | None = None
    #: Where the bytes go: "data" (attAttachData, as Outlook for files), "binary" or
    #: "object" (PR_ATTACH_DATA_OBJ, as for OLE objects).
    store: str = "data"
    #: The long name as UTF-16 (PT_UNICODE) or in the code page (PT_STRING8).
    unicode: bool = True
    hidden: bool = False
    #: An Outlook item attached: its own attachments, or its TNEF stream as written
    #: (the data above is ignored).
    embedded: list[File] | bytes | None = None
    extra: list[bytes] = field(default_factory=list)
    #: attAttachData with a checksum that does not match.
    bad_checksum: bool = False


def attachment_attributes(f: File, codec: str = "cp1252") -> bytes:
    out = attribute(ATTACHMENT, ATT_ATTACH_REND_DATA, struct.pack("<HiHHI", 1, -1, 0, 0, 0))
    if f.short is not None:
        out += attribute(ATTACHMENT, ATT_ATTACH_TITLE, f.short.encode(codec, "replace") + b"\0")
    if f.embedded is None and f.store == "data":
        wrong = (checksum(f.data) + 1) & 0xFFFF if f.bad_checksum else None
        out += attribute(ATTACHMENT, ATT_ATTACH_DATA, f.data, check=wrong)
    props = [prop(PT_LONG, PR_ATTACH_METHOD, 5 if f.embedded is not None else 1)]
    if f.embedded is not None:
        inner = f.embedded if isinstance(f.embedded, bytes) else tnef(f.embedded)
        props.append(prop(PT_OBJECT, PR_ATTACH_DATA, IID_IMESSAGE + inner))
    elif f.store == "binary":
        props.append(prop(PT_BINARY, PR_ATTACH_DATA, f.data))
    elif f.store == "object":
        props.append(prop(PT_OBJECT, PR_ATTACH_DATA, IID_ISTORAGE + f.data))
    if f.name is not None:
        if f.unicode:
            props.append(prop(PT_UNICODE, PR_ATTACH_LONG_FILENAME, f.name))
        else:
            props.append(prop(PT_STRING8, PR_ATTACH_LONG_FILENAME,
                              f.name.encode(codec, "replace") + b"\0"))
    if f.mime:
        props.append(prop(PT_STRING8, PR_ATTACH_MIME_TAG, f.mime))
    if f.hidden:
        props.append(prop(PT_BOOLEAN, PR_ATTACHMENT_HIDDEN, 1))
    props.extend(f.extra)
    return out + attribute(ATTACHMENT, ATT_ATTACHMENT, properties(*props))


def message_attributes(codepage: int = 1252) -> bytes:
    return (attribute(MESSAGE, ATT_TNEF_VERSION, struct.pack("<I", 0x00010000))
            + attribute(MESSAGE, ATT_OEM_CODEPAGE, struct.pack("<II", codepage, 0))
            + attribute(MESSAGE, ATT_MESSAGE_CLASS, b"IPM.Microsoft Mail.Note\0")
            + attribute(MESSAGE, ATT_MAPI_PROPS, properties(
                prop(PT_UNICODE, PR_SUBJECT, "Quarterly report"),
                prop(PT_SYSTIME, 0x0039, 133_000_000_000_000_000))))


def tnef(files: list[File], *, codepage: int = 1252, codec: str = "cp1252",
         key: int = 0x0237) -> bytes:
    """A whole winmail.dat."""
    return (SIGNATURE + struct.pack("<H", key) + message_attributes(codepage)
            + b"".join(attachment_attributes(f, codec) for f in files))
