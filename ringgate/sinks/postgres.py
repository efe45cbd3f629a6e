"""PostgreSQL sink: every batch is one transaction of binary COPY plus the ring's committed position.

Exactly once. The offsets table holds, per (instance, ring, epoch), the position of the last
record committed. A delivery locks that row, drops the batch's records at or below it (a batch
replayed after a crash, or one that overlaps what is already stored), COPYs the rest and moves
the position, all in one transaction: a batch delivered twice inserts nothing the second time.
The flusher must therefore deliver the parts of a split batch in ring order.

Encoding. The PGCOPY binary stream is built with a handful of numpy operations over the batch's
arrays, 2048 records at a time (no Python per record). Per row, before the JSON text:

    int16 6                                   field count
    int32 N,  N bytes instance                the sink's instance name (UTF-8): a constant per sink
    int32 2,  int16 ring
    int32 8,  int64 epoch
    int32 8,  int64 seq                       the record's ring position
    int32 8,  int64 received_at               µs since 2000-01-01 UTC (timestamptz's binary form)
    int32 L+1, uint8 1                        jsonb: version byte, then L bytes of JSON text
                                              (json, `record_type="json"`: int32 L, the text alone)

all big-endian: a fixed prefix of 53 + N bytes (`row_prefix(N)`), then the payload. (Without an
instance, `encode_copy_binary(batch)` writes the five other columns: a 49-byte prefix; json's
prefixes are a byte shorter.) The
instance costs 4 + N bytes per row on the wire and one more text column for the server to parse:
bench/RESULTS.md, "More than one gateway", measured it. The stream opens with
the 19-byte signature and ends with int16 -1. psycopg's per-row `write_row` produces the same
bytes (`write_copy_rows`, kept as the test oracle and the benchmark baseline).

Failures. Content the server refuses (SQLSTATE classes 22 and 23, and 54: a jsonb or dedup key
past a size limit) raises `PermanentSinkError`; everything else raises `RetryableSinkError`
naming the cause and drops the connection, so the next `deliver` reconnects. The sink never
sleeps or retries: the flusher owns backoff.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import set_json_dumps

from ringgate.config import PARTITIONS, PG_RECORD_TYPES
from ringgate.errors import ConfigurationError, PermanentSinkError, RetryableSinkError, SinkError
from ringgate.sinks import redact, scrub, url_secrets
from ringgate.sinks.base import Batch, DeadLetterCallback, Refused

logger = logging.getLogger(__name__)

# the instance that stored a row: several gateways share one table (DESIGN.md §12). First in the
# COPY (so a row's fixed prefix stays one block), last in the table (ALTER TABLE adds it there to
# a table made before it existed; old rows keep NULL)
COLUMNS = ("instance", "ring", "epoch", "seq", "received_at", "record")
COLUMN_TYPES = ("text", "smallint", "bigint", "bigint", "timestamp with time zone", "jsonb")
COPY_TYPES = ("text", "int2", "int8", "int8", "timestamptz", "jsonb")  # for `Copy.set_types`
#: the record column: jsonb (the default: parsed into the server's binary form, queryable and
#: indexable) or json (the text as sent, syntax-checked: about twice as fast to load, parsed
#: again by every query that looks inside). Same name in SQL and in `Copy.set_types`; the rule
#: lives in ringgate.config (RINGGATE_PG_RECORD_TYPE), as PARTITIONS does (RINGGATE_PG_PARTITION).
RECORD_TYPES = PG_RECORD_TYPES

# signature, int32 flags (0: no OIDs), int32 header extension length (0)
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(4) + bytes(4)
COPY_TRAILER = b"\xff\xff"
ROW_PREFIX = np.dtype(
    [
        ("field_count", ">i2"),
        ("ring_length", ">i4"),
        ("ring", ">i2"),
        ("epoch_length", ">i4"),
        ("epoch", ">i8"),
        ("seq_length", ">i4"),
        ("seq", ">i8"),
        ("received_at_length", ">i4"),
        ("received_at", ">i8"),
        ("record_length", ">i4"),
        ("jsonb_version", "u1"),
    ]
)  # packed: 49 bytes


@functools.lru_cache(maxsize=8)
def row_prefix(instance_bytes: int, record_type: str = "jsonb") -> np.dtype:
    """The packed fixed part of a row: `ROW_PREFIX` after an instance of `instance_bytes` bytes
    (0: no instance column); for a json record, without jsonb's version byte."""
    if instance_bytes == 0 and record_type == "jsonb":
        return ROW_PREFIX
    fields = [(name, ROW_PREFIX.fields[name][0]) for name in ROW_PREFIX.names]
    if record_type == "json":
        fields = fields[:-1]
    if instance_bytes:
        fields = fields[:1] + [("instance_length", ">i4"), ("instance", f"S{instance_bytes}")] + fields[1:]
    return np.dtype(fields)


PG_EPOCH_UNIX_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in µs since the Unix epoch
COPY_CHUNK_ROWS = 2048

