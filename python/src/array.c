/*
 * Arrays in (any buffer-protocol or DLPack host array, borrowed for one
 * call) and out (epx._C.Buffer, which exports both protocols, so
 * torch.from_dlpack and numpy.asarray take it without a copy).
 */
#include <stdlib.h>
#include <string.h>

#include "epxpy.h"

/* ------------------------------------------------------------ dtypes */

typedef struct { int dtype; int code, bits; const char *format; } dtinfo_t;

static const dtinfo_t dtinfo[] = {
    { EPX_DTYPE_BF16, 4, 16, "H" },   /* numpy has no bf16: raw bits */
    { EPX_DTYPE_FP32, 2, 32, "f" },
    { EPX_DTYPE_INT32, 0, 32, "i" },
    { EPX_DTYPE_INT64, 0, 64, "q" },
    { EPX_DTYPE_FP8_E4M3, 1, 8, "B" },  /* codes as bytes; Python views */
    { EPX_DTYPE_UE8M0, 1, 8, "B" },
    { EPX_DTYPE_FP4_E2M1X2, 1, 8, "B" },
    { EPXPY_DTYPE_FP64, 2, 64, "d" },
};

static const dtinfo_t *dt_find(int dtype)
{
    for (size_t i = 0; i < sizeof(dtinfo) / sizeof(dtinfo[0]); i++)
        if (dtinfo[i].dtype == dtype)
            return &dtinfo[i];
    return NULL;
}

static const char *dt_name(int dtype)
{
    switch (dtype) {
    case EPX_DTYPE_BF16: return "bfloat16";
    case EPX_DTYPE_FP32: return "float32";
    case EPX_DTYPE_INT32: return "int32";
    case EPX_DTYPE_INT64: return "int64";
    case EPXPY_DTYPE_FP64: return "float64";
    default: return "bytes";
    }
}

/* The dtypes a mask allows, for messages. */
static void allowed_names(unsigned allowed, char *buf, size_t n)
{
    static const int order[] = { EPX_DTYPE_BF16, EPX_DTYPE_FP32,
                                 EPXPY_DTYPE_FP64, EPX_DTYPE_INT32,
                                 EPX_DTYPE_INT64 };
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
        if (allowed & (1u << order[i])) {
            size_t l = strlen(buf);
            snprintf(buf + l, n - l, "%s%s", l ? " or " : "",
                     dt_name(order[i]));
        }
}

/* A buffer-protocol format as numpy names it, for messages. */
static const char *format_name(const char *f, Py_ssize_t itemsize)
{
    static const struct { char c; const char *name; } names[] = {
        { 'e', "float16" }, { 'f', "float32" }, { 'd', "float64" },
        { 'b', "int8" }, { 'B', "uint8" }, { 'h', "int16" }, { 'H', "uint16" },
        { '?', "bool" },
    };
    if (!f)
        return "uint8";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    for (size_t i = 0; f[0] && !f[1] && i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].c == *f)
            return names[i].name;
    if (f[0] && !f[1] && strchr("ilq", *f))
        return itemsize == 4 ? "int32" : "int64";
    if (f[0] && !f[1] && strchr("ILQ", *f))
        return itemsize == 4 ? "uint32" : "uint64";
    return f;
}

/* dtype of a buffer-protocol format, -1 unknown. */
static int dt_of_format(const char *f, Py_ssize_t itemsize)
{
    if (!f)
        return itemsize == 1 ? EPXPY_DTYPE_BYTES : -1;
    if (*f == '<' || *f == '=' || *f == '@' || *f == '!' || *f == '>') {
        if (*f == '>' || *f == '!')
            return -1;   /* big-endian: not what epx reads */
        f++;
    }
    if (f[1] != '\0')
        return -1;
    switch (*f) {
    case 'f': return EPX_DTYPE_FP32;
    case 'd': return EPXPY_DTYPE_FP64;
    case 'i': case 'l': case 'q':
        return itemsize == 4 ? EPX_DTYPE_INT32
             : itemsize == 8 ? EPX_DTYPE_INT64 : -1;
    case 'H':   /* numpy has no bfloat16: its bits as uint16 (as given out) */
        return itemsize == 2 ? EPX_DTYPE_BF16 : -1;
    default: return -1;
    }
}

