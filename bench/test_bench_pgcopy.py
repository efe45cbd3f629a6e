"""PostgreSQL COPY: the bulk numpy encoder against psycopg's per-row write_row, in one run.

    cd /work/main && python -m pytest bench/test_bench_pgcopy.py -p no:cacheprovider

Each round is one `PostgresCopySink.deliver` of a fresh batch of 10,000 ~128-byte JSON records
(offset lock, COPY, offset update, commit), into the same table on the same throwaway server, so
the only difference is how the COPY stream is produced. The last test prints a table and JSON with
rows/s and the ratio, from pytest-benchmark's medians and from an interleaved A/B run (the VM is
noisy: interleaving cancels drift), with the flusher-side CPU per row of each method. The bulk
encoder alone (no server) is measured too, for scale.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import statistics
import time

import numpy as np
import pytest

from ringgate.sinks.base import Batch
from ringgate.sinks.postgres import PostgresCopySink, write_copy_bulk
from tests.fixtures.postgres import postgres_server  # noqa: F401 - fixture

RECORDS = 10_000
ROUNDS = 40
GROUP = "pgcopy 10k x ~128 B"

_results: dict[str, float] = {}  # method -> median seconds per batch
_positions = itertools.count(0, RECORDS * 64)  # every delivery is new to the offsets table
_EPOCH = time.time_ns()  # ... even on a table left by an earlier run


def _payloads(n: int, seed: int = 42) -> list[bytes]:
    rnd = random.Random(seed)
    kinds = ["click", "view", "purchase", "signup", "scroll"]
    out = []
    for i in range(n):
        record = {
            "event_id": f"{rnd.getrandbits(64):016x}-{i:08d}",
            "ts": 1_764_000_000_000 + rnd.randrange(10**7),
            "user": rnd.randrange(10**7),
            "kind": rnd.choice(kinds),
            "path": "/p/" + "x" * rnd.randrange(8, 24),
            "v": round(rnd.random(), 6),
        }
        out.append(json.dumps(record, separators=(",", ":")).encode())
    return out


@pytest.fixture(scope="module")
def base_batch() -> Batch:
    batch = Batch.from_payloads(_payloads(RECORDS))
    print(f"\nbatch: {batch.count} records, {int(batch.lengths.mean())} bytes on average")
    return batch


def _fresh(base: Batch) -> Batch:
    first = next(_positions)
    return dataclasses.replace(
        base, epoch=_EPOCH, positions=base.positions + first, next_position=base.next_position + first
    )


@pytest.fixture(scope="module")
def bench_table(postgres_server) -> str:  # noqa: F811
    name = "bench_pgcopy"
    yield name
    with postgres_server.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}, {name}_offsets CASCADE")


def _sink(server, table: str, method: str) -> PostgresCopySink:
    sink = PostgresCopySink(server.url, table=table, instance="bench", copy_method=method)
    sink.deliver(_fresh(Batch.from_payloads(_payloads(10))))  # connect and create outside the timing
    with server.connect() as conn:
        # an insert-only table gets vacuumed every 20% of growth: that would land on whichever
        # method runs second, which is not what is compared here
        conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = off)")
    return sink


@pytest.mark.parametrize("method", ["rows", "bulk"])
def test_deliver(benchmark, postgres_server, bench_table, base_batch, method):  # noqa: F811
    sink = _sink(postgres_server, bench_table, method)
    benchmark.group = GROUP
    benchmark.extra_info["method"] = method
    try:
        benchmark.pedantic(
            sink.deliver,
            setup=lambda: ((_fresh(base_batch),), {}),
            rounds=ROUNDS,
            warmup_rounds=2,
            iterations=1,
        )
    finally:
        sink.close()
    if benchmark.stats is not None:
        median = benchmark.stats.stats.median
        benchmark.extra_info["rows_per_s"] = round(RECORDS / median)
        _results[method] = median


def test_deliver_dedup(benchmark, postgres_server, bench_table):  # noqa: F811
    """For scale, not compared: dedup_key costs a temp-table COPY, an INSERT ... SELECT and a
    unique-index insert per new key (every round brings 10,000 keys never seen)."""
    sink = PostgresCopySink(
        postgres_server.url, table=bench_table + "_dd", instance="bench", dedup_key="event_id"
    )
    seeds = itertools.count(1000)
    benchmark.group = "pgcopy with dedup_key"
    try:
        benchmark.pedantic(
            sink.deliver,
            setup=lambda: ((_fresh(Batch.from_payloads(_payloads(RECORDS, seed=next(seeds)))),), {}),
            rounds=10,
            warmup_rounds=1,
            iterations=1,
        )
    finally:
        sink.close()
        with postgres_server.connect() as conn:
            conn.execute(
                f"DROP TABLE IF EXISTS {bench_table}_dd, {bench_table}_dd_offsets, {bench_table}_dd_dedup"
            )
    if benchmark.stats is not None:
        benchmark.extra_info["rows_per_s"] = round(RECORDS / benchmark.stats.stats.median)
        _results["dedup"] = benchmark.stats.stats.median


class _Discard:
    def write(self, buffer) -> None:
        pass


def test_encode_only(benchmark, base_batch):
    """The client side of the bulk path without a server: what the sink encodes per batch."""
    benchmark.group = "pgcopy encoder alone"
    benchmark(write_copy_bulk, _Discard(), base_batch)
    if benchmark.stats is not None:
        _results["encode"] = benchmark.stats.stats.median


def test_report(postgres_server, bench_table, base_batch, capsys):  # noqa: F811
    if not {"rows", "bulk"} <= _results.keys():
        pytest.skip("needs both test_deliver runs (benchmarks enabled) in this session")
    sinks = {m: _sink(postgres_server, bench_table, m) for m in ("rows", "bulk")}
    interleaved: dict[str, list[float]] = {"rows": [], "bulk": []}
    cpu: dict[str, list[float]] = {"rows": [], "bulk": []}
    try:
        for i in range(30):
            for method in ("rows", "bulk") if i % 2 else ("bulk", "rows"):
                batch = _fresh(base_batch)
                t0, c0 = time.perf_counter(), time.process_time()
                sinks[method].deliver(batch)
                interleaved[method].append(time.perf_counter() - t0)
                cpu[method].append(time.process_time() - c0)
    finally:
        for sink in sinks.values():
            sink.close()
    rate = {m: RECORDS / _results[m] for m in ("rows", "bulk")}
    rate_ab = {m: RECORDS / statistics.median(v) for m, v in interleaved.items()}
    report = {
        "records_per_batch": RECORDS,
        "mean_record_bytes": round(float(base_batch.lengths.mean()), 1),
        "server": postgres_server.version,
        "rows_per_s": {m: round(v) for m, v in rate.items()},
        "ratio_bulk_over_rows": round(rate["bulk"] / rate["rows"], 2),
        "interleaved_rows_per_s": {m: round(v) for m, v in rate_ab.items()},
        "interleaved_ratio_bulk_over_rows": round(rate_ab["bulk"] / rate_ab["rows"], 2),
        # the flusher's own CPU (the server's is not counted): what it takes from the HTTP workers
        "client_cpu_us_per_row": {m: round(statistics.median(v) / RECORDS * 1e6, 3) for m, v in cpu.items()},
    }
    if "dedup" in _results:
        report["dedup_key_rows_per_s"] = round(RECORDS / _results["dedup"])
    if "encode" in _results:
        report["encode_only_rows_per_s"] = round(RECORDS / _results["encode"])
    with capsys.disabled():
        print("\n\nPostgreSQL COPY, one connection, batches of", RECORDS)
        client = report["client_cpu_us_per_row"]
        print(f"{'method':<32}{'rows/s':>10}{'interleaved':>13}{'client CPU µs/row':>19}")
        print(
            f"{'write_row (psycopg, per row)':<32}{rate['rows']:>10,.0f}{rate_ab['rows']:>13,.0f}{client['rows']:>19.2f}"
        )
        print(
            f"{'bulk numpy encoder':<32}{rate['bulk']:>10,.0f}{rate_ab['bulk']:>13,.0f}{client['bulk']:>19.2f}"
        )
        print(
            f"{'ratio bulk / write_row':<32}{report['ratio_bulk_over_rows']:>10.2f}"
            f"{report['interleaved_ratio_bulk_over_rows']:>13.2f}{client['rows'] / client['bulk']:>18.2f}x"
        )
        print(json.dumps(report))


def _backend_cpu_s(pid: int) -> float:
    """utime + stime of a PostgreSQL backend (same machine), in seconds."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_instance_column_cost(postgres_server, base_batch, capsys):  # noqa: F811
    """What the `instance` column costs (DESIGN.md §12): the same batch COPYed with and without
    it, interleaved, each side into its own table, one connection each; rows/s, the client's CPU
    (encoding) and the server backend's CPU (parsing, storing) per row."""
    import psycopg

    from ringgate.sinks.postgres import encode_copy_binary

    instance = "ingest-host-07.example-8080"  # a host name and port: longer than most
    sides = {"without": None, "with": instance}
    rounds = 30
    wall = {k: [] for k in sides}
    client = {k: [] for k in sides}
    server = {k: [] for k in sides}
    conns = {k: psycopg.connect(postgres_server.url, autocommit=True) for k in sides}
    try:
        for side, conn in conns.items():
            conn.execute(f"DROP TABLE IF EXISTS bench_instance_{side}")
            conn.execute(
                f"CREATE TABLE bench_instance_{side} (ring smallint NOT NULL, epoch bigint NOT NULL,"
                " seq bigint NOT NULL, received_at timestamptz NOT NULL, record jsonb NOT NULL, instance text)"
                " WITH (autovacuum_enabled = off)"
            )
        columns = {"without": "ring, epoch, seq, received_at, record",
                   "with": "instance, ring, epoch, seq, received_at, record"}
        for i in range(rounds + 2):
            for side in ("without", "with") if i % 2 else ("with", "without"):
                conn = conns[side]
                batch = _fresh(base_batch)
                backend = conn.info.backend_pid
                t0, c0, s0 = time.perf_counter(), time.process_time(), _backend_cpu_s(backend)
                with conn.transaction(), conn.cursor() as cur:
                    with cur.copy(f"COPY bench_instance_{side} ({columns[side]}) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.write(encode_copy_binary(batch, sides[side]))
                if i >= 2:  # warm-up
                    wall[side].append(time.perf_counter() - t0)
                    client[side].append(time.process_time() - c0)
                    server[side].append(_backend_cpu_s(backend) - s0)
    finally:
        for side, conn in conns.items():
            conn.execute(f"DROP TABLE IF EXISTS bench_instance_{side}")
            conn.close()
    rate = {k: RECORDS / statistics.median(v) for k, v in wall.items()}
    report = {
        "instance": instance,
        "rows_per_s": {k: round(v) for k, v in rate.items()},
        "ratio_with_over_without": round(rate["with"] / rate["without"], 3),
        "client_cpu_us_per_row": {k: round(statistics.median(v) / RECORDS * 1e6, 3) for k, v in client.items()},
        # clock ticks (10 ms) over ~25 ms rounds: the sum over all rounds, not the median
        "server_cpu_us_per_row": {k: round(sum(v) / (RECORDS * rounds) * 1e6, 3) for k, v in server.items()},
    }
    with capsys.disabled():
        print("\n\nthe instance column, interleaved A/B, one connection per side:", json.dumps(report))


DRAIN_BATCHES = 30


def test_flusher_drain(postgres_server, capsys):  # noqa: F811
    """A flusher draining a ring of 300,000 pre-filled records (30 batches) into PostgreSQL, into
    a jsonb and a json record column (RINGGATE_PG_RECORD_TYPE), interleaved round by round, one
    connection: rows/s, the flusher's CPU and the backend's per row, and json / jsonb paired by
    round (the drift of a shared machine cancels)."""
    import os

    from ringgate.config import Settings
    from ringgate.flusher import Flusher
    from ringgate.ring import Ring, segment_name

    payloads = _payloads(RECORDS * DRAIN_BATCHES)
    requests = [(b"".join(payloads[i:i + 100]), np.array([len(p) for p in payloads[i:i + 100]], dtype=np.int64))
                for i in range(0, len(payloads), 100)]
    instance = f"bench-drain-{os.getpid()}"
    types = ("jsonb", "json")
    wall: dict[str, list[float]] = {t: [] for t in types}
    client: dict[str, list[float]] = {t: [] for t in types}
    server: dict[str, list[float]] = {t: [] for t in types}
    rounds = 8
    for i in range(rounds + 1):
        for typ in types if i % 2 else types[::-1]:
            settings = Settings(instance=instance, sink=postgres_server.url, pg_table=f"bench_drain_{typ}",
                                pg_record_type=typ, dlq="memory://")
            ring = Ring.create(segment_name(instance, 0), 64 << 20)
            sink = PostgresCopySink(postgres_server.url, table=settings.pg_table, instance=instance, record_type=typ)
            try:
                for blob, lengths in requests:
                    assert ring.claim_commit(blob, lengths, time.time_ns())[0] == 0
                ring.draining = True
                sink.deliver(Batch.from_payloads([b"{}"], instance=instance, ring=1))  # connected, table made
                backend = sink._conn.info.backend_pid
                t0, c0, s0 = time.perf_counter(), time.process_time(), _backend_cpu_s(backend)
                Flusher(settings, 0, ring, sink, None).run()
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
                backend_cpu = _backend_cpu_s(backend) - s0
            finally:
                sink.close()
                ring.close()
                ring.unlink()
            if i:  # the first round warms up
                wall[typ].append(elapsed)
                client[typ].append(cpu)
                server[typ].append(backend_cpu)
    n = len(payloads)
    report: dict = {
        typ: {
            "rows_per_s": round(n / statistics.median(wall[typ])),
            "flusher_cpu_us_per_row": round(statistics.median(client[typ]) / n * 1e6, 3),
            "backend_cpu_us_per_row": round(statistics.median(server[typ]) / n * 1e6, 3),
        }
        for typ in types
    }
    report["json_over_jsonb"] = round(statistics.median(
        [b / j for b, j in zip(wall["jsonb"], wall["json"], strict=True)]), 3)
    with capsys.disabled():
        print(f"\n\nflusher draining {n:,} records, interleaved rounds:")
        for typ in types:
            r = report[typ]
            print(f"  record {typ:<6}{r['rows_per_s']:>10,} rows/s  flusher {r['flusher_cpu_us_per_row']:.2f} µs/row"
                  f"  backend {r['backend_cpu_us_per_row']:.2f} µs/row")
        print(f"  json / jsonb {report['json_over_jsonb']:.2f}x (median of the rounds' ratios)")
        print(json.dumps(report))
