"""Pure-Python ring: the readable reference and the test oracle for native/ring.c.

Same layout (see layout.py), same flat functions, same return codes. Python has no
compare-and-swap on shared memory, so the caller (`Ring`) holds an `flock` on the ring's
producer lock file around `claim_commit` and around both `unblock_*` calls: producers are
serialised, and the consumer only pads a claim while no producer is between claim and commit.
The kernel drops the lock when its holder dies, so a killed producer cannot hold it forever.
`read` and `release` take no lock: an aligned int64 store through a `memoryview.cast("q")` is one
machine store, and the committing store of a claim's first header comes after every other store
of the claim.

Every function takes `buf`, a writable memoryview of the whole segment (header + data).
"""

from __future__ import annotations

import os
import signal

import numpy as np

from .layout import (
    CLAIM_FULL,
    CLAIM_LOST,
    CLAIM_TOO_LARGE,
    CONSUMER_POSITION_OFFSET,
    FREE_POSITION_OFFSET,
    HEADER_LENGTH,
    IMPL_PYTHON,
    PRODUCER_POSITION_OFFSET,
    READ_BLOCKED_IN_PROGRESS,
    READ_BLOCKED_ZERO,
    READ_IDLE,
    RECORD_HEADER_LENGTH,
    STOP_AFTER_HEADER,
    STOP_BEFORE_HEADER,
    TYPE_DATA,
    TYPE_PADDING,
    UNBLOCK_FIRST_OFFSET,
    UNBLOCK_NEXT_OFFSET,
    UNBLOCKED_COUNT_OFFSET,
    align,
    header_word,
    max_claim_length,
    split_word,
)

IMPL = IMPL_PYTHON
_W = 8  # word size


def _capacity(q) -> int:
    return q[2]  # CAPACITY_OFFSET // 8


