"""Delivery backoff: exponential, jittered, capped."""

from __future__ import annotations

import random

from ringgate.flusher import backoff_s


def test_backoff_doubles_with_jitter_and_stops_at_the_cap():
    rng = random.Random(7)
    for attempt, ceiling_ms in [(1, 100), (2, 200), (3, 400), (6, 3200), (9, 25600), (10, 30000), (60, 30000)]:
        delays = [backoff_s(attempt, 100, 30_000, rng) for _ in range(200)]
        assert all(ceiling_ms / 2000 <= d <= ceiling_ms / 1000 for d in delays), attempt
        assert len(set(delays)) > 100  # jittered: clients retrying together spread out
