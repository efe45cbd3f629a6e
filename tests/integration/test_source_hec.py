"""Splunk HEC against a real `ringgate serve`: the requests as Splunk's documentation writes them
(its curl examples, sent with the same headers: no Content-Type), a real client
(splunk-handler), indexer acknowledgment, auth, and a full ring."""

from __future__ import annotations

import base64
import gzip
import json
import logging
import uuid
from collections import Counter

import pytest

from tests.fixtures.gateway import request
from tests.sinkdata import StuckSink, file_sink_records, wait_for

TOKEN = "CF179AE4-3C99-45F5-A7CC-3284AA91CF67"  # Splunk's example token
SPLUNK = {"Authorization": f"Splunk {TOKEN}"}


def post(gw, path: str, body: bytes, headers: dict[str, str] | None = None):
    """As curl -d sends it, less curl's form Content-Type: HEC clients send none."""
    return request(gw.port, "POST", path, body=body, headers=headers if headers is not None else SPLUNK)


def stored(gw) -> list[dict]:
    return file_sink_records(gw.sink_dir)


@pytest.fixture
def hec(make_gateway):
    return make_gateway(API_KEYS=f"splunk={TOKEN}")


def test_concatenated_events_as_splunk_documents_them(hec):
    # "Basic example" and "Batching example" of Splunk's HEC examples page, byte for byte
    basic = b'{"event": "Hello, world!", "sourcetype": "manual"}'
    batching = (b'{"event": "Pony 1 has left the barn"}{"event": "Pony 2 has left the barn"}'
                b'{"event": "Pony 3 has left the barn", "nested": {"key1": "value1"}}')
    # the envelope with every field, newline-separated as Vector and the OTel exporter send it
    full = [{"time": 1426279439.123, "host": "localhost", "source": "random-data-generator",
             "sourcetype": "my_sample_data", "index": "main", "event": {"message": "full", "n": i},
             "fields": {"region": "eu", "i": str(i)}} for i in range(3)]
    answers = [
        post(hec, "/services/collector", basic),
        post(hec, "/services/collector", batching),
        post(hec, "/services/collector/event", "\n".join(json.dumps(e) for e in full).encode()),
        post(hec, "/services/collector/event/1.0", b'{"event": "one-oh"}\r\n  {"event": "two-oh"}  ',
             {**SPLUNK, "Content-Type": "text/plain"}),
    ]
    for resp in answers:
        assert resp.status == 200, resp.body
        assert resp.json() == {"text": "Success", "code": 0}
        assert resp.headers["content-type"] == "application/json"
    expected = [json.loads(basic), {"event": "Pony 1 has left the barn"}, {"event": "Pony 2 has left the barn"},
                {"event": "Pony 3 has left the barn", "nested": {"key1": "value1"}},
                *full, {"event": "one-oh"}, {"event": "two-oh"}]
    wait_for(lambda: len(stored(hec)) >= len(expected), what="delivery")
    got = stored(hec)
    assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, expected))  # each once, as sent


def test_raw_with_query_parameters_as_splunk_documents_them(hec):
    # "Raw example": channel and sourcetype in the query
    channel = "00872DC6-AC83-4EDE-8AFE-8413C3825C4C"
    one = post(hec, f"/services/collector/raw?channel={channel}&sourcetype=mydata", b"1, 2, 3... Hello, world!")
    assert one.status == 200, one.body
    assert one.json()["text"] == "Success" and isinstance(one.json()["ackId"], int)
    # "Raw example with batching": access-log lines, sourcetype and index in the query
    lines = [
        '127.0.0.1 - admin [28/Sep/2016:09:05:26.875 -0700] "GET /servicesNS/admin/launcher/data/ui/views HTTP/1.0" 200 126721',
        '127.0.0.1 - admin [28/Sep/2016:09:05:26.917 -0700] "GET /servicesNS/admin/launcher/data/ui/nav HTTP/1.0" 200 4367',
        '127.0.0.1 - admin [28/Sep/2016:09:05:26.941 -0700] "GET /services/apps/local?search=disabled%3Dfalse HTTP/1.0" 200 21',
    ]
    many = post(hec, f"/services/collector/raw/1.0?channel={channel}&sourcetype=splunkd_access&index=main&host=web-1",
                ("\r\n".join(lines) + "\r\n\r\n").encode())
    assert many.status == 200, many.body
    expected = [{"event": "1, 2, 3... Hello, world!", "sourcetype": "mydata"}]
    expected += [{"event": line, "host": "web-1", "sourcetype": "splunkd_access", "index": "main"} for line in lines]
    wait_for(lambda: len(stored(hec)) >= len(expected), what="delivery")
    assert sorted(map(json.dumps, stored(hec))) == sorted(map(json.dumps, expected))


