"""ringgate.codecs: request body → records (DESIGN §4, §9)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import pickle
import random
import time
import tracemalloc
import zlib

import msgspec
import numpy as np
import pytest

from ringgate.codecs import BodyFormat, Encoding, Records, compression, decode_body, parse_headers, records
from ringgate.errors import Refusal

zstandard = pytest.importorskip("zstandard")

JSON, NDJSON, CSV = BodyFormat.JSON, BodyFormat.NDJSON, BodyFormat.CSV
IDENTITY, GZIP, ZSTD = Encoding.IDENTITY, Encoding.GZIP, Encoding.ZSTD
MIB = 1 << 20


def decode(body, fmt=JSON, encoding=IDENTITY, *, max_body_bytes=MIB, max_record_bytes=64 * 1024) -> Records:
    return decode_body(body, fmt, encoding, max_body_bytes=max_body_bytes, max_record_bytes=max_record_bytes)


def fails(body, fmt=JSON, encoding=IDENTITY, **limits) -> Refusal:
    with pytest.raises(Refusal) as info:
        decode(body, fmt, encoding, **limits)
    return info.value


def split(records: Records) -> list[bytes]:
    ends = np.cumsum(records.lengths).tolist()
    starts = [0, *ends[:-1]]
    return [records.blob[s:e] for s, e in zip(starts, ends, strict=True)]


def assert_well_formed(records: Records) -> list[bytes]:
    """Compact, newline-free JSON objects whose lengths add up to the blob."""
    assert records.lengths.dtype == np.int64
    assert records.count == len(records.lengths) >= 1
    assert int(records.lengths.sum()) == len(records.blob)
    assert b"\n" not in records.blob and b"\r" not in records.blob
    parts = split(records)
    for part in parts:
        assert part[:1] == b"{"
        assert msgspec.json.format(part, indent=-1) == part, part  # no whitespace outside strings
        # json, not msgspec: valid JSON like 1e999 is accepted as sent but out of range for msgspec.
        assert isinstance(json.loads(part), dict)
    return parts


def names_byte(detail: str, position: int) -> bool:
    """msgspec reports some errors (e.g. trailing characters) one byte past the offending one."""
    return f"at byte {position}" in detail or f"at byte {position + 1}" in detail


def objects(records: Records) -> list:
    return [msgspec.json.decode(part) for part in assert_well_formed(records)]


SAMPLE = [
    {"id": 1, "name": "plain"},
    {},
    {"nested": {"list": [1, 2.5, -3e-7, True, False, None, [], {}], "deep": {"a": {"b": {"c": [[]]}}}}},
    {"text": 'spaces , : { } [ ] and "quotes" and back\\slash\\', "tab": "a\tb", "nl": "line1\nline2"},
    {"unicode": "héllo wörld ✓ 😀", "ключ": "значение", "nul": "\u0000", "ctrl": "\u0001\u001f"},
    {"big": 123456789012345678901234567890, "neg": -0, "float": 1.5e300},
    {"brackets": "[" * 100, "more": "{" * 80 + "}" * 3},
]


def csv_body(header, rows, newline="\n") -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def nested(depth: int) -> bytes:
    """One record of exactly `depth` levels: {"a":{"a":...{"a":1}...}}."""
    return b'{"a":' * depth + b"1" + b"}" * depth


def nested_array(depth: int) -> bytes:
    """A record of `depth` levels whose inner levels are arrays: {"a":[[...[]...]]}."""
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


# ------------------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    ("content_type", "fmt"),
    [
        (None, JSON),
        ("", JSON),
        ("application/json", JSON),
        ("Application/JSON; charset=utf-8", JSON),
        ("application/json;charset=UTF-8", JSON),
        ("application/x-ndjson", NDJSON),
        ("application/jsonl; charset=utf-8", NDJSON),
        ("APPLICATION/X-NDJSON", NDJSON),
        ("text/csv", CSV),
        (" Text/CSV ; header=present; charset=utf-8", CSV),
    ],
)
def test_media_types(content_type, fmt):
    assert parse_headers(content_type, None) == (fmt, IDENTITY)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/json-seq",
        "json",
        "x" * 500,
    ],
)
def test_unsupported_media_type(content_type):
    with pytest.raises(Refusal) as info:
        parse_headers(content_type, None)
    assert (info.value.status, info.value.code) == (415, "unsupported_media_type")
    assert content_type[:20] in info.value.detail
    assert len(info.value.detail) < 300


@pytest.mark.parametrize(
    ("content_encoding", "encoding"),
    [
        (None, IDENTITY),
        ("", IDENTITY),
        ("identity", IDENTITY),
        ("gzip", GZIP),
        ("GZIP", GZIP),
        ("x-gzip", GZIP),
        (" zstd ", ZSTD),
    ],
)
def test_content_encodings(content_encoding, encoding):
    assert parse_headers("application/json", content_encoding) == (JSON, encoding)


@pytest.mark.parametrize(
    "content_encoding", ["br", "deflate", "compress", "gzip, gzip", "gzip,zstd", "identity, gzip"]
)
def test_unsupported_encoding(content_encoding):
    with pytest.raises(Refusal) as info:
        parse_headers("application/json", content_encoding)
    assert (info.value.status, info.value.code) == (415, "unsupported_encoding")
    assert content_encoding in info.value.detail


def test_zstd_without_zstandard_is_unsupported(monkeypatch):
    monkeypatch.setattr(compression, "_zstandard", lambda: None)
    compression.parse_encoding.cache_clear()
    with pytest.raises(Refusal) as info:
        parse_headers("application/json", "zstd")
    assert (info.value.status, info.value.code) == (415, "unsupported_encoding")
    assert "zstandard" in info.value.detail
    error = fails(zstandard.ZstdCompressor().compress(b'[{"a":1}]'), JSON, ZSTD)
    assert (error.status, error.code) == (415, "unsupported_encoding")


def test_refusal_fields_and_pickle():
    error = Refusal(400, "invalid_json", "invalid JSON at byte 3: x")
    assert (error.status, error.code, error.detail) == (400, "invalid_json", "invalid JSON at byte 3: x")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.code, copy.detail) == (400, "invalid_json", "invalid JSON at byte 3: x")


# ---------------------------------------------------------------------------------- round trips


def test_records_shape():
    records = decode(b'[{"a":1},{"bb":22}]')
    assert records.count == 2
    assert records.blob == b'{"a":1}{"bb":22}'
    assert records.lengths.tolist() == [7, 9]
    with pytest.raises(ValueError):
        records.lengths[0] = 1


@pytest.mark.parametrize(
    "body",
    [
        msgspec.json.encode({"records": SAMPLE}),
        msgspec.json.encode({"events": SAMPLE, "batch_id": "client-chosen", "priority": 5}),
        msgspec.json.encode(SAMPLE),
        json.dumps({"records": SAMPLE}).encode(),  # ", " and ": " separators, \uXXXX escapes
        json.dumps(SAMPLE, indent=2, ensure_ascii=False).encode(),
        json.dumps({"meta": {"x": [1, {"y": 2}]}, "records": SAMPLE, "extra": None}, indent="\t").encode(),
        b" \r\n\t" + msgspec.json.encode(SAMPLE) + b" \n\n",
    ],
    ids=["envelope", "events", "array", "dumps", "indent2", "tabs-unknown-keys", "surrounding-ws"],
)
def test_json_round_trip(body):
    assert objects(decode(body)) == SAMPLE


def test_json_compacts_whitespace_outside_strings_only():
    body = b'[ {\n  "a" :\t[ 1 , 2 ] ,\r\n  "b" : "x  y , z : { }" , "c" : { "d" : null }\n} ]'
    records = decode(body)
    assert records.blob == b'{"a":[1,2],"b":"x  y , z : { }","c":{"d":null}}'


def test_out_of_range_numbers_are_kept_as_sent():
    body = b'[{"a":1e999,"b":-1E-999,"c":123456789012345678901234567890.5}]'
    assert decode(body).blob == body[1:-1]


def test_compact_input_is_kept_byte_for_byte():
    body = b'[{"e":"\\u00e9\\n","s":"a b","n":1.0E+2,"z":-0,"u":"\\u0000"}]'
    assert decode(body).blob == body[1:-1]


def test_envelope_batch_id_and_unknown_keys_are_ignored():
    body = b'{"batch_id":"mine","priority":9,"records":[{"a":1}],"x":{"records":[{"no":1}]},"y":[1,2]}'
    records = decode(body)
    assert records.blob == b'{"a":1}'


@pytest.mark.parametrize(
    "body",
    [
        b"\n".join(msgspec.json.encode(obj) for obj in SAMPLE),
        b"\n".join(msgspec.json.encode(obj) for obj in SAMPLE) + b"\n",
        b"\r\n".join(msgspec.json.encode(obj) for obj in SAMPLE) + b"\r\n",
        b"\n\n  \n\t\r\n" + b"\n \n\r\n".join(json.dumps(obj).encode() for obj in SAMPLE) + b"\n\n\n",
        b"\n".join(b"  " + json.dumps(obj).encode() + b" \t\r" for obj in SAMPLE),
    ],
    ids=["lf", "lf-trailing", "crlf", "blank-lines", "padded"],
)
def test_ndjson_round_trip(body):
    assert objects(decode(body, NDJSON)) == SAMPLE


def test_csv_round_trip_with_quoted_fields():
    header = ["id", "text", "empty", "unicode"]
    rows = [
        ["1", "plain", "", "héllo"],
        ["2", 'comma, "quote" and\nnewline', "", "✓"],
        ["3", "  spaces kept  ", "", "{[\\]}"],
    ]
    for newline in ("\n", "\r\n"):
        records = decode(csv_body(header, rows, newline), CSV)
        assert objects(records) == [dict(zip(header, row, strict=True)) for row in rows]


def test_csv_blank_lines_and_bom_are_skipped():
    body = "\ufeffa,b\n\n1,2\n\n\n3,4\n".encode()
    assert objects(decode(body, CSV)) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]


def test_single_column_csv():
    assert objects(decode(b'x\n1\n""\n', CSV)) == [{"x": "1"}, {"x": ""}]


def test_bytearray_and_memoryview_bodies():
    assert decode(bytearray(b'[{"a":1}]')).blob == b'{"a":1}'
    assert decode(memoryview(b'[{"a":1}]')).blob == b'{"a":1}'


# ---------------------------------------------------------------------------------- encodings


def gzip_stream(chunk: bytes, repeat: int, *, level: int = 6) -> bytes:
    """gzip of chunk * repeat without holding the decoded bytes."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join([*(compressor.compress(chunk) for _ in range(repeat)), compressor.flush()])


