"""What a Prefect user meets in the first ten minutes (issue #25), and the per-call options
defined once (#26): the top-level import and registration, the run form's schema, the
console command's output, failures that retrying cannot fix, and the README's promises."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import time
import tomllib
import unicodedata
import urllib.request
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import prefect_pop3mail
from prefect_pop3mail.blocks import POP3MailConfiguration
from prefect_pop3mail.flows import (
    check_pop3_connection,
    list_mail,
    receive_all_mail,
    receive_from_mailboxes,
    receive_mail,
)
from prefect_pop3mail.flows.cli import build_parser, shown
from prefect_pop3mail.tasks import mail_list, mail_receive, mail_receive_all
from prefect_pop3mail.tasks.options import (
    LIST,
    OPTION_NAMES,
    RECEIVE_ALL,
    RECEIVE_ONE,
    CallOptions,
    Switch,
    cli_flag,
    options_table,
)
from prefect_pop3mail.tasks.pop3.errors import (
    ConfigurationError,
    POP3ConnectionRefusedError,
    POP3HostNotFoundError,
    POP3TimeoutError,
)
from prefect_pop3mail.tasks.pop3.models import ConnectionSettings, Security
from prefect_pop3mail.tasks.pop3.protocol.session import POP3Session, connect_error
from tests.conftest import sample_message
from tests.servers.dovecot import free_port
from tests.servers.faultserver import FaultServer, drop, reply
from tests.servers.prefect_server import PROJECT_ROOT, PrefectServer, shared_prefect_server
from tests.test_actionable_errors import failed_run  # fails within the first retry's wait

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
README = (PROJECT_ROOT / "README.md").read_text()
SCRIPT = Path(sys.executable).with_name("pop3mail")
#: The task retries a retryable failure after 5 s.
FIRST_RETRY = 5


@pytest.fixture(scope="module")
def prefect_server(request) -> PrefectServer:
    return shared_prefect_server(request.config)


# --- the package as Prefect's integrations are used -------------------------------------


def test_the_top_package_offers_the_block_tasks_and_flows():
    from prefect_pop3mail import POP3MailConfiguration as block
    from prefect_pop3mail import mail_receive_all as task
    from prefect_pop3mail import receive_all_mail as flow

    assert block is POP3MailConfiguration
    assert task is mail_receive_all and flow is receive_all_mail
    assert set(prefect_pop3mail.__all__) <= set(dir(prefect_pop3mail))
    for name in prefect_pop3mail.__all__:
        assert getattr(prefect_pop3mail, name) is not None, name
    assert prefect_pop3mail.__version__ == importlib.metadata.version("prefect-pop3mail")
    with pytest.raises(AttributeError):
        prefect_pop3mail.no_such_name  # noqa: B018


def test_the_package_and_the_commands_help_load_no_prefect():
    """`pop3mail --help` must not wait for Prefect's import (seconds)."""
    code = """
import sys
import prefect_pop3mail, prefect_pop3mail.flows, prefect_pop3mail.tasks
from prefect_pop3mail.flows.cli import build_parser
parser = build_parser()
parser.format_help()
for sub in parser._subparsers._group_actions[0].choices.values():
    sub.format_help()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "httpx", "fastapi")))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.prefect
def test_register_by_the_top_package_as_prefect_integrations_do(prefect_server):
    output = prefect_server.cli("block", "register", "-m", "prefect_pop3mail")
    assert "Successfully registered 1 block" in output, output
    block_type = prefect_server.api("GET", "/block_types/slug/pop3-mail-configuration")
    assert block_type["name"] == "POP3 Mail Configuration"
    # No logo from the internet, which breaks offline; the UIs draw their own block icon.
    assert block_type["logo_url"] is None
    assert block_type["documentation_url"] == PYPROJECT["project"]["urls"]["Documentation"]


def test_the_documentation_link_names_this_project():
    url = POP3MailConfiguration._documentation_url
    assert url == PYPROJECT["project"]["urls"]["Documentation"]
    assert f"/{PYPROJECT['project']['name']}#" in url
    assert PYPROJECT["project"]["urls"]["Repository"] in url


def test_the_server_fields_read_alike():
    """The seed writes "POP3 Mail Server" and "POP3 MailServer": one wording for the three."""
    titles = {name: POP3MailConfiguration.model_fields[name].title
              for name in ("server", "user", "password")}
    assert titles == {"server": "POP3 Mail Server", "user": "POP3 Mail Server user profile",
                      "password": "POP3 Mail Server password"}


# --- the run form: plain defaults, one definition ---------------------------------------

FLOWS_AND_TASKS = {
    receive_mail: RECEIVE_ONE, mail_receive: RECEIVE_ONE,
    receive_all_mail: RECEIVE_ALL, mail_receive_all: RECEIVE_ALL,
    list_mail: LIST, mail_list: LIST,
    receive_from_mailboxes: ("max_messages",),
}


def _types(schema: dict) -> list:
    """Every "type" and "anyOf" in a schema, however deep."""
    found = []
    if isinstance(schema, dict):
        found += [schema[k] for k in ("type", "anyOf") if k in schema]
        for value in schema.values():
            found += _types(value)
    elif isinstance(schema, list):
        for value in schema:
            found += _types(value)
    return found


@pytest.mark.parametrize("runnable", [*FLOWS_AND_TASKS, check_pop3_connection],
                         ids=lambda r: r.name)
def test_the_run_form_has_no_type_switch_and_says_what_inherits(runnable):
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(runnable.fn).model_dump()
    properties = schema["properties"]
    assert not [t for t in _types(properties) if isinstance(t, list) or t == "null"], properties
    assert schema["definitions"] == {}  # nothing $ref'd: Prefect's forms title those badly
    first, *options = properties
    assert properties[first]["type"] in ("string", "array") and first in schema["required"]
    assert options == list(FLOWS_AND_TASKS.get(runnable, ()))
    for name in options:
        spec, field = properties[name], CallOptions.model_fields[name]
        default = field.default.value if isinstance(field.default, Switch) else field.default
        assert spec["default"] == default, name
        assert spec["description"] == field.description, name  # one line, from the definition
        assert name not in schema["required"]
    for name in options:
        if CallOptions.model_fields[name].annotation is Switch:
            assert properties[name]["enum"] == ["as configured", "yes", "no"]


def test_a_task_and_the_flow_that_runs_it_take_the_same_options():
    import inspect

    for flow, task in ((receive_mail, mail_receive), (receive_all_mail, mail_receive_all),
                       (list_mail, mail_list)):
        assert inspect.signature(flow.fn) == inspect.signature(task.fn)


def test_the_command_offers_the_receive_all_options():
    receive = build_parser()._subparsers._group_actions[0].choices["receive"]
    dests = [a.dest for a in receive._actions if a.dest in OPTION_NAMES]
    assert dests == list(RECEIVE_ALL)
    assert set(OPTION_NAMES) == set(RECEIVE_ALL)


def test_the_readme_shows_the_options_table_of_the_definition():
    assert options_table() in README, "README: paste `python -m prefect_pop3mail.tasks.options`"


@pytest.mark.parametrize(("given", "expected"), [
    ({"save_mail_text": False}, {"save_mail_text": Switch.NO}),
    ({"save_mail_text": True}, {"save_mail_text": Switch.YES}),
    ({"save_mail_text": "Yes"}, {"save_mail_text": Switch.YES}),
    ({"save_mail_text": None, "max_messages": None, "subject_filter": None},
     {"save_mail_text": Switch.AS_CONFIGURED, "max_messages": 0, "subject_filter": ""}),
    ({"pipelining": False}, {"pipelining": False}),
])
def test_python_callers_pass_booleans_and_none_as_before(given, expected):
    call = CallOptions.of(given, RECEIVE_ALL)
    assert {name: getattr(call, name) for name in expected} == expected
    # the flow's own parameter check agrees with the task's
    checked = receive_all_mail.validate_parameters({"configuration": "x", **given})
    assert {name: checked[name] for name in expected} == expected


@pytest.mark.parametrize(("given", "named"), [
    ({"subject_filter": "(unclosed"}, "subject_filter: not a regular expression"),
    ({"max_messages": -1}, "max_messages: Input should be greater than or equal to 0"),
    ({"save_mail_text": "perhaps"}, "save_mail_text: Input should be"),
])
def test_a_wrong_option_is_a_configuration_error_naming_it(given, named):
    with pytest.raises(ConfigurationError, match=f"^{re.escape(named)}") as caught:
        CallOptions.of(given, RECEIVE_ALL)
    assert not caught.value.retryable


@pytest.mark.parametrize("runnable", FLOWS_AND_TASKS, ids=lambda r: r.name)
def test_an_option_a_task_or_flow_does_not_take_is_refused(runnable):
    """Called through Prefect (which binds to the signature) or directly, as .fn."""
    for name in [*(set(OPTION_NAMES) - set(FLOWS_AND_TASKS[runnable])), "no_such_option"]:
        with pytest.raises(TypeError, match=name):
            runnable.fn("x", **{name: CallOptions.model_fields.get(name).default
                                if name in OPTION_NAMES else 1})
        with pytest.raises(TypeError, match=name):
            runnable("x", **{name: 1})


def test_the_per_call_switches_reach_the_engine():
    block = POP3MailConfiguration(server="h", user="u", password="p", save_directory="/tmp/a",
                                  save_mail_text=True, max_messages=7)
    call = CallOptions(save_mail_text=False, pipelining=False, subject_filter="^Order")
    save = block.save_options(**call.save_overrides())
    receive = block.receive_options(**call.receive_overrides())
    assert save.save_text is False and save.save_attachments is True
    assert receive.pipelining is False and receive.max_messages == 7
    assert receive.filters.subject == "^Order" and receive.filters.sender is None
    assert block.receive_options(**CallOptions().receive_overrides()).pipelining is None


def test_the_flow_promises_per_message_events_only_with_their_switch():
    description = receive_all_mail.description
    if "pop3mail.message.received" in description:
        assert '"An event per message" on' in description


# --- failures that retrying cannot fix end at once ------------------------------------


def block_for(tmp_path: Path, **fields) -> POP3MailConfiguration:
    values = dict(server="127.0.0.1", user="u", password="p", security="None",
                  save_directory=str(tmp_path / "mail"), timeout=5)
    return POP3MailConfiguration(**{**values, **fields})


@pytest.mark.prefect
def test_an_unknown_host_fails_at_once_naming_it(tmp_path):
    # A name with a space: the resolver refuses it without asking the network.
    error = failed_run(block_for(tmp_path, server="no such host", port=110))
    assert isinstance(error, POP3HostNotFoundError)
    assert str(error).startswith("cannot connect to no such host:110: the host name "
                                 "'no such host' is not known")
    assert "'POP3 Mail Server' (server)" in str(error)


@pytest.mark.prefect
def test_a_malformed_host_name_fails_at_once_naming_it(tmp_path):
    error = failed_run(block_for(tmp_path, server="mail..example.org"))
    assert isinstance(error, POP3HostNotFoundError)
    assert "'mail..example.org' is not a valid host name" in str(error)


@pytest.mark.prefect
def test_a_refused_connection_fails_at_once_naming_host_and_port(tmp_path):
    port = free_port()  # nothing listens there
    error = failed_run(block_for(tmp_path, port=port))
    assert isinstance(error, POP3ConnectionRefusedError)
    assert str(error).startswith(f"cannot connect to 127.0.0.1:{port}: connection refused")
    assert "'POP3 port' (port)" in str(error)


@pytest.mark.prefect
def test_a_missing_ca_file_names_its_path(tmp_path, ca):
    missing = tmp_path / "no-such-ca.pem"
    with FaultServer([sample_message(1)], security="implicit", ca=ca) as server:
        error = failed_run(block_for(tmp_path, port=server.port, security="Implicit SSL/TLS",
                                      tls_ca_file=str(missing)))
    assert isinstance(error, ConfigurationError)
    assert str(error) == (f"tls_ca_file: cannot load the CA file {str(missing)!r}: "
                          "No such file or directory")


@pytest.mark.prefect
def test_a_transient_network_error_is_still_retried(tmp_path):
    with FaultServer([sample_message(1)], pipelining=False) as server:
        server.on("GREETING", drop(), times=1)  # the first connection breaks
        config = block_for(tmp_path, port=server.port, user=server.user,
                           password=server.password)
        started = time.monotonic()
        received = receive_all_mail(config)
        assert time.monotonic() - started >= FIRST_RETRY  # the retry's delay
        assert [m.subject for m in received] == ["Message 1"]
        assert server.sessions >= 2


@pytest.mark.parametrize(("error", "retried"), [
    (OSError(101, "Network is unreachable"), True),
    (ConnectionResetError(104, "Connection reset by peer"), True),
    (TimeoutError("timed out"), True),
    (ConnectionRefusedError(111, "Connection refused"), False),
])
def test_what_is_retried_when_connecting(error, retried):
    """The classification itself, for errors loopback cannot produce on demand."""
    import socket

    settings = ConnectionSettings(host="mail.example.org", port=995, security=Security.IMPLICIT,
                                  user="u", timeout=7)
    found = connect_error(settings, error)
    assert found.retryable is retried
    assert str(found).startswith(("cannot connect to mail.example.org:995",
                                  "connecting to mail.example.org:995 timed out after 7 s"))
    for code, transient in ((socket.EAI_NONAME, False), (socket.EAI_AGAIN, True)):
        dns = connect_error(settings, socket.gaierror(code, os.strerror(1)))
        assert dns.retryable is transient


def test_timeouts_name_the_server_the_phase_and_the_field():
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never speaks
        port = listener.getsockname()[1]
        settings = ConnectionSettings(host="127.0.0.1", port=port, security=Security.IMPLICIT,
                                      user="u", timeout=0.5)
        with pytest.raises(POP3TimeoutError) as caught:
            POP3Session(settings).connect()
    assert str(caught.value) == (
        f"the TLS handshake with 127.0.0.1:{port} timed out after 0.5 s; if the server is "
        "only slow, raise 'Timeout (seconds)' (timeout)")
    assert caught.value.retryable


# --- the console command --------------------------------------------------------------


def save_to(server: PrefectServer, config: POP3MailConfiguration) -> str:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = f"first-{uuid.uuid4().hex[:10]}"
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        config.save(name, overwrite=True)
    return name


#: Old Prefect releases with today's pydantic-settings print a UserWarning at import: not
#: the command's output.
QUIET_PYTHON = {"PYTHONWARNINGS": "ignore"}


def command(server: PrefectServer, *argv: str) -> subprocess.CompletedProcess:
    server.cli("block", "register", "-m", "prefect_pop3mail")
    return subprocess.run([str(SCRIPT), *argv], capture_output=True,
                          env=server.env(**QUIET_PYTHON), cwd=server.home, timeout=300)


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "Traceback" in line or "EventsWorker" in line or "Finished in state Failed" in line]


@pytest.mark.prefect
@pytest.mark.dovecot
def test_a_wrong_password_is_one_line_naming_the_configuration(prefect_server, mailbox,
                                                               tmp_path):
    name = save_to(prefect_server, mailbox.block(tmp_path, password="not-the-password-7",
                                                 timeout=30))
    done = command(prefect_server, "receive", name)
    stderr = done.stderr.decode()
    assert done.returncode == 1
    assert done.stdout == b""
    assert stderr.splitlines() == [f"pop3mail receive {name}: PASS failed: -ERR [AUTH] "
                                   "Authentication failed."], stderr
    assert "not-the-password-7" not in stderr


@pytest.mark.prefect
def test_an_unknown_configuration_points_at_the_current_uis_form(prefect_server):
    import prefect

    # Prefect 3.9 serves its current UI under /v2 (the old one at the root); 3.4, one UI.
    current = "/v2" if hasattr(prefect, "__ui_v2_static_path__") else ""
    done = command(prefect_server, "check", "no-such-configuration")
    stderr = done.stderr.decode()
    assert done.returncode == 1 and not _noise(stderr)
    page = f"{prefect_server.url}{current}/blocks/catalog/pop3-mail-configuration/create"
    assert stderr.splitlines() == [
        "pop3mail check no-such-configuration: configuration: no POP3 Mail Configuration "
        f"named 'no-such-configuration' is saved in the Prefect API at "
        f"{prefect_server.api_url}; create it at {page}"]
    opening = urllib.request.Request(page, headers={"Accept": "text/html"})  # a browser's
    with urllib.request.urlopen(opening, timeout=30) as reply:  # the page is there
        assert reply.status == 200 and b"<html" in reply.read().lower()


HOSTILE = "\x1b[2J\x1b]0;owned\x07\u202eevil\r"


@pytest.mark.prefect
def test_server_and_message_text_reach_the_terminal_escaped(prefect_server, tmp_path):
    from email.header import Header

    message = sample_message(1, Subject=Header(f"Invoice {HOSTILE}", "utf-8").encode(),
                             From=f"{Header(HOSTILE, 'utf-8').encode()} <a@example.org>")
    with FaultServer([message], pipelining=False) as server:
        server.on("GREETING", reply(f"+OK ready {HOSTILE}".encode()))
        name = save_to(prefect_server, block_for(tmp_path, port=server.port, user=server.user,
                                                 password=server.password))
        outputs = [command(prefect_server, "check", name),
                   command(prefect_server, "receive", name, "--dry-run"),
                   command(prefect_server, "receive", name)]
    for done in outputs:
        raw = done.stdout + done.stderr
        assert done.returncode == 0, raw.decode()
        assert not [c for c in raw.decode() if _is_control(c) and c != "\n"], raw
        assert not _noise(done.stderr.decode())
    check, dry_run, received = (done.stdout.decode() for done in outputs)
    assert "+OK ready \\x1b[2J\\x1b]0;owned\\x07\\u202eevil" in check
    assert "Invoice \\x1b[2J" in dry_run and "\\u202eevil" in dry_run
    assert "1 message(s) received:" in received and "Invoice \\x1b[2J" in received
    assert "dry run: 1 message(s) would be received" in outputs[1].stderr.decode()


def _is_control(char: str) -> bool:
    return (unicodedata.category(char) in ("Cc", "Zl", "Zp")
            or "\u202a" <= char <= "\u202e" or "\u2066" <= char <= "\u2069")


@given(st.text())
def test_shown_text_has_no_control_character_left(text):
    out = shown(text)
    assert not [c for c in out if _is_control(c)]
    if not any(_is_control(c) for c in text):
        assert out == text


def test_each_flag_takes_what_the_run_form_takes():
    for name in RECEIVE_ALL:
        flag, keywords = cli_flag(name)
        assert flag.endswith(name.replace("_", "-"))
        assert keywords["help"].replace("%%", "%") == CallOptions.model_fields[name].description


# --- packaging, the demo, the README ------------------------------------------------------


def _requirement_closure(extras: tuple[str, ...]) -> set[str]:
    """Distribution names prefect-pop3mail[extras] brings, from installed metadata."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [("prefect-pop3mail", set(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        key = canonicalize_name(name)
        if key in seen and not wanted:
            continue
        seen.add(key)
        for text in dist.requires or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                if canonicalize_name(req.name) not in seen or req.extras:
                    todo.append((req.name, set(req.extras)))
    return seen


