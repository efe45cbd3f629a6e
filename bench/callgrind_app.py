"""Instructions per request of the worker's ASGI app, under callgrind (bench/RESULTS.md, "The edge").

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/cg.%p \
        python3 bench/callgrind_app.py [records per body] [requests] [full]

Builds the app as bench/test_bench_app.py does (a real native ring, shared-memory metrics), warms
up, switches instrumentation on (`callgrind_control -i on` on its own pid), sends `requests`
POST /v1/ingest of the e2e body (every answer a 202), switches it off and prints the pid; the
instructions per request are the `summary:` of the out file divided by `requests`
(`callgrind_annotate /tmp/cg.<pid> | head`). Set `RINGGATE_REQUEST_ID=1` to send an X-Request-ID,
`RINGGATE_RATE_LIMIT=1000000000/s` to measure the limiter (a limit never reached). With `full`,
the ring is filled first and never drained: every answer is a 429 (the cost of a refusal; with
RINGGATE_REFUSAL_DELAY_MS=0, the refusal alone: the default 50 ms hold adds a timer and an event
loop wake-up per refused request, ~93k instructions). Run the real interpreter, not pyenv's shim
(a shell script valgrind would measure instead): /root/.pyenv/versions/3.11.7/bin/python3.11 here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from e2e import make_body  # noqa: E402
from test_bench_app import JSON, drainer, runner  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    full = len(sys.argv) > 3 and sys.argv[3] == "full"
    instance = f"rgcg-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    os.environ["RINGGATE_INSTANCE"] = instance
    from ringgate.config import Settings
    from ringgate.http.app import create_app
    from ringgate.metrics import Metrics
    from ringgate.ring import Ring, segment_name

    ring = Ring.create(segment_name(instance, 0), 64 << 20)
    ring.flusher_pid = os.getpid()
    Metrics.create(instance)
    from ringgate import ratelimit

    ratelimit.create(instance)
    try:
        app = create_app(Settings.from_environ())
        app.gateway.start()
        body = make_body(n)
        headers = list(JSON)
        if os.environ.get("RINGGATE_REQUEST_ID"):
            headers.append((b"x-request-id", b"3f2a9c1e-client-trace-0001"))
        statuses: list = []
        drain = drainer(ring)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(runner(app, body, statuses, headers=headers, requests=200)())
        drain()
        if full:  # fill the ring to its last bytes (1-record bodies last): every request is refused
            for filler in (body, make_body(1)):
                statuses.clear()
                while not statuses or statuses[-1] == 202:
                    loop.run_until_complete(runner(app, filler, statuses, headers=headers, requests=1)())
        statuses.clear()
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=False, capture_output=True)
        loop.run_until_complete(runner(app, body, statuses, headers=headers, requests=requests)())
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=False, capture_output=True)
        assert set(statuses) == ({429} if full else {202}), set(statuses)
        print(os.getpid())
    finally:
        ring.close()
        ring.unlink()
        Metrics.unlink(instance)
        ratelimit.unlink(instance)


if __name__ == "__main__":
    main()
