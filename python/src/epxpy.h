/*
 * The epx._C extension: CPython types over the public C API (include/epx.h).
 * One file per object: module.c (module, errors), array.c (arrays in and
 * out: buffer protocol and DLPack), comm.c, moe.c (engine and handles),
 * balance.c (planner).  The Python package (python/epx/) adds the
 * framework conventions on top; nothing here imports torch.
 */
#ifndef EPXPY_H
#define EPXPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <epx.h>

/* ------------------------------------------------------------ errors */

/* Raise the exception class of `st` with epx_last_error() (or `fallback`
 * when the library left no message); returns NULL. */
PyObject *epxpy_raise(epx_status_t st);
/* Raise the exception class of `st` with a formatted message. */
PyObject *epxpy_raisef(epx_status_t st, const char *fmt, ...);

/* ------------------------------------------------------------ arrays */

/* DLPack's stable ABI (dlpack.h, v0.8 "dltensor" capsules), declared here
 * so that building needs no framework headers. */
typedef struct { int32_t device_type; int32_t device_id; } epxpy_dldevice_t;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } epxpy_dldtype_t;
typedef struct {
    void *data;
    epxpy_dldevice_t device;
    int32_t ndim;
    epxpy_dldtype_t dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
} epxpy_dltensor_t;
typedef struct epxpy_dlmanaged {
    epxpy_dltensor_t dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct epxpy_dlmanaged *self);
} epxpy_dlmanaged_t;

enum { EPXPY_DL_CPU = 1, EPXPY_DL_CUDA = 2, EPXPY_DL_CUDA_HOST = 3 };

/* An array borrowed from Python for the length of a call: a C-contiguous
 * array seen as an epx_tensor_t, in host memory or on a CUDA device.
 * Release with epxpy_array_release after a successful import (a failed one
 * has released what it took; releasing it again is harmless). */
typedef struct {
    epx_tensor_t t;
    int ndim;
    int device;              /* EPX_DEVICE_HOST, or the CUDA ordinal */
    Py_buffer view;          /* buffer protocol: view.obj != NULL */
    epxpy_dlmanaged_t *dlm;  /* DLPack: the producer's tensor */
} epxpy_array_t;

/* dtype codes for epxpy_array_import's `allowed` mask: 1u << epx_dtype_t,
 * plus this one for arrays epx only reads as bytes.  EPXPY_DTYPE_FP64 is
 * the library's FP64 (doubles: FP64 engines, and the planner's loads). */
#define EPXPY_DTYPE_FP64 EPX_DTYPE_FP64
#define EPXPY_DTYPE_BYTES 17   /* any dtype, seen as bytes (cols = bytes) */

/* Import `obj` as a 2-D (or, with want_ndim 1, 1-D seen as 1 x n) host
 * array whose dtype is in `allowed`.  `name` is the argument's name for
 * the error (epx.InvalidError, which is also a ValueError). */
int epxpy_array_import(PyObject *obj, const char *name, unsigned allowed,
                       int want_ndim, epxpy_array_t *a);
/* The same for an engine whose tensors live on `device` (EPX_DEVICE_HOST:
 * as above; an ordinal: CUDA memory of that device only, torch CUDA
 * tensors read through their attributes, other DLPack producers asked to
 * order their data before `stream`, a cudaStream_t).  An array elsewhere
 * (host memory for a device engine, another device, CUDA memory for a
 * host engine) raises naming the argument and both places. */
int epxpy_array_import_on(PyObject *obj, const char *name, unsigned allowed,
                          int want_ndim, int device, void *stream,
                          epxpy_array_t *a);
void epxpy_array_release(epxpy_array_t *a);

/* The Buffer type: rows x cols of a dtype, exported through the buffer
 * protocol and DLPack.  Either it owns its memory (malloc'd), or it is a
 * view of memory kept alive by `owner`. */
typedef struct {
    PyObject_HEAD
    void *data;
    int64_t shape[3];
    int ndim;
    int device;               /* EPX_DEVICE_HOST, or the CUDA ordinal of a
                                 view of device memory (DLPack only) */
    int dl_code, dl_bits;     /* DLPack dtype */
    const char *format;       /* struct format for the buffer protocol */
    size_t itemsize;
    PyObject *owner;          /* keeps a view's memory alive, or NULL */
    int owns;                 /* data is malloc'd by the Buffer */
    Py_ssize_t exports;
} epxpy_buffer_t;

extern PyTypeObject epxpy_buffer_type;

/* A new Buffer of epx dtype `dtype` over `data`
 * (a view kept alive by owner), or owning a copy when owner is NULL. */
PyObject *epxpy_buffer_new(const void *data, int dtype, int ndim,
                           const int64_t *shape, PyObject *owner);
/* A view of memory on `device` (a CUDA ordinal; EPX_DEVICE_HOST: as
 * epxpy_buffer_new with an owner), kept alive by owner.  Device memory
 * cannot be copied here (no CUDA runtime in the extension): the Python
 * layer copies what must outlive the view, with torch. */
PyObject *epxpy_buffer_view_on(const void *data, int dtype, int ndim,
                               const int64_t *shape, PyObject *owner,
                               int device);

/* ------------------------------------------------------------ objects */

typedef struct epxpy_deferred epxpy_deferred_t;

typedef struct {
    PyObject_HEAD
    epx_comm_t *comm;
    PyObject *allgather;      /* the Python all-gather, or NULL */
    int rank, size;
    int engines;              /* live engines: destroyed after them */
    int closed;               /* close() called */
    /* One thread at a time drives a communicator and its engines (epx.h):
     * `busy` while a library call runs without the GIL; releases and
     * destroys asked for meanwhile (another thread, the garbage collector)
     * wait in `deferred` until it ends. */
    int busy;
    epxpy_deferred_t *deferred, *deferred_tail;
} epxpy_comm_t;

extern PyTypeObject epxpy_comm_type;
extern PyTypeObject epxpy_moe_type;
extern PyTypeObject epxpy_handle_type;

int epxpy_comm_check(epxpy_comm_t *c);
/* A Buffer viewing an engine's memory came (+1) or went (-1); a closed
 * engine is destroyed when its last view goes. */
void epxpy_view_hold(PyObject *owner, int delta);
/* Around every library call on the comm or its engines: enter refuses
 * (epx.StateError, -1) while another thread's call runs; leave runs what
 * was deferred meanwhile. */
int epxpy_comm_enter(epxpy_comm_t *c);
void epxpy_comm_leave(epxpy_comm_t *c);
/* Release a handle, destroy an engine: now, or when the call in flight
 * on the comm ends. */
void epxpy_comm_release_handle(epxpy_comm_t *c, epx_handle_t *h);
void epxpy_comm_destroy_engine(epxpy_comm_t *c, epx_moe_t *m);

PyObject *epxpy_balance_plan(PyObject *self, PyObject *args, PyObject *kw);
PyObject *epxpy_balance_metrics(PyObject *self, PyObject *args, PyObject *kw);
PyObject *epxpy_balance_shrink(PyObject *self, PyObject *args, PyObject *kw);

#endif
