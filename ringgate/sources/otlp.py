"""OTLP/HTTP logs, `POST /v1/logs` (§8): what OpenTelemetry SDKs, the Collector's otlphttp
exporter, Fluent Bit and Vector send.

The body is an `ExportLogsServiceRequest`, binary protobuf (`application/x-protobuf`, parsed with
opentelemetry-proto's generated classes) or the OTLP JSON mapping (`application/json`: lowerCamelCase
keys, hex trace/span ids, int64 as decimal strings or numbers, enums as integers, unknown fields
ignored). Each LogRecord becomes one record:

    {"time_unix_nano", "observed_time_unix_nano", "severity_number", "severity_text", "body",
     "attributes", "resource", "scope": {"name", "version"}, "trace_id", "span_id", "event_name"}

each absent when unset (proto3: zero, empty), `body` and attribute values as plain JSON (kvlist
an object, bytes base64). Answers are in the request's content type: 200 with an empty
`ExportLogsServiceResponse`, errors as a `google.rpc.Status`; backpressure stays 429/503 with
Retry-After, the codes OTLP clients retry, and everything else is not retried (400, 401, 413, ...).

Counting comes first (§9): a protobuf body's LogRecords (and the envelopes holding them) are
counted on the wire before the generated classes build anything, and a JSON body's arrays are
counted as bytes (`count_elements`) before their elements are decoded. A protobuf body is then
parsed one piece at a time (each Resource, InstrumentationScope and LogRecord, found on the wire,
each within RINGGATE_MAX_RECORD_BYTES), since upb spends up to ~30 times the bytes it parses, and a
JSON body one LogRecord or Resource at a time (within 4 times that); the records of either form are
bounded as they are built (`_Bounds`), since every record carries a copy of its resource and scope.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable
from typing import Annotated

import msgspec
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from ..codecs import Limits, Records, media_type
from ..codecs.protowire import WireError, fields
from ..codecs.records import MAX_DEPTH, count_elements, finish, shown
from ..errors import Refusal
from ..gateway import Gateway
from ..http.answers import retry_after
from ..http.intake import Intake, accept
from ..http.request import Answer, Request, Route
from ..ring.layout import RECORD_HEADER_LENGTH

NAME = "otlp"
PROTOBUF = b"application/x-protobuf"
JSON = b"application/json"

_encode = msgspec.json.encode

# google.rpc.Code for each HTTP status we answer; OTLP clients go by the HTTP status alone.
_RPC_CODES = {400: 3, 401: 16, 408: 4, 413: 11, 415: 3, 429: 8, 503: 14}
_UNKNOWN = 2


# --------------------------------------------------------------------------------------- answers


def _status(refusal: Refusal, content_type: bytes) -> Answer:
    code = _RPC_CODES.get(refusal.status, _UNKNOWN)
    message = f"{refusal.code}: {refusal.detail}"
    if content_type == PROTOBUF:
        body = status_pb2.Status(code=code, message=message).SerializeToString()
    else:
        body = _encode({"code": code, "message": message})
    return Answer(refusal.status, body, content_type, retry_after(refusal))


_SUCCESS = {PROTOBUF: logs_service_pb2.ExportLogsServiceResponse().SerializeToString(), JSON: b"{}"}


def _media(content_type: bytes | None) -> str:
    return media_type(content_type.decode("latin-1") if content_type else None)


def _answer_type(content_type: bytes | None) -> bytes:
    """Protobuf for protobuf requests, JSON for the rest (an unknown type is answered readably)."""
    return PROTOBUF if _media(content_type) == "application/x-protobuf" else JSON


# ---------------------------------------------------------------------------------- the decoders


def _decoder(content_type: bytes | None):
    name = _media(content_type)
    if name == "application/x-protobuf":
        return decode_protobuf
    if name == "application/json":
        return decode_json
    raise Refusal(
        415, "unsupported_media_type",
        f"unsupported Content-Type {shown(name) if name else '(none)'} for OTLP; "
        "expected application/x-protobuf or application/json",
    )


def _hex_id(value: bytes, size: int, what: str, where: Callable[[], str]) -> str:
    if len(value) != size:
        raise Refusal(400, "invalid_otlp", f"{where()}: {what} is {len(value)} bytes; it must be {size}")
    return value.hex()


class _Place:
    """Where each record came from, for error messages: (resource, scope, records) per ScopeLogs."""

    __slots__ = ("spans", "json")

    def __init__(self, json: bool) -> None:
        self.spans: list[tuple[int, int, int]] = []
        self.json = json

    def locate(self, index: int) -> str:
        for r, s, n in self.spans:
            if index < n:
                if self.json:
                    return f"resourceLogs[{r}].scopeLogs[{s}].logRecords[{index}]"
                return f"resource_logs[{r}].scope_logs[{s}].log_records[{index}]"
            index -= n
        return f"log record {index}"


# ---- protobuf


def _too_many_envelopes(count: int, limits: Limits, what: str) -> None:
    """Envelopes cost as much to build as records: the same limit bounds them."""
    raise Refusal(
        413, "too_many_records",
        f"the body holds {count} {what} or more; the limit is {limits.max_records} (RINGGATE_MAX_RECORDS)",
    )


def count_log_records(body: bytes, limits: Limits) -> int:
    """The LogRecords of an ExportLogsServiceRequest, counted on the wire without building any.

    Stops with 413 as soon as the count (or the count of ResourceLogs/ScopeLogs envelopes, which
    cost as much to parse) passes the limit, so a tiny gzip of millions of empty records costs
    one bounded walk. Malformed wire data is a WireError (400)."""
    records = envelopes = 0
    for number, start, end in fields(body, 0, len(body)):
        if number != 1:  # resource_logs
            continue
        envelopes += 1
        for number, s_start, s_end in fields(body, start, end):
            if number != 2:  # scope_logs
                continue
            envelopes += 1
            if not limits.within_count(envelopes):
                _too_many_envelopes(envelopes, limits, "resource_logs/scope_logs")
            for number, _, _ in fields(body, s_start, s_end):
                if number == 2:  # log_records
                    records += 1
                    if not limits.within_count(records):
                        limits.check_count(records)
    return records


def _any_pb(value, depth: int) -> object:
    """An AnyValue as plain JSON; `depth` is the nesting an array or object made here would have."""
    kind = value.WhichOneof("value")
    if kind == "string_value":  # most values: first
        return value.string_value
    return _other_pb(value, kind, depth)


def _other_pb(value, kind: str | None, depth: int) -> object:
    """_any_pb for every kind but string_value, whose callers take it inline."""
    if kind is None or kind == "string_value_strindex":
        return None
    if kind == "array_value":
        _check_depth(depth)
        return [_any_pb(v, depth + 1) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes_pb(value.kvlist_value.values, depth)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


def _attributes_pb(values, depth: int) -> dict:
    _check_depth(depth)
    attributes = {}
    for kv in values:  # a loop, not a comprehension of _any_pb: string values skip two calls
        value = kv.value
        kind = value.WhichOneof("value")
        attributes[kv.key] = value.string_value if kind == "string_value" else _other_pb(value, kind, depth + 1)
    return attributes


def _check_depth(depth: int) -> None:
    # finish(trusted=True) does not scan depth: the values are bounded here, as they are built
    # (upb's own limit of 100 messages keeps protobuf bodies shallower than this anyway).
    if depth > MAX_DEPTH:
        raise _too_deep()


def decode_protobuf(body: bytes, limits: Limits) -> Records:
    try:
        return _decode_protobuf(body, limits)
    except RecursionError:
        raise _too_deep() from None


def _too_deep() -> Refusal:
    return Refusal(400, "too_deep", f"a log record's body or attributes nest deeper than {MAX_DEPTH} levels")


def _not_a_request(exc: Exception, where: str = "") -> Refusal:
    at = f" ({where})" if where else ""
    return Refusal(400, "invalid_protobuf", f"the body is not an ExportLogsServiceRequest{at}: {exc}")


WHOLE_UP_TO: int | None = None
"""A protobuf ScopeLogs, or a JSON logRecords array, whose bytes are within the piece bound is parsed
whole, in one call, as one record of that size would be: the memory bound is the same, and one
call costs fewer instructions than one per record (protobuf: 7.1 M per 100-record body against
7.8 M). None: the piece bound; the tests set 0 to take every envelope apart."""

_parse_resource = resource_pb2.Resource.FromString
_parse_scope = common_pb2.InstrumentationScope.FromString
_parse_log = logs_pb2.LogRecord.FromString
_parse_scope_logs = logs_pb2.ScopeLogs.FromString


def _envelope(body: bytes, start: int, end: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(field 1 pieces, field 2 pieces) of a ResourceLogs or ScopeLogs: its resource or scope (the
    pieces of a singular message are merged, as a parser merges them, wherever they stand) and its
    scope_logs or log_records. Field 3, schema_url, is not stored, but a parser refuses it if it is
    not UTF-8, and so does this."""
    heads: list[tuple[int, int]] = []
    items: list[tuple[int, int]] = []
    for number, s, e in fields(body, start, end):
        if number == 2:
            items.append((s, e))
        elif number == 1:
            heads.append((s, e))
        elif number == 3:
            try:
                str(memoryview(body)[s:e], "utf-8")
            except UnicodeDecodeError:
                raise WireError(f"schema_url at byte {s} is not UTF-8") from None
    return heads, items


