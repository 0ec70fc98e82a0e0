"""Just enough BER/DER reading to check an S/MIME signature.

The cryptography package decrypts PKCS#7 but does not verify PKCS#7 signatures, so
smime.py reads the SignedData structure itself with this. Accepts BER's indefinite lengths
and constructed strings, which OpenSSL's streaming output and Outlook use.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
MAX_DEPTH = 64


class ASN1Error(ValueError):
    """The bytes are not the BER this reader expects."""


@dataclass
class Node:
    tag: int
    data: bytes
    start: int  #: offset of the tag
    content_start: int
    content_end: int  #: before the end-of-contents octets of an indefinite length
    end: int  #: after the whole element
    definite: bool

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    @property
    def raw(self) -> bytes:
        return self.data[self.start:self.end]

    @property
    def content(self) -> bytes:
        return self.data[self.content_start:self.content_end]

    def children(self, depth: int = 0) -> list[Node]:
        if not self.constructed:
            raise ASN1Error(f"tag 0x{self.tag:02x} is not constructed")
        return _read_all(self.data, self.content_start, self.content_end, depth + 1)

    def octets(self) -> bytes:
        """An OCTET STRING's bytes, joining the pieces of a constructed (BER) one."""
        if not self.constructed:
            return self.content
        return b"".join(child.octets() for child in self.children())

    def integer(self) -> int:
        return int.from_bytes(self.content, "big", signed=True)

    def oid(self) -> str:
        if self.tag != OID or not self.content:
            raise ASN1Error("expected an OBJECT IDENTIFIER")
        parts, value = [], 0
        for byte in self.content:
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                parts.append(value)
                value = 0
        first = min(parts[0] // 40, 2)
        return ".".join(map(str, [first, parts[0] - 40 * first, *parts[1:]]))


def read(data: bytes, pos: int = 0, depth: int = 0) -> Node:
    if depth > MAX_DEPTH:
        raise ASN1Error("nested too deeply")
    if pos + 2 > len(data):
        raise ASN1Error("truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ASN1Error("high tag numbers are not used in S/MIME")
    first = data[pos + 1]
    at = pos + 2
    if first == 0x80:  # indefinite: children up to the end-of-contents octets
        if not tag & 0x20:
            raise ASN1Error("indefinite length on a primitive")
        cursor = at
        while True:
            if data[cursor:cursor + 2] == b"\0\0":
                return Node(tag, data, pos, at, cursor, cursor + 2, False)
            cursor = read(data, cursor, depth + 1).end
    if first & 0x80:
        count = first & 0x7F
        if count > 8 or at + count > len(data):
            raise ASN1Error("bad length")
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    else:
        length = first
    if at + length > len(data):
        raise ASN1Error("truncated")
    return Node(tag, data, pos, at, at + length, at + length, True)


def _read_all(data: bytes, pos: int, end: int, depth: int) -> list[Node]:
    nodes = []
    while pos < end:
        node = read(data, pos, depth)
        nodes.append(node)
        pos = node.end
    if pos != end:
        raise ASN1Error("element overruns its container")
    return nodes
