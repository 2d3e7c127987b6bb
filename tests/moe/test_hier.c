/*
 * Hierarchical two-hop dispatch and combine (EPX_MOE_HIERARCHICAL): the
 * same scenarios as test_dispatch / test_edge, checked bit for bit against
 * the reference (so identical to the flat path), with the ranks placed on
 * several domains by a system description (tests/moe/data/cpu-<n>host.json:
 * n CPU hosts, one host domain each; or gb200-nvl72-x2 at 144 ranks).
 * After every round each rank checks the bytes it put across domains:
 *   dispatch: its tokens' distinct remote destination domains x row bytes
 *             (the row in its wire format);
 *   combine:  as gateway, one fp32 row (fp64 for an FP64 engine) per
 *             token of its sources whose chain passes through its domain
 *             and leaves it (to the next destination domain, or back to a
 *             source in another domain).
 * Quantized wire formats (every format in both layouts, 2 domains of 1, 2
 * and 4 ranks): the dispatch counter is then in wire row bytes.
 * Also: domains of unequal size are refused on every rank, and a flat
 * engine does not count.
 */
#include <inttypes.h>
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

typedef struct hier_arg {
    const moe_case_t *cases;
    int ndom;
} hier_arg_t;

/* Destination domains of a token (bit b: domain b), from the reference's
 * placement and the contiguous domain blocks. */
static uint64_t dom_mask(const moe_run_t *m, const int64_t *idx, int L)
{
    uint64_t mask = 0;
    for (int k = 0; k < m->c->topk; k++)
        if (idx[k] >= 0)
            mask |= 1ull << (ref_expert_owner(m->nranks, m->c->experts,
                                              (int)idx[k]) / L);
    return mask;
}

static int expected_bytes(const moe_run_t *m, int route, int data, int ndom,
                          int64_t *disp, int64_t *comb)
{
    const int R = m->nranks, L = R / ndom, me = m->rank, dom = me / L;
    ref_wire_t w;   /* quantized: the wire bytes cross, as sent */
    const int64_t row = ref_wire_shape(m->c->wire, m->c->hidden, &w) == 0
        ? (int64_t)(w.data_bytes + w.scale_bytes + w.global_bytes)
        : (int64_t)m->c->hidden * (m->c->dtype == EPX_DTYPE_BF16 ? 2
                                   : m->c->dtype == EPX_DTYPE_FP64 ? 8 : 4);
    /* accumulators: fp32, fp64 for an FP64 engine */
    const int64_t frow = (m->c->dtype == EPX_DTYPE_FP64 ? 8 : 4) *
                         (int64_t)m->c->hidden;
    *disp = *comb = 0;
    for (int b = 0; b < ndom; b++) {
        const int src = b * L + me % L;
        moe_input_t in;
        CHECK_CALL(moe_input_make(m, src, route, data, &in));
        for (int64_t t = 0; t < in.T; t++) {
            uint64_t mask = dom_mask(m, in.idx64 + t * m->c->topk, L);
            if (src == me)
                *disp += row * __builtin_popcountll(mask & ~(1ull << dom));
            if (!(mask & (1ull << dom)))
                continue;
            if (mask >> (dom + 1))       /* a later domain follows */
                *comb += frow;
            else if (b != dom)           /* last: back to the source */
                *comb += frow;
        }
        moe_input_free(&in);
    }
    return 0;
}

