/*
 * epx._C.MoE and epx._C.Handle: an engine and the record of one dispatch.
 *
 * Order and lifetime rules of epx.h are kept here, so that nothing a Python
 * caller does can crash the process or leave the peers waiting:
 *   - a bad array on this rank still takes part in dispatch's status
 *     agreement (epx_dispatch_send with no args), so every rank fails the
 *     call together and the engine stays usable;
 *   - call-order mistakes that the library cannot agree with the peers
 *     (a dispatch while the previous one is unfinished) are refused here
 *     before any library call;
 *   - handles keep their engine alive; closing an engine releases its live
 *     handles; views of its receive memory keep it mapped (the engine is
 *     destroyed when the last view goes).
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "epxpy.h"

typedef enum { H_SENT, H_RECEIVED, H_COMBINING, H_COMBINED, H_ABANDONED,
               H_RELEASED } hstate_t;

typedef struct epxpy_handle epxpy_handle_t;

typedef struct {
    PyObject_HEAD
    epx_moe_t *moe;
    epxpy_comm_t *comm;
    epx_moe_params_t p;
    int nlocal, first;
    int closed;                  /* close() called */
    int views;                   /* Buffers viewing the windows */
    epxpy_handle_t *live;        /* unreleased handles, a list */
    epxpy_handle_t *cur;         /* throughput: the call in flight */
    PyObject *weights;           /* {layer: (array, address, bytes per
                                    slot)} registered for rebalance */
} epxpy_moe_t;

struct epxpy_handle {
    PyObject_HEAD
    epxpy_moe_t *moe;
    epx_handle_t *h;
    hstate_t state;
    epx_recv_t recv;
    PyObject *y;                 /* combine input kept until its recv */
    void *cstream;               /* the combine's stream (device engines) */
    PyObject *inputs;            /* device engines: (x, topk_idx,
                                    topk_weights) kept until the recv, as
                                    the engine's stream reads them until
                                    then (epx.h) */
    PyObject *lost;              /* elastic engines: the dispatch's lost
                                    mask, a uint8 [T, K] Buffer, or NULL */
    epxpy_handle_t *next, *prev; /* the engine's live list */
};

static const char *state_name[] = { "dispatched", "received", "combining",
                                    "combined", "abandoned", "released" };

/* ------------------------------------------------------------ engine */

static int moe_usable(epxpy_moe_t *m)
{
    if (m->moe && !m->closed)
        return 0;
    epxpy_raisef(EPX_ERR_STATE, "moe: closed");
    return -1;
}

static void handle_release_now(epxpy_handle_t *h)
{
    if (h->state == H_RELEASED)
        return;
    epx_handle_t *ch = h->h;
    h->h = NULL;
    h->state = H_RELEASED;
    if (h->moe->cur == h)
        h->moe->cur = NULL;
    if (h->prev)
        h->prev->next = h->next;
    else
        h->moe->live = h->next;
    if (h->next)
        h->next->prev = h->prev;
    h->next = h->prev = NULL;
    Py_CLEAR(h->y);
    Py_CLEAR(h->inputs);
    epxpy_comm_release_handle(h->moe->comm, ch);
}

static void moe_destroy_now(epxpy_moe_t *m)
{
    while (m->live)
        handle_release_now(m->live);
    if (m->moe) {
        epx_moe_t *e = m->moe;
        m->moe = NULL;
        epxpy_comm_destroy_engine(m->comm, e);
    }
}

static int moe_init(epxpy_moe_t *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "comm", "hidden", "num_experts", "topk",
        "max_tokens", "dtype", "layout", "expert_alignment", "mode", "wire",
        "num_layers", "stats_decay", "num_slots", "ll_capacity", "ll_buffers",
        "flags", "device", "num_sms", NULL };
    PyObject *comm;
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    int dtype = p.dtype, layout = p.layout, mode = p.mode, wire = p.wire;
    unsigned flags = 0;
    if (self->moe || self->comm) {
        PyErr_SetString(PyExc_RuntimeError, "MoE already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!iiii|iiiiiidiiiIii", kwlist,
            &epxpy_comm_type, &comm, &p.hidden, &p.num_experts, &p.topk,
            &p.max_tokens_per_rank, &dtype, &layout, &p.expert_alignment,
            &mode, &wire, &p.num_layers, &p.stats_decay, &p.num_slots,
            &p.ll_capacity, &p.ll_buffers, &flags, &p.device, &p.num_sms))
        return -1;
    if (epxpy_comm_check((epxpy_comm_t *)comm) < 0)
        return -1;
    p.dtype = (epx_dtype_t)dtype;
    p.layout = (epx_layout_t)layout;
    p.mode = (epx_mode_t)mode;
    p.wire = (epx_wire_t)wire;
    p.flags = flags;
    epx_moe_t *e = NULL;
    epx_status_t st;
    epx_comm_t *c = ((epxpy_comm_t *)comm)->comm;
    if (epxpy_comm_enter((epxpy_comm_t *)comm) < 0)
        return -1;
    Py_BEGIN_ALLOW_THREADS
    st = epx_moe_create(c, &p, &e);
    Py_END_ALLOW_THREADS
    epxpy_comm_leave((epxpy_comm_t *)comm);
    if (st != EPX_OK) {
        epxpy_raise(st);
        return -1;
    }
    if (!(self->weights = PyDict_New())) {
        epx_moe_destroy(e);
        return -1;
    }
    Py_INCREF(comm);
    self->comm = (epxpy_comm_t *)comm;
    self->comm->engines++;
    self->moe = e;
    self->p = p;
    self->nlocal = epx_moe_num_local_experts(e);
    self->first = epx_moe_first_local_expert(e);
    return 0;
}

