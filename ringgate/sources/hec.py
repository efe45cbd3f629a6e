"""Splunk HTTP Event Collector (§8): what Vector, Fluent Bit, the OTel splunkhec exporter, Kafka
Connect and Firehose send to Splunk, stored in ringgate.

- `POST /services/collector`, `/services/collector/event` (and `/event/1.0`): event objects one
  after another (`{"event":...}{"event":...}`, any whitespace between), each stored as sent (its
  envelope: `time`, `host`, `source`, `sourcetype`, `index`, `event`, `fields`); `event` is
  required (400 code 12) and not blank (code 13).
- `POST /services/collector/raw` (and `/raw/1.0`): one event per line, stored as
  `{"event": "<line>"}` plus the query's `host`, `source`, `sourcetype` and `index`.
- `GET /services/collector/health` (and `/health/1.0`, Vector's check): no key needed.
- Indexer acknowledgment: a request with a channel (`X-Splunk-Request-Channel`, or `?channel=`)
  gets an integer `ackId`; `POST /services/collector/ack` `{"acks": [ids]}` answers
  `{"acks": {"<id>": true|false}}`, true once the batch is committed or dead-lettered.

The ackId is the batch's place in its ring, not an entry in a table: any worker (they share the
rings, not their memory) answers for any id, and a worker's restart forgets nothing. It packs
the ring index, the ring's epoch (mod a prime) and the batch's end position (in 8-byte units,
mod 2**40) into 63 bits, so Java's `long` (Kafka Connect, Firehose) and Vector's u64 hold it. The
position is resolved against the ring's producer position: the latest position with those low
bits. If more than 8 TiB passed through that ring since (the id is older than any client waits),
the resolved position is later than the batch's, so the answer can only be a false `false`
(the client resends: at least once, as Splunk itself), never a false `true`.

Answers are HEC's `{"text", "code"}` (plus `detail`: what and where); every kind of busy (a full
ring, low priority, an overloaded worker, no flusher) is HEC's 503 code 9 with Retry-After, which
every HEC client retries. Clients send no Content-Type or `text/plain`: the type is ignored.
"""

from __future__ import annotations

import functools
import re

import msgspec
import numpy as np

from ..codecs import Limits, Records, compression
from ..codecs.json import problem
from ..codecs.records import MAX_DEPTH, check_utf8, finish, first_deeper, nonblank_lines, scan
from ..errors import Refusal
from ..gateway import Gateway, Stored
from ..http.answers import retry_after
from ..http.body import read_body
from ..http.intake import Accepted, Intake, accept, authenticate, log_refusal
from ..http.request import Answer, Request, Route

NAME = "hec"
SCHEMES = frozenset({"splunk", "basic"})  # Splunk documents Basic auth with the token as password
COLLECTOR = "/services/collector"
CHANNEL_HEADER = b"x-splunk-request-channel"
RAW_FIELDS = ("host", "source", "sourcetype", "index")  # query parameters a raw event carries

_encode = msgspec.json.encode

# ------------------------------------------------------------------------------------ answers

SUCCESS = b'{"text":"Success","code":0}'
HEALTHY = b'{"text":"HEC is healthy","code":17}'
BUSY_CODES = frozenset({"ring_full", "low_priority", "overloaded", "no_flusher", "lost_claim"})
_BY_CODE = {  # HEC's own texts and codes for the refusals that have one
    "empty_body": ("No data", 5),
    "event_required": ("Event field is required", 12),
    "event_blank": ("Event field cannot be blank", 13),
    "channel_missing": ("Data channel is missing", 10),
}
_BY_STATUS = {  # the rest: HEC's generic client fault (6) under a text for the status
    408: "Request timeout", 413: "Request entity too large", 415: "Unsupported media type",
}


class EventRefusal(Refusal):
    """A 400 about one event: HEC names it in `invalid-event-number`."""

    def __init__(self, code: str, detail: str, index: int):
        super().__init__(400, code, detail)
        self.index = index

    def __reduce__(self):
        return type(self), (self.code, self.detail, self.index)


def _answer(status: int, text: str, code: int, detail: str | None = None, headers=None, **extra) -> Answer:
    body = {"text": text, "code": code, **extra}
    if detail is not None:
        body["detail"] = detail
    return Answer(status, _encode(body), headers=headers or [])


def _auth_refused(req: Request, refusal: Refusal) -> Answer:
    """HEC's three auth answers: no header (401, 2), not `Splunk <token>` or `Bearer <token>`
    (401, 3), a well-formed header with an unknown token (403, 4)."""
    header = req.headers.get(b"authorization")
    if header is None:
        return _answer(401, "Token is required", 2, "send Authorization: Splunk <token>")
    scheme, _, credentials = header.decode("latin-1").strip().partition(" ")
    if scheme.lower() not in (*SCHEMES, "bearer") or not credentials.strip():
        return _answer(401, "Invalid authorization", 3, "send Authorization: Splunk <token>")
    return _answer(403, "Invalid token", 4, "the token is not one of RINGGATE_API_KEYS")


