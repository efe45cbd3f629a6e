"""`ringgate serve` as a real process delivering to a real PostgreSQL server (tests/fixtures/postgres.py).

Records through HTTP into the table exactly once, with their content and identity; SIGKILL of the
flusher mid-COPY; the database unreachable (a cut TCP proxy, a stopped server) for longer than the
ring absorbs; poisoned records dead-lettered alone; the dedup key and monthly partitions;
`?ack=commit` answered only once the rows are visible. Every load loop is bounded in count and
time and targets loopback only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import UTC, datetime, timedelta

import pytest

from ringgate.ring import layout as L
from tests.faults.test_crashes import Load
from tests.sinkdata import assert_exactly_once, file_sink_records, wait_for

US = timedelta(microseconds=1)


# -- helpers ---------------------------------------------------------------------------------------


def pg_gateway(make_gateway, pg, table: str, url: str | None = None, **overrides):
    return make_gateway(SINK=url or pg.url, PG_TABLE=table, **overrides)


def compact(record: dict) -> bytes:
    """The bytes the gateway stores for a compact record: the client's own."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def align8(n: int) -> int:
    return (n + 7) & ~7


def positions_of(records: list[dict], first: int) -> list[int]:
    """Ring positions of a request's records: consecutive, each align8(16-byte header + payload)."""
    out, position = [], first
    for record in records:
        out.append(position)
        position += align8(L.RECORD_HEADER_LENGTH + len(compact(record)))
    return out + [position]  # ... and the position just past the request


def parse_batch_id(batch_id: str) -> tuple[int, int, int, int]:
    ring, epoch, first, next_ = (int(p) for p in batch_id.split("-"))
    return ring, epoch, first, next_


def delivered_everything(gw) -> bool:
    rings = gw.get("/readyz", timeout=5).json()["rings"]
    return all(r["committed_position"] >= r["producer_position"] for r in rings)


def metric(gw, name: str) -> float:
    return gw.metrics().get(name, 0.0)


DELIVERED = 'ringgate_records_delivered_total{sink="postgresql"}'


def retries(gw) -> float:
    return metric(gw, 'ringgate_delivery_retries_total{sink="postgresql"}')


def query(pg, sql: str, params=None) -> list[tuple]:
    with pg.connect() as conn:
        return conn.execute(sql, params).fetchall()


def ids_in_table(pg, table: str) -> list[str]:
    return [i for (i,) in query(pg, f"SELECT record->>'id' FROM {table}")]


def assert_no_id_twice(pg, table: str) -> None:
    doubled = query(
        pg, f"SELECT record->>'id', count(*) FROM {table} GROUP BY 1 HAVING count(*) > 1 LIMIT 10"
    )
    assert doubled == [], f"records stored twice: {doubled}"


def replays(gw) -> list[int]:
    """Record counts of the in-flight batches restarted flushers replayed (from the log)."""
    return [int(m) for m in re.findall(r"replaying in-flight batch \[\d+, \d+\) of (\d+) records", gw.log())]


def flusher_pid(gw) -> int | None:
    pids = gw.children()["flusher"]
    return pids[0] if pids else None


