"""pop3mail in the peer benchmark: through Prefect (flow + MAIL_RECEIVEALL) and the engine alone.

Both do the full work: the original, the text body and every attachment saved, in a folder
per message, with the UIDL journal. Messages stay on the server, as with the peers.
"""

from __future__ import annotations

from pathlib import Path

from bench.peers_tools import Mailbox, Run
from prefect_pop3mail.blocks import POP3MailConfiguration
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox


def save_configuration(name: str, box: Mailbox, save_directory: Path) -> POP3MailConfiguration:
    """Save the block a user would create for this mailbox; runs refer to it by name."""
    config = POP3MailConfiguration(
        description=f"bench {name}",
        server=box.host,
        port=box.port,
        security="Implicit SSL/TLS",
        user=box.user,
        password=box.password,
        tls_ca_file=box.ca_file,
        save_directory=str(save_directory),
        save_mail_text=True,
        save_mail_attachments=True,
        save_original=True,
        remove_from_server_after_read=False,
    )
    config.save(name, overwrite=True)
    return POP3MailConfiguration.load(name)


def run_flow(name: str) -> Run:
    """The ``receive-all-mail`` flow, whose MAIL_RECEIVEALL task receives the mailbox."""
    from prefect_pop3mail.flows import receive_all_mail

    return Run(len(receive_all_mail(name)))


def run_engine(name: str, config: POP3MailConfiguration) -> Run:
    """``receive_mailbox()`` with the same configuration: no Prefect at all."""
    report = receive_mailbox(name, config.connection_settings(), config.save_options(),
                             config.receive_options())
    return Run(len(report.received))


def saved_folders(save_directory: Path) -> int:
    """Message folders pop3mail left in ``save_directory`` (its state folder aside)."""
    return sum(1 for p in save_directory.iterdir() if p.is_dir() and not p.name.startswith("."))
