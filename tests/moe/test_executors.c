/*
 * Both executors against the same reference, by the same code: every case
 * runs on host ranks (the host executor) and, where the build has CUDA and
 * the machine a GPU, on device ranks (the GPU executor); a case the device
 * cannot run is skipped there, not here.  Received rows, metadata, counts,
 * load statistics and combine output are compared bit for bit with
 * tests/ref, so the two executors agree bit for bit with each other.
 *
 * Device ranks: as threads of one process on one GPU (one stream and an
 * SM budget each, so every rank's kernels are resident together): 2, 4
 * and 8 ranks; as separate processes through CUDA IPC / cuMem
 * descriptors: 2 and 4; the NCCL backend with one rank per GPU where
 * there are two GPUs.  Host ranks: the same threads or processes.
 * Hierarchical engines (EPX_MOE_HIERARCHICAL) over the domains of a
 * system description (EPX_TOPO_FILE), as tests/moe/test_hier places them
 * (windows backend on one GPU; NCCL with one rank per GPU, 2 or 4 GPUs).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>
#include <sys/wait.h>
#include <unistd.h>
#include "config.h"
#ifdef EPX_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "common/epx_test.h"
#include "common/thread_ranks.h"
#include "common/xmem.h"
#include "ref/ref.h"
#include "ref/ref_quant.h"
#include "epx/cuda.h"

typedef struct gcase {
    int R, E, K, H, maxT;
    epx_dtype_t dtype;
    epx_gpu_backend_t backend;
    int one_device;     /* all ranks on device 0 */
    int em, align;      /* expert-major layout and its alignment */
    int unweighted;     /* expert-major: EPX_COMBINE_UNWEIGHTED */
    epx_wire_t wire;    /* quantized: dtype BF16 */
    int slots;          /* replicas: num_slots (a multiple of R), slot u
                           holding expert u % E; 0: none */
    int rr;             /* replicas: EPX_REPLICA_ROUND_ROBIN */
    int host;           /* set by run_case: the executor, host or device */
} gcase_t;

/* Replicas, EPX_MOE_ELASTIC: experts 1, 3, 5, .. (nlost of them) have no
 * slot; the others fill the slots in turn (slot_expert), so slots may be
 * below E.  Set by elastic and nccl_two_gpus around their cases. */
static int nlost;

/* Logical expert of slot u: u % E, or (elastic) the live experts in
 * turn. */
static int slot_expert(const gcase_t *c, int u)
{
    if (!nlost)
        return u % c->E;
    const int live = c->E - nlost;
    int i = u % live;
    /* the i-th live expert: experts 1, 3, .., 2 * nlost - 1 are lost */
    for (int e = 0; e < c->E; e++)
        if (!(e % 2 == 1 && e < 2 * nlost) && i-- == 0)
            return e;
    return -1;
}

static int expert_lost(const gcase_t *c, int64_t e)
{
    return nlost && e >= 0 && e < c->E && e % 2 == 1 &&
           e < 2 * nlost;
}

/* Native wire: some ranks' expert outputs apart (pushed), the others' in
 * place (pulled); 2: also a rank's release between a combine's send and
 * recv.  Set by mixed_outputs around its cases. */
static int mixed;

/* EPX_MOE_HIERARCHICAL over the domains of the system description in
 * EPX_TOPO_FILE.  Set by hierarchical around its cases. */
static int hier;
/* Hierarchical: each rank's bytes across domains (dispatch, combine) on
 * host ranks, which its device run must count too. */
static int64_t hier_cross[128][2];

/* The slot token t of source rank `me` sends logical expert e to, from
 * epx.h's text of the two policies (ranks of one host: the source's
 * domain holds every rank, so local-first is "on the source, else
 * candidate (source mod count) of all"). */
static int64_t route_slot(const gcase_t *c, int R, int me, int64_t t,
                          int64_t e)
{
    if (!c->slots || e < 0 || e >= c->E)
        return e;
    if (nlost) {
        /* elastic: the replicas of e in slot order; none: not sent */
        const int spr = c->slots / R;
        int n = 0, here = 0;
        for (int u = 0; u < c->slots; u++)
            if (slot_expert(c, u) == e) {
                n++;
                here += u / spr == me;
            }
        if (n == 0)
            return -1;
        int want = c->rr ? (int)(t % n) : here ? me % here : me % n;
        for (int u = 0; u < c->slots; u++)
            if (slot_expert(c, u) == e &&
                (c->rr || !here || u / spr == me) && want-- == 0)
                return u;
        return -1;
    }
    const int spr = c->slots / R, n = (c->slots - 1 - (int)e) / c->E + 1;
    if (c->rr)
        return e + (int64_t)(t % n) * c->E;
    for (int i = 0; i < n; i++)   /* replica i is slot e + i * E */
        if ((e + (int64_t)i * c->E) / spr == me)
            return e + (int64_t)i * c->E;
    return e + (int64_t)(me % n) * c->E;
}

/* Bytes of an element of the engine dtype. */
static int esz(epx_dtype_t dt)
{
    return dt == EPX_DTYPE_BF16 ? 2 : dt == EPX_DTYPE_FP64 ? 8 : 4;
}

static void gen(const gcase_t *c, int r, int call, int64_t *T, int64_t **idx,
                float **w, void **x)
{
    epxt_rng_t g = { epxt_hash(epxt_seed(), (uint64_t)r, 11, (uint64_t)call,
                               0) };
    const int es = esz(c->dtype);
    *T = (int64_t)epxt_below(&g, (uint64_t)c->maxT + 1);
    *idx = calloc((size_t)(*T * c->K + 1), sizeof(int64_t));
    *w = calloc((size_t)(*T * c->K + 1), sizeof(float));
    *x = calloc((size_t)(*T * c->H + 1), (size_t)es);
    /* A token's experts are distinct (the contract: the host executor
     * refuses a repeat), with -1 holes. */
    for (int64_t i = 0; i < *T * c->K; i++) {
        int64_t e = -1;
        if (epxt_below(&g, 5) != 0)
            for (int again = 1; again;) {
                e = (int64_t)epxt_below(&g, (uint64_t)c->E);
                again = 0;
                for (int64_t j = i - i % c->K; j < i; j++)
                    again |= (*idx)[j] == e;
            }
        (*idx)[i] = e;
        (*w)[i] = (float)epxt_below(&g, 1000) / 997.0f;
    }
    for (int64_t i = 0; i < *T * c->H; i++)
        if (c->dtype == EPX_DTYPE_FP64)   /* the low mantissa bits too */
            ((double *)*x)[i] = (double)((int)epxt_below(&g, 2001) - 1000) /
                                64.0 + (double)epxt_below(&g, 1u << 30) *
                                0x1p-52;
        else
            ref_store(c->dtype, *x, i,
                      (float)((int)epxt_below(&g, 2001) - 1000) / 64.0f);
}

