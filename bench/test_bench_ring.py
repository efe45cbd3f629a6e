"""Micro benchmarks of the shared-memory ring, native and pure Python, beside multiprocessing.Queue.

    python -m pytest bench/test_bench_ring.py -p no:randomly -p no:cacheprovider --benchmark-only \
        -o addopts="" -o testpaths=bench [--benchmark-json=out.json]

Records are ~120-byte compact JSON objects; a request is 100 of them (what one 12.9 KB HTTP body
carries), a batch read is 10,000 (RINGGATE_BATCH_RECORDS' default).

In-process, one producer (what one HTTP worker's call costs, and what the flusher's read costs):
- `claim_commit`: 100 calls of `Ring.claim_commit` of 100 records each (10,000 records) into a
  16 MiB ring emptied before each round (untimed);
- `read`: one `Ring.read` of a 10,000-record batch from a ring filled before each round;
  `read+release` adds the `release` that publishes the consumer position and zeroes the space.

Across processes (wall clock, bounded count): N spawned producer processes each push their share
of MP_RECORDS records, 100 per claim, while this process consumes in 10,000-record batches
(read + release) until it has them all. The same records then go through a
`multiprocessing.Queue`, one record per `put`, and a list of 100 per `put`, N producers and this
process getting. The clock starts when every producer is attached and waiting, and stops when the
consumer holds the last record. The table at the end of the module gives records/s and the ratio
native / Queue for each N; JSON with the same numbers follows it.

The machine has 2 cores: N = 2 producers plus the consumer oversubscribe it (a real gateway runs
as many workers as cores next to its flusher, so that is the realistic case, not a flaw).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing
import os
import queue as queue_module
import time

import numpy as np
import pytest
from _report import write_report  # noqa: E402

from ringgate.ring import ReadBuffers, Ring
from ringgate.ring import layout as L

PER_REQUEST = 100
BATCH = 10_000
CAPACITY = 16 << 20
BATCH_BYTES = 8 << 20
PRODUCERS = (1, 2)
#: records per multi-process round, all producers together (bounded: seconds, not minutes)
MP_RECORDS = {"native": 5_000_000, "python": 500_000, "queue per record": 150_000, "queue per 100": 2_000_000}
MP_ROUNDS = 3
MP_DEADLINE_S = 120.0  # a round that has not finished by then fails instead of hanging
_MODULES = {"python": "ringgate.ring._pyring", "native": "ringgate._ring"}
_spawn = multiprocessing.get_context("spawn")


def make_records(n: int = PER_REQUEST) -> list[bytes]:
    """~120-byte compact JSON objects, each different."""
    out = []
    for i in range(n):
        out.append(
            b'{"id":%d,"ts":"2026-11-25T10:00:00.%03dZ","user":"user%05d","event":"%s",'
            b'"props":{"page":"/home","x":%d,"y":%d},"ok":true}'
            % (i, i % 1000, i * 7 % 100_000, (b"click", b"view", b"scroll")[i % 3], i * 13 % 1000, i * 29 % 1000)
        )
    return out


RECORDS = make_records()
BLOB = b"".join(RECORDS)
LENGTHS = np.array([len(r) for r in RECORDS], dtype=np.int64)
RECORD_BYTES = len(BLOB) / PER_REQUEST

_results: dict[str, float] = {}  # name -> records/s (median round)


def _impl(name: str):
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as exc:
        pytest.skip(f"{name} ring not available ({exc}): run `python setup.py build_ext --inplace`")


@pytest.fixture(params=["native", "python"])
def impl_name(request) -> str:
    _impl(request.param)
    return request.param


@pytest.fixture
def ring(impl_name):
    name = f"rgbench-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    r = Ring.create(name, CAPACITY, ring_impl=_impl(impl_name))
    r.lock_consumer()
    yield r
    with contextlib.suppress(Exception):
        r.close()
    r.unlink()


def _drain(ring: Ring, buffers: ReadBuffers) -> int:
    got = 0
    while True:
        result = ring.read(ring.consumer_position, BATCH, BATCH_BYTES, buffers)
        if result.next_position == ring.consumer_position:
            return got
        got += result.count
        ring.release(result.next_position)


def _fill(ring: Ring, requests: int) -> None:
    now = time.time_ns()
    for _ in range(requests):
        status, _, _ = ring.claim_commit(BLOB, LENGTHS, now)
        assert status == 0, status


def _note(benchmark, name: str, records: int) -> None:
    if benchmark.stats is None:  # --benchmark-disable
        return
    rate = records / benchmark.stats.stats.median
    _results[name] = rate
    benchmark.extra_info["records_per_s"] = round(rate)


# -- one process ---------------------------------------------------------------------------------


def test_claim_commit(benchmark, ring, impl_name):
    buffers = ReadBuffers(BATCH, BATCH_BYTES, CAPACITY)
    requests = BATCH // PER_REQUEST
    now = time.time_ns()

    def setup():
        _drain(ring, buffers)
        return (), {}

    def run():
        for _ in range(requests):
            status, _, _ = ring.claim_commit(BLOB, LENGTHS, now)
            if status:
                raise AssertionError(f"claim_commit: {status}")

    benchmark.group = f"ring, one process: claim+copy+commit, {PER_REQUEST} x {RECORD_BYTES:.0f} B per call"
    benchmark.pedantic(run, setup=setup, rounds=100 if impl_name == "native" else 15, warmup_rounds=1)
    assert _drain(ring, buffers) == BATCH
    _note(benchmark, f"claim_commit, 1 process, {impl_name}", BATCH)


@pytest.mark.parametrize("op", ["read", "read+release"])
def test_read_batch(benchmark, ring, impl_name, op):
    buffers = ReadBuffers(BATCH, BATCH_BYTES, CAPACITY)
    counts = []

    def setup():
        _drain(ring, buffers)
        _fill(ring, BATCH // PER_REQUEST)
        return (), {}

    def run():
        result = ring.read(ring.consumer_position, BATCH, BATCH_BYTES, buffers)
        if op == "read+release":
            ring.release(result.next_position)
        counts.append(result.count)

    benchmark.group = f"ring, one process: batch read of {BATCH} records"
    benchmark.pedantic(run, setup=setup, rounds=100 if impl_name == "native" else 10, warmup_rounds=1)
    assert set(counts) == {BATCH}
    data = bytes(buffers.data[: int(buffers.starts[BATCH - 1] + buffers.lengths[BATCH - 1] + 1)])
    assert data == b"\n".join(RECORDS * (BATCH // PER_REQUEST)) + b"\n"
    _note(benchmark, f"{op} 10k batch, 1 process, {impl_name}", BATCH)


# -- N producer processes, one consumer ---------------------------------------------------------


def _ring_producer(impl_name: str, ring_name: str, requests: int, ready, go) -> None:
    ring = Ring.attach(ring_name, ring_impl=importlib.import_module(_MODULES[impl_name]))
    ready.release()
    go.wait()
    now = time.time_ns()
    done = 0
    while done < requests:
        status, _, _ = ring.claim_commit(BLOB, LENGTHS, now)
        if status == 0:
            done += 1
        elif status == L.CLAIM_FULL:
            time.sleep(0.00005)  # give the consumer the core rather than spin against it
        else:
            raise SystemExit(f"claim_commit returned {status}")
    ring.close()


def _queue_producer(q, per_put: int, records: int, ready, go) -> None:
    ready.release()
    go.wait()
    if per_put == 1:
        for i in range(records):
            q.put(RECORDS[i % PER_REQUEST])
    else:
        for _ in range(records // PER_REQUEST):
            q.put(RECORDS)
    q.close()
    q.join_thread()


class _Round:
    """Producers spawned and waiting (untimed); `run` opens the gate and consumes (timed)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.procs: list = []

    def start(self, target, args) -> None:
        self.join()
        self.ready = _spawn.Semaphore(0)
        self.go = _spawn.Event()
        self.procs = [_spawn.Process(target=target, args=(*args, self.ready, self.go), daemon=True)
                      for _ in range(self.n)]
        for p in self.procs:
            p.start()
        deadline = time.monotonic() + 60
        for _ in range(self.n):
            if not self.ready.acquire(timeout=max(0.1, deadline - time.monotonic())):
                raise AssertionError("producers did not start within 60 s")

    def join(self) -> None:
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
            assert p.exitcode == 0, f"producer exited with {p.exitcode}"
        self.procs = []


