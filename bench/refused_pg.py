"""What refused records cost PostgreSQL: B refused and B good records, interleaved, in one request
through a real `ringgate serve` into a throwaway server; prints, per B, the wall time from the
POST to its `?ack=commit` answer, the transactions committed (pg_stat_database.xact_commit,
the flusher's connection included) and the dead-letter objects written.

    python3 bench/refused_pg.py [--tree DIR] [B ...]     (default B: 10 200 2000)

`--tree` runs the gateway from another checkout (e.g. the code before a change); the server and
this script come from this one.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from tests.fixtures import postgres as P  # noqa: E402
from tests.fixtures.gateway import Gateway, free_port  # noqa: E402
from tests.integration.test_postgres_refused import mixed, xact_commits  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default=str(pathlib.Path(__file__).resolve().parent.parent))
    parser.add_argument("sizes", nargs="*", type=int, default=[10, 200, 2000])
    args = parser.parse_args()
    bindir, looked = P.find_bindir()
    if bindir is None:
        sys.exit(f"no PostgreSQL server binaries (looked in {looked})")
    server = P.start_server(bindir, prefix="ringgate-bench-pg-")
    work = pathlib.Path(tempfile.mkdtemp(prefix="ringgate-bench-refused-"))
    results = []
    try:
        for b in args.sizes:
            results.append(run(server, work / f"b{b}", args.tree, b))
            print(json.dumps(results[-1]), flush=True)
    finally:
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'B refused':>9} {'+ good':>7} {'wall s':>8} {'xact_commit':>12} {'DLQ objects':>12}")
    for r in results:
        print(f"{r['refused']:>9} {r['good']:>7} {r['wall_s']:>8.2f} {r['transactions']:>12} {r['dead_letter_objects']:>12}")
    return 0


def run(server, work: pathlib.Path, tree: str, b: int) -> dict:
    work.mkdir(parents=True)
    port, instance, table = free_port(), f"rgb{os.getpid()}x{b}", f"bench_refused_{b}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGGATE_")}
    env.update({
        "PYTHONPATH": tree,
        "RINGGATE_PORT": str(port),
        "RINGGATE_INSTANCE": instance,
        "RINGGATE_WORKERS": "1",
        "RINGGATE_RING_BYTES": str(4 << 20),
        "RINGGATE_SINK": server.url,
        "RINGGATE_PG_TABLE": table,
        "RINGGATE_DLQ": f"file://{work}/dlq",
        "RINGGATE_FLUSH_INTERVAL_MS": "50",
        "RINGGATE_ACK_TIMEOUT_MS": "600000",
    })
    gw = Gateway(env=env, cwd=str(work), port=port, instance=instance, log_path=str(work / "gateway.log"))
    payloads, _, _ = mixed(b, b, tag=f"b{b}")
    body = b"[" + b",".join(payloads) + b"]"
    gw.start()
    try:
        before, _ = xact_commits(server)
        started = time.monotonic()
        resp = gw.post(body, path="/v1/ingest?ack=commit", timeout=900)
        wall = time.monotonic() - started
        assert resp.status == 200, resp.body
        assert gw.stop() == 0
    finally:
        if gw.proc.poll() is None:
            gw.kill_all(spare_resource_tracker=False)
    after, own = xact_commits(server)
    objects = [p for p in (work / "dlq").rglob("*.ndjson") if p.is_file()]
    return {
        "refused": b, "good": b, "wall_s": round(wall, 3), "transactions": after - before - own,
        "dead_letter_objects": len(objects),
    }


if __name__ == "__main__":
    sys.exit(main())