static void y_fn(void *ctx, int src, int64_t t, int who, float *row)
{
    const int H = *(const int *)ctx;
    for (int h = 0; h < H; h++)
        row[h] = (float)((int)(epxt_hash(epxt_seed(), (uint64_t)src, (uint64_t)t,
                                         (uint64_t)who, (uint64_t)h) % 33) - 16) / 8.0f;
}

/* FP64 engines: expert outputs with every bit of the double's mantissa
 * in use, so that a sum taken or rounded in fp32 anywhere differs. */
static void y64_fn(void *ctx, int src, int64_t t, int who, double *row)
{
    const int H = *(const int *)ctx;
    for (int h = 0; h < H; h++) {
        uint64_t v = epxt_hash(epxt_seed() ^ 0x64, (uint64_t)src, (uint64_t)t,
                               (uint64_t)who, (uint64_t)h);
        double u = (double)(v >> 11) * (1.0 / 9007199254740992.0);
        row[h] = (u * 8.0 - 4.0) * (double)(1 << (v & 7)) * 0.125;
    }
}

#define MEM(call) CHECKF((call) == 0, "%s failed", #call)

/* A rank's buffers, allocated once for both calls: with device ranks as
 * threads, cudaFree between calls would wait for the whole device, where
 * peers' kernels are waiting for this rank's next call. */
typedef struct gbufs {
    void *dx, *didx, *dw, *dout, *dy;
    void *dlost;        /* elastic: the lost mask, [maxT][K] */
} gbufs_t;

static int exec_call(const gcase_t *c, epx_moe_t *m, const xmem_t *xm,
                     const gbufs_t *b, int R, int me, int call);

static int exec_rank(epx_comm_t *comm, void *arg)
{
    const gcase_t *c = arg;
    const int R = epx_comm_size(comm), me = epx_comm_rank(comm);
    int dev = EPX_DEVICE_HOST;
    if (!c->host) {
        int ndev = 0;
        CHECK_OK(epx_cuda_devices(&ndev));
        dev = c->one_device ? 0 : me % ndev;
    }
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = c->H;
    p.num_experts = c->E;
    p.topk = c->K;
    p.max_tokens_per_rank = c->maxT;
    p.dtype = c->dtype;
    p.layout = c->em ? EPX_LAYOUT_EXPERT_MAJOR : EPX_LAYOUT_TOKEN_MAJOR;
    p.expert_alignment = c->em ? c->align : 1;
    p.wire = c->wire;
    p.device = dev;
    p.gpu_backend = c->backend;
    epx_moe_t *m = NULL;
    p.num_slots = c->slots;
    p.flags = (nlost ? EPX_MOE_ELASTIC : 0u) |
              (hier ? EPX_MOE_HIERARCHICAL : 0u);
    CHECK_OK(epx_moe_create(comm, &p, &m));
    CHECK(c->host ? epx_cuda_moe_num_sms(m) == 0 : epx_cuda_moe_num_sms(m) >= 1);
    if (c->slots) {
        int32_t *p2l = malloc(sizeof(int32_t) * (size_t)c->slots);
        for (int u = 0; u < c->slots; u++)
            p2l[u] = slot_expert(c, u);
        CHECK_OK(epx_moe_set_placement(m, 0, p2l, c->rr
                                       ? EPX_REPLICA_ROUND_ROBIN
                                       : EPX_REPLICA_LOCAL_FIRST));
        free(p2l);
    }
    xmem_t xm = { !c->host, NULL };
    MEM(mem_stream_create(&xm));
    const int es = esz(c->dtype);
    /* received rows: every (token, k) of every rank, plus padding */
    const size_t rows = (size_t)R * c->maxT * c->K + (size_t)c->E * c->align;
    gbufs_t b;
    MEM(mem_alloc(&xm, &b.dx, ((size_t)c->maxT * c->H + 1) * es));
    MEM(mem_alloc(&xm, &b.didx, ((size_t)c->maxT * c->K + 1) * 8));
    MEM(mem_alloc(&xm, &b.dw, ((size_t)c->maxT * c->K + 1) * 4));
    MEM(mem_alloc(&xm, &b.dout, ((size_t)c->maxT * c->H + 1) * 8));
    MEM(mem_alloc(&xm, &b.dy, (rows * c->H + 1) * es));
    b.dlost = NULL;
    if (nlost)
        MEM(mem_alloc(&xm, &b.dlost, (size_t)c->maxT * c->K + 1));
    /* No rank's first call before every rank allocated: cudaMalloc may
     * wait for the device, where a peer's first call would wait for this
     * rank. */
    CHECK_OK(epx_comm_barrier(comm));
    /* Two calls: both count-buffer parities, and stale rows of the first
     * under the second's padding. */
    for (int call = 0; call < 2; call++)
        CHECK_CALL(exec_call(c, m, &xm, &b, R, me, call));
    /* Load statistics, from the layout's per-expert counts read back with
     * the receive counts: this rank's (token, expert) pairs of both calls
     * (layer 0), ids outside [0, E) left out. */
    int64_t *want = calloc((size_t)c->E, sizeof(int64_t));
    for (int call = 0; call < 2; call++) {
        int64_t T, *idx;
        float *w;
        void *x;
        gen(c, me, call, &T, &idx, &w, &x);
        for (int64_t i = 0; i < T * c->K; i++)
            if (idx[i] >= 0 && idx[i] < c->E)
                want[idx[i]]++;
        free(idx), free(w), free(x);
    }
    epx_moe_stats_t ms = { .struct_size = sizeof(ms) };
    CHECK_OK(epx_moe_stats(m, 0, &ms));
    CHECK(ms.dispatches == 2 && ms.num_experts == c->E);
    for (int e = 0; e < c->E; e++)
        CHECKF(ms.window[e] == want[e], "expert %d: %lld in the statistics, "
               "%lld routed", e, (long long)ms.window[e], (long long)want[e]);
    free(want);
    for (int e = 0; e < c->E; e++)   /* elastic: the placement's gaps */
        CHECK(epx_moe_expert_lost(m, 0, e) == expert_lost(c, e));
    /* Hierarchical: both executors count what crossed domains, the
     * same bytes on each rank (the host's run comes first, with the same
     * inputs). */
    int64_t dx, cx;
    if (hier) {
        CHECK_OK(epx_moe_cross_domain_bytes(m, &dx, &cx));
        CHECK(dx >= 0 && cx >= 0);
        if (c->host) {
            hier_cross[me][0] = dx;
            hier_cross[me][1] = cx;
        } else {
            CHECKF(dx == hier_cross[me][0] && cx == hier_cross[me][1],
                   "rank %d: device counts %lld, %lld bytes across domains, "
                   "host %lld, %lld", me, (long long)dx, (long long)cx,
                   (long long)hier_cross[me][0], (long long)hier_cross[me][1]);
        }
    } else {
        CHECK_ST(epx_moe_cross_domain_bytes(m, &dx, &cx), EPX_ERR_UNSUPPORTED);
    }
    epx_moe_destroy(m);
    mem_free(&xm, b.dx), mem_free(&xm, b.didx), mem_free(&xm, b.dw);
    mem_free(&xm, b.dout), mem_free(&xm, b.dy);
    if (b.dlost)
        mem_free(&xm, b.dlost);
    mem_stream_destroy(&xm);
    return 0;
}