def _parse_head(parse, body: bytes, pieces: list[tuple[int, int]], limits: Limits, where: str):
    """A Resource or an InstrumentationScope: its pieces parsed as one message, within the record limit."""
    size = sum(e - s for s, e in pieces)
    if size > limits.max_record_bytes:
        raise _piece_too_large(where, size, limits)
    data = body[pieces[0][0]:pieces[0][1]] if len(pieces) == 1 else b"".join(body[s:e] for s, e in pieces)
    try:
        return parse(data)
    except DecodeError as exc:
        raise _not_a_request(exc, where) from None


def _piece_too_large(where: str, size: int, limits: Limits) -> Refusal:
    # Checked before the piece is parsed: upb spends up to ~30 times the bytes it parses.
    return Refusal(
        413, "record_too_large",
        f"{where} is {size} bytes of protobuf; the limit is {limits.max_record_bytes} bytes (RINGGATE_MAX_RECORD_BYTES)",
    )


def _decode_protobuf(body: bytes, limits: Limits) -> Records:
    try:
        # Every record and envelope takes 2 bytes or more: a short body needs no count. Else count
        # on the wire first, so that too many records cost a walk, not a parse of each.
        if not limits.short_enough(body):
            count_log_records(body, limits)
        return _walk_protobuf(body, limits)
    except WireError as exc:
        raise _not_a_request(exc) from None


