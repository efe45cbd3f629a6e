"""HTTP surface: the only module that imports starlette.

POST /v1/ingest is a plain ASGI callable (Starlette's Request/Response cost ~20% on this path,
MEASUREMENTS.md); everything else is routed by Starlette. Each Granian worker process attaches to
the rings by name at startup; it never creates or unlinks them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import os
import time
from urllib.parse import parse_qs

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .config import Settings
from .ingest import IngestError, decode_body, parse_headers
from .metrics import Metrics, render
from .process import RING_COUNT_ENV, configure_logging, die_with_supervisor, pid_alive
from .ring import Ring, RingError, segment_name
from .ring import layout as L
from .sinks import sink_label

log = logging.getLogger("ringgate.app")

ACK_POLL_S = 0.002
FLUSHER_GRACE_S = 10.0  # a flusher being restarted: keep accepting into its ring this long
_encode = msgspec.json.encode


class Gateway:
    """Per-worker state: attached rings, this worker's metrics row, bytes held in flight."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rings: list[Ring] = []
        self.metrics: Metrics | None = None
        self.inflight_bytes = 0
        self.own = 0
        self._flusher_seen: dict[int, tuple[float, bool]] = {}
        self._dead_since: dict[int, float] = {}
        self._waiters: list[list[tuple[int, int, asyncio.Future]]] = []  # per ring: heap by position
        self._poller: asyncio.Task | None = None
        self.keys = frozenset(f"Bearer {k}".encode() for k in settings.api_keys)

    def start(self) -> None:
        if self.rings:
            return
        count = int(os.environ.get(RING_COUNT_ENV, self.settings.flushers))
        self.rings = [Ring.attach(segment_name(self.settings.instance, i)) for i in range(count)]
        self._waiters = [[] for _ in self.rings]
        self.metrics = Metrics.attach(self.settings.instance)
        self.own = os.getpid() % len(self.rings)

    def committed(self, index: int, position: int) -> asyncio.Future:
        """A future resolved once ring `index` has committed everything below `position`.

        One poller task per worker watches every waiting request's ring (not one loop each)."""
        future = asyncio.get_running_loop().create_future()
        if self.rings[index].consumer_position >= position:
            future.set_result(None)
            return future
        heapq.heappush(self._waiters[index], (position, id(future), future))
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_commits())
        return future

    async def _poll_commits(self) -> None:
        while any(self._waiters):
            await asyncio.sleep(ACK_POLL_S)
            for index, waiters in enumerate(self._waiters):
                committed = self.rings[index].consumer_position
                while waiters and (waiters[0][0] <= committed or waiters[0][2].done()):
                    _, _, future = heapq.heappop(waiters)
                    if not future.done():
                        future.set_result(None)

    def flusher_alive(self, index: int) -> bool:
        """Cached for 100 ms: one kill(pid, 0) per ring per 100 ms, not per request."""
        now = time.monotonic()
        seen = self._flusher_seen.get(index)
        if seen is not None and now - seen[0] < 0.1:
            return seen[1]
        pid = self.rings[index].flusher_pid
        alive = pid > 0 and pid_alive(pid)
        if alive:
            self._dead_since.pop(index, None)
        self._flusher_seen[index] = (now, alive)
        return alive

    def ring_served(self, index: int) -> bool:
        """A ring is served while its flusher lives, or died recently (the supervisor restarts it)."""
        if self.flusher_alive(index):
            return True
        since = self._dead_since.setdefault(index, time.monotonic())
        return time.monotonic() - since < FLUSHER_GRACE_S

    def ring_report(self, index: int) -> dict:
        ring = self.rings[index]
        oldest = ring.oldest_pending_ns
        return {
            "ring": index,
            "flusher_pid": ring.flusher_pid,
            "flusher_alive": self.flusher_alive(index),
            "used_bytes": ring.used_bytes,
            "capacity_bytes": ring.capacity,
            "producer_position": ring.producer_position,
            "committed_position": ring.consumer_position,
            "epoch": ring.epoch,
            "unblocked": ring.unblocked_count,
            "oldest_age_s": max(0.0, (time.time_ns() - oldest) / 1e9) if oldest else 0.0,
            "sink_error": ring.sink_reason,
        }


settings = Settings.from_child_environ()
gateway = Gateway(settings)


# -- POST /v1/ingest: plain ASGI ------------------------------------------------------------------


_JSON_CONTENT = (b"content-type", b"application/json")  # Granian adds content-length itself


