// GEMV for decode against bf16 weights: y[n] = sum_k W[n, k] * x[k], fp32 accumulation.
//   W [N, K] bf16, row-major (nn.Linear weight: out_features x in_features)
//   x [K]    bf16 (kimi_gemv_bf16, kimi_gemv_bf16_f32) or fp32 (kimi_gemv_f32: the CUDA backend's fp32 activations)
//   y [N]    bf16 (kimi_gemv_bf16) or fp32 (kimi_gemv_bf16_f32, e.g. logits; kimi_gemv_f32)
// kimi_gemv_f32 also runs several independent products of the same K in one launch (one launch latency instead of
// several: KDA's two low-rank up-projections): rows [i·rows_per_x, (i+1)·rows_per_x) read x + i·K, so x is
// [ceil(N / rows_per_x), K]; rows_per_x = N is the plain GEMV. rows_per_x is a multiple of the block's rows.
// Memory-bound: every weight byte is read once, so the goal is the copy bandwidth. What decides the time at the decode
// shapes (~20 MB a kernel) is how much of each kernel's weights is already requested when it starts waiting for its
// predecessor (programmatic dependent launch, below): those bytes stream during the predecessor's tail.
// Layout (GemvLayout below): a block of WARPS warps owns ROWS_PER_BLOCK consecutive rows. Each group of SPLIT warps
// shares ROWS rows and splits K between its warps: K is cut into column slots of 32 16-byte vectors (one per lane),
// and warp s of the group takes slots s, s + SPLIT, ... Each lane keeps a ring of DEPTH chunks of UNROLL vectors a row
// in registers, requests all of them before the wait, and refills each chunk as soon as it is used. Lanes reduce with
// shuffles, the group's warps through shared memory.
//   bf16 x (GemvBf16Layout): 2 rows a group, 2 warps a group, 4 warps; at the model's K (2304, 4096) the ring holds a
//   warp's whole share of its rows, so everything is requested before the wait. (kernels/tests/gemv_sweep.cu times
//   this layout against 21 others on the GPU machine; docs/performance.md has the numbers.)
//   fp32 x (GemvF32Layout): x is twice the bytes, and every row group reads all of it from L2, so 4 rows a group share
//   each x load (8 warps, 16 rows a block, a ring of 2 chunks). With the bf16-x layout the x traffic equalled the
//   weight traffic and the decode shapes read 78-84 % of the copy bandwidth; kernels/tests/gemv_f32_sweep.cu has the
//   variants tried (staging x in shared memory was slower still).
// Programmatic dependent launch (sm_90+): the kernel issues its weight loads before waiting for its predecessor to
// finish (griddepcontrol.wait): weights never depend on earlier kernels, x and y do. It lets its successor launch
// (griddepcontrol.launch_dependents) right after that wait, so everything before this kernel has finished when the
// successor starts (the KDA decode step reads the projections before its own wait). Launched without the attribute,
// the wait returns at once. The host launches it with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION.
// Launch: grid ceil(N / ROWS_PER_BLOCK) blocks of WARPS * 32 threads (MatmulKernels.GemvBf16Geometry / GemvF32Geometry).
// Vector path when K % 8 == 0 and W, x are 16-byte aligned (every row then starts aligned); otherwise a scalar path
// (correct for any K, e.g. odd K in tests, but slow).
#include "mma.cuh" // cp.async (and common.cuh)

template <int Warps, int Split, int Rows, int Unroll, int Depth>
struct GemvLayout
{
    static constexpr int WARPS = Warps;   // warps a block
    static constexpr int SPLIT = Split;   // warps splitting K in a row group
    static constexpr int ROWS = Rows;     // rows a row group
    static constexpr int UNROLL = Unroll; // 16-byte vectors a lane a row in one chunk
    static constexpr int DEPTH = Depth;   // chunks in flight a lane
    static constexpr int GROUPS = Warps / Split;
    static constexpr int ROWS_PER_BLOCK = GROUPS * Rows;
};

// DEPTH x UNROLL x 32 x SPLIT vectors cover K = 4096. MatmulKernels.GemvBf16Geometry: 4 rows, 128 threads a block.
using GemvBf16Layout = GemvLayout<4, 2, 2, 2, 4>;
// MatmulKernels.GemvF32Geometry: 16 rows, 256 threads a block.
using GemvF32Layout = GemvLayout<8, 2, 4, 2, 2>;

