"""The connection check: what a user needs to know before the first real run."""

from __future__ import annotations

from .errors import POP3AuthError, POP3MailError
from .models import ConnectionReport, ConnectionSettings
from .session import POP3Session


def check_mailbox(configuration: str, connection: ConnectionSettings) -> ConnectionReport:
    """Greeting, capabilities, TLS details, login, and the number of waiting messages.

    Connection and TLS failures raise; a refused login is reported, not raised.
    """
    report = ConnectionReport(
        configuration=configuration,
        host=connection.host,
        port=connection.port,
        security=connection.security,
    )
    session = POP3Session(connection)
    session.connect()
    try:
        report.greeting = session.greeting.decode("utf-8", "replace")
        report.capabilities = [
            " ".join([name, *args]) for name, args in session.capabilities.items()
        ]
        report.sasl_mechanisms = session.capabilities.get("SASL", [])
        report.tls_version, report.certificate_subject, report.certificate_expires = (
            session.tls_info()
        )
        try:
            session.login()
        except POP3AuthError as exc:
            report.login_error = str(exc)
            session.close()
            return report
        report.login_ok = True
        report.messages_waiting, report.mailbox_size = session.stat()
        session.quit()
    except POP3MailError:
        session.close()
        raise
    return report
