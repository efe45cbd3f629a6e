"""Flusher: ring → batches → sink, with retries, backoff, dead letters; the ring's only consumer.

Only a flusher frees ring space, and only after its sink has durably committed the batch. Before
the first attempt it records the batch's range in the ring header, so a flusher restarted after
a crash replays exactly that range first: a batch is always the same records under the same name.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import time

import msgspec
import numpy as np

from .config import Settings
from .errors import PermanentSinkError, RinggateError, SinkError
from .metrics import Metrics
from .process import configure_logging, die_with_supervisor, settings_secrets
from .ring import ReadBuffers, ReadResult, Ring, segment_name
from .ring import layout as L
from .sinks import Batch, Sink, make_sink, redact, sink_label
from .sinks.base import Refused

log = logging.getLogger("ringgate.flusher")

IDLE_POLL_S = 0.002
MAX_IDLE_POLL_S = 0.02


class DeadLetterFailure(RinggateError):
    """The dead-letter store cannot be written: stop loudly, the ring keeps the records."""


def backoff_s(attempt: int, base_ms: int, max_ms: int, rng: random.Random) -> float:
    """Exponential backoff with jitter: between half and all of base·2^(attempt-1), capped at max."""
    ceiling = min(max_ms, base_ms * (1 << min(attempt - 1, 30)))
    return rng.uniform(ceiling / 2, ceiling) / 1000


class Flusher:
    def __init__(self, settings: Settings, ring_index: int, ring: Ring, sink: Sink, metrics: Metrics | None,
                 dead_letters=None, clock=time.monotonic, sleep=time.sleep) -> None:
        self.settings = settings
        self.ring_index = ring_index
        self.ring = ring
        self.sink = sink
        self.metrics = metrics
        self.sink_label = sink_label(settings.sink)
        self._dead_letters = dead_letters
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random()
        self._buffers = ReadBuffers(settings.batch_records, settings.batch_bytes, ring.capacity)
        self._blocked: tuple[int, float] | None = None  # (position, since) of a claim we wait on
        self._attempts = 0
        self._done_through = -1

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> int:
        """Deliver until drained (supervisor set DRAINING and the ring is empty); returns 0."""
        self.replay_inflight()
        idle = IDLE_POLL_S
        while True:
            delivered = self.step()
            if delivered:
                idle = IDLE_POLL_S
                continue
            if self.ring.draining and self.ring.consumer_position >= self.ring.producer_position:
                log.info("ring %d drained at position %d", self.ring_index, self.ring.consumer_position)
                return 0
            self._sleep(idle)
            idle = min(MAX_IDLE_POLL_S, idle * 2)

    def replay_inflight(self) -> None:
        """Redeliver exactly the batch a previous flusher recorded before it died."""
        inflight = self.ring.inflight
        if inflight is None:
            return
        first, next_ = inflight
        span = next_ - first
        buffers = ReadBuffers(span // L.RECORD_HEADER_LENGTH + 1, span, self.ring.capacity)
        result = self.ring.read(first, span // L.RECORD_HEADER_LENGTH + 1, span, buffers)
        count = int(np.searchsorted(buffers.positions[: result.count], next_))
        log.info("ring %d: replaying in-flight batch [%d, %d) of %d records", self.ring_index, first, next_, count)
        if count:
            length = int(buffers.starts[count - 1] + buffers.lengths[count - 1] + 1)
            self._deliver(self._batch(buffers, count, length, next_))
        self.ring.release(next_)

    def step(self) -> bool:
        """Read what the ring holds; deliver a batch when it is full or old enough. True if it did."""
        ring = self.ring
        cursor = ring.consumer_position
        result = ring.read(cursor, self.settings.batch_records, self.settings.batch_bytes, self._buffers)
        if result.count == 0:
            ring.oldest_pending_ns = 0
            if result.next_position > cursor:  # only padding: free it
                ring.release(result.next_position)
                return True
            if result.status != L.READ_IDLE:
                self._maybe_unblock(result.next_position, result.status)
            else:
                self._blocked = None
            return False
        oldest = int(self._buffers.received[0])
        ring.oldest_pending_ns = oldest
        # a claim in progress at the frontier is the normal state under load: it does not make the
        # batch full (the flush interval bounds how long records wait behind an abandoned one)
        full = (
            result.count >= self.settings.batch_records
            or result.data_length - result.count >= self.settings.batch_bytes * 0.9
        )
        if not full and not ring.draining:
            self._wait_for_batch(cursor, oldest, result)
            result = ring.read(cursor, self.settings.batch_records, self.settings.batch_bytes, self._buffers)
        batch = self._batch(self._buffers, result.count, result.data_length, result.next_position)
        ring.set_inflight(cursor, result.next_position)
        self._deliver(batch)
        ring.release(result.next_position)
        return True

    def _wait_for_batch(self, cursor: int, oldest_ns: int, result: ReadResult) -> None:
        """Wait, watching only the ring header (copying nothing), until the partial batch at
        `cursor` is old enough, the ring holds about a full batch, or a drain is asked for."""
        per_record = (result.next_position - cursor) / result.count
        enough = min(self.settings.batch_bytes, per_record * self.settings.batch_records)
        deadline_ns = oldest_ns + self.settings.flush_interval_ms * 1_000_000
        while True:
            remaining_s = (deadline_ns - time.time_ns()) / 1e9
            if remaining_s <= 0 or self.ring.producer_position - cursor >= enough or self.ring.draining:
                return
            self._sleep(min(IDLE_POLL_S * 5, remaining_s))

    def _batch(self, buffers: ReadBuffers, count: int, data_length: int, next_position: int) -> Batch:
        return Batch(
            instance=self.settings.instance,
            ring=self.ring_index,
            epoch=self.ring.epoch,
            positions=buffers.positions[:count],
            received_ns=buffers.received[:count],
            starts=buffers.starts[:count],
            lengths=buffers.lengths[:count],
            data=memoryview(buffers.data)[:data_length],
            next_position=next_position,
        )

    # -- abandoned claims ---------------------------------------------------------------------

    def _maybe_unblock(self, position: int, status: int) -> None:
        now = self._clock()
        if self._blocked is None or self._blocked[0] != position:
            self._blocked = (position, now)
            return
        if (now - self._blocked[1]) * 1000 < self.settings.unblock_ms:
            return
        if self.ring.try_unblock(position, status):
            log.warning(
                "ring %d: claim at position %d abandoned by its producer (%s): turned into padding",
                self.ring_index, position, "no header" if status == L.READ_BLOCKED_ZERO else "producer gone",
            )
            self._blocked = None

    # -- delivery -----------------------------------------------------------------------------

    def _deliver(self, batch: Batch) -> None:
        """Deliver with retries, for as long as it takes: the ring holds the batch meanwhile."""
        started = self._clock()
        self._attempts = 0
        self._done_through = -1  # last position of a split piece already delivered or dead-lettered
        while True:
            self._attempts += 1
            try:
                self._deliver_isolating(batch)
                break
            except DeadLetterFailure:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure but a refused record is retried
                # /readyz (anyone who reaches the port) gets the sink and the failure class; the
                # log gets the detail, scrubbed of the URL's password by the log formatter
                failure = exc.reason if isinstance(exc, SinkError) else type(exc).__name__
                self.ring.set_sink_reason(f"{self.sink_label}: {failure}")
                reason = f"{self.sink_label}: {exc}" if isinstance(exc, SinkError) else f"{self.sink_label}: {exc!r}"
                if self.metrics:
                    self.metrics.inc("delivery_retries_total")
                delay = backoff_s(self._attempts, self.settings.retry_base_ms, self.settings.retry_max_ms, self._rng)
                log.warning(
                    "ring %d: delivery of batch %s failed (attempt %d), retrying in %.2fs: %s",
                    self.ring_index, batch.name, self._attempts, delay, reason,
                    exc_info=not isinstance(exc, SinkError),
                )
                self._sleep(delay)
        if self.ring.sink_reason:
            log.info("ring %d: sink recovered after %d attempts", self.ring_index, self._attempts)
            self.ring.set_sink_reason("")
        if self.metrics:
            self.metrics.observe_delivery(self._clock() - started)

    def _deliver_isolating(self, batch: Batch) -> None:
        """Deliver; if the sink refuses the content, dead-letter the refused records and deliver
        the rest. A sink that routes refused records itself (PostgreSQL) does it in one attempt
        and hands them all over at once: one dead-letter object per batch. Otherwise split in
        halves until the refused records stand alone, dead-letter those and deliver the rest.
        Pieces go in ring order; a retry of the whole batch skips the pieces already done, so
        the counters count each record once."""
        if batch.last_position <= self._done_through:
            return
        if getattr(self.sink, "routes_refused", False):
            self._deliver_routing(batch)
            return
        try:
            self.sink.deliver(batch)
        except PermanentSinkError as exc:
            if batch.count == 1:
                self._dead_letter(batch, exc)
                return
            mid = batch.count // 2
            self._deliver_isolating(batch.slice(0, mid))
            self._deliver_isolating(batch.slice(mid, batch.count))
            return
        self._done_through = batch.last_position
        if self.metrics:
            self.metrics.inc("records_delivered_total", batch.count)
            self.metrics.inc("batches_delivered_total")

    def _deliver_routing(self, batch: Batch) -> None:
        refused: list[Refused] = []  # what the attempt that committed handed over

        def dead_letter(of: Batch, records: Refused) -> None:
            self._dead_letter_refused(of, records)
            refused[:] = [records]

        self.sink.deliver(batch, dead_letter=dead_letter)
        self._done_through = batch.last_position
        n = refused[0].count if refused else 0
        if n:
            self._record_dead_letter_ranges(batch, refused[0].indices)
            log.error("ring %d: %d records of batch %s dead-lettered, the first (%d): %s",
                      self.ring_index, n, batch.name, int(batch.positions[refused[0].indices[0]]),
                      refused[0].errors[0])
        if self.metrics:
            if n:
                self.metrics.inc("records_dead_lettered_total", n)
            self.metrics.inc("records_delivered_total", batch.count - n)
            self.metrics.inc("batches_delivered_total")

    def _dead_letter_refused(self, batch: Batch, refused: Refused) -> None:
        """All the refused records of `batch` in one object named after the batch: a replay of
        the batch (same range, same name) overwrites it rather than adding another."""
        lines = [
            {
                "error": error,
                "sink": self.sink_label,
                "attempts": self._attempts,
                "ring": batch.ring,
                "epoch": batch.epoch,
                "seq": int(batch.positions[i]),
                "record": msgspec.Raw(bytes(batch.payload(i))),
            }
            for i, error in zip(refused.indices.tolist(), refused.errors, strict=True)
        ]
        self._write_dead_letters(batch.name, lines)

    def _record_dead_letter_ranges(self, batch: Batch, indices: np.ndarray) -> None:
        """Note each run of consecutive refused records in the ring's log (GET /v1/batches)."""
        breaks = np.flatnonzero(np.diff(indices) != 1)
        for lo, hi in zip(indices[np.r_[0, breaks + 1]].tolist(), indices[np.r_[breaks, len(indices) - 1]].tolist(),
                          strict=True):
            next_ = int(batch.positions[hi + 1]) if hi + 1 < batch.count else batch.next_position
            self.ring.record_dead_letters(int(batch.positions[lo]), next_)

    def _dead_letter(self, batch: Batch, exc: Exception) -> None:
        line = {
            "error": str(exc),
            "sink": self.sink_label,
            "attempts": self._attempts,
            "ring": batch.ring,
            "epoch": batch.epoch,
            "seq": batch.first_position,
            "record": msgspec.Raw(bytes(batch.payload(0))),
        }
        self._write_dead_letters(batch.name, [line])
        self.ring.record_dead_letters(batch.first_position, batch.next_position)
        self._done_through = batch.last_position
        if self.metrics:
            self.metrics.inc("records_dead_lettered_total")
        log.error("ring %d: record %d dead-lettered: %s", self.ring_index, batch.first_position, exc)

    def _write_dead_letters(self, name: str, lines: list[dict]) -> None:
        try:
            self._dead_letter_store().write(name, lines)
        except Exception as dlq_exc:
            log.critical(
                "ring %d: dead-letter store %s cannot be written (%s): stopping; the ring keeps the records",
                self.ring_index, redact(self.settings.dlq), dlq_exc,
            )
            # /readyz names the store and the failure class; the log above carries the detail
            self.ring.set_sink_reason(f"dead-letter store: {getattr(dlq_exc, 'reason', None) or 'unusable'}")
            raise DeadLetterFailure(str(dlq_exc)) from dlq_exc

    def _dead_letter_store(self):
        if self._dead_letters is None:
            from .deadletter import DeadLetterStore

            self._dead_letters = DeadLetterStore(self.settings.dlq)
        return self._dead_letters


