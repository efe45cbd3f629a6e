"""Grafana Loki's push API (§8): Promtail, Alloy, Fluent Bit, Vector and the Python logging handlers.

- `POST /loki/api/v1/push` (and the legacy path `/api/prom/push`, which Loki's clients still may
  use): `application/json` streams, `{"streams": [{"stream": {labels}, "values": [["<ns>",
  "line"], ["<ns>", "line", {structured metadata}]]}]}` (gzip or zstd as Content-Encoding; keys
  that handlers add to stream objects are ignored), or `application/x-protobuf` (also when no
  Content-Type is sent, as Loki does): a `logproto.PushRequest` compressed with snappy's block
  format (not the framed one), its labels a Prometheus label string `{name="value", ...}`.
- `GET /ready`: Loki's readiness probe (Vector's health check), `ready` or 503 with the reasons.

One stored record per line, compact JSON: `{"stream": {labels}, "timestamp_ns": <int>, "line":
"...", "metadata": {...}}`, `metadata` absent when the entry has no structured metadata. Success
is 204 with no body; refusals are Loki's: plain text naming what and where, with the status of the
shared path (400 for what may not be retried, 429 / 503 with Retry-After for backpressure, which
Promtail and Alloy retry). Auth: `Bearer <key>`, or Basic with the key as password (Promtail's
and Alloy's `basic_auth`; the user name, usually a tenant, is not checked).

Bounded cost: entries and streams are counted before any per-entry object is built, from a free
upper bound (a memchr-speed count of the bytes that open them) or, when that bound is past
RINGGATE_MAX_RECORDS, exactly (a scan of the JSON, a walk of the protobuf wire format that stops
past the limit). Snappy's declared length is checked against RINGGATE_MAX_BODY_BYTES before
anything is decompressed.
"""

from __future__ import annotations

import datetime
import functools
import re

import cramjam
import msgspec
import numpy as np
from google.protobuf.message import DecodeError

from ..codecs import Limits, Records, media_type
from ..codecs.json import invalid
from ..codecs.protowire import WireError, fields
from ..codecs.records import check_utf8, finish, scan, shown
from ..errors import Refusal
from ..gateway import Gateway
from ..http.answers import retry_after
from ..http.intake import Accepted, Intake, handler
from ..http.request import Answer, Request, Route
from ..http.status import Status
from ._loki_push_pb2 import PushRequest

NAME = "loki"
PROTOBUF = "application/x-protobuf"
_TEXT = b"text/plain; charset=utf-8"
_INT64_MAX = (1 << 63) - 1
_INT64_MAX_DIGITS = b"%d" % _INT64_MAX
_encode = msgspec.json.encode


# ------------------------------------------------------------------------------------- answers


def _pushed(accepted: Accepted) -> Answer:
    return Answer(204, b"", content_type=None)


def _refused(refusal: Refusal) -> Answer:
    """Loki answers errors as plain text (Go's http.Error): the message and a newline."""
    return Answer(refusal.status, refusal.detail.encode() + b"\n", _TEXT, retry_after(refusal))


# -------------------------------------------------------------------------------------- records


def _prefix(labels: dict[str, str]) -> bytes:
    return b'{"stream":' + _encode(labels) + b',"timestamp_ns":'


def _record(prefix: bytes, timestamp_ns: int, line: str, metadata: dict[str, str] | None) -> bytes:
    if metadata:
        return b'%b%d,"line":%b,"metadata":%b}' % (prefix, timestamp_ns, _encode(line), _encode(metadata))
    return b'%b%d,"line":%b}' % (prefix, timestamp_ns, _encode(line))


def _labels_prefix(labels: str, index: int) -> bytes:
    try:
        return _parsed_prefix(labels)
    except Refusal as refusal:
        raise Refusal(refusal.status, refusal.code, f"streams[{index}].labels: {refusal.detail}") from None


@functools.lru_cache(maxsize=1024)
def _parsed_prefix(labels: str) -> bytes:
    """Remembered per label string: a client sends the same few streams again and again."""
    return _prefix(parse_labels(labels))


def _locate_entry(index: int) -> str:
    return f"entry {index} (counting across streams)"


# ----------------------------------------------------------------------------------------- JSON


class _JsonEntry(msgspec.Struct, array_like=True):
    """`["<ns>", "<line>"]` or `["<ns>", "<line>", {metadata}]`; the two strings kept as the
    client's JSON tokens (checked below), so that a line is copied into its record, not decoded
    and encoded again."""

    ts: msgspec.Raw
    line: msgspec.Raw
    metadata: dict[str, str] | None = None


