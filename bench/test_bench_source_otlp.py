"""`POST /v1/logs` beside `POST /v1/ingest` with the same records: records/s of the worker's
Python work, in-process (the ASGI app called directly on a real ring, as bench/test_bench_app.py).

    python -m pytest bench/test_bench_source_otlp.py -p no:randomly -p no:cacheprovider --benchmark-only \
        -o addopts="" -o testpaths=bench

The records: 100 log records as the OpenTelemetry SDK sends them (a body string, five attributes,
a resource of three attributes, a scope, timestamps, trace and span ids), as an
ExportLogsServiceRequest in protobuf and in OTLP JSON; and the records ringgate stores for them
(the §8 shape) as `{"records": [...]}` to /v1/ingest. The ring is drained between rounds, untimed.

The protobuf decoder alone is timed too, beside the whole-message decoder it replaced (one upb
parse of the request; kept in the tests as their oracle), in µs per body.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.common.v1 import common_pb2 as c
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))  # the tests' oracle, tests.unit.test_source_otlp_pieces

import test_bench_app as bench_app  # noqa: E402
from _report import write_report  # noqa: E402

from ringgate.codecs import Limits  # noqa: E402
from ringgate.sources.otlp import decode_protobuf  # noqa: E402
from tests.unit.test_source_otlp_pieces import whole_message  # noqa: E402

ringgate_app = bench_app.ringgate_app  # the fixture: ringgate's app on a real ring, drained untimed
RECORDS = 100
REQUESTS = 100  # per round: 10,000 records of ~500 B framed fit the bench's 16 MiB ring
_results: dict[str, float] = {}  # name -> records/s
_decoders: dict[str, float] = {}  # name -> µs per body


def _kv(key: str, **value) -> c.KeyValue:
    return c.KeyValue(key=key, value=c.AnyValue(**value))


def _otlp_request() -> logs_service_pb2.ExportLogsServiceRequest:
    logs = [logs_pb2.LogRecord(
        time_unix_nano=1_700_000_000_000_000_000 + i, observed_time_unix_nano=1_700_000_000_000_100_000 + i,
        severity_number=9, severity_text="INFO", body=c.AnyValue(string_value=f"order {i} shipped to the warehouse"),
        attributes=[_kv("order.id", string_value=f"ord-{i:06d}"), _kv("items", int_value=i % 7),
                    _kv("total", double_value=12.5 * i), _kv("express", bool_value=i % 2 == 0),
                    _kv("http.route", string_value="/api/orders/{id}")],
        trace_id=bytes.fromhex("5b8efff798038103d269b633813fc60c"), span_id=(i + 1).to_bytes(8, "big"),
    ) for i in range(RECORDS)]
    resource = resource_pb2.Resource(attributes=[
        _kv("service.name", string_value="checkout"), _kv("service.version", string_value="1.4.2"),
        _kv("host.name", string_value="web-7")])
    return logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        resource=resource, scope_logs=[logs_pb2.ScopeLogs(
            scope=c.InstrumentationScope(name="shop.orders", version="2.1.0"), log_records=logs)])])


def _otlp_json(request) -> bytes:
    """The OTLP JSON mapping of `request`: protobuf's own JSON, but hex ids, as OTLP asks."""
    from google.protobuf import json_format

    value = json_format.MessageToDict(request, use_integers_for_enums=True)
    pairs = zip(value["resourceLogs"][0]["scopeLogs"][0]["logRecords"],
                request.resource_logs[0].scope_logs[0].log_records, strict=True)
    for as_json, log in pairs:
        as_json["traceId"], as_json["spanId"] = log.trace_id.hex(), log.span_id.hex()
    return json.dumps(value, separators=(",", ":")).encode()


REQUEST = _otlp_request()
PROTOBUF = REQUEST.SerializeToString()
JSON = _otlp_json(REQUEST)
STORED = decode_protobuf(PROTOBUF, Limits(16 << 20, 1 << 20))
NATIVE = b'{"records":[' + b",".join(
    STORED.blob[s:s + n] for s, n in zip((STORED.lengths.cumsum() - STORED.lengths).tolist(), STORED.lengths.tolist(),
                                        strict=True)) + b"]}"
CASES = {
    "/v1/ingest, JSON of the stored records": ("/v1/ingest", b"application/json", NATIVE, 202),
    "/v1/logs, protobuf": ("/v1/logs", b"application/x-protobuf", PROTOBUF, 200),
    "/v1/logs, OTLP JSON": ("/v1/logs", b"application/json", JSON, 200),
}
DECODERS = {"pieces (now)": decode_protobuf, "whole message (before, the tests' oracle)": whole_message}


@pytest.mark.parametrize("case", list(CASES))
def test_source_otlp(benchmark, ringgate_app, case):
    benchmark.group = f"records/s, {RECORDS}-record requests"
    app, drain = ringgate_app
    path, content_type, body, status = CASES[case]
    rates = bench_app.records_per_second(benchmark, app, drain, body, path, [(b"content-type", content_type)],
                                         RECORDS, status, REQUESTS)
    if rates is not None:
        _results[case] = rates[0]


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_protobuf_decoder(benchmark, decoder):
    benchmark.group = f"protobuf decoder alone, {RECORDS}-record body"
    limits = Limits(16 << 20, 1 << 20)
    records = benchmark.pedantic(DECODERS[decoder], (PROTOBUF, limits), rounds=100, iterations=10, warmup_rounds=3)
    assert records.blob == STORED.blob
    if benchmark.stats is not None:
        _decoders[decoder] = benchmark.stats.stats.median * 1e6


def test_the_three_bodies_store_the_same_records():
    from ringgate.codecs import decoder_for
    from ringgate.sources.otlp import decode_json

    limits = Limits(16 << 20, 1 << 20)
    assert decode_json(JSON, limits).blob == STORED.blob
    assert decoder_for(b"application/json")(NATIVE, limits).blob == STORED.blob


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _results and not _decoders:
        return
    base = _results.get("/v1/ingest, JSON of the stored records")
    lines = ["", f"OTLP/HTTP logs beside /v1/ingest, in-process, {RECORDS}-record requests (median)",
             f"{'case':45} {'records/s':>11} {'vs /v1/ingest':>14}"]
    for name, rate in _results.items():
        ratio = f"{rate / base:.2f}x" if base else ""
        lines.append(f"{name:45} {rate:11.0f} {ratio:>14}")
    for name, us in _decoders.items():
        lines.append(f"protobuf decoder, {name:42} {us:8.0f} µs per body")
    lines.append(json.dumps({"records_per_s": {k: round(v) for k, v in _results.items()},
                             "decoder_us_per_body": {k: round(v) for k, v in _decoders.items()}}))
    write_report(request.config, lines)
