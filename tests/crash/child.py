"""Runs MAIL_RECEIVEALL and SIGKILLs itself at one chosen moment (a crash-test child).

Usage: python -m tests.crash.child CONFIGURATION_NAME MOMENT N [MAX_MESSAGES]
   or: python -m tests.crash.child serve   (a fork server; see serve())
MOMENT is where to die, at its N-th occurrence:
  retr         while a message is arriving (the N-th chunk written)
  mid-upload   some files of a message on storage, not all, no marker (a URL save directory)
  before-journal  a message's files are in place, its UIDL not yet journalled
  before-dele  its UIDL is journalled and read back, its DELE not yet sent
  before-quit  everything saved and synced, QUIT not sent
  after-quit   QUIT sent, its reply not read
  before-announce  the session is over; no event sent yet
  before-ack   the events are sent; the outbox not yet told
  none         do not die

With POP3MAIL_ANNOUNCE_LOG set, every announcement is also appended to that file as
"PID ID SHA256" before it is sent: the test checks what was announced, and how often.
"""

from __future__ import annotations

import os
import signal
import sys


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def record_announcements() -> None:
    from prefect_pop3mail.tasks import events

    log = os.environ.get("POP3MAIL_ANNOUNCE_LOG")
    if not log:
        return
    build = events.message_event

    def recorded(mail, *args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {mail.id} {mail.sha256}\n")
        return build(mail, *args, **kwargs)

    events.message_event = recorded


def arm(moment: str, n: int) -> None:
    from prefect_pop3mail.tasks import activities
    from prefect_pop3mail.tasks.pop3 import receiver
    from prefect_pop3mail.tasks.pop3.protocol import session
    from prefect_pop3mail.tasks.pop3.storage import incoming, objects, store
    from prefect_pop3mail.tasks.pop3.storage.manifest import folder_files

    record_announcements()

    count = {"n": 0}

    def due() -> bool:
        count["n"] += 1
        return count["n"] == n

    if moment == "retr":
        write = incoming.IncomingMessage.write

        def dying_write(self, data):
            if due():
                write(self, data[: len(data) // 2])
                self._file.flush()
                die()
            write(self, data)

        incoming.IncomingMessage.write = dying_write
    elif moment == "mid-upload":
        upload = objects.FsspecStorage._upload

        def dying_upload(self, local, relative):
            if due():  # some files there, not the marker
                files = [f for f in folder_files(local) if f[0] != ".complete"]
                for name, path in files[: len(files) // 2 or 1]:
                    self.fs.put_file(str(path), self.path(f"{relative}/{name}"))
                die()
            upload(self, local, relative)

        objects.FsspecStorage._upload = dying_upload
    elif moment == "before-journal":
        record = store.MessageStore.record

        def dying_record(self, *args):
            if due():
                die()
            return record(self, *args)

        store.MessageStore.record = dying_record
    elif moment == "before-dele":
        dele = session.POP3Session.dele

        def dying_dele(self, number):
            if due():
                die()
            dele(self, number)

        session.POP3Session.dele = dying_dele
    elif moment in ("before-quit", "after-quit"):
        quit_ = session.POP3Session.quit

        def dying_quit(self):
            if due():
                if moment == "after-quit":
                    self._send("QUIT")
                    self._flush()
                die()
            return quit_(self)

        session.POP3Session.quit = dying_quit
    elif moment == "before-announce":
        announce = activities.announce

        def dying_announce(*args, **kwargs):
            if due():
                die()
            return announce(*args, **kwargs)

        activities.announce = dying_announce
    elif moment == "before-ack":
        acknowledge = receiver.MailboxReceiver.acknowledge

        def dying_acknowledge(self, mails):
            if due():
                from prefect.events.worker import EventsWorker

                EventsWorker.drain_all()  # the events reach the server, then the crash
                die()
            return acknowledge(self, mails)

        receiver.MailboxReceiver.acknowledge = dying_acknowledge
    elif moment != "none":
        raise SystemExit(f"unknown moment {moment!r}")


def run(name: str, moment: str, n: int, batch: int) -> None:
    arm(moment, n)
    from prefect_pop3mail.tasks import mail_receive_all

    received = mail_receive_all(name, max_messages=batch or None)
    print(f"received {len(received)}", flush=True)


def serve() -> None:
    """Fork server: import once, then fork a fresh child per request line.

    Each line on stdin is "NAME MOMENT N BATCH"; the answer line is the child's exit status
    (negative: killed by that signal). Forking saves the import time of every round.
    """
    import prefect_pop3mail.tasks.activities  # noqa: F401  (the expensive imports, done once)

    for line in sys.stdin:
        name, moment, n, batch = line.split()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                run(name, moment, int(n), int(batch))
            except BaseException as exc:  # report, never return into the server loop
                print(f"child error: {exc!r}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(code, flush=True)


def main() -> None:
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        name, moment, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
        run(name, moment, n, int(sys.argv[4]) if len(sys.argv) > 4 else 0)


if __name__ == "__main__":
    main()