def copy_backends(conn, gw) -> set[int]:
    """Server pids of the gateway's sessions running a COPY right now."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active'"
        " AND query LIKE 'COPY%%'",
        (f"ringgate {gw.instance}"[:63],),
    ).fetchall()
    return {pid for (pid,) in rows}


# -- 1. every accepted record, once, with its content and identity ---------------------------------


def sample_records(i: int, n: int) -> list[dict]:
    texts = ["plain", "héllo wörld", "日本語", "emoji 🎉", 'quote " backslash \\', "tab\tnew\nline", ""]
    return [
        {
            "id": f"r{i}-{j}",
            "n": j,
            "text": texts[(i + j) % len(texts)],
            "score": -12.5 + j,
            "big": 2**62 + j,
            "ok": j % 2 == 0,
            "nothing": None,
            "tags": ["a", "b"][: j % 3],
            "nested": {"depth": {"x": [1, {"y": None}]}, "empty": {}},
        }
        for j in range(n)
    ]


def test_every_accepted_record_is_stored_once_with_content_and_identity(
    make_gateway, postgres_server, postgres_table
):
    pg, table = postgres_server, postgres_table
    gw = pg_gateway(make_gateway, pg, table)
    sent = []  # per request: records, batch_id parts, time window
    for i in range(9):
        records = sample_records(i, 2 + 3 * i)
        if i % 3 == 0:
            body, ctype = b"[" + b",".join(map(compact, records)) + b"]", "application/json"
        elif i % 3 == 1:
            body, ctype = b'{"records":[' + b",".join(map(compact, records)) + b"]}", "application/json"
        else:
            body, ctype = b"\n".join(map(compact, records)) + b"\n", "application/x-ndjson"
        t0 = datetime.now(UTC)
        resp = gw.post(body, content_type=ctype)
        t1 = datetime.now(UTC)
        assert resp.status == 202, resp.body
        assert resp.json()["accepted"] == len(records)
        sent.append((records, parse_batch_id(resp.json()["batch_id"]), t0, t1))
        if i % 4 == 3:
            time.sleep(0.15)  # past the flush interval: several COPY batches
    wait_for(lambda: delivered_everything(gw), timeout=20, what="delivery to PostgreSQL")

    rows = query(pg, f"SELECT ring, epoch, seq, received_at, record FROM {table} ORDER BY ring, epoch, seq")
    assert len(rows) == sum(len(r) for r, *_ in sent)
    by_id = {row[4]["id"]: row for row in rows}
    assert len(by_id) == len(rows), "a record stored twice"
    for records, (ring, epoch, first, next_), t0, t1 in sent:
        positions = positions_of(records, first)
        assert positions[-1] == next_, "the batch_id's range is not the request's framed records"
        for record, position in zip(records, positions[:-1], strict=True):
            r_ring, r_epoch, seq, received_at, stored = by_id[record["id"]]
            assert stored == record
            assert (r_ring, r_epoch, seq) == (ring, epoch, position), record["id"]
            assert t0 - US <= received_at <= t1, (record["id"], received_at, t0, t1)
    # the offsets row moved to the last stored record, in the same transactions
    (committed,) = query(
        pg,
        f"SELECT committed_position FROM {table}_offsets WHERE instance = %s AND ring = %s AND epoch = %s",
        (gw.instance, rows[-1][0], rows[-1][1]),
    )
    assert committed[0] == rows[-1][2]
    assert metric(gw, DELIVERED) == len(rows)
    assert gw.stop() == 0


# -- 2. SIGKILL of the flusher mid-COPY ------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_of_the_flusher_mid_copy_loses_nothing_and_doubles_nothing(
    make_gateway, postgres_server, postgres_table
):
    pg, table = postgres_server, postgres_table
    # one flusher (the default for PostgreSQL is one per core): the one this test kills
    gw = pg_gateway(make_gateway, pg, table, BATCH_RECORDS="200", FLUSH_INTERVAL_MS="20", FLUSHERS="1")
    killed_during_copy = 0
    old_backends: set[int] = set()
    with Load(gw.port, clients=4, max_requests=3000, max_seconds=30) as load, pg.connect() as conn:
        for _ in range(3):
            load.wait_acked(len(load.acked) + 600)
            flusher = flusher_pid(gw)
            # kill while the flusher's session runs a COPY (a session of a flusher killed before
            # may still show one until the server notices: not that one)
            deadline = time.monotonic() + 5
            backends: set[int] = set()
            while time.monotonic() < deadline and not backends:
                backends = copy_backends(conn, gw) - old_backends
            os.kill(flusher, signal.SIGKILL)
            killed_during_copy += bool(backends)
            old_backends |= backends
            wait_for(
                lambda f=flusher: flusher_pid(gw) not in (None, f),
                timeout=15,
                what="the supervisor's replacement flusher",
            )
        load.wait_acked(len(load.acked) + 600)
    assert load.acked
    wait_for(lambda: delivered_everything(gw), timeout=30, what="delivery to catch up")

    assert killed_during_copy >= 2, f"only {killed_during_copy} of 3 kills landed during a COPY"
    # a COPY seen just before the kill may have committed by the time the signal lands, so not
    # every kill needs a replay; at least one must have been mid-delivery
    assert [n for n in replays(gw) if n], gw.log()
    assert_no_id_twice(pg, table)
    assert_exactly_once(load.acked, [{"id": i} for i in ids_in_table(pg, table)])
    assert gw.stop() == 0


def ring_inflight(gw) -> tuple[int, int]:
    """The [first, next) range ring 0's header records as in flight."""
    fd = os.open(f"/dev/shm/{gw.instance}-ring-0", os.O_RDONLY)
    try:
        first = int.from_bytes(os.pread(fd, 8, L.INFLIGHT_FIRST_OFFSET), "little")
        next_ = int.from_bytes(os.pread(fd, 8, L.INFLIGHT_NEXT_OFFSET), "little")
    finally:
        os.close(fd)
    return first, next_


