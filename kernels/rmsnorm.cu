// RMSNorm with the residual add fused in front of it:
//   residual[t, :] += x[t, :]                                   (skipped when x is null: a plain RMSNorm of residual)
//   out[t, :] = bf16( residual[t, :] * rsqrt(mean_d(residual[t, d]^2) + eps) * weight[:] )
//   out      [T, D] bf16
//   residual [T, D] fp32, read and written: the residual stream stays fp32 so 27 layers of adds do not round to bf16
//   x        [T, D] bf16 or null (the sublayer output to add)
//   weight   [D]    bf16
// Launch: grid T blocks, blockDim a multiple of 32 (256 used); one block per row, fp32 math, one rounding at the end.
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