static int dt_of_dl(epxpy_dldtype_t d)
{
    if (d.lanes != 1 || d.code == 1)   /* bytes are read only as BYTES */
        return -1;
    for (size_t i = 0; i < sizeof(dtinfo) / sizeof(dtinfo[0]); i++)
        if (dtinfo[i].code == d.code && dtinfo[i].bits == d.bits)
            return dtinfo[i].dtype;
    return -1;
}

/* ------------------------------------------------------------ import */

static int bad(const char *name, const char *msg, const char *unused)
{
    (void)unused;
    epxpy_raisef(EPX_ERR_INVALID, "%s: %s", name, msg);
    return -1;
}

/* Where memory is, for messages: host memory, or a CUDA device. */
static const char *where_name(int device, char *buf, size_t n)
{
    if (device == EPX_DEVICE_HOST)
        snprintf(buf, n, "in host memory (CPU)");
    else if (device >= 0)
        snprintf(buf, n, "on cuda:%d", device);
    else
        snprintf(buf, n, "on a device epx does not take");
    return buf;
}

/* An array that is not where the engine's tensors are. */
static int misplaced(const char *name, int got, int want)
{
    char g[48], w[48], msg[160];
    snprintf(msg, sizeof(msg), "is %s; this engine's tensors are %s",
             where_name(got, g, sizeof(g)), where_name(want, w, sizeof(w)));
    return bad(name, msg, NULL);
}

/* Set rows/cols from a shape, checking the dimensions. */
static int set_shape(epxpy_array_t *a, const char *name, int ndim,
                     const int64_t *shape, int want_ndim, size_t itemsize,
                     int bytes)
{
    char buf[96];
    a->ndim = ndim;
    if (want_ndim > 0 && ndim != want_ndim) {
        snprintf(buf, sizeof(buf), "expected a %d-D array, got %d-D",
                 want_ndim, ndim);
        return bad(name, buf, NULL);
    }
    if (ndim < 1)
        return bad(name, "expected an array with at least 1 dimension, got a "
                   "scalar", NULL);
    int64_t rows = ndim == 1 ? 1 : shape[0], cols = 1;
    for (int d = ndim == 1 ? 0 : 1; d < ndim; d++)
        cols *= shape[d];
    a->t.rows = rows;
    a->t.cols = bytes ? cols * (int64_t)itemsize : cols;
    return 0;
}

static int import_buffer(PyObject *obj, const char *name, unsigned allowed,
                         int want_ndim, int writable, epxpy_array_t *a)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, &a->view, flags) < 0) {
        PyErr_Clear();
        /* Say why: not contiguous, or read-only. */
        if (PyObject_GetBuffer(obj, &a->view, PyBUF_FULL_RO) == 0) {
            int contig = PyBuffer_IsContiguous(&a->view, 'C');
            PyBuffer_Release(&a->view);
            a->view.obj = NULL;
            return bad(name, contig ? "is read-only (a writable array is "
                       "needed)" : "is not contiguous (call .contiguous() "
                       "or numpy.ascontiguousarray first)", NULL);
        }
        PyErr_Clear();
        return bad(name, "cannot be read as an array", NULL);
    }
    int bytes = (allowed & (1u << EPXPY_DTYPE_BYTES)) != 0;
    int dt = bytes ? EPXPY_DTYPE_BYTES
                   : dt_of_format(a->view.format, a->view.itemsize);
    if (!bytes && (dt < 0 || !(allowed & (1u << dt)))) {
        char want[96], msg[160];
        allowed_names(allowed, want, sizeof(want));
        snprintf(msg, sizeof(msg), "has dtype %s; expected %s%s",
                 format_name(a->view.format, a->view.itemsize), want,
                 (allowed & (1u << EPX_DTYPE_BF16))
                     ? " (numpy: bfloat16 bits as uint16)" : "");
        return bad(name, msg, NULL);
    }
    int64_t shape[8];
    if (a->view.ndim > 8)
        return bad(name, "has more than 8 dimensions", NULL);
    for (int d = 0; d < a->view.ndim; d++)
        shape[d] = a->view.shape ? a->view.shape[d]
                                 : a->view.len / a->view.itemsize;
    a->t.data = a->view.buf;
    a->t.dtype = (epx_dtype_t)dt;
    return set_shape(a, name, a->view.ndim, shape, want_ndim,
                     (size_t)a->view.itemsize, bytes);
}

