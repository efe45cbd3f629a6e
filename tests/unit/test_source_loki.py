"""Loki push decoding as pure functions: shapes, labels, timestamps, bounded cost, and any bytes →
records or a Refusal."""

from __future__ import annotations

import json
import tracemalloc

import cramjam
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringgate.codecs import Limits
from ringgate.errors import Refusal
from ringgate.sources import loki
from ringgate.sources._loki_push_pb2 import PushRequest

LIMITS = Limits(16 << 20, 1 << 20, 100_000)


def records(result) -> list[dict]:
    blob, out, start = result.blob, [], 0
    for length in result.lengths.tolist():
        out.append(json.loads(blob[start : start + length]))
        start += length
    return out


def label_string(labels: dict[str, str]) -> str:
    """Go's labels.String(): `{name="value", ...}`, values as Go quoted strings (JSON's escapes,
    without ensure_ascii, are all valid Go escapes)."""
    return "{" + ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in labels.items()) + "}"


def snappy_push(streams: list[tuple[str, list[tuple[int, str, dict[str, str]]]]]) -> bytes:
    request = PushRequest()
    for labels, entries in streams:
        stream = request.streams.add(labels=labels)
        for ts, line, metadata in entries:
            entry = stream.entries.add(line=line)
            entry.timestamp.FromNanoseconds(ts)
            for name, value in metadata.items():
                entry.structuredMetadata.add(name=name, value=value)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


# ------------------------------------------------------------------------------------ labels


@pytest.mark.parametrize(
    "text,labels",
    [
        ("{}", {}),
        (' { job = "a" , b="c", } ', {"job": "a", "b": "c"}),
        ('{a="q\\"q", b="back\\\\slash", c="\\n\\t\\u00e9\\U0001F600\\x41\\101"}',
         {"a": 'q"q', "b": "back\\slash", "c": "\n\té\U0001f600AA"}),
        ('{"service.name"="checkout"}', {"service.name": "checkout"}),
        ('{a="\\xc3\\xa9"}', {"a": "é"}),  # \x escapes are bytes: together they are UTF-8
    ],
)
def test_label_strings(text, labels):
    assert loki.parse_labels(text) == labels


@pytest.mark.parametrize(
    "text,says",
    [
        ('job="a"', "not a label set"),
        ('{job="a" b="c"}', "no comma"),
        ('{job=a}', "not a label set"),
        ('{9job="a"}', "not a label set"),
        ('{a="\\q"}', "invalid escape"),
        ('{a="\\ud800"}', "invalid escape"),  # a surrogate is no code point
        ('{a="\\xff"}', "not UTF-8"),
        ('{a="b",,}', "not a label set"),
    ],
)
def test_bad_label_strings_are_400(text, says):
    with pytest.raises(Refusal) as caught:
        loki.parse_labels(text)
    assert caught.value.status == 400 and caught.value.code == "invalid_labels"
    assert says in caught.value.detail


# ---------------------------------------------------------------------------------- timestamps


def test_legacy_json_reads_rfc3339_to_the_nanosecond():
    body = json.dumps({"streams": [{"labels": '{a="b"}', "entries": [
        {"ts": "2018-12-18T08:28:06.801064123-04:00", "line": "ns"},
        {"ts": "1970-01-01T00:00:01Z", "line": "whole"},
        {"ts": "2018-12-18t12:28:06.5+00:00", "line": "half"},
    ]}]}).encode()
    got = records(loki.decode_legacy_json(body, LIMITS))
    assert [r["timestamp_ns"] for r in got] == [1545136086801064123, 1_000_000_000, 1545136086500000000]
    assert got[0] == {"stream": {"a": "b"}, "timestamp_ns": 1545136086801064123, "line": "ns"}


@pytest.mark.parametrize("ts", ["2018-12-18", "2018-12-18T08:28:06", "2018-13-18T08:28:06Z", "1969-12-31T23:59:59Z",
                                "2018-12-18T08:28:06.1234567890Z"])
def test_legacy_json_refuses_what_is_not_rfc3339(ts):
    body = json.dumps({"streams": [{"labels": "{}", "entries": [{"ts": ts, "line": "x"}]}]}).encode()
    with pytest.raises(Refusal) as caught:
        loki.decode_legacy_json(body, LIMITS)
    assert caught.value.code == "invalid_timestamp" and "streams[0].entries[0].ts" in caught.value.detail