def backends_in(conn, gw, statement: str) -> set[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = 'active' AND query = %s",
        (f"ringgate {gw.instance}"[:63], statement),
    ).fetchall()
    return {pid for (pid,) in rows}


@pytest.mark.slow
def test_sigkill_of_the_flusher_after_commit_is_skipped_by_the_offsets(
    make_gateway, postgres_server, postgres_table
):
    """The flusher dies after PostgreSQL committed a batch but before it freed the ring space:
    its replacement replays the batch, and the offsets table makes that replay insert nothing."""
    pg, table = postgres_server, postgres_table
    with pg.connect() as conn:
        # the sink adopts a table of the right shape; this one's commits take 0.3 s (a deferred
        # constraint trigger sleeps once per transaction), a window to kill the flusher in
        conn.execute(
            f"CREATE TABLE {table} (ring smallint NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL,"
            " received_at timestamptz NOT NULL, record jsonb NOT NULL)"
        )
        conn.execute(
            f"CREATE FUNCTION {table}_slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF current_setting('ringgate_test.slept', true) IS DISTINCT FROM 'y' THEN"
            " PERFORM set_config('ringgate_test.slept', 'y', true); PERFORM pg_sleep(0.3); END IF;"
            " RETURN NULL; END $$"
        )
        conn.execute(
            f"CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON {table} DEFERRABLE INITIALLY DEFERRED"
            f" FOR EACH ROW EXECUTE FUNCTION {table}_slow_commit()"
        )
    # one flusher, ring 0's: the one this test kills and whose in-flight range it reads
    gw = pg_gateway(make_gateway, pg, table, BATCH_RECORDS="400", FLUSH_INTERVAL_MS="20", FLUSHERS="1")
    committed_before_replay = []  # in-flight ranges whose rows the killed flusher had committed
    try:
        with Load(gw.port, clients=3, max_requests=3000, max_seconds=30) as load, pg.connect() as conn:
            for _ in range(2):
                load.wait_acked(len(load.acked) + 600)
                flusher = flusher_pid(gw)
                deadline = time.monotonic() + 10
                committing: set[int] = set()
                while time.monotonic() < deadline and not committing:
                    committing = backends_in(conn, gw, "COMMIT")
                os.kill(flusher, signal.SIGKILL)
                assert committing, "no COMMIT seen to kill the flusher in"
                first, next_ = ring_inflight(gw)
                # the server finishes the COMMIT it was given (its client is gone); the
                # replacement cannot have committed anything yet (restart delay + 0.3 s commit)
                wait_for(
                    lambda c=committing: not backends_in(conn, gw, "COMMIT") & c,
                    timeout=5,
                    what="the killed flusher's COMMIT to finish",
                )
                (stored,) = conn.execute(
                    f"SELECT count(*) FROM {table} WHERE seq >= %s AND seq < %s", (first, next_)
                ).fetchone()
                if stored:
                    committed_before_replay.append((first, next_))
                wait_for(
                    lambda f=flusher: flusher_pid(gw) not in (None, f),
                    timeout=15,
                    what="the supervisor's replacement flusher",
                )
            load.wait_acked(len(load.acked) + 300)
        wait_for(lambda: delivered_everything(gw), timeout=30, what="delivery to catch up")
    finally:
        with pg.connect() as conn:  # fast commits again, for the drain
            conn.execute(f"DROP TRIGGER IF EXISTS slow_commit ON {table}")

    assert committed_before_replay, "no kill landed after a commit"
    with open(gw.log_path, "rb") as f:  # all of it: refusals under load push it past gw.log()'s tail
        log = f.read().decode(errors="replace")
    for first, next_ in committed_before_replay:
        assert f"replaying in-flight batch [{first}, {next_})" in log, log[-3000:]
    assert_no_id_twice(pg, table)
    assert_exactly_once(load.acked, [{"id": i} for i in ids_in_table(pg, table)])
    assert gw.stop() == 0


