/*
 * The window geometry is defined once (src/proto/geom.h) and both
 * executors use it; this test fails if they could diverge.
 *
 * - regions, ll_regions: for random shapes, every region of
 *   proto_geom_layout / proto_ll_layout is aligned, in the documented
 *   order, of the size the format gives (computed here from the formats'
 *   definitions, not from geom.h), and none overlaps the next; the count
 *   block's words are where geom.h says.
 * - wire_shape: the host executor's wire formats (moe_wire_init) have the
 *   geometry's row shapes, for every format and many H.
 * - host_engine: host engines of random shapes (1-3 ranks, both modes and
 *   layouts, every wire, slots, ranks with different max_tokens_per_rank)
 *   have exactly the geometry the CUDA executor computes from the same
 *   parameters (src/cuda/engine.c: proto_geom_shape, proto_geom_layout,
 *   proto_ll_layout), a window of exactly its size, and a dispatch hands
 *   out its rows, metadata, scales and row scales at the geometry's
 *   offsets in the window.
 * Internal API (the engine), linked statically.
 */
#include "config.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "moe/moe.h"
#include "moe/ll.h"
#include "proto/geom.h"

static const int wires[] = { EPX_WIRE_NATIVE, EPX_WIRE_FP8,
                             EPX_WIRE_FP8_UE8M0, EPX_WIRE_MXFP8,
                             EPX_WIRE_NVFP4 };

/* The formats' definitions (src/moe/README.md, "Wire formats"): data
 * bytes, elements per scale and bytes per scale. */
static void wire_def(int wire, int64_t H, int esize, int64_t *data,
                     int64_t *scales, int64_t *gscale)
{
    int block = 0, ssize = 0;
    switch (wire) {
    case EPX_WIRE_FP8: block = 128; ssize = 4; break;
    case EPX_WIRE_FP8_UE8M0: block = 128; ssize = 1; break;
    case EPX_WIRE_MXFP8: block = 32; ssize = 1; break;
    case EPX_WIRE_NVFP4: block = 16; ssize = 1; break;
    default: break;
    }
    *data = wire == EPX_WIRE_NATIVE ? H * esize
          : wire == EPX_WIRE_NVFP4 ? (H + 1) / 2 : H;
    *scales = block ? (H + block - 1) / block * ssize : 0;
    *gscale = wire == EPX_WIRE_NVFP4 ? 4 : 0;
}

typedef struct region {
    const char *name;
    int64_t off, size;
} region_t;

/* In order, aligned to `align`, each after the previous one's end, and
 * the last one's end within `end` (rounded to at most `slack`). */
static void check_regions(const region_t *r, int n, int64_t align,
                          int64_t end, int64_t slack)
{
    for (int i = 0; i < n; i++) {
        if (r[i].off % align)
            fail_msg("%s at %lld: not %lld-aligned", r[i].name,
                     (long long)r[i].off, (long long)align);
        if (i && r[i].off < r[i - 1].off + r[i - 1].size)
            fail_msg("%s at %lld overlaps %s [%lld, +%lld)", r[i].name,
                     (long long)r[i].off, r[i - 1].name,
                     (long long)r[i - 1].off, (long long)r[i - 1].size);
        if (i && r[i].off >= r[i - 1].off + r[i - 1].size + align)
            fail_msg("%s at %lld: a gap after %s", r[i].name,
                     (long long)r[i].off, r[i - 1].name);
    }
    const int64_t last = r[n - 1].off + r[n - 1].size;
    if (end < last || end >= last + slack)
        fail_msg("end %lld, last region ends at %lld", (long long)end,
                 (long long)last);
}

typedef struct shape {
    int R, rank, E, K, H, esize, wire, em, align;
    int64_t maxT;
} shape_t;

