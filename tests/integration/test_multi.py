"""Two gateways behind real nginx (deploy/nginx.conf) into one PostgreSQL table or one bucket
(DESIGN.md §12): one killed outright under load and restarted under its name, or one's sink cut.

The load: a few client threads POST batches of records with unique event ids through nginx,
retrying the same body on 429/502/503 (after Retry-After, capped) and on a lost answer, as a
shipper would, bounded in requests and time. nginx logs, per request, which gateways it tried
and what each answered ($upstream_status: a gateway that died mid-request shows as 502), so a
record found twice can be traced to a request whose answer was lost somewhere.
"""

from __future__ import annotations

import collections
import glob
import http.client
import json
import re
import threading
import time
from dataclasses import dataclass, field

from tests.fixtures.nginx import start_nginx, stop_nginx

THREADS = 4
RECORDS_PER_REQUEST = 20
MAX_REQUESTS = 8000  # per test, across threads: the bound if the phases below run long
PACE_S = 0.02  # between one thread's requests: a steady load (~4,000 records/s), not a flood
RETRY_AFTER_CAP_S = 0.5  # honour Retry-After, but keep the test short


@dataclass
class Load:
    """Client threads posting through nginx until `stop()`; what each attempt got, with its time."""

    port: int
    attempts: list[tuple[float, int | None]] = field(default_factory=list)  # (monotonic, status or None: lost)
    acked: set[str] = field(default_factory=set)  # event ids of requests answered 202
    lost_answer: set[str] = field(default_factory=set)  # request ids that had an attempt without an answer
    unexpected: list[tuple[int, bytes]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _requests: int = 0

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(THREADS)]
        for th in self._threads:
            th.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(60)
            assert not th.is_alive(), "a client thread did not finish"

    def wait_acked(self, at_least: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acked) >= at_least, f"only {len(self.acked)} records acknowledged"

    def _run(self, tid: int) -> None:
        conn = None
        n = 0
        while not self._stop.is_set():
            with self._lock:
                if self._requests >= MAX_REQUESTS:
                    return
                self._requests += 1
            time.sleep(PACE_S)
            rid = f"t{tid}r{n}"
            n += 1
            ids = [f"{rid}e{i}" for i in range(RECORDS_PER_REQUEST)]
            body = json.dumps([{"event_id": e, "pad": "x" * 40} for e in ids]).encode()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                status, retry_after = None, None
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    conn.request("POST", "/v1/ingest", body=body,
                                 headers={"Content-Type": "application/json", "X-Load-Id": rid})
                    resp = conn.getresponse()
                    answer = resp.read()
                    status, retry_after = resp.status, resp.getheader("Retry-After")
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = None
                with self._lock:
                    self.attempts.append((time.monotonic(), status))
                    if status is None:
                        self.lost_answer.add(rid)
                if status == 202:
                    with self._lock:
                        self.acked.update(ids)
                    break
                if status not in (None, 429, 502, 503):
                    with self._lock:
                        self.unexpected.append((status, answer))
                    break
                time.sleep(min(float(retry_after or 0.1), RETRY_AFTER_CAP_S))
        if conn is not None:
            conn.close()

    def error_share(self, t0: float, t1: float) -> tuple[float, int]:
        """Share of the attempts in [t0, t1] not answered 202, and how many attempts there were."""
        window = [s for t, s in self.attempts if t0 <= t <= t1]
        return (sum(s != 202 for s in window) / len(window) if window else 1.0), len(window)


def nginx_with_log(tmp_path, gateways):
    return start_nginx(tmp_path, [gw.port for gw in gateways], access_log=True)


def upstream_attempts(tmp_path) -> dict[str, list[tuple[str, str]]]:
    """Request id -> every (gateway address, its status) nginx tried, over all client attempts."""
    out: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for line in (tmp_path / "access.log").read_text().splitlines():
        m = re.fullmatch(r'(\S+) (\d+) "([^"]*)" "([^"]*)"', line)
        assert m, line
        addrs = [a.strip() for a in re.split(r"[,:]\s", m.group(3)) if a.strip()]
        statuses = [s.strip() for s in re.split(r"[,:]", m.group(4)) if s.strip()]
        # "127.0.0.1:8081, 127.0.0.1:8082 : 127.0.0.1:8081": split on ", " and " : " only
        out[m.group(1)] += list(zip(addrs, statuses, strict=False))
    return out


def held_bytes(gw) -> int:
    """Bytes the restarted gateway found in the rings it adopted (its log says so)."""
    found = re.findall(r"adopting \d+ ring\(s\) of \d+ bytes left by a previous run of \S+, holding (\d+) bytes",
                       gw.log())
    assert found, gw.log()
    return int(found[-1])


