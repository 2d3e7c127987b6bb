/*
 * Quantized wire formats in throughput dispatch (fp8, fp8-ue8m0, mxfp8,
 * nvfp4): every layout x format at 1, 2, 3, 8 and 72 ranks (72 with the
 * gb200-nvl72 description), uniform, Zipf, one-hot and holed routings,
 * zero tokens, H not a multiple of the block, odd H; received data, scales
 * and row scales compared bit for bit with the reference (tests/ref, which
 * quantizes with tests/ref/ref_quant.c), fresh and cached, and combine of
 * bf16 expert outputs.  Replicas (num_slots) in both layouts.  Bad
 * parameters, ranks disagreeing on the format, in-place combine; the byte
 * counters of the statistics.  NVFP4 with the caller's tensor scale
 * (x_global_scale), and the scales refused.
 */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/epx_test.h"
#include "ref/ref_quant.h"
#include "moe_case.h"

static const epx_wire_t wires[] = { EPX_WIRE_FP8, EPX_WIRE_FP8_UE8M0,
                                    EPX_WIRE_MXFP8, EPX_WIRE_NVFP4 };
static const char *const wire_tags[] = { "fp8", "e8", "mx", "nvfp4" };
#define NWIRE 4

typedef struct matrix {
    int nranks;
    epx_layout_t layout;
} matrix_t;

/* Shapes per routing: H 200 and 129 are not multiples of any block (129
 * odd: NVFP4's last byte holds one code), 64 is, 33 leaves a short block
 * of one element past 32.  NVFP4 also runs the first two with the
 * caller's tensor scale (x_global_scale): the source's amax / (6 * 448),
 * and 64 times smaller (large blocks saturate). */
#define NSHAPE 5
#define NCASE (NSHAPE + 2)
static void fill_cases(moe_case_t *cases, char names[][64], int R,
                       epx_layout_t layout, int wi)
{
    static const struct {
        const char *tag;
        int route, tokens, hidden;
        epx_dtype_t idx, out;
        int null_empty;
        unsigned flags;
    } sh[NSHAPE] = {
        { "uni", ROUTE_RANDOM, TOK_RANDOM, 200, EPX_DTYPE_INT32,
          EPX_DTYPE_BF16, 0, 0 },
        { "zipf", ROUTE_ZIPF, TOK_ZERO_ODD, 129, EPX_DTYPE_INT64,
          EPX_DTYPE_FP32, 0, 0 },
        { "hot", ROUTE_HOT, TOK_FULL, 64, EPX_DTYPE_INT32, EPX_DTYPE_BF16,
          0, EPX_COMBINE_UNWEIGHTED },
        { "holes", ROUTE_HOLES, TOK_RANDOM, 33, EPX_DTYPE_INT64,
          EPX_DTYPE_FP32, 1, 0 },
        { "empty", ROUTE_RANDOM, TOK_ZERO_ALL, 16, EPX_DTYPE_INT32,
          EPX_DTYPE_BF16, 1, 0 },
    };
    int em = layout == EPX_LAYOUT_EXPERT_MAJOR;
    for (int i = 0; i < NSHAPE; i++) {
        snprintf(names[i], 64, "R%d-%s-%s-%s", R, em ? "em" : "tm",
                 wire_tags[wi], sh[i].tag);
        cases[i] = (moe_case_t){
            .name = names[i], .experts = 2 * R + 3, .topk = 4,
            .hidden = sh[i].hidden, .max_tokens = 10, .max_tokens_step = 1,
            .dtype = EPX_DTYPE_BF16, .idx_dtype = sh[i].idx,
            .out_dtype = sh[i].out, .layout = layout, .align = em ? 4 : 1,
            .tokens = sh[i].tokens, .route = sh[i].route,
            .combine_flags = em ? sh[i].flags : 0,
            .null_empty = sh[i].null_empty, .wire = wires[wi],
        };
    }
    int n = NSHAPE;
    for (int i = 0; i < 2 && wires[wi] == EPX_WIRE_NVFP4; i++, n++) {
        snprintf(names[n], 64, "%.50s-%s", names[i], i ? "small" : "tensor");
        cases[n] = cases[i];
        cases[n].name = names[n];
        cases[n].gscale = i ? GSCALE_SMALL : GSCALE_TENSOR;
    }
    cases[n] = (moe_case_t){ .name = NULL };
}

