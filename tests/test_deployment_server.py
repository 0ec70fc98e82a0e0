"""Through a real Prefect server: register the block, deploy deployments/prefect.yaml, run
the receive-all deployment on a process worker as the UI's "Run" button does, and follow the
pop3mail.message.received events to the downstream deployment they trigger."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from prefect_pop3mail.flows.downstream_example import MANIFEST_NAME
from tests.servers.prefect_server import PROJECT_ROOT, PrefectServer, shared_prefect_server

pytestmark = [pytest.mark.dovecot, pytest.mark.slow, pytest.mark.prefect]

CONFIGURATION = "server-test-mailbox"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="session")
def prefect_server(request) -> PrefectServer:
    return shared_prefect_server(request.config)


def order_with_attachment() -> bytes:
    message = EmailMessage()
    message["From"] = "Shop <orders@shop.example>"
    message["To"] = "bob@example.org"
    message["Subject"] = "Order 1001"
    message["Date"] = "Thu, 26 Nov 2026 10:00:00 +0000"
    message["Message-ID"] = "<order-1001@shop.example>"
    message.set_content("Your order is attached.\n")
    message.add_attachment(b"sku,qty\nA-1,2\nB-7,1\n", maintype="text", subtype="csv",
                           filename="order-1001.csv")
    return bytes(message)


def plain_note() -> bytes:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.org>"
    message["To"] = "bob@example.org"
    message["Subject"] = "No attachment here"
    message["Date"] = "Thu, 26 Nov 2026 11:00:00 +0000"
    message["Message-ID"] = "<note-1@example.org>"
    message.set_content("Just a note.\n")
    return bytes(message)


def wait_for(what: str, probe, timeout: float, diagnostics) -> object:
    """Poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{diagnostics()}")


def flow_runs_of(server: PrefectServer, deployment_id: str) -> list[dict]:
    return server.api("POST", "/flow_runs/filter",
                      {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}})


def deployment(server: PrefectServer, name: str) -> dict:
    return server.api("GET", f"/deployments/name/{name}")


def stop_schedules(server: PrefectServer, deployment_id: str) -> None:
    """The 5-minute schedule must not start a run of its own during the test."""
    for schedule in server.api("GET", f"/deployments/{deployment_id}/schedules"):
        server.api("PATCH", f"/deployments/{deployment_id}/schedules/{schedule['id']}",
                   {"active": False})
    for run in flow_runs_of(server, deployment_id):  # one created before the pause
        server.api("DELETE", f"/flow_runs/{run['id']}")


