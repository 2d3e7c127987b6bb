/*
 * The "mpi" baseline: the same MoE exchange written the way an engine
 * would with plain MPI.
 *   dispatch: pack each token once per destination rank (with its source
 *     index and, per top-k slot, the local expert id there or -1 and the
 *     weight), MPI_Alltoall of the row counts, MPI_Alltoallv of the rows and
 *     of the metadata, unpack the metadata;
 *   combine: each destination sends back one row per token, its local
 *     experts' outputs already weighted and summed (as in epx's token-major
 *     layout); MPI_Alltoallv of those rows, then the source sums them in
 *     ascending rank order in fp32 and rounds once.
 * The expert compute in between is the bench's token-major one, not timed.
 */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include "bench.h"
#include "util/util.h"
#include "rowops.h"

typedef struct mpi_bufs {
    int *scount, *sdispl, *rcount, *rdispl, *cursor;   /* [N], in rows */
    int32_t *dst;       /* [T*K] destination ranks of each token, ascending */
    int *ndst;          /* [T] */
    char *sx, *smeta;   /* packed rows and metadata, [rows_sent] */
    char *rx, *rmeta;   /* received, [N * max_T] */
    int32_t *src_rank, *src_token, *idx;   /* unpacked */
    float *w;
    int64_t *counts;    /* [num_local] tokens per local expert */
    char *y;            /* expert outputs, received order */
    char *back;         /* rows coming back, packed order */
    void *out;          /* [T, H] */
    float *acc;         /* [H] */
} mpi_bufs_t;

static void bufs_free(mpi_bufs_t *b)
{
    void *p[] = { b->scount, b->sdispl, b->rcount, b->rdispl, b->cursor,
                  b->dst, b->ndst, b->sx, b->smeta, b->rx, b->rmeta,
                  b->src_rank, b->src_token, b->idx, b->w, b->counts, b->y,
                  b->back, b->out, b->acc };
    for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
        free(p[i]);
}

static int bufs_init(const bench_ctx_t *ctx, mpi_bufs_t *b, size_t metab)
{
    const bench_workload_t *wl = ctx->wl;
    const size_t N = (size_t)ctx->nranks, K = (size_t)wl->topk;
    const size_t rowb = (size_t)wl->hidden * wl->dsize;
    const size_t T = (size_t)wl->T[ctx->rank] + 1;
    const size_t sent = (size_t)wl->rows_sent[ctx->rank] + 1;
    /* A receiver cannot know its row count in advance: room for every
     * token of every rank (pages are only committed when written). */
    const size_t rmax = N * (size_t)wl->max_T + 1;
    memset(b, 0, sizeof(*b));
    b->scount = calloc(N, sizeof(int));
    b->sdispl = calloc(N, sizeof(int));
    b->rcount = calloc(N, sizeof(int));
    b->rdispl = calloc(N, sizeof(int));
    b->cursor = calloc(N, sizeof(int));
    b->dst = malloc(T * K * sizeof(int32_t));
    b->ndst = malloc(T * sizeof(int));
    b->sx = malloc(sent * rowb);
    b->smeta = malloc(sent * metab);
    b->rx = malloc(rmax * rowb);
    b->rmeta = malloc(rmax * metab);
    b->src_rank = malloc(rmax * sizeof(int32_t));
    b->src_token = malloc(rmax * sizeof(int32_t));
    b->idx = malloc(rmax * K * sizeof(int32_t));
    b->w = malloc(rmax * K * sizeof(float));
    b->counts = calloc((size_t)ctx->num_local + 1, sizeof(int64_t));
    b->y = malloc(rmax * rowb);
    b->back = malloc(sent * rowb);
    b->out = malloc(T * rowb);
    b->acc = malloc((size_t)wl->hidden * sizeof(float));
    return b->scount && b->sdispl && b->rcount && b->rdispl && b->cursor &&
           b->dst && b->ndst && b->sx && b->smeta && b->rx && b->rmeta &&
           b->src_rank && b->src_token && b->idx && b->w && b->counts &&
           b->y && b->back && b->out && b->acc ? 0 : -1;
}

static int mpi_fail(const bench_ctx_t *ctx, const char *call, int err)
{
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, s, &len);
    fprintf(stderr, "epx-bench: rank %d: %s: %s\n", ctx->rank, call, s);
    ctx->res->failed = 1;
    return -1;
}