static void moe_dealloc(epxpy_moe_t *self)
{
    moe_destroy_now(self);
    Py_CLEAR(self->weights);
    Py_CLEAR(self->comm);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Destroyed now, or when the last view of its memory goes. */
static PyObject *moe_close(epxpy_moe_t *self, PyObject *noarg)
{
    (void)noarg;
    self->closed = 1;
    while (self->live)
        handle_release_now(self->live);
    if (self->views == 0)
        moe_destroy_now(self);
    Py_RETURN_NONE;
}

void epxpy_view_hold(PyObject *owner, int delta)
{
    if (!PyObject_TypeCheck(owner, &epxpy_moe_type))
        return;
    epxpy_moe_t *m = (epxpy_moe_t *)owner;
    m->views += delta;
    if (m->views == 0 && m->closed)
        moe_destroy_now(m);
}

static PyObject *moe_expert_lost(epxpy_moe_t *self, PyObject *args)
{
    int layer, e;
    if (!PyArg_ParseTuple(args, "ii", &layer, &e) || moe_usable(self) < 0)
        return NULL;
    int r = epx_moe_expert_lost(self->moe, layer, e);
    if (r < 0)
        return epxpy_raisef(EPX_ERR_INVALID, "expert_lost: layer %d or expert "
                            "%d out of range, or the layer has no placement",
                            layer, e);
    return PyBool_FromLong(r);
}

static PyObject *moe_expert_rank(epxpy_moe_t *self, PyObject *arg)
{
    long e = PyLong_AsLong(arg);
    if (e == -1 && PyErr_Occurred())
        return NULL;
    if (moe_usable(self) < 0)
        return NULL;
    long n = self->p.num_slots > 0 ? self->p.num_slots : self->p.num_experts;
    if (e < 0 || e >= n)
        return epxpy_raisef(EPX_ERR_INVALID, "expert %ld out of range "
                            "[0, %ld)", e, n);
    return PyLong_FromLong(epx_moe_expert_rank(self->moe, (int)e));
}

/* ------------------------------------------------------------ dispatch */

/* A cudaStream_t given from Python as an int (torch's
 * current_stream().cuda_stream) or None (the legacy default stream). */
static int stream_arg(PyObject *o, void **stream)
{
    *stream = NULL;
    if (o == Py_None)
        return 0;
    if (!PyLong_Check(o)) {
        epxpy_raisef(EPX_ERR_INVALID, "stream: a cudaStream_t as an int "
                     "(torch.cuda.current_stream().cuda_stream) or None, not "
                     "%.60s", Py_TYPE(o)->tp_name);
        return -1;
    }
    *stream = PyLong_AsVoidPtr(o);
    return PyErr_Occurred() ? -1 : 0;
}

static epxpy_handle_t *handle_new(epxpy_moe_t *m, epx_handle_t *h)
{
    epxpy_handle_t *o = PyObject_New(epxpy_handle_t, &epxpy_handle_type);
    if (!o)
        return NULL;
    Py_INCREF(m);
    o->moe = m;
    o->h = h;
    o->state = H_SENT;
    memset(&o->recv, 0, sizeof(o->recv));
    o->y = NULL;
    o->lost = NULL;
    o->inputs = NULL;
    o->cstream = NULL;
    o->prev = NULL;
    o->next = m->live;
    if (m->live)
        m->live->prev = o;
    m->live = o;
    return o;
}

static PyObject *moe_dispatch_send_locked(epxpy_moe_t *self, PyObject *args,
                                   PyObject *kw)
{
    static char *kwlist[] = { "x", "topk_idx", "topk_weights", "layer",
                              "cached", "global_scale", "stream", NULL };
    PyObject *xo, *io, *wo, *cached = Py_None, *so = Py_None;
    int layer = 0;
    float gscale = 0.0f;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|iOfO", kwlist, &xo, &io,
                                     &wo, &layer, &cached, &gscale, &so))
        return NULL;
    void *stream = NULL;
    if (stream_arg(so, &stream) < 0)
        return NULL;
    if (moe_usable(self) < 0)
        return NULL;
    /* Throughput mode: the library cannot agree an out-of-order call with
     * the peers (they are in another call), so it is refused here. */
    epxpy_handle_t *cur = self->cur;
    if (self->p.mode == EPX_MODE_THROUGHPUT && cur &&
        (cur->state == H_SENT || cur->state == H_COMBINING))
        return epxpy_raisef(EPX_ERR_STATE, "dispatch: the previous %s of this "
                            "engine is not finished (wait for it first)",
                            cur->state == H_SENT ? "dispatch" : "combine");
    /* A bad argument, cached handle included, still takes part in the
     * library's status agreement below, so the peers fail too. */
    int bad = 0;
    epxpy_handle_t *ch = NULL;
    if (cached != Py_None) {
        if (!PyObject_TypeCheck(cached, &epxpy_handle_type) ||
            ((epxpy_handle_t *)cached)->moe != self) {
            epxpy_raisef(EPX_ERR_INVALID, "cached: a Handle of this engine "
                         "is needed");
            bad = 1;
        } else if (((epxpy_handle_t *)cached)->state != H_RECEIVED &&
                   ((epxpy_handle_t *)cached)->state != H_COMBINED) {
            epxpy_raisef(EPX_ERR_STATE, "cached: the handle is %s; a received "
                         "or combined dispatch is needed",
                         state_name[((epxpy_handle_t *)cached)->state]);
            bad = 1;
        } else {
            ch = (epxpy_handle_t *)cached;
        }
    }
    /* Held: a thread dropping the handle meanwhile must not free it. */
    Py_XINCREF(cur);
    Py_XINCREF(ch);
    epxpy_array_t x = { 0 }, idx = { 0 }, w = { 0 };
    unsigned xmask = 1u << self->p.dtype;
    const int dev = self->p.device;   /* every tensor where the engine's are */
    bad = bad ||
          epxpy_array_import_on(xo, "x", xmask, 2, dev, stream, &x) < 0 ||
          epxpy_array_import_on(io, "topk_idx", 1u << EPX_DTYPE_INT32 |
                                1u << EPX_DTYPE_INT64, 2, dev, stream,
                                &idx) < 0 ||
          epxpy_array_import_on(wo, "topk_weights", 1u << EPX_DTYPE_FP32, 2,
                                dev, stream, &w) < 0;
    if (!bad && (idx.t.rows != x.t.rows || w.t.rows != x.t.rows)) {
        epxpy_raisef(EPX_ERR_INVALID, "topk_idx, topk_weights: %lld and "
                     "%lld rows, x has %lld", (long long)idx.t.rows,
                     (long long)w.t.rows, (long long)x.t.rows);
        bad = 1;
    }
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    /* Elastic engines: the entries naming a lost expert (EPX_MOE_ELASTIC). */
    uint8_t *lost = NULL;
    if (!bad && (self->p.flags & EPX_MOE_ELASTIC)) {
        lost = malloc((size_t)(x.t.rows > 0 ? x.t.rows : 1) *
                      (size_t)self->p.topk);
        if (!lost) {
            PyErr_NoMemory();
            bad = 1;
        }
    }
    if (!bad) {
        a.lost = lost;
        a.x = x.t;
        a.topk_idx = idx.t;
        a.topk_weights = w.t;
        a.layer = layer;
        a.x_global_scale = gscale;
        a.flags = ch ? EPX_DISPATCH_CACHED : 0u;
        a.stream = stream;   /* device ranks; ignored on host ranks */
    }
    epx_handle_t *h = ch ? ch->h : NULL;
    epx_status_t st;
    PyObject *err_t = NULL, *err_v = NULL, *err_tb = NULL;
    if (bad)   /* keep our exception; the call below fails the peers */
        PyErr_Fetch(&err_t, &err_v, &err_tb);
    int was_received = cur && cur->state == H_RECEIVED && cur != ch;
    Py_BEGIN_ALLOW_THREADS
    st = epx_dispatch_send(self->moe, bad ? NULL : &a, &h);
    Py_END_ALLOW_THREADS
    epxpy_array_release(&x);
    epxpy_array_release(&idx);
    epxpy_array_release(&w);
    if (self->p.mode == EPX_MODE_THROUGHPUT && was_received)
        cur->state = H_ABANDONED;   /* the library abandoned it */
    if (ch && (bad || st != EPX_OK) && ch->state == H_RECEIVED)
        ch->state = H_COMBINED;     /* its routing stays, its rows went */
    Py_XDECREF(cur);
    Py_XDECREF(ch);
    if (self->p.mode == EPX_MODE_THROUGHPUT)
        self->cur = NULL;
    if (bad || st != EPX_OK) {
        free(lost);
        if (bad)
            PyErr_Restore(err_t, err_v, err_tb);
        return bad ? NULL : epxpy_raise(st);
    }
    PyObject *lost_buf = NULL;
    if (lost) {   /* a copy: the Buffer owns its bytes */
        int64_t shape[2] = { a.x.rows, self->p.topk };
        lost_buf = epxpy_buffer_new(lost, EPX_DTYPE_UE8M0, 2, shape, NULL);
        free(lost);
        if (!lost_buf)
            PyErr_Clear();   /* the call went out: keep it, mask missing */
    }
    epxpy_handle_t *o;
    if (ch) {
        o = ch;
        Py_INCREF(o);
        o->state = H_SENT;
        memset(&o->recv, 0, sizeof(o->recv));
    } else if (!(o = handle_new(self, h))) {
        epx_handle_release(h);   /* cannot happen quietly: peers are in */
        return NULL;
    }
    Py_XSETREF(o->lost, lost_buf);
    /* A temporary input freed now could be handed by the caller's allocator
     * to work that is not ordered after the engine's stream. */
    Py_XSETREF(o->inputs, self->p.device != EPX_DEVICE_HOST
                          ? PyTuple_Pack(3, xo, io, wo) : NULL);
    if (self->p.device != EPX_DEVICE_HOST && !o->inputs)
        PyErr_Clear();   /* the call went out: it goes on without them */
    if (self->p.mode == EPX_MODE_THROUGHPUT)
        self->cur = o;
    return (PyObject *)o;
}

