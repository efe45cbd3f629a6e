"""Pure-Python ring: the readable reference and the test oracle for native/ring.c.

Same layout (see layout.py), same flat functions, same return codes. Python has no
compare-and-swap on shared memory, so the caller (`Ring`) holds an `flock` on the ring's
producer lock file around `claim_commit` and around both `unblock_*` calls: producers are
serialised, and the consumer only pads a claim while no producer is between claim and commit.
The kernel drops the lock when its holder dies, so a killed producer cannot hold it forever.
`read` and `release` take no lock: an aligned int64 store through a `memoryview.cast("q")` is one
machine store, and the committing store of a claim's first header comes after every other store
of the claim. That holds on x86-64 only (stores seen in program order, loads done in order), so
ringgate.ring refuses to choose this ring anywhere else (STORE_ORDERED_MACHINES); a weakly
ordered CPU would need the flock around every read, which would stall the consumer behind any
stopped producer.

Every function takes `buf`, a writable memoryview of the whole segment (header + data), and
validates its arguments like native/ring.c does (ValueError), so a bad call or a corrupt ring
never writes outside the segment or the caller's buffers.
"""

from __future__ import annotations

import os
import signal

import numpy as np

from .layout import (
    CAPACITY_OFFSET,
    CLAIM_FULL,
    CLAIM_LOST,
    CLAIM_TOO_LARGE,
    CONSUMER_POSITION_OFFSET,
    FREE_POSITION_OFFSET,
    HEADER_LENGTH,
    IMPL_PYTHON,
    MAX_LENGTH,
    MIN_CAPACITY,
    PRODUCER_POSITION_OFFSET,
    READ_BLOCKED_IN_PROGRESS,
    READ_BLOCKED_ZERO,
    READ_IDLE,
    RECORD_ALIGNMENT,
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
    in_progress_word,
    is_owner_word,
    max_claim_length,
    max_record_length,
    no_header,
    split_word,
    zero_run_end,
)

IMPL = IMPL_PYTHON
_W = 8  # word size
_BASE = HEADER_LENGTH // _W  # word index of data index 0