# -- 3. the database unreachable for longer than the ring absorbs ----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["proxy_cut", "server_stopped"])
def test_database_gone_mid_load_then_back(make_gateway, postgres_server, postgres_table, tcp_proxy, outage):
    pg, table = postgres_server, postgres_table
    if outage == "proxy_cut":
        proxy = tcp_proxy("127.0.0.1", pg.port)
        url = f"postgresql://{pg.user}@127.0.0.1:{proxy.port}/{pg.dbname}"
        begin, end = proxy.cut, proxy.restore
    else:
        url = pg.url
        begin, end = pg.stop, pg.start
    gw = pg_gateway(make_gateway, pg, table, url=url, RING_BYTES="256KiB", BATCH_RECORDS="500")
    probe = json.dumps([{"id": f"probe-{j}", "payload": "p" * 40} for j in range(100)]).encode()
    probed: list[str] = []
    try:
        with Load(gw.port, clients=4, max_requests=4000, max_seconds=25) as load:
            load.wait_acked(1000)
            # mid-load: the flusher is connected and has committed batches already
            wait_for(lambda: metric(gw, DELIVERED) >= 500, timeout=15, what="first deliveries")
            before = retries(gw)
            begin()
            try:
                wait_for(lambda: load.statuses.get(429, 0) > 0, timeout=15, what="clients to get 429")
                # a request of our own: 429 with Retry-After while the ring stays full
                for _ in range(50):
                    resp = gw.post(probe)
                    if resp.status == 429:
                        break
                    assert resp.status == 202, resp.body
                    probed += [f"probe-{j}" for j in range(100)]
                    time.sleep(0.05)
                assert resp.status == 429, resp.body
                assert resp.json()["error"] in ("ring_full", "low_priority")  # priority 0 meets the fill mark first
                assert int(resp.headers["retry-after"]) >= 1
                wait_for(lambda: retries(gw) >= before + 3, timeout=10, what="delivery retries")
                ready = gw.get("/readyz")
                assert ready.status == 503, ready.body
                reasons = ready.json()["reasons"]
                assert any("sink failing" in r and "postgresql" in r.lower() for r in reasons), reasons
            finally:
                if outage == "proxy_cut" or not pg.running:
                    end()
            n = len(load.acked)
            load.wait_acked(n + 1000, timeout=20)  # delivery resumed by itself: the ring has room again
    finally:
        if not pg.running:  # never leave the session's server down
            pg.start()
    wait_for(lambda: delivered_everything(gw), timeout=30, what="delivery to catch up")
    wait_for(lambda: gw.get("/readyz").status == 200, timeout=10, what="readyz after the outage")

    assert_no_id_twice(pg, table)
    stored = ids_in_table(pg, table)
    assert_exactly_once(load.acked + probed, [{"id": i} for i in stored])
    assert gw.stop() == 0


# -- 4. poisoned records: only those are dead-lettered ---------------------------------------------


DLQ_FIELDS = {"error", "sink", "attempts", "ring", "epoch", "seq", "record"}


def poisoned_request(tag: str, n: int, bad: set[int]) -> list[dict]:
    """Records of which those at `bad` hold a NUL (sent as the escape \\u0000) in a string value."""
    out = []
    for j in range(n):
        record = {"id": f"{tag}-{j}", "payload": f"value {j}", "nested": {"list": ["ok", j]}}
        if j in bad:
            where = j % 3
            if where == 0:
                record["payload"] = "before\x00after"
            elif where == 1:
                record["nested"]["list"][0] = "\x00"
            else:
                record["nested"]["deep"] = {"s": "x\x00"}
        out.append(record)
    return out