def _walk_protobuf(body: bytes, limits: Limits) -> Records:
    """The body walked on the wire and parsed one piece at a time, each converted and dropped
    before the next one is parsed.

    upb spends up to ~30 times a message's bytes on its parse tree (~470 MiB for 16 MiB of empty
    attributes in one LogRecord), so upb parses one Resource, InstrumentationScope or LogRecord at
    a time, each within RINGGATE_MAX_RECORD_BYTES (or a whole ScopeLogs no larger than that, which
    can hold no larger record); the records are bounded as they are built (`_Bounds`)."""
    place = _Place(json=False)
    bounds = _Bounds(limits, place)
    max_record_bytes = limits.max_record_bytes
    whole_up_to = max_record_bytes if WHOLE_UP_TO is None else WHOLE_UP_TO
    r = -1
    for number, r_start, r_end in fields(body, 0, len(body)):
        if number != 1:  # resource_logs; the rest is unknown fields, skipped as a parser skips them
            continue
        r += 1
        resources, scope_logs = _envelope(body, r_start, r_end)
        resource = None
        if resources:
            parsed = _parse_head(_parse_resource, body, resources, limits, f"resource_logs[{r}].resource")
            attributes = _attributes_pb(parsed.attributes, 2)
            del parsed
            if attributes:
                resource = msgspec.Raw(_encode(attributes))  # encoded once, copied into each record
        for s, (s_start, s_end) in enumerate(scope_logs):
            if s_end - s_start <= whole_up_to:  # no larger than one record may be: parsed whole
                try:
                    parsed = _parse_scope_logs(body[s_start:s_end])
                except DecodeError as exc:
                    raise _not_a_request(exc, f"resource_logs[{r}].scope_logs[{s}]") from None
                place.spans.append((r, s, len(parsed.log_records)))
                scope = _scope(parsed.scope)
                for log in parsed.log_records:
                    bounds.add(_encode(_record_pb(log, resource, scope, place, len(bounds.raws))))
                del parsed
                continue
            scopes, logs = _envelope(body, s_start, s_end)
            place.spans.append((r, s, len(logs)))
            scope = None
            if scopes:
                scope = _scope(_parse_head(_parse_scope, body, scopes, limits, f"resource_logs[{r}].scope_logs[{s}].scope"))
            for start, end in logs:
                if end - start > max_record_bytes:
                    raise _piece_too_large(place.locate(len(bounds.raws)), end - start, limits)
                try:
                    log = _parse_log(body[start:end])
                except DecodeError as exc:
                    raise _not_a_request(exc, place.locate(len(bounds.raws))) from None
                record = _record_pb(log, resource, scope, place, len(bounds.raws))
                del log  # before the next one is parsed
                bounds.add(_encode(record))
    return finish(bounds.raws, limits, place.locate, trusted=True)


