/*
 * Reference dispatch/combine.  Deliberately naive: every rule of the
 * contract is one visible loop, nothing is cached or precomputed, so the
 * code can be checked against the text line by line.
 */
#include <stdlib.h>
#include <string.h>
#include "ref.h"
#include "ref_quant.h"

uint16_t ref_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    uint32_t hi = u >> 16, lo = u & 0xffffu;
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu))
        return (uint16_t)(hi | 0x0040u);            /* NaN stays NaN */
    /* Round to nearest; a tie goes to the even neighbour. */
    if (lo > 0x8000u || (lo == 0x8000u && (hi & 1u)))
        hi++;
    return (uint16_t)hi;
}

float ref_bf16_value(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

float ref_round(epx_dtype_t dtype, float f)
{
    return dtype == EPX_DTYPE_BF16 ? ref_bf16_value(ref_bf16(f)) : f;
}

static size_t esize(epx_dtype_t dtype)
{
    return dtype == EPX_DTYPE_BF16 ? 2 : dtype == EPX_DTYPE_FP64 ? 8 : 4;
}

float ref_load(epx_dtype_t dtype, const void *p, int64_t i)
{
    return (float)ref_load64(dtype, p, i);
}

double ref_load64(epx_dtype_t dtype, const void *p, int64_t i)
{
    if (dtype == EPX_DTYPE_BF16)
        return ref_bf16_value(((const uint16_t *)p)[i]);
    if (dtype == EPX_DTYPE_FP64)
        return ((const double *)p)[i];
    return ((const float *)p)[i];
}

void ref_store(epx_dtype_t dtype, void *p, int64_t i, float f)
{
    if (dtype == EPX_DTYPE_BF16)
        ((uint16_t *)p)[i] = ref_bf16(f);
    else if (dtype == EPX_DTYPE_FP64)
        ((double *)p)[i] = f;
    else
        ((float *)p)[i] = f;
}

int ref_first_expert(int nranks, int num_experts, int rank)
{
    return (int)(((int64_t)rank * num_experts) / nranks);
}

int ref_num_experts(int nranks, int num_experts, int rank)
{
    return ref_first_expert(nranks, num_experts, rank + 1) -
           ref_first_expert(nranks, num_experts, rank);
}

int ref_expert_owner(int nranks, int num_experts, int expert)
{
    for (int r = 0; r < nranks; r++)
        if (expert >= ref_first_expert(nranks, num_experts, r) &&
            expert < ref_first_expert(nranks, num_experts, r + 1))
            return r;
    return -1;
}

void ref_recv_free(ref_recv_t *r)
{
    if (!r)
        return;
    free(r->counts);
    free(r->offsets);
    free(r->src_rank);
    free(r->src_token);
    free(r->topk_idx);
    free(r->weights);
    free(r->row_expert);
    free(r->x);
    free(r->scales);
    free(r->gscale);
    memset(r, 0, sizeof(*r));
}

/* Is expert id e (from a topk_idx row) held by `rank`? */
static int held_by(const ref_cfg_t *c, int64_t e, int rank)
{
    return e >= 0 && e < c->num_experts &&
           ref_expert_owner(c->nranks, c->num_experts, (int)e) == rank;
}

static int64_t roundup(int64_t n, int64_t a)
{
    return (n + a - 1) / a * a;
}

static int alloc_rows(const ref_cfg_t *c, ref_recv_t *o)
{
    size_t n = (size_t)o->num_rows + 1, K = (size_t)c->topk;
    o->src_rank = calloc(n, sizeof(int32_t));
    o->src_token = calloc(n, sizeof(int32_t));
    ref_wire_t w;
    if (ref_wire_shape(c->wire, c->hidden, &w) == 0) {
        o->x_row = w.data_bytes;
        o->scale_row = w.scale_bytes;
        o->scales = calloc(n, w.scale_bytes);
        o->gscale = calloc(n, sizeof(float));
        if (!o->scales || !o->gscale)
            return -1;
    } else {
        o->x_row = (size_t)c->hidden * esize(c->dtype);
    }
    o->x = calloc(n, o->x_row);
    if (c->layout == EPX_LAYOUT_TOKEN_MAJOR) {
        o->topk_idx = calloc(n * K, sizeof(int32_t));
        o->weights = calloc(n * K, sizeof(float));
    } else {
        o->weights = calloc(n, sizeof(float));
        o->row_expert = calloc(n, sizeof(int32_t));
    }
    return o->src_rank && o->src_token && o->x && o->weights &&
                   (o->topk_idx || o->row_expert) ? 0 : -1;
}

static void copy_x(const ref_cfg_t *c, ref_recv_t *o, int64_t row,
                   const ref_tokens_t *s, int64_t t)
{
    size_t rb = (size_t)c->hidden * esize(c->dtype);
    const unsigned char *from = s->x;
    if (c->wire == EPX_WIRE_NATIVE) {
        memcpy(o->x + (size_t)row * rb, from + (size_t)t * rb, rb);
        return;
    }
    /* A quantized wire: the source row as the format defines it. */
    ref_quant_row_given(c->wire, (const uint16_t *)(from + (size_t)t * rb),
                        c->hidden, o->x + (size_t)row * o->x_row,
                        o->scales + (size_t)row * o->scale_row,
                        &o->gscale[row], s->gscale);
}

int ref_dispatch(const ref_cfg_t *c, const ref_tokens_t *src, int rank,
                 ref_recv_t *o)
{
    const int K = c->topk, R = c->nranks;
    memset(o, 0, sizeof(*o));
    o->first_local = ref_first_expert(R, c->num_experts, rank);
    o->num_local = ref_num_experts(R, c->num_experts, rank);
    o->counts = calloc((size_t)o->num_local + 1, sizeof(int64_t));
    if (!o->counts)
        return -1;

    /* Per local expert: how many tokens of all sources chose it. */
    for (int s = 0; s < R; s++)
        for (int64_t t = 0; t < src[s].T; t++)
            for (int k = 0; k < K; k++) {
                int64_t e = src[s].idx[t * K + k];
                if (held_by(c, e, rank))
                    o->counts[e - o->first_local]++;
            }

    if (c->layout == EPX_LAYOUT_TOKEN_MAJOR) {
        /* One row per source token with at least one expert here. */
        for (int s = 0; s < R; s++)
            for (int64_t t = 0; t < src[s].T; t++)
                for (int k = 0; k < K; k++)
                    if (held_by(c, src[s].idx[t * K + k], rank)) {
                        o->num_rows++;
                        break;
                    }
        if (alloc_rows(c, o))
            goto err;
        int64_t row = 0;
        for (int s = 0; s < R; s++)
            for (int64_t t = 0; t < src[s].T; t++) {
                int here = 0;
                for (int k = 0; k < K; k++)
                    here |= held_by(c, src[s].idx[t * K + k], rank);
                if (!here)
                    continue;
                o->src_rank[row] = s;
                o->src_token[row] = (int32_t)t;
                for (int k = 0; k < K; k++) {
                    int64_t e = src[s].idx[t * K + k];
                    int mine = held_by(c, e, rank);
                    o->topk_idx[row * K + k] =
                        mine ? (int32_t)(e - o->first_local) : -1;
                    o->weights[row * K + k] =
                        mine ? src[s].w[t * K + k] : 0.0f;
                }
                copy_x(c, o, row, &src[s], t);
                row++;
            }
        return 0;
    }

    /* Expert-major: segments padded to the alignment. */
    o->offsets = calloc((size_t)o->num_local + 1, sizeof(int64_t));
    if (!o->offsets)
        goto err;
    for (int j = 0; j + 1 < o->num_local; j++)
        o->offsets[j + 1] = roundup(o->offsets[j] + o->counts[j], c->align);
    if (o->num_local > 0)
        o->num_rows = roundup(o->offsets[o->num_local - 1] +
                              o->counts[o->num_local - 1], c->align);
    if (alloc_rows(c, o))
        goto err;
    for (int64_t i = 0; i < o->num_rows; i++) {
        o->src_rank[i] = -1;
        o->src_token[i] = -1;
        o->row_expert[i] = -1;
    }
    for (int j = 0; j < o->num_local; j++) {
        int64_t row = o->offsets[j];
        for (int s = 0; s < R; s++)
            for (int64_t t = 0; t < src[s].T; t++)
                for (int k = 0; k < K; k++)
                    if (src[s].idx[t * K + k] == o->first_local + j) {
                        o->src_rank[row] = s;
                        o->src_token[row] = (int32_t)t;
                        o->weights[row] = src[s].w[t * K + k];
                        o->row_expert[row] = j;
                        copy_x(c, o, row, &src[s], t);
                        row++;
                    }
    }
    return 0;

err:
    ref_recv_free(o);
    return -1;
}

int ref_dispatch_ll(const ref_cfg_t *c, const ref_tokens_t *src, int rank,
                    int cap, ref_recv_t *o, int64_t *dropped)
{
    const int K = c->topk, R = c->nranks;
    memset(o, 0, sizeof(*o));
    *dropped = 0;
    o->first_local = ref_first_expert(R, c->num_experts, rank);
    o->num_local = ref_num_experts(R, c->num_experts, rank);
    o->counts = calloc((size_t)o->num_local + 1, sizeof(int64_t));
    o->offsets = calloc((size_t)o->num_local + 1, sizeof(int64_t));
    o->num_rows = (int64_t)o->num_local * R * cap;
    if (!o->counts || !o->offsets || alloc_rows(c, o))
        goto err;
    for (int64_t i = 0; i < o->num_rows; i++)
        o->src_rank[i] = o->src_token[i] = o->row_expert[i] = -1;
    for (int j = 0; j < o->num_local; j++) {
        o->offsets[j] = (int64_t)j * R * cap;
        for (int s = 0; s < R; s++) {
            int64_t n = 0;   /* tokens of s that chose expert j so far */
            for (int64_t t = 0; t < src[s].T; t++)
                for (int k = 0; k < K; k++) {
                    if (src[s].idx[t * K + k] != o->first_local + j)
                        continue;
                    if (n >= cap) {
                        (*dropped)++;
                        continue;
                    }
                    int64_t row = ((int64_t)j * R + s) * cap + n++;
                    o->src_rank[row] = s;
                    o->src_token[row] = (int32_t)t;
                    o->weights[row] = src[s].w[t * K + k];
                    o->row_expert[row] = j;
                    copy_x(c, o, row, &src[s], t);
                    o->counts[j]++;
                }
        }
    }
    return 0;

err:
    ref_recv_free(o);
    return -1;
}

int64_t ref_ll_kept(const ref_cfg_t *c, const ref_tokens_t *mine, int cap,
                    int64_t *idx)
{
    const int K = c->topk;
    int64_t dropped = 0;
    for (int64_t i = 0; i < mine->T * K; i++)
        idx[i] = mine->idx[i];
    /* Expert by expert: its first cap choices, in token order, stay. */
    for (int e = 0; e < c->num_experts; e++) {
        int64_t n = 0;
        for (int64_t t = 0; t < mine->T; t++)
            for (int k = 0; k < K; k++)
                if (mine->idx[t * K + k] == e && n++ >= cap) {
                    idx[t * K + k] = -1;
                    dropped++;
                }
    }
    return dropped;
}

int ref_combine(const ref_cfg_t *c, int rank, const ref_tokens_t *mine,
                int unweighted, ref_y_fn y, void *ctx, epx_dtype_t out_dtype,
                void *out)
{
    const int K = c->topk, H = c->hidden, R = c->nranks;
    float *acc = malloc(sizeof(float) * (size_t)H);
    float *partial = malloc(sizeof(float) * (size_t)H);
    float *row = malloc(sizeof(float) * (size_t)H);
    if (!acc || !partial || !row) {
        free(acc);
        free(partial);
        free(row);
        return -1;
    }
    for (int64_t t = 0; t < mine->T; t++) {
        for (int h = 0; h < H; h++)
            acc[h] = 0.0f;
        /* Destination ranks in ascending order. */
        for (int r = 0; r < R; r++) {
            int any = 0;
            for (int h = 0; h < H; h++)
                partial[h] = 0.0f;
            for (int k = 0; k < K; k++) {
                int64_t e = mine->idx[t * K + k];
                if (!held_by(c, e, r))
                    continue;
                any = 1;
                if (c->layout == EPX_LAYOUT_TOKEN_MAJOR)
                    break;   /* the rank's row already holds its partial */
                float w = mine->w[t * K + k];
                y(ctx, rank, t, (int)e, row);
                for (int h = 0; h < H; h++) {
                    float term = unweighted ? row[h] : w * row[h];
                    partial[h] = partial[h] + term;
                }
            }
            if (!any)
                continue;
            if (c->layout == EPX_LAYOUT_TOKEN_MAJOR) {
                y(ctx, rank, t, r, row);
                for (int h = 0; h < H; h++)
                    acc[h] = acc[h] + row[h];
            } else {
                for (int h = 0; h < H; h++)
                    acc[h] = acc[h] + ref_round(c->dtype, partial[h]);
            }
        }
        for (int h = 0; h < H; h++)
            ref_store(out_dtype, out, t * H + h, acc[h]);
    }
    free(acc);
    free(partial);
    free(row);
    return 0;
}


/* The FP64 contract: the same sums as ref_combine, every term and sum in
 * double, the weight widened from fp32, partials not rounded for the wire,
 * and the output the double sum. */
int ref_combine_f64(const ref_cfg_t *c, int rank, const ref_tokens_t *mine,
                    int unweighted, ref_y64_fn y, void *ctx, double *out)
{
    const int K = c->topk, H = c->hidden, R = c->nranks;
    double *partial = malloc(sizeof(double) * (size_t)H);
    double *row = malloc(sizeof(double) * (size_t)H);
    if (!partial || !row) {
        free(partial);
        free(row);
        return -1;
    }
    for (int64_t t = 0; t < mine->T; t++) {
        double *acc = out + t * H;
        for (int h = 0; h < H; h++)
            acc[h] = 0.0;
        /* Destination ranks in ascending order. */
        for (int r = 0; r < R; r++) {
            int any = 0;
            for (int h = 0; h < H; h++)
                partial[h] = 0.0;
            for (int k = 0; k < K; k++) {
                int64_t e = mine->idx[t * K + k];
                if (!held_by(c, e, r))
                    continue;
                any = 1;
                if (c->layout == EPX_LAYOUT_TOKEN_MAJOR)
                    break;   /* the rank's row already holds its partial */
                double w = (double)mine->w[t * K + k];
                y(ctx, rank, t, (int)e, row);
                for (int h = 0; h < H; h++) {
                    double term = unweighted ? row[h] : w * row[h];
                    partial[h] = partial[h] + term;
                }
            }
            if (!any)
                continue;
            if (c->layout == EPX_LAYOUT_TOKEN_MAJOR) {
                y(ctx, rank, t, r, row);
                for (int h = 0; h < H; h++)
                    acc[h] = acc[h] + row[h];
            } else {
                for (int h = 0; h < H; h++)
                    acc[h] = acc[h] + partial[h];
            }
        }
    }
    free(partial);
    free(row);
    return 0;
}
