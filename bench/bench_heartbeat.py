"""Upstream reproduction: an empty Prefect flow waits for its heartbeat thread at exit.

Prefect 3.9.1 (the newest release on 2026-12-01) starts a heartbeat thread per flow run
(``flows.heartbeat_frequency``, default 180 s) that sleeps in one-second steps
(``flow_engine._send_heartbeats``: ``for _ in range(heartbeat_seconds): ... time.sleep(1)``),
and the flow's exit joins it (``thread.join(timeout=2)``), so every flow run ends up to
1 s late, 0.5 s on average. The same empty flow is timed with the default setting and with
the heartbeat off (``heartbeat_frequency=None``, which only code can set: the environment
variable must be an integer >= 30). The fix upstream: ``if stop_event.wait(heartbeat_seconds):
return`` instead of the sleep loop.

Run: ``.venv/bin/python -m bench heartbeat`` (no Dovecot, no root).
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import statistics  # noqa: E402
import time  # noqa: E402

from bench.common import table  # noqa: E402

REPEAT = int(os.environ.get("POP3MAIL_BENCH_REPEAT", "9"))


def main() -> None:
    import prefect
    from prefect import flow
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    @flow
    def empty() -> None:
        time.sleep(0.05)  # a little work, so the flow's end is not aligned with the thread

    def timed() -> float:
        start = time.perf_counter()
        empty()
        return time.perf_counter() - start

    rows = []
    with prefect_test_harness(server_startup_timeout=120):
        timed()  # warm
        runs: dict[str, list[float]] = {"default (180 s)": [], "off (None)": []}
        for _ in range(REPEAT):  # interleaved, so the machine's load hits both alike
            runs["default (180 s)"].append(timed())
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                runs["off (None)"].append(timed())
    for label, times in runs.items():
        rows.append({"heartbeat": label, "median s": f"{statistics.median(times):.3f}",
                     "runs s": " ".join(f"{t:.2f}" for t in times)})
    print(table(rows, ["heartbeat", "median s", "runs s"]))
    print(f"\nPrefect {prefect.__version__}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