class _JsonStream(msgspec.Struct):  # other keys (handlers add their own) are ignored
    stream: dict[str, str] = {}
    values: list[_JsonEntry] = []


class _JsonPush(msgspec.Struct):
    streams: list[_JsonStream]


_JSON = msgspec.json.Decoder(_JsonPush)
_JSON_STREAM_DEPTH = 3  # {"streams": [ {  : a stream object opens at depth 3
_JSON_ENTRY_DEPTH = 5  # ... "values": [ [  : an entry opens at depth 5


def _openers(body: bytes, *openers: tuple[bytes, int]) -> list[int]:
    """How many of each (bracket, depth) in `openers` open a container at that depth, outside
    strings: exact for valid JSON, which is all a typed decode builds objects for."""
    counts = [0] * len(openers)
    for _offset, data, depth_after, inside in scan(body):
        for i, (bracket, depth) in enumerate(openers):
            byte = ord(bracket)
            counts[i] += int(np.count_nonzero((data == byte) & (depth_after == depth) & ~inside))
    return counts


def decode_json(body: bytes, limits: Limits) -> Records:
    check_utf8(body, lines=False)
    # Every stream and every entry opens with its own bracket: their counts bound both, for free.
    if not limits.within_count(max(body.count(b"["), body.count(b"{"))):
        streams, entries = _openers(body, (b"{", _JSON_STREAM_DEPTH), (b"[", _JSON_ENTRY_DEPTH))
        limits.check_count(max(streams, entries))
    push = _decode_json(_JSON, body, '{"streams": [{"stream": {labels}, "values": [["<unix ns>", "<line>"], ...]}]}')
    raws: list[bytes] = []
    append = raws.append
    for s, stream in enumerate(push.streams):
        prefix = _prefix(stream.stream)
        for e, entry in enumerate(stream.values):
            ts = bytes(entry.ts)
            digits = ts[1:-1]
            n = len(digits)
            if not (ts[0] == 0x22 and digits.isdigit() and (n < 19 or (n == 19 and digits <= _INT64_MAX_DIGITS))):
                raise _bad_json_timestamp(ts, s, e)
            if digits[0] == 0x30 and n > 1:  # leading zeros: no JSON number
                digits = b"%d" % int(digits)
            line = entry.line
            if memoryview(line)[0] != 0x22:
                raise Refusal(400, "invalid_json", f"streams[{s}].values[{e}][1]: the line must be a string")
            if entry.metadata:
                append(b'%b%b,"line":%b,"metadata":%b}' % (prefix, digits, line, _encode(entry.metadata)))
            else:
                append(b'%b%b,"line":%b}' % (prefix, digits, line))
    return _finish(raws, limits)


def _bad_json_timestamp(ts: bytes, s: int, e: int) -> Refusal:
    return Refusal(
        400, "invalid_timestamp",
        f"streams[{s}].values[{e}]: the timestamp must be a string of Unix epoch nanoseconds, not "
        f"{shown(ts.decode())}",
    )


class _LegacyEntry(msgspec.Struct):
    ts: str
    line: str


class _LegacyStream(msgspec.Struct):
    labels: str
    entries: list[_LegacyEntry] = []


class _LegacyPush(msgspec.Struct):
    streams: list[_LegacyStream]


_LEGACY = msgspec.json.Decoder(_LegacyPush)
_LEGACY_ENTRY_DEPTH = 5  # ... "entries": [ {
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?([Zz]|[+-]\d\d:\d\d)")


def _rfc3339_ns(text: str, where: str) -> int:
    """An RFC 3339 time with up to nanoseconds → Unix epoch nanoseconds."""
    match = _RFC3339.fullmatch(text)
    try:
        if match is None:
            raise ValueError
        whole, fraction, zone = match.groups()
        seconds = int(datetime.datetime.fromisoformat(whole + ("+00:00" if zone in "Zz" else zone)).timestamp())
    except (ValueError, OverflowError):
        raise Refusal(400, "invalid_timestamp", f"{where}: {shown(text)} is not an RFC 3339 time") from None
    ts = seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))
    if not 0 <= ts <= _INT64_MAX:
        raise Refusal(400, "invalid_timestamp", f"{where}: {shown(text)} is not a time from 1970 to 2262")
    return ts


