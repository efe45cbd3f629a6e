"""`ringgate serve` as a real process: formats, errors, backpressure, ack=commit, status, metrics."""

from __future__ import annotations

import gzip
import http.client
import itertools
import json
import os
import pathlib
import select
import socket
import subprocess
import sys
import time

import pytest

from tests.fixtures import gateway as gateway_fixtures
from tests.sinkdata import StuckSink, assert_exactly_once, file_sink_records, wait_for


def records(tag: str, n: int, start: int = 0) -> list[dict]:
    return [{"id": f"{tag}-{i}", "n": i, "msg": "hello world", "nested": {"a": [1, 2, {"b": None}]}}
            for i in range(start, start + n)]


def stored(gw) -> list[dict]:
    return file_sink_records(gw.sink_dir)


def test_every_body_format_lands_semantically_equal(make_gateway):
    gw = make_gateway()
    sent: list[dict] = []
    bodies = [
        ("application/json", json.dumps(records("array", 3)).encode(), records("array", 3)),
        ("application/json", json.dumps({"records": records("env", 3)}).encode(), records("env", 3)),
        ("application/json", json.dumps({"events": records("ev", 2), "batch_id": "client-id", "priority": 5,
                                         "other": 1}).encode(), records("ev", 2)),
        ("application/x-ndjson", b"\n".join(json.dumps(r).encode() for r in records("nd", 3)) + b"\n\n",
         records("nd", 3)),
        ("application/jsonl; charset=utf-8", b"\r\n".join(json.dumps(r).encode() for r in records("jl", 2)),
         records("jl", 2)),
        ("text/csv", b"id,n\ncsv-0,0\ncsv-1,1\n", [{"id": "csv-0", "n": "0"}, {"id": "csv-1", "n": "1"}]),
    ]
    for content_type, body, expected in bodies:
        resp = gw.post(body, content_type=content_type)
        assert resp.status == 202, (content_type, resp.body)
        assert resp.json()["accepted"] == len(expected)
        assert resp.json()["batch_id"] != "client-id"
        sent += expected
    gz = gw.post(gzip.compress(json.dumps(records("gz", 4)).encode()), headers={"Content-Encoding": "gzip"})
    assert gz.status == 202
    sent += records("gz", 4)
    wait_for(lambda: len(stored(gw)) >= len(sent), what="records in the file sink")
    got = {r["id"]: r for r in stored(gw)}
    assert len(stored(gw)) == len(sent)
    for r in sent:
        assert got[r["id"]] == r
    # compact JSON, one record per line
    for path in gw.sink_dir.rglob("*.ndjson"):
        for line in path.read_bytes().splitlines():
            assert b": " not in line and b", " not in line


@pytest.mark.parametrize(
    "body,headers,status,code,detail_has",
    [
        (b"", {}, 400, "empty_body", ""),
        (b"[]", {}, 400, "empty_body", ""),
        (b'[{"a":1},', {}, 400, "invalid_json", "byte"),
        (b'[{"a":1}, 5]', {}, 400, "not_an_object", "1"),
        (b'[{"\xff":1}]', {}, 400, "invalid_utf8", "byte"),
        (b"[" + b'{"a":' * 70 + b"1" + b"}" * 70 + b"]", {}, 400, "too_deep", ""),
        (b"[" * 5000 + b"]" * 5000, {}, 400, "too_deep", ""),
        (b"not gzip", {"Content-Encoding": "gzip"}, 400, "bad_encoding", ""),
        (b"a,b\n1\n", {"Content-Type": "text/csv"}, 400, "bad_csv", "row"),
        (b"{}", {"Content-Type": "application/xml"}, 415, "unsupported_media_type", "xml"),
        (b"{}", {"Content-Encoding": "br"}, 415, "unsupported_encoding", "br"),
        (b'[{"big":"' + b"x" * 70_000 + b'"}]', {}, 413, "record_too_large", ""),
    ],
)
def test_client_errors_name_what_and_where(body, headers, status, code, detail_has, request):
    gw = request.getfixturevalue("shared_gateway")
    h = {"Content-Type": "application/json", **headers}
    before = gw.get("/readyz").json()["rings"][0]["producer_position"]
    resp = gw.post(body, content_type=h.pop("Content-Type"), headers=h)
    assert resp.status == status, resp.body
    assert gw.get("/readyz").json()["rings"][0]["producer_position"] == before  # nothing entered the ring
    err = resp.json()
    assert err["error"] == code
    assert detail_has in err["detail"]
    assert gw.get("/healthz").status == 200  # no process died of it


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory):
    """One gateway for the read-only error cases (RINGGATE_MAX_RECORD_BYTES small for the 413)."""
    yield from gateway_fixtures.shared_gateway(tmp_path_factory, "shared", MAX_RECORD_BYTES="65536",
                                               MAX_BODY_BYTES=str(1 << 20))


