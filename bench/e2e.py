"""End-to-end load run: ringgate beside its ceilings and a FastAPI baseline, one after another, same run.

    python bench/e2e.py                     # issue 12's run: files and PostgreSQL (a throwaway server), ~6 min
    python bench/e2e.py --sink file          # files only: bare Granian, ringgate, FastAPI
    python bench/e2e.py --sink postgresql://user@127.0.0.1:5432/db   # an existing server
    python bench/e2e.py --sink file --sink s3             # + S3 protocol (a throwaway moto server)
    python bench/e2e.py --profile /tmp/prof               # py-spy over ringgate under load
    python bench/e2e.py --protocols --sink file           # each shipper protocol beside /v1/ingest (~3 min)

Servers (each on loopback, started, loaded, stopped and drained before the next one starts):
- ceiling (files): `bench/baselines/bare_granian.py`, Granian ASGI decoding the body with msgspec
  into `Struct(records: list[Raw])` and answering 202; no sink.
- ceiling (PostgreSQL): a bare COPY loop, no HTTP: 10,000-row binary COPY transactions of a
  pre-encoded buffer into a table with ringgate's columns, from 1 and from 2 connections.
- ceiling (S3): the same bare Granian ceiling (taken from the file pass when --sink file runs too).
- ringgate: `ringgate serve` (RINGGATE_WORKERS from --workers, default 1 and 2; the best is named).
- baseline: `bench/baselines/fastapi_queue.py` on uvicorn workers (uvloop, httptools); none for S3.

S3: `RINGGATE_SINK=s3://<bucket>/bench` (a fresh bucket per server) against moto's standalone
server, started as the integration tests start it (`tests/fixtures/s3.py`, its own process).
moto is slow (~90 MB/s) and shares the cores: the S3 rows measure moto as much as ringgate.

Load: wrk (apt-get install -y wrk; -t2 by default) with bench/post.lua, POSTing `{"records": [...]}`
bodies of 100 records of ~129 bytes (12.9 KB) (--records 100,1 adds 1-record bodies), at each
--concurrency (64), --duration seconds each, after a short warm-up, in each client mode of
--retry-after-ms: 0, wrk resends every 429 at once (a closed loop: overload turns into a storm
of 429s), and 1000, one request delayed by 1 s per 429 as clients honouring Retry-After are.
Per load point:
- acknowledged records/s: 2xx responses (counted by status in the Lua `response()` hook) x records
  per request / wrk's duration; 429s and other non-2xx counted apart;
- committed records/s: records that reached the sink during the load window (NDJSON lines in
  the files whose final name appeared or in the objects listed under the prefix, or `count(*)` of
  the table, sampled right before wrk starts
  and right after it ends) / the window. Between load points the run waits until everything
  acknowledged so far is committed, so every window starts empty;
- p50/p99 latency (wrk), the 429 rate, and the CPU seconds the server's processes used per
  million records (a measure the noise of a shared machine disturbs less than throughput);
- after each server stops: every acknowledged record is in the sink (`lost` counts any that
  are not; `extra` any stored beyond what was acknowledged);
- ringgate's server CPU per answer: per 429 from one more load point (--refusal-seconds) with
  the flushers stopped (SIGSTOP) and the rings full, so every answer is a 429; per 2xx as a load
  point's CPU less its 429s' share (429s x that cost), divided by its 2xx answers.
At the end, issue 12's table (its numbers at 8b9c5bd) with this run's beside them.

Ratios: ringgate / ceiling and ringgate / baseline on committed records/s (acknowledged for the
bare Granian ceiling, which stores nothing).

--protocols: one `ringgate serve` (the last --workers, 2 by default; file sink; default settings
otherwise) and the same --protocol-records records (make_records) per request in each protocol
(protocol_bodies): /v1/ingest JSON, OTLP protobuf and OTLP JSON (/v1/logs), ES bulk (/_bulk),
HEC event, Loki JSON and Loki protobuf+snappy, then /v1/ingest again (the drift of a shared
machine), one after another at each --concurrency, --duration 8 s each, Retry-After honoured
(1000 ms per 429 or 503). Before the load, one request of each is checked: its success status and
body, and exactly that many more lines in the files. Per point the same columns as above plus the
answers that were neither success nor backpressure (a wrong body would measure errors); ratios to
/v1/ingest (the mean of its two runs) on committed records/s and on server CPU per record. Output: a table, then one JSON document (also
written to --json-out). Every load loop is bounded: wrk by --duration, waits by --drain-timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LUA = BENCH / "post.lua"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- bodies ----------------------------------------------------------------------------------------


def make_records(n: int) -> list[bytes]:
    """Compact JSON objects of ~129 bytes, each different (as in MEASUREMENTS.md)."""
    events = (b"click", b"view", b"scroll", b"purchase")
    return [
        b'{"id":%d,"ts":"2026-11-25T10:00:%02d.%03dZ","user":"user%05d","event":"%s",'
        b'"props":{"page":"/home","x":%d,"y":%d},"ok":true}'
        % (i, i % 60, i % 1000, i * 7 % 100_000, events[i % 4], i * 13 % 1000, i * 29 % 1000)
        for i in range(n)
    ]


def make_body(n: int) -> bytes:
    return b'{"records":[' + b",".join(make_records(n)) + b"]}"


# -- processes -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: bytes, timeout: float = 5) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/ingest", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def get(port: int, path: str, timeout: float = 5) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def session_pids(sid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
                out.append(int(entry))
    return out


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and int(fields[1]) == pid:
                out.append(int(entry))
    return out


def cpu_seconds(pids: list[int], reaped: bool = False) -> float:
    """utime + stime of these processes (fields 14 and 15 of /proc/<pid>/stat); with `reaped`, also
    what their children that have exited used (cutime + cstime): PostgreSQL's backends come and go."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:
            ticks += int(fields[11]) + int(fields[12])
            if reaped:
                ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU since boot (/proc/stat): the machine's CPU use."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def is_flusher(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"flusher" in f.read().split(b"\0")
    except OSError:
        return False


# -- sinks and how to count what they hold ---------------------------------------------------------


