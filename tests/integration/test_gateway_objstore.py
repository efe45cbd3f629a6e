"""`ringgate serve` as a real process delivering to an S3-protocol server (moto, loopback).

Records to objects through HTTP under the documented keys, compressed or not; a batch larger than
a part as a multipart upload; the server unreachable mid-load; SIGKILL of the flusher mid-upload.
Every load loop is bounded in count and time.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import time
from collections import defaultdict

import pytest
import zstandard

from ringgate.ring import layout as L
from tests.faults.test_crashes import Load
from tests.sinkdata import assert_exactly_once, decode_object, wait_for

PREFIX = "events/in"
SUFFIXES = {"none": ".ndjson", "gzip": ".ndjson.gz", "zstd": ".ndjson.zst"}
CONTENT_TYPES = {"none": "application/x-ndjson", "gzip": "application/gzip", "zstd": "application/zstd"}
KEY = re.compile(
    r"^(?P<prefix>.+)/dt=(?P<dt>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})/"
    r"(?P<instance>[A-Za-z0-9_.]+)-(?P<ring>\d+)-(?P<epoch>\d+)-(?P<first>\d+)-(?P<last>\d+)"
    r"(?P<suffix>\.ndjson(?:\.gz|\.zst)?)$"
)


def s3_gateway(make_gateway, s3_server, bucket: str, endpoint: str | None = None, **overrides):
    env = dict(s3_server.env)
    if endpoint is not None:
        env["AWS_ENDPOINT_URL"] = endpoint
    return make_gateway(SINK=f"s3://{bucket}/{PREFIX}", **env, **overrides)


def parse_key(key: str) -> dict:
    match = KEY.match(key)
    assert match, f"object key not in the documented shape: {key!r}"
    parts = match.groupdict()
    for name in ("ring", "epoch", "first", "last"):
        parts[name] = int(parts[name])
    return parts


def align8(n: int) -> int:
    return (n + 7) & ~7


def stored_objects(s3_server, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket (not only under the prefix: nothing may land elsewhere)."""
    return s3_server.objects(bucket)


def all_records(objects: dict[str, bytes]) -> list[dict]:
    return [r for key, data in objects.items() for r in decode_object(key, data)]


def delivered_everything(gw) -> bool:
    rings = gw.get("/readyz", timeout=5).json()["rings"]
    return all(r["committed_position"] >= r["producer_position"] for r in rings)


def assert_ranges_disjoint(keys: list[str]) -> None:
    """One object per batch range: no two objects of a ring and epoch whose [first, last] overlap."""
    by_ring: dict[tuple[str, int, int], list[tuple[int, int, str]]] = defaultdict(list)
    for key in keys:
        k = parse_key(key)
        assert k["first"] <= k["last"], key
        by_ring[(k["instance"], k["ring"], k["epoch"])].append((k["first"], k["last"], key))
    for ranges in by_ring.values():
        ranges.sort()
        for (_, last, key), (first, _, other) in zip(ranges, ranges[1:], strict=False):
            assert last < first, f"overlapping batch ranges: {key} and {other}"


# -- 1. records to objects through HTTP ------------------------------------------------------------


