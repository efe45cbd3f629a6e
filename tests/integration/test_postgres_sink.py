"""PostgresCopySink against a real PostgreSQL server (tests/fixtures/postgres.py): no mocks."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from psycopg.copy import LibpqWriter

from ringgate.errors import ConfigurationError, PermanentSinkError, RetryableSinkError
from ringgate.sinks.base import Batch
from ringgate.sinks.postgres import (
    COPY_CHUNK_ROWS,
    PostgresCopySink,
    _select,
    encode_copy_binary,
    write_copy_bulk,
    write_copy_rows,
)

UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns_of(dt: datetime, extra_ns: int = 0) -> int:
    return (dt - UNIX_EPOCH) // timedelta(microseconds=1) * 1000 + extra_ns


def make_payloads(n: int, seed: int = 1, *, key: str | None = None) -> list[bytes]:
    """Compact JSON objects (~100-200 bytes) with the things jsonb must get right."""
    rnd = random.Random(seed)
    texts = [
        "plain",
        "é accentué",
        "日本語テキスト",
        "emoji 🎉",
        'quote " and \\ backslash',
        "tab\tnew\nline",
        "",
    ]
    out = []
    for i in range(n):
        record = {
            "i": i,
            "user": rnd.randrange(10**9),
            "text": rnd.choice(texts),
            "score": round(rnd.uniform(-1e6, 1e6), 6),
            "big": rnd.randrange(-(2**62), 2**62),
            "ok": rnd.random() < 0.5,
            "nothing": None,
            "tags": [rnd.choice(["a", "b", "c"]) for _ in range(rnd.randrange(4))],
            "nested": {"depth": {"x": rnd.randrange(100)}, "empty": {}},
        }
        if key:
            record[key] = f"id-{seed}-{i}"
        out.append(json.dumps(record, ensure_ascii=rnd.random() < 0.3, separators=(",", ":")).encode())
    return out


def fetch(server, table: str) -> list[tuple]:
    with server.connect() as conn:
        return conn.execute(
            f"SELECT ring, epoch, seq, received_at, record FROM {table} ORDER BY ring, epoch, seq"
        ).fetchall()


def count(server, table: str) -> int:
    with server.connect() as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def committed(server, table: str, instance: str = "test", ring: int = 0, epoch: int = 1) -> int | None:
    with server.connect() as conn:
        if conn.execute("SELECT to_regclass(%s)", (f"{table}_offsets",)).fetchone()[0] is None:
            return None
        row = conn.execute(
            f"SELECT committed_position FROM {table}_offsets WHERE instance = %s AND ring = %s AND epoch = %s",
            (instance, ring, epoch),
        ).fetchone()
        return row[0] if row else None


def expected_rows(batch: Batch) -> list[tuple]:
    return [
        (
            batch.ring,
            batch.epoch,
            int(batch.positions[i]),
            UNIX_EPOCH + timedelta(microseconds=int(batch.received_ns[i]) // 1000),
            json.loads(bytes(batch.payload(i))),
        )
        for i in range(batch.count)
    ]


@pytest.fixture
def sinks():
    """Factory for sinks that are closed after the test."""
    made: list[PostgresCopySink] = []

    def make(url: str, **kwargs) -> PostgresCopySink:
        kwargs.setdefault("instance", "test")
        sink = PostgresCopySink(url, **kwargs)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()


# ------------------------------------------------------------------------------ delivery


def test_every_record_lands_once_with_its_content(postgres_server, postgres_table, sinks):
    payloads = make_payloads(2000)
    batch = Batch.from_payloads(payloads, ring=3, epoch=1_764_000_000_123_456_789, first_position=4096)
    # received_at: sub-µs parts are truncated; before 2000 (negative in PostgreSQL's epoch) too
    rnd = np.random.default_rng(7)
    received = rnd.integers(
        ns_of(datetime(1990, 1, 1, tzinfo=UTC)), ns_of(datetime(2100, 1, 1, tzinfo=UTC)), 2000
    )
    received[:4] = [
        ns_of(datetime(2000, 1, 1, tzinfo=UTC)) - 1,  # 1999-12-31T23:59:59.999999
        ns_of(datetime(2000, 1, 1, tzinfo=UTC)),
        ns_of(datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC), 999),
        0,
    ]
    batch = dataclasses.replace(batch, received_ns=received)
    sink = sinks(postgres_server.url, table=postgres_table)
    sink.deliver(batch)

    rows = fetch(postgres_server, postgres_table)
    assert rows == expected_rows(batch)
    assert rows[0][3] == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert rows[2][3] == datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)
    assert committed(postgres_server, postgres_table, ring=3, epoch=batch.epoch) == batch.last_position


def test_same_batch_twice_inserts_nothing_the_second_time(postgres_server, postgres_table, sinks):
    batch = Batch.from_payloads(make_payloads(500))
    sinks(postgres_server.url, table=postgres_table).deliver(batch)
    # a flusher restarted after commit, before freeing ring space, with a new connection
    sinks(postgres_server.url, table=postgres_table).deliver(batch)
    assert count(postgres_server, postgres_table) == 500
    assert committed(postgres_server, postgres_table) == batch.last_position


def test_overlapping_batch_inserts_only_the_new_records(postgres_server, postgres_table, sinks):
    batch = Batch.from_payloads(make_payloads(10_000))
    sink = sinks(postgres_server.url, table=postgres_table)
    sink.deliver(batch.slice(0, 5000))
    assert count(postgres_server, postgres_table) == 5000
    sink.deliver(batch)
    rows = fetch(postgres_server, postgres_table)
    assert [r[2] for r in rows] == batch.positions.tolist()
    assert rows == expected_rows(batch)
    # an older, already committed part: nothing
    sink.deliver(batch.slice(100, 200))
    assert count(postgres_server, postgres_table) == 10_000
    assert committed(postgres_server, postgres_table) == batch.last_position


def test_table_name_is_folded_and_may_name_a_schema(postgres_server, postgres_table, sinks):
    with postgres_server.connect() as conn:
        conn.execute(f"CREATE SCHEMA {postgres_table}_s")
    try:
        sink = sinks(postgres_server.url, table=f"{postgres_table}_S.Events", partition="month")
        sink.deliver(Batch.from_payloads(make_payloads(3)))
        assert count(postgres_server, f"{postgres_table}_s.events") == 3
        assert partitions(postgres_server, f"{postgres_table}_s.events") == [
            f"{postgres_table}_s.events_p202311",
            f"{postgres_table}_s.events_p202312",
        ]
    finally:
        with postgres_server.connect() as conn:
            conn.execute(f"DROP SCHEMA {postgres_table}_s CASCADE")


def test_rings_and_epochs_have_their_own_offsets(postgres_server, postgres_table, sinks):
    sink = sinks(postgres_server.url, table=postgres_table)
    payloads = make_payloads(10)
    for ring, epoch in [(0, 1), (1, 1), (0, 2)]:
        sink.deliver(Batch.from_payloads(payloads, ring=ring, epoch=epoch))
    assert count(postgres_server, postgres_table) == 30


# ------------------------------------------------------------------------------- content


@pytest.mark.parametrize(
    "poison",
    [b'{"a":"x\\u0000y"}', b'{"a":"\xff\xfe"}'],
    ids=["nul-escape", "invalid-utf8"],
)
def test_refused_content_is_permanent_and_commits_nothing(postgres_server, postgres_table, sinks, poison):
    sink = sinks(postgres_server.url, table=postgres_table)
    before = Batch.from_payloads(make_payloads(3))
    sink.deliver(before)
    payloads = make_payloads(10, seed=2)
    payloads[5] = poison
    batch = Batch.from_payloads(payloads, first_position=before.next_position)

    with pytest.raises(PermanentSinkError) as info:
        sink.deliver(batch)
    assert "22" in str(info.value)  # the SQLSTATE class is named
    assert count(postgres_server, postgres_table) == 3
    assert committed(postgres_server, postgres_table) == before.last_position

    # what the flusher does next: the good parts, in ring order, on the same sink
    sink.deliver(batch.slice(0, 5))
    sink.deliver(batch.slice(6, 10))
    seqs = [r[2] for r in fetch(postgres_server, postgres_table)]
    assert seqs == before.positions.tolist() + batch.positions[:5].tolist() + batch.positions[6:].tolist()
    assert committed(postgres_server, postgres_table) == batch.last_position


# ---------------------------------------------------------------------------------- faults


def test_server_stopped_is_retryable_then_the_next_deliver_reconnects(postgres_server, postgres_table, sinks):
    sink = sinks(postgres_server.url, table=postgres_table)
    batches = [Batch.from_payloads(make_payloads(100, seed=s), first_position=100_000 * s) for s in range(4)]
    sink.deliver(batches[0])
    postgres_server.stop("fast")
    try:
        with pytest.raises(RetryableSinkError) as info:
            sink.deliver(batches[1])  # the open connection was terminated
        assert "PostgreSQL" in str(info.value) and postgres_table in str(info.value)
        assert "AdminShutdown (57P01)" in str(info.value) or "connection lost" in str(info.value)
        with pytest.raises(RetryableSinkError, match="(?i)connection refused"):
            sink.deliver(batches[1])
    finally:
        postgres_server.start()
    sink.deliver(batches[1])
    sink.deliver(batches[1])
    sink.deliver(batches[2])
    assert count(postgres_server, postgres_table) == 300


def _cut_when_copy_runs(server, proxy, table: str, cut: threading.Event) -> None:
    with server.connect() as conn:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT tuples_processed FROM pg_stat_progress_copy WHERE relid = to_regclass(%s)", (table,)
            ).fetchone()
            if row and row[0] > 1000:
                proxy.cut()
                cut.set()
                return
            time.sleep(0.002)


@pytest.mark.slow  # the retry waits for the cut backend's row lock: ~5 s, see below
def test_connection_cut_mid_copy_is_retryable_and_the_retry_lands_once(
    postgres_server, postgres_table, sinks, tcp_proxy
):
    proxy = tcp_proxy("127.0.0.1", postgres_server.port)
    url = postgres_server.url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
    sink = sinks(url, table=postgres_table)
    small = Batch.from_payloads(make_payloads(10), first_position=0)
    sink.deliver(small)  # the schema exists: the next COPY starts at once
    big = Batch.from_payloads(make_payloads(1000, seed=3) * 150, first_position=10_000)  # ~1 s of COPY

    cut = threading.Event()
    watcher = threading.Thread(target=_cut_when_copy_runs, args=(postgres_server, proxy, postgres_table, cut))
    watcher.start()
    try:
        with pytest.raises(RetryableSinkError, match="(?i)connection|server closed|consuming input|sending"):
            sink.deliver(big)
    finally:
        watcher.join()
    assert cut.is_set(), "the COPY ended before the watcher saw it running"
    assert count(postgres_server, postgres_table) == 10  # nothing of the big batch
    assert committed(postgres_server, postgres_table) == small.last_position

    with pytest.raises(RetryableSinkError, match="(?i)connection"):
        sink.deliver(big)  # still cut: refused
    proxy.restore()
    # The cut backend may still be waiting for COPY data while holding the offsets row (the
    # proxy's upstream socket lingers until its 5 s timeout, as a half-open connection would):
    # the retry waits for that lock, then lands exactly once.
    sink.deliver(big)
    sink.deliver(big)
    assert count(postgres_server, postgres_table) == 150_010
    assert committed(postgres_server, postgres_table) == big.last_position


@pytest.fixture
def role(postgres_server):
    """A login role with a password and no privilege beyond PUBLIC's (PostgreSQL 15: no CREATE on public)."""
    name, password = f"r_{uuid.uuid4().hex[:10]}", "right-password"
    with postgres_server.connect() as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    yield name, password
    with postgres_server.connect() as conn:
        conn.execute(f"REASSIGN OWNED BY {name} TO {postgres_server.user}")
        conn.execute(f"DROP OWNED BY {name}")
        conn.execute(f"DROP ROLE {name}")


