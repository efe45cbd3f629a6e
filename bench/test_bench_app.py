"""The HTTP worker's own cost per request, without HTTP: ringgate's ASGI `app` beside the bare one.

    python -m pytest bench/test_bench_app.py -p no:randomly -p no:cacheprovider --benchmark-only \
        -o addopts="" -o testpaths=bench [--benchmark-json=out.json]

One call of the ASGI callable with a POST /v1/ingest scope, a `receive` that hands over the whole
body at once and a `send` that drops the messages: everything a Granian worker runs in Python for
a request, and nothing of Granian's own work (HTTP parsing, socket I/O), which is the same for both.
- ringgate: `ringgate.http.app.create_app()` with a real native ring (16 MiB, drained between rounds, untimed)
  and its shared-memory metrics, as `ringgate serve` sets them up for a worker;
- baseline (the e2e ceiling): `bench/baselines/bare_granian.py`, msgspec decode into
  `Struct(records: list[Raw])` and a 202;
- `decode_body` alone, and the msgspec decode alone, to split ringgate's part.
Bodies are the e2e ones (bench/e2e.py): `{"records": [...]}` of 100 records of ~128 bytes (the
longest 130: `_check_depth`'s cheap bound runs from 130 bytes) and of 1 record.
The table at the end gives µs per request and the extra over the bare app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import msgspec
import pytest

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH / "baselines"))

import bare_granian  # noqa: E402
from _report import write_report  # noqa: E402
from e2e import make_body  # noqa: E402

from ringgate.codecs import BodyFormat, Encoding, decode_body  # noqa: E402

BODIES = {100: make_body(100), 1: make_body(1)}
# the same records 11 bytes shorter (longest 119 B): below 130 B, decode_body skips the depth scan
SHORT = make_body(100).replace(b',"ok":true', b"")
REQUESTS = 200  # per round: the ring holds 200 x 100 framed records of ~150 B easily
_results: dict[str, float] = {}  # name -> median µs per request


def drainer(ring):
    """A function that reads and releases everything in `ring`, as a flusher would (untimed)."""
    from ringgate.ring import ReadBuffers

    buffers = ReadBuffers(10_000, 8 << 20, ring.capacity)

    def drain():
        while True:
            result = ring.read(ring.consumer_position, 10_000, 8 << 20, buffers)
            if result.next_position == ring.consumer_position:
                return
            ring.release(result.next_position)

    return drain


@pytest.fixture(scope="module")
def ringgate_app():
    """ringgate's app with a ring and metrics of its own, as a worker of `ringgate serve` builds it."""
    instance = f"rgbench-app-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    old = os.environ.get("RINGGATE_INSTANCE")
    os.environ["RINGGATE_INSTANCE"] = instance
    from ringgate.metrics import Metrics
    from ringgate.ring import Ring, segment_name

    ring = Ring.create(segment_name(instance, 0), 16 << 20)
    ring.flusher_pid = os.getpid()  # a live "flusher": the app serves the ring
    Metrics.create(instance)
    try:
        from ringgate.config import Settings
        from ringgate.http.app import create_app

        app = create_app(Settings.from_environ())
        app.gateway.start()
        yield app, drainer(ring)
    finally:
        with contextlib.suppress(Exception):
            app.gateway.rings[0].close()
        ring.close()
        ring.unlink()
        Metrics.unlink(instance)
        if old is None:
            os.environ.pop("RINGGATE_INSTANCE", None)
        else:
            os.environ["RINGGATE_INSTANCE"] = old


JSON = [(b"content-type", b"application/json")]


def post_scope(body: bytes, path: str = "/v1/ingest", headers: list[tuple[bytes, bytes]] | None = None) -> dict:
    """The ASGI scope of a POST of `body` to `path` (a query after `?`) with `headers` (default JSON)."""
    path, _, query = path.partition("?")
    return {
        "type": "http", "method": "POST", "path": path, "query_string": query.encode(), "http_version": "1.1",
        "headers": [(b"host", b"127.0.0.1"), *(JSON if headers is None else headers),
                    (b"content-length", str(len(body)).encode())],
    }


def runner(app, body: bytes, statuses: list, path: str = "/v1/ingest",
           headers: list[tuple[bytes, bytes]] | None = None, requests: int = REQUESTS):
    """A coroutine function calling `app` `requests` times with the whole body at once; the
    answers' statuses are appended to `statuses`."""
    scope = post_scope(body, path, headers)
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive():
        return message

    async def send(m):
        if m["type"] == "http.response.start":
            statuses.append(m["status"])

    async def many():
        for _ in range(requests):
            await app(scope, receive, send)

    return many


