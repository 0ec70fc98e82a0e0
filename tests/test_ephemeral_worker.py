"""Ephemeral workers: each run in a fresh process with a fresh HOME, working directory and
TMPDIR, as a container of a Docker or Kubernetes work pool gets. Nothing is shared between
runs but the Prefect API and the storage URL (a real S3-compatible server), yet a rerun
saves no duplicate, and with removal on nothing is lost. The worker's disk keeps nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import pytest
from prefect.settings import PREFECT_API_URL

from tests import storage_backends
from tests.conftest import sample_message

pytestmark = [pytest.mark.dovecot, pytest.mark.prefect, pytest.mark.s3]

CHILD = """
import json, sys
from prefect_pop3mail.flows import receive_all_mail
limit = int(sys.argv[2]) or None
mails = receive_all_mail(sys.argv[1], max_messages=limit)
print("RESULT " + json.dumps([m.model_dump(mode="json") for m in mails]), flush=True)
"""


s3_server = storage_backends.s3_server  # the fixture: moto's S3 server for the module


def run_on_fresh_worker(server, name: str, root: Path, max_messages: int = 0) -> list[dict]:
    """One flow run in a new process whose HOME, working directory and TMPDIR are new and
    empty; its environment holds only what a work pool's job template would set."""
    worker = root / f"worker-{uuid.uuid4().hex[:8]}"
    home, cwd, tmp = worker / "home", worker / "cwd", worker / "tmp"
    for folder in (home, cwd, tmp):
        folder.mkdir(parents=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "TMPDIR": str(tmp),
           "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore", **server.env()}
    done = subprocess.run([sys.executable, "-c", CHILD, name, str(max_messages)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    left = [p for p in tmp.rglob("*") if p.name.startswith("pop3mail-")]
    assert not left, f"the run left its work area on the worker: {left}"
    return json.loads(result[len("RESULT "):])


def saved(url: str) -> dict[str, bytes]:
    """Complete message folders under ``url`` -> their original, as another machine reads
    them: only folders whose marker is there."""
    fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True)
    names = set(fs.find(root))
    return {p.rsplit("/", 2)[-2]: fs.cat_file(p) for p in names
            if p.endswith("/message.eml") and p.replace("message.eml", ".complete") in names}


def digest(message: bytes) -> str:
    return hashlib.sha256(message.replace(b"\n", b"\r\n")).hexdigest()


def test_a_fresh_worker_does_not_save_again_what_another_saved(mailbox, s3_server,
                                                               tmp_path, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3_server.new_bucket()}/mail"
    messages = [sample_message(i, body=f"Ephemeral {i}.\n") for i in range(5)]
    mailbox.deliver(*messages)
    name = f"ephemeral-{uuid.uuid4().hex[:8]}"
    mailbox.block(url).save(name)  # removal off: only the journal on storage remembers

    first = run_on_fresh_worker(s3_server, name, tmp_path)
    second = run_on_fresh_worker(s3_server, name, tmp_path)

    assert len(first) == 5 and second == []
    assert mailbox.count() == 5
    originals = saved(url)
    assert sorted(hashlib.sha256(o).hexdigest() for o in originals.values()) == \
        sorted(digest(m) for m in messages)
    for mail in first:  # what a downstream step on any machine receives, and opens
        with fsspec.open(mail["original_path"], "rb") as f:  # a URL, as any location on S3
            assert hashlib.sha256(f.read()).hexdigest() == mail["sha256"]


def test_fresh_workers_removing_mail_lose_nothing(mailbox, s3_server, tmp_path, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    url = f"s3://{s3_server.new_bucket()}/mail"
    early = [sample_message(i, body=f"Early {i}.\n") for i in range(4)]
    late = [sample_message(10 + i, body=f"Late {i}.\n") for i in range(3)]
    mailbox.deliver(*early)
    name = f"ephemeral-{uuid.uuid4().hex[:8]}"
    mailbox.block(url, remove_from_server_after_read=True).save(name)

    first = run_on_fresh_worker(s3_server, name, tmp_path, max_messages=3)
    mailbox.deliver(*late)
    second = run_on_fresh_worker(s3_server, name, tmp_path)

    assert len(first) == 3 and len(second) == 4
    assert mailbox.count() == 0
    originals = saved(url)
    assert len(originals) == 7
    assert {hashlib.sha256(o).hexdigest() for o in originals.values()} == \
        {digest(m) for m in early + late}
