/* The real ring (native/ring_core.h) driven by threads: deterministic interleavings, a stress of
 * the zero-run race, and a bounded multi-threaded stress for ThreadSanitizer.
 *
 *   ring_stress schedules           every interleaving of a producer's steps with the
 *                                   consumer's unblock_zero and with a lap-later commit; exit 1
 *                                   naming the first that breaks the ring
 *   ring_stress zero-race SECONDS   a producer's owner and header CASes against unblock_zero at
 *                                   the same claim, free-running: prints calls and bad paddings
 *   ring_stress stress RECORDS N    N producers (some die mid-claim) and an eager consumer
 *                                   (read, release, unblock); every record whole, once, in order
 *
 * Built and run by tests/native/test_ring_native.py (plain and with -fsanitize=thread). Threads
 * stand in for processes: the ring only ever sees atomics on shared words. */

#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void race_point(int point, int64_t offset);
static void stop_point(int point);
#define RING_RACE_POINT(point, offset) race_point((point), (offset))
#define RING_STOP(point) stop_point(point)

#include "../../native/ring_core.h"

#define CAP (64 * 1024)
#define MODE_SCHEDULE 1
#define MODE_STRESS 2
static int mode;

static void fail(const char *what) {
    fprintf(stderr, "ring_stress: %s\n", what);
    exit(1);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* xorshift, one state per thread */
static uint64_t next_random(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static ring_t new_ring(void) {
    ring_t r;
    r.base = aligned_alloc(4096, HEADER_LENGTH + CAP);
    if (r.base == NULL) fail("out of memory");
    memset(r.base, 0, HEADER_LENGTH + CAP);
    *(int64_t *)(r.base + CAPACITY_OFFSET) = CAP;
    ring_setup(&r, r.base, CAP);
    return r;
}

/* a fresh, empty ring whose positions all stand at `position` */
static void reset_ring(ring_t *r, int64_t position) {
    memset(r->base + HEADER_LENGTH, 0, CAP);
    int64_t *h = (int64_t *)r->base;
    h[PRODUCER_POSITION_OFFSET / 8] = h[CONSUMER_POSITION_OFFSET / 8] = h[FREE_POSITION_OFFSET / 8] = position;
    h[UNBLOCK_FIRST_OFFSET / 8] = h[UNBLOCK_NEXT_OFFSET / 8] = position;
    h[UNBLOCKED_COUNT_OFFSET / 8] = 0;
}

static int64_t load(const ring_t *r, int64_t offset) {
    return atomic_load_explicit(word(r->base, offset), memory_order_seq_cst);
}

/* ---- records: "<producer>:<seq>:" and letters that depend on both ------------------------- */

static int64_t make_record(char *out, int producer, int64_t seq, int64_t length) {
    int n = snprintf(out, 64, "%d:%lld:", producer, (long long)seq);
    if (length < n) length = n;
    for (int64_t k = n; k < length; k++) out[k] = (char)('a' + (producer * 7 + seq * 13 + k) % 26);
    return length;
}

/* producer and seq of a whole record, or -1 */
static int check_record(const char *p, int64_t length, int64_t *seq) {
    char buf[64];
    int producer;
    long long s;
    if (length < 4 || sscanf(p, "%d:%lld:", &producer, &s) != 2) return -1;
    char expect[4096];
    if (length > (int64_t)sizeof expect || make_record(expect, producer, s, length) != length) return -1;
    if (memcmp(expect, p, (size_t)length) != 0) return -1;
    (void)buf;
    *seq = s;
    return producer;
}

static int claim(const ring_t *r, const char *blob, const int64_t *lengths, int64_t n, int64_t owner,
                 int64_t *first, int64_t *next) {
    claim_args a = {.blob = blob, .lengths = lengths, .n = n, .received_ns = 1700000000000000000LL, .owner = owner};
    for (int64_t i = 0; i < n; i++) a.total += align8(RECORD_HEADER_LENGTH + lengths[i]);
    int status = claim_commit_nogil(r, &a);
    if (first) *first = a.first_position;
    if (next) *next = a.next_position;
    return status;
}

static int64_t owner_of(int id) { return (int64_t)((uint64_t)1 << 63 | (uint64_t)(id + 1) << 32 | 4242u); }

typedef struct {
    int64_t count, next, status, corrupt;
    int64_t seqs[256];
    int producers[256];
} read_result;

static void read_all(const ring_t *r, int64_t cursor, read_result *out) {
    static int64_t positions[256], received[256], starts[256], lengths[256];
    static char data[1 << 20];
    read_args a = {.cursor = cursor, .max_records = 256, .max_bytes = 1 << 16, .positions = positions,
                   .received = received, .starts = starts, .lengths = lengths, .out = data,
                   .out_len = sizeof data};
    read_nogil(r, &a);
    out->count = a.count;
    out->next = a.next_cursor;
    out->status = a.status;
    out->corrupt = a.corrupt_position;
    for (int64_t i = 0; i < a.count; i++)
        out->producers[i] = check_record(data + starts[i], lengths[i], &out->seqs[i]);
}

/* ---- deterministic interleavings ------------------------------------------------------------
 * A schedule is a list of steps (thread, point, offset): the thread named by the current step
 * runs until it reaches that point (or finishes), then the next step's thread runs. Only the
 * points a thread passes while `armed` count. */

typedef struct {
    int thread, point;
    int64_t offset; /* -1: any */
} step;

#define POINT_END (-1)
static pthread_mutex_t baton_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t baton_moved = PTHREAD_COND_INITIALIZER;
static const step *schedule;
static int schedule_length, current_step, turn, finished[2];
static _Thread_local int me = -1, armed;

static void pass_baton(void) { /* baton_lock held */
    while (current_step < schedule_length && finished[schedule[current_step].thread]) current_step++;
    turn = current_step < schedule_length ? schedule[current_step].thread : (finished[0] ? 1 : 0);
    pthread_cond_broadcast(&baton_moved);
}

static void wait_turn(void) { /* baton_lock held */
    while (turn != me) pthread_cond_wait(&baton_moved, &baton_lock);
}

static void race_point(int point, int64_t offset) {
    if (mode == MODE_STRESS) {
        static _Thread_local uint64_t s = 88172645463325252ULL;
        if (next_random(&s) % 16 == 0) sched_yield();
        return;
    }
    if (mode != MODE_SCHEDULE || !armed) return;
    pthread_mutex_lock(&baton_lock);
    const step *st = current_step < schedule_length ? &schedule[current_step] : NULL;
    if (st && st->thread == me && st->point == point && (st->offset < 0 || st->offset == offset)) {
        current_step++;
        pass_baton();
        wait_turn();
    }
    pthread_mutex_unlock(&baton_lock);
}

static void thread_begin(int id) {
    me = id;
    pthread_mutex_lock(&baton_lock);
    wait_turn();
    pthread_mutex_unlock(&baton_lock);
}

static void thread_end(void) {
    pthread_mutex_lock(&baton_lock);
    finished[me] = 1;
    pass_baton();
    pthread_mutex_unlock(&baton_lock);
}

static _Thread_local jmp_buf *die_here;
static void stop_point(int point) {
    (void)point;
    if (die_here) longjmp(*die_here, 1); /* the producer dies right here, mid-claim */
}

/* scenario "zero run": the producer B claims at P (lap 1) and runs its claim; the consumer A
 * claims a later record, then unblock_zero(P). */
static ring_t sr;
static int64_t s_position, s_later;
static int s_claim_status, s_unblocked;

/* producer B of both scenarios: claims two records at P; arg points at where its status goes */
static void *two_record_producer(void *arg) {
    thread_begin(1);
    char blob[200];
    int64_t lengths[2] = {make_record(blob, 1, 0, 40), 0};
    lengths[1] = make_record(blob + lengths[0], 1, 1, 40);
    armed = 1;
    *(int *)arg = claim(&sr, blob, lengths, 2, owner_of(1), NULL, NULL);
    armed = 0;
    thread_end();
    return NULL;
}

static void *zero_consumer(void *arg) {
    (void)arg;
    thread_begin(0);
    char blob[64];
    int64_t length = make_record(blob, 2, 0, 30);
    if (claim(&sr, blob, &length, 1, owner_of(2), &s_later, NULL) != CLAIM_OK) fail("later claim");
    armed = 1;
    s_unblocked = unblock_zero_nogil(&sr, s_position);
    armed = 0;
    thread_end();
    return NULL;
}

/* scenario "lap": the producer B stops before its commit CAS; the consumer A pads it (its
 * owner word is already the received time), reads, releases and fills a lap, then claims the
 * same length at the same index and stops after its header CAS; B resumes. */
static int s_b_status, s_a_status;

static void *lap_consumer(void *arg) {
    (void)arg;
    thread_begin(0);
    int64_t w = load(&sr, HEADER_LENGTH + (s_position & sr.mask));
    if (word_length(w) >= 0) fail("lap: the victim's claim is not in progress");
    if (!unblock_in_progress_nogil(&sr, s_position, w)) fail("lap: could not pad the victim's claim");
    char blob[8192];
    int64_t next;
    memset(blob, 'f', sizeof blob);
    read_result rr;
    for (;;) { /* one lap of claims, read and released as they come, none crossing the end */
        read_all(&sr, load(&sr, CONSUMER_POSITION_OFFSET), &rr);
        release_nogil(&sr, rr.next);
        int64_t position = load(&sr, PRODUCER_POSITION_OFFSET);
        int64_t left = s_position + CAP - position, to_end = CAP - (position & sr.mask);
        if (left == 0) break;
        int64_t size = left < to_end ? left : to_end;
        if (size > 8000) size = 8000;
        if (left - size == 8 || to_end - size == 8) size -= 16; /* no record fills one word */
        size -= RECORD_HEADER_LENGTH;
        if (claim(&sr, blob, &size, 1, owner_of(3), NULL, NULL) != CLAIM_OK) fail("lap: filler claim");
    }
    char rec[200];
    int64_t lengths[2] = {make_record(rec, 2, 0, 40), 0};
    lengths[1] = make_record(rec + lengths[0], 2, 1, 40);
    armed = 1;
    s_a_status = claim(&sr, rec, lengths, 2, owner_of(2), &next, NULL);
    armed = 0;
    thread_end();
    return NULL;
}

static void run_schedule(const step *steps, int n, void *(*a)(void *), void *(*b)(void *), void *b_arg) {
    schedule = steps;
    schedule_length = n;
    current_step = 0;
    finished[0] = finished[1] = 0;
    turn = steps[0].thread;
    pthread_t ta, tb;
    pthread_create(&ta, NULL, a, NULL);
    pthread_create(&tb, NULL, b, b_arg);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
}

static const char *point_names[] = {"claim after position", "claim after owner", "claim after header",
                                    "claim before commit", "unblock_zero first look", "unblock_zero scanned",
                                    "unblock_zero published", "unblock_zero rechecked"};

static const char *step_name(const step *s, char *buf) {
    if (s->point == POINT_END) return strcpy(buf, "end");
    if (s->offset >= 0)
        sprintf(buf, "%s %+lld", point_names[s->point], (long long)(s->offset - (s_position & sr.mask)));
    else
        strcpy(buf, point_names[s->point]);
    return buf;
}

/* Drain from P like a flusher with no patience: read, pad whatever blocks, read again. Returns
 * a description of what is wrong, or NULL. */
static const char *drain_check(int producer_ok) {
    int64_t cursor = s_position;
    int seen_b = 0, seen_later = 0;
    for (int round = 0; round < 16; round++) {
        read_result rr;
        read_all(&sr, cursor, &rr);
        if (rr.corrupt >= 0) return "corrupt ring: read refuses a record header (a padding shorter than 8?)";
        for (int64_t i = 0; i < rr.count; i++) {
            if (rr.producers[i] == 1) seen_b++;
            else if (rr.producers[i] == 2) seen_later++;
            else return "a torn record";
        }
        cursor = rr.next;
        if (rr.status == READ_IDLE) {
            if (seen_later != 1) return "the later record was not read exactly once";
            if (producer_ok && seen_b != 2) return "the producer's commit succeeded but its records were not read";
            if (!producer_ok && seen_b != 0) return "records of a producer that reported CLAIM_LOST were read";
            return NULL;
        }
        int64_t w = load(&sr, HEADER_LENGTH + (cursor & sr.mask));
        if (rr.status == READ_BLOCKED_ZERO) unblock_zero_nogil(&sr, cursor);
        else unblock_in_progress_nogil(&sr, cursor, w);
    }
    return "the ring stays blocked after the producer finished";
}

static int schedules(void) {
    int failures = 0, runs = 0;
    char n1[80], n2[80];
    sr = new_ring();
    /* zero run at P = CAP + 4096 (lap 1): B's claim of 2 x 56 bytes, A's later record after it */
    s_position = CAP + 4096;
    int64_t idx = s_position & (CAP - 1);
    const step consumer_points[] = {
        {0, RACE_UZ_FIRST_LOOK, -1},     {0, RACE_UZ_SCANNED, idx + 8}, {0, RACE_UZ_SCANNED, idx + 16},
        {0, RACE_UZ_SCANNED, idx + 104}, {0, RACE_UZ_PUBLISHED, -1},    {0, RACE_UZ_RECHECKED, -1},
        {0, POINT_END, -1}};
    const step producer_points[] = {{1, RACE_CLAIM_AFTER_OWNER, -1},
                                    {1, RACE_CLAIM_AFTER_HEADER, -1},
                                    {1, RACE_CLAIM_BEFORE_COMMIT, -1},
                                    {1, POINT_END, -1}};
    int nc = sizeof consumer_points / sizeof *consumer_points, np = sizeof producer_points / sizeof *producer_points;
    for (int order = 0; order < 2; order++) {
        for (int c = 0; c < nc; c++) {
            for (int p = 0; p < np; p++) {
                step first = order == 0 ? consumer_points[c] : producer_points[p];
                step second = order == 0 ? producer_points[p] : consumer_points[c];
                step steps[] = {{1, RACE_CLAIM_AFTER_POSITION, -1}, first, second,
                                {first.thread, POINT_END, -1}, {second.thread, POINT_END, -1}};
                reset_ring(&sr, s_position);
                run_schedule(steps, 5, zero_consumer, two_record_producer, &s_claim_status);
                runs++;
                const char *wrong = NULL;
                int64_t w = load(&sr, HEADER_LENGTH + idx);
                if (s_unblocked && s_claim_status == CLAIM_OK) wrong = "padded and committed both";
                else if (s_unblocked && word_length(w) < RECORD_ALIGNMENT) wrong = "padding shorter than 8";
                else wrong = drain_check(s_claim_status == CLAIM_OK);
                if (wrong) {
                    failures++;
                    fprintf(stderr, "zero run: consumer to \"%s\", producer to \"%s\" (%s first): %s "
                            "(unblock_zero %d, claim %d, header 0x%016llx)\n",
                            step_name(&consumer_points[c], n1), step_name(&producer_points[p], n2),
                            order == 0 ? "consumer" : "producer", wrong, s_unblocked, s_claim_status,
                            (unsigned long long)w);
                }
            }
        }
    }
    /* lap: B stops before its commit; A pads it, fills a lap, claims the same length at the same
     * index and stops after its header CAS; B's commit CAS must fail */
    s_position = CAP + 4096;
    reset_ring(&sr, s_position);
    step lap[] = {{1, RACE_CLAIM_BEFORE_COMMIT, -1}, {0, RACE_CLAIM_AFTER_HEADER, -1}, {1, POINT_END, -1},
                  {0, POINT_END, -1}};
    run_schedule(lap, 4, lap_consumer, two_record_producer, &s_b_status);
    runs++;
    if (s_b_status == CLAIM_OK || s_a_status != CLAIM_OK) {
        failures++;
        fprintf(stderr, "lap: a producer resumed one lap later committed a newer claim (its status %d, "
                "the newer claim's %d)\n", s_b_status, s_a_status);
    } else {
        read_result rr;
        read_all(&sr, load(&sr, CONSUMER_POSITION_OFFSET), &rr);
        if (rr.corrupt >= 0 || rr.count != 2 || rr.producers[0] != 2 || rr.producers[1] != 2) {
            failures++;
            fprintf(stderr, "lap: the newer claim does not read back whole\n");
        }
    }
    printf("schedules: %d runs, %d broke the ring\n", runs, failures);
    return failures ? 1 : 0;
}

/* ---- the zero-run race, free-running ------------------------------------------------------- */

static _Atomic int64_t zr_round, zr_done;
static _Atomic int zr_stop;
static void spin_until(_Atomic int64_t *w, int64_t value, int not_equal);

static void *zr_producer(void *arg) {
    (void)arg;
    uint64_t s = 0x9E3779B97F4A7C15ULL;
    int64_t seen = 0;
    int64_t index = (s_position & (CAP - 1));
    while (!atomic_load(&zr_stop)) {
        spin_until(&zr_round, seen, 1);
        int64_t round = atomic_load(&zr_round);
        if (round < 0) break;
        seen = round;
        for (uint64_t k = next_random(&s) % 64; k; k--) atomic_signal_fence(memory_order_seq_cst);
        /* what claim_commit does after its position CAS: owner CAS, then header CAS, back to back */
        int64_t expected = 0;
        if (atomic_compare_exchange_strong(word(sr.base + HEADER_LENGTH, index + 8), &expected, owner_of(1))) {
            expected = 0;
            atomic_compare_exchange_strong(word(sr.base + HEADER_LENGTH, index), &expected,
                                           in_progress_word(&sr, s_position, 112, TYPE_DATA));
        }
        atomic_store(&zr_done, round);
    }
    return NULL;
}

static void spin_until(_Atomic int64_t *w, int64_t value, int not_equal) {
    for (int spins = 0; not_equal ? atomic_load(w) == value : atomic_load(w) != value; spins++)
        if (spins > 2000) sched_yield(); /* 2 shared cores: let the other thread run */
}

static int zero_race(double seconds) {
    sr = new_ring();
    s_position = CAP + 4096;
    int64_t index = s_position & (CAP - 1);
    int64_t *d = (int64_t *)(sr.base + HEADER_LENGTH);
    /* the claim at P: position CAS done, nothing written yet; a committed record after it */
    reset_ring(&sr, s_position);
    d[(index + 112) / 8] = header_word(RECORD_HEADER_LENGTH + 8, TYPE_DATA);
    *(int64_t *)(sr.base + PRODUCER_POSITION_OFFSET) = s_position + 112 + 24;
    pthread_t t;
    pthread_create(&t, NULL, zr_producer, NULL);
    uint64_t s = 0x2545F4914F6CDD1DULL;
    int64_t calls = 0, bad = 0, padded = 0;
    double deadline = now_s() + seconds;
    while ((calls & 1023) || now_s() < deadline) {
        d[index / 8] = d[index / 8 + 1] = 0;
        *(int64_t *)(sr.base + UNBLOCK_FIRST_OFFSET) = *(int64_t *)(sr.base + UNBLOCK_NEXT_OFFSET) = s_position;
        atomic_store(&zr_round, calls + 1);
        for (uint64_t k = next_random(&s) % 64; k; k--) atomic_signal_fence(memory_order_seq_cst);
        padded += unblock_zero_nogil(&sr, s_position);
        calls++;
        spin_until(&zr_done, calls, 0);
        int64_t w = load(&sr, HEADER_LENGTH + index);
        if (word_type(w) == TYPE_PADDING && word_length(w) < RECORD_ALIGNMENT) bad++;
    }
    atomic_store(&zr_stop, 1);
    atomic_store(&zr_round, -1);
    pthread_join(t, NULL);
    printf("zero-race: %lld unblock_zero calls, %lld padded, %lld bad paddings (shorter than 8)\n",
           (long long)calls, (long long)padded, (long long)bad);
    return bad ? 1 : 0;
}

/* ---- multi-threaded stress: producers, some dying mid-claim, and an eager consumer ---------- */

#define MAX_PRODUCERS 8
static int64_t st_records;
static _Atomic int64_t st_dead_owners[MAX_PRODUCERS * 4096];
static _Atomic int st_owner_count;
static _Atomic int st_producers_done;

static int owner_dead(int64_t w) {
    if (!is_owner_word(w)) return 1; /* the received time: committing or gone */
    int id = (int)(((uint64_t)w >> 32) & 0x7FFFFFFF) - 1;
    return id >= 0 && id < MAX_PRODUCERS * 4096 && atomic_load(&st_dead_owners[id]);
}

#define DIED (-50)
/* claim_commit, where RING_STOP kills the producer: it returns DIED, its claim abandoned */
static int claim_or_die(claim_args *a) {
    jmp_buf jb;
    if (setjmp(jb)) {
        die_here = NULL;
        return DIED;
    }
    die_here = &jb;
    int status = claim_commit_nogil(&sr, a);
    die_here = NULL;
    return status;
}

static void *st_producer(void *arg) {
    int producer = (int)(intptr_t)arg;
    uint64_t s = 0x1234567ULL * (uint64_t)(producer + 1);
    int owner_id = atomic_fetch_add(&st_owner_count, 1);
    char blob[30 * 700];
    int64_t lengths[30];
    for (int64_t seq = 0; seq < st_records;) {
        int64_t n = 1 + (int64_t)(next_random(&s) % 20);
        if (n > st_records - seq) n = st_records - seq;
        int64_t at = 0;
        for (int64_t i = 0; i < n; i++) {
            lengths[i] = make_record(blob + at, producer, seq + i, 8 + (int64_t)(next_random(&s) % 600));
            at += lengths[i];
        }
        claim_args a = {.blob = blob, .lengths = lengths, .n = n, .received_ns = 1, .owner = owner_of(owner_id)};
        for (int64_t i = 0; i < n; i++) a.total += align8(RECORD_HEADER_LENGTH + lengths[i]);
        a.stop_at = next_random(&s) % 50 == 0 ? 1 + (int)(next_random(&s) % 2) : STOP_NONE;
        int status = claim_or_die(&a);
        if (status == DIED) { /* a new process (owner) sends the records again */
            atomic_store(&st_dead_owners[owner_id], 1);
            owner_id = atomic_fetch_add(&st_owner_count, 1);
            if (owner_id >= MAX_PRODUCERS * 4096) fail("stress: too many deaths");
            continue;
        }
        if (status == CLAIM_OK) seq += n;
        else if (status == CLAIM_FULL) sched_yield();
        else if (status != CLAIM_LOST) fail("stress: claim_commit returned an unexpected status");
    }
    atomic_fetch_add(&st_producers_done, 1);
    return NULL;
}

static int stress(int64_t records, int producers) {
    sr = new_ring();
    st_records = records;
    pthread_t t[MAX_PRODUCERS];
    for (int i = 0; i < producers; i++) pthread_create(&t[i], NULL, st_producer, (void *)(intptr_t)i);
    int64_t expected[MAX_PRODUCERS] = {0}, total = 0, unblocked = 0;
    int64_t cursor = 0;
    double deadline = now_s() + 120;
    while (total < st_records * producers) {
        if (now_s() > deadline) fail("stress: the consumer did not get every record in time");
        read_result rr;
        read_all(&sr, cursor, &rr);
        if (rr.corrupt >= 0) fail("stress: corrupt ring");
        for (int64_t i = 0; i < rr.count; i++) {
            int p = rr.producers[i];
            if (p < 0 || p >= producers) fail("stress: a torn record");
            if (rr.seqs[i] != expected[p]) {
                fprintf(stderr, "producer %d: record %lld, expected %lld\n", p, (long long)rr.seqs[i],
                        (long long)expected[p]);
                fail("stress: a record lost, repeated or out of order");
            }
            expected[p]++;
            total++;
        }
        if (rr.next > cursor) release_nogil(&sr, rr.next);
        cursor = rr.next;
        if (rr.status == READ_BLOCKED_ZERO) {
            unblocked += unblock_zero_nogil(&sr, cursor);
        } else if (rr.status == READ_BLOCKED_IN_PROGRESS) {
            int64_t index = cursor & sr.mask;
            int64_t w = load(&sr, HEADER_LENGTH + index);
            int64_t owner = index + 8 < CAP ? load(&sr, HEADER_LENGTH + index + 8) : 0;
            if (word_length(w) < 0 && owner_dead(owner)) unblocked += unblock_in_progress_nogil(&sr, cursor, w);
        }
    }
    for (int i = 0; i < producers; i++) pthread_join(t[i], NULL);
    printf("stress: %d producers, %lld records, %lld claims unblocked, %lld laps\n", producers, (long long)total,
           (long long)unblocked, (long long)(cursor / CAP));
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc >= 2 && strcmp(argv[1], "schedules") == 0) {
        mode = MODE_SCHEDULE;
        return schedules();
    }
    if (argc >= 3 && strcmp(argv[1], "zero-race") == 0) return zero_race(atof(argv[2]));
    if (argc >= 4 && strcmp(argv[1], "stress") == 0) {
        mode = MODE_STRESS;
        int n = atoi(argv[3]);
        if (n < 1 || n > MAX_PRODUCERS) fail("stress: 1 to 8 producers");
        return stress(atoll(argv[2]), n);
    }
    fprintf(stderr, "usage: ring_stress schedules | zero-race SECONDS | stress RECORDS PRODUCERS\n");
    return 2;
}
