"""Refusals made before a body is read or decoded (issue 12), against a running gateway.

Under overload most requests are refused; each refusal that waits for the body and decodes it
takes CPU the sink needs on the same cores. The gateway here has a 64 KiB ring and a sink that
cannot be written, so the ring fills and stays full. The requests that must be refused early
send their headers and none of their body: an answer at all proves the gateway did not wait
for it (with the body timeout at 30 s and the client's read timeout at 10 s, a gateway that
waited would time the client out).
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.integration.test_gateway import records
from tests.sinkdata import StuckSink


def fill(gw, headers: dict[str, str] | None = None, tag: str = "r") -> str:
    """POST 20-record bodies until one is refused; its error code."""
    for i in range(400):
        resp = gw.post(records(f"{tag}{i}", 20), headers=headers)
        if resp.status != 202:
            assert resp.status == 429, resp.body
            return resp.json()["error"]
    raise AssertionError("a 64 KiB ring never filled")


def headers_only(gw, path: str, content_type: str, length: int, extra: str = "") -> bytes:
    """Send a POST's headers declaring `length` body bytes and none of the body; the answer's head."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)  # socket.timeout here: the gateway waited for the body
            if not chunk:
                break
            answer += chunk
    return answer


@pytest.fixture
def crowded(make_gateway, tmp_path):
    stuck = StuckSink(tmp_path)
    gw = make_gateway(RING_BYTES=str(64 * 1024), SINK=stuck.url, BATCH_RECORDS="50",
                      BODY_TIMEOUT_S="30")
    assert fill(gw) == "low_priority"  # the ring is more than 75 % full
    return gw


@pytest.mark.parametrize("path, content_type", [
    ("/v1/logs", "application/x-protobuf"),  # OTLP
    ("/_bulk", "application/x-ndjson"),  # Elasticsearch
    ("/loki/api/v1/push", "application/json"),  # Loki
])
def test_a_crowded_gateway_refuses_low_priority_before_the_body(crowded, path, content_type):
    """These protocols' bodies cannot name a priority: it is 0, known from the headers alone."""
    head = headers_only(crowded, path, content_type, 5000)
    assert head.startswith(b"HTTP/1.1 429"), head


def test_a_body_that_cannot_name_a_priority_is_refused_without_decoding_it(crowded):
    """/v1/ingest's JSON envelope may name a priority, so the body is read; one that holds
    neither the key nor an escape is refused without a decode: even a malformed one gets the
    429 (its 400 comes once there is room)."""
    resp = crowded.post(b'{"records": [{"a": 1}, oops]}')
    assert resp.status == 429 and resp.json()["error"] == "low_priority", resp.body
    # a body naming its priority is decoded and that priority decides, however the key is written
    low = crowded.post({"records": [{"id": "p2"}], "priority": 2}, headers={"X-Priority": "10"})
    assert low.status == 429 and low.json()["error"] == "low_priority", low.body  # the body's wins
    assert crowded.post({"records": [{"id": "p9"}], "priority": 9}).status == 202
    escaped = b'{"records": [{"id": "p9e"}], "\\u0070riority": 9}'
    resp = crowded.post(escaped)
    assert resp.status == 202, resp.body


def test_a_declared_length_no_ring_has_room_for_is_refused_before_the_body(crowded):
    assert fill(crowded, {"X-Priority": "10"}, "p") == "ring_full"  # full to the last request
    head = headers_only(crowded, "/v1/ingest", "application/json", 60_000, "X-Priority: 10\r\n")
    assert head.startswith(b"HTTP/1.1 429"), head
    # a small body with room for it is still read and taken, or refused by the claim
    resp = crowded.post(records("small", 1), headers={"X-Priority": "10"})
    assert resp.status in (202, 429), resp.body
    assert crowded.get("/healthz").status == 200


def test_an_unread_body_is_drained_so_the_connection_serves_the_next_request(crowded):
    """The refused request's body is never read by the app: the HTTP server drains it, and the
    client's next request on the same connection is answered."""
    body = b'{"records": [' + b",".join([b'{"n": 1}'] * 1000) + b"]}"
    one = (b"POST /v1/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
    with socket.create_connection(("127.0.0.1", crowded.port), timeout=10) as s:
        s.sendall(one + one)
        received = b""
        while received.count(b"HTTP/1.1 429") < 2:
            chunk = s.recv(65536)
            assert chunk, received[-200:]  # closed before the second answer
            received += chunk


def test_a_retry_later_answer_is_held_for_the_refusal_delay(make_gateway, tmp_path):
    """A client resending every 429 at once asks at most once per RINGGATE_REFUSAL_DELAY_MS per
    connection."""
    stuck = StuckSink(tmp_path)
    gw = make_gateway(RING_BYTES=str(64 * 1024), SINK=stuck.url, REFUSAL_DELAY_MS="1000")
    assert fill(gw) == "low_priority"
    started = time.monotonic()
    resp = gw.post(records("late", 1), path="/v1/logs", content_type="application/json")
    assert resp.status == 429 and time.monotonic() - started >= 1.0, resp.body
