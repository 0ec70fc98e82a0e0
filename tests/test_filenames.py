"""Safe names for attachments: every rule by example, then any string at all."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefect_pop3mail.tasks.pop3.message.filenames import (
    MAX_NAME_BYTES,
    NameAllocator,
    decode_rfc2047,
    safe_filename,
)
from tests.corpus.build import HOSTILE


@pytest.mark.parametrize(("raw", "safe"), [(r, s) for r, s in HOSTILE if s])
def test_hostile_names_from_the_corpus(raw, safe):
    assert safe_filename(raw, "fallback.bin") == safe


@pytest.mark.parametrize("raw", ["", "..", ".", "   ", "...", "/", "\\", "\x00", "\u202e", None])
def test_nothing_left_means_the_fallback(raw):
    assert safe_filename(raw, "part-2.bin") == "part-2.bin"


@pytest.mark.parametrize(("raw", "safe"), [
    ("=?UTF-8?B?w6lsw6h2ZS5wZGY=?=", "élève.pdf"),
    ("=?iso-8859-1?Q?R=E9sum=E9.doc?=", "Résumé.doc"),
    ("=?utf-8?q?..=2F..=2Fetc=2Fpasswd?=", "passwd"),
    ("=?bogus-charset?Q?x?=", "=_bogus-charset_Q_x_="),
    ("Cafe\u0301.txt", "Café.txt"),
    ("CON.tar.gz", "_CON.tar.gz"),
    ("aux", "_aux"),
    ("Con ", "_Con"),
    ("conference.txt", "conference.txt"),
    ("report\tfinal\n.pdf", "report final .pdf"),
    ("a" * 250, "a" * MAX_NAME_BYTES),
    ("b" * 250 + ".verylongextensionthatgoesonandon", ("b" * 250 + ".verylongextensionthatgoesonandon")[:MAX_NAME_BYTES]),
])
def test_rules_by_example(raw, safe):
    assert safe_filename(raw, "x") == safe


def test_rfc2047_decoding_leaves_plain_text_alone():
    assert decode_rfc2047("plain =? text") == "plain =? text"


def test_allocator_appends_numbers_case_insensitively():
    names = NameAllocator()
    assert [names.claim(n) for n in ["a.pdf", "A.pdf", "a.pdf", "a (2).pdf", "noext", "noext"]] == [
        "a.pdf", "A (2).pdf", "a (3).pdf", "a (2) (2).pdf", "noext", "noext (2)"]


def test_allocator_reserves_a_message_and_its_folder_together():
    names = NameAllocator()
    assert names.claim("Fwd.eml") == "Fwd.eml"
    assert names.claim("Fwd", also=".eml") == "Fwd (2)"  # "Fwd (2)/" and "Fwd (2).eml"
    assert names.claim("Fwd (2).eml") == "Fwd (2) (2).eml"
    assert names.claim("Fwd") == "Fwd"


def test_allocator_keeps_long_names_under_the_cap():
    names = NameAllocator()
    long = "é" * 100 + ".pdf"  # 204 bytes: over the cap only with a suffix
    first = safe_filename(long, "x")
    second = names.claim(first)
    third = names.claim(first)
    assert second != third
    assert all(len(n.encode()) <= MAX_NAME_BYTES for n in (second, third))


@given(raw=st.text(max_size=400))
def test_any_name_becomes_one_plain_component(raw, tmp_path_factory):
    name = safe_filename(raw, "fallback.bin")
    assert name and name not in (".", "..")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith(".") and not name.endswith((".", " "))
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name)
    assert name.split(".")[0].rstrip().upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT1"}
    folder = tmp_path_factory.mktemp("names")
    (folder / name).write_bytes(b"x")
    assert [p.name for p in folder.iterdir()] == [name]


@given(raws=st.lists(st.sampled_from(["a.txt", "A.TXT", "a.txt ", "a.txt.", "..", "b", "B"]), max_size=30))
def test_allocated_names_never_collide(raws):
    names = NameAllocator()
    claimed = [names.claim(safe_filename(r, "part.bin")) for r in raws]
    assert len({c.casefold() for c in claimed}) == len(claimed)
