/*
 * Throughput-mode combine on the host executor.
 *
 *   send: for every token this rank received, reduce its local rows in
 *         top-k order in fp32 (weighted unless UNWEIGHTED; token-major rows
 *         are already the rank's partial), round to the engine dtype and put
 *         the partial into the source's window at the slot dispatch chose;
 *         then a status word and a signal to every rank.
 *   recv: wait for the R signals and sum each token's partials in
 *         ascending rank order in fp32, rounding once.
 * In-place outputs (y is the received x buffer, in the window) on a
 * transport that maps every peer: the expert rank sends nothing, and the
 * source computes the same partials itself straight from the peer's window
 * (one pass over the data instead of two).  Same arithmetic, same order,
 * so the result is bitwise the same as the pushed path.
 */
#include <stdlib.h>
#include <string.h>

#include "util/util.h"
#include "moe/ll.h"
#include "moe/hier.h"

/* Status word and signal to every rank for the combine phase. */
static epx_status_t signal_comb(epx_moe_t *m, int32_t mine)
{
    epx_status_t st = EPX_OK;
    size_t off = moe_status_off(m, MOE_ST_COMB, m->n_comb, m->rank);
    for (int d = 0; d < m->R && st == EPX_OK; d++) {
        m->put_combine += sizeof(int32_t);
        st = epx__win_put_signal(m->win, d, off, &mine, sizeof(int32_t),
                                 MOE_SIG_COMB, 1);
    }
    return st;
}

static epx_status_t send_partials(epx_moe_t *m, epx_handle_t *h,
                                  const epx_combine_args_t *a, unsigned flags)
{
    const int tm = m->p.layout == EPX_LAYOUT_TOKEN_MAJOR;
    const char *y = a->y.data;
    const float *wt = (flags & EPX_COMBINE_UNWEIGHTED)
        ? NULL : (const float *)moe_local(m, m->g.off_w);
    const int32_t *ents = (const int32_t *)moe_local(m, m->g.off_entries);
    epx_status_t st = EPX_OK;
    for (int64_t i = 0; i < h->nent && st == EPX_OK; i++) {
        const int32_t *ent = ents + i * m->g.ent_ints;
        size_t dst = m->g.off_comb + (size_t)ent[1] * m->row_bytes;
        if (tm) {
            st = moe_put(m, &m->put_combine, ent[0], dst,
                         y + (size_t)i * m->row_bytes, m->row_bytes);
            continue;
        }
        moe_reduce_partial(m, y, ent, wt, m->wire);
        st = moe_put(m, &m->put_combine, ent[0], dst, m->wire, m->row_bytes);
    }
    return st;
}

/* A quantized x is narrower than y: the received buffers cannot hold the
 * outputs, and writing them there would overrun the scales. */
epx_status_t moe_check_y_apart(const epx_moe_t *m, const epx_tensor_t *y)
{
    const char *win = moe_local(m, 0), *y0 = y->data;
    size_t ybytes = (size_t)y->rows * m->row_bytes;
    if (moe_wire_quantized(&m->fmt) && ybytes && y0 < win + m->win_bytes &&
        y0 + ybytes > win)
        return epx__error(EPX_ERR_INVALID,
                          "combine: y lies in the engine's receive buffers; "
                          "with wire format %s, x is received quantized and "
                          "y (bf16) needs a buffer of its own",
                          moe_wire_name(m->fmt.wire));
    return EPX_OK;
}

/* BF16 or FP32 out of a BF16 or FP32 engine; FP64 of an FP64 engine (its
 * double sum is the output, nothing narrower). */
epx_status_t moe_check_out(const epx_moe_t *m, const epx_handle_t *h,
                           const epx_tensor_t *out)
{
    if (!out)
        return epx__error(EPX_ERR_INVALID, "combine: out is NULL");
    const int f64 = m->p.dtype == EPX_DTYPE_FP64;
    if (f64 != (out->dtype == EPX_DTYPE_FP64))
        return epx__error(EPX_ERR_INVALID, f64
                          ? "combine: out has dtype %d; an FP64 engine's "
                            "output is FP64"
                          : "combine: out is FP64 (dtype %d); a BF16 or FP32 "
                            "engine's output is BF16 or FP32", (int)out->dtype);
    return moe_check_tensor(out, "combine", "out", f64 ? 1u << EPX_DTYPE_FP64
                            : 1u << EPX_DTYPE_BF16 | 1u << EPX_DTYPE_FP32,
                            h->T, m->H);
}

/* Arguments and call order shared by both halves of combine. */
static epx_status_t combine_enter(const epx_moe_t *m, const epx_handle_t *h,
                                  int want, const char *order)
{
    if (!m || !h || h->moe != m)
        return epx__error(EPX_ERR_INVALID, "combine: engine or handle NULL, or "
                          "handle of another engine");
    epx_status_t st = moe_check_usable(m, "combine");
    if (st == EPX_OK && (m->state != want || m->cur != h))
        st = epx__error(EPX_ERR_STATE, "combine: %s", order);
    return st;
}

