"""Builds the golden corpus: one folder per case with message.eml and expected.json.

    .venv/bin/python -m tests.corpus.build          # rebuild every case
    .venv/bin/python -m tests.corpus.build NAME...  # rebuild some

Each case is written here as raw MIME in the shape real clients send (Outlook, Apple Mail,
Gmail...), and its expectations come from what the case puts in - the attachment bytes,
the body text - never from running the store. expected.json lists every file the store
must save (relative path, size, SHA-256), the warnings it must give (substrings, one per
problem), and for S/MIME cases the signature or the error.

S/MIME cases use throwaway keys made here (keys/, see README.md) and the openssl CLI.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import hashlib
import json
import quopri
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests import tnef_writer as tw

HERE = Path(__file__).parent
KEYS = HERE / "keys"
KEY_PASSWORD = "corpus-only-not-a-secret"
CRLF = b"\r\n"


# --- building blocks ------------------------------------------------------------------------


def head(**fields: str) -> bytes:
    """Header lines; underscores in names become dashes; order kept."""
    return b"".join(f"{k.replace('_', '-')}: {v}".encode() + CRLF for k, v in fields.items())


TOP = dict(
    From="Alice Example <alice@example.org>",
    To="Bob Example <bob@example.org>",
    Date="Tue, 03 Mar 2026 09:15:00 +0100",
    MIME_Version="1.0",
)


def message(subject: str, content_headers: dict, body: bytes, **extra: str) -> bytes:
    fields = dict(TOP, Subject=subject, Message_ID=f"<{hashlib.sha256(subject.encode()).hexdigest()[:12]}@example.org>")
    fields.update(extra)
    fields.update(content_headers)
    return head(**fields) + CRLF + body


def leaf(content_headers: dict, body: bytes) -> bytes:
    return head(**content_headers) + CRLF + body


def multipart(boundary: str, parts: list[bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    b = boundary.encode()
    out = preamble
    for p in parts:
        out += b"--" + b + CRLF + p + CRLF
    return out + b"--" + b + b"--" + CRLF + epilogue


def b64(data: bytes, width: int = 76) -> bytes:
    text = base64.b64encode(data)
    return CRLF.join(text[i:i + width] for i in range(0, len(text), width)) + CRLF


def qp(data: bytes) -> bytes:
    return quopri.encodestring(data.replace(CRLF, b"\n")).replace(b"\n", CRLF)


def crlf(text: str, charset: str = "utf-8") -> bytes:
    return text.replace("\n", "\r\n").encode(charset)


def pseudo_random(n: int, seed: str) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


PDF = b"%PDF-1.4\n" + pseudo_random(3000, "pdf") + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + pseudo_random(700, "png")
JPEG = b"\xff\xd8\xff\xe0" + pseudo_random(900, "jpeg") + b"\xff\xd9"


@dataclass
class Case:
    name: str
    description: str
    eml: bytes
    files: dict[str, bytes] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    options: dict = field(default_factory=dict)
    signature: dict | None = None
    decrypted: bool = False
    error: str | None = None
    #: What the result must say of these attachments (path -> filename, content type,
    #: part, parent); only for the cases that are about it.
    attachments: dict[str, dict] = field(default_factory=dict)

    def expected(self) -> dict:
        extra = {"attachments": self.attachments} if self.attachments else {}
        return {
            "description": self.description,
            "options": self.options,
            "files": {
                path: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                for path, data in sorted(self.files.items())
            },
            "warnings": self.warnings,
            "signature": self.signature,
            "decrypted": self.decrypted,
            "error": self.error,
            **extra,
        }


def text(s: str) -> bytes:
    """What text.txt holds: UTF-8 with LF line endings."""
    return s.encode("utf-8")


#: Case builders by name; built only when the corpus is written.
CASES: dict[str, Callable[[], Case]] = {}


def case(fn: Callable[[], Case]) -> Callable[[], Case]:
    CASES[fn.__name__] = fn
    return fn


# --- plain text and charsets -----------------------------------------------------------------

BODY = "Hello Bob,\n\nthe figures for March are attached.\n\nAlice\n"


@case
def plain_ascii():
    return Case("plain_ascii", "text/plain, us-ascii, 7bit",
                message("Figures", {"Content-Type": "text/plain; charset=us-ascii",
                                    "Content-Transfer-Encoding": "7bit"}, crlf(BODY)),
                {"text.txt": text(BODY)})


@case
def plain_utf8_8bit():
    body = "Grüße aus Köln – 東京 – Ελλάδα ✓\n"
    return Case("plain_utf8_8bit", "text/plain, UTF-8, 8bit",
                message("Grüße", {"Content-Type": "text/plain; charset=utf-8",
                                  "Content-Transfer-Encoding": "8bit"}, crlf(body)),
                {"text.txt": text(body)})


@case
def latin1_quoted_printable():
    body = "Café crème à la française, s'il vous plaît. Prix: 12 € HT.\n"
    # € is not Latin-1: senders' "ISO-8859-1" is Windows-1252 in practice (0x80).
    return Case("latin1_quoted_printable", "ISO-8859-1 label, quoted-printable, Windows-1252 euro sign",
                message("=?ISO-8859-1?Q?Caf=E9?=", {"Content-Type": "text/plain; charset=ISO-8859-1",
                                                   "Content-Transfer-Encoding": "quoted-printable"},
                        qp(body.replace("\n", "\r\n").encode("cp1252"))),
                {"text.txt": text(body)})


@case
def quoted_printable_soft_breaks():
    long_line = "This line is much longer than seventy-six characters, so quoted-printable has to break it with soft line breaks, and equals signs = are escaped."
    body = long_line + "\n" + "Short line.\n"
    encoded = (
        b"This line is much longer than seventy-six characters, so quoted-printable h=\r\n"
        b"as to break it with soft line breaks, and equals signs =3D are escaped.\r\n"
        b"Short line.=20\r\n".replace(b"=20\r\n", b"\r\n")
    )
    return Case("quoted_printable_soft_breaks", "quoted-printable with soft line breaks and =3D",
                message("Soft breaks", {"Content-Type": "text/plain; charset=utf-8",
                                        "Content-Transfer-Encoding": "quoted-printable"}, encoded),
                {"text.txt": text(body)})


@case
def shift_jis_body():
    body = "山田様\n\nお世話になっております。見積書を送付いたします。\n"
    return Case("shift_jis_body", "Japanese body in Shift_JIS, 8bit",
                message("=?ISO-2022-JP?B?GyRCOC5AUTxVGyhC?=", {"Content-Type": "text/plain; charset=Shift_JIS",
                                                              "Content-Transfer-Encoding": "8bit"},
                        crlf(body, "shift_jis")),
                {"text.txt": text(body)})


@case
def iso_2022_jp_body():
    body = "こんにちは。会議は明日の十時からです。\n"
    return Case("iso_2022_jp_body", "Japanese body in ISO-2022-JP (7bit, the classic Japanese mail charset)",
                message("Meeting", {"Content-Type": "text/plain; charset=ISO-2022-JP",
                                    "Content-Transfer-Encoding": "7bit"}, crlf(body, "iso-2022-jp")),
                {"text.txt": text(body)})


@case
def gb2312_base64_body():
    body = "您好：\n\n附件是本月的报表，请查收。\n"
    return Case("gb2312_base64_body", "Chinese body in GB2312, base64",
                message("Report", {"Content-Type": 'text/plain; charset="gb2312"',
                                   "Content-Transfer-Encoding": "base64"}, b64(crlf(body, "gb2312"))),
                {"text.txt": text(body)})


@case
def gb2312_label_with_gbk_characters():
    body = "朱镕基和李彧在会议上发言。\n"  # 镕 and 彧 are GBK, not GB2312
    return Case("gb2312_label_with_gbk_characters",
                "labelled GB2312 but using GBK characters, as Chinese clients do: read as GB18030",
                message("GBK", {"Content-Type": "text/plain; charset=gb2312",
                                "Content-Transfer-Encoding": "8bit"}, crlf(body, "gbk")),
                {"text.txt": text(body)})


@case
def koi8r_body():
    body = "Привет! Отчёт во вложении.\n"
    return Case("koi8r_body", "Russian body in KOI8-R, quoted-printable",
                message("Otchet", {"Content-Type": "text/plain; charset=koi8-r",
                                   "Content-Transfer-Encoding": "quoted-printable"},
                        qp(crlf(body, "koi8-r"))),
                {"text.txt": text(body)})


@case
def latin1_label_utf8_content():
    body = "Zoë's naïve café – déjà vu\n"
    return Case("latin1_label_utf8_content", "a lying charset: labelled ISO-8859-1, really UTF-8",
                message("Lying charset", {"Content-Type": "text/plain; charset=iso-8859-1",
                                          "Content-Transfer-Encoding": "8bit"}, crlf(body)),
                {"text.txt": text(body)},
                warnings=["labelled iso-8859-1 is UTF-8"])


@case
def ascii_label_with_8bit_windows1252():
    body = "Smart “quotes” and café\n"
    return Case("ascii_label_with_8bit_windows1252", "labelled us-ascii but 8-bit Windows-1252",
                message("Quotes", {"Content-Type": "text/plain; charset=us-ascii"},
                        crlf(body, "cp1252")),
                {"text.txt": text(body)},
                warnings=["not valid us-ascii; read as Windows-1252"])


@case
def unknown_charset():
    body = "Unknown label, UTF-8 inside: ½ ünïcödé\n"
    return Case("unknown_charset", "an unknown charset label: best effort (UTF-8) and a warning",
                message("Unknown", {"Content-Type": "text/plain; charset=x-mac-klingon",
                                    "Content-Transfer-Encoding": "8bit"}, crlf(body)),
                {"text.txt": text(body)},
                warnings=["unknown charset 'x-mac-klingon'"])


@case
def missing_content_type():
    body = "No MIME headers at all, as old scripts send.\n"
    eml = head(From=TOP["From"], To=TOP["To"], Subject="cron output", Date=TOP["Date"]) + CRLF + crlf(body)
    return Case("missing_content_type", "no MIME-Version and no Content-Type: text/plain",
                eml, {"text.txt": text(body)})


@case
def lf_line_endings():
    body = "Saved by a Unix tool with bare LF line endings.\n"
    b = "lf-boundary"
    eml = (
        f"From: {TOP['From']}\nTo: {TOP['To']}\nSubject: LF\nMIME-Version: 1.0\n"
        f"Content-Type: multipart/mixed; boundary=\"{b}\"\n\n"
        f"--{b}\nContent-Type: text/plain; charset=utf-8\n\n{body}\n"
        f"--{b}\nContent-Type: application/pdf; name=\"lf.pdf\"\nContent-Transfer-Encoding: base64\n\n"
    ).encode() + base64.encodebytes(PDF) + f"--{b}--\n".encode()
    return Case("lf_line_endings", "a message with LF line endings throughout",
                eml, {"text.txt": text(body), "attachments/lf.pdf": PDF})


@case
def text_without_charset_utf8_bytes():
    body = "Kein Charset angegeben, aber UTF-8: Größe\n"
    return Case("text_without_charset_utf8_bytes", "text/plain without a charset holding UTF-8",
                message("No charset", {"Content-Type": "text/plain",
                                       "Content-Transfer-Encoding": "8bit"}, crlf(body)),
                {"text.txt": text(body)})


# --- structures -------------------------------------------------------------------------------

HTML = ("<html><head><style>p{color:red}</style></head><body><p>Hello <b>Bob</b>,</p>"
        "<p>see <a href=\"https://example.org/q1\">the report</a>.<br>Alice</p></body></html>")
HTML_AS_TEXT = "Hello Bob,\nsee the report <https://example.org/q1>.\nAlice\n"


@case
def multipart_alternative():
    plain = "Hello Bob,\nsee the report.\nAlice\n"
    body = multipart("alt-1", [
        leaf({"Content-Type": "text/plain; charset=utf-8"}, crlf(plain)),
        leaf({"Content-Type": "text/html; charset=utf-8"}, crlf(HTML)),
    ])
    return Case("multipart_alternative", "multipart/alternative: text and HTML",
                message("Alternative", {"Content-Type": 'multipart/alternative; boundary="alt-1"'}, body),
                {"text.txt": text(plain), "body.html": text(HTML)})


@case
def html_only():
    return Case("html_only", "HTML only: text.txt is a rendering of the HTML",
                message("HTML only", {"Content-Type": "text/html; charset=utf-8",
                                      "Content-Transfer-Encoding": "quoted-printable"}, qp(HTML.encode())),
                {"body.html": text(HTML), "text.txt": text(HTML_AS_TEXT)})


@case
def html_only_windows1252():
    html = '<html><head><meta charset="windows-1252"></head><body><p>Prix: 12 €</p></body></html>'
    return Case("html_only_windows1252", "HTML in Windows-1252 with its own meta charset",
                message("Prix", {"Content-Type": "text/html; charset=windows-1252",
                                 "Content-Transfer-Encoding": "8bit"}, crlf(html, "cp1252")),
                {"body.html": text('<meta charset="utf-8">\n' + html), "text.txt": text("Prix: 12 €\n")})


@case
def related_inline_images():
    html = '<html><body><p>Logo: <img src="cid:logo@x" alt="logo"></p><p><img src="cid:chart@x"></p></body></html>'
    plain = "Logo and chart inline.\n"
    related = multipart("rel-1", [
        leaf({"Content-Type": "text/html; charset=utf-8"}, crlf(html)),
        leaf({"Content-Type": 'image/png; name="logo.png"', "Content-Transfer-Encoding": "base64",
              "Content-ID": "<logo@x>", "Content-Disposition": 'inline; filename="logo.png"'}, b64(PNG)),
        leaf({"Content-Type": "image/jpeg", "Content-Transfer-Encoding": "base64",
              "Content-ID": "<chart@x>"}, b64(JPEG)),
    ])
    alternative = multipart("alt-2", [
        leaf({"Content-Type": "text/plain; charset=utf-8"}, crlf(plain)),
        leaf({"Content-Type": 'multipart/related; boundary="rel-1"; type="text/html"'}, related),
    ])
    return Case("related_inline_images",
                "alternative[text, related[html, named inline image, unnamed inline image]]",
                message("Inline", {"Content-Type": 'multipart/alternative; boundary="alt-2"'}, alternative),
                {"text.txt": text(plain), "body.html": text(html),
                 "attachments/logo.png": PNG, "attachments/part-2.3.jpg": JPEG})


@case
def gmail_style():
    plain = "Hi Bob,\n\nPlease find the invoice attached.\n\nThanks,\nAlice\n"
    html = '<div dir="ltr">Hi Bob,<div><br></div><div>Please find the invoice attached.</div><div><br></div><div>Thanks,</div><div>Alice</div></div>'
    alt = multipart("000000000000a1b2c3d4e5f60001", [
        leaf({"Content-Type": 'text/plain; charset="UTF-8"'}, crlf(plain)),
        leaf({"Content-Type": 'text/html; charset="UTF-8"'}, crlf(html)),
    ])
    mixed = multipart("000000000000a1b2c3d4e5f60002", [
        leaf({"Content-Type": 'multipart/alternative; boundary="000000000000a1b2c3d4e5f60001"'}, alt),
        leaf({"Content-Type": 'application/pdf; name="Invoice 2026-03.pdf"',
              "Content-Disposition": 'attachment; filename="Invoice 2026-03.pdf"',
              "Content-Transfer-Encoding": "base64", "Content-ID": "<f_lt1abc0>",
              "X-Attachment-Id": "f_lt1abc0"}, b64(PDF)),
    ])
    return Case("gmail_style", "Gmail: mixed[alternative[text, html], pdf]",
                message("Invoice", {"Content-Type": 'multipart/mixed; boundary="000000000000a1b2c3d4e5f60002"'}, mixed),
                {"text.txt": text(plain), "body.html": text(html), "attachments/Invoice 2026-03.pdf": PDF})


@case
def outlook_style():
    plain = "Hello Bob,\n\nPlease review the attached résumé.\n\nRegards,\nAlice\n"
    html = "<html><body><p class=MsoNormal>Hello Bob,<o:p></o:p></p><p class=MsoNormal>Please review the attached résumé.</p></body></html>"
    alt = multipart("_000_DB9PR01MB1234EURPRD01PRODOUTLOOKCOM_", [
        leaf({"Content-Type": 'text/plain; charset="iso-8859-1"', "Content-Transfer-Encoding": "quoted-printable"},
             qp(crlf(plain, "cp1252"))),
        leaf({"Content-Type": 'text/html; charset="iso-8859-1"', "Content-Transfer-Encoding": "quoted-printable"},
             qp(crlf(html, "cp1252"))),
    ])
    name = "=?iso-8859-1?Q?R=E9sum=E9_Alice.docx?="
    mixed = multipart("_004_DB9PR01MB1234EURPRD01PRODOUTLOOKCOM_", [
        leaf({"Content-Type": 'multipart/alternative; boundary="_000_DB9PR01MB1234EURPRD01PRODOUTLOOKCOM_"'}, alt),
        leaf({"Content-Type": f'application/vnd.openxmlformats-officedocument.wordprocessingml.document; name="{name}"',
              "Content-Description": name,
              "Content-Disposition": f'attachment; filename="{name}"; size={len(PDF)};\r\n\tcreation-date="Tue, 03 Mar 2026 08:10:00 GMT"',
              "Content-Transfer-Encoding": "base64"}, b64(PDF)),
    ])
    return Case("outlook_style", "Outlook: mixed[alternative[qp text, qp html], docx with an RFC 2047 name]",
                message("Résumé", {"Content-Type": 'multipart/mixed; boundary="_004_DB9PR01MB1234EURPRD01PRODOUTLOOKCOM_"',
                                   "Thread-Topic": "Resume", "X-MS-Has-Attach": "yes"}, mixed),
                {"text.txt": text(plain), "body.html": text('<meta charset="utf-8">\n' + html),
                 "attachments/Résumé Alice.docx": PDF})


REPORT_NAME = "Quarterly report – März 2026.pdf"
SHEET_NAME = "Übersicht Grüße.xlsx"
SHEET = b"PK\x03\x04" + pseudo_random(1500, "xlsx")


def winmail(files: list[tw.File]) -> bytes:
    return leaf({"Content-Type": 'application/ms-tnef; name="winmail.dat"', "Content-Transfer-Encoding": "base64",
                 "Content-Disposition": 'attachment; filename="winmail.dat"'}, b64(tw.tnef(files)))


def from_winmail(content_type: str, part: str, parent: str = "attachments/winmail.dat", filename: str = "") -> dict:
    return {"content_type": content_type, "part": part, "parent": parent} | ({"filename": filename} if filename else {})


@case
def outlook_winmail_dat():
    files = [tw.File(REPORT_NAME, PDF, short="QUARTE~1.PDF", mime="application/pdf"),
             tw.File(SHEET_NAME, SHEET, short="BERSIC~1.XLS", unicode=False)]
    mixed = multipart("_tnef_", [
        leaf({"Content-Type": "text/plain; charset=us-ascii"}, crlf("See attachment.\n")),
        winmail(files),
    ])
    return Case("outlook_winmail_dat",
                "Outlook rich text: winmail.dat (TNEF) with two files, a Unicode long name and a "
                "Windows-1252 one; both saved beside the winmail.dat, which is kept",
                message("TNEF", {"Content-Type": 'multipart/mixed; boundary="_tnef_"'}, mixed),
                {"text.txt": text("See attachment.\n"), "attachments/winmail.dat": tw.tnef(files),
                 f"attachments/{REPORT_NAME}": PDF, f"attachments/{SHEET_NAME}": SHEET},
                attachments={
                    "attachments/winmail.dat": {"content_type": "application/ms-tnef", "part": "2", "parent": None},
                    f"attachments/{REPORT_NAME}": from_winmail("application/pdf", "1", filename=REPORT_NAME),
                    # No MIME type in the TNEF, none for .xlsx in Python's built-in table.
                    f"attachments/{SHEET_NAME}": from_winmail("application/octet-stream", "2", filename=SHEET_NAME)})


@case
def winmail_dat_outlook_item():
    item = [tw.File("inside.pdf", PDF[:900], mime="application/pdf")]
    files = [tw.File("notes.txt", b"Notes\r\n"), tw.File("Forwarded item", embedded=item),
             tw.File("notes.txt", b"Other notes\r\n")]
    mixed = multipart("item", [leaf({"Content-Type": "text/plain"}, crlf("Item attached.\n")), winmail(files)])
    return Case("winmail_dat_outlook_item",
                "winmail.dat holding an Outlook item (an embedded message) with a file, and two files of the "
                "same name: the item's file is saved too, names are made unique",
                message("Item", {"Content-Type": 'multipart/mixed; boundary="item"'}, mixed),
                {"text.txt": text("Item attached.\n"), "attachments/winmail.dat": tw.tnef(files),
                 "attachments/notes.txt": b"Notes\r\n", "attachments/inside.pdf": PDF[:900],
                 "attachments/notes (2).txt": b"Other notes\r\n"},
                attachments={"attachments/inside.pdf": from_winmail("application/pdf", "2.1"),
                             "attachments/notes (2).txt": from_winmail("text/plain", "3", filename="notes.txt")})


@case
def hostile_winmail_dat_truncated():
    whole = tw.tnef([tw.File("first.pdf", PDF), tw.File("second.pdf", PDF[:2000])])
    cut = whole[:-600]  # inside the second file's data
    mixed = multipart("cut", [
        leaf({"Content-Type": "text/plain"}, crlf("Cut winmail.dat.\n")),
        leaf({"Content-Type": "application/ms-tnef", "Content-Transfer-Encoding": "base64"}, b64(cut)),
    ])
    return Case("hostile_winmail_dat_truncated",
                "a winmail.dat cut off inside its second file: the first is saved, the second is not "
                "(its attributes are incomplete), with a warning; winmail.dat is kept",
                message("Cut TNEF", {"Content-Type": 'multipart/mixed; boundary="cut"'}, mixed),
                {"text.txt": text("Cut winmail.dat.\n"), "attachments/winmail.dat": cut,
                 "attachments/first.pdf": PDF},
                warnings=["runs past the end of winmail.dat"])


@case
def outlook_meeting_invite():
    ics = "BEGIN:VCALENDAR\nMETHOD:REQUEST\nBEGIN:VEVENT\nSUMMARY:Review\nDTSTART:20260304T100000Z\nEND:VEVENT\nEND:VCALENDAR\n"
    alt = multipart("_cal_", [
        leaf({"Content-Type": "text/plain; charset=utf-8"}, crlf("Review meeting.\n")),
        leaf({"Content-Type": "text/html; charset=utf-8"}, crlf("<p>Review meeting.</p>")),
        leaf({"Content-Type": 'text/calendar; charset="utf-8"; method=REQUEST',
              "Content-Transfer-Encoding": "base64"}, b64(crlf(ics))),
    ])
    return Case("outlook_meeting_invite", "alternative[text, html, text/calendar]: the invitation is an attachment",
                message("Invitation: Review", {"Content-Type": 'multipart/alternative; boundary="_cal_"'}, alt),
                {"text.txt": text("Review meeting.\n"), "body.html": text("<p>Review meeting.</p>"),
                 "attachments/part-3.ics": crlf(ics)})


@case
def apple_mail_style():
    first, second = "Here is the photo:\n", "\nAnd that was it.\n\nAlice\n"
    mixed = multipart("Apple-Mail=_5A6B7C8D-1111-2222-3333-444455556666", [
        leaf({"Content-Transfer-Encoding": "7bit", "Content-Type": "text/plain;\r\n\tcharset=us-ascii"}, crlf(first)),
        leaf({"Content-Disposition": 'inline;\r\n\tfilename="IMG_0042.jpeg"', "Content-Type": 'image/jpeg;\r\n\tx-unix-mode=0644;\r\n\tname="IMG_0042.jpeg"',
              "Content-Transfer-Encoding": "base64"}, b64(JPEG)),
        leaf({"Content-Transfer-Encoding": "7bit", "Content-Type": "text/plain;\r\n\tcharset=us-ascii"}, crlf(second)),
    ])
    return Case("apple_mail_style", "Apple Mail: text, inline image, more text (the text parts join)",
                message("Photo", {"Content-Type": 'multipart/mixed;\r\n\tboundary="Apple-Mail=_5A6B7C8D-1111-2222-3333-444455556666"'}, mixed,
                        X_Mailer="Apple Mail (2.3731)"),
                {"text.txt": text(first + second), "attachments/IMG_0042.jpeg": JPEG})


@case
def apple_mail_alternative_mixed():
    t1, t2 = "Text before.\n", "Text after.\n"
    html = '<html><body>Text before.<br><img src="cid:img1"><br>Text after.</body></html>'
    plain_mixed = multipart("Apple-Mail=_inner-mixed", [
        leaf({"Content-Type": "text/plain; charset=us-ascii"}, crlf(t1)),
        leaf({"Content-Type": 'image/png; name="pic.png"', "Content-Disposition": 'inline; filename="pic.png"',
              "Content-Transfer-Encoding": "base64"}, b64(PNG)),
        leaf({"Content-Type": "text/plain; charset=us-ascii"}, crlf(t2)),
    ])
    related = multipart("Apple-Mail=_inner-related", [
        leaf({"Content-Type": "text/html; charset=us-ascii"}, crlf(html)),
        leaf({"Content-Type": 'image/png; name="pic.png"', "Content-ID": "<img1>",
              "Content-Disposition": 'inline; filename="pic.png"', "Content-Transfer-Encoding": "base64"}, b64(PNG)),
    ])
    alt = multipart("Apple-Mail=_outer-alt", [
        leaf({"Content-Type": 'multipart/mixed; boundary="Apple-Mail=_inner-mixed"'}, plain_mixed),
        leaf({"Content-Type": 'multipart/related; type="text/html"; boundary="Apple-Mail=_inner-related"'}, related),
    ])
    return Case("apple_mail_alternative_mixed",
                "Apple Mail: alternative[mixed[text, image, text], related[html, same image]]",
                message("Picture", {"Content-Type": 'multipart/alternative; boundary="Apple-Mail=_outer-alt"'}, alt),
                {"text.txt": text(t1 + t2), "body.html": text(html),
                 "attachments/pic.png": PNG, "attachments/pic (2).png": PNG})


@case
def inline_named_text_part():
    notes = "Line 1 of notes.\nLine 2.\n"
    mixed = multipart("inl", [
        leaf({"Content-Type": "text/plain; charset=utf-8"}, crlf("Body text.\n")),
        leaf({"Content-Type": 'text/plain; charset=utf-8; name="notes.txt"',
              "Content-Disposition": 'inline; filename="notes.txt"'}, crlf(notes)),
    ])
    return Case("inline_named_text_part", "an inline text part with a filename is an attachment, not body",
                message("Notes", {"Content-Type": 'multipart/mixed; boundary="inl"'}, mixed),
                {"text.txt": text("Body text.\n"), "attachments/notes.txt": crlf(notes)})


@case
def unnamed_parts():
    csv = b"a,b\r\n1,2\r\n"
    mixed = multipart("unnamed", [
        leaf({"Content-Type": "text/plain"}, crlf("Three unnamed parts.\n")),
        leaf({"Content-Type": "image/png", "Content-Transfer-Encoding": "base64"}, b64(PNG)),
        leaf({"Content-Type": "application/octet-stream", "Content-Transfer-Encoding": "base64"}, b64(PDF)),
        leaf({"Content-Type": "text/csv", "Content-Disposition": "attachment"}, csv),
        leaf({"Content-Type": "text/plain", "Content-Disposition": "attachment"}, crlf("log line\n")),
    ])
    return Case("unnamed_parts", "parts without names get one from their content type",
                message("Unnamed", {"Content-Type": 'multipart/mixed; boundary="unnamed"'}, mixed),
                {"text.txt": text("Three unnamed parts.\n"), "attachments/part-2.png": PNG,
                 "attachments/part-3.bin": PDF, "attachments/part-4.csv": csv,
                 "attachments/part-5.txt": crlf("log line\n")})


@case
def duplicate_names():
    parts = [leaf({"Content-Type": "text/plain"}, crlf("Three invoices.\n"))]
    datas = [PDF, PDF[::-1], PDF[:1000]]
    for name, data in zip(["invoice.pdf", "Invoice.pdf", "invoice.pdf"], datas, strict=True):
        parts.append(leaf({"Content-Type": f'application/pdf; name="{name}"', "Content-Transfer-Encoding": "base64",
                           "Content-Disposition": f'attachment; filename="{name}"'}, b64(data)))
    return Case("duplicate_names", "same names (and case variants) get a (2), (3) suffix",
                message("Invoices", {"Content-Type": 'multipart/mixed; boundary="dups"'}, multipart("dups", parts)),
                {"text.txt": text("Three invoices.\n"), "attachments/invoice.pdf": datas[0],
                 "attachments/Invoice (2).pdf": datas[1], "attachments/invoice (3).pdf": datas[2]})


@case
def rfc2231_filenames():
    a, b, c = b"euro rates", b"continued", b"nfc"
    parts = [
        leaf({"Content-Type": "text/plain"}, crlf("RFC 2231 names.\n")),
        leaf({"Content-Type": "application/pdf", "Content-Disposition": "attachment; filename*=UTF-8''%E2%82%AC%20rates.pdf"}, a),
        leaf({"Content-Type": "application/pdf",
              "Content-Disposition": "attachment;\r\n filename*0*=UTF-8''%D0%9E%D1%82%D1%87%D1%91%D1%82%20%D0%B7%D0%B0%20;\r\n filename*1*=%D0%BC%D0%B0%D1%80%D1%82.pdf"}, b),
        leaf({"Content-Type": "text/plain", "Content-Disposition": "attachment; filename*=utf-8''Cafe%CC%81.txt"}, c),
    ]
    return Case("rfc2231_filenames", "RFC 2231 names: encoded, continued, and NFD normalised to NFC",
                message("2231", {"Content-Type": 'multipart/mixed; boundary="r2231"'}, multipart("r2231", parts)),
                {"text.txt": text("RFC 2231 names.\n"), "attachments/€ rates.pdf": a,
                 "attachments/Отчёт за март.pdf": b, "attachments/Café.txt": c})


@case
def rfc2047_filenames():
    a, b = b"japanese", b"chinese"
    parts = [
        leaf({"Content-Type": "text/plain"}, crlf("RFC 2047 names.\n")),
        leaf({"Content-Type": 'application/octet-stream; name="=?ISO-2022-JP?B?GyRCRnxLXDhsGyhCLnR4dA==?="'}, a),
        leaf({"Content-Type": "application/octet-stream",
              "Content-Disposition": 'attachment; filename="=?gb2312?B?sai45i5kb2M=?="'}, b),
    ]
    return Case("rfc2047_filenames", "RFC 2047 encoded words in name= and filename= (Outlook, Asian clients)",
                message("2047", {"Content-Type": 'multipart/mixed; boundary="r2047"'}, multipart("r2047", parts)),
                {"text.txt": text("RFC 2047 names.\n"), "attachments/日本語.txt": a, "attachments/报告.doc": b})


@case
def raw_utf8_filename():
    data = b"raw utf-8 name"
    mixed = multipart("raw8", [
        leaf({"Content-Type": "text/plain; charset=utf-8"}, crlf("Raw UTF-8 in a header.\n")),
        leaf({"Content-Type": 'application/pdf; name="Größe – März.pdf"',
              "Content-Disposition": 'attachment; filename="Größe – März.pdf"'}, data),
    ])
    return Case("raw_utf8_filename", "a filename in raw 8-bit UTF-8 (RFC 6532 style, as some clients send)",
                message("Raw", {"Content-Type": 'multipart/mixed; boundary="raw8"'}, mixed),
                {"text.txt": text("Raw UTF-8 in a header.\n"), "attachments/Größe – März.pdf": data})


HOSTILE = [
    ("../../../etc/passwd", "passwd"),
    ("/etc/shadow", "shadow"),
    ("..\\..\\boot.ini", "boot.ini"),
    ("C:\\Windows\\system32\\drivers", "drivers"),
    ("CON", "_CON"),
    ("nul.txt", "_nul.txt"),
    ("COM1.log", "_COM1.log"),
    ("lpt9", "_lpt9"),
    ("invoice.txt.", "invoice.txt"),
    ("trailing space.pdf   ", "trailing space.pdf"),
    ("bad\x07name\x1b.txt", "badname.txt"),
    ("evil\u202etxt.exe", "eviltxt.exe"),
    ("\u200bzero\u200bwidth.txt", "zerowidth.txt"),
    (".htaccess", "htaccess"),
    ("a:b*c?<d>|e\".txt", "a_b_c__d__e_.txt"),
    ("..", None),
    ("   ...", None),
    ("x" * 300 + ".pdf", "x" * 196 + ".pdf"),
    ("\U0001F600" * 60 + ".png", "\U0001F600" * 49 + ".png"),
]


@case
def hostile_filenames():
    parts = [leaf({"Content-Type": "text/plain"}, crlf("Hostile names.\n"))]
    files = {"text.txt": text("Hostile names.\n")}
    for i, (raw, safe) in enumerate(HOSTILE, start=2):
        data = f"content {i}".encode()
        encoded = "".join(f"%{b:02X}" for b in raw.encode("utf-8"))
        parts.append(leaf({"Content-Type": "application/octet-stream",
                           "Content-Disposition": f"attachment; filename*=utf-8''{encoded}"}, data))
        files[f"attachments/{safe or f'part-{i}.bin'}"] = data
    encoded_traversal = "%2e%2e%2f%2e%2e%2fescape.txt"
    parts.append(leaf({"Content-Type": "text/plain", "Content-Disposition": f"attachment; filename*=utf-8''{encoded_traversal}"}, b"escape"))
    files["attachments/escape.txt"] = b"escape"
    parts.append(leaf({"Content-Type": 'text/plain; name="=?utf-8?q?line1=0Aline2.txt?="', "Content-Disposition": "attachment"}, b"newline"))
    files["attachments/line1 line2.txt"] = b"newline"
    return Case("hostile_filenames", "path traversal, device names, controls, bidi, over-long names",
                message("Hostile", {"Content-Type": 'multipart/mixed; boundary="hostile"'}, multipart("hostile", parts)),
                files)


@case
def zero_length_attachment():
    mixed = multipart("zero", [
        leaf({"Content-Type": "text/plain"}, crlf("An empty file is attached.\n")),
        leaf({"Content-Type": 'text/plain; name="empty.txt"', "Content-Disposition": 'attachment; filename="empty.txt"'}, b""),
    ])
    return Case("zero_length_attachment", "an empty attachment is saved as an empty file",
                message("Empty", {"Content-Type": 'multipart/mixed; boundary="zero"'}, mixed),
                {"text.txt": text("An empty file is attached.\n"), "attachments/empty.txt": b""})


@case
def pdf_only_message():
    return Case("pdf_only_message", "a message that is a single PDF (scanners send these)",
                message("Scan", {"Content-Type": 'application/pdf; name="scan0001.pdf"',
                                 "Content-Disposition": 'attachment; filename="scan0001.pdf"',
                                 "Content-Transfer-Encoding": "base64"}, b64(PDF)),
                {"attachments/scan0001.pdf": PDF})


# --- attached messages -------------------------------------------------------------------------


def inner_message(subject: str, body: str, attachment: tuple[str, bytes] | None = None) -> bytes:
    if attachment is None:
        return message(subject, {"Content-Type": "text/plain; charset=utf-8"}, crlf(body),
                       From="Carol <carol@example.net>")
    name, data = attachment
    mixed = multipart(f"inner-{subject[:4]}", [
        leaf({"Content-Type": "text/plain; charset=utf-8"}, crlf(body)),
        leaf({"Content-Type": f'application/octet-stream; name="{name}"', "Content-Transfer-Encoding": "base64",
              "Content-Disposition": f'attachment; filename="{name}"'}, b64(data)),
    ])
    return message(subject, {"Content-Type": f'multipart/mixed; boundary="inner-{subject[:4]}"'}, mixed,
                   From="Carol <carol@example.net>")


@case
def forwarded_message():
    inner = inner_message("Quarterly numbers", "Numbers attached.\n", ("q1.xlsx", PDF[:1500]))
    mixed = multipart("fwd", [
        leaf({"Content-Type": "text/plain"}, crlf("Forwarding Carol's mail.\n")),
        leaf({"Content-Type": "message/rfc822", "Content-Disposition": "attachment"}, inner),
    ])
    return Case("forwarded_message", "a forwarded message: kept as .eml, its parts laid out beside it",
                message("Fwd: Quarterly numbers", {"Content-Type": 'multipart/mixed; boundary="fwd"'}, mixed),
                {"text.txt": text("Forwarding Carol's mail.\n"),
                 "attachments/Quarterly numbers.eml": inner,
                 "attachments/Quarterly numbers/text.txt": text("Numbers attached.\n"),
                 "attachments/Quarterly numbers/attachments/q1.xlsx": PDF[:1500]})


@case
def forwarded_twice():
    innermost = inner_message("Original", "The first message.\n")
    middle = message("Fwd: Original", {"Content-Type": 'multipart/mixed; boundary="mid"'}, multipart("mid", [
        leaf({"Content-Type": "text/plain"}, crlf("Middle text.\n")),
        leaf({"Content-Type": 'message/rfc822; name="first.eml"', "Content-Disposition": 'attachment; filename="first.eml"'}, innermost),
    ]))
    outer = multipart("out", [
        leaf({"Content-Type": "text/plain"}, crlf("Outer text.\n")),
        leaf({"Content-Type": "message/rfc822"}, middle),
    ])
    return Case("forwarded_twice", "a message in a message in a message",
                message("Fwd: Fwd: Original", {"Content-Type": 'multipart/mixed; boundary="out"'}, outer),
                {"text.txt": text("Outer text.\n"),
                 "attachments/Fwd_ Original.eml": middle,
                 "attachments/Fwd_ Original/text.txt": text("Middle text.\n"),
                 "attachments/Fwd_ Original/attachments/first.eml": innermost,
                 "attachments/Fwd_ Original/attachments/first/text.txt": text("The first message.\n")})


@case
def digest():
    one = inner_message("Digest item one", "First item.\n")
    two = inner_message("Digest item two", "Second item.\n")
    body = multipart("dig", [CRLF + one, CRLF + two])
    return Case("digest", "multipart/digest: parts default to message/rfc822",
                message("List digest", {"Content-Type": 'multipart/digest; boundary="dig"'}, body),
                {"attachments/Digest item one.eml": one, "attachments/Digest item one/text.txt": text("First item.\n"),
                 "attachments/Digest item two.eml": two, "attachments/Digest item two/text.txt": text("Second item.\n")})


@case
def delivery_status_notification():
    status = "Reporting-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; nobody@example.com\nAction: failed\nStatus: 5.1.1\n"
    headers = "From: alice@example.org\nTo: nobody@example.com\nSubject: Hello\n"
    report = multipart("dsn", [
        leaf({"Content-Type": "text/plain; charset=us-ascii"}, crlf("Delivery to nobody@example.com failed.\n")),
        leaf({"Content-Type": "message/delivery-status"}, crlf(status)),
        leaf({"Content-Type": "text/rfc822-headers"}, crlf(headers)),
    ])
    return Case("delivery_status_notification", "multipart/report bounce (DSN)",
                message("Undelivered Mail Returned to Sender",
                        {"Content-Type": 'multipart/report; report-type=delivery-status; boundary="dsn"'}, report,
                        From="MAILER-DAEMON@example.org"),
                {"text.txt": text("Delivery to nobody@example.com failed.\n"),
                 "attachments/part-2.txt": crlf(status), "attachments/part-3.txt": crlf(headers)})


# --- broken MIME -----------------------------------------------------------------------------------


@case
def missing_closing_boundary():
    body = (b"--open\r\n" + leaf({"Content-Type": "text/plain"}, crlf("Body.\n")) + b"\r\n--open\r\n"
            + leaf({"Content-Type": 'application/pdf; name="cut.pdf"', "Content-Transfer-Encoding": "base64"}, b64(PDF)))
    return Case("missing_closing_boundary", "the closing boundary is missing: everything is still saved",
                message("Truncated", {"Content-Type": 'multipart/mixed; boundary="open"'}, body),
                {"text.txt": text("Body.\n"), "attachments/cut.pdf": PDF},
                warnings=["closing boundary missing"])


@case
def boundary_never_used():
    return Case("boundary_never_used", "a declared boundary that never appears: only the original is kept",
                message("No parts", {"Content-Type": 'multipart/mixed; boundary="never"'},
                        crlf("This body has no boundary lines at all.\n")),
                {}, warnings=["start boundary not found"])


@case
def multipart_without_boundary():
    return Case("multipart_without_boundary", "multipart/mixed without a boundary parameter",
                message("No boundary", {"Content-Type": "multipart/mixed"}, crlf("Some text.\n")),
                {}, warnings=["has no boundary"])


@case
def outer_boundary_closes_inner():
    inner = b"--inner\r\n" + leaf({"Content-Type": "text/plain"}, crlf("Inner text.\n"))  # never closed
    outer = multipart("outer", [
        leaf({"Content-Type": 'multipart/alternative; boundary="inner"'}, inner),
        leaf({"Content-Type": 'image/png; name="after.png"', "Content-Transfer-Encoding": "base64"}, b64(PNG)),
    ])
    return Case("outer_boundary_closes_inner", "an inner multipart ended by the outer boundary",
                message("Nested broken", {"Content-Type": 'multipart/mixed; boundary="outer"'}, outer),
                {"text.txt": text("Inner text.\n"), "attachments/after.png": PNG},
                warnings=["ended by an outer boundary"])


@case
def boundary_with_transport_padding():
    body = (b"preamble\r\n--pad   \r\n" + leaf({"Content-Type": "text/plain"}, crlf("Padded.\n"))
            + b"\r\n--pad\t\r\n" + leaf({"Content-Type": 'text/csv; name="p.csv"'}, b"x,y\r\n")
            + b"\r\n--pad--  \r\nepilogue\r\n")
    return Case("boundary_with_transport_padding", "boundary lines with trailing whitespace, a preamble and an epilogue",
                message("Padding", {"Content-Type": 'multipart/mixed; boundary="pad"'}, body),
                {"text.txt": text("Padded.\n"), "attachments/p.csv": b"x,y\r\n"})


@case
def boundary_lookalike_lines():
    content = crlf("--not-the-boundary\n--looka\n----lookalike\n--lookalike-not\nend\n")
    body = multipart("lookalike", [
        leaf({"Content-Type": "text/plain"}, crlf("Body.\n")),
        leaf({"Content-Type": 'text/plain; name="dashes.txt"', "Content-Disposition": "attachment"}, content),
    ])
    return Case("boundary_lookalike_lines", "lines that start like the boundary but are not it",
                message("Dashes", {"Content-Type": 'multipart/mixed; boundary="lookalike"'}, body),
                {"text.txt": text("Body.\n"), "attachments/dashes.txt": content})


@case
def base64_with_junk():
    encoded = b64(PDF)
    lines = encoded.split(CRLF)
    junk = CRLF.join(line + (b" !!" if i % 3 == 0 else b"") for i, line in enumerate(lines))
    mixed = multipart("junk", [
        leaf({"Content-Type": "text/plain"}, crlf("Junk in base64.\n")),
        leaf({"Content-Type": 'application/pdf; name="junk.pdf"', "Content-Transfer-Encoding": "base64"}, junk),
    ])
    return Case("base64_with_junk", "base64 with characters outside the alphabet",
                message("Junk", {"Content-Type": 'multipart/mixed; boundary="junk"'}, mixed),
                {"text.txt": text("Junk in base64.\n"), "attachments/junk.pdf": PDF},
                warnings=["invalid characters"])


@case
def base64_missing_padding():
    data = PNG[:100]  # 100 bytes: base64 needs "==" padding
    encoded = base64.b64encode(data).rstrip(b"=") + CRLF
    mixed = multipart("nopad", [
        leaf({"Content-Type": "text/plain"}, crlf("Missing padding.\n")),
        leaf({"Content-Type": 'image/png; name="nopad.png"', "Content-Transfer-Encoding": "base64"}, encoded),
    ])
    return Case("base64_missing_padding", "base64 without its final padding",
                message("No padding", {"Content-Type": 'multipart/mixed; boundary="nopad"'}, mixed),
                {"text.txt": text("Missing padding.\n"), "attachments/nopad.png": data},
                warnings=["missing its padding"])


@case
def part_without_blank_line():
    body = (b"--noblank\r\nContent-Type: text/plain\r\nThis line should have followed a blank line.\r\n"
            b"--noblank\r\n" + leaf({"Content-Type": 'text/plain; name="ok.txt"'}, b"fine") + b"\r\n--noblank--\r\n")
    return Case("part_without_blank_line", "a part whose body starts without a blank line after its headers",
                message("No blank", {"Content-Type": 'multipart/mixed; boundary="noblank"'}, body),
                {"text.txt": text("This line should have followed a blank line."), "attachments/ok.txt": b"fine"},
                warnings=["no blank line between headers and body"])


@case
def unknown_transfer_encoding():
    mixed = multipart("xenc", [
        leaf({"Content-Type": "text/plain"}, crlf("Body.\n")),
        leaf({"Content-Type": 'application/octet-stream; name="raw.bin"', "Content-Transfer-Encoding": "x-custom"}, b"as-is data"),
    ])
    return Case("unknown_transfer_encoding",
                "an unknown transfer encoding: saved undecoded, as raw.bin.encoded, with a warning",
                message("x-custom", {"Content-Type": 'multipart/mixed; boundary="xenc"'}, mixed),
                {"text.txt": text("Body.\n"), "attachments/raw.bin.encoded": b"as-is data"},
                warnings=["unknown transfer encoding 'x-custom'"],
                attachments={"attachments/raw.bin.encoded": {
                    "filename": "raw.bin", "content_type": "application/octet-stream", "part": "2", "parent": None}})


ZIP = b"PK\x03\x04" + pseudo_random(2500, "zip")


def uuencode(data: bytes, name: str) -> bytes:
    lines = [binascii.b2a_uu(data[i:i + 45]).rstrip(b"\n") for i in range(0, len(data), 45)]
    return CRLF.join([f"begin 644 {name}".encode(), *lines, b"`", b"end"]) + CRLF


@case
def uuencoded_attachment():
    mixed = multipart("uu", [
        leaf({"Content-Type": "text/plain"}, crlf("Please quote.\n")),
        leaf({"Content-Type": 'application/zip; name="REQUEST FOR QUOTE.zip"', "Content-Transfer-Encoding": "x-uuencode",
              "Content-Disposition": 'attachment; filename="REQUEST FOR QUOTE.zip"'}, uuencode(ZIP, "REQUEST FOR QUOTE.zip")),
    ])
    return Case("uuencoded_attachment", "Content-Transfer-Encoding: x-uuencode: decoded as the email package does",
                message("RFQ", {"Content-Type": 'multipart/mixed; boundary="uu"'}, mixed),
                {"text.txt": text("Please quote.\n"), "attachments/REQUEST FOR QUOTE.zip": ZIP},
                attachments={"attachments/REQUEST FOR QUOTE.zip": {
                    "filename": "REQUEST FOR QUOTE.zip", "content_type": "application/zip", "part": "2", "parent": None}})


@case
def uuencode_undecodable():
    broken = uuencode(ZIP[:200], "cut.zip").replace(b"`\r\nend", b"\r\n`\r\nend")  # an empty line
    mixed = multipart("uubad", [
        leaf({"Content-Type": "text/plain"}, crlf("Broken uuencode.\n")),
        leaf({"Content-Type": 'application/zip; name="cut.zip"', "Content-Transfer-Encoding": "uuencode"}, broken),
    ])
    return Case("uuencode_undecodable",
                "uuencode with an empty line before its end line: the email package keeps it undecoded, "
                "so does the store, as cut.zip.encoded with a warning",
                message("Bad uu", {"Content-Type": 'multipart/mixed; boundary="uubad"'}, mixed),
                {"text.txt": text("Broken uuencode.\n"), "attachments/cut.zip.encoded": broken},
                warnings=["uuencoded data has an empty line before its end line"],
                attachments={"attachments/cut.zip.encoded": {
                    "filename": "cut.zip", "content_type": "application/octet-stream", "part": "2", "parent": None}})


# --- hostile input (tests/hostile.py has the large ones) -------------------------------------


@case
def hostile_not_a_text_charset():
    body = "Plain text, labelled with a compression codec.\n"
    return Case("hostile_not_a_text_charset",
                "charset=zlib_codec: never used to decode (no decompressing 'charsets'); read as text",
                message("Codec", {"Content-Type": "text/plain; charset=zlib_codec"}, crlf(body)),
                {"text.txt": text(body)},
                warnings=["charset 'zlib_codec' is not a text charset"])


@case
def hostile_rfc2231_mixed_sections():
    body = "See attached.\n"
    parts = [leaf({"Content-Type": "text/plain; charset=utf-8"}, crlf(body)),
             leaf({"Content-Type": "application/pdf; name*0=x; name*=y",
                   "Content-Disposition": "attachment; filename*0=first; filename*=second.pdf",
                   "Content-Transfer-Encoding": "base64"}, b64(PDF))]
    return Case("hostile_rfc2231_mixed_sections",
                "RFC 2231 sections mixed with an unnumbered one (the email package raises "
                "TypeError): the first section 0 wins",
                message("Mixed sections", {"Content-Type": 'multipart/mixed; boundary="m"'},
                        multipart("m", parts)),
                {"text.txt": text(body), "attachments/first": PDF})


@case
def hostile_deep_nesting():
    body = "Top text.\n"
    inner = leaf({"Content-Type": "text/plain"}, b"deep\r\n")
    for level in range(70, 0, -1):
        inner = leaf({"Content-Type": f'multipart/mixed; boundary="n{level}"'},
                     multipart(f"n{level}", [inner]))
    parts = [leaf({"Content-Type": "text/plain; charset=utf-8"}, crlf(body)), inner]
    return Case("hostile_deep_nesting",
                "70 nested multiparts: past the depth cap a multipart is read as a leaf and "
                "stays only in the original",
                message("Deep", {"Content-Type": 'multipart/mixed; boundary="top"'},
                        multipart("top", parts)),
                {"text.txt": text(body)},
                warnings=["nested too deeply"])


@case
def hostile_qp_long_line():
    data = b"A" * 300_000
    parts = [leaf({"Content-Type": "application/octet-stream",
                   "Content-Disposition": 'attachment; filename="long.bin"',
                   "Content-Transfer-Encoding": "quoted-printable"}, b"=41" * len(data))]
    return Case("hostile_qp_long_line",
                "a quoted-printable body of one 900 kB line: decoded in pieces, exactly",
                message("Long line", {"Content-Type": 'multipart/mixed; boundary="q"'},
                        multipart("q", parts)),
                {"attachments/long.bin": data})


# --- S/MIME ---------------------------------------------------------------------------------------


@functools.cache
def _keys():
    """Throwaway keys: Bob receives encrypted mail, Alice signs. Made once, kept in keys/."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID

    KEYS.mkdir(exist_ok=True)
    out = {}
    for who, email in (("bob", "bob@example.org"), ("alice", "alice@example.org"), ("mallory", "mallory@example.org")):
        p12 = KEYS / f"{who}.p12"
        if p12.exists():
            key, cert, _ = pkcs12.load_key_and_certificates(p12.read_bytes(), KEY_PASSWORD.encode())
        else:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{who.title()} Example"),
                              x509.NameAttribute(NameOID.EMAIL_ADDRESS, email)])
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
                    .not_valid_after(datetime.datetime(2120, 1, 1, tzinfo=datetime.UTC))
                    .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
                    .sign(key, hashes.SHA256()))
            p12.write_bytes(pkcs12.serialize_key_and_certificates(
                who.encode(), key, cert, None, serialization.BestAvailableEncryption(KEY_PASSWORD.encode())))
        (KEYS / f"{who}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out[who] = (key, cert)
    return out


SIGNED_CONTENT_BODY = "Signed text.\n"


def _envelope(inner: bytes, recipient: str = "bob") -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    der = (pkcs7.PKCS7EnvelopeBuilder().set_data(inner).add_recipient(_keys()[recipient][1])
           .encrypt(serialization.Encoding.DER, []))
    return message("Encrypted", {"Content-Type": 'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
                                 "Content-Disposition": 'attachment; filename="smime.p7m"',
                                 "Content-Transfer-Encoding": "base64"}, b64(der, 64))


def _signed_entity() -> tuple[bytes, dict]:
    entity = multipart("signed-inner", [
        leaf({"Content-Type": "text/plain; charset=utf-8"}, crlf(SIGNED_CONTENT_BODY)),
        leaf({"Content-Type": 'application/pdf; name="contract.pdf"', "Content-Transfer-Encoding": "base64",
              "Content-Disposition": 'attachment; filename="contract.pdf"'}, b64(PDF)),
    ])
    entity = head(Content_Type='multipart/mixed; boundary="signed-inner"') + CRLF + entity
    return entity, {"text.txt": text(SIGNED_CONTENT_BODY), "attachments/contract.pdf": PDF}


def _detached_signature(content: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    key, cert = _keys()["alice"]
    return (pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(cert, key, hashes.SHA256())
            .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]))


