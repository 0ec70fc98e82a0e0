"""A Prefect API address for the tests that do not carry the ``prefect`` marker: it answers
every request with an error and remembers it, so such a test that reaches for Prefect fails
(tests/conftest.py) instead of quietly starting a server of its own."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Tripwire:
    def __init__(self):
        self.hits: list[str] = []
        tripwire = self

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self) -> None:
                tripwire.hits.append(f"{self.command} {self.path}")
                body = json.dumps({"detail": "this test is not marked prefect"}).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _refuse

            def log_message(self, *args) -> None:  # one line per request: no
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.api_url = f"http://127.0.0.1:{self._server.server_address[1]}/api"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def take(self) -> list[str]:
        """The requests since the last call."""
        hits, self.hits = self.hits, []
        return hits

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