class FileCounter:
    """NDJSON lines in files ending in .ndjson under a directory. Files appear under their final
    name only when complete (rename), and never change afterwards but to be rewritten whole with the
    same content, so each is counted once, when first seen."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.seen: set[str] = set()
        self.total = 0

    def count(self) -> int:
        new = []
        for dirpath, _, files in os.walk(self.directory):
            for name in files:
                if name.endswith(".ndjson"):
                    path = os.path.join(dirpath, name)
                    if path not in self.seen:
                        new.append(path)
        # the set of files is fixed above; reading them may take a while
        for path in new:
            with open(path, "rb") as f:
                self.total += f.read().count(b"\n")
            self.seen.add(path)
        return self.total


class PgCounter:
    def __init__(self, url: str, table: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.table = table

    def count(self) -> int:
        (exists,) = self.conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,)).fetchone()
        if not exists:
            return 0
        return self.conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]

    def drop(self) -> None:
        self.conn.execute(f"DROP TABLE IF EXISTS {self.table}, {self.table}_offsets CASCADE")

    def close(self) -> None:
        self.conn.close()


@dataclass
class Postgres:
    url: str
    server: object | None = None  # tests.fixtures.postgres.PostgresServer when we started one

    def pids(self) -> list[int]:
        """The postmaster and its children (backends), for CPU accounting; [] for a server not ours."""
        if self.server is None:
            return []
        try:
            with open(os.path.join(self.server.datadir, "postmaster.pid")) as f:
                master = int(f.readline())
        except (OSError, ValueError):
            return []
        return [master, *children_of(master)]

    def cpu_seconds(self) -> float:
        """CPU of the server: the postmaster with its exited backends (cutime), and the live ones."""
        pids = self.pids()
        return cpu_seconds(pids[:1], reaped=True) + cpu_seconds(pids[1:]) if pids else 0.0

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()


def start_postgres(url: str) -> Postgres:
    if url != "postgresql":
        return Postgres(url)
    sys.path.insert(0, str(ROOT))
    from tests.fixtures import postgres as pg  # the integration tests' throwaway server

    bindir, looked = pg.find_bindir()
    if bindir is None:
        raise SystemExit(f"no PostgreSQL server binaries (looked in {looked}); install postgresql-15")
    server = pg.start_server(bindir, prefix="ringgate-e2e-pg-")
    print(f"postgresql: {server.version}, port {server.port}, data in {server.datadir}", flush=True)
    return Postgres(server.url, server)


class S3Counter:
    """NDJSON lines in the objects under a bucket's prefix. An object is listed only once its PUT (or
    multipart upload) completed, and is never changed afterwards but rewritten whole with the same
    content, so each key is read and counted once, when first listed."""

    def __init__(self, s3: S3, bucket: str, prefix: str) -> None:
        self.client = s3.server.client
        self.bucket = bucket
        self.prefix = prefix
        self.seen: set[str] = set()
        self.total = 0

    def count(self) -> int:
        new = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            new += [item["Key"] for item in page.get("Contents", []) if item["Key"] not in self.seen]
        for key in new:
            self.total += self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read().count(b"\n")
            self.seen.add(key)
        return self.total

    def drop(self) -> None:
        """Delete the bucket and its objects (moto keeps them in memory)."""
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys += [item["Key"] for item in page.get("Contents", [])]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
        self.client.delete_bucket(Bucket=self.bucket)


@dataclass
class S3:
    server: object  # tests.fixtures.s3.S3Server: a moto server process on loopback

    def cpu_seconds(self) -> float:
        return cpu_seconds([self.server._proc.pid])

    def stop(self) -> None:
        self.server.stop()


def start_s3() -> S3:
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.s3 import S3Server  # the integration tests' moto server (its own process)

    server = S3Server()
    import moto

    print(f"s3: moto {moto.__version__} at {server.endpoint}", flush=True)
    return S3(server)


# -- servers ---------------------------------------------------------------------------------------


@dataclass
class Server:
    kind: str  # "ceiling" | "ringgate" | "baseline"
    workers: int
    sink: str  # "none" | "file" | "s3" | a postgresql:// URL
    workdir: str
    flushers: int = 0  # ringgate: 0 leaves RINGGATE_FLUSHERS unset (its default); the count found once started
    s3: S3 | None = None  # the moto server when sink == "s3"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    counter: FileCounter | PgCounter | S3Counter | None = None
    log_path: str = ""
    table: str = ""

    @property
    def label(self) -> str:
        extra = f", {self.flushers} flushers" if self.kind == "ringgate" and self.flushers > 1 else ""
        return f"{self.kind} (w={self.workers}{extra})"

    def start(self, timeout: float = 60) -> None:
        data = os.path.join(self.workdir, f"{self.kind}-{self.port}")
        os.makedirs(data, exist_ok=True)
        env = dict(os.environ)
        pg = self.sink.startswith("postgres")
        self.table = f"bench_{self.kind}_events"
        bucket = f"bench-{self.kind}-{self.port}"
        if self.sink == "s3":
            self.s3.server.make_bucket(bucket)
            env.update(self.s3.server.env)
        if self.kind == "ceiling":
            cmd = [sys.executable, "-m", "granian", "--interface", "asgi", "--loop", "uvloop",
                   "--workers", str(self.workers), "--host", "127.0.0.1", "--port", str(self.port),
                   "--log-level", "warn", "--working-dir", str(BENCH / "baselines"), "bare_granian:app"]
        elif self.kind == "ringgate":
            env.update({
                "RINGGATE_HOST": "127.0.0.1",
                "RINGGATE_PORT": str(self.port),
                "RINGGATE_WORKERS": str(self.workers),
                "RINGGATE_INSTANCE": f"bench-e2e-{self.port}",
                "RINGGATE_SINK": (self.sink if pg else f"s3://{bucket}/bench" if self.sink == "s3"
                                  else f"file://{data}/sink"),
                "RINGGATE_PG_TABLE": self.table,
                "RINGGATE_DLQ": f"file://{data}/dead-letter",
                "RINGGATE_LOG_LEVEL": "warning",
                "RINGGATE_DRAIN_TIMEOUT_S": "120",
            })
            if self.flushers:
                env["RINGGATE_FLUSHERS"] = str(self.flushers)
            else:
                env.pop("RINGGATE_FLUSHERS", None)
            cmd = [sys.executable, "-m", "ringgate", "serve"]
        elif self.kind == "baseline":
            env.update({"BENCH_SINK": self.sink if pg else f"file://{data}/sink", "BENCH_PG_TABLE": self.table})
            cmd = [sys.executable, "-m", "uvicorn", "fastapi_queue:app", "--app-dir", str(BENCH / "baselines"),
                   "--workers", str(self.workers), "--loop", "uvloop", "--http", "httptools",
                   "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", "--no-access-log"]
        else:
            raise ValueError(self.kind)
        if pg:
            self.counter = PgCounter(self.sink, self.table)
            self.counter.drop()
        elif self.sink == "file":
            self.counter = FileCounter(f"{data}/sink")
        elif self.sink == "s3":
            self.counter = S3Counter(self.s3, bucket, "bench/")
        self.log_path = os.path.join(self.workdir, f"{self.kind}-{self.port}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=data, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        probe = make_body(1)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                if self.kind != "ringgate" or get(self.port, "/readyz") == 200:
                    if post(self.port, probe) == 202:
                        if self.kind == "ringgate" and not self.flushers:  # its default: how many it started
                            self.flushers = sum(map(is_flusher, self.pids()))
                        return
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"{self.label} not ready within {timeout}s:\n{self.log()}")

    def pids(self) -> list[int]:
        return session_pids(self.proc.pid) if self.proc else []

    def committed(self) -> int:
        return self.counter.count() if self.counter else 0

    def stop(self, timeout: float) -> tuple[int | None, float]:
        """SIGTERM, wait for the drain; (exit status or None if killed, seconds)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL every process of the session we started (the server and its children)."""
        if self.proc is None:
            return
        for pid in session_pids(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")[-4000:]
        except OSError:
            return ""


# -- load ------------------------------------------------------------------------------------------


def run_wrk(port: int, body_file: str, concurrency: int, duration: float, threads: int,
            retry_after_ms: int = 0, path: str = "/v1/ingest", content_type: str = "application/json",
            headers: dict[str, str] | None = None, backoff: tuple[int, ...] = (429,), pace_ms: float = 0) -> dict:
    cmd = ["wrk", f"-t{min(threads, concurrency)}", f"-c{concurrency}", f"-d{duration:g}s", "--timeout", "10s",
           "-s", str(LUA), f"http://127.0.0.1:{port}{path}"]
    env = dict(os.environ, WRK_BODY_FILE=body_file, WRK_CONTENT_TYPE=content_type,
               WRK_HEADERS="\n".join(f"{k}: {v}" for k, v in (headers or {}).items()),
               WRK_BACKOFF_STATUSES=",".join(map(str, backoff)))
    if retry_after_ms:
        env["WRK_RETRY_AFTER_MS"] = str(retry_after_ms)
    if pace_ms:
        env["WRK_PACE_MS"] = f"{pace_ms:.3f}"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    for line in out.decode().splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"wrk gave no result ({proc.returncode}):\n{out.decode()}\n{err.decode()}")


@dataclass
class Point:
    sink: str
    server: str
    kind: str
    workers: int
    records_per_request: int
    concurrency: int
    flushers: int = 1
    duration_s: float = 0.0
    requests: int = 0
    status_2xx: int = 0
    status_429: int = 0
    status_other: int = 0
    socket_errors: int = 0
    acked_per_s: float = 0.0
    committed_per_s: float | None = None
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rate_429: float = 0.0
    server_cpu_s_per_m: float | None = None  # server CPU seconds per million acknowledged records
    flusher_cpu_s_per_m: float | None = None  # the part of server_cpu_s_per_m ringgate's flushers used
    postgres_cpu_s_per_m: float | None = None
    moto_cpu_s_per_m: float | None = None  # the S3 server's (moto's) CPU seconds per million acknowledged records
    drained_s: float | None = None  # time after the window until everything acknowledged was stored
    statuses: dict = field(default_factory=dict)
    retry_after_ms: int = 0  # 0: every 429 resent at once (closed loop); else one request delayed this long per 429
    server_cpu_s: float | None = None  # CPU seconds ringgate's (or the server's) processes used in the window
    # server CPU per answer: a 429 measured apart (refusal_cost: every answer a 429), a 2xx as the
    # window's CPU less its 429s' share, per 2xx; ringgate only
    cpu_us_per_2xx: float | None = None
    cpu_us_per_429: float | None = None
    pace_ms: float = 0.0  # > 0: a paced point (half_rate), each request waiting this long after the last answer
    offered_fraction: float | None = None  # a paced point's 2xx rate ÷ the saturating rate it aims at half of
    machine_busy: float | None = None  # fraction of the machine's CPU time busy in the window (every process)


def wait_committed(server: Server, target: int, timeout: float) -> tuple[int, float | None]:
    started = time.monotonic()
    while True:
        have = server.committed()
        if have >= target:
            return have, time.monotonic() - started
        if time.monotonic() - started > timeout:
            return have, None
        time.sleep(0.2)


def measure(point: Point, server: Server, pg: Postgres | S3 | None, body_file: str, args, **wrk) -> int:
    """One load point: wrk for --duration seconds at point.concurrency (`wrk`: run_wrk's path, headers,
    ...), its answers, the sink's count before and after and the CPU the processes used, into
    `point`; returns the records acknowledged."""
    n = point.records_per_request
    before = server.committed()
    pids = server.pids()
    flushers = [pid for pid in pids if is_flusher(pid)]
    cpu0, fl0 = cpu_seconds(pids), cpu_seconds(flushers)
    pg0 = pg.cpu_seconds() if pg else 0.0
    busy0, total0 = machine_ticks()
    t0 = time.monotonic()
    out = run_wrk(server.port, body_file, point.concurrency, args.duration, args.wrk_threads, point.retry_after_ms,
                  pace_ms=point.pace_ms, **wrk)
    t1 = time.monotonic()
    busy1, total1 = machine_ticks()
    point.machine_busy = (busy1 - busy0) / max(1, total1 - total0)
    cpu1, fl1 = cpu_seconds(pids), cpu_seconds(flushers)
    pg1 = pg.cpu_seconds() if pg else 0.0
    after = server.committed() if server.counter else None
    statuses = {int(k): v for k, v in out["statuses"].items()}
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    point.statuses = statuses
    point.duration_s = out["duration_us"] / 1e6
    point.requests = out["requests"]
    point.status_2xx = ok
    point.status_429 = statuses.get(429, 0)
    point.status_other = out["requests"] - ok - point.status_429
    errors = out["errors"]
    point.socket_errors = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    point.acked_per_s = ok * n / point.duration_s
    point.p50_ms = out["latency_us"]["p50"] / 1000
    point.p99_ms = out["latency_us"]["p99"] / 1000
    point.rate_429 = point.status_429 / out["requests"] if out["requests"] else 0.0
    point.server_cpu_s = cpu1 - cpu0
    if ok:
        point.server_cpu_s_per_m = (cpu1 - cpu0) / (ok * n) * 1e6
        if flushers:
            point.flusher_cpu_s_per_m = (fl1 - fl0) / (ok * n) * 1e6
        if isinstance(pg, S3):
            point.moto_cpu_s_per_m = (pg1 - pg0) / (ok * n) * 1e6
        elif pg is not None and pg.server is not None:
            point.postgres_cpu_s_per_m = (pg1 - pg0) / (ok * n) * 1e6
    if after is not None:
        point.committed_per_s = (after - before) / (t1 - t0)
    return ok * n


def load_server(server: Server, args, bodies: dict[int, str], sink_label: str, pg: Postgres | S3 | None,
                results: list[Point]) -> dict:
    """Start, warm up, run every load point, stop; returns the server's totals."""
    print(f"\n== {sink_label}: {server.label} on port {server.port}", flush=True)
    server.start()
    acked = 1  # the readiness probe's record
    # requests still in flight when wrk stops are stored but never counted as acknowledged
    in_flight = 16 * max(bodies)
    try:
        warm = run_wrk(server.port, bodies[max(bodies)], 16, args.warmup, args.wrk_threads)
        acked += sum(v for k, v in warm["statuses"].items() if k.startswith("2")) * max(bodies)
        if server.counter:
            wait_committed(server, acked, args.drain_timeout)
        # the bare ceiling never refuses: one mode is all of it
        modes = args.retry_after_ms[:1] if server.kind == "ceiling" else args.retry_after_ms
        points = []
        for n, body_file in bodies.items():
            for c in args.concurrency:
                for mode in modes:
                    point = Point(sink_label, server.label, server.kind, server.workers, n, c, server.flushers,
                                  retry_after_ms=mode)
                    acked += measure(point, server, pg, body_file, args)
                    in_flight += c * n
                    if point.committed_per_s is not None:
                        _, point.drained_s = wait_committed(server, acked, args.drain_timeout)
                    points.append(point)
                    print(_row(point), flush=True)
        if args.half_rate and server.kind != "ceiling":
            # latency below saturation: paced at half the rate the Retry-After point sustained
            for sat in [p for p in points if p.retry_after_ms and p.committed_per_s]:
                rate = sat.committed_per_s / sat.records_per_request  # requests/s sustained
                pace = max(0.0, 1000 * sat.concurrency / (rate / 2) - sat.p50_ms)
                point = replace(sat, pace_ms=pace, statuses={})
                acked += measure(point, server, pg, bodies[sat.records_per_request], args)
                in_flight += sat.concurrency * sat.records_per_request
                point.offered_fraction = point.acked_per_s / sat.committed_per_s
                _, point.drained_s = wait_committed(server, acked, args.drain_timeout)
                points.append(point)
                print(_row(point), flush=True)
        if server.kind == "ringgate" and args.refusal_seconds > 0:
            n = max(bodies)
            per_429, filled = refusal_cost(server, bodies[n], args)
            acked += filled * n
            in_flight += max(args.concurrency) * n
            for point in points:
                point.cpu_us_per_429 = per_429
                if point.pace_ms:
                    continue
                if point.status_2xx and per_429 is not None:
                    point.cpu_us_per_2xx = (point.server_cpu_s - point.status_429 * per_429 / 1e6) / point.status_2xx * 1e6
            print(f"   a 429 costs {_fmt(per_429, '.1f')} µs of server CPU; a 2xx "
                  + ", ".join(f"{_fmt(p.cpu_us_per_2xx, '.1f')} µs ({_mode(p.retry_after_ms)})" for p in points
                              if not p.pace_ms), flush=True)
            wait_committed(server, acked, args.drain_timeout)
        results.extend(points)
    finally:
        code, stop_s = server.stop(args.drain_timeout + 60)
    stored = server.committed() if server.counter else None
    totals = {"server": server.label, "sink": sink_label, "acked": acked, "stored": stored,
              "exit": code, "clean_exit": code in clean_exits(server), "stop_s": round(stop_s, 2)}
    if stored is not None:
        totals["lost"] = max(0, acked - stored)
        totals["extra"] = max(0, stored - acked)
        totals["extra_allowed"] = in_flight
    print(f"   stopped: exit {code} after {stop_s:.1f}s; acknowledged {acked:,}, stored "
          f"{stored if stored is None else format(stored, ',')}", flush=True)
    if code not in clean_exits(server) or (stored is not None and not acked <= stored <= acked + in_flight):
        print(server.log(), flush=True)
    if isinstance(server.counter, PgCounter):
        server.counter.drop()
        server.counter.close()
    elif isinstance(server.counter, S3Counter):
        server.counter.drop()
    return totals