def refused(req: Request, refusal: Refusal) -> Answer:
    """A Refusal in HEC's shape, its status kept except for busy (503 code 9, as HEC answers)."""
    headers = retry_after(refusal)
    if refusal.code == "unauthorized":
        return _auth_refused(req, refusal)
    if refusal.code in BUSY_CODES:
        return _answer(503, "Server is busy", 9, refusal.detail, headers)
    text, code = _BY_CODE.get(refusal.code, (None, 6))
    if text is None:
        text = _BY_STATUS.get(refusal.status, "Invalid data format")
    extra = {"invalid-event-number": refusal.index} if isinstance(refusal, EventRefusal) else {}
    return _answer(refusal.status, text, code, refusal.detail, headers, **extra)


def channel_of(req: Request) -> str | None:
    value = req.headers.get(CHANNEL_HEADER)
    if value is not None:
        return value.decode("latin-1").strip() or None
    return req.query("channel") or None


def _success(accepted: Accepted, channel: str | None) -> Answer:
    if channel is None:
        return Answer(200, SUCCESS)
    return Answer(200, b'{"text":"Success","code":0,"ackId":%d}' % ack_id(accepted.stored))


# ------------------------------------------------------------------------------------- ackIds

RING_BITS = 6  # RINGGATE_FLUSHERS is at most 64
EPOCH_MODULUS = (1 << 17) - 1  # a prime: every bit of the epoch (time_ns at creation) counts
POSITION_BITS = 40
_POSITION_MASK = (1 << POSITION_BITS) - 1


def ack_id(stored: Stored) -> int:
    """ring | epoch mod 131071 | end position / 8 mod 2**40: 63 bits."""
    position = (stored.next >> 3) & _POSITION_MASK
    return (position << (17 + RING_BITS)) | ((stored.epoch % EPOCH_MODULUS) << RING_BITS) | stored.ring


def ack_status(gw: Gateway, ack: int) -> bool:
    """True once the batch `ack` names is committed or dead-lettered; false while pending and for
    any id this instance did not hand out (or whose ring was created anew since)."""
    if not 0 <= ack < 1 << 63:
        return False
    index = ack & ((1 << RING_BITS) - 1)
    epoch = (ack >> RING_BITS) & ((1 << 17) - 1)
    low = ack >> (17 + RING_BITS)
    if index >= len(gw.rings):
        return False
    ring = gw.rings[index]
    if ring.epoch % EPOCH_MODULUS != epoch:
        return False
    produced = ring.producer_position >> 3
    end = produced - ((produced - low) & _POSITION_MASK)  # the latest position with these low bits
    return end > 0 and ring.consumer_position >= end << 3


class _Acks(msgspec.Struct):
    acks: list[int]


_ACKS = msgspec.json.Decoder(_Acks)


def decode_acks(body: bytes, limits: Limits) -> list[int]:
    limits.check_count(body.count(b",") + 1)  # before one int object per id
    try:
        return _ACKS.decode(body).acks
    except (msgspec.DecodeError, RecursionError) as exc:
        raise Refusal(400, "invalid_json", f'the body must be {{"acks": [<ackId>, ...]}}: {exc}') from None


# ------------------------------------------------------------------------------------- events

_RAW = msgspec.json.Decoder(msgspec.Raw)
_WHERE = re.compile(r"at `\$\[(\d+)\]")


class _Event(msgspec.Struct):
    event: msgspec.Raw


_EVENTS = msgspec.json.Decoder(_Event)
_NULL = msgspec.Raw(b"null")
_EMPTY = msgspec.Raw(b'""')


def decode_events(body: bytes, limits: Limits) -> Records:
    """Event objects one after another, each kept as sent (compacted by finish).

    msgspec's `decode_lines` reads JSON values one after another, whatever whitespace (or none)
    lies between them: HEC's framing. It runs twice, in C: first into `_Event` (an object with an
    `event`), which stops at the first value that is not one, then into `Raw`, the events as sent.
    Each object ends in "}": their count bounds what either builds; past the limit in "}"s
    (strings may hold them) the top-level objects are counted exactly first."""
    check_utf8(body, lines=False)
    if not limits.short_enough(body) and not limits.within_count(body.count(b"}")):
        limits.check_count(count_events(body))
    try:
        events = _EVENTS.decode_lines(body)
    except msgspec.ValidationError as exc:
        found = _WHERE.search(str(exc))
        index = int(found.group(1)) if found else 0
        if "missing required field" in str(exc):
            raise EventRefusal("event_required", f'event {index} has no "event" field', index) from None
        raise EventRefusal("not_an_object", f"event {index} is not a JSON object: {exc}", index) from None
    except msgspec.DecodeError as exc:
        position, what = problem(exc, len(body))
        index = count_events(body[: max(position, 0)])
        raise EventRefusal("invalid_json", f"invalid JSON in event {index} at byte {position}: {what}", index) from None
    except RecursionError:
        position = first_deeper(body, MAX_DEPTH)
        index = count_events(body[: max(position, 0)])
        raise EventRefusal("too_deep", f"event {index} nests deeper than {MAX_DEPTH} levels (at byte {position})",
                           index) from None
    for index, event in enumerate(events):
        if event.event == _NULL:
            raise EventRefusal("event_required", f'event {index} has "event": null', index)
        if event.event == _EMPTY:
            raise EventRefusal("event_blank", f'event {index} has an empty "event"', index)
    return finish(_RAW.decode_lines(body), limits, _locate)