static int hier_rank(epx_comm_t *comm, void *varg)
{
    const hier_arg_t *ha = varg;
    for (const moe_case_t *c = ha->cases; c->name; c++) {
        moe_run_t m;
        CHECK_CALL(moe_run_open(&m, comm, c));
        int64_t d0 = -1, c0 = -1;
        CHECK_OK(epx_moe_cross_domain_bytes(m.moe, &d0, &c0));
        CHECKF(d0 == 0 && c0 == 0, "fresh engine counts %" PRId64 "/%" PRId64,
               d0, c0);
        for (int route = 0; route < MOE_ROUTES; route++) {
            epx_handle_t *h = NULL;
            for (int rep = 0; rep < 2; rep++) {   /* fresh, then cached */
                const int data = 2 * route + rep;
                int64_t wd, wc, d1, c1;
                CHECK_CALL(expected_bytes(&m, route, data, ha->ndom, &wd, &wc));
                CHECK_CALL(moe_run_round(&m, route, data, &h));
                CHECK_OK(epx_moe_cross_domain_bytes(m.moe, &d1, &c1));
                CHECKF(d1 - d0 == wd && c1 - c0 == wc,
                       "case %s round %d: crossed %" PRId64 " bytes in "
                       "dispatch and %" PRId64 " in combine, want %" PRId64
                       " and %" PRId64, c->name, data, d1 - d0, c1 - c0, wd,
                       wc);
                d0 = d1;
                c0 = c1;
            }
            epx_handle_release(h);
        }
        moe_run_close(&m);
    }
    return 0;
}

#define H EPX_MOE_HIERARCHICAL
#define I32 EPX_DTYPE_INT32
#define I64 EPX_DTYPE_INT64
#define BF EPX_DTYPE_BF16
#define F32 EPX_DTYPE_FP32
#define TM EPX_LAYOUT_TOKEN_MAJOR
#define EM EPX_LAYOUT_EXPERT_MAJOR

static const moe_case_t hier_cases[] = {
    { .name = "hier-tm-bf16", .experts = 16, .topk = 4, .hidden = 40,
      .max_tokens = 12, .max_tokens_step = 1, .dtype = BF, .idx_dtype = I32,
      .out_dtype = BF, .layout = TM, .align = 1, .flags = H },
    { .name = "hier-em-fp32-holes", .experts = 12, .topk = 5, .hidden = 33,
      .max_tokens = 9, .dtype = F32, .idx_dtype = I64, .out_dtype = F32,
      .layout = EM, .align = 4, .route = ROUTE_HOLES, .flags = H },
    { .name = "hier-em-bf16-unweighted", .experts = 9, .topk = 3,
      .hidden = 24, .max_tokens = 7, .dtype = BF, .idx_dtype = I32,
      .out_dtype = F32, .layout = EM, .align = 1,
      .combine_flags = EPX_COMBINE_UNWEIGHTED, .flags = H },
    { .name = "hier-hot", .experts = 8, .topk = 2, .hidden = 16,
      .max_tokens = 6, .dtype = F32, .idx_dtype = I32, .out_dtype = BF,
      .layout = TM, .align = 1, .route = ROUTE_HOT, .flags = H },
    { .name = "hier-zero-odd", .experts = 20, .topk = 6, .hidden = 8,
      .max_tokens = 5, .dtype = BF, .idx_dtype = I32, .out_dtype = BF,
      .layout = TM, .align = 1, .tokens = TOK_ZERO_ODD, .flags = H },
    { .name = "hier-sparse", .experts = 3, .topk = 2, .hidden = 12,
      .max_tokens = 6, .dtype = BF, .idx_dtype = I32, .out_dtype = F32,
      .layout = EM, .align = 2, .flags = H },
    /* FP64: fp64 rows, partials and accumulators (ref_combine_f64) */
    { .name = "hier-tm-fp64", .experts = 16, .topk = 4, .hidden = 40,
      .max_tokens = 12, .max_tokens_step = 1, .dtype = EPX_DTYPE_FP64,
      .idx_dtype = I64, .out_dtype = EPX_DTYPE_FP64, .layout = TM,
      .align = 1, .route = ROUTE_ZIPF, .flags = H },
    { .name = "hier-em-fp64-holes", .experts = 12, .topk = 5, .hidden = 33,
      .max_tokens = 9, .dtype = EPX_DTYPE_FP64, .idx_dtype = I32,
      .out_dtype = EPX_DTYPE_FP64, .layout = EM, .align = 4,
      .route = ROUTE_HOLES, .flags = H },
    { .name = "hier-em-fp64-unweighted", .experts = 9, .topk = 3,
      .hidden = 24, .max_tokens = 7, .dtype = EPX_DTYPE_FP64,
      .idx_dtype = I32, .out_dtype = EPX_DTYPE_FP64, .layout = EM,
      .align = 1, .combine_flags = EPX_COMBINE_UNWEIGHTED, .flags = H },
    { 0 }
};

