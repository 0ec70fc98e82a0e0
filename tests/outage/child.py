"""A run of receive-all-mail (or a bare hold of the mailbox lock) in a process of its own,
against the real Prefect server of tests/test_prefect_outages.py, which restarts, kills or
slows that server under it.

Usage: python -m tests.outage.child save NAME FIELDS_JSON
       python -m tests.outage.child run NAME
       python -m tests.outage.child hold NAME     (holds the lock until a line on stdin)

The last line of ``run`` is "RESULT " and a JSON object: the flow run's state type and
message, and how many messages it returned; "waiting" is said when the mailbox is first
found held. Test hooks, from the environment:
  POP3MAIL_TEST_LOCK_TIMINGS   "RENEW_EVERY=2,GRACE=6": the lock's timings, shortened
  POP3MAIL_TEST_MESSAGE_DELAY  seconds to wait after each message (a slow disk)
  POP3MAIL_TEST_REQUESTS       a file to write every HTTP request to (thread, time, path),
                               and each POP3 session's thread and open and close times
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def say(line: str) -> None:
    """A line for the test on stdout (print() inside a flow goes to its log instead)."""
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()


def lock_timings() -> None:
    """Shorter waits, and "waiting" on stdout when the mailbox is first found held."""
    from prefect_pop3mail.tasks import lock

    for item in filter(None, os.environ.get("POP3MAIL_TEST_LOCK_TIMINGS", "").split(",")):
        key, value = item.split("=")
        assert hasattr(lock, key), key
        setattr(lock, key, float(value))
    look = lock._OrphanWatch.look

    def looked(self):
        if not getattr(self, "_test_said", False):
            self._test_said = True
            say("waiting")
        return look(self)

    lock._OrphanWatch.look = looked


def message_delay() -> None:
    delay = float(os.environ.get("POP3MAIL_TEST_MESSAGE_DELAY", "0"))
    if not delay:
        return
    from prefect_pop3mail.tasks import activities

    between = activities._BetweenMessages.__call__

    def slowly(self, done, total):
        time.sleep(delay)
        return between(self, done, total)

    activities._BetweenMessages.__call__ = slowly


def record_requests() -> None:
    path = os.environ.get("POP3MAIL_TEST_REQUESTS")
    if not path:
        return
    import atexit

    import httpx

    from prefect_pop3mail.tasks.pop3.protocol import session

    seen: dict[str, list] = {"requests": [], "sessions": []}
    lock = threading.Lock()

    def note(kind: str, item) -> None:
        with lock:
            seen[kind].append(item)

    send, asend = httpx.Client.send, httpx.AsyncClient.send

    def recorded(self, request, *args, **kwargs):
        note("requests", [threading.get_ident(), time.monotonic(), request.url.path])
        return send(self, request, *args, **kwargs)

    async def arecorded(self, request, *args, **kwargs):
        note("requests", [threading.get_ident(), time.monotonic(), request.url.path])
        return await asend(self, request, *args, **kwargs)

    httpx.Client.send, httpx.AsyncClient.send = recorded, arecorded
    connect, close = session.POP3Session.connect, session.POP3Session.close

    def opened(self, *args, **kwargs):
        self._test_opened = time.monotonic()
        return connect(self, *args, **kwargs)

    def closed(self, *args, **kwargs):
        if getattr(self, "_test_opened", None) is not None:
            note("sessions", [threading.get_ident(), self._test_opened, time.monotonic()])
            self._test_opened = None
        return close(self, *args, **kwargs)

    session.POP3Session.connect, session.POP3Session.close = opened, closed

    def dump() -> None:
        with open(path, "w") as f:
            json.dump(seen, f)

    atexit.register(dump)


def save(name: str, fields: dict) -> None:
    from prefect_pop3mail.blocks import POP3MailConfiguration

    POP3MailConfiguration(**fields).save(name, overwrite=True)
    say("saved")


def run(name: str) -> None:
    lock_timings()
    message_delay()
    record_requests()
    from prefect_pop3mail.flows import receive_all_mail

    result: dict = {}
    try:
        state = receive_all_mail(name, return_state=True)
        result = {"state": state.type.value, "message": state.message or ""}
        if state.is_completed():
            result["received"] = len(state.result())
    except BaseException as exc:  # the flow itself could not finish (the API is gone)
        result = {"state": "EXCEPTION", "message": f"{type(exc).__name__}: {exc}"}
    say("RESULT " + json.dumps(result))


def hold(name: str) -> None:
    lock_timings()
    from prefect_pop3mail.tasks.lock import mailbox_lock

    with mailbox_lock(name, timeout_seconds=300) as held:
        say(f"held {held.lease}")
        sys.stdin.readline()  # until the test says so
        say(f"leaving recovered={held.recovered} lost={held.lost}")
    say("released")


def main() -> None:
    command, name = sys.argv[1], sys.argv[2]
    if command == "save":
        save(name, json.loads(sys.argv[3]))
    elif command == "run":
        run(name)
    elif command == "hold":
        hold(name)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