def _multipart_signed(entity: bytes, signature: bytes) -> bytes:
    body = multipart("signed-outer", [
        entity,
        leaf({"Content-Type": 'application/pkcs7-signature; name="smime.p7s"', "Content-Transfer-Encoding": "base64",
              "Content-Disposition": 'attachment; filename="smime.p7s"'}, b64(signature, 64)),
    ], preamble=b"This is a cryptographically signed message in MIME format.\r\n\r\n")
    return body


ALICE = "Alice Example <alice@example.org>"
# Alice's certificate is self-signed: the signature is intact, its signer not trusted.
SIGNED = {"signer": ALICE, "signature_valid": True, "signer_trusted": False,
          "signer_matches_from": True, "covers": "whole message", "verified": False}
UNTRUSTED = "signer not trusted: self-signed certificate, not in the trust store"
BOB_KEY = {"key": "bob"}


@case
def smime_encrypted():
    entity, files = _signed_entity()
    return Case("smime_encrypted", "S/MIME enveloped data (AES-256-CBC, RSA), decrypted with Bob's key store",
                _envelope(entity), files, options=BOB_KEY, decrypted=True)


@case
def smime_encrypted_no_key_configured():
    entity, _ = _signed_entity()
    return Case("smime_encrypted_no_key_configured", "encrypted, no public key name configured: original only",
                _envelope(entity), {}, warnings=["names no public key"])


