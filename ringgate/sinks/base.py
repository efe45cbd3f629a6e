"""What a flusher hands a sink: a `Batch`, and the `Sink` protocol every sink implements.

A batch is a run of consecutive ring records, already laid out as NDJSON (each payload followed
by a newline) in one buffer, with numpy arrays that locate every record. Sinks encode in bulk
from these arrays; none walks the ring itself.

Exactly once: a batch is always the same records under the same name (`Batch.name`), because a
flusher restarted after a crash replays exactly the range it recorded before its first attempt.
A sink that can remember what it committed (PostgreSQL's offsets table) skips it; object stores
overwrite the same key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True, eq=False)
class Batch:
    instance: str
    ring: int
    epoch: int
    #: each record's ring position: with (instance, ring, epoch) its identity, stored as `seq`
    positions: np.ndarray  # int64[count]
    #: wall-clock ns at which the HTTP worker received the request that carried the record
    received_ns: np.ndarray  # int64[count]
    #: offset of each payload in `data`
    starts: np.ndarray  # int64[count]
    lengths: np.ndarray  # int64[count]
    #: payloads in order, each followed by b"\n": the batch as NDJSON, compact JSON objects.
    #: May be a view of a buffer the ring reader reuses: valid until `deliver` returns.
    data: memoryview
    #: the ring position just past the batch (what the flusher releases after delivery)
    next_position: int

    @property
    def count(self) -> int:
        return len(self.positions)

    @property
    def first_position(self) -> int:
        return int(self.positions[0])

    @property
    def last_position(self) -> int:
        return int(self.positions[-1])

    @property
    def name(self) -> str:
        """Deterministic: a retried or replayed batch has the same name."""
        return f"{self.instance}-{self.ring}-{self.epoch}-{self.first_position}-{self.last_position}"

    def payload(self, i: int) -> memoryview:
        start = int(self.starts[i])
        return self.data[start : start + int(self.lengths[i])]

    def ndjson(self) -> memoryview:
        return self.data

    def slice(self, lo: int, hi: int) -> Batch:
        """Records lo..hi-1 as a batch of their own (used to isolate records a sink refuses)."""
        begin = int(self.starts[lo])
        end = int(self.starts[hi - 1] + self.lengths[hi - 1] + 1)
        next_position = int(self.positions[hi]) if hi < self.count else self.next_position
        return Batch(
            instance=self.instance,
            ring=self.ring,
            epoch=self.epoch,
            positions=self.positions[lo:hi],
            received_ns=self.received_ns[lo:hi],
            starts=self.starts[lo:hi] - begin,
            lengths=self.lengths[lo:hi],
            data=self.data[begin:end],
            next_position=next_position,
        )

    @classmethod
    def from_payloads(
        cls,
        payloads: list[bytes],
        *,
        instance: str = "test",
        ring: int = 0,
        epoch: int = 1,
        first_position: int = 0,
        received_ns: int = 1_700_000_000_000_000_000,
    ) -> Batch:
        """Build a batch without a ring (tests, benchmarks). Positions step by 64 bytes."""
        lengths = np.fromiter((len(p) for p in payloads), dtype=np.int64, count=len(payloads))
        starts = np.zeros(len(payloads), dtype=np.int64)
        if len(payloads) > 1:
            np.cumsum(lengths[:-1] + 1, out=starts[1:])
        positions = first_position + 64 * np.arange(len(payloads), dtype=np.int64)
        return cls(
            instance=instance,
            ring=ring,
            epoch=epoch,
            positions=positions,
            received_ns=np.full(len(payloads), received_ns, dtype=np.int64),
            starts=starts,
            lengths=lengths,
            data=memoryview(b"".join(p + b"\n" for p in payloads)),
            next_position=first_position + 64 * len(payloads),
        )


@dataclass(frozen=True, slots=True, eq=False)
class Refused:
    """The records of a batch a sink refused: their indices in the batch (ascending) and, for
    each, why (the sink's own words, SQLSTATE included)."""

    indices: np.ndarray  # int64[count]
    errors: list[str]

    @property
    def count(self) -> int:
        return len(self.indices)


#: what a sink that routes refused records calls, once per attempt, before it commits the rest
DeadLetterCallback = Callable[[Batch, Refused], None]


class Sink(Protocol):
    #: label for metrics and logs: "file", "s3", "gs", "az", "memory", "postgresql", "stdout"
    name: str

    def deliver(self, batch: Batch) -> None:
        """Durably store the batch, or raise.

        Raise `RetryableSinkError` for anything but the records' content (connection, timeouts,
        5xx, throttling, and configuration faults such as 403, a missing bucket or table):
        the flusher retries it with backoff for as long as it takes. Raise
        `PermanentSinkError` only when the sink refuses the content itself; the flusher then
        splits the batch to isolate the refused records and dead-letters them.
        Must be idempotent for a batch of the same name.

        A sink that can tell which records it refuses sets `routes_refused = True` and takes
        `deliver(batch, dead_letter=callback)`: it stores the rest and calls
        `callback(batch, refused)` once, with every refused record of the batch, inside the
        attempt and before it commits (so the dead letters are durable before the offset moves);
        it raises `PermanentSinkError` only when called without a callback.
        """
        ...

    def close(self) -> None: ...
