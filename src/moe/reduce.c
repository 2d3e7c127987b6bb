/*
 * The combine reduction's two steps (reduce.h has the arithmetic): an
 * expert rank's partial of a token (its rows in top-k order), and a
 * token's sum over its destination ranks in ascending order.
 */
#include "moe/moe.h"
#include "moe/reduce.h"

/* One token's partial on this rank: its local rows in top-k order. */
static inline void reduce_entry_f64(const epx_moe_t *m, const char *rows,
                                    const int32_t *ent, const float *w, int c0,
                                    int n, double *part)
{
    for (int k = 0; k < ent[2]; k++) {
        int32_t r = ent[3 + k];
        moe_accum_f64(part, (const double *)(rows + (size_t)r * m->row_bytes) +
                      c0, w ? &w[r] : NULL, k == 0, n);
    }
}

static inline void reduce_entry(const epx_moe_t *m, const char *rows,
                                const int32_t *ent, const float *w, int c0,
                                int n, float *part)
{
    for (int k = 0; k < ent[2]; k++) {
        int32_t r = ent[3 + k];
        moe_accum(part, rows + (size_t)r * m->row_bytes + (size_t)c0 * m->esize,
              m->p.dtype, w ? &w[r] : NULL, k == 0, n);
    }
}

static void reduce_partial_f64(const epx_moe_t *m, const char *rows,
                               const int32_t *ent, const float *w, void *dst)
{
    double part[COMB_CHUNK];
    for (int c0 = 0; c0 < m->H; c0 += COMB_CHUNK) {
        int n = m->H - c0 < COMB_CHUNK ? m->H - c0 : COMB_CHUNK;
        reduce_entry_f64(m, rows, ent, w, c0, n, part);
        memcpy((double *)dst + c0, part, sizeof(double) * (size_t)n);
    }
}

/* The partial goes out in the engine dtype: the wire's rounding. */
EPX_CLONES
void moe_reduce_partial(const epx_moe_t *m, const char *rows,
                        const int32_t *ent, const float *w, void *dst)
{
    if (m->p.dtype == EPX_DTYPE_FP64) {
        reduce_partial_f64(m, rows, ent, w, dst);
        return;
    }
    float part[COMB_CHUNK];
    for (int c0 = 0; c0 < m->H; c0 += COMB_CHUNK) {
        int n = m->H - c0 < COMB_CHUNK ? m->H - c0 : COMB_CHUNK;
        reduce_entry(m, rows, ent, w, c0, n, part);
        moe_store((char *)dst + (size_t)c0 * m->esize, part, m->p.dtype, n);
    }
}

/* Where one destination rank's contribution to a token comes from
 * (comb_src_t, moe.h): one row (pushed partial, or a token-major row in
 * place), or a peer's entry listing its expert-major rows (in place) to
 * reduce here. */
static void reduce_token_f64(const epx_moe_t *m, const comb_src_t *src,
                             int nd, double *out)
{
    double acc[COMB_CHUNK], part[COMB_CHUNK];
    for (int c0 = 0; c0 < m->H; c0 += COMB_CHUNK) {
        int n = m->H - c0 < COMB_CHUNK ? m->H - c0 : COMB_CHUNK;
        if (nd == 0)
            memset(acc, 0, sizeof(double) * (size_t)n);
        for (int j = 0; j < nd; j++) {
            const comb_src_t *c = &src[j];
            if (!c->ent) {
                moe_accum_f64(acc, (const double *)c->row + c0, NULL, j == 0, n);
                continue;
            }
            reduce_entry_f64(m, c->row, c->ent, c->w, c0, n, part);
            moe_accum_f64(acc, part, NULL, j == 0, n);
        }
        memcpy(out + c0, acc, sizeof(double) * (size_t)n);
    }
}

EPX_CLONES
void moe_reduce_token(const epx_moe_t *m, const comb_src_t *src, int nd,
                         char *out, epx_dtype_t out_dt)
{
    const epx_dtype_t dt = m->p.dtype;
    if (dt == EPX_DTYPE_FP64) {   /* out is FP64 too (moe_check_out) */
        reduce_token_f64(m, src, nd, (double *)out);
        return;
    }
    const size_t es = m->esize, oes = epx_dtype_size(out_dt);
    float acc[COMB_CHUNK], part[COMB_CHUNK];
    for (int c0 = 0; c0 < m->H; c0 += COMB_CHUNK) {
        int n = m->H - c0 < COMB_CHUNK ? m->H - c0 : COMB_CHUNK;
        if (nd == 0)
            memset(acc, 0, sizeof(float) * (size_t)n);
        for (int j = 0; j < nd; j++) {
            const comb_src_t *c = &src[j];
            if (!c->ent) {
                moe_accum(acc, c->row + (size_t)c0 * es, dt, NULL, j == 0, n);
                continue;
            }
            reduce_entry(m, c->row, c->ent, c->w, c0, n, part);
            moe_accum_wire(acc, part, dt, j == 0, n);
        }
        moe_store(out + (size_t)c0 * oes, acc, out_dt, n);
    }
}

