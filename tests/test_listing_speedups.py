"""The fast paths of a big mailbox left on the server (bench scale) against the line-by-line
code they replace, kept here as the reference: reading a listing, checking its UIDLs and
sizes, and replaying the journal. Same input, same result, same error, same reads from the
socket, for generated input that goes well beyond the happy path.

A small fixed budget by default; POP3MAIL_SOAK=1 for a long run.
"""

from __future__ import annotations

import gc
import os
import re
import traceback
import zlib
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from prefect_pop3mail.tasks.pop3.errors import (
    DuplicateUIDLError,
    InvalidUIDLError,
    POP3MailError,
    POP3ProtocolError,
)
from prefect_pop3mail.tasks.pop3.models import ConnectionSettings, Security
from prefect_pop3mail.tasks.pop3.protocol import lineio
from prefect_pop3mail.tasks.pop3.protocol.lineio import LineReader
from prefect_pop3mail.tasks.pop3.protocol.session import _NUMBER, POP3Session, _uidl_problem
from prefect_pop3mail.tasks.pop3.storage import journal
from prefect_pop3mail.tasks.pop3.storage.base import JOURNAL
from prefect_pop3mail.tasks.pop3.storage.journal import Journal, Saved, _line
from prefect_pop3mail.tasks.pop3.storage.local import LocalStorage

EXAMPLES = 5000 if os.environ.get("POP3MAIL_SOAK") else 300


def outcome(run):
    """What a call returns, or the error it raises (class, text, quoted reply)."""
    try:
        return "returned", run()
    except POP3MailError as error:
        return "raised", type(error), str(error), getattr(error, "reply", None)


# --- reading a listing ----------------------------------------------------------------------


def per_line_body(reader: LineReader, max_bytes: int) -> list[bytes]:
    """LineReader.body_lines as it was: one status_line() per line."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = reader.status_line()
        if line == b".":
            return lines
        size += len(line) + 2
        if size > max_bytes:
            raise POP3ProtocolError(
                f"the reply to {reader._command} is longer than its cap of {max_bytes} bytes"
            )
        if line.startswith(b"."):
            line = line[1:]
        lines.append(line)


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedSocket:
    """Hands out the pieces one by one, each recv taking its own time on ``clock``; a recv
    longer than the socket's timeout raises TimeoutError, as a real one would."""

    def __init__(self, clock: Clock, pieces: list[bytes], seconds: list[float]):
        self.clock, self.pieces, self.seconds = clock, list(pieces), list(seconds)
        self.timeout = 1.0

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def recv(self, size: int) -> bytes:
        took = self.seconds.pop(0) if self.seconds else 0.0
        if took > self.timeout:
            self.clock.now += self.timeout
            raise TimeoutError
        self.clock.now += took
        return self.pieces.pop(0)[:size] if self.pieces else b""


def read_listing(read, pieces, seconds, cap, max_bytes):
    clock = Clock()
    sock = TimedSocket(clock, pieces, seconds)
    with mock.patch.object(lineio, "MAX_STATUS_LINE", cap), \
            mock.patch.object(lineio, "monotonic", clock):
        reader = LineReader(sock, 1.0, min_rate=100,
                            redact=lambda data: data.replace(b"secret", b"****"))
        reader.begin("UIDL")
        result = outcome(lambda: read(reader, max_bytes))
        # Where each stopped: the bytes left unread and the reads made.
        return result, reader._buf[reader._pos:], len(sock.pieces), reader._received, clock.now


wire_token = st.sampled_from([
    b".", b"..", b"\r", b"\n", b"\r\n", b".\r\n", b".\n", b"\n.\r\n", b"\r\r\n", b"x",
    b"1 uid", b" ", b"\t", b"\xff", b"secret", b"y" * 20, b"+OK next\r\n",
])


@settings(max_examples=EXAMPLES, deadline=None)
@given(tokens=st.lists(wire_token, max_size=80),
       cuts=st.lists(st.integers(0, 2000), max_size=12),
       seconds=st.lists(st.sampled_from([0.0, 0.01, 0.3, 2.0]), max_size=12),
       cap=st.sampled_from([4, 16, 8192]),
       max_bytes=st.one_of(st.integers(0, 120), st.just(lineio.MAX_LISTING_BYTES)))
