"""Loki's push API against a real `ringgate serve`: Python Loki logging handlers (JSON), a
protobuf + snappy PushRequest built with the vendored classes, auth, backpressure, snappy bombs."""

from __future__ import annotations

import base64
import json
import logging
import time

import cramjam
import logging_loki
import pytest
from loki_logger_handler.loki_logger_handler import LokiLoggerHandler

from tests.sinkdata import StuckSink, file_sink_records, wait_for
from tests.unit.test_source_loki import snappy_push

PUSH = "/loki/api/v1/push"
KEY = "s3cret-loki-key"


def stored(gw) -> list[dict]:
    return file_sink_records(gw.sink_dir)


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def push_request(streams: dict[str, list[tuple[int, str, dict[str, str]]]]) -> bytes:
    """A snappy-compressed (block format) PushRequest, as Promtail and Alloy send it."""
    return snappy_push(list(streams.items()))


def test_loki_logger_handler_lines_are_stored_once_with_labels_and_metadata(make_gateway):
    """loki-logger-handler (maintained, gzip by default) adds keys of its own to each stream
    object (`message_in_json_format`, `loki_metadata`): they are ignored. Auth as the shipper
    guide shows it: a Bearer header among the handler's own headers."""
    gw = make_gateway(API_KEYS=f"shop={KEY}")
    handler = LokiLoggerHandler(
        url=f"http://127.0.0.1:{gw.port}{PUSH}", labels={"application": "shop", "env": "test"},
        label_keys={"tenant"}, timeout=0.2, enable_structured_loki_metadata=True,
        additional_headers={"Authorization": f"Bearer {KEY}", "X-Scope-OrgID": "tenant-1"},
    )
    logger = _logger("loki-handler-test", handler)
    try:
        for i in range(40):
            extra = {"tenant": f"t{i % 2}", "n": i}
            if i % 4 == 0:
                extra["loki_metadata"] = {"trace_id": f"trace-{i}"}
            logger.info("order %d placed", i, extra=extra)
        wait_for(lambda: len(stored(gw)) >= 40, what="40 log lines in the file sink")
    finally:
        logger.removeHandler(handler)
    assert not handler.error, "the handler saw an error answer"
    records = stored(gw)
    assert len(records) == 40
    by_n = {}
    for r in records:
        assert set(r) <= {"stream", "timestamp_ns", "line", "metadata"}, r
        line = json.loads(r["line"])  # the handler sends each record as a JSON line
        by_n[line["n"]] = r
        assert line["message"] == f"order {line['n']} placed"
        assert r["stream"] == {"application": "shop", "env": "test", "tenant": f"t{line['n'] % 2}"}
        assert abs(r["timestamp_ns"] - line["timestamp"] * 1e9) < 1e6  # record.created, to the ns
    assert sorted(by_n) == list(range(40))
    for n, r in by_n.items():
        if n % 4 == 0:
            assert r["metadata"] == {"trace_id": f"trace-{n}"}
        else:
            assert "metadata" not in r  # absent, not {}, when an entry has none


def test_python_logging_loki_both_paths_with_basic_auth(make_gateway):
    """python-logging-loki (the long-standing one): v1 JSON to /loki/api/v1/push, and its v0
    emitter's legacy JSON (label string, RFC 3339 times) to /api/prom/push; Basic auth, the key
    as password."""
    gw = make_gateway(API_KEYS=f"shipper={KEY}")
    errors: list[logging.LogRecord] = []

    class Handler(logging_loki.LokiHandler):
        def handleError(self, record):  # noqa: N802 - logging's name
            errors.append(record)

    v1 = Handler(url=f"http://127.0.0.1:{gw.port}{PUSH}", tags={"app": "v1"}, auth=("tenant", KEY), version="1")
    v0 = Handler(url=f"http://127.0.0.1:{gw.port}/api/prom/push", tags={"app": "v0"}, auth=("t", KEY), version="0")
    before = time.time_ns()
    for name, handler in (("plk-v1", v1), ("plk-v0", v0)):
        logger = _logger(name, handler)
        for i in range(5):
            logger.warning("line %d from %s", i, name)
        logger.removeHandler(handler)
    assert not errors, "a push was not answered 204"
    wait_for(lambda: len(stored(gw)) >= 10, what="10 lines")
    records = stored(gw)
    assert len(records) == 10
    lines = {r["line"]: r for r in records}
    for name, app in (("plk-v1", "v1"), ("plk-v0", "v0")):
        for i in range(5):
            r = lines[f"line {i} from {name}"]
            assert r["stream"] == {"app": app, "severity": "warning", "logger": name}
            assert before - 1_000_000 <= r["timestamp_ns"] <= time.time_ns()  # v0: microseconds, local zone
            assert "metadata" not in r
    # the same client with a wrong password is refused, and nothing more is stored
    wrong = Handler(url=f"http://127.0.0.1:{gw.port}{PUSH}", tags={"app": "bad"}, auth=("tenant", "nope"), version="1")
    logger = _logger("plk-wrong", wrong)
    logger.warning("never stored")
    logger.removeHandler(wrong)
    assert len(errors) == 1
    time.sleep(0.3)
    assert len(stored(gw)) == 10