BODY = msgspec.json.encode({"records": SAMPLE})


@pytest.mark.parametrize("encoding", [GZIP, ZSTD])
def test_compressed_round_trip(encoding):
    if encoding is GZIP:
        compressed = [gzip.compress(BODY), gzip.compress(BODY[:50]) + gzip.compress(BODY[50:])]
    else:
        streaming = zstandard.ZstdCompressor().compressobj()
        compressed = [
            zstandard.ZstdCompressor().compress(BODY),
            streaming.compress(BODY) + streaming.flush(),  # no content size in the frame header
            zstandard.ZstdCompressor().compress(BODY[:50]) + zstandard.ZstdCompressor().compress(BODY[50:]),
        ]
    for data in compressed:
        assert objects(decode(data, JSON, encoding)) == SAMPLE


@pytest.mark.parametrize("encoding", [GZIP, ZSTD])
def test_decoded_size_limit_is_exact(encoding):
    body = b'[{"a":"' + b"x" * 1000 + b'"}]'
    data = gzip.compress(body) if encoding is GZIP else zstandard.ZstdCompressor().compress(body)
    assert decode(data, JSON, encoding, max_body_bytes=len(body)).count == 1
    error = fails(data, JSON, encoding, max_body_bytes=len(body) - 1)
    assert (error.status, error.code) == (413, "body_too_large")


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return gzip_stream(b"\0" * MIB, 100, level=1)  # 100 MiB of zeros, ~100 KiB compressed