/* The producer's device, from __dlpack_device__: 1 when it says CUDA. */
static int dlpack_on_cuda(PyObject *obj)
{
    PyObject *dev = PyObject_CallMethod(obj, "__dlpack_device__", NULL);
    long type = -1;
    if (dev && PyTuple_Check(dev) && PyTuple_GET_SIZE(dev) >= 1)
        type = PyLong_AsLong(PyTuple_GET_ITEM(dev, 0));
    Py_XDECREF(dev);
    PyErr_Clear();
    return type == EPXPY_DL_CUDA;
}

static int import_dlpack(PyObject *obj, const char *name, unsigned allowed,
                         int want_ndim, int device, void *stream,
                         epxpy_array_t *a)
{
    PyObject *cap;
    if (device >= 0 && dlpack_on_cuda(obj)) {
        /* DLPack's stream protocol: the producer orders its pending work
         * on this tensor before `stream` (1: CUDA's legacy default). */
        PyObject *kw = Py_BuildValue("{s:n}", "stream",
                                     stream ? (Py_ssize_t)(intptr_t)stream
                                            : (Py_ssize_t)1);
        PyObject *meth = kw ? PyObject_GetAttrString(obj, "__dlpack__") : NULL;
        PyObject *noargs = meth ? PyTuple_New(0) : NULL;
        cap = noargs ? PyObject_Call(meth, noargs, kw) : NULL;
        Py_XDECREF(noargs);
        Py_XDECREF(meth);
        Py_XDECREF(kw);
    } else {
        cap = PyObject_CallMethod(obj, "__dlpack__", NULL);
    }
    if (!cap) {
        /* A tensor that requires grad refuses; say what to do. */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyObject *s = v ? PyObject_Str(v) : NULL;
        epxpy_raisef(EPX_ERR_INVALID, "%s: cannot be exported (%s)", name,
                     s ? PyUnicode_AsUTF8(s) : "DLPack export failed");
        Py_XDECREF(s);
        Py_XDECREF(t); Py_XDECREF(v); Py_XDECREF(tb);
        return -1;
    }
    epxpy_dlmanaged_t *m = PyCapsule_GetPointer(cap, "dltensor");
    if (!m) {
        PyErr_Clear();
        Py_DECREF(cap);
        return bad(name, "gave a DLPack capsule of an unknown version", NULL);
    }
    /* Ours now: the capsule must not free it. */
    PyCapsule_SetName(cap, "used_dltensor");
    Py_DECREF(cap);
    a->dlm = m;
    epxpy_dltensor_t *d = &m->dl_tensor;
    int where = d->device.device_type == EPXPY_DL_CPU ||
                d->device.device_type == EPXPY_DL_CUDA_HOST ? EPX_DEVICE_HOST
              : d->device.device_type == EPXPY_DL_CUDA ? (int)d->device.device_id
              : -2;
    if (where == -2) {
        char msg[160], w[48];
        snprintf(msg, sizeof(msg), "is on a device of DLPack type %d; this "
                 "engine's tensors are %s", (int)d->device.device_type,
                 where_name(device, w, sizeof(w)));
        return bad(name, msg, NULL);
    }
    if (where != device)
        return misplaced(name, where, device);
    a->device = where;
    int bytes = (allowed & (1u << EPXPY_DTYPE_BYTES)) != 0;
    int dt = bytes ? EPXPY_DTYPE_BYTES : dt_of_dl(d->dtype);
    if (!bytes && (dt < 0 || !(allowed & (1u << dt)))) {
        char want[96], msg[200];
        allowed_names(allowed, want, sizeof(want));
        if (dt >= 0)
            snprintf(msg, sizeof(msg), "has dtype %s; expected %s",
                     dt_name(dt), want);
        else
            snprintf(msg, sizeof(msg), "has an unsupported dtype (DLPack code "
                     "%d, %d bits); expected %s", d->dtype.code,
                     d->dtype.bits, want);
        return bad(name, msg, NULL);
    }
    if (d->ndim > 8)
        return bad(name, "has more than 8 dimensions", NULL);
    size_t itemsize = ((size_t)d->dtype.bits * d->dtype.lanes + 7) / 8;
    int64_t elems = 1;
    for (int k = 0; k < d->ndim; k++)
        elems *= d->shape[k];
    if (d->strides && elems > 0) {   /* row-major, size-1 dimensions aside
                                        (an empty array has any strides) */
        int64_t expect = 1;
        for (int k = d->ndim - 1; k >= 0; k--) {
            if (d->shape[k] != 1 && d->strides[k] != expect)
                return bad(name, "is not contiguous (call .contiguous() "
                           "first)", NULL);
            expect *= d->shape[k];
        }
    }
    a->t.data = (char *)d->data + d->byte_offset;
    a->t.dtype = (epx_dtype_t)dt;
    return set_shape(a, name, d->ndim, d->shape, want_ndim, itemsize, bytes);
}