static void run_matrix(void **state)
{
    const matrix_t *mx = *state;
    for (int wi = 0; wi < NWIRE; wi++) {
        static char names[NCASE][64];
        moe_case_t cases[NCASE + 1];
        fill_cases(cases, names, mx->nranks, mx->layout, wi);
        assert_int_equal(epxt_launch(mx->nranks, 0, moe_cases_rank, cases,
                                     NULL), EPX_OK);
    }
}

/* 72 ranks on the gb200-nvl72 description: each format under every
 * routing, the layouts alternating (both for each format). */
static void ranks72(void **state)
{
    (void)state;
    const char *q = getenv("EPX_TEST_QUICK");
    if (q && *q && *q != '0') {
        skip();
        return;
    }
    static const int routes[] = { ROUTE_RANDOM, ROUTE_ZIPF, ROUTE_HOT,
                                  ROUTE_HOLES };
    static const char *const route_tags[] = { "uni", "zipf", "hot", "holes" };
    enum { NR = 4 };
    static char names[NR * NWIRE][64];
    moe_case_t cases[NR * NWIRE + 1];
    for (int wi = 0; wi < NWIRE; wi++)
        for (int ri = 0; ri < NR; ri++) {
            int i = NR * wi + ri, em = (wi + ri) % 2;
            snprintf(names[i], 64, "R72-%s-%s-%s", em ? "em" : "tm",
                     wire_tags[wi], route_tags[ri]);
            cases[i] = (moe_case_t){
                .name = names[i], .experts = em ? 100 : 144,
                .topk = em ? 6 : 8, .hidden = em ? 33 : 40, .max_tokens = 4,
                .dtype = EPX_DTYPE_BF16, .idx_dtype = EPX_DTYPE_INT32,
                .out_dtype = EPX_DTYPE_BF16,
                .layout = em ? EPX_LAYOUT_EXPERT_MAJOR : EPX_LAYOUT_TOKEN_MAJOR,
                .align = em ? 4 : 1, .route = routes[ri],
                .tokens = ri == 3 ? TOK_ZERO_ODD : TOK_RANDOM,
                .wire = wires[wi],
            };
        }
    cases[NR * NWIRE] = (moe_case_t){ .name = NULL };
    setenv("EPX_TOPO_FILE", "gb200-nvl72", 1);
    epx_status_t st = epxt_launch(72, 0, moe_cases_rank, cases, NULL);
    unsetenv("EPX_TOPO_FILE");
    assert_int_equal(st, EPX_OK);
}

/* ---- replicas: every received row against the reference quantization of
 * its source row; integer-valued outputs, so combine is exact. */

enum { RK = 3, RH = 45, RT = 6 };

typedef struct rep_case {
    int ranks;
    epx_layout_t layout;
    epx_wire_t wire;
} rep_case_t;

static uint16_t rep_x(int rank, int t, int h)
{
    /* Varied magnitudes so that blocks get different scales. */
    float v = (float)((rank * 7 + t * 3 + h) % 11 - 5) * (float)(1 << (h % 5));
    uint32_t u;
    memcpy(&u, &v, 4);
    return (uint16_t)(u >> 16);   /* exact: small integers */
}

static float rep_y(int rank, int t, int h)
{
    return (float)((rank * 5 + t + h) % 7 - 3);
}