def test_refused_login_is_retryable(postgres_server, postgres_table, sinks, role):
    name, _ = role
    sink = sinks(postgres_server.url_for(name, "wrong-password"), table=postgres_table)
    with pytest.raises(RetryableSinkError, match="password authentication failed") as info:
        sink.deliver(Batch.from_payloads(make_payloads(1)))
    assert "wrong-password" not in str(info.value)


def test_missing_database_is_retryable(postgres_server, postgres_table, sinks):
    sink = sinks(postgres_server.url_for(dbname="no_such_db"), table=postgres_table)
    with pytest.raises(RetryableSinkError, match='database "no_such_db" does not exist'):
        sink.deliver(Batch.from_payloads(make_payloads(1)))


def test_table_that_cannot_be_created_is_retryable_until_granted(
    postgres_server, postgres_table, sinks, role
):
    name, password = role
    sink = sinks(postgres_server.url_for(name, password), table=postgres_table)
    batch = Batch.from_payloads(make_payloads(5))
    with pytest.raises(RetryableSinkError, match=r"InsufficientPrivilege \(42501\): permission denied"):
        sink.deliver(batch)
    with postgres_server.connect() as conn:
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {name}")
    sink.deliver(batch)
    assert count(postgres_server, postgres_table) == 5


def test_table_dropped_under_the_sink_is_retryable_then_recreated(postgres_server, postgres_table, sinks):
    sink = sinks(postgres_server.url, table=postgres_table)
    sink.deliver(Batch.from_payloads(make_payloads(5)))
    with postgres_server.connect() as conn:
        conn.execute(f"DROP TABLE {postgres_table}")
    later = Batch.from_payloads(make_payloads(5, seed=9), first_position=1000)
    with pytest.raises(RetryableSinkError, match=r"UndefinedTable \(42P01\)"):
        sink.deliver(later)
    sink.deliver(later)
    assert count(postgres_server, postgres_table) == 5