/* ------------------------------------------------------------ handle */

static int handle_check(epxpy_handle_t *h, hstate_t want, const char *what)
{
    if (moe_usable(h->moe) < 0)
        return -1;
    if (h->state == want)
        return 0;
    epxpy_raisef(EPX_ERR_STATE, "%s: the dispatch is %s%s", what,
                 state_name[h->state], h->state == H_ABANDONED
                 ? " (a later dispatch of this engine replaced it, or its call "
                   "failed: dispatch it again)" : "");
    return -1;
}

static int dict_put(PyObject *d, const char *k, PyObject *v)
{
    if (!v)
        return -1;
    int rc = PyDict_SetItemString(d, k, v);
    Py_DECREF(v);
    return rc;
}

static PyObject *copy_or_none(const void *p, int dtype, int ndim,
                              const int64_t *shape)
{
    if (!p && shape[0] * (ndim > 1 ? shape[1] : 1) > 0)
        Py_RETURN_NONE;
    return epxpy_buffer_new(p, dtype, ndim, shape, NULL);
}

/* A per-row array of the recv: a copy on host ranks; on device ranks a
 * view of device memory (epx.h: the per-row arrays are device memory),
 * which the Python layer copies with torch at once. */
static PyObject *row_array(const epxpy_moe_t *m, const void *p, int dtype,
                           int ndim, const int64_t *shape)
{
    if (m->p.device == EPX_DEVICE_HOST)
        return copy_or_none(p, dtype, ndim, shape);
    if (!p && shape[0] * (ndim > 1 ? shape[1] : 1) > 0)
        Py_RETURN_NONE;
    return epxpy_buffer_view_on(p, dtype, ndim, shape, (PyObject *)m,
                                m->p.device);
}

/* expert_counts: host memory, but on the device in a device engine's
 * low latency (a view, copied by the Python layer). */
static PyObject *recv_counts(const epxpy_moe_t *m, const epx_recv_t *r,
                             const int64_t *ls)
{
    if (m->p.device != EPX_DEVICE_HOST && m->p.mode == EPX_MODE_LOW_LATENCY)
        return row_array(m, r->expert_counts, EPX_DTYPE_INT64, 1, ls);
    return copy_or_none(r->expert_counts, EPX_DTYPE_INT64, 1, ls);
}

/* expert_offsets (expert-major): a copy; a device engine's low latency
 * gives its fixed ranges j * R * capacity, made here whatever memory the
 * executor keeps them in. */
static PyObject *recv_offsets(const epxpy_moe_t *m, const epx_recv_t *r,
                              const int64_t *ls)
{
    if (m->p.device == EPX_DEVICE_HOST || m->p.mode != EPX_MODE_LOW_LATENCY)
        return copy_or_none(r->expert_offsets, EPX_DTYPE_INT64, 1, ls);
    PyObject *o = epxpy_buffer_new(NULL, EPX_DTYPE_INT64, 1, ls, NULL);
    for (int64_t j = 0; o && j < ls[0]; j++)
        ((int64_t *)((epxpy_buffer_t *)o)->data)[j] =
            j * (int64_t)m->comm->size * (int64_t)r->capacity;
    return o;
}

/* What arrived, as a dict of Buffers: x and x_scales are views of the
 * engine's receive memory, the rest copies (device ranks: views of device
 * memory for the per-row arrays, and in low latency the counts; copied by
 * the Python layer). */