@case
def smime_encrypted_for_someone_else():
    entity, _ = _signed_entity()
    return Case("smime_encrypted_for_someone_else", "encrypted for another recipient: a clear error for this message",
                _envelope(entity, "mallory"), {}, options=BOB_KEY, error="SMIMEDecryptError")


@case
def smime_encrypted_wrong_password():
    entity, _ = _signed_entity()
    return Case("smime_encrypted_wrong_password", "the key store password is wrong: a clear error",
                _envelope(entity), {}, options={"key": "bob", "password": "wrong"}, error="SMIMEKeyPasswordError")


@case
def smime_encrypted_missing_key_store():
    entity, _ = _signed_entity()
    return Case("smime_encrypted_missing_key_store", "the named key store does not exist: a clear error",
                _envelope(entity), {}, options={"key": "nobody"}, error="SMIMEKeyNotFoundError")


@case
def smime_signed_multipart():
    entity, files = _signed_entity()
    body = _multipart_signed(entity, _detached_signature(entity))
    return Case("smime_signed_multipart", "multipart/signed, detached signature (DER, signed attributes)",
                message("Signed", {"Content-Type": 'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="signed-outer"'}, body),
                files, signature=SIGNED, warnings=[UNTRUSTED])


@case
def smime_signed_tampered():
    entity, files = _signed_entity()
    signature = _detached_signature(entity)
    tampered = entity.replace(crlf(SIGNED_CONTENT_BODY), crlf("Changed text.\n"))
    files["text.txt"] = text("Changed text.\n")
    body = _multipart_signed(tampered, signature)
    return Case("smime_signed_tampered", "multipart/signed whose content changed after signing",
                message("Tampered", {"Content-Type": 'multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="signed-outer"'}, body),
                files, signature={"signer": ALICE, "verified": False}, warnings=["message digest mismatch"])