def test_a_record_column_of_the_other_type_is_the_wrong_shape(postgres_server, postgres_table, sinks):
    """Each record type takes its own table and refuses the other's, as any table of the wrong
    shape: retryable, named in the message; the table made for one is made of that type."""
    batch = Batch.from_payloads(make_payloads(5))
    sinks(postgres_server.url, table=postgres_table + "_j", record_type="json").deliver(batch)
    sinks(postgres_server.url, table=postgres_table + "_b", record_type="jsonb").deliver(batch)
    for table, other, is_ in ((postgres_table + "_j", "jsonb", "json"), (postgres_table + "_b", "json", "jsonb")):
        with pytest.raises(RetryableSinkError, match=f"cannot take ringgate's rows: record is {is_}, not {other}$"):
            sinks(postgres_server.url, table=table, record_type=other).deliver(batch)
        assert fetch(postgres_server, table) == expected_rows(batch)


def test_existing_table_of_the_wrong_shape_is_retryable(postgres_server, postgres_table, sinks):
    with postgres_server.connect() as conn:
        conn.execute(
            f"CREATE TABLE {postgres_table} (ring smallint, epoch bigint, seq bigint, received_at timestamptz,"
            " record json, note text NOT NULL)"
        )
    sink = sinks(postgres_server.url, table=postgres_table)
    with pytest.raises(
        RetryableSinkError, match="record is json, not jsonb; note is NOT NULL without a default"
    ):
        sink.deliver(Batch.from_payloads(make_payloads(5)))