static PyObject *recv_info(epxpy_handle_t *h)
{
    epx_recv_t *r = &h->recv;
    epxpy_moe_t *m = h->moe;
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    int64_t rows = r->num_rows, nl = r->num_local_experts;
    int64_t xs[2] = { rows, r->x.cols };
    int64_t one[1] = { rows }, lk[2] = { rows, m->p.topk }, ls[1] = { nl };
    int em = m->p.layout == EPX_LAYOUT_EXPERT_MAJOR;
    const int dev = m->p.device;
    if (dict_put(d, "x", epxpy_buffer_view_on(r->x.data, r->x.dtype, 2, xs,
                                              (PyObject *)m, dev)) < 0 ||
        dict_put(d, "num_rows", PyLong_FromLongLong(rows)) < 0 ||
        dict_put(d, "expert_counts", recv_counts(m, r, ls)) < 0 ||
        dict_put(d, "expert_offsets", em ? recv_offsets(m, r, ls)
                 : (Py_INCREF(Py_None), Py_None)) < 0 ||
        dict_put(d, "src_rank", row_array(m, r->src_rank, EPX_DTYPE_INT32, 1,
                                          one)) < 0 ||
        dict_put(d, "src_token", row_array(m, r->src_token, EPX_DTYPE_INT32,
                                           1, one)) < 0 ||
        dict_put(d, "topk_idx", em ? (Py_INCREF(Py_None), Py_None)
                 : row_array(m, r->topk_idx, EPX_DTYPE_INT32, 2, lk)) < 0 ||
        dict_put(d, "topk_weights", row_array(m, r->topk_weights,
                 EPX_DTYPE_FP32, em ? 1 : 2, em ? one : lk)) < 0 ||
        dict_put(d, "local_experts", copy_or_none(r->local_experts,
                 EPX_DTYPE_INT32, 1, ls)) < 0 ||
        dict_put(d, "capacity", PyLong_FromLong(r->capacity)) < 0 ||
        dict_put(d, "num_dropped", PyLong_FromLongLong(r->num_dropped)) < 0)
        goto err;
    if (r->x_scales.data || r->x_global_scale) {
        int64_t ss[2] = { rows, r->x_scales.cols };
        if (dict_put(d, "x_scales", epxpy_buffer_view_on(r->x_scales.data,
                     r->x_scales.dtype, 2, ss, (PyObject *)m, dev)) < 0)
            goto err;
        if (r->x_global_scale &&
            dict_put(d, "x_global_scale", row_array(m, r->x_global_scale,
                     EPX_DTYPE_FP32, 1, one)) < 0)
            goto err;
    }
    return d;
err:
    Py_DECREF(d);
    return NULL;
}

static PyObject *handle_recv_locked(epxpy_handle_t *self, PyObject *noarg)
{
    (void)noarg;
    if (handle_check(self, H_SENT, "dispatch recv") < 0)
        return NULL;
    epx_status_t st;
    self->recv.struct_size = sizeof(self->recv);
    Py_BEGIN_ALLOW_THREADS
    st = epx_dispatch_recv(self->moe->moe, self->h, &self->recv);
    Py_END_ALLOW_THREADS
    if (st != EPX_OK) {
        /* Throughput: the library marks the engine unusable after a failed
         * wait.  Low latency: the call failed on every rank and each
         * releases its handle now, freeing its buffer for the next call
         * (epx.h) whatever keeps this object alive. */
        epxpy_raise(st);
        if (self->moe->p.mode == EPX_MODE_LOW_LATENCY) {
            PyObject *t, *v, *tb;
            PyErr_Fetch(&t, &v, &tb);
            handle_release_now(self);
            PyErr_Restore(t, v, tb);
        } else {
            self->state = H_ABANDONED;
        }
        if (self->moe->cur == self)
            self->moe->cur = NULL;
        return NULL;
    }
    self->state = H_RECEIVED;
    Py_CLEAR(self->inputs);   /* the caller's stream now waits for the engine */
    return recv_info(self);
}

static PyObject *handle_poll_locked(epxpy_handle_t *self, PyObject *noarg)
{
    (void)noarg;
    if (handle_check(self, H_SENT, "dispatch poll") < 0)
        return NULL;
    int nl = self->moe->nlocal, n = 0;
    uint8_t *ready = calloc((size_t)(nl > 0 ? nl : 1), 1);
    if (!ready)
        return PyErr_NoMemory();
    epx_recv_t r = { .struct_size = sizeof(r) };
    epx_status_t st;
    Py_BEGIN_ALLOW_THREADS
    st = epx_dispatch_poll(self->moe->moe, self->h, &r, ready, &n);
    Py_END_ALLOW_THREADS
    PyObject *res = NULL;
    if (st == EPX_OK) {
        /* Where the ready experts' rows are: x (a view; device memory on
         * device ranks), offsets, counts (0 for experts not ready; host
         * memory on both executors, low latency's poll included). */
        int64_t xs[2] = { r.num_rows, r.x.cols }, ls[1] = { nl };
        PyObject *x = epxpy_buffer_view_on(r.x.data, r.x.dtype, 2, xs,
                                           (PyObject *)self->moe,
                                           self->moe->p.device);
        PyObject *cnt = copy_or_none(r.expert_counts, EPX_DTYPE_INT64, 1, ls);
        PyObject *off = copy_or_none(r.expert_offsets, EPX_DTYPE_INT64, 1, ls);
        if (x && cnt && off)
            res = Py_BuildValue("(y#iNNN)", (const char *)ready,
                                (Py_ssize_t)nl, n, x, off, cnt);
        else {
            Py_XDECREF(x);
            Py_XDECREF(cnt);
            Py_XDECREF(off);
        }
    } else {
        epxpy_raise(st);
    }
    free(ready);
    return res;
}

/* out for combine_recv: a writable [T, hidden] bf16 or fp32 host array;
 * float64 for an FP64 engine (its output is the double sum). */
static int import_out(epxpy_handle_t *h, PyObject *oo, void *stream,
                      epxpy_array_t *o)
{
    int64_t T = epx_handle_num_tokens(h->h);
    unsigned dts = h->moe->p.dtype == EPX_DTYPE_FP64
        ? 1u << EPX_DTYPE_FP64 : 1u << EPX_DTYPE_BF16 | 1u << EPX_DTYPE_FP32;
    /* stream: a DLPack producer orders its pending work on out before the
     * combine's stream (the one combine_recv runs on) */
    if (epxpy_array_import_on(oo, "out", 1u << 30 | dts, 2, h->moe->p.device,
                              stream, o) < 0)
        return -1;
    if (o->t.rows == T && o->t.cols == h->moe->p.hidden)
        return 0;
    epxpy_raisef(EPX_ERR_INVALID, "out: shape [%lld, %lld], expected [%lld, "
                 "%d]", (long long)o->t.rows, (long long)o->t.cols,
                 (long long)T, h->moe->p.hidden);
    epxpy_array_release(o);
    return -1;
}

