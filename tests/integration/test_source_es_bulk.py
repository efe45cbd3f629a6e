"""The Elasticsearch bulk source through a real `ringgate serve`, driven by the real `elasticsearch`
client (9.x): its product check, `helpers.bulk` (plain and gzip), its auth options, per-item
refusals and backpressure."""

from __future__ import annotations

import json

import pytest
from elasticsearch import ApiError, AuthenticationException, Elasticsearch, helpers

from tests.fixtures.gateway import request
from tests.integration.test_gateway import shared_gateway  # noqa: F401 - one gateway for the refusals
from tests.sinkdata import StuckSink, assert_exactly_once, file_sink_records, wait_for

NDJSON = {"Content-Type": "application/x-ndjson"}


def client(gw, **options) -> Elasticsearch:
    return Elasticsearch(f"http://127.0.0.1:{gw.port}", request_timeout=30, **options)


def bulk_body(pairs) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in pairs)


def stored(gw) -> list[dict]:
    return file_sink_records(gw.sink_dir)


def wait_stored(gw, n: int) -> list[dict]:
    wait_for(lambda: len(stored(gw)) >= n, what=f"{n} records in the file sink")
    return stored(gw)


def test_the_clients_product_check_passes_and_the_probes_answer_without_a_key(make_gateway):
    gw = make_gateway(API_KEYS="es=k1")  # the probes answer without one all the same
    es = client(gw)
    info = es.info()
    assert info["tagline"] == "You Know, for Search"
    assert info["version"]["number"].startswith("9.")  # the client 9 announces compatible-with=9
    assert request(gw.port, "GET", "/").json()["version"]["number"].startswith("8.")  # everyone else
    assert es.ping()  # HEAD /
    for path in ("/", "/_license", "/_xpack", "/_nodes/http", "/_cluster/health", "/_index_template/logs",
                 "/_component_template/logs", "/_template/logs", "/_ilm/policy/logs"):
        for method in ("GET", "HEAD"):
            resp = request(gw.port, method, path)
            assert resp.status == 200, (method, path, resp.body)
            assert resp.headers["x-elastic-product"] == "Elasticsearch", (method, path)
    assert request(gw.port, "GET", "/_license").json()["license"]["status"] == "active"
    assert request(gw.port, "GET", "/_xpack").json()["features"]["ilm"] == {"available": True, "enabled": True}
    node = next(iter(request(gw.port, "GET", "/_nodes/http").json()["nodes"].values()))
    assert node["http"]["publish_address"] == f"127.0.0.1:{gw.port}"  # where sniffers reconnect
    template = {"index_patterns": ["logs-*"], "template": {"settings": {"number_of_shards": 1}}}
    assert es.indices.put_index_template(name="logs", body=template)["acknowledged"] is True
    assert es.ilm.put_lifecycle(name="logs", policy={"phases": {}})["acknowledged"] is True
    assert stored(gw) == []  # nothing of it is a record


def test_helpers_bulk_stores_every_document_once_with_its_index(make_gateway):
    gw = make_gateway()
    es = client(gw)
    n = 600
    actions = [{"_index": f"logs-{i % 3}", "_source": {"n": i, "msg": "hello", "tags": ["a", "b"]}}
               | ({"_id": f"doc-{i}"} if i % 2 else {}) for i in range(n)]
    success, errors = helpers.bulk(es, actions, chunk_size=250)
    assert (success, errors) == (n, [])
    # /{index}/_bulk: the URL's index for documents whose action names none, the action's otherwise
    success, errors = helpers.bulk(es, [{"n": n}, {"_index": "own", "n": n + 1}], index="from-url")
    assert (success, errors) == (2, [])
    records = wait_stored(gw, n + 2)
    assert_exactly_once(list(range(n + 2)), records, key="n")
    by_n = {r["n"]: r for r in records}
    for i in range(n):
        expected = {"_index": f"logs-{i % 3}", "n": i, "msg": "hello", "tags": ["a", "b"]}
        assert by_n[i] == expected | ({"_id": f"doc-{i}"} if i % 2 else {}), by_n[i]
    assert by_n[n] == {"_index": "from-url", "n": n}
    assert by_n[n + 1] == {"_index": "own", "n": n + 1}