def test_bad_configuration_is_refused_at_construction():
    with pytest.raises(ConfigurationError, match="table"):
        PostgresCopySink("postgresql://x@127.0.0.1/db", table="Robert'); DROP TABLE", instance="t")
    with pytest.raises(ConfigurationError, match="at most 48"):
        PostgresCopySink("postgresql://x@127.0.0.1/db", table="e" * 49, instance="t")
    with pytest.raises(ConfigurationError, match="ASCII"):
        PostgresCopySink("postgresql://x@127.0.0.1/db", table="événements", instance="t")
    with pytest.raises(ConfigurationError, match="partition"):
        PostgresCopySink("postgresql://x@127.0.0.1/db", partition="week", instance="t")


# ---------------------------------------------------------------------------------- dedup


def test_dedup_key_across_batches_and_within_a_batch(postgres_server, postgres_table, sinks):
    sink = sinks(postgres_server.url, table=postgres_table, dedup_key="event_id")

    def rec(event_id, n):
        record = {"n": n} if event_id is None else {"event_id": event_id, "n": n}
        return json.dumps(record, separators=(",", ":")).encode()

    first = Batch.from_payloads([rec("a", 1), rec("b", 2), rec(None, 3), rec("c", 4)])
    second = Batch.from_payloads(
        [
            rec("b", 5),
            rec("d", 6),
            rec(None, 3),
            rec("d", 7),
            rec("a", 8),
            b'{"event_id":null,"n":9}',
            rec(7, 10),
        ],
        first_position=first.next_position,
    )
    sink.deliver(first)
    sink.deliver(second)
    sink.deliver(second)  # replay: the offsets drop it before dedup sees it
    got = [r[4]["n"] for r in fetch(postgres_server, postgres_table)]
    assert got == [1, 2, 3, 4, 6, 3, 9, 10]
    with postgres_server.connect() as conn:
        keys = sorted(k for (k,) in conn.execute(f"SELECT key FROM {postgres_table}_dedup"))
    assert keys == ["7", "a", "b", "c", "d"]
    assert committed(postgres_server, postgres_table) == second.last_position


