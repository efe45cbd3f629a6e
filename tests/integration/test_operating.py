"""§11 operating: request ids on every answer and in the log lines about the request; the
client's name in the refusal lines and in ringgate_records_accepted_total{client}."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

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


def _replace(path, text: str) -> None:
    """As an operator's tool writes it: a new file renamed over the old."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def _accepted(gw, key: str, n: int = 12) -> set[int]:
    """Statuses of n requests with `key`, each on a new connection (so over every worker)."""
    return {gw.post([{"k": 1}], headers={"Authorization": f"Bearer {key}"}).status for _ in range(n)}


def test_sighup_reloads_the_key_file_in_every_worker_under_load_without_a_5xx(make_gateway, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("old=k-old\nkeep=k-keep\n")
    gw = make_gateway(WORKERS="2", API_KEYS_FILE=str(keys))
    workers = sorted(gw.children()["worker"])
    assert _accepted(gw, "k-old") == {202} and _accepted(gw, "k-new") == {401}
    statuses: list[int] = []
    stop = threading.Event()

    def load():  # bounded: at most 3,000 requests or until told to stop
        while not stop.is_set() and len(statuses) < 3000:
            try:
                statuses.append(gw.post([{"load": 1}], headers={"Authorization": "Bearer k-keep"}, timeout=10).status)
            except OSError as exc:  # a dropped connection is what this test is about
                statuses.append(type(exc).__name__)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        time.sleep(0.3)
        _replace(keys, "keep=k-keep\nnew=k-new\n")
        gw.signal(signal.SIGHUP)
        wait_for(lambda: _accepted(gw, "k-new") == {202} and _accepted(gw, "k-old") == {401}, timeout=20,
                 what="every worker on the new keys")
        # a file gone bad keeps the keys in force (auth never fails open)
        keys.write_text("# nothing\n")
        gw.signal(signal.SIGHUP)
        wait_for(lambda: gw.log().count("API keys not reloaded") >= 2, timeout=20, what="both workers' errors")
        os.unlink(keys)
        gw.signal(signal.SIGHUP)
        wait_for(lambda: gw.log().count("API keys not reloaded") >= 4, timeout=20, what="both workers' errors")
        assert _accepted(gw, "k-new") == {202} and _accepted(gw, "k-old") == {401}
        assert _accepted(gw, "wrong") == {401}
    finally:
        stop.set()
        loader.join(60)
    assert statuses and set(statuses) == {202}, {s: statuses.count(s) for s in set(statuses)}
    assert sorted(gw.children()["worker"]) == workers  # reloaded in place: no worker restarted
    m = gw.metrics()
    assert m['ringgate_records_accepted_total{client="new"}'] >= 12  # a name that came with the reload
    assert "k-new" not in gw.log() and "k-keep" not in gw.log()
    assert gw.stop() == 0


def _per_worker_accepted(instance: str, client: str, pids: list[int]) -> dict[int, int]:
    """Records accepted for `client` by each of `pids`, from their rows of the metrics segment."""
    from ringgate.metrics import CLIENT_BASE, MetricsView, _read_names

    view = MetricsView(instance)
    try:
        column = CLIENT_BASE + _read_names(view._mm).index(client.encode())
        return {int(row[0]): int(row[column]) for row in view._table if int(row[0]) in pids}
    finally:
        view.close()


def test_rate_limit_is_per_client_and_shared_by_the_workers(make_gateway):
    gw = make_gateway(WORKERS="2", API_KEYS="a=k-a,b=k-b", RATE_LIMIT="100/s")
    workers = gw.children()["worker"]
    a = {"Authorization": "Bearer k-a"}
    taken, refusals = 0, []
    start = time.monotonic()
    for _ in range(400):  # bounded: 400 requests or 1.5 s, each on a new connection (either worker)
        answer = gw.post([{"r": i} for i in range(10)], headers=a)
        assert answer.status in (202, 429), answer.body
        if answer.status == 202:
            taken += 10
        else:
            refusals.append(answer)
        if time.monotonic() - start > 1.5:
            break
    elapsed = time.monotonic() - start
    # the burst (100) plus the refill, not twice that: one bucket for both workers
    assert 100 <= taken <= 100 + 100 * elapsed + 10, (taken, elapsed)
    served = _per_worker_accepted(gw.instance, "a", workers)
    assert len(served) == 2 and all(served.values()), served  # both workers took part
    assert refusals and refusals[0].json()["error"] == "rate_limited"
    assert {r.headers["retry-after"] for r in refusals} == {"1"}  # 10 records at 100/s: within a second
    # another client has its own bucket
    assert gw.post([{"r": i} for i in range(10)], headers={"Authorization": "Bearer k-b"}).status == 202
    # Retry-After is what the bucket implies: after it, the request goes in
    time.sleep(1.0)
    assert gw.post([{"r": i} for i in range(10)], headers=a).status == 202
    m = gw.metrics()
    assert m['ringgate_records_rejected_total{reason="rate_limited"}'] == 10 * len(refusals)


def test_rate_limit_without_keys_is_per_address(make_gateway):
    gw = make_gateway(RATE_LIMIT="5/s")
    assert gw.post([{"r": i} for i in range(5)]).status == 202
    answer = gw.post([{"r": 1}] * 3)
    assert answer.status == 429 and answer.headers["retry-after"] == "1"
    assert "refused 429 rate_limited client=anonymous" in gw.log()