static int rep_routing(int R, int E, int rank, int32_t *idx)
{
    epxt_rng_t rng = { epxt_hash(epxt_seed(), 31, (uint64_t)rank, (uint64_t)R, 0) };
    int T = RT - rank % 2;
    for (int t = 0; t < T; t++)
        for (int k = 0; k < RK; k++) {
            int32_t e;
            int again;
            do {
                e = (int32_t)epxt_below(&rng, (uint64_t)E);
                again = 0;
                for (int j = 0; j < k; j++)
                    again |= idx[t * RK + j] == e;
            } while (again);
            idx[t * RK + k] = (k == 1 && t % 3 == 0) ? -1 : e;
        }
    return T;
}

static int replicas_rank(epx_comm_t *comm, void *arg)
{
    const rep_case_t *c = arg;
    const int me = epx_comm_rank(comm), R = epx_comm_size(comm);
    const int E = R + R / 2, S = 2 * R, spr = 2;
    int32_t p2l[256];
    for (int u = 0; u < S; u++)      /* experts 0 .. S-E-1 get two slots */
        p2l[u] = (int32_t)(u % E);

    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = RH;
    p.num_experts = E;
    p.topk = RK;
    p.max_tokens_per_rank = RT;
    p.layout = c->layout;
    p.expert_alignment = 2;
    p.num_slots = S;
    p.wire = c->wire;
    epx_moe_t *m;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    CHECK_OK(epx_moe_set_placement(m, 0, p2l, EPX_REPLICA_ROUND_ROBIN));

    ref_wire_t w;
    CHECK(ref_wire_shape(c->wire, RH, &w) == 0);
    int32_t idx[RT * RK];
    uint16_t x[RT * RH], wantq[256];
    float wt[RT * RK], out[RT * RH];
    uint8_t wants[64];
    int T = rep_routing(R, E, me, idx);
    for (int t = 0; t < T; t++) {
        for (int h = 0; h < RH; h++)
            x[t * RH + h] = rep_x(me, t, h);
        for (int k = 0; k < RK; k++)
            wt[t * RK + k] = 1.0f;
    }
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ x, EPX_DTYPE_BF16, T, RH };
    a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, T, RK };
    a.topk_weights = (epx_tensor_t){ wt, EPX_DTYPE_FP32, T, RK };
    epx_handle_t *hd = NULL;
    for (int round = 0; round < 2; round++) {   /* fresh, then cached */
        a.flags = round ? EPX_DISPATCH_CACHED : 0;
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        CHECK_OK(epx_dispatch_send(m, &a, &hd));
        CHECK_OK(epx_dispatch_recv(m, hd, &rv));
        CHECK(rv.num_local_experts == spr && rv.x.dtype == w.x_dtype &&
              rv.x.cols == w.x_cols && rv.x_scales.cols == (int64_t)w.nblocks);
        int64_t total = 0;
        for (int j = 0; j < spr; j++)
            total += rv.expert_counts[j];
        uint16_t *y = calloc((size_t)rv.num_rows + 1, RH * 2);
        CHECK(y);
        for (int64_t r = 0; r < rv.num_rows; r++) {
            int s = rv.src_rank[r], t = rv.src_token[r];
            if (s < 0)
                continue;
            uint16_t srow[RH];
            for (int h = 0; h < RH; h++)
                srow[h] = rep_x(s, t, h);
            float g = 0;
            ref_quant_row(c->wire, srow, RH, (uint8_t *)wantq, wants, &g);
            CHECKF(memcmp((const uint8_t *)rv.x.data + r * w.data_bytes, wantq,
                          w.data_bytes) == 0 &&
                   memcmp((const uint8_t *)rv.x_scales.data + r * w.scale_bytes,
                          wants, w.scale_bytes) == 0 &&
                   (c->wire != EPX_WIRE_NVFP4 ||
                    memcmp(&rv.x_global_scale[r], &g, 4) == 0),
                   "row %lld from %d:%d differs from the reference "
                   "quantization", (long long)r, s, t);
            /* y = rep_y * sum of (logical expert + 1) of its experts here */
            float f = 0;
            if (c->layout == EPX_LAYOUT_TOKEN_MAJOR) {
                for (int k = 0; k < RK; k++)
                    if (rv.topk_idx[r * RK + k] >= 0)
                        f += (float)(rv.local_experts[rv.topk_idx[r * RK + k]] + 1);
            } else {
                for (int j = 0; j < spr; j++)
                    if (r >= rv.expert_offsets[j] &&
                        r < rv.expert_offsets[j] + rv.expert_counts[j])
                        f = (float)(rv.local_experts[j] + 1);
            }
            for (int h = 0; h < RH; h++) {
                float v = rep_y(s, t, h) * f;
                uint32_t u;
                memcpy(&u, &v, 4);
                y[r * RH + h] = (uint16_t)(u >> 16);   /* exact */
            }
        }
        if (c->layout == EPX_LAYOUT_EXPERT_MAJOR)
            CHECK(rv.num_rows >= total);
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = (epx_tensor_t){ y, EPX_DTYPE_BF16, rv.num_rows, RH };
        CHECK_OK(epx_combine_send(m, hd, &ca));
        epx_tensor_t o = { out, EPX_DTYPE_FP32, T, RH };
        CHECK_OK(epx_combine_recv(m, hd, &o));
        free(y);
        for (int t = 0; t < T; t++)
            for (int h = 0; h < RH; h++) {
                float want = 0;
                for (int k = 0; k < RK; k++)
                    if (idx[t * RK + k] >= 0)
                        want += rep_y(me, t, h) * (float)(idx[t * RK + k] + 1);
                CHECKF(out[t * RH + h] == want, "out[%d][%d] = %g, want %g",
                       t, h, (double)out[t * RH + h], (double)want);
            }
    }
    epx_handle_release(hd);
    epx_moe_destroy(m);
    return 0;
}

