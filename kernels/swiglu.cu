// SwiGLU: out[t, f] = silu(gate[t, f]) * up[t, f], silu(g) = g / (1 + e^-g); fp32 math, one bf16 rounding.
//   out  [T, F] bf16, row stride F
//   gate [T, F] bf16, row stride ldGate
//   up   [T, F] bf16, row stride ldUp
// A fused gate-and-up projection [T, 2F] passes gate = gu, up = gu + F, ldGate = ldUp = 2F.
// Launch: grid T blocks, 256 threads striding over F.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
kimi_swiglu_bf16(uint16_t* __restrict__ out, const uint16_t* __restrict__ gate, const uint16_t* __restrict__ up,
                 int T, int F, int ldGate, int ldUp)
{
    const int t = blockIdx.x;
    if (t >= T) return;
    const uint16_t* g = gate + static_cast<size_t>(t) * ldGate;
    const uint16_t* u = up + static_cast<size_t>(t) * ldUp;
    uint16_t* o = out + static_cast<size_t>(t) * F;
    for (int f = threadIdx.x; f < F; f += blockDim.x)
    {
        const float gv = bf16_to_f32(g[f]);
        o[f] = f32_to_bf16(gv / (1.0f + expf(-gv)) * bf16_to_f32(u[f]));
    }
}