def kill_one_of_two_under_load(tmp_path, victim, survivor):
    """Both gateways behind nginx under the client load, `victim` killed -9 and restarted
    (kill_and_restart_under_load); the load and nginx stopped. Returns (load, t_kill, t_restart)."""
    proc, port = nginx_with_log(tmp_path, [victim, survivor])
    try:
        load = Load(port).start()
        try:
            t_kill, t_restart = kill_and_restart_under_load(load, victim, survivor)
        finally:
            load.stop()
    finally:
        stop_nginx(proc)
    return load, t_kill, t_restart


def kill_and_restart_under_load(load: Load, victim, survivor, dead_s: float = 4.0):
    """Load through both, kill -9 the victim's whole process group, load on the survivor alone
    for `dead_s`, restart the victim under its name, load on both again. Returns the dead window."""
    load.wait_acked(2000)
    time.sleep(1.0)  # both gateways busy when the kill lands
    t_kill = time.monotonic()
    victim.kill_all()
    assert glob.glob(f"/dev/shm/{victim.instance}-ring-*"), "kill -9 left no rings to adopt"
    time.sleep(dead_s)
    t_restart = time.monotonic()
    victim.start()
    load.wait_acked(len(load.acked) + 1000)
    load.stop()
    return t_kill, t_restart


PG_GATEWAY = {
    "RINGGATE_PG_DEDUP_KEY": "event_id",
    "RINGGATE_RING_BYTES": str(4 << 20),
    # records wait up to a second in the ring, so a kill lands on some acknowledged, undelivered
    "RINGGATE_FLUSH_INTERVAL_MS": "1000",
    "RINGGATE_BATCH_RECORDS": "5000",
}


def pg_rows(postgres_server, table: str) -> list[tuple[str, str]]:
    with postgres_server.connect() as conn:
        return conn.execute(f"SELECT instance, record->>'event_id' FROM {table}").fetchall()


def wait_rows(postgres_server, table: str, ids: set[str], timeout: float = 40) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = pg_rows(postgres_server, table)
        if ids <= {e for _, e in rows} or time.monotonic() > deadline:
            return rows
        time.sleep(0.25)


def assert_balanced(load) -> None:
    """Every answer was one the clients expect, and nginx answered no 502 itself: a dead
    gateway's requests went on to the live one."""
    assert load.unexpected == []
    assert 502 not in {status for _, status in load.attempts}


def test_two_gateways_into_one_table_lose_and_double_nothing_when_one_is_killed(
    tmp_path, make_gateway, postgres_server, postgres_table
):
    sink = {"RINGGATE_SINK": postgres_server.url, "RINGGATE_PG_TABLE": postgres_table, **PG_GATEWAY}
    a, b = make_gateway(**sink), make_gateway(**sink)
    load, t_kill, t_restart = kill_one_of_two_under_load(tmp_path, a, b)
    rows = wait_rows(postgres_server, postgres_table, load.acked)
    assert_balanced(load)
    stored = collections.Counter(e for _, e in rows)
    lost = load.acked - set(stored)
    assert not lost, f"{len(lost)} acknowledged records not in the table, e.g. {sorted(lost)[:5]}"
    doubled = [e for e, n in stored.items() if n > 1]
    assert not doubled, f"{len(doubled)} records stored twice, e.g. {doubled[:5]}"
    assert {i for i, _ in rows} == {a.instance, b.instance}
    share, attempts = load.error_share(t_kill, t_restart)
    print(f"acked {len(load.acked)}, rows per instance {collections.Counter(i for i, _ in rows)}, "
          f"{len(load.lost_answer)} answers lost, while dead {attempts} attempts {share:.1%} not 202, "
          f"adopted {held_bytes(a)} bytes")
    assert attempts > 20 and share < 0.2, (share, attempts)
    assert held_bytes(a) > 0  # the restart adopted acknowledged records the kill left in the rings
    assert a.stop() == 0 and b.stop() == 0


