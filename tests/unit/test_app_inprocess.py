"""The ASGI app in-process against a real ring, for states a live gateway cannot be held in:
a flusher gone past the grace period (the supervisor restarts one within a second), and a
worker's byte budget held by slow uploads."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

import ringgate.gateway as gateway_module


@pytest.fixture
def app_with_ring(monkeypatch):
    instance = f"rgnoflusher{os.getpid()}"
    monkeypatch.setenv("RINGGATE_INSTANCE", instance)
    monkeypatch.delenv("RINGGATE_SETTINGS_JSON", raising=False)
    from ringgate.config import Settings
    from ringgate.http.app import create_app
    from ringgate.metrics import Metrics
    from ringgate.ring import Ring, segment_name

    ring = Ring.create(segment_name(instance, 0), 1 << 20)
    try:
        Metrics.create(instance)
        app = create_app(Settings.from_environ())
        app.gateway.start()
        yield app, ring
        app.gateway.rings[0].close()
    finally:  # a failing setup must not leave segments in /dev/shm
        ring.close()
        ring.unlink()
        Metrics.unlink(instance)


def post(app, body: bytes) -> tuple[int, dict]:
    messages = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/ingest", "query_string": b"",
             "headers": [(b"content-type", b"application/json")]}
    asyncio.run(app(scope, receive, send))
    return messages[0]["status"], json.loads(messages[1]["body"])


def test_records_go_in_while_the_flusher_lives_or_was_just_lost_then_503(app_with_ring, monkeypatch):
    app, ring = app_with_ring
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ring.flusher_pid = os.getpid()  # alive
    assert post(app, b'[{"a":1}]')[0] == 202
    ring.flusher_pid = dead.pid  # gone: the supervisor is restarting it, the ring keeps records
    app.gateway.forget_flusher_checks()
    assert post(app, b'[{"a":2}]')[0] == 202
    monkeypatch.setattr(gateway_module, "FLUSHER_GRACE_S", 0.0)  # ... for longer than the grace period
    app.gateway.forget_flusher_checks()
    status, body = post(app, b'[{"a":3}]')
    assert status == 503 and body["error"] == "no_flusher"
    assert ring.producer_position > 0 and post(app, b"[1]")[0] == 400  # checks come first


def test_readyz_names_a_ring_without_a_live_flusher(app_with_ring):
    app, ring = app_with_ring
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ring.flusher_pid = dead.pid
    app.gateway.forget_flusher_checks()
    messages = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": "/readyz", "raw_path": b"/readyz", "root_path": "",
             "query_string": b"", "headers": [], "scheme": "http", "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    body = json.loads(messages[1]["body"])
    assert messages[0]["status"] == 503
    assert body["status"] == "not_ready" and "ring 0: no flusher alive" in body["reasons"]
    assert body["rings"][0]["flusher_pid"] == dead.pid


def _budget_scenario(app, limit: int, first_chunk: bytes):
    """A slow upload declared at the whole budget sends `first_chunk` and stalls; meanwhile a small
    request arrives; then the slow one completes and one more small request comes."""
    release = asyncio.Event()
    rest = b""

    async def scenario():
        sent: list[list[dict]] = [[], [], []]
        chunks = [{"type": "http.request", "body": first_chunk, "more_body": True}]

        async def slow_receive():
            if chunks:
                return chunks.pop()
            await release.wait()
            return {"type": "http.request", "body": rest, "more_body": False}

        def sender(i):
            async def send(message):
                sent[i].append(message)
            return send

        def scope(length: int) -> dict:
            return {"type": "http", "method": "POST", "path": "/v1/ingest", "query_string": b"",
                    "headers": [(b"content-type", b"application/x-ndjson"),
                                (b"content-length", str(length).encode())]}

        async def quick_receive():
            return {"type": "http.request", "body": b'{"a":1}', "more_body": False}

        slow = asyncio.create_task(app(scope(limit), slow_receive, sender(0)))
        await asyncio.sleep(0.01)
        await app(scope(7), quick_receive, sender(1))
        release.set()
        await slow
        await app(scope(7), quick_receive, sender(2))
        return sent

    return asyncio.run(scenario())


@pytest.fixture
def small_budget(app_with_ring, monkeypatch):
    app, ring = app_with_ring
    ring.flusher_pid = os.getpid()
    import msgspec

    settings = app.gateway.settings
    # the smallest cap the configuration allows: one whole body (here of 512 KiB, which the 1 MiB
    # ring has room for: a declared length it has no room for is refused before the budget counts)
    limit = 512 << 10
    monkeypatch.setattr(app.gateway, "settings",
                        msgspec.structs.replace(settings, max_body_bytes=limit, worker_inflight_bytes=limit))
    return app, limit


def test_received_bytes_count_against_the_worker_budget_and_are_released(small_budget):
    app, limit = small_budget
    held = b'{"slow":1}\n' + b" " * (limit - 14)  # 3 bytes short of the budget: no room for 7 more
    slow, refused, after = _budget_scenario(app, limit, held)
    assert refused[0]["status"] == 429
    assert json.loads(refused[1]["body"])["error"] == "overloaded"
    assert (b"retry-after", b"1") in refused[0]["headers"]
    assert slow[0]["status"] == 202 and after[0]["status"] == 202  # the bytes are released
    assert app.gateway.inflight_bytes == 0


def test_a_declared_length_alone_holds_nothing(small_budget):
    """The attack of issue 9: declaring Content-Length = the budget and sending one byte used to
    lock every other request on the worker out with 429 until the client hung up."""
    app, limit = small_budget
    slow, quick, after = _budget_scenario(app, limit, b"{")
    assert quick[0]["status"] == 202, quick
    assert app.gateway.inflight_bytes == 0