# identifiers we derive (<table>_offsets, <table>_dedup, <table>_pYYYYMM) must stay within
# PostgreSQL's 63 bytes, which it would otherwise truncate silently
_TABLE_RE = re.compile(r"^(?:([a-z_][a-z0-9_]{0,62})\.)?([a-z_][a-z0-9_]{0,47})$")
_STAGING = "ringgate_staging"  # temporary table, per connection, for dedup
_SESSION_SETTINGS = {
    # no silent hang behind someone's ACCESS EXCLUSIVE lock, or behind the offsets row still
    # locked by this flusher's previous connection that the server has not yet seen die
    "lock_timeout": "60s",
    # a dead flusher's half-open session must not keep the offsets row locked for hours
    "idle_in_transaction_session_timeout": "60s",
    # ... which the server notices sooner with keepalives of its own (default: 2 hours idle),
    # and, while it runs a statement for us, by checking that we are still there
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
}
_DDL_LOCK_TIMEOUT = "5s"  # CREATE ... PARTITION OF queues for ACCESS EXCLUSIVE on the parent
_CONNECT_OPTIONS = {
    "autocommit": True,  # transactions are explicit: `with conn.transaction()`
    "client_encoding": "UTF8",  # binary jsonb is converted from the client encoding
    # a peer that vanished mid-COPY is noticed instead of waited on for ever
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}
# class 54 (program limit exceeded) is content too here: a jsonb value past its size limit, a
# dedup key too long for a btree entry, JSON nested past the stack depth
_CONTENT_CLASSES = ("22", "23", "54")


# ---------------------------------------------------------------------------------- encoding


def encode_copy_binary(batch: Batch, instance: str | None = None, record_type: str = "jsonb") -> memoryview:
    """The complete PGCOPY binary stream for `batch`, ready for `Copy.write`: columns as `COLUMNS`
    with `instance`, without it the five others (`COLUMNS[1:]`); the record as `record_type`."""
    return _encode(batch, COPY_SIGNATURE, COPY_TRAILER, _instance_bytes(instance), record_type)


def _instance_bytes(instance: str | None) -> bytes:
    if instance is None:
        return b""
    if not instance:
        raise ValueError("an instance name is not empty")
    return instance.encode()


def write_copy_bulk(
    copy: psycopg.Copy, batch: Batch, chunk_rows: int = COPY_CHUNK_ROWS, instance: str | None = None,
    record_type: str = "jsonb",
) -> None:
    """Send `batch` as one binary COPY stream, encoded in bulk `chunk_rows` records at a time
    (columns as `encode_copy_binary`'s).

    Chunks let the server parse the first rows while the next are encoded (one encode of the
    whole batch, then one send, was slower than write_row, which streams), and 2048 rows of
    ~128 bytes stay in the CPU's caches (measured fastest: bench/test_bench_pgcopy.py).
    """
    n = batch.count
    name = _instance_bytes(instance)
    for lo in range(0, max(n, 1), chunk_rows):
        hi = min(lo + chunk_rows, n)
        part = batch.slice(lo, hi) if n else batch
        copy.write(_encode(part, COPY_SIGNATURE if lo == 0 else b"", COPY_TRAILER if hi == n else b"", name,
                           record_type))


def _encode(batch: Batch, head: bytes, tail: bytes, instance: bytes = b"", record_type: str = "jsonb") -> memoryview:
    """`head`, the rows of `batch` in PGCOPY binary, `tail`: one buffer, built in bulk; each row
    starting with `instance` as a text column unless it is empty.

    The fixed prefixes (49 bytes, or 53 + the instance's) are filled column by column in a structured array, and the rows
    (prefix, payload, prefix, payload, ...) are assembled with two boolean masks computed from
    run lengths: one picks the prefix bytes of the output, the other the payload bytes of
    `batch.data`, skipping the newlines and any gap between payloads. Payloads must be in order
    and disjoint, as a `Batch` guarantees.
    """
    n = batch.count
    if n == 0:
        return memoryview(head + tail)
    lengths = np.asarray(batch.lengths, dtype=np.int64)
    starts = np.asarray(batch.starts, dtype=np.int64)
    data = np.frombuffer(batch.data, dtype=np.uint8)

    # input runs: gap, payload, gap, payload, ..., gap (gaps hold the newlines)
    runs_in = np.empty(2 * n + 1, dtype=np.int64)
    runs_in[0] = starts[0]
    runs_in[1::2] = lengths
    runs_in[2:-1:2] = starts[1:] - (starts[:-1] + lengths[:-1])
    runs_in[-1] = len(data) - (starts[-1] + lengths[-1])
    if (runs_in < 0).any():
        raise ValueError(f"batch {batch.name}: payloads overlap, are out of order or lie outside its data")

    jsonb = record_type == "jsonb"
    dtype = row_prefix(len(instance), record_type)
    prefix = np.empty(n, dtype=dtype)
    prefix["field_count"] = len(COLUMNS) if instance else len(COLUMNS) - 1
    if instance:
        prefix["instance_length"] = len(instance)
        prefix["instance"] = instance
    prefix["ring_length"] = 2
    prefix["ring"] = batch.ring
    prefix["epoch_length"] = 8
    prefix["epoch"] = batch.epoch
    prefix["seq_length"] = 8
    prefix["seq"] = batch.positions
    prefix["received_at_length"] = 8
    # floor division: the µs a timestamp falls in, before 1970 and 2000 too
    prefix["received_at"] = np.asarray(batch.received_ns, dtype=np.int64) // 1000 - PG_EPOCH_UNIX_US
    if jsonb:
        prefix["record_length"] = lengths + 1
        prefix["jsonb_version"] = 1
    else:
        prefix["record_length"] = lengths

    rows_length = n * dtype.itemsize + int(lengths.sum())
    out = np.empty(len(head) + rows_length + len(tail), dtype=np.uint8)
    out[: len(head)] = np.frombuffer(head, dtype=np.uint8)
    out[len(head) + rows_length :] = np.frombuffer(tail, dtype=np.uint8)
    rows = out[len(head) : len(head) + rows_length]

    alternating = np.zeros(2 * n + 1, dtype=bool)
    alternating[1::2] = True  # False, True, False, ...: gap or prefix, payload, gap or prefix, ...
    runs_out = np.empty(2 * n, dtype=np.int64)
    runs_out[0::2] = dtype.itemsize
    runs_out[1::2] = lengths
    is_payload_out = np.repeat(alternating[: 2 * n], runs_out)
    rows[~is_payload_out] = prefix.view(np.uint8)
    rows[is_payload_out] = data[np.repeat(alternating, runs_in)]
    # a memoryview, not the array: psycopg's Copy.write tests its argument's truth value
    return memoryview(out)