/* torch: CPU tensors of the plain Tensor and Parameter types are read
 * through their attributes, a third of the cost of Tensor.__dlpack__
 * (Python code in torch), which dominated a 1-token call.  Anything else
 * (other devices, subclasses such as DTensor) goes through DLPack. */
static struct {
    PyObject *tensor, *param;   /* types, strong references */
    PyObject *dt[5];            /* torch dtypes of ...  */
    int code[5];                /* ... these epx dtypes */
} tch;

/* The torch types, once torch is imported (nothing here imports it). */
static int torch_ready(void)
{
    if (tch.tensor)
        return 1;
    PyObject *name = PyUnicode_FromString("torch");
    PyObject *m = name ? PyImport_GetModule(name) : NULL;
    Py_XDECREF(name);
    if (!m || m == Py_None) {
        Py_XDECREF(m);
        PyErr_Clear();
        return 0;
    }
    static const char *names[5] = { "bfloat16", "float32", "float64",
                                    "int32", "int64" };
    static const int codes[5] = { EPX_DTYPE_BF16, EPX_DTYPE_FP32,
                                  EPXPY_DTYPE_FP64, EPX_DTYPE_INT32,
                                  EPX_DTYPE_INT64 };
    PyObject *nn = PyObject_GetAttrString(m, "nn");
    PyObject *t = PyObject_GetAttrString(m, "Tensor");
    PyObject *p = nn ? PyObject_GetAttrString(nn, "Parameter") : NULL;
    int ok = t && p && PyType_Check(t) && PyType_Check(p);
    for (int i = 0; ok && i < 5; i++) {
        tch.dt[i] = PyObject_GetAttrString(m, names[i]);
        tch.code[i] = codes[i];
        ok = tch.dt[i] != NULL;
    }
    Py_XDECREF(nn);
    Py_DECREF(m);
    if (!ok) {
        Py_XDECREF(t);
        Py_XDECREF(p);
        for (int i = 0; i < 5; i++)
            Py_CLEAR(tch.dt[i]);
        PyErr_Clear();
        return 0;
    }
    tch.tensor = t;
    tch.param = p;
    return 1;
}

