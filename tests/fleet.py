"""Production scale for tests and benchmarks: many mailboxes on a Prefect server backed by
PostgreSQL, received by deployment runs on process workers of one work pool.

``scale_stack()`` starts PostgreSQL, a ``prefect server`` on it, a process work pool and its
own Dovecot, whose log carries microsecond timestamps so that every POP3 session is an
interval (``sessions()``). ``Stack.add_mailboxes`` makes Dovecot users and saves one
configuration each; ``Stack.deploy`` deploys ``receive_from_mailboxes`` runs over lists of
them with ``prefect deploy``, as a user would; ``Stack.worker`` starts a process worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import yaml

from tests.servers.dovecot import Dovecot, start_dovecot
from tests.servers.postgres import Postgres, start_postgres
from tests.servers.prefect_server import PREFECT, PROJECT_ROOT, PrefectServer, _stop_group

POOL = "pop3mail-scale"
FAN_OUT = "prefect_pop3mail.flows.receiving:receive_from_mailboxes"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
#: Dovecot's log with microseconds, so that sessions are intervals, not just an order, and
#: the client's port in each login, so that a session is known by its TCP connection.
SESSION_LOG = ('log_timestamp = "%Y-%m-%d %H:%M:%S.%{usecs} "\n'
               "login_log_format_elements = user=<%u> method=%m rip=%r rport=%{rport} "
               "lip=%l mpid=%e %c session=<%{session}>\n")

_STAMP = r"(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}) "
_LOGIN = re.compile(_STAMP + r"pop3-login: Info: Login: user=<(?P<user>[^>]*)>.* "
                    r"rport=(?P<port>\d+),.*session=<(?P<id>[^>]+)>")
_LOGOUT = re.compile(_STAMP + r"pop3\((?P<user>[^)]*)\)<\d+><(?P<id>[^>]+)>: Info: "
                     r"Disconnected: (?P<reason>[^ ]+ [^ ]+)")


@dataclass
class Session:
    user: str
    start: float
    #: The client's TCP port.
    port: int
    end: float | None = None
    #: "Logged out" after QUIT; "Connection closed" when the client went away without it.
    reason: str = ""
    #: Dovecot's session id.
    id: str = ""


def _epoch(stamp: str) -> float:
    # Dovecot logs local time; this process shares the machine's clock and zone.
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def sessions(log: str, users: set[str] | None = None) -> list[Session]:
    """Every POP3 session in Dovecot's log (of ``users``), from its Login line to its
    Disconnected line; ``end`` None while it is still open. The two lines come from two
    processes: a session with nothing to do can be logged out before its login is logged,
    and then ends when it starts."""
    found: dict[str, Session] = {}
    gone: dict[str, tuple[float, str]] = {}  # Disconnected lines seen before their Login
    out: list[Session] = []
    for line in log.splitlines():
        if (m := _LOGIN.match(line)) and (users is None or m["user"] in users):
            session = Session(m["user"], _epoch(m["at"]), int(m["port"]), id=m["id"])
            out.append(session)
            if m["id"] in gone:
                end, session.reason = gone.pop(m["id"])
                session.end = max(end, session.start)
            else:
                found[m["id"]] = session
        elif m := _LOGOUT.match(line):
            if m["id"] in found:
                session = found.pop(m["id"])
                session.end, session.reason = _epoch(m["at"]), m["reason"]
            elif users is None or m["user"] in users:
                gone[m["id"]] = (_epoch(m["at"]), m["reason"])
    return out


def overlapping(found: list[Session]) -> list[tuple[Session, Session]]:
    """Pairs of sessions of one user that were open at the same time."""
    by_user: dict[str, list[Session]] = {}
    for s in found:
        by_user.setdefault(s.user, []).append(s)
    pairs = []
    for user_sessions in by_user.values():
        user_sessions.sort(key=lambda s: s.start)
        for before, after in zip(user_sessions, user_sessions[1:], strict=False):
            if before.end is None or after.start < before.end:
                pairs.append((before, after))
    return pairs


def peak_concurrent(found: list[Session]) -> int:
    """The most sessions open at once against the server, over all users."""
    edges = sorted([(s.start, 1) for s in found]
                   + [(s.end, -1) for s in found if s.end is not None])
    peak = now = 0
    for _at, step in edges:  # at equal times the -1 sorts first: an end frees its place
        now += step
        peak = max(peak, now)
    return peak


@dataclass
class Shard:
    """One deployment of ``receive_from_mailboxes`` over ``configurations``."""

    name: str
    configurations: list[str]
    #: Seconds between runs, counted from ``anchor``; None: no schedule (runs on demand).
    every: float | None = None
    anchor: datetime | None = None


@dataclass
class Stack:
    postgres: Postgres
    prefect: PrefectServer
    dovecot: Dovecot
    top: Path
    #: Dovecot user of each configuration, and every message delivered to it.
    users: dict[str, str] = field(default_factory=dict)
    deliveries: dict[str, list[bytes]] = field(default_factory=dict)

    def add_mailboxes(self, count: int, prefix: str, users: Sequence[str] = (),
                      **fields) -> list[str]:
        """``count`` Dovecot users (or the ``users`` given), each with a saved configuration
        that saves into its own folder under ``top``; returns the configurations' names.

        The first is saved with ``Block.asave`` (which registers the block type and schema);
        the others as the UI saves a form, one POST of the document each: Prefect 3.9's
        ``Block.save`` builds the JSON schema again for every field (about 0.8 s of CPU per
        configuration here), which would make 200 configurations take minutes."""
        from prefect_pop3mail.blocks import POP3MailConfiguration

        names = [f"{prefix}-{index:03d}" for index in range(count)]
        documents = {}
        for index, name in enumerate(names):
            if users:
                user = users[index]
                password = self.dovecot.users[user]
            else:
                user, password = self.dovecot.add_user()
            self.users[name], self.deliveries[name] = user, []
            values = dict(server="localhost", port=self.dovecot.pop3s_port,
                          security="Implicit SSL/TLS", user=user, password=password,
                          tls_ca_file=str(self.dovecot.ca_file),
                          save_directory=str(self.top / name), timeout=30)
            documents[name] = {**values, **fields}

        first = POP3MailConfiguration(**documents[names[0]])
        block_id = asyncio.run(_asave(first, names[0], self.prefect))
        saved = self.prefect.api("GET", f"/block_documents/{block_id}?include_secrets=true")
        for name in names[1:]:
            self.prefect.api("POST", "/block_documents/", {
                "name": name, "block_schema_id": saved["block_schema_id"],
                "block_type_id": saved["block_type_id"], "is_anonymous": False,
                "data": {**saved["data"], **documents[name]}})
        return names

    def deliver(self, name: str, *messages: bytes) -> None:
        self.dovecot.deliver(self.users[name], *messages)
        self.deliveries[name] += messages

    def deploy(self, shards: Sequence[Shard], folder: Path) -> dict[str, dict]:
        """Deploy the shards with ``prefect deploy`` from a prefect.yaml written to
        ``folder``; their deployments, by shard name."""
        spec = {
            "name": "pop3mail-scale",
            "prefect-version": _prefect_version(),
            "build": None,
            "push": None,
            "pull": [{"prefect.deployments.steps.set_working_directory": {
                "directory": str(PROJECT_ROOT)}}],
            "deployments": [_deployment(shard) for shard in shards],
        }
        path = folder / "prefect.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.prefect.cli("deploy", "--prefect-file", str(path), "--all", timeout=300)
        return {shard.name: self.prefect.api(
            "GET", f"/deployments/name/receive-from-mailboxes/{shard.name}")
            for shard in shards}

    @contextlib.contextmanager
    def worker(self, log_file: Path, limit: int | None = None) -> Iterator[subprocess.Popen]:
        """A process worker on the pool (at most ``limit`` flow runs at once); stopped,
        with the flow runs it started, on exit."""
        args = [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"]
        if limit is not None:
            args += ["--limit", str(limit)]
        log = open(log_file, "ab")
        process = subprocess.Popen(
            args,
            env=self.prefect.env(PREFECT_WORKER_QUERY_SECONDS="1",
                                 PREFECT_WORKER_PREFETCH_SECONDS="5"),
            cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            yield process
        finally:
            kill_worker(process, signal.SIGTERM)

    def flow_runs(self, deployment_ids: Sequence[str]) -> list[dict]:
        return self.prefect.api("POST", "/flow_runs/filter", {
            "flow_runs": {"deployment_id": {"any_": list(deployment_ids)}},
            "sort": "EXPECTED_START_TIME_ASC", "limit": 200})

    def task_runs(self, flow_run_id: str) -> list[dict]:
        """The flow run's task runs, however many (the API returns 200 at a time)."""
        found: list[dict] = []
        while True:
            page = self.prefect.api("POST", "/task_runs/filter", {
                "flow_runs": {"id": {"any_": [flow_run_id]}}, "offset": len(found),
                "limit": 200})
            found += page
            if len(page) < 200:
                return found

    def mailbox_of_task_runs(self, flow_run_ids: Sequence[str]) -> dict[str, str]:
        """The configuration each MAIL_RECEIVEALL task run received, by task run id: the
        API keeps no task parameters, but the run's progress artifact is keyed by it."""
        found: dict[str, str] = {}
        offset = 0
        while True:
            page = self.prefect.api("POST", "/artifacts/filter", {
                "artifacts": {"flow_run_id": {"any_": list(flow_run_ids)},
                              "type": {"any_": ["progress"]}},
                "offset": offset, "limit": 200})
            for artifact in page:
                key = artifact.get("key") or ""
                if artifact.get("task_run_id") and key.endswith("-progress"):
                    found[artifact["task_run_id"]] = key.removeprefix("pop3mail-") \
                        .removesuffix("-progress")
            offset += len(page)
            if len(page) < 200:
                return found

    def stop_schedules(self, deployment_ids: Sequence[str]) -> None:
        """Pause every schedule and delete the runs not started yet."""
        for deployment_id in deployment_ids:
            self.prefect.api("POST", f"/deployments/{deployment_id}/pause_deployment")
        for run in self.flow_runs(deployment_ids):
            if run["state"]["type"] == "SCHEDULED":
                self.prefect.api("DELETE", f"/flow_runs/{run['id']}")

    def sessions(self) -> list[Session]:
        return sessions(self.dovecot.log_file.read_text(errors="replace"),
                        set(self.users.values()))


