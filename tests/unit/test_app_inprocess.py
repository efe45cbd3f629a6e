"""The ASGI app in-process against a real ring, for states a live gateway cannot be held in:
a flusher gone past the grace period (the supervisor restarts one within a second), and a
worker holding a slow upload (Granian buffers a body before the app sees it)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest


@pytest.fixture
def app_with_ring(monkeypatch):
    instance = f"rgnoflusher{os.getpid()}"
    monkeypatch.setenv("RINGGATE_INSTANCE", instance)
    monkeypatch.delenv("RINGGATE_SETTINGS_JSON", raising=False)
    from ringgate.metrics import Metrics
    from ringgate.ring import Ring, segment_name

    ring = Ring.create(segment_name(instance, 0), 1 << 20)
    Metrics.create(instance)
    sys.modules.pop("ringgate.app", None)  # settings are read at import
    import ringgate.app as app_module

    app_module.gateway.start()
    yield app_module, ring
    app_module.gateway.rings[0].close()
    sys.modules.pop("ringgate.app", None)
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
    app_module, ring = app_with_ring
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ring.flusher_pid = os.getpid()  # alive
    assert post(app_module.app, b'[{"a":1}]')[0] == 202
    ring.flusher_pid = dead.pid  # gone: the supervisor is restarting it, the ring keeps records
    app_module.gateway._flusher_seen.clear()
    assert post(app_module.app, b'[{"a":2}]')[0] == 202
    monkeypatch.setattr(app_module, "FLUSHER_GRACE_S", 0.0)  # ... for longer than the grace period
    app_module.gateway._flusher_seen.clear()
    status, body = post(app_module.app, b'[{"a":3}]')
    assert status == 503 and body["error"] == "no_flusher"
    assert ring.producer_position > 0 and post(app_module.app, b"[1]")[0] == 400  # checks come first


def test_readyz_names_a_ring_without_a_live_flusher(app_with_ring):
    app_module, ring = app_with_ring
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ring.flusher_pid = dead.pid
    app_module.gateway._flusher_seen.clear()
    messages = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        messages.append(message)

    scope = {"type": "http", "method": "GET", "path": "/readyz", "raw_path": b"/readyz", "root_path": "",
             "query_string": b"", "headers": [], "scheme": "http", "server": ("127.0.0.1", 80)}
    asyncio.run(app_module.app(scope, receive, send))
    body = json.loads(messages[1]["body"])
    assert messages[0]["status"] == 503
    assert body["status"] == "not_ready" and "ring 0: no flusher alive" in body["reasons"]
    assert body["rings"][0]["flusher_pid"] == dead.pid


def test_a_worker_holding_too_many_request_bytes_answers_429_overloaded(app_with_ring, monkeypatch):
    app_module, ring = app_with_ring
    ring.flusher_pid = os.getpid()
    import msgspec

    settings = app_module.gateway.settings
    limit = settings.max_body_bytes  # the smallest cap the configuration allows: one whole body
    monkeypatch.setattr(app_module.gateway, "settings", msgspec.structs.replace(settings, worker_inflight_bytes=limit))
    release = asyncio.Event()

    async def slow_receive():  # a body declared at the whole cap, still arriving
        await release.wait()
        return {"type": "http.request", "body": b'[{"slow":1}]', "more_body": False}

    async def scenario():
        sent: list[list[dict]] = [[], [], []]

        def sender(i):
            async def send(message):
                sent[i].append(message)
            return send

        def scope(length: int) -> dict:
            return {"type": "http", "method": "POST", "path": "/v1/ingest", "query_string": b"",
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]}

        async def quick_receive():
            return {"type": "http.request", "body": b'[{"a":1}]', "more_body": False}

        slow = asyncio.create_task(app_module.app(scope(limit), slow_receive, sender(0)))
        await asyncio.sleep(0.01)
        await app_module.app(scope(9), quick_receive, sender(1))
        release.set()
        await slow
        await app_module.app(scope(9), quick_receive, sender(2))
        return sent

    slow, refused, after = asyncio.run(scenario())
    assert refused[0]["status"] == 429
    assert json.loads(refused[1]["body"])["error"] == "overloaded"
    assert (b"retry-after", b"1") in refused[0]["headers"]
    assert slow[0]["status"] == 202 and after[0]["status"] == 202  # the bytes are released
