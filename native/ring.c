/* ringgate._ring: CPython glue over native/ring_core.h (the ring's claim/commit, read, unblock
 * and release in C11 atomics): argument checks, buffers, the GIL, errors. The protocol and its
 * memory orders are in ring_core.h; the contract in ringgate/ring/layout.py. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <inttypes.h>
#include <stdio.h>

#include "ring_core.h"

/* Claims copying at least this much release the GIL around the copy; below it the GIL round
 * trip costs more than it frees (HTTP workers run one Python thread each). */
#define RELEASE_GIL_BYTES (64 * 1024)

/* ---- argument handling ------------------------------------------------------------------- */


static int ring_open(Py_buffer *view, ring_t *r) {
    if (view->len < HEADER_LENGTH + MIN_CAPACITY) {
        PyErr_Format(PyExc_ValueError, "ring buffer is %zd bytes: smaller than the %d-byte header and a %d-byte ring",
                     view->len, HEADER_LENGTH, MIN_CAPACITY);
        return -1;
    }
    if ((uintptr_t)view->buf % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "ring buffer is not 8-byte aligned");
        return -1;
    }
    /* relaxed: written once by Ring.create before any other process maps the segment */
    int64_t capacity = atomic_load_explicit(word((char *)view->buf, CAPACITY_OFFSET), memory_order_relaxed);
    if (capacity < MIN_CAPACITY || (capacity & (capacity - 1)) != 0) {
        PyErr_Format(PyExc_ValueError, "ring capacity in the header must be a power of two >= %d: %lld",
                     MIN_CAPACITY, (long long)capacity);
        return -1;
    }
    if (capacity > view->len - HEADER_LENGTH) {
        PyErr_Format(PyExc_ValueError, "ring capacity in the header (%lld) exceeds the buffer (%zd bytes)",
                     (long long)capacity, view->len);
        return -1;
    }
    ring_setup(r, (char *)view->buf, capacity);
    return 0;
}

/* A C-contiguous buffer of int64 ('q' or 'l' of 8 bytes, native little-endian). */
static int get_int64_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++;
    if (view->itemsize != 8 || view->ndim > 1 || (strcmp(f, "q") != 0 && strcmp(f, "l") != 0) ||
        (uintptr_t)view->buf % 8 != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be an aligned, contiguous int64 array (numpy int64), got format %s",
                     name, view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int check_position(long long position, const char *name) {
    if (position < 0 || position % RECORD_ALIGNMENT != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a non-negative multiple of %d: %lld", name, RECORD_ALIGNMENT,
                     position);
        return -1;
    }
    return 0;
}

