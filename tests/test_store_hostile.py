"""Property tests: random MIME trees, hostile filenames and damaged bytes never crash the
store and never put a file outside the message's folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_pop3mail.tasks.pop3.errors import POP3MailError
from prefect_pop3mail.tasks.pop3.models import ReceivedMail, SaveOptions
from prefect_pop3mail.tasks.pop3.storage.store import MessageStore
from tests.test_mime_differential import mime_tree

# A small fixed budget in CI; POP3MAIL_SOAK=1 for a long run.
EXAMPLES = 5000 if os.environ.get("POP3MAIL_SOAK") else 300

_NAME = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["../../escape", "/abs/path", "..\\..\\win", "CON", "nul.txt", ".", "..",
                     "a/../../b", "x" * 300, "\x00null", "e\u202efdp.exe", "attachments", "text.txt",
                     "message.eml", "body.html", "~", "-rf", "$(id)"]),
)


@st.composite
def hostile_leaf(draw) -> bytes:
    name = draw(_NAME)
    how = draw(st.sampled_from(["2231", "quoted", "2047", "name"]))
    if how == "2231":
        disposition = f"attachment; filename*=utf-8''{quote(name.encode('utf-8', 'surrogatepass'), safe='')}"
        ctype = "application/octet-stream"
    elif how == "2047":
        import base64

        encoded = base64.b64encode(name.encode("utf-8", "surrogatepass")).decode()
        disposition, ctype = f'attachment; filename="=?utf-8?B?{encoded}?="', "image/png"
    else:
        safe = name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
        if how == "quoted":
            disposition, ctype = f'inline; filename="{safe}"', "text/plain"
        else:
            disposition, ctype = "attachment", f'application/pdf; name="{safe}"'
    head = f"Content-Type: {ctype}\r\nContent-Disposition: {disposition}\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + draw(st.binary(max_size=64)).hex().encode()


@st.composite
def hostile_message(draw) -> bytes:
    parts = draw(st.lists(st.one_of(hostile_leaf(), mime_tree(depth=2)), min_size=1, max_size=5))
    body = b"".join(b"--H\r\n" + p + b"\r\n" for p in parts) + b"--H--\r\n"
    data = (b"From: x@example.org\r\nSubject: hostile\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=H\r\n\r\n" + body)
    # Damage: cut, insert or overwrite bytes anywhere.
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        junk = draw(st.sampled_from([b"", b"\r\n--H\r\n", b"--H--", b"\x00\xff", b"\r", b"=\r\n",
                                     b"Content-Type: message/rfc822\r\n\r\n"]))
        cut = draw(st.integers(0, 20))
        data = data[:at] + junk + data[at + cut:]
    return data


def check_saved(root: Path, data: bytes, uidl: str, *, allow_errors: bool = True
                ) -> ReceivedMail | None:
    """Save ``data`` and check the promises; the result, or None for a clear error (an
    error of ours naming the message, when ``allow_errors``)."""
    store = MessageStore(SaveOptions(directory=root), "hostile@test:110", "hostile")
    incoming = store.incoming()
    incoming.write(data)
    incoming.finish()
    try:
        mail = store.save(incoming, uidl)
    except POP3MailError:
        if not allow_errors:
            raise
        return None  # a clear error for this message is allowed; a crash is not
    folder = mail.folder.path
    assert folder.parent == root
    saved = [p.path for p in mail.saved_paths]
    for path in saved:
        resolved = path.resolve()
        assert resolved.is_relative_to(folder.resolve()), path
        assert resolved.is_file()
    for a in mail.attachments:
        assert hashlib.sha256(a.path.read_bytes()).hexdigest() == a.sha256
        assert a.path.path.stat().st_size == a.size
    # Nothing outside, nothing left in the work folder; the journal and outbox of the state
    # folder are the store's own.
    state = root / ".pop3mail"
    on_disk = {Path(d) / f for d, _, files in os.walk(root) for f in files
               if not (Path(d) == state and f.startswith(("journal-", "outbox-")))}
    inside = {p for p in on_disk if p.is_relative_to(folder)}
    assert on_disk == inside, on_disk - inside
    assert {p.resolve() for p in inside} == {p.resolve() for p in saved} | {folder / ".complete"}
    assert not any("internal error" in w for w in mail.warnings), mail.warnings
    for path in folder.rglob("*"):
        assert not path.is_symlink()
    return mail


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hostile_message())
def test_hostile_messages_stay_in_their_folder(data, tmp_path_factory):
    check_saved(tmp_path_factory.mktemp("hostile"), data, "u1")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_never_crash_the_store(data, tmp_path_factory):
    check_saved(tmp_path_factory.mktemp("bytes"), data, "u2")
