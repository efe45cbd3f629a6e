"""What one OTLP request costs a real `ringgate serve` worker (§9: memory per request is bounded,
whatever the request holds), measured as the growth of the worker's peak RSS (VmHWM), as
tests/integration/test_edge_bounds.py measures the edge attacks."""

from __future__ import annotations

import gzip
import http.client
import json
import sys
from pathlib import Path

import pytest
from google.protobuf.internal.encoder import _VarintBytes
from google.rpc import status_pb2
from opentelemetry.proto.common.v1 import common_pb2 as c
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from tests.sinkdata import file_sink_records, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import attacks  # noqa: E402

MIB = 1 << 20
BODY_BYTES = 16 * MIB - 64  # just within RINGGATE_MAX_BODY_BYTES' default
# Before pieces, the parse tree of the whole body: ~470 MiB of growth for the empty attributes,
# ~225 MiB for the legitimate body, ~960 MiB for the resource bomb (measured here); now each is the
# body and the records, well under this.
GROWTH_BOUND_MIB = 160


def ld(number: int, payload: bytes) -> bytes:
    return _VarintBytes(number << 3 | 2) + _VarintBytes(len(payload)) + payload


def one_log_record_of_empty_attributes() -> bytes:
    """~8 million KeyValue{} in one LogRecord: its record is `{"attributes":{"":null}}`."""
    return ld(1, ld(2, ld(2, b"\x32\x00" * ((BODY_BYTES - 16) // 2))))


def many_log_records() -> tuple[bytes, int]:
    """~75,000 records of 20 tiny attributes each (the worst ratio of parse tree to bytes that
    an ordinary client sends), fewer than RINGGATE_MAX_RECORDS."""
    def log_record(i: int) -> bytes:
        attributes = [c.KeyValue(key=f"k{j}", value=c.AnyValue(int_value=j)) for j in range(20)]
        return ld(2, logs_pb2.LogRecord(time_unix_nano=1_700_000_000_000_000_000 + i,
                                        attributes=attributes).SerializeToString())
    count = (BODY_BYTES - 16) // len(log_record(0))
    return ld(1, ld(2, b"".join(log_record(i) for i in range(count)))), count


def resource_bomb(json_body: bool) -> bytes:
    """A ~2 KB gzip: one 10 KB resource copied into 40,000 empty records, 400 MB of records."""
    value = "x" * 10_000
    if json_body:
        resource = {"attributes": [{"key": "k", "value": {"stringValue": value}}]}
        logs = "[" + ",".join(["{}"] * 40_000) + "]"
        body = json.dumps({"resourceLogs": [{"resource": resource, "scopeLogs": [{"logRecords": None}]}]})
        return gzip.compress(body.replace("null", logs).encode())
    resource = resource_pb2.Resource(attributes=[c.KeyValue(key="k", value=c.AnyValue(string_value=value))])
    return gzip.compress(ld(1, ld(1, resource.SerializeToString()) + ld(2, ld(2, b"") * 40_000)))


def post(port: int, body: bytes, content_type: str, gzipped: bool = False) -> tuple[int, str]:
    headers = {"Content-Type": content_type, **({"Content-Encoding": "gzip"} if gzipped else {})}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/logs", body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    if resp.status == 200:
        return 200, ""
    message = status_pb2.Status.FromString(raw).message if "protobuf" in content_type else json.loads(raw)["message"]
    return resp.status, message


@pytest.fixture
def gw(make_gateway):
    return make_gateway(RING_BYTES=str(64 * MIB))  # half a ring, 32 MiB, holds the legitimate body's records


def measure(gw, name: str, body: bytes, content_type: str = "application/x-protobuf", gzipped: bool = False):
    (pid,) = gw.children()["worker"]
    outcome = attacks.measure(name, gw.port, pid, lambda: post(gw.port, body, content_type, gzipped))
    assert outcome.healthz_worst_s < 2.0, outcome
    return outcome


def one_json_log_record_of_empty_attributes() -> bytes:
    """~5.6 million `{}` attributes in one JSON LogRecord (msgspec: ~300 MiB of structs)."""
    head, tail = b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"attributes":[', b"]}]}]}]}"
    return head + (b"{}," * ((BODY_BYTES - len(head) - len(tail)) // 3))[:-1] + tail


@pytest.mark.parametrize("json_body", [False, True], ids=["protobuf", "json"])
def test_one_log_record_of_16_mib_of_empty_attributes_is_refused_before_it_is_built(gw, json_body):
    if json_body:
        outcome = measure(gw, "empty attributes", one_json_log_record_of_empty_attributes(), "application/json")
        where = "resourceLogs[0].scopeLogs[0].logRecords[0]"
    else:
        outcome = measure(gw, "empty attributes", one_log_record_of_empty_attributes())
        where = "resource_logs[0].scope_logs[0].log_records[0]"
    assert outcome.status == 413, outcome
    assert outcome.error.startswith(f"record_too_large: {where} is "), outcome
    assert outcome.vmhwm_growth_mib < GROWTH_BOUND_MIB, outcome  # was ~470 MiB (protobuf), ~350 MiB (JSON)


def test_16_mib_of_ordinary_log_records_is_taken_within_the_bound(gw):
    body, count = many_log_records()
    assert len(body) <= 16 * MIB and count < 100_000
    outcome = measure(gw, "many records", body)
    assert outcome.status == 200, outcome
    assert outcome.vmhwm_growth_mib < GROWTH_BOUND_MIB, outcome
    wait_for(lambda: len(file_sink_records(gw.sink_dir)) >= count, what="delivery", timeout=60)
    stored = file_sink_records(gw.sink_dir)
    assert len(stored) == count
    assert sorted(r["time_unix_nano"] for r in stored) == [1_700_000_000_000_000_000 + i for i in range(count)]
    assert max(stored, key=lambda r: r["time_unix_nano"]) == {"time_unix_nano": 1_700_000_000_000_000_000 + count - 1,
                          "attributes": {f"k{j}": j for j in range(20)}}


@pytest.mark.parametrize("json_body", [False, True], ids=["protobuf", "json"])
def test_a_resource_copied_into_every_record_stops_at_half_a_ring(gw, json_body):
    body = resource_bomb(json_body)
    assert len(body) < 4096
    outcome = measure(gw, "resource bomb", body, "application/json" if json_body else "application/x-protobuf", True)
    assert outcome.status == 413 and outcome.error.startswith("body_too_large: "), outcome
    assert "need more than half a ring (33554432 bytes) once framed" in outcome.error, outcome
    assert outcome.vmhwm_growth_mib < GROWTH_BOUND_MIB, outcome  # was over 1 GiB