static PyObject *ring_claim_commit(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buf", "blob", "lengths", "received_ns", "owner", "stop_at", NULL};
    Py_buffer buf = {0}, blob = {0}, lengths = {0};
    PyObject *lengths_obj;
    long long received_ns, owner;
    int stop_at = STOP_NONE;
    PyObject *result = NULL;
    ring_t r;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "w*y*OLL|i:claim_commit", kwlist, &buf, &blob, &lengths_obj,
                                     &received_ns, &owner, &stop_at))
        return NULL;
    if (get_int64_buffer(lengths_obj, &lengths, 0, "lengths") < 0) goto done;
    if (ring_open(&buf, &r) < 0) goto done;
    if (stop_at < STOP_NONE || stop_at > STOP_AFTER_HEADER) {
        PyErr_Format(PyExc_ValueError, "stop_at must be 0, 1 or 2: %d", stop_at);
        goto done;
    }
    if (!is_owner_word(owner)) {
        PyErr_Format(PyExc_ValueError, "owner must be an owner word (ringgate.ring.owner_word, bit 63 set): %lld",
                     owner);
        goto done;
    }

    claim_args a = {.blob = (const char *)blob.buf, .lengths = (const int64_t *)lengths.buf,
                    .n = lengths.len / 8, .received_ns = received_ns, .owner = owner, .stop_at = stop_at};
    int64_t payload = 0;
    for (Py_ssize_t i = 0; i < a.n; i++) {
        if (a.lengths[i] < 0) {
            PyErr_Format(PyExc_ValueError, "lengths[%zd] is negative: %lld", i, (long long)a.lengths[i]);
            goto done;
        }
        if (a.lengths[i] > blob.len - payload) {
            PyErr_Format(PyExc_ValueError, "lengths add up to more than the %zd bytes of blob", blob.len);
            goto done;
        }
        payload += a.lengths[i];
    }
    int too_large = a.n == 0;
    for (Py_ssize_t i = 0; i < a.n && !too_large; i++) {
        int64_t framed = align8(RECORD_HEADER_LENGTH + a.lengths[i]);
        a.total += framed;
        too_large = framed > max_record_length(r.capacity) || a.total > max_claim_length(r.capacity);
    }
    if (too_large) {
        result = Py_BuildValue("(iii)", CLAIM_TOO_LARGE, 0, 0);
        goto done;
    }

    int status;
    if (stop_at != STOP_NONE || a.total >= RELEASE_GIL_BYTES) {
        /* never SIGSTOP holding the GIL; large copies let the process's other threads run. Those
         * threads could change `lengths` under us: copy them while we still hold the GIL (so they
         * are the values just validated), and the copy stays inside the claim whatever they do. */
        int64_t *snapshot = PyMem_Malloc((size_t)a.n * sizeof(int64_t));
        if (snapshot == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        memcpy(snapshot, a.lengths, (size_t)a.n * sizeof(int64_t));
        a.lengths = snapshot;
        Py_BEGIN_ALLOW_THREADS
        status = claim_commit_nogil(&r, &a);
        Py_END_ALLOW_THREADS
        PyMem_Free(snapshot);
    } else {
        status = claim_commit_nogil(&r, &a);
    }
    if (status == CLAIM_CORRUPT) {
        PyErr_SetString(PyExc_ValueError, "corrupt ring: the producer position is not a valid claim start");
        goto done;
    }
    if (status == CLAIM_OK)
        result = Py_BuildValue("(iLL)", status, (long long)a.first_position, (long long)a.next_position);
    else
        result = Py_BuildValue("(iii)", status, 0, 0);

done:
    if (lengths.obj) PyBuffer_Release(&lengths);
    PyBuffer_Release(&blob);
    PyBuffer_Release(&buf);
    return result;
}

