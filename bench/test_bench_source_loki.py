"""Loki push beside /v1/ingest: records/s through ringgate's ASGI app into a real ring, same lines.

    python -m pytest bench/test_bench_source_loki.py -p no:randomly -p no:cacheprovider \
        --benchmark-only -o addopts="" -o testpaths=bench

As bench/test_bench_app.py (its `ringgate_app` fixture): one call of the app per request with the whole body at once, a real
native ring (16 MiB, drained between rounds, untimed), shared-memory metrics; no HTTP. The same
100 log lines (~100 B each, 4 streams of 25, as Promtail batches them per stream) go as
- `POST /loki/api/v1/push`, application/json (`{"streams": [...]}`);
- the same, gzip (Content-Encoding, as Fluent Bit and the Python handlers send it);
- `POST /loki/api/v1/push`, application/x-protobuf, snappy (Promtail, Alloy);
- `POST /v1/ingest`, a JSON array of the records Loki push stores (the same bytes into the ring).
The table at the end gives records/s and the ratio to /v1/ingest.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import cramjam
import pytest

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import test_bench_app as bench_app  # noqa: E402
from _report import write_report  # noqa: E402
from test_bench_app import ringgate_app  # noqa: E402, F401 - the same app, ring and metrics as there

from ringgate.sources._loki_push_pb2 import PushRequest  # noqa: E402

LINES = 100
STREAMS = 4
REQUESTS = 200  # per round: 200 x 100 records of ~200 B framed fit a 16 MiB ring
_results: dict[str, tuple[float, float]] = {}  # case -> records/s of the median and of the fastest round


def _streams() -> list[tuple[dict[str, str], list[tuple[int, str]]]]:
    base = 1_764_600_000_000_000_000
    out = []
    for s in range(STREAMS):
        labels = {"job": "varlogs", "host": f"web-{s}", "filename": f"/var/log/app-{s}.log"}
        entries = []
        for i in range(LINES // STREAMS):
            n = s * (LINES // STREAMS) + i
            line = f"2026-12-01T19:43:{n % 60:02d}Z level=info msg=\"request served\" path=/api/v1/items/{n} status=200 ms={n % 97}"
            entries.append((base + n * 1_000_000, line))
        out.append((labels, entries))
    return out


def _bodies() -> dict[str, tuple[str, list[tuple[bytes, bytes]], bytes]]:
    streams = _streams()
    loki_json = json.dumps({"streams": [
        {"stream": labels, "values": [[str(ts), line] for ts, line in entries]} for labels, entries in streams
    ]}, separators=(",", ":")).encode()
    request = PushRequest()
    for labels, entries in streams:
        stream = request.streams.add(labels="{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}")
        for ts, line in entries:
            entry = stream.entries.add(line=line)
            entry.timestamp.FromNanoseconds(ts)
    snappy = bytes(cramjam.snappy.compress_raw(request.SerializeToString()))
    native = json.dumps([
        {"stream": labels, "timestamp_ns": ts, "line": line} for labels, entries in streams for ts, line in entries
    ], separators=(",", ":")).encode()
    json_type = [(b"content-type", b"application/json")]
    return {
        "/v1/ingest, JSON array of the same records": ("/v1/ingest", json_type, native),
        "loki push, JSON": ("/loki/api/v1/push", json_type, loki_json),
        "loki push, JSON gzip": ("/loki/api/v1/push", [*json_type, (b"content-encoding", b"gzip")],
                                 gzip.compress(loki_json, 6)),
        "loki push, protobuf snappy": ("/loki/api/v1/push", [(b"content-type", b"application/x-protobuf")], snappy),
    }


BODIES = _bodies()




@pytest.mark.parametrize("case", list(BODIES))
def test_records_per_second(benchmark, request, case):
    benchmark.group = f"records/s into a ring, {LINES} log lines per request"
    app, drain = request.getfixturevalue("ringgate_app")
    path, headers, body = BODIES[case]
    rates = bench_app.records_per_second(benchmark, app, drain, body, path, headers, LINES,
                                         202 if path == "/v1/ingest" else 204, REQUESTS, count=20)
    if rates is not None:
        _results[case] = rates
        benchmark.extra_info["body_bytes"] = len(body)


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _results:
        return
    native = _results.get("/v1/ingest, JSON array of the same records")
    lines = ["", f"Loki push beside /v1/ingest, {LINES} lines per request, in-process app into a ring",
             "(records/s of the median round and of the fastest: on a loaded machine the fastest shows the cost best)",
             f"{'case':45} {'body B':>7} {'median':>11} {'ratio':>6} {'fastest':>11} {'ratio':>6}"]
    for case, (median, fastest) in _results.items():
        ratios = [f"{rate / base:.2f}x" if native else "" for rate, base in zip((median, fastest), native or (1, 1), strict=True)]
        lines.append(f"{case:45} {len(BODIES[case][2]):7d} {median:11,.0f} {ratios[0]:>6} {fastest:11,.0f} {ratios[1]:>6}")
    lines.append(json.dumps({"records_per_s": {k: [round(v) for v in rates] for k, rates in _results.items()}}))
    write_report(request.config, lines)