async def _respond(send, status: int, payload: bytes, retry_after: int | None = None) -> None:
    headers = [_JSON_CONTENT]
    if retry_after is not None:
        headers.append((b"retry-after", b"%d" % retry_after))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _reject(send, status: int, code: str, detail: str, records: int = 1, retry_after: int | None = None) -> None:
    m = gateway.metrics
    if m is not None:
        m.request(status)
        m.rejected(code, records)
    await _respond(send, status, _encode({"error": code, "detail": detail}), retry_after)


@functools.lru_cache(maxsize=64)
def _body_format(content_type: bytes | None, content_encoding: bytes | None):
    """parse_headers, remembered per header pair: clients send the same few (errors are not cached)."""
    return parse_headers(
        content_type.decode("latin-1") if content_type else None,
        content_encoding.decode("latin-1") if content_encoding else None,
    )


async def ingest(scope, receive, send) -> None:
    received_ns = time.time_ns()
    s = gateway.settings
    if scope["method"] != "POST":
        await _reject(send, 405, "method_not_allowed", f"{scope['method']} is not allowed; use POST")
        return
    headers = dict(scope["headers"])
    if gateway.keys and headers.get(b"authorization") not in gateway.keys:
        await _reject(send, 401, "unauthorized", "missing or unknown API key: send Authorization: Bearer <key>")
        return
    try:
        fmt, encoding = _body_format(headers.get(b"content-type"), headers.get(b"content-encoding"))
    except IngestError as exc:
        await _reject(send, exc.status, exc.code, exc.detail)
        return
    declared = headers.get(b"content-length")
    declared_length = int(declared) if declared and declared.isdigit() else None
    if declared_length is not None and declared_length > s.max_body_bytes:
        await _reject(send, 413, "body_too_large",
                      f"Content-Length {declared_length} exceeds RINGGATE_MAX_BODY_BYTES ({s.max_body_bytes})")
        return
    reserve = declared_length if declared_length is not None else 0
    if gateway.inflight_bytes + reserve > s.worker_inflight_bytes:
        await _reject(send, 429, "overloaded", "this worker holds too many request bytes; retry shortly",
                      retry_after=1)
        return
    gateway.inflight_bytes += reserve
    try:
        await _ingest_body(scope, receive, send, fmt, encoding, received_ns, reserve)
    finally:
        gateway.inflight_bytes -= reserve


async def _ingest_body(scope, receive, send, fmt, encoding, received_ns: int, reserve: int) -> None:
    s = gateway.settings
    chunks = []
    size = 0
    extra = 0  # bytes beyond the declared length we hold too (chunked bodies)
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
                if size > s.max_body_bytes:
                    await _reject(send, 413, "body_too_large",
                                  f"body exceeds RINGGATE_MAX_BODY_BYTES ({s.max_body_bytes})")
                    return
                if size > reserve:
                    grow = size - reserve - extra
                    if gateway.inflight_bytes + grow > s.worker_inflight_bytes:
                        await _reject(send, 429, "overloaded", "this worker holds too many request bytes; "
                                      "retry shortly", retry_after=1)
                        return
                    gateway.inflight_bytes += grow
                    extra += grow
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        del chunks
        try:
            records = decode_body(body, fmt, encoding, max_body_bytes=s.max_body_bytes,
                                  max_record_bytes=s.max_record_bytes)
        except IngestError as exc:
            await _reject(send, exc.status, exc.code, exc.detail)
            return
        del body
        await _commit(scope, send, records, received_ns)
    finally:
        gateway.inflight_bytes -= extra