def test_bulk_answer_items_are_what_the_client_reads(make_gateway):
    gw = make_gateway()
    es = client(gw)
    resp = es.bulk(operations=[{"index": {"_index": "a", "_id": "x1"}}, {"v": 1}, {"create": {"_index": "b"}}, {"v": 2}])
    assert resp.meta.headers["x-elastic-product"] == "Elasticsearch"
    assert resp["errors"] is False and isinstance(resp["took"], int)
    first, second = resp["items"]
    assert first["index"]["_index"] == "a" and first["index"]["_id"] == "x1"
    assert first["index"]["status"] == 201 and first["index"]["result"] == "created"
    assert second["create"]["_index"] == "b" and second["create"]["status"] == 201
    generated = second["create"]["_id"]  # from the batch id and the item's place: unique per request
    assert generated.endswith("-1") and generated != "x1"
    again = es.bulk(operations=[{"create": {"_index": "b"}}, {"v": 3}, {"create": {"_index": "b"}}, {"v": 4}])
    assert again["items"][1]["create"]["_id"] != generated  # the same place in another request
    assert sorted(wait_stored(gw, 4), key=lambda r: r["v"]) == [
        {"_index": "a", "_id": "x1", "v": 1}, {"_index": "b", "v": 2}, {"_index": "b", "v": 3}, {"_index": "b", "v": 4}]


def test_gzip_bodies_from_the_client(make_gateway):
    gw = make_gateway()
    es = client(gw, http_compress=True)
    docs = [{"_index": "gz", "_source": {"n": i, "text": "compressible " * 20}} for i in range(300)]
    assert helpers.bulk(es, docs) == (300, [])
    records = wait_stored(gw, 300)
    assert_exactly_once(list(range(300)), records, key="n")
    assert all(r["_index"] == "gz" and r["text"] == "compressible " * 20 for r in records)
    # the body really is gzip: the same bytes, gzip'ed by hand, marked as such
    import gzip

    body = gzip.compress(bulk_body([{"index": {"_index": "gz"}}, {"n": 300}]))
    resp = gw.post(body, "application/x-ndjson", "/_bulk", headers={"Content-Encoding": "gzip"})
    assert resp.status == 200 and resp.json()["errors"] is False, resp.body
    wait_stored(gw, 301)


def test_auth_by_api_key_basic_and_bearer(make_gateway):
    gw = make_gateway(API_KEYS="es=k1")
    doc = [{"_index": "auth", "_source": {"n": 0}}]
    with pytest.raises(AuthenticationException) as refused:
        helpers.bulk(client(gw), doc)
    assert refused.value.meta.status == 401
    assert refused.value.meta.headers["x-elastic-product"] == "Elasticsearch"
    assert refused.value.body["error"]["type"] == "security_exception"
    with pytest.raises(AuthenticationException):
        helpers.bulk(client(gw, api_key="wrong"), doc)
    with pytest.raises(AuthenticationException):
        helpers.bulk(client(gw, basic_auth=("elastic", "wrong")), doc)
    good = [
        client(gw, api_key="k1"),  # ApiKey <key>
        client(gw, api_key=("some-id", "k1")),  # ApiKey base64(id:key), as Elasticsearch issues them
        client(gw, basic_auth=("elastic", "k1")),  # Basic, the key as password
        client(gw, bearer_auth="k1"),
    ]
    for n, es in enumerate(good, 1):
        assert helpers.bulk(es, [{"_index": "auth", "_source": {"n": n}}]) == (1, []), n
    assert sorted(r["n"] for r in wait_stored(gw, len(good))) == list(range(1, len(good) + 1))


def test_other_actions_get_a_400_item_while_the_rest_is_stored(make_gateway):
    gw = make_gateway()
    body = bulk_body([
        {"index": {"_index": "m", "_id": "1"}}, {"n": 1},
        {"delete": {"_index": "m", "_id": "1"}},
        {"create": {"_index": "m"}}, {"n": 2},
        {"update": {"_index": "m", "_id": "1"}}, {"doc": {"n": 9}},
        {"upsert_all": {"_index": "m"}}, {"n": 9},
        {"index": {}}, {"n": 3},
    ])
    resp = gw.post(body, "application/x-ndjson", "/_bulk")
    assert resp.status == 200 and resp.headers["x-elastic-product"] == "Elasticsearch"
    answer = resp.json()
    assert answer["errors"] is True
    ops = [(op, item["status"]) for entry in answer["items"] for op, item in entry.items()]
    assert ops == [("index", 201), ("delete", 400), ("create", 201), ("update", 400), ("upsert_all", 400), ("index", 201)]
    assert answer["items"][1]["delete"]["error"]["type"] == "illegal_argument_exception"
    assert answer["items"][1]["delete"]["_id"] == "1"
    # through the client: helpers.bulk reports the refused delete and stores the rest
    es = client(gw)
    success, errors = helpers.bulk(es, [{"_index": "m", "n": 4}, {"_op_type": "delete", "_index": "m", "_id": "1"},
                                        {"_index": "m", "n": 5}], raise_on_error=False)
    assert success == 2 and [list(e) for e in errors] == [["delete"]] and errors[0]["delete"]["status"] == 400
    records = wait_stored(gw, 5)
    assert sorted(r["n"] for r in records) == [1, 2, 3, 4, 5]