@pytest.mark.parametrize("ts", ["", "-5", "+5", " 5", "1_000", "١٢", "9223372036854775808", "1e9", 5, None, ["1"]])
def test_json_timestamps_are_unix_nanoseconds_strings(ts):
    body = json.dumps({"streams": [{"stream": {}, "values": [["1", "ok"], [ts, "x"]]}]}, ensure_ascii=False).encode()
    with pytest.raises(Refusal) as caught:
        loki.decode_json(body, LIMITS)
    assert caught.value.code == "invalid_timestamp" and "streams[0].values[1]" in caught.value.detail


def test_json_timestamps_and_lines_are_copied_as_json():
    body = json.dumps({"streams": [{"stream": {"a": "b"}, "values": [
        ["0", "zero"], ["0007", "leading zeros"], ["9223372036854775807", "caf\u00e9 \"q\""]]}]}).encode()
    assert b"\\u00e9" in body
    got = records(loki.decode_json(body, LIMITS))
    assert [(r["timestamp_ns"], r["line"]) for r in got] == [(0, "zero"), (7, "leading zeros"),
                                                            ((1 << 63) - 1, 'café "q"')]
    for line in ([1], {"a": 1}, 5, None):
        bad = json.dumps({"streams": [{"stream": {}, "values": [["1", line]]}]}).encode()
        with pytest.raises(Refusal) as caught:
            loki.decode_json(bad, LIMITS)
        assert caught.value.code == "invalid_json" and "values[0][1]" in caught.value.detail


def test_protobuf_timestamps_outside_int64_nanoseconds_are_400():
    request = PushRequest()
    entry = request.streams.add(labels="{}").entries.add(line="x")
    entry.timestamp.seconds = 10**10  # year 2286: past int64 nanoseconds
    with pytest.raises(Refusal) as caught:
        loki.decode_protobuf(bytes(cramjam.snappy.compress_raw(request.SerializeToString())), LIMITS)
    assert caught.value.code == "invalid_timestamp"


# ------------------------------------------------------------------------------ bounded cost


def test_snappy_declared_length_is_checked_before_decompressing(monkeypatch):
    calls = []
    real = cramjam.snappy.decompress_raw
    monkeypatch.setattr(cramjam.snappy, "decompress_raw", lambda data: calls.append(1) or real(data))
    honest = bytes(cramjam.snappy.compress_raw(b"\x0a\x00" * 600))  # declares 1200 bytes
    with pytest.raises(Refusal) as caught:
        loki.decode_protobuf(honest, Limits(1000, 1 << 20))
    assert caught.value.status == 413 and "declares 1200 bytes" in caught.value.detail
    assert calls == []
    assert loki.decode_protobuf(snappy_push([("{}", [(1, "x", {})])]), Limits(1000, 1 << 20)).count == 1
    assert calls == [1]


