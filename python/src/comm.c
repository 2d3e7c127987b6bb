/*
 * epx._C.Comm: a communicator, bootstrapped from the environment (EPX_*)
 * or through a Python all-gather (torch.distributed's, or any other).
 * Every library call runs without the GIL; the all-gather callback takes
 * it back, so other Python threads run while a rank waits.
 */
#include <stdlib.h>
#include <string.h>

#include "epxpy.h"

struct epxpy_deferred {
    epx_handle_t *handle;     /* a handle to release, or */
    epx_moe_t *moe;           /* an engine to destroy */
    epxpy_deferred_t *next;
};

/* The C all-gather over a Python callable: fn(bytes) -> bytes holding
 * every rank's `bytes` in rank order. */
static int py_allgather(void *ctx, const void *send, void *recv, size_t bytes)
{
    epxpy_comm_t *c = ctx;
    int rc = 1;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *arg = PyBytes_FromStringAndSize(send, (Py_ssize_t)bytes);
    PyObject *res = arg ? PyObject_CallOneArg(c->allgather, arg) : NULL;
    Py_XDECREF(arg);
    if (res) {
        Py_buffer v;
        if (PyObject_GetBuffer(res, &v, PyBUF_C_CONTIGUOUS) == 0) {
            if ((size_t)v.len == bytes * (size_t)c->size) {
                memcpy(recv, v.buf, (size_t)v.len);
                rc = 0;
            } else {
                PyErr_Format(PyExc_ValueError, "all-gather returned %zd bytes, "
                             "expected %zu", v.len, bytes * (size_t)c->size);
            }
            PyBuffer_Release(&v);
        }
        Py_DECREF(res);
    }
    if (rc != 0) {
        /* The library reports the failure; the cause goes to stderr, as
         * an exception raised in a callback cannot cross the C call. */
        PySys_WriteStderr("epx: the all-gather callback failed:\n");
        PyErr_Print();
    }
    PyGILState_Release(g);
    return rc;
}

static int comm_init(epxpy_comm_t *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = { "rank", "size", "allgather", "job_key", "root",
                              "timeout", NULL };
    int rank = -1, size = 0;
    PyObject *allgather = Py_None;
    const char *job_key = NULL, *root = NULL;
    double timeout = 0.0;
    if (self->comm) {
        PyErr_SetString(PyExc_RuntimeError, "Comm already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|iiOzzd", kwlist, &rank,
                                     &size, &allgather, &job_key, &root,
                                     &timeout))
        return -1;
    epx_comm_params_t p = EPX_COMM_PARAMS_INIT;
    p.timeout_s = timeout;
    if (allgather != Py_None) {
        if (!PyCallable_Check(allgather)) {
            epxpy_raisef(EPX_ERR_INVALID, "allgather: must be callable");
            return -1;
        }
        if (size < 1 || rank < 0 || rank >= size) {
            epxpy_raisef(EPX_ERR_INVALID, "rank %d / size %d: want "
                         "0 <= rank < size", rank, size);
            return -1;
        }
        Py_INCREF(allgather);
        self->allgather = allgather;
        self->size = size;
        p.bootstrap = EPX_BOOTSTRAP_ALLGATHER;
        p.rank = rank;
        p.nranks = size;
        p.allgather = py_allgather;
        p.allgather_ctx = self;
    } else {
        p.job_key = job_key;
        p.root = root;
    }
    epx_comm_t *comm = NULL;
    epx_status_t st;
    Py_BEGIN_ALLOW_THREADS
    st = epx_comm_create(&p, &comm);
    Py_END_ALLOW_THREADS
    if (st != EPX_OK) {
        Py_CLEAR(self->allgather);
        epxpy_raise(st);
        return -1;
    }
    self->comm = comm;
    self->rank = epx_comm_rank(comm);
    self->size = epx_comm_size(comm);
    return 0;
}