/* One dispatch and combine, checked against the reference. */
static int exec_call(const gcase_t *c, epx_moe_t *m, const xmem_t *xm,
                     const gbufs_t *b, int R, int me, int call)
{
    const int es = esz(c->dtype);
    ref_tokens_t *src = calloc((size_t)R, sizeof(*src));
    int64_t **idx = calloc((size_t)R, sizeof(*idx));
    float **w = calloc((size_t)R, sizeof(*w));
    void **x = calloc((size_t)R, sizeof(*x));
    for (int r = 0; r < R; r++) {
        gen(c, r, call, &src[r].T, &idx[r], &w[r], &x[r]);
        /* NVFP4, second call: the caller's tensor scale, 64 times below
         * the tensor's own so that blocks saturate (every rank its own) */
        float gs = c->wire == EPX_WIRE_NVFP4 && call == 1 && src[r].T > 0
            ? ref_nvfp4_tensor_scale((const uint16_t *)x[r],
                                     (size_t)src[r].T * c->H) / 64.0f
            : 0.0f;
        src[r] = (ref_tokens_t){ src[r].T, x[r], idx[r], w[r], gs };
    }
    /* Replicas: the reference sees the slots the ids are routed to; the
     * engine gets the logical ids. */
    int64_t **ridx = calloc((size_t)R, sizeof(*ridx));
    for (int r = 0; r < R && c->slots; r++) {
        ridx[r] = malloc(sizeof(int64_t) * (size_t)(src[r].T * c->K + 1));
        for (int64_t i = 0; i < src[r].T * c->K; i++)
            ridx[r][i] = route_slot(c, R, r, i / c->K, idx[r][i]);
        src[r].idx = ridx[r];
    }
    const int64_t T = src[me].T;
    void *dx = b->dx, *didx = b->didx, *dw = b->dw, *dout = b->dout;
    MEM(mem_put(xm, dx, x[me], (size_t)(T * c->H) * es));
    MEM(mem_put(xm, didx, idx[me], (size_t)(T * c->K) * 8));
    MEM(mem_put(xm, dw, w[me], (size_t)(T * c->K) * 4));

    epx_handle_t *h = NULL;
    epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
    a.x = (epx_tensor_t){ dx, c->dtype, T, c->H };
    a.topk_idx = (epx_tensor_t){ didx, EPX_DTYPE_INT64, T, c->K };
    a.topk_weights = (epx_tensor_t){ dw, EPX_DTYPE_FP32, T, c->K };
    a.stream = xm->stream;
    a.lost = b->dlost;   /* elastic: where the executor's memory is */
    if (b->dlost) {      /* every entry is overwritten by the call */
        uint8_t *fill = malloc((size_t)(T * c->K + 1));
        memset(fill, 0x5a, (size_t)(T * c->K + 1));
        int put = mem_put(xm, b->dlost, fill, (size_t)(T * c->K));
        free(fill);
        MEM(put);
    }
    /* A tensor scale where there is none to give (not NVFP4), or NaN:
     * refused before anything is queued, the engine still usable. */
    a.x_global_scale = c->wire == EPX_WIRE_NVFP4 ? NAN : 1.0f;
    CHECK_ST(epx_dispatch_send(m, &a, &h), EPX_ERR_INVALID);
    a.x_global_scale = src[me].gscale;
    CHECK_OK(epx_dispatch_send(m, &a, &h));
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK_OK(epx_dispatch_recv(m, h, &rv));

    ref_cfg_t cfg = { R, c->slots ? c->slots : c->E, c->K, c->H, c->dtype,
                      c->em ? EPX_LAYOUT_EXPERT_MAJOR : EPX_LAYOUT_TOKEN_MAJOR,
                      c->em ? c->align : 1, c->wire };
    ref_recv_t want;
    CHECK(ref_dispatch(&cfg, src, me, &want) == 0);
    CHECK(rv.num_rows == want.num_rows);
    for (int j = 0; j < want.num_local; j++) {
        CHECK(rv.expert_counts[j] == want.counts[j]);
        CHECK(rv.local_experts[j] ==
              (c->slots ? slot_expert(c, want.first_local + j)
                        : want.first_local + j));
        CHECK(!c->em || rv.expert_offsets[j] == want.offsets[j]);
    }
    CHECK(c->em ? rv.topk_idx == NULL && rv.expert_offsets != NULL
                : rv.expert_offsets == NULL);
    const int64_t n = rv.num_rows, wk = c->em ? 1 : c->K;
    unsigned char *hx = malloc((size_t)(n * c->H + 1) * es);
    int32_t *hs = malloc(sizeof(int32_t) * (size_t)(2 * n + 2 * n * c->K + 1));
    MEM(mem_sync(xm));
    /* hx stages the expert outputs; their padding rows keep what recv.x
     * held (in place, untouched).  A quantized x is narrower than n * H
     * elements of es bytes: reading that much overran the receive region
     * (past the window's end for some seeds), so it stages zeros. */
    if (c->wire == EPX_WIRE_NATIVE)
        MEM(mem_get(xm, hx, rv.x.data, (size_t)(n * c->H) * es));
    else
        memset(hx, 0, (size_t)(n * c->H) * es);
    if (b->dlost) {   /* 1 exactly where the id names a lost expert */
        uint8_t *lm = malloc((size_t)(T * c->K + 1));
        MEM(mem_get(xm, lm, b->dlost, (size_t)(T * c->K)));
        for (int64_t i = 0; i < T * c->K; i++)
            CHECKF(lm[i] == expert_lost(c, idx[me][i]), "lost mask entry "
                   "%lld (expert %lld): %d (%s executor)", (long long)i,
                   (long long)idx[me][i], lm[i], c->host ? "host" : "device");
        free(lm);
    }
    MEM(mem_get(xm, hs, rv.src_rank, sizeof(int32_t) * n));
    MEM(mem_get(xm, hs + n, rv.src_token, sizeof(int32_t) * n));
    if (!c->em)
        MEM(mem_get(xm, hs + 2 * n, rv.topk_idx, sizeof(int32_t) * n * c->K));
    MEM(mem_get(xm, hs + 2 * n + n * c->K, rv.topk_weights,
                sizeof(float) * n * wk));
    CHECK(memcmp(hs, want.src_rank, 4 * (size_t)n) == 0);
    CHECK(memcmp(hs + n, want.src_token, 4 * (size_t)n) == 0);
    CHECK(c->em ||
          memcmp(hs + 2 * n, want.topk_idx, 4 * (size_t)(n * c->K)) == 0);
    CHECK(memcmp(hs + 2 * n + n * c->K, want.weights, 4 * (size_t)(n * wk)) == 0);
    /* x (and the scales of a quantized wire) of every row but the
     * padding (unspecified there) */
    const size_t rb = (size_t)c->H * es, xr = want.x_row, sr = want.scale_row;
    CHECK(c->wire != EPX_WIRE_NATIVE || xr == rb);
    unsigned char *hq = malloc((size_t)n * (xr + sr + 4) + 1);
    unsigned char *hsc = hq + (size_t)n * xr;
    float *hg = (float *)(hsc + (size_t)n * sr);
    MEM(mem_get(xm, hq, rv.x.data, (size_t)n * xr));
    if (c->wire != EPX_WIRE_NATIVE) {
        CHECK(rv.x_scales.data != NULL && rv.x_scales.rows == n);
        MEM(mem_get(xm, hsc, rv.x_scales.data, (size_t)n * sr));
    } else {
        CHECK(rv.x_scales.data == NULL && rv.x_global_scale == NULL);
    }
    CHECK((c->wire == EPX_WIRE_NVFP4) == (rv.x_global_scale != NULL));
    if (rv.x_global_scale)
        MEM(mem_get(xm, hg, rv.x_global_scale, 4 * (size_t)n));
    for (int64_t i = 0; i < n; i++) {
        if (want.src_rank[i] < 0)
            continue;
        CHECKF(memcmp(hq + i * xr, want.x + i * xr, xr) == 0, "row %lld "
               "differs (wire %d)", (long long)i, (int)c->wire);
        CHECK(sr == 0 || memcmp(hsc + i * sr, want.scales + i * sr, sr) == 0);
        CHECK(!rv.x_global_scale || memcmp(hg + i, want.gscale + i, 4) == 0);
    }
    free(hq);
    void *dy = rv.x.data;
    if (c->wire != EPX_WIRE_NATIVE) {
        /* y may not lie in the receive buffers with a quantized wire. */
        epx_combine_args_t bad = EPX_COMBINE_ARGS_INIT;
        bad.y = (epx_tensor_t){ rv.x.data, c->dtype, n, c->H };
        if (n > 0)
            CHECK_ST(epx_combine_send(m, h, &bad), EPX_ERR_INVALID);
        dy = b->dy;
    } else if (mixed && (me + call) % 2) {
        dy = b->dy;   /* this rank pushes, its peers' rows are pulled */
    }

    /* Expert outputs in place over recv.x, as the contract allows. */
    float *row = malloc(sizeof(float) * (size_t)c->H);
    for (int64_t i = 0; i < n; i++) {
        if (want.src_rank[i] < 0)
            continue;
        const int who = c->em ? want.first_local + want.row_expert[i] : me;
        if (c->dtype == EPX_DTYPE_FP64) {
            y64_fn(&cfg.hidden, want.src_rank[i], want.src_token[i], who,
                   (double *)hx + i * c->H);
            continue;
        }
        y_fn(&cfg.hidden, want.src_rank[i], want.src_token[i], who, row);
        for (int h = 0; h < c->H; h++)
            ref_store(c->dtype, hx, i * c->H + h, row[h]);
    }
    MEM(mem_put(xm, dy, hx, (size_t)(n * c->H) * es));
    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ dy, c->dtype, n, c->H };
    ca.flags = c->unweighted ? EPX_COMBINE_UNWEIGHTED : 0u;
    CHECK_OK(epx_combine_send(m, h, &ca));
    /* FP64 engines return FP64 (the double sum), the others FP32 here; out
     * of the other family is refused by name, the call still pending. */
    const int f64 = c->dtype == EPX_DTYPE_FP64;
    const size_t oes = f64 ? 8 : 4;
    epx_tensor_t out = { dout, f64 ? EPX_DTYPE_FP32 : EPX_DTYPE_FP64, T,
                         c->H };
    /* mixed 2: rank 1 releases its first call between combine's send and
     * recv (its peers still combine, and the next call goes on) */
    const int early = mixed == 2 && me == 1 && call == 0;
    if (!early && call == 0) {
        CHECK_ST(epx_combine_recv(m, h, &out), EPX_ERR_INVALID);
        CHECKF(strstr(epx_last_error(), "FP64") != NULL, "%s",
               epx_last_error());
    }
    out.dtype = f64 ? EPX_DTYPE_FP64 : EPX_DTYPE_FP32;
    if (!early)
        CHECK_OK(epx_combine_recv(m, h, &out));
    epx_handle_release(h);
    h = NULL;
    /* Wait before the copy into pageable memory: queued behind the reduce
     * (which waits for the peers' partials) it could hold the driver
     * while a peer still has its own pageable copies to make before its
     * combine. */
    MEM(mem_sync(xm));
    /* A combine whose device wait timed out says so here, not as wrong
     * values below. */
    CHECK_OK(epx_moe_check(m, NULL));
    char *got = malloc(oes * (size_t)(T * c->H + 1));
    char *exp = malloc(oes * (size_t)(T * c->H + 1));
    MEM(mem_get(xm, got, dout, oes * (size_t)(T * c->H)));
    if (f64)
        CHECK(ref_combine_f64(&cfg, me, &src[me], c->unweighted, y64_fn,
                              &cfg.hidden, (double *)exp) == 0);
    else
        CHECK(ref_combine(&cfg, me, &src[me], c->unweighted, y_fn,
                          &cfg.hidden, EPX_DTYPE_FP32, exp) == 0);
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < T * c->H; i++)
        if (memcmp(got + i * oes, exp + i * oes, oes) != 0 && bad++ == 0)
            first = i;
    CHECKF(early || bad == 0, "combine: %lld of %lld values differ (R %d, H %d, "
           "dtype %d, layout %s, call %d, T %lld, %s executor); first at "
           "token %lld, h %lld: %g, expected %g", (long long)bad,
           (long long)(T * c->H), R, c->H, (int)c->dtype,
           c->em ? "expert" : "token", call, (long long)T,
           c->host ? "host" : "device", (long long)(first / c->H), (long long)(first % c->H),
           first >= 0 ? ref_load64(out.dtype, got, first) : 0.0,
           first >= 0 ? ref_load64(out.dtype, exp, first) : 0.0);

    ref_recv_free(&want);
    for (int r = 0; r < R; r++) {
        free(idx[r]);
        free(ridx[r]);
        free(w[r]);
        free(x[r]);
    }
    free(ridx);
    free(src), free(idx), free(w), free(x), free(hx), free(hs), free(row);
    free(got), free(exp);
    return 0;
}

