"""The protobuf body parsed one piece at a time (a Resource, an InstrumentationScope, a LogRecord)
stores exactly what the whole-message parse stored, and bounds each piece and the records built.

`whole_message` is the decoder as it was before pieces, kept here as the oracle: one upb parse of
the whole ExportLogsServiceRequest, then the same conversion, written the old way."""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from google.protobuf.internal.encoder import _VarintBytes
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2 as c
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from ringgate.codecs import Limits, Records
from ringgate.codecs.records import finish
from ringgate.errors import Refusal
from ringgate.sources import otlp
from ringgate.sources.otlp import _check_depth, _hex_id, _Place, decode_json, decode_protobuf

LIMITS = Limits(16 << 20, 1 << 20)
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------- the oracle


def _old_any(value, depth: int) -> object:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind is None or kind == "string_value_strindex":
        return None
    if kind == "array_value":
        _check_depth(depth)
        return [_old_any(v, depth + 1) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _old_attributes(value.kvlist_value.values, depth)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


def _old_attributes(values, depth: int) -> dict:
    _check_depth(depth)
    return {kv.key: _old_any(kv.value, depth + 1) for kv in values}


def whole_message(body: bytes, limits: Limits) -> Records:
    try:
        request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
    except DecodeError as exc:
        raise Refusal(400, "invalid_protobuf", f"the body is not an ExportLogsServiceRequest: {exc}") from None
    place = _Place(json=False)
    raws: list[bytes] = []
    for r, resource_logs in enumerate(request.resource_logs):
        resource = _old_attributes(resource_logs.resource.attributes, 2)
        for s, scope_logs in enumerate(resource_logs.scope_logs):
            place.spans.append((r, s, len(scope_logs.log_records)))
            scope = {}
            if scope_logs.scope.name:
                scope["name"] = scope_logs.scope.name
            if scope_logs.scope.version:
                scope["version"] = scope_logs.scope.version
            for log in scope_logs.log_records:
                record = {}
                if log.time_unix_nano:
                    record["time_unix_nano"] = log.time_unix_nano
                if log.observed_time_unix_nano:
                    record["observed_time_unix_nano"] = log.observed_time_unix_nano
                if log.severity_number:
                    record["severity_number"] = log.severity_number
                if log.severity_text:
                    record["severity_text"] = log.severity_text
                if log.HasField("body") and log.body.WhichOneof("value") is not None:
                    record["body"] = _old_any(log.body, 2)
                if log.attributes:
                    record["attributes"] = _old_attributes(log.attributes, 2)
                if resource:
                    record["resource"] = resource
                if scope:
                    record["scope"] = scope
                if log.trace_id:
                    where = functools.partial(place.locate, len(raws))
                    record["trace_id"] = _hex_id(log.trace_id, 16, "trace_id", where)
                if log.span_id:
                    where = functools.partial(place.locate, len(raws))
                    record["span_id"] = _hex_id(log.span_id, 8, "span_id", where)
                if log.event_name:
                    record["event_name"] = log.event_name
                raws.append(msgspec.json.encode(record))
    return finish(raws, limits, place.locate, trusted=True)


@contextlib.contextmanager
def taken_apart():
    """Every envelope walked into its pieces however small (a small one is parsed whole, else)."""
    saved, otlp.WHOLE_UP_TO = otlp.WHOLE_UP_TO, 0
    try:
        yield
    finally:
        otlp.WHOLE_UP_TO = saved


def outcome(decode, body: bytes, limits: Limits = LIMITS):
    try:
        records = decode(body, limits)
    except Refusal as refusal:
        return refusal.status, refusal.code, refusal.detail
    return records.blob, records.lengths.tolist()


# ------------------------------------------------------------------------------ bodies on the wire


def ld(number: int, payload: bytes) -> bytes:
    return _VarintBytes(number << 3 | 2) + _VarintBytes(len(payload)) + payload


_keys = st.sampled_from(["", "a", "b", "service.name", "é"])  # few keys: repeated keys happen
_leaves = st.one_of(
    st.builds(lambda v: c.AnyValue(string_value=v), st.text(max_size=6)),
    st.builds(lambda v: c.AnyValue(bool_value=v), st.booleans()),
    st.builds(lambda v: c.AnyValue(int_value=v), st.integers(-(1 << 63), (1 << 63) - 1)),
    st.builds(lambda v: c.AnyValue(double_value=v), st.floats()),
    st.builds(lambda v: c.AnyValue(bytes_value=v), st.binary(max_size=6)),
    st.builds(lambda v: c.AnyValue(string_value_strindex=v), st.integers(0, 9)),
    st.just(c.AnyValue()),
)
_values = st.recursive(_leaves, lambda inner: st.one_of(
    st.builds(lambda vs: c.AnyValue(array_value=c.ArrayValue(values=vs)), st.lists(inner, max_size=3)),
    st.builds(lambda kvs: c.AnyValue(kvlist_value=c.KeyValueList(values=kvs)),
              st.lists(st.builds(lambda k, v: c.KeyValue(key=k, value=v), _keys, inner), max_size=3)),
), max_leaves=8)
_attributes = st.lists(st.builds(lambda k, v: c.KeyValue(key=k, value=v), _keys, _values), max_size=4)
_ids = st.sampled_from([b"", bytes(16), bytes(range(1, 17)), bytes(range(8)), b"\x01" * 7, b"\x02" * 17])

_log_records = st.builds(lambda fields: logs_pb2.LogRecord(**fields), st.fixed_dictionaries({}, optional={
    "time_unix_nano": st.integers(0, (1 << 64) - 1),
    "observed_time_unix_nano": st.integers(0, (1 << 64) - 1),
    "severity_number": st.integers(-(1 << 31), (1 << 31) - 1),
    "severity_text": st.text(max_size=5),
    "body": _values,
    "attributes": _attributes,
    "dropped_attributes_count": st.integers(0, (1 << 32) - 1),
    "flags": st.integers(0, (1 << 32) - 1),
    "trace_id": _ids,
    "span_id": _ids,
    "event_name": st.text(max_size=5),
}))
_resources = st.builds(lambda attrs, dropped: resource_pb2.Resource(attributes=attrs, dropped_attributes_count=dropped),
                       _attributes, st.integers(0, 3))
_scopes = st.builds(lambda fields: c.InstrumentationScope(**fields), st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=5), "version": st.text(max_size=5), "attributes": _attributes}))