def test_poisoned_records_alone_are_dead_lettered(make_gateway, postgres_server, postgres_table, tmp_path):
    pg, table = postgres_server, postgres_table
    dlq = tmp_path / "dlq"
    gw = pg_gateway(make_gateway, pg, table, DLQ=f"file://{dlq}")
    requests = [
        ("clean1", [{"id": f"clean1-{j}", "payload": "fine"} for j in range(10)], ""),
        ("poison1", poisoned_request("poison1", 12, {2, 5, 11}), ""),
        ("clean2", [{"id": f"clean2-{j}", "payload": "fine too"} for j in range(7)], ""),
        ("poison2", poisoned_request("poison2", 5, {0, 4}), "?ack=commit"),
    ]
    sent = {}
    for tag, records, query_string in requests:
        body = b"[" + b",".join(map(compact, records)) + b"]"
        assert (b"\\u0000" in body) == tag.startswith("poison")  # the escape, valid JSON; no raw NUL
        assert b"\x00" not in body
        resp = gw.post(body, path="/v1/ingest" + query_string)
        assert resp.status == (200 if query_string else 202), resp.body
        if query_string:
            assert resp.json()["status"] == "dead_lettered", resp.body
        sent[tag] = (records, resp.json()["batch_id"])
    wait_for(lambda: delivered_everything(gw), timeout=20, what="delivery to PostgreSQL")

    poisoned = {r["id"]: r for records, _ in sent.values() for r in records if b"\\u0000" in compact(r)}
    good = [r for records, _ in sent.values() for r in records if r["id"] not in poisoned]
    assert len(poisoned) == 5

    stored = query(pg, f"SELECT record FROM {table}")
    assert_exactly_once([r["id"] for r in good], [r for (r,) in stored])
    assert len(stored) == len(good)
    assert {r["id"]: r for (r,) in stored} == {r["id"]: r for r in good}

    lines = file_sink_records(dlq)
    assert sorted(line["record"]["id"] for line in lines) == sorted(poisoned)
    for line in lines:
        assert set(line) == DLQ_FIELDS, line
        record = line["record"]
        assert record == poisoned[record["id"]]
        tag = record["id"].rsplit("-", 1)[0]
        records, batch_id = sent[tag]
        ring, epoch, first, _ = parse_batch_id(batch_id)
        position = positions_of(records, first)[[r["id"] for r in records].index(record["id"])]
        assert (line["ring"], line["epoch"], line["seq"]) == (ring, epoch, position), line
        assert line["sink"] == "postgresql"
        assert "22P05" in line["error"], line["error"]
        assert isinstance(line["attempts"], int) and line["attempts"] >= 1

    assert metric(gw, "ringgate_records_dead_lettered_total") == len(poisoned)
    assert metric(gw, DELIVERED) == len(good)
    for tag, (_, batch_id) in sent.items():
        resp = gw.get(f"/v1/batches/{batch_id}")
        assert resp.status == 200, resp.body
        assert resp.json() == {
            "batch_id": batch_id,
            "status": "dead_lettered" if tag.startswith("poison") else "committed",
        }
    assert gw.get("/readyz").status == 200
    assert gw.stop() == 0


def test_json_record_column_stores_what_jsonb_would_dead_letter(make_gateway, postgres_server, postgres_table,
                                                               tmp_path):
    """RINGGATE_PG_RECORD_TYPE=json: the table is made with a json record column, and records
    jsonb refuses (\u0000, a number past numeric's range) are stored as sent, none dead-lettered."""
    pg, table = postgres_server, postgres_table
    dlq = tmp_path / "dlq"
    gw = pg_gateway(make_gateway, pg, table, DLQ=f"file://{dlq}", PG_RECORD_TYPE="json")
    records = [
        b'{"id":"nul","v":"a\\u0000b"}',
        b'{"id":"huge","v":1e999999}',
        b'{"id":"plain","v":"h\xc3\xa9llo","n":[1,2.5,null]}',
    ]
    assert b"\\u0000" in records[0] and b"\x00" not in records[0]
    resp = gw.post(b"[" + b",".join(records) + b"]", path="/v1/ingest?ack=commit")
    assert resp.status == 200 and resp.json()["status"] == "committed", resp.body
    stored = query(pg, f"SELECT record::text FROM {table} ORDER BY seq")
    assert stored == [(r.decode(),) for r in records]
    (typ,) = query(pg, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                       f" WHERE attrelid = '{table}'::regclass AND attname = 'record'")[0]
    assert typ == "json"
    assert not dlq.exists() or file_sink_records(dlq) == []
    assert metric(gw, "ringgate_records_dead_lettered_total") == 0
    assert gw.stop() == 0


# -- 5. the dedup key, with and without monthly partitions ------------------------------------------