/* Whether device ranks run here (main probes it in a child process). */
static int device_ok;

/* One case on each executor: ranks as threads (procs 0) or processes,
 * named on stderr before and after it runs (unbuffered: a case that hangs
 * is named even when the run is killed). */
static void run_case(gcase_t *c, int procs)
{
    for (int host = 1; host >= 0; host--) {
        if (!host && !device_ok)
            continue;
        c->host = host;
        fprintf(stderr, "# %s %s: R %d, H %d, dtype %d, %s-major, wire %d%s\n",
                host ? "host" : "device", procs ? "processes" : "threads",
                c->R, c->H, (int)c->dtype, c->em ? "expert" : "token",
                (int)c->wire, nlost ? ", elastic" : c->slots
                                                       ? ", replicas" : "");
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        int rc = procs ? (epxt_launch(c->R, 300, exec_rank, c, NULL) == EPX_OK
                          ? 0 : 1)
                       : epxt_thread_ranks(c->R, 120, exec_rank, c);
        clock_gettime(CLOCK_MONOTONIC, &b);
        fprintf(stderr, "#   %s in %.1f s\n", rc == 0 ? "passed" : "FAILED",
                (double)(b.tv_sec - a.tv_sec) +
                    1e-9 * (double)(b.tv_nsec - a.tv_nsec));
        assert_int_equal(rc, 0);
    }
}