def decode_legacy_json(body: bytes, limits: Limits) -> Records:
    """The JSON of Loki's legacy push path, `/api/prom/push`: `{"streams": [{"labels": "{name=\\"value\\"}",
    "entries": [{"ts": "<RFC 3339>", "line": "..."}]}]}`."""
    check_utf8(body, lines=False)
    if not limits.within_count(body.count(b"{")):
        streams, entries = _openers(body, (b"{", _JSON_STREAM_DEPTH), (b"{", _LEGACY_ENTRY_DEPTH))
        limits.check_count(max(streams, entries))
    push = _decode_json(_LEGACY, body, '{"streams": [{"labels": "{name=\\"value\\"}", "entries": [{"ts": "<RFC 3339>", "line": "..."}]}]}')
    raws: list[bytes] = []
    for s, stream in enumerate(push.streams):
        prefix = _labels_prefix(stream.labels, s)
        for e, entry in enumerate(stream.entries):
            raws.append(_record(prefix, _rfc3339_ns(entry.ts, f"streams[{s}].entries[{e}].ts"), entry.line, None))
    return _finish(raws, limits)


def _decode_json(decoder: msgspec.json.Decoder, body: bytes, shape: str):
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise Refusal(400, "invalid_json", f"the body must be a Loki push request {shape}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise invalid(exc, body) from None
    except RecursionError:
        raise Refusal(400, "too_deep", "the body nests too deeply to decode") from None


def _finish(raws: list[bytes], limits: Limits) -> Records:
    if not raws:
        raise Refusal(400, "empty_body", "the push request holds no entries")
    return finish(raws, limits, _locate_entry, trusted=True)


# ------------------------------------------------------------------------------------- protobuf


def decode_protobuf(body: bytes, limits: Limits) -> Records:
    data = _unsnappy(body, limits.max_body_bytes)
    # Streams are field 1 of PushRequest (tag byte 0x0a), entries field 2 of a stream (0x12): the
    # counts of those bytes bound both. Past the limit, the wire walk counts them exactly.
    if not limits.within_count(max(data.count(b"\x12"), data.count(b"\x0a"))):
        _count_wire(data, limits)
    request = PushRequest()
    try:
        request.ParseFromString(data)
    except (DecodeError, RecursionError) as exc:
        raise Refusal(400, "invalid_protobuf", f"the body is not a snappy-compressed Loki PushRequest: {exc}") from None
    raws: list[bytes] = []
    append = raws.append
    for s, stream in enumerate(request.streams):
        prefix = _labels_prefix(stream.labels, s)
        for entry in stream.entries:
            stamp = entry.timestamp
            nanos = stamp.nanos
            ts = stamp.seconds * 1_000_000_000 + nanos
            if not (0 <= ts <= _INT64_MAX and 0 <= nanos < 1_000_000_000):
                raise Refusal(
                    400, "invalid_timestamp",
                    f"streams[{s}]: timestamp {stamp.seconds}s {nanos}ns is not a time from 1970 to 2262",
                )
            pairs = entry.structuredMetadata
            if pairs:
                metadata = _encode({p.name: p.value for p in pairs})
                append(b'%b%d,"line":%b,"metadata":%b}' % (prefix, ts, _encode(entry.line), metadata))
            else:
                append(b'%b%d,"line":%b}' % (prefix, ts, _encode(entry.line)))
    return _finish(raws, limits)


def _unsnappy(body: bytes, limit: int) -> bytes:
    """Snappy's block format, its declared length (the varint it opens with) checked first: a block
    that claims more than the limit is refused before any byte of it is decompressed."""
    try:
        declared = cramjam.snappy.decompress_raw_len(body)
    except cramjam.DecompressionError as exc:
        raise Refusal(400, "bad_encoding", f"the body is not snappy-compressed (block format): {exc}") from None
    if declared > limit:
        raise Refusal(
            413, "body_too_large",
            f"the snappy body declares {declared} bytes decompressed; the limit is {limit} bytes (RINGGATE_MAX_BODY_BYTES)",
        )
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise Refusal(400, "bad_encoding", f"the snappy body does not decompress: {exc}") from None


def _count_wire(data: bytes, limits: Limits) -> None:
    """Counts the streams and entries of a serialized PushRequest without building them, and stops
    with 413 as soon as either passes the limit (so it walks at most max_records of each)."""
    streams = entries = 0
    try:
        for number, start, end in fields(data, 0, len(data)):
            if number != 1:  # not a stream
                continue
            streams += 1
            if streams > limits.max_records:
                limits.check_count(streams)
            for number, _, _ in fields(data, start, end):
                if number == 2:  # an entry
                    entries += 1
                    if entries > limits.max_records:
                        limits.check_count(entries)
    except WireError as exc:
        raise Refusal(400, "invalid_protobuf", f"the PushRequest is malformed: {exc}") from None
    limits.check_count(max(streams, entries))


# ---------------------------------------------------------------------------------------- labels

# A Prometheus label string as Loki's clients write it (Go's labels.String()): `{name="value", ...}`,
# values (and, for UTF-8 names, names) as Go double-quoted string literals.
_STRING = r'"(?:[^"\\\n]|\\.)*"'
_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*|' + _STRING + r')\s*=\s*(' + _STRING + r')\s*')
_ESCAPE = re.compile(r"\\(?:([abfnrtv\\'\"])|x([0-9a-fA-F]{2})|([0-7]{3})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))")
_SIMPLE = {"a": b"\a", "b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v",
           "\\": b"\\", "'": b"'", '"': b'"'}


