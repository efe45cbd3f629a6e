"""Byte layout of a ringgate ring: constants and offsets only, shared by native/ring.c and _pyring.py.

One shared-memory segment per ring, `/dev/shm/<instance>-ring-<n>`, little-endian, all
positions are monotonic 64-bit byte counts, an index is `position & (capacity - 1)`.

Segment
-------
    0                HEADER_LENGTH (4096)                    HEADER_LENGTH + capacity
    +----------------+----------------------------------------+
    |  ring header   |  data: records, 8-byte aligned          |
    +----------------+----------------------------------------+

Ring header (offsets in bytes; hot fields each on their own 128-byte cache-line pair)
-----------------------------------------------------------------------------------
      0  MAGIC_OFFSET              8  b"RINGGATE"
      8  VERSION_OFFSET            4  LAYOUT_VERSION
     12  IMPL_OFFSET               4  IMPL_NATIVE or IMPL_PYTHON: attaching with the other fails
     16  CAPACITY_OFFSET           8  data bytes, a power of two >= MIN_CAPACITY
     24  EPOCH_OFFSET              8  chosen at creation (time.time_ns()); with the ring number and a
                                      position it names a record uniquely across runs
     32  FLUSHER_PID_OFFSET        8  pid of the flusher consuming this ring (0: none yet)
     40  DRAINING_OFFSET           8  1 once the supervisor asked the flusher to drain and exit
     48  SINK_FAILING_OFFSET       8  1 while the last delivery attempt failed (reason below)
     56  UNBLOCKED_COUNT_OFFSET    8  abandoned claims turned into padding (a metric)
    128  PRODUCER_POSITION_OFFSET  8  end of the last claim (producers CAS it forward)
    256  CONSUMER_POSITION_OFFSET  8  everything below is delivered to the sink (ack=commit waits on it)
    264  FREE_POSITION_OFFSET      8  everything below is zeroed again: producers may claim up to
                                      FREE_POSITION + capacity. The consumer stores CONSUMER, zeroes,
                                      then stores FREE (see "Why two consumer positions").
    384  INFLIGHT_FIRST_OFFSET     8  range [first, next) of the batch being delivered, recorded before
    392  INFLIGHT_NEXT_OFFSET      8  its first attempt; valid while INFLIGHT_FIRST == CONSUMER_POSITION
    400  UNBLOCK_FIRST_OFFSET      8  last zero range [first, next) the consumer turned into padding;
    408  UNBLOCK_NEXT_OFFSET       8  a producer whose claim lies inside it has lost its claim
    416  DEAD_LETTER_COUNT_OFFSET  8  dead-lettered ranges recorded so far (monotonic)
    424  OLDEST_PENDING_NS_OFFSET  8  received time of the oldest record not yet delivered (0: none)
    512  SINK_REASON_OFFSET      256  UTF-8, NUL padded: why the last delivery attempt failed
    768  DEAD_LETTER_RANGES      ...  DEAD_LETTER_SLOTS x (first, next) positions, a circular log of
                                      dead-lettered ranges for GET /v1/batches/{id}

Record (8-byte aligned; never crosses the end of the data region, except the padding that
replaces an abandoned claim which wrapped: it spans the claim's gap and its data records)
-----------------------------------------------------------------
     0  int32  length    HEADER + payload bytes, before alignment (the next record starts at
                         align8(length)); negative while the claim it opens is in progress
     4  int32  type      TYPE_DATA or TYPE_PADDING; while in progress, bits 2..30 also hold the
                         claim's LAP (see below)
     8  int64  received  wall-clock ns when the HTTP worker received the request;
                         in the first record of a claim: the claim's OWNER WORD until commit
                         (a gap padding record keeps it), bit 63 set | start time (bits 32..62)
                         | producer pid (bits 0..31): negative as an int64, unlike any header
                         word or received time
    16  payload          compact JSON object, `length - 16` bytes

Bytes 0..7 are one little-endian int64 word, `length | type << 32`, written with a single store
or compare-and-swap, so a reader never sees a torn header. A padding record may be a single
word (8 bytes); the reader reads nothing of a padding record but its first word.

The IN-PROGRESS first word of a claim (in_progress_word) also carries the claim's lap:

    bits  0..31  -(claim length)        bits 32..33  type        bits 34..62  lap        bit 63  0
    lap = (position >> log2(capacity)) mod 2^LAP_BITS

so the commit and undo CASes of a producer stalled since an earlier lap never match a newer
claim of the same length at the same index. A first word that is NO HEADER (no_header: zero, an
owner word, or an in-progress word of another lap, which only a producer killed during its undo
leaves behind) reads as zero: READ_BLOCKED_ZERO, and unblock_zero replaces it like a zero.

Claims
------
A claim holds one request's records, whole: producers CAS PRODUCER_POSITION forward by the
request's framed size (plus the gap to the end of the data region when the records would cross
it: that gap becomes a padding record in the same claim; plus a trailing 8-byte padding record
when the claim would otherwise end exactly one word before the end of the data region, where
the next claim's owner word would not fit). The producer then
  1. checks the claim is not passed already (see below; a producer stalled since its position
     CAS finds out before writing anything),
  2. CASes the owner word (offset 8 of the claim) from 0 to its owner word, so the header
     never exists without its owner: a producer killed at any instant leaves either a zero
     header (maybe with an owner word) or an in-progress header with its owner word,
  3. CASes the first header from 0 to IN PROGRESS: length = -(claim length), type = PADDING if
     the claim starts with the gap else DATA, and the claim's lap,
  4. checks again that the claim is not passed; if it is, it puts both words back to 0 and
     reports LOST (HTTP 503): nothing it wrote was ever acknowledged,
  5. copies the records: every other header of the claim is written committed from the start;
     nobody can reach them before the first one is committed,
  6. commits with one CAS of the first header from its in-progress word (lap included) to its
     committed value (with release; a first data record gets its received time in place of the
     owner word just before), so a request enters the ring whole or not at all. A producer whose
     commit CAS fails learns that its claim was padded and reports LOST.
"Passed": position < UNBLOCK_NEXT or position < CONSUMER_POSITION.

Abandoned claims (agrona's unblock)
-----------------------------------
* in progress, producer gone (its owner word names a pid and start time that no longer match a
  live process, or it is already the first record's received time) for RINGGATE_UNBLOCK_MS:
  the consumer CASes the first header to a padding record over the claim;
* no header below PRODUCER_POSITION for that long (a producer died between its position CAS
  and its header CAS): the consumer scans the zero run word by word from its second word up to
  the first word that ends it (zero_run_end, the one rule for scan and re-check: no header
  counts as zero, and so does the owner word right after the run's first word, which is the
  run's own claim's; any other owner word ends the run one word earlier, where its claim starts;
  anything else ends it there), the producer position, the end of the data region or MAX_LENGTH
  bytes (a longer run is padded in pieces: the int32 length must not wrap); publishes
  UNBLOCK_FIRST and UNBLOCK_NEXT (NEXT only ever grows: a producer stalled in an earlier padded
  run must still see that it lost, even when the consumer has not released past it yet);
  confirms the run is still zero by the same rule; then CASes its first word from what it read
  there to padding. A run is never shorter than 8 bytes. If anything changed it aborts and puts
  UNBLOCK_FIRST/NEXT back (nothing was padded).
  A producer checks, after winning its owner and header CASes, that its claim is not passed.
  Both sides use sequentially consistent operations for this handshake: either the consumer sees
  the producer's words and aborts, or the producer sees UNBLOCK_NEXT.

Why two consumer positions
--------------------------
Producers claim against FREE_POSITION (space that is zero again, so the header CAS from 0 is
meaningful), but test their own claim against CONSUMER_POSITION, stored before the zeroing: a
producer that wins its header CAS on space the consumer already padded, passed and zeroed still
sees that CONSUMER_POSITION is beyond it.
"""

