// bf16 GEMV for decode: y[n] = sum_k W[n, k] * x[k], fp32 accumulation.
//   W [N, K] bf16, row-major (nn.Linear weight: out_features x in_features)
//   x [K]    bf16
//   y [N]    bf16 (kimi_gemv_bf16) or fp32 (kimi_gemv_bf16_f32, e.g. logits)
// Memory-bound: every weight byte is read once, so the goal is the copy bandwidth. A block of GEMV_THREADS threads
// owns GEMV_ROWS rows and splits K among all its threads, so each thread issues its GEMV_ROWS x GEMV_UNROLL 16-byte
// loads (streaming hint: weights are read once; x stays in L1) before using any; warps reduce with shuffles, then
// through shared memory. Splitting K inside the block (rather than one warp per row) gives the decode shapes
// (N = 2304..6144) enough blocks and bytes in flight to fill all SMs evenly (one warp per row reached only 58-78%
// of the copy bandwidth there on an H100).
// Launch: grid ceil(N / GEMV_ROWS) blocks of GEMV_THREADS threads.
// Vector path when K % 8 == 0 and W, x are 16-byte aligned (every row then starts aligned); otherwise a scalar path
// (correct for any K, e.g. odd K in tests, but slow).
#include "common.cuh"

constexpr int GEMV_THREADS = 256;
constexpr int GEMV_ROWS = 4;
constexpr int GEMV_UNROLL = 2;

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

template <typename OutT>
__device__ __forceinline__ void gemv(OutT* __restrict__ y, const uint16_t* __restrict__ W, const uint16_t* __restrict__ x,
                                     int N, int K)
{
    __shared__ float partial[GEMV_ROWS][GEMV_THREADS / 32];
    const int row0 = blockIdx.x * GEMV_ROWS;
    if (row0 >= N) return;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

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

        for (int k = tid; k < K8; k += GEMV_THREADS * GEMV_UNROLL)
        {
            uint4 wv[GEMV_ROWS][GEMV_UNROLL];
            uint4 xv[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++)
            {
                const int kk = k + u * GEMV_THREADS;
                const bool ok = kk < K8;
                xv[u] = ok ? __ldg(x8 + kk) : make_uint4(0, 0, 0, 0);
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; r++) wv[r][u] = ok ? __ldcs(w8[r] + kk) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; u++)
#pragma unroll
                for (int r = 0; r < GEMV_ROWS; r++) acc[r] = dot8(wv[r][u], xv[u], acc[r]);
        }
    }
    else
    {
        for (int k = tid; k < K; k += GEMV_THREADS)
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
        if (lane == 0) partial[r][warp] = s;
    }
    __syncthreads();
    if (warp == 0)
    {
#pragma unroll
        for (int r = 0; r < GEMV_ROWS; r++)
        {
            const float s = warp_sum(lane < GEMV_THREADS / 32 ? partial[r][lane] : 0.0f);
            if (lane == 0 && row0 + r < N) store_out(y, row0 + r, s);
        }
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
kimi_gemv_bf16(uint16_t* __restrict__ y, const uint16_t* __restrict__ W, const uint16_t* __restrict__ x, int N, int K)
{
    gemv(y, W, x, N, K);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS)
kimi_gemv_bf16_f32(float* __restrict__ y, const uint16_t* __restrict__ W, const uint16_t* __restrict__ x, int N, int K)
{
    gemv(y, W, x, N, K);
}
