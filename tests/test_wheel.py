"""The built wheel, installed the way a user installs it: into a fresh virtualenv, next to a
Prefect project with its own ``flows/``, ``tasks/`` and ``blocks/`` packages.

The wheel's dependencies come from this project's virtualenv, seen through a ``.pth`` file
(no downloads), but nothing of the editable install of prefect_pop3mail is visible there:
every import of the plugin must come from the wheel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.prefect_server import PROJECT_ROOT, PrefectServer, shared_prefect_server
from tests.test_deployment_server import TERMINAL, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.prefect]

SUBPACKAGES = ("blocks", "tasks", "tasks/pop3", "flows")
# What a checkout has that a build must not see: other builds, caches, virtualenvs.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
    ".ruff_cache", ".hypothesis", "demo-output", ".demo",
)


@dataclass
class WheelVenv:
    root: Path
    wheel: Path

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return Path(sysconfig.get_path("purelib", vars={"base": str(self.root)}))

    def run(self, *args: str, cwd: Path, env: dict[str, str] | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.python), *args], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
        if check and done.returncode != 0:
            raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}")
        return done


def build_wheel(out: Path) -> Path:
    """``pip wheel`` from a clean copy of the checkout (setuptools reuses a stale build/)."""
    source = out / "source"
    shutil.copytree(PROJECT_ROOT, source, ignore=_NOT_SOURCE)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source),
                    "-w", str(out)], check=True, capture_output=True, timeout=600)
    (wheel,) = out.glob("prefect_pop3mail-*.whl")
    return wheel


def dependencies_without_the_plugin(into: Path) -> Path:
    """This virtualenv's site-packages as links, minus every trace of the editable install."""
    into.mkdir()
    ours = ("prefect_pop3mail", "__editable__", "_prefect_pop3mail", "__pycache__")
    for entry in Path(sysconfig.get_path("purelib")).iterdir():
        if entry.name.startswith(ours) or entry.suffix == ".pth":
            continue
        (into / entry.name).symlink_to(entry)
    return into


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> WheelVenv:
    work = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(work)
    venv = WheelVenv(work / "venv", wheel)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv.root)], check=True)
    deps = dependencies_without_the_plugin(work / "deps")
    # After the venv's own site-packages: the wheel's files win over anything in deps.
    (venv.site_packages / "zz_project_dependencies.pth").write_text(f"{deps}\n")
    # --no-index: every dependency the wheel declares must already be there.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv.python), "install",
                    "-q", "--no-index", str(wheel)], check=True, capture_output=True,
                   timeout=600)
    return venv


# --- the wheel's contents ---------------------------------------------------------------


def test_the_wheel_holds_the_plugin_and_nothing_of_the_checkout(wheel_venv):
    with zipfile.ZipFile(wheel_venv.wheel) as wheel:
        names = wheel.namelist()
        sources = {n: wheel.read(n).decode() for n in names if n.endswith(".py")}
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(meta).decode()
        entry_points = wheel.read(meta.replace("METADATA", "entry_points.txt")).decode()

    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"prefect_pop3mail"}  # no top-level flows/, tasks/, blocks/, tests/
    assert not [n for n in names if n.startswith("prefect_pop3mail/flows/demo")]
    assert not [n for n, text in sources.items()
                if "import tests" in text or "from tests" in text]
    for package in SUBPACKAGES:
        assert f"prefect_pop3mail/{package}/py.typed" in names
        assert f"prefect_pop3mail/{package}/__init__.py" in names
    # The top package's own __init__ (flows/package-root/ in the checkout), once.
    assert "prefect_pop3mail/__init__.py" in names and "prefect_pop3mail/py.typed" in names
    assert not [n for n in names if "package-root" in n]
    assert "prefect_pop3mail/flows/cli.py" in names
    # Every module of the engine's sub-packages: pyproject.toml lists the packages by hand.
    engine = PROJECT_ROOT / "tasks" / "pop3"
    modules = {f"prefect_pop3mail/tasks/pop3/{p.relative_to(engine).as_posix()}"
               for p in engine.rglob("*.py")}
    assert modules - set(names) == set()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert "Requires-Dist: prefect<4,>=3.4.10" in metadata
    assert "[prefect.collections]\npop3mail = prefect_pop3mail.blocks" in entry_points
    assert "[console_scripts]\npop3mail = prefect_pop3mail.flows.cli:main" in entry_points