def test_oversized_declared_body_is_refused_before_reading(make_gateway):
    gw = make_gateway(MAX_BODY_BYTES=str(1024))
    resp = gw.post(json.dumps(records("big", 50)).encode())
    assert resp.status == 413
    assert resp.json()["error"] == "body_too_large"
    bomb = gzip.compress(b"[" + b'{"a":1},' * 50_000 + b'{"a":1}]')
    assert len(bomb) < 1024
    resp = gw.post(bomb, headers={"Content-Encoding": "gzip"})
    assert resp.status == 413 and resp.json()["error"] == "body_too_large"


def _send_chunked(port: int, chunks, limit_s: float = 20) -> tuple[int, int, dict]:
    """POST `chunks` with Transfer-Encoding: chunked on a raw socket, stopping as soon as the
    server answers; returns (bytes of the body sent, status, JSON body of the response)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=limit_s)
    sent = 0
    try:
        sock.sendall(b"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        deadline = time.monotonic() + limit_s
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0] or time.monotonic() > deadline:
                break  # the server answered (or gave up) before the body ended
            try:
                sock.sendall(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunk else b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return sent, response.status, json.loads(response.read())
    finally:
        sock.close()


def test_chunked_body_is_read_in_pieces_and_refused_at_the_limit(make_gateway):
    """Without a Content-Length nothing can be reserved up front: the worker must see the body as
    it arrives and stop at RINGGATE_MAX_BODY_BYTES, not hold whatever a client streams."""
    limit = 64 << 10
    gw = make_gateway(MAX_BODY_BYTES=str(limit))
    body = json.dumps(records("chunked", 40)).encode()
    sent, status, answer = _send_chunked(gw.port, [body[:100], body[100:1000], body[1000:], b""])
    assert sent == len(body) and status == 202, answer
    assert answer["accepted"] == 40

    piece = b'{"pad":"' + b"x" * 16_000 + b'"},'
    offered = 1 + 256 * len(piece)  # 4 MiB, 64x the limit, and never terminated
    sent, status, answer = _send_chunked(gw.port, itertools.chain([b"["], itertools.repeat(piece, 256)))
    assert status == 413 and answer["error"] == "body_too_large", answer
    assert sent < offered, "the 413 came only after the client had sent everything"
    assert gw.get("/healthz").status == 200
    assert gw.post(records("after", 2)).status == 202


def test_api_keys(make_gateway):
    gw = make_gateway(API_KEYS="k1, k2")
    assert gw.post(records("a", 1)).status == 401
    assert gw.post(records("a", 1), headers={"Authorization": "Bearer nope"}).json()["error"] == "unauthorized"
    assert gw.post(records("a", 1), headers={"Authorization": "Bearer k2"}).status == 202


def test_full_ring_is_429_then_everything_is_delivered_once_the_sink_recovers(make_gateway, tmp_path):
    stuck = StuckSink(tmp_path)
    gw = make_gateway(RING_BYTES=str(64 * 1024), SINK=stuck.url, BATCH_RECORDS="50")
    accepted: list[str] = []

    def fill(headers: dict[str, str] | None = None, tag: str = "r"):
        for i in range(200):
            batch = records(f"{tag}{i}", 20)
            resp = gw.post(batch, headers=headers)
            if resp.status != 202:
                assert resp.status == 429, resp.body
                assert int(resp.headers["retry-after"]) >= 1
                return resp
            accepted.extend(r["id"] for r in batch)
        raise AssertionError("a 64 KiB ring never filled")

    # requests without a priority (0) are refused first, once the ring is 75 % full (§8) ...
    assert fill().json()["error"] == "low_priority"
    used = gw.get("/readyz").json()["rings"][0]["used_bytes"]
    assert 0.75 * 64 * 1024 < used < 64 * 1024
    # ... while priority 5 and above may fill it
    assert fill({"X-Priority": "10"}, "p").json()["error"] == "ring_full"
    assert gw.get("/readyz").json()["rings"][0]["used_bytes"] > used
    ready = gw.get("/readyz")
    assert ready.status == 503 and any("sink" in r for r in ready.json()["reasons"]), ready.body
    assert gw.metrics()['ringgate_delivery_retries_total{sink="file"}'] > 0
    stuck.recover()  # the operator fixes the fault
    wait_for(lambda: gw.get("/readyz").status == 200, what="readyz after recovery")
    wait_for(lambda: len(stuck.records()) >= len(accepted), what="delivery")
    assert_exactly_once(accepted, stuck.records())


def test_ack_commit_and_batch_status(make_gateway):
    gw = make_gateway(FLUSH_INTERVAL_MS="300")
    resp = gw.post(records("ack", 5), path="/v1/ingest?ack=commit")
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["status"] == "committed" and body["accepted"] == 5
    assert {r["id"] for r in stored(gw)} >= {f"ack-{i}" for i in range(5)}
    assert gw.get(f"/v1/batches/{body['batch_id']}").json() == {"batch_id": body["batch_id"], "status": "committed"}
    pending = gw.post(records("pend", 1)).json()["batch_id"]
    status = gw.get(f"/v1/batches/{pending}").json()["status"]
    assert status in ("pending", "committed")
    wait_for(lambda: gw.get(f"/v1/batches/{pending}").json()["status"] == "committed")
    unknown = gw.get("/v1/batches/0-1-2-3")
    assert unknown.status == 404 and unknown.json()["status"] == "unknown"
    assert gw.get("/v1/batches/garbage").status == 404


def test_ack_commit_times_out_with_504_and_still_delivers(make_gateway, tmp_path):
    stuck = StuckSink(tmp_path)
    gw = make_gateway(SINK=stuck.url, ACK_TIMEOUT_MS="300")
    resp = gw.post(records("late", 3), path="/v1/ingest?ack=commit")
    assert resp.status == 504
    assert resp.json()["batch_id"]
    stuck.recover()
    wait_for(lambda: len(stuck.records()) == 3)


def test_readyz_lists_every_ring(make_gateway):
    gw = make_gateway(FLUSHERS="2")
    body = gw.get("/readyz").json()
    assert body["status"] == "ready" and body["reasons"] == []
    assert [r["ring"] for r in body["rings"]] == [0, 1]
    flushers = set(gw.children()["flusher"])
    assert {r["flusher_pid"] for r in body["rings"]} == flushers
    for r in body["rings"]:
        assert r["capacity_bytes"] == 1 << 20 and r["used_bytes"] >= 0 and r["committed_position"] >= 0


def test_metrics_count_what_was_sent(make_gateway):
    gw = make_gateway(WORKERS="2")
    for i in range(10):
        assert gw.post(records(f"m{i}", 7)).status == 202
    for _ in range(3):
        assert gw.post(b"[1]").status == 400
    wait_for(lambda: gw.metrics().get('ringgate_records_delivered_total{sink="file"}') == 70, what="delivery")
    m = gw.metrics()
    assert m['ringgate_requests_total{code="202"}'] == 10
    assert m['ringgate_requests_total{code="400"}'] == 3
    assert m['ringgate_records_accepted_total{client="anonymous"}'] == 70
    assert m['ringgate_records_rejected_total{reason="not_an_object"}'] == 3
    assert m['ringgate_batches_delivered_total{sink="file"}'] >= 1
    assert m['ringgate_ring_capacity_bytes{ring="0"}'] == 1 << 20
    assert m["ringgate_batch_delivery_seconds_count"] >= 1
    assert len(stored(gw)) == 70


@pytest.mark.parametrize(
    "var,value,rule",
    [
        ("RINGGATE_RING_BYTES", "100000", "power of two"),
        ("RINGGATE_RING_BYTES", "1000", "at least 65536"),
        ("RINGGATE_PORT", "http", "whole number"),
        ("RINGGATE_SINK", "ftp://x", "URL"),
        ("RINGGATE_MAX_RECORD_BYTES", str(1 << 30), "RINGGATE_RING_BYTES/8"),
        ("RINGGATE_LOG_FORMAT", "xml", "one of"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(var, value, rule, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGGATE_")}
    env[var] = value
    proc = subprocess.run([sys.executable, "-m", "ringgate", "serve"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and var in lines[0] and value in lines[0] and rule in lines[0], proc.stderr


def test_second_supervisor_for_the_same_instance_exits_1(make_gateway):
    gw = make_gateway()
    proc = subprocess.run([sys.executable, "-m", "ringgate", "serve"], env={**gw.env, "RINGGATE_PORT": "1"},
                          cwd=gw.cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert str(gw.proc.pid) in proc.stderr and gw.instance in proc.stderr


def test_sigterm_drains_and_unlinks_the_rings(make_gateway):
    gw = make_gateway(FLUSH_INTERVAL_MS="5000")  # records sit in the ring until the drain
    assert gw.post(records("d", 30)).status == 202
    assert gw.segments()
    assert gw.stop() == 0, gw.log()
    assert_exactly_once([f"d-{i}" for i in range(30)], stored(gw))
    assert gw.segments() == []
    assert not os.path.exists(f"/dev/shm/{gw.instance}.lock")


def test_many_concurrent_ack_commit_requests_all_answer_after_commit(make_gateway):
    from concurrent.futures import ThreadPoolExecutor

    gw = make_gateway(FLUSH_INTERVAL_MS="200", BATCH_RECORDS="25")
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: gw.post(records(f"cc{i}", 5), path="/v1/ingest?ack=commit"), range(32)))
    assert [a.status for a in answers] == [200] * 32
    stored_ids = {r["id"] for r in stored(gw)}
    assert all(f"cc{i}-{j}" in stored_ids for i in range(32) for j in range(5))


def test_an_address_in_use_exits_1_naming_it_and_creates_nothing(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RINGGATE_")}
        env.update(RINGGATE_PORT=str(port), RINGGATE_INSTANCE=f"rginuse{os.getpid()}")
        proc = subprocess.run([sys.executable, "-m", "ringgate", "serve"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"127.0.0.1:{port}" in proc.stderr and "in use" in proc.stderr
    assert not list(pathlib.Path("/dev/shm").glob(f"rginuse{os.getpid()}*"))  # no ring, no lock file

