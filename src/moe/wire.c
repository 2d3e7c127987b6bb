/* Wire formats of dispatch: sizes and dtypes per format, row packing. */
#include <string.h>

#include "util/util.h"
#include "moe/quant.h"
#include "moe/wire.h"
#include "proto/geom.h"

const char *moe_wire_name(epx_wire_t wire)
{
    switch (wire) {
    case EPX_WIRE_NATIVE: return "native";
    case EPX_WIRE_FP8: return "fp8";
    case EPX_WIRE_FP8_UE8M0: return "fp8-ue8m0";
    case EPX_WIRE_MXFP8: return "mxfp8";
    case EPX_WIRE_NVFP4: return "nvfp4";
    }
    return "?";
}

epx_status_t moe_wire_init(moe_wire_t *f, epx_wire_t wire, epx_dtype_t dtype,
                           int H)
{
    memset(f, 0, sizeof(*f));
    f->wire = wire;
    f->H = H;
    f->scale_dtype = EPX_DTYPE_FP32;
    f->x_dtype = EPX_DTYPE_FP8_E4M3;
    f->x_cols = H;
    switch (wire) {
    case EPX_WIRE_NATIVE:
        f->x_dtype = dtype;
        break;
    case EPX_WIRE_FP8:
        break;
    case EPX_WIRE_FP8_UE8M0:
    case EPX_WIRE_MXFP8:
        f->scale_dtype = EPX_DTYPE_UE8M0;
        break;
    case EPX_WIRE_NVFP4:
        f->scale_dtype = EPX_DTYPE_FP8_E4M3;
        f->x_dtype = EPX_DTYPE_FP4_E2M1X2;
        f->x_cols = (H + 1) / 2;
        break;
    default:
        return epx__error(EPX_ERR_INVALID, "moe: unknown wire format %d",
                          (int)wire);
    }
    if (wire != EPX_WIRE_NATIVE && dtype != EPX_DTYPE_BF16)
        return epx__error(EPX_ERR_INVALID,
                          "moe: wire format %s quantizes bf16 rows; the engine "
                          "dtype must be BF16, not %s", moe_wire_name(wire),
                          dtype == EPX_DTYPE_FP64 ? "FP64 (which travels on "
                          "the native wire only)" : dtype == EPX_DTYPE_FP32
                          ? "FP32" : "another dtype");
    /* The sizes are the protocol's (both executors' windows). */
    int64_t data, scale, global;
    proto_wire_shape(wire, H, (int)epx_dtype_size(dtype), &f->block, &data,
                     &scale, &global);
    f->nblocks = f->block ? ((int64_t)H + f->block - 1) / f->block : 0;
    f->data_bytes = (size_t)data;
    f->scale_bytes = (size_t)scale;
    f->global_bytes = (size_t)global;
    return EPX_OK;
}

void moe_wire_pack_row(const moe_wire_t *f, const void *x, void *q,
                       void *scale, float *global, float given)
{
    const size_t h = (size_t)f->H;
    switch (f->wire) {
    case EPX_WIRE_NATIVE:
        memcpy(q, x, f->data_bytes);
        break;
    case EPX_WIRE_FP8:
        moe_quant_fp8(x, h, q, scale);
        break;
    case EPX_WIRE_FP8_UE8M0:
    case EPX_WIRE_MXFP8:
        moe_quant_fp8_ue8m0(x, h, (size_t)f->block, q, scale);
        break;
    case EPX_WIRE_NVFP4:
        /* The row's own fp32 scale: NVIDIA's per-tensor recipe applied to
         * the token, so every token uses the whole e4m3 x e2m1 range; or
         * the caller's tensor scale. */
        *global = given > 0.0f ? given : moe_quant_nvfp4_global(x, h);
        moe_quant_nvfp4(x, h, *global, q, scale);
        break;
    }
}
