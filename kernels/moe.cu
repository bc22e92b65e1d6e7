// Mixture of experts on the GPU (spec §4): the router's expert choice, and the routed experts for decode (GEMV speed,
// reading only the chosen experts) and for prefill (tokens grouped by expert, grouped GEMM on the tensor cores).
// The shared expert runs outside these kernels. Activations fp32, weights bf16 (uint16_t bits), experts stacked:
//   gate_up [E, 2F, D]  expert e's rows [0, F) = w1 (gate), [F, 2F) = w3 (up)
//   down    [E, D, F]   w2
// Each routed expert computes y = w2 · (silu(w1·x) ⊙ (w3·x)) with x rounded to bf16 and the hidden h = silu(g) ⊙ u
// rounded to bf16 (as the tensor cores need, and as the bf16 reference model does); products accumulate in fp32.
// output[t] += Σ_a weights[t, a] · y_{experts[t, a]}(x[t]), summed in a fixed order (no float atomics): results are
// deterministic, and decode and prefill agree up to fp32 rounding.
// An expert id outside [0, E) is never used to address memory: its pair contributes NaN to its token's output.
//
// ROUTE (kimi_moe_route_f32): one warp per token, the same choice as CpuBackend.MoeRoute: scores = sigmoid(logits);
// selection = scores + bias; with groups > 1 (DeepSeek-V3) a group's score is the sum of its two best selection values
// and only the best topk_groups groups stay eligible (the others -inf); then the A best, best first, ties to the lower
// index; weights = scores (or selection values when `biased`) of the chosen, optionally divided by their sum + 1e-20,
// times scale. Lane i % 32 keeps value i in registers (E ≤ MOE_MAX_EXPERTS).
//
// DECODE (T ≤ MOE_MAX_DECODE_TOKENS), two kernels, both graph-capturable (ids read on the device) and launched with
// programmatic dependent launch. They wait for their predecessor before loading anything: the expert ids decide which
// weights to read, so nothing can be prefetched. The gate-up kernel lets its successor launch only once a block has
// used its weights: launched earlier, the successor's waiting blocks would hold SM slots its later blocks need (an
// H100 run measured the early trigger 4 % slower).
//   kimi_moe_decode_gate_up: grid (ceil(F / 8), T·A), 4 warps; block (fx, p) serves pair p = t·A + a. Each expert
//     is read once: only the first pair naming it works, for every token that chose it. Warp w takes rows
//     f0 = 2 (4 fx + w) and f0 + 1 of the gate and the up matrix, keeps a ring of chunks of them in flight that runs
//     from the first row into the second (as gemv.cu's ring, so the second row streams while the first is summed),
//     and writes h[t, a, f] (bf16) for each of its tokens. Consecutive blocks take consecutive rows of one expert
//     (an H100 run with the pairs varying fastest instead, eight experts' same rows at once, read 30 % slower).
//   kimi_moe_decode_down: grid ceil(D / 2), 4 warps; two warps own output row d, each half of F, and for each token
//     sum weights[t, a] · down[e][d] · h[t, a] over a with all eight pairs' rows in flight together, then add it to
//     output[t, d] (the halves in warp order).
//
// PREFILL (any T, one launch sequence, no host sync; grids sized for the worst case, surplus blocks exit):
//   1. kimi_moe_prefill_count: rank[p] = the pair's place among its expert's pairs (an int atomic: the place is
//      arbitrary but every later result is independent of it); xb = bf16(x).
//   2. kimi_moe_prefill_schedule (one warp): offsets = exclusive prefix sum of counts; tile_start likewise of the
//      per-expert 128-row tile counts.
//   3. kimi_moe_prefill_place: pair p goes to sorted row offsets[e] + rank[p]: token_of_row, pair_of_row.
//   4. kimi_moe_prefill_gate_up: grouped GEMM, grid (ceil(F / 64), ceil(P / 128) + E); block (nx, tile) finds its
//      expert by binary search in tile_start. A = xb rows gathered through token_of_row, B = 64 gate rows and the 64
//      matching up rows (interleaved per warp so each warp holds gate and up of the same columns), epilogue
//      h[row, f] = bf16(silu(g)·u).
//   5. kimi_moe_prefill_down: grouped GEMM, grid (ceil(D / 128), same tiles): A = h rows, B = down[e];
//      y[pair_of_row[row], :] = fp32 result (rows in pair order, so the combine reads each token's A rows together).
//   6. kimi_moe_prefill_combine: output[t] += Σ_a weights[t, a] · y[t·A + a], a in order.
//   The GEMMs use the mainloop of gemm.cu (block 128 x 128 x 64, 8 warps of 64 x 32, three cp.async stages, swizzled
//   tiles of mma.cuh, 96 KiB of dynamic shared memory).
// Preconditions (MoeKernels.cs checks them): D and F multiples of 8, every pointer 16-byte aligned, E ≤ 1024,
// A ≤ min(E, 32), groups ≤ 32 dividing E.
#include "mma.cuh"

