/*
 * Dispatch over a quantized wire.  x is bf16; each token is quantized
 * once at its source and arrives as e4m3 (fp8) or e2m1 (fp4) codes, one
 * scale per block of the row (epx_recv_t.x, x_scales) and for NVFP4 one
 * fp32 scale per row (x_global_scale), ready for an fp8 or fp4 GEMM; here
 * each expert dequantizes them.  Combine stays bf16.  H = 320 is no
 * multiple of the blocks: a row's last block is short.  Checked: each
 * received value within the bound of src/moe/README.md ("Error bounds")
 * for its scale, the scales no larger than the recipe gives, and the
 * combined output within the bound of the largest scales plus the bf16
 * roundings of expert outputs and partials.
 *
 * Usage: moe_fp8 [RANKS]   (default 4; rank 1 sends no token)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <epx.h>

enum { T = 16, H = 320, E = 8, K = 2 };

static const struct { epx_wire_t wire; const char *name; int block; } wires[] = {
    { EPX_WIRE_FP8, "fp8", 128 },             /* fp32 scales */
    { EPX_WIRE_FP8_UE8M0, "fp8-ue8m0", 128 }, /* power-of-two scales */
    { EPX_WIRE_MXFP8, "mxfp8", 32 },
    { EPX_WIRE_NVFP4, "nvfp4", 16 },          /* e4m3 block scales */
};

#define CHECK(call)                                                       \
    do {                                                                  \
        if ((call) != EPX_OK) {                                           \
            fprintf(stderr, "%s: %s\n", #call, epx_last_error());         \
            return 1;                                                     \
        }                                                                 \
    } while (0)

static int tokens_of(int rank) { return rank == 1 ? 0 : T - rank % T; }
/* Values of varied magnitude (blocks get different scales), exact in
 * bf16: at most 7 significant bits. */
static float x_of(int rank, int t, int h)
{
    return (float)((rank * 31 + t * 7 + h * 13) % 201 - 100) / 16.0f *
           (float)(1 << (t + h / 40) % 6);
}
static int32_t expert_of(int rank, int t, int k)
{
    return (rank * 3 + t + k * (E / K)) % E;
}
static float weight_of(int k) { return k ? 0.25f : 0.75f; }

static uint16_t bf16(float f)   /* round to nearest even */
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fff + (u >> 16 & 1)) >> 16);
}
static float e4m3(uint8_t c)   /* OCP E4M3FN */
{
    int e = c >> 3 & 15, m = c & 7;
    float v = e ? ldexpf(1.0f + m / 8.0f, e - 7) : ldexpf(m / 8.0f, -6);
    return (c & 0x7f) == 0x7f ? NAN : c & 0x80 ? -v : v;
}
static const float e2m1[16] = { 0, 0.5f, 1, 1.5f, 2, 3, 4, 6,
                                 -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6 };

/* Largest |x| of x's block in a source row, and of the whole row. */
static float amax(int s, int t, int h0, int h1)
{
    float a = 0.0f;
    for (int h = h0; h < h1 && h < H; h++)
        a = fmaxf(a, fabsf(x_of(s, t, h)));
    return a;
}

/* Documented |x - q| bound for block scale s (NVFP4: s = sb * g). */
static float bound(int nvfp4, float x, float s, float g)
{
    if (nvfp4)
        return fmaxf(s / 4, fabsf(x) / 4) + 6 * g * 0x1p-10f;
    return fabsf(x) * (0x1p-4f + 0x1p-20f) + s * 0x1p-10f;
}
/* The largest scale the recipe gives a block of this amax (fp8: amax /
 * 448, at most doubled by UE8M0's rounding up; NVFP4: amax / 6 in e4m3,
 * rounded up by at most 2^-4, or an e4m3 subnormal's 2^-10). */
static float max_scale(int nvfp4, float ab, float g)
{
    return nvfp4 ? ab / 6 * (1 + 0x1p-4f) + g * 0x1p-10f : 2 * ab / 448;
}

/* Element h of received row r, dequantized; its block scale in *s. */
static float deq(const epx_recv_t *rv, int64_t r, int h, int block, float *s)
{
    const uint8_t *sc = rv->x_scales.data, *q = rv->x.data;
    int64_t b = r * rv->x_scales.cols + h / block;
    if (rv->x_scales.dtype == EPX_DTYPE_FP32)
        *s = ((const float *)rv->x_scales.data)[b];
    else if (rv->x_scales.dtype == EPX_DTYPE_UE8M0)
        *s = ldexpf(1.0f, sc[b] - 127);
    else   /* NVFP4: e4m3 block scale times the row's fp32 scale */
        *s = e4m3(sc[b]) * rv->x_global_scale[r];
    if (rv->x.dtype == EPX_DTYPE_FP8_E4M3)
        return e4m3(q[r * rv->x.cols + h]) * *s;
    int c = q[r * rv->x.cols + h / 2];   /* element 2i: low nibble */
    return e2m1[h % 2 ? c >> 4 : c & 15] * *s;
}

