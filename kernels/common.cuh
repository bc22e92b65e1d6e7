// Shared device helpers for the kernels in this folder: bf16 bit twiddling and warp/block reductions.
// bf16 travels as raw uint16_t bits (the host side uses ushort), so 16-byte vector loads move 8 values at once.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

// Widening bf16 -> fp32 is exact: the bf16 bits are the top half of the float.
__device__ __forceinline__ float bf16_to_f32(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
__device__ __forceinline__ float bf16_lo(uint32_t pair) { return __uint_as_float(pair << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t pair) { return __uint_as_float(pair & 0xFFFF0000u); }

// Narrowing rounds to nearest even, as the host helper and PyTorch do.
__device__ __forceinline__ uint16_t f32_to_bf16(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi)
{
    return static_cast<uint32_t>(f32_to_bf16(lo)) | (static_cast<uint32_t>(f32_to_bf16(hi)) << 16);
}

constexpr uint16_t BF16_NAN = 0x7FC0;

// Order-preserving map of a float to uint32: order_key(a) > order_key(b) exactly when a > b, one key for equal values
// (−0 and +0 alike, as the comparison has them), and NaN's key 0, below every number's: an integer maximum over keys
// (a warp's redux.sync, a 64-bit atomicMax, a radix select) picks what a float comparison would, and never a NaN
// while a number is left.
__device__ __forceinline__ uint32_t order_key(float f)
{
    if (isnan(f)) return 0u;
    const uint32_t u = __float_as_uint(f + 0.0f); // −0 + 0 = +0
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    return v;
}

// Block-wide sum/max; every thread gets the result. blockDim.x must be a multiple of 32.
// The leading barrier lets a kernel call these several times with the one scratch array.
__device__ __forceinline__ float block_sum(float v)
{
    __shared__ float scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (blockDim.x >> 5) ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v)
{
    __shared__ float scratch[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < (blockDim.x >> 5) ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// Programmatic dependent launch (sm_90+; see gemv.cu): let the next kernel launch now, and wait until the previous
// kernel has finished and its writes are visible. Launched without the attribute, the wait returns at once.
__device__ __forceinline__ void allow_successor()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_predecessor()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// A hint to L2 to fetch the 128-byte line holding p from DRAM (nothing returns to the thread): a later load of it hits
// L2. For weights a kernel will read after its programmatic wait, requested while the predecessor leaves DRAM idle.
__device__ __forceinline__ void prefetch_l2(const void* p)
{
#if __CUDA_ARCH__ >= 900
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
#endif
}

// The load side of a warp that streams items (a few weight rows each) chunk by chunk through a ring of registers
// (gemv.cu's streaming GEMV, moe.cu's decode gate-up): a chunk is one column slot of 32 16-byte vectors, one a lane,
// of each of the item's ROWS rows. request() fills a ring slot with the lane's vector of each row of the next chunk
// (zeros past the row's K8 vectors) and moves on, calling begin_item(k) to point `rows` at item k's rows when the
// stream crosses into it, so the loads never stop between items.
template <int ROWS>
struct RowStream
{
    const uint4* rows[ROWS]; // the current item's rows
    int item = 0, chunk = 0; // the next chunk to request: chunk `chunk` (of C) of item `item` (of `items`)

    template <typename BeginItem>
    __device__ __forceinline__ void request(uint4 (&slot)[ROWS], int lane, int K8, int C, int items, BeginItem&& begin_item)
    {
        const int kk = chunk * 32 + lane;
#pragma unroll
        for (int r = 0; r < ROWS; r++) slot[r] = kk < K8 ? __ldcs(rows[r] + kk) : make_uint4(0, 0, 0, 0);
        if (++chunk == C)
        {
            chunk = 0;
            if (++item < items) begin_item(item);
        }
    }
};

// The prologue of a short kernel under programmatic dependent launch: its successor may launch at once (and fetch
// what does not depend on this kernel, such as weights) while this kernel waits for its own predecessor and runs.
// Only the launch is early: the successor's wait_for_predecessor() still waits for all of this kernel's writes.
__device__ __forceinline__ void programmatic_prologue()
{
    allow_successor();
    wait_for_predecessor();
}