/* Where a plain torch tensor is: EPX_DEVICE_HOST, the CUDA ordinal, or
 * -2 for anything else (left to DLPack, which says what it is). */
static int torch_where(PyObject *obj)
{
    PyObject *cpu = PyObject_GetAttrString(obj, "is_cpu");
    int is_cpu = cpu == Py_True;
    Py_XDECREF(cpu);
    if (is_cpu)
        return EPX_DEVICE_HOST;
    PyObject *cuda = PyObject_GetAttrString(obj, "is_cuda");
    int is_cuda = cuda == Py_True;
    Py_XDECREF(cuda);
    long ix = -1;
    if (is_cuda) {
        PyObject *g = PyObject_CallMethod(obj, "get_device", NULL);
        ix = g ? PyLong_AsLong(g) : -1;
        Py_XDECREF(g);
    }
    PyErr_Clear();
    return ix >= 0 ? (int)ix : -2;
}

/* 1: imported (or failed with the error set, *rc = -1); 0: not a plain
 * CPU or CUDA tensor, left to DLPack.  A CUDA tensor's pointer is read
 * like a CPU one's: torch orders its work on the current stream, the one
 * the Python layer gives epx. */
static int import_torch(PyObject *obj, const char *name, unsigned allowed,
                        int want_ndim, int device, epxpy_array_t *a, int *rc)
{
    if (!torch_ready() || ((PyObject *)Py_TYPE(obj) != tch.tensor &&
                           (PyObject *)Py_TYPE(obj) != tch.param))
        return 0;
    int where = torch_where(obj);
    if (where == -2)
        return 0;
    *rc = -1;
    if (where != device) {
        misplaced(name, where, device);
        return 1;
    }
    a->device = where;
    int bytes = (allowed & (1u << EPXPY_DTYPE_BYTES)) != 0, dt = -1;
    PyObject *dto = PyObject_GetAttrString(obj, "dtype");
    for (int i = 0; dto && i < 5; i++)
        if (dto == tch.dt[i])
            dt = tch.code[i];
    if (!dto)
        return 1;
    if (!bytes && (dt < 0 || !(allowed & (1u << dt)))) {
        char want[96], msg[200];
        PyObject *s = PyObject_Str(dto);   /* "torch.float16" */
        const char *dn = s ? PyUnicode_AsUTF8(s) : NULL;
        if (dn && !strncmp(dn, "torch.", 6))
            dn += 6;
        allowed_names(allowed, want, sizeof(want));
        snprintf(msg, sizeof(msg), "has dtype %s; expected %s",
                 dn ? dn : "?", want);
        Py_XDECREF(s);
        Py_DECREF(dto);
        PyErr_Clear();
        bad(name, msg, NULL);
        return 1;
    }
    Py_DECREF(dto);
    PyObject *c = PyObject_CallMethod(obj, "is_contiguous", NULL);
    if (!c)
        return 1;
    int contig = c == Py_True;
    Py_DECREF(c);
    if (!contig) {
        bad(name, "is not contiguous (call .contiguous() first)", NULL);
        return 1;
    }
    size_t itemsize = 1;
    if (bytes) {
        PyObject *e = PyObject_CallMethod(obj, "element_size", NULL);
        itemsize = e ? PyLong_AsSize_t(e) : 0;
        Py_XDECREF(e);
        if (PyErr_Occurred())
            return 1;
    }
    PyObject *sh = PyObject_GetAttrString(obj, "shape");
    PyObject *fast = sh ? PySequence_Fast(sh, "shape") : NULL;
    Py_XDECREF(sh);
    if (!fast)
        return 1;
    Py_ssize_t nd = PySequence_Fast_GET_SIZE(fast);
    int64_t shape[8];
    if (nd > 8) {
        Py_DECREF(fast);
        bad(name, "has more than 8 dimensions", NULL);
        return 1;
    }
    for (Py_ssize_t d = 0; d < nd; d++)
        shape[d] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, d));
    Py_DECREF(fast);
    PyObject *ptr = PyObject_CallMethod(obj, "data_ptr", NULL);
    void *data = ptr ? PyLong_AsVoidPtr(ptr) : NULL;
    Py_XDECREF(ptr);
    if (PyErr_Occurred())
        return 1;
    a->t.data = data;
    a->t.dtype = (epx_dtype_t)(bytes ? EPXPY_DTYPE_BYTES : dt);
    *rc = set_shape(a, name, (int)nd, shape, want_ndim, itemsize, bytes);
    return 1;
}

