"""RINGGATE_RATE_LIMIT's token buckets in shared memory (ringgate.ratelimit), on a fake clock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ringgate import ratelimit
from ringgate.errors import ConfigurationError, Refusal
from ringgate.ratelimit import GROUPS, WAYS, Limiter, parse_rate

S = 1_000_000_000


@pytest.fixture
def instance():
    name = f"rgrate{os.getpid()}"
    ratelimit.create(name)
    yield name
    ratelimit.unlink(name)


def refused(limiter: Limiter, key: str, n: int, now: int) -> int | None:
    """The Retry-After of a refusal, None when taken."""
    try:
        limiter.take(key, n, now)
    except Refusal as refusal:
        assert refusal.status == 429 and refusal.code == "rate_limited"
        return refusal.retry_after
    return None


def test_parse_rate():
    assert parse_rate("5000/s") == 5000 and parse_rate("600/min") == 10 and parse_rate("7200/h") == 2
    assert parse_rate("") == 0 and parse_rate("0") == 0
    for bad in ("5000", "5000/day", "-1/s", "x/s", "inf/s"):
        with pytest.raises(ConfigurationError, match="RINGGATE_RATE_LIMIT"):
            parse_rate(bad)


def test_a_burst_of_one_second_then_the_rate_and_retry_after_from_the_bucket(instance):
    limiter = Limiter(instance, 10)  # 10 records/s, bursts of 10
    t = 100 * S
    assert refused(limiter, "ci", 10, t) is None  # the full bucket
    assert refused(limiter, "ci", 1, t) == 1  # empty: 1 record needs 0.1 s, said as 1 s
    assert refused(limiter, "ci", 5, t + S // 10) == 1  # 1 token after 0.1 s; 5 need 0.4 s more
    assert refused(limiter, "ci", 5, t + S // 2) is None  # 5 tokens after 0.5 s
    assert refused(limiter, "other", 10, t + S // 2) is None  # another client: its own bucket
    # a request larger than the burst passes on a full bucket, and leaves a debt
    assert refused(limiter, "big", 40, t) is None
    assert refused(limiter, "big", 10, t + S) == 3  # 10 - 40 + 10 = -20: 10 tokens need 3 s more
    assert refused(limiter, "big", 10, t + 4 * S - S // 10) is not None  # Retry-After was not early
    assert refused(limiter, "big", 10, t + 4 * S) is None  # ... nor late
    # idle for long, a bucket still holds one second's worth, no more
    assert refused(limiter, "ci", 10, t + 100 * S) is None and refused(limiter, "ci", 1, t + 100 * S) == 1


def test_two_processes_share_one_bucket(instance):
    code = (
        "from ringgate.ratelimit import Limiter\n"
        f"lim = Limiter({instance!r}, 10)\n"
        f"lim.take('ci', 6, {100 * S})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    here = Limiter(instance, 10)
    assert refused(here, "ci", 4, 100 * S) is None
    assert refused(here, "ci", 1, 100 * S) == 1  # the other process took 6 of the 10


def test_the_table_is_bounded_and_evicts_the_longest_idle(instance):
    limiter = Limiter(instance, 10)
    t = 100 * S
    for i in range(GROUPS * WAYS * 3):  # three times the table's slots
        assert refused(limiter, f"10.0.{i // 256}.{i % 256}", 10, t + i) is None
    used = sum(1 for slot in range(GROUPS * WAYS) if limiter._words[slot * 4])
    assert used <= GROUPS * WAYS
    assert refused(limiter, "10.0.0.0", 10, t + 10**6) is None  # evicted: a full bucket again


def test_settings_read_the_rate_and_name_the_variable():
    from ringgate.config import Settings

    assert Settings.from_environ({"RINGGATE_RATE_LIMIT": "5000/s"}).rate_limit == 5000
    assert Settings.from_environ({}).rate_limit == 0
    with pytest.raises(ConfigurationError, match="RINGGATE_RATE_LIMIT"):
        Settings.from_environ({"RINGGATE_RATE_LIMIT": "lots"})
