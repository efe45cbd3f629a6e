"""Micro benchmarks of ringgate.ingest.decode_body: records/s per body format.

    python -m pytest bench/test_bench_ingest.py -q -p no:cacheprovider --benchmark-only \
        -o addopts="" -o testpaths=bench [--benchmark-json=out.json]

The baseline, in the same run, is plain `msgspec.json.decode(body)` of the envelope body into
dicts and lists (which checks less and re-encodes nothing). Each body holds 100 records of
~128 bytes, as in MEASUREMENTS.md. A table of records/s and the ratio to the baseline is printed
at the end of the module (and each result's extra_info carries the same numbers).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random

import msgspec
import pytest
from _report import write_report  # noqa: E402
from ringgate.ingest import BodyFormat, Encoding, decode_body

zstandard = pytest.importorskip("zstandard")

COUNT = 100
LIMITS = {"max_body_bytes": 16 << 20, "max_record_bytes": 1 << 20}


def _records() -> list[dict]:
    rng = random.Random(42)
    return [
        {
            "id": i,
            "ts": "2026-11-25T10:00:00.123Z",
            "user": f"user{i:05d}",
            "event": rng.choice(["click", "view", "scroll"]),
            "props": {"page": "/home", "x": rng.randrange(1000), "y": rng.randrange(1000)},
            "ok": True,
        }
        for i in range(COUNT)
    ]


RECORDS = _records()
ENVELOPE = msgspec.json.encode({"records": RECORDS, "batch_id": "client-1"})


def _csv() -> bytes:
    flat = [{k: v for k, v in record.items() if k != "props"} | record["props"] for record in RECORDS]
    out = io.StringIO()
    writer = csv.DictWriter(out, list(flat[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    return out.getvalue().encode()


# Depth check paths: records of >= 130 bytes need the bracket count; more than 64 brackets in a
# record (here inside strings) need the exact string-aware scan.
LONG = [record | {"note": "x" * 170} for record in RECORDS]
BRACKETS = [record | {"note": "[" * 70} for record in RECORDS]

CASES = {
    "json envelope": (ENVELOPE, BodyFormat.JSON, Encoding.IDENTITY),
    "json envelope, json.dumps spacing": (
        json.dumps({"records": RECORDS}).encode(),
        BodyFormat.JSON,
        Encoding.IDENTITY,
    ),
    "json array": (msgspec.json.encode(RECORDS), BodyFormat.JSON, Encoding.IDENTITY),
    "ndjson": (msgspec.json.Encoder().encode_lines(RECORDS), BodyFormat.NDJSON, Encoding.IDENTITY),
    "json envelope, ~300 B records": (
        msgspec.json.encode({"records": LONG}),
        BodyFormat.JSON,
        Encoding.IDENTITY,
    ),
    "json envelope, 70 '[' in a string": (
        msgspec.json.encode({"records": BRACKETS}),
        BodyFormat.JSON,
        Encoding.IDENTITY,
    ),
    "csv": (_csv(), BodyFormat.CSV, Encoding.IDENTITY),
    "gzip json envelope": (gzip.compress(ENVELOPE), BodyFormat.JSON, Encoding.GZIP),
    "zstd json envelope": (zstandard.ZstdCompressor().compress(ENVELOPE), BodyFormat.JSON, Encoding.ZSTD),
}

_results: dict[str, float] = {}  # case -> median seconds per body


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _results:
        return
    baseline = _results.get("baseline: msgspec.json.decode to dicts")
    lines = [
        "",
        f"decode_body, {COUNT} records of ~{len(ENVELOPE) // COUNT} B per body (median)",
        f"{'case':40} {'us/body':>9} {'records/s':>12} {'vs baseline':>12}",
    ]
    for name, seconds in _results.items():
        ratio = f"{baseline / seconds:.2f}x" if baseline else "-"
        lines.append(f"{name:40} {seconds * 1e6:9.1f} {COUNT / seconds:12,.0f} {ratio:>12}")
    write_report(request.config, lines)


def _record(benchmark, name: str) -> None:
    if benchmark.stats is None:  # --benchmark-disable: the function ran once, untimed
        return
    median = benchmark.stats.stats.median
    _results[name] = median
    benchmark.extra_info["records_per_s"] = round(COUNT / median)
    baseline = _results.get("baseline: msgspec.json.decode to dicts")
    if baseline:
        benchmark.extra_info["ratio_to_baseline"] = round(baseline / median, 3)


def test_baseline_msgspec_decode_to_dicts(benchmark):
    # Must run first: the other cases report their ratio to it.
    result = benchmark(msgspec.json.decode, ENVELOPE)
    assert len(result["records"]) == COUNT
    _record(benchmark, "baseline: msgspec.json.decode to dicts")


@pytest.mark.parametrize("name", list(CASES))
def test_decode_body(benchmark, name):
    body, fmt, encoding = CASES[name]
    records = benchmark(decode_body, body, fmt, encoding, **LIMITS)
    assert records.count == COUNT
    _record(benchmark, name)