int epxpy_comm_check(epxpy_comm_t *c)
{
    if (c->comm && !c->closed)
        return 0;
    epxpy_raisef(EPX_ERR_STATE, "comm: closed");
    return -1;
}

int epxpy_comm_enter(epxpy_comm_t *c)
{
    if (!c->busy) {
        c->busy = 1;
        return 0;
    }
    epxpy_raisef(EPX_ERR_STATE, "comm: in use by another thread (one thread "
                 "at a time drives a communicator and its engines)");
    return -1;
}

static void comm_close_now(epxpy_comm_t *self)
{
    if (self->comm && !self->busy) {
        epx_comm_t *c = self->comm;
        self->comm = NULL;
        self->busy = 1;
        Py_BEGIN_ALLOW_THREADS
        epx_comm_destroy(c);
        Py_END_ALLOW_THREADS
        self->busy = 0;
    }
}

/* Run what waited for the call in flight, in the order it was asked for
 * (a handle before its engine), still busy so that no other call slips
 * in; then a closed comm whose engines are gone goes too. */
void epxpy_comm_leave(epxpy_comm_t *c)
{
    while (c->deferred) {
        epxpy_deferred_t *d = c->deferred;
        c->deferred = d->next;
        if (!c->deferred)
            c->deferred_tail = NULL;
        Py_BEGIN_ALLOW_THREADS
        if (d->handle)
            epx_handle_release(d->handle);
        else
            epx_moe_destroy(d->moe);
        Py_END_ALLOW_THREADS
        if (d->moe)
            c->engines--;
        free(d);
    }
    c->busy = 0;
    if (c->closed && c->engines == 0)
        comm_close_now(c);
}

static void defer(epxpy_comm_t *c, epx_handle_t *h, epx_moe_t *m)
{
    epxpy_deferred_t *d = calloc(1, sizeof(*d));
    if (!d) {   /* cannot wait: leak rather than race the call in flight */
        PySys_WriteStderr("epx: out of memory; a %s is leaked\n",
                          h ? "handle" : "engine");
        return;
    }
    d->handle = h;
    d->moe = m;
    if (c->deferred_tail)
        c->deferred_tail->next = d;
    else
        c->deferred = d;
    c->deferred_tail = d;
}

void epxpy_comm_release_handle(epxpy_comm_t *c, epx_handle_t *h)
{
    if (c->busy) {
        defer(c, h, NULL);
        return;
    }
    c->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    epx_handle_release(h);
    Py_END_ALLOW_THREADS
    epxpy_comm_leave(c);
}

void epxpy_comm_destroy_engine(epxpy_comm_t *c, epx_moe_t *m)
{
    if (c->busy) {
        defer(c, NULL, m);   /* counted as live until destroyed */
        return;
    }
    c->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    epx_moe_destroy(m);
    Py_END_ALLOW_THREADS
    c->engines--;
    epxpy_comm_leave(c);
}