static int import_any(PyObject *obj, const char *name, unsigned allowed,
                      int want_ndim, int writable, int device, void *stream,
                      epxpy_array_t *a)
{
    if (obj == NULL || obj == Py_None)
        return bad(name, "is None; an array is needed", NULL);
    /* numpy arrays and memoryviews through the buffer protocol (host
     * memory), plain CPU and CUDA torch tensors through their attributes,
     * the rest through DLPack. */
    a->device = EPX_DEVICE_HOST;
    int dev_buffer = PyObject_TypeCheck(obj, &epxpy_buffer_type) &&
                     ((epxpy_buffer_t *)obj)->device != EPX_DEVICE_HOST;
    if (PyObject_CheckBuffer(obj) && !dev_buffer) {
        if (device != EPX_DEVICE_HOST)
            return misplaced(name, EPX_DEVICE_HOST, device);
        return import_buffer(obj, name, allowed, want_ndim, writable, a);
    }
    int rc;
    if (import_torch(obj, name, allowed, want_ndim, device, a, &rc))
        return rc;
    if (PyObject_HasAttrString(obj, "__dlpack__"))
        return import_dlpack(obj, name, allowed, want_ndim, device, stream, a);
    char msg[160];
    snprintf(msg, sizeof(msg), "must be an array (a torch tensor, a numpy "
             "array, or any buffer-protocol or DLPack object), not %.60s",
             Py_TYPE(obj)->tp_name);
    return bad(name, msg, NULL);
}

int epxpy_array_import_on(PyObject *obj, const char *name, unsigned allowed,
                          int want_ndim, int device, void *stream,
                          epxpy_array_t *a)
{
    int writable = (allowed & (1u << 30)) != 0;
    allowed &= ~(1u << 30);
    memset(a, 0, sizeof(*a));
    int rc = import_any(obj, name, allowed, want_ndim, writable, device,
                        stream, a);
    if (rc < 0)   /* nothing stays borrowed after a failure */
        epxpy_array_release(a);
    return rc;
}

int epxpy_array_import(PyObject *obj, const char *name, unsigned allowed,
                       int want_ndim, epxpy_array_t *a)
{
    return epxpy_array_import_on(obj, name, allowed, want_ndim,
                                 EPX_DEVICE_HOST, NULL, a);
}

void epxpy_array_release(epxpy_array_t *a)
{
    if (a->view.obj)
        PyBuffer_Release(&a->view);
    if (a->dlm && a->dlm->deleter)
        a->dlm->deleter(a->dlm);
    memset(a, 0, sizeof(*a));
}

/* ------------------------------------------------------------ Buffer */

static size_t buf_bytes(const epxpy_buffer_t *b)
{
    size_t n = b->itemsize;
    for (int d = 0; d < b->ndim; d++)
        n *= (size_t)b->shape[d];
    return n;
}

