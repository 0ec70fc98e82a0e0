"""A real PostgreSQL server for tests and benchmarks, in a temporary directory.

Debian's postgresql package (binaries under /usr/lib/postgresql/<version>/bin), started with
its own cluster (``initdb``) on 127.0.0.1 and a free port, no Unix socket outside its own
folder, and a password (scram-sha-256) for the one role it creates. PostgreSQL refuses to
run as root, so as root it runs as ``nobody`` (the way Dovecot's mail processes do);
otherwise as the current user. The system-wide cluster, if the package made one, is never
started or touched.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers import started
from tests.servers.dovecot import free_port


def postgres_bin_dir() -> Path | None:
    """The newest installed server's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def postgres_unavailable_reason() -> str | None:
    """Why PostgreSQL cannot run here, or None when it can."""
    if postgres_bin_dir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql, as root)"
    return None


@dataclass
class Postgres:
    """A running PostgreSQL cluster with one database and one password-protected role.

    ``durable=False`` turns fsync and synchronous commit off: a test's throwaway database
    needs no crash safety, and the CI machine's disk then sets no pace. Benchmarks keep the
    defaults, as a production server would.
    """

    root: Path
    durable: bool = True
    user: str = "prefect"
    database: str = "prefect"
    password: str = ""
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, driver: str = "postgresql+asyncpg") -> str:
        """SQLAlchemy URL of the database (the form Prefect's server setting takes)."""
        return (f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/"
                f"{self.database}")

    def start(self, timeout: float = 60.0) -> Postgres:
        started("PostgreSQL", "postgres")
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(postgres_unavailable_reason())
        self.password = self.password or secrets.token_hex(12)
        self.root.mkdir(parents=True, exist_ok=True)
        as_user = _unprivileged_user()
        os.chmod(self.root, 0o755)  # the mkdtemp folder is 0700; its owner may differ
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if as_user is not None:
            os.chown(self.root, as_user.pw_uid, as_user.pw_gid)
            os.chown(password_file, as_user.pw_uid, as_user.pw_gid)
        self._run(as_user, bin_dir / "initdb", "-D", str(self.data), "-U", self.user,
                  "--auth=scram-sha-256", f"--pwfile={password_file}", "-E", "UTF8",
                  "--no-instructions")
        password_file.unlink()
        self.port = free_port()
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"port={self.port}",
                   "-c", f"unix_socket_directories={self.root}", "-c", "max_connections=200"]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off"]
        self.process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(self.data), *options],
            stdin=subprocess.DEVNULL,
            stdout=open(self.log_file, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **_as(as_user),
        )
        self._wait_ready(bin_dir, timeout)
        self._run(as_user, bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", self.user, self.database, env={"PGPASSWORD": self.password})
        return self

    def _run(self, as_user, program: Path, *args: str, env: dict | None = None) -> None:
        done = subprocess.run([str(program), *args], capture_output=True, text=True,
                              cwd=self.root, env={**os.environ, **(env or {})}, timeout=120,
                              **_as(as_user))
        if done.returncode != 0:
            raise RuntimeError(f"{program.name} failed: {done.stdout}{done.stderr}")

    def _wait_ready(self, bin_dir: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.diagnostics()}")
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True)
            if ready.returncode == 0:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"postgres did not become ready: {self.diagnostics()}")

    def diagnostics(self) -> str:
        if not self.log_file.exists():
            return "(no postgres log)"
        return self.log_file.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back, disconnect, stop), SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _unprivileged_user() -> pwd.struct_passwd | None:
    """``nobody`` when we are root (PostgreSQL refuses root), else None (ourselves)."""
    return pwd.getpwnam("nobody") if os.geteuid() == 0 else None


def _as(user: pwd.struct_passwd | None) -> dict:
    return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid,
                                    "extra_groups": []}


def start_postgres(durable: bool = True) -> Postgres:
    """Start a cluster in a fresh temporary folder; ``stop()`` it and remove ``root`` after."""
    return Postgres(root=Path(tempfile.mkdtemp(prefix="pop3mail-postgres-")),
                    durable=durable).start()


def remove(server: Postgres) -> None:
    server.stop()
    shutil.rmtree(server.root, ignore_errors=True)