static void replicas(void **state)
{
    assert_int_equal(epxt_launch(((rep_case_t *)*state)->ranks, 60,
                                 replicas_rank, *state, NULL), EPX_OK);
}

/* ---- bad parameters and calls */

static epx_status_t create(epx_comm_t *comm, epx_dtype_t dt, epx_wire_t wire,
                           epx_mode_t mode, unsigned flags, epx_moe_t **m)
{
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = 40;
    p.num_experts = 4;
    p.topk = 2;
    p.max_tokens_per_rank = 4;
    p.dtype = dt;
    p.wire = wire;
    p.mode = mode;
    p.flags = flags;
    *m = NULL;
    return epx_moe_create(comm, &p, m);
}

/* In-place combine into the quantized x: refused, nothing consumed; then
 * with y of its own. */
static int inplace_rank(epx_comm_t *comm, unsigned flags)
{
    epx_moe_t *m;
    CHECK_OK(create(comm, EPX_DTYPE_BF16, EPX_WIRE_FP8, EPX_MODE_THROUGHPUT,
                    flags, &m));
    uint16_t x[4 * 40], ybuf[8 * 40], out[4 * 40];
    int32_t idx[4 * 2];
    float w[4 * 2];
    for (int i = 0; i < 4 * 40; i++)
        x[i] = (uint16_t)(0x3f80 + (i % 7));    /* 1.0 .. 1.05 */
    for (int t = 0; t < 4; t++) {
        idx[t * 2] = t % 4;
        idx[t * 2 + 1] = (t + 1) % 4;
        w[t * 2] = w[t * 2 + 1] = 1.0f;
    }
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ x, EPX_DTYPE_BF16, 4, 40 };
    a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, 4, 2 };
    a.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, 4, 2 };
    epx_handle_t *h = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_send(m, &a, &h));
    CHECK_OK(epx_dispatch_recv(m, h, &rv));
    CHECK(rv.num_rows <= 8);
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ rv.x.data, EPX_DTYPE_BF16, rv.num_rows, 40 };
    if (rv.num_rows > 0) {
        CHECK_ST(epx_combine_send(m, h, &ca), EPX_ERR_INVALID);
        CHECK(strstr(epx_last_error(), "quantized") != NULL);
    }
    for (int i = 0; i < 8 * 40; i++)
        ybuf[i] = 0x3f80;                        /* 1.0 */
    ca.y.data = ybuf;
    CHECK_OK(epx_combine_send(m, h, &ca));
    epx_tensor_t o = { out, EPX_DTYPE_BF16, 4, 40 };
    CHECK_OK(epx_combine_recv(m, h, &o));
    for (int t = 0; t < 4; t++)   /* token-major: one 1.0 per rank holding it */
        for (int hh = 0; hh < 40; hh++) {
            int ranks = 0;
            for (int r = 0; r < epx_comm_size(comm); r++)
                ranks += epx_moe_expert_rank(m, idx[t * 2]) == r ||
                         epx_moe_expert_rank(m, idx[t * 2 + 1]) == r;
            CHECKF(ref_bf16f(out[t * 40 + hh]) == (float)ranks,
                   "out[%d][%d] = %g, want %d", t, hh,
                   (double)ref_bf16f(out[t * 40 + hh]), ranks);
        }
    epx_handle_release(h);
    epx_moe_destroy(m);
    return 0;
}

