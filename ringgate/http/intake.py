"""The shared path every source's records take (§8): headers, auth, limits, body, decode,
admission, claim; then, when asked, the wait for the sink's commit.

A source declares an `Intake` (its auth schemes, its Content-Type → decoder) and calls `accept`,
which returns an `Accepted` or raises a `Refusal`; the source shapes either into its protocol's
answer. Nothing here knows any protocol.

`accept` runs for every request, so its common case is written out flat (checks inline, the slow
paths behind calls): each Python call costs ~1,000 instructions, and the cut of the edge into
sources at first cost 50 % more instructions per 1-record request than the single function it
replaced (callgrind, bench/RESULTS.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from ..codecs import Decoder, Encoding, Records, compression, decode_with
from ..codecs.json import may_name_priority, parse_priority
from ..errors import Refusal
from ..gateway import Gateway, Stored
from .body import read_body
from .request import Answer, Request

# Bodies that may decode to more than this are decoded off the event loop, so the worker keeps
# answering (/healthz within a second) while a 16 MiB body is checked; smaller ones stay on the
# loop, where the thread hop would cost more than the decode.
OFFLOAD_BYTES = 1 << 20
OFFLOAD_COMPRESSED_BYTES = 4 << 10  # gzip can expand ~1000x
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_IDENTITY = Encoding.IDENTITY
_new_tuple = tuple.__new__
log = logging.getLogger("ringgate.http")


@dataclass(frozen=True)  # no slots: __post_init__ adds the remembered `formats`
class Intake:
    """What a source tells the shared path about its requests."""

    decoder: Callable[[bytes | None], Decoder]
    """The request's Content-Type header (None when absent) → the framing to decode with (415)."""
    schemes: frozenset[str] = frozenset()
    """Authorization schemes this protocol's clients use besides Bearer (lower case)."""
    ack_commit: bool = False
    """Honour `?ack=commit`: wait for the sink's commit before answering."""
    framing_codings: frozenset[bytes] = frozenset()
    """Content-Encodings that name what the protocol's framing does anyway (Loki's snappy): the
    decoder undoes them, the shared path treats them as identity (lower case)."""
    body_priority: bool = False
    """Its bodies may name their priority (the JSON envelope's `priority`, §8). Without it, a
    request's priority is its X-Priority header or 0, known before the body is read."""

    def __post_init__(self) -> None:
        # one remembered lookup per (Content-Type, Content-Encoding) pair: clients send the same
        # few (refusals are not remembered)
        object.__setattr__(self, "formats", functools.lru_cache(maxsize=64)(self._formats))

    def _formats(self, content_type: bytes | None, content_encoding: bytes | None) -> tuple[Decoder, Encoding]:
        if content_encoding is not None and content_encoding.strip().lower() in self.framing_codings:
            content_encoding = None
        encoding = compression.parse_encoding(content_encoding.decode("latin-1") if content_encoding else None)
        return self.decoder(content_type), encoding


class Accepted(NamedTuple):
    stored: Stored
    client: str | None
    commit: str | None = None
    """None when not asked; else committed | dead_lettered | timeout (RINGGATE_ACK_TIMEOUT_MS)."""


def authenticate(gw: Gateway, req: Request, schemes: frozenset[str] = frozenset()) -> str | None:
    """Duplicate headers (400) before auth (401); the client's key name, None when auth is off."""
    if req.repeated:
        repeated = req.repeated_single()
        if repeated is not None:
            raise Refusal(400, "duplicate_header", f"the {repeated.decode().title()} header is sent more than once")
    if not gw.keys.names:
        return None
    client = gw.keys.client(req.headers.get(b"authorization"), schemes)
    if client is None:
        raise Refusal(401, "unauthorized", "missing or unknown API key: send Authorization: Bearer <key>")
    return client


