"""Promise 1 and 2 under real faults: SIGKILL of a worker, a flusher, the whole gateway; SIGTERM
under load. Load loops are bounded in count and time and target loopback only."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import threading
import time

import pytest

from tests.fixtures.gateway import request
from tests.sinkdata import StuckSink, assert_exactly_once, file_sink_records, wait_for

pytestmark = pytest.mark.slow


class Load:
    """Clients posting 20-record requests with unique ids until stopped (or a bound is hit)."""

    def __init__(self, port: int, clients: int = 4, max_requests: int = 20000, max_seconds: float = 60) -> None:
        self.port = port
        self.acked: list[str] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._budget = max_requests
        self._deadline = time.monotonic() + max_seconds
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self, client: int) -> None:
        n = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if self._budget <= 0:
                    return
                self._budget -= 1
            ids = [f"c{client}-{n}-{j}" for j in range(20)]
            n += 1
            body = json.dumps([{"id": i, "payload": "x" * 40} for i in ids]).encode()
            try:
                resp = request(self.port, "POST", "/v1/ingest", body, {"Content-Type": "application/json"}, timeout=10)
            except OSError:
                self.errors += 1
                time.sleep(0.01)
                continue
            with self._lock:
                self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                if 200 <= resp.status < 300:
                    self.acked += ids
            if resp.status == 429:
                time.sleep(0.02)

    def wait_acked(self, n: int, timeout: float = 30) -> None:
        wait_for(lambda: len(self.acked) >= n, timeout, what=f"{n} acknowledged records")


def test_sigkill_of_a_worker_under_load_loses_no_acknowledged_record(make_gateway):
    gw = make_gateway(WORKERS="2")
    with Load(gw.port) as load:
        load.wait_acked(2000)
        victim = gw.children()["worker"][0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.5)
        load.wait_acked(len(load.acked) + 2000)
    wait_for(lambda: len(file_sink_records(gw.sink_dir)) >= len(load.acked), what="delivery")
    assert_exactly_once(load.acked, file_sink_records(gw.sink_dir))
    assert gw.get("/healthz").status == 200


def test_sigkill_of_the_flusher_under_load_loses_nothing_and_doubles_nothing(make_gateway):
    gw = make_gateway(BATCH_RECORDS="200", FLUSH_INTERVAL_MS="20")
    with Load(gw.port) as load:
        for _ in range(3):
            load.wait_acked(len(load.acked) + 1500)
            flusher = gw.children()["flusher"][0]
            os.kill(flusher, signal.SIGKILL)
            wait_for(lambda f=flusher: (pids := gw.children()["flusher"]) != [] and pids[0] != f,
                     what="a new flusher")
        load.wait_acked(len(load.acked) + 1000)
    wait_for(lambda: len(file_sink_records(gw.sink_dir)) >= len(load.acked), what="delivery")
    assert_exactly_once(load.acked, file_sink_records(gw.sink_dir))


def test_sigterm_under_load_delivers_everything_acknowledged(make_gateway):
    gw = make_gateway(WORKERS="2", FLUSH_INTERVAL_MS="100")
    with Load(gw.port) as load:
        load.wait_acked(3000)
        gw.signal(signal.SIGTERM)
        assert gw.proc.wait(60) == 0, gw.log()
    assert load.acked
    assert_exactly_once(load.acked, file_sink_records(gw.sink_dir))
    assert gw.segments() == []


def test_rings_survive_sigkill_of_every_process_and_are_adopted(make_gateway):
    # a sink that cannot take anything yet: the records stay in the ring
    gw = make_gateway(SINK="stdout:", FLUSH_INTERVAL_MS="60000", BATCH_RECORDS="100000")
    acked: list[str] = []
    for i in range(20):
        ids = [f"s{i}-{j}" for j in range(10)]
        assert gw.post([{"id": x} for x in ids]).status == 202
        acked += ids
    segments = gw.segments()
    assert segments
    gw.kill_all()  # supervisor, workers and flushers, all at once; no drain
    assert gw.segments() == segments, "the rings must outlive a crash"

    env = dict(gw.env)
    env["RINGGATE_SINK"] = f"file://{gw.cwd}/adopted"
    env["RINGGATE_FLUSH_INTERVAL_MS"] = "50"
    env["RINGGATE_RING_BYTES"] = str(1 << 22)  # ignored: the adopted rings keep their capacity
    gw.env = env
    gw.start()
    assert gw.get("/readyz").json()["rings"][0]["capacity_bytes"] == 1 << 20
    wait_for(lambda: len(file_sink_records(pathlib.Path(gw.cwd) / "adopted")) >= len(acked), what="adoption")
    assert_exactly_once(acked, file_sink_records(pathlib.Path(gw.cwd) / "adopted"))
    assert gw.stop() == 0


def test_drain_timeout_exits_1_and_leaves_the_rings(make_gateway, tmp_path):
    stuck = StuckSink(tmp_path)
    gw = make_gateway(SINK=stuck.url, DRAIN_TIMEOUT_S="1")
    assert gw.post([{"id": "kept"}]).status == 202
    assert gw.stop() == 1
    assert gw.segments(), "undelivered rings are left for the next run"
    stuck.recover()
    gw.start()
    wait_for(lambda: stuck.records() == [{"id": "kept"}], what="delivery after restart")
    assert gw.stop() == 0


def test_no_child_outlives_a_killed_supervisor(make_gateway):
    gw = make_gateway(WORKERS="2", FLUSHERS="2")
    children = gw.children()
    assert len(children["worker"]) == 2 and len(children["flusher"]) == 2
    pids = children["worker"] + children["flusher"]
    os.kill(gw.proc.pid, signal.SIGKILL)
    gw.proc.wait(10)

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
        except OSError:
            return True

    wait_for(lambda: all(gone(p) for p in pids), timeout=10, what="children to die with the supervisor")
    assert gw.segments(), "the rings stay for the next run"