def rounds(benchmark, app, drain, body: bytes, path: str = "/v1/ingest",
           headers: list[tuple[bytes, bytes]] | None = None, requests: int = REQUESTS, count: int = 30) -> set[int]:
    """`count` timed rounds of `requests` requests into ringgate's app (the ring drained between
    rounds, untimed); the set of statuses answered. The source benchmarks use it too."""
    statuses: list = []
    loop = asyncio.new_event_loop()
    many = runner(app, body, statuses, path, headers, requests)

    def setup():
        drain()
        return (), {}

    try:
        benchmark.pedantic(lambda: loop.run_until_complete(many()), setup=setup, rounds=count, warmup_rounds=2)
    finally:
        loop.close()
    return set(statuses)


def records_per_second(benchmark, app, drain, body: bytes, path: str, headers: list[tuple[bytes, bytes]],
                       records: int, status: int, requests: int = REQUESTS, count: int = 30) -> tuple[float, float] | None:
    """`rounds` of a source's request carrying `records` records, every answer `status`; records/s
    at the median and at the best round (None when benchmarks are disabled). The source
    benchmarks' one measurement."""
    statuses = rounds(benchmark, app, drain, body, path, headers, requests, count=count)
    assert statuses == {status}, statuses
    if benchmark.stats is None:
        return None
    stats = benchmark.stats.stats
    benchmark.extra_info["records_per_s"] = round(requests * records / stats.median)
    return requests * records / stats.median, requests * records / stats.min


def _note(benchmark, name: str) -> None:
    if benchmark.stats is None:
        return
    _results[name] = benchmark.stats.stats.median / REQUESTS * 1e6
    benchmark.extra_info["us_per_request"] = round(_results[name], 2)


@pytest.mark.parametrize("n", [100, 1])
def test_bare_app(benchmark, n):
    benchmark.group = f"ASGI app per request, {n}-record body"
    statuses: list = []
    loop = asyncio.new_event_loop()
    many = runner(bare_granian.app, BODIES[n], statuses)
    try:
        benchmark.pedantic(lambda: loop.run_until_complete(many()), rounds=30, warmup_rounds=2)
    finally:
        loop.close()
    assert set(statuses) == {202}
    _note(benchmark, f"bare app (ceiling), {n} rec")


@pytest.mark.parametrize("n", [100, 1])
def test_ringgate_app(benchmark, ringgate_app, n):
    benchmark.group = f"ASGI app per request, {n}-record body"
    app, drain = ringgate_app
    statuses = rounds(benchmark, app, drain, BODIES[n])
    assert statuses == {202}, statuses
    _note(benchmark, f"ringgate app, {n} rec")


@pytest.mark.parametrize("n", [100, 1, "100 short"])
def test_decode_parts(benchmark, n):
    benchmark.group = f"ASGI app per request, {str(n).split()[0]}-record body"
    body = SHORT if n == "100 short" else BODIES[n]

    def many():
        for _ in range(REQUESTS):
            decode_body(body, BodyFormat.JSON, Encoding.IDENTITY, max_body_bytes=16 << 20, max_record_bytes=1 << 20)

    benchmark.pedantic(many, rounds=30, warmup_rounds=2)
    _note(benchmark, f"  of which decode_body, {n} rec" if n != "100 short" else
          "  decode_body, 100 rec of <130 B (no depth scan)")


@pytest.mark.parametrize("n", [100, 1, "100 short"])
def test_msgspec_decode(benchmark, n):
    benchmark.group = f"ASGI app per request, {str(n).split()[0]}-record body"
    body = SHORT if n == "100 short" else BODIES[n]
    decode = msgspec.json.Decoder(bare_granian.Envelope).decode

    def many():
        for _ in range(REQUESTS):
            decode(body)

    benchmark.pedantic(many, rounds=30, warmup_rounds=2)
    _note(benchmark, f"  msgspec Raw decode alone, {n} rec" if n != "100 short" else
          "  msgspec Raw decode alone, 100 rec of <130 B")


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _results:
        return
    lines = ["", "ASGI app, Python work per request without HTTP (median)",
             f"{'case':50} {'us/request':>11} {'over bare':>10}"]
    for name, us in _results.items():
        n = 1 if "1 rec" in name else 100
        bare = _results.get(f"bare app (ceiling), {n} rec")
        extra = f"{us - bare:+.1f}" if bare and name.startswith("ringgate") else ""
        lines.append(f"{name:50} {us:11.2f} {extra:>10}")
    lines.append(json.dumps({"us_per_request": {k: round(v, 2) for k, v in _results.items()}}))
    write_report(request.config, lines)
