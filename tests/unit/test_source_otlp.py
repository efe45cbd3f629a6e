"""The OTLP source's decoders: the §8 record shape from protobuf and JSON alike, the count before
the parse, and any bytes -> records or a Refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2 as c
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from ringgate.codecs import Limits, Records
from ringgate.errors import Refusal
from ringgate.sources.otlp import count_log_records, decode_json, decode_protobuf

LIMITS = Limits(16 << 20, 1 << 20)


def kv(key: str, **value) -> c.KeyValue:
    return c.KeyValue(key=key, value=c.AnyValue(**value))


def protobuf_request(records: list[logs_pb2.LogRecord], **resource_attrs) -> bytes:
    resource = resource_pb2.Resource(attributes=[kv(k, string_value=v) for k, v in resource_attrs.items()])
    return logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        resource=resource,
        scope_logs=[logs_pb2.ScopeLogs(scope=c.InstrumentationScope(name="lib", version="1"), log_records=records)],
    )]).SerializeToString()


def stored(records: Records) -> list[dict]:
    out, start = [], 0
    for length in records.lengths.tolist():
        out.append(json.loads(records.blob[start:start + length]))
        start += length
    return out


FULL_PB = logs_pb2.LogRecord(
    time_unix_nano=123, observed_time_unix_nano=456, severity_number=9, severity_text="INFO",
    body=c.AnyValue(kvlist_value=c.KeyValueList(values=[kv("raw", bytes_value=b"\x00\x01\xff"), kv("d", double_value=1.5)])),
    attributes=[kv("i", int_value=-(1 << 63)), kv("arr", array_value=c.ArrayValue(values=[
        c.AnyValue(bool_value=False), c.AnyValue(), c.AnyValue(string_value="s")]))],
    trace_id=bytes(range(16)), span_id=bytes(range(8)), event_name="order.late",
)
FULL_JSON = {
    "timeUnixNano": "123", "observedTimeUnixNano": 456, "severityNumber": 9, "severityText": "INFO",
    "body": {"kvlistValue": {"values": [{"key": "raw", "value": {"bytesValue": "AAH/"}},
                                        {"key": "d", "value": {"doubleValue": 1.5}}]}},
    "attributes": [{"key": "i", "value": {"intValue": str(-(1 << 63))}},
                   {"key": "arr", "value": {"arrayValue": {"values": [{"boolValue": False}, {}, {"stringValue": "s"}]}}}],
    "traceId": "000102030405060708090A0B0C0D0E0F", "spanId": "0001020304050607", "eventName": "order.late",
}
FULL_STORED = {
    "time_unix_nano": 123, "observed_time_unix_nano": 456, "severity_number": 9, "severity_text": "INFO",
    "body": {"raw": "AAH/", "d": 1.5}, "attributes": {"i": -(1 << 63), "arr": [False, None, "s"]},
    "resource": {"service.name": "svc"}, "scope": {"name": "lib", "version": "1"},
    "trace_id": "000102030405060708090a0b0c0d0e0f", "span_id": "0001020304050607", "event_name": "order.late",
}


def json_request(records: list[dict], resource: dict | None = None) -> bytes:
    attrs = [{"key": k, "value": {"stringValue": v}} for k, v in (resource or {}).items()]
    return json.dumps({"resourceLogs": [{"resource": {"attributes": attrs}, "scopeLogs": [
        {"scope": {"name": "lib", "version": "1"}, "logRecords": records}]}]}).encode()


def test_protobuf_and_json_give_the_same_records_in_the_design_shape():
    from_pb = decode_protobuf(protobuf_request([FULL_PB, logs_pb2.LogRecord()], **{"service.name": "svc"}), LIMITS)
    from_json = decode_json(json_request([FULL_JSON, {}], {"service.name": "svc"}), LIMITS)
    assert stored(from_pb) == [FULL_STORED, {"resource": {"service.name": "svc"}, "scope": {"name": "lib", "version": "1"}}]
    assert from_pb.blob == from_json.blob  # compact, the same bytes


def test_json_bytes_are_stored_as_standard_base64_like_protobuf_bytes():
    bodies = [{"body": {"bytesValue": form}} for form in ("AAH/", "AAH_", "AAH/+w==", "AAH_-w")]
    assert [r["body"] for r in stored(decode_json(json_request(bodies), LIMITS))] == ["AAH/", "AAH/", "AAH/+w==", "AAH/+w=="]


def test_unset_fields_are_absent():
    body = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        scope_logs=[logs_pb2.ScopeLogs(log_records=[logs_pb2.LogRecord(body=c.AnyValue())])])]).SerializeToString()
    assert stored(decode_protobuf(body, LIMITS)) == [{}]
    nulls = {"resourceLogs": [{"resource": None, "scopeLogs": [{"scope": None, "logRecords": [
        {"timeUnixNano": "0", "severityNumber": 0, "severityText": "", "body": {}, "attributes": [], "traceId": ""}]}]}]}
    assert stored(decode_json(json.dumps(nulls).encode(), LIMITS)) == [{}]


@pytest.mark.parametrize(("record", "detail"), [
    ({"traceId": "00"}, "resourceLogs[0].scopeLogs[0].logRecords[1]: traceId is 1 bytes; it must be 16"),
    ({"spanId": "xyz0"}, "logRecords[1]: spanId 'xyz0' is not hex"),
    ({"timeUnixNano": str(1 << 64)}, "timeUnixNano 18446744073709551616 is out of range"),
    ({"timeUnixNano": "-1"}, "timeUnixNano '-1' is not a decimal integer"),
    ({"observedTimeUnixNano": -1}, "observedTimeUnixNano -1 is out of range"),
    ({"attributes": [{"key": "k", "value": {"intValue": 1 << 63}}]}, f"intValue {1 << 63} is out of range"),
    ({"attributes": [{"key": "k", "value": {"intValue": "1e3"}}]}, "intValue '1e3' is not a decimal integer"),
    ({"attributes": [{"key": "k", "value": {"doubleValue": "many"}}]}, "doubleValue 'many' is not a number"),
    ({"body": {"bytesValue": "AA$"}}, "logRecords[1]: bytesValue 'AA$' is not base64"),
    ({"severityNumber": "SEVERITY_NUMBER_INFO"}, "logRecords[1].severityNumber"),  # OTLP: integers only
    ({"severityNumber": 1 << 40}, "Expected `int` <= 2147483647 - at `resourceLogs[0].scopeLogs[0].logRecords[1].severityNumber`"),
    ({"body": []}, "Expected `object | null`, got `array` - at `resourceLogs[0].scopeLogs[0].logRecords[1].body`"),
])
def test_json_faults_name_what_and_where(record, detail):
    with pytest.raises(Refusal) as refused:
        decode_json(json_request([{}, record]), LIMITS)
    assert refused.value.status == 400 and refused.value.code == "invalid_otlp"
    assert detail in refused.value.detail, refused.value.detail


def test_protobuf_ids_of_the_wrong_length_are_refused_with_their_place():
    with pytest.raises(Refusal) as refused:
        decode_protobuf(protobuf_request([logs_pb2.LogRecord(), logs_pb2.LogRecord(span_id=b"\x01" * 7)]), LIMITS)
    assert refused.value.detail == "resource_logs[0].scope_logs[0].log_records[1]: span_id is 7 bytes; it must be 8"


def _nested_pb(depth: int) -> bytes:
    """A LogRecord whose body is `depth` arrays deep, built on the wire (upb refuses to build it)."""
    from google.protobuf.internal.encoder import _VarintBytes

    def ld(tag: int, payload: bytes) -> bytes:
        return bytes([tag]) + _VarintBytes(len(payload)) + payload

    value = ld(0x0A, b"leaf")  # AnyValue.string_value
    for _ in range(depth):
        value = ld(0x2A, ld(0x0A, value))  # AnyValue.array_value -> ArrayValue.values
    return ld(0x0A, ld(0x12, ld(0x12, ld(0x2A, value))))  # resource_logs, scope_logs, log_records, body


def _nested_json(depth: int) -> bytes:
    inner = '{"stringValue":"leaf"}'
    body = '{"arrayValue":{"values":[' * depth + inner + "]}}" * depth
    return ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":' + body + "}]}]}]}").encode()


@pytest.mark.parametrize("depth", [70, 3000])
def test_deep_bodies_are_400(depth):
    """JSON nests past the records' limit (64) or past the stack; protobuf past upb's limit (100)."""
    for decode, body in [(decode_json, _nested_json(depth)), (decode_protobuf, _nested_pb(depth))]:
        with pytest.raises(Refusal) as refused:
            decode(body, LIMITS)
        assert refused.value.status == 400, refused.value
        assert refused.value.code == ("too_deep" if decode is decode_json else "invalid_protobuf"), refused.value


def test_a_json_body_may_nest_exactly_as_deep_as_any_record():
    (record,) = stored(decode_json(_nested_json(63), LIMITS))  # record, then 63 arrays: depth 64
    assert json.dumps(record).count("[") == 63
    with pytest.raises(Refusal) as refused:
        decode_json(_nested_json(64), LIMITS)
    assert refused.value.code == "too_deep"


def test_count_log_records_counts_on_the_wire_and_stops_at_the_limit():
    body = protobuf_request([logs_pb2.LogRecord(), FULL_PB, logs_pb2.LogRecord()]) * 2  # repeated = concatenated
    assert count_log_records(body, LIMITS) == 6
    small = Limits(16 << 20, 1 << 20, max_records=5)
    with pytest.raises(Refusal) as refused:
        count_log_records(body, small)
    assert refused.value.status == 413 and "6 records" in refused.value.detail


MEMORY_PROBE = """
import resource, sys
from ringgate.codecs import Limits
from ringgate.errors import Refusal
from ringgate.sources.otlp import decode_protobuf
n = 8_000_000
def ld(tag, payload):
    from google.protobuf.internal.encoder import _VarintBytes
    return bytes([tag]) + _VarintBytes(len(payload)) + payload