_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _raw_json(obj):
    """json "dumps" for payloads that are JSON text already."""
    return obj


def write_copy_rows(copy: psycopg.Copy, batch: Batch, instance: str | None = None, record_type: str = "jsonb") -> None:
    """The psycopg way, one `write_row` per record: the reference `write_copy_bulk` is tested and
    benchmarked against (the same bytes on the wire)."""
    set_json_dumps(_raw_json, context=copy.cursor)
    types = [*COPY_TYPES[:-1], record_type]
    copy.set_types(types if instance is not None else types[1:])
    ring, epoch, data = int(batch.ring), int(batch.epoch), batch.data
    first = () if instance is None else (instance,)
    for seq, ns, start, length in zip(
        batch.positions.tolist(),
        batch.received_ns.tolist(),
        batch.starts.tolist(),
        batch.lengths.tolist(),
        strict=True,
    ):
        received_at = _UNIX_EPOCH + timedelta(microseconds=ns // 1000)
        copy.write_row((*first, ring, epoch, seq, received_at, data[start : start + length]))


def _select(batch: Batch, keep: np.ndarray) -> Batch:
    """The records where `keep` is true, as a batch over the same data."""
    return Batch(
        instance=batch.instance,
        ring=batch.ring,
        epoch=batch.epoch,
        positions=batch.positions[keep],
        received_ns=batch.received_ns[keep],
        starts=batch.starts[keep],
        lengths=batch.lengths[keep],
        data=batch.data,
        next_position=batch.next_position,
    )


# ------------------------------------------------------------------ what jsonb will refuse
#
# A batch's records are valid UTF-8 JSON of bounded depth (the HTTP worker checked), so what
# jsonb can still refuse is: the escape \u0000 (22P05: text cannot hold NUL) and a number out of
# numeric's range (22003); a surrogate escape not in a pair (22P02) msgspec already refused, so
# only the exact check below looks for it. `screen` finds those before
# the COPY, so a batch of such records costs one transaction and no bisection. It is sound, never
# complete: a record is routed to the dead letters only when an exact check (Python's json, with
# numeric's rules below) says the server would refuse it; what it cannot predict (a CHECK
# constraint, a trigger, a server encoding other than UTF8...) the COPY finds, and
# `PostgresCopySink._isolate` isolates it.
#
# numeric stores a value as base-10000 digits with an int16 weight and a 14-bit display scale:
# it refuses a nonzero number whose first significant decimal digit has exponent above
# 4 * 32767 + 3, and any number whose scale, max(0, fraction digits - exponent), is above 16383.
# Such a number either has an exponent of 4 digits or more, or (exponent within ±999) a run of
# at least 16384 - 999 = 15385 digits. The bulk pass looks for exactly those: the exponent on the
# batch's bytes with digits, E and + folded (two C scans, no Python per record), the long runs
# with aligned blocks of digits (a run of 2 * 4096 - 1 digits or more covers a whole block of
# 4096), and only in batches holding a record long enough. Records it points at get the exact check.

NUMERIC_WEIGHT_MAX_EXPONENT = 4 * 32767 + 3  # decimal exponent of numeric's most significant digit
NUMERIC_DSCALE_MAX = 0x3FFF
# not the surrogates: escaped pairs are common (JSON encoders' ASCII mode) and the HTTP worker
# refuses unpaired ones
_SUSPECT_ESCAPE = re.compile(rb"\\u0000")
_FOLD_EXPONENT = bytes.maketrans(b"0123456789E+", b"0000000000e-")
_SUSPECT_EXPONENT = re.compile(rb"e-?0000")  # [eE][+-]?[0-9]{4}, in folded bytes
_MANTISSA = frozenset(b"0.-")  # what a number's digits, point and sign fold to
_BEFORE_A_VALUE = frozenset(b":,[ \t\r\n")  # what precedes a number inside an object
_DIGIT_BLOCK = 4096
_NUMBER = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?(?:[eE]([+-]?)([0-9]+))?")
_REFUSED_IN_TEXT = re.compile("[\x00\ud800-\udfff]")  # NUL, or a surrogate json left unpaired


def screen(batch: Batch) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Indices (ascending) of the records of `batch` that jsonb will refuse, and for each its
    (SQLSTATE, message) as the server words it. Cost: a few C passes over the batch's bytes, plus
    an exact check of each record those passes point at."""
    data = batch.data
    starts = np.asarray(batch.starts, dtype=np.int64)
    lengths = np.asarray(batch.lengths, dtype=np.int64)
    suspects: set[int] = set()

    def mark(pattern: re.Pattern, text, where=None) -> None:
        # one search per suspect record, not per match: jump to the end of the record found
        at = 0
        while (found := pattern.search(text, at)) is not None:
            if where is not None and not where(text, found.start()):
                at = found.end()
                continue
            i = int(np.searchsorted(starts, found.start(), side="right")) - 1
            suspects.add(i)
            at = int(starts[i] + lengths[i]) + 1 if i >= 0 else found.end()

    mark(_SUSPECT_ESCAPE, data)
    mark(_SUSPECT_EXPONENT, bytes(data).translate(_FOLD_EXPONENT), _exponent_of_a_number)
    if batch.count and int(lengths.max()) >= 2 * _DIGIT_BLOCK - 1:
        raw = np.frombuffer(data, dtype=np.uint8)
        blocks = len(raw) // _DIGIT_BLOCK
        digit = (raw[: blocks * _DIGIT_BLOCK] - ord("0")) < 10
        for b in np.flatnonzero(digit.reshape(blocks, _DIGIT_BLOCK).all(axis=1)).tolist():
            suspects.add(int(np.searchsorted(starts, b * _DIGIT_BLOCK, side="right")) - 1)

    indices, reasons = [], []
    for i in sorted(suspects):
        if 0 <= i < batch.count and (reason := jsonb_refusal(batch.payload(i))) is not None:
            indices.append(i)
            reasons.append(reason)
    return np.asarray(indices, dtype=np.int64), reasons


def _exponent_of_a_number(folded: bytes, e: int) -> bool:
    """Whether the `e` at `folded[e]` may be a JSON number's: right after a digit, and its
    mantissa (digits, point, sign) right after what precedes a value (`:`, `,`, `[`, space).
    Not a hex string's ("3e4512", "a1e2345": UUIDs, trace ids), which would otherwise send a
    quarter of such records to the exact check. Sound: a number always passes."""
    if e == 0 or folded[e - 1] != 0x30:
        return False
    i = e - 1
    while i > 0 and folded[i - 1] in _MANTISSA:
        i -= 1
    return i > 0 and folded[i - 1] in _BEFORE_A_VALUE


def jsonb_refusal(payload) -> tuple[str, str] | None:
    """(SQLSTATE, message) if jsonb refuses this JSON text, None if it takes it (or we cannot tell)."""
    numbers: list[str] = []

    def number(text: str) -> int:
        if not numbers and numeric_overflows(text):
            numbers.append(text)
        return 0

    try:
        # pairs, not dicts: a key given twice is checked twice
        value = json.loads(bytes(payload), parse_int=number, parse_float=number, object_pairs_hook=tuple)
    except (ValueError, RecursionError):
        return None  # not ours to judge: the server decides
    if numbers:
        return "22003", "value overflows numeric format"
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if (bad := _REFUSED_IN_TEXT.search(item)) is not None:
                if bad.group() == "\x00":
                    return "22P05", "unsupported Unicode escape sequence: \\u0000 cannot be converted to text"
                return "22P02", "invalid input syntax for type json: a Unicode surrogate escape is not in a pair"
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return None


def numeric_overflows(text: str) -> bool:
    """True if numeric refuses this JSON number (`value overflows numeric format`), by numeric's
    storage limits. A zero with a huge positive exponent is left to the server (whether it
    refuses the exponent alone differs between versions)."""
    match = _NUMBER.fullmatch(text)
    if match is None:
        return False
    whole, fraction, sign, exponent = match.group(1), match.group(2) or "", match.group(3), match.group(4)
    exponent = (exponent or "0").lstrip("0") or "0"
    x = int(exponent) if len(exponent) <= 18 else 10**18  # beyond any limit either way
    if sign == "-":
        x = -x
    if max(0, len(fraction) - x) > NUMERIC_DSCALE_MAX:
        return True
    digits = whole + fraction
    first = len(digits) - len(digits.lstrip("0"))  # index of the first significant digit
    return first < len(digits) and len(whole) - 1 - first + x > NUMERIC_WEIGHT_MAX_EXPONENT


def _months(received_ns: np.ndarray) -> set[date]:
    """First days (UTC) of the months the records fall in, and of the month after the last one."""
    months = np.unique(
        np.asarray(received_ns, dtype=np.int64).astype("datetime64[ns]").astype("datetime64[M]")
    )
    return {m.item() for m in months} | {(months[-1] + 1).item()}


# -------------------------------------------------------------------------------------- sink


class PostgresCopySink:
    """`Sink` into one PostgreSQL table (created when missing), loaded with binary COPY.

    `url`: a libpq URL or conninfo string. `table`: `[schema.]name` (case-folded like an unquoted
    SQL identifier); beside it the sink keeps
    `<table>_offsets` and, with `dedup_key`, `<table>_dedup`. `instance`: the gateway's instance
    name, part of every record's identity. `dedup_key`: a top-level key (e.g. "event_id") whose
    value is stored at most once, across batches and months; records without it (or with null)
    are always kept. `partition`: "none" or "month" (range on received_at, monthly partitions in
    UTC created on demand, including the month after the newest record).
    `copy_method`: "bulk" (numpy-encoded stream, the default) or "rows" (psycopg's write_row,
    the reference), for the oracle test and the benchmark. `record_type`: the record column's,
    "jsonb" or "json" (`RECORD_TYPES`); a table whose record column has the other type is
    refused like any table of the wrong shape.
    """

    name = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        table: str = "ringgate_events",
        instance: str,
        dedup_key: str = "",
        partition: str = "none",
        connect_timeout_s: float = 5.0,
        copy_method: str = "bulk",
        record_type: str = "jsonb",
    ) -> None:
        # folded to lower case, as SQL folds an unquoted identifier
        match = _TABLE_RE.match(table.lower()) if table.isascii() else None
        if not match:
            raise ConfigurationError(
                "PostgreSQL table must be [schema.]name of ASCII letters, digits and _, not starting "
                f"with a digit, the name at most 48 characters (room for the _offsets/_dedup/_pYYYYMM "
                f"tables beside it): {table!r}"
            )
        if partition not in PARTITIONS:
            raise ConfigurationError(
                f"PostgreSQL partition must be one of {', '.join(PARTITIONS)}: {partition!r}"
            )
        if record_type not in RECORD_TYPES:
            raise ConfigurationError(f"PostgreSQL record type must be one of {', '.join(RECORD_TYPES)}: {record_type!r}")
        if copy_method not in ("bulk", "rows"):
            raise ConfigurationError(f"PostgreSQL copy method must be bulk or rows: {copy_method!r}")
        if not instance:
            raise ConfigurationError("PostgreSQL sink needs an instance name: ''")
        if not connect_timeout_s > 0:
            raise ConfigurationError(f"PostgreSQL connect timeout must be > 0 s: {connect_timeout_s!r}")

        self._url = url
        self._secrets = url_secrets(url)  # scrubbed from libpq's messages, whatever they quote
        self._instance = instance
        self._dedup_key = dedup_key
        self._partition = partition
        self._copy_method = copy_method
        self._record_type = record_type
        self._column_types = (*COLUMN_TYPES[:-1], record_type)
        self._connect_timeout = max(1, math.ceil(connect_timeout_s))
        self._conn: psycopg.Connection | None = None
        self._months: set[date] = set()  # partitions known to exist

        schema, base = match.group(1), match.group(2)
        self._schema = schema
        self._base = base
        self._table = self._ident(base)
        self._offsets = self._ident(f"{base}_offsets")
        self._dedup = self._ident(f"{base}_dedup")
        self._qualified = f"{schema}.{base}" if schema else base
        try:
            info = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            detail = scrub(" ".join(str(exc).split()), self._secrets)
            raise ConfigurationError(f"PostgreSQL URL {redact(url)!r} does not parse: {detail}") from None
        # where, for messages: never the password
        self._where = (
            f"{info.get('user') or ''}@{info.get('host') or 'localhost'}:{info.get('port') or 5432}"
            f"/{info.get('dbname') or ''}"
        )

        columns = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
        self._sql_copy_table = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(self._table, columns)
        self._sql_copy_staging = sql.SQL("COPY pg_temp.{} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(_STAGING), columns
        )
        self._sql_lock_offset = sql.SQL(
            "SELECT committed_position FROM {} WHERE instance = %s AND ring = %s AND epoch = %s FOR UPDATE"
        ).format(self._offsets)
        self._sql_new_offset = sql.SQL(
            "INSERT INTO {} (instance, ring, epoch, committed_position) VALUES (%s, %s, %s, -1)"
            " ON CONFLICT (instance, ring, epoch) DO NOTHING"
        ).format(self._offsets)
        self._sql_set_offset = sql.SQL(
            "UPDATE {} SET committed_position = %s, updated_at = now()"
            " WHERE instance = %s AND ring = %s AND epoch = %s"
        ).format(self._offsets)
        # Within the batch the first record with a key wins; across batches the dedup table
        # decides (ON CONFLICT waits for a concurrent inserter of the same key, then skips it).
        # Keys are inserted in key order so two flushers cannot deadlock on each other's keys.
        self._sql_dedup_insert = sql.SQL(
            """
            WITH staged AS (
                SELECT seq, record ->> %(key)s AS key FROM pg_temp.{staging}
            ), firsts AS (
                SELECT DISTINCT ON (key) key, seq FROM staged WHERE key IS NOT NULL ORDER BY key, seq
            ), fresh AS (
                INSERT INTO {dedup} (key) SELECT key FROM firsts ORDER BY key
                ON CONFLICT (key) DO NOTHING RETURNING key
            )
            INSERT INTO {table} ({columns})
            SELECT {columns} FROM pg_temp.{staging}
            WHERE record ->> %(key)s IS NULL
               OR seq IN (SELECT firsts.seq FROM firsts JOIN fresh USING (key))
            ORDER BY seq
            """
        ).format(staging=sql.Identifier(_STAGING), dedup=self._dedup, table=self._table, columns=columns)

    def _ident(self, name: str) -> sql.Identifier:
        return sql.Identifier(self._schema, name) if self._schema else sql.Identifier(name)

    def _regname(self, name: str) -> str:
        return f"{self._schema}.{name}" if self._schema else name

    # ------------------------------------------------------------------------------ deliver

    #: `deliver(batch, dead_letter=...)` stores the rest of a batch and hands the refused to the callback
    routes_refused = True

    def deliver(self, batch: Batch, dead_letter: DeadLetterCallback | None = None) -> None:
        """Store `batch` in one transaction. Without `dead_letter`, content the server refuses
        raises `PermanentSinkError` and nothing is stored. With it, the records jsonb will refuse
        (`screen`) are left out of the COPY; if the server still refuses something, the batch is
        retried once in a transaction that isolates the refused records with savepoints
        (`_isolate`); either way `dead_letter(batch, refused)` is called once, before the commit
        that stores the rest and moves the offset."""
        if batch.count == 0:
            return
        try:
            conn = self._connection()
            if self._partition == "month":
                self._ensure_partitions(conn, batch)
        except psycopg.Error as exc:
            raise self._failure(exc, content=False) from exc
        if dead_letter is not None:
            self._deliver_routing(conn, batch, dead_letter)
            return
        content = False
        try:
            with conn.transaction(), conn.cursor() as cur:
                key = (self._instance, int(batch.ring), int(batch.epoch))
                row = cur.execute(self._sql_lock_offset, key).fetchone()
                if row is None:
                    cur.execute(self._sql_new_offset, key)
                    row = cur.execute(self._sql_lock_offset, key).fetchone()
                committed = row[0]
                keep = batch.positions > committed  # the rest was committed by an earlier delivery
                new = batch if keep.all() else _select(batch, keep)
                if new.count:
                    content = True
                    self._copy(cur, new)
                    content = False
                if batch.last_position > committed:
                    cur.execute(self._sql_set_offset, (batch.last_position, *key))
            logger.debug(
                "batch %s: %d of %d records new, committed through %d",
                batch.name,
                new.count,
                batch.count,
                max(committed, batch.last_position),
            )
        except psycopg.Error as exc:
            raise self._failure(exc, content=content) from exc

    def _screen(self, batch: Batch) -> tuple[np.ndarray, list[str]]:
        """The records the server will refuse, found before the COPY, with the server's words.
        json keeps the text as sent (\u0000 escapes, numbers past numeric's range) and the HTTP
        worker already refused what its syntax check refuses: nothing to predict."""
        if self._record_type != "jsonb":
            return np.zeros(0, dtype=np.int64), []
        predicted, reasons = screen(batch)
        return predicted, [self._refusal_text(state, message) for state, message in reasons]

    def _deliver_routing(self, conn: psycopg.Connection, batch: Batch, dead_letter: DeadLetterCallback) -> None:
        predicted, predicted_errors = self._screen(batch)
        isolating = False  # first without savepoints (the common case costs nothing more)
        while True:
            content = False
            try:
                with conn.transaction(), conn.cursor() as cur:
                    key = (self._instance, int(batch.ring), int(batch.epoch))
                    committed = self._lock_offset(cur, key)
                    new = batch.positions > committed  # the rest was committed by an earlier delivery
                    refused = dict(zip(predicted.tolist(), predicted_errors, strict=True))
                    refused = {i: e for i, e in refused.items() if new[i]}
                    good = new.copy()
                    good[list(refused)] = False
                    if isolating:
                        refused.update(self._isolate(cur, batch, np.flatnonzero(good)))
                    elif good.any():
                        content = True
                        self._copy(cur, _select(batch, good))
                        content = False
                    if refused:
                        order = sorted(refused)
                        dead_letter(batch, Refused(np.asarray(order, dtype=np.int64), [refused[i] for i in order]))
                    if batch.last_position > committed:
                        cur.execute(self._sql_set_offset, (batch.last_position, *key))
                logger.debug(
                    "batch %s: %d of %d records new, %d refused, committed through %d",
                    batch.name, int(new.sum()), batch.count, len(refused), max(committed, batch.last_position),
                )
                return
            except psycopg.Error as exc:
                failure = self._failure(exc, content=content)
                if isinstance(failure, PermanentSinkError) and not isolating:
                    # refused by something `screen` cannot predict: again, isolating (the first
                    # transaction rolled back and committed nothing)
                    logger.info("batch %s: the server refused a record screening did not predict: "
                                "isolating it: %s", batch.name, failure)
                    isolating = True
                    continue
                raise failure from exc

    def _lock_offset(self, cur: psycopg.Cursor, key: tuple[str, int, int]) -> int:
        row = cur.execute(self._sql_lock_offset, key).fetchone()
        if row is None:
            cur.execute(self._sql_new_offset, key)
            row = cur.execute(self._sql_lock_offset, key).fetchone()
        return row[0]

    def _isolate(self, cur: psycopg.Cursor, batch: Batch, indices: np.ndarray) -> dict[int, str]:
        """COPY the records at `indices`, each part under a savepoint, halving the parts the
        server refuses until the refused stand alone; returns them with the server's reason.
        Parts go in ring order (the dedup key's first record wins). Round trips: about
        2 x (refused) x log2(len(indices)), all in the caller's one transaction."""
        refused: dict[int, str] = {}
        parts = [indices] if len(indices) else []
        while parts:
            part = parts.pop()
            try:
                with cur.connection.transaction():  # a savepoint
                    self._copy(cur, _select(batch, part))
                    if self._dedup_key:  # the next part's dedup insert reads the staging table
                        cur.execute(sql.SQL("DELETE FROM pg_temp.{}").format(sql.Identifier(_STAGING)))
            except psycopg.Error as exc:
                failure = self._failure(exc, content=True)
                if not isinstance(failure, PermanentSinkError):
                    raise
                if len(part) == 1:
                    refused[int(part[0])] = str(failure)
                else:
                    half = len(part) // 2
                    parts += [part[half:], part[:half]]
        return refused

    def _refusal_text(self, state: str, message: str) -> str:
        """A refusal `screen` predicted, in the words of the server's own (see `_failure`)."""
        name = psycopg.errors.lookup(state).__name__
        return f"PostgreSQL {self._where} refused the records: {name} ({state}): {message} (found before sending)"

    def _copy(self, cur: psycopg.Cursor, batch: Batch) -> None:
        statement = self._sql_copy_staging if self._dedup_key else self._sql_copy_table
        with cur.copy(statement) as copy:
            if self._copy_method == "bulk":
                write_copy_bulk(copy, batch, instance=self._instance, record_type=self._record_type)
            else:
                write_copy_rows(copy, batch, instance=self._instance, record_type=self._record_type)
        if self._dedup_key:
            cur.execute(self._sql_dedup_insert, {"key": self._dedup_key})

    # ------------------------------------------------------------------------ connection

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        self._conn = None
        try:
            conn = psycopg.connect(
                self._url,
                connect_timeout=self._connect_timeout,
                application_name=f"ringgate {self._instance}"[:63],
                **_CONNECT_OPTIONS,
            )
        except psycopg.Error as exc:
            # connection refused, timeout, bad password, missing database or role...: libpq's
            # message names it (the SQLSTATE of a refused login does not reach psycopg)
            message = scrub(" ".join(str(exc).split()).removeprefix("connection failed: "), self._secrets)
            raise RetryableSinkError(
                f"PostgreSQL {self._where}: cannot connect: {message}", reason=_connect_failure(message)
            ) from exc
        try:
            settings = dict(_SESSION_SETTINGS)
            if conn.info.server_version >= 140000:
                settings["client_connection_check_interval"] = "10s"
            conn.execute(
                sql.SQL("SELECT {}").format(
                    sql.SQL(", ").join(
                        sql.SQL("set_config({}, {}, false)").format(sql.Literal(k), sql.Literal(v))
                        for k, v in settings.items()
                    )
                )
            )
            self._ensure_schema(conn)
            if self._dedup_key:
                conn.execute(
                    sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
                        sql.Identifier(_STAGING),
                        sql.SQL(", ").join(
                            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
                            for c, t in zip(COLUMNS, self._column_types, strict=True)
                        ),
                    )
                )
        except BaseException:
            conn.close()
            raise
        logger.info("connected to PostgreSQL %s, table %s", self._where, self._qualified)
        self._conn = conn
        return conn

    def _ensure_schema(self, conn: psycopg.Connection) -> None:
        """Create what is missing, under an advisory lock so two flushers do not race; then
        check that the table can take what we COPY (a wrong table is a configuration fault to
        retry, not content to dead-letter)."""
        events = sql.SQL(
            "CREATE TABLE {} (ring smallint NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL,"
            " received_at timestamptz NOT NULL, record {} NOT NULL, instance text){}"
        ).format(
            self._table,
            sql.SQL(self._record_type),
            sql.SQL(" PARTITION BY RANGE (received_at)" if self._partition == "month" else ""),
        )
        offsets = sql.SQL(
            "CREATE TABLE {} (instance text NOT NULL, ring smallint NOT NULL, epoch bigint NOT NULL,"
            " committed_position bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (instance, ring, epoch))"
        ).format(self._offsets)
        dedup = sql.SQL("CREATE TABLE {} (key text PRIMARY KEY)").format(self._dedup)
        wanted = [(self._base, events), (f"{self._base}_offsets", offsets)]
        if self._dedup_key:
            wanted.append((f"{self._base}_dedup", dedup))
        with conn.transaction():
            # existence first: a role with INSERT but no CREATE works on tables made for it
            names = [self._regname(name) for name, _ in wanted]
            present = conn.execute(
                "SELECT to_regclass(n) IS NOT NULL FROM unnest(%s::text[]) n", (names,)
            ).fetchall()
            if not all(p for (p,) in present):
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"ringgate {self._qualified}",))
                for name, create in wanted:
                    if conn.execute("SELECT to_regclass(%s)", (self._regname(name),)).fetchone()[0] is None:
                        conn.execute(create)
                        logger.info("created table %s", self._regname(name))
            self._add_instance_column(conn)
            rows = conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod),"
                " a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AND a.attgenerated = '',"
                " c.relkind"
                " FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid"
                " WHERE c.oid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                (self._qualified,),
            ).fetchall()
        types = {name: typ for name, typ, _, _ in rows}
        problems = [
            f"{column} is {types.get(column, 'missing')}, not {typ}"
            for column, typ in zip(COLUMNS, self._column_types, strict=True)
            if types.get(column) != typ
        ]
        problems += [
            f"{name} is NOT NULL without a default"
            for name, _, required, _ in rows
            if required and name not in COLUMNS
        ]
        if self._partition == "month" and rows and rows[0][3] != "p":
            problems.append(
                "it is not partitioned, but partition='month' (create it PARTITION BY RANGE (received_at))"
            )
        if problems:
            raise RetryableSinkError(
                f"PostgreSQL table {self._qualified} at {self._where} cannot take ringgate's rows: {'; '.join(problems)}",
                reason="the table cannot take ringgate's rows",
            )

    def _add_instance_column(self, conn: psycopg.Connection) -> None:
        """A table made before rows named their instance gets the column (NULL in its old rows:
        a metadata-only change, but under ACCESS EXCLUSIVE, so with a short lock timeout)."""
        present = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'instance'"
            " AND NOT attisdropped",
            (self._qualified,),
        ).fetchone()[0]
        if present:
            return
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"ringgate {self._qualified}",))
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_DDL_LOCK_TIMEOUT)))
        try:
            with conn.transaction():  # savepoint
                conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS instance text").format(self._table))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise RetryableSinkError(
                f"PostgreSQL table {self._qualified} at {self._where} has no instance column and this role "
                f"cannot add it: have its owner run ALTER TABLE {self._qualified} ADD COLUMN instance text "
                f"({type(exc).__name__})",
                reason="the table cannot take ringgate's rows",
            ) from None
        logger.info("added column instance to table %s (older rows: NULL)", self._qualified)

    def _ensure_partitions(self, conn: psycopg.Connection, batch: Batch) -> None:
        missing = sorted(_months(batch.received_ns) - self._months)
        if not missing:
            return
        lock_timeout = sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(_DDL_LOCK_TIMEOUT))
        # in a transaction of its own: CREATE ... PARTITION OF takes ACCESS EXCLUSIVE on the
        # parent, which must not be held for a whole COPY. The advisory lock serializes two
        # flushers, so the second finds the partition made by the first instead of failing.
        with conn.transaction():
            conn.execute(lock_timeout)
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"ringgate {self._qualified}",))
            for month in missing:
                name = f"{self._base}_p{month:%Y%m}"
                if conn.execute("SELECT to_regclass(%s)", (self._regname(name),)).fetchone()[0] is None:
                    upper = date(month.year + month.month // 12, month.month % 12 + 1, 1)
                    create = sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                        self._ident(name),
                        self._table,
                        sql.Literal(f"{month:%Y-%m-%d} 00:00:00+00"),
                        sql.Literal(f"{upper:%Y-%m-%d} 00:00:00+00"),
                    )
                    try:
                        with conn.transaction():  # savepoint
                            conn.execute(create)
                        logger.info("created partition %s", self._regname(name))
                    except psycopg.errors.InvalidObjectDefinition as exc:
                        # 42P17: another partition (made by someone else) covers the range
                        logger.warning("partition %s not created: %s", self._regname(name), exc)
        self._months.update(missing)

    # ---------------------------------------------------------------------------- failures

    def _failure(self, exc: psycopg.Error, *, content: bool) -> SinkError:
        """Classify a failure; a retryable one also drops the connection."""
        state = exc.sqlstate or ""
        message = scrub(" ".join(str(exc).split()), self._secrets)
        if content and state[:2] in _CONTENT_CLASSES and not self._no_partition(exc):
            return PermanentSinkError(
                f"PostgreSQL {self._where} refused the records: {type(exc).__name__} ({state}): {message}",
                reason=f"records refused: {type(exc).__name__} ({state})",
            )
        if self._no_partition(exc):
            self._months.clear()  # a partition we thought existed is gone: check again
        self._drop_connection()
        if state:
            cause = f"{type(exc).__name__} ({state})"
        elif isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            cause = "connection lost"
        else:
            cause = type(exc).__name__
        return RetryableSinkError(f"PostgreSQL {self._where}, table {self._qualified}: {cause}: {message}", reason=cause)

    @staticmethod
    def _no_partition(exc: psycopg.Error) -> bool:
        # "no partition of relation ... found for row" is a check violation (23514) without a
        # constraint name: a missing partition, which is ours to create, not the record's fault
        return exc.sqlstate == "23514" and exc.diag.constraint_name is None

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone anyway
                logger.debug("closing a failed connection", exc_info=True)

    def close(self) -> None:
        self._drop_connection()


#: libpq's words for why a connection failed -> the failure class /readyz shows
_CONNECT_FAILURES = (
    ("Connection refused", "connection refused"),
    ("timeout expired", "connection timed out"),
    ("timed out", "connection timed out"),
    ("could not translate host name", "host name does not resolve"),
    ("Name or service not known", "host name does not resolve"),
    ("authentication failed", "authentication failed"),
    ("no password supplied", "authentication failed"),
    ("no pg_hba.conf entry", "authentication failed"),
    ("does not exist", "database or role does not exist"),
    ("too many clients", "too many connections"),
    ("the database system is starting up", "server starting up"),
    ("the database system is shutting down", "server shutting down"),
    ("No such file or directory", "no server at the socket path"),
    ("SSL", "TLS negotiation failed"),
)


def _connect_failure(message: str) -> str:
    for words, failure in _CONNECT_FAILURES:
        if words in message:
            return failure
    return "cannot connect"
