/*
 * Trace replay: DIR/rank<r>/topk_idx.npy [T,K] (int32 or int64),
 * topk_weights.npy [T,K] (float32) and optionally x.npy [T,H] (float32,
 * rounded to bf16 when used).  Every rank loads every rank's routing (it is
 * small) and maps every x.npy, so received rows can be checked against
 * their source.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "bench.h"

int bench_trace_count_ranks(const char *dir)
{
    int n = 0;
    for (;; n++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof(path), "%s/rank%d", dir, n);
        if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
            return n;
    }
}

static int load_rank(const bench_opts_t *o, bench_workload_t *wl, int r,
                     char *err, size_t errlen)
{
    char pi[4096], pw[4096], px[4096];
    snprintf(pi, sizeof(pi), "%s/rank%d/topk_idx.npy", o->trace_dir, r);
    snprintf(pw, sizeof(pw), "%s/rank%d/topk_weights.npy", o->trace_dir, r);
    snprintf(px, sizeof(px), "%s/rank%d/x.npy", o->trace_dir, r);
    bench_npy_t ai, aw;
    int rc = -1;
    if (bench_npy_map(pi, &ai, err, errlen) != 0)
        return -1;
    if (bench_npy_map(pw, &aw, err, errlen) != 0)
        goto out_idx;
    if (ai.type == BENCH_NPY_F4 || ai.ndim != 2) {
        snprintf(err, errlen, "%s: want a 2-D int32 or int64 array [T,K]",
                 pi);
        goto out_w;
    }
    if (aw.type != BENCH_NPY_F4 || aw.ndim != 2 ||
        aw.shape[0] != ai.shape[0] || aw.shape[1] != ai.shape[1]) {
        snprintf(err, errlen, "%s: want a float32 array of the shape of "
                 "topk_idx.npy [%lld,%lld]", pw, (long long)ai.shape[0],
                 (long long)ai.shape[1]);
        goto out_w;
    }
    const int64_t T = ai.shape[0], K = ai.shape[1];
    if (K < 1 || K > EPX_MAX_TOPK) {
        snprintf(err, errlen, "%s: K = %lld, want 1..%d", pi, (long long)K,
                 EPX_MAX_TOPK);
        goto out_w;
    }
    if (r == 0) {
        if (o->topk_given && o->topk != K) {
            snprintf(err, errlen, "%s: K = %lld but --topk %d", pi,
                     (long long)K, o->topk);
            goto out_w;
        }
        wl->topk = (int)K;
        wl->idx64 = ai.type == BENCH_NPY_I8;
    } else if (wl->topk != K) {
        snprintf(err, errlen, "%s: K = %lld but rank 0 has K = %d", pi,
                 (long long)K, wl->topk);
        goto out_w;
    }
    wl->T[r] = T;
    wl->idx[r] = malloc((size_t)(T * K + 1) * sizeof(int32_t));
    wl->w[r] = malloc((size_t)(T * K + 1) * sizeof(float));
    if (!wl->idx[r] || !wl->w[r]) {
        snprintf(err, errlen, "%s: out of memory", pi);
        goto out_w;
    }
    for (int64_t t = 0; t < T; t++)
        for (int64_t k = 0; k < K; k++) {
            int64_t e = bench_npy_int(&ai, t, k);
            if (e < -1 || e >= wl->experts) {
                snprintf(err, errlen, "%s: [%lld,%lld] = %lld is not an "
                         "expert (-1 or 0..%d; see --experts)", pi,
                         (long long)t, (long long)k, (long long)e,
                         wl->experts - 1);
                goto out_w;
            }
            for (int64_t j = 0; j < k && e >= 0; j++)
                if (wl->idx[r][t * K + j] == e) {
                    snprintf(err, errlen, "%s: token %lld lists expert %lld "
                             "twice", pi, (long long)t, (long long)e);
                    goto out_w;
                }
            wl->idx[r][t * K + k] = (int32_t)e;
            wl->w[r][t * K + k] = bench_npy_f32(&aw, t, k);
        }

    int xr = bench_npy_map(px, &wl->trace_x[r], err, errlen);
    if (xr == -1)
        goto out_w;
    if (xr == 0) {
        const bench_npy_t *ax = &wl->trace_x[r];
        if (ax->type != BENCH_NPY_F4 || ax->ndim != 2 || ax->shape[0] != T) {
            snprintf(err, errlen, "%s: want a float32 array [%lld,H]", px,
                     (long long)T);
            goto out_w;
        }
        if (wl->hidden == 0) {
            if (o->hidden_given && o->hidden != ax->shape[1]) {
                snprintf(err, errlen, "%s: H = %lld but --hidden %d", px,
                         (long long)ax->shape[1], o->hidden);
                goto out_w;
            }
            if (ax->shape[1] < 1 || ax->shape[1] > (1 << 20)) {
                snprintf(err, errlen, "%s: H = %lld out of range", px,
                         (long long)ax->shape[1]);
                goto out_w;
            }
            wl->hidden = (int)ax->shape[1];
        } else if (ax->shape[1] != wl->hidden) {
            snprintf(err, errlen, "%s: H = %lld but other ranks have %d", px,
                     (long long)ax->shape[1], wl->hidden);
            goto out_w;
        }
    }
    rc = 0;
out_w:
    bench_npy_unmap(&aw);
out_idx:
    bench_npy_unmap(&ai);
    return rc;
}

int bench_trace_load(const bench_opts_t *o, bench_workload_t *wl, char *err,
                     size_t errlen)
{
    int have = bench_trace_count_ranks(o->trace_dir);
    if (have == 0) {
        snprintf(err, errlen, "%s: no rank0/ directory: not a trace",
                 o->trace_dir);
        return -1;
    }
    if (have != wl->nranks) {
        snprintf(err, errlen, "%s holds %d ranks (rank0..rank%d) but the "
                 "run has %d", o->trace_dir, have, have - 1, wl->nranks);
        return -1;
    }
    wl->hidden = 0;
    for (int r = 0; r < wl->nranks; r++)
        if (load_rank(o, wl, r, err, errlen) != 0)
            return -1;
    if (wl->hidden == 0)   /* no x.npy anywhere: generated inputs */
        wl->hidden = o->hidden;
    return 0;
}