def _scope(scope) -> msgspec.Raw | None:
    """An InstrumentationScope as stored: its name and version, encoded once for every record."""
    named = {}
    if scope.name:
        named["name"] = scope.name
    if scope.version:
        named["version"] = scope.version
    return msgspec.Raw(_encode(named)) if named else None


def _record_pb(log, resource: msgspec.Raw | None, scope: msgspec.Raw | None, place: _Place, index: int) -> dict:
    record = {}
    if value := log.time_unix_nano:
        record["time_unix_nano"] = value
    if value := log.observed_time_unix_nano:
        record["observed_time_unix_nano"] = value
    if value := log.severity_number:
        record["severity_number"] = value
    if value := log.severity_text:
        record["severity_text"] = value
    body = log.body  # unset: an empty AnyValue, whose kind is None
    kind = body.WhichOneof("value")
    if kind == "string_value":
        record["body"] = body.string_value
    elif kind is not None:
        record["body"] = _other_pb(body, kind, 2)
    if value := log.attributes:
        record["attributes"] = _attributes_pb(value, 2)
    if resource is not None:
        record["resource"] = resource
    if scope is not None:
        record["scope"] = scope
    if value := log.trace_id:
        record["trace_id"] = value.hex() if len(value) == 16 else _hex_id(
            value, 16, "trace_id", functools.partial(place.locate, index))
    if value := log.span_id:
        record["span_id"] = value.hex() if len(value) == 8 else _hex_id(
            value, 8, "span_id", functools.partial(place.locate, index))
    if value := log.event_name:
        record["event_name"] = value
    return record


class _Bounds:
    """A request's records as they are built, refused as soon as one passes RINGGATE_MAX_RECORD_BYTES
    or all of them pass half a ring once framed. The resource and the scope are copied into every
    record: without this, a ~100-byte gzip of one large resource and many empty records would
    build gigabytes before `finish` or the ring could measure them."""

    __slots__ = ("raws", "framed", "max_record_bytes", "max_framed_bytes", "place")

    def __init__(self, limits: Limits, place: _Place) -> None:
        self.raws: list[bytes] = []
        self.framed = 0
        self.max_record_bytes = limits.max_record_bytes
        self.max_framed_bytes = limits.max_framed_bytes
        self.place = place

    def add(self, raw: bytes) -> None:
        size = len(raw)
        self.framed += (size + RECORD_HEADER_LENGTH + 7) & -8  # layout.align, as the ring frames it
        if size > self.max_record_bytes or self.framed > self.max_framed_bytes:
            self._refuse(size)
        self.raws.append(raw)

    def _refuse(self, size: int) -> None:
        index = len(self.raws)
        where = self.place.locate(index)
        if size > self.max_record_bytes:  # finish's refusal, made before the rest is built
            raise Refusal(
                413, "record_too_large",
                f"{where} is {size} bytes as compact JSON; the limit is {self.max_record_bytes} bytes",
            )
        raise Refusal(
            413, "body_too_large",
            f"{index + 1} records (up to {where}) need more than half a ring ({self.max_framed_bytes} bytes) once framed",
        )


