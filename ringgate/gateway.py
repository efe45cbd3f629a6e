"""The shared path's core, one per HTTP worker: attach the rings, admit, claim → Stored | Refusal,
and wait for commits (`?ack=commit`). No HTTP here: sources reach it through ringgate.http.intake.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import time
from typing import NamedTuple

from .codecs import Limits, Records
from .config import Settings
from .errors import Refusal
from .keys import Keys
from .metrics import Metrics
from .process import RING_COUNT_ENV, pid_alive
from .ratelimit import Limiter
from .ring import FREE_WORD, PRODUCER_WORD, Ring, segment_name
from .ring import layout as L

ACK_POLL_S = 0.002
FLUSHER_GRACE_S = 10.0  # a flusher being restarted: keep accepting into its ring this long


class Stored(NamedTuple):
    """A request's records, in a ring whole (a NamedTuple: built per request, ~5x cheaper than a
    frozen dataclass)."""

    count: int
    ring: int
    epoch: int
    first: int
    next: int

    @property
    def batch_id(self) -> str:
        return f"{self.ring}-{self.epoch}-{self.first}-{self.next}"


_new_tuple = tuple.__new__


def parse_batch_id(batch_id: str) -> tuple[int, int, int, int] | None:
    try:
        ring, epoch, first, next_ = (int(p) for p in batch_id.split("-"))
    except ValueError:
        return None
    return ring, epoch, first, next_


# What a claim's status means for the client; CLAIM_OK is Stored. One table, every source.
_CLAIM_REFUSALS = {
    L.CLAIM_FULL: (429, "ring_full", "every ring is full: the sink is behind or unavailable; retry later", 1),
    L.CLAIM_LOST: (503, "lost_claim", "the write stalled and its space was reclaimed; nothing was stored, retry", 1),
}


class Gateway:
    """Per-worker state: attached rings, this worker's metrics row, bytes held in flight."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rings: list[Ring] = []
        self.metrics: Metrics | None = None
        self.limits = Limits(settings.max_body_bytes, settings.max_record_bytes, settings.max_records)
        self.keys = Keys.from_settings(settings)
        self.inflight_bytes = 0  # received body bytes held by this worker (http.body counts them)
        self.own = 0
        self._flusher_seen: dict[int, tuple[float, bool]] = {}
        self._dead_since: dict[int, float] = {}
        self._served_until: list[float] = []
        self._waiters: list[list[tuple[int, int, asyncio.Future]]] = []  # per ring: heap by position
        self._poller: asyncio.Task | None = None
        self.low_marks: list[tuple[memoryview, int]] = []
        self.capacities: list[tuple[memoryview, int]] = []  # per ring, own ring first
        self.limiter: Limiter | None = None  # RINGGATE_RATE_LIMIT

    @property
    def started(self) -> bool:
        return bool(self.rings)

    def start(self) -> None:
        if self.rings:
            return
        count = int(os.environ.get(RING_COUNT_ENV, self.settings.flushers))
        self.rings = [Ring.attach(segment_name(self.settings.instance, i)) for i in range(count)]
        self._waiters = [[] for _ in self.rings]
        self._served_until = [0.0] * len(self.rings)
        self.metrics = Metrics.attach(self.settings.instance)
        if self.settings.rate_limit:
            self.limiter = Limiter(self.settings.instance, self.settings.rate_limit)
        self.register_clients()
        self.own = os.getpid() % len(self.rings)
        smallest = min(r.capacity for r in self.rings)
        self.limits = Limits(
            self.settings.max_body_bytes, self.settings.max_record_bytes, self.settings.max_records, smallest // 2
        )
        self.low_marks = [(r.words, int(self.settings.low_priority_fill * r.capacity)) for r in self.rings]
        order = [(self.own + k) % len(self.rings) for k in range(len(self.rings))]
        self.capacities = [(self.rings[i].words, self.rings[i].capacity) for i in order]

    def register_clients(self) -> None:
        """Give every key name a client column now: /metrics shows each configured client, at 0
        until it sends (auth off: the one client `anonymous`)."""
        for name in sorted(set(self.keys.names.values())) or [None]:
            self.metrics.client_column(name)

    # -- in flight ------------------------------------------------------------------------------

    def release(self, n: int) -> None:
        """Give back n body bytes that http.body.read_body counted against this worker's budget."""
        self.inflight_bytes -= n

    # -- admission and claim --------------------------------------------------------------------

    def admit(self, priority: int) -> None:
        """Below the priority threshold, refuse once every ring is fuller than the fill fraction (§8)."""
        s = self.settings
        if priority >= s.priority_threshold:
            return
        for words, mark in self.low_marks:  # ring.used_bytes, without a call per ring
            if words[PRODUCER_WORD] - words[FREE_WORD] <= mark:
                return
        if self.rings:
            raise Refusal(
                429, "low_priority",
                f"every ring is more than {s.low_priority_fill:.0%} full: only requests of priority "
                f"{s.priority_threshold} or more are taken now; retry later", 1,
            )

    def check_room(self, declared: int) -> None:
        """Refuse (429 ring_full) a body whose declared length no ring has room for, before it is
        read or decoded: under overload most requests are refused, and each would otherwise cost
        a full read and decode for nothing (issue 12). A body's records take at least about its
        length once framed (16 bytes a record more, its envelope and separators less), so the
        claim would almost surely fail; a compressed body is only checked by its compressed
        length here, and the claim stays the exact test."""
        for words, capacity in self.capacities:  # ring.used_bytes, without a call per ring
            if words[PRODUCER_WORD] - words[FREE_WORD] + declared <= capacity:
                return
        if self.rings:
            raise Refusal(
                429, "ring_full",
                f"no ring has room for the declared Content-Length ({declared} bytes): the sink is behind or "
                "unavailable; retry later", 1,
            )

    def store(self, records: Records, received_ns: int) -> Stored:
        """Claim, copy and commit a request's records into the first ring that takes them."""
        rings = self.rings
        status = L.CLAIM_FULL
        served_any = False
        now = time.monotonic()
        for k in range(len(rings)):
            index = (self.own + k) % len(rings)
            if now >= self._served_until[index] and not self._recheck_served(index, now):
                continue
            served_any = True
            status, first, next_ = rings[index].claim_commit(records.blob, records.lengths, received_ns)
            if status != L.CLAIM_FULL:
                break
        if not served_any:
            raise Refusal(503, "no_flusher", "no flusher process is alive to deliver records; retry later", 5)
        if status >= 0:  # tuple.__new__: a NamedTuple's own __new__ is a Python frame, per request
            return _new_tuple(Stored, (records.count, index, rings[index].epoch, first, next_))
        if status == L.CLAIM_TOO_LARGE:
            raise Refusal(413, "body_too_large",
                          f"{records.count} records need more than half a ring ({rings[0].capacity // 2} bytes) once framed")
        raise Refusal(*_CLAIM_REFUSALS[status])

    # -- flushers -------------------------------------------------------------------------------

    def flusher_alive(self, index: int) -> bool:
        """Cached for 100 ms: one kill(pid, 0) per ring per 100 ms, not per request."""
        now = time.monotonic()
        seen = self._flusher_seen.get(index)
        if seen is not None and now - seen[0] < 0.1:
            return seen[1]
        pid = self.rings[index].flusher_pid
        alive = pid > 0 and pid_alive(pid)
        if alive:
            self._dead_since.pop(index, None)
        self._flusher_seen[index] = (now, alive)
        return alive

    def _recheck_served(self, index: int, now: float) -> bool:
        """ring_served, remembered for 100 ms when true: store() then skips the calls per request."""
        served = self.ring_served(index)
        if served:
            self._served_until[index] = now + 0.1
        return served

    def forget_flusher_checks(self) -> None:
        """Look at the flushers again on the next request (tests that swap a ring's flusher pid)."""
        self._flusher_seen.clear()
        self._served_until = [0.0] * len(self.rings)

    def ring_served(self, index: int) -> bool:
        """A ring is served while its flusher lives, or died recently (the supervisor restarts it)."""
        if self.flusher_alive(index):
            return True
        since = self._dead_since.setdefault(index, time.monotonic())
        return time.monotonic() - since < FLUSHER_GRACE_S

    # -- commits --------------------------------------------------------------------------------

    def batch_status(self, batch_id: str) -> str:
        """pending | committed | dead_lettered | unknown, for a batch id this instance handed out."""
        parsed = parse_batch_id(batch_id)
        if parsed is None:
            return "unknown"
        index, epoch, first, next_ = parsed
        if not 0 <= index < len(self.rings):
            return "unknown"
        ring = self.rings[index]
        if ring.epoch != epoch or not 0 <= first < next_ <= ring.producer_position:
            return "unknown"
        if ring.consumer_position < next_:
            return "pending"
        return "dead_lettered" if ring.dead_lettered(first, next_) else "committed"

    async def wait_committed(self, stored: Stored) -> str:
        """committed | dead_lettered once the sink has the records, or `timeout` past RINGGATE_ACK_TIMEOUT_MS."""
        try:
            await asyncio.wait_for(self._committed(stored.ring, stored.next), self.settings.ack_timeout_ms / 1000)
        except TimeoutError:
            return "timeout"
        return "dead_lettered" if self.rings[stored.ring].dead_lettered(stored.first, stored.next) else "committed"

    def _committed(self, index: int, position: int) -> asyncio.Future:
        """A future resolved once ring `index` has committed everything below `position`.

        One poller task per worker watches every waiting request's ring (not one loop each)."""
        future = asyncio.get_running_loop().create_future()
        if self.rings[index].consumer_position >= position:
            future.set_result(None)
            return future
        heapq.heappush(self._waiters[index], (position, id(future), future))
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_commits())
        return future

    async def _poll_commits(self) -> None:
        while any(self._waiters):
            await asyncio.sleep(ACK_POLL_S)
            for index, waiters in enumerate(self._waiters):
                committed = self.rings[index].consumer_position
                while waiters and (waiters[0][0] <= committed or waiters[0][2].done()):
                    _, _, future = heapq.heappop(waiters)
                    if not future.done():
                        future.set_result(None)

    # -- reports --------------------------------------------------------------------------------

    def ring_report(self, index: int) -> dict:
        ring = self.rings[index]
        oldest = ring.oldest_pending_ns
        return {
            "ring": index,
            "flusher_pid": ring.flusher_pid,
            "flusher_alive": self.flusher_alive(index),
            "used_bytes": ring.used_bytes,
            "capacity_bytes": ring.capacity,
            "producer_position": ring.producer_position,
            "committed_position": ring.consumer_position,
            "epoch": ring.epoch,
            "unblocked": ring.unblocked_count,
            "oldest_age_s": max(0.0, (time.time_ns() - oldest) / 1e9) if oldest else 0.0,
            "sink_error": ring.sink_reason,
        }