constexpr int MOE_MAX_EXPERTS = 1024;                  // MoeKernels.MaxExperts
constexpr int MOE_VALUES_PER_LANE = MOE_MAX_EXPERTS / 32;
constexpr int MOE_ROUTE_WARPS = 4;                     // tokens a route block
constexpr int MOE_MAX_DECODE_TOKENS = 16;              // MoeKernels.MaxDecodeTokens: token masks are bits of a word
constexpr int MOE_DECODE_WARPS = 4;                    // warps a decode block
constexpr int MOE_GU_ROWS = 2;                         // gate-up: rows of w1 (and the same of w3) a warp, one after another
constexpr int MOE_GU_UNROLL = 3;                       // gate-up: 16-byte vectors a lane a row in one chunk
constexpr int MOE_GU_DEPTH = 3;                        // gate-up: chunks in flight (3 x 3 x 32 x 8 covers D = 2304)
constexpr int MOE_DOWN_SPLIT = 2;                      // down: warps sharing a row, each half of F
constexpr int MOE_DOWN_PAIRS = 8;                      // down: pairs whose rows are in flight together (A = 8)
constexpr int MOE_DOWN_VECTORS = 2;                    // down: 16-byte vectors a lane a row in one chunk (2 x 2 x 32 x 8 = F = 1024)
constexpr int MOE_TILE_M = 128, MOE_TILE_N = 128, MOE_STAGES = 3, MOE_GEMM_THREADS = 256;
constexpr int MOE_GEMM_SMEM_BYTES = MOE_STAGES * (MOE_TILE_M + MOE_TILE_N) * TILE_K * 2;
static_assert(MOE_GEMM_SMEM_BYTES == 96 * 1024, "MoeKernels.GemmSharedBytes (C#) launches with 96 KiB");
constexpr int MOE_ELEMENTWISE_THREADS = 256;

__device__ __forceinline__ float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }
__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }
__device__ __forceinline__ bool valid_expert(int e, int E) { return e >= 0 && e < E; }

__device__ __forceinline__ unsigned warp_or(unsigned v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}

// =====================================================================================================================
// ROUTE
// =====================================================================================================================

// Warp-wide best (value, index, payload) with ties to the lower index; index < 0 is "none" and loses to anything.
// Every lane ends with the same result (each step combines a pair symmetrically).
__device__ __forceinline__ void warp_argmax(float& value, int& index, float& payload)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
    {
        const float ov = __shfl_xor_sync(0xFFFFFFFFu, value, o), op = __shfl_xor_sync(0xFFFFFFFFu, payload, o);
        const int oi = __shfl_xor_sync(0xFFFFFFFFu, index, o);
        if (oi >= 0 && (index < 0 || ov > value || (ov == value && oi < index))) value = ov, index = oi, payload = op;
    }
}

