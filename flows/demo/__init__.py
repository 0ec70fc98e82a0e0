"""The demo (`make demo`): a local sample mailbox, the receive-all flow, what was saved where.

Starts a throwaway Dovecot on 127.0.0.1 (or, where Dovecot can't run, e.g. without root,
the project's own POP3 test server) with a TLS certificate from a throwaway CA, fills it
with a few realistic messages, saves a POP3 Mail Configuration block, and runs
``receive_all_mail`` through Prefect (its embedded server when no PREFECT_API_URL is set).

The sample mailbox comes from the checkout's ``tests/servers``, so the demo runs from a clone
only: it is a subpackage that pyproject.toml leaves out of the wheel.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

DEMO_BLOCK = "demo-mailbox"


def sample_messages() -> list[bytes]:
    plain = EmailMessage()
    plain["From"] = "Ada Lovelace <ada@example.org>"
    plain["To"] = "orders@example.com"
    plain["Subject"] = "Order 1042: please confirm"
    plain["Date"] = "Wed, 25 Nov 2026 09:14:00 +0000"
    plain["Message-ID"] = "<order-1042@example.org>"
    plain.set_content("Hello,\n\nplease confirm order 1042 by Friday.\n\nAda\n")

    rich = EmailMessage()
    rich["From"] = "Grace Hopper <grace@example.net>"
    rich["To"] = "orders@example.com"
    rich["Cc"] = "finance@example.com"
    rich["Subject"] = "Invoice INV-2026-118 and delivery note"
    rich["Date"] = "Wed, 25 Nov 2026 11:02:00 +0100"
    rich["Message-ID"] = "<inv-2026-118@example.net>"
    rich.set_content("Please find the invoice and the delivery note attached.\n")
    rich.add_alternative("<p>Please find the <b>invoice</b> and the delivery note attached.</p>",
                         subtype="html")
    rich.add_attachment(b"%PDF-1.4\n% demo invoice\n%%EOF\n", maintype="application",
                        subtype="pdf", filename="INV-2026-118.pdf")
    rich.add_attachment(b"item;qty\nwidget;12\ngadget;3\n", maintype="text",
                        subtype="csv", filename="delivery-note.csv")

    intl = EmailMessage()
    intl["From"] = "Søren Kierkegaard <soren@example.dk>"
    intl["To"] = "orders@example.com"
    intl["Subject"] = "Bestilling – København lager"
    intl["Date"] = "Thu, 26 Nov 2026 08:30:00 +0100"
    intl["Message-ID"] = "<dk-77@example.dk>"
    intl.set_content("Hej! Vi har brug for 5 kasser til lageret i København.\n")

    return [m.as_bytes() for m in (plain, rich, intl)]


@dataclass
class SampleMailbox:
    """Where the demo's mail waits: a Dovecot, or our own server where Dovecot can't run."""

    kind: str
    port: int
    user: str
    password: str
    ca_file: Path
    remaining: Callable[[], int]
    stop: Callable[[], None]


def start_sample_mailbox(messages: list[bytes]) -> SampleMailbox:
    checkout = Path(__file__).resolve().parents[2]  # flows/demo/ -> the clone's root
    sys.path.insert(0, str(checkout))
    import trustme

    from tests.servers.dovecot import dovecot_unavailable_reason, start_dovecot

    reason = dovecot_unavailable_reason()
    if reason is None:
        dovecot = start_dovecot()
        user, password = dovecot.add_user("demo")
        dovecot.deliver(user, *messages)
        return SampleMailbox("Dovecot", dovecot.pop3s_port, user, password, dovecot.ca_file,
                             lambda: dovecot.message_count(user), dovecot.stop)
    from tests.servers.faultserver import FaultServer

    print(f"Dovecot can't run here ({reason}); using the project's own POP3 test server.")
    server = FaultServer(messages, user="demo", security="implicit", ca=trustme.CA()).start()
    return SampleMailbox("pop3mail test server", server.port, server.user, server.password,
                         server.ca_file, lambda: len(server.messages), server.stop)


def main() -> None:
    # No telemetry: the demo talks to loopback only. The embedded server is a subprocess
    # that reads this from the environment.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP
    from prefect.settings import temporary_settings

    # Prefect gives its embedded server 20 s to start: too short on a busy machine. Settings
    # are read when Prefect is imported, so a late environment variable would be ignored.
    with temporary_settings({STARTUP: max(STARTUP.value(), 120)}):
        run_demo()


def run_demo() -> None:
    from prefect_pop3mail.blocks import POP3MailConfiguration
    from prefect_pop3mail.flows import receive_all_mail

    output = Path(os.environ.get("POP3MAIL_DEMO_DIR", "demo-output")).resolve()
    mailbox = start_sample_mailbox(sample_messages())
    try:
        POP3MailConfiguration(
            description="Demo: a local mailbox with sample mail",
            server="localhost",
            port=mailbox.port,
            security="Implicit SSL/TLS",
            user=mailbox.user,
            password=mailbox.password,
            tls_ca_file=str(mailbox.ca_file),
            save_directory=str(output),
            remove_from_server_after_read=True,
        ).save(DEMO_BLOCK, overwrite=True)
        received = receive_all_mail(DEMO_BLOCK)
        print(f"\nReceived {len(received)} message(s) from {mailbox.user}@localhost:"
              f"{mailbox.port} ({mailbox.kind}; TLS verified against a throwaway CA), "
              f"saved under {output}:")
        for mail in received:
            print(f"\n  {mail.subject!r} from {mail.sender}")
            for location in mail.saved_paths:  # local: the save directory is a folder
                path = location.path
                print(f"    {path.relative_to(output)}  ({path.stat().st_size} bytes)")
        print(f"\nLeft on the server: {mailbox.remaining()} message(s).")
    finally:
        mailbox.stop()


if __name__ == "__main__":
    main()
