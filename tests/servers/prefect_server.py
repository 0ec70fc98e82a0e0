"""A real Prefect server (``prefect server start``) and process workers, for tests.

The server gets its own PREFECT_HOME (SQLite database, UI build) in a temporary directory,
listens on 127.0.0.1 on a free port and sends no analytics. Everything that talks to it runs
as a subprocess with an explicit environment (``env()``, ``cli()``) or through a client bound
to its URL (``client()``), so it never mixes with the in-process ``prefect_test_harness``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import started
from tests.servers.dovecot import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))

# Settings inherited from the caller's environment that would point elsewhere.
_FOREIGN_SETTINGS = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_PROFILE",
    "PREFECT_HOME",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)


def _stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group started for ``process``, then SIGKILL what is left."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class PrefectServer:
    home: Path
    port: int = 0
    process: subprocess.Popen | None = None
    #: Settings for the server process only, e.g. PREFECT_API_DATABASE_CONNECTION_URL.
    server_env: dict[str, str] = field(default_factory=dict)
    _children: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a subprocess that must talk to this server only."""
        env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_SETTINGS}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
            PREFECT_CLI_PROMPT="false",
            # Plain CLI output, whatever terminal runs the tests.
            NO_COLOR="1",
            COLUMNS="200",
        )
        env.update(extra)
        return env

    def start(self, timeout: float = 90.0) -> PrefectServer:
        """Start the server; again on the same port and home (the same database) once it
        has been stopped or killed."""
        started("a Prefect server", "prefect")
        self.port = self.port or free_port()
        log = open(self.log_file, "ab")
        self.process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
             "--analytics-off"],
            env=self.env(**self.server_env),
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited: {self.diagnostics()}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"prefect server did not become healthy: {self.diagnostics()}")

    def diagnostics(self, size: int = 4000) -> str:
        if not self.log_file.exists():
            return "(no server log)"
        return self.log_file.read_text(errors="replace")[-size:]

    def cli(self, *args: str, timeout: float = 120.0, cwd: Path = PROJECT_ROOT,
            prefect: Sequence[str] = (PREFECT,), **env: str) -> str:
        """Run ``prefect ARGS`` (another installation's with ``prefect``) in ``cwd``, the
        project root by default, against this server; its output."""
        done = subprocess.run(
            [*prefect, *args],
            env=self.env(**env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} exited {done.returncode}:\n{output}")
        return output

    def api(self, method: str, path: str, json=None):
        """One REST call, the way the UI makes it; the decoded JSON reply (or None)."""
        import httpx

        reply = httpx.request(method, f"{self.api_url}{path}", json=json, timeout=30)
        if reply.is_error:
            raise AssertionError(f"{method} {path}: {reply.status_code} {reply.text[:2000]}")
        return reply.json() if reply.content else None

    def client(self):
        """An async client bound to this server, whatever the current settings say."""
        from prefect.client.orchestration import PrefectClient

        return PrefectClient(api=self.api_url)

    @contextlib.contextmanager
    def worker(self, pool: str, log_file: Path, cwd: Path = PROJECT_ROOT,
               prefect: Sequence[str] = (PREFECT,), **env: str) -> Iterator[subprocess.Popen]:
        """A process worker polling ``pool`` every second; stopped with its flow runs."""
        log = open(log_file, "ab")
        process = subprocess.Popen(
            [*prefect, "worker", "start", "--pool", pool, "--type", "process"],
            env=self.env(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
                         **env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._children.append(process)
        try:
            yield process
        finally:
            _stop_group(process)
            self._children.remove(process)

    def stop(self) -> None:
        for child in list(self._children):
            _stop_group(child)
        if self.process is not None:
            _stop_group(self.process, grace=15.0)

    def kill(self) -> None:
        """SIGKILL the server and what it started: an outage with no goodbye."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def restart(self, timeout: float = 90.0, grace: float = 5.0) -> PrefectServer:
        """Stop the server (SIGTERM, as an upgrade would; SIGKILL after ``grace`` seconds,
        as it waits for open websockets) and start it again on the same port and
        database. Its default lease storage is in memory: leases are gone."""
        if self.process is not None:
            _stop_group(self.process, grace=grace)
        return self.start(timeout)


def start_prefect_server(**server_env: str) -> PrefectServer:
    """Start a server in a fresh PREFECT_HOME; call ``stop()`` (and remove ``home``) after.
    ``server_env``: settings of the server process only (its database, say)."""
    home = Path(tempfile.mkdtemp(prefix="pop3mail-prefect-"))
    return PrefectServer(home=home, server_env=server_env).start()



_shared: PrefectServer | None = None


def shared_prefect_server(config) -> PrefectServer:
    """One server for the whole pytest run, whichever module asks first; ``config`` is
    pytest's, which stops it when the run ends."""
    global _shared
    if _shared is None:
        server = start_prefect_server()

        def stop() -> None:
            global _shared
            server.stop()
            shutil.rmtree(server.home, ignore_errors=True)
            _shared = None

        config.add_cleanup(stop)
        _shared = server
    return _shared
