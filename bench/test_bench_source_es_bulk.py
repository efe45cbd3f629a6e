"""Records/s of the Elasticsearch bulk source beside `/v1/ingest`, with the same documents, same run.

    python -m pytest bench/test_bench_source_es_bulk.py -p no:randomly -p no:cacheprovider \
        --benchmark-only -o addopts="" -o testpaths=bench

In process, as bench/test_bench_app.py measures the app: ringgate's ASGI app with a real ring
(drained between rounds, untimed), called directly with the whole body in one `receive`. Every
request carries the 100 records of the e2e body (bench/e2e.py, ~128 B each):
- `/v1/ingest` as JSON `{"records": [...]}` and as NDJSON (the baseline);
- `/_bulk` with `{"create":{"_index":"logs-app"}}` before each document (what Beats, Fluent Bit
  and Vector send: every stored document gains the `_index` field);
- `/_bulk` with `{"index":{}}` (no metadata: the documents are stored as sent).
The table at the end gives records/s and the ratio to `/v1/ingest` JSON.
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
from e2e import make_body, make_records  # noqa: E402
from test_bench_app import ringgate_app  # noqa: E402, F401 - the same app fixture

N = 100
REQUESTS = bench_app.REQUESTS  # per round, as test_bench_app: 200 x 100 framed records fit its 16 MiB ring
DOCS = make_records(N)
CASES = {
    "/v1/ingest JSON": ("/v1/ingest", b"application/json", make_body(N), 202),
    "/v1/ingest NDJSON": ("/v1/ingest", b"application/x-ndjson", b"\n".join(DOCS) + b"\n", 202),
    "/_bulk create+_index": ("/_bulk", b"application/x-ndjson",
                             b"".join(b'{"create":{"_index":"logs-app"}}\n' + d + b"\n" for d in DOCS), 200),
    "/_bulk index, no metadata": ("/_bulk", b"application/x-ndjson",
                                  b"".join(b'{"index":{}}\n' + d + b"\n" for d in DOCS), 200),
}
_results: dict[str, float] = {}  # case -> records/s (median round)




@pytest.mark.parametrize("case", list(CASES))
def test_records_per_second(benchmark, ringgate_app, case):  # noqa: F811 - the imported fixture
    benchmark.group = f"records/s, {N}-record requests"
    app, drain = ringgate_app
    path, content_type, body, status = CASES[case]
    rates = bench_app.records_per_second(benchmark, app, drain, body, path, [(b"content-type", content_type)], N,
                                         status, REQUESTS)
    if rates is not None:
        _results[case] = rates[0]


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _results:
        return
    base = _results.get("/v1/ingest JSON")
    lines = ["", f"Elasticsearch bulk beside /v1/ingest, in process, {N}-record requests (median)",
             f"{'case':32} {'records/s':>12} {'vs /v1/ingest JSON':>19}"]
    for name, rate in _results.items():
        ratio = f"{rate / base:.2f}x" if base else ""
        lines.append(f"{name:32} {rate:12,.0f} {ratio:>19}")
    lines.append(json.dumps({"records_per_s": {k: round(v) for k, v in _results.items()}}))
    write_report(request.config, lines)
