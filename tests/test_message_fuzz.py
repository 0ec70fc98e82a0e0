"""Fuzzing whole messages through MessageStore.save: hostile headers (addresses, dates,
parameters, encoded words), MIME structure (uuencoded and unknown transfer encodings among
them), S/MIME containers of random bytes, winmail.dat (TNEF) streams broken every way, and
random damage on top. The promise: no exception escapes, every example ends (a watchdog fails a
hang), and nothing is written outside the save directory.

A small fixed budget by default; POP3MAIL_SOAK=1 for a long run.
"""

from __future__ import annotations

import base64
import os
import signal
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_pop3mail.tasks.pop3.message.headers import header_fields, parse_headers
from tests import tnef_writer as tw
from tests.hostile import CLASSES
from tests.test_mime_differential import mime_leaf, mime_tree
from tests.test_store_hostile import check_saved

EXAMPLES = 5000 if os.environ.get("POP3MAIL_SOAK") else 150
#: Far beyond what any example needs: a hang detector, not a speed test.
WATCHDOG_SECONDS = 120

_HOSTILE_CODECS = ["zlib_codec", "bz2", "base64_codec", "hex", "uu", "rot13", "punycode", "idna",
                   "undefined", "utf-8", "iso-8859-1", "gb2312", "x-unknown", "utf-16", ""]