@pytest.mark.parametrize("n", PRODUCERS)
def test_ring_processes(benchmark, ring, impl_name, n):
    buffers = ReadBuffers(BATCH, BATCH_BYTES, CAPACITY)
    total = MP_RECORDS[impl_name] // (n * PER_REQUEST) * n * PER_REQUEST
    rounds = _Round(n)

    def setup():
        assert _drain(ring, buffers) == 0
        rounds.start(_ring_producer, (impl_name, ring.name, total // n // PER_REQUEST))
        return (), {}

    def run():
        rounds.go.set()
        got = 0
        deadline = time.monotonic() + MP_DEADLINE_S
        while got < total:
            result = ring.read(ring.consumer_position, BATCH, BATCH_BYTES, buffers)
            if result.next_position > ring.consumer_position:
                got += result.count
                ring.release(result.next_position)
            elif time.monotonic() > deadline:
                raise AssertionError(f"consumer got {got} of {total} records in {MP_DEADLINE_S} s")
        assert got == total

    benchmark.group = f"ring vs multiprocessing.Queue: {n} producer process(es), 1 consumer"
    try:
        benchmark.pedantic(run, setup=setup, rounds=MP_ROUNDS)
    finally:
        rounds.join()
    _note(benchmark, f"{n} producers -> 1 consumer, ring {impl_name}", total)


@pytest.mark.parametrize("n", PRODUCERS)
@pytest.mark.parametrize("per_put", [1, PER_REQUEST], ids=["per record", "per 100"])
def test_queue_processes(benchmark, n, per_put):
    kind = "queue per record" if per_put == 1 else "queue per 100"
    total = MP_RECORDS[kind] // (n * PER_REQUEST) * n * PER_REQUEST
    rounds = _Round(n)
    state = {}

    def setup():
        state["q"] = _spawn.Queue()
        rounds.start(_queue_producer, (state["q"], per_put, total // n))
        return (), {}

    def run():
        q = state["q"]
        rounds.go.set()
        got = 0
        deadline = time.monotonic() + MP_DEADLINE_S
        while got < total:
            try:
                item = q.get(timeout=1)
            except queue_module.Empty:
                if time.monotonic() > deadline:
                    raise AssertionError(f"consumer got {got} of {total} records in {MP_DEADLINE_S} s") from None
                continue
            got += 1 if per_put == 1 else len(item)
        assert got == total

    benchmark.group = f"ring vs multiprocessing.Queue: {n} producer process(es), 1 consumer"
    try:
        benchmark.pedantic(run, setup=setup, rounds=MP_ROUNDS)
    finally:
        rounds.join()
        state["q"].close()
        state["q"].join_thread()
    _note(benchmark, f"{n} producers -> 1 consumer, {kind}", total)


# -- summary -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not _results:
        return
    lines = ["", f"ring, records of ~{RECORD_BYTES:.0f} B (median round)", f"{'case':52} {'records/s':>13}"]
    lines += [f"{name:52} {rate:13,.0f}" for name, rate in _results.items()]
    ratios = {}
    for n in PRODUCERS:
        native = _results.get(f"{n} producers -> 1 consumer, ring native")
        for kind in ("queue per record", "queue per 100"):
            base = _results.get(f"{n} producers -> 1 consumer, {kind}")
            if native and base:
                ratios[f"{n} producers: native / {kind}"] = native / base
        python = _results.get(f"{n} producers -> 1 consumer, ring python")
        base = _results.get(f"{n} producers -> 1 consumer, queue per record")
        if python and base:
            ratios[f"{n} producers: python / queue per record"] = python / base
    if ratios:
        lines += ["", f"{'ratio':52} {'x':>13}"]
        lines += [f"{name:52} {ratio:13.1f}" for name, ratio in ratios.items()]
    lines.append(json.dumps({"records_per_s": {k: round(v) for k, v in _results.items()},
                             "ratios": {k: round(v, 2) for k, v in ratios.items()}}))
    write_report(request.config, lines)