static PyObject *ring_read(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buf", "cursor", "max_records", "max_bytes", "positions", "received", "starts",
                             "lengths", "data", NULL};
    Py_buffer buf = {0}, out = {0};
    Py_buffer arrays[4] = {{0}};
    PyObject *objs[4];
    static const char *names[4] = {"positions", "received", "starts", "lengths"};
    long long cursor, max_bytes;
    Py_ssize_t max_records;
    PyObject *result = NULL;
    ring_t r;
    int i;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "w*LnLOOOOw*:read", kwlist, &buf, &cursor, &max_records, &max_bytes,
                                     &objs[0], &objs[1], &objs[2], &objs[3], &out))
        return NULL;
    for (i = 0; i < 4; i++)
        if (get_int64_buffer(objs[i], &arrays[i], 1, names[i]) < 0) goto done;
    if (ring_open(&buf, &r) < 0) goto done;
    if (check_position(cursor, "cursor") < 0) goto done;
    if (max_records < 0 || max_bytes < 0) {
        PyErr_Format(PyExc_ValueError, "max_records and max_bytes must be >= 0: %zd, %lld", max_records, max_bytes);
        goto done;
    }
    for (i = 0; i < 4; i++) {
        if (arrays[i].len / 8 < max_records) {
            PyErr_Format(PyExc_ValueError, "%s holds %zd items, max_records is %zd", names[i], arrays[i].len / 8,
                         max_records);
            goto done;
        }
    }
    /* the documented need: max_bytes + max_records + max_record_length(capacity), without overflow */
    if (max_bytes > out.len || max_records > out.len - max_bytes ||
        max_record_length(r.capacity) > out.len - max_bytes - max_records) {
        PyErr_Format(PyExc_ValueError,
                     "data holds %zd bytes; read needs max_bytes + max_records + max_record_length(capacity)", out.len);
        goto done;
    }

    read_args a = {.cursor = cursor, .max_records = max_records, .max_bytes = max_bytes,
                   .positions = (int64_t *)arrays[0].buf, .received = (int64_t *)arrays[1].buf,
                   .starts = (int64_t *)arrays[2].buf, .lengths = (int64_t *)arrays[3].buf,
                   .out = (char *)out.buf, .out_len = out.len};
    Py_BEGIN_ALLOW_THREADS
    read_nogil(&r, &a);
    Py_END_ALLOW_THREADS
    if (a.corrupt_position >= 0) {
        /* PyErr_Format has no %llx, nor zero padding: format the word here */
        char hex[17];
        snprintf(hex, sizeof hex, "%016" PRIx64, (uint64_t)a.corrupt_word);
        PyErr_Format(PyExc_ValueError, "corrupt ring: invalid record header 0x%s at position %lld", hex,
                     (long long)a.corrupt_position);
        goto done;
    }
    result = Py_BuildValue("(nLLi)", (Py_ssize_t)a.count, (long long)a.next_cursor, (long long)a.used, a.status);

done:
    for (i = 0; i < 4; i++)
        if (arrays[i].obj) PyBuffer_Release(&arrays[i]);
    PyBuffer_Release(&out);
    PyBuffer_Release(&buf);
    return result;
}

/* ---- unblock ----------------------------------------------------------------------------- */

static PyObject *ring_unblock_in_progress(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buf", "position", "expected_word", NULL};
    Py_buffer buf = {0};
    long long position, expected_word;
    PyObject *result = NULL;
    ring_t r;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "w*LL:unblock_in_progress", kwlist, &buf, &position, &expected_word))
        return NULL;
    if (ring_open(&buf, &r) < 0 || check_position(position, "position") < 0) goto done;
    int ok = unblock_in_progress_nogil(&r, position, expected_word);
    result = Py_NewRef(ok ? Py_True : Py_False);
done:
    PyBuffer_Release(&buf);
    return result;
}

static PyObject *ring_unblock_zero(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buf", "position", NULL};
    Py_buffer buf = {0};
    long long position;
    PyObject *result = NULL;
    ring_t r;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "w*L:unblock_zero", kwlist, &buf, &position)) return NULL;
    if (ring_open(&buf, &r) < 0 || check_position(position, "position") < 0) goto done;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = unblock_zero_nogil(&r, position);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(ok ? Py_True : Py_False);
done:
    PyBuffer_Release(&buf);
    return result;
}

static PyObject *ring_release(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buf", "next_position", NULL};
    Py_buffer buf = {0};
    long long next_position;
    PyObject *result = NULL;
    ring_t r;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "w*L:release", kwlist, &buf, &next_position)) return NULL;
    if (ring_open(&buf, &r) < 0 || check_position(next_position, "next_position") < 0) goto done;
    /* relaxed, pairs with nothing: a bound for the argument check only */
    int64_t producer = atomic_load_explicit(word(r.base, PRODUCER_POSITION_OFFSET), memory_order_relaxed);
    if (next_position > producer) {
        PyErr_Format(PyExc_ValueError, "next_position %lld is beyond the producer position %lld", next_position,
                     (long long)producer);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    release_nogil(&r, next_position);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&buf);
    return result;
}

/* ---- module ------------------------------------------------------------------------------ */

