"""Cutting secrets out of what a server says, before it reaches an error or a log.

A server may echo what it was sent: the password after PASS, the base64 SASL response, or
the decoded payload inside a JSON error. The session remembers every secret it sends and
cuts each of these forms out of any server bytes it quotes, for the rest of the session
(a multi-line reply to PASS surfaces as the "reply" to the next command):

- the secret as sent (UTF-8), in Latin-1, in both Unicode normal forms, upper and lower case;
- its base64 and base64url encodings, with or without padding, and inside any longer
  payload (the SASL PLAIN and XOAUTH2 responses): at each of the three byte alignments,
  the run of base64 characters that depends on the secret's bytes alone;
- for a secret with spaces, each word of four characters or more (a partial echo);

matched without regard to ASCII case, since some servers upper-case what they echo.
Redaction runs on the whole reply before anything is cut to length, so a secret that
straddles a cut cannot leave a prefix behind.
"""

from __future__ import annotations

import base64
import unicodedata

MASK = b"****"
#: Words of a multi-word secret shorter than this are common words, not evidence.
MIN_WORD = 4


def secret_forms(secret: str | bytes) -> set[bytes]:
    """Every form of ``secret`` a server could plausibly send back."""
    texts: set[bytes] = set()
    if isinstance(secret, str):
        # The regular expression ignores case in ASCII only; these cover the rest.
        for variant in {secret, secret.upper(), secret.lower()}:
            # As typed too: a singleton decomposition (U+F900 -> U+8C48) changes even NFC.
            for normal in {variant, *(unicodedata.normalize(f, variant) for f in ("NFC", "NFD"))}:
                texts.add(normal.encode("utf-8"))
                try:
                    texts.add(normal.encode("latin-1"))
                except UnicodeEncodeError:
                    pass
    else:
        texts.add(secret)
    forms = set(texts)
    for text in texts:
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.add(encode(text).rstrip(b"="))
            forms |= _embedded_base64(text, encode)
        words = text.split()
        if len(words) > 1:
            forms.update(w for w in words if len(w) >= MIN_WORD)
    forms.discard(b"")
    return forms


def _embedded_base64(text: bytes, encode) -> set[bytes]:
    """What stays the same of ``text``'s base64 wherever it sits in a longer payload: for
    each offset modulo 3, the whole 4-character groups made of ``text``'s bytes only."""
    cores = set()
    for offset in range(3):
        encoded = encode(bytes(offset) + text)
        cores.add(encoded[4 if offset else 0:(offset + len(text)) // 3 * 4])
    return cores


class Redactor:
    """The secrets of one session, and the one function that hides them.

    Matching is a plain search per form (no regular expression to compile: a long OAuth
    token has dozens of forms of kilobytes each), and overlapping matches merge into one
    mask, so nothing of a secret shows between two of its forms."""

    def __init__(self) -> None:
        self._forms: set[bytes] = set()  # ASCII lower case, for a case-blind search

    def remember(self, *secrets: str | bytes) -> None:
        for secret in secrets:
            if secret:
                self._forms |= {form.lower() for form in secret_forms(secret)}

    def __call__(self, data: bytes) -> bytes:
        if not self._forms:
            return data
        lowered = data.lower()  # bytes.lower() changes ASCII letters only: same offsets
        spans = []
        for form in self._forms:
            at = lowered.find(form)
            while at >= 0:
                spans.append((at, at + len(form)))
                at = lowered.find(form, at + 1)
        if not spans:
            return data
        out, done = bytearray(), 0
        for begin, end in sorted(spans):
            if begin > done or not out:
                out += data[done:begin] + MASK
            done = max(done, end)
        return bytes(out + data[done:])

    def text(self, text: str) -> str:
        """The same for text built from server bytes."""
        if not self._forms:
            return text
        return self(text.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")
