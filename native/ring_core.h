/* ring_core.h: the ring's claim/commit, read, unblock and release in plain C11 atomics.
 *
 * No Python here: native/ring.c wraps these functions for CPython (argument checks, buffers,
 * the GIL), and tests/native/ring_stress.c builds them as they are, under ThreadSanitizer and
 * with the test hooks below, to drive races deterministically and to stress them.
 *
 * The contract is ringgate/ring/layout.py (byte layout, claim and unblock protocol); the
 * behaviour is that of ringgate/ring/_pyring.py, the readable reference and the test oracle:
 * same functions, same arguments, same return codes, same bytes in the segment. Index
 * arithmetic and atomics only: flat functions over a buffer (the whole segment, header + data)
 * that return integer codes, one call per request or per batch read, never per record.
 *
 * Atomics on a shared mapping
 * ---------------------------
 * The segment is a MAP_SHARED mapping of /dev/shm, mapped by several processes at different
 * addresses. C11 defines atomic operations on objects declared _Atomic; we view 8-byte aligned
 * words of the mapping as `_Atomic int64_t` through a cast (word() below). That is sound where
 * `_Atomic int64_t` is lock-free and has the size, alignment and representation of `int64_t`
 * (checked at compile time and at import): its operations are then single instructions on the
 * memory itself (lock cmpxchg, ldaxr/stlxr, casal), which act on the physical page whoever maps
 * it. A lock-based atomic would take a lock private to this process, so the import refuses it.
 *
 * Payload copies and the consumer's zeroing are plain memcpy/memset (store_bytes, zero_bytes):
 * nobody reads those bytes before the release/acquire edge that publishes them (the commit CAS;
 * FREE_POSITION), and the only racing accesses are the consumer's relaxed scan of a zero run and
 * compare-and-swaps from 0 by stale producers, for which any value but 0 ends the run or fails
 * the CAS (and a torn word is simply "not 0"). C11 calls these data races all the same, and
 * ThreadSanitizer also counts a failed CAS as a write (its AtomicCAS records every CAS as one),
 * so a stale producer's failed CAS "races" with whoever later reads a record written there.
 * Built with it, the payload copies in and out and the zeroing therefore move 8-byte words with
 * relaxed atomics (store_bytes, load_bytes, zero_bytes): what the plain accesses are on every
 * target. The payload's publication is then checked by the harness's record checks instead.
 */

#ifndef RINGGATE_RING_CORE_H
#define RINGGATE_RING_CORE_H

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#if !defined(__STDC_VERSION__) || __STDC_VERSION__ < 201112L || defined(__STDC_NO_ATOMICS__)
#error "the ringgate ring needs C11 atomics"
#endif

_Static_assert(sizeof(_Atomic int64_t) == sizeof(int64_t), "_Atomic int64_t must be a plain 8-byte word");
_Static_assert(_Alignof(_Atomic int64_t) <= 8, "_Atomic int64_t must need at most 8-byte alignment");

/* ---- test hooks: empty in the extension ----------------------------------------------------
 * RING_STOP(point): RINGGATE_TEST_STOP_AFTER_CLAIM's stop (the producer SIGSTOPs itself).
 * RING_RACE_POINT(point, offset): a point of the protocol where tests/native/ring_stress.c can
 * hand the CPU to another thread, to put a producer's step between two of the consumer's. */
#ifndef RING_STOP
#define RING_STOP(point) raise(SIGSTOP)
#endif
#ifndef RING_RACE_POINT
#define RING_RACE_POINT(point, offset) ((void)0)
#endif
enum {
    RACE_CLAIM_AFTER_POSITION, /* producer: after its position CAS */
    RACE_CLAIM_AFTER_OWNER,    /* producer: after its owner-word CAS */
    RACE_CLAIM_AFTER_HEADER,   /* producer: after its in-progress header CAS */
    RACE_CLAIM_BEFORE_COMMIT,  /* producer: records copied, received time stored, before the commit CAS */
    RACE_UZ_FIRST_LOOK,        /* unblock_zero: after reading the run's first word */
    RACE_UZ_SCANNED,           /* unblock_zero: after reading the word at data index `offset` */
    RACE_UZ_PUBLISHED,         /* unblock_zero: after publishing UNBLOCK_FIRST/NEXT */
    RACE_UZ_RECHECKED,         /* unblock_zero: the run re-checked, before the CAS of its first word */
    RACE_POINTS
};

