/*
 * The combine reduction of the host executor, one for every path (flat
 * push and pull, low latency, hierarchical): an expert rank's partial of
 * a token (its rows in top-k order, rounded to the engine dtype for the
 * wire), and a token's sum over its destination ranks in ascending order,
 * rounded once — whole here, or continued from an accumulator (the
 * hierarchical chain passes it from domain to domain).  The terms, their
 * order and roundings are the protocol core's (src/proto/proto.h, "the
 * reduction in rows"), whose element form the CUDA kernels run; this file
 * only says where each term's row lies.  FP64 engines sum in double and
 * their sum is the output.
 */
#include <string.h>

#include "util/util.h"
#include "moe/moe.h"

/* Columns per pass: the fp32 accumulators stay in L1 while the rows
 * stream through once. */
#define COMB_CHUNK 2048

/* Terms [0, nd) of a token's sum over columns [c0, c0 + n) into acc
 * (first: the sum starts here).  A pushed partial or a token-major row is
 * a term as it is; a peer's expert-major entry is reduced here into the
 * partial it would have pushed, rounded as the wire would. */
static inline void reduce_terms(const epx_moe_t *m, const comb_src_t *src,
                                int nd, int first, int c0, int n, float *acc)
{
    const int es = (int)m->esize;
    float part[COMB_CHUNK];
    for (int j = 0; j < nd; j++) {
        const comb_src_t *c = &src[j];
        if (!c->ent) {
            proto_sum_row(acc, c->row + (size_t)c0 * m->esize, es, NULL,
                          first && j == 0, n);
            continue;
        }
        proto_partial_row(&m->g, c->row, c->ent + 3, c->ent[2], c->w, c0, n,
                          part);
        proto_sum_wire_row(acc, part, es, first && j == 0, n);
    }
}

static inline void reduce_terms_f64(const epx_moe_t *m, const comb_src_t *src,
                                    int nd, int first, int c0, int n,
                                    double *acc)
{
    double part[COMB_CHUNK];
    for (int j = 0; j < nd; j++) {
        const comb_src_t *c = &src[j];
        if (!c->ent) {
            proto_sum_row_f64(acc, (const double *)c->row + c0, NULL,
                              first && j == 0, n);
            continue;
        }
        proto_partial_row_f64(&m->g, c->row, c->ent + 3, c->ent[2], c->w, c0,
                              n, part);
        proto_sum_row_f64(acc, part, NULL, first && j == 0, n);
    }
}

/* The partial goes out in the engine dtype: the wire's rounding. */
EPX_CLONES
void moe_reduce_partial(const epx_moe_t *m, const char *rows,
                        const int32_t *ent, const float *w, void *dst)
{
    for (int c0 = 0; c0 < m->H; c0 += COMB_CHUNK) {
        int n = m->H - c0 < COMB_CHUNK ? m->H - c0 : COMB_CHUNK;
        if (m->p.dtype == EPX_DTYPE_FP64) {
            proto_partial_row_f64(&m->g, rows, ent + 3, ent[2], w, c0, n,
                                  (double *)dst + c0);
            continue;
        }
        float part[COMB_CHUNK];
        proto_partial_row(&m->g, rows, ent + 3, ent[2], w, c0, n, part);
        proto_store_row((char *)dst + (size_t)c0 * m->esize, part,
                        (int)m->esize, n);
    }
}

/* A token's whole sum (comb_src_t, moe.h: one per destination, ascending),
 * rounded once to out_dt; 0 when it went nowhere. */
EPX_CLONES
void moe_reduce_token(const epx_moe_t *m, const comb_src_t *src, int nd,
                      char *out, epx_dtype_t out_dt)
{
    const size_t oes = epx_dtype_size(out_dt);
    for (int c0 = 0; c0 < m->H; c0 += COMB_CHUNK) {
        int n = m->H - c0 < COMB_CHUNK ? m->H - c0 : COMB_CHUNK;
        if (m->p.dtype == EPX_DTYPE_FP64) {   /* out is FP64 too */
            double acc[COMB_CHUNK];
            if (nd == 0)
                memset(acc, 0, sizeof(double) * (size_t)n);
            reduce_terms_f64(m, src, nd, 1, c0, n, acc);
            memcpy((double *)out + c0, acc, sizeof(double) * (size_t)n);
            continue;
        }
        float acc[COMB_CHUNK];
        if (nd == 0)
            memset(acc, 0, sizeof(float) * (size_t)n);
        reduce_terms(m, src, nd, 1, c0, n, acc);
        proto_store_row(out + (size_t)c0 * oes, acc, (int)oes, n);
    }
}

/* Terms of a token's sum added to acc ([H] fp32, or fp64 for an FP64
 * engine), which they start when `first`: a stretch of the sum, the rest
 * before or after it elsewhere (moe_reduce_out rounds it). */
EPX_CLONES
void moe_reduce_add(const epx_moe_t *m, const comb_src_t *src, int nd,
                    int first, void *acc)
{
    for (int c0 = 0; c0 < m->H; c0 += COMB_CHUNK) {
        int n = m->H - c0 < COMB_CHUNK ? m->H - c0 : COMB_CHUNK;
        if (m->p.dtype == EPX_DTYPE_FP64)
            reduce_terms_f64(m, src, nd, first, c0, n, (double *)acc + c0);
        else
            reduce_terms(m, src, nd, first, c0, n, (float *)acc + c0);
    }
}

/* A sum moe_reduce_add finished, rounded once to out_dt (FP64: as it is);
 * 0 for a token that went nowhere (acc unused). */
void moe_reduce_out(const epx_moe_t *m, const void *acc, int nd, char *out,
                    epx_dtype_t out_dt)
{
    const size_t orow = epx_dtype_size(out_dt) * (size_t)m->H;
    if (nd == 0)
        memset(out, 0, orow);
    else if (m->p.dtype == EPX_DTYPE_FP64)
        memcpy(out, acc, orow);
    else
        proto_store_row(out, acc, (int)epx_dtype_size(out_dt), m->H);
}
