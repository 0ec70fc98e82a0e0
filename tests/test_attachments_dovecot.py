"""Attachments as users see them, through a real Dovecot (issue #29): a uuencoded
attachment is saved decoded, byte for byte as the email package decodes it; the files in a
winmail.dat are saved with their names, byte for byte, beside the winmail.dat."""

from __future__ import annotations

import binascii
import email
import hashlib
from email.policy import compat32

import pytest

from prefect_pop3mail.tasks.pop3.models import ReceiveOptions, SaveOptions
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
from tests import tnef_writer as tw
from tests.corpus.build import b64, leaf, message, multipart, pseudo_random

#: The issue's example: a zip of 251,141 bytes, uuencoded to about 350 kB (several of the
#: parser's 256 kB blocks).
ZIP = b"PK\x03\x04" + pseudo_random(251_137, "request-for-quote")
REPORT = b"%PDF-1.7\n" + pseudo_random(70_000, "tnef-report") + b"\n%%EOF\n"
SHEET = b"PK\x03\x04" + pseudo_random(40_000, "tnef-sheet") + b"\0\0"  # ends in NULs
REPORT_NAME = "Quartalsbericht März 2026 – endgültige Fassung für den Vorstand.pdf"
SHEET_NAME = "Übersicht Grüße.xlsx"


def uuencoded_message() -> bytes:
    lines = [binascii.b2a_uu(ZIP[i:i + 45]).rstrip(b"\n") for i in range(0, len(ZIP), 45)]
    body = b"\r\n".join([b"begin 644 REQUEST FOR QUOTE.zip", *lines, b"`", b"end", b""])
    return message("Request for quote", {"Content-Type": 'multipart/mixed; boundary="uu"'}, multipart("uu", [
        leaf({"Content-Type": "text/plain"}, b"Please see the attached request.\r\n"),
        leaf({"Content-Type": 'application/octet-stream; name="REQUEST FOR QUOTE.zip"',
              "Content-Transfer-Encoding": "x-uuencode",
              "Content-Disposition": 'attachment; filename="REQUEST FOR QUOTE.zip"'}, body),
    ]))


def winmail_message() -> tuple[bytes, bytes]:
    stream = tw.tnef([tw.File(REPORT_NAME, REPORT, short="QUARTA~1.PDF", mime="application/pdf"),
                      tw.File(SHEET_NAME, SHEET, short="BERSIC~1.XLS", store="binary", unicode=False)])
    data = message("Rich text from Outlook", {"Content-Type": 'multipart/mixed; boundary="tnef"'}, multipart("tnef", [
        leaf({"Content-Type": "text/plain; charset=us-ascii"}, b"Two files attached.\r\n"),
        leaf({"Content-Type": 'application/ms-tnef; name="winmail.dat"', "Content-Transfer-Encoding": "base64",
              "Content-Disposition": 'attachment; filename="winmail.dat"'}, b64(stream)),
    ]))
    return data, stream


@pytest.mark.dovecot
def test_uuencode_and_winmail_dat_from_dovecot(mailbox, tmp_path):
    winmail, stream = winmail_message()
    mailbox.deliver(uuencoded_message(), winmail)
    report = receive_mailbox("attachments", mailbox.settings(), SaveOptions(directory=tmp_path),
                             ReceiveOptions(remove_after_read=True))
    assert not report.failed
    by_subject = {m.subject: m for m in report.received}

    uu = by_subject["Request for quote"]
    [zip_file] = [a for a in uu.attachments if a.filename == "REQUEST FOR QUOTE.zip"]
    # What the email package decodes from the message as the server delivered it.
    original = email.message_from_bytes(uu.original_path.read_bytes(), policy=compat32)
    reference = original.get_payload(1).get_payload(decode=True)
    assert reference == ZIP
    assert zip_file.path.name == "REQUEST FOR QUOTE.zip"
    assert zip_file.path.read_bytes() == reference
    assert (zip_file.size, zip_file.sha256) == (len(ZIP), hashlib.sha256(ZIP).hexdigest())
    assert uu.warnings == []

    tnef = by_subject["Rich text from Outlook"]
    saved = {a.path.name: a for a in tnef.attachments}
    assert set(saved) == {"winmail.dat", REPORT_NAME, SHEET_NAME}
    assert saved["winmail.dat"].path.read_bytes() == stream
    assert saved[REPORT_NAME].path.read_bytes() == REPORT
    assert saved[SHEET_NAME].path.read_bytes() == SHEET
    for name, part in ((REPORT_NAME, "1"), (SHEET_NAME, "2")):
        assert saved[name].filename == name
        assert (saved[name].part, saved[name].parent) == (part, saved["winmail.dat"].path)
    assert saved[REPORT_NAME].content_type == "application/pdf"
    assert tnef.warnings == []
    assert mailbox.count() == 0