#if defined(__SANITIZE_THREAD__)
/* `dst` is 8-byte aligned; the bytes after `n` up to the next 8-byte boundary are zero already
 * (zeroed space of the same record), so whole words can be stored */
static inline void store_bytes(char *dst, const char *src, size_t n) {
    for (size_t k = 0; k < n; k += 8) {
        int64_t w = 0;
        memcpy(&w, src + k, n - k < 8 ? n - k : 8);
        atomic_store_explicit((_Atomic int64_t *)(void *)(dst + k), w, memory_order_relaxed);
    }
}
/* `src` is 8-byte aligned and readable up to the next 8-byte boundary after `n` (same record) */
static inline void load_bytes(char *dst, const char *src, size_t n) {
    for (size_t k = 0; k < n; k += 8) {
        int64_t w = atomic_load_explicit((_Atomic int64_t *)(void *)(src + k), memory_order_relaxed);
        memcpy(dst + k, &w, n - k < 8 ? n - k : 8);
    }
}
/* `dst` and `n` are multiples of 8 */
static inline void zero_bytes(char *dst, size_t n) {
    for (size_t k = 0; k < n; k += 8) atomic_store_explicit((_Atomic int64_t *)(void *)(dst + k), 0, memory_order_relaxed);
}
#else
#define store_bytes memcpy
#define load_bytes memcpy
#define zero_bytes(dst, n) memset((dst), 0, (n))
#endif

/* ---- layout: mirrors ringgate/ring/layout.py (tests compare them through LAYOUT) ---------- */

#define HEADER_LENGTH 4096
#define MIN_CAPACITY (64 * 1024)

#define CAPACITY_OFFSET 16
#define UNBLOCKED_COUNT_OFFSET 56
#define PRODUCER_POSITION_OFFSET 128
#define CONSUMER_POSITION_OFFSET 256
#define FREE_POSITION_OFFSET 264
#define UNBLOCK_FIRST_OFFSET 400
#define UNBLOCK_NEXT_OFFSET 408

#define MAX_LENGTH (1LL << 30) /* record and claim lengths are int32 in the header */

/* an in-progress first word carries its claim's lap (position >> log2(capacity)), low bits */
#define LAP_SHIFT 34
#define LAP_BITS 29
#define LAP_MASK ((INT64_C(1) << LAP_BITS) - 1)

#define RECORD_HEADER_LENGTH 16
#define RECORD_ALIGNMENT 8
#define TYPE_DATA 1
#define TYPE_PADDING 2

#define CLAIM_OK 0
#define CLAIM_FULL (-1)
#define CLAIM_LOST (-2)
#define CLAIM_TOO_LARGE (-3)
#define READ_IDLE 0
#define READ_BLOCKED_IN_PROGRESS 1
#define READ_BLOCKED_ZERO 2

#define STOP_NONE 0
#define STOP_BEFORE_HEADER 1
#define STOP_AFTER_HEADER 2

/* internal: the producer position is not a valid claim start (a corrupt header) */
#define CLAIM_CORRUPT (-100)

#define IMPL_NATIVE 1

static inline int64_t align8(int64_t length) {
    return (length + RECORD_ALIGNMENT - 1) & ~(int64_t)(RECORD_ALIGNMENT - 1);
}

/* layout.max_record_length / max_claim_length */
static inline int64_t max_record_length(int64_t capacity) { return capacity / 8 < MAX_LENGTH ? capacity / 8 : MAX_LENGTH; }

static inline int64_t max_claim_length(int64_t capacity) { return capacity / 2 < MAX_LENGTH ? capacity / 2 : MAX_LENGTH; }

static inline int64_t header_word(int32_t length, int32_t type) {
    return (int64_t)((uint64_t)(uint32_t)length | ((uint64_t)(uint32_t)type << 32));
}

static inline int32_t word_length(int64_t word) { return (int32_t)(uint32_t)((uint64_t)word & 0xFFFFFFFFu); }

static inline int32_t word_type(int64_t word) { return (int32_t)(uint32_t)((uint64_t)word >> 32); }

/* An owner word (layout.py "Claims") has bit 63 set: negative as int64, unlike any header word
 * (type 1 or 2 in the high half) or received time. */
static inline int is_owner_word(int64_t word) { return word < 0; }