# ---- JSON: typed structs, decoded level by level so every array is counted before it is built

_Int = int | str | None
_Enum = Annotated[int, msgspec.Meta(ge=-(1 << 31), lt=1 << 31)]  # protobuf enums are open int32s
_NULL = msgspec.Raw(b"null")  # an absent array decodes as an explicit null would


class ArrayValue(msgspec.Struct):
    values: list[AnyValue] | None = None


class KeyValueList(msgspec.Struct):
    values: list[KeyValue] | None = None


class AnyValue(msgspec.Struct):
    stringValue: str | None = None
    boolValue: bool | None = None
    intValue: _Int = None
    doubleValue: float | str | None = None
    arrayValue: ArrayValue | None = None
    kvlistValue: KeyValueList | None = None
    bytesValue: str | None = None


class KeyValue(msgspec.Struct):
    key: str = ""
    value: AnyValue | None = None


class LogRecord(msgspec.Struct):
    timeUnixNano: _Int = None
    observedTimeUnixNano: _Int = None
    severityNumber: _Enum | None = None
    severityText: str | None = None
    body: AnyValue | None = None
    attributes: list[KeyValue] | None = None
    traceId: str | None = None
    spanId: str | None = None
    eventName: str | None = None


class InstrumentationScope(msgspec.Struct):
    name: str | None = None
    version: str | None = None


class Resource(msgspec.Struct):
    attributes: list[KeyValue] | None = None


class ScopeLogs(msgspec.Struct):
    scope: InstrumentationScope | None = None
    logRecords: msgspec.Raw = _NULL


class ResourceLogs(msgspec.Struct):
    resource: msgspec.Raw = _NULL
    scopeLogs: msgspec.Raw = _NULL


class ExportLogsServiceRequest(msgspec.Struct):
    resourceLogs: msgspec.Raw = _NULL


_REQUEST = msgspec.json.Decoder(ExportLogsServiceRequest)
_RESOURCE_LOGS = msgspec.json.Decoder(list[ResourceLogs] | None)
_SCOPE_LOGS = msgspec.json.Decoder(list[ScopeLogs] | None)
_RESOURCE = msgspec.json.Decoder(Resource | None)
_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw] | None)
_LOG_RECORD = msgspec.json.Decoder(LogRecord)
_LOG_RECORDS = msgspec.json.Decoder(list[LogRecord] | None)

# A JSON LogRecord or Resource is decoded alone, and only when its bytes are within this many times
# RINGGATE_MAX_RECORD_BYTES: msgspec spends up to ~19 times the bytes of `{}` attributes on their
# structs, and the OTLP mapping spells out each attribute ({"key":..,"value":{"intValue":..}}), up
# to ~5 times the bytes the record stores for it.
JSON_PIECE_FACTOR = 4


def _decode_level(decoder: msgspec.json.Decoder, raw, where: str):
    try:
        return decoder.decode(raw) or []
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _json_refusal(exc, where) from None


def _json_refusal(exc: msgspec.MsgspecError, where: str) -> Refusal:
    if isinstance(exc, msgspec.ValidationError):
        # msgspec names the place inside the piece it was given: "... - at `$[0].key`"
        message = str(exc)
        at = message.replace("`$", f"`{where}", 1)
        return Refusal(400, "invalid_otlp", at if at != message else f"{where}: {message}")
    return Refusal(400, "invalid_json", f"{where}: {exc}")