// The bf16 layout's figures under the names kernels/tests/gemv_sweep.cu uses.
constexpr int GEMV_WARPS = GemvBf16Layout::WARPS;
constexpr int GEMV_ROWS_PER_BLOCK = GemvBf16Layout::ROWS_PER_BLOCK;

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

// The 8 values of x under 16-byte weight vector kk (zeros when `in` is false): bf16 as one uint4, fp32 as two float4.
struct f32x8
{
    float4 lo, hi;
};

__device__ __forceinline__ uint4 load_x8(const uint16_t* __restrict__ x, int kk, bool in)
{
    return in ? __ldg(reinterpret_cast<const uint4*>(x) + kk) : make_uint4(0, 0, 0, 0);
}

__device__ __forceinline__ f32x8 load_x8(const float* __restrict__ x, int kk, bool in)
{
    const float4* x4 = reinterpret_cast<const float4*>(x) + 2 * kk;
    return in ? f32x8{__ldg(x4), __ldg(x4 + 1)} : f32x8{make_float4(0, 0, 0, 0), make_float4(0, 0, 0, 0)};
}

__device__ __forceinline__ float dot8(uint4 w, f32x8 x, float acc)
{
    acc = fmaf(bf16_lo(w.x), x.lo.x, acc);
    acc = fmaf(bf16_hi(w.x), x.lo.y, acc);
    acc = fmaf(bf16_lo(w.y), x.lo.z, acc);
    acc = fmaf(bf16_hi(w.y), x.lo.w, acc);
    acc = fmaf(bf16_lo(w.z), x.hi.x, acc);
    acc = fmaf(bf16_hi(w.z), x.hi.y, acc);
    acc = fmaf(bf16_lo(w.w), x.hi.z, acc);
    acc = fmaf(bf16_hi(w.w), x.hi.w, acc);
    return acc;
}

__device__ __forceinline__ float load_x1(const uint16_t* x, int k) { return bf16_to_f32(x[k]); }
__device__ __forceinline__ float load_x1(const float* x, int k) { return x[k]; }

__device__ __forceinline__ void store_out(float* y, int i, float v) { y[i] = v; }
__device__ __forceinline__ void store_out(uint16_t* y, int i, float v) { y[i] = f32_to_bf16(v); }

// The 16-byte vector of column slot j that this lane reads.
template <typename L>
__device__ __forceinline__ int slot_vector(int j, int s, int lane) { return (j * L::SPLIT + s) * 32 + lane; }

// Loads chunk c of warp s's share of each row (slots c * UNROLL + u of the warp; zeros past the row's end).
template <typename L>
__device__ __forceinline__ void load_chunk(uint4 (&wv)[L::ROWS][L::UNROLL], const uint4* const (&w8)[L::ROWS], int c, int s, int lane, int K8)
{
#pragma unroll
    for (int u = 0; u < L::UNROLL; u++)
    {
        const int kk = slot_vector<L>(c * L::UNROLL + u, s, lane);
#pragma unroll
        for (int r = 0; r < L::ROWS; r++) wv[r][u] = kk < K8 ? __ldcs(w8[r] + kk) : make_uint4(0, 0, 0, 0);
    }
}

// rsqrt(mean(x²) + eps) of the fp32 row x [K], as kimi_rmsnorm_f32 computes it; every thread of the block calls it.
__device__ __forceinline__ float rms_inverse(const float* __restrict__ x, int K, float eps)
{
    float sumsq = 0.0f;
    if ((K & 3) == 0 && aligned16(x))
        for (int i = threadIdx.x; i < (K >> 2); i += blockDim.x)
        {
            const float4 v = __ldg(reinterpret_cast<const float4*>(x) + i);
            sumsq = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, sumsq))));
        }
    else
        for (int i = threadIdx.x; i < K; i += blockDim.x) sumsq = fmaf(x[i], x[i], sumsq);
    return rsqrtf(block_sum(sumsq) / static_cast<float>(K) + eps);
}

