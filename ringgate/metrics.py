"""Counters in shared memory, aggregated over every process, rendered as Prometheus text.

One segment per instance, `/dev/shm/<instance>-metrics`: SLOTS rows of COUNTERS int64 values,
then the client-name table (CLIENTS names of at most NAME_BYTES - 1 bytes).
Each process (HTTP worker or flusher) takes a row of its own, so every counter has a single
writer and needs no atomics (one aligned 8-byte store). A process that dies leaves its row
behind; the next process to take the row keeps adding to it, so totals never go backwards.
A scrape sums the rows.

Records accepted are also counted per client (`ringgate_records_accepted_total{client}`): the
client is a key's name (or `anonymous` when auth is off), never an address, so the label set is
bounded by the keys an operator configured. A name takes a column the first time any process
of the instance meets it (the table is in the segment, so every process and every reload agrees
on it); past CLIENTS names, the rest share the `other` column.
"""

from __future__ import annotations

import bisect
import fcntl
import mmap
import os

import numpy as np

from .process import pid_alive
from .shm import create_segment, open_private

SHM_DIR = "/dev/shm"
SLOTS = 256
COUNTERS = 256
ROW_BYTES = COUNTERS * 8
OWNER = 0  # column 0 of a row: the pid that owns it
CLIENTS = 64
CLIENT_BASE = 128  # columns CLIENT_BASE + i: records accepted from the client named in table slot i
OTHER_CLIENT = CLIENT_BASE + CLIENTS  # every client past the first CLIENTS names
NAME_BYTES = 64  # a table slot: one length byte, then the name in UTF-8 (cut at 63 bytes)
NAMES_OFFSET = SLOTS * ROW_BYTES
SEGMENT_BYTES = NAMES_OFFSET + CLIENTS * NAME_BYTES
ANONYMOUS = "anonymous"

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
    "rate_limited",
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
    assert len(names) < CLIENT_BASE
    return {name: i + 1 for i, name in enumerate(names)}


COLUMN = _columns()
_STATUS_COLUMN = {code: COLUMN[f"requests_total:{code}"] for code in STATUS_CODES}
_OTHER_STATUS_COLUMN = COLUMN["requests_total:other"]
STATUS_COLUMN_OF = [_STATUS_COLUMN.get(code, _OTHER_STATUS_COLUMN) for code in range(600)]
"""HTTP status → its requests_total column, for `row[STATUS_COLUMN_OF[status]] += 1` per request."""
_OTHER_REASON_COLUMN = COLUMN["records_rejected_total:other"]  # a source's own codes, until listed


def segment_path(instance: str) -> str:
    return os.path.join(SHM_DIR, f"{instance}-metrics")


class Metrics:
    """This process's row of the shared counters."""

    def __init__(self, path: str) -> None:
        fd = open_private(path)
        try:
            self._mm = mmap.mmap(fd, SEGMENT_BYTES)
            fcntl.flock(fd, fcntl.LOCK_EX)  # serialise row allocation between processes
            table = np.frombuffer(self._mm, dtype=np.int64, count=SLOTS * COUNTERS).reshape(SLOTS, COUNTERS)
            row = _free_row(table)
            table[row, OWNER] = os.getpid()
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd  # kept: the client-name table is extended under the same flock
        self._table = table
        self._row = memoryview(self._mm).cast("q")[row * COUNTERS : (row + 1) * COUNTERS]
        self.row = self._row
        """This process's counters, for the per-request increment that cannot afford a call
        (the HTTP path's STATUS_COLUMN_OF); a single writer, so `+=` is enough."""
        self._client_columns: dict[str | None, int] = {}

    @classmethod
    def create(cls, instance: str) -> None:
        """Called once by the supervisor: a fresh, zeroed segment (counters restart with the process).

        One left by a crashed run of ours is reused, zeroed; one we did not make is refused
        (UntrustedFileError) before it is truncated: it may be a symlink to any file of ours."""
        create_segment(segment_path(instance), SEGMENT_BYTES)

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

    def accepted(self, client: str | None, n: int) -> None:
        """n records acknowledged for `client` (a key's name; None: auth is off)."""
        column = self._client_columns.get(client)
        if column is None:
            column = self.client_column(client)
        self._row[column] += n  # records_accepted_total is the sum of the client columns

    def client_column(self, client: str | None) -> int:
        """The column of a client's name: its slot in the shared table, taken if new (under the
        segment's flock, so two processes never give one name two slots), else `other`."""
        name = _name_bytes(ANONYMOUS if client is None else client)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            names = _read_names(self._mm)
            if name in names:
                column = CLIENT_BASE + names.index(name)
            elif len(names) < CLIENTS:
                at = NAMES_OFFSET + len(names) * NAME_BYTES
                self._mm[at + 1 : at + 1 + len(name)] = name
                self._mm[at] = len(name)  # the length last: a reader sees the whole name or none
                column = CLIENT_BASE + len(names)
            else:
                column = OTHER_CLIENT
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._client_columns[client] = column
        return column

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
        return _totals(self._table, self._mm)


