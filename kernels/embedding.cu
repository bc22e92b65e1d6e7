// Embedding gather: out[t, :] = table[ids[t], :].
//   out   [T, D] bf16, row-major
//   table [V, D] bf16, row-major (the checkpoint's embed_tokens.weight)
//   ids   [T]    int32
// Launch: grid T blocks, 256 threads; each block copies one row, 16 bytes per thread-step when D % 8 == 0 and both
// pointers are 16-byte aligned, else element by element.
// An id outside [0, V) writes a row of NaN instead of reading out of bounds, so a bad token id shows in the output.
#include "common.cuh"

extern "C" __global__ void __launch_bounds__(256)
kimi_embedding_gather_bf16(uint16_t* __restrict__ out, const uint16_t* __restrict__ table, const int* __restrict__ ids,
                           int T, int D, int V)
{
    const int t = blockIdx.x;
    if (t >= T) return;
    const int id = ids[t];
    uint16_t* dst = out + static_cast<size_t>(t) * D;
    if (id < 0 || id >= V)
    {
        for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = BF16_NAN;
        return;
    }
    const uint16_t* src = table + static_cast<size_t>(id) * D;
    if ((D & 7) == 0 && aligned16(out) && aligned16(table))
    {
        const uint4* s = reinterpret_cast<const uint4*>(src);
        uint4* d = reinterpret_cast<uint4*>(dst);
        for (int i = threadIdx.x; i < (D >> 3); i += blockDim.x) d[i] = __ldg(s + i);
    }
    else
    {
        for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = src[i];
    }
}