@st.composite
def _unknown(draw, numbers) -> bytes:
    """A field no OTLP version writes at this level, of any wire type proto3 has."""
    number = draw(numbers)
    kind = draw(st.sampled_from([0, 1, 2, 5]))
    tag = _VarintBytes(number << 3 | kind)
    if kind == 0:
        return tag + _VarintBytes(draw(st.integers(0, (1 << 64) - 1)))
    if kind == 2:
        return ld(number, draw(st.binary(max_size=6)))
    return tag + draw(st.binary(min_size=8 if kind == 1 else 4, max_size=8 if kind == 1 else 4))


@st.composite
def _envelope(draw, heads, items) -> bytes:
    """ResourceLogs or ScopeLogs on the wire: its singular head in 0-2 pieces (a parser merges
    them), its items, a schema_url and unknown fields, in any order."""
    fields = [ld(1, draw(heads).SerializeToString()) for _ in range(draw(st.integers(0, 2)))]
    fields += [ld(2, item) for item in draw(st.lists(items, max_size=3))]
    fields += [ld(3, draw(st.text(max_size=4)).encode())] * draw(st.integers(0, 1))
    fields += draw(st.lists(_unknown(st.integers(4, 40)), max_size=2))
    return b"".join(draw(st.permutations(fields)))


_scope_logs = _envelope(_scopes, _log_records.map(logs_pb2.LogRecord.SerializeToString))
_resource_logs = _envelope(_resources, _scope_logs)


@st.composite
def requests(draw) -> bytes:
    fields = [ld(1, rl) for rl in draw(st.lists(_resource_logs, min_size=1, max_size=3))]
    fields += draw(st.lists(_unknown(st.integers(2, 40)), max_size=2))
    return b"".join(draw(st.permutations(fields)))


# ---------------------------------------------------------------------------------------- the tests


_NAMED = ld(1, c.InstrumentationScope(name="n", version="1").SerializeToString())
_SERVICE = ld(1, resource_pb2.Resource(attributes=[c.KeyValue(key="k", value=c.AnyValue(string_value="v"))]).SerializeToString())
_HOST = ld(1, resource_pb2.Resource(attributes=[c.KeyValue(key="h", value=c.AnyValue(int_value=7))]).SerializeToString())
_RECORD = ld(2, logs_pb2.LogRecord(severity_text="INFO").SerializeToString())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(requests())
@example(ld(1, ld(2, _NAMED + _RECORD)))  # a scope
@example(ld(1, ld(2, _RECORD + ld(1, b"\x0a\x01x") + _RECORD + ld(1, b"\x12\x01y"))))  # scope in two pieces, after
@example(ld(1, ld(2, _RECORD) + _SERVICE + ld(2, _RECORD) + _HOST))  # resource in two pieces, after
def test_pieces_store_what_the_whole_message_stored(body):
    """Byte for byte, refusals included: merged resources and scopes, a resource or scope after
    the records it applies to, unknown fields and schema_url anywhere, every AnyValue kind."""
    expected = outcome(whole_message, body)
    assert outcome(decode_protobuf, body) == expected  # small envelopes parsed whole
    with taken_apart():
        assert outcome(decode_protobuf, body) == expected