static int errors_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int me = epx_comm_rank(comm);
    epx_moe_t *m;
    CHECK_ST(create(comm, EPX_DTYPE_FP32, EPX_WIRE_FP8, EPX_MODE_THROUGHPUT,
                    0, &m), EPX_ERR_INVALID);
    CHECK(strstr(epx_last_error(), "BF16") != NULL && !m);
    /* FP64 travels on the native wire only: refused naming it, in both
     * modes */
    CHECK_ST(create(comm, EPX_DTYPE_FP64, EPX_WIRE_MXFP8, EPX_MODE_THROUGHPUT,
                    0, &m), EPX_ERR_INVALID);
    CHECKF(strstr(epx_last_error(), "FP64") != NULL && !m, "%s",
           epx_last_error());
    CHECK_ST(create(comm, EPX_DTYPE_FP64, EPX_WIRE_NVFP4, EPX_MODE_LOW_LATENCY,
                    0, &m), EPX_ERR_INVALID);
    CHECKF(strstr(epx_last_error(), "FP64") != NULL && !m, "%s",
           epx_last_error());
    CHECK_ST(create(comm, EPX_DTYPE_BF16, (epx_wire_t)9, EPX_MODE_THROUGHPUT,
                    0, &m), EPX_ERR_INVALID);
    CHECK_ST(create(comm, EPX_DTYPE_FP32, EPX_WIRE_NVFP4, EPX_MODE_LOW_LATENCY,
                    0, &m), EPX_ERR_INVALID);
    /* hierarchical is a throughput-mode path, whatever the wire */
    CHECK_ST(create(comm, EPX_DTYPE_BF16, EPX_WIRE_NVFP4, EPX_MODE_LOW_LATENCY,
                    EPX_MOE_HIERARCHICAL, &m), EPX_ERR_INVALID);
    /* Ranks that disagree on the format. */
    epx_status_t st = create(comm, EPX_DTYPE_BF16,
                             me == 0 ? EPX_WIRE_FP8 : EPX_WIRE_NVFP4,
                             EPX_MODE_THROUGHPUT, 0, &m);
    CHECK(st == EPX_ERR_MISMATCH && strstr(epx_last_error(), "wire"));

    /* Flat, then hierarchical (one domain). */
    CHECK_CALL(inplace_rank(comm, 0));
    CHECK_CALL(inplace_rank(comm, EPX_MOE_HIERARCHICAL));
    return 0;
}

static void errors(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(2, 60, errors_rank, NULL, NULL), EPX_OK);
}

/* The caller's NVFP4 tensor scale: NaN, infinite or negative refused on
 * every rank (each passes the same), as is any scale with another wire
 * format; a version-2 caller's bytes there are never read; the engine
 * keeps working.  In both modes. */