static void threads_one_gpu(void **state)
{
    (void)state;
    static const int ranks[] = { 2, 4, 8 };
    for (size_t i = 0; i < 3; i++)
        for (int d = 0; d < 2; d++) {
            gcase_t c = { ranks[i], 2 * ranks[i] + 3, 4, d ? 7168 : 24, 64,
                          d ? EPX_DTYPE_BF16 : EPX_DTYPE_FP32,
                          EPX_GPU_BACKEND_WINDOWS, 1, 0, 1, 0,
                          EPX_WIRE_NATIVE, 0, 0, 0 };
            run_case(&c, 0);
        }
}

/* Replicas: 6 experts on 8 slots over 4 thread ranks, each policy, both
 * layouts (on the device the kernels route the logical ids, proto.h
 * proto_route_t). */
static void replicas(void **state)
{
    (void)state;
    for (int v = 0; v < 4; v++) {
        gcase_t c = { 4, 6, 3, 24, 32, EPX_DTYPE_FP32,
                      EPX_GPU_BACKEND_WINDOWS, 1, v >= 2, 1, 0,
                      EPX_WIRE_NATIVE, 8, v % 2, 0 };
        run_case(&c, 0);
    }
}

/* Elastic (EPX_MOE_ELASTIC): placements that leave experts out, so an
 * entry naming one is sent nowhere and combine leaves it out, and the
 * lost mask (device memory on device ranks) marks it: 10 experts, 3 of
 * them lost, on 8 slots over 4 thread ranks (num_slots below
 * num_experts, one live expert twice), and 7 experts, 2 lost, on 12
 * slots over 3 thread ranks (several replicas of an expert on one
 * rank); each policy, both layouts.  The load
 * statistics count the demand for lost experts (exec_rank). */
static void elastic(void **state)
{
    (void)state;
    for (int v = 0; v < 4; v++) {
            gcase_t c = { 4, 10, 3, 24, 32, EPX_DTYPE_FP32,
                      EPX_GPU_BACKEND_WINDOWS, 1, v >= 2, v >= 2 ? 4 : 1, 0,
                      EPX_WIRE_NATIVE, 8, v % 2, 0 };
        nlost = 3;
        run_case(&c, 0);
    }
    gcase_t c = { 3, 7, 4, 256, 24, EPX_DTYPE_BF16, EPX_GPU_BACKEND_WINDOWS,
                  1, 1, 1, 0, EPX_WIRE_NATIVE, 12, 0, 0 };
    nlost = 2;
    run_case(&c, 0);
    c.em = 0;                      /* a quantized wire, token-major */
    c.wire = EPX_WIRE_FP8;
    c.rr = 1;
    run_case(&c, 0);
    nlost = 0;
}

/* Expert-major: alignments 1 and 8 (padding), weighted and unweighted
 * combine, thread ranks and process ranks. */
static void expert_major(void **state)
{
    (void)state;
    static const int ranks[] = { 2, 4, 8 };
    for (size_t i = 0; i < 3; i++)
        for (int d = 0; d < 2; d++) {
            gcase_t c = { ranks[i], 2 * ranks[i] + 3, 4, d ? 7168 : 24, 64,
                          d ? EPX_DTYPE_BF16 : EPX_DTYPE_FP32,
                          EPX_GPU_BACKEND_WINDOWS, 1, 1, d ? 8 : 1, d,
                          EPX_WIRE_NATIVE, 0, 0, 0 };
            run_case(&c, 0);
        }
}

/* Outputs in place on some ranks and apart on the others (which ones
 * changes with the call): the sources combine pulled rows and pushed
 * partials in one sum (the fused kernel set's pull combine under
 * EPX_CUDA_KERNELS=fused, the host executor's pull), token-major and
 * expert-major, weighted and unweighted; and a rank that releases a call
 * between its combine's send and recv (the next call must not wait for
 * a pull that never comes). */
static void mixed_outputs(void **state)
{
    (void)state;
    for (int v = 0; v < 4; v++) {
        gcase_t c = { 4, 11, 4, v % 3 ? 24 : 7168, 64,
                      v % 3 ? EPX_DTYPE_FP32 : EPX_DTYPE_BF16,
                      EPX_GPU_BACKEND_WINDOWS, 1, v == 1 || v == 2,
                      v == 2 ? 4 : 1, v == 2, EPX_WIRE_NATIVE, 0, 0, 0 };
        mixed = v == 3 ? 2 : 1;
        run_case(&c, 0);
        mixed = 0;
    }
}