def main(ring_index: int) -> int:
    """Entry point of a flusher process (started by the supervisor as `ringgate flusher N`)."""
    settings = Settings.from_child_environ()
    configure_logging(settings.log_format, settings.log_level, secrets=settings_secrets(settings))
    die_with_supervisor()
    # a terminal's Ctrl-C and most process managers signal the whole group: the supervisor
    # decides when we drain (DRAINING in the ring header), not the signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        ring = Ring.attach(segment_name(settings.instance, ring_index))
        ring.lock_consumer()
        ring.flusher_pid = os.getpid()
        metrics = Metrics.attach(settings.instance)
        sink = make_sink(settings)
    except Exception:
        # through the log formatter, which scrubs secrets (a traceback printed by Python would not)
        log.critical("flusher for ring %d cannot start", ring_index, exc_info=True)
        return 1
    log.info("flusher for ring %d (%d bytes, epoch %d) delivering to %s",
             ring_index, ring.capacity, ring.epoch, sink_label(settings.sink))
    try:
        return Flusher(settings, ring_index, ring, sink, metrics).run()
    except DeadLetterFailure:
        return 3
    except Exception:
        log.critical("flusher for ring %d failed", ring_index, exc_info=True)
        return 1
    finally:
        sink.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(int(sys.argv[1])))