def hour_of(t: float) -> tuple[str, str]:
    g = time.gmtime(t)
    return f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d}", f"{g.tm_hour:02d}"


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_records_to_objects_under_documented_keys(make_gateway, s3_server, s3_bucket, compression):
    gw = s3_gateway(make_gateway, s3_server, s3_bucket, OBJECT_COMPRESSION=compression)
    requests = []  # (batch_id parts, ids in order, posted between t0 and t1)
    for i in range(8):
        ids = [f"r{i}-{j}" for j in range(3 + i)]
        recs = [{"id": x, "n": j, "msg": "héllo wörld", "nested": {"a": [1, None]}} for j, x in enumerate(ids)]
        if i % 3 == 0:
            body, ctype = json.dumps(recs).encode(), "application/json"
        elif i % 3 == 1:
            body, ctype = json.dumps({"records": recs}).encode(), "application/json"
        else:
            body, ctype = b"\n".join(json.dumps(r).encode() for r in recs) + b"\n", "application/x-ndjson"
        t0 = time.time()
        resp = gw.post(body, content_type=ctype)
        t1 = time.time()
        assert resp.status == 202, resp.body
        assert resp.json()["accepted"] == len(ids)
        ring, epoch, first, next_ = (int(p) for p in resp.json()["batch_id"].split("-"))
        requests.append({"ring": ring, "epoch": epoch, "first": first, "next": next_, "ids": ids,
                         "hours": {hour_of(t0), hour_of(t1)}})
        if i % 3 == 2:
            time.sleep(0.2)  # past the flush interval: several objects
    acked = [x for r in requests for x in r["ids"]]
    wait_for(lambda: delivered_everything(gw), timeout=20, what="delivery to S3")

    objects = stored_objects(s3_server, s3_bucket)
    assert len(objects) >= 2
    request_of = {x: r for r in requests for x in r["ids"]}
    stored: list[dict] = []
    for key, data in objects.items():
        k = parse_key(key)
        assert k["prefix"] == PREFIX and k["instance"] == gw.instance
        assert k["suffix"] == SUFFIXES[compression]
        head = s3_server.client.head_object(Bucket=s3_bucket, Key=key)
        assert head["ContentType"] == CONTENT_TYPES[compression]
        if compression == "gzip":
            assert data[:2] == b"\x1f\x8b"
            raw = gzip.decompress(data)
        elif compression == "zstd":
            raw = zstandard.ZstdDecompressor().decompress(data)  # content size is in the frame header
        else:
            raw = data
        lines = raw.split(b"\n")
        assert lines[-1] == b"" and all(lines[:-1]), "NDJSON: one record per line, newline-terminated"
        records = [json.loads(line) for line in lines[:-1]]
        stored += records

        # Positions of the object's records, rebuilt from the batch_ids the gateway returned: a
        # request's records are consecutive in the ring, each align8(16-byte header + payload).
        positions = []
        position = None
        for line, record in zip(lines, records, strict=False):
            req = request_of[record["id"]]
            assert (req["ring"], req["epoch"]) == (k["ring"], k["epoch"]), key
            if record["id"] == req["ids"][0]:
                position = req["first"]
            else:
                assert position is not None, f"{key} starts inside a request"
            positions.append(position)
            position += align8(L.RECORD_HEADER_LENGTH + len(line))
            if record["id"] == req["ids"][-1]:
                assert position == req["next"], f"request {req['ids'][0]}: records do not fill its batch_id range"
        assert (k["first"], k["last"]) == (positions[0], positions[-1]), key
        assert (k["dt"], k["hour"]) in request_of[records[0]["id"]]["hours"], key
    assert_exactly_once(acked, stored)
    assert len(stored) == len(acked)
    assert {r["id"]: r["n"] for r in stored} == {x: j for r in requests for j, x in enumerate(r["ids"])}
    assert all(r["msg"] == "héllo wörld" for r in stored)
    assert_ranges_disjoint(list(objects))
    assert gw.stop() == 0


# -- 2. a batch larger than one part ---------------------------------------------------------------


def test_batch_larger_than_a_part_goes_up_in_parts(make_gateway, s3_server, s3_bucket):
    gw = s3_gateway(
        make_gateway, s3_server, s3_bucket,
        OBJECT_PART_BYTES=str(5 << 20), BATCH_BYTES=str(32 << 20), BATCH_RECORDS="1000000",
        FLUSH_INTERVAL_MS="1500", RING_BYTES=str(64 << 20), MAX_BODY_BYTES=str(8 << 20),
    )
    # One request: a flusher that finds a claim still being written flushes what it has at once
    # (flusher.step: "don't wait behind it"), so two large requests could land as two batches.
    acked = [f"big-{j}" for j in range(6600)]
    body = json.dumps([{"id": x, "pad": "y" * 1000} for x in acked]).encode()
    assert len(body) > 6 << 20
    resp = gw.post(body)
    assert resp.status == 202, resp.body
    wait_for(lambda: delivered_everything(gw), timeout=20, what="delivery to S3")

    objects = stored_objects(s3_server, s3_bucket)
    assert len(objects) == 1, sorted(objects)
    (key, data), = objects.items()
    assert len(data) > 5 << 20
    parse_key(key)
    etag = s3_server.client.head_object(Bucket=s3_bucket, Key=key)["ETag"].strip('"')
    match = re.fullmatch(r"[0-9a-f]{32}-(\d+)", etag)
    assert match and int(match.group(1)) >= 2, f"not a multipart object: ETag {etag}"
    assert s3_server.multipart_uploads(s3_bucket) == []
    assert_exactly_once(acked, decode_object(key, data))
    assert gw.stop() == 0