def claim_commit(buf, blob, lengths, received_ns: int, owner: int, stop_at: int = 0):
    """Claim space for every record of one request, copy them in and commit, in one call.

    Returns (status, first_position, next_position): status 0 and the position of the first
    record and the position just past the claim; or CLAIM_FULL / CLAIM_LOST / CLAIM_TOO_LARGE.
    """
    q = buf.cast("q")
    capacity = _capacity(q)
    mask = capacity - 1
    n = len(lengths)
    framed = [align(RECORD_HEADER_LENGTH + int(length)) for length in lengths]
    total = sum(framed)
    if n == 0 or total > max_claim_length(capacity):
        return CLAIM_TOO_LARGE, 0, 0

    position = q[PRODUCER_POSITION_OFFSET // _W]
    index = position & mask
    gap = capacity - index if index + total > capacity else 0
    if position + gap + total - q[FREE_POSITION_OFFSET // _W] > capacity:
        return CLAIM_FULL, 0, 0
    q[PRODUCER_POSITION_OFFSET // _W] = position + gap + total
    if stop_at == STOP_BEFORE_HEADER:
        os.kill(os.getpid(), signal.SIGSTOP)

    first_word = (HEADER_LENGTH + index) // _W
    in_progress = header_word(-(gap + total), TYPE_PADDING if gap else TYPE_DATA)
    if q[first_word] != 0:  # the consumer padded this claim while we were stopped
        return CLAIM_LOST, 0, 0
    q[first_word] = in_progress
    if _claim_passed(q, position):
        q[first_word] = 0
        return CLAIM_LOST, 0, 0
    q[first_word + 1] = owner
    if stop_at == STOP_AFTER_HEADER:
        os.kill(os.getpid(), signal.SIGSTOP)

    data_position = position + gap
    offset = HEADER_LENGTH + (data_position & mask)
    src = 0
    blob = memoryview(blob)
    for i in range(n):
        length = int(lengths[i])
        if i > 0 or gap:  # the claim's first header is committed last
            q[offset // _W] = header_word(RECORD_HEADER_LENGTH + length, TYPE_DATA)
            q[offset // _W + 1] = received_ns
        start = offset + RECORD_HEADER_LENGTH
        buf[start : start + length] = blob[src : src + length]
        src += length
        offset += framed[i]

    if q[first_word] != in_progress:  # padded by the consumer: we lost the claim
        return CLAIM_LOST, 0, 0
    if gap:
        q[first_word] = header_word(gap, TYPE_PADDING)
    else:
        q[first_word + 1] = received_ns
        q[first_word] = header_word(RECORD_HEADER_LENGTH + int(lengths[0]), TYPE_DATA)
    return 0, data_position, position + gap + total


def _claim_passed(q, position: int) -> bool:
    """True when the consumer padded (or padded and passed) the claim starting at `position`."""
    first, next_ = q[UNBLOCK_FIRST_OFFSET // _W], q[UNBLOCK_NEXT_OFFSET // _W]
    if first <= position < next_:
        return True
    return q[CONSUMER_POSITION_OFFSET // _W] > position


def read(buf, cursor: int, max_records: int, max_bytes: int, positions, received, starts, lengths, data):
    """Copy committed records from `cursor` on into the caller's arrays and `data` (NDJSON).

    Stops at max_records, before exceeding max_bytes of payload (but takes at least one record),
    at the producer position, or at a claim not yet committed. `data` must hold
    max_bytes + max_records + capacity // 8 bytes. Returns (count, next_cursor, data_length, status).
    """
    q = buf.cast("q")
    capacity = _capacity(q)
    mask = capacity - 1
    producer = q[PRODUCER_POSITION_OFFSET // _W]
    position = cursor
    count = 0
    used = 0
    status = READ_IDLE
    while count < max_records and position < producer:
        offset = HEADER_LENGTH + (position & mask)
        word = q[offset // _W]
        if word == 0:
            status = READ_BLOCKED_ZERO
            break
        length, type_ = split_word(word)
        if length < 0:
            status = READ_BLOCKED_IN_PROGRESS
            break
        if type_ == TYPE_PADDING:
            position += align(length)
            continue
        size = length - RECORD_HEADER_LENGTH
        if count and used + size > max_bytes:
            break
        start = offset + RECORD_HEADER_LENGTH
        data[used : used + size] = buf[start : start + size]
        data[used + size] = 10  # b"\n"
        positions[count] = position
        received[count] = q[offset // _W + 1]
        starts[count] = used
        lengths[count] = size
        used += size + 1
        count += 1
        position += align(length)
    return count, position, used, status


def unblock_in_progress(buf, position: int, expected_word: int) -> bool:
    """Turn the abandoned claim at `position` (first word `expected_word`) into padding."""
    q = buf.cast("q")
    word_index = (HEADER_LENGTH + (position & (_capacity(q) - 1))) // _W
    if q[word_index] != expected_word:
        return False
    length, _ = split_word(expected_word)
    q[word_index] = header_word(-length, TYPE_PADDING)
    q[UNBLOCKED_COUNT_OFFSET // _W] += 1
    return True


def unblock_zero(buf, position: int) -> bool:
    """Turn the zero run at `position` (a producer died before writing its header) into padding.

    The run ends at the first non-zero word, the producer position or the end of the data region.
    """
    q = buf.cast("q")
    capacity = _capacity(q)
    index = position & (capacity - 1)
    producer = q[PRODUCER_POSITION_OFFSET // _W]
    limit = min(capacity, index + (producer - position))
    if limit <= index:
        return False
    base = HEADER_LENGTH // _W
    words = np.frombuffer(buf, dtype=np.int64, count=(limit - index) // _W, offset=HEADER_LENGTH + index)
    nonzero = np.flatnonzero(words)
    end = index + int(nonzero[0]) * _W if len(nonzero) else limit
    del words, nonzero
    if end == index:
        return False
    q[UNBLOCK_FIRST_OFFSET // _W] = position
    q[UNBLOCK_NEXT_OFFSET // _W] = position + (end - index)
    q[base + index // _W] = header_word(end - index, TYPE_PADDING)
    q[UNBLOCKED_COUNT_OFFSET // _W] += 1
    return True


def release(buf, next_position: int) -> None:
    """Free everything below `next_position`: publish it, zero the space, then let producers in."""
    q = buf.cast("q")
    capacity = _capacity(q)
    free = q[FREE_POSITION_OFFSET // _W]
    if next_position > q[CONSUMER_POSITION_OFFSET // _W]:
        q[CONSUMER_POSITION_OFFSET // _W] = next_position
    _zero(buf, capacity, free, next_position)
    q[FREE_POSITION_OFFSET // _W] = max(free, next_position)


def _zero(buf, capacity: int, first: int, next_: int) -> None:
    length = next_ - first
    if length <= 0:
        return
    length = min(length, capacity)
    index = first & (capacity - 1)
    head = min(length, capacity - index)
    buf[HEADER_LENGTH + index : HEADER_LENGTH + index + head] = bytes(head)
    if length > head:
        buf[HEADER_LENGTH : HEADER_LENGTH + length - head] = bytes(length - head)