class MetricsView:
    """The counters mapped read-only, taking no row: what `ringgate status` reads. A reader must
    not look like one of the instance's processes, nor be able to change a counter."""

    def __init__(self, instance: str) -> None:
        fd = os.open(segment_path(instance), os.O_RDONLY)
        try:
            self._mm = mmap.mmap(fd, SEGMENT_BYTES, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self._table = np.frombuffer(self._mm, dtype=np.int64, count=SLOTS * COUNTERS).reshape(SLOTS, COUNTERS)

    def totals(self) -> dict[str, int]:
        return _totals(self._table, self._mm)

    def owners(self) -> list[int]:
        """Pids that ever took a row, dead ones included (a row keeps its last owner)."""
        return [int(pid) for pid in self._table[:, OWNER] if pid > 0]

    def close(self) -> None:
        del self._table  # the array holds a view of the mapping: drop it before closing
        self._mm.close()


CLIENT_PREFIX = "records_accepted_total:client:"


def _totals(table: np.ndarray, mm: mmap.mmap) -> dict[str, int]:
    """Every counter summed over the rows; per client as `records_accepted_total:client:<name>`."""
    sums = table[:, 1:].sum(axis=0)
    totals = {name: int(sums[col - 1]) for name, col in COLUMN.items()}
    for i, name in enumerate(_read_names(mm)):
        totals[CLIENT_PREFIX + name.decode("utf-8", "replace")] = int(sums[CLIENT_BASE + i - 1])
    other = int(sums[OTHER_CLIENT - 1])
    if other:
        totals[CLIENT_PREFIX + "other"] = other
    totals["records_accepted_total"] += int(sums[CLIENT_BASE - 1 : OTHER_CLIENT].sum())
    return totals


def _name_bytes(name: str) -> bytes:
    raw = name.encode("utf-8")[: NAME_BYTES - 1]
    return raw.decode("utf-8", "ignore").encode("utf-8")  # never half a character


def _read_names(mm: mmap.mmap) -> list[bytes]:
    names = []
    for i in range(CLIENTS):
        at = NAMES_OFFSET + i * NAME_BYTES
        length = mm[at]
        if not length:
            break
        names.append(mm[at + 1 : at + 1 + length])
    return names


def client_totals(totals: dict[str, int]) -> dict[str, int]:
    """{client name: records accepted} out of `totals`."""
    return {k[len(CLIENT_PREFIX):]: v for k, v in totals.items() if k.startswith(CLIENT_PREFIX)}


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


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
    family("records_accepted_total", "counter",
           "Records acknowledged (2xx) into a ring, by client (API key name; anonymous when auth is off).")
    clients = client_totals(totals)
    out += [f'ringgate_records_accepted_total{{client="{_label(c)}"}} {n}' for c, n in sorted(clients.items())]
    if not clients:
        out.append(f'ringgate_records_accepted_total{{client="{ANONYMOUS}"}} 0')
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