def _unquote(literal: str) -> str:
    """A Go double-quoted string literal's value (strconv.Unquote): \\x and octal escapes are
    bytes, \\u and \\U code points; the result must be UTF-8."""
    text = literal[1:-1]
    if "\\" not in text:
        return text
    out = bytearray()
    position = 0
    for match in _ESCAPE.finditer(text):
        if match.start() != position and "\\" in text[position : match.start()]:
            break  # a backslash that starts no valid escape
        out += text[position : match.start()].encode()
        simple, hexa, octal, small, large = match.groups()
        try:
            if simple:
                out += _SIMPLE[simple]
            elif hexa or octal:
                out.append(int(hexa, 16) if hexa else int(octal, 8))
            else:
                out += chr(int(small or large, 16)).encode()
        except (ValueError, UnicodeEncodeError):  # octal past \377, a code point past U+10FFFF or a surrogate
            break
        position = match.end()
    else:
        if "\\" not in text[position:]:
            out += text[position:].encode()
            try:
                return out.decode()
            except UnicodeDecodeError:
                raise Refusal(400, "invalid_labels", f"{shown(literal)} escapes bytes that are not UTF-8") from None
    raise Refusal(400, "invalid_labels", f"{shown(literal)} has an invalid escape")


def parse_labels(text: str) -> dict[str, str]:
    """`{name="value", ...}` → {name: value} (a trailing comma allowed, as PromQL does); 400
    `invalid_labels` for anything else."""
    stripped = text.strip()
    if stripped[:1] != "{" or stripped[-1:] != "}":
        raise Refusal(400, "invalid_labels", f'{shown(text)} is not a label set {{name="value", ...}}')
    inner = stripped[1:-1]
    labels: dict[str, str] = {}
    position = 0
    if inner.strip():
        while True:
            match = _PAIR.match(inner, position)
            if match is None:
                raise Refusal(
                    400, "invalid_labels", f'{shown(text)} is not a label set {{name="value", ...}} '
                    f"(at character {position + 1 + (len(text) - len(text.lstrip()))})",
                )
            name, value = match.groups()
            labels[_unquote(name) if name[0] == '"' else name] = _unquote(value)
            position = match.end()
            if position == len(inner):
                break
            if inner[position] != ",":
                raise Refusal(400, "invalid_labels", f"{shown(text)} has no comma after label {name}")
            position += 1
            if not inner[position:].strip():  # a trailing comma
                break
    return labels


# ---------------------------------------------------------------------------------------- routes


@functools.lru_cache(maxsize=64)
def decoder(content_type: bytes | None, legacy: bool = False):
    """JSON (the legacy path's own JSON when `legacy`), or the snappy protobuf that Loki reads
    when the type says so or says nothing; 415 for any other type."""
    name = media_type(content_type.decode("latin-1") if content_type else None)
    if name == "application/json":
        return decode_legacy_json if legacy else decode_json
    if name in (PROTOBUF, ""):
        return decode_protobuf
    raise Refusal(
        415, "unsupported_media_type",
        f"unsupported Content-Type {shown(content_type.decode('latin-1'))}; Loki's push API takes "
        f"application/json or {PROTOBUF} (snappy-compressed)",
    )


def routes(gw: Gateway) -> list[Route]:
    schemes = frozenset({"basic"})
    # `Content-Encoding: snappy` names the compression the protobuf framing has anyway (Alloy's
    # loki.write sends it since 2026, and Loki takes it so); a JSON body sent so is refused as JSON
    snappy = frozenset({b"snappy"})
    push = handler(gw, Intake(decoder, schemes, framing_codings=snappy), _pushed, _refused)
    legacy = handler(gw, Intake(functools.partial(decoder, legacy=True), schemes, framing_codings=snappy),
                     _pushed, _refused)
    status = Status(gw)

    async def ready(req: Request) -> Answer:
        answer = await status.readyz(req)
        return Answer(200, b"ready\n", _TEXT) if answer.status == 200 else answer

    return [
        Route("/loki/api/v1/push", push, ("POST",), NAME),
        Route("/api/prom/push", legacy, ("POST",), NAME),
        Route("/ready", ready, ("GET",)),
    ]
