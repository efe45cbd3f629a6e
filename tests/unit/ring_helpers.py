"""Shared by the ring tests: both implementations, unique segments, records that prove they
arrived whole, a checking consumer, and producers that stop and die on cue.

Importable by spawned processes (multiprocessing spawn context) as `tests.unit.ring_helpers`.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import re
import signal
import time
import traceback
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from ringgate.ring import ReadBuffers, Ring
from ringgate.ring import layout as L

IMPL_NAMES = ("python", "native")
_MODULES = {"python": "ringgate.ring._pyring", "native": "ringgate._ring"}
_counter = itertools.count()


def impl_module(name: str):
    return importlib.import_module(_MODULES[name])


def native_or_skip():
    """The native module, or a skip saying how to build it (a failure when the environment says
    the native ring must be there, as CI can with RINGGATE_TEST_REQUIRE_NATIVE=1)."""
    try:
        return importlib.import_module("ringgate._ring")
    except ImportError as exc:
        reason = f"native ring not built ({exc}): run `python setup.py build_ext --inplace`"
        if os.environ.get("RINGGATE_TEST_REQUIRE_NATIVE"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(params=IMPL_NAMES)
def impl_name(request) -> str:
    if request.param == "native":
        native_or_skip()
    return request.param


@pytest.fixture
def impl(impl_name):
    """ringgate.ring._pyring or ringgate._ring: every ring test runs against both."""
    return impl_module(impl_name)


def unique_name(tag: str = "t") -> str:
    return f"rgtest-{tag}-{os.getpid()}-{next(_counter)}-{time.monotonic_ns() % 1_000_000}"


@pytest.fixture
def make_ring(impl) -> Iterator[Callable[..., Ring]]:
    """make_ring(capacity=64 KiB) -> a fresh Ring on a unique segment, closed and unlinked after."""
    made: list[Ring] = []

    def make(capacity: int = L.MIN_CAPACITY, ring_impl=None) -> Ring:
        ring = Ring.create(unique_name(), capacity, ring_impl=ring_impl or impl)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        with contextlib.suppress(Exception):
            ring.close()
        ring.unlink()


# -- records -----------------------------------------------------------------------------------

_ALPHABET = b"abcdefghijklmnopqrstuvwxyz" * 512
_RECORD = re.compile(rb'\{"p":(\d+),"s":(\d+),"n":(\d+),"c":(\d+),"b":"([a-z]*)"\}')


def body_of(producer: int, seq: int, length: int) -> bytes:
    start = (producer * 7919 + seq * 31) % 26
    return _ALPHABET[start : start + length]


def make_record(producer: int, seq: int, length: int) -> bytes:
    """A compact JSON object naming its producer and sequence number, with a checksum of its
    body: a torn, mixed or shifted record cannot pass check_record."""
    body = body_of(producer, seq, length)
    return b'{"p":%d,"s":%d,"n":%d,"c":%d,"b":"%s"}' % (producer, seq, length, zlib.crc32(body), body)


def check_record(payload: bytes) -> tuple[int, int]:
    """(producer, seq) of a whole record; AssertionError naming the bytes otherwise."""
    m = _RECORD.fullmatch(payload)
    assert m, f"torn record: {payload[:120]!r}"
    producer, seq, length, crc, body = int(m[1]), int(m[2]), int(m[3]), int(m[4]), m[5]
    assert len(body) == length and zlib.crc32(body) == crc, f"torn record body: {payload[:120]!r}"
    assert body == body_of(producer, seq, length), f"record body of another record: {payload[:120]!r}"
    return producer, seq


def pack(payloads: Sequence[bytes]) -> tuple[bytes, np.ndarray]:
    return b"".join(payloads), np.array([len(p) for p in payloads], dtype=np.int64)


def framed(length: int) -> int:
    return L.align(L.RECORD_HEADER_LENGTH + length)


# -- reading -----------------------------------------------------------------------------------


@dataclass
class Batch:
    count: int
    next_position: int
    status: int
    positions: list[int]
    received: list[int]
    payloads: list[bytes]
    data: bytes


def read_batch(ring: Ring, cursor: int, max_records: int = 100_000, max_bytes: int = 1 << 20,
               buffers: ReadBuffers | None = None) -> Batch:
    """One read, checked for NDJSON framing and consistent starts/lengths."""
    out = buffers or ReadBuffers(max_records, max_bytes, ring.capacity)
    r = ring.read(cursor, max_records, max_bytes, out)
    data = bytes(out.data[: r.data_length])
    payloads = []
    at = 0
    for i in range(r.count):
        start, length = int(out.starts[i]), int(out.lengths[i])
        assert start == at, (i, start, at)
        assert data[start + length : start + length + 1] == b"\n"
        payloads.append(data[start : start + length])
        at = start + length + 1
    assert at == r.data_length
    return Batch(r.count, r.next_position, r.status, out.positions[: r.count].tolist(),
                 out.received[: r.count].tolist(), payloads, data)


def drain(ring: Ring, cursor: int, release: bool = True) -> tuple[list[bytes], int, int]:
    """Read everything committed from `cursor`; (payloads, next cursor, last status)."""
    payloads: list[bytes] = []
    while True:
        b = read_batch(ring, cursor)
        payloads += b.payloads
        if release and b.next_position > cursor:
            ring.release(b.next_position)
        cursor = b.next_position
        if b.count == 0:
            return payloads, cursor, b.status


def segment_bytes(ring: Ring) -> bytes:
    return bytes(ring.buf)


# -- processes ---------------------------------------------------------------------------------


def process_state(pid: int) -> str:
    """One-letter state from /proc/<pid>/stat ('T' stopped, 'Z' zombie, '' gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    return stat[stat.rindex(b")") + 2 :].split()[0].decode()


def wait_stopped(pid: int, timeout: float = 10.0, poll: Callable[[], object] | None = None) -> None:
    """Wait until `pid` stopped itself (SIGSTOP); `poll` runs meanwhile (a consumer, say)."""
    deadline = time.monotonic() + timeout
    while process_state(pid) != "T":
        assert process_state(pid) not in ("", "Z", "X"), f"process {pid} exited instead of stopping"
        assert time.monotonic() < deadline, f"process {pid} did not stop within {timeout}s"
        if poll is not None:
            poll()
        time.sleep(0.002)


def kill_and_reap(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@dataclass
class ForkedClaim:
    """A claim_commit running in a forked child: its pid and a pipe for its result."""

    pid: int
    result_fd: int
    _reaped: bool = False

    def wait_stopped(self) -> ForkedClaim:
        wait_stopped(self.pid)
        return self

    def resume(self, timeout: float = 10.0) -> tuple[int, int, int]:
        """SIGCONT; the (status, first, next) its claim_commit returned."""
        os.kill(self.pid, signal.SIGCONT)
        return self.result(timeout)

    def result(self, timeout: float = 10.0) -> tuple[int, int, int]:
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            assert time.monotonic() < deadline, f"claim in process {self.pid} did not finish"
            time.sleep(0.002)
        self._reaped = True
        raw = os.read(self.result_fd, 4096)
        os.close(self.result_fd)
        assert os.waitstatus_to_exitcode(status) == 0, raw.decode(errors="replace")
        status_, first, next_ = (int(x) for x in raw.split())
        return status_, first, next_

    def kill(self) -> int:
        """SIGKILL and reap: the pid is dead (and its owner word names a dead process)."""
        kill_and_reap(self.pid)
        os.close(self.result_fd)
        self._reaped = True
        return self.pid


def fork_claim(ring: Ring, payloads: Sequence[bytes], stop_at: int, received_ns: int = 1,
               through_ring: bool = False) -> ForkedClaim:
    """Run the real claim_commit in a forked child that stops itself at `stop_at`.

    through_ring=False calls the implementation's function directly, without Ring's flock, so
    the pure-Python reference is driven through the same interleavings as the native ring (a
    stopped process cannot race anyone). through_ring=True goes through Ring.claim_commit and
    the RINGGATE_TEST_STOP_AFTER_CLAIM switch, flock included.
    """
    blob, lengths = pack(payloads)
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork() in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            if through_ring:
                names = {v: k for k, v in L.STOP_POINTS.items()}
                os.environ["RINGGATE_TEST_STOP_AFTER_CLAIM"] = names[stop_at]
                child_ring = Ring.attach(ring.name, ring_impl=ring.impl)
                result = child_ring.claim_commit(blob, lengths, received_ns)
            else:
                from ringgate.ring import owner_word

                result = ring.impl.claim_commit(ring.buf, blob, lengths, received_ns, owner_word(), stop_at)
            os.write(write_fd, " ".join(str(int(x)) for x in result).encode())
            code = 0
        except BaseException:  # noqa: BLE001 - report anything to the parent
            with contextlib.suppress(Exception):
                os.write(write_fd, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    return ForkedClaim(pid, read_fd)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# -- spawned producers and the checking consumer -------------------------------------------------


def produce(name: str, impl_name: str, producer: int, count: int, seed: int, env: dict | None = None,
            max_batch: int = 30, max_body: int = 300, pause_s: float = 0.0, results=None) -> None:
    """A producer process: `count` records in seeded random batches, retrying FULL (and LOST: the
    records were not acknowledged, so sending them again keeps exactly-once)."""
    if env:
        os.environ.update(env)
    ring = Ring.attach(name, ring_impl=impl_module(impl_name))
    import random

    rng = random.Random(seed * 1000 + producer)
    seq = 0
    full = lost = 0
    while seq < count:
        n = min(count - seq, rng.randint(1, max_batch))
        sizes = [rng.randint(0, max_body) if rng.random() < 0.95 else rng.randint(0, 2000) for _ in range(n)]
        blob, lengths = pack([make_record(producer, seq + i, size) for i, size in enumerate(sizes)])
        while True:
            status, first, next_ = ring.claim_commit(blob, lengths, time.time_ns())
            if status == 0:
                break
            if status == L.CLAIM_FULL:
                full += 1
                time.sleep(0.0002)
            elif status == L.CLAIM_LOST:
                lost += 1
            else:
                raise AssertionError(f"producer {producer}: claim_commit returned {status}")
        seq += n
        if pause_s:
            time.sleep(pause_s)
    if results is not None:
        results.put((producer, "done", full, lost))
    ring.close()


def claim_once(name: str, impl_name: str, producer: int, count: int, env: dict, results) -> None:
    """A victim: one claim of `count` records under RINGGATE_TEST_STOP_AFTER_CLAIM (read by Ring
    at construction), reporting what claim_commit returned if it ever returns."""
    os.environ.update(env)
    ring = Ring.attach(name, ring_impl=impl_module(impl_name))
    blob, lengths = pack([make_record(producer, seq, 40) for seq in range(count)])
    results.put(("claimed", ring.claim_commit(blob, lengths, time.time_ns())))
    ring.close()


@dataclass
class Consumer:
    """Reads like a flusher: seeded random batch limits, release after each batch, unblock after
    a blocked status persists for `unblock_s`; checks every record whole, once, in order."""

    ring: Ring
    seed: int = 0
    unblock_s: float = 0.2
    max_records: int = 2000
    max_bytes: int = 64 * 1024
    expected: dict[int, int] = field(default_factory=dict)
    count: int = 0
    unblocked: int = 0
    blocked: tuple[int, int, float] | None = None

    def __post_init__(self) -> None:
        import random

        self.rng = random.Random(self.seed)
        self.ring.lock_consumer()
        self.cursor = self.ring.consumer_position
        self.buffers = ReadBuffers(self.max_records, self.max_bytes, self.ring.capacity)

    def poll(self) -> int:
        b = read_batch(self.ring, self.cursor, self.rng.randint(1, self.max_records),
                       self.rng.randint(1, self.max_bytes), self.buffers)
        assert all(p >= self.cursor for p in b.positions)
        for payload in b.payloads:
            producer, seq = check_record(payload)
            want = self.expected.get(producer, 0)
            assert seq == want, f"producer {producer}: got record {seq}, expected {want} (seed {self.seed})"
            self.expected[producer] = seq + 1
        self.count += b.count
        if b.next_position > self.cursor:
            self.ring.release(b.next_position)
        self.cursor = b.next_position
        if b.status == L.READ_IDLE:
            self.blocked = None
        elif self.blocked is None or self.blocked[:2] != (b.next_position, b.status):
            self.blocked = (b.next_position, b.status, time.monotonic())
        elif time.monotonic() - self.blocked[2] >= self.unblock_s:
            if self.ring.try_unblock(b.next_position, b.status):
                self.unblocked += 1
                self.blocked = None
        return b.count


class EagerConsumer(Consumer):
    """A consumer with no patience: it tries to unblock a claim the first time it blocks on it,
    racing producers that are between their position CAS and their commit."""

    def poll(self) -> int:
        n = super().poll()
        if self.blocked is not None and self.ring.try_unblock(*self.blocked[:2]):
            self.unblocked += 1
            self.blocked = None
        return n


def wake_forever(pids: Sequence[int], seed: int, max_interval_s: float = 0.0003) -> None:
    """A process that SIGCONTs `pids` at random intervals (producers that stop after every claim)."""
    import random

    rng = random.Random(seed)
    while True:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        time.sleep(rng.random() * max_interval_s)


def spawn_producers(ctx, name: str, impl_name: str, specs: Sequence[dict]) -> list:
    procs = []
    for spec in specs:
        p = ctx.Process(target=produce, args=(name, impl_name), kwargs=spec, daemon=True)
        p.start()
        procs.append(p)
    return procs


def stop_all(procs) -> None:
    """SIGKILL whatever is still running (stopped ones too) and reap it."""
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        p.join(5)
