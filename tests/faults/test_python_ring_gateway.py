"""The pure-Python ring behind a real gateway: same promises as the native one, under the same faults."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.test_crashes import Load
from tests.sinkdata import assert_exactly_once, file_sink_records, wait_for

pytestmark = pytest.mark.slow


def test_python_ring_under_load_with_a_worker_and_the_flusher_killed(make_gateway):
    gw = make_gateway(IMPL="python", WORKERS="2", BATCH_RECORDS="200", FLUSH_INTERVAL_MS="20")
    assert "python ring" in gw.log()
    with Load(gw.port) as load:
        load.wait_acked(1500)
        os.kill(gw.children()["worker"][0], signal.SIGKILL)
        flusher = gw.children()["flusher"][0]
        os.kill(flusher, signal.SIGKILL)
        wait_for(lambda: (pids := gw.children()["flusher"]) != [] and pids[0] != flusher, what="a new flusher")
        time.sleep(1)
        load.wait_acked(len(load.acked) + 1500)
    wait_for(lambda: len(file_sink_records(gw.sink_dir)) >= len(load.acked), what="delivery")
    assert_exactly_once(load.acked, file_sink_records(gw.sink_dir))
    assert gw.stop() == 0, gw.log()
