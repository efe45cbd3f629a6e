"""`ringgate status` and `ringgate top` against a real `ringgate serve`, read from shared memory."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time

from ringgate.ring import layout as L
from ringgate.status import rates
from tests.fixtures.gateway import free_port
from tests.sinkdata import wait_for


def run_status(gw, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ringgate", "status", *args], env=gw.env, cwd=gw.cwd,
                          capture_output=True, text=True, timeout=timeout)


def compact(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def test_status_json_while_every_worker_is_stopped(make_gateway):
    gw = make_gateway(WORKERS="2", FLUSHERS="2")
    framed = 0
    for i in range(5):
        batch = [{"id": f"s-{i}-{j}", "pad": "x" * (i * 7 + j)} for j in range(7)]
        resp = gw.post(b"[" + b",".join(compact(r) for r in batch) + b"]")
        assert resp.status == 202, resp.body
        framed += sum(L.align(L.RECORD_HEADER_LENGTH + len(compact(r))) for r in batch)
    wait_for(lambda: gw.metrics()['ringgate_records_delivered_total{sink="file"}'] == 35, what="delivery")
    roles = gw.children()
    assert len(roles["worker"]) == 2 and len(roles["flusher"]) == 2, roles
    for pid in roles["worker"]:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: all(_state(p) == "T" for p in roles["worker"]), timeout=10, what="workers stopped")
        done = run_status(gw, "--json", "--interval", "0.5")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        text = run_status(gw, "--interval", "0")
    finally:
        for pid in roles["worker"]:
            os.kill(pid, signal.SIGCONT)
    assert status["instance"] == gw.instance
    assert status["supervisor"] == {"pid": gw.proc.pid, "alive": True, "state": status["supervisor"]["state"]}
    totals = status["totals"]
    assert totals["records_accepted"] == 35
    assert totals["records_delivered"] == 35
    assert totals["requests_by_code"] == {"202": 5}
    assert totals["records_accepted_by_client"] == {"anonymous": 35}
    assert status["rates"]["clients"] == {"anonymous": 0}
    rings = status["rings"]
    assert [r["ring"] for r in rings] == [0, 1]
    assert sum(r["producer_position"] for r in rings) == framed
    assert all(r["consumer_position"] == r["producer_position"] for r in rings)
    assert all(r["used_bytes"] == 0 and r["fill"] == 0 and r["sink_reason"] == "" for r in rings)
    assert all(r["capacity_bytes"] == 1 << 20 for r in rings)
    assert sorted(r["flusher_pid"] for r in rings) == sorted(roles["flusher"])
    assert all(r["flusher_alive"] for r in rings)
    workers = {p["pid"]: p["state"] for p in status["processes"] if p["role"] == "worker"}
    assert workers == {pid: "stopped" for pid in roles["worker"]}
    assert status["rates"]["records_in_per_s"] == 0 and status["rates"]["records_out_per_s"] == 0
    assert text.returncode == 0, text.stderr
    assert gw.instance in text.stdout and "stopped" in text.stdout and "Traceback" not in text.stderr
    # the gateway goes on serving after SIGCONT
    assert gw.post([{"after": 1}]).status == 202
    assert gw.stop() == 0


def test_status_shows_records_per_second_and_the_sink_failure(make_gateway):
    # nothing listens on that port: every delivery attempt fails and is retried
    # one ring, whose view the test reads (a PostgreSQL sink defaults to a ring per core)
    gw = make_gateway(SINK=f"postgresql://ringgate:s3cret@127.0.0.1:{free_port()}/ringgate", FLUSHERS="1")
    stop = threading.Event()
    posted = []

    def post_steadily() -> None:
        deadline = time.monotonic() + 20
        while not stop.is_set() and time.monotonic() < deadline:
            posted.append(gw.post([{"n": len(posted)}]).status)
            time.sleep(0.02)

    poster = threading.Thread(target=post_steadily, daemon=True)
    poster.start()
    try:
        wait_for(lambda: len(posted) >= 3, what="first posts")
        done = run_status(gw, "--json", "--interval", "1")
    finally:
        stop.set()
        poster.join(30)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert set(posted) == {202}
    assert status["rates"]["records_in_per_s"] > 0
    assert status["rates"]["records_out_per_s"] == 0
    assert status["rates"]["rings"][0]["in_bytes_per_s"] > 0
    ring = status["rings"][0]
    assert ring["used_bytes"] > 0 and ring["fill"] > 0 and ring["oldest_age_s"] > 0
    assert ring["sink_reason"].startswith("postgresql: ") and "connect" in ring["sink_reason"], ring
    assert status["totals"]["delivery_retries"] > 0 and status["totals"]["records_delivered"] == 0
    assert "s3cret" not in done.stdout  # the failure names the server, never the password


def test_top_under_a_pty_refreshes_until_q(make_gateway):
    gw = make_gateway()
    assert gw.post([{"top": 1}]).status == 202
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing of pytest's runs here
        os.execve(sys.executable, [sys.executable, "-m", "ringgate", "top"], gw.env)
    out = b""
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            out += _read_pty(fd, 0.1)
        os.write(fd, b"q")
        _, code = _wait(pid, 10)
        while chunk := _read_pty(fd, 0.2):
            out += chunk
    finally:
        _kill(pid)
        os.close(fd)
    text = out.decode(errors="replace")
    assert "Traceback" not in text, text
    assert code == 0, text
    assert text.count(f"ringgate top: {gw.instance}") >= 2, text  # refreshed, not drawn once
    assert "total accepted 1 " in text, text
    assert text.rstrip().endswith("\x1b[?1049l")  # left the alternate screen: the terminal is given back
    assert gw.stop() == 0


def test_status_derives_the_instance_from_the_port_as_serve_does():
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGGATE_")}
    env["RINGGATE_PORT"] = str(port)
    done = subprocess.run([sys.executable, "-m", "ringgate", "status"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1
    assert f"-{port}'" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count(f"'{socket.gethostname()}-{port}'") >= 1, done.stderr
    bad = subprocess.run([sys.executable, "-m", "ringgate", "status", "--instance", "../etc"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "RINGGATE_INSTANCE must be" in bad.stderr


def test_rates_are_none_when_a_counter_went_back():
    totals = {"records_accepted": 10, "records_delivered": 10, "requests": 2, "records_rejected": 0,
              "delivery_retries": 0}
    before = {"monotonic": 1.0, "totals": totals, "rings": []}
    after = {"monotonic": 3.0, "totals": dict(totals, records_accepted=4, records_delivered=30), "rings": []}
    got = rates(before, after)
    assert got["records_in_per_s"] is None  # a new run restarted the counters
    assert got["records_out_per_s"] == 10.0


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0].decode()


def _read_pty(fd: int, timeout: float) -> bytes:
    readable, _, _ = select.select([fd], [], [], timeout)
    if not readable:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the child closed its side
        return b""


def _wait(pid: int, timeout: float) -> tuple[int, int | None]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return done, os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    return 0, None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