template <typename L, typename OutT, typename InT>
__device__ __forceinline__ void gemv(OutT* __restrict__ y, const uint16_t* __restrict__ W, const InT* __restrict__ x,
                                     int N, int K, int rows_per_x)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int group = warp / L::SPLIT, s = warp % L::SPLIT;
    const int row0 = (blockIdx.x * L::GROUPS + group) * L::ROWS;
    x += static_cast<size_t>(blockIdx.x * L::ROWS_PER_BLOCK / rows_per_x) * K; // the block's rows share one x

    // Rows past N re-read the last row; their sums are never stored. Keeps the loads unconditional, and every warp
    // reaches the barrier below.
    float acc[L::ROWS];
#pragma unroll
    for (int r = 0; r < L::ROWS; r++) acc[r] = 0.0f;

    if ((K & 7) == 0 && aligned16(W) && aligned16(x))
    {
        const int K8 = K >> 3;
        const uint4* w8[L::ROWS];
#pragma unroll
        for (int r = 0; r < L::ROWS; r++) w8[r] = reinterpret_cast<const uint4*>(W + static_cast<size_t>(min(row0 + r, N - 1)) * K);
        // This warp's slots are s, s + L::SPLIT, ... below ceil(K8 / 32); a chunk holds L::UNROLL of them.
        const int slots = (K8 + 31) >> 5;
        const int mine = slots > s ? (slots - s + L::SPLIT - 1) / L::SPLIT : 0;
        const int chunks = (mine + L::UNROLL - 1) / L::UNROLL;

        uint4 wv[L::DEPTH][L::ROWS][L::UNROLL];
#pragma unroll
        for (int d = 0; d < L::DEPTH; d++) load_chunk<L>(wv[d], w8, d, s, lane, K8);
        // The rest of the warp's share of its rows into L2 (one lane a 128-byte line), so that after the wait the ring
        // refills from L2: o_proj's predecessors, the KDA step and MLA's output merge, leave DRAM mostly idle.
        for (int c = L::DEPTH; c < chunks; c++)
#pragma unroll
            for (int u = 0; u < L::UNROLL; u++)
            {
                const int kk = slot_vector<L>(c * L::UNROLL + u, s, lane);
                if (kk < K8 && (lane & 7) == 0)
#pragma unroll
                    for (int r = 0; r < L::ROWS; r++) prefetch_l2(w8[r] + kk);
            }
        wait_for_predecessor();
        allow_successor();
        // Ring slot d holds chunk c0 + d; once used it is refilled with chunk c0 + d + L::DEPTH.
        for (int c0 = 0; c0 < chunks; c0 += L::DEPTH)
        {
#pragma unroll
            for (int d = 0; d < L::DEPTH; d++)
            {
                const int c = c0 + d;
                if (c < chunks)
                {
                    decltype(load_x8(x, 0, false)) xv[L::UNROLL];
#pragma unroll
                    for (int u = 0; u < L::UNROLL; u++)
                    {
                        const int kk = slot_vector<L>(c * L::UNROLL + u, s, lane);
                        xv[u] = load_x8(x, kk, kk < K8);
                    }
#pragma unroll
                    for (int u = 0; u < L::UNROLL; u++)
#pragma unroll
                        for (int r = 0; r < L::ROWS; r++) acc[r] = dot8(wv[d][r][u], xv[u], acc[r]);
                    if (c + L::DEPTH < chunks) load_chunk<L>(wv[d], w8, c + L::DEPTH, s, lane, K8);
                }
            }
        }
    }
    else
    {
        wait_for_predecessor();
        allow_successor();
        for (int k = s * 32 + lane; k < K; k += L::SPLIT * 32)
        {
            const float xk = load_x1(x, k);
#pragma unroll
            for (int r = 0; r < L::ROWS; r++)
                acc[r] = fmaf(bf16_to_f32(W[static_cast<size_t>(min(row0 + r, N - 1)) * K + k]), xk, acc[r]);
        }
    }

    __shared__ float partial[L::WARPS][L::ROWS];