static int gscale_round(epx_moe_t *m, const epx_dispatch_args_t *a,
                        epx_status_t want, const char *text)
{
    epx_handle_t *h = NULL;
    epx_status_t st = epx_dispatch_send(m, a, &h);
    CHECKF(st == want, "dispatch_send with x_global_scale %g -> %s, want %s",
           (double)a->x_global_scale, epx_status_str(st),
           epx_status_str(want));
    if (st != EPX_OK) {
        CHECKF(!h && strstr(epx_last_error(), text), "message '%s' lacks "
               "'%s'", epx_last_error(), text);
        return 0;
    }
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_recv(m, h, &rv));
    epx_handle_release(h);
    return 0;
}

static int gscale_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    enum { T = 4, H = 40, K = 2 };
    uint16_t x[T * H];
    int32_t idx[T * K];
    float w[T * K];
    for (int i = 0; i < T * H; i++)
        x[i] = (uint16_t)(0x3f00 + i % 100);
    for (int i = 0; i < T * K; i++) {
        idx[i] = i % 4;
        w[i] = 0.5f;
    }
    for (int ll = 0; ll < 2; ll++) {
        epx_moe_t *m, *f8;
        epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
        p.hidden = H;
        p.num_experts = 4;
        p.topk = K;
        p.max_tokens_per_rank = T;
        p.mode = ll ? EPX_MODE_LOW_LATENCY : EPX_MODE_THROUGHPUT;
        p.layout = EPX_LAYOUT_EXPERT_MAJOR;
        p.wire = EPX_WIRE_NVFP4;
        CHECK_OK(epx_moe_create(comm, &p, &m));
        p.wire = EPX_WIRE_FP8;
        CHECK_OK(epx_moe_create(comm, &p, &f8));
        epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
        a.x = (epx_tensor_t){ x, EPX_DTYPE_BF16, T, H };
        a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, T, K };
        a.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, T, K };
        const float bad[] = { NAN, -1.0f, INFINITY, -1e-30f };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            a.x_global_scale = bad[i];
            CHECK_CALL(gscale_round(m, &a, EPX_ERR_INVALID, "x_global_scale"));
        }
        a.x_global_scale = 1.0f;
        CHECK_CALL(gscale_round(f8, &a, EPX_ERR_INVALID, "only nvfp4"));
        CHECK_CALL(gscale_round(m, &a, EPX_OK, ""));
        a.x_global_scale = 0.0f;
        CHECK_CALL(gscale_round(f8, &a, EPX_OK, ""));
        /* version 2: the field is not part of the caller's struct */
        a.struct_size = offsetof(epx_dispatch_args_t, x_global_scale);
        a.version = 2;
        a.x_global_scale = NAN;
        CHECK_CALL(gscale_round(m, &a, EPX_OK, ""));
        CHECK_CALL(gscale_round(f8, &a, EPX_OK, ""));
        epx_moe_destroy(f8);
        epx_moe_destroy(m);
    }
    return 0;
}

static void gscale_errors(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(2, 60, gscale_rank, NULL, NULL), EPX_OK);
}

/* ---- the statistics' byte counters: the same routing through a bf16
 * engine and a quantized one differs by exactly (rows put) x (the row
 * sizes' difference), metadata being the same. */

