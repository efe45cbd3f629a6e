"""§11 operating: request ids on every answer and in the log lines about the request; the
client's name in the refusal lines and in ringgate_records_accepted_total{client}."""

from __future__ import annotations

import json
import re

from tests.sinkdata import wait_for

KEY = "s3cr3t-key-of-ci"


def _log_entries(gw) -> list[dict]:
    entries = []
    for line in gw.log().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def test_request_ids_are_echoed_or_made_on_every_answer_and_carried_by_the_log(make_gateway):
    gw = make_gateway(LOG_FORMAT="json", API_KEYS=f"ci={KEY}")
    auth = {"Authorization": f"Bearer {KEY}"}
    ok = gw.post([{"a": 1}], headers={**auth, "X-Request-ID": "trace-202-abc"})
    assert ok.status == 202 and ok.headers["x-request-id"] == "trace-202-abc"
    bad = gw.post(b"[1]", headers=auth)  # no id sent: one is made
    assert bad.status == 400
    made = bad.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", made)
    refused = gw.post([{"a": 1}], headers={"Authorization": "Bearer wrong-key", "X-Request-ID": "trace-401"})
    assert refused.status == 401 and refused.headers["x-request-id"] == "trace-401"
    # an id that cannot go into a log line as it is (too long, a space) is replaced
    long = gw.post([{"a": 1}], headers={**auth, "X-Request-ID": "x" * 129})
    spaced = gw.post([{"a": 1}], headers={**auth, "X-Request-ID": "a b"})
    for answer in (long, spaced):
        assert answer.status == 202 and re.fullmatch(r"[0-9a-f]{16}", answer.headers["x-request-id"])
    # every route answers with one, status endpoints and unknown paths too
    ids = {gw.get(path).headers["x-request-id"] for path in ("/healthz", "/readyz", "/metrics", "/nope")}
    assert len(ids) == 4 and made not in ids

    def refusal_lines():
        return [e for e in _log_entries(gw) if e["msg"].startswith("refused ")]

    wait_for(lambda: len(refusal_lines()) >= 2, timeout=10)
    lines = {e["request_id"]: e for e in refusal_lines()}
    assert lines[made]["level"] == "info" and "refused 400 not_an_object client=ci" in lines[made]["msg"]
    assert "refused 401 unauthorized client=-" in lines["trace-401"]["msg"]
    assert "trace-202-abc" not in lines  # no line per 202
    assert KEY not in gw.log() and "wrong-key" not in gw.log()


def test_records_accepted_are_counted_per_key_name_across_workers(make_gateway, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("batch=k-batch-1\nidle=k-idle-2\n")
    gw = make_gateway(WORKERS="2", API_KEYS=f"ci={KEY}", API_KEYS_FILE=str(keys))
    for i in range(8):  # over two workers
        assert gw.post([{"i": i}] * 3, headers={"Authorization": f"Bearer {KEY}"}).status == 202
    assert gw.post([{"b": 1}], headers={"Authorization": "Bearer k-batch-1"}).status == 202
    assert gw.post([{"b": 1}], headers={"Authorization": "Bearer nope"}).status == 401
    clients = {k: v for k, v in gw.metrics().items() if k.startswith("ringgate_records_accepted_total")}
    assert clients == {
        'ringgate_records_accepted_total{client="ci"}': 24,
        'ringgate_records_accepted_total{client="batch"}': 1,
        'ringgate_records_accepted_total{client="idle"}': 0,  # known at start: there before it sends
    }