/* The cast documented at the top: `base + offset` is 8-byte aligned (checked in ring_open and
 * by every caller's position validation) and lies inside the caller's buffer. */
static inline _Atomic int64_t *word(char *base, int64_t offset) {
    return (_Atomic int64_t *)(void *)(base + offset);
}


typedef struct {
    char *base;       /* start of the segment (header) */
    int64_t capacity; /* data bytes, a power of two */
    int64_t mask;
    int shift; /* log2(capacity) */
} ring_t;

/* `capacity` is a power of two (the caller checked) */
static inline void ring_setup(ring_t *r, char *base, int64_t capacity) {
    r->base = base;
    r->capacity = capacity;
    r->mask = capacity - 1;
    r->shift = 0;
    while ((INT64_C(1) << r->shift) < capacity) r->shift++;
}

/* The lap of `position`, as an in-progress word holds it (layout.py lap_of) */
static inline int64_t lap_of(const ring_t *r, int64_t position) { return (position >> r->shift) & LAP_MASK; }

/* The first word of a claim in progress at `position`: length = -(claim length); type DATA, or
 * PADDING when the claim starts with the gap to the end of the data region; and the claim's lap,
 * so that only its own producer's commit or undo CAS can match it (never one stalled since an
 * earlier lap whose claim had the same length at the same index). */
static inline int64_t in_progress_word(const ring_t *r, int64_t position, int64_t claim, int32_t type) {
    return (int64_t)((uint64_t)(uint32_t)(int32_t)-claim | (uint64_t)(uint32_t)type << 32 |
                     (uint64_t)lap_of(r, position) << LAP_SHIFT);
}

/* A first word that stands for "no header here" at `position`: zero; an in-progress word of
 * another lap (left by a producer killed during its undo, long after its claim was padded and
 * released); or an owner word (no header is ever one: a leftover of the same kind). */
static inline int no_header(const ring_t *r, int64_t w, int64_t position) {
    if (w == 0 || is_owner_word(w)) return 1;
    return word_length(w) < 0 && (((uint64_t)w >> LAP_SHIFT) & LAP_MASK) != (uint64_t)lap_of(r, position);
}

/* What ends the zero run that starts at `position` (data index `index`), given the word `w` at
 * data index `off` (index < off, the same lap): -1 if it does not end the run, else the data
 * index where the run ends. One rule for the scan that finds the end and for the re-check that
 * confirms it (layout.py "Abandoned claims"):
 * - a word that is no header counts as zero, as does the owner word right after the run's first
 *   word: it is the run's own claim's, whose header CAS will fail against our padding;
 * - any other owner word ends the run one word earlier, where its claim starts;
 * - anything else ends it right there. */
static inline int64_t zero_run_end(const ring_t *r, int64_t position, int64_t index, int64_t off, int64_t w) {
    if (is_owner_word(w)) return off == index + 8 ? -1 : off - 8;
    return no_header(r, w, position + (off - index)) ? -1 : off;
}

/* ---- claim / commit ---------------------------------------------------------------------- */

/* True when the consumer padded, or padded and passed, the claim starting at `position`.
 * seq_cst loads: with the producer's seq_cst owner and header CASes they form the handshake with
 * unblock_zero (its seq_cst store of UNBLOCK_NEXT, then seq_cst loads of the run) and with
 * release (seq_cst store of CONSUMER_POSITION, then a fence, then the zeroing): either the
 * consumer sees our words, or we see its position. */
static inline int claim_passed(char *base, int64_t position) {
    if (atomic_load_explicit(word(base, UNBLOCK_NEXT_OFFSET), memory_order_seq_cst) > position) return 1;
    return atomic_load_explicit(word(base, CONSUMER_POSITION_OFFSET), memory_order_seq_cst) > position;
}

typedef struct {
    const char *blob;
    const int64_t *lengths;
    int64_t n;
    int64_t total; /* framed bytes of the records */
    int64_t received_ns;
    int64_t owner;
    int stop_at;
    int64_t first_position; /* out */
    int64_t next_position;  /* out */
} claim_args;