# --- a user's project next to it ----------------------------------------------------------

USER_FLOW = '''\
"""The user's own flow: the plugin's task, then the user's own task."""
import json
import sys

from prefect import flow

from blocks.team import TEAM
from prefect_pop3mail.tasks import mail_receive_all
from tasks.bookkeeping import summarize


@flow
def collect_orders(configuration: str, report_path: str) -> None:
    received = mail_receive_all(configuration)
    report = summarize(received)
    report["team"] = TEAM
    report["modules"] = {name: getattr(sys.modules[name], "__file__", None) for name in
                         ("blocks.team", "tasks.bookkeeping", "prefect_pop3mail.tasks.activities")}
    with open(report_path, "w") as out:
        json.dump(report, out)
'''

USER_TASK = '''\
from prefect import task


@task
def summarize(received) -> dict:
    return {"count": len(received), "subjects": sorted(mail.subject for mail in received)}
'''

IMPORT_BOTH = '''\
import importlib.metadata, importlib.util, json, sys
import blocks.team, flows.my_flow, tasks.bookkeeping
import prefect_pop3mail
from prefect_pop3mail.blocks import POP3MailConfiguration
from prefect_pop3mail.flows import receive_all_mail
from prefect_pop3mail.tasks import mail_receive_all
import prefect_pop3mail as top
print(json.dumps({
    "top": [top.POP3MailConfiguration is POP3MailConfiguration,
            top.receive_all_mail is receive_all_mail, top.mail_receive_all is mail_receive_all],
    "user": {name: list(sys.modules[name].__path__) for name in ("blocks", "flows", "tasks")},
    "user_modules": [m.__file__ for m in (blocks.team, flows.my_flow, tasks.bookkeeping)],
    "plugin_path": list(prefect_pop3mail.__path__),
    "plugin_modules": [sys.modules[o.__module__].__file__ for o in
                       (POP3MailConfiguration, receive_all_mail.fn, mail_receive_all.fn)],
    "collections": [ep.value for ep in importlib.metadata.entry_points(
        group="prefect.collections") if ep.name == "pop3mail"],
    "demo": importlib.util.find_spec("prefect_pop3mail.flows.demo") is not None,
    "tests": importlib.util.find_spec("tests") is not None,
}))
'''


