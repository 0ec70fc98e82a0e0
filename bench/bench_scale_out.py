"""Issue #27: hundreds of mailboxes on Prefect's production stack.

PostgreSQL (Debian's, started by ``tests/servers/postgres.py``, fsync on as in production),
a ``prefect server`` on it, one process work pool with two workers (at most one flow run
each), one Dovecot with ``MAILBOXES`` mailboxes of ``PER_MAILBOX`` messages of 4 KB, and a
deployment of ``receive_from_mailboxes`` (``tests/fleet.py``, the stack the scale test uses).

Scale-out, ``REPEAT`` times, interleaved: one mailbox (one flow run), then 50 and 200
mailboxes as two flow runs, one per worker (half the mailboxes each), then the engine alone
over the same mailboxes in two processes of ``MAILBOX_WORKERS`` threads each, the work the
flow runs cannot avoid. The wall time of a fan-out is its flow runs' own (first start to
last end, Prefect's timestamps); Prefect's share is what the flow runs take beyond the
engine alone. The CPU seconds of the Prefect server, PostgreSQL, the workers with their
flow-run processes, and Dovecot are counted over each run.

Spreading, once, across a link with 50 ms each way: the peak of POP3 sessions open at once
against the one Dovecot (its log, with microseconds) when a tick starts every mailbox
together (every mailbox of a run on a thread of its own, as one deployment run per mailbox
would), as two shard runs on two workers (``MAILBOX_WORKERS`` threads each), and with the
work pool's concurrency limit at 1.

``POP3MAIL_BENCH_PROFILE=1``: py-spy (``pip install py-spy``) records the Prefect server and
the flow-run processes during one more 200-mailbox fan-out; the samples are charged to what
they served (a route or service of the server; the engine, the lock, a Prefect module... in
a flow run) and printed, the raw files kept. ``POP3MAIL_BENCH_REPEAT=0`` profiles only.

Run: ``.venv/bin/python -m bench scale-out`` (root, like every Dovecot benchmark; about 25
minutes on 2 cores). Sizes: ``POP3MAIL_BENCH_MAILBOXES`` (200), ``POP3MAIL_BENCH_PER_MAILBOX``
(100), ``POP3MAIL_BENCH_REPEAT`` (3).
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.bench_session import fresh  # noqa: E402
from bench.common import table  # noqa: E402
from bench.peers_mail import small  # noqa: E402
from prefect_pop3mail.flows.receiving import MAILBOX_WORKERS  # noqa: E402

MAILBOXES = int(os.environ.get("POP3MAIL_BENCH_MAILBOXES", "200"))
PER_MAILBOX = int(os.environ.get("POP3MAIL_BENCH_PER_MAILBOX", "100"))
REPEAT = int(os.environ.get("POP3MAIL_BENCH_REPEAT", "3"))
PROFILE = os.environ.get("POP3MAIL_BENCH_PROFILE", "") not in ("", "0")
#: One way, for the spreading measure: a mail server on another continent.
WAN_DELAY = 0.05
SIZES = sorted({1, min(50, MAILBOXES), MAILBOXES})
ROOT = Path(__file__).resolve().parent.parent

# The engine alone over a list of configurations, in a process of its own, as a flow run
# on a worker is: MAILBOX_WORKERS threads, configurations loaded before the clock starts.
ENGINE_CHILD = """
import json, os, resource, sys, time
from concurrent.futures import ThreadPoolExecutor
from bench.peers_pop3mail import run_engine
from prefect_pop3mail.blocks import POP3MailConfiguration
from prefect_pop3mail.flows.receiving import MAILBOX_WORKERS
names = json.loads(sys.argv[1])
configs = {name: POP3MailConfiguration.load(name) for name in names}
cpu0, start = os.times(), time.time()
with ThreadPoolExecutor(MAILBOX_WORKERS) as pool:
    saved = sum(r.saved for r in pool.map(lambda n: run_engine(n, configs[n]), names))
end, cpu1 = time.time(), os.times()
print(json.dumps({"start": start, "end": end, "saved": saved,
                  "cpu": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}))