static int bytes_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    const int me = epx_comm_rank(comm), R = epx_comm_size(comm);
    enum { H = 300, E = 12, K = 4, T = 9 };
    static uint16_t x[T * H];
    int32_t idx[T * K];
    float w[T * K];
    for (int i = 0; i < T * H; i++)
        x[i] = (uint16_t)(0x3f00 + (i * 37 + me) % 200);
    int64_t rows = 0;                       /* (token, destination) pairs */
    for (int t = 0; t < T; t++) {
        int dests = 0;
        for (int k = 0; k < K; k++) {
            idx[t * K + k] = (t * 5 + k * 3 + me) % E;
            w[t * K + k] = 0.5f;
        }
        for (int r = 0; r < R; r++)
            for (int k = 0; k < K; k++)
                if (idx[t * K + k] >= r * E / R &&
                    idx[t * K + k] < (r + 1) * E / R) {
                    dests++;
                    break;
                }
        rows += dests;
    }
    int64_t got[1 + NWIRE];
    for (int v = 0; v <= NWIRE; v++) {
        epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
        p.hidden = H;
        p.num_experts = E;
        p.topk = K;
        p.max_tokens_per_rank = T;
        p.wire = v ? wires[v - 1] : EPX_WIRE_NATIVE;
        epx_moe_t *m;
        CHECK_OK(epx_moe_create(comm, &p, &m));
        epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
        a.x = (epx_tensor_t){ x, EPX_DTYPE_BF16, T, H };
        a.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, T, K };
        a.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, T, K };
        epx_handle_t *h = NULL;
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        CHECK_OK(epx_dispatch_send(m, &a, &h));
        CHECK_OK(epx_dispatch_recv(m, h, &rv));
        epx_moe_stats_t st = { .struct_size = sizeof(st) };
        CHECK_OK(epx_moe_stats(m, 0, &st));
        got[v] = st.dispatch_bytes;
        CHECK(st.combine_bytes == 0);
        epx_handle_release(h);
        epx_moe_destroy(m);
    }
    for (int v = 1; v <= NWIRE; v++) {
        ref_wire_t rw;
        ref_wire_shape(wires[v - 1], H, &rw);
        int64_t diff = rows * (int64_t)(2 * H - (rw.data_bytes + rw.scale_bytes +
                                                 rw.global_bytes));
        CHECKF(got[0] - got[v] == diff, "%s: %lld bytes put, bf16 %lld: "
               "difference %lld, want %lld rows x row sizes = %lld",
               wire_tags[v - 1], (long long)got[v], (long long)got[0],
               (long long)(got[0] - got[v]), (long long)rows, (long long)diff);
    }
    return 0;
}

static void bytes(void **state)
{
    (void)state;
    assert_int_equal(epxt_launch(3, 60, bytes_rank, NULL, NULL), EPX_OK);
}

static matrix_t mx[] = {
    { 1, EPX_LAYOUT_TOKEN_MAJOR }, { 1, EPX_LAYOUT_EXPERT_MAJOR },
    { 2, EPX_LAYOUT_TOKEN_MAJOR }, { 2, EPX_LAYOUT_EXPERT_MAJOR },
    { 3, EPX_LAYOUT_TOKEN_MAJOR }, { 3, EPX_LAYOUT_EXPERT_MAJOR },
    { 8, EPX_LAYOUT_TOKEN_MAJOR }, { 8, EPX_LAYOUT_EXPERT_MAJOR },
};

static rep_case_t reps[] = {
    { 8, EPX_LAYOUT_TOKEN_MAJOR, EPX_WIRE_FP8 },
    { 8, EPX_LAYOUT_EXPERT_MAJOR, EPX_WIRE_NVFP4 },
    { 8, EPX_LAYOUT_TOKEN_MAJOR, EPX_WIRE_MXFP8 },
    { 8, EPX_LAYOUT_EXPERT_MAJOR, EPX_WIRE_FP8_UE8M0 },
};

#define MATRIX(name, i) { name, run_matrix, NULL, NULL, &mx[i] }

int main(void)
{
    epxt_init("test_wire");
    const struct CMUnitTest tests[] = {
        /* named for EPX_TEST_FILTER (test-transports.sh picks some) */
        MATRIX("matrix_R1_tm", 0), MATRIX("matrix_R1_em", 1),
        MATRIX("matrix_R2_tm", 2), MATRIX("matrix_R2_em", 3),
        MATRIX("matrix_R3_tm", 4), MATRIX("matrix_R3_em", 5),
        MATRIX("matrix_R8_tm", 6), MATRIX("matrix_R8_em", 7),
        cmocka_unit_test_prestate(replicas, &reps[0]),
        cmocka_unit_test_prestate(replicas, &reps[1]),
        cmocka_unit_test_prestate(replicas, &reps[2]),
        cmocka_unit_test_prestate(replicas, &reps[3]),
        cmocka_unit_test(errors),
        cmocka_unit_test(gscale_errors),
        cmocka_unit_test(bytes),
        cmocka_unit_test(ranks72),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