# -- 3. the server unreachable mid-load ------------------------------------------------------------


def retries(gw) -> float:
    return gw.metrics().get('ringgate_delivery_retries_total{sink="s3"}', 0.0)


@pytest.mark.slow
def test_server_unreachable_mid_load_then_back(make_gateway, s3_server, s3_bucket, tcp_proxy):
    proxy = tcp_proxy("127.0.0.1", s3_server.port)
    gw = s3_gateway(make_gateway, s3_server, s3_bucket, endpoint=f"http://127.0.0.1:{proxy.port}",
                    BATCH_RECORDS="500")
    with Load(gw.port, clients=4, max_requests=2500, max_seconds=25) as load:
        load.wait_acked(1000)
        before = retries(gw)
        proxy.cut()
        cut_at = time.monotonic()
        try:
            wait_for(lambda: retries(gw) >= before + 3, timeout=10, what="delivery retries")
            ready = gw.get("/readyz")
            assert ready.status == 503, ready.body
            reasons = ready.json()["reasons"]
            assert any("sink failing" in r and "s3" in r for r in reasons), reasons
            time.sleep(max(0.0, 3 - (time.monotonic() - cut_at)))
        finally:
            proxy.restore()
        n = len(load.acked)
        load.wait_acked(n + 1000)
    assert load.acked
    wait_for(lambda: delivered_everything(gw), timeout=30, what="delivery to catch up")
    wait_for(lambda: gw.get("/readyz").status == 200, timeout=10, what="readyz after the outage")
    assert retries(gw) >= before + 3

    objects = stored_objects(s3_server, s3_bucket)
    assert_exactly_once(load.acked, all_records(objects))
    assert_ranges_disjoint(list(objects))
    assert gw.stop() == 0


# -- 4. SIGKILL of the flusher mid-upload ----------------------------------------------------------


def ring_words(gw, *offsets: int) -> list[int]:
    fd = os.open(f"/dev/shm/{gw.instance}-ring-0", os.O_RDONLY)
    try:
        return [int.from_bytes(os.pread(fd, 8, offset), "little") for offset in offsets]
    finally:
        os.close(fd)


def delivering(gw) -> bool:
    """The ring header says a batch is in flight: recorded and not yet released."""
    consumer, first, next_ = ring_words(gw, L.CONSUMER_POSITION_OFFSET, L.INFLIGHT_FIRST_OFFSET,
                                        L.INFLIGHT_NEXT_OFFSET)
    return next_ > first == consumer


@pytest.mark.slow
def test_sigkill_of_the_flusher_mid_upload_loses_nothing_and_doubles_nothing(make_gateway, s3_server, s3_bucket):
    gw = s3_gateway(make_gateway, s3_server, s3_bucket, BATCH_RECORDS="200", FLUSH_INTERVAL_MS="20")
    with Load(gw.port, clients=4, max_requests=3000, max_seconds=25) as load:
        for _ in range(3):
            load.wait_acked(len(load.acked) + 800)
            flusher = gw.children()["flusher"][0]
            # kill while a batch is in flight (recorded in the ring header, not yet released)
            deadline = time.monotonic() + 5
            while not delivering(gw) and time.monotonic() < deadline:
                time.sleep(0.0005)
            (killed_next,) = ring_words(gw, L.INFLIGHT_NEXT_OFFSET)
            os.kill(flusher, signal.SIGKILL)
            wait_for(lambda f=flusher: (pids := gw.children()["flusher"]) != [] and pids[0] != f,
                     timeout=15, what="a new flusher")
            # the in-flight range of the killed flusher stays recorded until its replacement has
            # replayed it: wait for that, so the next kill lands on a real delivery
            wait_for(lambda n=killed_next: ring_words(gw, L.CONSUMER_POSITION_OFFSET)[0] >= n,
                     timeout=15, what="the replay of the killed flusher's batch")
        load.wait_acked(len(load.acked) + 800)
    assert load.acked
    wait_for(lambda: delivered_everything(gw), timeout=30, what="delivery to catch up")

    replays = [int(m) for m in re.findall(r"replaying in-flight batch \[\d+, \d+\) of (\d+) records", gw.log())]
    assert any(replays), f"no kill landed during a delivery: {replays}"
    objects = stored_objects(s3_server, s3_bucket)
    assert_exactly_once(load.acked, all_records(objects))
    assert_ranges_disjoint(list(objects))
    assert gw.stop() == 0