static int claim_commit_nogil(const ring_t *r, claim_args *a) {
    char *base = r->base;
    char *data = base + HEADER_LENGTH;
    _Atomic int64_t *producer = word(base, PRODUCER_POSITION_OFFSET);
    int64_t capacity = r->capacity;
    int64_t position, index, gap, tail, claim;

    /* relaxed: the expected value of the CAS below, which re-reads it on failure */
    position = atomic_load_explicit(producer, memory_order_relaxed);
    for (;;) {
        /* acquire: pairs with the release store of FREE_POSITION in release(): everything below
         * FREE_POSITION + capacity was zeroed before it, so our header CAS from 0 is meaningful */
        int64_t free_position = atomic_load_explicit(word(base, FREE_POSITION_OFFSET), memory_order_acquire);
        index = position & r->mask;
        if (position < 0 || (position & (RECORD_ALIGNMENT - 1)) != 0 || index == capacity - RECORD_ALIGNMENT)
            return CLAIM_CORRUPT;
        gap = index + a->total > capacity ? capacity - index : 0;
        /* never end a claim one word before the end: the next claim's owner word would not fit */
        tail = (gap == 0 && index + a->total == capacity - RECORD_ALIGNMENT) ? RECORD_ALIGNMENT : 0;
        claim = gap + a->total + tail;
        if (position + claim - free_position > capacity) return CLAIM_FULL;
        /* relaxed (success and failure): the position publishes nothing; the space is acquired
         * through FREE_POSITION above and the records are released by the commit CAS below */
        if (atomic_compare_exchange_weak_explicit(producer, &position, position + claim, memory_order_relaxed,
                                                  memory_order_relaxed))
            break;
    }
    if (a->stop_at == STOP_BEFORE_HEADER) RING_STOP(STOP_BEFORE_HEADER);
    RING_RACE_POINT(RACE_CLAIM_AFTER_POSITION, position);

    /* a producer stalled since its position CAS finds out before writing anything */
    if (claim_passed(base, position)) return CLAIM_LOST;

    _Atomic int64_t *first_header = word(data, index);
    _Atomic int64_t *owner_slot = word(data, index + 8);
    int64_t expected = 0;
    /* seq_cst: pairs with unblock_zero's seq_cst loads of the run after it published
     * UNBLOCK_NEXT (it sees this word and aborts, or claim_passed below sees UNBLOCK_NEXT).
     * From 0: fails if the consumer or another claim already owns the space. */
    if (!atomic_compare_exchange_strong_explicit(owner_slot, &expected, a->owner, memory_order_seq_cst,
                                                 memory_order_relaxed))
        return CLAIM_LOST;
    RING_RACE_POINT(RACE_CLAIM_AFTER_OWNER, index + 8);

    int64_t in_progress = in_progress_word(r, position, claim, gap ? TYPE_PADDING : TYPE_DATA);
    expected = 0;
    /* seq_cst: same pairing as the owner CAS; and against unblock_zero's CAS of this word from 0
     * (whoever wins owns the header) */
    if (!atomic_compare_exchange_strong_explicit(first_header, &expected, in_progress, memory_order_seq_cst,
                                                 memory_order_relaxed)) {
        expected = a->owner;
        /* relaxed: only takes back our own owner word; publishes nothing */
        atomic_compare_exchange_strong_explicit(owner_slot, &expected, 0, memory_order_relaxed, memory_order_relaxed);
        return CLAIM_LOST;
    }
    RING_RACE_POINT(RACE_CLAIM_AFTER_HEADER, index);
    if (claim_passed(base, position)) {
        /* relaxed: undo our two words (the consumer skips or zeroes this space either way); a CAS
         * so we never clear a word that is no longer ours */
        expected = in_progress;
        atomic_compare_exchange_strong_explicit(first_header, &expected, 0, memory_order_relaxed, memory_order_relaxed);
        expected = a->owner;
        atomic_compare_exchange_strong_explicit(owner_slot, &expected, 0, memory_order_relaxed, memory_order_relaxed);
        return CLAIM_LOST;
    }
    if (a->stop_at == STOP_AFTER_HEADER) RING_STOP(STOP_AFTER_HEADER);

    int64_t data_position = position + gap;
    int64_t offset = data_position & r->mask;
    const char *src = a->blob;
    for (int64_t i = 0; i < a->n; i++) {
        int64_t length = a->lengths[i];
        if (i > 0 || gap) {
            /* relaxed: the claim's other headers are published by the commit CAS (release) below;
             * no reader reaches them before the first header is committed */
            atomic_store_explicit(word(data, offset),
                                  header_word((int32_t)(RECORD_HEADER_LENGTH + length), TYPE_DATA),
                                  memory_order_relaxed);
            atomic_store_explicit(word(data, offset + 8), a->received_ns, memory_order_relaxed);
        }
        store_bytes(data + offset + RECORD_HEADER_LENGTH, src, (size_t)length);
        src += length;
        offset += align8(RECORD_HEADER_LENGTH + length);
    }
    if (tail) /* relaxed: published by the commit CAS like the other headers */
        atomic_store_explicit(word(data, offset), header_word(RECORD_ALIGNMENT, TYPE_PADDING), memory_order_relaxed);

    int64_t committed;
    if (gap) {
        committed = header_word((int32_t)gap, TYPE_PADDING);
    } else {
        committed = header_word((int32_t)(RECORD_HEADER_LENGTH + a->lengths[0]), TYPE_DATA);
        /* release: replaces our owner word with the first record's received time, published to the
         * reader by the commit CAS below; release because a consumer that sees it may pad the
         * claim without our commit (unblock_in_progress' acquire load), and this store must then
         * happen before its zeroing and whatever is written there next */
        atomic_store_explicit(owner_slot, a->received_ns, memory_order_release);
    }
    RING_RACE_POINT(RACE_CLAIM_BEFORE_COMMIT, index);
    expected = in_progress;
    /* release on success: pairs with read()'s acquire load of this header, publishing every
     * store of the claim above. Against unblock_in_progress's CAS: exactly one leaves in-progress;
     * failing means the consumer padded the claim and we lost it. */
    if (!atomic_compare_exchange_strong_explicit(first_header, &expected, committed, memory_order_release,
                                                 memory_order_relaxed))
        return CLAIM_LOST;
    a->first_position = data_position;
    a->next_position = position + claim;
    return CLAIM_OK;
}