PyObject *epxpy_buffer_new(const void *data, int dtype, int ndim,
                           const int64_t *shape, PyObject *owner)
{
    const dtinfo_t *di = dt_find(dtype);
    if (!di || ndim < 1 || ndim > 3)
        return epxpy_raisef(EPX_ERR_INVALID, "internal: buffer of dtype %d, "
                            "%d dims", dtype, ndim);
    epxpy_buffer_t *b = PyObject_New(epxpy_buffer_t, &epxpy_buffer_type);
    if (!b)
        return NULL;
    b->ndim = ndim;
    for (int d = 0; d < 3; d++)
        b->shape[d] = d < ndim ? shape[d] : 1;
    b->device = EPX_DEVICE_HOST;
    b->dl_code = di->code;
    b->dl_bits = di->bits;
    b->format = di->format;
    b->itemsize = (size_t)di->bits / 8;
    b->exports = 0;
    b->owner = owner;
    b->owns = owner == NULL;
    if (owner) {
        Py_INCREF(owner);
        epxpy_view_hold(owner, 1);
        b->data = (void *)data;
    } else {
        size_t n = buf_bytes(b);
        b->data = malloc(n ? n : 1);
        if (!b->data) {
            b->owns = 0;
            Py_DECREF(b);
            return PyErr_NoMemory();
        }
        if (n && data)
            memcpy(b->data, data, n);
        else if (n)
            memset(b->data, 0, n);
    }
    return (PyObject *)b;
}

PyObject *epxpy_buffer_view_on(const void *data, int dtype, int ndim,
                               const int64_t *shape, PyObject *owner,
                               int device)
{
    if (!owner)
        return epxpy_raisef(EPX_ERR_INVALID, "internal: a view without an "
                            "owner");
    PyObject *o = epxpy_buffer_new(data, dtype, ndim, shape, owner);
    if (o)
        ((epxpy_buffer_t *)o)->device = device;
    return o;
}

static void buffer_dealloc(epxpy_buffer_t *b)
{
    if (b->owns)
        free(b->data);
    if (b->owner)
        epxpy_view_hold(b->owner, -1);
    Py_XDECREF(b->owner);
    PyObject_Free(b);
}

static int buffer_getbuffer(epxpy_buffer_t *b, Py_buffer *v, int flags)
{
    if (b->device != EPX_DEVICE_HOST) {   /* the buffer protocol is host only */
        PyErr_Format(PyExc_BufferError, "device memory (cuda:%d): take it "
                     "with torch.from_dlpack", b->device);
        v->obj = NULL;
        return -1;
    }
    v->buf = b->data;
    v->obj = (PyObject *)b;
    Py_INCREF(b);
    v->len = (Py_ssize_t)buf_bytes(b);
    v->readonly = 0;
    v->itemsize = (Py_ssize_t)b->itemsize;
    v->format = (flags & PyBUF_FORMAT) ? (char *)b->format : NULL;
    v->ndim = b->ndim;
    /* Py_ssize_t copies of the shape, kept in the view's internal slot. */
    Py_ssize_t *sh = NULL;
    if (flags & PyBUF_ND) {
        sh = PyMem_Malloc(sizeof(Py_ssize_t) * 3);
        if (!sh) {
            Py_DECREF(b);
            v->obj = NULL;
            PyErr_NoMemory();
            return -1;
        }
        for (int d = 0; d < 3; d++)
            sh[d] = (Py_ssize_t)b->shape[d];
    }
    v->shape = sh;
    v->strides = NULL;
    v->suboffsets = NULL;
    v->internal = sh;
    b->exports++;
    return 0;
}

static void buffer_releasebuffer(epxpy_buffer_t *b, Py_buffer *v)
{
    PyMem_Free(v->internal);
    b->exports--;
}

static PyBufferProcs buffer_procs = {
    (getbufferproc)buffer_getbuffer, (releasebufferproc)buffer_releasebuffer
};

/* DLPack export: the managed tensor keeps the Buffer alive. */
typedef struct {
    epxpy_dlmanaged_t m;
    int64_t shape[3];
} dlpack_export_t;

static void dl_deleter(epxpy_dlmanaged_t *m)
{
    /* May run on a thread without the GIL (a framework freeing a tensor). */
    PyGILState_STATE g = PyGILState_Ensure();
    Py_XDECREF((PyObject *)m->manager_ctx);
    PyGILState_Release(g);
    free(m);
}