def test_protobuf_snappy_push_is_stored_in_the_section_8_shape(make_gateway):
    gw = make_gateway()
    labels_a = '{job="varlogs", filename="/var/log/a.log"}'
    labels_b = '{job="api", note="quote \\" and \\\\ and \\u00e9"}'
    body = push_request({
        labels_a: [(1_700_000_000_000_000_001 + i, f"a line {i}", {}) for i in range(5)],
        labels_b: [(1_700_000_001_000_000_000, "with metadata", {"trace_id": "abc", "user": "u1"}),
                   (1_700_000_002_000_000_000, "héllo ✓", {})],
    })
    resp = gw.post(body, content_type="application/x-protobuf", path=PUSH)
    assert resp.status == 204, resp.body
    assert resp.body == b""
    # Content-Type absent: Loki reads snappy protobuf too; the legacy path takes the same protobuf
    resp = gw.post(push_request({'{job="bare"}': [(5, "no type", {})]}), content_type="", path=PUSH)
    assert resp.status == 204, resp.body
    resp = gw.post(push_request({'{job="legacy"}': [(4, "old path", {})]}), content_type="application/x-protobuf",
                   path="/api/prom/push")
    assert resp.status == 204, resp.body
    # Alloy's loki.write names the snappy it always uses: Content-Encoding: snappy
    resp = gw.post(push_request({'{job="alloy"}': [(3, "named snappy", {})]}), content_type="application/x-protobuf",
                   path=PUSH, headers={"Content-Encoding": "snappy"})
    assert resp.status == 204, resp.body
    # ... which is no coding of a JSON body: that is refused as the snappy bytes it then is
    resp = gw.post(bytes(cramjam.snappy.compress_raw(b'{"streams":[]}')), path=PUSH, headers={"Content-Encoding": "snappy"})
    assert resp.status == 400 and b"JSON" in resp.body, resp.body
    wait_for(lambda: len(stored(gw)) >= 10, what="10 entries")
    records = sorted(stored(gw), key=lambda r: r["timestamp_ns"])
    assert len(records) == 10
    assert records.pop(0) == {"stream": {"job": "alloy"}, "timestamp_ns": 3, "line": "named snappy"}
    assert records.pop(0) == {"stream": {"job": "legacy"}, "timestamp_ns": 4, "line": "old path"}
    assert records[0] == {"stream": {"job": "bare"}, "timestamp_ns": 5, "line": "no type"}
    assert records[1:6] == [
        {"stream": {"job": "varlogs", "filename": "/var/log/a.log"}, "timestamp_ns": 1_700_000_000_000_000_001 + i,
         "line": f"a line {i}"} for i in range(5)
    ]
    assert records[6] == {"stream": {"job": "api", "note": 'quote " and \\ and é'},
                          "timestamp_ns": 1_700_000_001_000_000_000, "line": "with metadata",
                          "metadata": {"trace_id": "abc", "user": "u1"}}
    assert records[7]["line"] == "héllo ✓" and "metadata" not in records[7]


def test_json_push_with_structured_metadata_gzip_and_extra_keys(make_gateway):
    import gzip

    gw = make_gateway()
    body = {"streams": [
        {"stream": {"app": "web"}, "values": [["1000", "plain"], ["2000", "meta", {"pod": "p-1"}]],
         "handler_key": {"ignored": [1, 2]}},
        {"stream": {"app": "db"}, "values": [["3000", "{\"json\": \"line\"}"]]},
    ]}
    resp = gw.post(gzip.compress(json.dumps(body).encode()), path=PUSH, headers={"Content-Encoding": "gzip"})
    assert resp.status == 204, resp.body
    wait_for(lambda: len(stored(gw)) >= 3, what="3 entries")
    assert sorted(stored(gw), key=lambda r: r["timestamp_ns"]) == [
        {"stream": {"app": "web"}, "timestamp_ns": 1000, "line": "plain"},
        {"stream": {"app": "web"}, "timestamp_ns": 2000, "line": "meta", "metadata": {"pod": "p-1"}},
        {"stream": {"app": "db"}, "timestamp_ns": 3000, "line": '{"json": "line"}'},
    ]


