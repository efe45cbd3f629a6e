"""The edge attacks of issue 9, made against a running gateway on loopback, with what each costs.

    python bench/attacks.py --port 8080 [--worker-pid PID] [--json-out FILE]

For each attack: the answer (status, error code) and how long it took, the slowest /healthz
answered on the same worker meanwhile (probed every 50 ms), and how much the worker's peak RSS
(VmHWM) grew. tests/integration/test_edge_bounds.py makes the same attacks against `ringgate
serve` with one worker and asserts the bounds; this script measures them, e.g. before and after a
change (bench/RESULTS.md). Every request goes to 127.0.0.1 and every loop is bounded.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import socket
import threading
import time
from dataclasses import asdict, dataclass

MIB = 1 << 20


def many_gzip_members(count: int = 160_000) -> bytes:
    """~3.2 MB of empty gzip members: each used to re-copy the rest of the body (quadratic)."""
    return gzip.compress(b"", mtime=0) * count


def gzip_of_tiny_records(decoded_bytes: int = 16 * MIB) -> bytes:
    """A ~16 KB gzip of 16 MiB of `{}` lines: 5.6 M records, which used to cost a gigabyte."""
    return gzip.compress(b"{}\n" * (decoded_bytes // 3), compresslevel=9, mtime=0)


def large_json_array(records: int = 100_000, pad: int = 150) -> bytes:
    """A ~16 MiB JSON array of valid records: a decode long enough to block an event loop."""
    item = b'{"k":"' + b"x" * pad + b'"}'
    return b"[" + b",".join([item] * records) + b"]"


@dataclass
class Outcome:
    attack: str
    status: int
    error: str
    seconds: float
    healthz_worst_s: float
    vmhwm_growth_mib: float | None


def vmhwm_kib(pid: int | None) -> int | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


class HealthProbe(threading.Thread):
    """GET /healthz every 50 ms until stopped; `worst` is the slowest answer seen (a failed or
    timed-out probe counts as its full timeout)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.port, self.timeout = port, timeout
        self.worst = 0.0
        self.probes = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                conn.request("GET", "/healthz")
                ok = conn.getresponse().status == 200
                conn.close()
            except OSError:
                ok = False
            took = time.monotonic() - started if ok else self.timeout
            self.worst = max(self.worst, took)
            self.probes += 1
            self.done.wait(0.05)

    def stop(self) -> float:
        self.done.set()
        self.join(self.timeout + 1)
        return self.worst


def post(port: int, path: str, body: bytes, headers: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        error = json.loads(raw).get("error", "")
    except ValueError:
        error = raw[:60].decode(errors="replace")
    return resp.status, error


def measure(name: str, port: int, worker_pid: int | None, attack) -> Outcome:
    before = vmhwm_kib(worker_pid)
    probe = HealthProbe(port)
    probe.start()
    time.sleep(0.1)
    started = time.monotonic()
    status, error = attack()
    seconds = time.monotonic() - started
    time.sleep(0.1)
    worst = probe.stop()
    after = vmhwm_kib(worker_pid)
    growth = None if before is None else (after - before) / 1024
    return Outcome(name, status, error, round(seconds, 3), round(worst, 3), growth)


def slow_uploads(port: int, count: int, declared: int = 16 * MIB) -> list[socket.socket]:
    """`count` connections that declare `declared` body bytes and send one."""
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n[" % declared)
        socks.append(s)
    return socks


def read_answer(sock: socket.socket, timeout: float) -> tuple[int, bool]:
    """(status, connection closed after the answer) of a raw connection."""
    sock.settimeout(timeout)
    data = b""
    closed = False
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    except TimeoutError:
        pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, closed


def run_all(port: int, worker_pid: int | None) -> list[Outcome]:
    ndjson_gz = {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    outcomes = [
        measure("160,000 empty gzip members (3.2 MB)", port, worker_pid,
                lambda: post(port, "/v1/ingest", many_gzip_members(), ndjson_gz)),
        measure("16 KB gzip of 16 MiB of {} lines", port, worker_pid,
                lambda: post(port, "/v1/ingest", gzip_of_tiny_records(), ndjson_gz)),
        measure("16 MiB JSON array of 100,000 records", port, worker_pid,
                lambda: post(port, "/v1/ingest", large_json_array(), {"Content-Type": "application/json"})),
    ]

    def normal_during_slow_uploads():
        socks = slow_uploads(port, 8)
        try:
            time.sleep(0.2)
            return post(port, "/v1/ingest", b'[{"normal":1}]', {"Content-Type": "application/json"}, timeout=60)
        finally:
            for s in socks:
                s.close()

    outcomes.append(measure("a normal request while 8 uploads declare 16 MiB and send 1 byte", port, worker_pid,
                            normal_during_slow_uploads))
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--worker-pid", type=int, default=None, help="the HTTP worker, for VmHWM")
    parser.add_argument("--json-out")
    args = parser.parse_args()
    outcomes = run_all(args.port, args.worker_pid)
    print(f"{'attack':66} {'answer':>24} {'s':>7} {'healthz worst s':>16} {'VmHWM +MiB':>11}")
    for o in outcomes:
        growth = "" if o.vmhwm_growth_mib is None else f"{o.vmhwm_growth_mib:.0f}"
        print(f"{o.attack:66} {o.status:>4} {o.error:>19} {o.seconds:7.2f} {o.healthz_worst_s:16.2f} {growth:>11}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump([asdict(o) for o in outcomes], f, indent=1)


if __name__ == "__main__":
    main()
