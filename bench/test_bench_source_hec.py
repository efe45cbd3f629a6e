"""Splunk HEC beside `/v1/ingest`, same events, same run: records/s through the in-process app.

    python -m pytest bench/test_bench_source_hec.py -p no:randomly -p no:cacheprovider --benchmark-only \
        -o addopts="" -o testpaths=bench

The app and its ring as in bench/test_bench_app.py (a real native ring drained between rounds,
the ASGI callable called directly, no HTTP). The same 100 HEC envelopes (time, host, source,
sourcetype, index, event object, fields; ~250 B each) go as `{"records": [...]}` to /v1/ingest
and as HEC sends them to /services/collector/event: one per line (Vector, the OTel exporter)
and back to back (splunk-handler, Fluent Bit); /services/collector/raw gets their messages as lines,
and a request with a channel gets an ackId. The table gives records/s (median round, and best round: steadier on a shared machine)
and the ratio to /v1/ingest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import test_bench_app as bench_app  # noqa: E402
from _report import write_report  # noqa: E402
from test_bench_app import ringgate_app  # noqa: E402, F401  (the fixture: app, ring, drain)

N = 100
REQUESTS = 200  # per round: 200 x 100 framed records of ~260 B fit the 16 MiB ring
EVENTS = [
    {"time": 1700000000.123 + i, "host": f"web-{i % 4}", "source": "/var/log/app.log", "sourcetype": "_json",
     "index": "main", "event": {"message": f"GET /api/items/{i} 200 in {i % 50} ms", "level": "info", "n": i},
     "fields": {"region": "eu-west-1", "pod": f"app-{i % 7}"}}
    for i in range(N)
]
CASES = {  # name -> (path, headers, body)
    "/v1/ingest {records: [...]}": ("/v1/ingest", [(b"content-type", b"application/json")],
                                    json.dumps({"records": EVENTS}).encode()),
    "HEC /services/collector/event, one per line": ("/services/collector/event", [],
                                                   "\n".join(json.dumps(e) for e in EVENTS).encode()),
    "HEC /services/collector/event, back to back": ("/services/collector/event", [],
                                                   "".join(json.dumps(e) for e in EVENTS).encode()),
    "HEC event with a channel (ackId)": ("/services/collector/event",
                                         [(b"x-splunk-request-channel", b"0aa1a2e3-1c1c-4d4f-9a9a-000000000001")],
                                         "\n".join(json.dumps(e) for e in EVENTS).encode()),
    "HEC /services/collector/raw, lines": ("/services/collector/raw", [],
                                           "\n".join(e["event"]["message"] for e in EVENTS).encode()),
}
BASELINE = "/v1/ingest {records: [...]}"
_results: dict[str, tuple[float, float]] = {}  # name -> records/s (median round, best round)




@pytest.mark.parametrize("case", list(CASES))
def test_records_per_second(benchmark, ringgate_app, case):  # noqa: F811
    benchmark.group = "HEC beside /v1/ingest, 100 records per request"
    app, drain = ringgate_app
    path, headers, body = CASES[case]
    rates = bench_app.records_per_second(benchmark, app, drain, body, path, headers, N,
                                         202 if path == "/v1/ingest" else 200, REQUESTS)
    if rates is not None:
        _results[case] = rates


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _results:
        return
    base = _results.get(BASELINE)
    # the best round too: on a shared machine it is the steadier ratio
    lines = ["", "HEC beside /v1/ingest, in-process app, 100 records per request",
             f"{'case':50} {'records/s':>11} {'vs /v1/ingest':>14} {'best round':>11} {'vs':>6}"]
    for name, (median, best) in _results.items():
        ratio = f"{median / base[0]:.2f}x" if base else ""
        best_ratio = f"{best / base[1]:.2f}x" if base else ""
        lines.append(f"{name:50} {median:11.0f} {ratio:>14} {best:11.0f} {best_ratio:>6}")
    lines.append(json.dumps({"records_per_s": {k: round(v[0]) for k, v in _results.items()}}))
    write_report(request.config, lines)
