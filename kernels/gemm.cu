// bf16 GEMM for prefill on the tensor cores: C[m, n] = sum_k A[m, k] * B[n, k], fp32 accumulation.
//   A [M, K] bf16, row-major with rows lda elements apart (activations, one token per row; lda > K lets the MLA
//            prefill multiply the first 512 columns of the 576-wide latent cache rows in place)
//   B [N, K] bf16, row-major (nn.Linear weight, so this is x @ W^T)
//   C [M, N] row-major: bf16 (kimi_gemm_bf16) or fp32 (kimi_gemm_bf16_f32: the CUDA backend's fp32 activations)
// Tiles: block 128 x 128 x 64, 256 threads = 8 warps as 2 (M) x 4 (N), each warp 64 x 32 through
// mma.sync.m16n8k16 (bf16 -> fp32). A three-stage cp.async pipeline feeds shared memory, in the swizzled tile layout
// of mma.cuh (shared with the grouped GEMMs of moe.cu).
// Launch: grid (ceil(N / 128), ceil(M / 128)) — consecutive blocks share an A tile and sweep B, which stays in L2;
// 256 threads; GEMM_SMEM_BYTES (96 KiB) of dynamic shared memory, so the caller raises the function's limit first.
// Preconditions: K % 8 == 0, lda % 8 == 0, lda >= K, and A, B 16-byte aligned (cp.async moves 16-byte chunks). M, N,
// and K % 64 are free: edge chunks are zero-filled and edge stores predicated.
#include "mma.cuh"

constexpr int BM = 128, BN = 128, BK = TILE_K, STAGES = 3, THREADS = 256;
constexpr int GEMM_SMEM_BYTES = STAGES * (BM + BN) * BK * 2;
static_assert(GEMM_SMEM_BYTES == 96 * 1024, "MatmulKernels.GemmSharedBytes (C#) launches with 96 KiB");

// Copies the 128 x 64 tile of `src` ([rows, K] row-major, rows ld elements apart) starting at (row0, k0) into `tile`;
// 4 chunks per thread.
__device__ __forceinline__ void load_tile(uint16_t* tile, const uint16_t* __restrict__ src, int ld, int row0, int rows, int k0, int K)
{
#pragma unroll
    for (int i = 0; i < (BM * BK / 8) / THREADS; i++)
    {
        const int c = threadIdx.x + i * THREADS;
        const int row = c >> 3, chunk = c & 7;
        const int gr = row0 + row, gk = k0 + chunk * 8;
        const bool ok = gr < rows && gk < K;
        cp_async16(smem_u32(tile + swizzled(row, chunk)), ok ? src + static_cast<size_t>(gr) * ld + gk : src, ok);
    }
}

// Stores C[row, col] and C[row, col + 1] where inside [M, N]; one 4-byte (bf16) or 8-byte (fp32) store where aligned.
__device__ __forceinline__ void store_pair(uint16_t* __restrict__ C, int M, int N, int row, int col, float v0, float v1)
{
    if (row >= M) return;
    uint16_t* p = C + static_cast<size_t>(row) * N + col;
    if ((N & 1) == 0 && col + 1 < N)
        *reinterpret_cast<uint32_t*>(p) = pack_bf16x2(v0, v1);
    else
    {
        if (col < N) p[0] = f32_to_bf16(v0);
        if (col + 1 < N) p[1] = f32_to_bf16(v1);
    }
}

__device__ __forceinline__ void store_pair(float* __restrict__ C, int M, int N, int row, int col, float v0, float v1)
{
    if (row >= M) return;
    float* p = C + static_cast<size_t>(row) * N + col;
    if ((N & 1) == 0 && col + 1 < N && (reinterpret_cast<uintptr_t>(C) & 7) == 0)
        *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
    else
    {
        if (col < N) p[0] = v0;
        if (col + 1 < N) p[1] = v1;
    }
}

template <typename OutT>
__device__ __forceinline__ void gemm(OutT* __restrict__ C, const uint16_t* __restrict__ A, int lda, const uint16_t* __restrict__ B,
                                     int M, int N, int K)
{
    extern __shared__ __align__(128) uint16_t smem[];
    uint16_t* sA = smem;                     // [STAGES][BM][BK]
    uint16_t* sB = smem + STAGES * BM * BK;  // [STAGES][BN][BK]

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int KT = (K + BK - 1) / BK;

    float acc[4][4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++)
    {
        if (s < KT)
        {
            load_tile(sA + s * BM * BK, A, lda, m0, M, s * BK, K);
            load_tile(sB + s * BN * BK, B, K, n0, N, s * BK, K);
        }
        cp_async_commit();
    }

    for (int kt = 0; kt < KT; kt++)
    {
        // Tile kt has landed once at most STAGES - 2 groups are pending; the barrier also tells every thread that
        // the slot refilled below (read in iteration kt - 1) is free.
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < KT)
        {
            load_tile(sA + (next % STAGES) * BM * BK, A, lda, m0, M, next * BK, K);
            load_tile(sB + (next % STAGES) * BN * BK, B, K, n0, N, next * BK, K);
        }
        cp_async_commit();

        const uint16_t* a = sA + (kt % STAGES) * BM * BK;
        const uint16_t* b = sB + (kt % STAGES) * BN * BK;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ks++)
        {
            uint32_t af[4][4], bf[2][4];
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
            {
                // Lanes 0-15 address rows 0-15 at k 0-7, lanes 16-31 the same rows at k 8-15: registers a0..a3.
                const int row = wm + mt * 16 + (lane & 15);
                ldmatrix_x4(af[mt], smem_u32(a + swizzled(row, ks * 2 + (lane >> 4))));
            }
#pragma unroll
            for (int np = 0; np < 2; np++)
            {
                // Matrices: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15): b0, b1 of two n8 tiles.
                const int n = wn + np * 16 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(bf[np], smem_u32(b + swizzled(n, ks * 2 + ((lane >> 3) & 1))));
            }
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
#pragma unroll
                for (int nt = 0; nt < 4; nt++)
                    mma_bf16(acc[mt][nt], af[mt], bf[nt >> 1][(nt & 1) * 2], bf[nt >> 1][(nt & 1) * 2 + 1]);
        }
    }
    cp_async_wait<0>();

    // Accumulator layout of m16n8: lane holds rows g and g + 8, columns 2t and 2t + 1.
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int nt = 0; nt < 4; nt++)
        {
            const int row = m0 + wm + mt * 16 + g;
            const int col = n0 + wn + nt * 8 + t * 2;
            store_pair(C, M, N, row, col, acc[mt][nt][0], acc[mt][nt][1]);
            store_pair(C, M, N, row + 8, col, acc[mt][nt][2], acc[mt][nt][3]);
        }
}

extern "C" __global__ void __launch_bounds__(THREADS, 2)
kimi_gemm_bf16(uint16_t* __restrict__ C, const uint16_t* __restrict__ A, int lda, const uint16_t* __restrict__ B, int M, int N, int K)
{
    gemm(C, A, lda, B, M, N, K);
}

extern "C" __global__ void __launch_bounds__(THREADS, 2)
kimi_gemm_bf16_f32(float* __restrict__ C, const uint16_t* __restrict__ A, int lda, const uint16_t* __restrict__ B, int M, int N, int K)
{
    gemm(C, A, lda, B, M, N, K);
}