epx_status_t moe_ht_combine_send(epx_moe_t *m, epx_handle_t *h,
                                 const epx_combine_args_t *a)
{
    epx_status_t st = combine_enter(m, h, MOE_RECEIVED,
                                    "no received dispatch for this handle");
    if (st != EPX_OK)
        return st;
    /* A bad argument is this rank's own business: nothing is sent, the
     * handle stays as it was and the call can be retried (peers wait in
     * their combine_recv meanwhile). */
    if (!a || a->struct_size < offsetof(epx_combine_args_t, flags) + sizeof(unsigned))
        return epx__error(EPX_ERR_INVALID,
                          "combine: args NULL or not set up with "
                          "EPX_COMBINE_ARGS_INIT");
    if ((st = epx__check_version("combine args", a->version,
                                 EPX_COMBINE_ARGS_VERSION)) != EPX_OK)
        return st;
    if ((st = moe_check_tensor(&a->y, "combine", "y", 1u << m->p.dtype,
                               h->nrows, m->H)) != EPX_OK)
        return st;
    if ((st = moe_check_y_apart(m, &a->y)) != EPX_OK)
        return st;
    moe_progress(m, MOE_AT_COMBINE_SEND, h->layer, m->calls);
    int32_t word = MOE_COMB_PUSHED;
    st = m->path->combine_send(m, h, a, &word);
    if (st != EPX_OK)
        word = st;
    epx_status_t sig = signal_comb(m, word);
    if (st == EPX_OK && sig != EPX_OK)
        st = sig;
    if (st != EPX_OK) {
        /* Sources learn it from the status word; take our partials in. */
        m->n_comb++;
        if (epx__win_wait(m->win, MOE_SIG_COMB, (uint64_t)m->R * m->n_comb) != EPX_OK)
            m->broken = 1;
        m->state = MOE_IDLE;
        m->cur = NULL;
        return st;
    }
    m->state = MOE_COMBINING;
    return EPX_OK;
}

epx_status_t moe_ht_combine_recv(epx_moe_t *m, epx_handle_t *h,
                                 epx_tensor_t *out)
{
    epx_status_t st = combine_enter(m, h, MOE_COMBINING,
                                    "recv without a matching combine_send");
    if (st != EPX_OK)
        return st;
    if ((st = moe_check_out(m, h, out)) != EPX_OK)
        return st;
    uint64_t call = m->n_comb++;
    moe_progress(m, MOE_AT_COMBINE_RECV, h->layer, m->calls);
    st = epx__win_wait(m->win, MOE_SIG_COMB, (uint64_t)m->R * m->n_comb);
    m->state = MOE_IDLE;
    m->cur = NULL;
    if (st != EPX_OK) {
        m->broken = 1;
        st = moe_diagnose(m, st, "combine_recv");
    } else {
        moe_progress(m, MOE_AT_DONE, h->layer, m->calls);
    }
    if (st == EPX_OK)
        st = moe_first_error(m, MOE_ST_COMB, call, "combine");
    if (st != EPX_OK)
        return st;
    m->path->combine_out(m, h, out, call);
    return EPX_OK;
}

/* The flat path's combine: push each token's partial to its source, or,
 * with the outputs in place on a transport that maps every peer, leave
 * them there for the sources to read (one pass instead of two). */
static epx_status_t flat_combine_send(epx_moe_t *m, epx_handle_t *h,
                                      const epx_combine_args_t *a,
                                      int32_t *word)
{
    if (m->direct && a->y.data == moe_local(m, m->g.off_rows)) {
        *word = (a->flags & EPX_COMBINE_UNWEIGHTED) ? MOE_COMB_PULL_UNWEIGHTED
                                                     : MOE_COMB_PULL;
        return EPX_OK;
    }
    *word = MOE_COMB_PUSHED;
    return send_partials(m, h, a, a->flags);
}

/* Each token's sum over its destination ranks, from pushed partials or
 * the peers' windows. */
static void flat_combine_out(epx_moe_t *m, epx_handle_t *h, epx_tensor_t *out,
                             uint64_t call)
{
    const int tm = m->p.layout == EPX_LAYOUT_TOKEN_MAJOR;
    const char *comb = moe_local(m, m->g.off_comb);
    size_t out_row = epx_dtype_size(out->dtype) * (size_t)m->H;
    for (int r = 0; r < m->R; r++)
        m->mode[r] = *(int32_t *)moe_local(m, moe_status_off(m, MOE_ST_COMB, call, r));
    comb_src_t src[EPX_MAX_TOPK];
    for (int64_t t = 0; t < h->T; t++) {
        int nd = h->ndest[t];
        for (int j = 0; j < nd; j++) {   /* ascending ranks */
            int d = h->dest[t * m->maxdest + j];
            int64_t e_at = h->entbase[d] + h->pos[t * m->maxdest + j];
            comb_src_t *c = &src[j];
            c->ent = NULL;
            if (m->mode[d] == MOE_COMB_PUSHED) {
                c->row = comb + (size_t)proto_ret_slot(&m->g, h->sendoff,
                                                       h->dest, h->pos, t, j) *
                                    m->row_bytes;
                continue;
            }
            /* Pull: the peer's outputs sit in its window, rows as dispatched. */
            const char *pw = epx__win_peer_ptr(m->win, d);
            c->row = pw + m->g.off_rows;
            if (tm) {
                c->row += (size_t)e_at * m->row_bytes;
                continue;
            }
            c->ent = (const int32_t *)(pw + m->g.off_entries) + e_at * m->g.ent_ints;
            c->w = m->mode[d] == MOE_COMB_PULL_UNWEIGHTED
                ? NULL : (const float *)(pw + m->g.off_w);
        }
        moe_reduce_token(m, src, nd, (char *)out->data + (size_t)t * out_row,
                     out->dtype);
    }
}

const moe_ht_path_t moe_flat_path = {
    NULL, moe_flat_send, flat_combine_send, flat_combine_out
};