def _mutations(body: bytes) -> st.SearchStrategy[bytes]:
    at = st.integers(0, max(len(body) - 1, 0))
    return st.one_of(
        st.builds(lambda i, b: body[:i] + bytes([b]) + body[i + 1:], at, st.integers(0, 255)),
        st.builds(lambda i: body[:i], at),
        st.builds(lambda i, junk: body[:i] + junk + body[i:], at, st.binary(min_size=1, max_size=6)),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.one_of(st.binary(max_size=64), requests().flatmap(_mutations)))
@example(b"\x00\x00")  # field number 0: upb refuses it, and a walk must too
@example(b"\x08\x01")  # resource_logs as a varint: an unknown field to upb
@example(b"\x0a\x03\x1a\x01\xff")  # schema_url not UTF-8
@example(b"\x88\x80\x80\x80\x80\x00\x00")  # a tag in 6 bytes
@example(b"\x0a\x80\x80\x80\x80\x80\x00")  # a length in 6 bytes
def test_pieces_never_take_a_body_the_whole_message_refused(body):
    """Any bytes: stored identically, or refused. The pieces may refuse more (groups, which proto3
    never writes), never less; empty_body counts as taken (OTLP answers it 200)."""
    old = outcome(whole_message, body)
    for regime in (contextlib.nullcontext, taken_apart):
        with regime():
            new = outcome(decode_protobuf, body)
        if isinstance(new[0], bytes) or new[1] == "empty_body":
            assert new == old
        else:
            assert 400 <= new[0] < 500


def _one_log_record(log_record: bytes, resource: bytes = b"", scope: bytes = b"") -> bytes:
    head = ld(1, resource) if resource else b""
    return ld(1, head + ld(2, (ld(1, scope) if scope else b"") + ld(2, b"") + ld(2, log_record)))


def test_a_piece_larger_than_the_record_limit_is_refused_before_it_is_parsed(monkeypatch):
    """10,000 empty attributes: 20 KB of protobuf, whose record is `{"attributes":{"":null}}`
    (the whole-message path took it), and ~1 MB for upb to parse."""
    limits = Limits(16 << 20, 16 << 10)
    empty_attributes = b"\x32\x00" * 10_000
    assert isinstance(outcome(whole_message, _one_log_record(empty_attributes), limits)[0], bytes)
    parsed = []
    monkeypatch.setattr("ringgate.sources.otlp._parse_log", lambda data: parsed.append(len(data)) or
                        logs_pb2.LogRecord.FromString(data))
    cases = [
        (_one_log_record(empty_attributes), "resource_logs[0].scope_logs[0].log_records[1] is 20000 bytes"),
        (_one_log_record(b"", resource=b"\x0a\x00" * 10_000), "resource_logs[0].resource is 20000 bytes"),
        (_one_log_record(b"", scope=b"\x1a\x00" * 10_000), "resource_logs[0].scope_logs[0].scope is 20000 bytes"),
    ]
    for body, detail in cases:
        status, code, message = outcome(decode_protobuf, body, limits)
        assert (status, code) == (413, "record_too_large"), message
        assert message.startswith(detail) and "RINGGATE_MAX_RECORD_BYTES" in message, message
    assert max(parsed) < 16 << 10  # the empty record before it, never the large one
    ok = _one_log_record(b"\x32\x00" * 8000)  # 16,000 bytes: within the limit
    assert outcome(decode_protobuf, ok, limits) == outcome(whole_message, ok, limits)


def test_a_bad_piece_is_named_where_it_is():
    bad = _one_log_record(ld(3, b"\xff"))  # severity_text not UTF-8
    status, code, detail = outcome(decode_protobuf, bad)  # its ScopeLogs, small, parsed whole
    assert (status, code) == (400, "invalid_protobuf")
    assert "(resource_logs[0].scope_logs[0]): Error parsing message with type 'opentelemetry.proto.logs.v1.ScopeLogs'" in detail
    with taken_apart():
        status, code, detail = outcome(decode_protobuf, bad)
    assert (status, code) == (400, "invalid_protobuf")
    assert "(resource_logs[0].scope_logs[0].log_records[1]): Error parsing message with type 'opentelemetry.proto.logs.v1.LogRecord'" in detail


def _resource_bomb(records: int, resource_bytes: int, json: bool) -> bytes:
    """One resource of `resource_bytes` copied into each of `records` empty records."""
    if json:
        resource = {"attributes": [{"key": "k", "value": {"stringValue": "x" * resource_bytes}}]}
        logs = b"[" + b",".join([b"{}"] * records) + b"]"
        return (b'{"resourceLogs":[{"resource":' + msgspec.json.encode(resource) +
                b',"scopeLogs":[{"logRecords":' + logs + b"}]}]}")
    resource = resource_pb2.Resource(attributes=[c.KeyValue(key="k", value=c.AnyValue(string_value="x" * resource_bytes))])
    return ld(1, ld(1, resource.SerializeToString()) + ld(2, ld(2, b"") * records))


