// Synthetic weights generated on the device, for benchmarks of full-size configurations without a checkpoint
// (KimiLinear.Core's SyntheticWeights with onDevice: the 48B model's weights never exist on the host).
//   y [n] bf16: uniform in ±range from a counter-based hash of (seed, index): the same values for the same seed on any
//   card and launch geometry, and no RNG state to carry.
// Launch: any grid of 256-thread blocks (grid-stride loop); 16-byte stores where y is aligned.
#include "common.cuh"

// splitmix64's finaliser: a bijective mix of a 64-bit counter, good enough for random-looking benchmark weights.
__device__ __forceinline__ uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// Uniform in [-range, range) from the top 24 bits of a hash.
__device__ __forceinline__ float uniform(uint64_t seed, uint64_t i, float range)
{
    const float u = static_cast<float>(mix64(seed ^ (i * 0x9E3779B97F4A7C15ull)) >> 40) * (1.0f / 16777216.0f);
    return (2.0f * u - 1.0f) * range;
}

extern "C" __global__ void __launch_bounds__(256)
kimi_fill_uniform_bf16(uint16_t* __restrict__ y, long long n, unsigned long long seed, float range)
{
    const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
    const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (aligned16(y)) {
        // Eight values a thread a step, one 16-byte store.
        uint4* y8 = reinterpret_cast<uint4*>(y);
        const long long n8 = n / 8;
        for (long long v = first; v < n8; v += stride) {
            const uint64_t i = static_cast<uint64_t>(v) * 8;
            y8[v] = make_uint4(pack_bf16x2(uniform(seed, i, range), uniform(seed, i + 1, range)),
                               pack_bf16x2(uniform(seed, i + 2, range), uniform(seed, i + 3, range)),
                               pack_bf16x2(uniform(seed, i + 4, range), uniform(seed, i + 5, range)),
                               pack_bf16x2(uniform(seed, i + 6, range), uniform(seed, i + 7, range)));
        }
        for (long long i = n8 * 8 + first; i < n; i += stride) y[i] = f32_to_bf16(uniform(seed, i, range));
    } else {
        for (long long i = first; i < n; i += stride) y[i] = f32_to_bf16(uniform(seed, i, range));
    }
}