/* ---- read -------------------------------------------------------------------------------- */

typedef struct {
    int64_t cursor;
    int64_t max_records;
    int64_t max_bytes;
    int64_t *positions, *received, *starts, *lengths;
    char *out;
    int64_t out_len;
    /* results */
    int64_t count;
    int64_t next_cursor;
    int64_t used;
    int status;
    int64_t corrupt_position; /* >= 0: the record header there is invalid */
    int64_t corrupt_word;
} read_args;

static void read_nogil(const ring_t *r, read_args *a) {
    char *data = r->base + HEADER_LENGTH;
    /* relaxed, pairs with nothing: bounds the scan only; each record is acquired through its
     * own header word */
    int64_t producer = atomic_load_explicit(word(r->base, PRODUCER_POSITION_OFFSET), memory_order_relaxed);
    int64_t position = a->cursor;
    int64_t used = 0;
    int64_t count = 0;
    int status = READ_IDLE;
    a->corrupt_position = -1;

    while (count < a->max_records && position < producer) {
        int64_t index = position & r->mask;
        /* acquire: pairs with the commit CAS (release) of the claim's first header, and through it
         * with every header and payload byte the producer stored before it */
        int64_t w = atomic_load_explicit(word(data, index), memory_order_acquire);
        if (no_header(r, w, position)) {
            status = READ_BLOCKED_ZERO;
            break;
        }
        int32_t length = word_length(w);
        int32_t type = word_type(w);
        if (length < 0) {
            status = READ_BLOCKED_IN_PROGRESS;
            break;
        }
        if (type == TYPE_PADDING) {
            /* an abandoned claim that wrapped is one padding record over its gap and its data */
            if (length < RECORD_ALIGNMENT || length > r->capacity) goto corrupt;
            position += align8(length);
            continue;
        }
        if (type != TYPE_DATA || length < RECORD_HEADER_LENGTH || align8(length) > max_record_length(r->capacity) ||
            index + align8(length) > r->capacity)
            goto corrupt;
        int64_t size = length - RECORD_HEADER_LENGTH;
        if (count && used + size > a->max_bytes) break;
        if (size + 1 > a->out_len - used) goto corrupt; /* unreachable with the checked sizes; never overflow */
        a->positions[count] = position;
        /* relaxed: ordered after the header's acquire load above */
        a->received[count] = atomic_load_explicit(word(data, index + 8), memory_order_relaxed);
        a->starts[count] = used;
        a->lengths[count] = size;
        load_bytes(a->out + used, data + index + RECORD_HEADER_LENGTH, (size_t)size);
        a->out[used + size] = '\n';
        used += size + 1;
        count++;
        position += align8(length);
    }
    a->count = count;
    a->next_cursor = position;
    a->used = used;
    a->status = status;
    return;
corrupt:
    a->corrupt_position = position;
    a->corrupt_word = atomic_load_explicit(word(data, position & r->mask), memory_order_relaxed);
}


