// SwiGLU: out[t, f] = silu(gate[t, f]) * up[t, f], silu(g) = g / (1 + e^-g); fp32 math, one bf16 rounding.
//   out  [T, F] bf16, row stride F
//   gate [T, F] bf16, row stride ldGate
//   up   [T, F] bf16, row stride ldUp
// A fused gate-and-up projection [T, 2F] passes gate = gu, up = gu + F, ldGate = ldUp = 2F.
// Launch: grid T blocks, 256 threads striding over F; 16 bytes (8 values) per step when F and both strides are
// multiples of 8 and the pointers 16-byte aligned, else one value per step.
#include "common.cuh"

__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

__device__ __forceinline__ uint32_t swiglu_pair(uint32_t g, uint32_t u)
{
    return pack_bf16x2(silu_times(bf16_lo(g), bf16_lo(u)), silu_times(bf16_hi(g), bf16_hi(u)));
}

extern "C" __global__ void __launch_bounds__(256)
kimi_swiglu_bf16(uint16_t* __restrict__ out, const uint16_t* __restrict__ gate, const uint16_t* __restrict__ up,
                 int T, int F, int ldGate, int ldUp)
{
    const int t = blockIdx.x;
    if (t >= T) return;
    const uint16_t* g = gate + static_cast<size_t>(t) * ldGate;
    const uint16_t* u = up + static_cast<size_t>(t) * ldUp;
    uint16_t* o = out + static_cast<size_t>(t) * F;
    if (((F | ldGate | ldUp) & 7) == 0 && aligned16(out) && aligned16(gate) && aligned16(up))
    {
        const uint4* g8 = reinterpret_cast<const uint4*>(g);
        const uint4* u8 = reinterpret_cast<const uint4*>(u);
        uint4* o8 = reinterpret_cast<uint4*>(o);
        for (int v = threadIdx.x; v < (F >> 3); v += blockDim.x)
        {
            const uint4 gv = g8[v], uv = u8[v];
            o8[v] = make_uint4(swiglu_pair(gv.x, uv.x), swiglu_pair(gv.y, uv.y), swiglu_pair(gv.z, uv.z), swiglu_pair(gv.w, uv.w));
        }
    }
    else
    {
        for (int f = threadIdx.x; f < F; f += blockDim.x) o[f] = f32_to_bf16(silu_times(bf16_to_f32(g[f]), bf16_to_f32(u[f])));
    }
}