/* Timed dispatch; returns the number of rows received or -1. */
static int64_t mpi_dispatch(const bench_ctx_t *ctx, mpi_bufs_t *b,
                            MPI_Datatype rowt, MPI_Datatype metat,
                            size_t metab)
{
    const bench_workload_t *wl = ctx->wl;
    const int N = ctx->nranks, K = wl->topk, me = ctx->rank;
    const int64_t T = wl->T[me], E = wl->experts;
    const size_t rowb = (size_t)wl->hidden * wl->dsize;
    const int32_t *idx = wl->idx[me];
    const float *w = wl->w[me];

    memset(b->scount, 0, (size_t)N * sizeof(int));
    for (int64_t t = 0; t < T; t++) {
        int32_t *d = b->dst + t * K;
        int n = 0;
        for (int k = 0; k < K; k++) {
            if (idx[t * K + k] < 0)
                continue;
            int r = wl->expert_rank[idx[t * K + k]], j = n;
            int dup = 0;
            for (int i = 0; i < n; i++)
                dup |= d[i] == r;
            if (dup)
                continue;
            while (j > 0 && d[j - 1] > r) {   /* keep ascending */
                d[j] = d[j - 1];
                j--;
            }
            d[j] = r;
            n++;
            b->scount[r]++;
        }
        b->ndst[t] = n;
    }
    for (int r = 0, off = 0; r < N; r++) {
        b->sdispl[r] = b->cursor[r] = off;
        off += b->scount[r];
    }
    for (int64_t t = 0; t < T; t++)
        for (int i = 0; i < b->ndst[t]; i++) {
            const int r = b->dst[t * K + i];
            const int32_t first = (int32_t)(r * E / N);
            const int pos = b->cursor[r]++;
            memcpy(b->sx + (size_t)pos * rowb,
                   (const char *)ctx->x + (size_t)t * rowb, rowb);
            char *m = b->smeta + (size_t)pos * metab;
            int32_t st = (int32_t)t;
            memcpy(m, &st, 4);
            for (int k = 0; k < K; k++) {
                int32_t e = idx[t * K + k];
                int32_t l = e >= 0 && wl->expert_rank[e] == r ? e - first : -1;
                memcpy(m + 4 + 4 * (size_t)k, &l, 4);
            }
            memcpy(m + 4 + 4 * (size_t)K, w + t * K, 4 * (size_t)K);
        }

    int err = MPI_Alltoall(b->scount, 1, MPI_INT, b->rcount, 1, MPI_INT,
                           MPI_COMM_WORLD);
    if (err != MPI_SUCCESS)
        return mpi_fail(ctx, "MPI_Alltoall", err);
    int64_t nrecv = 0;
    for (int r = 0; r < N; r++) {
        b->rdispl[r] = (int)nrecv;
        nrecv += b->rcount[r];
    }
    err = MPI_Alltoallv(b->sx, b->scount, b->sdispl, rowt, b->rx, b->rcount,
                        b->rdispl, rowt, MPI_COMM_WORLD);
    if (err == MPI_SUCCESS)
        err = MPI_Alltoallv(b->smeta, b->scount, b->sdispl, metat, b->rmeta,
                            b->rcount, b->rdispl, metat, MPI_COMM_WORLD);
    if (err != MPI_SUCCESS)
        return mpi_fail(ctx, "MPI_Alltoallv", err);
    for (int r = 0; r < N; r++)
        for (int64_t i = b->rdispl[r]; i < b->rdispl[r] + b->rcount[r]; i++) {
            const char *m = b->rmeta + (size_t)i * metab;
            b->src_rank[i] = r;
            memcpy(&b->src_token[i], m, 4);
            memcpy(b->idx + i * K, m + 4, 4 * (size_t)K);
            memcpy(b->w + i * K, m + 4 + 4 * (size_t)K, 4 * (size_t)K);
        }
    return nrecv;
}

/* Timed combine: results back, then the reduction at the source. */
static int mpi_combine(const bench_ctx_t *ctx, mpi_bufs_t *b,
                       MPI_Datatype rowt)
{
    const bench_workload_t *wl = ctx->wl;
    const int N = ctx->nranks, K = wl->topk, H = wl->hidden;
    const int64_t T = wl->T[ctx->rank];
    const size_t rowb = (size_t)H * wl->dsize;
    int err = MPI_Alltoallv(b->y, b->rcount, b->rdispl, rowt, b->back,
                            b->scount, b->sdispl, rowt, MPI_COMM_WORLD);
    if (err != MPI_SUCCESS)
        return mpi_fail(ctx, "MPI_Alltoallv", err);
    for (int r = 0; r < N; r++)
        b->cursor[r] = b->sdispl[r];
    for (int64_t t = 0; t < T; t++) {
        memset(b->acc, 0, (size_t)H * sizeof(float));
        for (int i = 0; i < b->ndst[t]; i++)
            bench_row_add(b->acc, b->back +
                          (size_t)b->cursor[b->dst[t * K + i]]++ * rowb,
                          wl->dtype, H);
        bench_row_store((char *)b->out + (size_t)t * rowb, b->acc, wl->dtype,
                        H);
    }
    return 0;
}