static void random_shape(epxt_rng_t *rng, shape_t *s)
{
    s->R = 1 + (int)epxt_below(rng, 80);
    s->rank = (int)epxt_below(rng, (uint64_t)s->R);
    s->E = 1 + (int)epxt_below(rng, 600);
    s->K = 1 + (int)epxt_below(rng, (uint64_t)(s->E < 16 ? s->E : 16));
    s->H = 1 + (int)epxt_below(rng, 9000);
    s->wire = wires[epxt_below(rng, 5)];
    s->esize = s->wire != EPX_WIRE_NATIVE || epxt_below(rng, 2) ? 2 : 4;
    s->maxT = (int64_t)epxt_below(rng, 5000);
    s->em = (int)epxt_below(rng, 2);
    s->align = 1 + (int)epxt_below(rng, 256);
}

static void layout_of(const shape_t *s, proto_geom_t *g)
{
    memset(g, 0, sizeof(*g));
    proto_geom_shape(g, s->R, s->rank, s->E, s->K, s->H, s->esize, s->wire,
                     s->maxT, s->em, s->align);
    proto_geom_layout(g);
}

/* Most units of any rank under the contiguous placement. */
static int most_local(int R, int E)
{
    int most = 0;
    for (int r = 0; r < R; r++) {
        int n = (int)(((int64_t)r + 1) * E / R - (int64_t)r * E / R);
        most = n > most ? n : most;
    }
    return most;
}

static void regions(void **st)
{
    (void)st;
    epxt_rng_t rng = { epxt_seed() ^ 0x6e6f6d65 };
    for (int it = 0; it < 3000; it++) {
        shape_t s;
        random_shape(&rng, &s);
        proto_geom_t g;
        layout_of(&s, &g);
        const int64_t R = s.R, K = s.K, T = s.maxT, ents = R * T;
        const int L = most_local(s.R, s.E);
        const int64_t per = K < L ? K : L, md = K < R ? K : R;
        const int align = s.em ? s.align : 1;
        const int64_t xrows = s.em ? ents * per + (int64_t)L * (align - 1)
                                   : ents;
        int64_t data, scales, gs;
        wire_def(s.wire, s.H, s.esize, &data, &scales, &gs);
        assert_int_equal(g.Lmax, L);
        assert_int_equal(g.maxdest, md);
        assert_int_equal(g.xrows, xrows);
        assert_int_equal(g.xrow_bytes, data);
        assert_int_equal(g.scale_bytes, scales);
        assert_int_equal(g.gscale_bytes, gs);
        assert_int_equal(g.cnt_ints, 5 + R + s.E + 1);
        const region_t r[] = {
            { "flags", g.off_flags, 2 * R * 8 },
            { "cnt", g.off_cnt, 2 * R * (5 + R + s.E + 1) * 4 },
            { "status", g.off_status, 2 * R * 4 },
            { "done", g.off_done, R * 4 },
            { "progress", g.off_progress, 3 * 8 },
            { "entries", g.off_entries, ents * (3 + K) * 4 },
            { "src_rank", g.off_src_rank, xrows * 4 },
            { "src_token", g.off_src_token, xrows * 4 },
            { "ret_slot", g.off_ret_slot, ents * 4 },
            { "ent_src", g.off_ent_src, s.em ? ents * 4 : 0 },
            { "ent_rows", g.off_ent_rows, s.em ? ents * K * 4 : 0 },
            { "idx", g.off_idx, s.em ? 0 : ents * K * 4 },
            { "w", g.off_w, (s.em ? xrows : ents * K) * 4 },
            { "rows", g.off_rows, xrows * data },
            { "scales", g.off_scales, xrows * scales },
            { "gscale", g.off_gscale, xrows * gs },
            { "comb", g.off_comb, T * md * (int64_t)s.H * s.esize },
        };
        assert_int_equal(g.off_flags, 0);
        check_regions(r, (int)(sizeof(r) / sizeof(r[0])), 256, g.total, 256);
        /* the count block: header, ranks, units, sequence word */
        const int p = (int)epxt_below(&rng, 2), src = (int)epxt_below(&rng, (uint64_t)R);
        const int64_t blk = (p * R + src) * g.cnt_ints;
        assert_int_equal(proto_cnt_index(&g, p, src), blk + PROTO_CNT_HDR);
        assert_int_equal(PROTO_CNT_HDR, 5);
        assert_int_equal(proto_cnt_dest(&g, 0), 5);
        assert_int_equal(proto_cnt_unit(&g, 0), 5 + R);
        assert_int_equal(proto_cnt_seq(&g), 5 + R + s.E);
    }
}

