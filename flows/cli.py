"""The ``pop3mail`` console command: the first minutes with a new mailbox.

``pop3mail check NAME`` says whether a saved POP3 Mail Configuration can reach its server and
log in; ``pop3mail receive NAME`` receives its mail once (or, with ``--dry-run``, lists what
would be received). Both load the configuration from the Prefect API the current profile
points at (``PREFECT_API_URL``). Exit status: 0 ok, 1 failed (also when any message could
not be received), 2 wrong usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

OK, FAILED, USAGE = 0, 1, 2

_EPILOG = """\
NAME is the name a POP3 Mail Configuration was saved under (Prefect UI: Blocks, or
POP3MailConfiguration(...).save(NAME)). The configuration is loaded from the Prefect API
of the current profile (PREFECT_API_URL); register the block type first with
  prefect block register -m prefect_pop3mail.blocks
Exit status: 0 ok, 1 failed, 2 wrong usage. A run where a message could not be received
(it stays on the server) counts as failed."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pop3mail",
        description="Check a POP3 mailbox and receive its mail with a saved "
        "POP3 Mail Configuration.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="connect, log in and count the waiting messages; receives nothing",
        description="Connect to the configuration's server, show its greeting, TLS and "
        "capabilities, log in and count the waiting messages. Retrieves and deletes nothing.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("name", metavar="NAME", help="the saved configuration's name")
    receive = commands.add_parser(
        "receive",
        help="receive the mailbox's messages once (MAIL_RECEIVEALL)",
        description="Receive every message once, as the MAIL_RECEIVEALL task does, and list "
        "what was saved where. Deletes from the server only when the configuration says so.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    receive.add_argument("name", metavar="NAME", help="the saved configuration's name")
    receive.add_argument("--dry-run", action="store_true",
                         help="list the messages that would be received; retrieve nothing")
    receive.add_argument("--max-messages", type=_positive, metavar="N",
                         help="receive at most N messages")
    return parser


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
        print(f"{label:<{width}}  {value}")
    for hint in report.hints:
        print(f"Hint: {hint}")
    if not report.login_ok:
        return FAILED
    print(f"\n{report.configuration} is ready: `pop3mail receive {name}` receives its mail.")
    return OK


def _receive(name: str, dry_run: bool, max_messages: int | None) -> int:
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings

    from prefect_pop3mail.tasks.activities import TASK_TIMEOUT_SECONDS, receive_report

    # One attempt: a person at a terminal retries on their own. A task run of its own, with
    # no flow around it: its logs stay on the terminal, without Prefect's warning about it.
    # The whole report, not the task's list: a message that failed makes the exit status 1.
    run = task(receive_report, name="POP3_LIST" if dry_run else "MAIL_RECEIVEALL",
               cache_policy=NO_CACHE, retries=0, timeout_seconds=TASK_TIMEOUT_SECONDS)
    with temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
        report = run(name, max_messages=max_messages, dry_run=dry_run)
    if dry_run:
        print(f"{len(report.listed)} message(s) would be received:")
        for listed in report.listed:
            print(f"  #{listed.number}  {listed.size:>10,} bytes  {listed.sender}  "
                  f"{listed.subject!r}")
    else:
        print(f"{len(report.received)} message(s) received:")
        for mail in report.received:
            deleted = ", deleted from the server" if mail.deleted else ""
            print(f"  {mail.subject!r} from {mail.sender}{deleted}")
            for path in mail.saved_paths:  # URLs when saved to storage
                print(f"    {path}")
    if not report.failed:
        return OK
    done = "listed" if dry_run else "received"
    print(f"pop3mail receive: {len(report.failed)} message(s) could not be {done} and stay "
          "on the server:", file=sys.stderr)
    for failure in report.failed:
        print(f"  {failure.uidl} (attempt {failure.attempts}): {failure.error_type}: "
              f"{failure.error}", file=sys.stderr)
    return FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import httpx
    from prefect.settings import PREFECT_API_URL

    from prefect_pop3mail.tasks.pop3.errors import POP3MailError

    try:
        if args.command == "check":
            return _check(args.name)
        return _receive(args.name, args.dry_run, args.max_messages)
    except POP3MailError as exc:  # the error names the field or the server's reply
        print(f"pop3mail {args.command}: {exc}", file=sys.stderr)
    except httpx.HTTPError as exc:  # the Prefect API, where configurations are saved
        print(f"pop3mail {args.command}: cannot use the Prefect API at "
              f"{PREFECT_API_URL.value() or '(none set)'}: {exc or type(exc).__name__}. "
              "Start it (prefect server start) or set PREFECT_API_URL.", file=sys.stderr)
    return FAILED


if __name__ == "__main__":
    sys.exit(main())