def test_a_listing_reads_as_it_did_line_by_line(tokens, cuts, seconds, cap, max_bytes):
    wire = b"".join(tokens)
    points = sorted({c % (len(wire) + 1) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    pieces = [p for p in pieces if p]  # an empty piece would mean the end of the stream
    expected = read_listing(per_line_body, pieces, seconds, cap, max_bytes)
    assert read_listing(LineReader.body_lines, pieces, seconds, cap, max_bytes) == expected


def test_a_long_listing_in_small_pieces_is_whole():
    lines = [b"%d uid-%d" % (n, n) for n in range(1, 5001)] + [b".stuffed", b"..", b""]
    wire = b"".join(b"." + line + b"\r\n" if line.startswith(b".") else line + b"\r\n"
                    for line in lines) + b".\r\n+OK after\r\n"
    pieces = [wire[i:i + 1000] for i in range(0, len(wire), 1000)]
    reader = LineReader(TimedSocket(Clock(), pieces, []))
    assert reader.body_lines() == lines
    assert reader.status_line() == b"+OK after"


# --- UIDL and LIST listings -----------------------------------------------------------------


def quote(data: bytes) -> bytes:
    return data.replace(b"secret", b"****")[:lineio.QUOTE]


def reference_entries(command, lines):
    entries = []
    for raw in lines:
        words = raw.split()
        if not words or not _NUMBER.fullmatch(words[0]) or int(words[0]) < 1:
            raise POP3ProtocolError(f"malformed {command} line", quote(raw))
        entries.append((int(words[0]), words[1:], raw))
    return entries


def reference_list(lines):
    sizes = {}
    for n, words, raw in reference_entries("LIST", lines):
        if not words or not _NUMBER.fullmatch(words[0]):
            raise POP3ProtocolError("malformed LIST line", quote(raw))
        sizes[n] = int(words[0])
    return sizes


def reference_uidl(lines):
    """POP3Session.uidl as it was, for a whole listing: (valid, invalid)."""
    found, invalid = {}, {}
    for n, words, raw in reference_entries("UIDL", lines):
        problem = _uidl_problem(words)
        if n in found or n in invalid:
            problem = "listed twice in one UIDL listing"
            found.pop(n, None)
        if problem:
            invalid[n] = InvalidUIDLError(n, problem, quote(raw))
        else:
            found[n] = words[0]
    holders = {}
    for n, uid in found.items():
        holders.setdefault(uid, []).append(n)
    for uid, numbers in holders.items():
        for n in numbers if len(numbers) > 1 else ():
            others = ", ".join(str(m) for m in numbers if m != n)
            invalid[n] = DuplicateUIDLError(
                n, f"its UIDL is also the UIDL of message {others}", uid.decode("ascii"))
            del found[n]
    return {n: uid.decode("ascii") for n, uid in found.items()}, invalid


def offline_session(lines: list[bytes]) -> POP3Session:
    """A session whose listings answer ``lines``, without a server."""
    session = POP3Session(ConnectionSettings(host="127.0.0.1", port=110, user="u",
                                             password=SecretStr("secret"),
                                             security=Security.NONE))
    session._redact.remember("secret")
    session._longcmd = lambda command, *cap: list(lines)
    return session


def in_order(mapping):
    """A dict's items in order; errors as what a caller sees of them."""
    return [(k, (type(v), str(v), v.reply, v.uidl) if isinstance(v, POP3MailError) else v)
            for k, v in mapping.items()]


space = st.sampled_from([b" ", b"  ", b"\t", b"\x0b", b"\x0c", b"\r", b"\x85", b"\xa0", b""])
number = st.sampled_from([b"1", b"2", b"3", b"007", b"0", b"999999999999", b"1234567890123",
                          b"x", b"-1", b"\xd9\xa1"])
field = st.one_of(
    st.sampled_from([b"uid-1", b"uid-2", b"a" * 70, b"a" * 71, b"12", b"0", b"caf\xc3\xa9",
                     b"\x7f", b"~!", b"secret", b"1 2"]),
    st.binary(max_size=8).filter(lambda b: b"\n" not in b),
)
listed_size = st.sampled_from([b"0", b"12", b"0012", b"999999999999", b"1234567890123", b"1x"])


def listings(second: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    """Listings as servers write them ("number second"), or with odd lines among them."""
    usual = st.tuples(number, second).map(b" ".join)
    odd = st.tuples(space, number, space, st.one_of(second, field), space,
                    st.sampled_from([b"", b" x"])).map(b"".join)
    return st.one_of(st.lists(usual, max_size=25), st.lists(st.one_of(usual, odd), max_size=25))


@settings(max_examples=EXAMPLES, deadline=None)
@given(lines=listings(field))
def test_uidl_listings_check_as_they_did_line_by_line(lines):
    session = offline_session(lines)
    new = outcome(lambda: in_order(session.uidl()))
    old = outcome(lambda: in_order(reference_uidl(lines)[0]))
    assert new == old
    if old[0] == "returned":
        assert in_order(session.invalid_uidls) == in_order(reference_uidl(lines)[1])


@settings(max_examples=EXAMPLES, deadline=None)
@given(lines=listings(listed_size))
def test_list_listings_check_as_they_did_line_by_line(lines):
    new = outcome(lambda: in_order(offline_session(lines).list()))
    assert new == outcome(lambda: in_order(reference_list(lines)))


def test_a_clean_listing_and_one_with_a_bad_uidl_agree_on_the_good_ones():
    lines = [b"%d uid-%d" % (n, n) for n in range(1, 2001)]
    session = offline_session(lines)
    assert session.uidl() == {n: f"uid-{n}" for n in range(1, 2001)}
    assert session.invalid_uidls == {}
    session = offline_session([*lines, b"2001 uid-7", b"2002 bad\xffuid"])
    valid = session.uidl()
    assert set(session.invalid_uidls) == {7, 2001, 2002} and len(valid) == 1999
    assert isinstance(session.invalid_uidls[7], DuplicateUIDLError)
    assert "0x21-0x7E" in str(session.invalid_uidls[2002])


# --- the journal ----------------------------------------------------------------------------


_FOLDER = re.compile(r"(?:[0-9]{8}-[0-9]{6}|undated)-[0-9a-f]{12}")
_HEAD = re.compile(r"[0-9a-f]{32}")


def _printable(text: str, longest: int) -> bool:
    return 1 <= len(text) <= longest and all("!" <= c <= "~" for c in text)


def reference_load(data: bytes):
    """What Journal._load must do, one record at a time: a record counts when its CRC and
    every field are as pop3mail writes them."""
    saved, failures = {}, {}
    for raw in data.split(b"\n"):
        body, _, crc = raw.rpartition(b"\t")
        if crc != b"%08x" % zlib.crc32(body):
            continue
        try:
            fields = body.decode("ascii").split("\t")
        except UnicodeDecodeError:
            continue
        kind, uidl = fields[0], fields[1] if len(fields) > 1 else ""
        if (kind in ("S", "Q") and len(fields) == 5 and _printable(uidl, 70)
                and _FOLDER.fullmatch(fields[2]) and fields[3].isdigit()
                and len(fields[3]) <= 15 and _HEAD.fullmatch(fields[4])):
            saved[uidl] = Saved(fields[2], int(fields[3]), fields[4], kind == "Q")
            failures.pop(uidl, None)
        elif kind == "F" and len(fields) == 3 and _printable(uidl, 70) \
                and _printable(fields[2], 32):
            failures.setdefault(uidl, []).append(fields[2])
    return saved, failures


def loaded(data: bytes):
    journal = Journal.__new__(Journal)  # the replay alone, without a state folder
    journal.saved, journal.failures, journal.distrusted = {}, {}, {}
    journal.rejected = journal.damaged = 0
    journal._load(data)
    return journal.saved, journal.failures


text = st.sampled_from(["u1", "u2", "ü", "", "S", "F", "a\rb", "x y", "a\tb", "\ufffd",
                        "x" * 70, "y" * 71])
folder = st.sampled_from(["20261125-110200-0123456789ab", "undated-0123456789ab", "f", "",
                          "../x", "20261125-110200-0123456789AB", "2026112-110200-0123456789ab"])
head = st.sampled_from(["0123456789abcdef" * 2, "ab" * 16, "", "h", "0123456789ABCDEF" * 2])
recorded_size = st.sampled_from(["", "12", "0012", "²", "١٢", "x", "-1", "9" * 16])
record = st.one_of(
    st.tuples(st.sampled_from("SQSQFx"), text, folder, recorded_size, head).map(lambda r: _line(*r)),
    st.tuples(text, st.sampled_from(["save", "retr"])).map(lambda r: _line("F", *r)),
    st.tuples(st.sampled_from("SQF"), text, text).map(lambda r: _line(*r)),  # wrong length
    st.tuples(text, text).map(lambda r: "\t".join(r).encode() + b"\n"),  # version 0.1
    st.sampled_from([b"\n", b"\xe2\x82\n", b"S\tu\xff\tf\t1\th\t00000000\n", b"\t\n"]),
)


@st.composite
def journals(draw):
    lines = draw(st.lists(record, max_size=30))
    for i in draw(st.lists(st.integers(0, 29), max_size=4)):  # torn or damaged records
        if i < len(lines):
            cut = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:cut] + draw(st.sampled_from([b"", b"\xc3", b"z", b"\n"]))
    data = b"".join(lines)
    return data if draw(st.booleans()) else data.rstrip(b"\n")


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=journals(), run=st.sampled_from([1, 3, journal._RUN]))
def test_the_journal_replays_as_it_did_record_by_record(data, run):
    with mock.patch.object(journal, "_RUN", run):
        saved, failures = loaded(data)
    old_saved, old_failures = reference_load(data)
    assert list(saved.items()) == list(old_saved.items())
    assert list(failures.items()) == list(old_failures.items())
    assert all(type(s) is Saved for s in saved.values())


def folder_of(i: int) -> str:
    return f"20261125-110200-{i:012x}"


def test_a_big_journal_with_failures_and_a_torn_line_replays_in_order():
    lines = [_line("S", f"u{i}", folder_of(i), i, HEAD) for i in range(3000)]
    lines[100] = _line("F", "u5", "retr")  # after u5's save: counts
    lines[200] = _line("F", "u300", "save")  # before u300's save: ended by it
    lines[1500] = lines[1500][:9] + b"\n"  # torn by a crash, ended when next opened
    saved, failures = loaded(b"".join(lines))
    assert (saved, failures) == reference_load(b"".join(lines))
    assert failures == {"u5": ["retr"]} and "u1500" not in saved and len(saved) == 2997
    assert saved["u7"] == Saved(folder_of(7), 7, HEAD) and type(saved["u7"]) is Saved


HEAD = "0123456789abcdef" * 2


def big_journal(tmp_path) -> tuple[LocalStorage, bytes]:
    """A journal file over BACKGROUND_BYTES, with a failure and a torn line in it."""
    storage = LocalStorage(tmp_path, "digest")
    log = storage.open_log(JOURNAL)
    lines = [_line("S", f"u{i}", folder_of(i), i, HEAD) for i in range(30_000)]
    lines[10] = _line("F", "never-saved", "retr")
    lines[20] = lines[20][:5] + b"\n"
    data = b"".join(lines)
    assert len(data) > journal.BACKGROUND_BYTES
    log.rewrite(data)
    log.close()
    return storage, data


def open_journal(storage: LocalStorage) -> Journal:
    return Journal(storage.open_log(JOURNAL))


def test_a_big_journal_replayed_in_the_background_is_the_one_replayed_in_place(tmp_path):
    storage, data = big_journal(tmp_path)
    opened = open_journal(storage)
    try:
        assert opened._replay is not None  # replaying while the caller goes on
        assert opened.get_many(["u0", "u20", "u29999", "nope"]) == [
            Saved(folder_of(0), 0, HEAD), None, Saved(folder_of(29999), 29999, HEAD), None]
        assert opened._replay is None
        assert (opened.saved, opened.failures) == loaded(data)
        assert opened.failure_count("never-saved") == 1 and "u20" not in opened
        assert opened.count_saved(["u1", "u2", "u20", "x"]) == 2
        opened.record("new", Saved(folder_of(1), 1, HEAD))  # after the replayed records
    finally:
        opened.close()
    again = open_journal(storage)
    try:
        assert again.get("new") == Saved(folder_of(1), 1, HEAD) and len(again.saved) == 29_999
    finally:
        again.close()
        storage.close()


def test_a_background_replay_that_fails_fails_every_use_of_the_journal(tmp_path):
    storage, _ = big_journal(tmp_path)
    with mock.patch.object(Journal, "_load", side_effect=MemoryError("replay")):
        opened = open_journal(storage)
    depths = set()
    try:
        for use in (lambda: opened.get("u1"), lambda: "u1" in opened,
                    lambda: opened.record("u1", Saved(folder_of(1)))):
            with pytest.raises(MemoryError, match="replay") as caught:
                use()
            depths.add(len(traceback.extract_tb(caught.value.__traceback__)))
    finally:
        opened.close()  # joins the thread, closes the file, raises nothing
    assert opened.log._fd == -1
    assert len(depths) == 1, depths  # the replay's traceback each time, not one grown by every use
    storage.close()


def test_a_journal_that_cannot_be_replayed_closes_its_file(tmp_path):
    storage, _ = big_journal(tmp_path)
    before = set(os.listdir("/proc/self/fd"))
    with mock.patch("prefect_pop3mail.tasks.pop3.storage.journal._Replay",
                    side_effect=RuntimeError("no thread")), pytest.raises(RuntimeError):
        open_journal(storage)
    assert set(os.listdir("/proc/self/fd")) == before
    storage.close()


def test_replays_that_overlap_leave_the_collector_as_they_found_it():
    """The collector is the process's: two journals replayed at once (a fan-out), the first
    ending before the second, must neither leave it off nor turn it on early."""
    assert gc.isenabled()
    first, second = journal._gc_paused(), journal._gc_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second replay is still building records
    second.__exit__(None, None, None)
    assert gc.isenabled()
    gc.disable()
    try:  # a process that runs with the collector off keeps it off
        with journal._gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
