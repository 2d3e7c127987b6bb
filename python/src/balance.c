/*
 * The placement planner (epx_balance_plan, epx_balance_metrics,
 * epx_balance_shrink): pure computation, run without the GIL.
 */
#include <stdlib.h>
#include <string.h>

#include "epxpy.h"

/* loads as [layers][experts] doubles (a copy when given another dtype). */
static double *loads_import(PyObject *o, epxpy_array_t *a, int *layers,
                            int *experts)
{
    if (epxpy_array_import(o, "loads", 1u << EPXPY_DTYPE_FP64 |
                           1u << EPX_DTYPE_FP32 | 1u << EPX_DTYPE_INT32 |
                           1u << EPX_DTYPE_INT64, 0, a) < 0)
        return NULL;
    if (a->ndim > 2) {
        epxpy_raisef(EPX_ERR_INVALID, "loads: expected [experts] or [layers, "
                     "experts], got %d dimensions", a->ndim);
        return NULL;
    }
    int64_t n = a->t.rows * a->t.cols;
    double *d = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (!d) {
        PyErr_NoMemory();
        return NULL;
    }
    for (int64_t i = 0; i < n; i++)
        switch ((int)a->t.dtype) {
        case EPXPY_DTYPE_FP64: d[i] = ((const double *)a->t.data)[i]; break;
        case EPX_DTYPE_FP32: d[i] = ((const float *)a->t.data)[i]; break;
        case EPX_DTYPE_INT32: d[i] = ((const int32_t *)a->t.data)[i]; break;
        default: d[i] = (double)((const int64_t *)a->t.data)[i]; break;
        }
    *layers = (int)a->t.rows;
    *experts = (int)a->t.cols;
    return d;
}

static epx_balance_policy_t policy_of(const char *s, int *ok)
{
    *ok = 1;
    if (!strcmp(s, "epx"))
        return EPX_BALANCE_EPX;
    if (!strcmp(s, "deepseek"))
        return EPX_BALANCE_DEEPSEEK;
    *ok = 0;
    epxpy_raisef(EPX_ERR_INVALID, "policy: '%s'; expected 'epx' or "
                 "'deepseek'", s);
    return EPX_BALANCE_EPX;
}

