"""Workload (g): (a) and (c) against every other POP3 server of the interoperability
matrix (tests/servers/matrix.py), pop3mail's engine against a plain poplib loop.

Each server is reached in the most secure mode it offers (implicit TLS for GNU Mailutils;
plain POP3 for popa3d and solid-pop3d, which have no TLS), and the poplib loop uses the same
mode, so the ratio compares clients, not servers. The messages stay on the server; each
run writes into an emptied folder (pop3mail's journal with it).
"""

from __future__ import annotations

import poplib
import ssl
from pathlib import Path

import trustme
from pydantic import SecretStr

from bench.peers_mail import small
from bench.peers_measure import Outcome, Sizes, measure
from bench.peers_tools import Run
from prefect_pop3mail.tasks.pop3.models import (
    ConnectionSettings,
    ReceiveOptions,
    SaveOptions,
    Security,
)
from prefect_pop3mail.tasks.pop3.receiver import receive_mailbox
from tests.servers import matrix
from tests.servers.latency_proxy import LatencyProxy

ENGINE, POPLIB = "pop3mail engine alone", "poplib loop (original only)"


def _settings(server, user: str, password: str, port: int) -> ConnectionSettings:
    security = matrix.best_mode(server)
    return ConnectionSettings(
        host="127.0.0.1" if security is Security.NONE else "localhost", port=port,
        security=security, user=user, password=SecretStr(password),
        tls_ca_file=str(server.ca_file), timeout=30,
    )


def run_engine(settings: ConnectionSettings, out: Path) -> Run:
    report = receive_mailbox("bench-g", settings, SaveOptions(directory=out), ReceiveOptions())
    return Run(len(report.received))


def run_poplib(settings: ConnectionSettings, out: Path) -> Run:
    """The baseline of (a), in the server's mode: RETR each message, write the original."""
    if settings.security is Security.IMPLICIT:
        context = ssl.create_default_context(cafile=settings.tls_ca_file)
        client = poplib.POP3_SSL(settings.host, settings.port, context=context)
    else:
        client = poplib.POP3(settings.host, settings.port)
    try:
        client.user(settings.user)
        client.pass_(settings.password.get_secret_value())
        count = client.stat()[0]
        for number in range(1, count + 1):
            _reply, lines, _octets = client.retr(number)
            (out / f"poplib-{number}.eml").write_bytes(b"\r\n".join(lines) + b"\r\n")
    finally:
        client.quit()
    return Run(count)


def _compare(title: str, settings: ConnectionSettings, top: Path, n: int,
             repeat: int) -> list[Outcome]:
    outcomes = []
    for tool, run in ((ENGINE, run_engine), (POPLIB, run_poplib)):
        out = top / f"{len(outcomes)}"
        outcomes.append(measure(title, tool, lambda o, run=run: run(settings, o), out, n,
                                repeat))
        print(outcomes[-1].line(), flush=True)
    return outcomes


def other_servers(sizes: Sizes, ca: trustme.CA, top: Path, wan_delay: float) -> list[Outcome]:
    """(a) and (c) against each non-Dovecot server of the matrix that can run here."""
    outcomes: list[Outcome] = []
    for name in matrix.SERVERS:
        if name == "dovecot":
            continue  # (a) and (c) themselves
        reason = matrix.unavailable(name)
        if reason:
            outcomes.append(Outcome(f"(g) {name}", ENGINE, skipped=reason))
            print(outcomes[-1].line(), flush=True)
            continue
        server = matrix.start(name, ca)
        try:
            mode = matrix.best_mode(server)
            n = sizes.small_messages
            user, password = server.add_user()
            server.deliver(user, *(small(i) for i in range(n)))
            settings = _settings(server, user, password, server.modes[mode])
            label = f"(g) {name} {server.version}, {mode.value}"
            outcomes += _compare(f"{label}: (a) {n:,} x 4 KB", settings, top / name / "a", n,
                                 sizes.repeat)
            with LatencyProxy("127.0.0.1", settings.port, delay=wan_delay) as proxy:
                far = settings.model_copy(update={"port": proxy.port})
                outcomes += _compare(f"{label}: (c) +{wan_delay * 1e3:.0f} ms each way", far,
                                     top / name / "c", n, sizes.repeat)
        finally:
            server.stop()
    return outcomes


def server_rows(outcomes: list[Outcome]) -> list[dict]:
    """One row per server and workload: the engine, the poplib loop, and their ratio."""
    rows = []
    for engine in (o for o in outcomes if o.tool == ENGINE):
        poplib_o = next((o for o in outcomes if o.workload == engine.workload
                         and o.tool == POPLIB), None)
        problem = engine.skipped or engine.failed or (poplib_o and poplib_o.failed)
        if problem or poplib_o is None:
            rows.append({"server, workload": engine.workload, "engine s": "-",
                         "poplib s": "-", "poplib / engine": str(problem)[:120]})
            continue
        rows.append({"server, workload": engine.workload,
                     "engine s": f"{engine.median:.3f}", "poplib s": f"{poplib_o.median:.3f}",
                     "poplib / engine": f"{poplib_o.median / engine.median:.2f}x"})
    return rows
