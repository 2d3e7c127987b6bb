/*
 * quant-bench: one core's throughput of the quantized formats' conversions
 * (src/moe/quant.c) on bf16 rows of hidden 7168: quantize bf16 -> format and
 * dequantize format -> bf16, in GB/s of bf16 bytes.
 *
 *   quant-bench [rows] [seconds per case]     (default 256 rows, 0.5 s)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "moe/quant.h"
#include "util/util.h"

enum { H = 7168 };

typedef struct bufs {
    size_t rows;
    uint16_t *x, *y;
    uint8_t *q, *s;
    float *fs;
    float g;
} bufs_t;

static void q_fp8(bufs_t *b, size_t r)
{
    moe_quant_fp8(b->x + r * H, H, b->q + r * H, b->fs + r * (H / 128));
}
static void d_fp8(bufs_t *b, size_t r)
{
    moe_dequant_fp8(b->q + r * H, b->fs + r * (H / 128), H, b->y + r * H,
                    EPX_DTYPE_BF16);
}
static void q_e8(bufs_t *b, size_t r)
{
    moe_quant_fp8_ue8m0(b->x + r * H, H, 128, b->q + r * H, b->s + r * (H / 128));
}
static void d_e8(bufs_t *b, size_t r)
{
    moe_dequant_fp8_ue8m0(b->q + r * H, b->s + r * (H / 128), H, 128,
                          b->y + r * H, EPX_DTYPE_BF16);
}
static void q_mx(bufs_t *b, size_t r)
{
    moe_quant_fp8_ue8m0(b->x + r * H, H, 32, b->q + r * H, b->s + r * (H / 32));
}
static void d_mx(bufs_t *b, size_t r)
{
    moe_dequant_fp8_ue8m0(b->q + r * H, b->s + r * (H / 32), H, 32,
                          b->y + r * H, EPX_DTYPE_BF16);
}
static void q_fp4(bufs_t *b, size_t r)
{
    moe_quant_nvfp4(b->x + r * H, H, b->g, b->q + r * (H / 2),
                    b->s + r * (H / 16));
}
static void d_fp4(bufs_t *b, size_t r)
{
    moe_dequant_nvfp4(b->q + r * (H / 2), b->s + r * (H / 16), b->g, H,
                      b->y + r * H, EPX_DTYPE_BF16);
}

/* CPU time of this thread: on a shared machine the core's own rate, not
 * the share of it the scheduler gave. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* GB/s of bf16 bytes through fn over all rows, repeated for `secs` of CPU
 * time. */
static double rate(void (*fn)(bufs_t *, size_t), bufs_t *b, double secs)
{
    size_t passes = 0;
    double t0 = cpu_now(), t;
    do {
        for (size_t r = 0; r < b->rows; r++)
            fn(b, r);
        passes++;
        t = cpu_now() - t0;
    } while (t < secs);
    return (double)passes * b->rows * H * 2 / t / 1e9;
}

int main(int argc, char **argv)
{
    bufs_t b;
    b.rows = argc > 1 ? strtoul(argv[1], NULL, 0) : 256;
    double secs = argc > 2 ? atof(argv[2]) : 0.5;
    if (b.rows == 0 || secs <= 0) {
        fprintf(stderr, "usage: quant-bench [rows > 0] [seconds > 0]\n");
        return 2;
    }
    b.x = malloc(b.rows * H * 2);
    b.y = malloc(b.rows * H * 2);
    b.q = malloc(b.rows * H);
    b.s = malloc(b.rows * (H / 16));
    b.fs = malloc(b.rows * (H / 128) * sizeof(float));
    if (!b.x || !b.y || !b.q || !b.s || !b.fs) {
        fprintf(stderr, "quant-bench: out of memory for %zu rows\n", b.rows);
        return 1;
    }
    /* Activation-like values: normal-ish around 1 with a few outliers. */
    uint64_t st = 12345;
    for (size_t i = 0; i < b.rows * H; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        float v = (float)((int64_t)(st >> 11) % 2000001 - 1000000) * 1e-6f;
        b.x[i] = epx__f32_to_bf16((st >> 60) == 0 ? v * 40.0f : v);
    }
    b.g = moe_quant_nvfp4_global(b.x, b.rows * H);

    static const struct {
        const char *name;
        void (*q)(bufs_t *, size_t), (*d)(bufs_t *, size_t);
    } cases[] = {
        { "fp8 (fp32 scales /128)", q_fp8, d_fp8 },
        { "fp8 (UE8M0 scales /128)", q_e8, d_e8 },
        { "mxfp8 (UE8M0 scales /32)", q_mx, d_mx },
        { "nvfp4 (e4m3 /16 + fp32)", q_fp4, d_fp4 },
    };
    printf("# one core (thread CPU time), hidden %d, %zu rows (%.1f MiB of bf16); GB/s of bf16\n",
           H, b.rows, b.rows * H * 2 / 1048576.0);
    printf("%-26s %10s %10s\n", "format", "quantize", "dequantize");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        printf("%-26s %10.2f %10.2f\n", cases[i].name,
               rate(cases[i].q, &b, secs), rate(cases[i].d, &b, secs));
    free(b.x);
    free(b.y);
    free(b.q);
    free(b.s);
    free(b.fs);
    return 0;
}
