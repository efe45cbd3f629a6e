"""Shared-memory rings: one segment per flusher, many producers (HTTP workers), one consumer.

The implementation is chosen once, at import, like psycopg's PSYCOPG_IMPL: `RINGGATE_IMPL=native`
(the C extension ringgate._ring), `python` (ringgate.ring._pyring), unset: native when built.
Both expose the same flat functions over the same layout (layout.py); a segment records which
one created it and attaching with the other fails.

Segments live in /dev/shm and are mapped directly, not through multiprocessing.shared_memory:
Python 3.11 registers every SharedMemory with the resource_tracker on create *and* attach, and the
tracker unlinks what it holds when it cleans up, which would take the rings down with a crash.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import mmap
import os
import platform
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigurationError, RinggateError
from ..process import process_start_time
from ..shm import open_private
from . import layout as L

SHM_DIR = "/dev/shm"
LOCK_SUFFIXES = (".producer.lock", ".consumer.lock")


def _load_impl():
    forced = os.environ.get("RINGGATE_IMPL", "").strip().lower()
    if forced not in ("", "native", "python"):
        raise ImportError(f"RINGGATE_IMPL must be native or python: {forced!r}")
    tried = []
    if forced in ("", "native"):
        try:
            return importlib.import_module("ringgate._ring")
        except ImportError as exc:
            tried.append(f"native (ringgate._ring: {exc})")
            if forced == "native":
                raise ImportError(
                    "RINGGATE_IMPL=native but the native ring cannot be loaded; tried: " + "; ".join(tried)
                ) from exc
    machine = platform.machine()
    if machine.lower() not in STORE_ORDERED_MACHINES:
        tried.append(f"python (the pure-Python ring needs x86-64's store order; this CPU is {machine or 'unknown'})")
        raise ImportError(
            "no ring implementation can run here; tried: " + "; ".join(tried)
            + ": build the native ring (a C11 compiler, then `pip install ringgate`)"
        )
    return importlib.import_module("ringgate.ring._pyring")


#: Where the pure-Python ring may run. It has no atomics: a reader trusts that once it sees a
#: committed header it sees the payload stored before it. x86-64 keeps stores in order and loads
#: in order (TSO) and does an aligned 8-byte access in one instruction; a weakly ordered CPU
#: (aarch64, POWER, RISC-V) can show the header first and the reader copies stale bytes.
STORE_ORDERED_MACHINES = ("x86_64", "amd64")

impl = _load_impl()
IMPL_NAME = L.IMPL_NAMES[impl.IMPL]

# Bumped in every forked child, so a producer notices a fork without a getpid() syscall per request.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class RingError(RinggateError):
    pass


def segment_name(instance: str, ring: int) -> str:
    return f"{instance}-ring-{ring}"


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def existing_rings(instance: str) -> list[int]:
    """Ring numbers of the segments a previous run of this instance left behind, in order.

    A symlink counts (lexists), so that attaching refuses it rather than a create failing on it."""
    found = []
    n = 0
    while os.path.lexists(segment_path(segment_name(instance, n))):
        found.append(n)
        n += 1
    return found


def check_lock_files(path: str) -> None:
    """UntrustedFileError if a lock file of the segment at `path` exists but is not ours alone:
    anyone who can open one can flock it and stall our producers or our consumer."""
    for suffix in LOCK_SUFFIXES:
        try:
            os.close(open_private(path + suffix))
        except FileNotFoundError:
            pass  # created 0600 by the first process that locks it


def owner_word(pid: int | None = None) -> int:
    """What a claim holds at offset 8 until commit, written before its in-progress header, so the
    consumer can tell a dead producer from a slow one (layout.py: bit 63 set, start time, pid)."""
    pid = os.getpid() if pid is None else pid
    return L.owner_word_of(pid, process_start_time(pid) or 0)


def owner_alive(word: int) -> bool:
    """True while the producer named by an in-progress claim's owner word may still commit it.

    Anything but an owner word there is the first record's received time, which the producer
    stores just before its commit CAS: a claim still in progress with it is dead or about to lose
    its commit (its last access to the ring), so padding it is safe either way.
    """
    if not L.is_owner_word(word):
        return False
    pid = word & 0xFFFFFFFF
    start = process_start_time(pid)
    return start is not None and (start & 0x7FFFFFFF) == (word >> 32) & 0x7FFFFFFF


PRODUCER_WORD = L.PRODUCER_POSITION_OFFSET // 8
FREE_WORD = L.FREE_POSITION_OFFSET // 8


class _HeaderField:
    """One int64 word of the ring header, read and written with single aligned stores."""

    def __init__(self, offset: int, writable: bool = True) -> None:
        self.word = offset // 8
        self.writable = writable

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, ring, owner=None):
        return self if ring is None else ring._q[self.word]

    def __set__(self, ring, value: int) -> None:
        if not self.writable:
            raise AttributeError(f"{self.name} is moved only by the ring implementation")
        ring._q[self.word] = int(value)


@dataclass(slots=True)
class ReadResult:
    count: int
    next_position: int
    data_length: int
    status: int


class Ring:
    """One mapped ring segment. Producers call `claim_commit`; the one consumer (holding
    `lock_consumer`) calls `read`, `release` and `unblock`."""

    def __init__(self, name: str, fd: int, mm: mmap.mmap, ring_impl=None) -> None:
        self.impl = ring_impl or impl
        self.name = name
        self.path = segment_path(name)
        self._fd = fd
        self._mm = mm
        # checked on the mmap itself: a view kept while raising would make the caller's
        # mm.close() fail with BufferError and hide the RingError
        if mm[: len(L.MAGIC)] != L.MAGIC:
            raise RingError(f"{self.path} is not a ringgate ring (bad magic)")
        version, impl_id = struct.unpack_from("<II", mm, L.VERSION_OFFSET)
        if version != L.LAYOUT_VERSION:
            raise RingError(f"{self.path} has layout version {version}, this build reads {L.LAYOUT_VERSION}")
        if impl_id != self.impl.IMPL:
            raise RingError(
                f"{self.path} was created by the {L.IMPL_NAMES.get(impl_id, impl_id)} ring implementation; "
                f"this process uses {L.IMPL_NAMES[self.impl.IMPL]} (set RINGGATE_IMPL={L.IMPL_NAMES.get(impl_id, '?')} "
                "or drain the ring first)"
            )
        self.buf = memoryview(mm)
        self._q = self.buf.cast("q")
        self.words = self._q
        """The header as int64 words, for the few per-request reads that cannot afford a call each
        (index = layout offset // 8; read-only use outside this module)."""
        self.capacity: int = self._q[L.CAPACITY_OFFSET // 8]
        self.epoch: int = self._q[L.EPOCH_OFFSET // 8]
        self._producer_lock_fd: int | None = None
        self._consumer_lock_fd: int | None = None
        self._owner = 0
        self._generation = -1
        self._stop_at = L.STOP_POINTS.get(os.environ.get("RINGGATE_TEST_STOP_AFTER_CLAIM", ""), 0)

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, capacity: int, epoch: int | None = None, ring_impl=None) -> Ring:
        """Create and reserve a new segment; ConfigurationError if /dev/shm cannot hold it."""
        if capacity < L.MIN_CAPACITY or capacity & (capacity - 1):
            raise ConfigurationError(f"ring capacity must be a power of two >= {L.MIN_CAPACITY}: {capacity}")
        path = segment_path(name)
        size = L.HEADER_LENGTH + capacity
        check_lock_files(path)
        fd = open_private(path, create=True, exclusive=True)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    st = os.statvfs(SHM_DIR)
                    raise ConfigurationError(
                        f"RINGGATE_RING_BYTES: {SHM_DIR} has {st.f_bavail * st.f_frsize} bytes free, "
                        f"a ring of {capacity} needs {size}: enlarge {SHM_DIR} (e.g. docker --shm-size) "
                        "or lower RINGGATE_RING_BYTES / RINGGATE_FLUSHERS"
                    ) from None
                raise
            mm = mmap.mmap(fd, size)
            header = bytearray(L.HEADER_LENGTH)
            header[0:8] = L.MAGIC
            struct.pack_into("<IIqq", header, L.VERSION_OFFSET, L.LAYOUT_VERSION, (ring_impl or impl).IMPL, capacity,
                             time.time_ns() if epoch is None else epoch)
            mm[: L.HEADER_LENGTH] = header
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return cls(name, fd, mm, ring_impl)

    @classmethod
    def attach(cls, name: str, ring_impl=None) -> Ring:
        path = segment_path(name)
        check_lock_files(path)
        fd = open_private(path)
        try:
            size = os.fstat(fd).st_size
            if size < L.HEADER_LENGTH + L.MIN_CAPACITY:
                raise RingError(f"{path} is too small to be a ring ({size} bytes)")
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        try:
            return cls(name, fd, mm, ring_impl)
        except BaseException:
            mm.close()
            os.close(fd)
            raise

    def close(self) -> None:
        for fd in (self._producer_lock_fd, self._consumer_lock_fd):
            if fd is not None:
                os.close(fd)
        self._producer_lock_fd = self._consumer_lock_fd = None
        self._q.release()
        self.buf.release()
        self._mm.close()
        os.close(self._fd)

    def unlink(self) -> None:
        for path in (self.path, *(self.path + suffix for suffix in LOCK_SUFFIXES)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # -- header fields ------------------------------------------------------------------------

    def _get(self, offset: int) -> int:
        return self._q[offset // 8]

    def _set(self, offset: int, value: int) -> None:
        self._q[offset // 8] = value

    producer_position = _HeaderField(L.PRODUCER_POSITION_OFFSET, writable=False)
    consumer_position = _HeaderField(L.CONSUMER_POSITION_OFFSET, writable=False)
    unblocked_count = _HeaderField(L.UNBLOCKED_COUNT_OFFSET, writable=False)
    flusher_pid = _HeaderField(L.FLUSHER_PID_OFFSET)
    draining = _HeaderField(L.DRAINING_OFFSET)  # 1 once the supervisor asked the flusher to drain
    oldest_pending_ns = _HeaderField(L.OLDEST_PENDING_NS_OFFSET)

    @property
    def used_bytes(self) -> int:
        q = self._q  # read per request (priority admission): no descriptor calls
        return max(0, q[PRODUCER_WORD] - q[FREE_WORD])

    @property
    def inflight(self) -> tuple[int, int] | None:
        """The batch a crashed consumer was delivering, if any: replay exactly this range first."""
        first, next_ = self._get(L.INFLIGHT_FIRST_OFFSET), self._get(L.INFLIGHT_NEXT_OFFSET)
        if next_ > first and first == self.consumer_position:
            return first, next_
        return None

    def set_inflight(self, first: int, next_: int) -> None:
        self._set(L.INFLIGHT_NEXT_OFFSET, next_)
        self._set(L.INFLIGHT_FIRST_OFFSET, first)

    @property
    def sink_reason(self) -> str:
        """Why the last delivery attempt failed; "" while the sink is healthy."""
        if not self._get(L.SINK_FAILING_OFFSET):
            return ""
        raw = bytes(self.buf[L.SINK_REASON_OFFSET : L.SINK_REASON_OFFSET + L.SINK_REASON_LENGTH])
        return raw.rstrip(b"\0").decode("utf-8", "replace")

    def set_sink_reason(self, reason: str) -> None:
        if not reason:
            self._set(L.SINK_FAILING_OFFSET, 0)
            return
        raw = reason.encode("utf-8", "replace")[: L.SINK_REASON_LENGTH]
        self.buf[L.SINK_REASON_OFFSET : L.SINK_REASON_OFFSET + L.SINK_REASON_LENGTH] = raw.ljust(
            L.SINK_REASON_LENGTH, b"\0"
        )
        self._set(L.SINK_FAILING_OFFSET, 1)

    def record_dead_letters(self, first: int, next_: int) -> None:
        n = self._get(L.DEAD_LETTER_COUNT_OFFSET)
        slot = L.DEAD_LETTER_RANGES_OFFSET + (n % L.DEAD_LETTER_SLOTS) * 16
        self._set(slot, first)
        self._set(slot + 8, next_)
        self._set(L.DEAD_LETTER_COUNT_OFFSET, n + 1)

    def dead_lettered(self, first: int, next_: int) -> bool | None:
        """True if a dead-lettered range overlaps [first, next); None if the log no longer reaches back."""
        n = self._get(L.DEAD_LETTER_COUNT_OFFSET)
        oldest = None
        for k in range(max(0, n - L.DEAD_LETTER_SLOTS), n):
            slot = L.DEAD_LETTER_RANGES_OFFSET + (k % L.DEAD_LETTER_SLOTS) * 16
            lo, hi = self._get(slot), self._get(slot + 8)
            oldest = lo if oldest is None else min(oldest, lo)
            if lo < next_ and first < hi:
                return True
        if n > L.DEAD_LETTER_SLOTS and oldest is not None and first < oldest:
            return None
        return False

    # -- producer -----------------------------------------------------------------------------

    def claim_commit(self, blob: bytes, lengths: np.ndarray, received_ns: int) -> tuple[int, int, int]:
        """Put one request's records in the ring, whole or not at all, in one call.

        Returns (status, first_position, next_position); status 0 or a layout.CLAIM_* code.
        """
        if self._generation != _fork_generation:
            # first call in this process (or after a fork): our own owner word and lock description
            self._owner, self._generation = owner_word(), _fork_generation
            if self._producer_lock_fd is not None:
                os.close(self._producer_lock_fd)
                self._producer_lock_fd = None
        if self.impl.IMPL == L.IMPL_NATIVE:
            return self.impl.claim_commit(self.buf, blob, lengths, received_ns, self._owner, self._stop_at)
        with self._producer_lock(blocking=True) as held:
            if not held:
                return L.CLAIM_FULL, 0, 0
            return self.impl.claim_commit(self.buf, blob, lengths, received_ns, self._owner, self._stop_at)

    @contextmanager
    def _producer_lock(self, blocking: bool) -> Iterator[bool]:
        """flock around the pure-Python ring's critical sections; no-op for the native ring.

        Producers wait for it at most ~50 ms (a stopped holder must not hang a worker's event
        loop); the consumer never waits, it tries again on its next poll.
        """
        if self.impl.IMPL == L.IMPL_NATIVE:
            yield True
            return
        if self._producer_lock_fd is None:
            self._producer_lock_fd = open_private(self.path + ".producer.lock", create=True)
        fd = self._producer_lock_fd
        deadline = time.monotonic() + (0.05 if blocking else 0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.0002)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    # -- consumer -----------------------------------------------------------------------------

    def lock_consumer(self) -> None:
        """Become this ring's only consumer; RingError naming the holder if another one is."""
        fd = open_private(self.path + ".consumer.lock", create=True)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RingError(f"{self.path} already has a consumer (pid {self.flusher_pid})") from None
        self._consumer_lock_fd = fd
        # a consumer killed between publishing CONSUMER_POSITION and FREE_POSITION: finish its zeroing
        self.impl.release(self.buf, self.consumer_position)

    def read(self, cursor: int, max_records: int, max_bytes: int, out: ReadBuffers) -> ReadResult:
        count, next_position, data_length, status = self.impl.read(
            self.buf, cursor, max_records, max_bytes,
            out.positions, out.received, out.starts, out.lengths, out.data,
        )
        return ReadResult(count, next_position, data_length, status)

    def release(self, next_position: int) -> None:
        self.impl.release(self.buf, next_position)

    def header_word_at(self, position: int) -> tuple[int, int]:
        """(first word, second word) of the record header at `position`; the second is 0 for the
        one-word padding record that can sit in the last 8 bytes of the data region."""
        index = position & (self.capacity - 1)
        word = (L.HEADER_LENGTH + index) // 8
        return self._q[word], (self._q[word + 1] if index + 8 < self.capacity else 0)

    def try_unblock(self, position: int, status: int) -> bool:
        """Pad the abandoned claim at `position` if its producer is gone (or never wrote a header).

        The caller decides *when* (after RINGGATE_UNBLOCK_MS); this decides *whether*.
        """
        with self._producer_lock(blocking=False) as held:
            if not held:
                return False
            if status == L.READ_BLOCKED_ZERO:
                return bool(self.impl.unblock_zero(self.buf, position))
            word, owner = self.header_word_at(position)
            length, _ = L.split_word(word)
            if length >= 0:
                return False
            # the pure-Python ring holds the producer lock here, so no producer is mid-claim:
            # an in-progress header is abandoned whoever its owner was
            if self.impl.IMPL == L.IMPL_NATIVE and owner_alive(owner):
                return False
            return bool(self.impl.unblock_in_progress(self.buf, position, word))


class ReadBuffers:
    """Arrays a consumer reuses for every read (fresh allocations per batch page-fault)."""

    def __init__(self, max_records: int, max_bytes: int, capacity: int) -> None:
        self.positions = np.zeros(max_records, dtype=np.int64)
        self.received = np.zeros(max_records, dtype=np.int64)
        self.starts = np.zeros(max_records, dtype=np.int64)
        self.lengths = np.zeros(max_records, dtype=np.int64)
        self.data = bytearray(max_bytes + max_records + L.max_record_length(capacity) + 16)