@contextmanager
def watchdog(seconds: int = WATCHDOG_SECONDS):
    def hung(signum, frame):
        raise AssertionError(f"saving one message took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _repeat(strategy, max_repeat: int = 3000):
    """A short piece repeated up to thousands of times: where parsers go quadratic."""
    return st.builds(lambda piece, n: piece * n, strategy, st.integers(1, max_repeat))


_PUNCT = st.text(st.sampled_from('()<>",:;\\@. a=?*\'%\t'), max_size=12)

addresses = st.one_of(
    st.sampled_from(["Alice <a@example.org>", '"Doe, J" <j@example.org>', "b@example.org (Bob)",
                     "G: a@x, b@y;", "undisclosed-recipients:;"]),
    _repeat(_PUNCT),
    st.builds(lambda n: "(" * n + "x@y" + ")" * (n // 2), st.integers(0, 5000)),
    st.text(max_size=200),
)

dates = st.one_of(
    st.builds(lambda d, m, y, h, mi, s, z: f"Mon, {d} {m} {y} {h}:{mi}:{s} {z}",
              st.integers(-5, 10**12), st.sampled_from(["Jan", "Feb", "xyz", ""]),
              st.integers(-(10**20), 10**20), st.integers(-1, 10**6), st.integers(-1, 99),
              st.integers(-1, 99), st.sampled_from(["+0000", "-0000", "+99999999", "EST", "", "-2400"])),
    st.text(max_size=100),
    _repeat(st.sampled_from(["1 ", "Jan ", "+", "(", ":"])),
)


@st.composite
def parameters(draw) -> str:
    """A parameter list: plain, quoted, RFC 2231 sections and charsets, junk."""
    items = []
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(["name", "filename", "charset", "boundary", "x", ""]))
        kind = draw(st.integers(0, 4))
        value = draw(st.text(max_size=20))
        if kind == 0:
            items.append(f"{name}={value}")
        elif kind == 1:
            items.append(f'{name}="{value}"')
        elif kind == 2:
            number = draw(st.one_of(st.none(), st.integers(0, 10**15)))
            star = draw(st.sampled_from(["", "*"]))
            section = "" if number is None else f"*{number}"
            items.append(f"{name}{section}{star}={draw(st.sampled_from(_HOSTILE_CODECS))}''{value}")
        elif kind == 3:
            items.append(draw(_repeat(st.sampled_from(['"', ";", '";', "=", "*", "\\"]), 2000)))
        else:
            items.append(value)
    return "; ".join(items)


@st.composite
def encoded_words(draw) -> str:
    words = []
    for _ in range(draw(st.integers(0, 6))):
        charset = draw(st.sampled_from(_HOSTILE_CODECS))
        raw = draw(st.binary(max_size=30))
        if draw(st.booleans()):
            words.append(f"=?{charset}?B?{base64.b64encode(raw).decode()}?=")
        else:
            words.append(f"=?{charset}?Q?{raw.hex()}?=")
    words.append(draw(st.text(max_size=30)))
    text = " ".join(words)
    return text * draw(st.sampled_from([1, 1, 1, 500]))


def _header_text(value: str) -> str:
    """A value as one header line: line breaks only as folding."""
    return value.replace("\r", " ").replace("\n", "\n ")


@st.composite
def smime_container(draw) -> bytes:
    kind = draw(st.sampled_from(["enveloped-data", "signed-data", "", "junk"]))
    der = draw(st.one_of(st.binary(max_size=600),
                         st.builds(lambda n: b"\x30\x80" * n, st.integers(1, 5000)),
                         st.builds(lambda n: b"\x30\x84\xff\xff\xff\xff" * n, st.integers(1, 50))))
    body = base64.encodebytes(der).replace(b"\n", b"\r\n")
    if draw(st.booleans()):
        return (f'Content-Type: application/pkcs7-mime; smime-type={kind}; name="smime.p7m"\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\n").encode() + body
    inner = draw(mime_leaf())
    return (b'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
            b'micalg=sha-256; boundary="S"\r\n\r\n--S\r\n' + inner + b"\r\n--S\r\n"
            b"Content-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + body + b"\r\n--S--\r\n")


@st.composite
def tnef_streams(draw) -> bytes:
    """winmail.dat: files of every kind (names, data in attAttachData or in MAPI
    properties, OLE objects, an Outlook item), then bytes cut, overwritten or inserted,
    favouring what breaks readers: lengths and counts of 2**32-1 and 2**31-1, zeros."""
    files = draw(st.lists(st.builds(
        tw.File, name=st.one_of(st.none(), st.text(max_size=30)), data=st.binary(max_size=200),
        short=st.one_of(st.none(), st.text(max_size=12)),
        store=st.sampled_from(["data", "binary", "object", "none"]), unicode=st.booleans(),
        mime=st.one_of(st.none(), st.text(max_size=20)), hidden=st.booleans(),
        bad_checksum=st.booleans()), max_size=4))
    if files and draw(st.booleans()):
        files[0].embedded = [tw.File("inner", b"i"), tw.File("item", embedded=[tw.File("x", b"x")])]
    data = bytearray(tw.tnef(files))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data)))
        junk = draw(st.one_of(st.binary(max_size=8), st.sampled_from(
            [b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\0\0\0\0", tw.SIGNATURE, tw.IID_IMESSAGE])))
        data[at:at + draw(st.integers(0, 8))] = junk
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


@st.composite
def tnef_part(draw) -> bytes:
    """A winmail.dat among other parts, as Outlook sends it (or by name only)."""
    ctype, name = draw(st.sampled_from([("application/ms-tnef", "winmail.dat"),
                                        ("application/octet-stream", "WINMAIL.DAT"),
                                        ("application/vnd.ms-tnef", "x.dat")]))
    body = base64.encodebytes(draw(tnef_streams())).replace(b"\n", b"\r\n")
    winmail = (f'Content-Type: {ctype}; name="{name}"\r\nContent-Transfer-Encoding: base64\r\n'
               f'Content-Disposition: attachment; filename="{name}"\r\n\r\n').encode() + body
    others = draw(st.lists(mime_leaf(), max_size=2))
    parts = [*others, winmail] if draw(st.booleans()) else [winmail, *others]
    return (b'Content-Type: multipart/mixed; boundary="tnef-b"\r\n\r\n'
            + b"".join(b"--tnef-b\r\n" + p + b"\r\n" for p in parts) + b"--tnef-b--\r\n")


@st.composite
def whole_message(draw) -> bytes:
    fields = {
        "From": draw(addresses),
        "To": ", ".join(draw(st.lists(addresses, max_size=4))),
        "Cc": draw(addresses),
        "Date": draw(dates),
        "Subject": draw(encoded_words()),
        "Message-ID": draw(st.text(max_size=40)),
        "MIME-Version": "1.0",
    }
    head = "".join(f"{k}: {_header_text(v)}\r\n" for k, v in fields.items() if draw(st.booleans()) or k == "From")
    content = draw(st.one_of(
        mime_tree(depth=2),
        smime_container(),
        tnef_part(),
        st.builds(lambda ct, params, body: f"Content-Type: {ct}; {_header_text(params)}\r\n"
                  f"Content-Disposition: attachment; {_header_text(params)}\r\n\r\n".encode() + body,
                  st.sampled_from(["text/plain", "text/html", "application/pdf", "message/rfc822",
                                   "multipart/mixed", "x" * 300]),
                  parameters(), st.binary(max_size=200)),
    ))
    return head.encode("utf-8", "surrogatepass") + content


@st.composite
def damaged(draw, strategy) -> bytes:
    """Random damage: cut, insert or overwrite bytes anywhere."""
    data = draw(strategy)
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        junk = draw(st.one_of(
            st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b"--", b"\x00\xff", b"=\r\n", b"(((", b'"',
                             b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n",
                             b"Content-Type: message/rfc822\r\n\r\n", b"=?utf-8?B?", b"<!--", b"<a"]),
            st.binary(max_size=16)))
        data = data[:at] + junk + data[at + draw(st.integers(0, 20)):]
    return data


def check_promises(tmp: Path, data: bytes) -> None:
    root = tmp / "save"
    with watchdog():
        mail = check_saved(root, data, "fuzz", allow_errors=False)
    assert [p.name for p in tmp.iterdir()] == ["save"], "written outside the save directory"
    assert mail.original_path.read_bytes() == data


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=whole_message())
def test_generated_messages_keep_the_promises(data, tmp_path_factory):
    check_promises(tmp_path_factory.mktemp("fuzz"), data)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=damaged(whole_message()))
def test_damaged_messages_keep_the_promises(data, tmp_path_factory):
    check_promises(tmp_path_factory.mktemp("damaged"), data)


@settings(max_examples=max(10, EXAMPLES // 10), deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(sorted(CLASSES)), data=st.data())
def test_damaged_hostile_classes_keep_the_promises(name, data, tmp_path_factory):
    message = data.draw(damaged(st.just(CLASSES[name].build(16 * 1024))))
    check_promises(tmp_path_factory.mktemp("hostile"), message)


@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(value=st.one_of(addresses, dates, parameters(), encoded_words(), st.text()))
def test_header_reading_never_raises(value):
    raw = "".join(f"{name}: {_header_text(value)}\n" for name in
                  ("From", "To", "Cc", "Date", "Subject", "Message-ID", "Content-Type"))
    fields = header_fields(parse_headers(raw.encode("utf-8", "surrogatepass")), [])
    assert fields["date"] is None or fields["date"].tzinfo is not None
