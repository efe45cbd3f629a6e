"""Settings: defaults, units, the rules a bad value breaks, and the hand-down to children."""

from __future__ import annotations

import os
import socket

import pytest

from ringgate.config import Settings
from ringgate.errors import ConfigurationError
from ringgate.keys import Keys, key_hash


def test_defaults_follow_the_contract():
    s = Settings.from_environ({})
    assert (s.host, s.port, s.flushers, s.ring_bytes) == ("127.0.0.1", 8080, 1, 64 << 20)
    assert (s.batch_records, s.batch_bytes, s.flush_interval_ms) == (10_000, 8 << 20, 200)
    assert (s.sink, s.dlq) == ("file://./ringgate-data", "file://./ringgate-dead-letter")
    assert (s.max_body_bytes, s.max_record_bytes, s.worker_inflight_bytes) == (16 << 20, 1 << 20, 64 << 20)
    assert (s.unblock_ms, s.retry_base_ms, s.retry_max_ms, s.ack_timeout_ms) == (1000, 100, 30_000, 30_000)
    assert s.instance == f"{socket.gethostname()}-8080" and s.api_keys == ()


def test_sizes_take_binary_units():
    s = Settings.from_environ({"RINGGATE_RING_BYTES": "16MiB", "RINGGATE_BATCH_BYTES": "512KiB",
                               "RINGGATE_MAX_BODY_BYTES": "1 MiB"})
    assert (s.ring_bytes, s.batch_bytes, s.max_body_bytes) == (16 << 20, 512 << 10, 1 << 20)


def test_a_small_ring_lowers_the_default_record_limit_but_refuses_an_explicit_one_too_big():
    assert Settings.from_environ({"RINGGATE_RING_BYTES": "1MiB"}).max_record_bytes == (1 << 20) // 8 - 16
    with pytest.raises(ConfigurationError, match="RINGGATE_MAX_RECORD_BYTES must be at most"):
        Settings.from_environ({"RINGGATE_RING_BYTES": "1MiB", "RINGGATE_MAX_RECORD_BYTES": "1MiB"})


@pytest.mark.parametrize("name,value,message", [
    ("RINGGATE_FLUSHERS", "0", "RINGGATE_FLUSHERS must be at least 1: 0"),
    ("RINGGATE_RETRY_MAX_MS", "10", "RINGGATE_RETRY_MAX_MS must be at least RINGGATE_RETRY_BASE_MS (100): 10"),
    ("RINGGATE_INSTANCE", "a/b", "RINGGATE_INSTANCE must be letters"),
    ("RINGGATE_OBJECT_PART_BYTES", "1MiB", "RINGGATE_OBJECT_PART_BYTES must be at least 5242880"),
    ("RINGGATE_IMPL", "rust", "RINGGATE_IMPL must be one of native, python"),
    ("RINGGATE_PG_TABLE", "drop table", "RINGGATE_PG_TABLE must be [schema.]table"),
])
def test_a_bad_value_names_the_variable_the_value_and_the_rule(name, value, message):
    with pytest.raises(ConfigurationError) as info:
        Settings.from_environ({name: value})
    assert message in str(info.value)


def test_api_keys_are_split_trimmed_and_named():
    keys = Settings.from_environ({"RINGGATE_API_KEYS": " a, ci = abc= ,,c"}).api_keys
    assert keys == ((key_hash("a"), "a"), ("ci", "abc="), (key_hash("c"), "c"))


@pytest.mark.parametrize("value", [",", " , ,"])
def test_api_keys_set_but_empty_fail_closed(value):
    with pytest.raises(ConfigurationError, match="RINGGATE_API_KEYS is set but holds no key"):
        Settings.from_environ({"RINGGATE_API_KEYS": value})


def test_empty_api_keys_count_as_unset():
    assert Settings.from_environ({"RINGGATE_API_KEYS": ""}).api_keys == ()