async def _commit(scope, send, records, received_ns: int) -> None:
    rings = gateway.rings
    n = records.count
    status = L.CLAIM_FULL
    served_any = False
    for k in range(len(rings)):
        index = (gateway.own + k) % len(rings)
        if not gateway.ring_served(index):
            continue
        served_any = True
        status, first, next_ = rings[index].claim_commit(records.blob, records.lengths, received_ns)
        if status != L.CLAIM_FULL:
            break
    if not served_any:
        await _reject(send, 503, "no_flusher", "no flusher process is alive to deliver records; retry later",
                      records=n, retry_after=5)
        return
    if status == L.CLAIM_FULL:
        await _reject(send, 429, "ring_full", "every ring is full: the sink is behind or unavailable; retry later",
                      records=n, retry_after=1)
        return
    if status == L.CLAIM_TOO_LARGE:
        capacity = rings[0].capacity
        await _reject(send, 413, "body_too_large",
                      f"{n} records need more than half a ring ({capacity // 2} bytes) once framed", records=n)
        return
    if status == L.CLAIM_LOST:
        await _reject(send, 503, "lost_claim",
                      "the write stalled and its space was reclaimed; nothing was stored, retry", records=n)
        return
    ring = rings[index]
    batch_id = b"%d-%d-%d-%d" % (index, ring.epoch, first, next_)
    m = gateway.metrics
    m.inc("records_accepted_total", n)
    if b"ack=commit" not in scope.get("query_string", b"") or not _wants_commit(scope):
        m.request(202)
        await _respond(send, 202, b'{"accepted":%d,"batch_id":"%b"}' % (n, batch_id))
        return
    timeout_s = gateway.settings.ack_timeout_ms / 1000
    try:
        await asyncio.wait_for(gateway.committed(index, next_), timeout_s)
    except TimeoutError:
        m.request(504)
        await _respond(send, 504, _encode({
            "error": "ack_timeout", "batch_id": batch_id.decode(), "accepted": n,
            "detail": f"not committed within RINGGATE_ACK_TIMEOUT_MS ({gateway.settings.ack_timeout_ms}); "
                      "the records are still delivered",
        }))
        return
    m.request(200)
    status_text = "dead_lettered" if ring.dead_lettered(first, next_) else "committed"
    await _respond(send, 200, _encode({"accepted": n, "batch_id": batch_id.decode(), "status": status_text}))


def _wants_commit(scope) -> bool:
    return parse_qs(scope.get("query_string", b"").decode("latin-1")).get("ack", [""])[-1] == "commit"


# -- the rest: Starlette ------------------------------------------------------------------------


async def batch_status(request: Request) -> Response:
    batch_id = request.path_params["batch_id"]
    unknown = JSONResponse({"batch_id": batch_id, "status": "unknown"}, status_code=404)
    try:
        index, epoch, first, next_ = (int(p) for p in batch_id.split("-"))
    except ValueError:
        return unknown
    if not 0 <= index < len(gateway.rings):
        return unknown
    ring = gateway.rings[index]
    if ring.epoch != epoch or not 0 <= first < next_ <= ring.producer_position:
        return unknown
    if ring.consumer_position < next_:
        status = "pending"
    else:
        dead = ring.dead_lettered(first, next_)
        status = "dead_lettered" if dead else "committed"
    return JSONResponse({"batch_id": batch_id, "status": status})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    reports = [gateway.ring_report(i) for i in range(len(gateway.rings))]
    stale_s = max(5.0, 10 * gateway.settings.flush_interval_ms / 1000)
    reasons = []
    if not reports:
        reasons.append("no rings attached")
    for r in reports:
        if not r["flusher_alive"]:
            reasons.append(f"ring {r['ring']}: no flusher alive")
        if r["sink_error"]:
            reasons.append(f"ring {r['ring']}: sink failing: {r['sink_error']}")
        elif r["oldest_age_s"] > stale_s:  # e.g. a first connection attempt still hanging
            reasons.append(f"ring {r['ring']}: oldest undelivered record is {r['oldest_age_s']:.1f}s old")
    body = {
        "status": "not_ready" if reasons else "ready",
        "reasons": reasons,
        "rings": [
            {k: r[k] for k in ("ring", "flusher_pid", "used_bytes", "capacity_bytes", "committed_position",
                               "producer_position", "epoch")}
            for r in reports
        ],
    }
    return JSONResponse(body, status_code=503 if reasons else 200)


async def metrics(request: Request) -> Response:
    reports = [gateway.ring_report(i) for i in range(len(gateway.rings))]
    text = render(gateway.metrics.totals(), sink_label(gateway.settings.sink), reports)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def _startup() -> None:
    configure_logging(settings.log_format, settings.log_level)
    die_with_supervisor()
    try:
        gateway.start()
    except (OSError, RingError) as exc:
        log.critical("cannot attach the rings of instance %s: %s", settings.instance, exc)
        raise


routes = [
    Route("/v1/batches/{batch_id}", batch_status),
    Route("/healthz", healthz),
    Route("/readyz", readyz),
    Route("/metrics", metrics),
]


@contextlib.asynccontextmanager
async def _lifespan(app):
    _startup()
    yield


_starlette = Starlette(routes=routes, lifespan=_lifespan)


async def app(scope, receive, send) -> None:
    if scope["type"] == "http" and scope["path"] == "/v1/ingest":
        if not gateway.rings:
            _startup()
        await ingest(scope, receive, send)
        return
    if scope["type"] == "http" and not gateway.rings:
        _startup()
    await _starlette(scope, receive, send)
