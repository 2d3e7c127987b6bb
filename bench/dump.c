/*
 * --dump DIR: per rank, the inputs actually sent, the routing (so the dump
 * replays with --trace), the combined output and the per-expert receive
 * counts (low latency also per (expert, source): recv_counts_per_source),
 * as .npy files under DIR/rank<r>/.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "bench.h"
#include "util/util.h"

static int make_dir(const char *path, char *err, size_t errlen)
{
    if (mkdir(path, 0777) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* [T,H] engine-dtype rows as float32. */
static float *rows_f32(const bench_workload_t *wl, const void *src, int64_t T)
{
    const size_t n = (size_t)T * (size_t)wl->hidden;
    float *f = malloc((n > 0 ? n : 1) * sizeof(float));
    if (!f)
        return NULL;
    for (size_t i = 0; i < n; i++)
        f[i] = wl->dtype == EPX_DTYPE_BF16
            ? epx__bf16_to_f32(((const uint16_t *)src)[i])
            : ((const float *)src)[i];
    return f;
}

int bench_dump_rank(const bench_ctx_t *ctx, const void *out,
                    const int64_t *recv_counts, int nlocal,
                    const int64_t *src_counts, char *err, size_t errlen)
{
    const bench_workload_t *wl = ctx->wl;
    const int r = ctx->rank;
    const int64_t T = wl->T[r], K = wl->topk;
    char dir[4096], path[4200];
    snprintf(dir, sizeof(dir), "%s/rank%d", ctx->o->dump_dir, r);
    if (make_dir(ctx->o->dump_dir, err, errlen) || make_dir(dir, err, errlen))
        return -1;

    int rc = -1;
    float *fx = rows_f32(wl, ctx->x, T), *fo = rows_f32(wl, out, T);
    void *idx = malloc((size_t)(T * K + 1) * 8);
    if (!fx || !fo || !idx) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    for (int64_t i = 0; i < T * K; i++) {
        if (wl->idx64)
            ((int64_t *)idx)[i] = wl->idx[r][i];
        else
            ((int32_t *)idx)[i] = wl->idx[r][i];
    }
    const int64_t sx[2] = { T, wl->hidden }, sk[2] = { T, K },
                  sc[1] = { nlocal };
    snprintf(path, sizeof(path), "%s/x.npy", dir);
    if (bench_npy_write(path, BENCH_NPY_F4, 2, sx, fx, err, errlen))
        goto out;
    snprintf(path, sizeof(path), "%s/topk_idx.npy", dir);
    if (bench_npy_write(path, wl->idx64 ? BENCH_NPY_I8 : BENCH_NPY_I4, 2, sk,
                        idx, err, errlen))
        goto out;
    snprintf(path, sizeof(path), "%s/topk_weights.npy", dir);
    if (bench_npy_write(path, BENCH_NPY_F4, 2, sk, wl->w[r], err, errlen))
        goto out;
    snprintf(path, sizeof(path), "%s/out.npy", dir);
    if (bench_npy_write(path, BENCH_NPY_F4, 2, sx, fo, err, errlen))
        goto out;
    snprintf(path, sizeof(path), "%s/recv_counts.npy", dir);
    if (bench_npy_write(path, BENCH_NPY_I8, 1, sc, recv_counts, err, errlen))
        goto out;
    const int64_t ss[2] = { nlocal, ctx->nranks };
    snprintf(path, sizeof(path), "%s/recv_counts_per_source.npy", dir);
    if (src_counts &&
        bench_npy_write(path, BENCH_NPY_I8, 2, ss, src_counts, err, errlen))
        goto out;
    rc = 0;
out:
    free(fx);
    free(fo);
    free(idx);
    return rc;
}

int bench_dump_recv(const bench_ctx_t *ctx, const epx_recv_t *recv, char *err,
                    size_t errlen)
{
    const bench_workload_t *wl = ctx->wl;
    char dir[4096], path[4200];
    bench_wire_t w;
    bench_wire_shape(wl->wire, wl->hidden, wl->dsize, &w);
    snprintf(dir, sizeof(dir), "%s/rank%d", ctx->o->dump_dir, ctx->rank);
    if (make_dir(ctx->o->dump_dir, err, errlen) || make_dir(dir, err, errlen))
        return -1;
    const int64_t n = recv->num_rows;
    const int64_t sx[2] = { n, (int64_t)w.data_bytes },
                  ss[2] = { n, w.nblocks }, sg[1] = { n };
    snprintf(path, sizeof(path), "%s/recv_x.npy", dir);
    if (bench_npy_write(path, BENCH_NPY_U1, 2, sx, recv->x.data, err, errlen))
        return -1;
    snprintf(path, sizeof(path), "%s/recv_scales.npy", dir);
    if (bench_npy_write(path, wl->wire == EPX_WIRE_FP8 ? BENCH_NPY_F4
                                                       : BENCH_NPY_U1,
                        2, ss, recv->x_scales.data, err, errlen))
        return -1;
    if (!recv->x_global_scale)
        return 0;
    snprintf(path, sizeof(path), "%s/recv_global_scale.npy", dir);
    return bench_npy_write(path, BENCH_NPY_F4, 1, sg, recv->x_global_scale,
                           err, errlen);
}