static PyObject *handle_combine_send_locked(epxpy_handle_t *self, PyObject *args,
                                     PyObject *kw)
{
    static char *kwlist[] = { "y", "unweighted", "out", "stream", NULL };
    PyObject *yo, *oo = Py_None, *so = Py_None;
    int unweighted = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|pOO", kwlist, &yo,
                                     &unweighted, &oo, &so))
        return NULL;
    void *stream = NULL;
    if (stream_arg(so, &stream) < 0)
        return NULL;
    if (handle_check(self, H_RECEIVED, "combine") < 0)
        return NULL;
    epxpy_array_t y = { 0 }, o = { 0 };
    /* A bad y or out is this rank's own error (epx.h): nothing is sent, so
     * out (given to combine_recv later) is checked now too. */
    if (oo != Py_None) {
        if (import_out(self, oo, stream, &o) < 0)
            return NULL;
        epxpy_array_release(&o);
    }
    if (epxpy_array_import_on(yo, "y", 1u << self->moe->p.dtype, 2,
                              self->moe->p.device, stream, &y) < 0)
        return NULL;
    epx_combine_args_t a = EPX_COMBINE_ARGS_INIT;
    a.y = y.t;
    a.flags = unweighted ? EPX_COMBINE_UNWEIGHTED : 0u;
    a.stream = stream;   /* device ranks: combine_recv uses it too */
    epx_status_t st;
    Py_BEGIN_ALLOW_THREADS
    st = epx_combine_send(self->moe->moe, self->h, &a);
    Py_END_ALLOW_THREADS
    epxpy_array_release(&y);
    if (st != EPX_OK) {
        /* A bad y sends nothing; in low latency, neither does a combine out
         * of dispatch order (EPX_ERR_STATE): the call can still be made. */
        if (st != EPX_ERR_INVALID && st != EPX_ERR_RANGE &&
            !(st == EPX_ERR_STATE &&
              self->moe->p.mode == EPX_MODE_LOW_LATENCY))
            self->state = H_ABANDONED;
        return epxpy_raise(st);
    }
    /* Peers may read y from our memory until they finish: keep it. */
    Py_INCREF(yo);
    Py_XSETREF(self->y, yo);
    self->cstream = stream;
    self->state = H_COMBINING;
    Py_RETURN_NONE;
}

static PyObject *handle_combine_recv_locked(epxpy_handle_t *self, PyObject *args,
                                     PyObject *kw)
{
    static char *kwlist[] = { "out", NULL };
    PyObject *oo = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &oo))
        return NULL;
    if (handle_check(self, H_COMBINING, "combine recv") < 0)
        return NULL;
    int64_t T = epx_handle_num_tokens(self->h);
    int64_t shape[2] = { T, self->moe->p.hidden };
    PyObject *res;
    epxpy_array_t o;
    memset(&o, 0, sizeof(o));
    if (oo == Py_None && self->moe->p.device != EPX_DEVICE_HOST)
        return epxpy_raisef(EPX_ERR_INVALID, "out: a device engine writes "
                            "into an out of the caller's (epx.MoE.combine "
                            "makes one with torch)");
    if (oo == Py_None) {
        res = epxpy_buffer_new(NULL, self->moe->p.dtype, 2, shape, NULL);
        if (!res)
            return NULL;
        epxpy_buffer_t *b = (epxpy_buffer_t *)res;
        o.t = (epx_tensor_t){ b->data, self->moe->p.dtype, T,
                              self->moe->p.hidden };
    } else {
        if (import_out(self, oo, self->cstream, &o) < 0)
            return NULL;
        Py_INCREF(oo);
        res = oo;
    }
    epx_status_t st;
    Py_BEGIN_ALLOW_THREADS
    st = epx_combine_recv(self->moe->moe, self->h, &o.t);
    Py_END_ALLOW_THREADS
    if (oo != Py_None)
        epxpy_array_release(&o);
    if (st != EPX_OK) {
        Py_DECREF(res);
        if (st != EPX_ERR_INVALID)
            self->state = H_ABANDONED;
        return epxpy_raise(st);
    }
    self->state = H_COMBINED;
    Py_CLEAR(self->y);
    if (self->moe->cur == self)
        self->moe->cur = NULL;
    return res;
}

static PyObject *handle_release(epxpy_handle_t *self, PyObject *noarg)
{
    (void)noarg;
    handle_release_now(self);
    Py_RETURN_NONE;
}

static void handle_dealloc(epxpy_handle_t *self)
{
    handle_release_now(self);
    Py_CLEAR(self->lost);
    Py_CLEAR(self->moe);
    PyObject_Free(self);
}

static PyObject *handle_get_state(epxpy_handle_t *self, void *c)
{
    (void)c;
    return PyUnicode_FromString(state_name[self->state]);
}

static PyObject *handle_get_lost(epxpy_handle_t *self, void *c)
{
    (void)c;
    if (!self->lost)
        Py_RETURN_NONE;
    Py_INCREF(self->lost);
    return self->lost;
}

static PyObject *handle_get_num_tokens(epxpy_handle_t *self, void *c)
{
    (void)c;
    return PyLong_FromLongLong(self->h ? epx_handle_num_tokens(self->h) : -1);
}


/* ------------------------------------------------------------ locking */

/* Every method that calls the library holds its comm for the length of
 * the call (epxpy_comm_enter): a second thread gets epx.StateError, and
 * releases or destroys it asks for (or the garbage collector does) wait
 * until the call ends. */
#define LOCKED(name, type, comm_of, params, argnames)                         \
    static PyObject *name params                                             \
    {                                                                        \
        type *m_ = (type *)self;                                             \
        epxpy_comm_t *c_ = comm_of;                                          \
        if (!c_)                                                             \
            return epxpy_raisef(EPX_ERR_STATE, "not initialised");           \
        if (epxpy_comm_check(c_) < 0 || epxpy_comm_enter(c_) < 0)            \
            return NULL;                                                     \
        Py_INCREF(c_);                                                       \
        PyObject *r_ = name##_locked argnames;                               \
        epxpy_comm_leave(c_);                                                \
        Py_DECREF(c_);                                                       \
        (void)m_;                                                            \
        return r_;                                                           \
    }
