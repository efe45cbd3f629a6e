"""ObjectStoreSink and DeadLetterStore against a real S3-protocol server (moto, its own process,
on loopback) and real local files. No mocks: faults are real (a TCP proxy that cuts, a bucket
that does not exist, a path whose parent is a regular file, a server that enforces credentials)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import numpy as np
import obstore
import pytest
import zstandard

from ringgate.deadletter import DeadLetterStore
from ringgate.errors import ConfigurationError, PermanentSinkError, RetryableSinkError, SinkError
from ringgate.sinks.base import Batch
from ringgate.sinks.objstore import MIB, ObjectStoreSink, open_store
from tests.fixtures.s3 import S3Server

NS = 1_000_000_000
REPO = str(Path(__file__).resolve().parents[2])
# 2025-03-09 23:59:59.5 UTC: a batch that starts here belongs to that day and hour
LATE_NS = int(datetime(2025, 3, 9, 23, 59, 59, tzinfo=UTC).timestamp()) * NS + NS // 2


def make_batch(
    count: int,
    *,
    tag: str = "r",
    first_position: int = 0,
    received_ns: int = LATE_NS,
    pad: int = 100,
    instance: str = "ringgate-8080",
    ring: int = 0,
    epoch: int = 1_741_564_800_000_000_000,
) -> Batch:
    payloads = [msgspec.json.encode({"id": f"{tag}-{i}", "pad": "x" * pad}) for i in range(count)]
    return Batch.from_payloads(
        payloads,
        instance=instance,
        ring=ring,
        epoch=epoch,
        first_position=first_position,
        received_ns=received_ns,
    )


def random_batch(nbytes: int, *, tag: str = "big", first_position: int = 0) -> Batch:
    """~nbytes of records whose text compresses about 2:1 (hex of random bytes)."""
    count = nbytes // 1000
    rng = np.random.default_rng(12345)
    payloads = [msgspec.json.encode({"id": f"{tag}-{i}", "blob": rng.bytes(480).hex()}) for i in range(count)]
    return Batch.from_payloads(payloads, instance="ringgate-8080", first_position=first_position)


def expected_key(batch: Batch, prefix: str, suffix: str = ".ndjson") -> str:
    when = datetime.fromtimestamp(int(batch.received_ns[0]) / NS, UTC)
    name = f"{batch.instance}-{batch.ring}-{batch.epoch}-{int(batch.positions[0])}-{int(batch.positions[-1])}"
    key = f"dt={when:%Y-%m-%d}/hour={when:%H}/{name}{suffix}"
    return f"{prefix}/{key}" if prefix else key


def ids(content: bytes) -> list[str]:
    assert content.endswith(b"\n")
    return [json.loads(line)["id"] for line in content.splitlines()]


def local_objects(root: str) -> dict[str, bytes]:
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def three_batches() -> list[Batch]:
    """Consecutive ring ranges; the last starts at 23:59:59.5 and runs into the next day."""
    a = make_batch(500, tag="a", first_position=0, received_ns=LATE_NS - 3 * 3600 * NS)
    b = make_batch(700, tag="b", first_position=a.next_position, received_ns=LATE_NS - 60 * NS)
    c = make_batch(300, tag="c", first_position=b.next_position)
    later = np.arange(c.count, dtype=np.int64) * (NS // 100) + LATE_NS  # crosses midnight
    c = dataclasses.replace(c, received_ns=later)
    assert datetime.fromtimestamp(int(c.received_ns[-1]) / NS, UTC).day == 10
    return [a, b, c]


# -- records to objects ---------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["events/raw", ""])
def test_s3_every_record_once_under_documented_keys(s3_server, s3_bucket, s3_env, prefix):
    url = f"s3://{s3_bucket}/{prefix}" if prefix else f"s3://{s3_bucket}"
    sink = ObjectStoreSink(url)
    assert sink.name == "s3"
    batches = three_batches()
    for batch in batches:
        sink.deliver(batch)

    objects = s3_server.objects(s3_bucket)
    assert sorted(objects) == sorted(expected_key(b, prefix) for b in batches)
    assert expected_key(batches[2], prefix).endswith(
        "dt=2025-03-09/hour=23/ringgate-8080-0-1741564800000000000-76800-95936.ndjson"
    )
    assert not any(key.startswith("/") for key in objects)
    for batch in batches:
        assert objects[expected_key(batch, prefix)] == bytes(batch.ndjson())
    every = [i for content in objects.values() for i in ids(content)]
    assert len(every) == len(set(every)) == sum(b.count for b in batches)

    # a retried or replayed batch overwrites its own object
    sink.deliver(batches[1])
    again = s3_server.objects(s3_bucket)
    assert again == objects


def test_file_every_record_once_under_documented_keys(tmp_path):
    root = tmp_path / "data"
    sink = ObjectStoreSink(f"file://{root}/events")
    assert sink.name == "file"
    batches = three_batches()
    for batch in batches:
        sink.deliver(batch)
    objects = local_objects(str(root))
    assert sorted(objects) == sorted(expected_key(b, "events") for b in batches)
    every = [i for content in objects.values() for i in ids(content)]
    assert len(every) == len(set(every)) == sum(b.count for b in batches)
    for batch in batches:
        assert objects[expected_key(batch, "events")] == bytes(batch.ndjson())

    sink.deliver(batches[0])
    assert local_objects(str(root)) == objects  # overwritten in place: no temp files left either


def test_file_relative_url_is_resolved_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sink = ObjectStoreSink("file://./ringgate-data")
    monkeypatch.chdir("/")  # resolved once, when the sink was made
    batch = make_batch(10)
    sink.deliver(batch)
    assert local_objects(str(tmp_path / "ringgate-data")) == {expected_key(batch, ""): bytes(batch.ndjson())}


def test_memory_store_round_trip():
    sink = ObjectStoreSink("memory:///pre")
    batch = make_batch(20)
    sink.deliver(batch)
    store, prefix = sink._store, sink.prefix
    assert prefix == "pre"
    assert bytes(obstore.get(store, expected_key(batch, "pre")).bytes()) == bytes(batch.ndjson())


# -- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_s3_compressed_objects_read_with_standard_tools(s3_server, s3_bucket, s3_env, compression):
    suffix = {"gzip": ".ndjson.gz", "zstd": ".ndjson.zst"}[compression]
    sink = ObjectStoreSink(f"s3://{s3_bucket}/c", compression=compression, part_bytes=5 * MIB)
    small = make_batch(1000)
    big = random_batch(13 * MIB, first_position=small.next_position)  # > part after compression
    for batch in (small, big):
        sink.deliver(batch)
    objects = s3_server.objects(s3_bucket)
    assert sorted(objects) == sorted(expected_key(b, "c", suffix) for b in (small, big))
    head = s3_server.client.head_object(Bucket=s3_bucket, Key=expected_key(big, "c", suffix))
    assert head["ETag"].strip('"').endswith("-2")  # ~6.7 MB compressed: two 5+ MiB parts
    for batch in (small, big):
        content = objects[expected_key(batch, "c", suffix)]
        if compression == "gzip":
            plain = gzip.decompress(content)
        else:
            plain = zstandard.ZstdDecompressor().decompress(content)
        assert plain == bytes(batch.ndjson())


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_file_compressed_objects_read_with_command_line_tools(tmp_path, compression):
    sink = ObjectStoreSink(f"file://{tmp_path}", compression=compression, part_bytes=5 * MIB)
    batch = random_batch(12 * MIB)
    sink.deliver(batch)
    suffix = {"gzip": ".ndjson.gz", "zstd": ".ndjson.zst"}[compression]
    path = tmp_path / expected_key(batch, "", suffix)
    content = path.read_bytes()
    if compression == "gzip":
        assert gzip.decompress(content) == bytes(batch.ndjson())
    else:
        assert zstandard.ZstdDecompressor().decompress(content) == bytes(batch.ndjson())
    tool = {"gzip": "gzip", "zstd": "zstd"}[compression]
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} command not installed")
    out = subprocess.run([tool, "-d", "-c", str(path)], capture_output=True, check=True).stdout
    assert out == bytes(batch.ndjson())


def test_compressed_redelivery_is_byte_identical(tmp_path):
    """gzip without mtime or name: the same batch gives the same object, so a replay is a no-op."""
    sink = ObjectStoreSink(f"file://{tmp_path}", compression="gzip")
    batch = make_batch(2000)
    sink.deliver(batch)
    first = local_objects(str(tmp_path))
    time.sleep(1.1)
    sink.deliver(batch)
    assert local_objects(str(tmp_path)) == first


# -- multipart ------------------------------------------------------------------------------


def test_s3_batch_larger_than_a_part_goes_up_in_parts(s3_server, s3_bucket, s3_env):
    sink = ObjectStoreSink(f"s3://{s3_bucket}/mp", part_bytes=5 * MIB)
    batch = make_batch(12 * MIB // 128, pad=100)
    assert 11 * MIB < len(batch.ndjson()) < 13 * MIB
    sink.deliver(batch)
    key = expected_key(batch, "mp")
    head = s3_server.client.head_object(Bucket=s3_bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-3")  # moto's multipart ETag: md5-of-md5s-<parts>
    assert head["ContentType"] == "application/x-ndjson"
    assert s3_server.objects(s3_bucket) == {key: bytes(batch.ndjson())}
    assert s3_server.multipart_uploads(s3_bucket) == []

    # exactly one part's worth is a single PUT (plain md5 ETag)
    one_part = make_batch(1)
    exact = Batch.from_payloads(
        [b'{"p":"' + b"y" * (5 * MIB - 9) + b'"}'], instance="exact", received_ns=LATE_NS
    )
    assert len(exact.ndjson()) == 5 * MIB
    for b in (one_part, exact):
        sink.deliver(b)
        etag = s3_server.client.head_object(Bucket=s3_bucket, Key=expected_key(b, "mp"))["ETag"]
        assert "-" not in etag


def test_file_batch_larger_than_a_part(tmp_path):
    sink = ObjectStoreSink(f"file://{tmp_path}", part_bytes=5 * MIB)
    batch = make_batch(12 * MIB // 128)
    sink.deliver(batch)
    assert local_objects(str(tmp_path)) == {expected_key(batch, ""): bytes(batch.ndjson())}


def _when_upload_starts(server: S3Server, bucket: str, action, *, timeout: float = 20.0) -> threading.Thread:
    """Run action(upload) from a thread as soon as a multipart upload shows in the bucket."""
    client = server.client_for(server.endpoint)  # boto3 clients are not shared across threads
    seen: list[dict] = []

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            if uploads:
                seen.append(uploads[0])
                action(client, uploads[0])
                return
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    thread.seen = seen  # type: ignore[attr-defined]
    return thread


def test_upload_the_server_forgot_starts_again_from_the_first_part(s3_server, s3_bucket, s3_env):
    sink = ObjectStoreSink(f"s3://{s3_bucket}/nsu", part_bytes=5 * MIB)
    batch = make_batch(40 * MIB // 128)  # 8 parts, uploaded one at a time: plenty of time to abort
    key = expected_key(batch, "nsu")

    def forget(client, upload):
        client.abort_multipart_upload(Bucket=s3_bucket, Key=upload["Key"], UploadId=upload["UploadId"])

    watcher = _when_upload_starts(s3_server, s3_bucket, forget)
    with pytest.raises(RetryableSinkError, match="NoSuchUpload") as caught:
        sink.deliver(batch)
    watcher.join()
    assert watcher.seen and watcher.seen[0]["Key"] == key
    assert "starts again from the first part" in str(caught.value)
    assert s3_server.objects(s3_bucket) == {}

    sink.deliver(batch)  # the flusher's retry: a new upload, from part 1
    assert s3_server.objects(s3_bucket) == {key: bytes(batch.ndjson())}
    head = s3_server.client.head_object(Bucket=s3_bucket, Key=key)
    assert head["ETag"].strip('"').endswith("-8")
    assert s3_server.multipart_uploads(s3_bucket) == []


# -- outages --------------------------------------------------------------------------------


#: what the sink says when the proxy resets connections: before or after the request went out
OUTAGE = r"cannot connect to the endpoint \(connection reset by peer\)|connection to the endpoint was lost"


def _proxied_env(monkeypatch, s3_server: S3Server, proxy) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")


def test_server_unreachable_before_a_multipart_upload(s3_server, s3_bucket, tcp_proxy, monkeypatch):
    proxy = tcp_proxy("127.0.0.1", s3_server.port)
    _proxied_env(monkeypatch, s3_server, proxy)
    sink = ObjectStoreSink(f"s3://{s3_bucket}/cut", part_bytes=5 * MIB)
    batch = make_batch(12 * MIB // 128)
    proxy.cut()
    with pytest.raises(RetryableSinkError) as caught:
        sink.deliver(batch)
    assert not isinstance(caught.value, PermanentSinkError)
    assert re.search(OUTAGE, str(caught.value))
    proxy.restore()
    sink.deliver(batch)
    assert s3_server.objects(s3_bucket) == {expected_key(batch, "cut"): bytes(batch.ndjson())}
    assert s3_server.multipart_uploads(s3_bucket) == []


def test_server_unreachable_during_a_single_put(s3_server, s3_bucket, tcp_proxy, monkeypatch):
    proxy = tcp_proxy("127.0.0.1", s3_server.port)
    _proxied_env(monkeypatch, s3_server, proxy)
    sink = ObjectStoreSink(f"s3://{s3_bucket}/cut")
    batch = make_batch(1000)
    proxy.cut()
    with pytest.raises(RetryableSinkError, match=OUTAGE):
        sink.deliver(batch)
    proxy.restore()
    sink.deliver(batch)
    assert s3_server.objects(s3_bucket) == {expected_key(batch, "cut"): bytes(batch.ndjson())}


def test_server_unreachable_mid_upload(s3_server, s3_bucket, tcp_proxy, monkeypatch):
    """The proxy is cut while parts are in flight and stays down while the sink fails.

    The abort cannot reach the server either, and obstore 0.12 offers no later abort or listing:
    the sink says an incomplete upload may remain (a bucket lifecycle rule expires it). Either
    way no object appears until the retried deliver, which writes the whole batch once."""
    proxy = tcp_proxy("127.0.0.1", s3_server.port)
    _proxied_env(monkeypatch, s3_server, proxy)
    sink = ObjectStoreSink(f"s3://{s3_bucket}/cut", part_bytes=5 * MIB, timeout_s=5)
    batch = make_batch(30 * MIB // 128)
    key = expected_key(batch, "cut")

    watcher = _when_upload_starts(s3_server, s3_bucket, lambda client, upload: proxy.cut())
    with pytest.raises(RetryableSinkError) as caught:
        sink.deliver(batch)
    watcher.join()
    assert watcher.seen, "the upload never started"
    message = str(caught.value)
    assert key in message and re.search(OUTAGE, message)
    assert s3_server.objects(s3_bucket) == {}  # no partial object
    leftovers = s3_server.multipart_uploads(s3_bucket)
    if leftovers:  # the abort could not get through the cut: said so, and nothing else is left
        assert "an incomplete upload may remain" in message
        assert [u["Key"] for u in leftovers] == [key]
    left_before = {u["UploadId"] for u in leftovers}

    proxy.restore()
    sink.deliver(batch)
    assert s3_server.objects(s3_bucket) == {key: bytes(batch.ndjson())}
    # the retry's own upload completed: only the one the cut stranded (if any) is listed
    assert {u["UploadId"] for u in s3_server.multipart_uploads(s3_bucket)} == left_before


def test_connection_reset_mid_upload_is_retried_by_the_flusher(s3_server, s3_bucket, tcp_proxy, monkeypatch):
    """A brief blip (connections reset, new ones accepted at once): obstore's one retry or the
    flusher's next attempt gets the batch through, and every upload is completed or aborted.
    A connection the cut leaves stalled instead is bounded by the request timeout (timeout_s)."""
    proxy = tcp_proxy("127.0.0.1", s3_server.port)
    _proxied_env(monkeypatch, s3_server, proxy)
    sink = ObjectStoreSink(f"s3://{s3_bucket}/blip", part_bytes=5 * MIB, timeout_s=5)
    batch = make_batch(30 * MIB // 128)

    def blip(client, upload):
        time.sleep(0.05)  # a part in flight
        proxy.cut()
        proxy.restore()

    watcher = _when_upload_starts(s3_server, s3_bucket, blip)
    for _attempt in range(5):  # what the flusher does, minus the backoff
        try:
            sink.deliver(batch)
            break
        except RetryableSinkError:
            continue
    watcher.join()
    assert s3_server.objects(s3_bucket) == {expected_key(batch, "blip"): bytes(batch.ndjson())}
    assert s3_server.multipart_uploads(s3_bucket) == []


def test_nothing_listening(s3_bucket, s3_env, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    sink = ObjectStoreSink(f"s3://{s3_bucket}")
    with pytest.raises(RetryableSinkError, match="connection refused"):
        sink.deliver(make_batch(5))


def test_http_endpoint_without_allow_http_names_the_variable(s3_bucket, s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    sink = ObjectStoreSink(f"s3://{s3_bucket}")
    with pytest.raises(RetryableSinkError, match="AWS_ALLOW_HTTP=true"):
        sink.deliver(make_batch(5))


# -- configuration faults: retried, and named ----------------------------------------------


@pytest.mark.parametrize("size", [1000, 12 * MIB // 128])
def test_missing_bucket_names_the_bucket(s3_env, size):
    sink = ObjectStoreSink("s3://no-such-bucket-here/x", part_bytes=5 * MIB)
    with pytest.raises(RetryableSinkError) as caught:
        sink.deliver(make_batch(size))
    message = str(caught.value)
    assert "no-such-bucket-here" in message and "bucket does not exist" in message


def test_bucket_created_later_is_then_used(s3_server, s3_env):
    sink = ObjectStoreSink("s3://created-later/x")
    batch = make_batch(10)
    with pytest.raises(RetryableSinkError, match="created-later"):
        sink.deliver(batch)
    s3_server.make_bucket("created-later")
    sink.deliver(batch)
    assert list(s3_server.objects("created-later")) == [expected_key(batch, "x")]


def test_permission_denied_is_retryable_and_named(monkeypatch):
    # moto enforces credentials after this many unauthenticated actions (bucket creation)
    server = S3Server(extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "1"})
    try:
        server.make_bucket("locked")
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        sink = ObjectStoreSink("s3://locked/x")
        with pytest.raises(RetryableSinkError, match=r"permission denied \(403"):
            sink.deliver(make_batch(10))
    finally:
        server.stop()


def test_file_directory_under_a_regular_file(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    sink = ObjectStoreSink(f"file://{blocker}/data")  # made anyway: the fault may be fixed later
    batch = make_batch(10)
    with pytest.raises(RetryableSinkError) as caught:
        sink.deliver(batch)
    assert "ENOTDIR" in str(caught.value) and str(blocker) in str(caught.value)
    blocker.unlink()  # the operator fixes it; the flusher's next attempt succeeds
    sink.deliver(batch)
    assert local_objects(str(blocker / "data")) == {expected_key(batch, ""): bytes(batch.ndjson())}


def test_file_partition_path_taken_by_a_regular_file(tmp_path):
    sink = ObjectStoreSink(f"file://{tmp_path}")
    batch = make_batch(10)
    (tmp_path / "dt=2025-03-09").write_bytes(b"in the way")
    with pytest.raises(RetryableSinkError, match="file sink could not write dt=2025-03-09/hour=23/"):
        sink.deliver(batch)
    (tmp_path / "dt=2025-03-09").unlink()
    sink.deliver(batch)
    assert local_objects(str(tmp_path)) == {expected_key(batch, ""): bytes(batch.ndjson())}


@pytest.mark.parametrize("size", [10_000, 12 * MIB // 128])
def test_file_system_full(tmp_path, size):
    """A real full file system (1 MiB tmpfs; needs mount privileges, else skipped)."""
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        sink = ObjectStoreSink(f"file://{full}", part_bytes=5 * MIB)
        with pytest.raises(RetryableSinkError, match=r"no space left on device \(ENOSPC\)"):
            sink.deliver(make_batch(size))
        assert local_objects(str(full)) == {}  # no partial object, no temp or staged part files
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_configuration_errors():
    with pytest.raises(ConfigurationError, match="ftp://x"):
        ObjectStoreSink("ftp://x/y")
    with pytest.raises(ConfigurationError, match="no bucket"):
        ObjectStoreSink("s3:///only-a-path")
    with pytest.raises(ConfigurationError, match="RINGGATE_OBJECT_PART_BYTES"):
        ObjectStoreSink("memory://", part_bytes=MIB)
    with pytest.raises(ConfigurationError, match="RINGGATE_OBJECT_COMPRESSION"):
        ObjectStoreSink("memory://", compression="brotli")


def test_open_store_shapes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store, prefix = open_store("file://./a/b")
    assert prefix == "" and (tmp_path / "a" / "b").is_dir()
    obstore.put(store, "k", b"v")
    assert (tmp_path / "a" / "b" / "k").read_bytes() == b"v"
    _, prefix = open_store("s3://bucket/some/prefix/")
    assert prefix == "some/prefix"
    _, prefix = open_store("gs://bucket")
    assert prefix == ""
    _, prefix = open_store("memory://")
    assert prefix == ""


def test_environment_alone_configures_a_child_process(s3_server, s3_bucket, tmp_path):
    """What an operator sets (s3_server.env) is all a fresh ringgate process needs."""
    script = (
        "from ringgate.sinks.base import Batch\n"
        "from ringgate.sinks.objstore import ObjectStoreSink\n"
        f"ObjectStoreSink('s3://{s3_bucket}/child').deliver(Batch.from_payloads([b'{{\"a\":1}}']))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_server.env, PYTHONPATH=REPO)
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60, cwd=tmp_path)
    assert list(s3_server.objects(s3_bucket).values()) == [b'{"a":1}\n']


# -- dead-letter store ----------------------------------------------------------------------


def _dead_lines() -> list[dict]:
    return [
        {
            "error": "22P05: unsupported Unicode escape sequence",
            "sink": "postgresql",
            "attempts": 3,
            "ring": 0,
            "epoch": 17,
            "seq": 128,
            "record": memoryview(b'{"id":"bad","text":"nul \\u0000 here"}'),
        },
        {
            "seq": 192,
            "record": b'{\n  "id": "spaced"\n}',  # whitespace with newlines: re-encoded compactly
            "error": "23505: duplicate key",
            "sink": "postgresql",
            "attempts": 1,
            "ring": 0,
            "epoch": 17,
        },
    ]


def test_dead_letters_in_the_documented_shape(tmp_path):
    dlq = DeadLetterStore(f"file://{tmp_path}/dlq")
    dlq.write("ringgate-8080-0-17-128-192", _dead_lines())
    path = tmp_path / "dlq" / "ringgate-8080-0-17-128-192.ndjson"
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert list(first) == ["error", "sink", "attempts", "ring", "epoch", "seq", "record"]
    assert list(second) == list(first)
    assert first["record"] == {"id": "bad", "text": "nul \x00 here"}  # the record itself, not a string
    assert b'"record":{"id":"bad","text":"nul \\u0000 here"}' in lines[0]  # kept byte for byte
    assert second["record"] == {"id": "spaced"}
    assert (first["seq"], first["attempts"], first["sink"]) == (128, 3, "postgresql")

    dlq.write("ringgate-8080-0-17-128-192", _dead_lines())  # replayed: same key, rewritten
    assert os.listdir(tmp_path / "dlq") == ["ringgate-8080-0-17-128-192.ndjson"]


def test_dead_letters_to_s3(s3_server, s3_bucket, s3_env):
    DeadLetterStore(f"s3://{s3_bucket}/dead").write("b-1", _dead_lines())
    objects = s3_server.objects(s3_bucket)
    assert list(objects) == ["dead/b-1.ndjson"]
    assert [json.loads(line)["seq"] for line in objects["dead/b-1.ndjson"].splitlines()] == [128, 192]


def test_unwritable_dead_letter_store_raises_sink_error(tmp_path, s3_env):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(SinkError, match="ENOTDIR"):
        DeadLetterStore(f"file://{blocker}/dlq").write("b", _dead_lines())
    with pytest.raises(SinkError, match="no-dlq-bucket"):
        DeadLetterStore("s3://no-dlq-bucket/dead").write("b", _dead_lines())
