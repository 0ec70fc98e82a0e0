"""How the per-mailbox lock takes its slot when the Prefect server is busy or drops the
connection: quick tries of its own, and Prefect's client (with its 2, 4, 8 s back-off) only
after those. A real server cannot be made to answer 503 or to drop a kept-alive connection
on demand, so these faults come from an httpx transport that plays a server's answers;
the lock against a real Prefect server is tests/test_lock.py."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from prefect_pop3mail.tasks import lock

GRANTED = {"lease_id": str(uuid.uuid4()), "limits": [{"id": str(uuid.uuid4()), "name": "x",
                                                      "limit": 1}]}


class Server:
    """Answers each POST from a script: an int is a status, a str names the transport error."""

    def __init__(self, *script):
        self.script = list(script)
        self.bodies: list[dict] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/v2/concurrency_limits/increment-with-lease")
        self.bodies.append(json.loads(request.content))
        step = self.script.pop(0)
        if isinstance(step, str):
            raise getattr(httpx, step)("dropped", request=request)
        return httpx.Response(step, json=GRANTED if step == 200 else {"detail": "busy"})


class Client:
    """The two parts of Prefect's sync client the lock uses."""

    def __init__(self, server: Server):
        self._client = httpx.Client(base_url="http://127.0.0.1:9/api",
                                    transport=httpx.MockTransport(server))
        self.fallbacks = 0

    def increment_concurrency_slots_with_lease(self, **kwargs):
        self.fallbacks += 1
        return httpx.Response(200, json=GRANTED)


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(lock.time, "sleep", lambda seconds: None)


@pytest.mark.parametrize("dropped", ["RemoteProtocolError", "ReadError", "ConnectError"])
def test_a_dropped_connection_is_tried_again_at_once(dropped):
    server = Server(dropped, dropped, 200)
    client = Client(server)
    response = lock._increment(client, "mailbox", lock.SLOTS)
    assert response.json() == GRANTED
    assert len(server.bodies) == 3 and client.fallbacks == 0
    assert server.bodies[0]["names"] == ["mailbox"] and server.bodies[0]["slots"] == lock.SLOTS


def test_busy_answers_are_tried_again_without_prefects_back_off():
    server = Server(503, 503, "RemoteProtocolError", 503, 200)
    client = Client(server)
    assert lock._increment(client, "mailbox", lock.SLOTS).json() == GRANTED
    assert client.fallbacks == 0 and server.script == []


def test_a_connection_that_keeps_dropping_goes_to_prefects_client():
    server = Server(*["RemoteProtocolError"] * (lock.DROPPED_RETRIES + 1))
    client = Client(server)
    assert lock._increment(client, "mailbox", lock.SLOTS).json() == GRANTED
    assert client.fallbacks == 1 and server.script == []


@pytest.mark.parametrize("error", ["WriteTimeout", "ReadTimeout", "ProxyError"])
def test_another_transport_error_goes_to_prefects_client_at_once(error):
    server = Server(error)
    client = Client(server)
    assert lock._increment(client, "mailbox", lock.SLOTS).json() == GRANTED
    assert client.fallbacks == 1 and server.script == []


def test_a_held_mailbox_is_reported_to_the_caller():
    server = Server(423)
    client = Client(server)
    with pytest.raises(httpx.HTTPStatusError) as caught:
        lock._increment(client, "mailbox", lock.SLOTS)
    assert caught.value.response.status_code == 423 and client.fallbacks == 0
