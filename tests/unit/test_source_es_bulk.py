"""The bulk framing alone (ringgate.sources.es_bulk.Bulk.decode): stored shape, per-item plan,
bounded cost, and any bytes -> Records or Refusal."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringgate.codecs import Limits, Records
from ringgate.errors import Refusal
from ringgate.sources.es_bulk import Bulk, bulk_answer

LIMITS = Limits(1 << 20, 64 << 10, 1000)


def decode(body: bytes, index: str | None = None, limits: Limits = LIMITS) -> tuple[Bulk, list[dict]]:
    bulk = Bulk(index)
    records = bulk.decode(body, limits)
    return bulk, split(records)


def split(records: Records) -> list[dict]:
    out, start = [], 0
    for length in records.lengths.tolist():
        out.append(json.loads(records.blob[start : start + length]))
        start += length
    return out


def lines(*values) -> bytes:
    return b"".join(json.dumps(v).encode() + b"\n" for v in values)


def test_the_document_gets_the_actions_index_and_id_unless_it_has_its_own():
    _, docs = decode(lines(
        {"index": {"_index": "a", "_id": "1"}}, {"x": 1},
        {"create": {"_index": "a", "_id": 7}}, {"_index": "mine", "_id": "mine", "x": 2},
        {"index": {}}, {"x": 3},
        {"index": {"_index": "a"}}, {},
        {"index": {"_id": "only"}}, {"\\u005fid": "escaped", "y": {"_index": "nested"}},
    ), index="url")
    assert docs == [
        {"_index": "a", "_id": "1", "x": 1},
        {"_index": "mine", "_id": "mine", "x": 2},
        {"_index": "url", "x": 3},
        {"_index": "a"},
        {"_index": "url", "_id": "only", "\\u005fid": "escaped", "y": {"_index": "nested"}},
    ]


def test_an_escaped_field_name_counts_as_the_field():
    records = Bulk(None).decode(b'{"index":{"_index":"a"}}\n{"\\u005findex":"own"}\n', LIMITS)
    assert records.blob == b'{"\\u005findex":"own"}'  # no second "_index" beside it


def test_without_any_index_the_document_is_stored_as_sent_but_compacted():
    _, docs = decode(b'{"index":{}}\n{ "a" : [1, 2] }\r\n\n{"create":{}}\n{"b":null}')
    assert docs == [{"a": [1, 2]}, {"b": None}]


def test_refused_actions_are_items_but_not_records():
    bulk, docs = decode(lines({"delete": {"_id": "d"}}, {"index": {}}, {"n": 1}, {"update": {"_id": "u"}},
                              {"doc": {}}, {"bogus": {}}, {"n": 9}, {"create": {}}, {"n": 2}))
    assert docs == [{"n": 1}, {"n": 2}]
    assert [(i.op, i.refused is None) for i in bulk.items] == [
        ("delete", False), ("index", True), ("update", False), ("bogus", False), ("create", True)]
    answer = json.loads(bulk_answer(bulk, "0-1-2-3", 5).body)
    assert answer["errors"] is True and answer["took"] == 5
    assert [next(iter(e.values()))["status"] for e in answer["items"]] == [400, 201, 400, 400, 201]
    assert answer["items"][1]["index"]["_id"] == "0-1-2-3-1"


def test_only_refused_items_raise_the_plans_own_refusal():
    bulk = Bulk(None)
    with pytest.raises(Refusal) as refused:
        bulk.decode(lines({"delete": {"_id": "1"}}), LIMITS)
    assert refused.value is bulk.nothing and len(bulk.items) == 1


def test_the_record_count_is_checked_before_the_lines_are_split():
    body = b'{"index":{}}\n{}\n' * 1001
    with pytest.raises(Refusal) as refused:
        decode(body)
    assert refused.value.code == "too_many_records"
    # items that store nothing count too: at most two lines per record before any line is split
    with pytest.raises(Refusal) as refused:
        decode(b'{"delete":{}}\n' * 2002)
    assert refused.value.code == "too_many_records" and "1001 records" in refused.value.detail
    assert "limit is 1000 " in refused.value.detail, refused.value.detail
    assert decode(b'{"index":{}}\n{}\n' * 1000)[1] == [{}] * 1000  # at the limit: taken


@given(st.binary(max_size=400))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_any_bytes_are_records_or_a_refusal(body):
    try:
        records = Bulk("i").decode(body, Limits(4096, 512, 50))
    except Refusal:
        return
    assert records.count == len(split(records))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_action = st.dictionaries(
    st.sampled_from(["index", "create", "delete", "update", "x"]),
    st.fixed_dictionaries({}, optional={"_index": st.text(max_size=4) | st.integers(), "_id": _json}),
    min_size=1, max_size=2,
)


@given(st.lists(st.one_of(_action, _json), max_size=12), st.sampled_from([None, "u"]))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_any_action_and_document_lines_are_records_or_a_refusal(values, index):
    body = b"\n".join(msgspec.json.encode(v) for v in values)
    bulk = Bulk(index)
    try:
        records = bulk.decode(body, LIMITS)
    except Refusal:
        return
    docs = split(records)
    stored = [i for i in bulk.outcomes() if i.refused is None]
    assert len(docs) == len(stored)
    for doc, item in zip(docs, stored, strict=True):
        if item.index is not None:
            assert "_index" in doc
    json.loads(bulk_answer(bulk, "0-0-0-1", 0).body)