def _openssl(*args: str, data: bytes) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "alice.key"
        from cryptography.hazmat.primitives import serialization

        key.write_bytes(_keys()["alice"][0].private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        cmd = ["openssl", *[a.replace("{key}", str(key)).replace("{certs}", str(KEYS)) for a in args]]
        return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


@case
def smime_signed_openssl_detached():
    entity, files = _signed_entity()
    signed = _openssl("smime", "-sign", "-signer", "{certs}/alice.crt", "-inkey", "{key}", "-md", "sha256", data=entity)
    eml = head(**dict(TOP, Subject="Signed by OpenSSL")) + signed.replace(b"\r\n", b"\n").replace(b"\n", CRLF)
    return Case("smime_signed_openssl_detached", "multipart/signed made by openssl smime -sign (sha256)",
                eml, files, signature=SIGNED, warnings=[UNTRUSTED])


@case
def smime_signed_opaque_ber():
    entity, files = _signed_entity()
    signed = _openssl("cms", "-sign", "-signer", "{certs}/alice.crt", "-inkey", "{key}", "-nodetach",
                      "-stream", "-md", "sha384", data=entity)
    eml = head(**dict(TOP, Subject="Opaque signed")) + signed.replace(b"\r\n", b"\n").replace(b"\n", CRLF)
    return Case("smime_signed_opaque_ber", "opaque signed-data (application/pkcs7-mime) in streamed BER, sha384",
                eml, files, signature=SIGNED, warnings=[UNTRUSTED])


@case
def smime_signed_then_encrypted():
    entity, files = _signed_entity()
    signed = head(Content_Type='multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="signed-outer"') \
        + CRLF + _multipart_signed(entity, _detached_signature(entity))
    return Case("smime_signed_then_encrypted", "signed, then encrypted (the usual order): decrypt, then verify",
                _envelope(signed), files, options=BOB_KEY, decrypted=True, signature=SIGNED,
                warnings=[UNTRUSTED])


# --- writing ------------------------------------------------------------------------------------


def main(names: list[str]) -> None:
    wanted = set(names) or set(CASES)
    unknown = wanted - set(CASES)
    if unknown:
        sys.exit(f"unknown cases: {sorted(unknown)}")
    for name in sorted(wanted):
        c = CASES[name]()
        assert c.name == name, f"{name} builds a case named {c.name}"
        folder = HERE / c.name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / "message.eml").write_bytes(c.eml)
        (folder / "expected.json").write_text(json.dumps(c.expected(), indent=1, ensure_ascii=False) + "\n", "utf-8")
    print(f"{len(wanted)} cases written under {HERE}")


if __name__ == "__main__":
    main(sys.argv[1:])