/* Quantized wire formats (each in both layouts): what the gateway
 * forwards are the bytes quantized at the source, compared bit for bit
 * with the reference's quantization (data, scales, row scale).  H 129 and
 * 200 leave short blocks; ROUTE_HOT and holes; zero-token ranks; NVFP4
 * with the caller's tensor scale too (x_global_scale). */
#define Q(nm, w, lay, e, k, h, rt, tk, of) \
    { .name = nm, .experts = e, .topk = k, .hidden = h, .max_tokens = 7, \
      .max_tokens_step = 1, .dtype = BF, .idx_dtype = I32, .out_dtype = of, \
      .layout = lay, .align = lay == EM ? 4 : 1, .route = rt, .tokens = tk, \
      .flags = H, .wire = EPX_WIRE_##w }
static const moe_case_t hier_wire_cases[] = {
    Q("hier-fp8-tm", FP8, TM, 16, 4, 200, ROUTE_RANDOM, TOK_RANDOM, BF),
    Q("hier-fp8-em", FP8, EM, 12, 5, 129, ROUTE_HOLES, TOK_ZERO_ODD, F32),
    Q("hier-e8-tm", FP8_UE8M0, TM, 9, 3, 129, ROUTE_ZIPF, TOK_RANDOM, F32),
    Q("hier-e8-em", FP8_UE8M0, EM, 16, 4, 200, ROUTE_RANDOM, TOK_FULL, BF),
    Q("hier-mx-tm", MXFP8, TM, 12, 5, 33, ROUTE_HOT, TOK_RANDOM, BF),
    Q("hier-mx-em", MXFP8, EM, 9, 3, 200, ROUTE_ZIPF, TOK_RANDOM, F32),
    Q("hier-nvfp4-tm", NVFP4, TM, 16, 4, 129, ROUTE_HOLES, TOK_RANDOM, F32),
    Q("hier-nvfp4-em", NVFP4, EM, 12, 5, 200, ROUTE_RANDOM, TOK_ZERO_ODD, BF),
    { .name = "hier-nvfp4-tm-tensor", .experts = 16, .topk = 4, .hidden = 129,
      .max_tokens = 7, .max_tokens_step = 1, .dtype = BF, .idx_dtype = I32,
      .out_dtype = F32, .layout = TM, .align = 1, .route = ROUTE_ZIPF,
      .tokens = TOK_RANDOM, .flags = H, .wire = EPX_WIRE_NVFP4,
      .gscale = GSCALE_TENSOR },
    { .name = "hier-nvfp4-em-small", .experts = 12, .topk = 5, .hidden = 33,
      .max_tokens = 7, .max_tokens_step = 1, .dtype = BF, .idx_dtype = I32,
      .out_dtype = BF, .layout = EM, .align = 4, .route = ROUTE_RANDOM,
      .tokens = TOK_ZERO_ODD, .flags = H, .wire = EPX_WIRE_NVFP4,
      .gscale = GSCALE_SMALL },
    { 0 }
};
#undef Q

static const moe_case_t hier_cases_big[] = {
    { .name = "hier-144", .experts = 288, .topk = 8, .hidden = 16,
      .max_tokens = 4, .dtype = BF, .idx_dtype = I32, .out_dtype = BF,
      .layout = TM, .align = 1, .flags = H },
    { .name = "hier-144-em", .experts = 144, .topk = 6, .hidden = 8,
      .max_tokens = 3, .dtype = F32, .idx_dtype = I32, .out_dtype = F32,
      .layout = EM, .align = 1, .route = ROUTE_HOLES, .flags = H },
    { 0 }
};

static void run(const char *system, int nranks, int ndom,
                const moe_case_t *cases)
{
    char path[1024];
    if (strchr(system, '/'))
        snprintf(path, sizeof(path), "%s/%s", EPX_TEST_SRCDIR, system);
    else
        snprintf(path, sizeof(path), "%s", system);
    setenv("EPX_TOPO_FILE", path, 1);
    hier_arg_t a = { cases, ndom };
    assert_int_equal(epxt_launch(nranks, 0, hier_rank, &a, NULL), EPX_OK);
    unsetenv("EPX_TOPO_FILE");
}

static void two_by_1(void **s) { (void)s; run("tests/moe/data/cpu-2host.json", 2, 2, hier_cases); }
static void two_by_2(void **s) { (void)s; run("tests/moe/data/cpu-2host.json", 4, 2, hier_cases); }
static void two_by_4(void **s) { (void)s; run("tests/moe/data/cpu-2host.json", 8, 2, hier_cases); }
static void three_by_2(void **s) { (void)s; run("tests/moe/data/cpu-3host.json", 6, 3, hier_cases); }
static void wire_2x1(void **s) { (void)s; run("tests/moe/data/cpu-2host.json", 2, 2, hier_wire_cases); }
static void wire_2x2(void **s) { (void)s; run("tests/moe/data/cpu-2host.json", 4, 2, hier_wire_cases); }
static void wire_2x4(void **s) { (void)s; run("tests/moe/data/cpu-2host.json", 8, 2, hier_wire_cases); }
static void one_domain(void **s) { (void)s; run("tests/moe/data/cpu-2host.json", 1, 1, hier_cases); }
/* 144 ranks, UCX between the two racks.  It found the teardown crash
 * (endpoints never closed, the worker destroyed under pending requests):
 * src/transport/ucx/README.md. */
static void nvl72_x2(void **s)
{
    (void)s;
    if (getenv("EPX_TEST_QUICK")) {
        skip();
        return;
    }
    run("gb200-nvl72-x2", 144, 2, hier_cases_big);
}

/* 3 ranks on 2 hosts: 2 + 1, refused everywhere; flat engines do not
 * count. */
static int refuse_rank(epx_comm_t *comm, void *arg)
{
    (void)arg;
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = 8;
    p.num_experts = 6;
    p.topk = 2;
    p.max_tokens_per_rank = 4;
    p.flags = EPX_MOE_HIERARCHICAL;
    epx_moe_t *m = (epx_moe_t *)&p;   /* must stay untouched */
    CHECK_ST(epx_moe_create(comm, &p, &m), EPX_ERR_UNSUPPORTED);
    CHECKF(m == (epx_moe_t *)&p, "a refused create wrote its output");
    p.flags = 0;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    int64_t d, c;
    CHECK_ST(epx_moe_cross_domain_bytes(m, &d, &c), EPX_ERR_UNSUPPORTED);
    CHECK_ST(epx_moe_cross_domain_bytes(NULL, &d, &c), EPX_ERR_INVALID);
    CHECK_ST(epx_moe_cross_domain_bytes(m, NULL, &c), EPX_ERR_INVALID);
    epx_moe_destroy(m);
    /* Ranks disagreeing on the flag. */
    p.flags = epx_comm_rank(comm) == 0 ? EPX_MOE_HIERARCHICAL : 0;
    epx_status_t st = epx_moe_create(comm, &p, &m);
    CHECKF(st == EPX_ERR_MISMATCH || st == EPX_ERR_UNSUPPORTED ||
           st == EPX_ERR_PEER, "mixed flags: %s", epx_status_str(st));
    return 0;
}

static void refuse_uneven(void **s)
{
    (void)s;
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/moe/data/cpu-2host.json",
             EPX_TEST_SRCDIR);
    setenv("EPX_TOPO_FILE", path, 1);
    assert_int_equal(epxt_launch(3, 0, refuse_rank, NULL, NULL), EPX_OK);
    unsetenv("EPX_TOPO_FILE");
}

int main(void)
{
    epxt_init("test_hier");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(nvl72_x2),
        cmocka_unit_test(one_domain),
        cmocka_unit_test(two_by_1),
        cmocka_unit_test(two_by_2),
        cmocka_unit_test(two_by_4),
        cmocka_unit_test(three_by_2),
        cmocka_unit_test(wire_2x1),
        cmocka_unit_test(wire_2x2),
        cmocka_unit_test(wire_2x4),
        cmocka_unit_test(refuse_uneven),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
