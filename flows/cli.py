"""The ``pop3mail`` console command: the first minutes with a new mailbox.

``pop3mail check NAME`` says whether a saved POP3 Mail Configuration can reach its server and
log in; ``pop3mail receive NAME`` receives its mail once (or, with ``--dry-run``, lists what
would be received); ``pop3mail replay NAME`` hands saved mail on again, from the save
directory alone. Both load the configuration from the Prefect API the current profile
points at (``PREFECT_API_URL``). Exit status: 0 ok, 1 failed (also when any message could
not be received), 2 wrong usage.

What it prints goes through :func:`say`, which shows control characters escaped: greetings,
replies, subjects and senders come from the server and the senders, and must not drive the
terminal. Prefect is imported only once the arguments are parsed, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence

from prefect_pop3mail.tasks.options import LIST, RECEIVE_ALL, CallOptions, cli_flag

OK, FAILED, USAGE = 0, 1, 2

_EPILOG = """\
NAME is the name a POP3 Mail Configuration was saved under (Prefect UI: Blocks, or
POP3MailConfiguration(...).save(NAME)). The configuration is loaded from the Prefect API
of the current profile (PREFECT_API_URL); register the block type first with
  prefect block register -m prefect_pop3mail
and create a configuration in the UI at
  <Prefect UI>/v2/blocks/catalog/pop3-mail-configuration/create
(the link `prefect block register` prints opens the older UI, which shows passwords).
Exit status: 0 ok, 1 failed, 2 wrong usage. A run where a message could not be received
(it stays on the server) counts as failed."""

# C0 and C1 controls, DEL, line and paragraph separators, and the bidirectional overrides
# and isolates that reorder what a terminal shows (CVE-2021-42574).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def shown(text: str) -> str:
    """``text`` with every control character escaped (``\\x1b``, ``\\n``, ``\\u202e``)."""
    return _CONTROL.sub(lambda m: _NAMED.get(m[0]) or repr(m[0])[1:-1], text)


def say(text: str = "", *, error: bool = False) -> None:
    """Print one line of the command's output (stderr with ``error``), escaped."""
    print(shown(text), file=sys.stderr if error else sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pop3mail",
        description="Check a POP3 mailbox and receive its mail with a saved "
        "POP3 Mail Configuration.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(commands, "check",
             "connect, log in and count the waiting messages; receives nothing",
             "Connect to the configuration's server, show its greeting, TLS and capabilities, "
             "log in and count the waiting messages. Retrieves and deletes nothing.")
    receive = _command(
        commands, "receive", "receive the mailbox's messages once (MAIL_RECEIVEALL)",
        "Receive every message once, as the MAIL_RECEIVEALL task does, and list what was "
        "saved where. Deletes from the server only when the configuration says so. The "
        "options are those of the receive-all-mail flow.")
    receive.add_argument("--dry-run", action="store_true",
                         help="list the messages that would be received; retrieve nothing")
    for name in RECEIVE_ALL:
        flag, keywords = cli_flag(name)
        receive.add_argument(flag, **keywords)
    receive.set_defaults(subparser=receive)
    replay = _command(
        commands, "replay",
        "hand saved mail on again (its events, marked replay); never contacts the server",
        "List the saved messages of a window of saving times (or of message ids) from the "
        "save directory's journal, and send each one's pop3mail.message.received event "
        "again, marked replay: true. Never contacts the server, changes nothing saved, and "
        "works when the configuration is inactive.")
    replay.add_argument("--since", metavar="TIME",
                        help="messages saved at or after TIME (ISO 8601; UTC without a zone)")
    replay.add_argument("--until", metavar="TIME", help="messages saved before TIME")
    replay.add_argument("--message-id", metavar="ID", action="append", dest="message_ids",
                        help="only this message (its id, 32 hex digits); may be repeated")
    replay.add_argument("--quarantined", action="store_true",
                        help="replay messages set aside in quarantine too")
    replay.add_argument("--no-announce", dest="announce", action="store_false",
                        help="list the messages only; send no events")
    return parser


