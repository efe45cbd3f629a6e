"""Property tests of every codec (hypothesis): any bytes give records or a 4xx Refusal, never
another exception, never more records than the limit; valid bodies round-trip.

The small limits make the record-count paths (the count before any per-record object) run on
bodies of a few dozen bytes, so they are explored as much as the fast paths."""

from __future__ import annotations

import gzip
import json
import os

import msgpack
import msgspec
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringgate.codecs import Encoding, Limits, Records, csv, ndjson
from ringgate.codecs import json as json_codec
from ringgate.codecs import msgpack as msgpack_codec
from ringgate.codecs.compression import decode as decode_content
from ringgate.codecs.multipart import file_part
from ringgate.errors import Refusal

FUZZ = settings(max_examples=int(os.environ.get("RINGGATE_FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SMALL = Limits(max_body_bytes=4096, max_record_bytes=256, max_records=5, max_framed_bytes=4096)
LARGE = Limits(max_body_bytes=1 << 20, max_record_bytes=1 << 16, max_records=100_000)
DECODERS = {"json": json_codec.decode, "ndjson": ndjson.decode, "csv": csv.decode, "msgpack": msgpack_codec.decode}

JSON_ALPHABET = st.sampled_from(list(b'{}[]":,0123456789.-+eEtrufalsn \t\r\n\\abxyz') + [0xC3, 0xA9, 0xFF, 0])
jsonish = st.lists(JSON_ALPHABET, max_size=200).map(bytes)
scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
objects = st.dictionaries(st.text(max_size=8), values, max_size=5)


def split(records: Records) -> list[bytes]:
    ends = np.cumsum(records.lengths).tolist()
    return [records.blob[s:e] for s, e in zip([0, *ends[:-1]], ends, strict=True)]


def check(decode, body: bytes, limits: Limits) -> Records | None:
    try:
        records = decode(body, limits)
    except Refusal as refusal:
        assert 400 <= refusal.status < 500 and refusal.code and refusal.detail
        return None
    assert 1 <= records.count <= limits.max_records
    assert int(records.lengths.sum()) == len(records.blob)
    for part in split(records):
        assert part[:1] == b"{" and len(part) <= limits.max_record_bytes
        assert msgspec.json.format(part, indent=-1) == part  # compact
        json.loads(part)
    return records


@FUZZ
@given(body=st.binary(max_size=300) | jsonish, name=st.sampled_from(sorted(DECODERS)), small=st.booleans())
def test_any_bytes_give_records_or_a_refusal(body, name, small):
    check(DECODERS[name], body, SMALL if small else LARGE)


@FUZZ
@given(body=st.binary(max_size=300), encoding=st.sampled_from([Encoding.GZIP, Encoding.ZSTD]), wrap=st.booleans())
def test_any_bytes_as_a_content_coding_give_bytes_or_a_refusal(body, encoding, wrap):
    if wrap:  # a valid stream around fuzz, so the decoders get past the header
        body = gzip.compress(body) if encoding is Encoding.GZIP else zstandard.ZstdCompressor().compress(body)
        body = body[: len(body) // 2] if len(body) % 3 == 0 else body
    try:
        out = decode_content(body, encoding, 4096)
    except Refusal as refusal:
        assert refusal.status in (400, 413)
    else:
        assert len(out) <= 4096


@FUZZ
@given(items=st.lists(objects, min_size=1, max_size=8), layout=st.sampled_from(["array", "records", "ndjson"]),
       coding=st.sampled_from(["identity", "gzip", "zstd"]))
def test_valid_json_bodies_round_trip(items, layout, coding):
    if layout == "ndjson":
        body, decode = "\n".join(json.dumps(i) for i in items).encode(), ndjson.decode
    else:
        body, decode = json.dumps(items if layout == "array" else {"records": items}).encode(), json_codec.decode
    if coding == "gzip":
        body = decode_content(gzip.compress(body), Encoding.GZIP, LARGE.max_body_bytes)
    elif coding == "zstd":
        body = decode_content(zstandard.ZstdCompressor().compress(body), Encoding.ZSTD, LARGE.max_body_bytes)
    records = check(decode, body, LARGE)
    assert records is not None
    assert [json.loads(p) for p in split(records)] == json.loads(json.dumps(items))


@FUZZ
@given(items=st.lists(st.dictionaries(st.text(max_size=6), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=6)
                                      | st.binary(max_size=4),
                                      max_size=4), min_size=1, max_size=8), stream=st.booleans())
def test_valid_msgpack_bodies_round_trip(items, stream):
    body = b"".join(msgpack.packb(i) for i in items) if stream else msgpack.packb(items)
    records = check(msgpack_codec.decode, body, LARGE)
    assert records is not None
    assert [json.loads(p) for p in split(records)] == [json.loads(msgspec.json.encode(i)) for i in items]


@FUZZ
@given(header=st.lists(st.text("abcxyz_", min_size=1, max_size=5), min_size=1, max_size=4, unique=True),
       rows=st.lists(st.lists(st.text(max_size=6).filter(lambda t: "\x00" not in t and "\r" not in t), min_size=4,
                              max_size=4), min_size=1, max_size=6))
def test_valid_csv_round_trips(header, rows):
    import csv as std_csv
    import io

    rows = [r[: len(header)] for r in rows if any(r[: len(header)])]  # a row of empty fields is a blank line
    if not rows:
        return
    text = io.StringIO()
    writer = std_csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    records = check(csv.decode, text.getvalue().encode(), LARGE)
    assert records is not None
    assert [json.loads(p) for p in split(records)] == [dict(zip(header, r, strict=True)) for r in rows]


@FUZZ
@given(body=st.binary(max_size=400))
def test_any_bytes_as_multipart_give_a_part_or_a_refusal(body):
    boundary = b"xyzzy"
    for candidate in (body, b"--xyzzy\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n" + body):
        try:
            part = file_part(candidate, boundary, "file")
        except Refusal as refusal:
            assert refusal.status == 400
        else:
            assert isinstance(part.data, bytes)


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_the_count_is_checked_before_the_records_are_built(name):
    """One more record than the limit is refused by the count, in every format."""
    items = [{"i": i} for i in range(SMALL.max_records + 1)]
    body = {
        "json": lambda: json.dumps(items).encode(),
        "ndjson": lambda: "\n".join(map(json.dumps, items)).encode(),
        "csv": lambda: ("i\n" + "\n".join(str(i) for i in range(len(items)))).encode(),
        "msgpack": lambda: b"".join(msgpack.packb(i) for i in items),
    }[name]()
    with pytest.raises(Refusal) as info:
        DECODERS[name](body, SMALL)
    assert (info.value.status, info.value.code) == (413, "too_many_records")
