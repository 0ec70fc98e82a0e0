"""Run in a fresh interpreter: receive one mailbox and report this process's peak RSS growth.

``python -c "from bench.peers_rss_child import main; main()" MODE HOST PORT USER PASSWORD
CA_FILE OUT``. MODE ``engine`` is pop3mail's engine and store (original, text, attachments
saved); ``poplib+email`` is what a script on the standard library does for the same work:
RETR into memory, parse with the email package, write the original and every part. Prints
one JSON object. Imports happen before the baseline, so only the work counts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def high_water_kb() -> int:
    # VmHWM is this process's own peak; ru_maxrss could carry the parent's over exec.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def engine(host: str, port: int, user: str, password: str, ca_file: str, out: Path) -> int:
    from pydantic import SecretStr

    from prefect_pop3mail.tasks.pop3.models import (
        ConnectionSettings,
        ReceiveOptions,
        SaveOptions,
        Security,
    )
    from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox

    settings = ConnectionSettings(host=host, port=port, security=Security.IMPLICIT, user=user,
                                  password=SecretStr(password), tls_ca_file=ca_file, timeout=300)
    save = SaveOptions(directory=out, save_text=True, save_attachments=True, save_original=True)

    def work() -> int:
        return len(receive_mailbox("bench-rss", settings, save, ReceiveOptions()).received)
    return _measured(work)


def poplib_email(host: str, port: int, user: str, password: str, ca_file: str,
                 out: Path) -> int:
    import email
    import email.policy
    import poplib
    import ssl

    def work() -> int:
        client = poplib.POP3_SSL(host, port, context=ssl.create_default_context(cafile=ca_file))
        client.user(user)
        client.pass_(password)
        count = client.stat()[0]
        for number in range(1, count + 1):
            _reply, lines, _octets = client.retr(number)
            raw = b"\r\n".join(lines) + b"\r\n"
            (out / f"{number}.eml").write_bytes(raw)
            parsed = email.message_from_bytes(raw, policy=email.policy.default)
            for index, part in enumerate(parsed.walk()):
                if not part.is_multipart():
                    (out / f"{number}-{index}.part").write_bytes(part.get_payload(decode=True))
        client.quit()
        return count
    return _measured(work)


_result: dict = {}


def _measured(work) -> int:
    _result["baseline_kb"] = high_water_kb()
    start = time.perf_counter()
    count = work()
    _result["seconds"] = time.perf_counter() - start
    _result["peak_kb"] = high_water_kb()
    return count


def main() -> None:
    mode, host, port, user, password, ca_file, out = sys.argv[1:]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    receive = {"engine": engine, "poplib+email": poplib_email}[mode]
    saved = receive(host, int(port), user, password, ca_file, out_dir)
    print(json.dumps(dict(_result, saved=saved)))