PyObject *epxpy_balance_plan(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = { "loads", "slots", "ranks", "groups", "domains",
                              "policy", "current", "lost", NULL };
    PyObject *lo, *cur = Py_None;
    Py_buffer lostb = { 0 };
    int slots, ranks, groups = 1, domains = 1, ok;
    const char *pol = "epx";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oii|iisOz*", kwlist, &lo,
                                     &slots, &ranks, &groups, &domains, &pol,
                                     &cur, &lostb))
        return NULL;
    /* lost: [layers][experts] bytes (the Python layer makes them) */
    const uint8_t *lost = lostb.buf;
    epx_balance_params_t p = EPX_BALANCE_PARAMS_INIT;
    p.policy = policy_of(pol, &ok);
    epxpy_array_t la, ca;
    memset(&ca, 0, sizeof(ca));
    double *load = ok ? loads_import(lo, &la, &p.num_layers, &p.num_experts)
                      : NULL;
    if (ok)
        epxpy_array_release(&la);
    if (load && lost &&
        lostb.len != (Py_ssize_t)p.num_layers * p.num_experts) {
        epxpy_raisef(EPX_ERR_INVALID, "lost: %zd entries, expected layers x "
                     "experts = %lld", lostb.len,
                     (long long)p.num_layers * p.num_experts);
        free(load);
        load = NULL;
    }
    if (!load) {
        PyBuffer_Release(&lostb);
        return NULL;
    }
    p.lost = lost;
    p.num_slots = slots;
    p.num_ranks = ranks;
    p.num_groups = groups;
    p.num_domains = domains;
    if (cur != Py_None) {
        if (epxpy_array_import(cur, "current", 1u << EPX_DTYPE_INT32, 0,
                               &ca) < 0) {
            free(load);
            PyBuffer_Release(&lostb);
            return NULL;
        }
        if (ca.t.rows * ca.t.cols != (int64_t)p.num_layers * slots) {
            epxpy_array_release(&ca);
            free(load);
            PyBuffer_Release(&lostb);
            return epxpy_raisef(EPX_ERR_INVALID, "current: %lld entries, "
                                "expected layers x slots = %lld",
                                (long long)(ca.t.rows * ca.t.cols),
                                (long long)p.num_layers * slots);
        }
        p.current_phy2log = ca.t.data;
    }
    int L = p.num_layers, E = p.num_experts;
    /* An expert has at most slots - (available experts) + 1 replicas: with
     * lost ones, the fewest available in any layer. */
    int avail = E;
    if (lost && L > 0) {
        avail = E;
        for (int l = 0; l < L; l++) {
            int a = 0;
            for (int e = 0; e < E; e++)
                a += !lost[(size_t)l * (size_t)E + (size_t)e];
            if (a < avail)
                avail = a;
        }
    }
    int maxrep = slots - avail + 1 > 1 ? slots - avail + 1 : 1;
    int64_t s1[2] = { L, slots > 0 ? slots : 0 }, s2[3] = { L, E, maxrep },
            s3[2] = { L, E };
    PyObject *phy = NULL, *l2p = NULL, *cnt = NULL;
    if (slots >= avail && slots > 0 && E > 0 && L > 0) {
        /* else the library says why */
        phy = epxpy_buffer_new(NULL, EPX_DTYPE_INT32, 2, s1, NULL);
        l2p = epxpy_buffer_new(NULL, EPX_DTYPE_INT32, 3, s2, NULL);
        cnt = epxpy_buffer_new(NULL, EPX_DTYPE_INT32, 2, s3, NULL);
        if (!phy || !l2p || !cnt)
            goto err;
    }
    epx_status_t st;
    int32_t *pp = phy ? ((epxpy_buffer_t *)phy)->data : NULL;
    int32_t *lp = l2p ? ((epxpy_buffer_t *)l2p)->data : NULL;
    int32_t *cp = cnt ? ((epxpy_buffer_t *)cnt)->data : NULL;
    if (!pp) {
        static int32_t dummy[1];
        pp = dummy;
    }
    Py_BEGIN_ALLOW_THREADS
    st = epx_balance_plan(&p, load, pp, lp, maxrep, cp);
    Py_END_ALLOW_THREADS
    if (st != EPX_OK) {
        epxpy_raise(st);
        goto err;
    }
    epxpy_array_release(&ca);
    free(load);
    PyBuffer_Release(&lostb);
    return Py_BuildValue("(NNN)", phy, l2p, cnt);
err:
    Py_XDECREF(phy);
    Py_XDECREF(l2p);
    Py_XDECREF(cnt);
    epxpy_array_release(&ca);
    free(load);
    PyBuffer_Release(&lostb);
    return NULL;
}

