"""(h) of issue #14: the engine's CPU per small message, this tree against a baseline tree.

One Dovecot mailbox of ``POP3MAIL_BENCH_CPU_MESSAGES`` (500) 4 KB messages (a text and an
attachment, as in ``bench peers``), received over implicit TLS on loopback by the engine
alone (``receive_mailbox``, kept on the server) into an emptied folder. Each run is a fresh
interpreter that reports its own CPU (``os.times``, user and kernel apart) around the
receive call only, imports done. The baseline is the same engine at another commit
(``POP3MAIL_BENCH_BASELINE``, default the tree before #14's CPU work), checked out into a
temporary git worktree and imported in its place; the two alternate run by run, so the
machine's noise falls on both. ``POP3MAIL_BENCH_PROFILE=30`` prints this tree's CPU profile.

Run: ``.venv/bin/python -m bench cpu`` (root, like every Dovecot benchmark).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.bench_session import fresh
from bench.common import dovecot_and_folder, table
from bench.peers_mail import small

MESSAGES = int(os.environ.get("POP3MAIL_BENCH_CPU_MESSAGES", "500"))
REPEAT = int(os.environ.get("POP3MAIL_BENCH_REPEAT", "5"))
BASELINE = os.environ.get("POP3MAIL_BENCH_BASELINE", "364b636")
PROFILE = [p for p in [os.environ.get("POP3MAIL_BENCH_PROFILE", "")] if p]
ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, os, sys, time
from pathlib import Path
from pydantic import SecretStr
from prefect_pop3mail.tasks.pop3.models import (ConnectionSettings, ReceiveOptions,
                                                SaveOptions, Security)
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox

host, port, user, password, ca, out = sys.argv[1:7]
settings = ConnectionSettings(host=host, port=int(port), security=Security.IMPLICIT,
                              user=user, password=SecretStr(password), tls_ca_file=ca,
                              timeout=300)
save = SaveOptions(directory=Path(out), save_text=True, save_attachments=True,
                   save_original=True)
profile = None
if len(sys.argv) > 7:
    import cProfile
    profile = cProfile.Profile(time.process_time)
    profile.enable()
before, start = os.times(), time.perf_counter()
report = receive_mailbox("bench-cpu", settings, save, ReceiveOptions(new_messages_only=False))
after, seconds = os.times(), time.perf_counter() - start
if profile:
    import pstats
    profile.disable()
    pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(int(sys.argv[7]))
print(json.dumps({"user": after.user - before.user, "system": after.system - before.system,
                  "seconds": seconds, "received": len(report.received),
                  "engine": sys.modules[receive_mailbox.__module__].__file__}))
"""


def _baseline_path(top: Path) -> Path:
    """An import path where ``prefect_pop3mail`` is the engine at BASELINE."""
    tree, shim = top / "tree", top / "shim" / "prefect_pop3mail"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(tree),
                    BASELINE], check=True, capture_output=True)
    shim.mkdir(parents=True)
    for name in ("tasks", "blocks", "flows"):
        (shim / name).symlink_to(tree / name)
    return shim.parent


def _run(dovecot, user: str, password: str, out: Path, pythonpath: str | None,
         profile: list[str]) -> dict:
    fresh(out)  # renamed aside, not deleted: see bench_session.fresh
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, "localhost", str(dovecot.pop3s_port), user, password,
         str(dovecot.ca_file), str(out), *profile],
        capture_output=True, text=True, check=True, cwd=tempfile.gettempdir(), env=env)
    if profile:
        print(done.stderr, flush=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["received"] == MESSAGES, result
    return result


def main() -> None:
    with dovecot_and_folder("cpu") as started:
        if started is None:
            return
        dovecot, top = started
        try:
            runs = _measure(dovecot, top)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(top / "tree")], capture_output=True)
    _report(runs)


def _measure(dovecot, top: Path) -> dict[str, list[dict]]:
    baseline = str(_baseline_path(top))
    user, password = dovecot.add_user()
    dovecot.deliver(user, *(small(i) for i in range(MESSAGES)))
    runs: dict[str, list[dict]] = {"baseline": [], "now": []}
    _run(dovecot, user, password, top / "out", None, [])  # Dovecot's first indexing
    for _ in range(REPEAT):
        for name, path in (("baseline", baseline), ("now", None)):
            result = _run(dovecot, user, password, top / "out", path, [])
            assert (("/shim/" in result["engine"]) == (name == "baseline")), result
            runs[name].append(result)
            print(f"{name}: {1000 * result['user'] / MESSAGES:.3f} ms user, "
                  f"{1000 * result['system'] / MESSAGES:.3f} ms kernel per message, "
                  f"{result['seconds']:.2f} s", flush=True)
    if PROFILE:
        _run(dovecot, user, password, top / "out", None, PROFILE)
    return runs


def _report(runs: dict[str, list[dict]]) -> None:
    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    rows = []
    for name in ("baseline", "now"):
        label = f"baseline ({BASELINE})" if name == "baseline" else "this tree"
        rows.append({
            "engine": label,
            "user ms/msg": f"{1000 * median(name, 'user') / MESSAGES:.3f}",
            "kernel ms/msg": f"{1000 * median(name, 'system') / MESSAGES:.3f}",
            "wall s": f"{median(name, 'seconds'):.3f}",
        })
    print(f"\n{MESSAGES} x 4 KB, implicit TLS on loopback, medians of {REPEAT}\n")
    print(table(rows, ["engine", "user ms/msg", "kernel ms/msg", "wall s"]))
    for key in ("user", "system"):
        print(f"{key}: this tree / baseline = {median('now', key) / median('baseline', key):.2f}")