def clean_exits(server: Server) -> tuple[int, ...]:
    # uvicorn without its multiprocess supervisor (--workers 1) re-raises the SIGTERM it handled
    # after its graceful shutdown (lifespan included): -15 is its clean exit
    return (0, -signal.SIGTERM) if server.kind == "baseline" and server.workers == 1 else (0,)


def refusal_cost(server: Server, body_file: str, args) -> tuple[float | None, int]:
    """Server CPU µs per 429, with every answer a 429: the flushers stopped (SIGSTOP, so the
    workers still see them alive), the rings filled by a short wrk run, then wrk for
    --refusal-seconds with nothing freed; the flushers resumed after. Returns (µs per 429, the
    requests the fill acknowledged)."""
    pids = server.pids()
    flushers = [pid for pid in pids if is_flusher(pid)]
    for pid in flushers:
        os.kill(pid, signal.SIGSTOP)
    try:
        fill = run_wrk(server.port, body_file, 16, 3, args.wrk_threads)
        filled = sum(v for k, v in fill["statuses"].items() if k.startswith("2"))
        cpu0 = cpu_seconds(pids)
        out = run_wrk(server.port, body_file, max(args.concurrency), args.refusal_seconds, args.wrk_threads)
        cpu1 = cpu_seconds(pids)
    finally:
        for pid in flushers:
            os.kill(pid, signal.SIGCONT)
    refused = out["statuses"].get("429", 0)
    filled += sum(v for k, v in out["statuses"].items() if k.startswith("2"))
    if refused < 0.95 * out["requests"]:
        print(f"   refusal cost not measured: {refused} of {out['requests']} answers were 429 ({out['statuses']})")
        return None, filled
    return (cpu1 - cpu0) / out["requests"] * 1e6, filled


# -- the PostgreSQL ceiling: a bare COPY loop --------------------------------------------------------


