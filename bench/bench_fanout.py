"""(e) of issue #14: 50 mailboxes of 100 through ``receive_from_mailboxes``, with the
engine's own share measured in the same run.

One Dovecot, one temporary Prefect server (the default local server, SQLite), 50 saved
blocks. Timed, interleaved, ``REPEAT`` times: ``receive_all_mail`` of one mailbox; the engine
alone over the 50 mailboxes on as many threads as the flow's task runner
(``MAILBOX_WORKERS``), which is the work the fan-out cannot avoid (5,000 message folders);
and ``receive_from_mailboxes`` of the 50. Prefect's client retries after a "busy" (503)
answer are counted per run, with the API calls by endpoint and the ones answered busy.

Run: ``.venv/bin/python -m bench fanout`` (root, like every Dovecot benchmark).
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import statistics  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.bench_session import fresh  # noqa: E402
from bench.common import table  # noqa: E402
from bench.peers_mail import small  # noqa: E402
from bench.peers_pop3mail import run_engine, run_flow, save_configuration  # noqa: E402
from bench.peers_tools import Mailbox  # noqa: E402
from bench.prefect_busy import Retries, api_calls, dovecot_and_prefect, summary  # noqa: E402

MAILBOXES = int(os.environ.get("POP3MAIL_BENCH_MAILBOXES", "50"))
PER_MAILBOX = int(os.environ.get("POP3MAIL_BENCH_PER_MAILBOX", "100"))
REPEAT = int(os.environ.get("POP3MAIL_BENCH_REPEAT", "3"))


def main() -> None:
    with dovecot_and_prefect("fanout") as started:
        if started is None:
            return
        with api_calls() as calls:
            times, slept, requests = _measure(*started, calls)
    _report(times, slept, requests)


def _measure(dovecot, top: Path, retries: Retries, calls) -> tuple[dict, dict, dict]:
    from prefect_pop3mail.flows import receive_from_mailboxes
    from prefect_pop3mail.flows.receiving import MAILBOX_WORKERS

    times: dict[str, list[float]] = {"one": [], "engine": [], "fanout": []}
    slept: dict[str, list[str]] = {key: [] for key in times}
    requests: dict[str, list[int]] = {key: [] for key in times}
    configs = {}
    for index in range(MAILBOXES):
        user, password = dovecot.add_user()
        dovecot.deliver(user, *(small(i) for i in range(PER_MAILBOX)))
        box = Mailbox("localhost", dovecot.pop3s_port, user, password,
                      str(dovecot.ca_file))
        name = f"fanout-{index:02d}"
        configs[name] = save_configuration(name, box, top / name)
    first = next(iter(configs))

    def empty() -> None:
        for name in configs:
            fresh(top / name)

    def one() -> int:
        return run_flow(first).saved

    def engine() -> int:
        with ThreadPoolExecutor(MAILBOX_WORKERS) as pool:
            return sum(r.saved for r in pool.map(
                lambda item: run_engine(*item), configs.items()))

    def fanout() -> int:
        return sum(map(len, receive_from_mailboxes(list(configs)).values()))

    runs = {"one": (one, PER_MAILBOX), "engine": (engine, MAILBOXES * PER_MAILBOX),
            "fanout": (fanout, MAILBOXES * PER_MAILBOX)}
    empty()
    one()  # warm
    for _ in range(REPEAT):
        for key, (run, expected) in runs.items():
            empty()
            retries.take()
            calls.take()
            start = time.perf_counter()
            saved = run()
            times[key].append(time.perf_counter() - start)
            slept[key].append(retries.take())
            made, busy = calls.take()
            requests[key].append(sum(made.values()))
            assert saved == expected, (key, saved, expected)
            if key == "fanout":
                print(f"fan-out API calls: {summary(made)}; answered busy (503) or not at all: "
                      f"{summary(busy)}", flush=True)
        print(", ".join(f"{key} {times[key][-1]:.2f} s (client retries "
                        f"{slept[key][-1]})" for key in runs), flush=True)
    return times, slept, requests


def _report(times: dict, slept: dict, requests: dict) -> None:
    from prefect_pop3mail.flows.receiving import MAILBOX_WORKERS

    median = {key: statistics.median(values) for key, values in times.items()}
    labels = {"one": "receive_all_mail, 1 mailbox",
              "engine": f"engine alone, {MAILBOXES} mailboxes on {MAILBOX_WORKERS} threads",
              "fanout": f"receive_from_mailboxes, {MAILBOXES} mailboxes"}
    rows = [{"run": labels[key], "median s": f"{median[key]:.3f}",
             "runs s": " ".join(f"{t:.2f}" for t in times[key]),
             "API calls": " ".join(map(str, requests[key])),
             "client retries (slept)": ", ".join(slept[key])} for key in times]
    print("\n" + table(rows, list(rows[0])))
    print(f"\n(e) {MAILBOXES} mailboxes / one: {median['fanout'] / median['one']:.2f}x (target "
          f"under 3x); the engine alone over the same {MAILBOXES}: "
          f"{median['engine'] / median['one']:.2f}x; Prefect's share of the fan-out: "
          f"{median['fanout'] - median['engine']:.1f} s; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