@pytest.mark.parametrize(
    "body,content_type,status,says",
    [
        (b'{"streams":[{"stream":{"a":"b"},"values":[[1000,"x"]]}]}', "application/json", 400, "streams[0].values[0]: the timestamp"),
        (b'{"streams":[{"stream":{"a":"b"},"values":[["12x","x"]]}]}', "application/json", 400, "streams[0].values[0]"),
        (b'{"streams":[]}', "application/json", 400, "no entries"),
        (b"not snappy at all", "application/x-protobuf", 400, "snappy"),
        (b"{}", "text/plain", 415, "application/x-protobuf"),
    ],
)
def test_refusals_are_plain_text_naming_what_and_where(make_gateway, body, content_type, status, says):
    gw = make_gateway()
    resp = gw.post(body, content_type=content_type, path=PUSH)
    assert resp.status == status, resp.body
    assert resp.headers["content-type"].startswith("text/plain")
    assert says in resp.body.decode()
    time.sleep(0.2)
    assert stored(gw) == []


def test_bad_labels_in_protobuf_are_400_naming_the_stream(make_gateway):
    gw = make_gateway()
    resp = gw.post(push_request({'{job="ok"}': [(1, "x", {})], "job=nobraces": [(2, "y", {})]}),
                   content_type="application/x-protobuf", path=PUSH)
    assert resp.status == 400, resp.body
    assert b"streams[1].labels" in resp.body and b"nobraces" in resp.body


def test_auth_refuses_without_a_key_and_accepts_bearer_and_basic(make_gateway):
    gw = make_gateway(API_KEYS=f"promtail={KEY}")
    body = push_request({'{job="auth"}': [(1, "x", {})]})
    proto = "application/x-protobuf"
    basic = base64.b64encode(f"tenant-7:{KEY}".encode()).decode()
    wrong = base64.b64encode(b"tenant-7:guess").decode()
    for headers in ({}, {"Authorization": "Bearer guess"}, {"Authorization": f"Basic {wrong}"}):
        resp = gw.post(body, content_type=proto, path=PUSH, headers=headers)
        assert resp.status == 401, (headers, resp.body)
        assert resp.headers["content-type"].startswith("text/plain")
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Basic {basic}"},
                    {"Authorization": f"basic {basic}"}):
        assert gw.post(body, content_type=proto, path=PUSH, headers=headers).status == 204, headers
    wait_for(lambda: len(stored(gw)) >= 3, what="3 entries")
    time.sleep(0.2)
    assert len(stored(gw)) == 3


def test_full_ring_is_429_with_retry_after_and_nothing_refused_is_stored(make_gateway, tmp_path):
    stuck = StuckSink(tmp_path)
    gw = make_gateway(RING_BYTES=str(64 * 1024), SINK=stuck.url, BATCH_RECORDS="50")
    accepted: list[str] = []
    refused: list[str] = []
    for i in range(300):
        lines = [f"req{i}-line{j}" for j in range(20)]
        body = push_request({'{job="fill"}': [(1_000 + j, line, {}) for j, line in enumerate(lines)]})
        resp = gw.post(body, content_type="application/x-protobuf", path=PUSH)
        if resp.status == 204:
            accepted += lines
            continue
        assert resp.status == 429, resp.body
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.headers["content-type"].startswith("text/plain") and resp.body.strip()
        refused += lines
        if len(refused) >= 60:
            break
    assert accepted and refused, "a 64 KiB ring never filled"
    stuck.recover()  # the sink recovers: everything accepted arrives, nothing refused does
    wait_for(lambda: len(stuck.records()) >= len(accepted), what="delivery")
    time.sleep(0.3)
    lines = [r["line"] for r in stuck.records()]
    assert sorted(lines) == sorted(accepted)


def test_snappy_block_declaring_a_huge_length_is_413_without_decompressing(make_gateway):
    gw = make_gateway(MAX_BODY_BYTES=str(1 << 20))
    # a varint declaring 4 GiB - 1, then a few literal bytes: honest snappy would need 4 GiB
    lie = b"\xff\xff\xff\xff\x0f" + b"\x0chello"
    resp = gw.post(lie, content_type="application/x-protobuf", path=PUSH)
    assert resp.status == 413, resp.body
    assert b"declares 4294967295 bytes" in resp.body
    # an honest bomb: 2 MiB of one byte compresses to ~100 KiB and declares its 2 MiB
    bomb = bytes(cramjam.snappy.compress_raw(b"\x0a" * (2 << 20)))
    assert len(bomb) < 1 << 20
    resp = gw.post(bomb, content_type="application/x-protobuf", path=PUSH)
    assert resp.status == 413, resp.body
    assert gw.get("/healthz").status == 200
    assert gw.post(push_request({'{a="b"}': [(1, "after", {})]}), content_type="application/x-protobuf",
                   path=PUSH).status == 204


def test_ready_is_lokis_readiness_probe(make_gateway):
    gw = make_gateway()
    resp = gw.get("/ready")
    assert resp.status == 200 and resp.body == b"ready\n"
