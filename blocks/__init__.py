"""Prefect blocks of pop3mail: register with ``prefect block register -m blocks``."""

from .pop3_mail import POP3MailConfiguration
from .service_settings import POP3MailServiceSettings

__all__ = ["POP3MailConfiguration", "POP3MailServiceSettings"]