static void dl_capsule_destructor(PyObject *cap)
{
    if (!PyCapsule_IsValid(cap, "dltensor"))
        return;   /* consumed: the consumer calls the deleter */
    epxpy_dlmanaged_t *m = PyCapsule_GetPointer(cap, "dltensor");
    if (m && m->deleter)
        m->deleter(m);
}

/* DLPack export.  The stream a consumer passes is not waited on: the
 * library made the stream of the call that produced the memory (the
 * caller's, torch's current one in the Python layer) wait for it, so the
 * data are ready in that stream's order (python/README.md). */
static PyObject *buffer_dlpack(epxpy_buffer_t *b, PyObject *args, PyObject *kw)
{
    (void)args; (void)kw;   /* stream, max_version, ...: see above */
    dlpack_export_t *e = calloc(1, sizeof(*e));
    if (!e)
        return PyErr_NoMemory();
    for (int d = 0; d < b->ndim; d++)
        e->shape[d] = b->shape[d];
    epxpy_dltensor_t *t = &e->m.dl_tensor;
    t->data = b->data;
    t->device.device_type = b->device >= 0 ? EPXPY_DL_CUDA : EPXPY_DL_CPU;
    t->device.device_id = b->device >= 0 ? b->device : 0;
    t->ndim = b->ndim;
    t->dtype.code = (uint8_t)b->dl_code;
    t->dtype.bits = (uint8_t)b->dl_bits;
    t->dtype.lanes = 1;
    t->shape = e->shape;
    t->strides = NULL;
    t->byte_offset = 0;
    e->m.manager_ctx = b;
    e->m.deleter = dl_deleter;
    Py_INCREF(b);
    PyObject *cap = PyCapsule_New(&e->m, "dltensor", dl_capsule_destructor);
    if (!cap) {
        Py_DECREF(b);
        free(e);
    }
    return cap;
}

static PyObject *buffer_dlpack_device(epxpy_buffer_t *b, PyObject *noarg)
{
    (void)noarg;
    return b->device >= 0 ? Py_BuildValue("(ii)", EPXPY_DL_CUDA, b->device)
                          : Py_BuildValue("(ii)", EPXPY_DL_CPU, 0);
}

static PyObject *buffer_shape(epxpy_buffer_t *b, void *closure)
{
    (void)closure;
    PyObject *t = PyTuple_New(b->ndim);
    for (int d = 0; t && d < b->ndim; d++)
        PyTuple_SET_ITEM(t, d, PyLong_FromLongLong(b->shape[d]));
    return t;
}

static PyObject *buffer_is_view(epxpy_buffer_t *b, void *closure)
{
    (void)closure;
    return PyBool_FromLong(!b->owns);
}

static PyMethodDef buffer_methods[] = {
    { "__dlpack__", (PyCFunction)(void (*)(void))buffer_dlpack,
      METH_VARARGS | METH_KEYWORDS, "DLPack export (host or CUDA memory)" },
    { "__dlpack_device__", (PyCFunction)buffer_dlpack_device, METH_NOARGS,
      "(kDLCPU, 0), or (kDLCUDA, ordinal) for device memory" },
    { NULL, NULL, 0, NULL }
};

static PyGetSetDef buffer_getset[] = {
    { "shape", (getter)buffer_shape, NULL, "dimensions", NULL },
    { "is_view", (getter)buffer_is_view, NULL,
      "True when the memory is the library's (a view), not a copy", NULL },
    { NULL, NULL, NULL, NULL, NULL }
};

PyTypeObject epxpy_buffer_type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "epx._C.Buffer",
    .tp_basicsize = sizeof(epxpy_buffer_t),
    .tp_dealloc = (destructor)buffer_dealloc,
    .tp_as_buffer = &buffer_procs,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Memory of the library or a copy of it, as an array (buffer "
              "protocol and DLPack).",
    .tp_methods = buffer_methods,
    .tp_getset = buffer_getset,
};