static void ll_regions(void **st)
{
    (void)st;
    epxt_rng_t rng = { epxt_seed() ^ 0x6c6c };
    for (int it = 0; it < 3000; it++) {
        shape_t s;
        random_shape(&rng, &s);
        s.em = 1;
        proto_geom_t g;
        layout_of(&s, &g);
        const int B = 2 + (int)epxt_below(&rng, 5);
        const int cap = 1 + (int)epxt_below(&rng, 300);
        proto_ll_t l;
        proto_ll_layout(&g, B, cap, &l);
        const int64_t R = s.R, K = s.K, T = s.maxT, ents = R * T;
        const int64_t L = most_local(s.R, s.E), rows = L * R * cap;
        const int64_t md = K < R ? K : R;
        int64_t data, scales, gs;
        wire_def(s.wire, s.H, s.esize, &data, &scales, &gs);
        const region_t w[] = {
            { "comb_flags", l.off_comb_flags, B * R * 8 },
            { "progress", l.off_progress, 3 * 8 },
        };
        assert_int_equal(l.off_comb_flags, 0);
        check_regions(w, 2, 256, l.off_progress + 64, 256);
        assert_int_equal(l.off_bufs % 4096, 0);
        assert_true(l.off_bufs >= l.off_progress + 64 &&
                    l.off_bufs < l.off_progress + 64 + 4096);
        const region_t r[] = {
            { "hdr", l.hdr, R * 5 * 4 },
            { "cw", l.cw, L * R * 4 },
            { "fw", l.fw, R * 4 },
            { "st", l.st, R * 4 },
            { "src_tok", l.src_tok, rows * 4 },
            { "w", l.w, rows * 4 },
            { "entries", l.entries, ents * (3 + K) * 4 },
            { "ent_slot", l.ent_slot, ents * 4 },
            { "ent_rows", l.ent_rows, ents * K * 4 },
            { "rows", l.rows, rows * data },
            { "scales", l.scales, rows * scales },
            { "gscale", l.gscale, rows * gs },
            { "comb", l.comb, T * md * (int64_t)s.H * s.esize },
        };
        assert_int_equal(l.hdr, 0);
        check_regions(r, (int)(sizeof(r) / sizeof(r[0])), 256, l.buf, 4096);
        assert_int_equal(l.buf % 4096, 0);
        assert_int_equal(l.total, l.off_bufs + B * l.buf);
        const int b = (int)epxt_below(&rng, (uint64_t)B);
        assert_int_equal(proto_ll_at(&l, b, l.cw), l.off_bufs + b * l.buf + l.cw);
    }
}

static void wire_shape(void **st)
{
    (void)st;
    for (int H = 1; H <= 1100; H += (H < 300 ? 1 : 37))
        for (size_t i = 0; i < sizeof(wires) / sizeof(wires[0]); i++)
            for (int esize = 2; esize <= 4; esize += 2) {
                if (wires[i] != EPX_WIRE_NATIVE && esize != 2)
                    continue;
                moe_wire_t f;
                assert_int_equal(moe_wire_init(&f, (epx_wire_t)wires[i],
                                               esize == 2 ? EPX_DTYPE_BF16
                                                          : EPX_DTYPE_FP32, H),
                                 EPX_OK);
                int qb;
                int64_t d, s, g, d2, s2, g2;
                proto_wire_shape(wires[i], H, esize, &qb, &d, &s, &g);
                wire_def(wires[i], H, esize, &d2, &s2, &g2);
                assert_int_equal(d, d2);
                assert_int_equal(s, s2);
                assert_int_equal(g, g2);
                assert_int_equal(f.data_bytes, d);
                assert_int_equal(f.scale_bytes, s);
                assert_int_equal(f.global_bytes, g);
                assert_int_equal(f.block, qb);
            }
}

/* ------------------------------------------------------- host engines */

