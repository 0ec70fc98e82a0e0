"""Outlook's winmail.dat: the bounded reader (tasks/pop3/message/tnef.py), against tnefparse on
well-formed streams, and on hostile ones by class; and the files through the store.

The streams are written by tests/tnef_writer.py in the situations of tnefparse's own test
files (two files, data before the name, long names, missing names, Unicode and code-page
names, data in MAPI properties, OLE objects, Outlook items, duplicate names, garbage at the
end, a bad checksum): their files are not copied here (LGPL-3.0), their cases are.
"""

from __future__ import annotations

import io
import logging
import os
import struct

import pytest
import tnefparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_pop3mail.tasks.pop3.message import tnef
from prefect_pop3mail.tasks.pop3.models import SaveOptions
from prefect_pop3mail.tasks.pop3.storage.store import MessageStore
from tests import tnef_writer as tw
from tests.corpus.build import b64, leaf, message, multipart
from tests.test_message_fuzz import tnef_streams, watchdog
from tests.test_store_corpus import save
from tests.test_store_hostile import check_saved

EXAMPLES = 3000 if os.environ.get("POP3MAIL_SOAK") else 200


def read(data: bytes, **kwargs) -> tuple[list[tuple[tnef.TnefFile, bytes]], list[str]]:
    file = io.BytesIO(data)
    contents = tnef.read_tnef(file, len(data), **kwargs)
    files = []
    for found in contents.files:
        out = io.BytesIO()
        tnef.copy_file(file, found, out)
        files.append((found, out.getvalue()))
    return files, contents.warnings


# --- what Outlook writes ---------------------------------------------------------------------


def test_two_files_with_their_names_and_bytes():
    data = tw.tnef([tw.File("AUTHORS", b"Alice\r\nBob\r\n", short="AUTHORS"),
                    tw.File("README", b"Read me.\r\n" * 50, short="README", mime="text/plain")])
    files, warnings = read(data)
    assert [(f.number, f.name, f.content_type, body) for f, body in files] == [
        ("1", "AUTHORS", None, b"Alice\r\nBob\r\n"), ("2", "README", "text/plain", b"Read me.\r\n" * 50)]
    assert warnings == []


@pytest.mark.parametrize(("file", "want"), [
    (tw.File("Quarterly report for the board, March 2026 (final).pdf", short="QUARTE~1.PDF"),
     "Quarterly report for the board, March 2026 (final).pdf"),
    (tw.File(None, short="CONFIG.SYS"), "CONFIG.SYS"),
    (tw.File("UmlautAnhang-äüö.txt", unicode=False), "UmlautAnhang-äüö.txt"),
    (tw.File("Отчёт.docx"), "Отчёт.docx"),
    (tw.File("報告書.xlsx", short="~1.XLS"), "報告書.xlsx"),
    (tw.File(None, extra=[tw.prop(tw.PT_UNICODE, tw.PR_DISPLAY_NAME, "Shown name")]), "Shown name"),
    (tw.File(None, extra=[tw.prop(tw.PT_UNICODE, tw.PR_ATTACH_FILENAME, "SHORT.TXT"),
                          tw.prop(tw.PT_UNICODE, tw.PR_DISPLAY_NAME, "Shown")]), "SHORT.TXT"),
    (tw.File(None), None),
])
def test_names_long_short_display_and_non_ascii(file, want):
    file.data = b"content"
    [(found, body)], _ = read(tw.tnef([file]))
    assert (found.name, body) == (want, b"content")


def test_code_page_names_are_read_in_the_streams_code_page():
    name = "Протокол.txt"
    data = tw.tnef([tw.File(name, b"x", short="PROTOK~1.TXT", unicode=False)],
                   codepage=1251, codec="cp1251")
    [(found, _)], _ = read(data)
    assert found.name == name


@pytest.mark.parametrize("store", ["data", "binary", "object"])
def test_data_in_attach_data_or_in_mapi_properties(store):
    body = b"\xd0\xcf\x11\xe0" + os.urandom(1000) + b"\0\0\0"  # ends in NULs: kept
    [(found, got)], _ = read(tw.tnef([tw.File("sheet.xls", body, store=store)]))
    assert got == body  # an OLE object's interface id is not part of the file


def test_an_outlook_item_gives_its_files_numbered_inside_it():
    inner = [tw.File("inner.pdf", b"%PDF-inner"), tw.File("deeper", embedded=[tw.File("d.txt", b"d")])]
    data = tw.tnef([tw.File("a.txt", b"a"), tw.File("Item", embedded=inner), tw.File("c.txt", b"c")])
    files, warnings = read(data)
    assert [(f.number, f.name, body) for f, body in files] == [
        ("1", "a.txt", b"a"), ("2.1", "inner.pdf", b"%PDF-inner"), ("2.2.1", "d.txt", b"d"),
        ("3", "c.txt", b"c")]
    assert warnings == []


