"""An S3-compatible server for tests and benchmarks: moto in server mode on loopback, as
s3fs's own tests use. Clients reach it through the standard AWS environment variables
(``AWS_ENDPOINT_URL`` and throwaway keys), the way a worker is configured."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import uuid

from tests.servers import started


class S3Server:
    """``separate_process``: run moto in its own interpreter (benchmarks: the server's work
    then shares no GIL with the client measured); otherwise a thread of this process."""

    def __init__(self, *, separate_process: bool = False):
        started("moto's S3 server", "s3")
        self._process = None
        if separate_process:
            self._start_process()
            return
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def _start_process(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self._process.kill()
        raise RuntimeError("moto server did not start")

    def env(self) -> dict[str, str]:
        """What a worker's environment says to use this server (no config files read)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        }

    def client(self):
        import boto3

        env = self.env()
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])

    def new_bucket(self) -> str:
        name = f"mail-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, dict]:
        """Every object under ``prefix``: key -> its listing entry (Size, ETag...)."""
        found = {}
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                found[item["Key"]] = item
        return found

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(10)
        else:
            self._server.stop()
