"""The server markers are checked, not trusted: a test that starts a real server without its
marker fails (so `make test-fast`, which leaves the marked tests out, never starts one), and
a test not marked ``prefect`` that reaches for the Prefect API fails too."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
import trustme

import tests.servers as servers
from tests.conftest import SERVER_FIXTURES
from tests.servers.dovecot import Dovecot
from tests.servers.tripwire import Tripwire


@pytest.fixture
def forgiven():
    """The problems this test provokes on purpose, taken back so the run still passes."""
    before = list(servers.unmarked)
    yield
    assert servers.unmarked[len(before):], "the check recorded nothing"
    del servers.unmarked[len(before):]


def test_an_unmarked_test_cannot_start_dovecot(tmp_path, forgiven):
    server = Dovecot(tmp_path / "dovecot", trustme.CA())
    with pytest.raises(servers.MarkerMissing, match=r"test_an_unmarked_test_cannot_start_dovecot "
                       r"uses Dovecot but is not marked @pytest.mark.dovecot"):
        server.start()
    assert server.process is None and not (tmp_path / "dovecot").exists()  # nothing started


@pytest.mark.parametrize("start", ["prefect", "s3", "sftp"])
def test_an_unmarked_test_cannot_start_the_other_servers(start, tmp_path, forgiven):
    if start == "prefect":
        from tests.servers.prefect_server import PrefectServer

        server = PrefectServer(home=tmp_path)
        with pytest.raises(servers.MarkerMissing, match="@pytest.mark.prefect"):
            server.start()
        assert server.process is None
    elif start == "s3":
        from tests.servers.s3 import S3Server

        with pytest.raises(servers.MarkerMissing, match="@pytest.mark.s3"):
            S3Server()
    else:
        from tests.servers.sftp import SFTPServer

        with pytest.raises(servers.MarkerMissing, match="@pytest.mark.sftp"):
            SFTPServer()


@pytest.mark.dovecot
def test_a_marked_test_passes_the_check():
    servers.started("Dovecot", "dovecot", "interop")  # raises if the marker were not seen


def test_every_server_fixture_names_registered_markers(pytestconfig):
    registered = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    for server, markers in SERVER_FIXTURES.values():
        assert markers and set(markers) <= registered, server


def test_the_tripwire_refuses_and_remembers_every_request():
    tripwire = Tripwire()
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{tripwire.api_url}/health", timeout=10)
        assert refused.value.code == 400
        assert tripwire.take() == ["GET /api/health"]
        assert tripwire.take() == []
    finally:
        tripwire.stop()