def test_hidden_and_content_id_mean_inline():
    data = tw.tnef([tw.File("image001.png", b"png", hidden=True, mime="image/png"),
                    tw.File("image002.png", b"png", extra=[tw.prop(tw.PT_STRING8, tw.PR_ATTACH_CONTENT_ID, "x@y")]),
                    tw.File("a.pdf", b"pdf")])
    assert [f.inline for f, _ in read(data)[0]] == [True, True, False]


@pytest.mark.parametrize(("tag", "want"), [
    ("application/pdf", "application/pdf"), ("IMAGE/PNG", "image/png"), ("text", None),
    ("a/b; x=1", None), ("x" * 200 + "/y", None), ("", None), ("é/x", None)])
def test_only_mime_types_that_look_like_one_are_taken(tag, want):
    [(found, _)], _ = read(tw.tnef([tw.File("f", b"x", mime=tag or None)]))
    assert found.content_type == want


def test_an_attachment_without_data_is_no_file():
    data = tw.tnef([tw.File("link.url", store="none")])
    assert read(data) == ([], [])


def test_garbage_after_the_last_attribute_is_ignored_when_short():
    data = tw.tnef([tw.File("a.txt", b"a")])
    assert [f.name for f, _ in read(data + b"\0" * 10)[0]] == ["a.txt"]


# --- hostile streams, by class -----------------------------------------------------------------


def test_a_wrong_signature_is_a_warning_and_no_files():
    files, warnings = read(b"MZ" + os.urandom(100))
    assert files == [] and "not TNEF" in warnings[0]


def test_a_bad_checksum_is_a_warning_and_the_bytes_are_kept():
    good = tw.tnef([tw.File("a.bin", b"payload")])
    at = good.index(b"payload") + len(b"payload")  # the attAttachData checksum follows
    bad = good[:at] + bytes([good[at] ^ 1]) + good[at + 1:]
    [(found, body)], warnings = read(bad)
    assert body == b"payload" and "bad checksum" in warnings[0]


FIXED = tw.tnef([tw.File("first.pdf", b"%PDF" + bytes(range(256)) * 8, short="FIRST.PDF"),
                 tw.File("second.txt", b"second\r\n" * 100, store="binary"),
                 tw.File("Item", embedded=[tw.File("third.doc", b"third" * 50)])])
WHOLE = [(found.name, body) for found, body in read(FIXED)[0]]


@pytest.mark.parametrize("cut", range(0, len(FIXED), 7))
def test_truncated_anywhere_gives_only_whole_files(cut):
    """Cut off anywhere: the files listed are the first ones, each whole (the last may
    have only its short name, or none, when the cut took its long one)."""
    files, _ = read(FIXED[:cut])
    assert [body for _, body in files] == [body for _, body in WHOLE[:len(files)]]
    for (found, _), (name, _) in zip(files, WHOLE, strict=False):
        assert found.name in (name, "FIRST.PDF", None)


@pytest.mark.parametrize("build", [
    # A property count the data cannot hold, multi-value counts, value lengths of 4 GB.
    lambda: tw.attribute(tw.ATTACHMENT, tw.ATT_ATTACHMENT, tw.properties(count=0xFFFFFFFF)),
    lambda: tw.attribute(tw.ATTACHMENT, tw.ATT_ATTACHMENT, tw.properties(
        struct.pack("<HHI", tw.PT_SHORT | tw.MV, 0x1234, 0x7FFFFFFF))),
    lambda: tw.attribute(tw.ATTACHMENT, tw.ATT_ATTACHMENT, tw.properties(
        struct.pack("<HHI", tw.PT_BINARY | tw.MV, 0x1234, 0x7FFFFFFF) + b"\0" * 64)),
    lambda: tw.attribute(tw.ATTACHMENT, tw.ATT_ATTACHMENT, tw.properties(
        struct.pack("<HHII", tw.PT_BINARY, tw.PR_ATTACH_DATA, 1, 0xFFFFFFF0))),
    lambda: tw.attribute(tw.ATTACHMENT, tw.ATT_ATTACHMENT, tw.properties(
        struct.pack("<HH", tw.PT_UNICODE, 0x8001) + b"g" * 16 + struct.pack("<II", 1, 0xFFFFFFFF))),
    lambda: tw.attribute(tw.ATTACHMENT, tw.ATT_ATTACHMENT, tw.properties(
        struct.pack("<HH", 0x0999, 0x1234) + b"\0" * 32)),
    # An attribute whose length is past the end, and 4 GB.
    lambda: tw.attribute(tw.ATTACHMENT, tw.ATT_ATTACH_DATA, b"x" * 10, length=0xFFFFFFFF),
])
def test_huge_counts_and_lengths_fail_only_that_part(build):
    """The file before the bad attribute stands; a warning says what happened."""
    good = tw.tnef([tw.File("before.txt", b"before")])
    with watchdog(30):
        files, warnings = read(good + tw.attachment_attributes(tw.File("x", b"")) + build())
    assert [(f.name, body) for f, body in files][:1] == [("before.txt", b"before")]
    assert warnings


