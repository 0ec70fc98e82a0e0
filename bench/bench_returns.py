"""Upstream reproduction: a Prefect flow walks every field of the models it returns.

At a flow's end ``FlowRunEngine.handle_success`` calls ``resolve_futures_to_states`` on the
return value, which ``visit_collection``s into every item of a list and every field of every
pydantic model, looking for futures, although a list of plain models holds none. A flow that
returns 1,000 results of a pop3mail run's shape (26 fields, a nested list) pays for it at
its end. Timed here, interleaved, with the heartbeat off (see ``bench heartbeat``): the same
flow returning the models and returning nothing, and the walk alone. The fix upstream could
skip the walk when the flow run created no future, or not descend into models that hold
only plain values.

Run: ``.venv/bin/python -m bench returns`` (no Dovecot, no root).
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import statistics  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

import pydantic  # noqa: E402

from bench.common import table  # noqa: E402

REPEAT = int(os.environ.get("POP3MAIL_BENCH_REPEAT", "9"))
RESULTS = int(os.environ.get("POP3MAIL_BENCH_RESULTS", "1000"))


class Part(pydantic.BaseModel):
    filename: str
    path: Path
    size: int
    sha256: str


class Result(pydantic.BaseModel):
    """Shaped like one received message: 26 fields of plain values, two parts."""

    id: str
    uidl: str
    message_id: str | None
    sender: str
    recipients: list[str]
    subject: str
    date: datetime | None
    size: int
    sha256: str
    folder: Path | None
    original_path: Path | None
    text_path: Path | None
    text_sha256: str | None
    html_path: Path | None
    html_sha256: str | None
    parts: list[Part]
    folder_url: str | None
    original_url: str | None
    text_url: str | None
    html_url: str | None
    decrypted: bool
    signature: str | None
    deleted: bool
    quarantined: bool
    warnings: list[str]
    configuration: str


def results(count: int) -> list[Result]:
    folder = Path("/srv/mail/2026-12-02")
    return [Result(
        id=f"id-{i}", uidl=f"{i:08x}", message_id=f"<{i}@example.org>", sender="a@example.org",
        recipients=["b@example.org"], subject=f"message {i}", date=datetime.now(UTC),
        size=4096, sha256="0" * 64, folder=folder / str(i), original_path=folder / f"{i}.eml",
        text_path=folder / f"{i}.txt", text_sha256="1" * 64, html_path=None, html_sha256=None,
        parts=[Part(filename=f"{i}-{n}.pdf", path=folder / f"{i}-{n}.pdf", size=100,
                    sha256="2" * 64) for n in range(2)],
        folder_url=None, original_url=None, text_url=None, html_url=None, decrypted=False,
        signature=None, deleted=True, quarantined=False, warnings=[], configuration="mailbox",
    ) for i in range(count)]


def main() -> None:
    import prefect
    from prefect import flow
    from prefect.futures import resolve_futures_to_states
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    made = results(RESULTS)

    @flow
    def returning(value: bool) -> list[Result] | None:
        return made if value else None

    def timed(value: bool) -> float:
        start = time.perf_counter()
        returning(value)
        return time.perf_counter() - start

    def walk() -> float:
        start = time.perf_counter()
        resolve_futures_to_states(made)
        return time.perf_counter() - start

    runs: dict[str, list[float]] = {f"flow returning {RESULTS:,} models": [],
                                    "flow returning None": [],
                                    "resolve_futures_to_states alone": []}
    with prefect_test_harness(server_startup_timeout=120), \
            temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        timed(False)  # warm
        for _ in range(REPEAT):  # interleaved, so the machine's load hits each alike
            for label, run in zip(runs, (lambda: timed(True), lambda: timed(False), walk), strict=True):
                runs[label].append(run())
    rows = [{"run": label, "median s": f"{statistics.median(times):.3f}",
             "runs s": " ".join(f"{t:.2f}" for t in times)} for label, times in runs.items()]
    print(table(rows, ["run", "median s", "runs s"]))
    medians = [statistics.median(times) for times in runs.values()]
    print(f"\nreturning the models costs {medians[0] - medians[1]:.3f} s at the flow's end; "
          f"the walk alone {medians[2]:.3f} s; Prefect {prefect.__version__}; "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