def _command(commands, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand taking a configuration's NAME."""
    command = commands.add_parser(name, help=summary, description=description,
                                  epilog=_EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    command.add_argument("name", metavar="NAME", help="the saved configuration's name")
    return command


def _given(args: argparse.Namespace) -> CallOptions:
    """The per-call options given on the command line (argparse checked each value)."""
    given = {name: getattr(args, name) for name in RECEIVE_ALL
             if getattr(args, name, None) is not None}
    if args.dry_run and (moot := [name for name in given if name not in LIST]):
        flags = ", ".join(cli_flag(name)[0] for name in moot)
        args.subparser.error(f"{flags}: nothing is saved with --dry-run")
    return CallOptions(**given)


def _check(name: str) -> int:
    from prefect_pop3mail.tasks.activities import check_connection

    # The task's function, not a task run: a check records nothing in Prefect.
    report = check_connection.fn(name)
    rows = [
        ("Configuration", report.configuration),
        ("Server", f"{report.host}:{report.port} ({report.security.value})"),
        ("Greeting", report.greeting),
    ]
    if report.tls_version:
        tls = report.tls_version
        if report.certificate_subject:
            tls += f", certificate {report.certificate_subject}"
        if report.certificate_expires:
            tls += f", valid until {report.certificate_expires:%Y-%m-%d}"
        rows.append(("TLS", tls))
    else:
        rows.append(("TLS", "none: the password crosses the network in clear text"))
    rows.append(("Capabilities", ", ".join(report.capabilities) or "(none announced)"))
    if report.token_expires:
        rows.append(("Token", f"valid until {report.token_expires:%Y-%m-%d %H:%M} UTC"))
    rows.append(("Login", "ok" if report.login_ok else f"FAILED: {report.login_error}"))
    if report.messages_waiting is not None:
        size = f", {report.mailbox_size:,} bytes" if report.mailbox_size is not None else ""
        rows.append(("Waiting", f"{report.messages_waiting} message(s){size}"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        say(f"{label:<{width}}  {value}")
    for hint in report.hints:
        say(f"Hint: {hint}")
    if not report.login_ok:
        return FAILED
    say()
    say(f"{report.configuration} is ready: `pop3mail receive {name}` receives its mail.")
    return OK


def _receive(name: str, call: CallOptions, dry_run: bool) -> int:
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings

    from prefect_pop3mail.tasks.activities import TASK_TIMEOUT_SECONDS, receive_report
    from prefect_pop3mail.tasks.events import announce_failure

    # One attempt: a person at a terminal retries on their own. A task run of its own, with
    # no flow around it: its logs stay on the terminal, without Prefect's warning about it.
    # The whole report, not the task's list: a message that failed makes the exit status 1.
    # A failed receive tells automations, as a flow's does; a dry run changes nothing.
    run = task(receive_report, name="POP3_LIST" if dry_run else "MAIL_RECEIVEALL",
               cache_policy=NO_CACHE, retries=0, timeout_seconds=TASK_TIMEOUT_SECONDS,
               on_failure=[] if dry_run else [announce_failure])
    with temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
        report = run(name, call, dry_run=dry_run)
    if dry_run:
        say(f"{len(report.listed)} message(s) would be received:")
        for listed in report.listed:
            say(f"  #{listed.number}  {listed.size:>10,} bytes  {listed.sender}  "
                f"{listed.subject!r}")
    else:
        say(f"{len(report.received)} message(s) received:")
        for mail in report.received:
            deleted = ", deleted from the server" if mail.deleted else ""
            say(f"  {mail.subject!r} from {mail.sender}{deleted}")
            for path in mail.saved_paths:  # URLs when saved to storage
                say(f"    {path}")
    if not report.failed:
        return OK
    done = "listed" if dry_run else "received"
    say(f"pop3mail receive {name}: {len(report.failed)} message(s) could not be {done} and "
        "stay on the server:", error=True)
    for failure in report.failed:
        say(f"  {failure.uidl} (attempt {failure.attempts}): {failure.error_type}: "
            f"{failure.error}", error=True)
    return FAILED


def _replay(args: argparse.Namespace) -> int:
    from prefect_pop3mail.tasks.pop3.replay import ReplayWindowError, window
    from prefect_pop3mail.tasks.replaying import replay_report

    try:
        chosen = window(args.since, args.until, args.message_ids, quarantined=args.quarantined)
    except ReplayWindowError as exc:  # wrong usage, as argparse's own errors
        say(f"pop3mail replay {args.name}: {exc}", error=True)
        return USAGE
    # Not a task run: nothing changes, and the events go out from here all the same.
    _, report = replay_report(args.name, chosen, announce=args.announce, each=_say_replayed,
                              keep=False)
    say(f"{report.replayed} message(s) replayed"
        + ("" if args.announce else " (no events sent)") + ".")
    if report.quarantined_count:
        say(f"{report.quarantined_count} quarantined message(s) not replayed "
            "(--quarantined replays them):")
        for mail in report.quarantined:
            say(f"  {mail.id}  {mail.subject!r} from {mail.sender}  {mail.location}")
    if report.problems_count:
        say(f"pop3mail replay {args.name}: {report.problems_count} saved message(s) could "
            "not be read:", error=True)
        for problem in report.problems:
            say(f"  {problem.folder} ({problem.uidl}): {problem.problem}", error=True)
        return FAILED
    return OK


def _say_replayed(mail) -> None:
    saved = f"{mail.saved_at:%Y-%m-%d %H:%M:%S} UTC" if mail.saved_at else "?"
    say(f"  {mail.id}  saved {saved}  {mail.subject!r} from {mail.sender}")
    say(f"    {mail.location}")


class _NotTheEngineFailure(logging.Filter):
    """Keeps Prefect's own report of a failed task run (its traceback, "Finished in state
    Failed", the failure hook's comings and goings) off the terminal: the command prints the
    one line that matters itself. The run's logs in the Prefect API keep it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.endswith(("task_engine.py", "flow_engine.py")):
            return True
        if record.levelno >= logging.ERROR:
            return False
        return not _is_hook_note(record.getMessage())


def _is_hook_note(message: str) -> bool:
    return message.startswith("Running hook ") or (
        message.startswith("Hook ") and message.endswith(" finished running successfully"))


class _Escaped(logging.Formatter):
    """Prefect's console format, with control characters escaped (engine logs quote server
    replies and message headers)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return shown(self.inner.format(record))


def _quiet_console() -> None:
    """Prefect's console logging, fit for a command's output (see the two classes above)."""
    import prefect.main  # noqa: F401  (configures Prefect's logging: its console handler)
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(handler.formatter,
                                                                          _Escaped):
            handler.addFilter(_NotTheEngineFailure())
            handler.setFormatter(_Escaped(handler.formatter))
    # Prefect's events worker warns at every exit that it is still sending the event of the
    # configuration's loading ("Still processing items"); it is sent all the same.
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)


def _api_note() -> str | None:
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    return ("pop3mail: PREFECT_API_URL is not set, so Prefect starts a temporary server for "
            "this command (half a minute). Start one that lasts with `prefect server start` "
            "and `prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`.")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    call = _given(args) if args.command == "receive" else None
    import httpx
    from prefect.settings import PREFECT_API_URL

    from prefect_pop3mail.tasks.pop3.errors import POP3MailError

    _quiet_console()
    if note := _api_note():
        say(note, error=True)
    what = f"pop3mail {args.command} {args.name}"
    try:
        if args.command == "check":
            return _check(args.name)
        if args.command == "replay":
            return _replay(args)
        return _receive(args.name, call or CallOptions(), args.dry_run)
    except POP3MailError as exc:  # the error names the field or the server's reply
        say(f"{what}: {exc}", error=True)
    except httpx.HTTPError as exc:  # the Prefect API, where configurations are saved
        say(f"{what}: cannot use the Prefect API at {PREFECT_API_URL.value() or '(none set)'}"
            f": {exc or type(exc).__name__}. Start it (prefect server start) or set "
            "PREFECT_API_URL.", error=True)
    return FAILED


if __name__ == "__main__":
    sys.exit(main())
