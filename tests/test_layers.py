"""The layers only look down: flows -> tasks -> tasks/pop3 (the engine), and the engine
imports no Prefect, no block and no flow, so it can serve another orchestrator. Inside the
engine, its parts (sub-packages and root modules) form a DAG written down here."""

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


ENGINE = ROOT / "tasks" / "pop3"
#: The engine's parts (sub-packages, and the modules at its root) and which others each may
#: import: a DAG, so each part can be read and tested with only what lies below it. A new
#: module or sub-package must be placed here before it can pass.
ENGINE_PARTS: dict[str, set[str]] = {
    # The shared words, importing no other part.
    "errors": set(),
    "redaction": set(),
    "sinks": set(),
    "locations": set(),
    "tokens": set(),
    "models": {"errors", "locations", "tokens"},
    # The sub-packages.
    "trust": {"errors", "models"},
    "message": {"errors", "models", "sinks", "trust"},
    "protocol": {"errors", "models", "redaction", "sinks", "tokens"},
    "storage": {"errors", "locations", "message", "models"},
    # One run of one mailbox: the one part that brings the others together.
    "receiver": {"errors", "models", "protocol", "message", "storage", "redaction", "sinks"},
    # Saved mail read back (what replay hands on): storage alone, never the server.
    "replay": {"errors", "models", "storage"},
}
SUB_PACKAGES = ("message", "protocol", "storage", "trust")


def engine_part(module: str) -> str | None:
    """The part of the engine ``module`` belongs to, or None outside the engine."""
    prefix = f"{PACKAGE}.tasks.pop3."
    return module[len(prefix):].split(".")[0] if module.startswith(prefix) else None


def engine_parts_on_disk(root: Path) -> set[str]:
    engine = root / "tasks" / "pop3"
    return ({path.stem for path in engine.glob("*.py") if path.stem != "__init__"}
            | {path.parent.name for path in engine.glob("*/__init__.py")})


def upward_engine_imports(root: Path, parts: dict[str, set[str]]) -> list[str]:
    bad = []
    engine = root / "tasks" / "pop3"
    for path in sorted(engine.rglob("*.py")):
        relative = path.relative_to(engine)
        if relative.parts == ("__init__.py",):
            continue
        part = relative.parts[0].removesuffix(".py")
        for line, module in imports_of(path):
            target = engine_part(module)
            if target is not None and target != part and target not in parts.get(part, set()):
                bad.append(f"{path.relative_to(root)}:{line} ({part}) imports {module} ({target})")
    return bad


def cycle(parts: dict[str, set[str]]) -> list[str]:
    """A cycle in ``parts``, or [] when it is a DAG (depth-first, each part visited once)."""
    state: dict[str, str] = {}

    def visit(part: str, path: list[str]) -> list[str]:
        state[part] = "open"
        for below in sorted(parts.get(part, set())):
            if state.get(below) == "open":
                return path + [part, below]
            if below not in state and (found := visit(below, path + [part])):
                return found
        state[part] = "done"
        return []

    for part in sorted(parts):
        if part not in state and (found := visit(part, [])):
            return found
    return []


def test_every_engine_part_is_placed_in_the_dag():
    assert engine_parts_on_disk(ROOT) == set(ENGINE_PARTS)
    assert all(below in ENGINE_PARTS for allowed in ENGINE_PARTS.values() for below in allowed)
    assert cycle(ENGINE_PARTS) == []


def test_engine_parts_import_only_the_parts_below_them():
    assert upward_engine_imports(ROOT, ENGINE_PARTS) == []


def test_each_sub_package_says_what_it_promises_and_imports_nothing_itself():
    for name in SUB_PACKAGES:
        init = ENGINE / name / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "promise" in doc, f"{init.relative_to(ROOT)}: no docstring saying what it promises"
        assert imports_of(init) == [], f"{init.relative_to(ROOT)} imports; import its submodules"


def test_the_engine_checks_see_a_cycle_an_upward_import_and_an_unplaced_part(tmp_path):
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) == []
    engine = tmp_path / "tasks" / "pop3"
    (engine / "message").mkdir(parents=True)
    (engine / "message" / "__init__.py").write_text("")
    (engine / "message" / "mime.py").write_text(
        f"from {PACKAGE}.tasks.pop3.storage.store import MessageStore\n"
        f"from {PACKAGE}.tasks.pop3.errors import POP3MailError\n")
    (engine / "stray.py").write_text("")
    assert upward_engine_imports(tmp_path, ENGINE_PARTS) == [
        f"tasks/pop3/message/mime.py:1 (message) imports {PACKAGE}.tasks.pop3.storage.store (storage)"]
    assert engine_parts_on_disk(tmp_path) == {"message", "stray"}


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