def count_events(body: bytes) -> int:
    """Top-level objects (their closing braces outside strings), counted without building any."""
    return sum(
        int(np.count_nonzero((data == 0x7D) & (depth == 0) & ~inside)) for _, data, depth, inside in scan(body)
    )


def _locate(index: int) -> str:
    return f"event {index}"


# ---------------------------------------------------------------------------------------- raw


def raw_suffix(req: Request) -> bytes:
    """What follows `{"event":"<line>"` in every record of a raw request: its query's fields."""
    fields = {name: value for name in RAW_FIELDS if (value := req.query(name))}
    return b"," + _encode(fields)[1:] if fields else b"}"


def decode_raw(body: bytes, limits: Limits, *, suffix: bytes = b"}") -> Records:
    """One event per line ("\\r\\n" endings too); blank lines are no events."""
    check_utf8(body, lines=True)
    if not limits.short_enough(body) and not limits.within_count(body.count(b"\n") + 1):
        limits.check_count(nonblank_lines(body))
    lines = [line.removesuffix("\r") for line in body.decode().split("\n") if line.strip()]
    if not lines:
        raise Refusal(400, "empty_body", "no events: only blank lines")
    return finish([b'{"event":' + _encode(line) + suffix for line in lines], limits, _locate_line, trusted=True)


def _locate_line(index: int) -> str:
    return f"event {index} (non-blank line {index + 1})"


# ------------------------------------------------------------------------------------- routes


def _decoder_of(decode):
    return lambda _content_type: decode


class Collector:
    """The HEC handlers over one gateway."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.events = Intake(_decoder_of(decode_events), SCHEMES)
        self.raw_lines = Intake(_decoder_of(decode_raw), SCHEMES)

    async def _take(self, req: Request, intake: Intake, decoder=None) -> Answer:
        try:
            accepted = await accept(self.gw, req, intake, decoder)
        except Refusal as refusal:
            return refused(req, refusal)
        return _success(accepted, channel_of(req))

    async def event(self, req: Request) -> Answer:
        return await self._take(req, self.events)

    async def raw(self, req: Request) -> Answer:
        # the query's host/source/sourcetype/index go into every line's record
        return await self._take(req, self.raw_lines, functools.partial(decode_raw, suffix=raw_suffix(req)))

    async def health(self, req: Request) -> Answer:
        try:
            self.gw.admit(0)
        except Refusal:
            return Answer(503, b'{"text":"HEC is unhealthy, queues are full","code":18}')
        return Answer(200, HEALTHY)

    async def ack(self, req: Request) -> Answer:
        gw = self.gw
        client = None
        try:
            client = authenticate(gw, req, SCHEMES)
            if channel_of(req) is None:
                raise Refusal(400, "channel_missing", "send X-Splunk-Request-Channel (or ?channel=) with ack queries")
            coding = req.headers.get(b"content-encoding")
            encoding = compression.parse_encoding(coding.decode("latin-1") if coding else None)
            body, held = await read_body(gw, req, gw.limits.max_body_bytes)
            try:
                acks = decode_acks(compression.decode(body, encoding, gw.limits.max_body_bytes), gw.limits)
            finally:
                gw.release(held)
        except Refusal as refusal:
            log_refusal(gw, refusal, client)
            return refused(req, refusal)
        return Answer(200, _encode({"acks": {str(a): ack_status(gw, a) for a in acks}}))


def routes(gw: Gateway) -> list[Route]:
    c = Collector(gw)
    events = [COLLECTOR, f"{COLLECTOR}/event", f"{COLLECTOR}/event/1.0"]
    return [
        *(Route(path, c.event, ("POST",), NAME) for path in events),
        *(Route(path, c.raw, ("POST",), NAME) for path in (f"{COLLECTOR}/raw", f"{COLLECTOR}/raw/1.0")),
        *(Route(path, c.health, ("GET",)) for path in (f"{COLLECTOR}/health", f"{COLLECTOR}/health/1.0")),
        Route(f"{COLLECTOR}/ack", c.ack, ("POST",)),
    ]
