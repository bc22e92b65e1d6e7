// RMSNorm with the residual add fused in front of it:
//   residual[t, :] += x[t, :]                                   (skipped when x is null: a plain RMSNorm of residual)
//   out[t, :] = bf16( residual[t, :] * rsqrt(mean_d(residual[t, d]^2) + eps) * weight[:] )
//   out      [T, D] bf16
//   residual [T, D] fp32, read and written: the residual stream stays fp32 so 27 layers of adds do not round to bf16
//   x        [T, D] bf16 or null (the sublayer output to add)
//   weight   [D]    bf16
// Launch: grid T blocks, blockDim a multiple of 32 (256 used); one block per row, fp32 math, one rounding at the end;
// four values per step (16-byte fp32, 8-byte bf16 accesses) when D % 4 == 0 and the pointers are aligned for that.
// Each thread rereads only the residual elements it wrote itself, so the two loops need no barrier between them.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(1024)
kimi_rmsnorm_residual_bf16(uint16_t* __restrict__ out, float* __restrict__ residual, const uint16_t* __restrict__ x,
                           const uint16_t* __restrict__ weight, int T, int D, float eps)
{
    const int t = blockIdx.x;
    if (t >= T) return;
    float* r = residual + static_cast<size_t>(t) * D;
    const uint16_t* xr = x != nullptr ? x + static_cast<size_t>(t) * D : nullptr;
    uint16_t* o = out + static_cast<size_t>(t) * D;

    float sumsq = 0.0f;
    if ((D & 3) == 0 && (reinterpret_cast<uintptr_t>(r) & 15) == 0 &&
        ((reinterpret_cast<uintptr_t>(xr) | reinterpret_cast<uintptr_t>(o) | reinterpret_cast<uintptr_t>(weight)) & 7) == 0)
    {
        float4* r4 = reinterpret_cast<float4*>(r);
        const uint2* x4 = reinterpret_cast<const uint2*>(xr);
        const uint2* w4 = reinterpret_cast<const uint2*>(weight);
        uint2* o4 = reinterpret_cast<uint2*>(o);
        for (int v = threadIdx.x; v < (D >> 2); v += blockDim.x)
        {
            float4 rv = r4[v];
            if (x4 != nullptr)
            {
                const uint2 xv = x4[v];
                rv.x += bf16_lo(xv.x);
                rv.y += bf16_hi(xv.x);
                rv.z += bf16_lo(xv.y);
                rv.w += bf16_hi(xv.y);
                r4[v] = rv;
            }
            sumsq = fmaf(rv.x, rv.x, fmaf(rv.y, rv.y, fmaf(rv.z, rv.z, fmaf(rv.w, rv.w, sumsq))));
        }
        const float inv = rsqrtf(block_sum(sumsq) / static_cast<float>(D) + eps);
        for (int v = threadIdx.x; v < (D >> 2); v += blockDim.x)
        {
            const float4 rv = r4[v];
            const uint2 wv = w4[v];
            o4[v] = make_uint2(pack_bf16x2(rv.x * inv * bf16_lo(wv.x), rv.y * inv * bf16_hi(wv.x)),
                               pack_bf16x2(rv.z * inv * bf16_lo(wv.y), rv.w * inv * bf16_hi(wv.y)));
        }
        return;
    }
    for (int i = threadIdx.x; i < D; i += blockDim.x)
    {
        float v = r[i];
        if (xr != nullptr)
        {
            v += bf16_to_f32(xr[i]);
            r[i] = v;
        }
        sumsq = fmaf(v, v, sumsq);
    }
    const float inv = rsqrtf(block_sum(sumsq) / static_cast<float>(D) + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) o[i] = f32_to_bf16(r[i] * inv * bf16_to_f32(weight[i]));
}
