"""Decoding a text body to str whatever its label says: labels are often wrong.

Rules, in order: a label is widened to the superset mail clients really use (GB2312 ->
GB18030, Shift_JIS -> CP932, ISO-8859-1 -> Windows-1252, US-ASCII -> UTF-8); text with
8-bit bytes that is valid UTF-8 is UTF-8 whatever the label says; an unknown label is read
as UTF-8 or else Windows-1252; bytes the codec cannot read are replaced. Every guess
produces one warning.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# What senders mean by these labels (as the WHATWG Encoding Standard maps them).
_SUPERSETS = {
    "us-ascii": "utf-8",
    "ascii": "utf-8",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "iso-8859-9": "cp1254",
    "iso-8859-11": "cp874",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "euc-cn": "gb18030",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "big5": "big5hkscs",
}
FALLBACK = "cp1252"
#: Text codecs that still must not decode mail: punycode and IDNA are quadratic in their
#: input, "undefined" always raises. Non-text codecs (zlib_codec, bz2, base64_codec, hex,
#: uu, rot13...) are refused by ``_is_text_encoding``: a "charset" must never decompress.
_REFUSED = {"punycode", "idna", "undefined"}


@dataclass
class Decoding:
    codec: str
    errors: str = "strict"
    warning: str | None = None

    @property
    def is_utf8(self) -> bool:
        return codecs.lookup(self.codec).name == "utf-8"


def _label(declared: str | None) -> str:
    return (declared or "us-ascii").strip().strip("\"'").lower()


def text_codec(label: str) -> str | None:
    """The codec a charset label names, or None when unknown or not a safe text codec."""
    try:
        info = codecs.lookup(_SUPERSETS.get(label, label))
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _REFUSED:
        return None
    return info.name


def _exists(label: str) -> bool:
    try:
        codecs.lookup(label)
    except (LookupError, ValueError, TypeError):
        return False
    return True


def _reads_cleanly(chunks: Iterable[bytes], codec: str) -> bool:
    decoder = codecs.getincrementaldecoder(codec)("strict")
    try:
        for chunk in chunks:
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def choose(chunks: Iterable[bytes], declared: str | None) -> Decoding:
    """Pick how to decode the text that ``chunks`` yields (it is iterated more than once)."""
    label = _label(declared)
    codec = text_codec(label)
    eight_bit = not all(chunk.isascii() for chunk in chunks)
    utf8 = not eight_bit or _reads_cleanly(chunks, "utf-8")
    if codec == "utf-8":
        if utf8:
            return Decoding("utf-8")
        return Decoding(FALLBACK, "replace", f"text is not valid {label[:40]}; read as Windows-1252")
    if codec is None:
        guess = "utf-8" if utf8 else FALLBACK
        name = "UTF-8" if utf8 else "Windows-1252"
        if _exists(label):
            why = f"charset {label[:40]!r} is not a text charset (refused)"
        else:
            why = f"unknown charset {label[:40]!r}"
        return Decoding(guess, "replace", f"{why}; read as {name}")
    if eight_bit and utf8 and not codec.startswith(("utf-16", "utf-32")):
        return Decoding("utf-8", warning=f"text labelled {label[:40]} is UTF-8; read as UTF-8")
    if _reads_cleanly(chunks, codec):
        return Decoding(codec)
    return Decoding(codec, "replace", f"text has bytes that are not valid {label[:40]}; replaced")


def decode_chunks(chunks: Iterable[bytes], decoding: Decoding) -> Iterator[str]:
    """The text, with CRLF line endings made LF."""
    decoder = codecs.getincrementaldecoder(decoding.codec)(decoding.errors)
    held_cr = False
    for chunk in _and_end(chunks):  # one chunk at a time: memory stays flat
        text = decoder.decode(chunk or b"", final=chunk is None)
        if held_cr:
            text = "\r" + text
        held_cr = text.endswith("\r") and chunk is not None
        if held_cr:
            text = text[:-1]
        if text:
            yield text.replace("\r\n", "\n")


def _and_end(chunks: Iterable[bytes]) -> Iterator[bytes | None]:
    yield from chunks
    yield None
