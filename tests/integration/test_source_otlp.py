"""`POST /v1/logs` against a real `ringgate serve`: the OpenTelemetry SDK's OTLP/HTTP exporter,
a JSON request as the OTLP specification writes it, auth, backpressure and bad bodies."""

from __future__ import annotations

import gzip
import json
import threading

import pytest
from google.rpc import status_pb2
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource

from tests.fixtures import gateway as gateway_fixtures
from tests.sinkdata import StuckSink, assert_exactly_once, file_sink_records, wait_for

TRACE_ID = 0x5B8EFFF798038103D269B633813FC60C
SPAN_ID = 0xEEE19B7EC3C1B174
PROTOBUF = "application/x-protobuf"


class RecordingExporter(OTLPLogExporter):
    """The SDK's exporter, remembering what each export reported."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.results: list[tuple[int, LogRecordExportResult]] = []

    def export(self, batch):
        result = super().export(batch)
        self.results.append((len(batch), result))
        return result


def _export(gw, n: int, tag: str, **exporter_options) -> RecordingExporter:
    """Emit n log records through a LoggerProvider + BatchLogRecordProcessor and flush them."""
    exporter = RecordingExporter(endpoint=f"http://127.0.0.1:{gw.port}/v1/logs", timeout=10, **exporter_options)
    provider = LoggerProvider(resource=Resource.create({"service.name": "checkout", "deployment.environment": "test"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_export_batch_size=100))
    logger = provider.get_logger("shop.orders", "2.1.0")
    span = trace.NonRecordingSpan(trace.SpanContext(TRACE_ID, SPAN_ID, is_remote=False))
    context = trace.set_span_in_context(span)
    for i in range(n):
        logger.emit(
            timestamp=1_700_000_000_000_000_000 + i, severity_number=SeverityNumber.WARN,
            severity_text="WARN", body=f"order {i} is late", context=context,
            attributes={"id": f"{tag}-{i}", "n": i, "ratio": 0.5, "ok": True, "tags": ["a", "b"]},
        )
    assert provider.force_flush(30_000)
    provider.shutdown()
    return exporter


def _check_sdk_records(stored: list[dict], tag: str, n: int) -> None:
    mine = [r for r in stored if r.get("attributes", {}).get("id", "").startswith(f"{tag}-")]
    assert_exactly_once([f"{tag}-{i}" for i in range(n)], mine, key="_id")
    record = next(r for r in mine if r["attributes"]["id"] == f"{tag}-7")
    del record["_id"]
    observed = record.pop("observed_time_unix_nano")
    assert isinstance(observed, int) and observed > 1_700_000_000_000_000_000
    resource = record.pop("resource")
    assert resource["service.name"] == "checkout" and resource["deployment.environment"] == "test"
    assert record == {
        "time_unix_nano": 1_700_000_000_000_000_007,
        "severity_number": 13,
        "severity_text": "WARN",
        "body": "order 7 is late",
        "attributes": {"id": f"{tag}-7", "n": 7, "ratio": 0.5, "ok": True, "tags": ["a", "b"]},
        "scope": {"name": "shop.orders", "version": "2.1.0"},
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "span_id": "eee19b7ec3c1b174",
    }


def _with_ids(stored: list[dict]) -> list[dict]:
    for r in stored:
        r["_id"] = r.get("attributes", {}).get("id")
    return stored


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_sdk_exporter_stores_each_record_once_in_the_otlp_shape(make_gateway, compression):
    gw = make_gateway()
    exporter = _export(gw, 250, "sdk", compression=compression)
    assert [r for _, r in exporter.results] == [LogRecordExportResult.SUCCESS] * 3
    assert sum(n for n, _ in exporter.results) == 250
    wait_for(lambda: len(file_sink_records(gw.sink_dir)) >= 250, what="delivery")
    _check_sdk_records(_with_ids(file_sink_records(gw.sink_dir)), "sdk", 250)
    counted = gw.metrics()
    assert counted.get('ringgate_requests_total{code="200"}', 0) >= 3, counted


def test_the_exporter_authenticates_through_its_headers(make_gateway):
    gw = make_gateway(API_KEYS="otel-key")
    refused = _export(gw, 5, "noauth")
    assert [r for _, r in refused.results] == [LogRecordExportResult.FAILURE]
    allowed = _export(gw, 5, "auth", headers={"Authorization": "Bearer otel-key"})
    assert [r for _, r in allowed.results] == [LogRecordExportResult.SUCCESS]
    wait_for(lambda: len(file_sink_records(gw.sink_dir)) >= 5, what="delivery")
    stored = _with_ids(file_sink_records(gw.sink_dir))
    assert sorted(r["_id"] for r in stored) == [f"auth-{i}" for i in range(5)]
    # the refusal is a google.rpc.Status in the request's content type
    resp = gw.post(_request(["x"]), PROTOBUF, "/v1/logs")
    assert resp.status == 401 and resp.headers["content-type"] == PROTOBUF
    assert "unauthorized" in status_pb2.Status.FromString(resp.body).message


# After the example of the OTLP specification (opentelemetry-proto examples/logs.json): ids in
# upper-case hex, 64-bit integers as decimal strings (proto3 JSON's form; the example's numbers
# are sent too, below), an enum as an integer, and an unknown field a receiver must ignore.
SPEC_JSON = {
    "resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeLogs": [{
            "scope": {"name": "my.library", "version": "1.0.0",
                      "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
            "logRecords": [{
                "timeUnixNano": "1544712660300000000",
                "observedTimeUnixNano": "1544712660300000000",
                "severityNumber": 10,
                "severityText": "Information",
                "traceId": "5B8EFFF798038103D269B633813FC60C",
                "spanId": "EEE19B7EC3C1B174",
                "body": {"stringValue": "Example log record"},
                "attributes": [
                    {"key": "string.attribute", "value": {"stringValue": "some string"}},
                    {"key": "boolean.attribute", "value": {"boolValue": True}},
                    {"key": "int.attribute", "value": {"intValue": "10"}},
                    {"key": "double.attribute", "value": {"doubleValue": 637.704}},
                    {"key": "array.attribute", "value": {"arrayValue": {"values": [
                        {"stringValue": "many"}, {"stringValue": "values"}]}}},
                    {"key": "map.attribute", "value": {"kvlistValue": {"values": [
                        {"key": "some.map.key", "value": {"stringValue": "some value"}}]}}},
                    {"key": "bytes.attribute", "value": {"bytesValue": "AAEC"}},
                ],
                "aFieldFromTheFuture": {"ignored": True},
            }, {"body": {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": -3}}]}}}],
        }],
    }],
}

SPEC_STORED = [{
    "time_unix_nano": 1544712660300000000,
    "observed_time_unix_nano": 1544712660300000000,
    "severity_number": 10,
    "severity_text": "Information",
    "body": "Example log record",
    "attributes": {
        "string.attribute": "some string", "boolean.attribute": True, "int.attribute": 10,
        "double.attribute": 637.704, "array.attribute": ["many", "values"],
        "map.attribute": {"some.map.key": "some value"}, "bytes.attribute": "AAEC",
    },
    "resource": {"service.name": "my.service"},
    "scope": {"name": "my.library", "version": "1.0.0"},
    "trace_id": "5b8efff798038103d269b633813fc60c",
    "span_id": "eee19b7ec3c1b174",
}, {"body": {"k": -3}, "resource": {"service.name": "my.service"}, "scope": {"name": "my.library", "version": "1.0.0"}}]


def test_a_json_request_as_the_spec_writes_it(make_gateway):
    gw = make_gateway()
    resp = gw.post(SPEC_JSON, "application/json", "/v1/logs")
    assert resp.status == 200 and resp.headers["content-type"] == "application/json" and resp.json() == {}
    as_numbers = json.loads(json.dumps(SPEC_JSON))  # the example's own form: 64-bit integers as numbers
    log = as_numbers["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    log["timeUnixNano"] = log["observedTimeUnixNano"] = 1544712660300000000
    log["attributes"][2]["value"]["intValue"] = 10
    body = gzip.compress(json.dumps(as_numbers).encode())
    resp = gw.post(body, "application/json; charset=utf-8", "/v1/logs", headers={"Content-Encoding": "gzip"})
    assert resp.status == 200 and resp.json() == {}
    wait_for(lambda: len(file_sink_records(gw.sink_dir)) >= 4, what="delivery")
    stored = file_sink_records(gw.sink_dir)
    assert sorted(stored, key=json.dumps) == sorted(SPEC_STORED * 2, key=json.dumps)


def _request(ids: list[str], body: str = "x" * 100) -> bytes:
    records = [logs_pb2.LogRecord(
        time_unix_nano=1, body=common_pb2.AnyValue(string_value=body),
        attributes=[common_pb2.KeyValue(key="id", value=common_pb2.AnyValue(string_value=i))],
    ) for i in ids]
    return logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[logs_pb2.ResourceLogs(scope_logs=[logs_pb2.ScopeLogs(log_records=records)])]
    ).SerializeToString()


def test_a_full_ring_answers_429_with_retry_after_and_a_status_and_stores_nothing_refused(make_gateway, tmp_path):
    stuck = StuckSink(tmp_path)
    gw = make_gateway(RING_BYTES=str(64 * 1024), SINK=stuck.url, BATCH_RECORDS="50")
    accepted: list[str] = []
    refused: list[str] = []
    for n in range(200):
        ids = [f"r{n}-{i}" for i in range(10)]
        resp = gw.post(_request(ids), PROTOBUF, "/v1/logs")
        if resp.status == 200:
            assert resp.headers["content-type"] == PROTOBUF and resp.body == b""
            accepted += ids
            continue
        assert resp.status == 429, resp.body
        assert int(resp.headers["retry-after"]) >= 1 and resp.headers["content-type"] == PROTOBUF
        status = status_pb2.Status.FromString(resp.body)
        assert status.code == 8 and status.message.startswith("low_priority: "), status
        refused += ids
        break
    else:
        raise AssertionError("a 64 KiB ring never filled")
    # the JSON form of the same refusal
    blob = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"attributes": [{"key": "id", "value": {"stringValue": "json-refused"}}]}]}]}]})
    resp = gw.post(blob.encode(), "application/json", "/v1/logs")
    assert resp.status == 429 and int(resp.headers["retry-after"]) >= 1, resp.body
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["code"] == 8 and resp.json()["message"].startswith("low_priority: ")
    refused.append("json-refused")
    stuck.recover()  # the operator fixes the fault
    wait_for(lambda: len(stuck.records()) >= len(accepted), what="delivery")
    wait_for(lambda: gw.get("/readyz").status == 200, what="readyz after recovery")
    stored = _with_ids(stuck.records())
    assert_exactly_once(accepted, stored, key="_id")
    assert not {r["_id"] for r in stored} & set(refused)
    assert len(stored) == len(accepted)


def test_the_exporter_retries_backpressure_and_succeeds_once_the_ring_drains(make_gateway, tmp_path):
    """429 + Retry-After is what the SDK retries: its export, refused while the ring is full,
    succeeds after the sink recovers, and its record is stored once."""
    stuck = StuckSink(tmp_path)
    gw = make_gateway(RING_BYTES=str(64 * 1024), SINK=stuck.url)
    filled: list[str] = []
    for n in range(200):
        ids = [f"fill{n}-{i}" for i in range(10)]
        if gw.post(_request(ids), PROTOBUF, "/v1/logs").status == 429:
            break
        filled += ids
    exporter = RecordingExporter(endpoint=f"http://127.0.0.1:{gw.port}/v1/logs", timeout=30)
    provider = LoggerProvider(resource=Resource.create({}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    refused_before = gw.metrics()['ringgate_requests_total{code="429"}']
    sender = threading.Thread(target=provider.get_logger("t").emit, kwargs={"attributes": {"id": "retried"}})
    sender.start()
    wait_for(lambda: gw.metrics()['ringgate_requests_total{code="429"}'] > refused_before, what="the exporter's 429")
    stuck.recover()  # the sink recovers, the ring drains, the exporter's retry gets in
    sender.join(60)
    provider.shutdown()
    assert [r for _, r in exporter.results] == [LogRecordExportResult.SUCCESS]
    wait_for(lambda: len(stuck.records()) >= len(filled) + 1, what="delivery")
    assert_exactly_once([*filled, "retried"], _with_ids(stuck.records()), key="_id")


BAD = [
    (PROTOBUF, b"\x0a\x05\x12\x03", 400, "invalid_protobuf"),  # a field runs past its message
    (PROTOBUF, b"\xff\xff\xff", 400, "invalid_protobuf"),
    (PROTOBUF, _request(["x"]).replace(b"x" * 100, b"\xff" * 100), 400, "invalid_protobuf"),  # not UTF-8
    ("application/json", b'{"resourceLogs": [', 400, "invalid_json"),
    ("application/json", b'{"resourceLogs": {}}', 400, "invalid_otlp"),
    ("application/json", b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"zz"}]}]}]}', 400, "invalid_otlp"),
    ("application/json", b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"soon"}]}]}]}', 400,
     "invalid_otlp"),
    ("text/plain", b"hello", 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(("content_type", "body", "status", "code"), BAD)
def test_bad_bodies_get_a_status_that_is_not_retried(shared_otlp_gateway, content_type, body, status, code):
    gw = shared_otlp_gateway
    resp = gw.post(body, content_type, "/v1/logs")
    assert resp.status == status, resp.body
    assert "retry-after" not in resp.headers
    if content_type == PROTOBUF:
        assert resp.headers["content-type"] == PROTOBUF
        message = status_pb2.Status.FromString(resp.body).message
    else:
        assert resp.headers["content-type"] == "application/json"
        message = resp.json()["message"]
    assert message.startswith(f"{code}: "), message


def test_empty_requests_succeed_and_a_tiny_gzip_of_many_records_is_refused_by_the_count(shared_otlp_gateway):
    gw = shared_otlp_gateway
    # OTLP: an empty request SHOULD be answered with success (an empty protobuf message is b"")
    assert gw.post(b"", PROTOBUF, "/v1/logs").status == 200
    assert gw.post(b'{"resourceLogs":[]}', "application/json", "/v1/logs").json() == {}
    # 4 million empty LogRecords: 8 MB of protobuf in a ~8 KB gzip
    scope = b"\x12\x00" * 4_000_000
    body = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        scope_logs=[logs_pb2.ScopeLogs.FromString(scope)])]).SerializeToString()
    compressed = gzip.compress(body)
    assert len(compressed) < 64 * 1024
    resp = gw.post(compressed, PROTOBUF, "/v1/logs", headers={"Content-Encoding": "gzip"})
    assert resp.status == 413, resp.body
    message = status_pb2.Status.FromString(resp.body).message
    # refused by the wire count, which stops at the limit (here half the 1 MiB ring, framed),
    # not after parsing all 4 million (which takes ~500 MB)
    assert message.startswith(("too_many_records: ", "body_too_large: ")), message
    counted = int(message.split()[1 if message.startswith("body") else 4])
    assert counted < 200_000, message
    assert gw.get("/healthz").status == 200


@pytest.fixture(scope="module")
def shared_otlp_gateway(tmp_path_factory):
    yield from gateway_fixtures.shared_gateway(tmp_path_factory, "otlp")