#pragma unroll
    for (int r = 0; r < L::ROWS; r++)
    {
        const float sum = warp_sum(acc[r]);
        if (lane == 0) partial[warp][r] = sum;
    }
    __syncthreads();
    // Lane r of the group's first warp adds the group's partial sums of row r (in warp order: deterministic).
    if (s == 0 && lane < L::ROWS && row0 + lane < N)
    {
        float sum = 0.0f;
#pragma unroll
        for (int q = 0; q < L::SPLIT; q++) sum += partial[group * L::SPLIT + q][lane];
        store_out(y, row0 + lane, sum);
    }
}

extern "C" __global__ void __launch_bounds__(GemvBf16Layout::WARPS * 32)
kimi_gemv_bf16(uint16_t* __restrict__ y, const uint16_t* __restrict__ W, const uint16_t* __restrict__ x, int N, int K)
{
    gemv<GemvBf16Layout>(y, W, x, N, K, N);
}

extern "C" __global__ void __launch_bounds__(GemvBf16Layout::WARPS * 32)
kimi_gemv_bf16_f32(float* __restrict__ y, const uint16_t* __restrict__ W, const uint16_t* __restrict__ x, int N, int K)
{
    gemv<GemvBf16Layout>(y, W, x, N, K, N);
}

extern "C" __global__ void __launch_bounds__(GemvF32Layout::WARPS * 32)
kimi_gemv_f32(float* __restrict__ y, const uint16_t* __restrict__ W, const float* __restrict__ x, int N, int K, int rows_per_x)
{
    gemv<GemvF32Layout>(y, W, x, N, K, rows_per_x);
}

// STREAMING GEMV (kimi_gemv_rmsnorm_f32, kimi_gemv_stream_f32): for products the blocked layout above would run in
// several waves, which leave the memory pipe idle between them: inside the decode graph the projections that apply the
// input norm (KDA's six: 12,576 rows, 58 MB; MLA's 6,720 rows; the lm_head's 163,840) read at ~75 % of the copy
// bandwidth while the MoE experts, streamed, read at ~95 % (each left out of the graph in turn, 2026-11-28), and KDA's
// f_b and g_b (8,192 rows of K = 128: 512 blocks, 2 waves) cost 4.6 µs on the step's critical path for 2 MB.
// So these stream as moe.cu's gate-up does: a grid of one wave (MatmulKernels sizes it from the SM count), every warp an
// independent stream of items (ROWS consecutive rows; warp w of W takes items w, w + W, ...) walked chunk by chunk (a
// chunk: one column slot of 32 16-byte vectors, one a lane, of each of the item's rows) through a ring of DEPTH chunks
// in registers that is refilled across item boundaries, so its loads never stop until its last item. The first DEPTH
// chunks are requested before the programmatic wait. A warp reduces an item's rows with shuffles and writes them (no
// barrier, no atomics).
//   kimi_gemv_rmsnorm_f32: y = W · RMSNorm(x), a decode step's input norm (x · rsqrt(mean(x²) + eps) · norm_weight,
//     x [K] fp32, norm_weight [K] fp32) inside the projection that consumes it, one launch fewer on the critical path.
//     After the wait each block computes the inverse RMS (as kimi_rmsnorm_f32 does) and keeps the normalised row in
//     shared memory (dynamic, K floats) for all its warps.
//   kimi_gemv_stream_f32: y = W · x with kimi_gemv_f32's rows_per_x (a multiple of ROWS, or N): x read through L1.
// Vector path when K % 8 == 0 and the pointers are 16-byte aligned; otherwise each warp reads its rows' elements one at
// a time (correct for any K, slow). Launch: grid MatmulKernels.StreamGemvBlocks, GEMV_STREAM_WARPS * 32 threads;
// kimi_gemv_rmsnorm_f32 with K * 4 bytes of dynamic shared memory.
constexpr int GEMV_NORM_HELD = 3; // x vectors a thread holds for the norm: rows of K ≤ 3 · 4 · 256 = 3,072 in one round trip
constexpr int GEMV_STREAM_WARPS = 8, GEMV_STREAM_ROWS = 4, GEMV_STREAM_DEPTH = 4, GEMV_STREAM_BLOCKS_PER_SM = 2; // MatmulKernels.GemvStream*

// Norm's normalised row: the dynamic shared memory (the emulator's, when compiled for the CPU).
__device__ __forceinline__ float4* gemv_normed_row()
{
#ifdef KDA_EMULATE
    return reinterpret_cast<float4*>(emu_dynamic_smem);
#else
    extern __shared__ float4 gemv_smem_[];
    return gemv_smem_;
#endif
}

