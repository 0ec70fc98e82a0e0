"""Messages for the peer benchmark: text plus attachments, so "full work" has work to do."""

from __future__ import annotations

import base64
import random

_LINE = "The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij.\n"


def _random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _head(i: int, boundary: str, subject: str) -> str:
    return (f"From: Alice Example <alice@example.org>\nTo: bob@example.org\n"
            f"Subject: {subject} {i}\nDate: Thu, 26 Nov 2026 10:00:00 +0000\n"
            f"Message-ID: <peers-{subject.lower()}-{i}@example.org>\nMIME-Version: 1.0\n"
            f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
            f"This is a multi-part message in MIME format.\n")


def _text_part(boundary: str, text: str) -> str:
    return (f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n"
            f"Content-Transfer-Encoding: 8bit\n\n{text}")


def _attachment_head(boundary: str, name: str) -> str:
    return (f"--{boundary}\nContent-Type: application/octet-stream; name=\"{name}\"\n"
            f"Content-Transfer-Encoding: base64\n"
            f"Content-Disposition: attachment; filename=\"{name}\"\n\n")


def with_attachment(i: int, attachment: int, text_lines: int = 20, subject: str = "Bench") -> bytes:
    """A multipart/mixed message: a text body and one binary attachment of ``attachment``
    bytes (base64 on the wire, so the message is about 1.35 times that)."""
    boundary = f"=_peers_{i}_boundary"
    return "".join((
        _head(i, boundary, subject),
        _text_part(boundary, _LINE * text_lines),
        _attachment_head(boundary, f"data-{i}.bin"),
        base64.encodebytes(_random_bytes(attachment, i)).decode(),
        f"--{boundary}--\n",
    )).encode()


def small(i: int) -> bytes:
    """About 4 KB: 1.4 KB of text and a 1.6 KB attachment."""
    return with_attachment(i, 1600, text_lines=20, subject="Small")


def with_size(i: int, total: int, subject: str) -> bytes:
    """About ``total`` bytes, nearly all of it one base64 attachment."""
    return with_attachment(i, int(total / 1.3514), text_lines=20, subject=subject)