def test_a_bad_property_ends_only_its_attachments_properties():
    bad = tw.File(None, b"kept", extra=[struct.pack("<HH", 0x0999, 1) + b"\0" * 8])
    data = tw.tnef([tw.File("a.txt", b"a"), bad, tw.File("c.txt", b"c")])
    files, warnings = read(data)
    assert [(f.name, body) for f, body in files] == [("a.txt", b"a"), (None, b"kept"), ("c.txt", b"c")]
    assert "unknown TNEF property type" in warnings[0]


def test_outlook_items_nest_only_so_deep():
    inner = tw.tnef([tw.File("deep.txt", b"deep")])
    for _ in range(tnef.MAX_DEPTH + 3):
        inner = tw.tnef([tw.File("item", embedded=inner)])
    files, warnings = read(inner)
    assert files == [] and "nest over" in warnings[0]


def test_a_flood_of_tiny_attributes_stops_at_the_budget():
    one = tw.attribute(tw.MESSAGE, (0x8004, 0x0001), b"")
    data = tw.tnef([tw.File("a.txt", b"a")]) + one * (tnef.MAX_ITEMS + 10)
    files, warnings = read(data)
    assert [f.name for f, _ in files] == ["a.txt"]
    assert f"over {tnef.MAX_ITEMS}" in warnings[0]


def test_files_stop_at_max_files():
    data = tw.tnef([tw.File(f"f{i}.txt", b"x") for i in range(20)])
    files, warnings = read(data, max_files=5)
    assert len(files) == 5 and "over 5 files" in warnings[0]


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=tnef_streams())
def test_damaged_streams_never_raise_and_stay_inside_the_file(data):
    with watchdog(30):
        contents = tnef.read_tnef(io.BytesIO(data), len(data))
    for found in contents.files:
        offset, length = found.extent
        assert 0 <= offset and 0 <= length and offset + length <= len(data)


# --- against tnefparse ---------------------------------------------------------------------------


_NAME = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=40).filter(
    lambda s: s == s.strip())


@st.composite
def outlook_file(draw) -> tw.File:
    store = draw(st.sampled_from(["data", "binary", "object"]))
    # tnefparse drops trailing NULs of data kept in MAPI properties (its padding rule).
    body = draw(st.binary(max_size=400)).rstrip(b"\0") + (b"" if store == "data" else b"!")
    unicode = draw(st.booleans())
    name = draw(_NAME if unicode else _NAME.filter(lambda s: s.encode("cp1252", "ignore").decode("cp1252") == s))
    return tw.File(name, body, short=draw(st.sampled_from([None, "SHORT~1.TXT"])),
                   mime=draw(st.sampled_from([None, "application/pdf"])), store=store, unicode=unicode)


@settings(max_examples=EXAMPLES, deadline=None)
@given(files=st.lists(outlook_file(), max_size=5))
def test_the_same_files_as_tnefparse(files):
    data = tw.tnef(files)
    logging.getLogger("tnefparse").setLevel(logging.CRITICAL)
    theirs = [(a.long_filename(), a.data) for a in tnefparse.TNEF(data).attachments]
    ours = [(found.name, body) for found, body in read(data)[0]]
    # tnefparse keeps an OLE object's interface id (16 bytes) in front of the file.
    theirs = [(name, body[16:] if f.store == "object" else body)
              for (name, body), f in zip(theirs, files, strict=True)]
    assert ours == theirs


# --- through the store: name policy, results -------------------------------------------------


def tnef_message(stream: bytes, name: str = "winmail.dat", content_type: str = "application/ms-tnef",
                 *others: bytes) -> bytes:
    parts = [leaf({"Content-Type": "text/plain"}, b"See attachment.\r\n"), *others,
             leaf({"Content-Type": f'{content_type}; name="{name}"', "Content-Transfer-Encoding": "base64"},
                  b64(stream))]
    return message("TNEF", {"Content-Type": 'multipart/mixed; boundary="t"'}, multipart("t", parts))


def saved(tmp_path, data: bytes):
    return save(MessageStore(SaveOptions(directory=tmp_path), "m@h:1", "c"), data, "u1")