def test_gzip_bomb_is_413_quickly_without_allocating(gzip_bomb):
    assert len(gzip_bomb) < 2 * MIB
    tracemalloc.start()
    started = time.perf_counter()
    try:
        error = fails(gzip_bomb, JSON, GZIP, max_body_bytes=MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (error.status, error.code) == (413, "body_too_large")
    assert time.perf_counter() - started < 1.0
    assert peak < 8 * MIB


def test_zstd_bombs_are_413():
    # With the size in the frame header (refused from the header) and without (bounded reads).
    data = zstandard.ZstdCompressor().compress(b"\0" * (20 * MIB))
    error = fails(data, JSON, ZSTD, max_body_bytes=MIB)
    assert (error.status, error.code) == (413, "body_too_large")
    compressor = zstandard.ZstdCompressor().compressobj()
    data = b"".join(compressor.compress(b"\0" * MIB) for _ in range(100)) + compressor.flush()
    assert zstandard.frame_content_size(data) == -1
    tracemalloc.start()
    try:
        error = fails(data, JSON, ZSTD, max_body_bytes=MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (error.status, error.code) == (413, "body_too_large")
    assert peak < 8 * MIB


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not gzip at all",
        gzip.compress(BODY)[:-4],
        gzip.compress(BODY)[:20],
        gzip.compress(BODY) + b"trailing garbage",
        gzip.compress(BODY)[:30] + bytes(64) + gzip.compress(BODY)[94:],
    ],
    ids=["empty", "garbage", "truncated-trailer", "truncated", "trailing-garbage", "corrupt"],
)
def test_bad_gzip(data):
    error = fails(data, JSON, GZIP)
    assert (error.status, error.code) == (400, "bad_encoding")
    assert "gzip" in error.detail


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not zstd at all",
        zstandard.ZstdCompressor().compress(BODY)[:-5],
        zstandard.ZstdCompressor(write_checksum=True).compress(BODY)[:-2],
        zstandard.ZstdCompressor().compress(BODY) + b"trailing garbage",
        zstandard.ZstdCompressor(write_checksum=True).compress(BODY)[:-4] + b"\0\0\0\0",
    ],
    ids=["empty", "garbage", "truncated", "truncated-checksum", "trailing-garbage", "bad-checksum"],
)
def test_bad_zstd(data):
    error = fails(data, JSON, ZSTD)
    assert (error.status, error.code) == (400, "bad_encoding")
    assert "zstd" in error.detail
    # The per-thread decompressor is still usable afterwards.
    assert decode(zstandard.ZstdCompressor().compress(BODY), JSON, ZSTD).count == len(SAMPLE)