#define MOE_COMM (m_->comm)
#define HANDLE_COMM (m_->moe ? m_->moe->comm : NULL)
LOCKED(handle_recv, epxpy_handle_t, HANDLE_COMM,
       (epxpy_handle_t *self, PyObject *noarg), (self, noarg))
LOCKED(handle_poll, epxpy_handle_t, HANDLE_COMM,
       (epxpy_handle_t *self, PyObject *noarg), (self, noarg))
LOCKED(handle_combine_send, epxpy_handle_t, HANDLE_COMM,
       (epxpy_handle_t *self, PyObject *args, PyObject *kw), (self, args, kw))
LOCKED(handle_combine_recv, epxpy_handle_t, HANDLE_COMM,
       (epxpy_handle_t *self, PyObject *args, PyObject *kw), (self, args, kw))

static PyMethodDef handle_methods[] = {
    { "recv", (PyCFunction)handle_recv, METH_NOARGS,
      "recv() -> dict: wait for every source (epx_dispatch_recv)" },
    { "poll", (PyCFunction)handle_poll, METH_NOARGS,
      "poll() -> (ready bytes per local expert, number ready, x view, "
      "offsets, counts)" },
    { "combine_send", (PyCFunction)(void (*)(void))handle_combine_send,
      METH_VARARGS | METH_KEYWORDS,
      "combine_send(y, unweighted=False, out=None, stream=None)" },
    { "combine_recv", (PyCFunction)(void (*)(void))handle_combine_recv,
      METH_VARARGS | METH_KEYWORDS, "combine_recv(out=None) -> out" },
    { "release", (PyCFunction)handle_release, METH_NOARGS, "release()" },
    { NULL, NULL, 0, NULL }
};

static PyGetSetDef handle_getset[] = {
    { "state", (getter)handle_get_state, NULL, "where the call is", NULL },
    { "lost", (getter)handle_get_lost, NULL, "elastic engines: uint8 [T, K] "
      "Buffer, 1 where the entry named a lost expert (else None)", NULL },
    { "num_tokens", (getter)handle_get_num_tokens, NULL,
      "tokens this rank dispatched", NULL },
    { NULL, NULL, NULL, NULL, NULL }
};

PyTypeObject epxpy_handle_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "epx._C.Handle",
    .tp_basicsize = sizeof(epxpy_handle_t),
    .tp_dealloc = (destructor)handle_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The routing record of one dispatch (epx_handle_t).",
    .tp_methods = handle_methods,
    .tp_getset = handle_getset,
};

/* ------------------------------------------------------------ statistics */

static PyObject *moe_stats_locked(epxpy_moe_t *self, PyObject *args)
{
    int global = 0;
    if (!PyArg_ParseTuple(args, "|p", &global) || moe_usable(self) < 0)
        return NULL;
    epx_moe_stats_t s = { .struct_size = sizeof(s) };
    epx_status_t st;
    Py_BEGIN_ALLOW_THREADS
    st = epx_moe_stats(self->moe, global, &s);
    Py_END_ALLOW_THREADS
    if (st != EPX_OK)
        return epxpy_raise(st);
    int64_t le[2] = { s.num_layers, s.num_experts };
    int64_t lp[2] = { s.num_layers, s.num_slots };
    PyObject *d = PyDict_New();
    if (!d || dict_put(d, "dispatches", PyLong_FromLongLong(s.dispatches)) < 0 ||
        dict_put(d, "window", epxpy_buffer_new(s.window, EPX_DTYPE_INT64, 2,
                                               le, NULL)) < 0 ||
        dict_put(d, "decayed", epxpy_buffer_new(s.decayed, EPXPY_DTYPE_FP64,
                                                2, le, NULL)) < 0 ||
        dict_put(d, "physical", epxpy_buffer_new(s.physical, EPX_DTYPE_INT64,
                                                 2, lp, NULL)) < 0 ||
        dict_put(d, "dispatch_bytes", PyLong_FromLongLong(s.dispatch_bytes)) < 0 ||
        dict_put(d, "combine_bytes", PyLong_FromLongLong(s.combine_bytes)) < 0) {
        Py_XDECREF(d);
        return NULL;
    }
    return d;
}

static PyObject *moe_stats_reset_locked(epxpy_moe_t *self, PyObject *noarg)
{
    (void)noarg;
    if (moe_usable(self) < 0)
        return NULL;
    epx_status_t st = epx_moe_stats_reset(self->moe);
    if (st != EPX_OK)
        return epxpy_raise(st);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ placement */

static int import_phy2log(epxpy_moe_t *m, PyObject *o, epxpy_array_t *a)
{
    if (epxpy_array_import(o, "phy2log", 1u << EPX_DTYPE_INT32, 1, a) < 0)
        return -1;
    if (a->t.cols != m->p.num_slots) {
        epxpy_raisef(EPX_ERR_INVALID, "phy2log: %lld slots, the engine has %d "
                     "(num_slots)", (long long)a->t.cols, m->p.num_slots);
        epxpy_array_release(a);
        return -1;
    }
    return 0;
}

static PyObject *moe_set_placement_locked(epxpy_moe_t *self, PyObject *args)
{
    int layer, policy = EPX_REPLICA_LOCAL_FIRST;
    PyObject *po;
    if (!PyArg_ParseTuple(args, "iO|i", &layer, &po, &policy) ||
        moe_usable(self) < 0)
        return NULL;
    epxpy_array_t a;
    if (import_phy2log(self, po, &a) < 0)
        return NULL;
    epx_status_t st = epx_moe_set_placement(self->moe, layer, a.t.data,
                                            (epx_replica_policy_t)policy);
    epxpy_array_release(&a);
    if (st != EPX_OK)
        return epxpy_raise(st);
    Py_RETURN_NONE;
}

/* A collective call refused on this rank before the library saw it: run
 * the library's call with an argument it refuses, so the peers fail it
 * with EPX_ERR_PEER instead of waiting; keep this rank's exception. */
static PyObject *fail_collective(epxpy_moe_t *m, int layer, int rebalance)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    Py_BEGIN_ALLOW_THREADS
    if (rebalance)
        epx_moe_rebalance(m->moe, layer, NULL, EPX_REPLICA_LOCAL_FIRST, NULL);
    else
        epx_moe_register_weights(m->moe, layer, NULL, 0);
    Py_END_ALLOW_THREADS
    PyErr_Restore(t, v, tb);
    return NULL;
}

