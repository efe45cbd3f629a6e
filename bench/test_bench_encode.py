"""NDJSON object assembly from a Batch, what ObjectStoreSink does per batch, beside plain baselines.

    python -m pytest bench/test_bench_encode.py -p no:randomly -p no:cacheprovider --benchmark-only \
        -o addopts="" -o testpaths=bench [--benchmark-json=out.json]

A batch is 10,000 records of ~128 bytes, laid out as the flusher hands it over (a Batch whose data
is already NDJSON). Measured, in one run:
- the object's bytes: `ObjectStoreSink._pieces` for compression none (zero-copy slices), gzip
  (level 1) and zstd (level 3);
- a whole `ObjectStoreSink.deliver` into a LocalStore in a temporary directory (obstore writes a
  temporary file and renames it) and into a MemoryStore;
- baselines: the same bytes built the way a hand-written sink would, `b"\\n".join(records)` from
  a list of bytes, and `msgspec.json.Encoder().encode_lines` from decoded dicts (re-encoding); and
  the same file written with plain `open/write/os.replace` (what bench/baselines/fastapi_queue.py
  does), which `deliver` into a LocalStore is compared against.
The PostgreSQL COPY encoder is measured in bench/test_bench_pgcopy.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile

import msgspec
import pytest
from _report import write_report  # noqa: E402

from ringgate.sinks.base import Batch
from ringgate.sinks.objstore import ObjectStoreSink

COUNT = 10_000
_results: dict[str, float] = {}  # case -> median seconds per batch


def _payloads(n: int = COUNT) -> list[bytes]:
    rnd = random.Random(7)
    kinds = ["click", "view", "scroll", "purchase"]
    out = []
    for i in range(n):
        record = {"id": i, "ts": f"2026-11-25T10:00:{i % 60:02d}.{i % 1000:03d}Z", "user": f"user{rnd.randrange(10**5):05d}",
                  "event": kinds[i % 4], "props": {"page": "/home", "x": rnd.randrange(1000), "y": rnd.randrange(1000)},
                  "ok": True}
        out.append(msgspec.json.encode(record))
    return out


PAYLOADS = _payloads()
DICTS = [msgspec.json.decode(p) for p in PAYLOADS]
BATCH = Batch.from_payloads(PAYLOADS, instance="bench", received_ns=1_764_064_800_000_000_000)
BATCH_BYTES = len(BATCH.data)


@pytest.fixture(scope="module")
def directory():
    path = tempfile.mkdtemp(prefix="ringgate-bench-encode-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _note(benchmark, name: str) -> None:
    if benchmark.stats is None:
        return
    median = benchmark.stats.stats.median
    _results[name] = median
    benchmark.extra_info["records_per_s"] = round(COUNT / median)
    benchmark.extra_info["mb_per_s"] = round(BATCH_BYTES / median / 1e6, 1)


def _consume(pieces) -> int:
    return sum(len(p) for p in pieces)


# -- the object's bytes ----------------------------------------------------------------------------


def test_baseline_join_bytes(benchmark):
    benchmark.group = "ndjson object bytes, 10k records"
    out = benchmark(lambda: b"\n".join(PAYLOADS) + b"\n")
    assert out == bytes(BATCH.data)
    _note(benchmark, "baseline: b'\\n'.join(list of bytes)")


def test_baseline_encode_lines(benchmark):
    benchmark.group = "ndjson object bytes, 10k records"
    encoder = msgspec.json.Encoder()
    out = benchmark(encoder.encode_lines, DICTS)
    assert out.count(b"\n") == COUNT
    _note(benchmark, "baseline: msgspec encode_lines(dicts)")


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_pieces(benchmark, compression):
    benchmark.group = "ndjson object bytes, 10k records"
    sink = ObjectStoreSink("memory://", compression=compression)
    size = benchmark(lambda: _consume(sink._pieces(BATCH.ndjson())))
    if compression == "none":
        assert size == BATCH_BYTES
    _note(benchmark, f"ringgate: ObjectStoreSink._pieces, {compression}")


# -- whole deliveries ------------------------------------------------------------------------------


def test_baseline_file_write(benchmark, directory):
    benchmark.group = "deliver one 10k batch"
    target = os.path.join(directory, "plain")
    os.makedirs(target, exist_ok=True)
    names = iter(range(10**9))

    def write():
        path = os.path.join(target, f"{next(names)}")
        with open(path + ".tmp", "wb") as f:
            f.write(BATCH.ndjson())
        os.replace(path + ".tmp", path + ".ndjson")

    benchmark.pedantic(write, rounds=200, warmup_rounds=5)
    _note(benchmark, "baseline: open/write/os.replace")
    with contextlib.suppress(OSError):
        shutil.rmtree(target)


@pytest.mark.parametrize("store", ["file", "memory"])
def test_deliver(benchmark, directory, store):
    benchmark.group = "deliver one 10k batch"
    url = f"file://{directory}/sink" if store == "file" else "memory://"
    sink = ObjectStoreSink(url)
    first = iter(range(0, 10**12, COUNT * 64))

    def deliver():
        # a new name every round, as in a flusher (the same name would overwrite one object)
        offset = next(first)
        sink.deliver(Batch(instance=BATCH.instance, ring=0, epoch=1, positions=BATCH.positions + offset,
                           received_ns=BATCH.received_ns, starts=BATCH.starts, lengths=BATCH.lengths,
                           data=BATCH.data, next_position=BATCH.next_position + offset))

    benchmark.pedantic(deliver, rounds=200, warmup_rounds=5)
    _note(benchmark, f"ringgate: ObjectStoreSink.deliver, {store}")


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _results:
        return
    lines = ["", f"NDJSON objects: {COUNT} records, {BATCH_BYTES / 1e6:.2f} MB per batch (median)",
             f"{'case':45} {'ms/batch':>9} {'records/s':>13} {'MB/s':>8}"]
    for name, seconds in _results.items():
        lines.append(f"{name:45} {seconds * 1e3:9.3f} {COUNT / seconds:13,.0f} {BATCH_BYTES / seconds / 1e6:8.0f}")
    plain = _results.get("baseline: open/write/os.replace")
    local = _results.get("ringgate: ObjectStoreSink.deliver, file")
    ratios = {}
    if plain and local:
        ratios["deliver to LocalStore / plain file write (time)"] = local / plain
        lines.append(f"ObjectStoreSink.deliver into a LocalStore takes {local / plain:.2f}x the time of a plain "
                     "open/write/os.replace of the same bytes")
    lines.append(json.dumps({"seconds_per_batch": {k: round(v, 6) for k, v in _results.items()},
                             "ratios": {k: round(v, 2) for k, v in ratios.items()}}))
    write_report(request.config, lines)