# ----------------------------------------------------------------------------------- limits


def test_body_too_large():
    body = b'[{"a":"' + b"x" * 100 + b'"}]'
    assert decode(body, max_body_bytes=len(body)).count == 1
    error = fails(body, max_body_bytes=len(body) - 1)
    assert (error.status, error.code) == (413, "body_too_large")
    assert str(len(body)) in error.detail and str(len(body) - 1) in error.detail


def test_record_too_large_counts_compact_size():
    small = msgspec.json.encode({"a": "x"})
    big = msgspec.json.encode({"a": "x" * 100})
    spaced_big = json.dumps({"a": "x" * 100}, indent=8).encode()  # larger than the limit as sent
    limit = len(big)
    assert len(spaced_big) > limit
    assert decode(b"[" + small + b"," + spaced_big + b"]", max_record_bytes=limit).count == 2
    too_big = msgspec.json.encode({"a": "x" * 101})
    error = fails(b"[" + small + b"," + small + b"," + too_big + b"]", max_record_bytes=limit)
    assert (error.status, error.code) == (413, "record_too_large")
    assert "record 2" in error.detail and str(len(too_big)) in error.detail and str(limit) in error.detail


def test_record_too_large_csv_and_ndjson():
    error = fails(b"a\nshort\n" + b"x" * 200 + b"\n", CSV, max_record_bytes=100)
    assert (error.status, error.code) == (413, "record_too_large")
    assert "record 1 (row 3" in error.detail
    error = fails(b'{"a":1}\n\n{"a":"' + b"x" * 200 + b'"}\n', NDJSON, max_record_bytes=100)
    assert (error.status, error.code) == (413, "record_too_large")
    assert "record 1 (line 3)" in error.detail


# ------------------------------------------------------------------------------- empty bodies


@pytest.mark.parametrize(
    ("body", "fmt"),
    [
        (b"", JSON),
        (b"  \r\n\t ", JSON),
        (b"", NDJSON),
        (b"\n\n", NDJSON),
        (b"", CSV),
        (b"\r\n", CSV),
    ],
)
def test_empty_body(body, fmt):
    error = fails(body, fmt)
    assert (error.status, error.code) == (400, "empty_body")