static void fp64_processes(void **state)
{
    (void)state;
    gcase_t p = { 3, 8, 3, 64, 32, EPX_DTYPE_FP64, EPX_GPU_BACKEND_WINDOWS, 1,
                  1, 4, 0, EPX_WIRE_NATIVE, 0, 0, 0 };
    run_case(&p, 1);
    p.em = 0;
    p.align = 1;
    run_case(&p, 1);
}

static void expert_major_processes(void **state)
{
    (void)state;
    gcase_t c = { 3, 8, 3, 256, 32, EPX_DTYPE_BF16, EPX_GPU_BACKEND_WINDOWS,
                  1, 1, 4, 0, EPX_WIRE_NATIVE, 0, 0, 0 };
    run_case(&c, 1);
}

/* Refused on both executors: a quantized wire with FP32 (throughput and
 * low latency) and an unknown wire; nothing created. */
static int wire_refused_rank(epx_comm_t *comm, void *arg)
{
    const int *host = arg;
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = 64;
    p.num_experts = 4;
    p.topk = 2;
    p.max_tokens_per_rank = 8;
    p.dtype = EPX_DTYPE_FP32;
    p.wire = EPX_WIRE_FP8;
    p.device = *host ? EPX_DEVICE_HOST : 0;
    epx_moe_t *m = NULL;
    CHECK_ST(epx_moe_create(comm, &p, &m), EPX_ERR_INVALID);
    CHECK(m == NULL);
    p.dtype = EPX_DTYPE_BF16;
    p.wire = (epx_wire_t)99;
    CHECK_ST(epx_moe_create(comm, &p, &m), EPX_ERR_INVALID);
    p.dtype = EPX_DTYPE_FP32;
    p.wire = EPX_WIRE_NVFP4;
    p.mode = EPX_MODE_LOW_LATENCY;
    p.layout = EPX_LAYOUT_EXPERT_MAJOR;
    CHECK_ST(epx_moe_create(comm, &p, &m), EPX_ERR_INVALID);
    CHECK(m == NULL);
    return 0;
}

static void wire_refused(void **state)
{
    (void)state;
    for (int host = 1; host >= !device_ok; host--)
        assert_int_equal(epxt_thread_ranks(2, 60, wire_refused_rank, &host), 0);
}

/* Quantized wires (on the device fused into the pack): every format, both
 * layouts, a row of 16-byte chunks (7168) and rows with short blocks and
 * odd lengths (200, 33: the scalar paths), 1, 3 and 8 ranks. */
static void quantized_wires(void **state)
{
    (void)state;
    static const epx_wire_t wires[] = { EPX_WIRE_FP8, EPX_WIRE_FP8_UE8M0,
                                        EPX_WIRE_MXFP8, EPX_WIRE_NVFP4 };
    static const int ranks[] = { 1, 3, 8 }, Hs[] = { 7168, 200, 33 };
    for (size_t wi = 0; wi < 4; wi++)
        for (size_t i = 0; i < 3; i++)
            for (int em = 0; em < 2; em++) {
                gcase_t c = { ranks[i], 2 * ranks[i] + 3, 4,
                              Hs[(wi + i + (size_t)em) % 3], 48,
                              EPX_DTYPE_BF16, EPX_GPU_BACKEND_WINDOWS, 1,
                              em, em ? 4 : 1, 0, wires[wi], 0, 0, 0 };
                run_case(&c, 0);
            }
}

static void processes_one_gpu(void **state)
{
    (void)state;
    static const int ranks[] = { 2, 4 };
    for (size_t i = 0; i < 2; i++) {
        gcase_t c = { ranks[i], 2 * ranks[i] + 1, 2, 256, 32, EPX_DTYPE_BF16,
                      EPX_GPU_BACKEND_WINDOWS, 1, 0, 1, 0, EPX_WIRE_NATIVE,
                      0, 0, 0 };
        run_case(&c, 1);
    }
}

/* Bad routing ids: an expert outside [-1, E), and one a token names
 * twice.  The host executor refuses the dispatch (nothing sent); the
 * device finds them while the call runs and epx_moe_check says so once.
 * Either way the engine stays usable: a good call follows, checked. */
static int bad_ids_rank(epx_comm_t *comm, void *arg)
{
    const gcase_t *c = arg;
    const int me = epx_comm_rank(comm);
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = c->H;
    p.num_experts = c->E;
    p.topk = c->K;
    p.max_tokens_per_rank = c->maxT;
    p.dtype = EPX_DTYPE_FP32;
    p.device = c->host ? EPX_DEVICE_HOST : 0;
    epx_moe_t *m = NULL;
    CHECK_OK(epx_moe_create(comm, &p, &m));
    xmem_t xm = { !c->host, NULL };
    MEM(mem_stream_create(&xm));
    gbufs_t b;
    const size_t rows = (size_t)epx_comm_size(comm) * c->maxT * c->K;
    MEM(mem_alloc(&xm, &b.dx, (size_t)c->maxT * c->H * 4));
    MEM(mem_alloc(&xm, &b.didx, (size_t)c->maxT * c->K * 8));
    MEM(mem_alloc(&xm, &b.dw, (size_t)c->maxT * c->K * 4));
    MEM(mem_alloc(&xm, &b.dout, (size_t)c->maxT * c->H * 4));
    MEM(mem_alloc(&xm, &b.dy, (rows + 1) * c->H * 4));
    float *x = calloc((size_t)c->maxT * c->H, 4), w[2] = { 0.5f, 0.5f };
    MEM(mem_put(&xm, b.dx, x, (size_t)c->maxT * c->H * 4));
    MEM(mem_put(&xm, b.dw, w, sizeof(w)));
    CHECK_OK(epx_comm_barrier(comm));
    /* rank 0 names expert E (out of range), rank 1 expert 1 twice; the
     * other ranks send good ids, and see their peers' failure */
    const int64_t bad[2][2] = { { 0, c->E }, { 1, 1 } }, good[2] = { 0, 1 };
    for (int round = 0; round < 2; round++) {
        const int64_t *ids = round == 0 && me < 2 ? bad[me] : good;
        MEM(mem_put(&xm, b.didx, ids, sizeof(good)));
        epx_dispatch_args_t a = EPX_DISPATCH_ARGS_INIT;
        a.x = (epx_tensor_t){ b.dx, EPX_DTYPE_FP32, 1, c->H };
        a.topk_idx = (epx_tensor_t){ b.didx, EPX_DTYPE_INT64, 1, c->K };
        a.topk_weights = (epx_tensor_t){ b.dw, EPX_DTYPE_FP32, 1, c->K };
        a.stream = xm.stream;
        epx_handle_t *h = NULL;
        epx_status_t sst = epx_dispatch_send(m, &a, &h);
        if (round == 0 && c->host) {
            /* refused where it was called, before anything was sent; the
             * peers are never left waiting (their call fails with it) */
            CHECK(sst != EPX_OK && h == NULL);
            if (me < 2)
                CHECKF(sst == EPX_ERR_INVALID && strstr(epx_last_error(),
                       me == 0 ? "out of range" : "twice"), "rank %d: %s",
                       me, epx_last_error());
            continue;
        }
        CHECK_OK(sst);
        epx_recv_t rv = { .struct_size = sizeof(rv) };
        CHECK_OK(epx_dispatch_recv(m, h, &rv));
        epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
        ca.y = rv.x;
        CHECK_OK(epx_combine_send(m, h, &ca));
        epx_tensor_t out = { b.dout, EPX_DTYPE_FP32, 1, c->H };
        CHECK_OK(epx_combine_recv(m, h, &out));
        epx_handle_release(h);
        MEM(mem_sync(&xm));
        if (round == 0 && me < 2)   /* the device found them */
            CHECK_ST(epx_moe_check(m, NULL), EPX_ERR_INVALID);
        CHECK_OK(epx_moe_check(m, NULL));
    }
    free(x);
    epx_moe_destroy(m);
    mem_free(&xm, b.dx), mem_free(&xm, b.didx), mem_free(&xm, b.dw);
    mem_free(&xm, b.dout), mem_free(&xm, b.dy);
    mem_stream_destroy(&xm);
    return 0;
}

