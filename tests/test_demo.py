"""`make demo`, the README's first command: the demo as it runs, against Dovecot and the
Prefect test server (the command itself starts Prefect's embedded server instead)."""

from __future__ import annotations

import pytest

from tests.conftest import require_dovecot

pytestmark = [pytest.mark.dovecot, pytest.mark.prefect]


def test_the_demo_receives_the_sample_mail_and_shows_what_was_saved_where(
        tmp_path, monkeypatch, capsys):
    from prefect_pop3mail.flows.demo import run_demo, sample_messages

    require_dovecot()
    monkeypatch.setenv("POP3MAIL_DEMO_DIR", str(tmp_path / "demo-output"))
    run_demo()

    out = capsys.readouterr().out
    assert f"Received {len(sample_messages())} message(s)" in out
    assert "Left on the server: 0 message(s)." in out
    saved = sorted(p for p in (tmp_path / "demo-output").rglob("*") if p.is_file()
                   and ".pop3mail" not in p.parts)
    listed = [line.split("  (")[0].strip() for line in out.splitlines()
              if line.startswith("    ") and line.endswith(" bytes)")]
    assert listed and all((tmp_path / "demo-output" / name).is_file() for name in listed)
    assert any(name.endswith(".pdf") for name in listed), listed
    assert {str(p.relative_to(tmp_path / "demo-output")) for p in saved} >= set(listed)
