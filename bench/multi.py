"""One gateway against two behind nginx (deploy/nginx.conf), on this machine, file sink.

    cd <repo> && PYTHONPATH=$PWD python3 bench/multi.py [--seconds 10] [--connections 64]

Three set-ups, each loaded by wrk (1 thread, bench/post.lua, 100-record bodies of ~128 B records,
as bench/e2e.py's main points) for `--seconds` after a 2 s warm-up: one gateway directly, one
gateway behind nginx, two gateways behind nginx. Each gateway: RINGGATE_WORKERS=1, one flusher,
a file sink in a temporary directory. Prints a Markdown table: acknowledged records/s, p50/p99,
429 share, and CPU seconds per million records of the gateways and of nginx (from /proc).

Every process shares the same cores (`os.cpu_count()`, 2 on the development VM) with wrk: this
measures what a balancer and a second gateway cost on one box, not how N hosts scale (that
estimate is in bench/RESULTS.md, "More than one gateway").
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.e2e import make_records  # noqa: E402
from tests.fixtures.gateway import Gateway, _session, free_port  # noqa: E402
from tests.fixtures.nginx import start_nginx, stop_nginx  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def gateway(tmp: pathlib.Path, n: int) -> Gateway:
    port = free_port()
    instance = f"rgbench{os.getpid()}x{n}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGGATE_")}
    env.update({
        "RINGGATE_PORT": str(port), "RINGGATE_INSTANCE": instance, "RINGGATE_WORKERS": "1",
        "RINGGATE_SINK": f"file://{tmp}/data{n}", "RINGGATE_DLQ": f"file://{tmp}/dlq{n}",
        "PYTHONPATH": str(ROOT),
    })
    return Gateway(env=env, cwd=str(tmp), port=port, instance=instance, log_path=str(tmp / f"{instance}.log")).start()


def wrk(port: int, body: pathlib.Path, seconds: float, connections: int) -> dict:
    env = {**os.environ, "WRK_BODY_FILE": str(body)}
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", str(ROOT / "bench" / "post.lua"),
           f"http://127.0.0.1:{port}/v1/ingest"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def run(setup: str, count: int, behind_nginx: bool, args, body: pathlib.Path, records: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="rgbench-multi-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        gws = [gateway(tmp, n) for n in range(count)]
        proc = None
        try:
            port = gws[0].port
            if behind_nginx:
                proc, port = start_nginx(tmp, [g.port for g in gws])
            wrk(port, body, 2, args.connections)  # warm-up
            gw_pids = [p for g in gws for p in _session(g.proc.pid)]
            ngx_pids = [proc.pid] + [int(p) for p in _children(proc.pid)] if proc else []
            g0, n0 = cpu_s(gw_pids), cpu_s(ngx_pids)
            result = wrk(port, body, args.seconds, args.connections)
            g1, n1 = cpu_s(gw_pids), cpu_s(ngx_pids)
        finally:
            if proc is not None:
                stop_nginx(proc)
            for g in gws:
                g.stop()
    ok = result["statuses"].get("202", 0)
    total = sum(result["statuses"].values())
    secs = result["duration_us"] / 1e6
    acked = ok * records
    return {
        "setup": setup, "records_per_s": acked / secs, "p50_ms": result["latency_us"]["p50"] / 1000,
        "p99_ms": result["latency_us"]["p99"] / 1000, "429_pct": 100 * result["statuses"].get("429", 0) / max(total, 1),
        "other": total - ok - result["statuses"].get("429", 0) + sum(result["errors"].values()),
        "gateway_cpu_s_per_m": (g1 - g0) / max(acked, 1) * 1e6,
        "nginx_cpu_s_per_m": (n1 - n0) / max(acked, 1) * 1e6 if proc else None,
    }


def _children(pid: int) -> list[str]:
    out = []
    for path in pathlib.Path(f"/proc/{pid}/task").glob("*/children"):
        out += path.read_text().split()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    records = 100
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        f.write(b'{"records":[' + b",".join(make_records(records)) + b"]}")
        body = pathlib.Path(f.name)
    rows = []
    try:
        for _ in range(args.repeats):
            rows.append(run("1 gateway, direct", 1, False, args, body, records))
            rows.append(run("1 gateway behind nginx", 1, True, args, body, records))
            rows.append(run("2 gateways behind nginx", 2, True, args, body, records))
    finally:
        body.unlink()
    load = os.getloadavg()
    print(f"\n{os.cpu_count()} cores, wrk -t1 -c{args.connections} {args.seconds:.0f} s, 100-record bodies, "
          f"file sink, RINGGATE_WORKERS=1 per gateway; load average at end {load[0]:.1f}\n")
    print("| set-up | acked rec/s | p50 ms | p99 ms | 429 % | other errors | gateways CPU s/M | nginx CPU s/M |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ngx = "-" if r["nginx_cpu_s_per_m"] is None else f"{r['nginx_cpu_s_per_m']:.2f}"
        print(f"| {r['setup']} | {r['records_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{r['429_pct']:.1f} | {r['other']} | {r['gateway_cpu_s_per_m']:.2f} | {ngx} |")


if __name__ == "__main__":
    main()