def test_dedup_batch_of_only_duplicates_still_moves_the_offset(postgres_server, postgres_table, sinks):
    sink = sinks(postgres_server.url, table=postgres_table, dedup_key="event_id")
    payloads = make_payloads(1000, key="event_id")
    first = Batch.from_payloads(payloads)
    again = Batch.from_payloads(payloads, first_position=first.next_position)  # a client retried everything
    sink.deliver(first)
    sink.deliver(again)
    assert count(postgres_server, postgres_table) == 1000
    assert committed(postgres_server, postgres_table) == again.last_position


def test_dedup_key_too_long_for_the_index_is_content(postgres_server, postgres_table, sinks):
    sink = sinks(postgres_server.url, table=postgres_table, dedup_key="event_id")
    huge = random.Random(1).randbytes(4000).hex()  # incompressible, past a btree entry's 2704 bytes
    batch = Batch.from_payloads([b'{"event_id":"ok"}', json.dumps({"event_id": huge}).encode()])
    with pytest.raises(PermanentSinkError, match=r"\(54000\)"):
        sink.deliver(batch)
    sink.deliver(batch.slice(0, 1))
    assert count(postgres_server, postgres_table) == 1


# ------------------------------------------------------------------------------ partitions


def month_batch(stamps: list[datetime], *, first_position: int, payloads=None) -> Batch:
    payloads = payloads or make_payloads(len(stamps), seed=first_position)
    batch = Batch.from_payloads(payloads, first_position=first_position)
    return dataclasses.replace(batch, received_ns=np.array([ns_of(s) for s in stamps], dtype=np.int64))


def partitions(server, table: str) -> list[str]:
    with server.connect() as conn:
        return sorted(
            r[0]
            for r in conn.execute(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass", (table,)
            )
        )


def test_monthly_partitions_are_created_on_demand(postgres_server, postgres_table, sinks):
    sink = sinks(postgres_server.url, table=postgres_table, partition="month")
    t = postgres_table
    batch = month_batch(
        [
            datetime(2026, 1, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2026, 2, 1, tzinfo=UTC),
            datetime(2026, 1, 1, tzinfo=UTC),
        ],
        first_position=0,
    )
    sink.deliver(batch)
    assert partitions(postgres_server, t) == [f"{t}_p202601", f"{t}_p202602", f"{t}_p202603"]
    later = month_batch(
        [datetime(2026, 6, 15, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)], first_position=1000
    )
    sink.deliver(later)
    assert partitions(postgres_server, t) == [f"{t}_p2026{m:02d}" for m in (1, 2, 3, 6, 7)]
    with postgres_server.connect() as conn:
        rows = conn.execute(f"SELECT seq, tableoid::regclass::text FROM {t} ORDER BY seq").fetchall()
    assert rows == [
        (0, f"{t}_p202601"),
        (64, f"{t}_p202602"),
        (128, f"{t}_p202601"),
        (1000, f"{t}_p202606"),
        (1064, f"{t}_p202603"),
    ]
    # a partition dropped behind the sink's back: retryable, then re-created
    with postgres_server.connect() as conn:
        conn.execute(f"DROP TABLE {t}_p202606")
    again = month_batch([datetime(2026, 6, 20, tzinfo=UTC)], first_position=2000)
    with pytest.raises(RetryableSinkError, match="no partition"):
        sink.deliver(again)
    sink.deliver(again)
    assert count(postgres_server, t) == 5