PyObject *epxpy_balance_metrics(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = { "loads", "ranks", "phy2log", NULL };
    PyObject *lo, *po = Py_None;
    int ranks;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|O", kwlist, &lo, &ranks,
                                     &po))
        return NULL;
    epx_balance_params_t p = EPX_BALANCE_PARAMS_INIT;
    epxpy_array_t la, pa;
    memset(&pa, 0, sizeof(pa));
    double *load = loads_import(lo, &la, &p.num_layers, &p.num_experts);
    epxpy_array_release(&la);
    if (!load)
        return NULL;
    p.num_ranks = ranks;
    p.num_slots = p.num_experts;
    const int32_t *phy = NULL;
    if (po != Py_None) {
        if (epxpy_array_import(po, "phy2log", 1u << EPX_DTYPE_INT32, 0,
                               &pa) < 0) {
            free(load);
            return NULL;
        }
        int64_t n = pa.t.rows * pa.t.cols;
        if (p.num_layers <= 0 || n % p.num_layers) {
            epxpy_array_release(&pa);
            free(load);
            return epxpy_raisef(EPX_ERR_INVALID, "phy2log: %lld entries for "
                                "%d layers", (long long)n, p.num_layers);
        }
        p.num_slots = (int)(n / p.num_layers);
        phy = pa.t.data;
    }
    int64_t sl[1] = { p.num_layers > 0 ? p.num_layers : 0 };
    PyObject *lb = epxpy_buffer_new(NULL, EPXPY_DTYPE_FP64, 1, sl, NULL);
    PyObject *li = epxpy_buffer_new(NULL, EPXPY_DTYPE_FP64, 1, sl, NULL);
    double bal = 0, imb = 0;
    epx_status_t st = EPX_ERR_NOMEM;
    if (lb && li) {
        double *lbp = ((epxpy_buffer_t *)lb)->data;
        double *lip = ((epxpy_buffer_t *)li)->data;
        Py_BEGIN_ALLOW_THREADS
        st = epx_balance_metrics(&p, load, phy, &bal, &imb, lbp, lip);
        Py_END_ALLOW_THREADS
    }
    epxpy_array_release(&pa);
    free(load);
    if (st != EPX_OK) {
        Py_XDECREF(lb);
        Py_XDECREF(li);
        return lb && li ? epxpy_raise(st) : NULL;
    }
    return Py_BuildValue("(ddNN)", bal, imb, lb, li);
}

/* shrink(phy2log [layers][slots] int32, live bytes [ranks], experts) ->
 * (new_phy2log [layers][live ranks x slots per rank], lost [layers]
 * [experts] uint8, num_lost). */
PyObject *epxpy_balance_shrink(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = { "phy2log", "live", "experts", NULL };
    PyObject *po;
    Py_buffer lv;
    int experts;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oy*i", kwlist, &po, &lv,
                                     &experts))
        return NULL;
    epxpy_array_t pa;
    if (epxpy_array_import(po, "phy2log", 1u << EPX_DTYPE_INT32, 0, &pa) < 0) {
        PyBuffer_Release(&lv);
        return NULL;
    }
    const uint8_t *live = lv.buf;
    int R = (int)lv.len, L = (int)pa.t.rows, S = (int)pa.t.cols, nlive = 0;
    for (int r = 0; r < R; r++)
        nlive += live[r] != 0;
    epx_balance_params_t p = EPX_BALANCE_PARAMS_INIT;
    p.num_layers = L;
    p.num_experts = experts;
    p.num_slots = S;
    p.num_ranks = R;
    /* outputs sized only for what the library accepts; it says why not */
    int ok = R > 0 && L > 0 && experts > 0 && S > 0 && S % R == 0;
    int64_t s1[2] = { L, ok ? (int64_t)nlive * (S / R) : 0 },
            s2[2] = { L, ok ? experts : 0 };
    PyObject *np = epxpy_buffer_new(NULL, EPX_DTYPE_INT32, 2, s1, NULL);
    PyObject *lo = epxpy_buffer_new(NULL, EPX_DTYPE_UE8M0, 2, s2, NULL);
    int64_t num_lost = 0;
    epx_status_t st = EPX_ERR_NOMEM;
    if (np && lo) {
        static int32_t dummy_p[1];
        static uint8_t dummy_l[1];
        int32_t *npp = ok && nlive ? ((epxpy_buffer_t *)np)->data : dummy_p;
        uint8_t *lop = ok ? ((epxpy_buffer_t *)lo)->data : dummy_l;
        Py_BEGIN_ALLOW_THREADS
        st = epx_balance_shrink(&p, pa.t.data, live, npp, lop, &num_lost);
        Py_END_ALLOW_THREADS
    }
    epxpy_array_release(&pa);
    PyBuffer_Release(&lv);
    if (st != EPX_OK) {
        Py_XDECREF(np);
        Py_XDECREF(lo);
        return np && lo ? epxpy_raise(st) : NULL;
    }
    return Py_BuildValue("(NNL)", np, lo, (long long)num_lost);
}