/* A layer's expert weights, writable, where the engine's tensors live
 * (device engines: device memory, whose writers the caller has finished:
 * epx/moe.py synchronizes the current stream first). */
static int import_weights(epxpy_moe_t *self, PyObject *wo, epxpy_array_t *a)
{
    return epxpy_array_import_on(wo, "weights",
                                 1u << 30 | 1u << EPXPY_DTYPE_BYTES, 0,
                                 self->p.device, NULL, a);
}

static PyObject *moe_register_weights_locked(epxpy_moe_t *self, PyObject *args)
{
    int layer;
    PyObject *wo;
    if (!PyArg_ParseTuple(args, "iO", &layer, &wo) || moe_usable(self) < 0)
        return NULL;
    epxpy_array_t a;
    if (import_weights(self, wo, &a) < 0)
        return fail_collective(self, layer, 0);
    int spr = self->p.num_slots / (self->comm->size > 0 ? self->comm->size : 1);
    void *base = a.t.data;
    size_t bps = (size_t)a.t.cols;
    long long rows = (long long)a.t.rows;
    epxpy_array_release(&a);   /* the list below keeps the array alive */
    if (self->p.num_slots > 0 && rows != spr) {
        epxpy_raisef(EPX_ERR_INVALID, "weights: %lld slots in dimension 0, "
                     "this rank holds %d", rows, spr);
        return fail_collective(self, layer, 0);
    }
    PyObject *rec = Py_BuildValue("(OKn)", wo, (unsigned long long)(uintptr_t)base,
                                  (Py_ssize_t)bps);
    PyObject *key = PyLong_FromLong(layer);
    int put = rec && key ? PyDict_SetItem(self->weights, key, rec) : -1;
    Py_XDECREF(rec);
    Py_XDECREF(key);
    if (put < 0)   /* the dict keeps the array alive */
        return fail_collective(self, layer, 0);
    epx_status_t st;
    Py_BEGIN_ALLOW_THREADS
    st = epx_moe_register_weights(self->moe, layer, base, bps);
    Py_END_ALLOW_THREADS
    if (st != EPX_OK)
        return epxpy_raise(st);
    Py_RETURN_NONE;
}

static PyObject *moe_rebalance_locked(epxpy_moe_t *self, PyObject *args)
{
    int layer, policy = EPX_REPLICA_LOCAL_FIRST;
    PyObject *po;
    if (!PyArg_ParseTuple(args, "iO|i", &layer, &po, &policy) ||
        moe_usable(self) < 0)
        return NULL;
    if (self->cur && (self->cur->state == H_SENT ||
                      self->cur->state == H_COMBINING))
        return epxpy_raisef(EPX_ERR_STATE, "rebalance: a dispatch of this "
                            "engine is in flight");
    /* The library writes where the weights were registered: refuse when
     * the array now lies elsewhere (.data reassigned, storage resized). */
    PyObject *key = PyLong_FromLong(layer);
    PyObject *rec = key ? PyDict_GetItemWithError(self->weights, key) : NULL;
    Py_XDECREF(key);
    if (rec) {
        epxpy_array_t w;
        unsigned long long addr = PyLong_AsUnsignedLongLong(
            PyTuple_GET_ITEM(rec, 1));
        Py_ssize_t bps = PyLong_AsSsize_t(PyTuple_GET_ITEM(rec, 2));
        if (import_weights(self, PyTuple_GET_ITEM(rec, 0), &w) < 0)
            return fail_collective(self, layer, 1);
        int moved = (unsigned long long)(uintptr_t)w.t.data != addr ||
                    w.t.cols != (int64_t)bps;
        epxpy_array_release(&w);
        if (moved) {
            epxpy_raisef(EPX_ERR_INVALID, "weights: layer %d's registered "
                         "array has moved since register_weights (its data "
                         "was reassigned or resized); register it again",
                         layer);
            return fail_collective(self, layer, 1);
        }
    } else if (PyErr_Occurred()) {
        return fail_collective(self, layer, 1);
    }
    epxpy_array_t a;
    if (import_phy2log(self, po, &a) < 0)
        return fail_collective(self, layer, 1);
    epx_rebalance_stats_t s = { .struct_size = sizeof(s) };
    epx_status_t st;
    Py_BEGIN_ALLOW_THREADS
    st = epx_moe_rebalance(self->moe, layer, a.t.data,
                           (epx_replica_policy_t)policy, &s);
    Py_END_ALLOW_THREADS
    epxpy_array_release(&a);
    if (st != EPX_OK)
        return epxpy_raise(st);
    return Py_BuildValue("{sisisisi}", "unchanged", s.unchanged,
                         "local_copies", s.local_copies, "received",
                         s.received, "sent", s.sent);
}

/* ------------------------------------------------------------ timing */

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

/* The benchmark's C baseline: `iters` rounds of dispatch, combine in place
 * (the received rows as the outputs) and release, through the C API with
 * no Python between the calls; the microseconds of each round.  Collective
 * like the calls it makes. */
static PyObject *moe_time_c_loop_locked(epxpy_moe_t *self, PyObject *args)
{
    PyObject *xo, *io, *wo;
    int iters;
    if (!PyArg_ParseTuple(args, "OOOi", &xo, &io, &wo, &iters) ||
        moe_usable(self) < 0)
        return NULL;
    if (self->live || self->p.mode != EPX_MODE_THROUGHPUT || iters < 1 ||
        self->p.device != EPX_DEVICE_HOST)
        return epxpy_raisef(EPX_ERR_STATE, "time_c_loop: needs a host "
                            "throughput engine with no dispatch in flight, "
                            "iters >= 1");
    epxpy_array_t x = { 0 }, idx = { 0 }, w = { 0 };
    if (epxpy_array_import(xo, "x", 1u << self->p.dtype, 2, &x) < 0 ||
        epxpy_array_import(io, "topk_idx", 1u << EPX_DTYPE_INT32 |
                           1u << EPX_DTYPE_INT64, 2, &idx) < 0 ||
        epxpy_array_import(wo, "topk_weights", 1u << EPX_DTYPE_FP32, 2,
                           &w) < 0) {
        epxpy_array_release(&x);
        epxpy_array_release(&idx);
        return NULL;
    }
    double *us = malloc(sizeof(double) * (size_t)iters);
    void *out = malloc((size_t)(x.t.rows ? x.t.rows : 1) * (size_t)self->p.hidden *
                       epx_dtype_size(self->p.dtype));
    epx_status_t st = us && out ? EPX_OK : EPX_ERR_NOMEM;
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = x.t;
    a.topk_idx = idx.t;
    a.topk_weights = w.t;
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < iters && st == EPX_OK; i++) {
        double t0 = now_us();
        epx_handle_t *h = NULL;
        epx_recv_t r = { .struct_size = sizeof(r) };
        if ((st = epx_dispatch_send(self->moe, &a, &h)) != EPX_OK)
            break;
        if ((st = epx_dispatch_recv(self->moe, h, &r)) == EPX_OK) {
            epx_combine_args_t c = EPX_COMBINE_ARGS_INIT;
            c.y = r.x;
            epx_tensor_t o = { out, self->p.dtype, x.t.rows, self->p.hidden };
            if ((st = epx_combine_send(self->moe, h, &c)) == EPX_OK)
                st = epx_combine_recv(self->moe, h, &o);
        }
        epx_handle_release(h);
        us[i] = now_us() - t0;
    }
    Py_END_ALLOW_THREADS
    epxpy_array_release(&x);
    epxpy_array_release(&idx);
    epxpy_array_release(&w);
    free(out);
    PyObject *l = NULL;
    if (st == EPX_OK && (l = PyList_New(iters)))
        for (int i = 0; i < iters; i++)
            PyList_SET_ITEM(l, i, PyFloat_FromDouble(us[i]));
    free(us);
    return st == EPX_OK ? l : epxpy_raise(st);
}

