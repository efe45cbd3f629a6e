"""RINGGATE_RATE_LIMIT (§11): records per second per client, one token bucket per client shared
by every HTTP worker of the instance, so N workers do not give a client N times the limit.

The buckets live in `/dev/shm/<instance>-ratelimit`, made 0600 by the supervisor (like the
metrics segment): GROUPS groups of WAYS slots, a slot being four int64 words: the key's hash
(0: free), its tokens in thousandths of a record, the CLOCK_MONOTONIC time of its last update
(system-wide, the same clock in every process) and a spare. A client's key (its API key name, or
its address when no key is configured) hashes to one group; a new key takes a free slot of its
group, else the slot updated longest ago (an evicted client starts again with a full bucket: the
table is bounded, GROUPS x WAYS = 4,096 clients at a time, at the price of that overshoot for
clients beyond it).

Races between workers: each group has a lock, `fcntl.lockf` on byte <group> of the segment,
held across the read-modify-write of the bucket. The kernel drops it when its holder dies, so a
worker killed holding it stalls nobody. Cost: two fcntl calls per request, paid only when the
limit is set.

The bucket holds at most one second's worth (the burst) and refills continuously. A request of
n records is taken when the bucket holds min(n, burst) tokens, and takes n (the bucket may go
into debt: a request larger than the burst passes at the average rate); else 429 `rate_limited`
with Retry-After = the whole seconds until the bucket holds min(n, burst) again.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import time

from .errors import ConfigurationError, Refusal
from .shm import create_segment, open_private

SHM_DIR = "/dev/shm"
GROUPS = 512
WAYS = 8
SLOT_WORDS = 4
SEGMENT_BYTES = GROUPS * WAYS * SLOT_WORDS * 8
MILLI = 1000
KEY_CACHE = 4096  # per worker: hashes of the keys seen lately (addresses are many)
UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0, "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str) -> float:
    """`5000/s`, `300000/min`, `1e6/h` → records per second; `` or `0` → 0 (no limit)."""
    value = text.strip().lower()
    if value in ("", "0", "off", "none"):
        return 0.0
    count, slash, unit = value.partition("/")
    try:
        per = UNITS[unit.strip()] if slash else None
        rate = float(count.strip().replace("_", "")) / per if per else None
    except (KeyError, ValueError):
        rate = None
    if rate is None or not math.isfinite(rate) or rate <= 0:
        raise ConfigurationError(
            f"RINGGATE_RATE_LIMIT must be <records>/<s|min|h>, records per client, e.g. 5000/s: {text!r}"
        )
    return rate


def segment_path(instance: str) -> str:
    return os.path.join(SHM_DIR, f"{instance}-ratelimit")


def create(instance: str) -> None:
    """The supervisor's: a fresh, zeroed table (one of ours left by a crash is reused, zeroed;
    one we did not make is refused, UntrustedFileError)."""
    create_segment(segment_path(instance), SEGMENT_BYTES)


def unlink(instance: str) -> None:
    try:
        os.unlink(segment_path(instance))
    except FileNotFoundError:
        pass


def key_hash(key: str) -> int:
    """A 63-bit hash, the same in every process (Python's hash() is salted per process); never 0."""
    return (int.from_bytes(hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8).digest(), "big") >> 1) | 1


class Limiter:
    """One worker's view of the shared buckets."""

    def __init__(self, instance: str, rate: float) -> None:
        self.rate = rate
        self.burst = max(1, int(rate))  # one second's worth, at least one record
        self._per_ns = rate * MILLI / 1e9  # thousandths of a record per nanosecond
        self._fd = open_private(segment_path(instance))
        self._mm = mmap.mmap(self._fd, SEGMENT_BYTES)
        self._words = memoryview(self._mm).cast("q")
        self._keys: dict[str, list[int]] = {}  # key → [group, hash, its slot when last seen]

    def take(self, key: str, n: int, now_ns: int | None = None) -> None:
        """Take n records from `key`'s bucket, or raise Refusal 429 rate_limited."""
        found = self._keys.get(key)
        if found is None:
            if len(self._keys) >= KEY_CACHE:
                self._keys.clear()
            h = key_hash(key)
            found = self._keys[key] = [h % GROUPS, h, -1]
        group, h, slot = found
        words = self._words
        burst_m = self.burst * MILLI
        need_m = min(n, self.burst) * MILLI
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, group)
        try:
            now = time.monotonic_ns() if now_ns is None else now_ns
            if slot < 0 or words[slot] != h:  # new here, or evicted since: look in its group
                slot = found[2] = self._find(group, h, now, burst_m)
            tokens = words[slot + 1] + int((now - words[slot + 2]) * self._per_ns)
            if tokens > burst_m:
                tokens = burst_m
            words[slot + 2] = now
            if tokens >= need_m:
                words[slot + 1] = tokens - n * MILLI
                return
            words[slot + 1] = tokens
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, group)
        wait = max(1, math.ceil((need_m - tokens) / MILLI / self.rate))
        raise Refusal(
            429, "rate_limited",
            f"over RINGGATE_RATE_LIMIT for this client ({self.rate:g} records/s, bursts up to "
            f"{self.burst}): {n} records need {wait}s of refill; retry later", wait,
        )

    def _find(self, group: int, h: int, now: int, burst_m: int) -> int:
        """The slot of hash h in its group; else a free one, else the one updated longest ago,
        made h's with a full bucket (the caller holds the group's lock)."""
        words = self._words
        base = group * WAYS * SLOT_WORDS
        free = oldest = -1
        for at in range(base, base + WAYS * SLOT_WORDS, SLOT_WORDS):
            held = words[at]
            if held == h:
                return at
            if held == 0:
                if free < 0:
                    free = at
            elif oldest < 0 or words[at + 2] < words[oldest + 2]:
                oldest = at
        slot = free if free >= 0 else oldest
        words[slot] = h
        words[slot + 1] = burst_m
        words[slot + 2] = now
        return slot

    def close(self) -> None:
        self._words.release()
        self._mm.close()
        os.close(self._fd)