def test_a_request_of_refused_items_only_claims_nothing(make_gateway):
    gw = make_gateway()
    before = gw.get("/readyz").json()["rings"][0]["producer_position"]
    resp = gw.post(bulk_body([{"delete": {"_index": "m", "_id": "1"}}, {"delete": {"_index": "m", "_id": "2"}}]),
                   "application/x-ndjson", "/m/_bulk")
    assert resp.status == 200, resp.body
    answer = resp.json()
    assert answer["errors"] is True and [e["delete"]["status"] for e in answer["items"]] == [400, 400]
    assert gw.get("/readyz").json()["rings"][0]["producer_position"] == before


@pytest.mark.parametrize("body, content_type, status, code, reason_has", [
    (b'{"index":{}}\n{"n":\n', "application/x-ndjson", 400, "invalid_json", "line 2"),
    (b'{"index":{}}\n', "application/x-ndjson", 400, "invalid_bulk", "no document line"),
    (b'{"index":{}, "create":{}}\n{}\n', "application/x-ndjson", 400, "invalid_action", "line 1"),
    (b'["index"]\n{}\n', "application/x-ndjson", 400, "invalid_action", "line 1"),
    (b'{"index":{}}\n[1]\n', "application/x-ndjson", 400, "not_an_object", "line 2"),
    (b'{"index":{}}\n{}\n', "text/plain", 415, "unsupported_media_type", "text/plain"),
    (b"\n\n", "application/x-ndjson", 400, "empty_body", "no records"),
])
def test_errors_in_elasticsearch_shape(shared_gateway, body, content_type, status, code, reason_has):  # noqa: F811
    gw = shared_gateway
    resp = gw.post(body, content_type, "/_bulk")
    assert resp.status == status, resp.body
    assert resp.headers["x-elastic-product"] == "Elasticsearch"
    err = resp.json()
    assert err["status"] == status and err["error"]["code"] == code, err
    assert reason_has in err["error"]["reason"] and err["error"]["root_cause"][0]["type"] == err["error"]["type"]
    assert file_sink_records(gw.sink_dir) == []  # a refused request stores nothing


def test_a_full_ring_is_429_with_retry_after_and_nothing_refused_is_stored(make_gateway, tmp_path):
    stuck = StuckSink(tmp_path)
    gw = make_gateway(RING_BYTES=str(64 * 1024), SINK=stuck.url, BATCH_RECORDS="50")
    accepted: list[str] = []
    refused: list[str] = []

    def fill(headers: dict[str, str] | None = None, tag: str = "r"):
        for i in range(200):
            ids = [f"{tag}{i}-{j}" for j in range(20)]
            body = bulk_body(x for id_ in ids for x in ({"index": {"_index": "full"}}, {"id": id_, "pad": "x" * 40}))
            resp = gw.post(body, "application/x-ndjson", "/_bulk", headers=headers)
            if resp.status != 200:
                assert resp.status == 429, resp.body
                assert int(resp.headers["retry-after"]) >= 1
                assert resp.headers["x-elastic-product"] == "Elasticsearch"
                refused.extend(ids)
                return resp.json()
            assert resp.json()["errors"] is False
            accepted.extend(ids)
        raise AssertionError("a 64 KiB ring never filled")

    first = fill()
    assert first["status"] == 429 and first["error"]["type"] == "es_rejected_execution_exception", first
    assert first["error"]["code"] == "low_priority"
    assert fill({"X-Priority": "10"}, "p")["error"]["code"] == "ring_full"
    # the client sees the 429 as an ApiError it may retry (Beats and Logstash do)
    es = client(gw, max_retries=0)
    with pytest.raises(ApiError) as busy:
        es.bulk(operations=[{"index": {"_index": "full"}}, {"id": "client-refused"}])
    assert busy.value.meta.status == 429
    refused.append("client-refused")
    stuck.recover()  # the operator fixes the fault
    wait_for(lambda: len(stuck.records()) >= len(accepted), what="delivery")
    records = stuck.records()
    assert_exactly_once(accepted, records)
    assert not {r["id"] for r in records} & set(refused)
