"""The save directories the storage promises are tested against, one fixture for all: a
local folder, a ``file://`` URL, S3 (moto's server) and SFTP (a private OpenSSH sshd).

Each backend gives the save directory as a user writes it and a view of what is stored, as
a reader of that storage sees it (the SFTP server serves a folder of this machine, so its
files, modes and links are looked at here directly).
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import fsspec
import pytest

from tests.servers import require_marker
from tests.servers.sftp import SFTPServer, sftp_unavailable_reason

#: Each with the marker of the server it starts (`make test-fast` runs the local ones).
S3 = pytest.param("s3", marks=pytest.mark.s3)
SFTP = pytest.param("sftp", marks=pytest.mark.sftp)
BACKENDS = ["local", "file", S3, SFTP]
#: Those with folders, modes and links (an object store has none of them).
FILE_SYSTEMS = ["local", "file", SFTP]


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("s3fs", reason="needs prefect-pop3mail[s3]")
    pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
    from tests.servers.s3 import S3Server

    server = S3Server()
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec.open() must not reuse an earlier server's
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sftp_server():
    pytest.importorskip("paramiko", reason="needs prefect-pop3mail[sftp]")
    if reason := sftp_unavailable_reason():
        pytest.skip(reason)
    server = SFTPServer()
    yield server
    server.stop()


def use_s3(server, monkeypatch) -> str:
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    return f"s3://{server.new_bucket()}/mail"


def use_sftp(server, monkeypatch) -> str:
    """Credentials the ecosystem's way: fsspec's configuration (FSSPEC_SFTP_* in a
    worker's environment) and a known_hosts file."""
    monkeypatch.setenv("POP3MAIL_SFTP_KNOWN_HOSTS", str(server.known_hosts))
    monkeypatch.setitem(fsspec.config.conf, "sftp", server.client_options())
    return server.url(f"save-{uuid.uuid4().hex[:8]}")


class Backend:
    """One save directory of one kind."""

    def __init__(self, name: str, location: str, root: Path | None, s3=None):
        self.name = name
        #: The save directory as a configuration names it.
        self.location = location
        #: Where its files are on this machine (all but S3).
        self.root = root
        self._s3 = s3
        #: The longest name below the save directory the storage keeps (bytes).
        self.limit = 1024 - len(b"mail/") if name == "s3" else 4096 - len(bytes(root)) - 1

    def __repr__(self) -> str:
        return self.name

    def stored(self) -> dict[str, bytes]:
        """Every stored file below the save directory (relative name -> content); links
        are not followed."""
        if self._s3 is not None:
            server, bucket = self._s3
            return {key[len("mail/"):]: server.read(bucket, key)
                    for key in server.keys(bucket, "mail/")}
        found = {}
        for top, _dirs, names in os.walk(self.root, followlinks=False):
            for name in names:
                path = Path(top, name)
                if not path.is_symlink():
                    found[path.relative_to(self.root).as_posix()] = path.read_bytes()
        return found

    def message_folders(self) -> dict[str, dict[str, bytes]]:
        """Message folder -> its files (the state folder and quarantine left out)."""
        folders: dict[str, dict[str, bytes]] = {}
        for name, data in self.stored().items():
            folder, _, rest = name.partition("/")
            if folder not in (".pop3mail", "quarantine"):
                folders.setdefault(folder, {})[rest] = data
        return folders

    def modes(self) -> dict[str, int]:
        """Mode of every file and folder below the save directory (lstat)."""
        assert self.root is not None
        found = {".": stat.S_IMODE(self.root.lstat().st_mode)}
        for top, dirs, names in os.walk(self.root, followlinks=False):
            for name in dirs + names:
                path = Path(top, name)
                found[path.relative_to(self.root).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
        return found


def server_for(name: str, request):
    """The running server of back-end ``name`` (``s3``, ``sftp``), for a test carrying its
    marker (a fixture asked for by name is checked by tests/conftest.py; this one is not)."""
    require_marker(request.node, f"the {name} server", name)
    return request.getfixturevalue(f"{name}_server")


def make_backend(name: str, request, monkeypatch, tmp_path: Path) -> Backend:
    if name == "s3":
        server = server_for("s3", request)
        location = use_s3(server, monkeypatch)
        return Backend(name, location, None, (server, location[len("s3://"):].split("/")[0]))
    if name == "sftp":
        server = server_for("sftp", request)
        location = use_sftp(server, monkeypatch)
        return Backend(name, location, Path(location.split(str(server.port), 1)[1]))
    root = tmp_path / "save"
    return Backend(name, str(root) if name == "local" else root.as_uri(), root)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch, tmp_path) -> Backend:
    """A fresh save directory on each kind of storage."""
    return make_backend(request.param, request, monkeypatch, tmp_path)


@pytest.fixture(params=FILE_SYSTEMS)
def file_system(request, monkeypatch, tmp_path) -> Backend:
    """A fresh save directory on each storage that has modes and links."""
    return make_backend(request.param, request, monkeypatch, tmp_path)


def break_parsing_of_poison(monkeypatch) -> None:
    """The store's parsing fails (a bug) for messages whose subject is "poison", run after
    run: what sets a message aside in quarantine."""
    from prefect_pop3mail.tasks.pop3.message.contents import ContentWriter

    write = ContentWriter.write

    def breaks_on_poison(self, original, folder, findings, uidl, **kwargs):
        if b"Subject: poison" in Path(original).read_bytes():
            raise ValueError("a parser bug")
        return write(self, original, folder, findings, uidl, **kwargs)

    monkeypatch.setattr(ContentWriter, "write", breaks_on_poison)
