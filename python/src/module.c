/*
 * The module epx._C: its types, the exception per status and a few
 * library-wide calls.
 */
#include <stdarg.h>
#include <stdio.h>

#include "epxpy.h"
#include <epx/cuda.h>

/* One exception class per status; index -status. */
#define NSTATUS 12
static PyObject *exc_of[NSTATUS];

static const struct {
    epx_status_t st;
    const char *name;   /* attribute of epx._C */
    PyObject **extra;   /* a builtin base beside epx.Error, or NULL */
} exc_table[] = {
    { EPX_ERR_INVALID, "InvalidError", &PyExc_ValueError },
    { EPX_ERR_NOMEM, "NoMemoryError", &PyExc_MemoryError },
    { EPX_ERR_SYSTEM, "SystemCallError", &PyExc_OSError },
    { EPX_ERR_TIMEOUT, "TimeoutError", &PyExc_TimeoutError },
    { EPX_ERR_AUTH, "AuthError", NULL },
    { EPX_ERR_MISMATCH, "MismatchError", &PyExc_ValueError },
    { EPX_ERR_PEER, "PeerError", NULL },
    { EPX_ERR_STATE, "StateError", NULL },
    { EPX_ERR_UNSUPPORTED, "UnsupportedError", &PyExc_NotImplementedError },
    { EPX_ERR_BOOTSTRAP, "BootstrapError", NULL },
    { EPX_ERR_RANGE, "RangeError", &PyExc_ValueError },
};

static PyObject *raise_msg(epx_status_t st, const char *msg)
{
    int i = -(int)st;
    PyObject *cls = (i > 0 && i < NSTATUS && exc_of[i]) ? exc_of[i] : exc_of[0];
    PyObject *exc = PyObject_CallFunction(cls, "s", msg);
    if (!exc)
        return NULL;
    PyObject *code = PyLong_FromLong((long)st);
    PyObject *text = PyUnicode_FromString(msg);
    if (code && text && PyObject_SetAttrString(exc, "status", code) == 0 &&
        PyObject_SetAttrString(exc, "message", text) == 0)
        PyErr_SetObject(cls, exc);
    Py_XDECREF(code);
    Py_XDECREF(text);
    Py_DECREF(exc);
    return NULL;
}

PyObject *epxpy_raise(epx_status_t st)
{
    const char *m = epx_last_error();
    return raise_msg(st, m && *m ? m : epx_status_str(st));
}

PyObject *epxpy_raisef(epx_status_t st, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return raise_msg(st, buf);
}

static PyObject *py_status_str(PyObject *self, PyObject *arg)
{
    (void)self;
    long st = PyLong_AsLong(arg);
    if (st == -1 && PyErr_Occurred())
        return NULL;
    return PyUnicode_FromString(epx_status_str((epx_status_t)st));
}

static PyObject *py_settings(PyObject *self, PyObject *noarg)
{
    (void)self; (void)noarg;
    const epx_setting_t *tab;
    int n = epx_settings(&tab);
    PyObject *l = PyList_New(n);
    for (int i = 0; l && i < n; i++) {
        PyObject *t = Py_BuildValue("(sss)", tab[i].name, tab[i].deflt,
                                    tab[i].help);
        if (!t) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, i, t);
    }
    return l;
}

/* GPUs the library's CUDA module sees; UnsupportedError without the
 * module (libepx built without CUDA) or a driver. */
static PyObject *py_cuda_devices(PyObject *self, PyObject *noarg)
{
    (void)self;
    (void)noarg;
    int n = 0;
    epx_status_t st;
    Py_BEGIN_ALLOW_THREADS
    st = epx_cuda_devices(&n);
    Py_END_ALLOW_THREADS
    return st == EPX_OK ? PyLong_FromLong(n) : epxpy_raise(st);
}

static PyMethodDef methods[] = {
    { "status_str", py_status_str, METH_O, "status_str(status) -> str" },
    { "cuda_devices", py_cuda_devices, METH_NOARGS,
      "cuda_devices() -> GPUs libepx's CUDA module sees (UnsupportedError "
      "without it)" },
    { "settings", py_settings, METH_NOARGS,
      "settings() -> [(name, default, help)]: the EPX_* environment settings" },
    { "balance_plan", (PyCFunction)(void (*)(void))epxpy_balance_plan,
      METH_VARARGS | METH_KEYWORDS, "see epx.balance.plan" },
    { "balance_metrics", (PyCFunction)(void (*)(void))epxpy_balance_metrics,
      METH_VARARGS | METH_KEYWORDS, "see epx.balance.metrics" },
    { "balance_shrink", (PyCFunction)(void (*)(void))epxpy_balance_shrink,
      METH_VARARGS | METH_KEYWORDS, "see epx.balance.shrink" },
    { NULL, NULL, 0, NULL }
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "epx._C",
    "epx's C extension: the library's objects, used through the epx package.",
    -1, methods, NULL, NULL, NULL, NULL
};

static int add_type(PyObject *m, const char *name, PyTypeObject *t)
{
    if (PyType_Ready(t) < 0)
        return -1;
    Py_INCREF(t);
    if (PyModule_AddObject(m, name, (PyObject *)t) < 0) {
        Py_DECREF(t);
        return -1;
    }
    return 0;
}

static int add_exceptions(PyObject *m)
{
    exc_of[0] = PyErr_NewExceptionWithDoc(
        "epx.Error", "An epx call failed: .status (an epx_status_t) and "
        ".message (the library's detail).", PyExc_RuntimeError, NULL);
    if (!exc_of[0])
        return -1;
    Py_INCREF(exc_of[0]);
    if (PyModule_AddObject(m, "Error", exc_of[0]) < 0)
        return -1;
    for (size_t i = 0; i < sizeof(exc_table) / sizeof(exc_table[0]); i++) {
        char qual[64];
        snprintf(qual, sizeof(qual), "epx.%s", exc_table[i].name);
        PyObject *bases = exc_table[i].extra
            ? PyTuple_Pack(2, exc_of[0], *exc_table[i].extra)
            : PyTuple_Pack(1, exc_of[0]);
        if (!bases)
            return -1;
        PyObject *cls = PyErr_NewExceptionWithDoc(qual,
            epx_status_str(exc_table[i].st), bases, NULL);
        Py_DECREF(bases);
        if (!cls)
            return -1;
        exc_of[-(int)exc_table[i].st] = cls;
        Py_INCREF(cls);
        if (PyModule_AddObject(m, exc_table[i].name, cls) < 0)
            return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__C(void)
{
    PyObject *m = PyModule_Create(&moddef);
    if (!m)
        return NULL;
    if (add_exceptions(m) < 0 ||
        add_type(m, "Buffer", &epxpy_buffer_type) < 0 ||
        add_type(m, "Comm", &epxpy_comm_type) < 0 ||
        add_type(m, "MoE", &epxpy_moe_type) < 0 ||
        add_type(m, "Handle", &epxpy_handle_type) < 0 ||
        PyModule_AddStringConstant(m, "version", epx_version_string()) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