def test_dedup_holds_across_a_month_boundary(postgres_server, postgres_table, sinks):
    sink = sinks(postgres_server.url, table=postgres_table, partition="month", dedup_key="event_id")
    jan = month_batch(
        [datetime(2026, 1, 31, 23, 59, tzinfo=UTC)], first_position=0, payloads=[b'{"event_id":"x","n":1}']
    )
    feb = month_batch(
        [datetime(2026, 2, 1, 0, 1, tzinfo=UTC)] * 2,
        first_position=64,
        payloads=[b'{"event_id":"x","n":2}', b'{"event_id":"y","n":3}'],
    )
    sink.deliver(jan)
    sink.deliver(feb)
    with postgres_server.connect() as conn:
        rows = conn.execute(
            f"SELECT record->>'n', tableoid::regclass::text FROM {postgres_table} ORDER BY seq"
        ).fetchall()
    assert rows == [("1", f"{postgres_table}_p202601"), ("3", f"{postgres_table}_p202602")]


def test_two_flushers_create_the_table_and_partitions_concurrently(postgres_server, postgres_table, sinks):
    flushers = [
        sinks(postgres_server.url, table=postgres_table, partition="month", instance=f"i{k}")
        for k in range(2)
    ]
    errors: list[BaseException] = []
    for year in (2030, 2031, 2032):
        barrier = threading.Barrier(2)

        def run(sink, year=year, barrier=barrier):
            try:
                stamps = [datetime(year, m, 1, tzinfo=UTC) for m in range(1, 13)]
                barrier.wait()
                sink.deliver(month_batch(stamps, first_position=year * 10_000))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(s,)) for s in flushers]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert errors == []
    assert count(postgres_server, postgres_table) == 2 * 3 * 12
    assert len(partitions(postgres_server, postgres_table)) == 3 * 12 + 1


# --------------------------------------------------------------------------------- oracle


class CapturingWriter(LibpqWriter):
    """Forwards to the server and keeps a copy of every byte psycopg sends."""

    def __init__(self, cursor):
        super().__init__(cursor)
        self.sent = bytearray()

    def write(self, data):
        self.sent += data
        super().write(data)


def captured_copy(conn, table: str, fill, columns: str = "instance, ring, epoch, seq, received_at, record") -> bytes:
    with conn.transaction(), conn.cursor() as cur:
        writer = CapturingWriter(cur)
        with cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)", writer=writer) as copy:
            fill(copy)
    return bytes(writer.sent)


@pytest.mark.parametrize("record_type", ["jsonb", "json"])
@pytest.mark.parametrize("instance", ["gw-ü.1", None], ids=["instance", "no-instance"])
@pytest.mark.parametrize("chunk_rows", [COPY_CHUNK_ROWS, 7])
@pytest.mark.parametrize("subset", ["all", "every-third"])
def test_bulk_encoder_sends_exactly_what_write_row_sends(postgres_server, postgres_table, subset, chunk_rows,
                                                          instance, record_type):
    payloads = make_payloads(3000, seed=11) + [b"{}", b'{"k":"' + "ü".encode() * 3000 + b'"}']
    batch = Batch.from_payloads(payloads, ring=32767, epoch=2**62 + 5, first_position=2**40)
    rnd = np.random.default_rng(3)
    received = rnd.integers(-(2**62), 2**62, batch.count)  # 1823 to 2116, both sides of 2000
    batch = dataclasses.replace(batch, received_ns=received)
    if subset == "every-third":
        keep = np.zeros(batch.count, dtype=bool)
        keep[::3] = True
        batch = _select(batch, keep)  # payloads no longer contiguous in data

    with postgres_server.connect() as conn:
        for suffix in ("_rows", "_bulk"):
            conn.execute(
                f"CREATE TABLE {postgres_table}{suffix} (ring smallint, epoch bigint, seq bigint,"
                f" received_at timestamptz, record {record_type}, instance text)"
            )
        columns = "ring, epoch, seq, received_at, record" if instance is None else "instance, ring, epoch, seq, received_at, record"
        by_rows = captured_copy(
            conn, postgres_table + "_rows",
            lambda copy: write_copy_rows(copy, batch, instance=instance, record_type=record_type), columns,
        )
        by_bulk = captured_copy(
            conn, postgres_table + "_bulk",
            lambda copy: write_copy_bulk(copy, batch, chunk_rows=chunk_rows, instance=instance,
                                         record_type=record_type), columns,
        )
        assert by_bulk == by_rows
        assert bytes(encode_copy_binary(batch, instance, record_type)) == by_rows
        stored = conn.execute(f"SELECT DISTINCT instance FROM {postgres_table}_bulk").fetchall()
        assert stored == [(instance,)]
        rows, bulk = (f"(SELECT ring, epoch, seq, received_at, record::text, instance FROM {postgres_table}{s})"
                      for s in ("_rows", "_bulk"))  # json has no equality operator: compare the text
        differ = conn.execute(
            f"SELECT count(*) FROM (({rows} EXCEPT ALL {bulk}) UNION ALL ({bulk} EXCEPT ALL {rows})) d"
        ).fetchone()[0]
        assert differ == 0
        assert conn.execute(f"SELECT count(*) FROM {postgres_table}_bulk").fetchone()[0] == batch.count