int bench_run_mpi(bench_ctx_t *ctx)
{
    const bench_opts_t *o = ctx->o;
    const bench_workload_t *wl = ctx->wl;
    const int K = wl->topk, total = o->warmup + o->iters;
    const size_t metab = 4 * (1 + 2 * (size_t)K);
    bench_check_t chk = { 0, 0, ctx->res->msg[BENCH_IMPL_MPI],
                          BENCH_MSG_LEN };
    MPI_Datatype rowt = MPI_DATATYPE_NULL, metat = MPI_DATATYPE_NULL;
    mpi_bufs_t b;
    int rc = -1;

    if (bufs_init(ctx, &b, metab) != 0) {
        fprintf(stderr, "epx-bench: rank %d: out of memory for the mpi "
                "baseline\n", ctx->rank);
        goto out;
    }
    MPI_Type_contiguous(wl->hidden, wl->dtype == EPX_DTYPE_BF16
                                    ? MPI_UINT16_T : MPI_FLOAT, &rowt);
    MPI_Type_commit(&rowt);
    MPI_Type_contiguous((int)metab, MPI_BYTE, &metat);
    MPI_Type_commit(&metat);

    bench_progress(ctx, "mpi: %d warm-up + %d timed iterations", o->warmup,
                   o->iters);
    double start = epx__now();
    for (int it = 0; it < total; it++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = epx__now();
        int64_t nrecv = mpi_dispatch(ctx, &b, rowt, metat, metab);
        if (nrecv < 0)
            goto out;
        double t1 = epx__now();

        /* The receive described as epx would, for the shared checks and
         * the shared expert compute. */
        memset(b.counts, 0, (size_t)ctx->num_local * sizeof(int64_t));
        for (int64_t i = 0; i < nrecv * K; i++)
            if (b.idx[i] >= 0 && b.idx[i] < ctx->num_local)
                b.counts[b.idx[i]]++;
        epx_recv_t recv = {
            .struct_size = sizeof(epx_recv_t),
            .num_rows = nrecv,
            .x = { b.rx, wl->dtype, nrecv, wl->hidden },
            .num_local_experts = ctx->num_local,
            .first_local_expert = ctx->first_local,
            .expert_counts = b.counts,
            .expert_offsets = NULL,
            .src_rank = b.src_rank,
            .src_token = b.src_token,
            .topk_idx = b.idx,
            .topk_weights = b.w,
        };
        if (bench_verify_iter(ctx, it))
            bench_verify_recv(ctx, &recv, EPX_LAYOUT_TOKEN_MAJOR, "mpi", &chk);
        bench_expert_compute(ctx, &recv, EPX_LAYOUT_TOKEN_MAJOR, b.y, b.acc);

        MPI_Barrier(MPI_COMM_WORLD);
        double t2 = epx__now();
        if (mpi_combine(ctx, &b, rowt) != 0)
            goto out;
        double t3 = epx__now();
        if (bench_verify_iter(ctx, it))
            bench_verify_out(ctx, b.out, "mpi", &chk);

        if (it >= o->warmup) {
            int i = it - o->warmup;
            bench_result_times(ctx->res, o->iters, BENCH_IMPL_MPI,
                               BENCH_PHASE_DISPATCH)[i] = t1 - t0;
            bench_result_times(ctx->res, o->iters, BENCH_IMPL_MPI,
                               BENCH_PHASE_COMBINE)[i] = t3 - t2;
        }
    }
    ctx->res->checked[BENCH_IMPL_MPI] = chk.checked;
    ctx->res->mismatches[BENCH_IMPL_MPI] = chk.mismatches;
    bench_progress(ctx, "mpi: done in %.1f s%s", epx__now() - start,
                   chk.mismatches ? " (MISMATCHES on rank 0)" : "");
    rc = 0;
out:
    if (rowt != MPI_DATATYPE_NULL)
        MPI_Type_free(&rowt);
    if (metat != MPI_DATATYPE_NULL)
        MPI_Type_free(&metat);
    bufs_free(&b);
    return rc;
}