def _ring(buf):
    """(int64 view, capacity) of a ring segment, validated like ring_open() in native/ring.c."""
    if len(buf) < HEADER_LENGTH + MIN_CAPACITY:
        raise ValueError(
            f"ring buffer is {len(buf)} bytes: smaller than the {HEADER_LENGTH}-byte header and a {MIN_CAPACITY}-byte ring"
        )
    q = buf.cast("q")
    capacity = q[CAPACITY_OFFSET // _W]
    if capacity < MIN_CAPACITY or capacity & (capacity - 1):
        raise ValueError(f"ring capacity in the header must be a power of two >= {MIN_CAPACITY}: {capacity}")
    if capacity > len(buf) - HEADER_LENGTH:
        raise ValueError(f"ring capacity in the header ({capacity}) exceeds the buffer ({len(buf)} bytes)")
    return q, capacity


def _check_position(position: int, name: str) -> None:
    if position < 0 or position % RECORD_ALIGNMENT:
        raise ValueError(f"{name} must be a non-negative multiple of {RECORD_ALIGNMENT}: {position}")


def claim_commit(buf, blob, lengths, received_ns: int, owner: int, stop_at: int = 0):
    """Claim space for every record of one request, copy them in and commit, in one call.

    `blob` holds the records concatenated (it may be longer), `lengths` their byte lengths,
    `owner` the producer's owner word (ringgate.ring.owner_word). Returns (status,
    first_position, next_position): status 0, the position of the first record and the position
    just past the claim; or CLAIM_FULL / CLAIM_LOST / CLAIM_TOO_LARGE.
    """
    q, capacity = _ring(buf)
    mask = capacity - 1
    if stop_at not in (0, STOP_BEFORE_HEADER, STOP_AFTER_HEADER):
        raise ValueError(f"stop_at must be 0, 1 or 2: {stop_at}")
    if not is_owner_word(owner):
        raise ValueError(f"owner must be an owner word (ringgate.ring.owner_word, bit 63 set): {owner}")
    lengths = [int(length) for length in lengths]
    payload = 0
    for i, length in enumerate(lengths):
        if length < 0:
            raise ValueError(f"lengths[{i}] is negative: {length}")
        payload += length
    blob = memoryview(blob).cast("B")
    if payload > len(blob):
        raise ValueError(f"lengths add up to more than the {len(blob)} bytes of blob")
    n = len(lengths)
    framed = [align(RECORD_HEADER_LENGTH + length) for length in lengths]
    total = sum(framed)
    if n == 0 or max(framed) > max_record_length(capacity) or total > max_claim_length(capacity):
        return CLAIM_TOO_LARGE, 0, 0

    position = q[PRODUCER_POSITION_OFFSET // _W]
    index = position & mask
    if position % RECORD_ALIGNMENT or index == capacity - RECORD_ALIGNMENT:
        raise ValueError("corrupt ring: the producer position is not a valid claim start")
    gap = capacity - index if index + total > capacity else 0
    # never end a claim one word before the end: the next claim's owner word would not fit
    tail = RECORD_ALIGNMENT if not gap and index + total == capacity - RECORD_ALIGNMENT else 0
    claim = gap + total + tail
    if position + claim - q[FREE_POSITION_OFFSET // _W] > capacity:
        return CLAIM_FULL, 0, 0
    q[PRODUCER_POSITION_OFFSET // _W] = position + claim
    if stop_at == STOP_BEFORE_HEADER:
        os.kill(os.getpid(), signal.SIGSTOP)

    if _claim_passed(q, position):  # stalled since the position store: nothing written yet
        return CLAIM_LOST, 0, 0
    first_word = _BASE + index // _W
    if q[first_word + 1] != 0:  # the owner word first: a header never exists without it
        return CLAIM_LOST, 0, 0
    q[first_word + 1] = owner
    in_progress = in_progress_word(claim, TYPE_PADDING if gap else TYPE_DATA, position, capacity)
    if q[first_word] != 0:  # the consumer padded this claim while we were stopped
        _put_back(q, first_word + 1, owner)
        return CLAIM_LOST, 0, 0
    q[first_word] = in_progress
    if _claim_passed(q, position):
        _put_back(q, first_word, in_progress)
        _put_back(q, first_word + 1, owner)
        return CLAIM_LOST, 0, 0
    if stop_at == STOP_AFTER_HEADER:
        os.kill(os.getpid(), signal.SIGSTOP)

    data_position = position + gap
    offset = HEADER_LENGTH + (data_position & mask)
    src = 0
    for i in range(n):
        length = lengths[i]
        if i > 0 or gap:  # the claim's first header is committed last
            q[offset // _W] = header_word(RECORD_HEADER_LENGTH + length, TYPE_DATA)
            q[offset // _W + 1] = received_ns
        start = offset + RECORD_HEADER_LENGTH
        buf[start : start + length] = blob[src : src + length]
        src += length
        offset += framed[i]
    if tail:
        q[offset // _W] = header_word(RECORD_ALIGNMENT, TYPE_PADDING)

    if q[first_word] != in_progress:  # padded by the consumer: we lost the claim
        return CLAIM_LOST, 0, 0
    if gap:
        q[first_word] = header_word(gap, TYPE_PADDING)
    else:
        q[first_word + 1] = received_ns  # in place of the owner word
        q[first_word] = header_word(RECORD_HEADER_LENGTH + lengths[0], TYPE_DATA)
    return 0, data_position, position + claim


def _claim_passed(q, position: int) -> bool:
    """True when the consumer padded (or padded and passed) the claim starting at `position`.

    UNBLOCK_NEXT only grows, so a claim inside any padded zero run, not only the last one, is
    below it; CONSUMER_POSITION covers space the consumer padded, passed and zeroed.
    """
    if q[UNBLOCK_NEXT_OFFSET // _W] > position:
        return True
    return q[CONSUMER_POSITION_OFFSET // _W] > position


def _put_back(q, word_index: int, ours: int) -> None:
    """Clear a word we wrote, unless it is no longer ours (the CAS of native/ring.c)."""
    if q[word_index] == ours:
        q[word_index] = 0


def read(buf, cursor: int, max_records: int, max_bytes: int, positions, received, starts, lengths, data):
    """Copy committed records from `cursor` on into the caller's arrays and `data` (NDJSON).

    Stops at max_records, before exceeding max_bytes of payload (but takes at least one record),
    at the producer position, or at a claim not yet committed. The arrays must hold max_records
    items and `data` max_bytes + max_records + max_record_length(capacity) bytes (ReadBuffers).
    Returns (count, next_cursor, data_length, status); ValueError on a corrupt record header.
    """
    q, capacity = _ring(buf)
    mask = capacity - 1
    _check_position(cursor, "cursor")
    if max_records < 0 or max_bytes < 0:
        raise ValueError(f"max_records and max_bytes must be >= 0: {max_records}, {max_bytes}")
    for name, array in (("positions", positions), ("received", received), ("starts", starts), ("lengths", lengths)):
        if len(array) < max_records:
            raise ValueError(f"{name} holds {len(array)} items, max_records is {max_records}")
    if len(data) < max_bytes + max_records + max_record_length(capacity):
        raise ValueError(
            f"data holds {len(data)} bytes; read needs max_bytes + max_records + max_record_length(capacity)"
        )
    producer = q[PRODUCER_POSITION_OFFSET // _W]
    position = cursor
    count = 0
    used = 0
    status = READ_IDLE
    while count < max_records and position < producer:
        index = position & mask
        offset = HEADER_LENGTH + index
        word = q[offset // _W]
        # zero or an owner word; or an in-progress word (length bit 31) of another lap. Inline for
        # the committed word of every record, so it costs no call
        if word <= 0 or (word & 0x80000000 and no_header(word, position, capacity)):
            status = READ_BLOCKED_ZERO
            break
        length, type_ = split_word(word)
        if length < 0:
            status = READ_BLOCKED_IN_PROGRESS
            break
        if type_ == TYPE_PADDING:
            # an abandoned claim that wrapped is one padding record over its gap and its data
            if not RECORD_ALIGNMENT <= length <= capacity:
                _corrupt(word, position)
            position += align(length)
            continue
        if (
            type_ != TYPE_DATA
            or length < RECORD_HEADER_LENGTH
            or align(length) > max_record_length(capacity)
            or index + align(length) > capacity
        ):
            _corrupt(word, position)
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


def _corrupt(word: int, position: int):
    raise ValueError(f"corrupt ring: invalid record header 0x{word & 0xFFFFFFFFFFFFFFFF:016x} at position {position}")


def unblock_in_progress(buf, position: int, expected_word: int) -> bool:
    """Turn the abandoned claim at `position` (first word `expected_word`) into padding."""
    q, capacity = _ring(buf)
    _check_position(position, "position")
    length, _ = split_word(expected_word)
    if length >= 0 or -length > capacity or -length % RECORD_ALIGNMENT:  # not an in-progress header
        return False
    if no_header(expected_word, position, capacity):  # another lap's: unblock_zero's to replace
        return False
    if position < q[CONSUMER_POSITION_OFFSET // _W]:  # released already: producers may claim it again
        return False
    word_index = _BASE + (position & (capacity - 1)) // _W
    if q[word_index] != expected_word:
        return False
    q[word_index] = header_word(-length, TYPE_PADDING)
    q[UNBLOCKED_COUNT_OFFSET // _W] += 1
    return True


def unblock_zero(buf, position: int) -> bool:
    """Turn the zero run at `position` (a producer died before writing its header) into padding.

    The run ends where layout.zero_run_end says (an owner word: one word earlier, where its
    claim starts; the owner word right after `position` is the run's own claim's; words that
    are no header count as zero), at the producer position, the end of the data region or
    MAX_LENGTH bytes on (longer runs are padded in pieces).
    """
    q, capacity = _ring(buf)
    _check_position(position, "position")
    producer = q[PRODUCER_POSITION_OFFSET // _W]
    # nothing claimed there; or released already, where producers may be claiming again
    if position >= producer or position < q[CONSUMER_POSITION_OFFSET // _W]:
        return False
    index = position & (capacity - 1)
    limit = min(capacity, index + (producer - position), index + MAX_LENGTH)
    first_word = _BASE + index // _W
    first = q[first_word]
    if not no_header(first, position, capacity):
        return False
    end = _zero_run_end(buf, capacity, position, index, limit)
    if end is None:
        end = limit
    if end - index < RECORD_ALIGNMENT:  # cannot happen by the rule; never pad 0 bytes
        return False

    old_first, old_next = q[UNBLOCK_FIRST_OFFSET // _W], q[UNBLOCK_NEXT_OFFSET // _W]
    q[UNBLOCK_FIRST_OFFSET // _W] = position
    q[UNBLOCK_NEXT_OFFSET // _W] = max(old_next, position + (end - index))  # only ever grows
    # confirm the run is still zero (in the pure-Python ring nothing can change it: the caller
    # holds the producer lock; kept so both implementations run the same protocol)
    still_zero = _zero_run_end(buf, capacity, position, index, end) is None
    if still_zero and q[first_word] == first:
        q[first_word] = header_word(end - index, TYPE_PADDING)
        q[UNBLOCKED_COUNT_OFFSET // _W] += 1
        return True
    q[UNBLOCK_NEXT_OFFSET // _W] = old_next  # nothing was padded: take the range back
    q[UNBLOCK_FIRST_OFFSET // _W] = old_first
    return False


_SCAN_WORDS = 1 << 16  # numpy scans the run in pieces of 512 KiB: bounded temporaries


def _zero_run_end(buf, capacity: int, position: int, index: int, limit: int) -> int | None:
    """The data index where layout.zero_run_end ends the run, looking at [index + 8, limit); None
    when nothing there ends it."""
    for chunk in range(index + _W, limit, _SCAN_WORDS * _W):
        count = min(_SCAN_WORDS, (limit - chunk) // _W)
        words = np.frombuffer(buf, dtype=np.int64, count=count, offset=HEADER_LENGTH + chunk)
        for k in np.flatnonzero(words).tolist():
            end = zero_run_end(int(words[k]), position, index, chunk + k * _W, capacity)
            if end >= 0:
                return end
        del words
    return None


def release(buf, next_position: int) -> None:
    """Free everything below `next_position`: publish it, zero the space, then let producers in."""
    q, capacity = _ring(buf)
    _check_position(next_position, "next_position")
    producer = q[PRODUCER_POSITION_OFFSET // _W]
    if next_position > producer:
        raise ValueError(f"next_position {next_position} is beyond the producer position {producer}")
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