def test_a_protobuf_of_millions_of_empty_entries_is_413_at_the_count():
    # 2 Mi empty entries (2 bytes each) in one stream: 4 MiB that would build 2 Mi objects
    entries = b"\x12\x00" * (2 << 20)
    length = len(entries)
    varint = bytearray()
    while True:
        varint.append((length & 0x7F) | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            break
    body = bytes(cramjam.snappy.compress_raw(b"\x0a" + bytes(varint) + entries))
    tracemalloc.start()
    try:
        with pytest.raises(Refusal) as caught:
            loki.decode_protobuf(body, Limits(32 << 20, 1 << 20, 100_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413 and caught.value.code == "too_many_records"
    assert peak < 16 << 20, peak  # the decompressed body, not per-entry objects


def test_a_protobuf_of_millions_of_empty_streams_is_413():
    body = bytes(cramjam.snappy.compress_raw(b"\x0a\x00" * (1 << 20)))
    with pytest.raises(Refusal) as caught:
        loki.decode_protobuf(body, Limits(32 << 20, 1 << 20, 100_000))
    assert caught.value.code == "too_many_records"


@pytest.mark.parametrize("shape", ["entries", "streams", "legacy"])
def test_json_entry_and_stream_counts_are_checked_before_decoding(shape):
    """8 MiB of tiny entries (or empty streams) would build close to a million objects (hundreds of
    MiB); counted first, they cost the scan's few chunk-sized temporaries."""
    if shape == "entries":
        body = b'{"streams":[{"stream":{},"values":[' + b",".join([b'["1","x"]'] * 800_000) + b"]}]}"
        decode = loki.decode_json
    elif shape == "streams":
        body = b'{"streams":[' + b",".join([b"{}"] * 2_800_000) + b"]}"
        decode = loki.decode_json
    else:
        body = b'{"streams":[{"labels":"{}","entries":[' + b",".join([b'{"ts":"","line":""}'] * 420_000) + b"]}]}"
        decode = loki.decode_legacy_json
    tracemalloc.start()
    try:
        with pytest.raises(Refusal) as caught:
            decode(body, LIMITS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.status == 413 and caught.value.code == "too_many_records"
    assert peak < 64 << 20, peak
    # the same count exactly at the limit is decoded (a bracket inside a line does not count)
    ok = b'{"streams":[{"stream":{},"values":[' + b",".join([b'["1","[{"]'] * 100_000) + b"]}]}"
    assert loki.decode_json(ok, LIMITS).count == 100_000


# ---------------------------------------------------------------------------------- properties

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
_label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True)
_streams = st.lists(
    st.tuples(
        st.dictionaries(_label_names, _text, max_size=4),
        st.lists(st.tuples(st.integers(0, (1 << 63) - 1), _text, st.dictionaries(_label_names, _text, max_size=2)),
                 min_size=1, max_size=5),
    ),
    min_size=1, max_size=4,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_streams)
def test_any_push_request_round_trips_through_both_formats(streams):
    expected = []
    for labels, entries in streams:
        for ts, line, metadata in entries:
            record = {"stream": labels, "timestamp_ns": ts, "line": line}
            if metadata:
                record["metadata"] = metadata
            expected.append(record)
    proto = snappy_push([(label_string(labels), entries) for labels, entries in streams])
    assert records(loki.decode_protobuf(proto, LIMITS)) == expected
    body = msgspec.json.encode({"streams": [
        {"stream": labels, "values": [[str(ts), line, md] if md else [str(ts), line] for ts, line, md in entries]}
        for labels, entries in streams
    ]})
    assert records(loki.decode_json(body, LIMITS)) == expected


def _records_or_refusal(decode, body: bytes, max_records: int = 1000) -> None:
    try:
        result = decode(body, Limits(1 << 16, 1 << 12, max_records))
    except Refusal as refusal:
        assert 400 <= refusal.status < 500 and refusal.detail
        return
    assert result.count >= 1
    for record in records(result):
        assert set(record) <= {"stream", "timestamp_ns", "line", "metadata"}


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_as_json_protobuf_or_snappy_protobuf(body):
    snappy = bytes(cramjam.snappy.compress_raw(body))
    for max_records in (1000, 2):  # 2: past the free bounds, the exact scan and the wire walk run too
        _records_or_refusal(loki.decode_json, body, max_records)
        _records_or_refusal(loki.decode_legacy_json, body, max_records)
        _records_or_refusal(loki.decode_protobuf, body, max_records)
        _records_or_refusal(loki.decode_protobuf, snappy, max_records)


_wire = st.lists(st.one_of(
    st.sampled_from([b"\x0a", b"\x12", b"\x1a", b"\x08", b"\x0b", b"\x0c", b"\x0d", b"\x09", b"\x80", b"\xff"]),
    st.binary(max_size=3),
), max_size=40).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(_wire)
def test_protobuf_like_bytes_through_the_wire_walk(data):
    """Tags, lengths and wire types the walk must skip or refuse, snappy-compressed as clients do."""
    snappy = bytes(cramjam.snappy.compress_raw(data))
    for max_records in (1000, 2, 0):
        _records_or_refusal(loki.decode_protobuf, snappy, max_records)


_json_ish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6) | st.sampled_from(["1", "12", "{a=\"b\"}"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["streams", "stream", "values", "labels", "entries", "ts", "line", "x"]), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_json_ish)
def test_any_json_value_as_a_push_body(value):
    body = json.dumps(value).encode()
    for max_records in (1000, 1):
        _records_or_refusal(loki.decode_json, body, max_records)
        _records_or_refusal(loki.decode_legacy_json, body, max_records)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_any_label_string_parses_or_is_refused(text):
    try:
        labels = loki.parse_labels(text)
    except Refusal as refusal:
        assert refusal.code == "invalid_labels"
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
