"""Prefect blocks of pop3mail: register with ``prefect block register -m prefect_pop3mail.blocks``."""

from prefect_pop3mail.blocks.pop3_mail import POP3MailConfiguration
from prefect_pop3mail.blocks.service_settings import POP3MailServiceSettings

__all__ = ["POP3MailConfiguration", "POP3MailServiceSettings"]
