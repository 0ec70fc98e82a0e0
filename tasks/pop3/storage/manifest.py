"""The ``.complete`` marker of a message folder, and names that fit the storage.

The store writes the marker into a message folder before it publishes it (renamed in with
the folder, or uploaded last), so a folder with its marker is complete. It lists the
folder's files and names the message it holds:

    {"version": 3, "id": "...", "uidl": "...", "head": "...", "sha256": "...", "size": 123,
     "files": [{"path": "long-names/1f3e....pdf", "name": "attachments/...", "size": 45}],
     "result": {...}}

``result`` is the message's ``ReceivedMail`` as the run that saved it returned it, with its
locations relative to the save directory (``models.locate_result`` places them): what
replay hands on again, the same object with the same id. It is left out when it would make
the marker larger than a reader takes (``MAX_MARKER_BYTES``: thousands of attachments);
markers of version 2 (releases before replay) never have it.

``path`` is where a file is stored, ``name`` the name the layout gave it. They differ only
when the full name below the save directory would pass the storage's limit (S3, GCS and
Azure keep 1,024 bytes, and attached messages nest folders): that file is stored as
``long-names/<hash of its name><suffix>``, the same for the same name every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from collections.abc import Callable
from pathlib import Path

from prefect_pop3mail.tasks.pop3.storage.base import MARKER

VERSION = 3
#: Versions whose markers name their message (uidl, head): 2 came before ``result``.
NAMING_VERSIONS = (2, 3)
LONG_NAMES = "long-names"
#: Room that names below the save directory need at least: a message folder and a
#: shortened name in it, the state folder's logs.
MIN_NAME_ROOM = 160
#: A marker is read back up to this size (an entry per file; a message has at most a few
#: thousand).
MAX_MARKER_BYTES = 4 << 20
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,15}")


def folder_files(folder: str | Path) -> list[tuple[str, str]]:
    """The regular files under ``folder``: (relative POSIX name, path), the marker last;
    links are never followed. A walk of directory entries, a stat for none of them."""
    found = []
    stack = [("", os.fspath(folder))]
    while stack:  # bounded by the folder's entries: a message has at most MAX_PARTS files
        prefix, top = stack.pop()
        with os.scandir(top) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((f"{prefix}{entry.name}/", entry.path))
                elif entry.is_file(follow_symlinks=False):
                    found.append((prefix + entry.name, entry.path))
    return sorted(found, key=lambda item: (item[0] == MARKER, item[0]))


def short_name(name: str) -> str:
    """Where a file laid out as ``name`` is stored when its full name is too long."""
    suffix = posixpath.splitext(name)[1]
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]
    return f"{LONG_NAMES}/{digest}{suffix if _SUFFIX.fullmatch(suffix) else ''}"


def seal(staging: str | Path, folder: str, limit: int, identity: dict, *, dir_mode: int,
         file_mode: int, result: Callable[[dict[str, str]], dict] | None = None
         ) -> dict[str, str]:
    """Finish ``staging``, laid out as the message folder ``folder``: move each file whose
    name below the save directory would pass ``limit`` bytes to its short name, then write
    the marker (the files under their stored and laid-out names, the message's
    ``identity``: id, uidl, head, sha256, size, and its ``result``, given the names moved,
    when it fits). Returns the stored name of each file moved, by its laid-out name."""
    moved: dict[str, str] = {}
    files = []
    for name, path in folder_files(staging):
        if len(f"{folder}/{name}".encode()) > limit:
            short = short_name(name)
            os.makedirs(os.path.join(staging, LONG_NAMES), mode=dir_mode, exist_ok=True)
            os.replace(path, os.path.join(staging, short))
            moved[name], path = short, os.path.join(staging, short)
        files.append({"path": moved.get(name, name), "name": name, "size": os.stat(path).st_size})
    _remove_emptied(staging, moved)
    marker = {"version": VERSION, **identity, "files": files}
    data = json.dumps({**marker, "result": result(moved)} if result else marker).encode()
    if len(data) > MAX_MARKER_BYTES and result:  # too large for a reader: without it
        data = json.dumps(marker).encode()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(os.path.join(staging, MARKER), flags, file_mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return moved


def _remove_emptied(staging: str | Path, moved: dict[str, str]) -> None:
    """Remove the folders that moving files out of left empty, deepest first."""
    for parent in sorted({posixpath.dirname(name) for name in moved}, key=len, reverse=True):
        while parent:
            try:
                os.rmdir(os.path.join(staging, parent))
            except OSError:
                break  # not empty: other files stay in it
            parent = posixpath.dirname(parent)


def read_marker(data: bytes | None, uidl: str, head: str) -> tuple[dict, None] | tuple[None, str]:
    """A folder's marker (as read back), when it shows the message ``uidl`` with the
    header digest ``head`` saved there: ``(marker, None)``; else ``(None, why not)``."""
    if data is None:
        return None, "its folder has no .complete marker"
    if len(data) > MAX_MARKER_BYTES:
        return None, "its .complete marker is too large to be one"
    try:
        marker = json.loads(data)
    except ValueError:
        return None, "its .complete marker cannot be read"
    if not isinstance(marker, dict) or marker.get("version") not in NAMING_VERSIONS:
        return None, "its .complete marker does not name the message (an older release wrote it)"
    if marker.get("uidl") != uidl or marker.get("head") != head:
        return None, "its .complete marker names another message"
    return marker, None


def marker_problem(data: bytes | None, uidl: str, head: str) -> str | None:
    """Why a folder's marker (as read back) does not show the message ``uidl`` with the
    header digest ``head`` saved there; None when it does."""
    return read_marker(data, uidl, head)[1]