def test_two_gateways_into_one_bucket_double_only_what_lost_its_answer(
    tmp_path, make_gateway, s3_server, s3_bucket
):
    sink = {"RINGGATE_SINK": f"s3://{s3_bucket}/events", **s3_server.env, **PG_GATEWAY}
    del sink["RINGGATE_PG_DEDUP_KEY"]
    a, b = make_gateway(**sink), make_gateway(**sink)
    load, t_kill, t_restart = kill_one_of_two_under_load(tmp_path, a, b)
    deadline = time.monotonic() + 40
    while True:
        objects = s3_server.objects(s3_bucket, "events/")
        where: dict[str, list[str]] = collections.defaultdict(list)
        for key, content in objects.items():
            for line in content.splitlines():
                where[json.loads(line)["event_id"]].append(key)
        if load.acked <= set(where) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert_balanced(load)
    lost = load.acked - set(where)
    assert not lost, f"{len(lost)} acknowledged records in no object, e.g. {sorted(lost)[:5]}"
    # objects are keyed per instance: both gateways wrote, neither overwrote the other
    names = {key.rsplit("/", 1)[1] for key in objects}
    assert {n for n in names if n.startswith(a.instance + "-")} and {n for n in names if n.startswith(b.instance + "-")}
    tried = upstream_attempts(tmp_path)
    doubled = {e: keys for e, keys in where.items() if len(keys) > 1}
    for event, keys in doubled.items():
        rid = event.rsplit("e", 1)[0]
        # twice only if some attempt of its request lost its answer: the client's, or nginx's
        # from a gateway that died mid-request (502 in $upstream_status); never after a 429/503
        lost_somewhere = rid in load.lost_answer or any(s in ("502", "504") for _, s in tried[rid])
        assert lost_somewhere, (event, keys, tried[rid])
    share, attempts = load.error_share(t_kill, t_restart)
    print(f"acked {len(load.acked)} in {len(objects)} objects, {len(doubled)} records in two, "
          f"while dead {attempts} attempts {share:.1%} not 202, adopted {held_bytes(a)} bytes")
    assert attempts > 20 and share < 0.2, (share, attempts)
    assert held_bytes(a) > 0
    assert a.stop() == 0 and b.stop() == 0


def test_one_gateways_sink_down_moves_the_load_to_the_other(
    tmp_path, make_gateway, postgres_server, postgres_table, tcp_proxy
):
    proxy = tcp_proxy("127.0.0.1", postgres_server.port)
    # one ring each (PostgreSQL's default is one per core): a's 256 KiB fills within the load below
    base = {"RINGGATE_PG_TABLE": postgres_table, "RINGGATE_PG_DEDUP_KEY": "event_id",
            "RINGGATE_RING_BYTES": str(256 << 10), "RINGGATE_FLUSHERS": "1"}
    a = make_gateway(RINGGATE_SINK=postgres_server.url.replace(f":{postgres_server.port}/", f":{proxy.port}/"), **base)
    b = make_gateway(RINGGATE_SINK=postgres_server.url, **base)
    proc, port = nginx_with_log(tmp_path, [a, b])
    try:
        load = Load(port).start()
        try:
            load.wait_acked(1000)
            proxy.cut()
            t_cut = time.monotonic()
            load.wait_acked(len(load.acked) + 6000)  # a's ring (256 KiB) holds ~2,500 of these
            t_restore = time.monotonic()
            proxy.restore()
            load.wait_acked(len(load.acked) + 1000)
        finally:
            load.stop()
        rows = wait_rows(postgres_server, postgres_table, load.acked)
    finally:
        stop_nginx(proc)
    assert_balanced(load)
    stored = collections.Counter(e for _, e in rows)
    assert not load.acked - set(stored), "acknowledged records lost"
    assert not [e for e, n in stored.items() if n > 1], "records stored twice"
    assert {i for i, _ in rows} == {a.instance, b.instance}
    tried = upstream_attempts(tmp_path)
    a_addr = f"127.0.0.1:{a.port}"
    full = [rid for rid, steps in tried.items() if (a_addr, "429") in steps]
    assert full, "gateway a never shed load while its sink was down"
    # every request a refused for a full ring was stored after it, in the same client attempt or a
    # retry: by b, or by a again when nginx's retry went back to a once its sink was back (a holds
    # its 429 for RINGGATE_REFUSAL_DELAY_MS, in which it may have made room)
    stored_after = [rid for rid in full if "202" in [s for _, s in tried[rid][tried[rid].index((a_addr, "429")):]]]
    assert len(stored_after) == len(full), [(rid, tried[rid]) for rid in full if rid not in stored_after]
    by_b = [rid for rid in full if (f"127.0.0.1:{b.port}", "202") in tried[rid]]
    assert len(by_b) >= 0.8 * len(full), [(rid, tried[rid]) for rid in full if rid not in by_b]
    share, attempts = load.error_share(t_cut, t_restore)
    print(f"acked {len(load.acked)}, rows per instance {collections.Counter(i for i, _ in rows)}, "
          f"{len(full)} requests a refused (429) passed to b, while cut {attempts} attempts {share:.1%} not 202")
    assert attempts > 20 and share < 0.2, (share, attempts)
    assert a.stop() == 0 and b.stop() == 0