async def accept(gw: Gateway, req: Request, intake: Intake, decoder: Decoder | None = None) -> Accepted:
    """`decoder`, when given, is this request's framing (one that depends on more than the
    Content-Type, e.g. HEC raw's query fields) in place of the intake's."""
    records: Records | None = None
    client = None
    headers = req.headers
    try:
        client = authenticate(gw, req, intake.schemes) if req.repeated or gw.keys.names else None
        decode, encoding = intake.formats(headers.get(b"content-type"), headers.get(b"content-encoding"))
        if decoder is not None:
            decode = decoder
        # Under overload most requests are refused: each refusal that can be made before the
        # body is read or decoded is, so a 429 costs little of the CPU the sink needs (issue 12).
        # `admitted`: the priority the request will have has passed admission already.
        header_priority = headers.get(b"x-priority")
        admitted = True
        if header_priority is not None:
            header_priority = parse_priority(header_priority)
            gw.admit(header_priority)
        elif intake.body_priority:
            admitted = False  # its body may name one: known once the body is read
        else:
            gw.admit(0)  # no body can raise it
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit():
            gw.check_room(int(declared))
        body, held = await read_body(gw, req, gw.limits.max_body_bytes)
        try:
            if not admitted:
                try:
                    gw.admit(0)
                    admitted = True
                except Refusal:
                    if encoding is _IDENTITY and not may_name_priority(body):
                        raise
                    # else decode it: the priority it names decides, below
            if encoding is _IDENTITY and len(body) < OFFLOAD_BYTES and body and not body.isspace():
                records = decode(body, gw.limits)  # the common case, on the loop
            else:
                records = await _decode(gw, decode, body, encoding)
            del body
            if gw.limiter is not None:  # per key name, else per address
                gw.limiter.take(client if client is not None else req.client, records.count)
            priority = records.priority
            if priority is not None:  # the body's own, not admitted yet
                if priority < gw.settings.priority_threshold:
                    gw.admit(priority)
            elif not admitted:
                gw.admit(header_priority or 0)
            stored = gw.store(records, req.received_ns)
        finally:
            gw.inflight_bytes -= held
    except Refusal as refusal:
        if gw.metrics is not None:
            gw.metrics.rejected(refusal.code, records.count if records is not None else 1)
        log_refusal(gw, refusal, client)
        if refusal.retry_after is not None and gw.settings.refusal_delay_ms:  # "retry later" only
            # Held, as a Kafka broker holds a throttled client's answer: a client that resends
            # at once (ignoring Retry-After) then asks at most once per delay per connection,
            # instead of spinning on 429s and taking the CPU the sink needs (issue 12).
            await asyncio.sleep(gw.settings.refusal_delay_ms / 1000)
        raise
    gw.metrics.accepted(client, stored.count)
    if intake.ack_commit and req.scope.get("query_string") and req.query("ack") == "commit":
        return Accepted(stored, client, await gw.wait_committed(stored))
    return _new_tuple(Accepted, (stored, client, None))  # no NamedTuple __new__ frame per request


REFUSAL_LINES_PER_S = 20
_refusal_window = [0.0, 0, 0]  # when this second began, lines logged in it, lines not logged since


def log_refusal(gw: Gateway, refusal: Refusal, client: str | None) -> None:
    """One line per refused request: its code, the client's key name (never the key; `-` when the
    key was missing or unknown, `anonymous` when auth is off) and the detail the client was sent.
    The request id comes with it (the log formatter reads it from the task's context).

    At most REFUSAL_LINES_PER_S lines a second per worker: a full ring answers thousands of 429s
    a second, and the log must not grow with them. The lines left out are counted, and said in
    one line with the next refusal logged (ringgate_records_rejected_total counts them all)."""
    window = _refusal_window
    now = time.monotonic()
    if now - window[0] >= 1.0:
        if window[2]:
            log.warning("%d more refused request(s) not logged since %.1f s ago (at most %d lines a second "
                        "per worker; ringgate_records_rejected_total counts every one)",
                        window[2], now - window[0], REFUSAL_LINES_PER_S)
        window[0], window[1], window[2] = now, 0, 0
    if window[1] >= REFUSAL_LINES_PER_S:
        window[2] += 1
        return
    window[1] += 1
    if client is None:
        client = "-" if gw.keys.names else "anonymous"
    log.log(logging.WARNING if refusal.status >= 500 else logging.INFO, "refused %d %s client=%s: %s",
            refusal.status, refusal.code, client, refusal.detail)


async def _decode(gw: Gateway, decode: Decoder, body: bytes, encoding: Encoding) -> Records:
    large = len(body) >= (OFFLOAD_BYTES if encoding is _IDENTITY else OFFLOAD_COMPRESSED_BYTES)
    if not large:
        return decode_with(decode, body, encoding, gw.limits)
    global _pool
    if _pool is None:  # one thread per worker: large bodies wait for each other, not the loop
        _pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ringgate-decode")
    work = functools.partial(decode_with, decode, body, encoding, gw.limits)
    return await asyncio.get_running_loop().run_in_executor(_pool, work)


def handler(gw: Gateway, intake: Intake, ok: Callable[[Accepted], Answer], refused: Callable[[Refusal], Answer]):
    """A route handler for a source: the shared path, then the source's two shapes of answer."""

    async def handle(req: Request) -> Answer:
        try:
            accepted = await accept(gw, req, intake)
        except Refusal as refusal:
            return refused(refusal)
        return ok(accepted)

    return handle