/* The zero run at `position`: a producer died (or stalls) between its position CAS and its
 * header CAS. Returns 1 when padded. */
static int unblock_zero_nogil(const ring_t *r, int64_t position) {
    char *data = r->base + HEADER_LENGTH;
    /* relaxed, pairs with nothing: bounds the run only; every word in it is re-checked with
     * seq_cst loads after UNBLOCK_NEXT is published */
    int64_t producer = atomic_load_explicit(word(r->base, PRODUCER_POSITION_OFFSET), memory_order_relaxed);
    /* nothing claimed there; or already released, where producers may be claiming again
     * (relaxed: the consumer's own field) */
    if (position >= producer ||
        position < atomic_load_explicit(word(r->base, CONSUMER_POSITION_OFFSET), memory_order_relaxed))
        return 0;
    int64_t index = position & r->mask;
    int64_t limit = r->capacity;
    if (producer - position < limit - index) limit = index + (producer - position);
    /* in pieces that fit the int32 length of a padding record (rings may be larger than 2 GiB);
     * the reader blocks on the next piece, which the next call pads */
    if (limit - index > MAX_LENGTH) limit = index + MAX_LENGTH;
    _Atomic int64_t *first = word(data, index);
    /* relaxed, pairs with nothing: a first look; the CAS below decides (from this very value: a
     * leftover word of another lap is replaced like a zero) */
    int64_t first_word = atomic_load_explicit(first, memory_order_relaxed);
    if (!no_header(r, first_word, position)) return 0;
    RING_RACE_POINT(RACE_UZ_FIRST_LOOK, index);

    /* relaxed scan, pairs with nothing: a candidate end, re-checked with seq_cst loads after
     * publishing it. Each word is read once, from index + 8 on (reading the owner slot twice let
     * a producer's owner CAS between the reads end the run at its own start: a 0-byte padding) */
    int64_t end = limit;
    for (int64_t off = index + 8; off < limit; off += 8) {
        int64_t w = atomic_load_explicit(word(data, off), memory_order_relaxed);
        RING_RACE_POINT(RACE_UZ_SCANNED, off);
        int64_t run_end = zero_run_end(r, position, index, off, w);
        if (run_end >= 0) {
            end = run_end;
            break;
        }
    }
    if (end - index < RECORD_ALIGNMENT) return 0; /* cannot happen by the rule above; never pad 0 bytes */

    _Atomic int64_t *unblock_first = word(r->base, UNBLOCK_FIRST_OFFSET);
    _Atomic int64_t *unblock_next = word(r->base, UNBLOCK_NEXT_OFFSET);
    /* relaxed: only the consumer (holding the consumer lock) writes these */
    int64_t old_first = atomic_load_explicit(unblock_first, memory_order_relaxed);
    int64_t old_next = atomic_load_explicit(unblock_next, memory_order_relaxed);
    int64_t next = position + (end - index);
    /* seq_cst: pairs with the producers' seq_cst owner/header CASes and their seq_cst load of
     * UNBLOCK_NEXT in claim_passed(): a producer of a claim in the run either shows up in the
     * loads below (we abort) or sees this store (it reports CLAIM_LOST). Monotonic, so a
     * producer stalled inside an earlier padded run still sees that it lost. */
    atomic_store_explicit(unblock_first, position, memory_order_seq_cst);
    if (next > old_next) atomic_store_explicit(unblock_next, next, memory_order_seq_cst);
    RING_RACE_POINT(RACE_UZ_PUBLISHED, index);

    int still_zero = 1;
    for (int64_t off = index + 8; off < end; off += 8) {
        /* seq_cst: the other half of the handshake above */
        int64_t w = atomic_load_explicit(word(data, off), memory_order_seq_cst);
        if (zero_run_end(r, position, index, off, w) >= 0) {
            still_zero = 0;
            break;
        }
    }
    RING_RACE_POINT(RACE_UZ_RECHECKED, index);
    int64_t expected = first_word;
    /* seq_cst: against the header CAS from 0 of the claim at `position`: one of us owns the word */
    if (still_zero && atomic_compare_exchange_strong_explicit(first, &expected,
                                                              header_word((int32_t)(end - index), TYPE_PADDING),
                                                              memory_order_seq_cst, memory_order_relaxed)) {
        /* relaxed: a metric, orders nothing */
        atomic_fetch_add_explicit(word(r->base, UNBLOCKED_COUNT_OFFSET), 1, memory_order_relaxed);
        return 1;
    }
    /* nothing was padded: take the range back (seq_cst like the publication; a producer that saw
     * it meanwhile reported CLAIM_LOST, which is safe) */
    atomic_store_explicit(unblock_next, old_next, memory_order_seq_cst);
    atomic_store_explicit(unblock_first, old_first, memory_order_seq_cst);
    return 0;
}