/* ------------------------------------------------------------ type */

#define INT_GETTER(name, expr)                                              \
    static PyObject *moe_get_##name(epxpy_moe_t *self, void *c)            \
    {                                                                      \
        (void)c;                                                           \
        return PyLong_FromLong((long)(expr));                              \
    }
INT_GETTER(num_local_experts, self->nlocal)
INT_GETTER(first_local_expert, self->first)
INT_GETTER(hidden, self->p.hidden)
INT_GETTER(num_experts, self->p.num_experts)
INT_GETTER(topk, self->p.topk)
INT_GETTER(max_tokens, self->p.max_tokens_per_rank)
INT_GETTER(dtype, self->p.dtype)
INT_GETTER(layout, self->p.layout)
INT_GETTER(mode, self->p.mode)
INT_GETTER(wire, self->p.wire)
INT_GETTER(num_slots, self->p.num_slots)
INT_GETTER(num_layers, self->p.num_layers)
INT_GETTER(device, self->p.device)

static PyObject *moe_get_closed(epxpy_moe_t *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->closed || !self->moe);
}

static PyObject *moe_get_comm(epxpy_moe_t *self, void *c)
{
    (void)c;
    if (!self->comm)
        Py_RETURN_NONE;   /* never initialised */
    Py_INCREF(self->comm);
    return (PyObject *)self->comm;
}

LOCKED(moe_dispatch_send, epxpy_moe_t, MOE_COMM,
       (epxpy_moe_t *self, PyObject *args, PyObject *kw), (self, args, kw))
LOCKED(moe_stats, epxpy_moe_t, MOE_COMM, (epxpy_moe_t *self, PyObject *args),
       (self, args))
LOCKED(moe_stats_reset, epxpy_moe_t, MOE_COMM,
       (epxpy_moe_t *self, PyObject *noarg), (self, noarg))
LOCKED(moe_set_placement, epxpy_moe_t, MOE_COMM,
       (epxpy_moe_t *self, PyObject *args), (self, args))
LOCKED(moe_register_weights, epxpy_moe_t, MOE_COMM,
       (epxpy_moe_t *self, PyObject *args), (self, args))
LOCKED(moe_rebalance, epxpy_moe_t, MOE_COMM,
       (epxpy_moe_t *self, PyObject *args), (self, args))
LOCKED(moe_time_c_loop, epxpy_moe_t, MOE_COMM,
       (epxpy_moe_t *self, PyObject *args), (self, args))
static PyMethodDef moe_methods[] = {
    { "dispatch_send", (PyCFunction)(void (*)(void))moe_dispatch_send,
      METH_VARARGS | METH_KEYWORDS,
      "dispatch_send(x, topk_idx, topk_weights, layer=0, cached=None, "
      "global_scale=0.0, stream=None) -> Handle" },
    { "expert_lost", (PyCFunction)moe_expert_lost, METH_VARARGS,
      "expert_lost(layer, e) -> whether logical expert e has no slot in the "
      "layer's placement (EPX_MOE_ELASTIC)" },
    { "expert_rank", (PyCFunction)moe_expert_rank, METH_O,
      "expert_rank(e) -> rank holding expert (or slot) e" },
    { "stats", (PyCFunction)moe_stats, METH_VARARGS,
      "stats(global=False) -> dict" },
    { "stats_reset", (PyCFunction)moe_stats_reset, METH_NOARGS, "" },
    { "set_placement", (PyCFunction)moe_set_placement, METH_VARARGS,
      "set_placement(layer, phy2log, policy=0)" },
    { "register_weights", (PyCFunction)moe_register_weights, METH_VARARGS,
      "register_weights(layer, weights)" },
    { "rebalance", (PyCFunction)moe_rebalance, METH_VARARGS,
      "rebalance(layer, phy2log, policy=0) -> dict" },
    { "close", (PyCFunction)moe_close, METH_NOARGS, "close()" },
    { "_time_c_loop", (PyCFunction)moe_time_c_loop, METH_VARARGS,
      "_time_c_loop(x, topk_idx, topk_weights, iters) -> [us per round]: "
      "the C API's dispatch/combine loop, for the benchmark" },
    { NULL, NULL, 0, NULL }
};

#define GET(n) { #n, (getter)moe_get_##n, NULL, NULL, NULL }
static PyGetSetDef moe_getset[] = {
    GET(num_local_experts), GET(first_local_expert), GET(hidden),
    GET(num_experts), GET(topk), GET(max_tokens), GET(dtype), GET(layout),
    GET(mode), GET(wire), GET(num_slots), GET(num_layers), GET(closed),
    GET(comm), GET(device),
    { NULL, NULL, NULL, NULL, NULL }
};

PyTypeObject epxpy_moe_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "epx._C.MoE",
    .tp_basicsize = sizeof(epxpy_moe_t),
    .tp_dealloc = (destructor)moe_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "An engine (epx_moe_t); see epx.MoE.",
    .tp_methods = moe_methods,
    .tp_getset = moe_getset,
    .tp_init = (initproc)moe_init,
    .tp_new = PyType_GenericNew,
};
