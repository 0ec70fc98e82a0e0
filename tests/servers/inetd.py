"""A tiny inetd for POP3 servers that only run per connection (popa3d, solid-pop3d).

Run as a script (stdlib only), usually under ``unshare --mount``::

    inetd.py --listen 127.0.0.1:PORT --bind SRC=DST ... --log FILE -- /path/server args

Each ``--bind`` is bind-mounted first, in the private mount namespace: servers with
compiled-in paths (/var/mail, /etc/passwd for PAM) then see the test's temp dir instead,
and the host's files are never touched. Every accepted connection becomes the server's
stdin and stdout, as inetd would hand it over. "READY" on stdout once listening.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", action="append", required=True)
    parser.add_argument("--bind", action="append", default=[])
    parser.add_argument("--log", required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    for spec in args.bind:
        source, _, target = spec.partition("=")
        subprocess.run(["mount", "--bind", source, target], check=True)
    listeners = []
    for spec in args.listen:
        host, _, port = spec.rpartition(":")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), int(port)))
        sock.listen(64)
        listeners.append(sock)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log = open(args.log, "ab")
    print("READY", flush=True)
    import selectors

    selector = selectors.DefaultSelector()
    for sock in listeners:
        selector.register(sock, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            # One failed connection (aborted before accept, fork refused under load) must
            # not end the loop: every later connection would then find nobody listening.
            try:
                conn, _addr = key.fileobj.accept()  # type: ignore[union-attr]
                with conn:
                    subprocess.Popen(command, stdin=conn, stdout=conn, stderr=log,
                                     close_fds=True)
            except OSError as exc:
                log.write(f"inetd.py: {exc!r}\n".encode())
                log.flush()


if __name__ == "__main__":
    main()
