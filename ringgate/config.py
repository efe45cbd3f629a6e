"""The one place that turns the environment into settings.

The supervisor validates the environment once (`Settings.from_environ`); children get the frozen
result through `RINGGATE_SETTINGS_JSON` (`Settings.from_child_environ`), so a worker or flusher
never re-interprets a variable differently from the supervisor that checked it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from .errors import ConfigurationError
from .keys import parse_entries, read_file
from .ratelimit import parse_rate
from .sinks import check_url, sink_kind

MIB = 1 << 20
CHILD_SETTINGS_ENV = "RINGGATE_SETTINGS_JSON"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
IMPLS = ("native", "python")
COMPRESSIONS = ("none", "gzip", "zstd")
PARTITIONS = ("none", "month")
#: the record column's type: jsonb (queryable, indexed; the server parses it into its binary form)
#: or json (the text as sent, checked and kept; about twice as fast to load)
PG_RECORD_TYPES = ("jsonb", "json")
HTTP_MODES = ("1", "auto")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    flushers: int = 1
    ring_bytes: int = 64 * MIB
    batch_records: int = 10_000
    batch_bytes: int = 8 * MIB
    flush_interval_ms: int = 200
    sink: str = "file://./ringgate-data"
    dlq: str = "file://./ringgate-dead-letter"
    object_part_bytes: int = 8 * MIB
    object_compression: str = "none"
    drain_timeout_s: float = 30.0
    pg_table: str = "ringgate_events"
    pg_dedup_key: str = ""
    pg_partition: str = "none"
    pg_record_type: str = "jsonb"
    max_body_bytes: int = 16 * MIB
    max_record_bytes: int = 1 * MIB
    ack_timeout_ms: int = 30_000
    worker_inflight_bytes: int = 64 * MIB
    unblock_ms: int = 1000
    retry_base_ms: int = 100
    retry_max_ms: int = 30_000
    api_keys: tuple[tuple[str, str], ...] = ()  # (name, key)
    api_keys_file: str = ""
    admin_auth: bool = False
    max_records: int = 100_000
    body_timeout_s: float = 30.0
    priority_threshold: int = 5
    low_priority_fill: float = 0.75
    instance: str = "ringgate-8080"
    impl: str = ""  # "" = best available
    log_format: str = "text"
    log_level: str = "info"
    tls_cert: str = ""  # PEM paths; both or neither: HTTPS only
    tls_key: str = ""
    http: str = "1"  # "1": HTTP/1.1 only; "auto": HTTP/2 too
    rate_limit: float = 0.0  # records per second per client (RINGGATE_RATE_LIMIT); 0: none
    refusal_delay_ms: int = 50  # a "retry later" answer is held this long (RINGGATE_REFUSAL_DELAY_MS)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Validate every RINGGATE_* variable; raise ConfigurationError naming the first bad one."""
        env = os.environ if environ is None else environ
        r = _Reader(env)
        port = r.int("RINGGATE_PORT", 8080, lo=1, hi=65535)
        ring_bytes = r.int("RINGGATE_RING_BYTES", 64 * MIB, lo=64 * 1024, hi=1 << 40)
        if ring_bytes & (ring_bytes - 1):
            raise ConfigurationError(f"RINGGATE_RING_BYTES must be a power of two: {ring_bytes}")
        max_body = r.int("RINGGATE_MAX_BODY_BYTES", 16 * MIB, lo=1)
        # a framed record (16-byte header + payload) must fit in ring/8; unset: 1 MiB, or what a
        # smaller ring allows; set explicitly above that: an error
        record_limit = ring_bytes // 8 - 16
        max_record = r.int("RINGGATE_MAX_RECORD_BYTES", min(1 * MIB, record_limit), lo=2)
        if max_record > record_limit:
            raise ConfigurationError(
                f"RINGGATE_MAX_RECORD_BYTES must be at most RINGGATE_RING_BYTES/8 minus the 16-byte "
                f"record header ({record_limit}): {max_record}"
            )
        inflight = r.int("RINGGATE_WORKER_INFLIGHT_BYTES", 4 * max_body, lo=1)
        if inflight < max_body:
            raise ConfigurationError(
                f"RINGGATE_WORKER_INFLIGHT_BYTES must be at least RINGGATE_MAX_BODY_BYTES ({max_body}): {inflight}"
            )
        retry_base = r.int("RINGGATE_RETRY_BASE_MS", 100, lo=1)
        retry_max = r.int("RINGGATE_RETRY_MAX_MS", 30_000, lo=1)
        if retry_max < retry_base:
            raise ConfigurationError(
                f"RINGGATE_RETRY_MAX_MS must be at least RINGGATE_RETRY_BASE_MS ({retry_base}): {retry_max}"
            )
        keys = env.get("RINGGATE_API_KEYS", "")
        api_keys = tuple(parse_entries(keys, ",", "RINGGATE_API_KEYS"))
        if keys.strip() and not api_keys:
            raise ConfigurationError(f"RINGGATE_API_KEYS is set but holds no key (auth never fails open): {keys!r}")
        keys_file = env.get("RINGGATE_API_KEYS_FILE", "").strip()
        if keys_file:
            read_file(keys_file)  # refuses a file that cannot be read or holds no key
        instance = env.get("RINGGATE_INSTANCE") or default_instance(port)
        if not instance or not all(c.isalnum() or c in "-_." for c in instance):
            raise ConfigurationError(
                f"RINGGATE_INSTANCE must be letters, digits, '-', '_' or '.': {instance!r}"
            )
        sink = r.url("RINGGATE_SINK", "file://./ringgate-data")
        tls_cert, tls_key = env.get("RINGGATE_TLS_CERT", "").strip(), env.get("RINGGATE_TLS_KEY", "").strip()
        if bool(tls_cert) != bool(tls_key):
            raise ConfigurationError(
                "RINGGATE_TLS_CERT and RINGGATE_TLS_KEY must be set together (PEM files for HTTPS): "
                f"only {'RINGGATE_TLS_CERT' if tls_cert else 'RINGGATE_TLS_KEY'} is set"
            )
        return cls(
            host=env.get("RINGGATE_HOST", "127.0.0.1"),
            port=port,
            workers=r.int("RINGGATE_WORKERS", cores(), lo=1, hi=256),
            flushers=r.int("RINGGATE_FLUSHERS", default_flushers(sink), lo=1, hi=64),
            ring_bytes=ring_bytes,
            batch_records=r.int("RINGGATE_BATCH_RECORDS", 10_000, lo=1),
            batch_bytes=r.int("RINGGATE_BATCH_BYTES", 8 * MIB, lo=1),
            flush_interval_ms=r.int("RINGGATE_FLUSH_INTERVAL_MS", 200, lo=1),
            sink=sink,
            dlq=r.url("RINGGATE_DLQ", "file://./ringgate-dead-letter", dead_letters=True),
            object_part_bytes=r.int("RINGGATE_OBJECT_PART_BYTES", 8 * MIB, lo=5 * MIB),
            object_compression=r.choice("RINGGATE_OBJECT_COMPRESSION", "none", COMPRESSIONS),
            drain_timeout_s=r.float("RINGGATE_DRAIN_TIMEOUT_S", 30.0, lo=0.0),
            pg_table=r.identifier("RINGGATE_PG_TABLE", "ringgate_events"),
            pg_dedup_key=env.get("RINGGATE_PG_DEDUP_KEY", ""),
            pg_partition=r.choice("RINGGATE_PG_PARTITION", "none", PARTITIONS),
            pg_record_type=r.choice("RINGGATE_PG_RECORD_TYPE", "jsonb", PG_RECORD_TYPES),
            max_body_bytes=max_body,
            max_record_bytes=max_record,
            ack_timeout_ms=r.int("RINGGATE_ACK_TIMEOUT_MS", 30_000, lo=1),
            worker_inflight_bytes=inflight,
            unblock_ms=r.int("RINGGATE_UNBLOCK_MS", 1000, lo=1),
            retry_base_ms=retry_base,
            retry_max_ms=retry_max,
            api_keys=api_keys,
            api_keys_file=keys_file,
            admin_auth=r.flag("RINGGATE_ADMIN_AUTH", False),
            max_records=r.int("RINGGATE_MAX_RECORDS", 100_000, lo=1),
            body_timeout_s=r.float("RINGGATE_BODY_TIMEOUT_S", 30.0, lo=0.001),
            priority_threshold=r.int("RINGGATE_PRIORITY_THRESHOLD", 5, lo=0, hi=11),
            low_priority_fill=r.float("RINGGATE_LOW_PRIORITY_FILL", 0.75, lo=0.0, hi=1.0),
            instance=instance,
            impl=r.choice("RINGGATE_IMPL", "", ("",) + IMPLS),
            log_format=r.choice("RINGGATE_LOG_FORMAT", "text", LOG_FORMATS),
            log_level=r.choice("RINGGATE_LOG_LEVEL", "info", LOG_LEVELS),
            tls_cert=tls_cert,
            tls_key=tls_key,
            http=r.choice("RINGGATE_HTTP", "1", HTTP_MODES),
            rate_limit=parse_rate(env.get("RINGGATE_RATE_LIMIT", "")),
            refusal_delay_ms=r.int("RINGGATE_REFUSAL_DELAY_MS", 50, lo=0, hi=1000),
        )

    def to_child_environ(self) -> dict[str, str]:
        return {CHILD_SETTINGS_ENV: msgspec.json.encode(self).decode()}

    @classmethod
    def from_child_environ(cls) -> Settings:
        """Settings handed down by the supervisor; outside one (tests, tools) read the environment."""
        raw = os.environ.get(CHILD_SETTINGS_ENV)
        if raw is None:
            return cls.from_environ()
        return msgspec.json.decode(raw, type=cls)


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def _get(self, name: str, default: Any, convert: Callable[[str], Any], rule: str) -> Any:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return convert(raw.strip())
        except ValueError:
            raise ConfigurationError(f"{name} must be {rule}: {raw!r}") from None

    def int(self, name: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
        value = self._get(name, default, _parse_int, "a whole number")
        if lo is not None and value < lo:
            raise ConfigurationError(f"{name} must be at least {lo}: {value}")
        if hi is not None and value > hi:
            raise ConfigurationError(f"{name} must be at most {hi}: {value}")
        return value

    def float(self, name: str, default: float, lo: float, hi: float | None = None) -> float:
        value = self._get(name, default, float, "a number")
        if not value >= lo:
            raise ConfigurationError(f"{name} must be at least {lo}: {value}")
        if hi is not None and not value <= hi:
            raise ConfigurationError(f"{name} must be at most {hi}: {value}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.env.get(name, "").strip().lower()
        if not value:
            return default
        if value not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigurationError(f"{name} must be 1 or 0: {value!r}")
        return value in ("1", "true", "yes")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.env.get(name, default).strip().lower()
        if value not in choices:
            allowed = ", ".join(c for c in choices if c)
            raise ConfigurationError(f"{name} must be one of {allowed}: {value!r}")
        return value

    def url(self, name: str, default: str, dead_letters: bool = False) -> str:
        """A sink URL by the rules its sink declares (ringgate.sinks.KINDS); shown only redacted."""
        return check_url(name, self.env.get(name, default).strip() or default, dead_letters=dead_letters)

    def identifier(self, name: str, default: str) -> str:
        """[schema.]table, plain ASCII SQL identifiers, at most 48 characters each (the sink derives
        `<table>_offsets`, `<table>_dedup` and `<table>_pYYYYMM` from it)."""
        value = self.env.get(name, default).strip()
        parts = value.split(".")
        if len(parts) > 2 or not all(
            p and p.isascii() and p.replace("_", "a").isalnum() and not p[0].isdigit() and len(p) <= 48
            for p in parts
        ):
            raise ConfigurationError(
                f"{name} must be [schema.]table, each a plain ASCII SQL identifier of at most 48 characters: {value!r}"
            )
        return value


def _parse_int(text: str) -> int:
    """Accept 1048576, 1_048_576 and the binary suffixes an operator reaches for: 64KiB, 16MiB, 1GiB."""
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    lowered = text.lower()
    for suffix, factor in units.items():
        if lowered.endswith(suffix) and lowered[: -len(suffix)].strip().isdigit():
            return int(lowered[: -len(suffix)]) * factor
    return int(text)


def cores() -> int:
    """The CPUs this process may run on (its affinity: a container's cpuset, `taskset`)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_flushers(sink: str) -> int:
    """RINGGATE_FLUSHERS when it is not set: what the sink declares it gains from, at most one per
    core (rings, flushers and PostgreSQL connections are one to one)."""
    kind = sink_kind(sink)
    return max(1, min(cores(), kind.max_default_flushers if kind else 1))


def default_instance(port: int) -> str:
    """RINGGATE_INSTANCE when it is not set: `<host name>-<port>`, unique across hosts as their
    names are (a pod's host name is its pod name), the name's other characters turned into '-'.

    Until this version the default was `ringgate-<port>`: while this host still holds rings of
    that name (a run killed or timed out in its drain; a clean drain unlinks them), it stays the
    name, so the upgraded gateway adopts and delivers them instead of stranding them under a name
    nothing reads. Their objects and offsets rows keep that name too; set RINGGATE_INSTANCE to
    move on once they are delivered."""
    import re
    import socket

    from .ring import existing_rings

    legacy = f"ringgate-{port}"
    if existing_rings(legacy):
        return legacy
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()).strip("-.") or "ringgate"
    return f"{host}-{port}"