MAGIC = b"RINGGATE"
LAYOUT_VERSION = 2  # 2: the lap in the in-progress word
IMPL_NATIVE = 1
IMPL_PYTHON = 2
IMPL_NAMES = {IMPL_NATIVE: "native", IMPL_PYTHON: "python"}

HEADER_LENGTH = 4096
MIN_CAPACITY = 64 * 1024

MAGIC_OFFSET = 0
VERSION_OFFSET = 8
IMPL_OFFSET = 12
CAPACITY_OFFSET = 16
EPOCH_OFFSET = 24
FLUSHER_PID_OFFSET = 32
DRAINING_OFFSET = 40
SINK_FAILING_OFFSET = 48
UNBLOCKED_COUNT_OFFSET = 56
PRODUCER_POSITION_OFFSET = 128
CONSUMER_POSITION_OFFSET = 256
FREE_POSITION_OFFSET = 264
INFLIGHT_FIRST_OFFSET = 384
INFLIGHT_NEXT_OFFSET = 392
UNBLOCK_FIRST_OFFSET = 400
UNBLOCK_NEXT_OFFSET = 408
DEAD_LETTER_COUNT_OFFSET = 416
OLDEST_PENDING_NS_OFFSET = 424
SINK_REASON_OFFSET = 512
SINK_REASON_LENGTH = 256
DEAD_LETTER_RANGES_OFFSET = 768
DEAD_LETTER_SLOTS = 128  # 128 x 16 bytes: ends at 2816 < HEADER_LENGTH