def _third_party_imports(*paths: Path) -> set[str]:
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names
            and m not in ("prefect_pop3mail", "tests", "__future__")}


def test_the_demo_extra_brings_what_the_demo_imports_and_no_test_tool():
    from packaging.utils import canonicalize_name

    demo = PYPROJECT["project"]["optional-dependencies"]["demo"]
    assert [re.split("[<>=]", r)[0] for r in demo] == ["trustme"]
    servers = PROJECT_ROOT / "tests" / "servers"
    imported = _third_party_imports(*(PROJECT_ROOT / "flows" / "demo").glob("*.py"),
                                    servers / "dovecot.py", servers / "faultserver.py")
    providers = importlib.metadata.packages_distributions()
    needed = {canonicalize_name(d) for m in imported for d in providers.get(m, [m])}
    closure = _requirement_closure(("demo",))
    assert needed <= closure, needed - closure
    assert not {"pytest", "selenium", "moto", "hypothesis"} & closure
    dry = subprocess.run(["make", "-n", "-B", "demo"], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "-e '.[demo]'" in dry and ".[test]" not in dry
    assert "debian-packages.sh demo" in dry and "pop3-servers.sh" not in dry


def test_every_extra_names_extras_that_exist():
    """pip only warns when an extra is gone (s3fs[boto3] was): the requirement then means
    something else than it says."""
    from packaging.requirements import Requirement

    for extra, requirements in PYPROJECT["project"]["optional-dependencies"].items():
        for text in requirements:
            req = Requirement(text)
            if not req.extras or req.name == "prefect-pop3mail":
                continue
            offered = importlib.metadata.metadata(req.name).get_all("Provides-Extra") or []
            assert req.extras <= set(offered), f"[{extra}] {text}: {req.name} offers {offered}"


def test_the_readme_starts_a_server_and_links_the_current_ui():
    section = README.split("## Use it in your own project", 1)[1].split("\n## ", 1)[0]
    assert "prefect server start" in section
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in section
    assert "prefect block register -m prefect_pop3mail\n" in section
    assert "http://127.0.0.1:4200/v2/blocks/catalog/pop3-mail-configuration/create" in section
    assert "register -m prefect_pop3mail.blocks" not in README


def test_the_deployment_file_registers_by_the_top_package():
    text = (PROJECT_ROOT / "deployments" / "prefect.yaml").read_text()
    assert "prefect block register -m prefect_pop3mail " in text


def test_without_a_prefect_server_the_command_says_what_to_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # No temporary server either: the command must say what is missing, not wait for one.
    env.update(PREFECT_HOME=str(tmp_path), PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="false",
               **QUIET_PYTHON)
    done = subprocess.run([str(SCRIPT), "check", "orders"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    note, error = done.stderr.splitlines()[-2:]
    assert note.startswith("pop3mail: PREFECT_API_URL is not set") and "prefect server start" \
        in note and "PREFECT_API_URL=http://127.0.0.1:4200/api" in note
    assert error.startswith("pop3mail check orders: configuration: no POP3 Mail Configuration "
                            "named 'orders' was found: PREFECT_API_URL is not set")
    assert not _noise(done.stderr)