def _copy_loop(url: str, table: str, seconds: float, out) -> None:
    import psycopg

    sys.path.insert(0, str(ROOT))
    from ringgate.sinks.base import Batch
    from ringgate.sinks.postgres import encode_copy_binary

    records = make_records(10_000)
    # ringgate's six columns, its instance name included (as its rows carry)
    stream = bytes(encode_copy_binary(Batch.from_payloads(records, ring=os.getpid() & 0x7FFF,
                                                          received_ns=time.time_ns()), instance="bench-e2e-ceiling"))
    rows = 0
    with psycopg.connect(url) as conn:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(f"COPY {table} (instance, ring, epoch, seq, received_at, record) FROM STDIN"
                              " (FORMAT BINARY)") as copy:
                    copy.write(stream)
            rows += len(records)
    out.put(rows)


def copy_ceiling(pg: Postgres, connections: int, seconds: float, quiet: bool = False) -> dict:
    import psycopg

    table = "bench_copy_ceiling"
    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (ring smallint NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL,"
                     " received_at timestamptz NOT NULL, record jsonb NOT NULL, instance text)")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    cpu0 = pg.cpu_seconds()
    started = time.monotonic()
    procs = [ctx.Process(target=_copy_loop, args=(pg.url, table, seconds, out)) for _ in range(connections)]
    for p in procs:
        p.start()
    rows = sum(out.get(timeout=seconds + 120) for _ in procs)
    elapsed = time.monotonic() - started
    for p in procs:
        p.join(30)
    pg_cpu = pg.cpu_seconds() - cpu0
    with psycopg.connect(pg.url, autocommit=True) as conn:
        (stored,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        conn.execute(f"DROP TABLE {table}")
    assert stored == rows, (stored, rows)
    # elapsed includes the processes' start (~0.3 s): per-connection time is `seconds`
    result = {"connections": connections, "rows": rows, "rows_per_s": rows / seconds,
              "wall_s": round(elapsed, 2), "postgres_cpu_s_per_m": pg_cpu / rows * 1e6 if pg.server is not None else None}
    if not quiet:
        print(f"   COPY ceiling, {connections} connection(s): {rows / seconds:,.0f} rows/s, PostgreSQL CPU "
              f"{_fmt(result['postgres_cpu_s_per_m'], '.2f')} s per M rows", flush=True)
    return result


# -- report ----------------------------------------------------------------------------------------


def _first(*values):
    return next((v for v in values if v is not None), None)


def _fmt(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


HEADER = (f"   {'server':22} {'rec/req':>7} {'conc':>4} {'429s':>11} {'acked rec/s':>12} {'committed/s':>12} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'429 %':>6} {'other':>6} {'cpu s/M':>7} {'flusher':>7} {'pg s/M':>7} {'moto s/M':>8} {'busy%':>5}")


def _row(p: Point) -> str:
    return (f"   {p.server:22} {p.records_per_request:7d} {p.concurrency:4d} {_mode(p.retry_after_ms, p.pace_ms):>11} "
            f"{p.acked_per_s:12,.0f} "
            f"{_fmt(p.committed_per_s):>12} {p.p50_ms:7.2f} {p.p99_ms:7.2f} {p.rate_429 * 100:6.1f} "
            f"{p.status_other + p.socket_errors:6d} {_fmt(p.server_cpu_s_per_m, '.2f'):>7} "
            f"{_fmt(p.flusher_cpu_s_per_m, '.2f'):>7} {_fmt(p.postgres_cpu_s_per_m, '.2f'):>7} "
            f"{_fmt(p.moto_cpu_s_per_m, '.2f'):>8} {_fmt(p.machine_busy and p.machine_busy * 100, '.0f'):>5}")


def _median_points(points: list[Point]) -> list[Point]:
    """One point per (sink, server, load): the median of the repeats by committed (else acked) rec/s."""
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        groups.setdefault((p.sink, p.server, p.records_per_request, p.concurrency, p.retry_after_ms, p.pace_ms > 0),
                          []).append(p)
    out = []
    for group in groups.values():
        group.sort(key=_score)
        out.append(group[(len(group) - 1) // 2])
    return out


def _score(p: Point) -> float:
    return p.committed_per_s if p.committed_per_s is not None else p.acked_per_s


def summarize(points: list[Point], copy_ceilings: list[dict]) -> tuple[list[dict], list[str]]:
    """Best worker count per server and load point, and the ratios."""
    best: dict[tuple, Point] = {}
    for p in _median_points([p for p in points if not p.pace_ms]):
        # the bare ceiling never refuses: its one mode stands for every mode
        key = (p.sink, p.kind, p.records_per_request, p.concurrency, None if p.kind == "ceiling" else p.retry_after_ms)
        if key not in best or _score(p) > _score(best[key]):
            best[key] = p
    loads = sorted({(p.sink, p.records_per_request, p.concurrency, p.retry_after_ms) for p in points
                    if p.kind != "ceiling" and not p.pace_ms},
                   key=lambda k: (SINK_ORDER.get(k[0], len(SINK_ORDER)), -k[1], k[2], k[3]))
    copy_best = max((c["rows_per_s"] for c in copy_ceilings), default=None)
    paced = {(p.sink, p.kind, p.records_per_request, p.concurrency, p.retry_after_ms): p for p in points if p.pace_ms}
    rows, lines = [], []
    ceil_point = None
    lines.append(f"{'sink':10} {'rec/req':>7} {'conc':>4} {'429s':>11} {'ceiling':>12} {'ringgate':>12} {'(workers)':>9} "
                 f"{'baseline':>12} {'(workers)':>9} {'rg/ceiling':>10} {'rg/baseline':>11} {'rg p99 ms':>9} "
                 f"{'rg 429 %':>8} {'rg µs/2xx':>9} {'rg µs/429':>9}  server CPU s per M records: ceiling/ringgate/baseline")
    for sink, n, c, mode in loads:
        rg = best.get((sink, "ringgate", n, c, mode))
        base = best.get((sink, "baseline", n, c, mode))
        if sink in ("file", "s3"):  # S3: the same bare Granian ceiling (from the file pass if it ran)
            ceil_point = best.get((sink, "ceiling", n, c, None)) or best.get(("file", "ceiling", n, c, None))
            ceiling = ceil_point.acked_per_s if ceil_point else None
            ceiling_workers = ceil_point.workers if ceil_point else None
        else:
            ceiling, ceiling_workers, ceil_point = copy_best, None, None
        row = {
            "sink": sink, "records_per_request": n, "concurrency": c, "retry_after_ms": mode,
            "ceiling_per_s": ceiling, "ceiling_workers": ceiling_workers,
            "ringgate_committed_per_s": _score(rg) if rg else None, "ringgate_workers": rg.workers if rg else None,
            "ringgate_flushers": rg.flushers if rg else None,
            "ringgate_acked_per_s": rg.acked_per_s if rg else None,
            "baseline_committed_per_s": _score(base) if base else None,
            "baseline_workers": base.workers if base else None,
            "ringgate_p99_ms": rg.p99_ms if rg else None, "ringgate_429_rate": rg.rate_429 if rg else None,
            "ringgate_cpu_us_per_2xx": rg.cpu_us_per_2xx if rg else None,
            "ringgate_cpu_us_per_429": rg.cpu_us_per_429 if rg else None,
            "cpu_s_per_m": {name: p.server_cpu_s_per_m for name, p in
                            (("ceiling", ceil_point), ("ringgate", rg), ("baseline", base)) if p},
        }
        half = paced.get((sink, "ringgate", n, c, mode))
        row["ringgate_half_rate_p99_ms"] = half.p99_ms if half else None
        row["ringgate_half_rate_fraction"] = half.offered_fraction if half else None
        row["ringgate_over_ceiling"] = (row["ringgate_committed_per_s"] / ceiling
                                        if rg and ceiling else None)
        row["ringgate_over_baseline"] = (row["ringgate_committed_per_s"] / row["baseline_committed_per_s"]
                                         if rg and base and row["baseline_committed_per_s"] else None)
        rows.append(row)
        lines.append(
            f"{sink:10} {n:7d} {c:4d} {_mode(mode):>11} {_fmt(ceiling):>12} {_fmt(row['ringgate_committed_per_s']):>12} "
            f"{_workers(rg):>9} {_fmt(row['baseline_committed_per_s']):>12} "
            f"{_fmt(row['baseline_workers'], 'd'):>9} {_fmt(row['ringgate_over_ceiling'], '.2f'):>10} "
            f"{_fmt(row['ringgate_over_baseline'], '.2f'):>11} {_fmt(row['ringgate_p99_ms'], '.1f'):>9} "
            f"{_fmt(row['ringgate_429_rate'] and row['ringgate_429_rate'] * 100, '.1f'):>8} "
            f"{_fmt(row['ringgate_cpu_us_per_2xx'], '.0f'):>9} {_fmt(row['ringgate_cpu_us_per_429'], '.0f'):>9}  "
            + "/".join(_fmt(row["cpu_s_per_m"].get(k), ".2f") for k in ("ceiling", "ringgate", "baseline"))
        )
    return rows, lines


SINK_ORDER = {"file": 0, "postgresql": 1, "s3": 2}


# The table issue 12 starts from (five runs at 8b9c5bd, 2026-12-01, wrk -t2 -c64, 100 records per
# request, 2 workers, default settings): (sink, resent at once?) -> (committed rec/s, ÷ ceiling, ÷ baseline)
ISSUE_12 = {
    ("file", True): ("550k–933k", "0.48–0.71", "1.45–1.90"),
    ("file", False): ("875k", "0.62", "2.04"),
    ("postgresql", True): ("142k–204k", "0.33–0.42", "0.78–0.95"),
    ("postgresql", False): ("240k", "0.40", "0.95"),
}


def issue_table(rows: list[dict]) -> list[str]:
    """Issue 12's table with this run's numbers beside it: 100 records per request, the highest
    concurrency, each sink and mode this run measured."""
    out = ["| path | issue 12 (8b9c5bd): committed rec/s, ÷ ceiling, ÷ baseline | this run: committed rec/s, "
           "÷ ceiling, ÷ baseline | this run: 429 % | server CPU µs per 2xx / per 429 (ringgate) | p99 ms at "
           "~half the sustained rate (its fraction of that rate) |",
           "|---|---|---|---:|---|---|"]
    top = max((r["concurrency"] for r in rows), default=0)
    for r in rows:
        resent = not r["retry_after_ms"]
        ref = ISSUE_12.get((r["sink"], resent))
        if ref is None or r["records_per_request"] != 100 or r["concurrency"] != top:
            continue
        path = (f"{'files' if r['sink'] == 'file' else 'PostgreSQL jsonb'}, clients "
                + ("resend a 429 at once" if resent else f"honour Retry-After ({r['retry_after_ms']} ms)"))
        out.append(
            f"| {path} | {ref[0]}, {ref[1]}, {ref[2]} | {_fmt(r['ringgate_committed_per_s'])}, "
            f"{_fmt(r['ringgate_over_ceiling'], '.2f')}, {_fmt(r['ringgate_over_baseline'], '.2f')} | "
            f"{_fmt(r['ringgate_429_rate'] if r['ringgate_429_rate'] is None else r['ringgate_429_rate'] * 100, '.1f')} | "
            f"{_fmt(r.get('ringgate_cpu_us_per_2xx'), '.0f')} / {_fmt(r.get('ringgate_cpu_us_per_429'), '.0f')} | "
            f"{_fmt(r.get('ringgate_half_rate_p99_ms'), '.1f')} ({_fmt(r.get('ringgate_half_rate_fraction'), '.2f')}) |")
    return out if len(out) > 2 else []


def _mode(retry_after_ms: int, pace_ms: float = 0) -> str:
    if pace_ms:
        return "half rate"
    return "resent" if not retry_after_ms else f"wait {retry_after_ms}ms"


def _workers(p: Point | None) -> str:
    if p is None:
        return "-"
    return f"{p.workers}" + (f", {p.flushers} fl" if p.flushers != 1 else "")


def machine() -> dict:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    try:
        from ringgate.ring import IMPL_NAME
    except Exception as exc:  # noqa: BLE001
        IMPL_NAME = f"unavailable ({exc})"
    versions = {}
    for name in ("granian", "msgspec", "uvicorn", "fastapi", "psycopg", "obstore", "numpy"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    return {
        "cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
        "commit": commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else ""),
        "ring_impl": IMPL_NAME, "wrk": (wrk.stdout + wrk.stderr).splitlines()[0] if wrk.returncode in (0, 1) else "?",
        "loadavg_at_start": os.getloadavg(), "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# -- profile ---------------------------------------------------------------------------------------


def warm_guest_memory(gib: float) -> None:
    """Touch `gib` GiB once and free it, capped at half of MemAvailable.

    On this VM the first touch of guest memory the kernel has never used costs ~10x a later one:
    writing 1.3 MB files into the page cache took 2.6 ms of CPU each on fresh memory and 0.26 ms
    once the same amount had been touched and freed (measured 2026-11-25). The file sinks of a
    run write gigabytes, so without this the first servers' flushers pay what the later ones
    don't. Freed pages stay backed by the host and the page cache reuses them."""
    available = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) << 10
    size = min(int(gib * (1 << 30)), available // 2)
    chunk = 256 << 20
    blocks = []  # held together, so the freed pages of one block are not simply handed to the next
    for _ in range(size // chunk):
        block = bytearray(chunk)
        block[::4096] = b"\x01" * len(range(0, chunk, 4096))  # one store per page touches it
        blocks.append(block)
    del blocks
    print(f"warmed {size / (1 << 30):.1f} GiB of guest memory", flush=True)


def profile(args, bodies: dict[int, str], sink: str) -> None:
    """py-spy over every ringgate process under the 100-record load at the highest concurrency;
    per process role, the top functions by self samples and ours (ringgate/) by inclusive share."""
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    os.makedirs(args.profile, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="ringgate-e2e-")
    pg = start_postgres(sink) if sink.startswith("postgres") else None
    server = Server("ringgate", args.workers[-1], "file" if pg is None else pg.url, workdir,
                    flushers=args.flushers[-1])
    server.start()
    try:
        run_wrk(server.port, bodies[max(bodies)], 16, args.warmup, args.wrk_threads)
        raw = os.path.join(args.profile, f"ringgate-{'file' if pg is None else 'postgresql'}.raw.txt")
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(server.proc.pid), "--subprocesses", "--format", "raw",
             "--rate", str(args.profile_rate), "--duration", str(int(args.duration)), "--nonblocking",
             *(["--native"] if args.profile_native else []), "-o", raw],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        time.sleep(1)
        out = run_wrk(server.port, bodies[max(bodies)], max(args.concurrency), args.duration, args.wrk_threads,
                      args.retry_after_ms[0])
        _, err = spy.communicate(timeout=args.duration + 60)
        print(f"under py-spy: {out['requests'] / (out['duration_us'] / 1e6):,.0f} req/s, statuses "
              f"{out['statuses']}; raw stacks in {raw}", flush=True)
        if spy.returncode != 0:
            print(err.decode(errors="replace")[-2000:])
        print("\n".join(summarize_profile(raw)))
    finally:
        server.stop(args.drain_timeout + 60)
        if isinstance(server.counter, PgCounter):
            server.counter.close()
        if pg is not None:
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def summarize_profile(raw: str, top: int = 20) -> list[str]:
    """Per process role (HTTP worker, flusher, supervisor): the share of samples with no Python frame
    (Granian's Rust threads), the top functions by self samples, and ours (ringgate/) by self line
    and by inclusive share, from py-spy's raw (collapsed) stacks."""
    by_role: dict[str, dict] = {}
    with open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = stack.split(";")
            procs = [fr for fr in frames if fr.startswith("process ")]
            code = [fr for fr in frames if not fr.startswith("process ")]
            role = ("flusher" if "flusher" in procs[-1] else "supervisor" if len(procs) == 1
                    else "HTTP worker") if procs else "?"
            st = by_role.setdefault(role, {"total": 0, "native": 0, "self": {}, "lines": {}, "incl": {}})
            st["total"] += n
            if not code:
                st["native"] += n
                continue
            leaf = _frame_name(code[-1])
            st["self"][leaf] = st["self"].get(leaf, 0) + n
            ours = [fr for fr in code if "ringgate/" in fr]
            if ours:
                where = _frame_name(ours[-1], keep_line=True)
                st["lines"][where] = st["lines"].get(where, 0) + n
            for name in {_frame_name(fr) for fr in ours}:
                st["incl"][name] = st["incl"].get(name, 0) + n
    lines = []
    for role, st in sorted(by_role.items(), key=lambda kv: -kv[1]["total"]):
        total = st["total"]
        lines.append(f"\n{role}: {total} samples; {st['native'] / total * 100:.1f}% with no Python frame "
                     "(Rust threads: Granian's HTTP runtime)")
        lines.append(f"  {'self %':>6}  function (leaf frame)")
        for name, n in sorted(st["self"].items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {n / total * 100:6.1f}  {name}")
        lines.append(f"  {'incl %':>6}  ours: function (inclusive)")
        for name, n in sorted(st["incl"].items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {n / total * 100:6.1f}  {name}")
        lines.append(f"  {'%':>6}  ours: innermost ringgate/ line on the stack")
        for name, n in sorted(st["lines"].items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {n / total * 100:6.1f}  {name}")
    return lines


def _frame_name(frame: str, keep_line: bool = False) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, lineno = where.rpartition(":")
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if keep_line:
        return f"{name} ({path}:{lineno})"
    return f"{name} ({path})" if path else name


# -- protocols: the same records through each shipper protocol's endpoint, one server, same run ----


@dataclass
class Protocol:
    name: str
    path: str
    content_type: str  # "" sends none (HEC clients send none)
    body: bytes
    status: int  # the success answer
    success: bytes = b""  # what a success answer's body holds (a wrong body would measure errors)
    headers: dict = field(default_factory=dict)
    backoff: tuple[int, ...] = (429, 503)  # the protocol's backpressure answers (HEC's busy is 503)


def _any_value(value):
    from opentelemetry.proto.common.v1 import common_pb2 as c

    if isinstance(value, bool):
        return c.AnyValue(bool_value=value)
    if isinstance(value, int):
        return c.AnyValue(int_value=value)
    if isinstance(value, float):
        return c.AnyValue(double_value=value)
    if isinstance(value, str):
        return c.AnyValue(string_value=value)
    if isinstance(value, dict):
        return c.AnyValue(kvlist_value=c.KeyValueList(
            values=[c.KeyValue(key=k, value=_any_value(v)) for k, v in value.items()]))
    return c.AnyValue(array_value=c.ArrayValue(values=[_any_value(v) for v in value]))


def protocol_bodies(n: int) -> list[Protocol]:
    """make_records(n) in each protocol, as its shippers send them: /v1/ingest `{"records": [...]}`
    (the baseline); OTLP: one LogRecord per record, the record as its body (a kvlist AnyValue), one
    resource and scope, in protobuf and in the OTLP JSON mapping; ES bulk: `{"create":{"_index"}}`
    before each document (Beats, Fluent Bit, Vector); HEC: one envelope a line, the record as
    `event`, no Content-Type; Loki: 4 streams of n/4 lines, each line the record's JSON text, as JSON
    and as a snappy PushRequest."""
    import cramjam
    from google.protobuf import json_format
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2 as c
    from opentelemetry.proto.logs.v1 import logs_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2

    sys.path.insert(0, str(ROOT))
    from ringgate.sources._loki_push_pb2 import PushRequest

    records = make_records(n)
    values = [json.loads(r) for r in records]
    base_ns = 1_764_600_000_000_000_000
    otlp = logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        resource=resource_pb2.Resource(attributes=[
            c.KeyValue(key="service.name", value=c.AnyValue(string_value="bench")),
            c.KeyValue(key="host.name", value=c.AnyValue(string_value="web-1"))]),
        scope_logs=[logs_pb2.ScopeLogs(scope=c.InstrumentationScope(name="bench.e2e", version="1"), log_records=[
            logs_pb2.LogRecord(time_unix_nano=base_ns + i * 1000, severity_number=9, severity_text="INFO",
                               body=_any_value(v))
            for i, v in enumerate(values)])])])
    otlp_json = json.dumps(json_format.MessageToDict(otlp, use_integers_for_enums=True),
                           separators=(",", ":")).encode()
    streams = 4
    per = -(-n // streams)
    loki_streams = [({"job": "bench", "host": f"web-{s}"},
                     [(base_ns + i * 1000, records[i].decode()) for i in range(s * per, min(n, (s + 1) * per))])
                    for s in range(streams)]
    loki_json = json.dumps({"streams": [{"stream": labels, "values": [[str(ts), line] for ts, line in entries]}
                                        for labels, entries in loki_streams if entries]},
                           separators=(",", ":")).encode()
    push = PushRequest()
    for labels, entries in loki_streams:
        if entries:
            stream = push.streams.add(labels="{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}")
            for ts, line in entries:
                stream.entries.add(line=line).timestamp.FromNanoseconds(ts)
    return [
        Protocol("/v1/ingest JSON", "/v1/ingest", "application/json", make_body(n), 202, b'"accepted"'),
        Protocol("OTLP protobuf", "/v1/logs", "application/x-protobuf", otlp.SerializeToString(), 200),
        Protocol("OTLP JSON", "/v1/logs", "application/json", otlp_json, 200),
        Protocol("ES bulk", "/_bulk", "application/x-ndjson",
                 b"".join(b'{"create":{"_index":"bench"}}\n' + r + b"\n" for r in records), 200, b'"errors":false'),
        Protocol("HEC event", "/services/collector/event", "",
                 b"\n".join(b'{"time":%d.%03d,"host":"web-1","sourcetype":"_json","event":%b}'
                            % (1_764_600_000 + i // 1000, i % 1000, r) for i, r in enumerate(records)),
                 200, b'"code":0'),
        Protocol("Loki JSON", "/loki/api/v1/push", "application/json", loki_json, 204),
        Protocol("Loki protobuf+snappy", "/loki/api/v1/push", "application/x-protobuf",
                 bytes(cramjam.snappy.compress_raw(push.SerializeToString())), 204),
    ]


def check_protocol(server: Server, proto: Protocol, n: int, timeout: float) -> None:
    """One request of the protocol's body: its success answer (status and body), then exactly n more
    lines in the sink, so that the load point counts one stored line per record and nothing else."""
    before = server.committed()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        headers = {**({"Content-Type": proto.content_type} if proto.content_type else {}), **proto.headers}
        conn.request("POST", proto.path, body=proto.body, headers=headers)
        resp = conn.getresponse()
        answer = resp.read()
    finally:
        conn.close()
    if resp.status != proto.status or proto.success not in answer:
        raise RuntimeError(f"{proto.name}: {proto.path} answered {resp.status} {answer[:300]!r}, "
                           f"not {proto.status} with {proto.success!r}")
    have, _ = wait_committed(server, before + n, timeout)
    time.sleep(0.5)  # a second flush of the same request would show now
    have = server.committed()
    if have != before + n:
        raise RuntimeError(f"{proto.name}: one request of {n} records stored {have - before} lines")


@dataclass
class ProtocolPoint(Point):
    protocol: str = ""
    path: str = ""
    body_bytes: int = 0
    expected_status: int = 0
    refused: int = 0  # the protocol's backpressure answers (429, 503)
    unexpected: dict = field(default_factory=dict)  # statuses neither success nor backpressure
    stored_after_drain: int | None = None  # the sink's count after the drain, minus before the point
    acked: int = 0


def run_protocols(args) -> dict:
    """`ringgate serve` (default settings but the file sink, args.workers[-1] HTTP workers), then per
    concurrency, each protocol one after another: wrk for --duration seconds, then wait until all
    it acknowledged is in the files. Ratios are to /v1/ingest at the same concurrency."""
    n = args.protocol_records
    workdir = tempfile.mkdtemp(prefix="ringgate-e2e-protocols-")
    protocols = protocol_bodies(n)
    files = {}
    for i, proto in enumerate(protocols):
        files[proto.name] = os.path.join(workdir, f"protocol-{i}.body")
        Path(files[proto.name]).write_bytes(proto.body)
    if args.warm_memory_gib > 0:
        warm_guest_memory(args.warm_memory_gib)
    info = machine()
    info["warm_memory_gib"] = args.warm_memory_gib
    info["body_bytes"] = {p.name: len(p.body) for p in protocols}
    print(json.dumps(info), flush=True)
    points: list[ProtocolPoint] = []
    started = time.monotonic()
    server = Server("ringgate", args.workers[-1], "file", workdir)
    print(f"\n== file: {server.label} on port {server.port}, {n} records per request", flush=True)
    server.start()
    acked = 1  # the readiness probe's record
    try:
        warm = run_wrk(server.port, files[protocols[0].name], 16, args.warmup, args.wrk_threads)
        acked += sum(v for k, v in warm["statuses"].items() if k.startswith("2")) * n
        wait_committed(server, acked, args.drain_timeout)
        for proto in protocols:
            check_protocol(server, proto, n, 30)
            acked += n
        print(f"   each protocol's answer is {', '.join(f'{p.name} {p.status}' for p in protocols)}, "
              f"and one request stores {n} lines", flush=True)
        print(PROTOCOL_HEADER, flush=True)
        for c in args.concurrency:
            # /v1/ingest again at the end: how far the shared machine drifted while the others ran
            for proto in [*protocols, replace(protocols[0], name=protocols[0].name + " (again)")]:
                point = ProtocolPoint("file", server.label, server.kind, server.workers, n, c, protocol=proto.name,
                                      path=proto.path, body_bytes=len(proto.body), expected_status=proto.status,
                                      retry_after_ms=args.retry_after_ms[0])
                before = server.committed()
                point.acked = measure(point, server, None, files[proto.name.removesuffix(" (again)")], args,
                                      path=proto.path,
                                      content_type=proto.content_type, headers=proto.headers, backoff=proto.backoff)
                acked += point.acked
                point.refused = sum(point.statuses.get(s, 0) for s in proto.backoff)
                point.unexpected = {status: count for status, count in point.statuses.items()
                                    if status != proto.status and status not in proto.backoff}
                have, point.drained_s = wait_committed(server, acked, args.drain_timeout)
                point.stored_after_drain = have - before
                points.append(point)
                print(_protocol_row(point), flush=True)
                if point.unexpected or point.socket_errors:
                    print(f"   WARNING {proto.name}: unexpected statuses {point.unexpected}, "
                          f"{point.socket_errors} socket errors\n{server.log()}", flush=True)
    finally:
        code, stop_s = server.stop(args.drain_timeout + 60)
    stored = server.committed()
    shutil.rmtree(workdir, ignore_errors=True)
    totals = {"server": server.label, "sink": "file", "acked": acked, "stored": stored, "lost": max(0, acked - stored),
              "exit": code, "stop_s": round(stop_s, 2)}
    print(f"   stopped: exit {code} after {stop_s:.1f}s; acknowledged {acked:,}, stored {stored:,}", flush=True)
    document = {"mode": "protocols", "machine": info, "args": dict(vars(args)),
                "elapsed_s": round(time.monotonic() - started, 1), "servers": [totals],
                "points": [asdict(p) for p in points], "loadavg_at_end": os.getloadavg()}
    print("\n" + markdown_protocols(document))
    return document


PROTOCOL_HEADER = (f"   {'protocol':22} {'conc':>4} {'acked rec/s':>12} {'committed/s':>12} {'p50 ms':>7} "
                   f"{'p99 ms':>7} {'429/503 %':>9} {'other':>6} {'cpu s/M':>7} {'drain s':>7}")


def _protocol_row(p: ProtocolPoint) -> str:
    refused = p.refused / p.requests * 100 if p.requests else 0.0
    return (f"   {p.protocol:22} {p.concurrency:4d} {p.acked_per_s:12,.0f} {_fmt(p.committed_per_s):>12} "
            f"{p.p50_ms:7.2f} {p.p99_ms:7.2f} {refused:9.1f} {sum(p.unexpected.values()) + p.socket_errors:6d} "
            f"{_fmt(p.server_cpu_s_per_m, '.2f'):>7} {_fmt(p.drained_s, '.1f'):>7}")


def markdown_protocols(document: dict) -> str:
    """The protocols run as a Markdown table: per concurrency and protocol, the rates and their ratio
    to /v1/ingest at the same concurrency (the mean of its runs first and last)."""
    m = document["machine"]
    points = document["points"]
    out = [f"Run of {m['date']}, commit {m['commit']}, ring {m['ring_impl']}, {m['cores']} cores ({m['cpu']}), "
           f"load average {'/'.join(f'{x:.1f}' for x in m['loadavg_at_start'])} at start, "
           f"{'/'.join(f'{x:.1f}' for x in document['loadavg_at_end'])} at end, {document['elapsed_s']:.0f} s; "
           f"{points[0]['server'] if points else '?'}, file sink, {points[0]['records_per_request'] if points else '?'} "
           f"records per request, {document['args']['duration']:g} s per point, --retry-after-ms "
           f"{document['args'].get('retry_after_ms', 0)}.", "",
           "| protocol | endpoint | body B | conc | acked rec/s | committed rec/s | committed / /v1/ingest | p50 ms "
           "| p99 ms | 429/503 % | other answers | server CPU s/M | CPU / /v1/ingest |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base: dict[int, dict[str, float]] = {}
    for c in {p["concurrency"] for p in points}:
        runs = [p for p in points if p["concurrency"] == c and p["protocol"].startswith("/v1/ingest JSON")]
        for key in ("committed_per_s", "server_cpu_s_per_m"):
            got = [p[key] for p in runs if p[key]]
            base.setdefault(c, {})[key] = sum(got) / len(got) if got else None
    for p in points:
        b = base[p["concurrency"]]
        ratio = p["committed_per_s"] / b["committed_per_s"] if b["committed_per_s"] and p["committed_per_s"] else None
        cpu = (p["server_cpu_s_per_m"] / b["server_cpu_s_per_m"]
               if b["server_cpu_s_per_m"] and p["server_cpu_s_per_m"] else None)
        refused = p["refused"] / p["requests"] * 100 if p["requests"] else 0.0
        other = sum(p["unexpected"].values()) + p["socket_errors"]
        out.append(f"| {p['protocol']} | `{p['path']}` ({p['expected_status']}) | {p['body_bytes']:,} | "
                   f"{p['concurrency']} | {p['acked_per_s']:,.0f} | {_fmt(p['committed_per_s'])} | "
                   f"{_fmt(ratio, '.2f')} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {refused:.1f} | {other} | "
                   f"{_fmt(p['server_cpu_s_per_m'], '.2f')} | {_fmt(cpu, '.2f')} |")
    t = document["servers"][0]
    undrained = [p["protocol"] for p in points if p["drained_s"] is None]
    out += ["", "Ratios are to the mean of /v1/ingest's two runs at the same concurrency (first and last). "
            f"After the drain (SIGTERM, exit {t['exit']}): acknowledged {t['acked']:,}, stored {t['stored']:,}"
            + (f" (LOST {t['lost']:,})" if t["lost"] else "") + "; "
            + (f"NOT everything acknowledged was in the files within --drain-timeout after {', '.join(undrained)}; "
               if undrained else "after each point the files held everything acknowledged so far, ")
            + "seconds to drain per point: " + ", ".join(_fmt(p["drained_s"], ".1f") for p in points) + "."]
    return "\n".join(out)


# -- markdown (for bench/RESULTS.md) ----------------------------------------------------------------


def markdown(document: dict) -> str:
    """The summary and every load point of a run's JSON as Markdown tables."""
    m = document["machine"]
    out = [f"Run of {m['date']}, commit {m['commit']}, ring {m['ring_impl']}, load average "
           f"{'/'.join(f'{x:.1f}' for x in m['loadavg_at_start'])} at start, "
           f"{'/'.join(f'{x:.1f}' for x in document['loadavg_at_end'])} at end, {document['elapsed_s']:.0f} s; "
           f"--retry-after-ms {document['args'].get('retry_after_ms', 0)}.", ""]
    # the summary again from the stored points, so that an earlier run's JSON reads as this code summarizes
    rows, _ = summarize([Point(**p) for p in document["points"]], document.get("copy_ceiling") or [])
    if table := issue_table(rows):
        out += table + [""]
    out += ["| sink | rec/req | conc | 429s | ceiling rec/s | ringgate committed rec/s (workers) | baseline committed "
            "rec/s (workers) | ringgate / ceiling | ringgate / baseline | ringgate p99 ms | ringgate 429 % "
            "| server CPU s per M records: ceiling / ringgate / baseline |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        no_baseline = r["sink"] == "s3" and r["baseline_committed_per_s"] is None
        fl = f", {r['ringgate_flushers']} fl" if r.get("ringgate_flushers", 1) not in (1, None) else ""
        cpu = r.get("cpu_s_per_m", {})
        out.append(
            f"| {r['sink']} | {r['records_per_request']} | {r['concurrency']} | {_mode(r.get('retry_after_ms', 0))} | "
            f"{_fmt(r['ceiling_per_s'])} | "
            f"{_fmt(r['ringgate_committed_per_s'])} ({_fmt(r['ringgate_workers'], 'd')}{fl}) | "
            + ("none for S3 | " if no_baseline else
               f"{_fmt(r['baseline_committed_per_s'])} ({_fmt(r['baseline_workers'], 'd')}) | ")
            + f"{_fmt(r['ringgate_over_ceiling'], '.2f')} | {_fmt(r['ringgate_over_baseline'], '.2f')} | "
            f"{_fmt(r['ringgate_p99_ms'], '.1f')} | "
            f"{_fmt(r['ringgate_429_rate'] if r['ringgate_429_rate'] is None else r['ringgate_429_rate'] * 100, '.1f')} | "
            + " / ".join(_fmt(cpu.get(k), ".2f") for k in ("ceiling", "ringgate", "baseline")) + " |")
    if document.get("copy_ceiling"):
        out += ["", "COPY ceiling (no HTTP; the best is the ceiling above): " + ", ".join(
            f"{c['when']} the servers, {c['connections']} connection(s): {c['rows_per_s']:,.0f} rows/s "
            f"(PostgreSQL CPU {_fmt(c['postgres_cpu_s_per_m'], '.2f')} s per M rows)" for c in document["copy_ceiling"])]
    out += ["", "| sink | server | rec/req | conc | 429s | acked rec/s | committed rec/s | p50 ms | p99 ms | 429 % | "
            "other non-2xx + socket errors | server CPU s/M | of which flusher | PostgreSQL / moto CPU s/M |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in document["points"]:
        out.append(
            f"| {p['sink']} | {p['server']} | {p['records_per_request']} | {p['concurrency']} | "
            f"{_mode(p.get('retry_after_ms', 0), p.get('pace_ms', 0))} | "
            f"{p['acked_per_s']:,.0f} | {_fmt(p['committed_per_s'])} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | "
            f"{p['rate_429'] * 100:.1f} | {p['status_other'] + p['socket_errors']} | "
            f"{_fmt(p['server_cpu_s_per_m'], '.2f')} | {_fmt(p.get('flusher_cpu_s_per_m'), '.2f')} | "
            f"{_fmt(_first(p.get('postgres_cpu_s_per_m'), p.get('moto_cpu_s_per_m')), '.2f')} |")
    checks = [t for t in document["servers"] if t.get("stored") is not None]
    if checks:
        out += ["", "After each server's drain (SIGTERM): " + "; ".join(
            f"{t['sink']} {t['server']}: acknowledged {t['acked']:,}, stored {t['stored']:,}"
            f"{' (LOST ' + format(t['lost'], ',') + ')' if t.get('lost') else ''}" for t in checks)
            + ". Stored may exceed acknowledged by requests in flight when wrk stops (at most concurrency x "
              "records per load point)."]
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--sink", action="append", default=None,
                        help="file, postgresql (a throwaway server), postgresql://..., or s3 (a throwaway moto "
                             "server; no FastAPI baseline); repeatable (default: file and postgresql)")
    parser.add_argument("--servers", default="ceiling,ringgate,baseline")
    parser.add_argument("--workers", type=_ints, default=[2], help="worker processes to try, e.g. 1,2 (2)")
    parser.add_argument("--flushers", type=_ints, default=[0],
                        help="ringgate flushers to try, e.g. 1,2 (0: RINGGATE_FLUSHERS unset, ringgate's default)")
    parser.add_argument("--records", type=_ints, default=[100], help="records per request, e.g. 100,1 (100)")
    parser.add_argument("--concurrency", type=_ints, default=[64], help="wrk connections, e.g. 16,64 (64)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load point (10; --protocols: 8)")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=1, help="run the whole sequence this many times (median)")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--retry-after-ms", type=_ints, default=None,
                        help="client modes, each a load point: delay one request by this long per 429 (and, with "
                             "--protocols, 503), as clients honouring Retry-After do; 0: every 429 resent at once "
                             "(plain closed-loop wrk). Default 0,1000 (--protocols: 1000)")
    parser.add_argument("--no-half-rate", dest="half_rate", action="store_false",
                        help="skip the paced point at half the sustained rate (p99 below saturation)")
    parser.add_argument("--refusal-seconds", type=float, default=5.0,
                        help="per ringgate server, a load point with every answer a 429 (flushers stopped) for "
                             "the server CPU per 429 (0: skip)")
    parser.add_argument("--copy-connections", type=_ints, default=[1, 2])
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--warm-memory-gib", type=float, default=8.0,
                        help="touch and free this much memory first (0: don't); see warm_guest_memory")
    parser.add_argument("--profile", default=None, metavar="DIR", help="py-spy ringgate under load instead")
    parser.add_argument("--profile-rate", type=int, default=250)
    parser.add_argument("--profile-native", action="store_true")
    parser.add_argument("--protocols", action="store_true",
                        help="ringgate alone (the last --workers, file sink): the same records through /v1/ingest "
                             "and each shipper protocol's endpoint, one after another, per --concurrency")
    parser.add_argument("--protocol-records", type=int, default=100, help="records per request with --protocols")
    parser.add_argument("--report", default=None, metavar="JSON",
                        help="print the Markdown tables of an earlier run's --json-out and exit")
    args = parser.parse_args(argv)
    if args.report:
        document = json.loads(Path(args.report).read_text())
        print(markdown_protocols(document) if document.get("mode") == "protocols" else markdown(document))
        return 0
    if args.duration is None:
        args.duration = 8.0 if args.protocols else 10.0
    if args.retry_after_ms is None:
        args.retry_after_ms = [1000] if args.protocols else [0, 1000]
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    if args.protocols:
        if any(s != "file" for s in args.sink or ["file"]):
            raise SystemExit("--protocols measures the file sink only")
        document = run_protocols(args)
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(json.dumps(document, indent=1, default=str))
        return 0
    sinks = args.sink or ["file", "postgresql"]
    kinds = [k for k in args.servers.split(",") if k]

    workdir = tempfile.mkdtemp(prefix="ringgate-e2e-")
    bodies = {}
    for n in args.records:
        path = os.path.join(workdir, f"body-{n}.json")
        Path(path).write_bytes(make_body(n))
        bodies[n] = path
    if args.profile:
        try:
            profile(args, bodies, sinks[0])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0

    if args.warm_memory_gib > 0:
        warm_guest_memory(args.warm_memory_gib)
    info = machine()
    info["warm_memory_gib"] = args.warm_memory_gib
    info["body_bytes"] = {n: os.path.getsize(p) for n, p in bodies.items()}
    print(json.dumps(info), flush=True)
    print(HEADER, flush=True)
    points: list[Point] = []
    totals: list[dict] = []
    copy_ceilings: list[dict] = []
    started = time.monotonic()
    try:
        for rep in range(args.repeat):
            for sink in sinks:
                pg = (start_postgres(sink) if sink.startswith("postgres") else start_s3() if sink == "s3"
                      else None)
                label = "s3" if isinstance(pg, S3) else "file" if pg is None else "postgresql"
                try:
                    if isinstance(pg, Postgres) and "ceiling" in kinds:
                        # a fresh cluster creates its WAL segments as it goes (later ones recycle):
                        # warm it up, and measure the ceiling before and after the servers
                        copy_ceiling(pg, 1, min(args.duration, 5), quiet=True)
                        for conns in args.copy_connections:
                            copy_ceilings.append({"repeat": rep, "when": "before",
                                                  **copy_ceiling(pg, conns, args.duration)})
                    # servers of the same worker count back to back: drift between them is smallest
                    for workers in args.workers:
                        for kind in kinds:
                            if kind == "ceiling" and (isinstance(pg, Postgres) or (label == "s3" and "file" in sinks)):
                                continue  # the PostgreSQL ceiling is the COPY loop; S3's the file pass's Granian
                            if kind == "baseline" and label == "s3":
                                continue  # no FastAPI baseline for S3
                            for flushers in (args.flushers if kind == "ringgate" else [1]):
                                server = Server(kind, workers, "none" if kind == "ceiling" else
                                                label if pg is None or label == "s3" else pg.url, workdir,
                                                flushers=flushers, s3=pg if label == "s3" else None)
                                try:
                                    totals.append(load_server(server, args, bodies, label,
                                                              None if kind == "ceiling" else pg, points))
                                finally:
                                    shutil.rmtree(os.path.join(workdir, f"{kind}-{server.port}"),
                                                  ignore_errors=True)
                    if isinstance(pg, Postgres) and "ceiling" in kinds:
                        for conns in args.copy_connections:
                            copy_ceilings.append({"repeat": rep, "when": "after",
                                                  **copy_ceiling(pg, conns, args.duration)})
                finally:
                    if pg is not None:
                        pg.stop()
    finally:
        elapsed = time.monotonic() - started
        rows, lines = summarize(points, copy_ceilings)
        print("\nBest worker count per server and load point (committed records/s; the bare Granian "
              "ceiling stores nothing: acknowledged)")
        print("\n".join(lines))
        if table := issue_table(rows):
            print("\nIssue 12's table, and this run's numbers\n" + "\n".join(table))
        if copy_ceilings:
            print("COPY ceiling: " + ", ".join(f"{c['when']}: {c['connections']} conn {c['rows_per_s']:,.0f} rows/s"
                                              for c in copy_ceilings) + " (the best is the ceiling)")
        for t in totals:
            if t.get("lost") or t.get("extra", 0) > t.get("extra_allowed", 0) or not t["clean_exit"]:
                print(f"WARNING {t}")
        document = {"machine": info, "args": {k: v for k, v in vars(args).items()}, "elapsed_s": round(elapsed, 1),
                    "summary": rows, "copy_ceiling": copy_ceilings, "servers": totals,
                    "points": [asdict(p) for p in points], "loadavg_at_end": os.getloadavg()}
        text = json.dumps(document, indent=1, default=str)
        print(text)
        if args.json_out:
            Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json_out).write_text(text)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