@pytest.mark.parametrize("partition", ["none", "month"])
def test_dedup_key_and_partitions(make_gateway, postgres_server, postgres_table, partition):
    pg, table = postgres_server, postgres_table
    gw = pg_gateway(make_gateway, pg, table, PG_DEDUP_KEY="event_id", PG_PARTITION=partition)
    # two requests, each committed before the next: the key table decides across batches
    resp = gw.post(
        [{"event_id": "e1", "v": "a1"}, {"event_id": "e2", "v": "a2"}, {"v": "no key a"}],
        path="/v1/ingest?ack=commit",
    )
    assert resp.status == 200 and resp.json()["status"] == "committed", resp.body
    resp = gw.post(
        [
            {"event_id": "e1", "v": "b1"},
            {"event_id": "e3", "v": "b3"},
            {"event_id": "e3", "v": "b3'"},
            {"v": "no key b"},
            {"event_id": None, "v": "null key"},
        ],
        path="/v1/ingest?ack=commit",
    )
    assert resp.status == 200 and resp.json()["status"] == "committed", resp.body
    # two requests back to back, most likely one batch: the first in ring order wins
    assert gw.post([{"event_id": "e4", "v": "c4"}]).status == 202
    assert gw.post([{"event_id": "e4", "v": "d4"}, {"event_id": "e2", "v": "d2"}]).status == 202
    wait_for(lambda: delivered_everything(gw), timeout=20, what="delivery to PostgreSQL")

    stored = sorted((r.get("event_id") or "", r["v"]) for (r,) in query(pg, f"SELECT record FROM {table}"))
    assert stored == sorted(
        [
            ("e1", "a1"),
            ("e2", "a2"),
            ("", "no key a"),
            ("e3", "b3"),
            ("", "no key b"),
            ("", "null key"),
            ("e4", "c4"),
        ]
    )
    assert sorted(k for (k,) in query(pg, f"SELECT key FROM {table}_dedup")) == ["e1", "e2", "e3", "e4"]

    partitioned = query(
        pg,
        "SELECT p.partstrat, pg_get_partkeydef(p.partrelid) FROM pg_partitioned_table p"
        " WHERE p.partrelid = to_regclass(%s)",
        (table,),
    )
    if partition == "none":
        assert partitioned == []
    else:
        assert partitioned == [("r", "RANGE (received_at)")]
        parts = {
            name
            for (name,) in query(
                pg,
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = to_regclass(%s)",
                (table,),
            )
        }
        now = datetime.now(UTC)
        this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        next_month = (this_month + timedelta(days=32)).replace(day=1)
        assert {f"{table}_p{this_month:%Y%m}", f"{table}_p{next_month:%Y%m}"} <= parts, parts
        # each row lives in the partition of its month (UTC)
        for part, received_at in query(pg, f"SELECT tableoid::regclass::text, received_at FROM {table}"):
            assert part == f"{table}_p{received_at.astimezone(UTC):%Y%m}"
        # the dedup table is not partitioned: it holds across months
        assert query(pg, "SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (f"{table}_dedup",)) == [
            ("r",)
        ]
    assert gw.stop() == 0


# -- 6. ?ack=commit: 200 only once the rows are visible --------------------------------------------


def test_ack_commit_answers_after_the_rows_are_visible(make_gateway, postgres_server, postgres_table):
    pg, table = postgres_server, postgres_table
    # a long flush interval: an answer that did not wait for the commit would come well before it
    gw = pg_gateway(make_gateway, pg, table, FLUSH_INTERVAL_MS="300")
    with pg.connect() as conn:
        for i in range(6):
            ids = [f"a{i}-{j}" for j in range(1 + 10 * i)]
            resp = gw.post([{"id": x, "i": i} for x in ids], path="/v1/ingest?ack=commit")
            # query right after the response, on a connection opened before it: autocommit, so
            # every statement sees what was committed before it started
            seen = conn.execute(
                f"SELECT count(*) FROM {table} WHERE record->>'id' = ANY(%s)", (ids,)
            ).fetchone()[0]
            assert resp.status == 200, resp.body
            body = resp.json()
            assert body["status"] == "committed" and body["accepted"] == len(ids), body
            assert seen == len(ids), f"request {i}: {seen} of {len(ids)} rows visible after the 200"
    assert gw.stop() == 0
