"""(f) of issue #14: what the Prefect layer adds to the engine, at 10 and 1,000 messages.

One Dovecot, one temporary Prefect server (``prefect_test_harness``: the default local
server, SQLite). For each size, runs are interleaved in triples: the engine alone
(``receive_mailbox()``), the ``receive-all-mail`` flow, and the same flow with Prefect's flow
heartbeat off (see ``bench heartbeat``: its thread is joined at the flow's exit in one-second
steps). Prefect's client retries after a "busy" (503) answer, and the seconds it sleeps
first, are counted per run. The overhead is the median of each triple's flow minus its engine run, so the
machine's load shifts both alike. Every run saves every message (checked).

Run: ``.venv/bin/python -m bench overhead`` (root, like every Dovecot benchmark).
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.bench_session import fresh  # noqa: E402
from bench.common import table  # noqa: E402
from bench.peers_mail import small  # noqa: E402
from bench.peers_pop3mail import run_engine, run_flow, save_configuration  # noqa: E402
from bench.peers_tools import Mailbox  # noqa: E402
from bench.prefect_busy import Retries, dovecot_and_prefect  # noqa: E402

SIZES = [int(n) for n in os.environ.get("POP3MAIL_BENCH_OVERHEAD_SIZES", "10,1000").split(",")]
REPEAT = int(os.environ.get("POP3MAIL_BENCH_REPEAT", "5"))
TARGET = 0.5


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    with dovecot_and_prefect("overhead") as started:
        if started is None:
            return
        rows = _measure(*started)
    _report(rows)


def _measure(dovecot, top: Path, retries: Retries) -> list[dict]:
    """``retries``: the Prefect client's retries after a "busy" answer, per run."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    rows = []
    for n in SIZES:
        user, password = dovecot.add_user()
        dovecot.deliver(user, *(small(i) for i in range(n)))
        box = Mailbox("localhost", dovecot.pop3s_port, user, password,
                      str(dovecot.ca_file))
        name, out = f"overhead-{n}", top / f"out-{n}"
        config = save_configuration(name, box, out)

        def engine(name=name, config=config, n=n) -> None:
            assert run_engine(name, config).saved == n

        def flow(name=name, n=n) -> None:
            assert run_flow(name).saved == n

        def flow_without_heartbeat() -> None:
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                flow()

        fresh(out)
        flow()  # warm: imports, the block, the lock's limit
        times: dict[str, list[float]] = {"engine": [], "flow": [], "quiet": []}
        for _ in range(REPEAT):
            slept = []
            for key, run in (("engine", engine), ("flow", flow),
                             ("quiet", flow_without_heartbeat)):
                fresh(out)
                retries.take()
                times[key].append(_timed(run))
                slept.append(retries.take())
            print(f"{n}: engine {times['engine'][-1]:.2f} s, flow "
                  f"{times['flow'][-1]:.2f} s, flow without heartbeat "
                  f"{times['quiet'][-1]:.2f} s; client retries (slept) "
                  f"{', '.join(slept)}", flush=True)
        extra = [f - e for f, e in zip(times["flow"], times["engine"], strict=True)]
        quiet = [f - e for f, e in zip(times["quiet"], times["engine"], strict=True)]
        rows.append({
            "messages": f"{n:,}",
            "engine s": f"{statistics.median(times['engine']):.3f}",
            "flow s": f"{statistics.median(times['flow']):.3f}",
            "overhead s": f"{statistics.median(extra):.3f}",
            "overhead, heartbeat off s": f"{statistics.median(quiet):.3f}",
            f"under {TARGET} s": "yes" if statistics.median(extra) < TARGET else "NO",
        })
    return rows


def _report(rows: list[dict]) -> None:
    print("\n" + table(rows, list(rows[0])))
    print(f"\noverhead: median over {REPEAT} interleaved runs of (flow - engine); load "
          f"average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