def test_both_copy_methods_load_the_same_rows_through_the_sink(postgres_server, postgres_table, sinks):
    batch = Batch.from_payloads(make_payloads(1000, seed=5), ring=1, epoch=9)
    sinks(postgres_server.url, table=postgres_table + "_a", copy_method="rows").deliver(batch)
    sinks(postgres_server.url, table=postgres_table + "_b", copy_method="bulk").deliver(batch)
    assert (
        fetch(postgres_server, postgres_table + "_a")
        == fetch(postgres_server, postgres_table + "_b")
        == expected_rows(batch)
    )


@pytest.mark.parametrize("partition", ["none", "month"])
def test_rows_name_the_instance_that_stored_them_and_an_old_table_gets_the_column(
    postgres_server, postgres_table, sinks, partition
):
    with postgres_server.connect() as conn:
        # a table as ringgate made it before rows named their instance, holding one row
        conn.execute(
            f"CREATE TABLE {postgres_table} (ring smallint NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL,"
            " received_at timestamptz NOT NULL, record jsonb NOT NULL)"
            + (" PARTITION BY RANGE (received_at)" if partition == "month" else "")
        )
        if partition == "month":  # an old partition: the column reaches it through the parent
            conn.execute(f"CREATE TABLE {postgres_table}_p200001 PARTITION OF {postgres_table}"
                         " FOR VALUES FROM ('2000-01-01') TO ('2000-02-01')")
        conn.execute(f"INSERT INTO {postgres_table} VALUES (0, 1, 0, '2000-01-02', '{{\"old\": 1}}')")
    a = Batch.from_payloads([b'{"a":1}', b'{"a":2}'], ring=0, epoch=7, first_position=10)
    b = Batch.from_payloads([b'{"b":1}'], ring=0, epoch=7, first_position=10)
    for method in ("bulk", "rows"):
        sinks(postgres_server.url, table=postgres_table, instance=f"host-a-{method}", copy_method=method,
              partition=partition).deliver(a)
        sinks(postgres_server.url, table=postgres_table, instance=f"host-b-{method}", copy_method=method,
              dedup_key="k", partition=partition).deliver(b)
    with postgres_server.connect() as conn:
        rows = conn.execute(
            f"SELECT instance, record FROM {postgres_table} ORDER BY instance, seq, record::text"
        ).fetchall()
    # the same ring and epoch from two gateways: only the instance tells the rows apart
    assert rows == [
        ("host-a-bulk", {"a": 1}), ("host-a-bulk", {"a": 2}), ("host-a-rows", {"a": 1}), ("host-a-rows", {"a": 2}),
        ("host-b-bulk", {"b": 1}), ("host-b-rows", {"b": 1}), (None, {"old": 1}),
    ]
    with postgres_server.connect() as conn:
        joined = conn.execute(
            f"SELECT DISTINCT e.instance = o.instance FROM {postgres_table} e JOIN {postgres_table}_offsets o"
            " USING (ring, epoch) WHERE e.instance = o.instance"
        ).fetchall()
    assert joined == [(True,)]


def test_encoder_of_an_empty_batch_is_header_and_trailer():
    empty = Batch.from_payloads([])
    assert bytes(encode_copy_binary(empty)) == b"PGCOPY\n\xff\r\n\x00" + bytes(8) + b"\xff\xff"