async def _asave(config, name: str, prefect: PrefectServer):
    async with prefect.client() as client:
        return await config.asave(name, overwrite=True, client=client)


def _deployment(shard: Shard) -> dict:
    spec = {
        "name": shard.name,
        "entrypoint": FAN_OUT,
        "tags": ["pop3mail"],
        "work_pool": {"name": POOL, "work_queue_name": "default", "job_variables": {}},
        "parameters": {"configurations": shard.configurations},
        "schedules": [],
    }
    if shard.every is not None:
        anchor = shard.anchor or datetime.now(UTC)
        spec["schedules"] = [{"interval": shard.every, "anchor_date": anchor.isoformat(),
                              "timezone": "UTC", "active": True}]
    return spec


def _prefect_version() -> str:
    import prefect

    return prefect.__version__


def kill_worker(worker: subprocess.Popen, sig: int = signal.SIGKILL) -> list[int]:
    """Signal a worker and the flow-run processes it started (each in a session of its
    own, so the worker's process group does not reach them); their pids."""
    try:
        children = psutil.Process(worker.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if sig == signal.SIGKILL:
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)
    else:
        _stop_group(worker)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    return [c.pid for c in children]


def client_ports(pid: int, port: int) -> set[int]:
    """Local ports of process ``pid``'s established TCP connections to ``port``."""
    try:
        found = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return set()
    return {c.laddr.port for c in found if c.raddr and c.raddr.port == port
            and c.status == psutil.CONN_ESTABLISHED}