static void bad_ids(void **state)
{
    (void)state;
    for (int host = 1; host >= !device_ok; host--) {
        gcase_t c = { 3, 5, 2, 8, 4, EPX_DTYPE_FP32, EPX_GPU_BACKEND_WINDOWS,
                      1, 0, 1, 0, EPX_WIRE_NATIVE, 0, 0, host };
        fprintf(stderr, "# %s threads: bad ids\n", host ? "host" : "device");
        assert_int_equal(epxt_thread_ranks(c.R, 60, bad_ids_rank, &c), 0);
    }
}

/* Hierarchical two-hop (EPX_MOE_HIERARCHICAL): the ranks on the hosts of
 * a system description (tests/moe/data/cpu-<n>host.json, a domain per
 * host; device ranks stay threads on one GPU, their domains are the
 * description's): 2 domains of 1, 2 and 4 ranks and 3 of 2, both layouts
 * (expert-major with padding, weighted and unweighted), fp32, bf16 and
 * fp64 (double partials and accumulators), native and quantized wires (on the device: the record quantized once
 * at the source, forwarded by the gateway). */
static void set_topo(const char *file)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/moe/data/%s", EPX_TEST_SRCDIR,
             file);
    /* A GPU bundle (scripts/gpu-bundle.sh) carries them beside its tests,
     * run from its top directory. */
    if (access(path, R_OK) != 0)
        snprintf(path, sizeof(path), "tests/moe/data/%s", file);
    setenv("EPX_TOPO_FILE", path, 1);
}

static void hierarchical(void **state)
{
    (void)state;
    static const struct { const char *topo; int R; } shapes[] = {
        { "cpu-2host.json", 2 }, { "cpu-2host.json", 4 },
        { "cpu-3host.json", 6 }, { "cpu-2host.json", 8 },
    };
    static const epx_wire_t wires[] = { EPX_WIRE_FP8, EPX_WIRE_NVFP4,
                                        EPX_WIRE_MXFP8, EPX_WIRE_FP8_UE8M0 };
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        for (int v = 0; v < 3; v++) {
            const int R = shapes[i].R;
            gcase_t c = { R, 2 * R + 3, 4, v == 0 ? 24 : v == 1 ? 7168 : 200,
                          v == 1 ? 64 : 32,
                          v == 0 ? EPX_DTYPE_FP32 : EPX_DTYPE_BF16,
                          EPX_GPU_BACKEND_WINDOWS, 1, v == 1 || (v == 2 && i % 2),
                          v == 1 ? 8 : 1, v == 1 && i % 2,
                          v == 2 ? wires[i] : EPX_WIRE_NATIVE, 0, 0, 0 };
            set_topo(shapes[i].topo);
            hier = 1;
            run_case(&c, 0);
            hier = 0;
            unsetenv("EPX_TOPO_FILE");
        }
    /* FP64 engines: partials and accumulators in double (out FP64), both
     * layouts, odd rows (33 doubles) and 16-byte ones */
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        const int R = shapes[i].R;
        gcase_t c = { R, 2 * R + 3, 4, i % 2 ? 33 : 64, 32, EPX_DTYPE_FP64,
                      EPX_GPU_BACKEND_WINDOWS, 1, (int)(i >= 2),
                      i == 3 ? 4 : 1, i == 2, EPX_WIRE_NATIVE, 0, 0, 0 };
        set_topo(shapes[i].topo);
        hier = 1;
        run_case(&c, 0);
        hier = 0;
        unsetenv("EPX_TOPO_FILE");
    }
}

/* Device only: hierarchical over the NCCL backend (proto/hier_nccl.h),
 * one rank per GPU, 2 ranks in 2 domains of 1 and, with 4 GPUs, 4 in 2
 * of 2 (cpu-2host.json): both layouts, bf16, fp32, a quantized wire,
 * FP64; against the reference and the host executor's cross-domain
 * bytes, as the windows cases above. */
static void hier_nccl(void **state)
{
    (void)state;
    int ndev = 0;
    if (!device_ok || epx_cuda_devices(&ndev) != EPX_OK || ndev < 2)
        skip();
    for (int R = 2; R <= 4 && R <= ndev; R += 2)
        for (int v = 0; v < 4; v++) {
            gcase_t c = { R, 2 * R + 3, 4, v == 1 ? 24 : v == 3 ? 33 : 200,
                          32, v == 1 ? EPX_DTYPE_FP32
                              : v == 3 ? EPX_DTYPE_FP64 : EPX_DTYPE_BF16,
                          EPX_GPU_BACKEND_NCCL, 0, v % 2, v == 1 ? 4 : 1,
                          v == 1, v == 2 ? EPX_WIRE_NVFP4 : EPX_WIRE_NATIVE,
                          0, 0, 0 };
            set_topo("cpu-2host.json");
            hier = 1;
            run_case(&c, 0);
            hier = 0;
            unsetenv("EPX_TOPO_FILE");
        }
}