"""


def main() -> None:
    from tests.servers.dovecot import dovecot_unavailable_reason
    from tests.servers.postgres import postgres_unavailable_reason

    reason = dovecot_unavailable_reason() or postgres_unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return
    from tests.fleet import scale_stack

    work = Path(tempfile.mkdtemp(prefix="pop3mail-bench-scale-out-"))
    try:
        with scale_stack(durable=True) as stack:
            bench = ScaleOut(stack, work)
            print(f"stack up: {MAILBOXES} mailboxes of {PER_MAILBOX} messages, load "
                  f"{_load()}", flush=True)
            with bench.workers():
                results = bench.scale_out() if REPEAT else {}
                spread = bench.spreading() if REPEAT else {}
                if PROFILE:
                    bench.profile()
            if results:  # before the teardown, which removes a million files
                _report(results, spread)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class ScaleOut:
    def __init__(self, stack, work: Path):
        from tests.fleet import Shard

        self.stack, self.work = stack, work
        self.names = stack.add_mailboxes(MAILBOXES, "bench")
        for name in self.names:
            stack.dovecot.deliver(stack.users[name], *(small(i) for i in range(PER_MAILBOX)))
        deployed = stack.deploy([Shard("scale-out", self.names[:1])], work)
        self.deployment = deployed["scale-out"]["id"]
        self.processes = {"server": stack.prefect.process.pid,
                          "postgres": stack.postgres.process.pid,
                          "dovecot": stack.dovecot.process.pid}

    # --- the stack's parts -----------------------------------------------------------

    def workers(self):
        import contextlib

        stack, work = self.stack, self.work

        @contextlib.contextmanager
        def both():
            with stack.worker(work / "worker-0.log", limit=1) as first, \
                    stack.worker(work / "worker-1.log", limit=1) as second:
                self.processes["workers"] = [first.pid, second.pid]
                time.sleep(5)
                yield

        return both()

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of each part, its child processes included."""
        out = {}
        for part, pids in self.processes.items():
            out[part] = sum(_cpu(pid) for pid in (pids if isinstance(pids, list) else [pids]))
        return out

    def empty(self) -> None:
        for name in self.names:
            fresh(self.stack.top / name)

    # --- one measured run -----------------------------------------------------------

    def flow_runs(self, shards: list[list[str]]) -> dict:
        """Flow runs of the deployment over ``shards`` (one each), created together;
        waits for them and returns their times."""
        from tests.fleet import TERMINAL, wait_for

        api = self.stack.prefect.api
        before = self.cpu()
        created = time.time()
        runs = [api("POST", f"/deployments/{self.deployment}/create_flow_run",
                    {"parameters": {"configurations": shard}, "state": {"type": "SCHEDULED"}})
                for shard in shards]

        def finished() -> list[dict] | None:
            now = [api("GET", f"/flow_runs/{r['id']}") for r in runs]
            return now if all(r["state"]["type"] in TERMINAL for r in now) else None

        done = wait_for("the flow runs", finished, 3600, every=0.2)
        seen_done = time.time()
        failed = [r["state"] for r in done if r["state"]["type"] != "COMPLETED"]
        assert not failed, failed
        starts = [_epoch(r["start_time"]) for r in done]
        ends = [_epoch(r["end_time"]) for r in done]
        used = self.cpu()
        return {"wall": max(ends) - min(starts), "end_to_end": seen_done - created,
                "start": min(starts), "end": max(ends),
                "cpu": {part: used[part] - before[part] for part in used},
                "runs": [r["id"] for r in done]}

    def engine(self, shards: list[list[str]]) -> dict:
        """The engine alone over ``shards``: one process per shard, at once."""
        env = self.stack.prefect.env(PYTHONPATH=str(ROOT))
        children = [subprocess.Popen([sys.executable, "-c", ENGINE_CHILD, json.dumps(shard)],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
                    for shard in shards]
        results = []
        for child in children:
            out, _ = child.communicate(timeout=3600)
            assert child.returncode == 0, out
            results.append(json.loads(out.strip().splitlines()[-1]))
        saved = sum(r["saved"] for r in results)
        expected = sum(map(len, shards)) * PER_MAILBOX
        assert saved == expected, (saved, expected)
        return {"wall": max(r["end"] for r in results) - min(r["start"] for r in results),
                "cpu": sum(r["cpu"] for r in results)}

    def saved(self, names: list[str]) -> int:
        return sum(1 for name in names for _ in (self.stack.top / name).glob("*/message.eml"))

    # --- the measurements -----------------------------------------------------------

    def scale_out(self) -> dict:
        results: dict[int, dict[str, list]] = {n: {"flow": [], "engine": []} for n in SIZES}
        self.empty()
        self.flow_runs([self.names[:1]])  # warm: the first flow run of a fresh server
        for repetition in range(REPEAT):
            for n in SIZES:
                names = self.names[:n]
                shards = [names] if n == 1 else [names[: n // 2], names[n // 2:]]
                self.empty()
                flow = self.flow_runs(shards)
                assert self.saved(names) == n * PER_MAILBOX, (n, self.saved(names))
                self.empty()
                engine = self.engine(shards)
                flow["load"] = _load()
                results[n]["flow"].append(flow)
                results[n]["engine"].append(engine)
                print(f"[{repetition + 1}/{REPEAT}] {n} mailbox(es): flow runs "
                      f"{flow['wall']:.2f} s (end to end {flow['end_to_end']:.2f} s), engine "
                      f"alone {engine['wall']:.2f} s; CPU s: "
                      + ", ".join(f"{k} {v:.1f}" for k, v in flow["cpu"].items())
                      + f", engine alone {engine['cpu']:.1f}; load {flow['load']}", flush=True)
        return results

    def spreading(self) -> dict:
        """Peak sessions at once for one tick of every mailbox, three ways, against the
        mail server across a wide-area link (``WAN_DELAY`` each way, through
        tests/servers/latency_proxy.py): on loopback a session of 100 small messages is
        shorter than Prefect's own work per mailbox, which spreads the sessions by itself."""
        from tests.servers.latency_proxy import LatencyProxy

        stack = self.stack
        out = {}
        with LatencyProxy("127.0.0.1", stack.dovecot.pop3s_port, delay=WAN_DELAY) as proxy:
            names = stack.add_mailboxes(len(self.names), "wan", port=proxy.port,
                                        users=[stack.users[n] for n in self.names])
            halves = [names[: len(names) // 2], names[len(names) // 2:]]
            for name in names:
                fresh(stack.top / name)
            out["every mailbox at once (a thread per mailbox, 2 runs)"] = self.peak(
                lambda: self.all_at_once(halves))
            for name in names:
                fresh(stack.top / name)
            out[f"2 shard runs on 2 workers, {MAILBOX_WORKERS} threads each"] = self.peak(
                lambda: self.flow_runs(halves))
            for name in names:
                fresh(stack.top / name)
            stack.prefect.cli("work-pool", "set-concurrency-limit", _pool(), "1")
            try:
                out["the same, work pool concurrency limit 1"] = self.peak(
                    lambda: self.flow_runs(halves))
            finally:
                stack.prefect.cli("work-pool", "clear-concurrency-limit", _pool())
        return out

    def all_at_once(self, shards: list[list[str]]) -> dict:
        """Every mailbox of the tick on a thread of its own: the sessions that one
        deployment run per mailbox would open at the same second, without a process
        per run (200 Python processes would not fit this machine)."""
        env = self.stack.prefect.env(PYTHONPATH=str(ROOT))
        code = ("import json, sys\n"
                "from prefect.task_runners import ThreadPoolTaskRunner\n"
                "from prefect_pop3mail.flows import receive_from_mailboxes\n"
                "names = json.loads(sys.argv[1])\n"
                "flow = receive_from_mailboxes.with_options(\n"
                "    task_runner=ThreadPoolTaskRunner(max_workers=len(names)))\n"
                "print(sum(map(len, flow(names).values())))\n")
        start = time.time()
        children = [subprocess.Popen([sys.executable, "-c", code, json.dumps(shard)], cwd=ROOT,
                                     env=env, stdout=subprocess.PIPE, text=True)
                    for shard in shards]
        saved = 0
        for child in children:
            out, _ = child.communicate(timeout=3600)
            assert child.returncode == 0, out
            saved += int(out.strip().splitlines()[-1])
        assert saved == sum(map(len, shards)) * PER_MAILBOX, saved
        return {"start": start, "end": time.time(), "wall": time.time() - start}

    def peak(self, run) -> dict:
        from tests.fleet import peak_concurrent

        result = run()
        time.sleep(1)  # the last Disconnected lines
        window = [s for s in self.stack.sessions()
                  if result["start"] <= s.start <= result["end"] + 1]
        return {"peak": peak_concurrent(window), "sessions": len(window),
                "wall": result["wall"]}

    def profile(self) -> None:
        """py-spy on the server and on both flow-run processes of one 200 fan-out."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not os.path.exists(spy):
            print("profile skipped: py-spy is not installed (pip install py-spy)")
            return
        names = self.names
        shards = [names[: len(names) // 2], names[len(names) // 2:]]
        self.empty()
        out = Path(tempfile.mkdtemp(prefix="pop3mail-scale-out-profile-"))  # kept
        recorders = [_record(spy, self.processes["server"], out / "server.txt")]
        seen: set[int] = set()

        def attach() -> None:  # flow-run processes appear as the workers' children
            import psutil

            for worker in self.processes["workers"]:
                for child in psutil.Process(worker).children(recursive=True):
                    if child.pid not in seen and "prefect.engine" in " ".join(child.cmdline()):
                        seen.add(child.pid)
                        recorders.append(_record(spy, child.pid, out / f"flow-{child.pid}.txt"))

        import threading

        stop = threading.Event()
        watcher = threading.Thread(target=lambda: [attach() for _ in iter(
            lambda: stop.wait(0.2), True)], daemon=True)
        watcher.start()
        try:
            result = self.flow_runs(shards)
        finally:
            stop.set()
            watcher.join(5)
            for recorder in recorders:
                recorder.send_signal(signal.SIGINT)
            for recorder in recorders:
                recorder.wait(60)
        print(f"\nprofiled 200 fan-out: {result['wall']:.1f} s; CPU s "
              + ", ".join(f"{k} {v:.1f}" for k, v in result["cpu"].items()))
        for path in sorted(out.glob("*.txt")):
            print(f"\n--- {path.stem} (py-spy raw output in {out})")
            print(_summary(path, server=path.stem == "server"))


def _record(spy: str, pid: int, path: Path) -> subprocess.Popen:
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "50", "--format",
                             "raw", "--output", str(path), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


#: Where a sample of a flow-run process is charged: the first of these met from the
#: innermost frame out (so an HTTP call made by the lock is the lock's).
_FLOW_PARTS = (("tasks/pop3/", "engine"), ("tasks/lock.py", "pop3mail lock"),
               ("tasks/events.py", "pop3mail events"), ("tasks/artifacts.py", "pop3mail artifacts"),
               ("tasks/prefect_api.py", "pop3mail Prefect calls"),
               ("tasks/", "pop3mail task"), ("blocks/", "pop3mail block"),
               ("prefect/blocks/", "Prefect blocks"), ("prefect/artifacts", "Prefect artifacts"),
               ("prefect/events/", "Prefect events"), ("prefect/logging/", "Prefect logging"),
               ("prefect/utilities/collections", "Prefect visit_collection"),
               ("prefect/task_engine", "Prefect task engine"),
               ("prefect/task_runners", "Prefect task runner"),
               ("prefect/flow_engine", "Prefect flow engine"), ("prefect/", "Prefect other"))
#: Where a sample of the server is charged: the first of these patterns found anywhere in
#: its stack, by module and function (the route, or the service's handler).
_SERVER_PARTS = (("prefect/server/api/", "API"), ("prefect/server/services/", "service"),
                 ("prefect/server/events/services/", "events service"),
                 ("prefect/server/events/triggers", "triggers"),
                 ("prefect/server/events/", "events"), ("asyncpg/", "asyncpg, no route on the stack"),
                 ("asyncio/", "asyncio, no route on the stack"),
                 ("prefect/server/", "server other"))
#: Frames where a thread waits rather than works.
_IDLE = ("Condition.wait", "EpollSelector.select", "_worker (concurrent/futures/thread.py)",
         "Event.wait", "Thread.join")


def _summary(path: Path, server: bool, top: int = 14) -> str:
    """Samples by part: for a flow run, what each sample was doing on behalf of (with the
    function that part called), for the server, which route or service it served."""
    import re

    parts: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        frames, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        stack = [re.sub(r":\d+\)$", ")", f) for f in frames.split(";")]
        if any(stack[-1].startswith(w) or w in stack[-1] for w in _IDLE):
            idle += n
            continue
        total += n
        parts[_part(stack, server)] += n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples working ({idle} waiting left out)"]
    lines += [f"  {n / total:6.1%}  {part}" for part, n in parts.most_common(top)]
    return "\n".join(lines)


def _part(stack: list[str], server: bool) -> str:
    if server:  # the route or service, wherever it is on the stack
        for pattern, name in _SERVER_PARTS:
            for frame in stack:
                if pattern in frame:
                    return f"{name}: {_where(frame)}" if "no route" not in name else name
    else:  # what the work was for: the innermost part that is ours or Prefect's
        for frame in reversed(stack):
            for pattern, name in _FLOW_PARTS:
                if pattern in frame:
                    return name if name == "engine" else f"{name}: {_where(frame)}"
    return "other (interpreter, threads)"


def _where(frame: str) -> str:
    """``function (path/module.py)`` as ``module.function``."""
    function, _, path = frame.partition(" (")
    return f"{Path(path.rstrip(')')).stem}.{function}"


def _pool() -> str:
    from tests.fleet import POOL

    return POOL


def _cpu(pid: int) -> float:
    import psutil

    try:
        process = psutil.Process(pid)
        processes = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _report(results: dict, spread: dict) -> None:
    one = statistics.median(r["wall"] for r in results[1]["flow"])
    rows = []
    for n, measured in results.items():
        flow = statistics.median(r["wall"] for r in measured["flow"])
        end_to_end = statistics.median(r["end_to_end"] for r in measured["flow"])
        engine = statistics.median(r["wall"] for r in measured["engine"])
        cpu = {part: statistics.median(r["cpu"][part] for r in measured["flow"])
               for part in measured["flow"][0]["cpu"]}
        engine_cpu = statistics.median(r["cpu"] for r in measured["engine"])
        rows.append({
            "mailboxes": n,
            "flow runs s (median; runs)": f"{flow:.2f}; " + " ".join(
                f"{r['wall']:.1f}" for r in measured["flow"]),
            "end to end s": f"{end_to_end:.2f}",
            "engine alone s": f"{engine:.2f}",
            "per mailbox s: wall / engine / Prefect":
                f"{flow / n:.3f} / {engine / n:.3f} / {(flow - engine) / n:.3f}",
            "Prefect's share": f"{(flow - engine) / flow:.0%}",
            "x one mailbox": f"{flow / one:.1f}x",
            "CPU s: workers+runs / server / postgres / dovecot / engine alone":
                f"{cpu['workers']:.1f} / {cpu['server']:.1f} / {cpu['postgres']:.1f} / "
                f"{cpu['dovecot']:.1f} / {engine_cpu:.1f}",
            "loads": ", ".join(r["load"].split()[0] for r in measured["flow"]),
        })
    print("\n" + table(rows, list(rows[0])))
    big = max(results)
    minutes = statistics.median(r["wall"] for r in results[big]["flow"]) / 60
    print(f"\n{big} mailboxes of {PER_MAILBOX} x 4 KB on 2 workers: "
          f"{big / minutes:.0f} mailboxes per minute ({big * PER_MAILBOX / minutes / 60:.0f} "
          "messages per second)")
    rows = [{"one tick of every mailbox": label, "peak sessions at once": r["peak"],
             "sessions": r["sessions"], "wall s": f"{r['wall']:.1f}"}
            for label, r in spread.items()]
    print("\n" + table(rows, list(rows[0])))
    print(f"\nload average at the end: {_load()}")


if __name__ == "__main__":
    main()