def _json_piece_too_large(raw: msgspec.Raw | bytes, limits: Limits, where: Callable[[], str]) -> None:
    if len(raw) > JSON_PIECE_FACTOR * limits.max_record_bytes:
        raise Refusal(
            413, "record_too_large",
            f"{where()} is {len(raw)} bytes of OTLP JSON; the limit is {JSON_PIECE_FACTOR} x "
            f"{limits.max_record_bytes} bytes ({JSON_PIECE_FACTOR} x RINGGATE_MAX_RECORD_BYTES)",
        )


def _count_envelopes(raw, envelopes: int, limits: Limits, small: bool) -> int:
    """`envelopes` plus the elements of the array `raw`, counted as bytes unless the body is small."""
    if small:
        return envelopes
    envelopes += count_elements(bytes(raw))
    if not limits.within_count(envelopes):
        _too_many_envelopes(envelopes, limits, "resourceLogs/scopeLogs")
    return envelopes


def _int64(value, what: str, where: Callable[[], str], unsigned: bool = False) -> int:
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text[:1] == "-" and not unsigned else text
        if not digits.isascii() or not digits.isdigit():
            raise Refusal(400, "invalid_otlp", f"{where()}: {what} {value[:40]!r} is not a decimal integer")
        value = int(text)
    low, high = (0, 1 << 64) if unsigned else (-(1 << 63), 1 << 63)
    if not low <= value < high:
        raise Refusal(400, "invalid_otlp", f"{where()}: {what} {value} is out of range")
    return value


def _any_json(value: AnyValue | None, where, depth: int) -> object:
    if value is None:
        return None
    if value.stringValue is not None:
        return value.stringValue
    if value.boolValue is not None:
        return value.boolValue
    if value.intValue is not None:
        return _int64(value.intValue, "intValue", where)
    if value.doubleValue is not None:
        double = value.doubleValue
        if isinstance(double, str):
            try:
                double = float(double)  # "NaN", "Infinity", "-Infinity", or a quoted number
            except ValueError:
                raise Refusal(400, "invalid_otlp", f"{where()}: doubleValue {double[:40]!r} is not a number") from None
        return double
    if value.arrayValue is not None:
        _check_depth(depth)
        return [_any_json(v, where, depth + 1) for v in value.arrayValue.values or ()]
    if value.kvlistValue is not None:
        return _attributes_json(value.kvlistValue.values, where, depth)
    if value.bytesValue is not None:
        return _base64(value.bytesValue, where)
    return None


def _base64(text: str, where) -> str:
    """Standard base64, as the protobuf path stores bytes; proto3 JSON also allows URL-safe and unpadded."""
    try:
        raw = base64.b64decode(text.translate(_URL_SAFE) + "=" * (-len(text) % 4), validate=True)
    except (ValueError, binascii.Error):
        raise Refusal(400, "invalid_otlp", f"{where()}: bytesValue {text[:40]!r} is not base64") from None
    return base64.b64encode(raw).decode()


_URL_SAFE = str.maketrans("-_", "+/")


def _attributes_json(values: list[KeyValue] | None, where, depth: int) -> dict:
    _check_depth(depth)
    return {kv.key: _any_json(kv.value, where, depth + 1) for kv in values or ()}


def _hex_json(value: str, size: int, what: str, where) -> str:
    try:
        raw = bytes.fromhex(value) if value.isascii() else None
    except ValueError:
        raw = None
    if raw is None or len(value) != 2 * len(raw):
        raise Refusal(400, "invalid_otlp", f"{where()}: {what} {value[:40]!r} is not hex")
    return _hex_id(raw, size, what, where)


def decode_json(body: bytes, limits: Limits) -> Records:
    try:
        return _decode_json(body, limits)
    except RecursionError:
        raise _too_deep() from None