def user_project(root: Path, with_init: set[str]) -> Path:
    """A Prefect project of a user's, with its own flows/, tasks/ and blocks/ packages;
    those named in ``with_init`` are regular packages, the others namespace packages."""
    files = {
        "flows/my_flow.py": USER_FLOW,
        "tasks/bookkeeping.py": USER_TASK,
        "blocks/team.py": 'TEAM = "orders"\n',
    }
    for package in with_init:
        files[f"{package}/__init__.py"] = ""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def inside(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


@pytest.mark.parametrize("with_init", [{"flows", "tasks", "blocks"}, set()],
                         ids=["regular-packages", "namespace-packages"])
def test_user_packages_and_the_plugin_import_side_by_side(wheel_venv, tmp_path, with_init):
    project = user_project(tmp_path / "project", with_init)

    done = wheel_venv.run("-c", IMPORT_BOTH, cwd=project)
    found = json.loads(done.stdout.splitlines()[-1])

    assert found["user"] == {name: [str(project / name)] for name in ("blocks", "flows", "tasks")}
    assert all(inside(path, project) for path in found["user_modules"])
    assert found["plugin_path"] == [str(wheel_venv.site_packages / "prefect_pop3mail")]
    assert found["top"] == [True, True, True]
    assert all(inside(path, wheel_venv.site_packages) for path in found["plugin_modules"])
    assert found["collections"] == ["prefect_pop3mail.blocks"]
    assert not found["demo"] and not found["tests"]


def test_the_console_command_of_the_wheel(wheel_venv, tmp_path):
    script = wheel_venv.root / "bin" / "pop3mail"
    done = subprocess.run([str(script), "receive", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--dry-run" in done.stdout and "--max-messages N" in done.stdout


# --- a deployment of that project on a process worker -------------------------------------

PREFECT_YAML = """\
name: my-project
prefect-version: 3.4.10
build: null
push: null
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: {project}
deployments:
  - name: orders
    entrypoint: flows/my_flow.py:collect_orders
    work_pool:
      name: user-project
    parameters:
      configuration: {configuration}
      report_path: {report}
"""

SAVE_CONFIGURATION = """\
import json, sys
from prefect_pop3mail.blocks import POP3MailConfiguration
fields = json.load(sys.stdin)
POP3MailConfiguration(**fields.pop("fields")).save(fields["name"], overwrite=True)
"""


@pytest.fixture(scope="module")
def prefect_server(request) -> PrefectServer:
    return shared_prefect_server(request.config)


@pytest.mark.dovecot
def test_a_deployment_of_the_users_project_runs_on_a_process_worker(
    wheel_venv, prefect_server, mailbox, tmp_path
):
    from tests.conftest import sample_message

    server = prefect_server
    prefect = (str(wheel_venv.python), "-m", "prefect")
    # Mixed on purpose: a regular flows/ and blocks/, a namespace tasks/.
    project = user_project(tmp_path / "project", {"flows", "blocks"})
    save_dir, report = tmp_path / "mail", tmp_path / "report.json"
    configuration = "user-project-mailbox"
    (project / "prefect.yaml").write_text(PREFECT_YAML.format(
        project=project, configuration=configuration, report=report))

    server.cli("block", "register", "-m", "prefect_pop3mail", cwd=project,
               prefect=prefect)
    fields = {  # what a user types, saved through the wheel's block
        "server": "localhost", "port": mailbox.server.pop3s_port, "security": "Implicit SSL/TLS",
        "user": mailbox.user, "password": mailbox.password,
        "tls_ca_file": str(mailbox.server.ca_file), "save_directory": str(save_dir),
        "remove_from_server_after_read": True, "timeout": 10,
    }
    subprocess.run([str(wheel_venv.python), "-c", SAVE_CONFIGURATION], cwd=project,
                   input=json.dumps({"name": configuration, "fields": fields}), text=True,
                   env=server.env(), check=True, capture_output=True, timeout=120)
    mailbox.deliver(sample_message(1, Subject="Order 1"), sample_message(2, Subject="Order 2"))

    server.cli("work-pool", "create", "user-project", "--type", "process", "--overwrite",
               cwd=project, prefect=prefect)
    deployed = server.cli("deploy", "--all", cwd=project, prefect=prefect)
    assert "collect-orders/orders" in deployed, deployed
    deployment = server.api("GET", "/deployments/name/collect-orders/orders")

    worker_log = tmp_path / "worker.log"
    with server.worker("user-project", worker_log, cwd=project, prefect=prefect):

        def diagnostics() -> str:
            return f"worker log:\n{worker_log.read_text(errors='replace')[-6000:]}"

        run = server.api("POST", f"/deployments/{deployment['id']}/create_flow_run", {})

        def finished() -> dict | None:
            state = server.api("GET", f"/flow_runs/{run['id']}")["state"]
            return state if state["type"] in TERMINAL else None

        final = wait_for("the user's deployment", finished, 180, diagnostics)
        assert final["type"] == "COMPLETED", f"{final}\n{diagnostics()}"

    summary = json.loads(report.read_text())
    assert summary["count"] == 2 and summary["subjects"] == ["Order 1", "Order 2"]
    assert summary["team"] == "orders"
    modules = summary["modules"]
    assert inside(modules["blocks.team"], project)
    assert inside(modules["tasks.bookkeeping"], project)
    assert inside(modules["prefect_pop3mail.tasks.activities"], wheel_venv.site_packages)
    assert len(sorted(save_dir.glob("*/message.eml"))) == 2
    assert mailbox.count() == 0
    assert mailbox.password not in worker_log.read_text(errors="replace")
