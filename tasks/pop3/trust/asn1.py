"""Just enough BER/DER reading to check an S/MIME signature, with bounded work.

The cryptography package decrypts PKCS#7 but does not verify PKCS#7 signatures, so
smime.py reads the SignedData structure itself with this. Accepts BER's indefinite lengths
and constructed strings, which OpenSSL's streaming output and Outlook use.

The bytes come from strangers, so every walk is iterative (no recursion to exhaust) and
bounded by the limits below. Hitting one raises ``ASN1LimitError`` naming the limit; the
caller turns it into a warning on the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SEQUENCE = 0x30
SET = 0x31
INTEGER = 0x02
OCTET_STRING = 0x04
OID = 0x06
UTC_TIME = 0x17
GENERALIZED_TIME = 0x18

#: Nesting levels below the outermost element. A SignedData needs about 10.
MAX_DEPTH = 32
#: Distinct elements read in one document, all walks together: bounds memory, and time
#: (a header is read at most twice: once finding an indefinite length's end, once walked).
#: Streamed BER splits content into chunks, so this allows ~100 MB in 1 KB chunks.
MAX_ELEMENTS = 100_000
#: Bytes in one OBJECT IDENTIFIER. Real ones are under 30.
MAX_OID_BYTES = 64
#: Bytes in one arc of an OBJECT IDENTIFIER. A 2.25.<UUID> arc (128 bits) needs 19.
MAX_ARC_BYTES = 20
#: Bytes of a long-form length: 8 bytes already exceed any real input.
MAX_LENGTH_BYTES = 8


class ASN1Error(ValueError):
    """The bytes are not the BER this reader expects."""


class ASN1LimitError(ASN1Error):
    """The input exceeds one of this module's limits (``limit`` names it)."""

    def __init__(self, limit: str, what: str):
        self.limit = limit
        super().__init__(f"ASN.1 {what} (limit {limit} = {globals()[limit]})")


class _Document:
    """The bytes being read and the work spent on them."""

    def __init__(self, data: bytes):
        self.data = data
        self._seen: set[int] = set()
        self.reads = 0  #: headers read, counting re-reads
        #: Where the end-of-contents octets of each indefinite element start, by its offset:
        #: found once, so nested indefinite elements are not scanned again and again.
        self.ends: dict[int, int] = {}

    @property
    def elements(self) -> int:
        """Distinct elements read so far."""
        return len(self._seen)

    def head(self, pos: int) -> tuple[int, int | None, int]:
        """(tag, content length or None when indefinite, offset of the content)."""
        self.reads += 1
        if pos not in self._seen:
            self._seen.add(pos)
            if len(self._seen) > MAX_ELEMENTS:
                raise ASN1LimitError("MAX_ELEMENTS", "element count exceeded")
        data = self.data
        if pos + 2 > len(data):
            raise ASN1Error("truncated")
        tag, first = data[pos], data[pos + 1]
        if tag & 0x1F == 0x1F:
            raise ASN1Error("high tag numbers are not used in S/MIME")
        at = pos + 2
        if first == 0x80:
            if not tag & 0x20:
                raise ASN1Error("indefinite length on a primitive")
            return tag, None, at
        if first & 0x80:
            count = first & 0x7F
            if count > MAX_LENGTH_BYTES or at + count > len(data):
                raise ASN1Error("bad length")
            length = int.from_bytes(data[at:at + count], "big")
            at += count
        else:
            length = first
        if at + length > len(data):
            raise ASN1Error("truncated")
        return tag, length, at

    def node(self, pos: int, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise ASN1LimitError("MAX_DEPTH", "nesting too deep")
        tag, length, at = self.head(pos)
        if length is not None:
            return Node(tag, self, pos, at, at + length, at + length, True, depth)
        eoc = self.ends.get(pos)
        if eoc is None:
            eoc = self._scan(pos, at, depth)
        return Node(tag, self, pos, at, eoc, eoc + 2, False, depth)

    def _scan(self, start: int, cursor: int, depth: int) -> int:
        """Find the end-of-contents of the indefinite element at ``start``, with a stack of
        the indefinite elements open inside it instead of recursion."""
        data, open_starts = self.data, [start]
        while open_starts:
            if data[cursor:cursor + 2] == b"\0\0":
                self.ends[open_starts.pop()] = cursor
                cursor += 2
                continue
            if depth + len(open_starts) > MAX_DEPTH:
                raise ASN1LimitError("MAX_DEPTH", "nesting too deep")
            known = self.ends.get(cursor)
            tag, length, at = self.head(cursor)
            if length is not None:
                cursor = at + length
            elif known is not None:
                cursor = known + 2
            else:
                open_starts.append(cursor)
                cursor = at
        return self.ends[start]


@dataclass
class Node:
    tag: int
    doc: _Document = field(repr=False)
    start: int  #: offset of the tag
    content_start: int
    content_end: int  #: before the end-of-contents octets of an indefinite length
    end: int  #: after the whole element
    definite: bool
    depth: int = 0
    _children: list[Node] | None = field(default=None, repr=False, compare=False)

    @property
    def data(self) -> bytes:
        return self.doc.data

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    @property
    def raw(self) -> bytes:
        return self.data[self.start:self.end]

    @property
    def content(self) -> bytes:
        return self.data[self.content_start:self.content_end]

    def children(self) -> list[Node]:
        if not self.constructed:
            raise ASN1Error(f"tag 0x{self.tag:02x} is not constructed")
        if self._children is None:
            nodes, pos = [], self.content_start
            while pos < self.content_end:
                node = self.doc.node(pos, self.depth + 1)
                nodes.append(node)
                pos = node.end
            if pos != self.content_end:
                raise ASN1Error("element overruns its container")
            self._children = nodes
        return self._children

    def octets(self) -> bytes:
        """An OCTET STRING's bytes, joining the pieces of a constructed (BER) one."""
        if not self.constructed:
            return self.content
        pieces: list[bytes] = []
        pending = [iter(self.children())]
        while pending:
            child = next(pending[-1], None)
            if child is None:
                pending.pop()
            elif child.constructed:
                pending.append(iter(child.children()))
            else:
                pieces.append(child.content)
        return b"".join(pieces)

    def integer(self) -> int:
        return int.from_bytes(self.content, "big", signed=True)

    def oid(self) -> str:
        content = self.content
        if self.tag != OID or not content:
            raise ASN1Error("expected an OBJECT IDENTIFIER")
        if len(content) > MAX_OID_BYTES:
            raise ASN1LimitError("MAX_OID_BYTES", "object identifier too long")
        if content[-1] & 0x80:
            raise ASN1Error("object identifier ends inside an arc")
        parts, value, size = [], 0, 0
        for byte in content:
            if size == 0 and byte == 0x80:
                raise ASN1Error("object identifier arc with a leading zero")
            size += 1
            if size > MAX_ARC_BYTES:
                raise ASN1LimitError("MAX_ARC_BYTES", "object identifier arc too large")
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                parts.append(value)
                value, size = 0, 0
        first = min(parts[0] // 40, 2)
        return ".".join(map(str, [first, parts[0] - 40 * first, *parts[1:]]))


def read(data: bytes) -> Node:
    """The element at the start of ``data`` (trailing bytes are ignored)."""
    return _Document(data).node(0, 0)