static PyMethodDef ring_methods[] = {
    {"claim_commit", (PyCFunction)(void (*)(void))ring_claim_commit, METH_VARARGS | METH_KEYWORDS,
     "claim_commit(buf, blob, lengths, received_ns, owner, stop_at=0) -> (status, first_position, next_position)\n"
     "Claim, copy and commit one request's records in one call (see ringgate/ring/_pyring.py)."},
    {"read", (PyCFunction)(void (*)(void))ring_read, METH_VARARGS | METH_KEYWORDS,
     "read(buf, cursor, max_records, max_bytes, positions, received, starts, lengths, data)\n"
     "-> (count, next_cursor, data_length, status)"},
    {"unblock_in_progress", (PyCFunction)(void (*)(void))ring_unblock_in_progress, METH_VARARGS | METH_KEYWORDS,
     "unblock_in_progress(buf, position, expected_word) -> bool"},
    {"unblock_zero", (PyCFunction)(void (*)(void))ring_unblock_zero, METH_VARARGS | METH_KEYWORDS,
     "unblock_zero(buf, position) -> bool"},
    {"release", (PyCFunction)(void (*)(void))ring_release, METH_VARARGS | METH_KEYWORDS,
     "release(buf, next_position) -> None"},
    {NULL, NULL, 0, NULL},
};

static int ring_exec(PyObject *module) {
    _Atomic int64_t probe = 0;
    if (!atomic_is_lock_free(&probe)) {
        PyErr_SetString(PyExc_ImportError,
                        "ringgate._ring: 64-bit atomics are not lock-free here, so they cannot be shared between processes");
        return -1;
    }
    if (PyModule_AddIntConstant(module, "IMPL", IMPL_NATIVE) < 0) return -1;
    PyObject *layout = Py_BuildValue(
        "{sisisisisisisisisisisisisisisisisisisisisisi}", "HEADER_LENGTH", HEADER_LENGTH, "MIN_CAPACITY", MIN_CAPACITY, "MAX_LENGTH", (int)MAX_LENGTH,
        "CAPACITY_OFFSET", CAPACITY_OFFSET, "UNBLOCKED_COUNT_OFFSET", UNBLOCKED_COUNT_OFFSET,
        "PRODUCER_POSITION_OFFSET", PRODUCER_POSITION_OFFSET, "CONSUMER_POSITION_OFFSET", CONSUMER_POSITION_OFFSET,
        "FREE_POSITION_OFFSET", FREE_POSITION_OFFSET, "UNBLOCK_FIRST_OFFSET", UNBLOCK_FIRST_OFFSET,
        "UNBLOCK_NEXT_OFFSET", UNBLOCK_NEXT_OFFSET, "RECORD_HEADER_LENGTH", RECORD_HEADER_LENGTH, "RECORD_ALIGNMENT",
        RECORD_ALIGNMENT, "TYPE_DATA", TYPE_DATA, "TYPE_PADDING", TYPE_PADDING, "CLAIM_FULL", CLAIM_FULL,
        "CLAIM_LOST", CLAIM_LOST, "CLAIM_TOO_LARGE", CLAIM_TOO_LARGE, "READ_IDLE", READ_IDLE,
        "READ_BLOCKED_IN_PROGRESS", READ_BLOCKED_IN_PROGRESS, "READ_BLOCKED_ZERO", READ_BLOCKED_ZERO, "LAP_SHIFT", LAP_SHIFT,
        "LAP_BITS", LAP_BITS);
    if (layout == NULL) return -1;
    if (PyModule_AddObject(module, "LAYOUT", layout) < 0) {
        Py_DECREF(layout);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot ring_slots[] = {
    {Py_mod_exec, (void *)ring_exec},
    {0, NULL},
};

static struct PyModuleDef ring_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ringgate._ring",
    .m_doc = "Native ring: claim/commit, read, unblock and release over a ring segment (see ringgate/ring/layout.py).",
    .m_size = 0,
    .m_methods = ring_methods,
    .m_slots = ring_slots,
};

PyMODINIT_FUNC PyInit__ring(void) { return PyModuleDef_Init(&ring_module); }
