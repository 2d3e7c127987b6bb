/* The workload: sizes, routing of every rank, placement, bytes per rank. */
#include <stdlib.h>
#include <string.h>
#include "bench.h"

void bench_workload_free(bench_workload_t *wl)
{
    for (int r = 0; wl->idx && r < wl->nranks; r++) {
        free(wl->idx[r]);
        free(wl->w[r]);
        if (wl->trace_x)
            bench_npy_unmap(&wl->trace_x[r]);
    }
    free(wl->idx);
    free(wl->w);
    free(wl->trace_x);
    free(wl->T);
    free(wl->expert_rank);
    free(wl->rows_sent);
    memset(wl, 0, sizeof(*wl));
}

double bench_rank_bytes(const bench_workload_t *wl, int r)
{
    return (double)wl->rows_sent[r] * wl->hidden * (double)wl->dsize;
}

static int generated_tokens(const bench_opts_t *o, bench_workload_t *wl,
                            char *err, size_t errlen)
{
    if (o->ntokens > 1 && o->ntokens != wl->nranks) {
        snprintf(err, errlen, "--tokens lists %d values for %d ranks",
                 o->ntokens, wl->nranks);
        return -1;
    }
    for (int r = 0; r < wl->nranks; r++) {
        int64_t T = o->ntokens == 0 ? BENCH_DEFAULT_TOKENS
                  : o->tokens[o->ntokens == 1 ? 0 : r];
        wl->T[r] = T;
        wl->idx[r] = malloc((size_t)(T * wl->topk + 1) * sizeof(int32_t));
        wl->w[r] = malloc((size_t)(T * wl->topk + 1) * sizeof(float));
        if (!wl->idx[r] || !wl->w[r]) {
            snprintf(err, errlen, "out of memory for the routing");
            return -1;
        }
    }
    return bench_routing_generate(o, wl, err, errlen);
}

int bench_workload_build(const bench_opts_t *o, int nranks,
                         bench_workload_t *wl, char *err, size_t errlen)
{
    memset(wl, 0, sizeof(*wl));
    wl->nranks = nranks;
    wl->hidden = o->hidden;
    wl->experts = o->experts;
    wl->topk = o->topk;
    wl->dtype = o->dtype;
    wl->dsize = epx_dtype_size(o->dtype);
    wl->wire = o->wire;
    wl->seed = o->seed;
    wl->T = calloc((size_t)nranks, sizeof(*wl->T));
    wl->idx = calloc((size_t)nranks, sizeof(*wl->idx));
    wl->w = calloc((size_t)nranks, sizeof(*wl->w));
    wl->trace_x = calloc((size_t)nranks, sizeof(*wl->trace_x));
    wl->rows_sent = calloc((size_t)nranks, sizeof(*wl->rows_sent));
    wl->expert_rank = calloc((size_t)o->experts, sizeof(int));
    if (!wl->T || !wl->idx || !wl->w || !wl->trace_x || !wl->rows_sent ||
        !wl->expert_rank) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }

    if (o->trace_dir) {
        if (o->ntokens) {
            snprintf(err, errlen, "--tokens and --trace conflict: the trace "
                     "gives the tokens");
            goto fail;
        }
        if (o->drop > 0) {
            snprintf(err, errlen, "--drop and --trace conflict: the trace "
                     "gives the routing");
            goto fail;
        }
        if (bench_trace_load(o, wl, err, errlen) != 0)
            goto fail;
    } else if (generated_tokens(o, wl, err, errlen) != 0) {
        goto fail;
    }

    /* Contiguous placement, as documented for epx_moe_expert_rank. */
    const int64_t E = wl->experts, R = nranks;
    for (int64_t r = 0; r < R; r++)
        for (int64_t e = r * E / R; e < (r + 1) * E / R; e++)
            wl->expert_rank[e] = (int)r;

    const int K = wl->topk;
    for (int r = 0; r < nranks; r++) {
        if (wl->T[r] > wl->max_T)
            wl->max_T = wl->T[r];
        for (int64_t t = 0; t < wl->T[r]; t++) {
            /* distinct destination ranks of the token */
            int dst[EPX_MAX_TOPK], nd = 0;
            for (int k = 0; k < K; k++) {
                int32_t e = wl->idx[r][t * K + k];
                if (e < 0)
                    continue;
                int d = wl->expert_rank[e], seen = 0;
                for (int j = 0; j < nd; j++)
                    seen |= dst[j] == d;
                if (!seen)
                    dst[nd++] = d;
            }
            wl->rows_sent[r] += nd;
        }
    }
    if ((int64_t)wl->max_T > (int64_t)0x7fffffff) {
        snprintf(err, errlen, "too many tokens per rank");
        goto fail;
    }
    return 0;

fail:
    bench_workload_free(wl);
    return -1;
}