@pytest.mark.parametrize("json", [False, True], ids=["protobuf", "json"])
def test_records_past_half_a_ring_are_refused_as_they_are_built(json):
    """A 60 KB body (a ~300-byte gzip) of one 10 KB resource and 20,000 empty records would be
    200 MB of records: refused once they pass half the ring, not after they are all built."""
    body = _resource_bomb(20_000, 10_000, json)
    assert len(gzip.compress(body)) < 1024
    decode = decode_json if json else decode_protobuf
    status, code, detail = outcome(decode, body, Limits(16 << 20, 1 << 20, max_framed_bytes=1 << 20))
    assert (status, code) == (413, "body_too_large")
    where = "resourceLogs[0].scopeLogs[0].logRecords[104]" if json else "resource_logs[0].scope_logs[0].log_records[104]"
    assert detail == f"105 records (up to {where}) need more than half a ring (1048576 bytes) once framed", detail


MEMORY_PROBE = """
import resource, sys
sys.path.insert(0, "tests/unit")
from test_source_otlp_pieces import _resource_bomb, outcome
from ringgate.codecs import Limits
from ringgate.sources.otlp import decode_json, decode_protobuf
body = _resource_bomb(40_000, 10_000, sys.argv[1] == "json")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = outcome(decode_json if sys.argv[1] == "json" else decode_protobuf, body,
                 Limits(16 << 20, 1 << 20, max_framed_bytes=32 << 20))
code = result[1] if len(result) == 3 else "accepted"
print(code, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("json", [False, True], ids=["protobuf", "json"])
def test_a_resource_bomb_costs_half_a_ring_not_gigabytes(json):
    """40,000 copies of a 10 KB resource: 400 MB of records, ~1 GB of peak memory before; now the
    records stop at half the default ring (32 MiB)."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, "json" if json else "protobuf"],
                         capture_output=True, text=True, timeout=120, check=True, cwd=ROOT)
    code, grown_mib = out.stdout.split()
    assert code == "body_too_large"
    assert int(grown_mib) < 100, out.stdout


def _otlp_json(body: bytes) -> bytes:
    """The OTLP JSON mapping of a protobuf request: protobuf's own JSON, but hex ids."""
    from google.protobuf import json_format

    value = json_format.MessageToDict(logs_service_pb2.ExportLogsServiceRequest.FromString(body),
                                      use_integers_for_enums=True)
    for resource_logs in value.get("resourceLogs", ()):
        for scope_logs in resource_logs.get("scopeLogs", ()):
            for log in scope_logs.get("logRecords", ()):
                for key in ("traceId", "spanId"):
                    if key in log:
                        log[key] = base64.b64decode(log[key]).hex()
    return msgspec.json.encode(value)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(requests())
def test_json_records_decoded_one_by_one_store_what_the_protobuf_whole_message_stored(body):
    """The same request in OTLP JSON: the same bytes stored, or a refusal of the same code."""
    old, json_body = outcome(whole_message, body), _otlp_json(body)
    for regime in (contextlib.nullcontext, taken_apart):  # each logRecords array decoded whole, or not
        with regime():
            new = outcome(decode_json, json_body)
        assert new[:2] == old[:2] and len(new) == len(old), (new, old)  # blob and lengths, or status and code


@pytest.mark.parametrize(("piece", "where"), [
    ('{"scopeLogs":[{"logRecords":[{},{"attributes":[%s]}]}]}', "resourceLogs[0].scopeLogs[0].logRecords[1]"),
    ('{"resource":{"attributes":[%s]},"scopeLogs":[{"logRecords":[{}]}]}', "resourceLogs[0].resource"),
])
def test_a_json_piece_past_4_times_the_record_limit_is_refused_before_it_is_decoded(piece, where):
    """~22,000 `{}` attributes: 64 KB of JSON that msgspec spent ~1.2 MB on, for `{"":null}`."""
    limits = Limits(16 << 20, 16 << 10)
    body = ('{"resourceLogs":[' + piece % ",".join(["{}"] * 22_000) + "]}").encode()
    status, code, detail = outcome(decode_json, body, limits)
    assert (status, code) == (413, "record_too_large"), detail
    assert detail.startswith(f"{where} is 6") and "4 x RINGGATE_MAX_RECORD_BYTES" in detail, detail
    within = ('{"resourceLogs":[' + piece % ",".join(["{}"] * 21_000) + "]}").encode()  # 63,000 bytes
    assert isinstance(outcome(decode_json, within, limits)[0], bytes)
    with taken_apart():
        assert isinstance(outcome(decode_json, within, limits)[0], bytes)