MAX_LENGTH = 1 << 30  # record and claim lengths are int32 in the record header; so are padded zero runs

LAP_SHIFT = 34  # bit of an in-progress word where the claim's lap starts
LAP_BITS = 29
LAP_MASK = (1 << LAP_BITS) - 1

RECORD_HEADER_LENGTH = 16
RECORD_ALIGNMENT = 8
LENGTH_OFFSET = 0
TYPE_OFFSET = 4
RECEIVED_OFFSET = 8
TYPE_DATA = 1
TYPE_PADDING = 2

# return codes of claim_commit (negative) and statuses of read
CLAIM_FULL = -1  # not enough free space: try another ring, then 429
CLAIM_LOST = -2  # the claim was padded by the consumer before commit: 503, nothing acknowledged
CLAIM_TOO_LARGE = -3  # larger than MAX_CLAIM: 413
READ_IDLE = 0  # stopped at the producer position or at a limit
READ_BLOCKED_IN_PROGRESS = 1  # stopped at a claim still in progress
READ_BLOCKED_ZERO = 2  # stopped at a zero header below the producer position

# test-only switch (RINGGATE_TEST_STOP_AFTER_CLAIM): the producer SIGSTOPs itself right after
# its position CAS (before_header) or its header CAS (after_header)
STOP_NONE = 0
STOP_BEFORE_HEADER = 1
STOP_AFTER_HEADER = 2
STOP_POINTS = {"": STOP_NONE, "before_header": STOP_BEFORE_HEADER, "after_header": STOP_AFTER_HEADER}


def align(length: int) -> int:
    return (length + RECORD_ALIGNMENT - 1) & ~(RECORD_ALIGNMENT - 1)


def max_record_length(capacity: int) -> int:
    """Largest framed record: capacity / 8 (at most MAX_LENGTH)."""
    return min(capacity // 8, MAX_LENGTH)


def max_claim_length(capacity: int) -> int:
    """Largest request: half the ring (it could never fit otherwise, so 429 would be a lie); at
    most MAX_LENGTH, so a claim with its gap (smaller than the claim) fits the int32 length."""
    return min(capacity // 2, MAX_LENGTH)


OWNER_FLAG = 1 << 63


def owner_word_of(pid: int, start_time: int) -> int:
    """The (negative) int64 a producer stores at offset 8 of its claim before its header."""
    return ((pid & 0xFFFFFFFF) | ((start_time & 0x7FFFFFFF) << 32) | OWNER_FLAG) - (1 << 64)


def is_owner_word(word: int) -> bool:
    return word < 0


def header_word(length: int, type_: int) -> int:
    """The int64 value of a record's first 8 bytes."""
    return (length & 0xFFFFFFFF) | (type_ << 32)


def lap_of(position: int, capacity: int) -> int:
    """The lap of `position` as an in-progress word holds it."""
    return (position >> (capacity.bit_length() - 1)) & LAP_MASK


def in_progress_word(claim_length: int, type_: int, position: int, capacity: int) -> int:
    """The first word of a claim of `claim_length` bytes in progress at `position`."""
    return header_word(-claim_length, type_) | lap_of(position, capacity) << LAP_SHIFT


def no_header(word: int, position: int, capacity: int) -> bool:
    """True when the first word at `position` stands for no header: zero, an owner word, or an
    in-progress word of another lap (a leftover of a producer killed during its undo)."""
    if word == 0 or is_owner_word(word):
        return True
    return split_word(word)[0] < 0 and (word >> LAP_SHIFT) & LAP_MASK != lap_of(position, capacity)


def zero_run_end(word: int, position: int, index: int, offset: int, capacity: int) -> int:
    """What ends the zero run starting at `position` (data index `index`), given the word at data
    index `offset` (> index, same lap): -1 if it does not, else the data index where it ends."""
    if is_owner_word(word):
        return -1 if offset == index + RECORD_ALIGNMENT else offset - RECORD_ALIGNMENT
    return -1 if no_header(word, position + offset - index, capacity) else offset


def split_word(word: int) -> tuple[int, int]:
    """(length, type) from a first-8-bytes int64 (signed)."""
    length = word & 0xFFFFFFFF
    if length >= 0x80000000:
        length -= 1 << 32
    return length, (word >> 32) & 0xFFFFFFFF
