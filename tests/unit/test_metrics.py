"""Shared-memory counters: one row per process, totals survive the process, Prometheus text."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ringgate.metrics import CLIENT_BASE, CLIENTS, COLUMN, OWNER, Metrics, MetricsView, client_totals, render


@pytest.fixture
def instance():
    name = f"rgmetrics{os.getpid()}"
    Metrics.create(name)
    yield name
    Metrics.unlink(name)


def test_rows_add_up_across_processes_and_a_dead_process_keeps_its_counts(instance):
    code = (
        "from ringgate.metrics import Metrics\n"
        f"m = Metrics.attach({instance!r}); m.inc('records_accepted_total', 5); m.request(202)\n"
    )
    for _ in range(2):  # two processes that exit: their rows stay, and the second may reuse the first's
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    here = Metrics.attach(instance)
    here.inc("records_accepted_total", 1)
    totals = here.totals()
    assert totals["records_accepted_total"] == 11
    assert totals["requests_total:202"] == 2
    owners = here._table[:, OWNER]
    assert [int(p) for p in owners].count(os.getpid()) == 1


def test_render_is_prometheus_text_with_every_family(instance):
    m = Metrics.attach(instance)
    m.request(429)
    m.rejected("ring_full", 20)
    m.observe_delivery(0.02)
    m.observe_delivery(3.0)
    rings = [{"ring": 0, "used_bytes": 10, "capacity_bytes": 1 << 20, "unblocked": 2, "oldest_age_s": 1.5}]
    text = render(m.totals(), "file", rings)
    assert 'ringgate_requests_total{code="429"} 1' in text
    assert 'ringgate_records_rejected_total{reason="ring_full"} 20' in text
    assert 'ringgate_batch_delivery_seconds_bucket{le="0.025"} 1' in text
    assert 'ringgate_batch_delivery_seconds_bucket{le="5.0"} 2' in text  # cumulative
    assert 'ringgate_batch_delivery_seconds_bucket{le="+Inf"} 2' in text
    assert "ringgate_claims_abandoned_total 2" in text
    assert 'ringgate_ring_used_bytes{ring="0"} 10' in text
    assert "ringgate_oldest_undelivered_seconds 1.5" in text
    for line in text.splitlines():
        assert line.startswith("#") or line.split(" ")[-1].replace(".", "", 1).replace("e", "").isdigit()
    assert len(COLUMN) < CLIENT_BASE


def test_records_accepted_per_client_share_one_name_table_across_processes_bounded(instance):
    code = (
        "from ringgate.metrics import Metrics\n"
        f"m = Metrics.attach({instance!r}); m.accepted('ci', 5); m.accepted('batch', 2); m.accepted(None, 1)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    here = Metrics.attach(instance)
    here.accepted("batch", 10)  # the other process's column for the name, not a new one
    here.accepted('we"ird\\', 1)
    for i in range(CLIENTS):  # past the cap: the rest share "other"
        here.accepted(f"c{i}", 1)
    totals = here.totals()
    clients = client_totals(totals)
    assert clients["ci"] == 5 and clients["batch"] == 12 and clients["anonymous"] == 1
    assert len(clients) == CLIENTS + 1 and clients["other"] == 4
    assert sum(clients.values()) == totals["records_accepted_total"] == 5 + 2 + 1 + 10 + 1 + CLIENTS
    view = MetricsView(instance)  # `ringgate status` reads the same names
    assert client_totals(view.totals()) == clients
    view.close()
    text = render(totals, "file", [])
    assert 'ringgate_records_accepted_total{client="batch"} 12' in text
    assert 'ringgate_records_accepted_total{client="we\\"ird\\\\"} 1' in text
    assert 'ringgate_records_accepted_total{client="other"} 4' in text