typedef struct engine_case {
    int ll, em, align, E, K, H, bf16, wire, slots, cap, B;
    int maxT[3];               /* per rank */
} engine_case_t;

static int64_t max_tokens(const engine_case_t *c, int R)
{
    int64_t m = 0;
    for (int r = 0; r < R; r++)
        m = c->maxT[r] > m ? c->maxT[r] : m;
    return m;
}

/* x, ids and weights of T tokens: token t to experts t, t + 1, ... */
static int dispatch_some(epx_moe_t *m, const engine_case_t *c, int64_t T,
                         epx_handle_t **h, epx_recv_t *recv)
{
    const int K = c->K, H = c->H, es = c->bf16 ? 2 : 4;
    char *x = calloc((size_t)(T * H + 1), (size_t)es);
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)(T * K + 1));
    float *w = malloc(sizeof(float) * (size_t)(T * K + 1));
    CHECK(x && idx && w);
    for (int64_t t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
            idx[t * K + k] = (int32_t)((t + k) % c->E);
            w[t * K + k] = 1.0f / (float)(k + 1);
        }
    for (int64_t i = 0; i < T * H; i++)
        if (c->bf16)
            ((uint16_t *)x)[i] = (uint16_t)(0x3f80 + i % 64);
        else
            ((float *)x)[i] = (float)(i % 7);
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ x, c->bf16 ? EPX_DTYPE_BF16 : EPX_DTYPE_FP32, T, H };
    a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, T, K };
    a.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, T, K };
    CHECK_OK(epx_dispatch_send(m, &a, h));
    recv->struct_size = sizeof(*recv);
    CHECK_OK(epx_dispatch_recv(m, *h, recv));
    free(x), free(idx), free(w);
    return 0;
}

static int engine_rank(epx_comm_t *comm, void *arg)
{
    const engine_case_t *c = arg;
    const int R = epx_comm_size(comm), me = epx_comm_rank(comm);
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = c->H;
    p.num_experts = c->E;
    p.topk = c->K;
    p.max_tokens_per_rank = c->maxT[me];
    p.dtype = c->bf16 ? EPX_DTYPE_BF16 : EPX_DTYPE_FP32;
    p.layout = c->em ? EPX_LAYOUT_EXPERT_MAJOR : EPX_LAYOUT_TOKEN_MAJOR;
    p.expert_alignment = c->align;
    p.wire = (epx_wire_t)c->wire;
    p.num_slots = c->slots;
    if (c->ll) {
        p.mode = EPX_MODE_LOW_LATENCY;
        p.ll_capacity = c->cap;
        p.ll_buffers = c->B;
    }
    epx_moe_t *m;
    CHECK_OK(epx_moe_create(comm, &p, &m));

    /* What the CUDA executor computes from these parameters
     * (src/cuda/engine.c, gpu_moe_create). */
    const int64_t maxT = max_tokens(c, R);
    proto_geom_t g;
    memset(&g, 0, sizeof(g));
    proto_geom_params(&g, &p, R, me, maxT);
    proto_geom_layout(&g);
    CHECKF(memcmp(&m->g, &g, sizeof(g)) == 0,
           "rank %d: the host engine's geometry differs from the device's "
           "(total %lld vs %lld, rows at %lld vs %lld)", me,
           (long long)m->g.total, (long long)g.total,
           (long long)m->g.off_rows, (long long)g.off_rows);
    const char *win = m->win->local;
    proto_ll_t l;
    if (c->ll) {
        memset(&l, 0, sizeof(l));
        proto_ll_layout(&g, proto_ll_buffers(p.ll_buffers),
                        proto_ll_capacity(p.ll_capacity, maxT), &l);
        CHECKF(memcmp(&m->ll->off, &l, sizeof(l)) == 0,
               "rank %d: low-latency layout differs (buffer %lld vs %lld)",
               me, (long long)m->ll->off.buf, (long long)l.buf);
        CHECKF(m->win->size == (size_t)l.total, "rank %d: window %zu, "
               "geometry %lld", me, m->win->size, (long long)l.total);
        CHECK(m->win_progress == (size_t)l.off_progress);
    } else {
        CHECKF(m->win->size == (size_t)g.total, "rank %d: window %zu, "
               "geometry %lld", me, m->win->size, (long long)g.total);
        CHECK(m->win_progress == (size_t)g.off_progress);
    }

    /* A call's outputs lie where the geometry puts them. */
    if (c->slots == 0) {
        epx_handle_t *h = NULL;
        epx_recv_t r;
        memset(&r, 0, sizeof(r));
        const int64_t T = c->maxT[me] < 5 ? c->maxT[me] : 5;
        CHECK_CALL(dispatch_some(m, c, T, &h, &r));
        const char *rows, *scales, *gscale, *stok, *wt;
        if (c->ll) {
            rows = win + proto_ll_at(&l, 0, l.rows);
            scales = win + proto_ll_at(&l, 0, l.scales);
            gscale = win + proto_ll_at(&l, 0, l.gscale);
            stok = win + proto_ll_at(&l, 0, l.src_tok);
            wt = win + proto_ll_at(&l, 0, l.w);
        } else {
            rows = win + g.off_rows;
            scales = win + g.off_scales;
            gscale = win + g.off_gscale;
            stok = win + g.off_src_token;
            wt = win + g.off_w;
            CHECK((const char *)r.src_rank == win + g.off_src_rank);
            CHECK(c->em ? r.topk_idx == NULL
                        : (const char *)r.topk_idx == win + g.off_idx);
        }
        CHECK((const char *)r.x.data == rows);
        CHECK((const char *)r.src_token == stok);
        CHECK((const char *)r.topk_weights == wt);
        if (c->wire != EPX_WIRE_NATIVE)
            CHECK((const char *)r.x_scales.data == scales);
        if (c->wire == EPX_WIRE_NVFP4)
            CHECK((const char *)r.x_global_scale == gscale);
        epx_handle_release(h);
    }
    epx_moe_destroy(m);
    return 0;
}

