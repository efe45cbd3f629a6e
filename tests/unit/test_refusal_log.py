"""The refused-request log line (ringgate.http.intake.log_refusal): bounded per second."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from ringgate.errors import Refusal
from ringgate.http import intake


def test_at_most_a_budget_of_lines_a_second_and_the_rest_counted(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(intake.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(intake, "_refusal_window", [0.0, 0, 0])
    gw = SimpleNamespace(keys=SimpleNamespace(names={"k": "ci"}))
    caplog.set_level(logging.INFO, logger="ringgate.http")
    for _ in range(intake.REFUSAL_LINES_PER_S + 30):
        intake.log_refusal(gw, Refusal(429, "ring_full", "every ring is full"), "ci")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == intake.REFUSAL_LINES_PER_S
    assert lines[0] == "refused 429 ring_full client=ci: every ring is full"
    clock[0] += 1.5
    intake.log_refusal(gw, Refusal(401, "unauthorized", "missing or unknown API key"), None)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-2].startswith("30 more refused request(s) not logged")
    assert lines[-1] == "refused 401 unauthorized client=-: missing or unknown API key"
    assert caplog.records[-1].levelno == logging.INFO
    intake.log_refusal(gw, Refusal(503, "no_flusher", "no flusher"), "ci")
    assert caplog.records[-1].levelno == logging.WARNING  # a 5xx is the gateway's fault