body = ld(0x0a, ld(0x12, b"\\x12\\x00" * n))  # 8 million empty LogRecords in one ScopeLogs
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_protobuf(body, Limits(32 << 20, 1 << 20))
except Refusal as refusal:
    print(refusal.code, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_body_of_millions_of_empty_records_is_refused_by_the_count_not_by_memory():
    """16 MB of empty LogRecords costs ~1 GB once upb parses it; the wire count refuses it first."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, timeout=120, check=True)
    code, grown_mib = out.stdout.split()
    assert code == "too_many_records"
    assert int(grown_mib) < 100, out.stdout


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_any_bytes_as_protobuf_are_records_or_a_refusal(body):
    _records_or_refusal(decode_protobuf, body)
    _records_or_refusal(decode_protobuf, protobuf_request([FULL_PB]) + body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_any_bytes_as_json_are_records_or_a_refusal(body):
    _records_or_refusal(decode_json, body)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["key", "value", "values", "stringValue", "intValue", "doubleValue", "boolValue",
                         "bytesValue", "arrayValue", "kvlistValue", "traceId", "spanId", "timeUnixNano",
                         "body", "attributes", "logRecords", "severityNumber", "observedTimeUnixNano", "eventName", "scopeLogs", "resourceLogs", "scope", "x"]),
        inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json_values)
def test_any_json_shaped_like_otlp_is_records_or_a_refusal(value):
    _records_or_refusal(decode_json, msgspec.json.encode(value))
    _records_or_refusal(decode_json, json_request([value]) if isinstance(value, dict) else msgspec.json.encode(value))


def _records_or_refusal(decode, body: bytes) -> None:
    try:
        records = decode(body, LIMITS)
    except Refusal as refusal:
        assert 400 <= refusal.status < 500
        return
    assert records.count >= 1
    for record in stored(records):
        assert isinstance(record, dict)