static void host_engine(void **st)
{
    (void)st;
    epxt_rng_t rng = { epxt_seed() ^ 0x686f7374 };
    for (int it = 0; it < 24; it++) {
        const int R = 1 + (int)epxt_below(&rng, 3);
        engine_case_t c;
        memset(&c, 0, sizeof(c));
        c.ll = (int)epxt_below(&rng, 3) == 0;
        c.em = c.ll || epxt_below(&rng, 2);
        c.align = 1 + (int)epxt_below(&rng, 16);
        c.E = 1 + (int)epxt_below(&rng, 40);
        c.K = 1 + (int)epxt_below(&rng, (uint64_t)(c.E < 8 ? c.E : 8));
        c.H = 1 + (int)epxt_below(&rng, 700);
        c.wire = wires[epxt_below(&rng, 5)];
        c.bf16 = c.wire != EPX_WIRE_NATIVE || epxt_below(&rng, 2);
        if (epxt_below(&rng, 4) == 0)    /* slots: a multiple of R, >= E */
            c.slots = R * ((c.E + R - 1) / R + (int)epxt_below(&rng, 3));
        c.cap = epxt_below(&rng, 3) ? 5 + (int)epxt_below(&rng, 40) : 0;
        c.B = epxt_below(&rng, 2) ? 0 : 2 + (int)epxt_below(&rng, 3);
        for (int r = 0; r < R; r++)
            c.maxT[r] = (int)epxt_below(&rng, 200);
        printf("# case %d: R %d %s %s align %d E %d K %d H %d %s wire %d "
               "slots %d cap %d B %d maxT %d %d %d\n", it, R,
               c.ll ? "ll" : "ht", c.em ? "em" : "tm", c.align, c.E, c.K, c.H,
               c.bf16 ? "bf16" : "fp32", c.wire, c.slots, c.cap, c.B,
               c.maxT[0], c.maxT[1], c.maxT[2]);
        assert_int_equal(epxt_launch(R, 0, engine_rank, &c, NULL), EPX_OK);
    }
}

int main(void)
{
    epxt_init("test_geom");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(regions),
        cmocka_unit_test(ll_regions),
        cmocka_unit_test(wire_shape),
        cmocka_unit_test(host_engine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
