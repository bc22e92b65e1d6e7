// bf16 GEMV for decode: y[n] = sum_k W[n, k] * x[k], fp32 accumulation.
//   W [N, K] bf16, row-major (nn.Linear weight: out_features x in_features)
//   x [K]    bf16
//   y [N]    bf16 (kimi_gemv_bf16) or fp32 (kimi_gemv_bf16_f32, e.g. logits)
// Memory-bound: every weight byte is read once, so the goal is the copy bandwidth. Each warp owns GEMV_ROWS rows and
// keeps GEMV_ROWS x GEMV_UNROLL 16-byte weight loads in flight per lane (streaming hint: weights are read once, x stays
// in L1), and keeps the next chunk requested while it uses the current one; lanes reduce with shuffles at the end.
// (Measured on an H100, decode shapes: K split across a whole block reached 57-61 % of the copy bandwidth; one warp
// per row requesting its whole share of the row at once, 61-62 %; this layout, 72-74 %.)
// Programmatic dependent launch (sm_90+): a decode-shaped GEMV moves only ~20 MB, so launch latency and the ramp at
// each end cost as much as a third of its time. The kernel lets its successor launch at once
// (griddepcontrol.launch_dependents) and issues its first weight loads before waiting for its predecessor to finish
// (griddepcontrol.wait): weights never depend on earlier kernels, x and y do. Launched without the attribute, the
// wait returns at once. The host launches it with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION.
// Launch: grid ceil(N / (GEMV_WARPS * GEMV_ROWS)) blocks of GEMV_WARPS * 32 threads.
// Vector path when K % 8 == 0 and W, x are 16-byte aligned (every row then starts aligned); otherwise a scalar path
// (correct for any K, e.g. odd K in tests, but slow).
#include "common.cuh"

constexpr int GEMV_WARPS = 4;
constexpr int GEMV_ROWS = 2;
constexpr int GEMV_UNROLL = 4;

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

// Loads the GEMV_UNROLL vectors of each row starting at vector k (zeros past the row's end).
__device__ __forceinline__ void load_weights(uint4 (&wv)[GEMV_ROWS][GEMV_UNROLL], const uint4* const (&w8)[GEMV_ROWS], int k, int K8)
{
#pragma unroll
    for (int u = 0; u < GEMV_UNROLL; u++)
    {
        const int kk = k + u * 32;
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++) wv[r][u] = kk < K8 ? __ldcs(w8[r] + kk) : make_uint4(0, 0, 0, 0);
    }
}

// Let the next kernel launch now, then wait until the previous kernel has finished and its writes are visible.
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
    const int row0 = (blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5)) * GEMV_ROWS;
    allow_successor();
    if (row0 >= N) return;

    float acc[GEMV_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++) acc[r] = 0.0f;

    if ((K & 7) == 0 && aligned16(W) && aligned16(x))
    {
        const int K8 = K >> 3;
        const uint4* x8 = reinterpret_cast<const uint4*>(x);
        const uint4* w8[GEMV_ROWS];
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++)
            // Rows past N re-read the last row; their sums are never stored. Keeps the loads unconditional.
            w8[r] = reinterpret_cast<const uint4*>(W + static_cast<size_t>(min(row0 + r, N - 1)) * K);

        // Two chunks of weights in flight at all times: the current one and the next, both requested before the
        // wait for the predecessor, so a whole row pair (K = 2304: 9 vectors a lane) is mostly on its way by then.
        constexpr int STEP = 32 * GEMV_UNROLL;
        uint4 wv[GEMV_ROWS][GEMV_UNROLL], next[GEMV_ROWS][GEMV_UNROLL];
        int k = lane;
        load_weights(wv, w8, k, K8);
        bool more = k + STEP < K8;
        if (more) load_weights(next, w8, k + STEP, K8);
        wait_for_predecessor();
        for (;;)
        {
            uint4 xv[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++)
            {
                const int kk = k + u * 32;
                xv[u] = kk < K8 ? __ldg(x8 + kk) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++)
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; r++) acc[r] = dot8(wv[r][u], xv[u], acc[r]);
            if (!more) break;
            k += STEP;
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++)
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; r++) wv[r][u] = next[r][u];
            more = k + STEP < K8;
            if (more) load_weights(next, w8, k + STEP, K8);
        }
    }
    else
    {
        wait_for_predecessor();
        for (int k = lane; k < K; k += 32)
        {
            const float xk = bf16_to_f32(x[k]);
#pragma unroll
            for (int r = 0; r < GEMV_ROWS; r++)
                acc[r] = fmaf(bf16_to_f32(W[static_cast<size_t>(min(row0 + r, N - 1)) * K + k]), xk, acc[r]);
        }
    }

#pragma unroll
    for (int r = 0; r < GEMV_ROWS; r++)
    {
        const float s = warp_sum(acc[r]);
        if (lane == 0 && row0 + r < N) store_out(y, row0 + r, s);
    }
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
