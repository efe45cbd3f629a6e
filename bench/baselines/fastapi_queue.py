"""The baseline, built the way most teams would: FastAPI on uvicorn workers, an asyncio.Queue, and a
batch task per worker that writes NDJSON files or COPYs into PostgreSQL.

    BENCH_SINK=file:///tmp/out uvicorn fastapi_queue:app --app-dir bench/baselines \
        --workers 2 --loop uvloop --http httptools --no-access-log

A competent version, not a strawman: the body is decoded with msgspec into `Raw` records (no
Python objects per record, no re-encoding), 202 as soon as the records are queued (in process
memory: lost if the worker dies, unlike ringgate's shared-memory rings), a bounded queue that
answers 429 when full, batches of BENCH_BATCH_RECORDS records or BENCH_FLUSH_MS, written from a
thread so the event loop keeps serving, and drained on shutdown (lifespan). PostgreSQL: psycopg 3
binary COPY with `set_types` and `write_row`, the fastest per-row psycopg method measured here
(MEASUREMENTS.md), into a table with ringgate's columns.

Environment: BENCH_SINK (file:///dir or postgresql://...), BENCH_PG_TABLE (bench_baseline_events),
BENCH_BATCH_RECORDS (10000), BENCH_FLUSH_MS (200), BENCH_QUEUE_RECORDS (400000 per worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from datetime import UTC, datetime, timedelta

import msgspec
from fastapi import FastAPI, Request, Response

SINK = os.environ.get("BENCH_SINK", "file://./baseline-data")
PG_TABLE = os.environ.get("BENCH_PG_TABLE", "bench_baseline_events")
BATCH_RECORDS = int(os.environ.get("BENCH_BATCH_RECORDS", "10000"))
FLUSH_S = int(os.environ.get("BENCH_FLUSH_MS", "200")) / 1000
QUEUE_RECORDS = int(os.environ.get("BENCH_QUEUE_RECORDS", "400000"))


class Envelope(msgspec.Struct):
    records: list[msgspec.Raw]


_decode = msgspec.json.Decoder(Envelope).decode


class FileSink:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.names = (f"{os.getpid()}-{time.time_ns()}-{i:08d}" for i in itertools.count())

    def write(self, batch: list[tuple[int, list[msgspec.Raw]]]) -> None:
        data = b"\n".join(itertools.chain.from_iterable(records for _, records in batch)) + b"\n"
        path = os.path.join(self.directory, next(self.names))
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path + ".ndjson")

    def close(self) -> None:
        pass


class PostgresSink:
    def __init__(self, url: str) -> None:
        import psycopg
        from psycopg.types.json import set_json_dumps

        self.conn = psycopg.connect(url)
        set_json_dumps(lambda obj: obj, context=self.conn)  # the records are JSON text already
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(42)")
            self.conn.execute(
                f"CREATE TABLE IF NOT EXISTS {PG_TABLE} (ring smallint NOT NULL, epoch bigint NOT NULL,"
                " seq bigint NOT NULL, received_at timestamptz NOT NULL, record jsonb NOT NULL, instance text)"
            )
        self.instance = f"baseline-{os.getpid()}"  # ringgate's rows name their gateway too
        self.ring = os.getpid() & 0x7FFF
        self.epoch = time.time_ns()
        self.seq = 0

    def write(self, batch: list[tuple[int, list[msgspec.Raw]]]) -> None:
        unix = datetime(1970, 1, 1, tzinfo=UTC)
        with self.conn.transaction(), self.conn.cursor() as cur:
            with cur.copy(
                f"COPY {PG_TABLE} (instance, ring, epoch, seq, received_at, record) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["text", "int2", "int8", "int8", "timestamptz", "jsonb"])
                for received_ns, records in batch:
                    received_at = unix + timedelta(microseconds=received_ns // 1000)
                    for record in records:
                        self.seq += 1
                        copy.write_row((self.instance, self.ring, self.epoch, self.seq, received_at, bytes(record)))

    def close(self) -> None:
        self.conn.close()


class State:
    queue: asyncio.Queue
    pending = 0  # records queued or being written
    task: asyncio.Task | None = None
    sink: FileSink | PostgresSink


state = State()


def _make_sink():
    if SINK.startswith(("postgresql://", "postgres://")):
        return PostgresSink(SINK)
    path = SINK.removeprefix("file://")
    return FileSink(os.path.abspath(path))


async def _batcher() -> None:
    loop = asyncio.get_running_loop()
    queue = state.queue
    stopping = False
    while not stopping:
        item = await queue.get()
        if item is None:
            break
        batch = [item]
        count = len(item[1])
        deadline = loop.time() + FLUSH_S
        while count < BATCH_RECORDS:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(0.005)
                continue
            if item is None:
                stopping = True
                break
            batch.append(item)
            count += len(item[1])
        while True:
            try:
                await asyncio.to_thread(state.sink.write, batch)
                break
            except Exception as exc:  # noqa: BLE001 - retry: the records are acknowledged
                print(f"baseline sink write failed, retrying: {exc!r}", flush=True)
                await asyncio.sleep(0.5)
        state.pending -= count


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    state.queue = asyncio.Queue()
    state.sink = _make_sink()
    state.task = asyncio.create_task(_batcher())
    yield
    state.queue.put_nowait(None)  # drain: everything acknowledged is written before we exit
    await state.task
    state.sink.close()


app = FastAPI(lifespan=lifespan)


@app.post("/v1/ingest")
async def ingest(request: Request) -> Response:
    received_ns = time.time_ns()
    body = await request.body()
    try:
        records = _decode(body).records
    except (msgspec.DecodeError, RecursionError) as exc:
        return Response(b'{"error":"invalid_json","detail":%s}' % msgspec.json.encode(str(exc)),
                        status_code=400, media_type="application/json")
    n = len(records)
    if n == 0:
        return Response(b'{"error":"empty_body"}', status_code=400, media_type="application/json")
    if state.pending + n > QUEUE_RECORDS:
        return Response(b'{"error":"overloaded"}', status_code=429, media_type="application/json",
                        headers={"Retry-After": "1"})
    state.pending += n
    state.queue.put_nowait((received_ns, records))
    return Response(b'{"accepted":%d}' % n, status_code=202, media_type="application/json")