def wait_for(what: str, probe, timeout: float, diagnostics=lambda: "", every: float = 0.5):
    """Poll ``probe`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n"
                                 f"{diagnostics()}")
        time.sleep(every)


@contextlib.contextmanager
def scale_stack(ca=None, durable: bool = True,
                server_settings: dict[str, str] | None = None) -> Iterator[Stack]:
    """PostgreSQL, a Prefect server on it with the pool, block type and a Dovecot; all
    stopped and removed on exit. ``durable=False`` for tests (no fsync in PostgreSQL)."""
    top = Path(tempfile.mkdtemp(prefix="pop3mail-scale-"))
    postgres = prefect = dovecot = None
    try:
        postgres = start_postgres(durable=durable)
        prefect = PrefectServer(home=top / "prefect-home", server_env={
            "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url(),
            **(server_settings or {})})
        prefect.home.mkdir()
        prefect.start(timeout=180)
        prefect.cli("block", "register", "-m", "prefect_pop3mail.blocks")
        prefect.cli("work-pool", "create", POOL, "--type", "process", "--overwrite")
        dovecot = start_dovecot(ca=ca, extra_config=SESSION_LOG)
        (top / "mail").mkdir()
        yield Stack(postgres, prefect, dovecot, top / "mail")
    finally:
        if prefect is not None:
            prefect.stop()
        if dovecot is not None:
            dovecot.stop()
            shutil.rmtree(dovecot.root, ignore_errors=True)
        if postgres is not None:
            postgres.stop()
            shutil.rmtree(postgres.root, ignore_errors=True)
        shutil.rmtree(top, ignore_errors=True)


def utc_in(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
