"""`make run` in a fresh clone with nothing but the distribution's python3 (PEP 668 on Debian 12)."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.fixtures.gateway import _children, free_port, request

REPO = pathlib.Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_make_run_in_a_fresh_clone_with_the_system_python(tmp_path):
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"no {SYSTEM_PYTHON} here")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import venv, ensurepip"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"{SYSTEM_PYTHON} has no ensurepip: apt-get install python3-venv (.ci/run does)")
    clone = tmp_path / "ringgate"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    port = free_port()
    instance = f"rgmake{os.getpid()}"
    env = {
        "PATH": "/usr/bin:/bin",  # Debian's python3, make and gcc; no pyenv, no venv of ours
        "HOME": str(tmp_path / "home"),  # no pip cache or user config of the machine's
        "LANG": "C.UTF-8",
        "RINGGATE_PORT": str(port),
        "RINGGATE_INSTANCE": instance,
        "RINGGATE_WORKERS": "1",
        "RINGGATE_RING_BYTES": "1MiB",
        "RINGGATE_FLUSH_INTERVAL_MS": "50",
    }
    log = tmp_path / "make.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        make = subprocess.Popen(["make", "run"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert make.poll() is None, f"make run exited with {make.returncode}:\n{log.read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"no /healthz within 600 s:\n{log.read_text()[-5000:]}"
            try:
                if request(port, "GET", "/healthz", timeout=2).status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        ready_s = time.monotonic() - started
        answer = request(port, "POST", "/v1/ingest", body=b'[{"made": "by make run"}]',
                         headers={"Content-Type": "application/json"})
        assert answer.status == 202, answer.body
        assert json.loads(answer.body)["accepted"] == 1
        assert (clone / ".venv" / "bin" / "python").exists()
        # make exec's the gateway: SIGTERM it (as a service manager would) and make reports its exit
        (serve,) = [pid for pid in _children(make.pid) if b"serve" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()]
        os.kill(serve, signal.SIGTERM)
        assert make.wait(120) == 0, log.read_text()[-5000:]
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait(30)
        for path in glob.glob(f"/dev/shm/{instance}-*") + glob.glob(f"/dev/shm/{instance}.lock"):
            os.unlink(path)
    stored = list((clone / "ringgate-data").rglob("*.ndjson"))
    assert stored and b"by make run" in b"".join(p.read_bytes() for p in stored)
    print(f"make run: /healthz after {ready_s:.0f} s (venv, pip install, native build)")


def test_make_names_python3_venv_when_ensurepip_is_missing(tmp_path):
    # a python3 whose ensurepip cannot be imported, as Debian's is without python3-venv
    shadow = tmp_path / "shadow" / "ensurepip"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('ensurepip is not installed here')\n")
    python = tmp_path / "python3"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={shadow.parent} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    done = subprocess.run(["make", "--no-print-directory", "venv", f"PYTHON={python}", f"VENV={tmp_path}/venv"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "apt-get install python3-venv" in done.stderr, done.stderr
    assert not (tmp_path / "venv").exists()
