"""pop3mail against the tools users would pick instead, on one Dovecot, in one run.

Tools: pop3mail's ``receive-all-mail`` flow with its MAIL_RECEIVEALL task (and the engine
alone, for reference), a plain poplib loop that only writes each original, getmail6
delivering to a Maildir, fetchmail delivering through a file-writing MDA. All of them use
implicit TLS with the certificate verified, and keep the messages on the server, so every
repetition reads the same mailbox; each writes into an emptied folder.

Workloads (sizes overridable, see ``Sizes``):
(a) 1,000 messages of 4 KB, TLS on loopback;  (b) 20 messages with 1 MB attachments;
(c) 1,000 messages through a 10 ms-each-way latency proxy;  (d) peak RSS for one 100 MB
message;  (e) 50 mailboxes of 100 messages by ``receive_from_mailboxes`` against one by
``receive_all_mail``;  (f) Prefect's overhead: flow + task against ``receive_mailbox()``;
(g) (a) and (c) against Debian's other POP3 servers (tests/servers/matrix.py), the engine
against a poplib loop.

Run: ``.venv/bin/python -m bench peers`` (root: Dovecot's logins change user; getmail6 and
fetchmail are installed with apt-get when missing).
"""

from __future__ import annotations

import os

# Loopback only: no telemetry from the temporary Prefect server.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import re  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.common import table  # noqa: E402
from bench.peers_install import ensure_command  # noqa: E402
from bench.peers_mail import small, with_attachment  # noqa: E402
from bench.peers_measure import (  # noqa: E402
    Outcome,
    Sizes,
    describe_machine,
    measure,
    quiet_prefect_console,
)
from bench.peers_pop3mail import run_engine, run_flow, save_configuration  # noqa: E402
from bench.peers_report import (  # noqa: E402
    ENGINE,
    FETCHMAIL,
    GETMAIL,
    POP3MAIL,
    POPLIB,
    print_report,
)
from bench.peers_rss import rss_rows  # noqa: E402
from bench.peers_servers import other_servers, server_rows  # noqa: E402
from bench.peers_tools import (  # noqa: E402
    CommonNameCA,
    Mailbox,
    Run,
    run_fetchmail,
    run_getmail,
    run_poplib,
)
from tests.servers.dovecot import Dovecot, dovecot_unavailable_reason, start_dovecot  # noqa: E402
from tests.servers.latency_proxy import LatencyProxy  # noqa: E402

WAN_DELAY = 0.010