def _ack(gw, channel: str, ids: list[int], headers=None):
    return post(gw, "/services/collector/ack", json.dumps({"acks": ids}).encode(),
                {**SPLUNK, "X-Splunk-Request-Channel": channel, **(headers or {})})


def test_channel_and_ack_round_trip_follows_the_sink(make_gateway, tmp_path):
    stuck = StuckSink(tmp_path)
    gw = make_gateway(API_KEYS=TOKEN, SINK=stuck.url)
    channel = str(uuid.uuid4())
    ids = []
    for i in range(3):
        resp = post(gw, "/services/collector/event", b'{"event": {"n": %d}}' % i,
                    {**SPLUNK, "X-Splunk-Request-Channel": channel})
        assert resp.status == 200, resp.body
        ids.append(resp.json()["ackId"])
    assert all(isinstance(i, int) and 0 <= i < 1 << 63 for i in ids) and len(set(ids)) == 3
    never = ids[-1] + (1 << 30)  # an id no batch has: past the producer position
    # the sink refuses: nothing is committed, every ack stays false
    for _ in range(5):
        answer = _ack(gw, channel, [*ids, never])
        assert answer.status == 200, answer.body
        assert answer.json() == {"acks": {str(i): False for i in [*ids, never]}}
    stuck.recover()  # the sink recovers: the acks turn true, as Vector's and Firehose's polls expect
    wait_for(lambda: all(_ack(gw, channel, ids).json()["acks"].values()), what="acks true")
    assert _ack(gw, channel, [never]).json() == {"acks": {str(never): False}}
    assert sorted(r["event"]["n"] for r in stuck.records()) == [0, 1, 2]
    # the channel as a query parameter, as Splunk's raw example passes it
    resp = post(gw, f"/services/collector/event?channel={channel}", b'{"event": "q"}')
    assert isinstance(resp.json()["ackId"], int)
    missing = post(gw, "/services/collector/ack", b'{"acks": [1]}')
    assert missing.status == 400 and missing.json()["code"] == 10, missing.body
    bad = _ack(gw, channel, [], {"Content-Type": "application/json"})
    assert bad.status == 200 and bad.json() == {"acks": {}}
    garbage = post(gw, "/services/collector/ack", b'{"acks": "x"}', {**SPLUNK, "X-Splunk-Request-Channel": channel})
    assert garbage.status == 400 and garbage.json()["code"] == 6


def test_auth_answers_as_hec_does(hec):
    body = b'{"event": "auth"}'
    none = post(hec, "/services/collector/event", body, {})
    assert (none.status, none.json()["code"], none.json()["text"]) == (401, 2, "Token is required")
    for malformed in (TOKEN, f"Token {TOKEN}", "Splunk", "Splunk  "):
        resp = post(hec, "/services/collector/event", body, {"Authorization": malformed})
        assert (resp.status, resp.json()["code"], resp.json()["text"]) == (401, 3, "Invalid authorization"), malformed
    wrong = post(hec, "/services/collector/event", body, {"Authorization": "Splunk 00000000-0000"})
    assert (wrong.status, wrong.json()["code"], wrong.json()["text"]) == (403, 4, "Invalid token")
    assert post(hec, "/services/collector/ack", b'{"acks":[1]}', {"X-Splunk-Request-Channel": "c"}).status == 401
    assert post(hec, "/services/collector/raw", b"x", {"Authorization": "Splunk nope"}).status == 403
    # the token in Splunk's scheme (any case), as a Bearer key, and as Basic's password (curl -u x:<token>)
    basic = base64.b64encode(f"x:{TOKEN}".encode()).decode()
    for auth in (f"Splunk {TOKEN}", f"splunk {TOKEN}", f"Bearer {TOKEN}", f"Basic {basic}"):
        assert post(hec, "/services/collector/event", body, {"Authorization": auth}).status == 200, auth
    # health answers without a key (Vector's check asks /health/1.0)
    for path in ("/services/collector/health", "/services/collector/health/1.0"):
        resp = request(hec.port, "GET", path)
        assert resp.status == 200 and resp.json() == {"text": "HEC is healthy", "code": 17}
    wait_for(lambda: len(stored(hec)) == 4, what="the four accepted requests")
    assert all(r == {"event": "auth"} for r in stored(hec))