template <bool Norm>
__device__ __forceinline__ void gemv_stream(float* __restrict__ y, const uint16_t* __restrict__ W, const float* __restrict__ x,
                                            const float* __restrict__ norm_weight, float eps, int N, int K, int rows_per_x)
{
    float4* normed4 = gemv_normed_row(); // Norm: [K / 4] x · inv · norm_weight
    float* normed = reinterpret_cast<float*>(normed4);
    constexpr int R = GEMV_STREAM_ROWS, DEPTH = GEMV_STREAM_DEPTH;
    const int lane = threadIdx.x & 31, Wn = gridDim.x * GEMV_STREAM_WARPS, w = blockIdx.x * GEMV_STREAM_WARPS + (threadIdx.x >> 5);
    const int items = (N + R - 1) / R, mine = w < items ? (items - w + Wn - 1) / Wn : 0; // this warp's items

    // With Norm on the vector path, the norm weight is copied (cp.async) into the normalised row's place before the
    // wait (it is no kernel's output): after the wait only x is read, each thread's vectors of it at once where the row
    // fits GEMV_NORM_HELD of them a thread (the model's K), then scaled in place. Each thread copies, and later scales,
    // the same vectors i = threadIdx.x + s · blockDim.x.
    const bool staged = Norm && (K & 3) == 0 && aligned16(x) && aligned16(norm_weight);
    auto stage_norm_weight = [&]()
    {
        if (!staged) return;
        for (int i = threadIdx.x; i < (K >> 2); i += blockDim.x) cp_async16(smem_u32(normed4 + i), norm_weight + 4 * i, true);
        cp_async_commit();
    };
    // After the wait (x is the predecessor's output); with Norm, the normalised row into shared memory.
    auto after_wait = [&]()
    {
        wait_for_predecessor();
        allow_successor();
        if constexpr (Norm)
        {
            const int K4 = K >> 2;
            if (staged && K4 <= GEMV_NORM_HELD * static_cast<int>(blockDim.x))
            {
                float4 v[GEMV_NORM_HELD];
                float sumsq = 0.0f;
#pragma unroll
                for (int s = 0; s < GEMV_NORM_HELD; s++)
                {
                    const int i = threadIdx.x + s * blockDim.x;
                    v[s] = i < K4 ? __ldg(reinterpret_cast<const float4*>(x) + i) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                }
#pragma unroll
                for (int s = 0; s < GEMV_NORM_HELD; s++)
                    sumsq = fmaf(v[s].x, v[s].x, fmaf(v[s].y, v[s].y, fmaf(v[s].z, v[s].z, fmaf(v[s].w, v[s].w, sumsq))));
                cp_async_wait<0>();
                const float inv = rsqrtf(block_sum(sumsq) / static_cast<float>(K) + eps); // as kimi_rmsnorm_f32
#pragma unroll
                for (int s = 0; s < GEMV_NORM_HELD; s++)
                {
                    const int i = threadIdx.x + s * blockDim.x;
                    if (i < K4)
                    {
                        const float4 nw = normed4[i];
                        normed4[i] = make_float4(v[s].x * inv * nw.x, v[s].y * inv * nw.y, v[s].z * inv * nw.z, v[s].w * inv * nw.w);
                    }
                }
            }
            else if (staged)
            {
                cp_async_wait<0>();
                const float inv = rms_inverse(x, K, eps);
                for (int i = threadIdx.x; i < K4; i += blockDim.x)
                {
                    const float4 v = reinterpret_cast<const float4*>(x)[i], nw = normed4[i];
                    normed4[i] = make_float4(v.x * inv * nw.x, v.y * inv * nw.y, v.z * inv * nw.z, v.w * inv * nw.w);
                }
            }
            else
            {
                const float inv = rms_inverse(x, K, eps);
                for (int i = threadIdx.x; i < K; i += blockDim.x) normed[i] = x[i] * inv * norm_weight[i];
            }
            __syncthreads();
        }
    };
    auto x_of = [&](int row0) { return x + static_cast<size_t>(row0 / rows_per_x) * K; }; // the item's x (without Norm)
    // Lane r < R writes row row0 + r of the item (rows past N are never written).
    auto store = [&](float (&acc)[R], int row0)
    {
        float mine_sum = 0.0f;
#pragma unroll
        for (int r = 0; r < R; r++)
        {
            const float sum = warp_sum(acc[r]);
            if (lane == r) mine_sum = sum;
            acc[r] = 0.0f;
        }
        if (lane < R && row0 + lane < N) y[row0 + lane] = mine_sum;
    };

    if ((K & 7) != 0 || !aligned16(W) || !aligned16(x) || (Norm && !aligned16(norm_weight)))
    {
        stage_norm_weight();
        after_wait();
        for (int k = 0; k < mine; k++)
        {
            const int row0 = (w + k * Wn) * R;
            const float* xt = x_of(row0);
            float acc[R] = {};
            for (int c = lane; c < K; c += 32)
            {
                const float xc = Norm ? normed[c] : xt[c];
#pragma unroll
                for (int r = 0; r < R; r++) acc[r] = fmaf(bf16_to_f32(W[static_cast<size_t>(min(row0 + r, N - 1)) * K + c]), xc, acc[r]);
            }
            store(acc, row0);
        }
        return;
    }

    const int K8 = K >> 3, C = (K8 + 31) >> 5, chunks = mine * C; // C chunks an item; this warp's sequence
    // The loads (rows past N re-read row N - 1: loads stay unconditional, and those sums are never stored).
    RowStream<R> loads;
    auto begin_item = [&](int k)
    {
        const int row0 = (w + k * Wn) * R;
#pragma unroll
        for (int r = 0; r < R; r++) loads.rows[r] = reinterpret_cast<const uint4*>(W + static_cast<size_t>(min(row0 + r, N - 1)) * K);
    };
    if (chunks > 0) begin_item(0);
    uint4 wv[DEPTH][R];
    auto request = [&](uint4 (&slot)[R]) { loads.request(slot, lane, K8, C, mine, begin_item); };
#pragma unroll
    for (int d = 0; d < DEPTH; d++)
        if (d < chunks) request(wv[d]);
    stage_norm_weight();
    after_wait();

    // The compute cursor: chunk cc of item ck, whose x is xt. Ring slot d holds chunk n0 + d, refilled with chunk
    // n0 + d + DEPTH once used.
    int ck = 0, cc = 0;
    const float* xt = x_of(w * R);
    float acc[R] = {};
    for (int n0 = 0; n0 < chunks; n0 += DEPTH)
    {
#pragma unroll
        for (int d = 0; d < DEPTH; d++)
        {
            const int n = n0 + d;
            if (n >= chunks) break;
            const int kk = cc * 32 + lane;
            f32x8 xv;
            if constexpr (Norm)
                xv = kk < K8 ? f32x8{normed4[2 * kk], normed4[2 * kk + 1]} : f32x8{make_float4(0, 0, 0, 0), make_float4(0, 0, 0, 0)};
            else
                xv = load_x8(xt, kk, kk < K8);
#pragma unroll
            for (int r = 0; r < R; r++) acc[r] = dot8(wv[d][r], xv, acc[r]);
            if (n + DEPTH < chunks) request(wv[d]);
            if (++cc == C)
            {
                store(acc, (w + ck * Wn) * R);
                cc = 0;
                if (++ck < mine) xt = x_of((w + ck * Wn) * R);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_STREAM_WARPS * 32, GEMV_STREAM_BLOCKS_PER_SM)
kimi_gemv_rmsnorm_f32(float* __restrict__ y, const uint16_t* __restrict__ W, const float* __restrict__ x,
                      const float* __restrict__ norm_weight, float eps, int N, int K)
{
    gemv_stream<true>(y, W, x, norm_weight, eps, N, K, N);
}

extern "C" __global__ void __launch_bounds__(GEMV_STREAM_WARPS * 32, GEMV_STREAM_BLOCKS_PER_SM)
kimi_gemv_stream_f32(float* __restrict__ y, const uint16_t* __restrict__ W, const float* __restrict__ x, int N, int K, int rows_per_x)
{
    gemv_stream<false>(y, W, x, nullptr, 0.0f, N, K, rows_per_x);
}