@pytest.mark.parametrize(
    ("body", "fmt"),
    [
        (b"[]", JSON),
        (b" [ ] ", JSON),
        (b'{"records": []}', JSON),
        (b'{"events": [], "batch_id": 1}', JSON),
        (b"\n  \n\t\r\n \n", NDJSON),
        (b"a,b,c\n", CSV),
        (b"a,b,c\r\n\r\n\r\n", CSV),
    ],
)
def test_zero_records_is_empty_body(body, fmt):
    error = fails(body, fmt)
    assert (error.status, error.code) == (400, "empty_body")
    assert "no records" in error.detail


def test_empty_gzip_content_is_empty_body():
    error = fails(gzip.compress(b""), JSON, GZIP)
    assert (error.status, error.code) == (400, "empty_body")


# ------------------------------------------------------------------------------------ UTF-8


@pytest.mark.parametrize(
    ("body", "offset"),
    [
        (b'[{"\xff":1}]', 3),
        (b'[{"a":"ok \xc3\xa9 then \xc3"}]', 18),
        (b'[{"a":"\xed\xa0\x80"}]', 7),  # an encoded surrogate
        (b'[{"a":"\xc0\xaf"}]', 7),  # overlong
        (b'{"records":[{"k":"v"}],"x":"\xfe"}', 28),
    ],
)
def test_invalid_utf8_json(body, offset):
    error = fails(body)
    assert (error.status, error.code) == (400, "invalid_utf8")
    assert f"at byte {offset}" in error.detail


def test_invalid_utf8_ndjson_and_csv_name_the_line():
    error = fails(b'{"a":1}\n{"\xff":2}\n', NDJSON)
    assert (error.code, error.status) == ("invalid_utf8", 400)
    assert "at byte 10" in error.detail and "line 2" in error.detail
    error = fails(b"a,b\n1,2\n3,\xe2\x82\n", CSV)
    assert (error.code, error.status) == ("invalid_utf8", 400)
    assert "at byte 10" in error.detail and "line 3" in error.detail


