"""The tools a user would pick instead of pop3mail, each run once over a whole mailbox.

Every tool reads the mailbox over implicit TLS with the certificate verified against the
throwaway CA, keeps the messages on the server (so each repetition reads the same mailbox),
and writes into a folder given per run. Config files live in that run's temp folder; no
tool reads /etc or the user's home. Each runner returns how many messages it saved, which
the benchmark checks, and the peak RSS of the tool's process tree where it is a child.
getmail6 and fetchmail run as the unprivileged user ``nobody``, as a user would run them
(getmail refuses to deliver as root; fetchmail discourages it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from bench.bench_session import poplib_run


@dataclass(frozen=True)
class Mailbox:
    """How to reach one Dovecot user."""

    host: str
    port: int
    user: str
    password: str
    ca_file: str


@dataclass
class Run:
    saved: int
    peak_rss_kb: int = 0
    #: Time lost to runs discarded for a known bug of the tool (not counted), and how many.
    discarded_seconds: float = 0.0
    discarded: int = 0


def run_poplib(box: Mailbox, out: Path) -> Run:
    """RETR each message and write the original: far less work than pop3mail does."""
    return Run(poplib_run(box.host, box.port, box.user, box.password, box.ca_file, out))


UNPRIVILEGED = "nobody"


def _child(command: list[str], out: Path) -> int:
    """Run a tool as ``nobody`` in ``out`` (its home); returns its peak RSS in KiB.

    GNU time forks the tool and reads its peak from ``wait4`` (fetchmail's MDA children
    included). Forking the tool straight from this big Python process would count this
    process's RSS as the tool's: a process's peak carries over ``fork`` and ``exec``."""
    account = pwd.getpwnam(UNPRIVILEGED)
    for folder, _dirs, files in os.walk(out):
        for name in (folder, *(os.path.join(folder, f) for f in files)):
            os.chown(name, account.pw_uid, account.pw_gid)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(out), "FETCHMAILHOME": str(out),
           "LANG": "C.UTF-8"}
    peak_file = out / ".peak-rss-kb"
    done = subprocess.run(
        ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
         "--clear-groups", "/usr/bin/time", "-f", "%M", "-o", str(peak_file), *command],
        env=env, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = done.stdout.decode(errors="replace")
    if done.returncode not in (0, 1):  # fetchmail: 1 = no mail, counted by the caller
        raise ToolError(command[0], done.returncode, output)
    peak = int(peak_file.read_text().split()[-1])
    peak_file.unlink()
    return peak


class ToolError(RuntimeError):
    def __init__(self, tool: str, code: int, output: str):
        super().__init__(f"{tool} exited {code}: {output[-2000:]}")
        self.output = output


def _private_write(path: Path, text: str) -> None:
    """fetchmail refuses a run-control file others can read; getmail's holds a password too."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


GETMAIL_RC = """\
[retriever]
type = SimplePOP3SSLRetriever
server = {host}
port = {port}
username = {user}
password = {password}
ca_certs = {ca_file}
# Also bounds the wait when getmail loses its delivery child's SIGCHLD (see run_getmail).
timeout = 20

[destination]
type = Maildir
path = {maildir}/

[options]
verbose = 0
read_all = true
delete = false
"""


#: getmail6 6.18 forks a child per Maildir delivery and waits on a condition that its SIGCHLD
#: handler notifies; when the child ends before the wait starts, the wake-up is lost and the
#: run fails after ``timeout`` (upstream issues getmail6/getmail6#52 and #226).
GETMAIL_LOST_CHILD = "waiting child pid"
GETMAIL_ATTEMPTS = 3


def run_getmail(box: Mailbox, out: Path) -> Run:
    """getmail6 into a Maildir (``out/Maildir``); its state (oldmail) stays in ``out``.
    A run that hits getmail's lost-child race is discarded, its time not counted, and the
    run is repeated from an empty folder."""
    lost = 0.0
    for attempt in range(GETMAIL_ATTEMPTS):
        maildir = out / "Maildir"
        for sub in ("new", "cur", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        rc = out / "getmailrc"
        _private_write(rc, GETMAIL_RC.format(maildir=maildir, **vars(box)))
        start = time.perf_counter()
        try:
            peak = _child(["getmail", f"--getmaildir={out}", f"--rcfile={rc}"], out)
        except ToolError as exc:
            if GETMAIL_LOST_CHILD not in exc.output or attempt + 1 == GETMAIL_ATTEMPTS:
                raise
            lost += time.perf_counter() - start
            shutil.rmtree(out)
            out.mkdir()
            continue
        return Run(sum(1 for _ in (maildir / "new").iterdir()), peak, lost, attempt)
    raise AssertionError("unreachable")


FETCHMAIL_RC = """\
set no syslog
set no bouncemail
poll {host} protocol pop3 service {port} timeout 120
  user "{user}" there with password "{password}" is "{unprivileged}" here
  ssl sslcertck sslcertfile "{ca_file}"
  keep fetchall
  mda "/bin/cat > $(/bin/mktemp -p '{messages}' msg.XXXXXXXX)"
"""


def run_fetchmail(box: Mailbox, out: Path) -> Run:
    """fetchmail, each message handed to a shell MDA that writes it to its own file."""
    messages = out / "messages"
    messages.mkdir(parents=True, exist_ok=True)
    rc = out / "fetchmailrc"
    _private_write(rc, FETCHMAIL_RC.format(messages=messages, unprivileged=UNPRIVILEGED, **vars(box)))
    peak = _child(["fetchmail", "--silent", "--nodetach", "-f", str(rc),
                   "--pidfile", str(out / "fetchmail.pid")], out)
    return Run(sum(1 for _ in messages.iterdir()), peak)


class CommonNameCA(trustme.CA):
    """A throwaway CA whose server certificates also carry the host name as their subject's
    common name: fetchmail 6.4 refuses a certificate without one ("Server name not specified
    in certificate"), even when its subjectAltName matches."""

    def issue_cert(self, *identities: str, **options) -> trustme.LeafCert:
        options.setdefault("common_name", identities[0])
        return super().issue_cert(*identities, **options)