def test_api_keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# clients\nshipper=s3cr3t\n\nplain\n")
    s = Settings.from_environ({"RINGGATE_API_KEYS_FILE": str(path)})
    assert s.api_keys_file == str(path)
    assert Keys.from_settings(s).names == {"s3cr3t": "shipper", "plain": key_hash("plain")}
    path.write_text("# nothing but comments\n\n")
    with pytest.raises(ConfigurationError, match="holds no key"):
        Settings.from_environ({"RINGGATE_API_KEYS_FILE": str(path)})
    with pytest.raises(ConfigurationError, match="cannot be read"):
        Settings.from_environ({"RINGGATE_API_KEYS_FILE": str(tmp_path / "missing")})


def test_children_get_exactly_what_the_supervisor_validated(monkeypatch):
    s = Settings.from_environ({"RINGGATE_PORT": "9000", "RINGGATE_API_KEYS": "k"})
    for key, value in s.to_child_environ().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RINGGATE_PORT", "1")  # ignored by a child: the handed-down settings win
    assert Settings.from_child_environ() == s


def test_the_worker_inflight_cap_must_hold_one_whole_body():
    with pytest.raises(ConfigurationError, match="RINGGATE_WORKER_INFLIGHT_BYTES must be at least"):
        Settings.from_environ({"RINGGATE_MAX_BODY_BYTES": "1MiB", "RINGGATE_WORKER_INFLIGHT_BYTES": "512KiB"})


@pytest.mark.parametrize("host, instance", [
    ("ingest-07.eu.example.com", "ingest-07.eu.example.com-9999"),
    ("pod_a b/ü", "pod_a-b-9999"),  # only letters, digits, '-', '_', '.': they name files in /dev/shm
    ("", "ringgate-9999"),
])
def test_default_instance_is_the_host_name_and_port(monkeypatch, host, instance):
    # two hosts with the default must not share offsets rows or object keys (DESIGN.md §12)
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    assert Settings.from_environ({"RINGGATE_PORT": "9999"}).instance == instance
    assert Settings.from_environ({"RINGGATE_PORT": "9999", "RINGGATE_INSTANCE": "mine"}).instance == "mine"


def test_default_instance_stays_the_old_default_while_its_rings_are_here(monkeypatch):
    # rings left by a run under the old default `ringgate-<port>` (killed, or its drain timed
    # out): the upgraded gateway adopts them instead of stranding them under a name nothing reads
    monkeypatch.setattr(socket, "gethostname", lambda: "somehost")
    port = 40000 + os.getpid() % 20000
    left = f"/dev/shm/ringgate-{port}-ring-0"
    assert not os.path.lexists(left)
    with open(left, "wb"):
        pass
    try:
        assert Settings.from_environ({"RINGGATE_PORT": str(port)}).instance == f"ringgate-{port}"
    finally:
        os.unlink(left)
    assert Settings.from_environ({"RINGGATE_PORT": str(port)}).instance == f"somehost-{port}"


def test_flushers_default_from_the_sink_and_the_cores(monkeypatch):
    """PostgreSQL parses rows in the backend of each COPY's connection: one flusher (ring,
    connection) per core, at most 4; a file or object store: one. An explicit value wins."""
    for n, want in ((1, 1), (2, 2), (3, 3), (8, 4)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=n: set(range(n)))
        pg = Settings.from_environ({"RINGGATE_SINK": "postgresql://u@127.0.0.1:5432/db"})
        assert (pg.flushers, pg.workers) == (want, n)
        assert Settings.from_environ({"RINGGATE_SINK": "postgres://u@h/db"}).flushers == want
        assert Settings.from_environ({}).flushers == 1
        assert Settings.from_environ({"RINGGATE_SINK": "s3://b/p"}).flushers == 1
    assert Settings.from_environ({"RINGGATE_SINK": "postgresql://u@h/db", "RINGGATE_FLUSHERS": "1"}).flushers == 1


def test_pg_record_type_is_jsonb_unless_json_is_asked_for():
    assert Settings.from_environ({}).pg_record_type == "jsonb"
    assert Settings.from_environ({"RINGGATE_PG_RECORD_TYPE": "JSON"}).pg_record_type == "json"
    with pytest.raises(ConfigurationError, match="RINGGATE_PG_RECORD_TYPE must be one of jsonb, json: 'text'"):
        Settings.from_environ({"RINGGATE_PG_RECORD_TYPE": "text"})