def test_invalid_utf8_found_past_the_first_chunk():
    value = "é" * (MIB // 2 + 3)  # 2-byte sequences across the 1 MiB chunk boundary
    body = msgspec.json.encode([{"a": value}])
    assert decode(body, max_body_bytes=4 * MIB, max_record_bytes=4 * MIB).count == 1
    bad = body[:-5] + b"A" + body[-4:]  # drop a lead byte: its continuation byte is left alone
    error = fails(bad, max_body_bytes=4 * MIB, max_record_bytes=4 * MIB)
    assert error.code == "invalid_utf8"
    assert f"at byte {len(body) - 4}:" in error.detail


# ------------------------------------------------------------------------------- NUL bytes


@pytest.mark.parametrize(
    ("body", "fmt", "code"),
    [
        (b'[{"a":"x\x00y"}]', JSON, "invalid_json"),
        (b'[{"a":1}\x00]', JSON, "invalid_json"),
        (b'[{"a":1}]\x00', JSON, "invalid_json"),
        (b'{"a":1}\n{"b":"\x00"}\n', NDJSON, "invalid_json"),
        (b'{"a":1}\n\x00\n', NDJSON, "invalid_json"),
        (b"a,b\n1,\x00\n", CSV, "bad_csv"),
    ],
)
def test_raw_nul_byte_is_refused(body, fmt, code):
    error = fails(body, fmt)
    assert (error.status, error.code) == (400, code)
    assert "byte" in error.detail


def test_escaped_nul_is_accepted():
    for body, fmt in ((b'[{"a":"\\u0000"}]', JSON), (b'{"a":"\\u0000"}\n', NDJSON)):
        records = decode(body, fmt)
        assert records.blob == b'{"a":"\\u0000"}'
        assert objects(records) == [{"a": "\u0000"}]


# ------------------------------------------------------------------------------- invalid JSON


@pytest.mark.parametrize(
    ("body", "position"),
    [
        (b'[{"a":1},{"b" 2}]', 14),
        (b'{"records":[{"a":1}', 19),
        (b'[{"a":1}] trailing', 10),
        (b'[{"a":tru}]', 6),
        (b'[{"a":trux}]', 6),  # msgspec points into the bad literal
        (b"[NaN]", 1),
        (b'[{"a":"\\x"}]', 8),
        (b'[{"a":1,}]', 8),
        (b'[{"a":"line\nbreak"}]', 11),
    ],
)
def test_invalid_json_names_the_byte(body, position):
    error = fails(body)
    assert (error.status, error.code) == (400, "invalid_json")
    assert names_byte(error.detail, position)


@pytest.mark.parametrize(
    "body",
    [b"5", b'"records"', b"null", b'{"records": 5}', b'{"records": null}', b'{"events": {"a": 1}}'],
)
def test_wrong_top_level_shape(body):
    error = fails(body)
    assert (error.status, error.code) == (400, "invalid_json")
    assert "records" in error.detail


def test_envelope_without_records_or_with_both():
    error = fails(b'{"batch_id": 1, "data": [{"a": 1}]}')
    assert (error.status, error.code) == (400, "invalid_json")
    assert "has no" in error.detail and '"records"' in error.detail
    error = fails(b'{"records": [{"a": 1}], "events": [{"b": 2}]}')
    assert (error.status, error.code) == (400, "invalid_json")
    assert "both" in error.detail


@pytest.mark.parametrize(
    ("body", "line", "position"),
    [
        (b'{"a":1}\n{"b" 2}\n', 2, 13),
        (b'{"a":1}\r\n\r\n{"b":2}\r\n{"c":\r\n', 4, 25),  # at the end of its line
        (b'{"a":1}\n{"b":2} {"c":3}\n', 2, 16),  # two values on one line
        (b'{"a":1},{"b":2}\n', 1, 7),
        (b'{"a":\n1}\n', 1, 5),  # a value spanning lines
        (b'{"x":[1\n2]}\n{"a":1},{"b":2}\n', 1, 7),  # would parse if the lines were joined by commas
        (b'{"a":1}\n\n\n]\n', 4, 10),
    ],
)
def test_ndjson_invalid_json_names_line_and_byte(body, line, position):
    error = fails(body, NDJSON)
    assert (error.status, error.code) == (400, "invalid_json")
    assert f"line {line}" in error.detail and names_byte(error.detail, position)


# ---------------------------------------------------------------------------- not an object


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"[1]", "array"),
        (b'"s"', "string"),
        (b"1.5", "number"),
        (b"-1", "number"),
        (b"true", "boolean"),
        (b"null", "null"),
    ],
)
def test_not_an_object(value, kind):
    error = fails(b'[{"a":1}, {"b":2}, ' + value + b"]")
    assert (error.status, error.code) == (400, "not_an_object")
    assert "record 2" in error.detail and kind in error.detail
    error = fails(b'{"a":1}\n\n' + value + b"\n", NDJSON)
    assert (error.status, error.code) == (400, "not_an_object")
    assert "record 1 (line 3)" in error.detail and kind in error.detail


# ------------------------------------------------------------------------------------ depth


@pytest.mark.parametrize("make", [nested, nested_array])
def test_depth_64_accepted_65_rejected(make):
    assert decode(b"[" + make(64) + b"]").count == 1
    assert decode(b'{"records":[' + make(64) + b"]}").count == 1
    assert decode(make(64) + b"\n", NDJSON).count == 1
    error = fails(b'[{"a":1},' + make(65) + b"]")
    assert (error.status, error.code) == (400, "too_deep")
    assert "record 1" in error.detail and "64" in error.detail
    error = fails(b'{"a":1}\n' + make(65) + b"\n", NDJSON)
    assert (error.status, error.code) == (400, "too_deep")
    assert "record 1 (line 2)" in error.detail


def test_depth_names_the_record_among_many():
    records = [msgspec.json.encode({"i": i, "pad": "x" * 200}) for i in range(100)]
    records[57] = nested(65)
    error = fails(b"[" + b",".join(records) + b"]")
    assert error.code == "too_deep" and "record 57" in error.detail
    records[57] = nested(64)
    assert decode(b"[" + b",".join(records) + b"]").count == 100