def test_names_from_a_winmail_dat_follow_the_file_name_policy(tmp_path):
    stream = tw.tnef([tw.File("../../etc/passwd", b"1"), tw.File("CON.txt", b"2"),
                      tw.File("a\u202egnp.exe", b"3"), tw.File("x" * 300 + ".pdf", b"4"),
                      tw.File("report.pdf", b"5"), tw.File("REPORT.PDF", b"6"), tw.File(None, b"7"),
                      tw.File("winmail.dat", b"8")])
    other = leaf({"Content-Type": 'application/pdf; name="report.pdf"'}, b"mime")
    mail = saved(tmp_path, tnef_message(stream, "winmail.dat", "application/ms-tnef", other))
    names = {a.path.name: a.path.read_bytes() for a in mail.attachments}
    assert names.pop("report.pdf") == b"mime"
    assert names.pop("winmail.dat") == stream
    assert names == {"passwd": b"1", "_CON.txt": b"2", "agnp.exe": b"3",
                     "x" * 196 + ".pdf": b"4", "report (2).pdf": b"5", "REPORT (3).PDF": b"6",
                     "winmail-7.bin": b"7", "winmail (2).dat": b"8"}
    for a in mail.attachments:
        assert a.path.path.parent == mail.folder.path / "attachments"


def test_results_list_the_files_as_coming_from_the_winmail_dat(tmp_path):
    stream = tw.tnef([tw.File("a.pdf", b"%PDF", mime="application/pdf"), tw.File("b.png", b"png")])
    mail = saved(tmp_path, tnef_message(stream))
    winmail = str(mail.folder.path / "attachments" / "winmail.dat")
    assert [(a.path.name, a.content_type, a.part, a.parent) for a in mail.attachments] == [
        ("winmail.dat", "application/ms-tnef", "2", None),
        ("a.pdf", "application/pdf", "1", winmail), ("b.png", "image/png", "2", winmail)]
    assert mail.warnings == []


def test_a_winmail_dat_sent_as_octet_stream_is_opened_too(tmp_path):
    stream = tw.tnef([tw.File("a.txt", b"a")])
    mail = saved(tmp_path, tnef_message(stream, "WINMAIL.DAT", "application/octet-stream"))
    assert [a.path.name for a in mail.attachments] == ["WINMAIL.DAT", "a.txt"]


def test_not_tnef_data_is_kept_with_a_warning(tmp_path):
    mail = saved(tmp_path, tnef_message(b"not tnef at all", "winmail.dat"))
    assert [a.path.name for a in mail.attachments] == ["winmail.dat"]
    assert "is not TNEF data" in mail.warnings[0]


def test_save_attachments_off_saves_no_tnef_files(tmp_path):
    stream = tw.tnef([tw.File("a.txt", b"a")])
    store = MessageStore(SaveOptions(directory=tmp_path, save_attachments=False), "m@h:1", "c")
    mail = save(store, tnef_message(stream), "u1")
    assert mail.attachments == []


@settings(max_examples=max(20, EXAMPLES // 4), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=tnef_streams())
def test_damaged_winmail_dats_through_the_store_keep_the_promises(stream, tmp_path_factory):
    with watchdog(60):
        mail = check_saved(tmp_path_factory.mktemp("tnef"), tnef_message(stream), "u1", allow_errors=False)
    assert any(a.path.name == "winmail.dat" and a.path.read_bytes() == stream for a in mail.attachments)


def test_a_reader_bug_costs_only_the_winmail_dats_contents(tmp_path, monkeypatch):
    """Anything the reader raises beyond its own warnings fails that part alone."""
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(tnef, "read_tnef", broken)
    stream = tw.tnef([tw.File("a.txt", b"a")])
    mail = saved(tmp_path, tnef_message(stream))
    assert [a.path.name for a in mail.attachments] == ["winmail.dat"]
    assert mail.text_path is not None and mail.text_path.read_bytes() == b"See attachment.\n"
    assert any("could not be read (RuntimeError)" in w for w in mail.warnings)


def test_files_from_a_winmail_dat_count_against_the_write_budget(tmp_path, monkeypatch):
    """The files copied out of a winmail.dat are bytes written for the message too: past the
    budget, the file being copied is dropped and the rest stays in the winmail.dat."""
    from prefect_pop3mail.tasks.pop3.message import layout

    big = os.urandom(300_000)
    stream = tw.tnef([tw.File("first.bin", big), tw.File("second.bin", big)])
    data = tnef_message(stream)
    # Room for the text, the winmail.dat and the first file, not the second.
    monkeypatch.setattr(layout, "write_budget", lambda size: len(stream) + len(big) + 1000)
    mail = saved(tmp_path, data)
    names = [a.path.name for a in mail.attachments]
    assert names == ["winmail.dat", "first.bin"]
    assert not (mail.folder.path / "attachments" / "second.bin").exists()
    assert any("over the write budget" in w for w in mail.warnings)