@pytest.mark.parametrize(("body", "status", "code", "event_number"), [
    (b'{"event": "a"}{"sourcetype": "no-event"}', 400, 12, 1),
    (b'{"event": "a"}{"event": null}', 400, 12, 1),
    (b'{"event": ""}', 400, 13, 0),
    (b'{"event": "a"} {"event": "b"', 400, 6, 1),
    (b'{"event": "a"},{"event": "b"}', 400, 6, 1),
    (b'["not", "an", "object"]', 400, 6, 0),
    (b"\n \n", 400, 5, None),
    (b"", 400, 5, None),
])
def test_bad_events_answer_hec_codes_and_store_nothing(hec, body, status, code, event_number):
    resp = post(hec, "/services/collector/event", body)
    assert resp.status == status, resp.body
    answer = resp.json()
    assert answer["code"] == code and answer["text"] and answer["detail"], answer
    assert answer.get("invalid-event-number") == event_number
    good = post(hec, "/services/collector/event", b'{"event": "after"}')
    assert good.status == 200
    wait_for(lambda: stored(hec), what="the good request")
    assert stored(hec) == [{"event": "after"}]


def test_gzip_bodies_are_taken(hec):
    body = gzip.compress(b"".join(b'{"event": {"i": %d}}' % i for i in range(500)))
    resp = post(hec, "/services/collector/event", body, {**SPLUNK, "Content-Encoding": "gzip"})
    assert resp.status == 200, resp.body
    wait_for(lambda: len(stored(hec)) >= 500, what="delivery")
    assert sorted(r["event"]["i"] for r in stored(hec)) == list(range(500))


def test_full_ring_is_503_code_9_with_retry_after_and_nothing_refused_is_stored(make_gateway, tmp_path):
    stuck = StuckSink(tmp_path)
    gw = make_gateway(RING_BYTES=str(64 * 1024), SINK=stuck.url, BATCH_RECORDS="50")
    sent = Counter()
    accepted: list[str] = []
    refusals = []

    def fill(tag: str, headers: dict[str, str]):
        for i in range(200):
            ids = [f"{tag}{i}-{j}" for j in range(20)]
            body = b"".join(json.dumps({"event": {"id": x}, "sourcetype": "fill"}).encode() for x in ids)
            resp = post(gw, "/services/collector/event", body, headers)
            sent.update(ids)
            if resp.status != 200:
                refusals.append(resp)
                return
            accepted.extend(ids)
        raise AssertionError("a 64 KiB ring never filled")

    fill("low", {})  # 429 low_priority at 75 % in ringgate's terms ...
    fill("high", {"X-Priority": "10"})  # ... and ring_full for those that may fill it
    for resp in refusals:
        assert resp.status == 503, resp.body
        assert {k: resp.json()[k] for k in ("text", "code")} == {"text": "Server is busy", "code": 9}
        assert int(resp.headers["retry-after"]) >= 1
    health = request(gw.port, "GET", "/services/collector/health")
    assert health.status == 503 and health.json()["code"] == 18
    stuck.recover()
    wait_for(lambda: len(stuck.records()) >= len(accepted), what="delivery")
    got = Counter(r["event"]["id"] for r in stuck.records())
    assert set(got) == set(accepted) and set(got.values()) == {1}  # every 200 once, nothing refused


def test_splunk_handler_a_real_client(make_gateway):
    """splunk-handler (PyPI), a logging handler that batches events into one /services/collector/event
    request of concatenated objects with `Authorization: Splunk <token>`."""
    import splunk_handler  # the test extra has it: a missing install fails here, it does not skip
    gw = make_gateway(API_KEYS=TOKEN)
    handler = splunk_handler.SplunkHandler(
        host="127.0.0.1", port=gw.port, token=TOKEN, index="main", protocol="http", flush_interval=0.2,
        hostname="test-host", source="pytest", sourcetype="json", retry_count=0, timeout=10,
    )
    logger = logging.getLogger("hec-real-client")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        for i in range(50):
            logger.info("message %d", i)
        handler.wait_until_empty()
        wait_for(lambda: len(stored(gw)) >= 50, what="the handler's events")
    finally:
        logger.removeHandler(handler)
        handler.close()
    got = stored(gw)
    assert sorted(r["event"] for r in got) == sorted(f"message {i}" for i in range(50))
    assert all(r["host"] == "test-host" and r["index"] == "main" and r["source"] == "pytest"
               and r["sourcetype"] == "json" and isinstance(r["time"], float) for r in got)