@pytest.mark.parametrize("depth", [5000, 100_000])
def test_very_deep_is_too_deep_not_recursion_error(depth):
    deep = b"[" * depth + b"]" * depth
    for body, fmt, where in (
        (b"[" + deep + b"]", JSON, "record 0"),
        (b'[{"a":1},{"b":2},' + deep + b"]", JSON, "record 2"),
        (b'{"batch_id":"x","records":[{"a":1},' + deep + b"]}", JSON, "record 1"),
        (b'{"a":1}\n\n' + deep + b"\n", NDJSON, "record 1 (line 3)"),
    ):
        error = fails(body, fmt)
        assert (error.status, error.code) == (400, "too_deep")
        assert where in error.detail


def test_very_deep_outside_the_records_is_too_deep():
    error = fails(b'{"meta":' + b"[" * 5000 + b"]" * 5000 + b',"records":[{"a":1}]}')
    assert (error.status, error.code) == (400, "too_deep")
    assert "outside the records" in error.detail


def test_unclosed_deep_body():
    error = fails(b"[" * 5000)
    assert error.status == 400 and error.code in ("too_deep", "invalid_json")


def test_brackets_inside_strings_do_not_count():
    record = {"a": "[" * 100, "b": "{" * 100, "c": ["]" * 100, "}" * 50]}
    assert objects(decode(msgspec.json.encode([record] * 3))) == [record] * 3
    assert objects(decode(msgspec.json.encode(record) + b"\n", NDJSON)) == [record]


@pytest.mark.parametrize(
    "text",
    [
        '\\"' + "[" * 100,  # an escaped quote does not end the string
        "\\" * 3 + '"' + "[" * 100,
        "[" * 100 + "\\",  # the string ends with an escaped backslash
        "\\\\" * 40 + "[" * 100,
    ],
)
def test_escapes_inside_strings(text):
    record = {"s": text, "t": "[" * 70}
    body = msgspec.json.encode([record, record])
    assert b"\\" in body
    assert objects(decode(body)) == [record, record]


def test_string_ending_in_backslash_before_deep_nesting():
    # If '\\"' were read as an escaped quote, the nesting would look like string content.
    body = b'[{"s":"\\\\","d":' + b"[" * 64 + b"]" * 64 + b"}]"
    error = fails(body)
    assert error.code == "too_deep" and "record 0" in error.detail
    body = b'[{"s":"\\\\","d":' + b"[" * 63 + b"]" * 63 + b',"t":"' + b"[" * 100 + b'"}]'
    assert decode(body).count == 1


def test_first_deeper_across_scan_chunks(monkeypatch):
    monkeypatch.setattr(records, "SCAN_CHUNK", 7)
    text = msgspec.json.encode({"s": '\\"' + "\\" * 9 + "[" * 30, "d": [[[[1]]]]})
    for limit, expected in ((5, -1), (4, text.index(b"[[[[1") + 3)):
        assert records.first_deeper(text, limit) == expected


# -------------------------------------------------------------------------------------- CSV


def test_csv_ragged_row_names_the_row():
    error = fails(b"a,b,c\n1,2,3\n4,5\n6,7,8\n", CSV)
    assert (error.status, error.code) == (400, "bad_csv")
    assert "row 3" in error.detail and "header is row 1" in error.detail and "2 fields" in error.detail


def test_csv_row_numbers_with_multiline_fields_and_blank_lines():
    body = b'a,b\n1,"two\nlines"\n\n3,4,5\n'
    error = fails(body, CSV)
    assert (error.status, error.code) == (400, "bad_csv")
    assert "row 3" in error.detail and "line 5" in error.detail


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'a,b\n1,"x"y\n', "row 2"),
        (b'a,b\n1,2\n3,"unterminated\n', "row 3"),
        (b"a,,c\n1,2,3\n", "column 2"),
        (b"a,b,a\n1,2,3\n", "columns 1 and 3"),
    ],
)
def test_bad_csv(body, needle):
    error = fails(body, CSV)
    assert (error.status, error.code) == (400, "bad_csv")
    assert needle in error.detail


# ------------------------------------------------------------------------------------- fuzz


