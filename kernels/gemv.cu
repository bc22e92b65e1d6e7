// bf16 GEMV for decode: y[n] = sum_k W[n, k] * x[k], fp32 accumulation.
//   W [N, K] bf16, row-major (nn.Linear weight: out_features x in_features)
//   x [K]    bf16
//   y [N]    bf16 (kimi_gemv_bf16) or fp32 (kimi_gemv_bf16_f32, e.g. logits)
// Memory-bound: every weight byte is read once, so the goal is the copy bandwidth. One warp per row; each lane
// requests up to GEMV_BATCH 16-byte weight vectors at once (streaming hint: weights are read once; x stays in L1),
// which for K <= 4096 is the lane's whole share of the row, so a warp waits for DRAM once rather than once per
// chunk; lanes reduce with shuffles. (Measured on an H100 at the decode shapes: a warp per two rows in chunks of
// four vectors reached 72-74 % of the copy bandwidth; K split across a block, 57-61 %.)
// Programmatic dependent launch (sm_90+): a decode-shaped GEMV moves only ~20 MB, so launch latency and the ramp at
// each end cost a large part of its time. The kernel lets its successor launch at once
// (griddepcontrol.launch_dependents) and requests its weights before waiting for its predecessor to finish
// (griddepcontrol.wait): weights never depend on earlier kernels, x and y do. Launched without the attribute, the
// wait returns at once. The host launches it with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION.
// Launch: grid ceil(N / GEMV_WARPS) blocks of GEMV_WARPS * 32 threads.
// Vector path when K % 8 == 0 and W, x are 16-byte aligned (every row then starts aligned); otherwise a scalar path
// (correct for any K, e.g. odd K in tests, but slow).
#include "common.cuh"

constexpr int GEMV_WARPS = 4;
constexpr int GEMV_BATCH = 16;

__device__ __forceinline__ float dot8(uint4 w, uint4 x, float acc)
{
    acc = fmaf(bf16_lo(w.x), bf16_lo(x.x), acc);
    acc = fmaf(bf16_hi(w.x), bf16_hi(x.x), acc);
    acc = fmaf(bf16_lo(w.y), bf16_lo(x.y), acc);
    acc = fmaf(bf16_hi(w.y), bf16_hi(x.y), acc);
    acc = fmaf(bf16_lo(w.z), bf16_lo(x.z), acc);
    acc = fmaf(bf16_hi(w.z), bf16_hi(x.z), acc);
    acc = fmaf(bf16_lo(w.w), bf16_lo(x.w), acc);
    acc = fmaf(bf16_hi(w.w), bf16_hi(x.w), acc);
    return acc;
}

__device__ __forceinline__ void store_out(float* y, int i, float v) { y[i] = v; }
__device__ __forceinline__ void store_out(uint16_t* y, int i, float v) { y[i] = f32_to_bf16(v); }

// Requests the lane's GEMV_BATCH vectors starting at vector k (none past the row's end).
__device__ __forceinline__ void load_weights(uint4 (&wv)[GEMV_BATCH], const uint4* w8, int k, int K8)
{
#pragma unroll
    for (int u = 0; u < GEMV_BATCH; u++)
        if (k + u * 32 < K8) wv[u] = __ldcs(w8 + k + u * 32);
}

// Let the next kernel launch now / wait until the previous kernel has finished and its writes are visible.
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

template <typename OutT>
__device__ __forceinline__ void gemv(OutT* __restrict__ y, const uint16_t* __restrict__ W, const uint16_t* __restrict__ x,
                                     int N, int K)
{
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    allow_successor();
    if (row >= N) return;

    float acc = 0.0f;
    if ((K & 7) == 0 && aligned16(W) && aligned16(x))
    {
        const int K8 = K >> 3;
        const uint4* w8 = reinterpret_cast<const uint4*>(W + static_cast<size_t>(row) * K);
        const uint4* x8 = reinterpret_cast<const uint4*>(x);
        uint4 wv[GEMV_BATCH];
        load_weights(wv, w8, lane, K8);
        wait_for_predecessor();
        for (int k = lane; k < K8; k += 32 * GEMV_BATCH)
        {
            if (k != lane) load_weights(wv, w8, k, K8);
#pragma unroll
            for (int u = 0; u < GEMV_BATCH; u++)
                if (k + u * 32 < K8) acc = dot8(wv[u], __ldg(x8 + k + u * 32), acc);
        }
    }
    else
    {
        wait_for_predecessor();
        const uint16_t* w = W + static_cast<size_t>(row) * K;
        for (int k = lane; k < K; k += 32) acc = fmaf(bf16_to_f32(w[k]), bf16_to_f32(x[k]), acc);
    }
    acc = warp_sum(acc);
    if (lane == 0) store_out(y, row, acc);
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
kimi_gemv_bf16(uint16_t* __restrict__ y, const uint16_t* __restrict__ W, const uint16_t* __restrict__ x, int N, int K)
{
    gemv(y, W, x, N, K);
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)
kimi_gemv_bf16_f32(float* __restrict__ y, const uint16_t* __restrict__ W, const uint16_t* __restrict__ x, int N, int K)
{
    gemv(y, W, x, N, K);
}
