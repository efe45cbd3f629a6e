"""HEC's framing and ackIds without a server: any bytes give records or a Refusal, concatenated
events come back exactly, the fast path's guards, the count bound, and the ackId arithmetic."""

from __future__ import annotations

import json
import tracemalloc
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringgate.codecs import Limits
from ringgate.errors import Refusal
from ringgate.gateway import Stored
from ringgate.sources import hec

LIMITS = Limits(max_body_bytes=1 << 20, max_record_bytes=1 << 16, max_records=1000)


def records_of(result) -> list[dict]:
    out, start = [], 0
    for length in result.lengths.tolist():
        out.append(json.loads(result.blob[start : start + length]))
        start += length
    return out


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_events_or_a_refusal(body):
    for decode in (hec.decode_events, hec.decode_raw):
        try:
            result = decode(body, LIMITS)
        except Refusal as refusal:
            assert 400 <= refusal.status < 500
        else:
            assert result.count >= 1 and len(result.blob) == int(result.lengths.sum())


_TRICKY = st.sampled_from(["}{", "} {", "}\n{", "\\", '\\"', "\n,", "{", "}", "é", "\u2028"])
_TEXT = st.lists(st.one_of(st.text(max_size=5), _TRICKY), max_size=4).map("".join)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=8,
)
_EVENT = st.one_of(_TEXT.filter(bool), st.integers(), st.lists(_JSON, max_size=3),
                   st.dictionaries(_TEXT, _JSON, max_size=3))
_ENVELOPE = st.fixed_dictionaries(
    {"event": _EVENT},
    optional={"time": st.floats(0, 2e9), "host": _TEXT, "source": _TEXT, "sourcetype": _TEXT,
              "index": _TEXT, "fields": st.dictionaries(_TEXT, _TEXT, max_size=3)},
)
_GAP = st.sampled_from(["", "", "\n", "\r\n", " ", "\t \n "])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_ENVELOPE, _GAP, st.booleans()), min_size=1, max_size=8))
def test_concatenated_events_come_back_exactly(events):
    body = "".join(json.dumps(e, indent=2 if pretty else None) + gap for e, gap, pretty in events).encode()
    assert records_of(hec.decode_events(body, LIMITS)) == [e for e, _, _ in events]


@pytest.mark.parametrize(("body", "code", "index"), [
    (b'{"event":1},{"event":2}', "invalid_json", 1),  # a comma of the client's
    (b'{"event":1}\n,{"event":[{}{}]}', "invalid_json", 1),
    (b'{"event":1}{"event":2', "invalid_json", 1),
    (b'{"event":1}{"event":' + b"[" * 3000 + b"]" * 3000 + b"}", "too_deep", 1),
    (b'{"event":1}{"event":' + b"[" * 64 + b"]" * 64 + b"}", "too_deep", 1),
    (b'{"event":[{}{}]}', "invalid_json", 0),
    (b'{"event":"x"}{"event":1} 5', "not_an_object", 2),
    (b'{"event":"x"} {"event":"y"}{"host":"h"}', "event_required", 2),
    (b'{"event":""}', "event_blank", 0),
])
def test_what_is_not_events_is_refused_naming_the_event(body, code, index):
    with pytest.raises(Refusal) as caught:
        hec.decode_events(body, LIMITS)
    assert caught.value.code == code, caught.value.detail
    assert getattr(caught.value, "index", None) == index or f"event {index}" in caught.value.detail


def test_boundaries_inside_strings_are_kept():
    body = b'{"event":"a}{b"}{"event":"c} {d","fields":{"k":"}\\n{"}}\n{"event":"\\"}{\\""}'
    assert [r["event"] for r in records_of(hec.decode_events(body, LIMITS))] == ["a}{b", "c} {d", '"}{"']
    leading_commas = b'{"event": 1\n, "host": "h"}\n{"event": 2\n, "fields": {"a": {}\n, "b": {}}}'
    assert records_of(hec.decode_events(leading_commas, LIMITS)) == [
        {"event": 1, "host": "h"}, {"event": 2, "fields": {"a": {}, "b": {}}}]


def _refused_within(decode, body: bytes, limits: Limits, code: str, factor: int = 4) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(Refusal) as caught:
            decode(body, limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.code == code, caught.value.detail
    assert peak < factor * len(body), f"{peak} bytes traced for a {len(body)}-byte body"


def test_too_many_events_are_counted_before_any_is_built():
    limits = Limits(32 << 20, 1 << 16, 1000)
    _refused_within(hec.decode_events, b'{"event":1}' * 1_500_000, limits, "too_many_records")  # 16 MiB, 1500x
    _refused_within(hec.decode_raw, b"x\n" * 8_000_000, limits, "too_many_records")
    many_in_strings = b'{"event":"' + b"}{" * 5000 + b'"}'  # 5000 candidate boundaries, one event
    assert hec.decode_events(many_in_strings, LIMITS).count == 1


def test_raw_lines_take_the_query_fields():
    result = hec.decode_raw(b'a "quoted" line\r\n\n  \n\tindented\n', LIMITS, suffix=b',"host":"h"}')
    assert records_of(result) == [{"event": 'a "quoted" line', "host": "h"}, {"event": "\tindented", "host": "h"}]


@dataclass
class FakeRing:
    epoch: int
    producer_position: int
    consumer_position: int


@dataclass
class FakeGateway:
    rings: list


WINDOW = 8 << hec.POSITION_BITS  # bytes a ring may pass before an id's low bits repeat


@settings(max_examples=500, deadline=None)
@given(
    epoch=st.integers(1, 2**63), ring=st.integers(0, 3),
    end=st.integers(1, 2**60).map(lambda n: n * 8),
    later=st.integers(0, 3 * WINDOW).map(lambda n: n // 8 * 8), behind=st.integers(0, 2 * WINDOW),
)
def test_ack_ids_never_answer_a_false_true(epoch, ring, end, later, behind):
    """An id names the batch ending at `end`; the ring has produced `later` bytes more since and
    committed up to `behind` bytes short of its producer. Within the window the answer is exact;
    past it, it may be false, but true only when the batch is committed."""
    ack = hec.ack_id(Stored(1, ring, epoch, end - 8, end))
    assert 0 <= ack < 1 << 63
    produced = end + later
    committed = max(0, produced - behind)
    rings = [FakeRing(epoch, produced, committed) for _ in range(4)]
    answer = hec.ack_status(FakeGateway(rings), ack)
    if answer:
        assert committed >= end
    if later < WINDOW:
        assert answer == (committed >= end)
    rings[ring].epoch = epoch + 1  # the ring was created anew: the id is not its own
    assert not hec.ack_status(FakeGateway(rings), ack)


def test_ack_ids_outside_any_ring_are_false():
    gw = FakeGateway([FakeRing(5, 1 << 20, 1 << 20)])
    assert not hec.ack_status(gw, 3)  # ring 3 does not exist
    assert not hec.ack_status(gw, -1) and not hec.ack_status(gw, 1 << 63)
    assert hec.ack_status(gw, hec.ack_id(Stored(1, 0, 5, 0, 1 << 19)))