def fuzz_inputs(rng: random.Random):
    valid = {
        JSON: [BODY, json.dumps(SAMPLE, indent=1).encode(), b"[" + nested(64) + b"]"],
        NDJSON: [b"\r\n".join(json.dumps(obj).encode() for obj in SAMPLE)],
        CSV: [csv_body(["a", "b"], [["1", 'x,"y"\nz'], ["2", "é"]])],
    }
    while True:
        fmt = rng.choice([JSON, NDJSON, CSV])
        body = rng.choice(valid[fmt])
        roll = rng.random()
        if roll < 0.2:
            body = rng.randbytes(rng.randrange(64))
        elif roll < 0.45:
            body = body[: rng.randrange(len(body) + 1)]
        elif roll < 0.8:
            mutable = bytearray(body)
            for _ in range(rng.randrange(1, 4)):
                position = rng.randrange(len(mutable))
                mutable[position] = rng.choice([rng.randrange(256), *b'{}[]",:\\\n\r \x00'])
            body = bytes(mutable)
        else:
            body = body[rng.randrange(len(body)) :]
        encoding = rng.choice([IDENTITY, IDENTITY, GZIP, ZSTD])
        if encoding is GZIP:
            body = gzip.compress(body)
        elif encoding is ZSTD:
            body = zstandard.ZstdCompressor().compress(body)
        if encoding is not IDENTITY and rng.random() < 0.3:
            body = body[: rng.randrange(len(body) + 1)] if rng.random() < 0.5 else body + rng.randbytes(3)
        yield body, fmt, encoding


def test_fuzz_only_refusals():
    seed = int(os.environ.get("RINGGATE_FUZZ_SEED", random.randrange(1 << 32)))
    print(f"fuzz seed {seed} (set RINGGATE_FUZZ_SEED to replay)")
    rng = random.Random(seed)
    deadline = time.monotonic() + 2.0
    runs = accepted = 0
    for body, fmt, encoding in fuzz_inputs(rng):
        if time.monotonic() > deadline:
            break
        runs += 1
        try:
            records = decode(body, fmt, encoding, max_body_bytes=4096, max_record_bytes=2048)
        except Refusal as error:
            assert error.status in (400, 413, 415) and error.code and error.detail
            continue
        except Exception as exc:  # pragma: no cover - the failure message is the point
            pytest.fail(f"seed {seed}: {fmt} {encoding} {body!r} raised {exc!r}")
        accepted += 1
        try:
            assert_well_formed(records)
        except AssertionError as exc:  # pragma: no cover
            pytest.fail(f"seed {seed}: {fmt} {encoding} {body!r} gave malformed records: {exc}")
    assert runs > 100 and accepted > 0, (runs, accepted)


def test_depth_checks_in_small_chunks(monkeypatch):
    # Many records with > 64 brackets in strings are scanned in groups; the RecursionError path
    # scans the body chunk by chunk. Tiny chunks exercise every boundary.
    monkeypatch.setattr(records, "SCAN_CHUNK", 300)
    suspects = [msgspec.json.encode({"i": i, "s": "[" * 70 + '\\"' * 5, "t": "]" * 70}) for i in range(10)]
    assert decode(b"[" + b",".join(suspects) + b"]").count == 10
    suspects[7] = b'{"s":"' + b"[" * 70 + b'","d":' + b"[" * 64 + b"]" * 64 + b"}"
    error = fails(b"[" + b",".join(suspects) + b"]")
    assert error.code == "too_deep" and "record 7" in error.detail
    monkeypatch.setattr(records, "SCAN_CHUNK", 64)
    body = b'{"records":[{"a":"x,y"},{"b":[1,2]},{"c":"\\\\"},' + b"[" * 5000 + b"]" * 5000 + b"]}"
    error = fails(body)
    assert error.code == "too_deep" and "record 3" in error.detail


@pytest.mark.parametrize("count", [2, 50])  # the few-records path and the numpy path
def test_record_too_large_wins_over_not_an_object_whatever_the_count(count):
    records = [b"1"] + [b'{"a":"' + b"x" * 100 + b'"}'] * (count - 1)
    body = b"[" + b",".join(records) + b"]"
    with pytest.raises(Refusal) as info:
        decode_body(body, BodyFormat.JSON, Encoding.IDENTITY, max_body_bytes=1 << 20, max_record_bytes=50)
    assert (info.value.status, info.value.code) == (413, "record_too_large")
    assert "record 1" in info.value.detail