/* ---- release ----------------------------------------------------------------------------- */

static void zero_range(const ring_t *r, int64_t first, int64_t next) {
    int64_t length = next - first;
    if (length <= 0) return;
    if (length > r->capacity) length = r->capacity;
    int64_t index = first & r->mask;
    int64_t head = r->capacity - index < length ? r->capacity - index : length;
    zero_bytes(r->base + HEADER_LENGTH + index, (size_t)head);
    if (length > head) zero_bytes(r->base + HEADER_LENGTH, (size_t)(length - head));
}


/* The abandoned in-progress claim at `position`, whose first word the caller read as
 * `expected_word`: 1 when padded. */
static int unblock_in_progress_nogil(const ring_t *r, int64_t position, int64_t expected_word) {
    int32_t length = word_length(expected_word);
    /* only an in-progress header (negative length of a whole claim) can be abandoned, and only
     * where the consumer has not released yet (relaxed: the consumer's own field) */
    if (length >= 0 || -(int64_t)length > r->capacity || (-(int64_t)length) % RECORD_ALIGNMENT != 0 ||
        no_header(r, expected_word, position) ||
        position < atomic_load_explicit(word(r->base, CONSUMER_POSITION_OFFSET), memory_order_relaxed))
        return 0;
    int64_t index = position & r->mask;
    if (index + 8 < r->capacity) /* acquire: pairs with the producer's release store of the received time */
        (void)atomic_load_explicit(word(r->base + HEADER_LENGTH, index + 8), memory_order_acquire);
    int64_t expected = expected_word;
    _Atomic int64_t *header = word(r->base + HEADER_LENGTH, index);
    /* acq_rel: against the producer's commit CAS on the same word, exactly one leaves in-progress
     * (the loser learns it from its failed CAS) */
    int ok = atomic_compare_exchange_strong_explicit(header, &expected, header_word(-length, TYPE_PADDING),
                                                     memory_order_acq_rel, memory_order_relaxed);
    if (ok) /* relaxed: a metric, orders nothing */
        atomic_fetch_add_explicit(word(r->base, UNBLOCKED_COUNT_OFFSET), 1, memory_order_relaxed);
    return ok;
}

/* Free everything below `next_position` (the caller checked it is not beyond the producer
 * position): publish it, zero the space, then let producers in. */
static void release_nogil(const ring_t *r, int64_t next_position) {
    _Atomic int64_t *consumer = word(r->base, CONSUMER_POSITION_OFFSET);
    _Atomic int64_t *free_position = word(r->base, FREE_POSITION_OFFSET);
    /* relaxed: only the consumer (holding the consumer lock) writes these two */
    int64_t free_old = atomic_load_explicit(free_position, memory_order_relaxed);
    if (next_position > atomic_load_explicit(consumer, memory_order_relaxed))
        /* seq_cst: pairs with the producers' seq_cst load in claim_passed() */
        atomic_store_explicit(consumer, next_position, memory_order_seq_cst);
    /* seq_cst fence: CONSUMER_POSITION is visible before any zero below, so a stale producer whose
     * CAS from 0 succeeds on a zeroed word then sees that the consumer passed its claim */
    atomic_thread_fence(memory_order_seq_cst);
    zero_range(r, free_old, next_position);
    if (next_position > free_old)
        /* release: pairs with the producers' acquire load of FREE_POSITION: the zeroes are visible
         * to whoever claims this space */
        atomic_store_explicit(free_position, next_position, memory_order_release);
}

#endif