static int run_wire(epx_comm_t *comm, int wi)
{
    int rank = epx_comm_rank(comm), n = tokens_of(rank), rc = 0;
    int block = wires[wi].block, nv = wires[wi].wire == EPX_WIRE_NVFP4;

    epx_moe_params_t mp = EPX_MOE_PARAMS_INIT;
    mp.hidden = H;
    mp.num_experts = E;
    mp.topk = K;
    mp.max_tokens_per_rank = T;
    mp.dtype = EPX_DTYPE_BF16;    /* quantized wires take bf16 x */
    mp.layout = EPX_LAYOUT_EXPERT_MAJOR;
    mp.wire = wires[wi].wire;
    epx_moe_t *moe;
    CHECK(epx_moe_create(comm, &mp, &moe));

    uint16_t x[T * H];
    int32_t idx[T * K];
    float w[T * K], out[T * H];
    for (int t = 0; t < n; t++) {
        for (int h = 0; h < H; h++)
            x[t * H + h] = bf16(x_of(rank, t, h));
        for (int k = 0; k < K; k++) {
            idx[t * K + k] = expert_of(rank, t, k);
            w[t * K + k] = weight_of(k);
        }
    }
    epx_dispatch_args_t da = EPX_DISPATCH_ARGS_INIT;
    da.x = (epx_tensor_t){ x, EPX_DTYPE_BF16, n, H };
    da.topk_idx = (epx_tensor_t){ idx, EPX_DTYPE_INT32, n, K };
    da.topk_weights = (epx_tensor_t){ w, EPX_DTYPE_FP32, n, K };
    epx_handle_t *handle = NULL;
    epx_recv_t rv = { .struct_size = sizeof(rv) };
    CHECK(epx_dispatch_send(moe, &da, &handle));
    CHECK(epx_dispatch_recv(moe, handle, &rv));

    /* Each expert dequantizes its rows and multiplies them by e + 1. */
    uint16_t *y = calloc((size_t)(rv.num_rows ? rv.num_rows : 1) * H, 2);
    for (int j = 0; j < rv.num_local_experts; j++) {
        int e = rv.local_experts[j];
        for (int64_t r = rv.expert_offsets[j];
             r < rv.expert_offsets[j] + rv.expert_counts[j]; r++) {
            int s = rv.src_rank[r], t = rv.src_token[r];
            float g = nv ? amax(s, t, 0, H) / 2688 : 0;   /* 6 * 448 */
            if (nv && fabsf(rv.x_global_scale[r] - g) > g * 0x1p-20f)
                rc = 1;
            for (int h = 0; h < H; h++) {
                float sc, q = deq(&rv, r, h, block, &sc), v = x_of(s, t, h);
                float ab = amax(s, t, h / block * block, (h / block + 1) * block);
                if (sc > max_scale(nv, ab, g) * (1 + 0x1p-20f) && ab > 0)
                    rc = 1;
                if (!(fabsf(q - v) <= bound(nv, v, sc, g)))
                    rc = 1;
                y[r * H + h] = bf16((float)(e + 1) * q);
            }
        }
    }
    if (rc)
        fprintf(stderr, "rank %d: %s: received values off bound\n", rank,
                wires[wi].name);

    epx_combine_args_t ca = EPX_COMBINE_ARGS_INIT;
    ca.y = (epx_tensor_t){ y, EPX_DTYPE_BF16, rv.num_rows, H };
    epx_tensor_t o = { out, EPX_DTYPE_FP32, n, H };
    CHECK(epx_combine_send(moe, handle, &ca));
    CHECK(epx_combine_recv(moe, handle, &o));
    epx_handle_release(handle);

    /* out[t] = sum_k w_k (e_k + 1) q: within the bound of the largest
     * scales, plus 2^-7 for the bf16 roundings of y and the partials. */
    for (int t = 0; t < n; t++) {
        float g = amax(rank, t, 0, H) / 2688;
        for (int h = 0; h < H; h++) {
            float v = x_of(rank, t, h), ref = 0, tol = 0;
            float ab = amax(rank, t, h / block * block, (h / block + 1) * block);
            float b = bound(nv, v, max_scale(nv, ab, g), g);
            for (int k = 0; k < K; k++) {
                float m = w[t * K + k] * (float)(idx[t * K + k] + 1);
                ref += m * v;
                tol += m * (b + (fabsf(v) + b) * 0x1p-7f);
            }
            if (!(fabsf(out[t * H + h] - ref) <= tol)) {
                fprintf(stderr, "rank %d: %s: token %d: out %g, want %g\n",
                        rank, wires[wi].name, t, out[t * H + h], ref);
                rc = 1;
                break;
            }
        }
    }
    if (!rc)
        printf("rank %d: %s: %lld rows, %lld scales each, ok\n", rank,
               wires[wi].name, (long long)rv.num_rows,
               (long long)rv.x_scales.cols);
    free(y);
    epx_moe_destroy(moe);
    return rc;
}

/* Runs on every rank: one engine per wire format. */
static int rank_main(epx_comm_t *comm, void *arg)
{
    (void)arg;
    for (size_t wi = 0; wi < sizeof(wires) / sizeof(wires[0]); wi++)
        if (run_wire(comm, (int)wi) != 0)
            return 1;
    return 0;
}

int main(int argc, char **argv)
{
    /* Started by a launcher that set EPX_RANK, EPX_NRANKS, EPX_ROOT and
     * EPX_JOB_KEY: this process is one rank. */
    if (getenv("EPX_NRANKS")) {
        epx_comm_params_t cp = EPX_COMM_PARAMS_INIT;
        epx_comm_t *comm;
        CHECK(epx_comm_create(&cp, &comm));
        int rc = rank_main(comm, NULL);
        epx_comm_destroy(comm);
        return rc;
    }
    /* Otherwise fork the ranks on this host. */
    int ranks = argc > 1 ? atoi(argv[1]) : 4, failed = -1;
    if (epx_launch_local(ranks, NULL, rank_main, NULL, &failed) != EPX_OK) {
        fprintf(stderr, "rank %d failed: %s\n", failed, epx_last_error());
        return 1;
    }
    return 0;
}
