"""The ring in one process (plus short-lived forked producers that stop or die on cue), against
both implementations: layout, round trip, wrap-around at every alignment, full ring and size
limits, abandoned claims, the order of a commit's stores, release, and byte-for-byte agreement
of native/ring.c with the pure-Python reference."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from ringgate.ring import Ring, RingError, owner_alive, owner_word
from ringgate.ring import _pyring as pyring
from ringgate.ring import layout as L
from tests.unit import ring_helpers
from tests.unit.ring_helpers import (
    dead_pid,
    drain,
    fork_claim,
    framed,
    native_or_skip,
    pack,
    read_batch,
    segment_bytes,
    unique_name,
)

impl_name, impl, make_ring = ring_helpers.impl_name, ring_helpers.impl, ring_helpers.make_ring  # fixtures

CAP = L.MIN_CAPACITY


def claim(ring: Ring, payloads, received_ns: int = 1_700_000_000_000_000_000):
    blob, lengths = pack(payloads)
    return ring.claim_commit(blob, lengths, received_ns)


def pattern(seq: int, length: int) -> bytes:
    return bytes(97 + (seq * 7 + k) % 26 for k in range(length))


def data_bytes(ring: Ring, position: int, length: int) -> bytes:
    index = position & (ring.capacity - 1)
    return bytes(ring.buf[L.HEADER_LENGTH + index : L.HEADER_LENGTH + index + length])


def move_to_index(ring: Ring, index: int) -> None:
    """Claim, read and release filler records until the (empty) ring's producer index is `index`."""
    cap = ring.capacity
    while left := (index - ring.producer_position) & (cap - 1):
        size = min(left, cap // 8)
        if left - size == 8:  # a word no record could fill
            size -= 16
        assert claim(ring, [b"f" * (size - L.RECORD_HEADER_LENGTH)])[0] == 0
        drain(ring, ring.consumer_position)
    assert ring.producer_position == ring.consumer_position


# -- layout ------------------------------------------------------------------------------------

HEADER_FIELDS = [
    ("MAGIC", L.MAGIC_OFFSET, 8),
    ("VERSION", L.VERSION_OFFSET, 4),
    ("IMPL", L.IMPL_OFFSET, 4),
    ("CAPACITY", L.CAPACITY_OFFSET, 8),
    ("EPOCH", L.EPOCH_OFFSET, 8),
    ("FLUSHER_PID", L.FLUSHER_PID_OFFSET, 8),
    ("DRAINING", L.DRAINING_OFFSET, 8),
    ("SINK_FAILING", L.SINK_FAILING_OFFSET, 8),
    ("UNBLOCKED_COUNT", L.UNBLOCKED_COUNT_OFFSET, 8),
    ("PRODUCER_POSITION", L.PRODUCER_POSITION_OFFSET, 8),
    ("CONSUMER_POSITION", L.CONSUMER_POSITION_OFFSET, 8),
    ("FREE_POSITION", L.FREE_POSITION_OFFSET, 8),
    ("INFLIGHT_FIRST", L.INFLIGHT_FIRST_OFFSET, 8),
    ("INFLIGHT_NEXT", L.INFLIGHT_NEXT_OFFSET, 8),
    ("UNBLOCK_FIRST", L.UNBLOCK_FIRST_OFFSET, 8),
    ("UNBLOCK_NEXT", L.UNBLOCK_NEXT_OFFSET, 8),
    ("DEAD_LETTER_COUNT", L.DEAD_LETTER_COUNT_OFFSET, 8),
    ("OLDEST_PENDING_NS", L.OLDEST_PENDING_NS_OFFSET, 8),
    ("SINK_REASON", L.SINK_REASON_OFFSET, L.SINK_REASON_LENGTH),
    ("DEAD_LETTER_RANGES", L.DEAD_LETTER_RANGES_OFFSET, L.DEAD_LETTER_SLOTS * 16),
]


def test_header_fields_do_not_overlap_and_words_are_aligned():
    fields = sorted(HEADER_FIELDS, key=lambda f: f[1])
    for (name, offset, size), (next_name, next_offset, _) in zip(fields, fields[1:], strict=False):
        assert offset + size <= next_offset, f"{name} overlaps {next_name}"
    for name, offset, size in fields:
        if size == 8:
            assert offset % 8 == 0, f"{name} is not 8-byte aligned"
    assert fields[-1][1] + fields[-1][2] <= L.HEADER_LENGTH


def test_hot_positions_each_on_their_own_cache_line_pair():
    def line(offset):
        return offset // 128

    producer_line = line(L.PRODUCER_POSITION_OFFSET)
    consumer_line = line(L.CONSUMER_POSITION_OFFSET)
    assert producer_line != consumer_line
    # producers write the producer line; nothing else lives there
    assert [n for n, o, _ in HEADER_FIELDS if line(o) == producer_line] == ["PRODUCER_POSITION"]
    # the consumer line holds only what the one consumer writes on every batch
    assert {n for n, o, _ in HEADER_FIELDS if line(o) == consumer_line} == {"CONSUMER_POSITION", "FREE_POSITION"}


def test_dead_letter_slots_end_before_the_data_region():
    assert L.DEAD_LETTER_RANGES_OFFSET + L.DEAD_LETTER_SLOTS * 16 <= L.HEADER_LENGTH
    assert L.SINK_REASON_OFFSET + L.SINK_REASON_LENGTH <= L.DEAD_LETTER_RANGES_OFFSET


def test_record_header_is_16_bytes_and_words_round_trip():
    assert L.RECORD_HEADER_LENGTH == 16
    assert (L.LENGTH_OFFSET, L.TYPE_OFFSET, L.RECEIVED_OFFSET) == (0, 4, 8)
    for length in (8, 16, 17, 4096, L.MAX_LENGTH, -16, -L.MAX_LENGTH):
        for type_ in (L.TYPE_DATA, L.TYPE_PADDING):
            word = L.header_word(length, type_)
            assert 0 < word < 1 << 63  # a header word is never an owner word
            assert L.split_word(word) == (length, type_)
    me = owner_word()
    assert L.is_owner_word(me) and -(1 << 63) <= me < 0
    assert me & 0xFFFFFFFF == os.getpid()
    assert owner_alive(me)
    assert not owner_alive(owner_word(dead_pid()))
    assert not owner_alive(1_700_000_000_000_000_000)  # a received time: the producer is committing or dead


def test_native_constants_match_layout():
    native = native_or_skip()
    assert native.IMPL == L.IMPL_NATIVE
    for name, value in native.LAYOUT.items():
        assert getattr(L, name) == value, name


@pytest.mark.parametrize("creator", ["python", "native"])
def test_segment_refuses_the_other_implementation(creator):
    native = native_or_skip()
    impls = {"python": pyring, "native": native}
    other = "native" if creator == "python" else "python"
    ring = Ring.create(unique_name(), CAP, ring_impl=impls[creator])
    try:
        with pytest.raises(RingError) as info:
            Ring.attach(ring.name, ring_impl=impls[other])
        assert f"created by the {creator} ring implementation" in str(info.value)
        assert f"this process uses {other}" in str(info.value)
        Ring.attach(ring.name, ring_impl=impls[creator]).close()
    finally:
        ring.close()
        ring.unlink()


# -- claim, commit, read -----------------------------------------------------------------------


def test_round_trip(make_ring):
    ring = make_ring()
    first_request = [b'{"a":1}', b'{"b":"two"}', b"{}", b'{"c":' + b"3" * 100 + b"}"]
    second_request = [b'{"d":4}']
    status, first, next_ = claim(ring, first_request, received_ns=111)
    sizes = [framed(len(p)) for p in first_request]
    assert (status, first, next_) == (0, 0, sum(sizes))
    assert claim(ring, second_request, received_ns=222) == (0, next_, next_ + framed(7))
    assert ring.producer_position == next_ + framed(7)

    b = read_batch(ring, 0)
    assert b.payloads == first_request + second_request
    assert b.positions == [0, sizes[0], sum(sizes[:2]), sum(sizes[:3]), sum(sizes)]
    assert b.received == [111] * 4 + [222]
    assert b.data == b"\n".join(first_request + second_request) + b"\n"
    assert (b.count, b.next_position, b.status) == (5, ring.producer_position, L.READ_IDLE)
    # reading does not consume; releasing does
    assert read_batch(ring, 0).payloads == b.payloads
    ring.release(b.next_position)
    assert read_batch(ring, b.next_position).count == 0
    assert ring.consumer_position == b.next_position


def test_read_limits(make_ring):
    ring = make_ring()
    payloads = [pattern(i, 10 + i) for i in range(20)]
    claim(ring, payloads)
    b = read_batch(ring, 0, max_records=3)
    assert b.payloads == payloads[:3]
    assert b.next_position == sum(framed(len(p)) for p in payloads[:3])
    # max_bytes counts payload and newline; stops before exceeding it
    b = read_batch(ring, b.next_position, max_bytes=(13 + 1) + (14 + 1) + 15)
    assert b.payloads == payloads[3:6]
    b2 = read_batch(ring, b.next_position, max_bytes=(16 + 1) + 16)
    assert b2.payloads == payloads[6:7]
    # at least one record, however small max_bytes is
    b3 = read_batch(ring, b2.next_position, max_bytes=1)
    assert b3.payloads == payloads[7:8]
    b4 = read_batch(ring, b3.next_position, max_bytes=0)
    assert b4.payloads == payloads[8:9]
    rest = read_batch(ring, b4.next_position)
    assert rest.payloads == payloads[9:]
    assert (rest.next_position, rest.status) == (ring.producer_position, L.READ_IDLE)
    # max_records=0 reads nothing; a cursor at the producer position reads nothing
    assert read_batch(ring, 0, max_records=0).count == 0
    assert read_batch(ring, ring.producer_position).count == 0


@pytest.mark.parametrize("length", range(1, 25))
def test_wrap_around_at_every_alignment(make_ring, length):
    """Fill and drain repeatedly across the end with records of every length mod 8: a padding
    record exactly when a request would cross the end, intact records after it."""
    ring = make_ring()
    cap = ring.capacity
    rng = random.Random(length)
    size = framed(length)
    pending: list[tuple[int, bytes]] = []
    cursor = seq = wraps = 0
    while wraps < 4:
        n = rng.randint(1, 60)
        payloads = [pattern(seq + i, length) for i in range(n)]
        position = ring.producer_position
        index = position & (cap - 1)
        total = n * size
        status, first, next_ = claim(ring, payloads)
        gap = cap - index if index + total > cap else 0
        tail = 8 if not gap and index + total == cap - 8 else 0
        if status == L.CLAIM_FULL:
            assert ring.producer_position == position
            assert position + gap + total + tail - cursor > cap
        else:
            assert status == 0
            assert (first, next_) == (position + gap, position + gap + total + tail)
            if gap:
                wraps += 1
                assert ring.header_word_at(position)[0] == L.header_word(gap, L.TYPE_PADDING)
                assert first & (cap - 1) == 0
            if tail:
                assert ring.header_word_at(next_ - 8)[0] == L.header_word(8, L.TYPE_PADDING)
            pending += [(first + i * size, p) for i, p in enumerate(payloads)]
            seq += n
        if status == L.CLAIM_FULL or rng.random() < 0.15:
            b = read_batch(ring, cursor)
            assert list(zip(b.positions, b.payloads, strict=True)) == pending
            assert (b.next_position, b.status) == (ring.producer_position, L.READ_IDLE)
            pending.clear()
            cursor = b.next_position
            ring.release(cursor)
    assert ring.producer_position > 3 * cap


def test_claim_never_ends_one_word_before_the_end(make_ring):
    """A claim that would end 8 bytes before the end takes them as a padding record: the next
    claim always has room for its header and owner word (a claim starting at capacity - 8 would
    write its owner word past the data region)."""
    ring = make_ring()
    cap = ring.capacity
    move_to_index(ring, cap - 8 - 2 * framed(16))
    status, first, next_ = claim(ring, [pattern(1, 16), pattern(2, 16)])
    assert (status, next_ - first) == (0, 2 * framed(16) + 8)
    assert next_ & (cap - 1) == 0
    assert ring.header_word_at(next_ - 8)[0] == L.header_word(8, L.TYPE_PADDING)
    status, first2, _ = claim(ring, [pattern(3, 16)])
    assert (status, first2) == (0, next_)  # no gap
    b = read_batch(ring, ring.consumer_position)
    assert b.payloads == [pattern(1, 16), pattern(2, 16), pattern(3, 16)]
    assert b.positions == [first, first + framed(16), next_]


def test_large_claims_round_trip(make_ring):
    """Claims of 64 KiB and more (the native ring copies them without the GIL), across the end."""
    ring = make_ring(1 << 20)
    cursor = 0
    for step in range(12):
        payloads = [pattern(step * 100 + i, 2000 + step * 37 + i) for i in range(100)]
        status, first, next_ = claim(ring, payloads, received_ns=step)
        assert status == 0 and next_ - first >= sum(framed(len(p)) for p in payloads)
        b = read_batch(ring, cursor, max_bytes=1 << 20)
        assert b.payloads == payloads and b.received == [step] * 100 and b.positions[0] == first
        cursor = b.next_position
        ring.release(cursor)
    assert ring.producer_position > 2 * ring.capacity


# -- full ring and size limits -----------------------------------------------------------------


def test_full_ring_changes_nothing_and_release_frees_space(make_ring):
    ring = make_ring()
    request = [pattern(i, 100) for i in range(50)]  # 6000 bytes framed
    positions = []
    while True:
        before = segment_bytes(ring)
        status, first, next_ = claim(ring, request)
        if status == L.CLAIM_FULL:
            break
        assert status == 0
        positions.append((first, next_))
    assert segment_bytes(ring) == before
    assert (status, first, next_) == (L.CLAIM_FULL, 0, 0)
    assert ring.producer_position + 6000 - ring.capacity > 0
    b = read_batch(ring, 0, max_records=50)
    assert b.next_position == positions[0][1]
    ring.release(b.next_position)
    assert claim(ring, request)[0] == 0
    assert claim(ring, request)[0] == L.CLAIM_FULL


def test_largest_record_and_claim_limits(make_ring):
    ring = make_ring()
    cap = ring.capacity
    largest = cap // 8 - L.RECORD_HEADER_LENGTH
    before = segment_bytes(ring)
    assert claim(ring, [b"x" * (largest + 1)]) == (L.CLAIM_TOO_LARGE, 0, 0)
    assert claim(ring, [b"x" * largest] * 5) == (L.CLAIM_TOO_LARGE, 0, 0)  # 5/8 of the ring
    assert claim(ring, []) == (L.CLAIM_TOO_LARGE, 0, 0)
    assert segment_bytes(ring) == before
    assert claim(ring, [b"x" * largest] * 4) == (0, 0, cap // 2)  # exactly half
    assert claim(ring, [b"y" * largest]) == (0, cap // 2, cap // 2 + cap // 8)
    b = read_batch(ring, 0, max_records=10, max_bytes=10)
    assert b.count == 1 and b.payloads[0] == b"x" * largest  # at least one, even the largest


# -- arguments and corruption ------------------------------------------------------------------


def test_bad_arguments_raise_and_change_nothing(make_ring):
    ring = make_ring()
    claim(ring, [b'{"a":1}'])
    fn, buf, me = ring.impl, ring.buf, owner_word()
    before = segment_bytes(ring)
    arrays = [np.zeros(10, np.int64) for _ in range(4)]
    data = bytearray(10 + 10 + ring.capacity // 8)
    one = np.array([3], np.int64)
    cases = [
        lambda: fn.claim_commit(buf, b"abc", np.array([-1], np.int64), 1, me),
        lambda: fn.claim_commit(buf, b"abc", np.array([4], np.int64), 1, me),
        lambda: fn.claim_commit(buf, b"abc", one, 1, 12345),  # not an owner word
        lambda: fn.claim_commit(buf, b"abc", one, 1, me, 7),
        lambda: fn.read(buf, 4, 10, 10, *arrays, data),  # misaligned cursor
        lambda: fn.read(buf, -8, 10, 10, *arrays, data),
        lambda: fn.read(buf, 0, 11, 10, *arrays, data),  # arrays too short
        lambda: fn.read(buf, 0, 10, 10, *arrays, bytearray(100)),  # data too small
        lambda: fn.read(buf, 0, -1, 10, *arrays, data),
        lambda: fn.release(buf, ring.producer_position + 8),
        lambda: fn.release(buf, 3),
        lambda: fn.unblock_zero(buf, 5),
        lambda: fn.unblock_in_progress(buf, -8, L.header_word(-24, L.TYPE_DATA)),
    ]
    small = memoryview(bytearray(L.HEADER_LENGTH + 1024))
    bad_capacity = bytearray(before)
    bad_capacity[L.CAPACITY_OFFSET : L.CAPACITY_OFFSET + 8] = (1000).to_bytes(8, "little")
    too_big = bytearray(before)
    too_big[L.CAPACITY_OFFSET : L.CAPACITY_OFFSET + 8] = (1 << 20).to_bytes(8, "little")
    for segment in (small, memoryview(bad_capacity), memoryview(too_big)):
        cases += [
            lambda s=segment: fn.claim_commit(s, b"abc", one, 1, me),
            lambda s=segment: fn.read(s, 0, 10, 10, *arrays, data),
            lambda s=segment: fn.release(s, 0),
            lambda s=segment: fn.unblock_zero(s, 0),
            lambda s=segment: fn.unblock_in_progress(s, 0, L.header_word(-24, L.TYPE_DATA)),
        ]
    for i, case in enumerate(cases):
        with pytest.raises(ValueError):
            case()
        assert segment_bytes(ring) == before, f"case {i} changed the segment"
    assert not fn.unblock_in_progress(buf, 0, L.header_word(24, L.TYPE_DATA))  # not an in-progress word
    if ring.impl.IMPL == L.IMPL_NATIVE:  # the native ring takes int64 buffers only
        with pytest.raises(ValueError):
            fn.claim_commit(buf, b"abc", np.array([3.0]), 1, me)
        with pytest.raises(ValueError):
            fn.read(buf, 0, 10, 10, np.zeros(10, np.int32), *arrays[1:], data)
        with pytest.raises(TypeError):
            fn.read(buf, 0, 10, 10, *arrays, bytes(len(data)))  # read-only data


@pytest.mark.parametrize(
    "word",
    [
        L.header_word(1 << 20, L.TYPE_DATA),  # longer than a record may be
        L.header_word(8, L.TYPE_DATA),  # shorter than a record header
        L.header_word(0, L.TYPE_PADDING),  # would never advance
        L.header_word(24, 7),  # unknown type
    ],
)
def test_corrupt_record_header_raises_instead_of_overflowing(make_ring, word):
    ring = make_ring()
    claim(ring, [b'{"a":1}', b'{"b":2}'])
    ring._q[L.HEADER_LENGTH // 8 + framed(7) // 8] = word  # the second record's header
    with pytest.raises(ValueError) as info:
        read_batch(ring, 0)
    # the word in full, zero padded (PyErr_Format has no %llx: the native ring formats it itself)
    assert str(info.value) == f"corrupt ring: invalid record header 0x{word:016x} at position {framed(7)}"


# -- abandoned claims --------------------------------------------------------------------------


def test_dead_producer_in_progress_claim_is_padded(make_ring):
    ring = make_ring()
    victim = fork_claim(ring, [pattern(0, 30), pattern(1, 40)], L.STOP_AFTER_HEADER).wait_stopped()
    later = [pattern(2, 50), pattern(3, 60)]
    assert claim(ring, later)[0] == 0
    word, owner = ring.header_word_at(0)
    claim_length = framed(30) + framed(40)
    assert L.split_word(word) == (-claim_length, L.TYPE_DATA)
    assert owner & 0xFFFFFFFF == victim.pid and L.is_owner_word(owner)
    b = read_batch(ring, 0)
    assert (b.count, b.next_position, b.status) == (0, 0, L.READ_BLOCKED_IN_PROGRESS)
    victim.kill()
    assert not owner_alive(owner)
    assert not ring.impl.unblock_in_progress(ring.buf, 0, word + 8)  # not the word there
    assert ring.unblocked_count == 0
    assert ring.try_unblock(0, L.READ_BLOCKED_IN_PROGRESS)
    assert ring.unblocked_count == 1
    assert ring.header_word_at(0)[0] == L.header_word(claim_length, L.TYPE_PADDING)
    assert not ring.try_unblock(0, L.READ_BLOCKED_IN_PROGRESS)  # once
    b = read_batch(ring, 0)
    assert b.payloads == later and b.positions[0] == claim_length


def test_dead_producer_zero_header_is_padded(make_ring):
    ring = make_ring()
    victim = fork_claim(ring, [pattern(0, 30)], L.STOP_BEFORE_HEADER).wait_stopped()
    victim.kill()
    assert ring.producer_position == framed(30)
    assert ring.header_word_at(0) == (0, 0)
    later = [pattern(1, 20)]
    assert claim(ring, later)[0] == 0
    b = read_batch(ring, 0)
    assert (b.count, b.next_position, b.status) == (0, 0, L.READ_BLOCKED_ZERO)
    assert ring.try_unblock(0, L.READ_BLOCKED_ZERO)
    assert ring.unblocked_count == 1
    assert ring.header_word_at(0)[0] == L.header_word(framed(30), L.TYPE_PADDING)
    assert (ring._get(L.UNBLOCK_FIRST_OFFSET), ring._get(L.UNBLOCK_NEXT_OFFSET)) == (0, framed(30))
    assert read_batch(ring, 0).payloads == later


def test_live_stopped_producer_is_not_padded_and_commits_when_resumed(make_ring):
    """Through Ring: the native consumer sees a live owner; the pure-Python one cannot take the
    producer lock the stopped producer holds. Either way the claim survives and commits."""
    ring = make_ring()
    records = [pattern(0, 30), pattern(1, 40)]
    victim = fork_claim(ring, records, L.STOP_AFTER_HEADER, through_ring=True).wait_stopped()
    b = read_batch(ring, 0)
    assert (b.count, b.status) == (0, L.READ_BLOCKED_IN_PROGRESS)
    assert not ring.try_unblock(0, L.READ_BLOCKED_IN_PROGRESS)
    assert ring.unblocked_count == 0
    assert victim.resume() == (0, 0, framed(30) + framed(40))
    assert read_batch(ring, 0).payloads == records


def test_zero_run_ends_where_the_next_claim_starts(make_ring):
    """Producers killed between their owner-word CAS and their header CAS (no stop point there:
    the states are written the way claim_commit writes them): each run is padded up to the next
    claim's start, never to the middle of a claim."""
    ring = make_ring()
    q = ring._q
    dead_owner = owner_word(dead_pid())

    def abandon_after_owner_word(length: int) -> int:
        position = ring.producer_position
        q[L.PRODUCER_POSITION_OFFSET // 8] = position + length
        q[(L.HEADER_LENGTH + position) // 8 + 1] = dead_owner
        return position

    a = abandon_after_owner_word(64)
    b = abandon_after_owner_word(48)
    later = [pattern(0, 20)]
    _, c, _ = claim(ring, later)
    assert (a, b, c) == (0, 64, 112)
    assert ring.impl.unblock_zero(ring.buf, a)
    assert ring.header_word_at(a)[0] == L.header_word(b - a, L.TYPE_PADDING)  # ends at b's start, not its owner word
    assert (ring._get(L.UNBLOCK_FIRST_OFFSET), ring._get(L.UNBLOCK_NEXT_OFFSET)) == (a, b)
    r = read_batch(ring, 0)
    assert (r.count, r.next_position, r.status) == (0, b, L.READ_BLOCKED_ZERO)
    assert ring.impl.unblock_zero(ring.buf, b)  # b's own owner word does not end its run
    assert ring.header_word_at(b)[0] == L.header_word(c - b, L.TYPE_PADDING)
    assert read_batch(ring, 0).payloads == later
    assert ring.unblocked_count == 2
    assert not ring.impl.unblock_zero(ring.buf, c)  # not zero
    assert not ring.impl.unblock_zero(ring.buf, ring.producer_position)  # nothing claimed there


def test_producer_stalled_in_an_earlier_padded_run_loses(make_ring):
    """B stalls between its position CAS and its header; the consumer pads the zero run holding
    A and B, reads on, pads a second run (D) and has released nothing yet. B resumes: it must
    report CLAIM_LOST (UNBLOCK_NEXT only grows), else it would acknowledge records the reader has
    already skipped. The children call the implementation directly, so the pure-Python reference
    runs the same interleaving (through Ring, its flock would keep B from claiming at all)."""
    ring = make_ring()
    a = fork_claim(ring, [pattern(0, 30)], L.STOP_BEFORE_HEADER).wait_stopped()
    b = fork_claim(ring, [pattern(1, 30)], L.STOP_BEFORE_HEADER).wait_stopped()
    _, c, _ = claim(ring, [pattern(2, 30)])
    assert read_batch(ring, 0).status == L.READ_BLOCKED_ZERO
    assert ring.try_unblock(0, L.READ_BLOCKED_ZERO)
    r = read_batch(ring, 0)
    assert r.payloads == [pattern(2, 30)] and r.positions == [c]
    d = fork_claim(ring, [pattern(3, 30)], L.STOP_BEFORE_HEADER).wait_stopped()
    _, e, _ = claim(ring, [pattern(4, 30)])
    r = read_batch(ring, r.next_position)
    assert (r.count, r.status) == (0, L.READ_BLOCKED_ZERO)
    assert ring.try_unblock(r.next_position, L.READ_BLOCKED_ZERO)
    assert ring.consumer_position == 0  # nothing released: CONSUMER_POSITION does not cover B
    assert b.resume()[0] == L.CLAIM_LOST
    assert a.resume()[0] == L.CLAIM_LOST
    assert d.resume()[0] == L.CLAIM_LOST
    payloads, _, status = drain(ring, 0)
    assert payloads == [pattern(2, 30), pattern(4, 30)] and status == L.READ_IDLE
    assert ring.unblocked_count == 2


def test_unblock_refuses_released_space(make_ring):
    """Below CONSUMER_POSITION the space is zero again and producers may be claiming it: a stale
    position must not pad it."""
    ring = make_ring()
    claim(ring, [pattern(0, 30)])
    drain(ring, 0)
    claim(ring, [pattern(1, 30)])
    before = segment_bytes(ring)
    assert not ring.impl.unblock_zero(ring.buf, 0)
    assert not ring.impl.unblock_in_progress(ring.buf, 0, L.header_word(-framed(30), L.TYPE_DATA))
    assert segment_bytes(ring) == before and ring.unblocked_count == 0


@pytest.mark.parametrize("wrapped", [False, True], ids=["inside", "wrapped"])
@pytest.mark.parametrize("stop_at", [L.STOP_BEFORE_HEADER, L.STOP_AFTER_HEADER], ids=["before_header", "after_header"])
def test_reader_never_sees_an_uncommitted_claim(make_ring, stop_at, wrapped):
    """The first header is committed last: a claim stopped after its position CAS or after its
    header CAS shows nothing, blocks the reader (later commits wait behind it), and once its
    producer is killed and the claim padded, only the later records are read."""
    ring = make_ring()
    cap = ring.capacity
    if wrapped:
        move_to_index(ring, cap - 64)
    start = ring.producer_position
    victim_records = [pattern(i, 40 + i) for i in range(5)]
    victim = fork_claim(ring, victim_records, stop_at).wait_stopped()
    total = sum(framed(len(p)) for p in victim_records)
    gap = 64 if wrapped else 0
    assert ring.producer_position == start + gap + total
    later = [pattern(9, 25)]
    assert claim(ring, later)[0] == 0
    word, owner = ring.header_word_at(start)
    if stop_at == L.STOP_BEFORE_HEADER:
        assert (word, owner) == (0, 0)
    else:
        assert L.split_word(word) == (-(gap + total), L.TYPE_PADDING if wrapped else L.TYPE_DATA)
        assert L.is_owner_word(owner)
    # nothing of the claim but its header and owner word is in the ring yet
    assert not any(data_bytes(ring, start + 16, gap - 16 if wrapped else total - 16))
    if wrapped:
        assert not any(data_bytes(ring, start + gap, total))
    expected_status = L.READ_BLOCKED_ZERO if stop_at == L.STOP_BEFORE_HEADER else L.READ_BLOCKED_IN_PROGRESS
    b = read_batch(ring, start)
    assert (b.count, b.next_position, b.status) == (0, start, expected_status)
    victim.kill()
    payloads, cursor, status = drain(ring, start)
    unblocks = 0
    while status != L.READ_IDLE:
        assert ring.try_unblock(cursor, status)
        unblocks += 1
        more, cursor, status = drain(ring, cursor)
        payloads += more
    assert payloads == later
    # a zero claim that wrapped is two zero runs (the gap, then the data at the start)
    assert unblocks == ring.unblocked_count == (2 if wrapped and stop_at == L.STOP_BEFORE_HEADER else 1)


def test_producer_resumed_a_lap_later_cannot_commit(make_ring):
    """A producer stops after its header CAS; its claim is padded (unblock_in_progress called
    directly: what the consumer does once the owner slot holds the received time, just before
    the commit CAS), read past and released; a lap later a newer claim of the same length stops
    at the same index. The old producer resumes: its commit CAS must fail (CLAIM_LOST), else it
    answers 202 for zeroed records and the reader takes the newer claim's space as committed."""
    ring = make_ring()
    records = [pattern(0, 40), pattern(1, 40)]
    old = fork_claim(ring, records, L.STOP_AFTER_HEADER).wait_stopped()
    old_word = ring.header_word_at(0)[0]
    assert ring.impl.unblock_in_progress(ring.buf, 0, old_word)
    assert drain(ring, 0)[0] == []
    move_to_index(ring, 0)
    lap_later = ring.producer_position
    assert lap_later == ring.capacity
    newer_records = [pattern(2, 40), pattern(3, 40)]
    newer = fork_claim(ring, newer_records, L.STOP_AFTER_HEADER).wait_stopped()
    newer_word = ring.header_word_at(lap_later)[0]
    assert L.split_word(newer_word)[0] == L.split_word(old_word)[0] == -2 * framed(40)
    assert newer_word == old_word | 1 << L.LAP_SHIFT  # the same but for the lap
    assert old.resume()[0] == L.CLAIM_LOST
    assert newer.resume() == (0, lap_later, lap_later + 2 * framed(40))
    assert read_batch(ring, lap_later).payloads == newer_records


def test_leftovers_of_an_earlier_lap_read_as_no_header(make_ring):
    """A producer killed during its undo leaves its in-progress word (of its lap) and its owner
    word in space that was padded, released and claimed again. At a claim start they read as no
    header (READ_BLOCKED_ZERO, not a claim in progress to pad with the leftover's length), inside
    a zero run as zero; unblock_zero pads over them and the ring reads on."""
    ring = make_ring()
    cap = ring.capacity
    move_to_index(ring, cap // 2)
    move_to_index(ring, 1024)
    start = ring.producer_position
    assert start == cap + 1024
    q = ring._q
    dead = owner_word(dead_pid())
    word0 = (L.HEADER_LENGTH + 1024) // 8
    # a claim of 200 bytes whose producer died after its position CAS, over leftovers of lap 0:
    # an in-progress header of 64 bytes and its owner word at the start, another one inside
    q[L.PRODUCER_POSITION_OFFSET // 8] = start + 200
    q[word0] = L.in_progress_word(64, L.TYPE_DATA, 1024, cap)
    q[word0 + 1] = dead
    q[word0 + 10] = L.in_progress_word(48, L.TYPE_DATA, 1024 + 80, cap)
    later = [pattern(5, 30)]
    assert claim(ring, later)[1] == start + 200
    b = read_batch(ring, start)
    assert (b.count, b.next_position, b.status) == (0, start, L.READ_BLOCKED_ZERO)
    assert not ring.impl.unblock_in_progress(ring.buf, start, q[word0])  # not this lap's claim
    assert ring.try_unblock(start, L.READ_BLOCKED_ZERO)
    assert ring.header_word_at(start)[0] == L.header_word(200, L.TYPE_PADDING)
    assert read_batch(ring, start).payloads == later
    # a leftover owner word alone in a header slot is no header either
    move_to_index(ring, 2048)
    at = ring.producer_position
    q[L.PRODUCER_POSITION_OFFSET // 8] = at + 64
    q[(L.HEADER_LENGTH + 2048) // 8] = dead
    assert read_batch(ring, at).status == L.READ_BLOCKED_ZERO
    assert ring.try_unblock(at, L.READ_BLOCKED_ZERO)
    assert read_batch(ring, at).next_position == at + 64


def test_zero_run_of_2_gib_is_padded_in_pieces_that_fit_the_length(impl):
    """A 2 GiB ring whose every byte was claimed by producers that died before their owner
    word: one zero run of 2^31 bytes. Its padding length would wrap the int32 to -2^31 (an
    in-progress claim for ever); it is padded in pieces of MAX_LENGTH. The segment is private
    anonymous memory: untouched pages cost nothing."""
    import mmap

    cap = 1 << 31
    mm = mmap.mmap(-1, L.HEADER_LENGTH + cap, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf = memoryview(mm)
    q = buf.cast("q")
    try:
        q[L.CAPACITY_OFFSET // 8] = cap
        q[L.PRODUCER_POSITION_OFFSET // 8] = cap
        arrays = [np.zeros(4, np.int64) for _ in range(4)]
        data = np.zeros(64 + 4 + L.max_record_length(cap), np.uint8)  # calloc: untouched pages
        assert impl.read(buf, 0, 4, 64, *arrays, data) == (0, 0, 0, L.READ_BLOCKED_ZERO)
        for piece in range(2):
            assert impl.unblock_zero(buf, piece * L.MAX_LENGTH)
            assert q[L.HEADER_LENGTH // 8 + piece * L.MAX_LENGTH // 8] == L.header_word(L.MAX_LENGTH, L.TYPE_PADDING)
            assert q[L.UNBLOCK_NEXT_OFFSET // 8] == (piece + 1) * L.MAX_LENGTH
        assert impl.read(buf, 0, 4, 64, *arrays, data) == (0, cap, 0, L.READ_IDLE)
        assert q[L.UNBLOCKED_COUNT_OFFSET // 8] == 2
    finally:
        q.release()
        buf.release()
        mm.close()


# -- release -----------------------------------------------------------------------------------


def test_release_zeroes_the_freed_space_across_the_end(make_ring):
    ring = make_ring()
    cap = ring.capacity
    move_to_index(ring, cap - 4096)
    records = [pattern(i, 200) for i in range(40)]  # 8640 bytes framed: wraps
    status, first, next_ = claim(ring, records)
    assert status == 0 and first & (cap - 1) == 0
    also = [pattern(99, 100)]
    _, other, _ = claim(ring, also)
    b = read_batch(ring, ring.consumer_position, max_records=40)
    assert b.payloads == records
    free = ring._get(L.FREE_POSITION_OFFSET)
    ring.release(b.next_position)
    assert ring.consumer_position == ring._get(L.FREE_POSITION_OFFSET) == next_
    assert not any(data_bytes(ring, free, cap - (free & (cap - 1))))
    assert not any(data_bytes(ring, first, next_ - first))
    assert data_bytes(ring, other + 16, 100) == also[0]  # unreleased records untouched
    ring.release(next_ - 8)  # backwards: nothing happens
    assert ring.consumer_position == next_
    assert read_batch(ring, next_).payloads == also


def test_lock_consumer_finishes_a_killed_consumers_release(make_ring):
    ring = make_ring()
    claim(ring, [pattern(i, 100) for i in range(10)])
    b = read_batch(ring, 0)
    # the consumer died right after publishing CONSUMER_POSITION, before zeroing and FREE_POSITION
    ring._set(L.CONSUMER_POSITION_OFFSET, b.next_position)
    assert ring._get(L.FREE_POSITION_OFFSET) == 0 and any(data_bytes(ring, 0, b.next_position))
    successor = Ring.attach(ring.name, ring_impl=ring.impl)
    try:
        successor.lock_consumer()
        assert successor._get(L.FREE_POSITION_OFFSET) == b.next_position
        assert not any(data_bytes(ring, 0, b.next_position))
        with pytest.raises(RingError, match="already has a consumer"):
            ring.lock_consumer()
    finally:
        successor.close()


# -- the native ring is the reference, byte for byte --------------------------------------------


def test_native_matches_the_reference_byte_for_byte():
    """The same random claims, reads, releases and unblocks on a native and a pure-Python ring:
    same results and the same bytes in both segments (IMPL field aside)."""
    native = native_or_skip()
    seed = random.randrange(1 << 32)
    print(f"seed={seed}")
    rings = [Ring.create(unique_name(), CAP, epoch=42, ring_impl=m) for m in (pyring, native)]
    dead = owner_word(dead_pid())
    try:
        rng = random.Random(seed)
        cursor = 0
        for step in range(3000):
            op = rng.random()
            if op < 0.6:
                n = rng.randint(1, 30)
                payloads = [pattern(step + i, rng.choice([0, 1, 7, 8, 9, rng.randint(0, 900)])) for i in range(n)]
                outcomes = [claim(r, payloads, received_ns=step) for r in rings]
            elif op < 0.63:  # a producer killed after its position CAS, maybe after its owner word
                length = framed(rng.randint(0, 200))
                with_owner = rng.random() < 0.5
                outcomes = []
                for r in rings:
                    position = r.producer_position
                    fits = position + length - r._get(L.FREE_POSITION_OFFSET) <= CAP
                    if fits and (position & (CAP - 1)) + length + 8 < CAP:
                        r._set(L.PRODUCER_POSITION_OFFSET, position + length)
                        if with_owner:
                            r._q[(L.HEADER_LENGTH + (position & (CAP - 1))) // 8 + 1] = dead
                    outcomes.append(r.producer_position)
            else:
                max_records, max_bytes = rng.randint(0, 500), rng.randint(0, 20000)
                unblock, release = rng.random() < 0.5, rng.random() < 0.7
                outcomes = []
                for r in rings:
                    b = read_batch(r, cursor, max_records, max_bytes)
                    outcome = [b.count, b.next_position, b.status, b.positions, b.received, b.data]
                    if b.status != L.READ_IDLE and unblock:
                        outcome.append(r.try_unblock(b.next_position, b.status))
                    if release:
                        r.release(b.next_position)
                    outcomes.append(outcome)
                cursor = outcomes[0][1]
            assert outcomes[0] == outcomes[1], f"step {step}, seed {seed}"
            a, b = (segment_bytes(r) for r in rings)
            assert a[: L.IMPL_OFFSET] + a[L.IMPL_OFFSET + 4 :] == b[: L.IMPL_OFFSET] + b[L.IMPL_OFFSET + 4 :], (
                f"segments differ after step {step}, seed {seed}"
            )
        assert rings[0].producer_position > 4 * CAP
    finally:
        for r in rings:
            r.close()
            r.unlink()
