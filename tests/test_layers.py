"""The layers only look down: flows -> tasks -> tasks/pop3 (the engine), and the engine
imports no Prefect, no block and no flow, so it can serve another orchestrator."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "prefect_pop3mail"
# Each layer and the imports it must never make (module prefixes).
FORBIDDEN = {
    "tasks/pop3": ("prefect", f"{PACKAGE}.blocks", f"{PACKAGE}.flows", f"{PACKAGE}.tasks.activities",
                   f"{PACKAGE}.tasks.lock", f"{PACKAGE}.tasks.events", f"{PACKAGE}.tasks.artifacts",
                   f"{PACKAGE}.tasks.automations", f"{PACKAGE}.tasks.outcomes",
                   f"{PACKAGE}.tasks.prefect_api", f"{PACKAGE}.tasks.run_logs"),
    "tasks": (f"{PACKAGE}.flows",),
    "blocks": (f"{PACKAGE}.flows", f"{PACKAGE}.tasks.activities", f"{PACKAGE}.tasks.lock",
               f"{PACKAGE}.tasks.events", f"{PACKAGE}.tasks.artifacts"),
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            found.append((node.lineno, node.module or ""))
    return found


def violations(layer: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        if layer == "tasks" and path.is_relative_to(ROOT / "tasks" / "pop3"):
            continue  # checked as its own, stricter layer
        for line, module in imports_of(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_lies_below_it(layer):
    assert violations(layer) == []


def test_the_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The walk above must be able to fail: a planted engine module importing Prefect."""
    engine = tmp_path / "tasks" / "pop3"
    engine.mkdir(parents=True)
    (engine / "bad.py").write_text("from prefect import flow\nimport os\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations("tasks/pop3") == ["tasks/pop3/bad.py:1 imports prefect"]


SEAM = f"{PACKAGE}.tasks.pop3.storage"
#: Behind the storage interface: the back-ends and their helpers.
BACK_ENDS = {f"{SEAM}.{name}" for name in ("local", "objects", "sftp", "statedir", "legacy")}


def test_nothing_above_the_storage_seam_asks_which_back_end_it_has():
    """The journal, the outbox, the receiver and the rest of the engine speak to the storage
    interface alone; ``storage.store.open_storage`` is the one place that picks a back-end
    (and its work area, where ``storage.incoming`` writes a message as it arrives, is a local
    folder on every back-end: ``statedir.save_errors``)."""
    bad = []
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        name = path.relative_to(ROOT / "tasks").with_suffix("").as_posix().replace("/", ".")
        module = f"{PACKAGE}.tasks.{name}"
        if module in BACK_ENDS:
            continue
        allowed = (BACK_ENDS if module == f"{SEAM}.store"
                   else {f"{SEAM}.statedir"} if module == f"{SEAM}.incoming" else set())
        for line, imported in imports_of(path):
            if imported in BACK_ENDS - allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert bad == []


def test_no_module_imports_the_bare_folder_names():
    """Installed, the folders are prefect_pop3mail.*; a bare import would load a copy."""
    bare = []
    for folder in ("blocks", "tasks", "flows", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if "corpus" in path.parts:
                continue
            for line, module in imports_of(path):
                if module.split(".")[0] in ("blocks", "tasks", "flows"):
                    bare.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert bare == []