class PeerBench:
    """One Dovecot, one temp folder, one Prefect API; a method per workload."""

    def __init__(self, dovecot: Dovecot, top: Path, sizes: Sizes):
        self.dovecot = dovecot
        self.top = top
        self.sizes = sizes
        self.missing = {GETMAIL: ensure_command("getmail", "getmail6"),
                        FETCHMAIL: ensure_command("fetchmail", "fetchmail")}
        self.outcomes: list[Outcome] = []

    def mailbox(self, messages: list[bytes]) -> Mailbox:
        user, password = self.dovecot.add_user()
        self.dovecot.deliver(user, *messages)
        return Mailbox("localhost", self.dovecot.pop3s_port, user, password,
                       str(self.dovecot.ca_file))

    def folder(self, label: str, tool: str) -> Path:
        return self.top / label / re.sub(r"[^a-z0-9]+", "-", tool.lower())

    def tools(self, label: str, box: Mailbox) -> dict[str, Callable[[Path], Run]]:
        """Every tool, reading ``box``; each gets an output folder per run."""
        config = save_configuration(f"peers-{label}", box, self.folder(label, POP3MAIL))
        return {
            POP3MAIL: lambda _out: run_flow(f"peers-{label}"),
            ENGINE: lambda _out: run_engine(f"peers-{label}", config),
            POPLIB: lambda out: run_poplib(box, out),
            GETMAIL: lambda out: run_getmail(box, out),
            FETCHMAIL: lambda out: run_fetchmail(box, out),
        }

    def compare(self, label: str, title: str, box: Mailbox, expected: int,
                repeat: int) -> None:
        for tool, run in self.tools(label, box).items():
            if self.missing.get(tool):
                self.outcomes.append(Outcome(title, tool, skipped=self.missing[tool]))
                continue
            # pop3mail's runs write where its saved block says: the same folder.
            out = self.folder(label, POP3MAIL if tool == ENGINE else tool)
            self.outcomes.append(measure(title, tool, run, out, expected, repeat))
            print(self.outcomes[-1].line(), flush=True)

    # --- the workloads ------------------------------------------------------------------

    def loopback(self) -> None:
        n = self.sizes.small_messages
        box = self.mailbox([small(i) for i in range(n)])
        self.compare("a", f"(a) {n:,} x 4 KB, TLS, loopback", box, n, self.sizes.repeat)

    def attachments(self) -> None:
        n, size = self.sizes.large_messages, self.sizes.attachment_bytes
        box = self.mailbox([with_attachment(i, size, subject="Large") for i in range(n)])
        self.compare("b", f"(b) {n} x {size >> 20} MB attachment", box, n, self.sizes.repeat)

    def wan(self) -> None:
        n = self.sizes.wan_messages
        box = self.mailbox([small(i) for i in range(n)])
        with LatencyProxy("127.0.0.1", box.port, delay=WAN_DELAY) as proxy:
            far = Mailbox(box.host, proxy.port, box.user, box.password, box.ca_file)
            self.compare("c", f"(c) {n:,} x 4 KB, +{WAN_DELAY * 1e3:.0f} ms each way", far, n,
                         self.sizes.repeat)

    def memory(self) -> list[dict]:
        size = self.sizes.huge_bytes
        box = self.mailbox([with_attachment(0, int(size / 1.3514), subject="Huge")])
        peers = {tool: run for tool, run in ((GETMAIL, run_getmail), (FETCHMAIL, run_fetchmail))
                 if not self.missing.get(tool)}
        rows = rss_rows(box, self.top / "d", size, peers)
        for row in rows:
            print(f"(d) {row['tool']}: peak {row['peak MB']} MB, growth "
                  f"{row.get('growth MB', '-')} MB, {row['seconds']} s", flush=True)
        return rows

    def many_mailboxes(self) -> None:
        from prefect_pop3mail.flows import receive_from_mailboxes

        count, n = self.sizes.mailboxes, self.sizes.per_mailbox
        names = []
        for index in range(count):
            box = self.mailbox([small(i) for i in range(n)])
            names.append(f"peers-e-{index:02d}")
            save_configuration(names[-1], box, self.top / "e" / names[-1])
        title = f"(e) {count} mailboxes x {n}"
        one = measure(title, "receive_all_mail, 1 mailbox", lambda _out: run_flow(names[0]),
                      self.top / "e" / names[0], n, self.sizes.repeat)
        many = measure(title, f"receive_from_mailboxes, {count}",
                       lambda _out: Run(sum(map(len, receive_from_mailboxes(names).values()))),
                       self.top / "e", count * n, self.sizes.repeat)
        self.outcomes += [one, many]
        print(one.line(), many.line(), sep="\n", flush=True)

    def prefect_overhead(self) -> None:
        n = self.sizes.overhead_messages
        box = self.mailbox([small(i) for i in range(n)])
        tools = self.tools("f", box)
        title = f"(f) Prefect overhead, {n} messages"
        repeat = max(self.sizes.repeat, 5)
        for tool in (POP3MAIL, ENGINE):
            self.outcomes.append(measure(title, tool, tools[tool], self.folder("f", POP3MAIL),
                                         n, repeat))
            print(self.outcomes[-1].line(), flush=True)


def main() -> None:
    reason = dovecot_unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return
    from prefect.testing.utilities import prefect_test_harness

    sizes = Sizes.from_environment()
    machine_before = describe_machine()
    print(f"sizes: {sizes}\nstart: {machine_before}", flush=True)
    top = Path(tempfile.mkdtemp(prefix="pop3mail-bench-peers-"))
    top.chmod(0o755)  # getmail6 and fetchmail run as nobody and write below it
    dovecot = start_dovecot(ca=CommonNameCA())
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, dovecot.root, ignore_errors=True)
        cleanup.callback(shutil.rmtree, top, ignore_errors=True)
        cleanup.callback(dovecot.stop)
        cleanup.enter_context(prefect_test_harness(server_startup_timeout=120))
        quiet_prefect_console()
        bench = PeerBench(dovecot, top, sizes)
        for name, missing in bench.missing.items():
            if missing:
                print(f"{name} skipped: {missing}", file=sys.stderr)
        rss, others = [], []
        steps = {"a": bench.loopback, "b": bench.attachments, "c": bench.wan,
                 "d": lambda: rss.extend(bench.memory()), "e": bench.many_mailboxes,
                 "f": bench.prefect_overhead,
                 "g": lambda: others.extend(other_servers(sizes, CommonNameCA(), top / "g",
                                                          WAN_DELAY))}
        for key in sizes.workloads:
            steps[key]()
        if bench.outcomes or rss:
            print_report(bench.outcomes, rss, sizes, machine_before, describe_machine())
        if others:
            print("\n(g) the other servers of the interoperability matrix\n" + table(
                server_rows(others), ["server, workload", "engine s", "poplib s",
                                      "poplib / engine"]))


if __name__ == "__main__":
    main()
