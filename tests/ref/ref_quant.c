/* Reference quantized formats: see ref_quant.h. */
#include <float.h>
#include <math.h>
#include <string.h>
#include "ref_quant.h"

double ref_e4m3_dec(unsigned c)
{
    unsigned e = (c >> 3) & 15, m = c & 7;
    if (e == 15 && m == 7)
        return NAN;
    double v = e == 0 ? ldexp(m / 8.0, -6) : ldexp(1.0 + m / 8.0, (int)e - 7);
    return (c & 0x80) ? -v : v;
}

double ref_e2m1_dec(unsigned c)
{
    unsigned e = (c >> 1) & 3, m = c & 1;
    double v = e == 0 ? ldexp(m / 2.0, 0) : ldexp(1.0 + m / 2.0, (int)e - 1);
    return (c & 8) ? -v : v;
}

double ref_ue8m0_dec(unsigned c)
{
    return c == 0xff ? NAN : ldexp(1.0, (int)c - 127);
}

unsigned ref_nearest(double x, double (*dec)(unsigned), unsigned maxcode,
                     unsigned signbit_, unsigned nan_code)
{
    if (isnan(x))
        return nan_code;
    unsigned sign = signbit(x) ? signbit_ : 0;
    double a = fabs(x);
    if (a >= dec(maxcode))  /* also keeps a - dec(c) below exact */
        return sign | maxcode;
    unsigned best = 0;
    double bd = INFINITY;
    for (unsigned c = 0; c <= maxcode; c++) {
        double d = fabs(a - dec(c));
        if (d < bd || (d == bd && (c & 1) == 0)) {
            best = c;
            bd = d;
        }
    }
    return sign | best;
}

unsigned ref_e4m3_enc(double x)
{
    return ref_nearest(x, ref_e4m3_dec, 0x7e, 0x80, 0x7f);
}

unsigned ref_e2m1_enc(double x)
{
    return ref_nearest(x, ref_e2m1_dec, 7, 8, 7);
}

unsigned ref_ue8m0_enc(double s)
{
    if (isnan(s))
        return 0xff;
    for (unsigned c = 0; c < 255; c++)
        if (ref_ue8m0_dec(c) >= fabs(s))
            return c;
    return 254;
}

float ref_bf16f(uint16_t u)
{
    uint32_t v = (uint32_t)u << 16;
    float f;
    memcpy(&f, &v, sizeof(f));
    return f;
}

float ref_amax(const uint16_t *x, size_t n, int *nan)
{
    float m = 0.0f;
    *nan = 0;
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(ref_bf16f(x[i]));
        if (isnan(a))
            *nan = 1;
        else if (!isinf(a) && a > m)
            m = a;
    }
    return m;
}

int ref_wire_shape(epx_wire_t wire, int h, ref_wire_t *w)
{
    memset(w, 0, sizeof(*w));
    size_t n = (size_t)h;
    switch (wire) {
    case EPX_WIRE_FP8:
        w->block = 128;
        w->scale_dtype = EPX_DTYPE_FP32;
        break;
    case EPX_WIRE_FP8_UE8M0:
        w->block = 128;
        w->scale_dtype = EPX_DTYPE_UE8M0;
        break;
    case EPX_WIRE_MXFP8:
        w->block = 32;
        w->scale_dtype = EPX_DTYPE_UE8M0;
        break;
    case EPX_WIRE_NVFP4:
        w->block = 16;
        w->scale_dtype = EPX_DTYPE_FP8_E4M3;
        break;
    default:
        return -1;
    }
    w->nblocks = (n + (size_t)w->block - 1) / (size_t)w->block;
    w->scale_bytes = w->nblocks * (wire == EPX_WIRE_FP8 ? 4 : 1);
    if (wire == EPX_WIRE_NVFP4) {
        w->x_dtype = EPX_DTYPE_FP4_E2M1X2;
        w->x_cols = (h + 1) / 2;
        w->data_bytes = (n + 1) / 2;
        w->global_bytes = 4;
    } else {
        w->x_dtype = EPX_DTYPE_FP8_E4M3;
        w->x_cols = h;
        w->data_bytes = n;
    }
    return 0;
}

float ref_nvfp4_tensor_scale(const uint16_t *x, size_t n)
{
    int nan;
    float amax = ref_amax(x, n, &nan);
    return amax > 0 ? fmaxf(amax / 2688.0f, FLT_MIN) : 1.0f;
}

void ref_quant_row(epx_wire_t wire, const uint16_t *x, int h, uint8_t *q,
                   void *scales, float *global)
{
    ref_quant_row_given(wire, x, h, q, scales, global, 0.0f);
}

void ref_quant_row_given(epx_wire_t wire, const uint16_t *x, int h,
                         uint8_t *q, void *scales, float *global,
                         float given)
{
    ref_wire_t w;
    if (ref_wire_shape(wire, h, &w))
        return;
    float g = 1.0f;
    int nan;
    if (wire == EPX_WIRE_NVFP4) {
        /* Row scale: max(amax / (448 * 6), 2^-126), 1 for a row with no
         * finite non-zero value. */
        g = given > 0 ? given : ref_nvfp4_tensor_scale(x, (size_t)h);
        *global = g;
        memset(q, 0, w.data_bytes);
    }
    for (size_t k = 0; k < w.nblocks; k++) {
        size_t b0 = k * (size_t)w.block;
        size_t n = (size_t)h - b0 < (size_t)w.block ? (size_t)h - b0
                                                    : (size_t)w.block;
        float amax = ref_amax(x + b0, n, &nan);
        if (wire == EPX_WIRE_FP8) {
            /* s = max(amax / 448, 2^-126) in fp32, 1 for a zero block. */
            float s = amax > 0 ? fmaxf(amax / 448.0f, FLT_MIN) : 1.0f;
            ((float *)scales)[k] = s;
            for (size_t i = b0; i < b0 + n; i++)
                q[i] = (uint8_t)ref_e4m3_enc(ref_bf16f(x[i]) / s);
        } else if (wire != EPX_WIRE_NVFP4) {
            /* The smallest power of two s with amax / s <= 448 (1 for a
             * zero block); x / s is exact. */
            unsigned c = 127;
            if (amax > 0)
                for (c = 0; c < 254 && amax / ref_ue8m0_dec(c) > 448.0; c++)
                    ;
            ((uint8_t *)scales)[k] = (uint8_t)c;
            double s = ref_ue8m0_dec(c);
            for (size_t i = b0; i < b0 + n; i++)
                q[i] = (uint8_t)ref_e4m3_enc(ref_bf16f(x[i]) / s);
        } else {
            /* sb = e4m3(amax / (6 g)); values e2m1(x / (sb g)); a NaN
             * block: scale NaN, codes 0; a zero scale: codes 0. */
            unsigned sb = nan ? 0x7f : ref_e4m3_enc(amax / (6.0f * g));
            ((uint8_t *)scales)[k] = (uint8_t)sb;
            float S = (float)ref_e4m3_dec(sb) * g;
            for (size_t i = b0; i < b0 + n; i++) {
                unsigned c = nan || S == 0 ? 0 : ref_e2m1_enc(ref_bf16f(x[i]) / S);
                q[i / 2] |= (uint8_t)(c << (4 * (i & 1)));  /* 2i low */
            }
        }
    }
}
