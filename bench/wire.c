/*
 * The quantized wire formats from the bench's side: names, sizes, a
 * dequantizer and the error bounds of src/moe/README.md, written from the
 * format definitions (decoding by formula), not with the library's codecs.
 */
#include <float.h>
#include <math.h>
#include <string.h>
#include "bench.h"

static const char *const names[] = { "bf16", "fp8", "fp8-ue8m0", "mxfp8",
                                     "nvfp4" };

epx_wire_t bench_wire_parse(const char *name)
{
    for (int i = 1; i < 5; i++)
        if (!strcmp(name, names[i]))
            return (epx_wire_t)i;
    return EPX_WIRE_NATIVE;
}

const char *bench_wire_name(epx_wire_t wire)
{
    return (unsigned)wire < 5 ? names[wire] : "?";
}

void bench_wire_shape(epx_wire_t wire, int H, size_t dsize, bench_wire_t *w)
{
    static const int block[5] = { 0, 128, 128, 32, 16 };
    memset(w, 0, sizeof(*w));
    w->wire = wire;
    w->block = block[wire];
    if (!w->block) {
        w->data_bytes = (size_t)H * dsize;
        return;
    }
    w->nblocks = (H + w->block - 1) / w->block;
    w->scale_bytes = (size_t)w->nblocks * (wire == EPX_WIRE_FP8 ? 4 : 1);
    w->data_bytes = wire == EPX_WIRE_NVFP4 ? (size_t)(H + 1) / 2 : (size_t)H;
    w->global_bytes = wire == EPX_WIRE_NVFP4 ? 4 : 0;
}

static double e4m3(unsigned c)
{
    unsigned e = (c >> 3) & 15, m = c & 7;
    if (e == 15 && m == 7)
        return NAN;
    double v = e ? ldexp(1 + m / 8.0, (int)e - 7) : ldexp(m / 8.0, -6);
    return c & 0x80 ? -v : v;
}

static double e2m1(unsigned c)
{
    static const double mag[8] = { 0, 0.5, 1, 1.5, 2, 3, 4, 6 };
    return c & 8 ? -mag[c & 7] : mag[c & 7];
}

void bench_wire_dequant(const bench_wire_t *w, const epx_recv_t *recv,
                        int64_t i, int H, float *out)
{
    const uint8_t *q = (const uint8_t *)recv->x.data + (size_t)i * w->data_bytes;
    const uint8_t *sb = (const uint8_t *)recv->x_scales.data +
                        (size_t)i * w->scale_bytes;
    for (int h = 0; h < H; h++) {
        int k = h / w->block;
        double v, s;
        if (w->wire == EPX_WIRE_NVFP4) {
            v = e2m1((q[h / 2] >> (4 * (h & 1))) & 15);
            s = e4m3(sb[k]) * recv->x_global_scale[i];
        } else {
            v = e4m3(q[h]);
            if (w->wire == EPX_WIRE_FP8) {
                float f;
                memcpy(&f, sb + 4 * (size_t)k, 4);
                s = f;
            } else {
                s = sb[k] == 0xff ? NAN : ldexp(1.0, (int)sb[k] - 127);
            }
        }
        out[h] = (float)(v * s);
    }
}

double bench_wire_maxima(const bench_wire_t *w, const float *x, int H,
                         double *bmax)
{
    double m = 0;
    for (int64_t b = 0; b < w->nblocks; b++) {
        int h1 = (int)((b + 1) * w->block < H ? (b + 1) * w->block : H);
        double bm = 0;
        for (int h = (int)(b * w->block); h < h1; h++)
            bm = fmax(bm, fabs(x[h]));
        bmax[b] = bm;
        m = fmax(m, bm);
    }
    return m;
}

double bench_wire_bound(const bench_wire_t *w, const double *bmax,
                        const float *x, int h, double rmax)
{
    double amax = bmax[h / w->block], a = fabs(x[h]);
    if (w->wire != EPX_WIRE_NVFP4) {
        /* 2^-4 |x| + 2^-10 s, s at most 2 amax / 448 (UE8M0 rounds up) */
        double s = fmax(2 * amax / 448, FLT_MIN);
        return 0x1p-4 * a + 0x1p-10 * s + 0x1p-20 * a;
    }
    /* max(S/4, |x|/4) + 6 g 2^-10, S = sb g <= (1 + 2^-4) amax / 6 */
    double g = fmax(rmax / 2688, FLT_MIN), S = (1 + 0x1p-4) * amax / 6;
    return (fmax(S / 4, a / 4) + 6 * g * 0x1p-10) * (1 + 0x1p-20);
}