def _decode_json(body: bytes, limits: Limits) -> Records:
    small = limits.short_enough(body)  # then no array in it can hold too many elements
    request = _decode_level(_REQUEST, body, "$")
    envelopes = _count_envelopes(request.resourceLogs, 0, limits, small)
    place = _Place(json=True)
    bounds = _Bounds(limits, place)
    raws = bounds.raws
    piece_bytes = JSON_PIECE_FACTOR * limits.max_record_bytes
    for r, resource_logs in enumerate(_decode_level(_RESOURCE_LOGS, request.resourceLogs, "resourceLogs")):
        at_r = f"resourceLogs[{r}]"
        envelopes = _count_envelopes(resource_logs.scopeLogs, envelopes, limits, small)
        scopes = _decode_level(_SCOPE_LOGS, resource_logs.scopeLogs, f"{at_r}.scopeLogs")
        _json_piece_too_large(resource_logs.resource, limits, lambda at_r=at_r: f"{at_r}.resource")
        resource = _decode_level(_RESOURCE, resource_logs.resource, f"{at_r}.resource")
        resource_attrs = resource.attributes if resource else None
        resource = _attributes_json(resource_attrs, lambda at_r=at_r: f"{at_r}.resource", 2)
        resource = msgspec.Raw(_encode(resource)) if resource else None  # encoded once, copied into each record
        for s, scope_logs in enumerate(scopes):
            logs = scope_logs.logRecords
            if not small:
                limits.check_count(len(raws) + count_elements(bytes(logs)))
            whole = len(logs) <= (piece_bytes if WHOLE_UP_TO is None else WHOLE_UP_TO)
            # within the bound, the structs of every record; past it, each one's bytes (Raw)
            logs = _decode_level(_LOG_RECORDS if whole else _ELEMENTS, logs, f"{at_r}.scopeLogs[{s}].logRecords")
            place.spans.append((r, s, len(logs)))
            named = {}
            if scope_logs.scope is not None:
                if scope_logs.scope.name:
                    named["name"] = scope_logs.scope.name
                if scope_logs.scope.version:
                    named["version"] = scope_logs.scope.version
            scope = msgspec.Raw(_encode(named)) if named else None
            for log in logs:
                where = functools.partial(place.locate, len(raws))
                if not whole:  # decoded, converted and dropped one by one, as protobuf's
                    _json_piece_too_large(log, limits, where)
                    try:
                        log = _LOG_RECORD.decode(log)
                    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                        raise _json_refusal(exc, where()) from None
                record = _record_json(log, resource, scope, where)
                del log
                bounds.add(_encode(record))
    return finish(raws, limits, place.locate, trusted=True)


def _record_json(log: LogRecord, resource: msgspec.Raw | None, scope: msgspec.Raw | None, where) -> dict:
    record = {}
    if log.timeUnixNano is not None and (t := _int64(log.timeUnixNano, "timeUnixNano", where, True)):
        record["time_unix_nano"] = t
    if log.observedTimeUnixNano is not None and (
        t := _int64(log.observedTimeUnixNano, "observedTimeUnixNano", where, True)
    ):
        record["observed_time_unix_nano"] = t
    if log.severityNumber:
        record["severity_number"] = log.severityNumber
    if log.severityText:
        record["severity_text"] = log.severityText
    if log.body is not None and (body := _any_json(log.body, where, 2)) is not None:
        record["body"] = body
    if log.attributes:
        record["attributes"] = _attributes_json(log.attributes, where, 2)
    if resource is not None:
        record["resource"] = resource
    if scope is not None:
        record["scope"] = scope
    if log.traceId:
        record["trace_id"] = _hex_json(log.traceId, 16, "traceId", where)
    if log.spanId:
        record["span_id"] = _hex_json(log.spanId, 8, "spanId", where)
    if log.eventName:
        record["event_name"] = log.eventName
    return record


# ---------------------------------------------------------------------------------------- routes


def routes(gw: Gateway) -> list[Route]:
    intake = Intake(_decoder)

    async def logs(req: Request) -> Answer:
        content_type = _answer_type(req.headers.get(b"content-type"))
        try:
            await accept(gw, req, intake)
        except Refusal as refusal:
            if refusal.code == "empty_body":
                # OTLP: "If the server receives an empty request ... the server SHOULD respond
                # with success"; an empty ExportLogsServiceRequest is an empty protobuf body.
                return Answer(200, _SUCCESS[content_type], content_type)
            return _status(refusal, content_type)
        return Answer(200, _SUCCESS[content_type], content_type)

    return [Route("/v1/logs", logs, ("POST",), NAME)]