/* Refused: domains of unequal size (3 ranks on 2 hosts) on both
 * executors. */
static int hier_refused_rank(epx_comm_t *comm, void *arg)
{
    const int *host = arg;
    epx_moe_params_t p = EPX_MOE_PARAMS_INIT;
    p.hidden = 64;
    p.num_experts = 6;
    p.topk = 2;
    p.max_tokens_per_rank = 8;
    p.flags = EPX_MOE_HIERARCHICAL;
    p.device = *host ? EPX_DEVICE_HOST : 0;
    epx_moe_t *m = NULL;
    CHECK_ST(epx_moe_create(comm, &p, &m), EPX_ERR_UNSUPPORTED);
    CHECK(m == NULL);
    return 0;
}

static void hier_refused(void **state)
{
    (void)state;
    set_topo("cpu-2host.json");
    for (int host = 1; host >= !device_ok; host--)
        assert_int_equal(epxt_thread_ranks(3, 60, hier_refused_rank, &host), 0);
    unsetenv("EPX_TOPO_FILE");
}

/* FP64 engines (native wire, combine in double, out FP64): both layouts,
 * weighted and unweighted, 16-byte rows (256 doubles) and odd ones (33:
 * the element paths), mixed pushed and in-place outputs (the fused set
 * combines FP64 with the classic kernels), replicas; process ranks in
 * fp64_processes. */
static void fp64_engines(void **state)
{
    (void)state;
    static const int ranks[] = { 2, 4, 8 };
    for (size_t i = 0; i < 3; i++)
        for (int v = 0; v < 3; v++) {
            gcase_t c = { ranks[i], 2 * ranks[i] + 3, 4, v == 1 ? 33 : 256,
                          48, EPX_DTYPE_FP64, EPX_GPU_BACKEND_WINDOWS, 1,
                          v >= 1, v == 2 ? 8 : 1, v == 1, EPX_WIRE_NATIVE, 0,
                          0, 0 };
            run_case(&c, 0);
        }
    for (int v = 0; v < 2; v++) {
        gcase_t c = { 4, 11, 4, 40, 32, EPX_DTYPE_FP64,
                      EPX_GPU_BACKEND_WINDOWS, 1, v, v ? 4 : 1, 0,
                      EPX_WIRE_NATIVE, 0, 0, 0 };
        mixed = 2;
        run_case(&c, 0);
        mixed = 0;
        c.slots = 12;   /* replicas: 11 experts on 12 slots */
        c.rr = v;
        run_case(&c, 0);
    }
}

/* Device only: the NCCL backend, one rank per GPU: token-major and
 * expert-major. */
static void nccl_two_gpus(void **state)
{
    (void)state;
    int ndev = 0;
    if (!device_ok || epx_cuda_devices(&ndev) != EPX_OK || ndev < 2)
        skip();
    gcase_t c = { 2, 7, 3, 512, 64, EPX_DTYPE_BF16, EPX_GPU_BACKEND_NCCL, 0,
                  0, 1, 0, EPX_WIRE_NATIVE, 0, 0, 0 };
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &c), 0);
    c.wire = EPX_WIRE_NVFP4;   /* the scales and row scales move too */
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &c), 0);
    c.wire = EPX_WIRE_FP8;
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &c), 0);
    /* Expert-major: rows staged per expert, received in source order and
     * scattered (alignment padding, weighted and not), native and
     * quantized (an odd count of block scales: H 200 over 32-blocks) */
    gcase_t em = { 2, 7, 3, 512, 64, EPX_DTYPE_BF16, EPX_GPU_BACKEND_NCCL, 0,
                   1, 4, 0, EPX_WIRE_NATIVE, 0, 0, 0 };
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &em), 0);
    em.unweighted = 1;
    em.align = 1;
    em.dtype = EPX_DTYPE_FP32;
    em.H = 24;
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &em), 0);
    em.unweighted = 0;
    em.dtype = EPX_DTYPE_BF16;
    em.H = 200;
    em.wire = EPX_WIRE_MXFP8;
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &em), 0);
    em.wire = EPX_WIRE_NVFP4;
    em.align = 8;
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &em), 0);
    /* replicas: 5 experts on 8 slots */
    em.wire = EPX_WIRE_NATIVE;
    em.E = 5;
    em.slots = 8;
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &em), 0);
    /* elastic: 9 experts, 3 lost, on 6 slots, both layouts */
    em.E = 9;
    em.slots = 6;
    nlost = 3;
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &em), 0);
    em.em = 0;
    em.rr = 1;
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &em), 0);
    nlost = 0;
    /* FP64: both layouts, rows in double, the partials in double (the
     * expert-major case of before the elastic ones) */
    em.em = 1;
    em.rr = 0;
    em.E = 5;
    em.dtype = EPX_DTYPE_FP64;
    em.slots = 0;
    em.H = 96;
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &em), 0);
    c.wire = EPX_WIRE_NATIVE;
    c.dtype = EPX_DTYPE_FP64;
    c.H = 33;
    assert_int_equal(epxt_thread_ranks(2, 120, exec_rank, &c), 0);
}

int main(int argc, char **argv)
{
    /* Line by line, so that a run killed by a time limit keeps them. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    epxt_init("test_executors");
    /* Thread ranks share one context: their streams need hardware queues
     * of their own (src/cuda/README.md, "Ranks as threads"). */
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
    device_ok = xmem_have_gpu();
    /* --device: the device executor is what is asked for (the GPU
     * machine's script), so no device is a skip, not a pass. */
    if (argc > 1 && !strcmp(argv[1], "--device") && !device_ok)
        return 77;
    /* Forked process ranks first, before this process touches CUDA. */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(processes_one_gpu),
        cmocka_unit_test(expert_major_processes),
        cmocka_unit_test(fp64_processes),
        cmocka_unit_test(threads_one_gpu),
        cmocka_unit_test(expert_major),
        cmocka_unit_test(replicas),
        cmocka_unit_test(elastic),
        cmocka_unit_test(mixed_outputs),
        cmocka_unit_test(fp64_engines),
        cmocka_unit_test(nccl_two_gpus),
        cmocka_unit_test(quantized_wires),
        cmocka_unit_test(wire_refused),
        cmocka_unit_test(bad_ids),
        cmocka_unit_test(hierarchical),
        cmocka_unit_test(hier_refused),
        cmocka_unit_test(hier_nccl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