def test_deployment_runs_on_a_process_worker_and_triggers_downstream(
    prefect_server: PrefectServer, mailbox, tmp_path: Path
):
    server = prefect_server
    server.cli("block", "register", "-m", "prefect_pop3mail")
    save_dir = tmp_path / "mail"
    config = mailbox.block(save_dir, remove_from_server_after_read=True,
                           emit_message_events=True)  # the downstream deployment's trigger
    asyncio.run(config.asave(CONFIGURATION, overwrite=True, client=server.client()))
    messages = {"Order 1001": order_with_attachment(), "No attachment here": plain_note()}
    mailbox.deliver(*messages.values())

    server.cli("work-pool", "create", "pop3mail", "--type", "process", "--overwrite")
    deployed = server.cli("deploy", "--prefect-file", "deployments/prefect.yaml", "--all")
    assert "every-5-minutes" in deployed and "on-message-received" in deployed, deployed

    receive = deployment(server, "receive-all-mail/every-5-minutes")
    downstream = deployment(server, "record-received-mail/on-message-received")
    # What prefect.yaml says: the process pool, a 5-minute schedule, a configuration's
    # name as the parameter, and a pull step that runs the local code from the project root.
    assert receive["work_pool_name"] == downstream["work_pool_name"] == "pop3mail"
    assert [s["schedule"].get("cron") for s in receive["schedules"]] == ["*/5 * * * *"]
    assert receive["parameters"] == {"configuration": "orders-mailbox"}
    assert receive["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {
        "directory": str(PROJECT_ROOT)}}]
    stop_schedules(server, receive["id"])

    worker_log = tmp_path / "worker.log"
    with server.worker("pop3mail", worker_log):

        def diagnostics() -> str:
            return f"worker log:\n{worker_log.read_text(errors='replace')[-6000:]}"

        started = datetime.now(UTC)
        # The UI's "Run > Custom run": the deployment's parameters, one of them changed.
        run = server.api("POST", f"/deployments/{receive['id']}/create_flow_run", {
            "parameters": {"configuration": CONFIGURATION},
            "state": {"type": "SCHEDULED", "message": "Run from the Prefect UI"},
        })
        assert run["parameters"] == {"configuration": CONFIGURATION}

        def finished() -> dict | None:
            state = server.api("GET", f"/flow_runs/{run['id']}")["state"]
            return state if state["type"] in TERMINAL else None

        final = wait_for("the receive-all run", finished, 120, diagnostics)
        assert final["type"] == "COMPLETED", f"{final}\n{diagnostics()}"

        # Every message saved once, then deleted from the server.
        originals = sorted(save_dir.glob("*/message.eml"))
        assert len(originals) == 2
        saved = sorted(p.read_bytes().replace(b"\r\n", b"\n") for p in originals)
        assert saved == sorted(m.replace(b"\r\n", b"\n") for m in messages.values())
        assert mailbox.count() == 0

        # One downstream run per received message, started by its event, given its paths.
        def downstream_done() -> list[dict] | None:
            runs = flow_runs_of(server, downstream["id"])
            if len(runs) >= 2 and all(r["state"]["type"] in TERMINAL for r in runs):
                return runs
            return None

        runs = wait_for("the triggered downstream runs", downstream_done, 120, diagnostics)
        recorded_first = {r["parameters"]["folder"]: (Path(r["parameters"]["folder"])
                                                      / MANIFEST_NAME).read_bytes()
                          for r in runs}

        # The replay deployment, from the UI with a window: the same messages announced
        # again, marked replay; the downstream step runs for each and records nothing twice.
        replay = deployment(server, "replay-saved-mail/replay")
        assert {"since", "until", "message_ids"} <= set(
            replay["parameter_openapi_schema"]["properties"])
        again = server.api("POST", f"/deployments/{replay['id']}/create_flow_run", {
            "parameters": {"configuration": CONFIGURATION, "since": started.isoformat()},
            "state": {"type": "SCHEDULED", "message": "Run from the Prefect UI"},
        })

        def replayed() -> dict | None:
            state = server.api("GET", f"/flow_runs/{again['id']}")["state"]
            return state if state["type"] in TERMINAL else None

        final = wait_for("the replay run", replayed, 120, diagnostics)
        assert final["type"] == "COMPLETED", f"{final}\n{diagnostics()}"

        def downstream_again() -> list[dict] | None:
            runs = flow_runs_of(server, downstream["id"])
            if len(runs) >= 4 and all(r["state"]["type"] in TERMINAL for r in runs):
                return runs
            return None

        every = wait_for("the downstream runs of the replay", downstream_again, 120,
                         diagnostics)
    again_runs = [r for r in every if r["parameters"].get("replay") is True]
    assert len(every) == 4 and len(again_runs) == 2, [r["parameters"] for r in every]
    assert all(r["state"]["type"] == "COMPLETED" for r in again_runs)
    assert {r["parameters"]["mail_id"] for r in again_runs} == {
        r["parameters"]["mail_id"] for r in runs} != {""}
    assert {folder: (Path(folder) / MANIFEST_NAME).read_bytes()
            for folder in recorded_first} == recorded_first, "recorded twice"

    assert len(runs) == 2, runs
    assert all(r["state"]["type"] == "COMPLETED" for r in runs), [r["state"] for r in runs]
    by_subject = {r["parameters"]["subject"]: r["parameters"] for r in runs}
    assert set(by_subject) == set(messages)
    for subject, parameters in by_subject.items():
        folder = Path(parameters["folder"])
        assert folder.parent == save_dir
        assert parameters["original_path"] == str(folder / "message.eml")
        assert parameters["configuration"] == CONFIGURATION
        assert isinstance(parameters["attachments"], list)  # the payload's list, not its repr
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        recorded = {Path(f["path"]) for f in manifest["files"]}
        on_disk = {p for p in folder.rglob("*") if p.is_file()
                   and p.name not in (MANIFEST_NAME, ".complete")}  # ours, and the store's
        assert recorded == on_disk, (subject, recorded, on_disk)
    order = json.loads((Path(by_subject["Order 1001"]["folder"]) / MANIFEST_NAME).read_text())
    assert order["attachment_count"] == 1
    assert [Path(f["path"]).name for f in order["files"] if f["role"] == "attachment"] == [
        "order-1001.csv"]
    note = json.loads((Path(by_subject["No attachment here"]["folder"]) / MANIFEST_NAME)
                      .read_text())
    assert note["attachment_count"] == 0

    # The password went nowhere: not into the worker's log, the runs' parameters or events.
    assert mailbox.password not in worker_log.read_text(errors="replace")
    assert mailbox.password not in json.dumps(runs)