static void comm_dealloc(epxpy_comm_t *self)
{
    /* Nothing runs on it here: its engines hold references to it. */
    comm_close_now(self);
    Py_CLEAR(self->allgather);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *comm_close(epxpy_comm_t *self, PyObject *noarg)
{
    (void)noarg;
    /* Engines still alive (views of their memory, unclosed ones) and a
     * call in flight keep it until they end. */
    self->closed = 1;
    if (self->engines == 0)
        comm_close_now(self);
    Py_RETURN_NONE;
}

static PyObject *comm_barrier(epxpy_comm_t *self, PyObject *noarg)
{
    (void)noarg;
    if (epxpy_comm_check(self) < 0 || epxpy_comm_enter(self) < 0)
        return NULL;
    epx_status_t st;
    Py_BEGIN_ALLOW_THREADS
    st = epx_comm_barrier(self->comm);
    Py_END_ALLOW_THREADS
    epxpy_comm_leave(self);
    if (st != EPX_OK)
        return epxpy_raise(st);
    Py_RETURN_NONE;
}

/* The survivors' communicator (epx_comm_shrink), of this object's type.
 * Its bootstrap lives in the library (the old communicator's mailbox), so
 * it has no Python all-gather and owes nothing to this object: either may
 * be closed or collected first, the library keeping the shared memory
 * until the last one goes. */
static PyObject *comm_shrink(epxpy_comm_t *self, PyObject *noarg)
{
    (void)noarg;
    if (epxpy_comm_check(self) < 0)
        return NULL;
    /* Everything that could fail is made before the collective: once the
     * survivors agreed, only the library's own errors remain. */
    int n = self->size;
    PyTypeObject *tp = Py_TYPE(self);
    PyObject *noargs = PyTuple_New(0);
    PyObject *nc = noargs ? tp->tp_new(tp, noargs, NULL) : NULL;
    Py_XDECREF(noargs);
    PyObject *list = nc ? PyList_New(n) : NULL;
    uint8_t *live = list ? calloc((size_t)(n > 0 ? n : 1), 1) : NULL;
    if (!live) {
        Py_XDECREF(list);
        Py_XDECREF(nc);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    if (epxpy_comm_enter(self) < 0) {
        free(live);
        Py_DECREF(list);
        Py_DECREF(nc);
        return NULL;
    }
    epx_comm_t *out = NULL;
    epx_status_t st;
    Py_BEGIN_ALLOW_THREADS
    st = epx_comm_shrink(self->comm, live, &out);
    Py_END_ALLOW_THREADS
    epxpy_comm_leave(self);
    if (st != EPX_OK) {
        free(live);
        Py_DECREF(list);
        Py_DECREF(nc);
        return epxpy_raise(st);
    }
    for (int r = 0; r < n; r++) {
        PyObject *b = live[r] ? Py_True : Py_False;
        Py_INCREF(b);
        PyList_SET_ITEM(list, r, b);
    }
    free(live);
    epxpy_comm_t *c = (epxpy_comm_t *)nc;
    c->comm = out;
    c->rank = epx_comm_rank(out);
    c->size = epx_comm_size(out);
    return Py_BuildValue("(NN)", nc, list);
}

static PyObject *comm_get_rank(epxpy_comm_t *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->rank);
}

static PyObject *comm_get_size(epxpy_comm_t *self, void *c)
{
    (void)c;
    return PyLong_FromLong(self->size);
}

static PyObject *comm_get_closed(epxpy_comm_t *self, void *c)
{
    (void)c;
    return PyBool_FromLong(self->comm == NULL || self->closed);
}

static PyMethodDef comm_methods[] = {
    { "barrier", (PyCFunction)comm_barrier, METH_NOARGS, "barrier()" },
    { "close", (PyCFunction)comm_close, METH_NOARGS,
      "close(): destroy the communicator (after its engines)" },
    { "shrink", (PyCFunction)comm_shrink, METH_NOARGS,
      "shrink() -> (Comm, live): collective over the live ranks after a "
      "peer was lost (epx_comm_shrink); see epx.Comm.shrink" },
    { NULL, NULL, 0, NULL }
};

static PyGetSetDef comm_getset[] = {
    { "rank", (getter)comm_get_rank, NULL, "this rank", NULL },
    { "size", (getter)comm_get_size, NULL, "number of ranks", NULL },
    { "closed", (getter)comm_get_closed, NULL, "True after close()", NULL },
    { NULL, NULL, NULL, NULL, NULL }
};

PyTypeObject epxpy_comm_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "epx._C.Comm",
    .tp_basicsize = sizeof(epxpy_comm_t),
    .tp_dealloc = (destructor)comm_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Comm(rank=-1, size=0, allgather=None, job_key=None, root=None, "
              "timeout=0.0): allgather given: that bootstrap; else EPX_* "
              "environment.",
    .tp_methods = comm_methods,
    .tp_getset = comm_getset,
    .tp_init = (initproc)comm_init,
    .tp_new = PyType_GenericNew,
};
