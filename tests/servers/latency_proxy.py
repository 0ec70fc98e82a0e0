"""A TCP forwarder on loopback that delays every byte by a fixed time in each direction.

It models a wide-area link (round trips cost ``2 * delay``) without limiting throughput:
each direction has a reader that stamps what it receives with a due time and a writer that
sends it when due, so data already in flight keeps flowing while later data waits.

    with LatencyProxy("127.0.0.1", dovecot.pop3s_port, delay=0.010) as proxy:
        connect to (proxy.host, proxy.port)
"""

from __future__ import annotations

import queue
import socket
import threading
import time


class LatencyProxy:
    """Forwards connections on ``(host, port)`` to ``(target_host, target_port)``."""

    def __init__(self, target_host: str, target_port: int, delay: float = 0.010,
                 host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.delay = delay
        self._listener = socket.create_server((host, 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopping = False

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LatencyProxy:
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, upstream]
            for source, destination in ((client, upstream), (upstream, client)):
                due: queue.SimpleQueue = queue.SimpleQueue()
                self._spawn(self._read, source, due)
                self._spawn(self._write, destination, due)

    def _read(self, source: socket.socket, due: queue.SimpleQueue) -> None:
        while True:
            try:
                data = source.recv(256 * 1024)
            except OSError:
                data = b""
            due.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _write(self, destination: socket.socket, due: queue.SimpleQueue) -> None:
        while True:
            when, data = due.get()
            wait = when - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    destination.shutdown(socket.SHUT_WR)  # pass the end of stream on
                    return
                destination.sendall(data)
            except OSError:
                return
