"""What an event per message costs: the run that emits them, and the small run after it.

One Dovecot mailbox of 1,000 x 4 KB, received by the ``receive-all-mail`` flow with the
block's "An event per message" on and off, alternately, against one temporary Prefect
server (``prefect_test_harness``: SQLite, the default local server). After each big run a
run of 10 messages from another mailbox shows what the server's backlog does to the next
run. The Prefect client's retries (503 "busy" answers, and the seconds slept before trying
again) are counted from its own debug log.

Run: ``.venv/bin/python -m bench events`` (root, like every Dovecot benchmark).
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
from bench.peers_pop3mail import run_flow, save_configuration  # noqa: E402
from bench.peers_tools import Mailbox  # noqa: E402
from bench.prefect_busy import Retries, dovecot_and_prefect  # noqa: E402

MESSAGES = int(os.environ.get("POP3MAIL_BENCH_SMALL_MESSAGES", "1000"))
REPEAT = int(os.environ.get("POP3MAIL_BENCH_REPEAT", "3"))
def _configure(name: str, box: Mailbox, folder: Path, message_events: bool) -> None:
    config = save_configuration(name, box, folder)
    config.emit_message_events = message_events
    config.save(name, overwrite=True)


def main() -> None:
    with dovecot_and_prefect("events") as started:
        if started is None:
            return
        results = _measure(*started)
    _report(results)


def _measure(dovecot, top: Path, retries: Retries) -> dict[bool, dict[str, list]]:
    from prefect.events.worker import EventsWorker

    def box(count: int) -> Mailbox:
        user, password = dovecot.add_user()
        dovecot.deliver(user, *(small(i) for i in range(count)))
        return Mailbox("localhost", dovecot.pop3s_port, user, password,
                       str(dovecot.ca_file))

    big, little = box(MESSAGES), box(10)
    for events in (True, False):
        _configure(f"next-{events:d}", little, top / f"next-{events:d}", False)
    results: dict[bool, dict[str, list]] = {
        e: {"run": [], "next": [], "drain": [], "retries": []} for e in (True, False)}
    run_flow("next-0")  # warm: imports, the limit, the client
    for repetition in range(REPEAT):
        for events in (True, False):
            # A configuration of its own each time: messages get new ids, so the
            # server stores new events (a repeated id makes it drop the batch).
            name = f"events-{events:d}-{repetition}"
            _configure(name, big, top / f"big-{events}", events)
            fresh(top / f"big-{events}")
            fresh(top / f"next-{events:d}")
            start = time.perf_counter()
            assert run_flow(name).saved == MESSAGES
            after_big = time.perf_counter()
            assert run_flow(f"next-{events:d}").saved == 10
            after_next = time.perf_counter()
            EventsWorker.drain_all()  # what is still queued for the server
            drained = time.perf_counter()
            row = results[events]
            row["run"].append(after_big - start)
            row["next"].append(after_next - after_big)
            row["drain"].append(drained - after_next)
            row["retries"].append(retries.take())
            print(f"events={events}: run {row['run'][-1]:.2f} s, next "
                  f"{row['next'][-1]:.2f} s, drain {row['drain'][-1]:.2f} s, client "
                  f"retries {row['retries'][-1]}", flush=True)
    return results


def _report(results: dict[bool, dict[str, list]]) -> None:
    def median(values: list[float]) -> str:
        return f"{statistics.median(values):.3f}"

    rows = [{"an event per message": "on" if events else "off (default)",
             f"run of {MESSAGES:,} s": median(r["run"]), "next run of 10 s": median(r["next"]),
             "events still queued, s": median(r["drain"]),
             "client retries (slept)": ", ".join(r["retries"])}
            for events, r in results.items()]
    print("\n" + table(rows, list(rows[0])))
    print(f"\nmedians of {REPEAT}; load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