extern "C" __global__ void __launch_bounds__(MOE_ROUTE_WARPS * 32)
kimi_moe_route_f32(int* __restrict__ experts, float* __restrict__ weights, const float* __restrict__ logits,
                   const float* __restrict__ bias, int T, int E, int A, int groups, int topk_groups, int renormalize,
                   float scale, int biased)
{
    allow_successor();
    wait_for_predecessor();
    const int lane = threadIdx.x & 31, t = blockIdx.x * MOE_ROUTE_WARPS + (threadIdx.x >> 5);
    if (t >= T) return;
    const float* row = logits + static_cast<size_t>(t) * E;
    float score[MOE_VALUES_PER_LANE], selection[MOE_VALUES_PER_LANE];
#pragma unroll
    for (int j = 0; j < MOE_VALUES_PER_LANE; j++)
    {
        if (j * 32 >= E) break; // the unrolled loops stop at E (warp-uniform), so small E costs little
        const int i = j * 32 + lane;
        score[j] = selection[j] = -INFINITY;
        if (i < E)
        {
            score[j] = 1.0f / (1.0f + expf(-row[i]));
            selection[j] = score[j] + bias[i];
        }
    }

    if (groups > 1)
    {
        // Lane g ends with group g's score: its best selection value plus its second best.
        const int per = E / groups;
        float group_score = -INFINITY;
        for (int g = 0; g < groups; g++)
        {
            float best = -INFINITY, second = -INFINITY;
#pragma unroll
            for (int j = 0; j < MOE_VALUES_PER_LANE; j++)
            {
                if (j * 32 >= E) break;
                const int i = j * 32 + lane;
                if (i < E && i / per == g)
                {
                    const float v = selection[j];
                    if (v > best) second = best, best = v;
                    else if (v > second) second = v;
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
            {
                const float ob = __shfl_xor_sync(0xFFFFFFFFu, best, o), os = __shfl_xor_sync(0xFFFFFFFFu, second, o);
                second = fmaxf(fminf(best, ob), fmaxf(second, os));
                best = fmaxf(best, ob);
            }
            if (lane == g) group_score = best + (per > 1 ? second : 0.0f);
        }
        unsigned kept = 0; // bit g: group g stays eligible
        for (int k = 0; k < topk_groups; k++)
        {
            float v = group_score, unused = 0.0f;
            int index = lane < groups && !((kept >> lane) & 1u) ? lane : -1;
            warp_argmax(v, index, unused);
            kept |= 1u << index;
        }
#pragma unroll
        for (int j = 0; j < MOE_VALUES_PER_LANE; j++)
        {
            if (j * 32 >= E) break;
            const int i = j * 32 + lane;
            if (i < E && !((kept >> (i / per)) & 1u)) selection[j] = -INFINITY;
        }
    }

    // A rounds of arg-max over the values not yet taken (bit j of `taken`: this lane's value j).
    unsigned taken = 0;
    int my_expert = 0;     // lane a: the a-th choice
    float my_weight = 0.0f;
    for (int a = 0; a < A; a++)
    {
        float best = 0.0f, payload = 0.0f;
        int index = -1;
#pragma unroll
        for (int j = 0; j < MOE_VALUES_PER_LANE; j++)
        {
            if (j * 32 >= E) break;
            const int i = j * 32 + lane;
            if (i < E && !((taken >> j) & 1u) && (index < 0 || selection[j] > best))
                best = selection[j], index = i, payload = biased ? selection[j] : score[j];
        }
        warp_argmax(best, index, payload);
        if ((index & 31) == lane) taken |= 1u << (index >> 5);
        if (lane == a) my_expert = index, my_weight = payload;
    }
    if (renormalize)
    {
        const float sum = warp_sum(lane < A ? my_weight : 0.0f);
        my_weight /= sum + 1e-20f;
    }
    if (lane < A)
    {
        experts[static_cast<size_t>(t) * A + lane] = my_expert;
        weights[static_cast<size_t>(t) * A + lane] = my_weight * scale;
    }
}

// =====================================================================================================================
// DECODE
// =====================================================================================================================

// The 8 fp32 values at x, rounded to bf16 and widened back.
__device__ __forceinline__ void load_rounded8(float (&xs)[8], const float* __restrict__ x)
{
    const float4 lo = *reinterpret_cast<const float4*>(x), hi = *reinterpret_cast<const float4*>(x + 4);
    xs[0] = round_bf16(lo.x), xs[1] = round_bf16(lo.y), xs[2] = round_bf16(lo.z), xs[3] = round_bf16(lo.w);
    xs[4] = round_bf16(hi.x), xs[5] = round_bf16(hi.y), xs[6] = round_bf16(hi.z), xs[7] = round_bf16(hi.w);
}

// acc += w · x over 8 values: w a vector of 8 bf16.
__device__ __forceinline__ float dot8_f32(uint4 w, const float (&x)[8], float acc)
{
    acc = fmaf(bf16_lo(w.x), x[0], acc);
    acc = fmaf(bf16_hi(w.x), x[1], acc);
    acc = fmaf(bf16_lo(w.y), x[2], acc);
    acc = fmaf(bf16_hi(w.y), x[3], acc);
    acc = fmaf(bf16_lo(w.z), x[4], acc);
    acc = fmaf(bf16_hi(w.z), x[5], acc);
    acc = fmaf(bf16_lo(w.w), x[6], acc);
    acc = fmaf(bf16_hi(w.w), x[7], acc);
    return acc;
}

// acc += w · h over 8 values, both vectors of 8 bf16.
__device__ __forceinline__ float dot8_bf16(uint4 w, uint4 h, float acc)
{
    acc = fmaf(bf16_lo(w.x), bf16_lo(h.x), acc);
    acc = fmaf(bf16_hi(w.x), bf16_hi(h.x), acc);
    acc = fmaf(bf16_lo(w.y), bf16_lo(h.y), acc);
    acc = fmaf(bf16_hi(w.y), bf16_hi(h.y), acc);
    acc = fmaf(bf16_lo(w.z), bf16_lo(h.z), acc);
    acc = fmaf(bf16_hi(w.z), bf16_hi(h.z), acc);
    acc = fmaf(bf16_lo(w.w), bf16_lo(h.w), acc);
    acc = fmaf(bf16_hi(w.w), bf16_hi(h.w), acc);
    return acc;
}

// Writes h[q, f] = value for each pair q of token t that this lane found naming the expert: bit k of `mine` is pair
// 32 k + lane. The scan that found them already read the ids, so nothing is read again before the store.
__device__ __forceinline__ void store_hidden(uint16_t* __restrict__ h, unsigned mine, int pairs, int lane, int A, int F, int t, int f,
                                             uint16_t value)
{
    for (int k = 0; k * 32 < pairs; k++)
    {
        const int q = k * 32 + lane;
        if (((mine >> k) & 1u) && q / A == t) h[static_cast<size_t>(q) * F + f] = value;
    }
}

// Chunk c of a warp's gate and up rows (row c / per_row of its rows, which are consecutive): lane vectors
// (lc · UNROLL + u) · 32 + lane of that row, lc = c mod per_row; zeros past the row.
__device__ __forceinline__ void load_gate_up_chunk(uint4 (&gate)[MOE_GU_UNROLL], uint4 (&up)[MOE_GU_UNROLL], const uint4* gate8,
                                                   const uint4* up8, int c, int per_row, int lane, int D8)
{
    const int row = c / per_row, lc = c - row * per_row;
#pragma unroll
    for (int u = 0; u < MOE_GU_UNROLL; u++)
    {
        const int v = (lc * MOE_GU_UNROLL + u) * 32 + lane;
        const size_t at = static_cast<size_t>(row) * D8 + v;
        gate[u] = v < D8 ? __ldcs(gate8 + at) : make_uint4(0, 0, 0, 0);
        up[u] = v < D8 ? __ldcs(up8 + at) : make_uint4(0, 0, 0, 0);
    }
}

extern "C" __global__ void __launch_bounds__(MOE_DECODE_WARPS * 32)
kimi_moe_decode_gate_up(uint16_t* __restrict__ h, const float* __restrict__ x, const int* __restrict__ experts,
                        const uint16_t* __restrict__ gate_up, int T, int D, int E, int A, int F)
{
    wait_for_predecessor();
    const int lane = threadIdx.x & 31, p = blockIdx.y;
    const int f0 = (blockIdx.x * MOE_DECODE_WARPS + (threadIdx.x >> 5)) * MOE_GU_ROWS; // this warp's first row
    if (f0 >= F) return; // an exited block counts as having let the successor launch
    const int pairs = T * A, e = experts[p], rows = min(MOE_GU_ROWS, F - f0);
    // The tokens that chose e (bit t), the pairs naming e that this lane read (`mine`, see store_hidden), and whether an
    // earlier pair names e too (then that pair's blocks do the work).
    unsigned tokens = 0, mine = 0, earlier = 0;
    for (int q0 = 0; q0 < pairs; q0 += 32)
    {
        const int q = q0 + lane;
        const bool match = q < pairs && experts[q] == e;
        tokens |= match ? 1u << (q / A) : 0u;
        mine |= match ? 1u << (q0 / 32) : 0u;
        earlier |= match && q < p ? 1u : 0u;
    }
    tokens = warp_or(tokens);
    if (warp_or(earlier) != 0) return;
    if (!valid_expert(e, E))
    {
        for (int t = 0; t < T; t++)
            for (int r = 0; r < rows; r++) store_hidden(h, mine, pairs, lane, A, F, t, f0 + r, BF16_NAN);
        return;
    }

    // A ring of DEPTH chunks running over the warp's rows, each slot refilled with the chunk DEPTH later once used.
    const int D8 = D >> 3, per_row = ((D8 + 31) / 32 + MOE_GU_UNROLL - 1) / MOE_GU_UNROLL, chunks = rows * per_row;
    const uint4* gate8 = reinterpret_cast<const uint4*>(gate_up + (static_cast<size_t>(e) * 2 * F + f0) * D);
    const uint4* up8 = gate8 + static_cast<size_t>(F) * D8;
    uint4 gate[MOE_GU_DEPTH][MOE_GU_UNROLL], up[MOE_GU_DEPTH][MOE_GU_UNROLL];
#pragma unroll
    for (int d = 0; d < MOE_GU_DEPTH; d++)
        if (d < chunks) load_gate_up_chunk(gate[d], up[d], gate8, up8, d, per_row, lane, D8);

    float gate_acc[MOE_MAX_DECODE_TOKENS], up_acc[MOE_MAX_DECODE_TOKENS];
#pragma unroll
    for (int t = 0; t < MOE_MAX_DECODE_TOKENS; t++) gate_acc[t] = up_acc[t] = 0.0f;
    for (int c0 = 0; c0 < chunks; c0 += MOE_GU_DEPTH)
    {
#pragma unroll
        for (int d = 0; d < MOE_GU_DEPTH; d++)
        {
            const int c = c0 + d;
            if (c >= chunks) break;
            const int row = c / per_row, lc = c - row * per_row;
#pragma unroll
            for (int t = 0; t < MOE_MAX_DECODE_TOKENS; t++)
            {
                if (!((tokens >> t) & 1u)) continue;
#pragma unroll
                for (int u = 0; u < MOE_GU_UNROLL; u++)
                {
                    const int v = (lc * MOE_GU_UNROLL + u) * 32 + lane;
                    if (v >= D8) continue;
                    float xs[8];
                    load_rounded8(xs, x + static_cast<size_t>(t) * D + v * 8);
                    gate_acc[t] = dot8_f32(gate[d][u], xs, gate_acc[t]);
                    up_acc[t] = dot8_f32(up[d][u], xs, up_acc[t]);
                }
            }
            if (c + MOE_GU_DEPTH < chunks) load_gate_up_chunk(gate[d], up[d], gate8, up8, c + MOE_GU_DEPTH, per_row, lane, D8);
            if (lc == per_row - 1) // the row is done: its sums, while the next row's chunks stream in
            {
#pragma unroll
                for (int t = 0; t < MOE_MAX_DECODE_TOKENS; t++)
                {
                    if (!((tokens >> t) & 1u)) continue;
                    const float g = warp_sum(gate_acc[t]), u = warp_sum(up_acc[t]);
                    store_hidden(h, mine, pairs, lane, A, F, t, f0 + row, f32_to_bf16(silu(g) * u));
                    gate_acc[t] = up_acc[t] = 0.0f;
                }
            }
        }
    }
    allow_successor();
}

extern "C" __global__ void __launch_bounds__(MOE_DECODE_WARPS * 32)
kimi_moe_decode_down(float* __restrict__ output, const uint16_t* __restrict__ h, const int* __restrict__ experts,
                     const float* __restrict__ weights, const uint16_t* __restrict__ down, int T, int D, int E, int A, int F)
{
    wait_for_predecessor();
    allow_successor(); // as gemv.cu: this kernel's blocks are few and short
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, s = warp % MOE_DOWN_SPLIT;
    const int d = blockIdx.x * (MOE_DECODE_WARPS / MOE_DOWN_SPLIT) + warp / MOE_DOWN_SPLIT;
    const int dd = min(d, D - 1); // rows past D compute row D - 1 and store nothing (every warp reaches the barriers)
    const int F8 = F >> 3, chunks = (F8 + 32 * MOE_DOWN_SPLIT * MOE_DOWN_VECTORS - 1) / (32 * MOE_DOWN_SPLIT * MOE_DOWN_VECTORS);
    __shared__ float partial[MOE_DECODE_WARPS];
    for (int t = 0; t < T; t++)
    {
        // Lane a holds pair a's expert and weight (A ≤ 32), read once a token.
        const int my_e = lane < A ? experts[t * A + lane] : -1;
        const float my_w = lane < A ? weights[t * A + lane] : 0.0f;
        float acc = 0.0f; // this lane's share of Σ_a w_a · down[e_a][d] · h[t, a]
        for (int a0 = 0; a0 < A; a0 += MOE_DOWN_PAIRS)
        {
            int ea[MOE_DOWN_PAIRS];
            bool live[MOE_DOWN_PAIRS]; // a real pair with a valid expert
            float part[MOE_DOWN_PAIRS];
#pragma unroll
            for (int i = 0; i < MOE_DOWN_PAIRS; i++)
            {
                ea[i] = __shfl_sync(0xFFFFFFFFu, my_e, min(a0 + i, A - 1));
                live[i] = a0 + i < A && valid_expert(ea[i], E);
                part[i] = 0.0f;
            }
            for (int c = 0; c < chunks; c++)
            {
                // Vector (c · VECTORS + u) · SPLIT + s of each 32-vector stripe: the row's two warps interleave.
                uint4 w[MOE_DOWN_PAIRS][MOE_DOWN_VECTORS];
#pragma unroll
                for (int i = 0; i < MOE_DOWN_PAIRS; i++)
                {
                    const uint4* row8 = reinterpret_cast<const uint4*>(down + (static_cast<size_t>(live[i] ? ea[i] : 0) * D + dd) * F);
#pragma unroll
                    for (int u = 0; u < MOE_DOWN_VECTORS; u++)
                    {
                        const int v = ((c * MOE_DOWN_VECTORS + u) * MOE_DOWN_SPLIT + s) * 32 + lane;
                        w[i][u] = live[i] && v < F8 ? __ldcs(row8 + v) : make_uint4(0, 0, 0, 0);
                    }
                }
#pragma unroll
                for (int i = 0; i < MOE_DOWN_PAIRS; i++)
                {
                    const uint4* h8 = reinterpret_cast<const uint4*>(h + (static_cast<size_t>(t) * A + min(a0 + i, A - 1)) * F);
#pragma unroll
                    for (int u = 0; u < MOE_DOWN_VECTORS; u++)
                    {
                        const int v = ((c * MOE_DOWN_VECTORS + u) * MOE_DOWN_SPLIT + s) * 32 + lane;
                        if (live[i] && v < F8) part[i] = dot8_bf16(w[i][u], __ldg(h8 + v), part[i]);
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < MOE_DOWN_PAIRS; i++)
            {
                const float wa = __shfl_sync(0xFFFFFFFFu, my_w, min(a0 + i, A - 1));
                if (a0 + i < A) acc = live[i] ? fmaf(wa, part[i], acc) : NAN;
            }
        }
        // The row's warps add their halves in warp order (deterministic).
        const float sum = warp_sum(acc);
        if (lane == 0) partial[warp] = sum;
        __syncthreads();
        if (s == 0 && lane == 0 && d < D)
        {
            float total = 0.0f;
#pragma unroll
            for (int q = 0; q < MOE_DOWN_SPLIT; q++) total += partial[warp + q];
            output[static_cast<size_t>(t) * D + d] += total;
        }
        __syncthreads();
    }
}

// =====================================================================================================================
// PREFILL
// =====================================================================================================================

extern "C" __global__ void __launch_bounds__(MOE_ELEMENTWISE_THREADS)
kimi_moe_prefill_count(int* __restrict__ counts, int* __restrict__ rank, uint16_t* __restrict__ xb, const float* __restrict__ x,
                       const int* __restrict__ experts, int T, int D, int E, int A)
{
    const int stride = gridDim.x * blockDim.x, first = blockIdx.x * blockDim.x + threadIdx.x;
    for (int p = first; p < T * A; p += stride)
    {
        const int e = experts[p];
        rank[p] = valid_expert(e, E) ? atomicAdd(counts + e, 1) : -1;
    }
    const long long quads = static_cast<long long>(T) * D / 4;
    for (long long q = first; q < quads; q += stride)
    {
        const float4 v = reinterpret_cast<const float4*>(x)[q];
        reinterpret_cast<uint2*>(xb)[q] = uint2{pack_bf16x2(v.x, v.y), pack_bf16x2(v.z, v.w)};
    }
}

// One warp: offsets[e] = Σ_{e' < e} counts[e'], tile_start[e] likewise of ceil(counts / 128); entry E is the total.
extern "C" __global__ void __launch_bounds__(32)
kimi_moe_prefill_schedule(int* __restrict__ offsets, int* __restrict__ tile_start, const int* __restrict__ counts, int E)
{
    const int lane = threadIdx.x;
    int rows = 0, tiles = 0; // totals of the experts before this chunk of 32
    for (int e0 = 0; e0 < E; e0 += 32)
    {
        const int e = e0 + lane;
        const int count = e < E ? counts[e] : 0;
        int row_sum = count, tile_sum = (count + MOE_TILE_M - 1) / MOE_TILE_M;
        const int my_tiles = tile_sum;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) // inclusive scan across the lanes
        {
            const int r = __shfl_sync(0xFFFFFFFFu, row_sum, lane - o), s = __shfl_sync(0xFFFFFFFFu, tile_sum, lane - o);
            if (lane >= o) row_sum += r, tile_sum += s;
        }
        if (e < E) offsets[e] = rows + row_sum - count, tile_start[e] = tiles + tile_sum - my_tiles;
        rows += __shfl_sync(0xFFFFFFFFu, row_sum, 31);
        tiles += __shfl_sync(0xFFFFFFFFu, tile_sum, 31);
    }
    if (lane == 0) offsets[E] = rows, tile_start[E] = tiles;
}

extern "C" __global__ void __launch_bounds__(MOE_ELEMENTWISE_THREADS)
kimi_moe_prefill_place(int* __restrict__ token_of_row, int* __restrict__ pair_of_row, const int* __restrict__ experts,
                       const int* __restrict__ rank, const int* __restrict__ offsets, int pairs, int E, int A)
{
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= pairs) return;
    const int e = experts[p];
    if (!valid_expert(e, E)) return;
    const int row = offsets[e] + rank[p];
    token_of_row[row] = p / A;
    pair_of_row[row] = p;
}

// The 128-row tile `tile` of the grouped GEMM: its expert, first sorted row and rows; false past the last tile.
__device__ __forceinline__ bool find_tile(const int* __restrict__ tile_start, const int* __restrict__ offsets, int E, int tile,
                                          int& e, int& row0, int& rows)
{
    if (tile >= tile_start[E]) return false;
    int lo = 0, hi = E; // tile_start[lo] <= tile < tile_start[hi]; experts without tiles share their successor's start
    while (hi - lo > 1)
    {
        const int mid = (lo + hi) >> 1;
        if (tile_start[mid] <= tile) lo = mid;
        else hi = mid;
    }
    e = lo;
    row0 = offsets[e] + (tile - tile_start[e]) * MOE_TILE_M;
    rows = min(MOE_TILE_M, offsets[e + 1] - row0);
    return true;
}

// Rows of a shared-memory tile this thread copies: row (threadIdx.x >> 3) + 32 i, chunk threadIdx.x & 7. A thread keeps
// each row as a 32-bit element offset from its matrix's base (half the registers of pointers; MoeKernels.cs keeps
// every matrix below 2^32 elements), NO_ROW for a row past the matrix.
constexpr int MOE_ROWS_A_THREAD = MOE_TILE_M * TILE_K / 8 / MOE_GEMM_THREADS;
constexpr uint32_t NO_ROW = 0xFFFFFFFFu;

struct TileRows
{
    const uint16_t* base;
    uint32_t offset[MOE_ROWS_A_THREAD];
};

// Copies k-slice [k0, k0 + 64) of this thread's rows into `tile`; rows past the matrix and columns past K are zeros.
__device__ __forceinline__ void load_rows(uint16_t* tile, const TileRows& src, int k0, int K)
{
    const int chunk = threadIdx.x & 7, gk = k0 + chunk * 8;
#pragma unroll
    for (int i = 0; i < MOE_ROWS_A_THREAD; i++)
    {
        const int row = (threadIdx.x >> 3) + 32 * i;
        const bool ok = src.offset[i] != NO_ROW && gk < K;
        cp_async16(smem_u32(tile + swizzled(row, chunk)), ok ? src.base + src.offset[i] + gk : src.base, ok);
    }
}

__device__ __forceinline__ uint16_t* moe_smem()
{
#ifdef KDA_EMULATE
    return reinterpret_cast<uint16_t*>(emu_dynamic_smem);
#else
    extern __shared__ __align__(128) uint16_t moe_smem_[];
    return moe_smem_;
#endif
}

// acc[mt][nt] += A_tile · B_tileᵀ over K, the mainloop of gemm.cu: warp (wm, wn) computes rows wm + [0, 64) and
// columns wn + [0, 32) of the 128 x 128 tile. a_rows / b_rows: this thread's rows of A and B (see load_rows).
__device__ __forceinline__ void grouped_mainloop(float (&acc)[4][4][4], const TileRows& a_rows, const TileRows& b_rows, int K)
{
    uint16_t* sA = moe_smem();                                  // [STAGES][128][64]
    uint16_t* sB = sA + MOE_STAGES * MOE_TILE_M * TILE_K;        // [STAGES][128][64]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32;
    const int KT = (K + TILE_K - 1) / TILE_K;
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

#pragma unroll
    for (int s = 0; s < MOE_STAGES - 1; s++)
    {
        if (s < KT)
        {
            load_rows(sA + s * MOE_TILE_M * TILE_K, a_rows, s * TILE_K, K);
            load_rows(sB + s * MOE_TILE_N * TILE_K, b_rows, s * TILE_K, K);
        }
        cp_async_commit();
    }
    for (int kt = 0; kt < KT; kt++)
    {
        // Tile kt has landed once at most STAGES - 2 groups are pending; the barrier also tells every thread that
        // the slot refilled below (read in iteration kt - 1) is free.
        cp_async_wait<MOE_STAGES - 2>();
        __syncthreads();
        const int next = kt + MOE_STAGES - 1;
        if (next < KT)
        {
            load_rows(sA + (next % MOE_STAGES) * MOE_TILE_M * TILE_K, a_rows, next * TILE_K, K);
            load_rows(sB + (next % MOE_STAGES) * MOE_TILE_N * TILE_K, b_rows, next * TILE_K, K);
        }
        cp_async_commit();

        const uint16_t* a = sA + (kt % MOE_STAGES) * MOE_TILE_M * TILE_K;
        const uint16_t* b = sB + (kt % MOE_STAGES) * MOE_TILE_N * TILE_K;
#pragma unroll
        for (int ks = 0; ks < TILE_K / 16; ks++)
        {
            uint32_t af[4][4], bf[2][4];
#pragma unroll
            for (int mt = 0; mt < 4; mt++)
            {
                const int row = wm + mt * 16 + (lane & 15);
                ldmatrix_x4(af[mt], smem_u32(a + swizzled(row, ks * 2 + (lane >> 4))));
            }
#pragma unroll
            for (int np = 0; np < 2; np++)
            {
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
}

extern "C" __global__ void __launch_bounds__(MOE_GEMM_THREADS, 2)
kimi_moe_prefill_gate_up(uint16_t* __restrict__ h, const uint16_t* __restrict__ xb, const int* __restrict__ token_of_row,
                         const int* __restrict__ offsets, const int* __restrict__ tile_start, const uint16_t* __restrict__ gate_up,
                         int D, int E, int F)
{
    int e, row0, rows;
    if (!find_tile(tile_start, offsets, E, blockIdx.y, e, row0, rows)) return;
    // Shared tile row n holds weight row f = f0 + 16 (n / 32) + n % 16 of the gate (n % 32 < 16) or of the up
    // matrix: warp column block w then holds gate columns in its n8 tiles 0-1 and the same columns of up in 2-3.
    const int f0 = blockIdx.x * (MOE_TILE_N / 2);
    TileRows a_rows{xb, {}}, b_rows{gate_up + static_cast<size_t>(e) * 2 * F * D, {}};
#pragma unroll
    for (int i = 0; i < MOE_ROWS_A_THREAD; i++)
    {
        const int r = (threadIdx.x >> 3) + 32 * i;
        a_rows.offset[i] = r < rows ? static_cast<uint32_t>(token_of_row[row0 + r]) * D : NO_ROW;
        const int f = f0 + 16 * (r >> 5) + (r & 15);
        b_rows.offset[i] = f < F ? static_cast<uint32_t>((r & 16) ? F + f : f) * D : NO_ROW;
    }
    float acc[4][4][4];
    grouped_mainloop(acc, a_rows, b_rows, D);

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = (warp >> 2) * 64, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int nt = 0; nt < 2; nt++)
        {
            const int f = f0 + 16 * (warp & 3) + nt * 8 + t * 2; // F is even, so f + 1 < F when f < F
            if (f >= F) continue;
#pragma unroll
            for (int half = 0; half < 2; half++)
            {
                const int r = wm + mt * 16 + g + half * 8;
                if (r >= rows) continue;
                const float* gate = &acc[mt][nt][half * 2];
                const float* up = &acc[mt][nt + 2][half * 2];
                *reinterpret_cast<uint32_t*>(h + static_cast<size_t>(row0 + r) * F + f) =
                    pack_bf16x2(silu(gate[0]) * up[0], silu(gate[1]) * up[1]);
            }
        }
}

extern "C" __global__ void __launch_bounds__(MOE_GEMM_THREADS, 2)
kimi_moe_prefill_down(float* __restrict__ y, const uint16_t* __restrict__ h, const int* __restrict__ pair_of_row,
                      const int* __restrict__ offsets, const int* __restrict__ tile_start, const uint16_t* __restrict__ down,
                      int D, int E, int F)
{
    int e, row0, rows;
    if (!find_tile(tile_start, offsets, E, blockIdx.y, e, row0, rows)) return;
    const int n0 = blockIdx.x * MOE_TILE_N;
    TileRows a_rows{h, {}}, b_rows{down + static_cast<size_t>(e) * D * F, {}};
#pragma unroll
    for (int i = 0; i < MOE_ROWS_A_THREAD; i++)
    {
        const int r = (threadIdx.x >> 3) + 32 * i;
        a_rows.offset[i] = r < rows ? static_cast<uint32_t>(row0 + r) * F : NO_ROW;
        b_rows.offset[i] = n0 + r < D ? static_cast<uint32_t>(n0 + r) * F : NO_ROW;
    }
    float acc[4][4][4];
    grouped_mainloop(acc, a_rows, b_rows, F);

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int mt = 0; mt < 4; mt++)
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            const int r = wm + mt * 16 + g + half * 8;
            if (r >= rows) continue;
            float* out = y + static_cast<size_t>(pair_of_row[row0 + r]) * D;
#pragma unroll
            for (int nt = 0; nt < 4; nt++)
            {
                const int col = n0 + wn + nt * 8 + t * 2; // D is even, so col + 1 < D when col < D
                if (col < D) *reinterpret_cast<float2*>(out + col) = make_float2(acc[mt][nt][half * 2], acc[mt][nt][half * 2 + 1]);
            }
        }
}

extern "C" __global__ void __launch_bounds__(MOE_ELEMENTWISE_THREADS)
kimi_moe_prefill_combine(float* __restrict__ output, const float* __restrict__ y, const int* __restrict__ experts,
                         const float* __restrict__ weights, int T, int D, int E, int A)
{
    const int quads = D / 4;
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<long long>(T) * quads) return;
    const int t = static_cast<int>(i / quads), q = static_cast<int>(i % quads);
    float4 sum = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int a = 0; a < A; a++)
    {
        const int p = t * A + a;
        if (!valid_expert(experts[p], E))
        {
            sum = make_float4(NAN, NAN, NAN, NAN);
            continue;
        }
        const float w = weights[p];
        const float4 v = reinterpret_cast<const float4*>(y + static_cast<size_t>(p) * D)[q];
        sum.x = fmaf(w, v.x, sum.x), sum.y = fmaf(w, v.y, sum.y), sum.z = fmaf(w, v.z, sum.z), sum.w = fmaf(w, v.w, sum.w);
    }
    float4* out = reinterpret_cast<float4*>(output + static_cast<size_t>(t) * D) + q;
    const float4 o = *out;
    *out = make_float4(o.x + sum.x, o.y + sum.y, o.z + sum.z, o.w + sum.w);
}
