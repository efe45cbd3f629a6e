"""Counters in shared memory, aggregated over every process, rendered as Prometheus text.

One segment per instance, `/dev/shm/<instance>-metrics`: SLOTS rows of COUNTERS int64 values.
Each process (HTTP worker or flusher) takes a row of its own, so every counter has a single
writer and needs no atomics (one aligned 8-byte store). A process that dies leaves its row
behind; the next process to take the row keeps adding to it, so totals never go backwards.
A scrape sums the rows.
"""

from __future__ import annotations

import bisect
import fcntl
import mmap
import os

import numpy as np

from .process import pid_alive
from .shm import open_private

SHM_DIR = "/dev/shm"
SLOTS = 256
COUNTERS = 128
ROW_BYTES = COUNTERS * 8
OWNER = 0  # column 0 of a row: the pid that owns it

STATUS_CODES = (200, 202, 204, 400, 401, 403, 404, 405, 408, 413, 415, 429, 500, 503, 504)
REJECT_REASONS = (
    "unauthorized", "unsupported_media_type", "unsupported_encoding", "body_too_large",
    "record_too_large", "empty_body", "invalid_json", "invalid_utf8", "too_deep", "not_an_object",
    "bad_encoding", "bad_csv", "ring_full", "overloaded", "no_flusher", "lost_claim", "not_found",
    "method_not_allowed", "too_many_records", "body_timeout", "duplicate_header", "invalid_priority",
    "low_priority", "invalid_msgpack", "bad_multipart", "bad_request",
    # the shipper protocols' own: OTLP, Elasticsearch bulk, Splunk HEC, Loki
    "invalid_protobuf", "invalid_otlp", "invalid_action", "invalid_bulk", "no_documents", "channel_missing",
    "invalid_labels", "invalid_timestamp", "event_required", "event_blank",
    "other",
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _columns() -> dict[str, int]:
    names = [f"requests_total:{c}" for c in STATUS_CODES] + ["requests_total:other"]
    names += ["records_accepted_total"]
    names += [f"records_rejected_total:{r}" for r in REJECT_REASONS]
    names += ["records_delivered_total", "batches_delivered_total", "delivery_retries_total"]
    names += ["records_dead_lettered_total"]
    names += [f"batch_delivery_seconds_bucket:{b}" for b in LATENCY_BUCKETS]
    names += ["batch_delivery_seconds_count", "batch_delivery_seconds_sum_us"]
    assert len(names) < COUNTERS
    return {name: i + 1 for i, name in enumerate(names)}


COLUMN = _columns()
_STATUS_COLUMN = {code: COLUMN[f"requests_total:{code}"] for code in STATUS_CODES}
_OTHER_STATUS_COLUMN = COLUMN["requests_total:other"]
STATUS_COLUMN_OF = [_STATUS_COLUMN.get(code, _OTHER_STATUS_COLUMN) for code in range(600)]
"""HTTP status → its requests_total column, for `row[STATUS_COLUMN_OF[status]] += 1` per request."""
ACCEPTED_COLUMN = COLUMN["records_accepted_total"]
_OTHER_REASON_COLUMN = COLUMN["records_rejected_total:other"]  # a source's own codes, until listed


def segment_path(instance: str) -> str:
    return os.path.join(SHM_DIR, f"{instance}-metrics")


class Metrics:
    """This process's row of the shared counters."""

    def __init__(self, path: str) -> None:
        fd = open_private(path)
        try:
            self._mm = mmap.mmap(fd, SLOTS * ROW_BYTES)
            fcntl.flock(fd, fcntl.LOCK_EX)  # serialise row allocation between processes
            table = np.frombuffer(self._mm, dtype=np.int64).reshape(SLOTS, COUNTERS)
            row = _free_row(table)
            table[row, OWNER] = os.getpid()
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        self._table = table
        self._row = memoryview(self._mm).cast("q")[row * COUNTERS : (row + 1) * COUNTERS]
        self.row = self._row
        """This process's counters, for the per-request increments that cannot afford a call
        (the HTTP path: ACCEPTED_COLUMN, STATUS_COLUMN_OF); a single writer, so `+=` is enough."""

    @classmethod
    def create(cls, instance: str) -> None:
        """Called once by the supervisor: a fresh, zeroed segment (counters restart with the process).

        One left by a crashed run of ours is reused, zeroed; one we did not make is refused
        (UntrustedFileError) before it is truncated: it may be a symlink to any file of ours."""
        path = segment_path(instance)
        try:
            fd = open_private(path, create=True, exclusive=True)
        except FileExistsError:
            fd = open_private(path)
            os.ftruncate(fd, 0)
        try:
            os.posix_fallocate(fd, 0, SLOTS * ROW_BYTES)
        finally:
            os.close(fd)

    @classmethod
    def attach(cls, instance: str) -> Metrics:
        return cls(segment_path(instance))

    @staticmethod
    def unlink(instance: str) -> None:
        try:
            os.unlink(segment_path(instance))
        except FileNotFoundError:
            pass

    def inc(self, name: str, n: int = 1) -> None:
        self._row[COLUMN[name]] += n

    def request(self, status: int) -> None:
        self._row[_STATUS_COLUMN.get(status, _OTHER_STATUS_COLUMN)] += 1

    def rejected(self, reason: str, records: int = 1) -> None:
        column = COLUMN.get(f"records_rejected_total:{reason}", _OTHER_REASON_COLUMN)
        self._row[column] += records

    def observe_delivery(self, seconds: float) -> None:
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        if i < len(LATENCY_BUCKETS):
            self._row[COLUMN[f"batch_delivery_seconds_bucket:{LATENCY_BUCKETS[i]}"]] += 1
        self._row[COLUMN["batch_delivery_seconds_count"]] += 1
        self._row[COLUMN["batch_delivery_seconds_sum_us"]] += int(seconds * 1e6)

    def totals(self) -> dict[str, int]:
        return _totals(self._table)


class MetricsView:
    """The counters mapped read-only, taking no row: what `ringgate status` reads. A reader must
    not look like one of the instance's processes, nor be able to change a counter."""

    def __init__(self, instance: str) -> None:
        fd = os.open(segment_path(instance), os.O_RDONLY)
        try:
            self._mm = mmap.mmap(fd, SLOTS * ROW_BYTES, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._table = np.frombuffer(self._mm, dtype=np.int64).reshape(SLOTS, COUNTERS)

    def totals(self) -> dict[str, int]:
        return _totals(self._table)

    def owners(self) -> list[int]:
        """Pids that ever took a row, dead ones included (a row keeps its last owner)."""
        return [int(pid) for pid in self._table[:, OWNER] if pid > 0]

    def close(self) -> None:
        del self._table  # the array holds a view of the mapping: drop it before closing
        self._mm.close()


def _totals(table: np.ndarray) -> dict[str, int]:
    sums = table[:, 1:].sum(axis=0)
    return {name: int(sums[col - 1]) for name, col in COLUMN.items()}


def _free_row(table: np.ndarray) -> int:
    """A row nobody alive owns: first a never-used one, else one whose owner has exited."""
    owners = table[:, OWNER]
    for row in range(SLOTS):
        if owners[row] == 0:
            return row
    for row in range(SLOTS):
        if not pid_alive(int(owners[row])):
            return row
    raise RuntimeError(f"more than {SLOTS} live ringgate processes share one metrics segment")


def render(totals: dict[str, int], sink: str, rings: list[dict]) -> str:
    """Prometheus text exposition (version 0.0.4)."""
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP ringgate_{name} {help_}")
        out.append(f"# TYPE ringgate_{name} {kind}")

    family("requests_total", "counter", "HTTP requests to the endpoints that take records, by status code.")
    for code in STATUS_CODES:
        out.append(f'ringgate_requests_total{{code="{code}"}} {totals[f"requests_total:{code}"]}')
    out.append(f'ringgate_requests_total{{code="other"}} {totals["requests_total:other"]}')
    family("records_accepted_total", "counter", "Records acknowledged (2xx) into a ring.")
    out.append(f"ringgate_records_accepted_total {totals['records_accepted_total']}")
    family("records_rejected_total", "counter",
           "Records refused, by reason; a request whose body could not be decoded counts as one.")
    for reason in REJECT_REASONS:
        out.append(f'ringgate_records_rejected_total{{reason="{reason}"}} {totals[f"records_rejected_total:{reason}"]}')
    for name, help_ in (
        ("records_delivered_total", "Records durably committed by the sink."),
        ("batches_delivered_total", "Batches durably committed by the sink."),
        ("delivery_retries_total", "Failed delivery attempts that were retried."),
    ):
        family(name, "counter", help_)
        out.append(f'ringgate_{name}{{sink="{sink}"}} {totals[name]}')
    family("records_dead_lettered_total", "counter", "Records the sink refused, written to the dead-letter store.")
    out.append(f"ringgate_records_dead_lettered_total {totals['records_dead_lettered_total']}")
    family("claims_abandoned_total", "counter", "Ring claims whose producer died before committing, padded.")
    out.append(f"ringgate_claims_abandoned_total {sum(r['unblocked'] for r in rings)}")
    family("batch_delivery_seconds", "histogram", "Time to deliver one batch, retries included.")
    cumulative = 0
    for bound in LATENCY_BUCKETS:
        cumulative += totals[f"batch_delivery_seconds_bucket:{bound}"]
        out.append(f'ringgate_batch_delivery_seconds_bucket{{le="{bound}"}} {cumulative}')
    count = totals["batch_delivery_seconds_count"]
    out.append(f'ringgate_batch_delivery_seconds_bucket{{le="+Inf"}} {count}')
    out.append(f"ringgate_batch_delivery_seconds_sum {totals['batch_delivery_seconds_sum_us'] / 1e6}")
    out.append(f"ringgate_batch_delivery_seconds_count {count}")
    family("ring_used_bytes", "gauge", "Bytes held in each ring, not yet delivered and freed.")
    out += [f'ringgate_ring_used_bytes{{ring="{r["ring"]}"}} {r["used_bytes"]}' for r in rings]
    family("ring_capacity_bytes", "gauge", "Capacity of each ring.")
    out += [f'ringgate_ring_capacity_bytes{{ring="{r["ring"]}"}} {r["capacity_bytes"]}' for r in rings]
    family("oldest_undelivered_seconds", "gauge", "Age of the oldest record not yet delivered (0: none).")
    out.append(f"ringgate_oldest_undelivered_seconds {max((r['oldest_age_s'] for r in rings), default=0.0)}")
    return "\n".join(out) + "\n"
