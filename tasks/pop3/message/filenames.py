"""Safe file names for whatever a message claims an attachment is called.

A name from a message is hostile input: it may be encoded (RFC 2047, RFC 2231), carry a
path, control or bidi characters, a Windows device name, or be too long. ``safe_filename``
turns it into one plain path component; ``NameAllocator`` keeps names unique in a folder.
"""

from __future__ import annotations

import base64
import quopri
import re
import unicodedata

from prefect_pop3mail.tasks.pop3.message.charsets import text_codec

#: Bytes, not characters: file systems cap a component at 255 bytes. Room is left for a
#: " (NNN)" suffix.
MAX_NAME_BYTES = 200
MAX_EXTENSION_BYTES = 24

_WINDOWS_RESERVED = re.compile(
    r"^(con|prn|aux|nul|conin\$|conout\$|clock\$|com[0-9¹²³]|lpt[0-9¹²³])$", re.IGNORECASE
)
# Characters Windows refuses in names; replaced so a saved folder can be copied anywhere.
_WINDOWS_FORBIDDEN = str.maketrans({c: "_" for c in '<>:"|?*'})
# Control (Cc), format (Cf: bidi overrides, zero-width), surrogate, private use, unassigned,
# line and paragraph separators.
_DROPPED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(?<=\?=)[ \t\r\n]+(?==\?)")


def decode_rfc2047(value: str) -> str:
    """Decode encoded words (``=?utf-8?B?...?=``) one by one, leaving the text around them
    (even raw 8-bit text) and any word that cannot be decoded as it is."""
    if "=?" not in value:
        return value
    return _ENCODED_WORD.sub(_decode_word, _BETWEEN_WORDS.sub("", value))


def _decode_word(match: re.Match) -> str:
    charset, kind, data = match.groups()
    try:
        if kind in "bB":
            raw = base64.b64decode(data + "=" * (-len(data) % 4))
        else:
            raw = quopri.decodestring(data.replace("_", " ").encode("ascii"), header=True)
        codec = text_codec(charset.lower())
        if codec is None:  # unknown, or not a text codec (zlib, punycode...): left as is
            return match.group(0)
        return raw.decode(codec, "replace")
    except (ValueError, LookupError, UnicodeError):
        return match.group(0)


def safe_filename(raw: str | None, fallback: str) -> str:
    """One safe path component for ``raw``; ``fallback`` (already safe) when nothing is left."""
    name = _clean(raw or "")
    if not name:
        name = _clean(fallback) or "part"
    return _cap(name, MAX_NAME_BYTES)


def _clean(raw: str) -> str:
    name = unicodedata.normalize("NFC", decode_rfc2047(raw))
    # Keep only the last component: a sender's "C:\\Users\\x\\report.pdf" is "report.pdf".
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(
        " " if ch in "\t\n\r" else ch
        for ch in name
        if ch in "\t\n\r" or unicodedata.category(ch) not in _DROPPED_CATEGORIES
    )
    name = name.translate(_WINDOWS_FORBIDDEN)
    name = re.sub(r"\s+", " ", name)
    # Leading dots would make "..", "." or a hidden file; trailing dots and spaces are
    # dropped by Windows, which then sees a different name.
    name = name.strip(" ").lstrip(".").rstrip(". ").strip(" ")
    stem = name.split(".", 1)[0].rstrip(" ")
    if _WINDOWS_RESERVED.match(stem):
        name = "_" + name
    return name


def _cap(name: str, limit: int) -> str:
    """Cut ``name`` to ``limit`` UTF-8 bytes, keeping a short extension."""
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext.encode("utf-8")) + 1 > MAX_EXTENSION_BYTES:
        stem, ext = name, ""
    suffix = f".{ext}" if ext else ""
    room = limit - len(suffix.encode("utf-8"))
    cut = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip(". ")
    return (cut or "part") + suffix


class NameAllocator:
    """Hands out unique names in one folder: "a.pdf", "a (2).pdf", ... Case-insensitive,
    so a folder copied to a case-insensitive file system keeps every file. Constant time
    per name: each name remembers the next number to try, so 10,000 equal names do not
    try "(2)", "(3)"... from the start every time."""

    def __init__(self, taken: tuple[str, ...] = ()):
        self._taken = {n.casefold() for n in taken}
        self._next: dict[tuple[str, str], int] = {}

    def claim(self, name: str, *, also: str = "") -> str:
        """A free variant of ``name``. With ``also`` (a suffix such as ".eml"), the name
        with that suffix is reserved too, for a file and its companion folder."""
        stem, dot, ext = name.rpartition(".")
        if not dot or not stem:
            stem, ext = name, ""
        suffix = f".{ext}" if ext else ""
        key = (name.casefold(), also.casefold())
        candidate, n = name, self._next.get(key, 1)
        if n > 1 or self._is_taken(candidate, also):
            while True:
                n += 1
                tag = f" ({n})"
                room = MAX_NAME_BYTES - len(tag.encode()) - len(suffix.encode("utf-8"))
                short = stem.encode("utf-8")[:room].decode("utf-8", "ignore")
                candidate = f"{short}{tag}{suffix}"
                if not self._is_taken(candidate, also):
                    break
        self._next[key] = n
        self._taken.add(candidate.casefold())
        if also:
            self._taken.add((candidate + also).casefold())
        return candidate

    def _is_taken(self, candidate: str, also: str) -> bool:
        folded = candidate.casefold()
        return folded in self._taken or (bool(also) and (folded + also.casefold()) in self._taken)
