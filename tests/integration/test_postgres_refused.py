"""What records PostgreSQL refuses cost (DESIGN §5 and §9): one dead-letter object per batch, a
bounded number of transactions whatever the number of refused records, nothing dead-lettered
under two names or stored twice after a crash between the dead-letter write and the commit.

`screen`, the check that finds what jsonb will refuse before the COPY, is held against the
server's own verdict; what it cannot predict (here a CHECK constraint) is isolated with
savepoints inside the one transaction.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import psycopg
import pytest

from ringgate.ring import layout as L
from ringgate.sinks.base import Batch, Refused
from ringgate.sinks.postgres import PostgresCopySink, jsonb_refusal, screen
from tests.integration.test_gateway_postgres import (
    DLQ_FIELDS,
    align8,
    compact,
    flusher_pid,
    parse_batch_id,
    query,
    replays,
)
from tests.sinkdata import assert_exactly_once, file_sink_records, wait_for

# -- records jsonb refuses, as a client sends them ---------------------------------------------

REFUSED_KINDS = {
    # kind: (JSON text with {i} for the id, the SQLSTATE the server answers)
    "nul": ('{{"id":"{i}","s":"a\\u0000b"}}', "22P05"),
    "nul-in-key": ('{{"id":"{i}","nested":{{"k\\u0000":1}}}}', "22P05"),
    "huge-number": ('{{"id":"{i}","n":1e131072}}', "22003"),
    "tiny-number": ('{{"id":"{i}","n":[1,1.5e-16383]}}', "22003"),
}


def refused_record(kind: str, i: str) -> bytes:
    return REFUSED_KINDS[kind][0].format(i=i).encode()


def good_record(i: str) -> bytes:
    # near misses: an escaped backslash before u0000, a paired surrogate, a long exponent
    return compact({"id": i, "s": "\\u0000 \U0001f389", "n": 1, "m": [9.9e307, -0.0]}).replace(
        b'"m":', b'"edge":1e4000,"m":'
    )


def mixed(n_refused: int, n_good: int, tag: str = "r") -> tuple[list[bytes], list[str], list[str]]:
    """Refused and good records interleaved (every refused one between two good ones, as far as
    they go): the worst case for a bisection. Returns (payloads, refused ids, good ids)."""
    kinds = list(REFUSED_KINDS)
    payloads, refused, good = [], [], []
    for j in range(max(n_refused, n_good)):
        if j < n_good:
            good.append(f"{tag}-good-{j}")
            payloads.append(good_record(good[-1]))
        if j < n_refused:
            refused.append(f"{tag}-bad-{j}")
            payloads.append(refused_record(kinds[j % len(kinds)], refused[-1]))
    return payloads, refused, good


def xact_commits(pg) -> tuple[int, int]:
    """(transactions committed in the test database, what this call's own queries committed),
    once no other session is left and the count has settled: a session's statistics reach
    pg_stat_database at the latest when it ends. Each query here, on a connection of its own,
    commits a fixed number (starting a session commits one too), settled when two polls in a
    row move the count by the same amount; a value does not include its own query, so the work
    between two calls is `after - before - (own of the second call)`."""
    polls, values = 0, []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        polls += 1
        (others, commits), = query(
            pg,
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()),"
            " (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())",
        )
        values = values + [commits] if others == 0 else []
        if len(values) >= 3 and 0 < values[-1] - values[-2] == values[-2] - values[-3] <= 3:
            return commits, polls * (values[-1] - values[-2])
        time.sleep(0.1)
    raise AssertionError("other sessions still there, or pg_stat_database still moving, after 30 s")


def dead_letter_objects(dlq) -> list:
    return sorted(p for p in dlq.rglob("*.ndjson") if p.is_file())


# -- screen against the server ----------------------------------------------------------------

ACCEPTED = [
    '"\\\\u0000"', '"\\\\\\\\u0000"', '"\\ud83c\\udf89"', '"\\u00e9"', '1e131071', '9.9e131071', '0.1e131072',
    '-1e131071', '1e-16383', '0.00001e-16378', '1.5e-16382', '0e-16383', '-0.0', '1' + '0' * 131071,
    '0.' + '0' * 16382 + '1', '1.' + '0' * 16383, '123e0000000000000000000131069', '[1e+131071,"e12345"]',
    '{"a":"x","b":[1,2,{"c":"\\u0041"}]}', '1' + '0' * 20000,
]
REFUSED = [
    '"\\u0000"', '"\\\\\\u0000"', '{"\\u0000":1}', '{"a":1,"a":"\\u0000"}', '"\\ud800"', '"\\udc00"',
    '"\\ud800\\u0041"', '"\\udc00\\ud800"', '"\\uD800x"', '1e131072', '10e131071', '100e131070', '1e-16384',
    '1.5e-16383', '1.0e-16383', '0.00001e-16379', '0e-999999999', '1e2147483648', '1' + '0' * 131072,
    '0.' + '0' * 16383 + '1', '1.' + '0' * 16384, '[1,{"x":[0.01e131074]}]',
]


def server_verdict(postgres_server, text: str, column_type: str) -> str | None:
    """The SQLSTATE with which the server refuses `text` as `column_type`, None when it takes it."""
    with postgres_server.connect() as conn:
        try:
            conn.execute(f"SELECT %s::text::{column_type} IS NOT NULL", (text,))
        except Exception as exc:  # noqa: BLE001 - the server's verdict, whatever its class
            return exc.sqlstate
    return None


@pytest.mark.parametrize("text", ACCEPTED + REFUSED, ids=lambda t: t[:24] + (f"..{len(t)}" if len(t) > 24 else ""))
def test_screen_says_what_the_server_says(postgres_server, text):
    server = server_verdict(postgres_server, text, "jsonb")
    assert (server is None) == (text in ACCEPTED), f"the server answered {server}: fix this test's lists"
    predicted = jsonb_refusal(text.encode())
    assert (predicted and predicted[0]) == (server or None)
    # and the bulk pass over a batch points at it, among records it has nothing against
    batch = Batch.from_payloads([b'{"a":1}', f'{{"v":{text}}}'.encode(), b'{"e":"1e5000"}'])
    indices, reasons = screen(batch)
    # (not an unpaired surrogate: the HTTP worker refuses those, the bulk pass does not look)
    routed = server is not None and server != "22P02"
    assert indices.tolist() == ([1] if routed else [])
    assert [state for state, _ in reasons] == ([server] if routed else [])


def test_screen_leaves_hex_strings_alone_but_finds_every_number(monkeypatch):
    """Ids in hex (UUIDs, trace ids) hold "e" and 4 digits in a quarter of records: not numbers,
    so not sent to the exact check; a number past numeric's range is found wherever JSON allows
    it (after `:`, `,`, `[` and whitespace, signed, with a fraction)."""
    import ringgate.sinks.postgres as pg_sink

    checked = []
    exact = pg_sink.jsonb_refusal
    monkeypatch.setattr(pg_sink, "jsonb_refusal", lambda payload: checked.append(bytes(payload)) or exact(payload))
    hex_ids = [b'{"id":"%s","trace":"a1e2345f","n":3e4}' % f"{i:08d}-5e1234ab-9e99999".encode() for i in range(200)]
    numbers = [b'{"a": 1e999999}', b'{"a":[1,\n-2.5E+999999]}', b'{"a":\t0.1e-999999}', b'{"b":[7e00009]}']
    batch = Batch.from_payloads(hex_ids + numbers)
    indices, _ = screen(batch)
    assert indices.tolist() == [200, 201, 202]  # 7e00009 = 7e9 is in range
    assert checked == numbers


# -- the sink: one callback with every refused record, one transaction ----------------------------


@pytest.mark.parametrize("dedup", [False, True], ids=["plain", "dedup"])
def test_unpredicted_refusals_are_isolated_in_one_transaction(postgres_server, postgres_table, dedup):
    """A CHECK constraint `screen` knows nothing of refuses 100 records, interleaved with 100 good
    ones and 20 that jsonb refuses: one callback with all 120, the 100 stored once, one commit."""
    pg, table = postgres_server, postgres_table
    with pg.connect() as conn:
        conn.execute(
            f"CREATE TABLE {table} (ring smallint NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL,"
            f" received_at timestamptz NOT NULL, record jsonb NOT NULL CHECK (record->>'veto' IS NULL))"
        )
    payloads, expected = [], {}
    for j in range(100):
        # keyless records too: in dedup mode they pass the staging table on every part
        payloads.append(compact({"id": f"good-{j}", **({"event_id": f"e{j}"} if dedup and j % 2 else {})}))
        payloads.append(compact({"id": f"veto-{j}", "veto": True}))
        expected[len(payloads) - 1] = "23514"
        if j % 5 == 0:
            payloads.append(refused_record("nul", f"nul-{j}"))
            expected[len(payloads) - 1] = "22P05"
    batch = Batch.from_payloads(payloads, first_position=1000)
    sink = PostgresCopySink(pg.url, table=table, instance="test", dedup_key="event_id" if dedup else "")
    calls: list[Refused] = []
    try:
        before, _ = xact_commits(pg)
        sink.deliver(batch, dead_letter=lambda b, refused: calls.append(refused))
    finally:
        sink.close()
    after, own = xact_commits(pg)
    used = after - before - own

    assert len(calls) == 1
    assert calls[0].indices.tolist() == sorted(expected)
    assert [e.split("(")[1][:5] for e in calls[0].errors] == [expected[i] for i in sorted(expected)]
    ids = [i for (i,) in query(pg, f"SELECT record->>'id' FROM {table} ")]
    assert_exactly_once([f"good-{j}" for j in range(100)], [{"id": i} for i in ids])
    assert len(ids) == 100
    assert query(pg, f"SELECT committed_position FROM {table}_offsets")[0][0] == batch.last_position
    # connecting commits 3 (the session's start, its settings, the schema check) and in dedup
    # mode 2 more (the staging table made, and dropped when the session ends); the batch 1,
    # however many parts the isolation tried
    assert used == 4 + 2 * dedup, f"{used} transactions committed for one batch"


def test_a_dead_letter_failure_commits_nothing_and_a_retry_hands_over_the_same(postgres_server, postgres_table):
    pg, table = postgres_server, postgres_table
    payloads, refused_ids, good_ids = mixed(30, 30)
    batch = Batch.from_payloads(payloads)
    sink = PostgresCopySink(pg.url, table=table, instance="test")
    calls: list[np.ndarray] = []

    def failing(b, refused):
        calls.append(refused.indices)
        raise OSError("disk full")

    try:
        with pytest.raises(OSError, match="disk full"):
            sink.deliver(batch, dead_letter=failing)
        assert query(pg, f"SELECT count(*) FROM {table}")[0][0] == 0
        sink.deliver(batch, dead_letter=lambda b, refused: calls.append(refused.indices))
        sink.deliver(batch, dead_letter=lambda b, refused: calls.append(refused.indices))  # replayed: no-op
    finally:
        sink.close()
    assert len(calls) == 2 and calls[0].tolist() == calls[1].tolist() == list(range(1, 60, 2))
    assert sorted(i for (i,) in query(pg, f"SELECT record->>'id' FROM {table}")) == sorted(good_ids)


# -- through `ringgate serve` --------------------------------------------------------------------


@pytest.mark.parametrize("n_refused", [200])
def test_refused_records_cost_one_dead_letter_object_and_a_few_transactions(
    make_gateway, postgres_server, postgres_table, tmp_path, n_refused
):
    """200 refused and 200 good records in one request. The bound on transactions: the
    flusher's connection commits 3 (the session's start, its settings, the schema check), the
    batch 1, whatever the number of records; the split-and-retry isolation this replaced
    committed one per good piece (here 200)."""
    pg, table = postgres_server, postgres_table
    dlq = tmp_path / "dlq"
    gw = make_gateway(SINK=pg.url, PG_TABLE=table, DLQ=f"file://{dlq}")
    payloads, refused_ids, good_ids = mixed(n_refused, 200)
    body = b"[" + b",".join(payloads) + b"]"
    before, _ = xact_commits(pg)
    resp = gw.post(body, path="/v1/ingest?ack=commit")
    assert resp.status == 200, resp.body
    assert resp.json()["status"] == "dead_lettered"
    batch_id = resp.json()["batch_id"]
    assert gw.stop() == 0
    after, own = xact_commits(pg)
    used = after - before - own
    assert used <= 4, f"{used} transactions for one request of {len(payloads)} records"

    stored = [r for (r,) in query(pg, f"SELECT record FROM {table}")]
    assert_exactly_once(good_ids, stored)
    assert len(stored) == len(good_ids)

    objects = dead_letter_objects(dlq)
    assert 1 <= len(objects) <= 16, objects
    lines = file_sink_records(dlq)
    assert sorted(line["record"]["id"] for line in lines) == sorted(refused_ids)
    ring, epoch, first, _ = parse_batch_id(batch_id)
    records = [json.loads(p) for p in payloads]
    # ring positions: consecutive, each align8(record header + payload as sent)
    lengths = [align8(L.RECORD_HEADER_LENGTH + len(p)) for p in payloads]
    position = {r["id"]: first + sum(lengths[:k]) for k, r in enumerate(records)}
    sent = {r["id"]: r for r in records}
    for line in lines:
        assert set(line) == DLQ_FIELDS, line
        assert line["record"] == sent[line["record"]["id"]]
        assert (line["ring"], line["epoch"], line["seq"]) == (ring, epoch, position[line["record"]["id"]])
        kind = list(REFUSED_KINDS)[int(line["record"]["id"].rsplit("-", 1)[1]) % len(REFUSED_KINDS)]
        assert f"({REFUSED_KINDS[kind][1]})" in line["error"], line


def test_sigkill_between_the_dead_letter_write_and_the_commit(make_gateway, postgres_server, postgres_table, tmp_path):
    """The flusher is held (a SHARE lock on the offsets table stops its UPDATE) after it wrote the
    dead letters and COPYed the rest, and killed there. Its replacement replays the batch: the
    same dead-letter object rewritten, no other, and every good record stored once."""
    pg, table = postgres_server, postgres_table
    dlq = tmp_path / "dlq"
    # one flusher, ring 0's: the one this test holds and kills
    gw = make_gateway(SINK=pg.url, PG_TABLE=table, DLQ=f"file://{dlq}", FLUSHERS="1")
    resp = gw.post(b'[{"id":"warm"}]', path="/v1/ingest?ack=commit")  # the offsets row exists
    assert resp.status == 200, resp.body
    payloads, refused_ids, good_ids = mixed(50, 50)
    with psycopg.connect(pg.url) as blocker:
        blocker.execute(f"LOCK TABLE {table}_offsets IN SHARE MODE")
        flusher = flusher_pid(gw)
        resp = gw.post(b"[" + b",".join(payloads) + b"]")
        assert resp.status == 202, resp.body
        wait_for(lambda: dead_letter_objects(dlq), timeout=20, what="the dead-letter object")
        written = dead_letter_objects(dlq)
        wait_for(
            lambda: query(
                pg, "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                (f"ringgate {gw.instance}"[:63],),
            ),
            timeout=20,
            what="the flusher waiting to move the offset",
        )
        os.kill(flusher, signal.SIGKILL)
        wait_for(lambda: flusher_pid(gw) not in (None, flusher), timeout=15, what="a new flusher")
        blocker.rollback()
    wait_for(lambda: gw.get("/readyz").json()["rings"][0]["committed_position"]
             >= gw.get("/readyz").json()["rings"][0]["producer_position"], timeout=30, what="the replay")
    assert replays(gw) == [len(payloads)], gw.log()
    assert dead_letter_objects(dlq) == written
    lines = file_sink_records(dlq)
    assert sorted(line["record"]["id"] for line in lines) == sorted(refused_ids)
    stored = [r for (r,) in query(pg, f"SELECT record FROM {table} WHERE record->>'id' <> 'warm'")]
    assert_exactly_once(good_ids, stored)
    assert len(stored) == len(good_ids)
    assert gw.stop() == 0


# -- a json record column: what it refuses -------------------------------------------------------

#: what json refuses of the texts above: nothing. It checks the syntax and keeps the text:
#: \u0000, numbers past numeric's range, even a surrogate escape not in a pair (which the HTTP
#: worker refuses before anything reaches a ring)
JSON_REFUSED: list[str] = []


@pytest.mark.parametrize("text", ACCEPTED + REFUSED, ids=lambda t: t[:24] + (f"..{len(t)}" if len(t) > 24 else ""))
def test_json_takes_every_text_jsonb_refuses(postgres_server, text):
    server = server_verdict(postgres_server, text, "json")
    assert (server is not None) == (text in JSON_REFUSED), f"the server answered {server}: fix JSON_REFUSED"


def test_json_column_stores_the_text_as_sent_and_refuses_nothing_jsonb_would(postgres_server, postgres_table):
    """A json sink: records jsonb refuses (\\u0000, numbers past numeric's range) are stored, byte
    for byte; nothing is predicted refused, nothing dead-lettered; the table is made json."""
    pg, table = postgres_server, postgres_table
    texts = [t for t in ACCEPTED + REFUSED if t not in JSON_REFUSED]
    payloads = [f'{{"i":{i},"v":{t}}}'.encode() for i, t in enumerate(texts)]
    batch = Batch.from_payloads(payloads, first_position=64)
    sink = PostgresCopySink(pg.url, table=table, instance="test", record_type="json")
    calls: list[Refused] = []
    try:
        sink.deliver(batch, dead_letter=lambda b, refused: calls.append(refused))
    finally:
        sink.close()
    assert calls == []
    rows = query(pg, f"SELECT seq, record::text FROM {table} ORDER BY seq")
    assert rows == [(int(p), t.decode()) for p, t in zip(batch.positions, payloads, strict=True)]
    assert query(pg, f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                     f" WHERE attrelid = '{table}'::regclass AND attname = 'record'") == [("json",)]
    # the same records into jsonb: the ones jsonb refuses go to the dead letters
    sink = PostgresCopySink(pg.url, table=table + "_b", instance="test")
    try:
        sink.deliver(batch, dead_letter=lambda b, refused: calls.append(refused))
    finally:
        sink.close()
    # (but an unpaired surrogate, which `screen` leaves to the server and the worker refuses)
    assert len(calls) == 1 and len(calls[0].indices) == len(REFUSED)
