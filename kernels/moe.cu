// Mixture of experts on the GPU (spec §4): the router's expert choice, and the experts for decode (GEMV speed,
// reading only the chosen experts) and for prefill (tokens grouped by expert, grouped GEMM on the tensor cores).
// The S shared experts (width S·F, always on) are S more experts E..E+S-1 of width F: SwiGLU acts per hidden unit and
// the down projection is linear, so the S·F-wide MLP is exactly the sum of its S slices of F units, each with weight
// 1.0. The router appends those S pairs to each token's A choices, and the expert kernels below take E + S experts and
// A + S pairs a token (as E and A: they need not know which are shared). Activations fp32, weights bf16 (uint16_t
// bits), experts stacked:
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
// times scale. Lane i % 32 keeps value i in registers (E ≤ MOE_MAX_EXPERTS). A token's row holds A + S pairs: its A
// choices, then (E + s, 1.0) for each shared expert s. For decode, kimi_moe_router_route_f32 computes the router
// logits as well and routes in the same launch (its comment below).
//
// DECODE (a few tokens: T ≤ MoeKernels.MaxDecodeTokens), two kernels, both graph-capturable (ids read on the device)
// and launched with programmatic dependent launch; both gathered GEMVs.
//   kimi_moe_decode_gate_up is a grid in which every warp is an independent stream: the work is cut into items (a few
//     weight rows of one pair), warp w of the grid's W warps takes items w, w + W, ..., and walks the chunks of its
//     items as one sequence (a chunk: one column slot of 32 16-byte vectors, one a lane, of each of the item's rows),
//     keeping a ring of DEPTH chunks in registers that is refilled across item boundaries, so its loads never stop
//     until its last item; at an item's end the warp reduces with shuffles and writes (no barrier, no atomics: each
//     output has one warp, summing in a fixed order). The grid is one wave (MoeKernels sizes it from the SM count and
//     the blocks an SM holds under the launch bounds) and the items are spread evenly over its warps: a grid of tiny
//     blocks in several waves left the memory pipe idle between waves (74 % of the copy bandwidth on the H100).
//     Items are numbered so that the pairs of one weight rows' set are neighbours: tokens that chose the same expert
//     read its rows at about the same time, once from DRAM and again from L2.
//     An item is (f group g, pair p): gate rows f0, f0 + 1 and up rows f0, f0 + 1 of the pair's expert (f0 = 2g),
//     which share every x load (x rounded to bf16 as loaded); the epilogue writes h[p, f] = bf16(silu(gate) · up).
//     Each warp takes its items of the shared experts first (numbered g · T·S + q over the T·S shared pairs) and its
//     routed ones after (g · T·(A − S) + q): the shared experts are known without the ids, so their rows stream while
//     the route kernel still runs, before this kernel waits for it; the wait comes just before the first routed item's
//     rows are chosen, and then the successor may launch. Its grid is one wave, so the successor's blocks only take SM
//     room this kernel leaves free or frees, and can fetch their first weights meanwhile. Reading x before the wait
//     needs x written before the route kernel's own wait returned (the route kernels lets its successor launch only
//     after that wait: x comes from the kernel before it).
//   kimi_moe_decode_down: grid (T, D / 2), 4 warps; block (t, g) owns output rows d0, d0 + 1 (d0 = 2g) of token t
//     and computes them as one GEMV over K = the token's A hiddens concatenated (vector a · F/8 + j of K is vector j
//     of pair a: h[t] is that vector already, the weight row is gathered per pair and each vector carries its pair's
//     weight), the four warps splitting K by column slots and the two rows sharing each hidden load; then
//     output[t, d] += the warps' shares, added in warp order. Not a stream of items like gate-up: at T = 1 its
//     1,152 blocks (one wave) keep ~35 warps an SM requesting their shares at once (the stream version, one warp an
//     item, ran at 56 % of copy bandwidth; this one at 84 %; docs/performance.md, "MoE kernels").
//     Blocks of one row pair are neighbours (t fastest), so tokens that chose the same expert read its rows from L2.
//     It reads the ids and routing weights and requests its first DEPTH chunks of weights before waiting for its
//     predecessor: the gate-up kernel lets it launch only after its own wait, when the route kernel that wrote them
//     has finished; only h and the output depend on the wait.
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
//   tiles of mma.cuh, 96 KiB of dynamic shared memory). On Hopper, steps 4 and 5 are kimi_moe_prefill_gate_up_wgmma and
//   kimi_moe_prefill_down_wgmma instead (same arguments and results, a persistent grid; "PREFILL ON HOPPER" below).
// Preconditions (MoeKernels.cs checks them): D and F multiples of 8, every pointer 16-byte aligned, E ≤ 1024 routed
// experts, A ≤ E, A + S ≤ 32, groups ≤ 32 dividing E.
#include "mma.cuh"
#include "hopper.cuh"

constexpr int MOE_MAX_EXPERTS = 1024;                  // MoeKernels.MaxExperts
constexpr int MOE_VALUES_PER_LANE = MOE_MAX_EXPERTS / 32;
constexpr int MOE_ROUTE_WARPS = 4;                     // tokens a route block
constexpr int MOE_ROUTER_WARPS = 4;                    // experts a fused router + route block (MoeKernels.RouterWarps)
constexpr int MOE_ROUTE_SURVIVORS = 8;                 // candidates each warp keeps in route_token_block (A ≤ 8 there)
constexpr int MOE_ROUTER_HELD = 12;                    // router column slots a lane requests before the wait (D ≤ 3,072)
// Decode gate-up: 4 warps a block, each an independent stream of items of 2 f's (4 weight rows sharing each x load),
// a ring of 4 chunks (16 vectors, 8 KB a warp in flight). Launch bounds of 4 blocks an SM: ≤ 128 registers a thread.
// (Measured against 8 warps and 2 blocks an SM, eleventh session: 2.148 → 2.143 ms a decode step on the H200, real
// configuration, but 2.652 → 2.668 on the H100 proxy; ring depths of 5, or items of one f with rings of 6 or 8, slower.)
constexpr int MOE_GU_WARPS = 4, MOE_GU_F = 2, MOE_GU_DEPTH = 4, MOE_GU_BLOCKS_PER_SM = 4;
constexpr int MOE_GU_WROWS = 2 * MOE_GU_F; // weight rows an item
static_assert(MOE_GU_F == 2, "MoeKernels.DecodeGateUpRows (C#); F % 8 == 0: whole items");
// Decode down: a block of 4 warps a (token, 2 output rows), the warps splitting K (the token's A hiddens concatenated)
// by column slots (at A + S = 9, F = 1,024: 9 slots a warp); a ring of 4 chunks a warp, and launch bounds of 9 blocks
// an SM (≤ 56 registers), so that T = 1's D / 2 = 1,152 blocks are one wave on 132 SMs. kernels/tests/moe_down_sweep.cu
// on the H100: 17.0 µs (84 % of copy) against 20.4 µs (70 %) with a ring of 8 and ~5 blocks an SM (two waves), 25 µs
// with a ring of 9; 4 rows or 8 warps a block were slower.
constexpr int MOE_DOWN_WARPS = 4, MOE_DOWN_ROWS = 2, MOE_DOWN_DEPTH = 4, MOE_DOWN_BLOCKS_PER_SM = 9;
static_assert(MOE_DOWN_ROWS == 2, "MoeKernels.DecodeDownRows (C#); D % 8 == 0 fills every block");
constexpr int MOE_TILE_M = 128, MOE_TILE_N = 128, MOE_STAGES = 3, MOE_GEMM_THREADS = 256;
constexpr int MOE_GEMM_SMEM_BYTES = MOE_STAGES * (MOE_TILE_M + MOE_TILE_N) * TILE_K * 2;
static_assert(MOE_GEMM_SMEM_BYTES == 96 * 1024, "MoeKernels.GemmSharedBytes (C#) launches with 96 KiB");
constexpr int MOE_ELEMENTWISE_THREADS = 256;

__device__ __forceinline__ float round_bf16(float v) { return bf16_to_f32(f32_to_bf16(v)); }
__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }
__device__ __forceinline__ bool valid_expert(int e, int E) { return e >= 0 && e < E; }

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

// Lane a < A holds token t's a-th choice and its weight: every lane of the warp calls this, which writes the token's
// row of (expert, weight) pairs, the routed weights renormalised and scaled, then lanes A..A+S-1's shared experts
// E..E+S-1 with weight 1.0 (neither renormalised nor scaled).
__device__ __forceinline__ void write_choices(int* __restrict__ experts, float* __restrict__ weights, int t, int E, int A, int S,
                                              int my_expert, float my_weight, int renormalize, float scale, int lane)
{
    if (renormalize)
    {
        const float sum = warp_sum(lane < A ? my_weight : 0.0f);
        my_weight /= sum + 1e-20f;
    }
    if (lane < A + S)
    {
        const size_t slot = static_cast<size_t>(t) * (A + S) + lane;
        experts[slot] = lane < A ? my_expert : E + lane - A;
        weights[slot] = lane < A ? my_weight * scale : 1.0f;
    }
}

// The router's score of a logit (sigmoid), to which the correction bias is added for the choice.
__device__ __forceinline__ float router_score(float logit) { return 1.0f / (1.0f + expf(-logit)); }

// Routes token t from its router logits `row` [E] (read through L2: in the fused kernel other blocks wrote them).
// VALUES ≥ E / 32 values a lane: route_token below instantiates it for 64, 256 and 1,024 experts, so that the code a
// model runs is unrolled for its E rather than for the most (a kernel of ~6K PTX lines when unrolled for 1,024).
template <int VALUES>
__device__ __forceinline__ void route_token_for(int* __restrict__ experts, float* __restrict__ weights, const float* row,
                                            const float* __restrict__ bias, int t, int E, int A, int S, int groups,
                                            int topk_groups, int renormalize, float scale, int biased, int lane)
{
    float score[VALUES], selection[VALUES];
    // Every load first, none behind a branch: the lane's logits and biases travel together (with a load in each
    // iteration of the loop below, after its `break`, they went one L2 round trip after another: ~4 µs of the route).
#pragma unroll
    for (int j = 0; j < VALUES; j++)
    {
        const int i = j * 32 + lane;
        score[j] = i < E ? __ldcg(row + i) : 0.0f;
        selection[j] = i < E ? __ldg(bias + i) : 0.0f;
    }
#pragma unroll
    for (int j = 0; j < VALUES; j++)
    {
        if (j * 32 >= E) break; // the unrolled loops stop at E (warp-uniform), so small E costs little
        const bool in = j * 32 + lane < E;
        score[j] = in ? router_score(score[j]) : -INFINITY;
        selection[j] = in ? score[j] + selection[j] : -INFINITY;
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
            for (int j = 0; j < VALUES; j++)
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
        for (int j = 0; j < VALUES; j++)
        {
            if (j * 32 >= E) break;
            const int i = j * 32 + lane;
            if (i < E && !((kept >> (i / per)) & 1u)) selection[j] = -INFINITY;
        }
    }

    // A rounds of arg-max over the values not yet taken (bit j of `taken`: this lane's value j). Each round is two
    // warp-wide integer reductions (redux.sync) over order_key(value): the best value, then the lowest index holding
    // it, instead of five shuffle rounds of (value, index, payload); the routing warp runs alone at the end of the
    // fused kernel, so its rounds are latency on the decode chain.
    unsigned key[VALUES];
#pragma unroll
    for (int j = 0; j < VALUES; j++)
    {
        if (j * 32 >= E) break;
        key[j] = order_key(selection[j]);
    }
    unsigned taken = 0;
    int my_expert = 0;     // lane a: the a-th choice
    float my_weight = 0.0f;
    for (int a = 0; a < A; a++)
    {
        unsigned best = 0u; // this lane's best key not yet taken, at its lowest j (key 0: none, or a NaN)
        int best_j = -1;
        float payload = 0.0f;
#pragma unroll
        for (int j = 0; j < VALUES; j++)
        {
            if (j * 32 >= E) break;
            if (j * 32 + lane < E && !((taken >> j) & 1u) && (best_j < 0 || key[j] > best))
                best = key[j], best_j = j, payload = biased ? selection[j] : score[j];
        }
        const unsigned top = __reduce_max_sync(0xFFFFFFFFu, best);
        // A ≤ E: some lane holds a candidate, and every lane with top's key holds one.
        const int index = __reduce_min_sync(0xFFFFFFFFu, best_j >= 0 && best == top ? best_j * 32 + lane : 0x7FFFFFFF);
        payload = __shfl_sync(0xFFFFFFFFu, payload, index & 31);
        if ((index & 31) == lane) taken |= 1u << (index >> 5);
        if (lane == a) my_expert = index, my_weight = payload;
    }
    write_choices(experts, weights, t, E, A, S, my_expert, my_weight, renormalize, scale, lane);
}

__device__ __forceinline__ void route_token(int* __restrict__ experts, float* __restrict__ weights, const float* row,
                                            const float* __restrict__ bias, int t, int E, int A, int S, int groups,
                                            int topk_groups, int renormalize, float scale, int biased, int lane)
{
    if (E <= 64)
        route_token_for<2>(experts, weights, row, bias, t, E, A, S, groups, topk_groups, renormalize, scale, biased, lane);
    else if (E <= 256)
        route_token_for<8>(experts, weights, row, bias, t, E, A, S, groups, topk_groups, renormalize, scale, biased, lane);
    else
        route_token_for<MOE_VALUES_PER_LANE>(experts, weights, row, bias, t, E, A, S, groups, topk_groups, renormalize, scale,
                                             biased, lane);
}

// Whether route_token_block routes this shape; else a warp routes each token (route_token). At E ≤ 64 a warp's lanes
// hold 2 values each and its rounds are short: the block route is kept to the E where it was measured to pay (256:
// 2.211 → 2.148 ms a decode step, H200; at 64 no difference on the H100 proxy).
__device__ __forceinline__ bool block_routes(int E, int A, int groups)
{
    return E > 64 && E <= 2 * MOE_ROUTER_WARPS * 32 && A <= MOE_ROUTE_SURVIVORS && groups == 1;
}

// Routes token t as route_token does (one group), with the fused router's whole block of MOE_ROUTER_WARPS warps and no
// chain of warp-wide reductions: a lone warp's A arg-max rounds took ~2.5 µs of the decode chain a MoE layer (H200).
// Candidate e is the 64-bit word order_key(selection) above ~e (distinct words; larger is better, and a tie goes to
// the lower index, as the rounds break it; an expert past E is the word ~e, below every real one). Each thread holds
// two candidates; each warp ranks its 64 against one another and keeps its best MOE_ROUTE_SURVIVORS (the best A of
// all are among the warps' best A), then the first warp ranks the survivors, and survivor r is choice r. The first
// MOE_ROUTER_WARPS warps of the block call it, each thread with logit(e) giving the token's logit of expert e and
// sync() a barrier of exactly those warps.
template <typename Logit, typename Sync>
__device__ __forceinline__ void route_token_block(int* __restrict__ experts, float* __restrict__ weights, Logit logit,
                                                  const float* __restrict__ bias, int t, int E, int A, int S,
                                                  int renormalize, float scale, int biased, Sync sync)
{
    constexpr int WARPS = MOE_ROUTER_WARPS, KEEP = MOE_ROUTE_SURVIVORS;
    static_assert(WARPS * KEEP == 32, "the first warp ranks the survivors, one a lane");
    __shared__ uint64_t words[WARPS][64];
    __shared__ uint64_t survivors[WARPS * KEEP];
    __shared__ float survivor_payloads[WARPS * KEEP];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint64_t mine[2];
    float payload[2];
#pragma unroll
    for (int c = 0; c < 2; c++)
    {
        const int e = warp * 64 + c * 32 + lane;
        const float value = e < E ? logit(e) : 0.0f, b = e < E ? __ldg(bias + e) : 0.0f;
        const float score = router_score(value), selection = score + b;
        mine[c] = (e < E ? static_cast<uint64_t>(order_key(selection)) << 32 : 0ull) | static_cast<uint32_t>(~e);
        payload[c] = biased ? selection : score;
        words[warp][c * 32 + lane] = mine[c];
    }
    __syncwarp();
    int rank[2] = { 0, 0 }; // candidates of this warp better than each of mine
#pragma unroll 8
    for (int j = 0; j < 64; j++)
    {
        const uint64_t other = words[warp][j];
        rank[0] += other > mine[0];
        rank[1] += other > mine[1];
    }
#pragma unroll
    for (int c = 0; c < 2; c++)
        if (rank[c] < KEEP) survivors[warp * KEEP + rank[c]] = mine[c], survivor_payloads[warp * KEEP + rank[c]] = payload[c];
    sync();
    if (warp == 0)
    {
        const uint64_t word = survivors[lane];
        int place = 0;
#pragma unroll
        for (int j = 0; j < 32; j++) place += survivors[j] > word;
        // Lane a < A: the a-th choice (places are distinct: the words are).
        __shared__ int choice[KEEP];
        __shared__ float choice_payload[KEEP];
        if (place < A) choice[place] = static_cast<int>(~static_cast<uint32_t>(word)), choice_payload[place] = survivor_payloads[lane];
        __syncwarp();
        write_choices(experts, weights, t, E, A, S, lane < A ? choice[lane] : 0, lane < A ? choice_payload[lane] : 0.0f,
                      renormalize, scale, lane);
    }
    sync(); // the shared arrays are free for the next token
}

extern "C" __global__ void __launch_bounds__(MOE_ROUTE_WARPS * 32)
kimi_moe_route_f32(int* __restrict__ experts, float* __restrict__ weights, const float* __restrict__ logits,
                   const float* __restrict__ bias, int T, int E, int A, int S, int groups, int topk_groups, int renormalize,
                   float scale, int biased)
{
    // The successor only after the wait: the decode gate-up kernel reads x (this kernel's predecessor's input) early.
    wait_for_predecessor();
    allow_successor();
    const int lane = threadIdx.x & 31, t = blockIdx.x * MOE_ROUTE_WARPS + (threadIdx.x >> 5);
    if (t < T)
        route_token(experts, weights, logits + static_cast<size_t>(t) * E, bias, t, E, A, S, groups, topk_groups,
                    renormalize, scale, biased, lane);
}

// ROUTER + ROUTE for decode (kimi_moe_router_route_f32): logits[t, e] = x[t] · router[e] (fp32 x, bf16 weights, fp32
// sums), then the last block to finish routes every token as kimi_moe_route_f32 does. One launch instead of a GEMV and
// the route kernel, and the router rows (which do not depend on the predecessor) are requested before the wait. Warp w
// of block b owns expert b · WARPS + w; the blocks count their arrivals in `arrivals` (zero between launches: the last
// block resets it), and the last one, after a fence, reads every block's logits through L2.
extern "C" __global__ void __launch_bounds__(MOE_ROUTER_WARPS * 32)
kimi_moe_router_route_f32(int* __restrict__ experts, float* __restrict__ weights, float* __restrict__ logits,
                          unsigned* __restrict__ arrivals, const float* __restrict__ x, const uint16_t* __restrict__ router,
                          const float* __restrict__ bias, int T, int D, int E, int A, int S, int groups, int topk_groups,
                          int renormalize, float scale, int biased)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, e = blockIdx.x * MOE_ROUTER_WARPS + warp, D8 = D >> 3;
    const uint4* row = reinterpret_cast<const uint4*>(router + static_cast<size_t>(min(e, E - 1)) * D);
    uint4 held[MOE_ROUTER_HELD]; // the first HELD column slots of the row; the rest (D > 3,072) load at use
#pragma unroll
    for (int i = 0; i < MOE_ROUTER_HELD; i++)
    {
        const int kk = i * 32 + lane;
        held[i] = kk < D8 ? __ldg(row + kk) : make_uint4(0, 0, 0, 0);
    }
    wait_for_predecessor(); // x
    allow_successor();      // after the wait: the gate-up kernel reads x before its own wait (and the ids after it)

    for (int t = 0; t < T; t++)
    {
        const float* xt = x + static_cast<size_t>(t) * D;
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < MOE_ROUTER_HELD; i++)
        {
            const int kk = i * 32 + lane;
            if (kk < D8)
            {
                const float4 lo = __ldg(reinterpret_cast<const float4*>(xt) + 2 * kk), hi = __ldg(reinterpret_cast<const float4*>(xt) + 2 * kk + 1);
                const float xs[8] = { lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w };
                acc = dot8_f32(held[i], xs, acc);
            }
        }
        for (int kk = MOE_ROUTER_HELD * 32 + lane; kk < D8; kk += 32)
        {
            const float4 lo = __ldg(reinterpret_cast<const float4*>(xt) + 2 * kk), hi = __ldg(reinterpret_cast<const float4*>(xt) + 2 * kk + 1);
            const float xs[8] = { lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w };
            acc = dot8_f32(__ldg(row + kk), xs, acc);
        }
        acc = warp_sum(acc);
        if (lane == 0 && e < E) logits[static_cast<size_t>(t) * E + e] = acc;
    }

    __shared__ bool last;
    __threadfence(); // this block's logits before its arrival
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(arrivals, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence(); // every block's logits after their arrivals
    if (block_routes(E, A, groups))
        for (int t = 0; t < T; t++)
        {
            const float* row = logits + static_cast<size_t>(t) * E;
            route_token_block(experts, weights, [&](int e) { return __ldcg(row + e); }, bias, t, E, A, S, renormalize, scale, biased,
                              [] { __syncthreads(); });
        }
    else
        for (int t = warp; t < T; t += MOE_ROUTER_WARPS)
            route_token(experts, weights, logits + static_cast<size_t>(t) * E, bias, t, E, A, S, groups, topk_groups,
                        renormalize, scale, biased, lane);
    if (threadIdx.x == 0) *arrivals = 0;
}

// =====================================================================================================================
// DECODE
// =====================================================================================================================

// The 8 fp32 values at x rounded to bf16 and widened back; zeros when `in` is false (nothing is read).
__device__ __forceinline__ void load_rounded8(float (&xs)[8], const float* __restrict__ x, bool in)
{
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const float4 lo = in ? __ldg(reinterpret_cast<const float4*>(x)) : zero, hi = in ? __ldg(reinterpret_cast<const float4*>(x) + 1) : zero;
    xs[0] = round_bf16(lo.x), xs[1] = round_bf16(lo.y), xs[2] = round_bf16(lo.z), xs[3] = round_bf16(lo.w);
    xs[4] = round_bf16(hi.x), xs[5] = round_bf16(hi.y), xs[6] = round_bf16(hi.z), xs[7] = round_bf16(hi.w);
}

// w · h over 8 values, both vectors of 8 bf16.
__device__ __forceinline__ float dot8_bf16(uint4 w, uint4 h)
{
    float acc = bf16_lo(w.x) * bf16_lo(h.x);
    acc = fmaf(bf16_hi(w.x), bf16_hi(h.x), acc);
    acc = fmaf(bf16_lo(w.y), bf16_lo(h.y), acc);
    acc = fmaf(bf16_hi(w.y), bf16_hi(h.y), acc);
    acc = fmaf(bf16_lo(w.z), bf16_lo(h.z), acc);
    acc = fmaf(bf16_hi(w.z), bf16_hi(h.z), acc);
    acc = fmaf(bf16_lo(w.w), bf16_lo(h.w), acc);
    acc = fmaf(bf16_hi(w.w), bf16_hi(h.w), acc);
    return acc;
}

// The items of `items` that warp w of a grid of W warps takes: w, w + W, ...
__device__ __forceinline__ int stream_items(int items, int w, int W) { return w < items ? (items - w + W - 1) / W : 0; }

// values[lane] for lanes below N (a register array read with a constant index: a dynamic one would go to local memory).
template <int N>
__device__ __forceinline__ float pick(const float (&values)[N], int lane)
{
    float v = values[0];
#pragma unroll
    for (int i = 1; i < N; i++) v = lane == i ? values[i] : v;
    return v;
}

// Which pair and which rows of it a gate-up item is. A warp's items are its shared-expert items first (the last S of
// each token's A pairs: pair t·A + A − S + s is expert E − S + s, known without the ids), then its routed ones (the first
// A − S pairs of each token, whose experts the route kernel chose).
struct GateUpItem
{
    int pair, f0;   // h row p = pair; gate rows f0, f0 + 1 and the matching up rows
    bool shared;
};

// Item k of warp w's sequence (GateUpItem above). Ps = T·S shared pairs, Pr = T·(A − S) routed ones.
__device__ __forceinline__ GateUpItem nth_gate_up_item(int k, int w, int W, int mine_shared, int Ps, int Pr, int A, int S)
{
    if (k < mine_shared)
    {
        const int i = w + k * W, q = i % Ps;
        return { q / S * A + A - S + q % S, i / Ps * MOE_GU_F, true };
    }
    const int i = w + (k - mine_shared) * W, q = i % Pr;
    return { q / (A - S) * A + q % (A - S), i / Pr * MOE_GU_F, false };
}

// An item's weight rows: gate f0 + r at r, up f0 + r at MOE_GU_F + r (an invalid routed id reads expert 0's rows: the
// epilogue writes NaN for it). A routed item reads the ids: only after the wait.
__device__ __forceinline__ void gate_up_rows(const uint4* (&rows)[MOE_GU_WROWS], const uint16_t* __restrict__ gate_up,
                                             const int* __restrict__ experts, GateUpItem item, int D, int E, int A, int F)
{
    const int e = item.shared ? E - A + item.pair % A : experts[item.pair];
    const uint16_t* expert = gate_up + static_cast<size_t>(valid_expert(e, E) ? e : 0) * 2 * F * D;
#pragma unroll
    for (int r = 0; r < MOE_GU_F; r++)
    {
        rows[r] = reinterpret_cast<const uint4*>(expert + static_cast<size_t>(item.f0 + r) * D);
        rows[MOE_GU_F + r] = reinterpret_cast<const uint4*>(expert + static_cast<size_t>(F + item.f0 + r) * D);
    }
}

extern "C" __global__ void __launch_bounds__(MOE_GU_WARPS * 32, MOE_GU_BLOCKS_PER_SM)
kimi_moe_decode_gate_up(uint16_t* __restrict__ h, const float* __restrict__ x, const int* __restrict__ experts,
                        const uint16_t* __restrict__ gate_up, int T, int D, int E, int A, int F, int S)
{
    const int lane = threadIdx.x & 31, W = gridDim.x * MOE_GU_WARPS, w = blockIdx.x * MOE_GU_WARPS + (threadIdx.x >> 5);
    const int Ps = T * S, Pr = T * (A - S), fgroups = F / MOE_GU_F, D8 = D >> 3, C = (D8 + 31) >> 5; // C chunks an item
    const int mine_shared = stream_items(fgroups * Ps, w, W), mine = mine_shared + stream_items(fgroups * Pr, w, W);
    const int chunks = mine * C; // this warp's sequence
    bool waited = false;
    // Before the first routed item: the ids are the predecessor's (the route kernel's) output. Then the successor may
    // launch: the down kernel reads the ids before its own wait.
    auto wait_once = [&]()
    {
        if (waited) return;
        waited = true;
        wait_for_predecessor();
        allow_successor();
    };

    // The loads (common.cuh's RowStream). Ring slot d holds chunk n0 + d of the sequence.
    RowStream<MOE_GU_WROWS> loads;
    auto begin_item = [&](int k)
    {
        const GateUpItem item = nth_gate_up_item(k, w, W, mine_shared, Ps, Pr, A, S);
        if (!item.shared) wait_once();
        gate_up_rows(loads.rows, gate_up, experts, item, D, E, A, F);
    };
    if (chunks > 0) begin_item(0);
    uint4 wv[MOE_GU_DEPTH][MOE_GU_WROWS];
    auto request = [&](uint4 (&slot)[MOE_GU_WROWS]) { loads.request(slot, lane, D8, C, mine, begin_item); };
#pragma unroll
    for (int d = 0; d < MOE_GU_DEPTH; d++)
        if (d < chunks) request(wv[d]);

    // The compute cursor: chunk cc of item ck, whose token's x row is xt. x was written before the route kernel's
    // predecessor finished (MoeKernels.DecodeExperts), so the shared items read it before the wait.
    int ck = 0, cc = 0;
    GateUpItem citem = chunks > 0 ? nth_gate_up_item(0, w, W, mine_shared, Ps, Pr, A, S) : GateUpItem{};
    const float* xt = x + static_cast<size_t>(citem.pair / A) * D;
    float acc[MOE_GU_WROWS] = {};
    for (int n0 = 0; n0 < chunks; n0 += MOE_GU_DEPTH)
    {
#pragma unroll
        for (int d = 0; d < MOE_GU_DEPTH; d++)
        {
            const int n = n0 + d;
            if (n >= chunks) break;
            const int kk = cc * 32 + lane;
            float xs[8]; // shared by the item's rows
            load_rounded8(xs, xt + static_cast<size_t>(kk) * 8, kk < D8);
#pragma unroll
            for (int r = 0; r < MOE_GU_WROWS; r++) acc[r] = dot8_f32(wv[d][r], xs, acc[r]);
            if (n + MOE_GU_DEPTH < chunks) request(wv[d]);
            if (++cc == C)
            {
                // Lane r < MOE_GU_F: h[p, f0 + r] = bf16(silu(gate) · up), NaN for an invalid routed id.
                float sums[MOE_GU_WROWS];
#pragma unroll
                for (int r = 0; r < MOE_GU_WROWS; r++) sums[r] = warp_sum(acc[r]), acc[r] = 0.0f;
                float gate[MOE_GU_F], up[MOE_GU_F];
#pragma unroll
                for (int r = 0; r < MOE_GU_F; r++) gate[r] = sums[r], up[r] = sums[MOE_GU_F + r];
                const float g = pick(gate, lane), u = pick(up, lane);
                const bool valid = citem.shared || valid_expert(experts[citem.pair], E);
                if (lane < MOE_GU_F)
                    h[static_cast<size_t>(citem.pair) * F + citem.f0 + lane] = valid ? f32_to_bf16(silu(g) * u) : BF16_NAN;
                cc = 0;
                if (++ck < mine)
                {
                    citem = nth_gate_up_item(ck, w, W, mine_shared, Ps, Pr, A, S);
                    xt = x + static_cast<size_t>(citem.pair / A) * D;
                }
            }
        }
    }
    wait_once(); // a warp without routed items still waits before its block lets the successor launch
}

extern "C" __global__ void __launch_bounds__(MOE_DOWN_WARPS * 32, MOE_DOWN_BLOCKS_PER_SM)
kimi_moe_decode_down(float* __restrict__ output, const uint16_t* __restrict__ h, const int* __restrict__ experts,
                     const float* __restrict__ weights, const uint16_t* __restrict__ down, int T, int D, int E, int A, int F)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, t = blockIdx.x;
    const int d0 = blockIdx.y * MOE_DOWN_ROWS; // D % 8 == 0: d0 + MOE_DOWN_ROWS ≤ D
    const int F8 = F >> 3, K8 = A * F8, slots = (K8 + 31) >> 5;
    const int chunks = warp < slots ? (slots - warp + MOE_DOWN_WARPS - 1) / MOE_DOWN_WARPS : 0; // this warp's column slots

    // Lane a holds pair a's expert and weight (A ≤ 32). An invalid id makes the token's rows NaN; its pair reads expert 0
    // meanwhile, so every address stays inside the weights. The route kernel that wrote them has finished (see above).
    int my_e = lane < A ? experts[t * A + lane] : 0;
    const float my_w = lane < A ? weights[t * A + lane] : 0.0f;
    const bool bad = warp_or(valid_expert(my_e, E) ? 0u : 1u) != 0;
    my_e = valid_expert(my_e, E) ? my_e : 0;

    // Chunk c of this warp is column slot c · WARPS + warp: vector kk = slot · 32 + lane of the concatenated K, which is
    // vector j of pair a. The shuffles run in every lane (a is clamped), the loads only below K8.
    uint4 wv[MOE_DOWN_DEPTH][MOE_DOWN_ROWS];
    float wa[MOE_DOWN_DEPTH];
    auto request = [&](int c, uint4 (&slot)[MOE_DOWN_ROWS], float& slot_weight)
    {
        const int kk = (c * MOE_DOWN_WARPS + warp) * 32 + lane, a = min(kk / F8, A - 1), j = kk - a * F8;
        const int e = __shfl_sync(0xFFFFFFFFu, my_e, a);
        slot_weight = __shfl_sync(0xFFFFFFFFu, my_w, a);
        const uint4* row8 = reinterpret_cast<const uint4*>(down + (static_cast<size_t>(e) * D + d0) * F);
#pragma unroll
        for (int r = 0; r < MOE_DOWN_ROWS; r++) slot[r] = kk < K8 ? __ldcs(row8 + static_cast<size_t>(r) * F8 + j) : make_uint4(0, 0, 0, 0);
    };
#pragma unroll
    for (int d = 0; d < MOE_DOWN_DEPTH; d++)
        if (d < chunks) request(d, wv[d], wa[d]);
    wait_for_predecessor(); // h and the output
    allow_successor();      // as gemv.cu

    const uint4* h8 = reinterpret_cast<const uint4*>(h + static_cast<size_t>(t) * A * F); // [A·F8] the token's hiddens, concatenated
    float acc[MOE_DOWN_ROWS] = {};
    for (int c0 = 0; c0 < chunks; c0 += MOE_DOWN_DEPTH)
    {
#pragma unroll
        for (int d = 0; d < MOE_DOWN_DEPTH; d++)
        {
            const int c = c0 + d;
            if (c >= chunks) break;
            const int kk = (c * MOE_DOWN_WARPS + warp) * 32 + lane;
            const uint4 hv = kk < K8 ? __ldg(h8 + kk) : make_uint4(0, 0, 0, 0); // shared by the rows
#pragma unroll
            for (int r = 0; r < MOE_DOWN_ROWS; r++) acc[r] = fmaf(wa[d], dot8_bf16(wv[d][r], hv), acc[r]);
            if (c + MOE_DOWN_DEPTH < chunks) request(c + MOE_DOWN_DEPTH, wv[d], wa[d]);
        }
    }

    // Lane r of the first warp adds row d0 + r's shares in warp order (deterministic).
    __shared__ float partial[MOE_DOWN_WARPS][MOE_DOWN_ROWS];
#pragma unroll
    for (int r = 0; r < MOE_DOWN_ROWS; r++)
    {
        const float sum = warp_sum(acc[r]);
        if (lane == 0) partial[warp][r] = sum;
    }
    __syncthreads();
    if (warp == 0 && lane < MOE_DOWN_ROWS)
    {
        float total = 0.0f;
#pragma unroll
        for (int q = 0; q < MOE_DOWN_WARPS; q++) total += partial[q][lane];
        output[static_cast<size_t>(t) * D + d0 + lane] += bad ? NAN : total;
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

// =====================================================================================================================
// PREFILL ON HOPPER: the grouped GEMMs on warpgroup MMA (wgmma, sm_90a)
// =====================================================================================================================
//
// kimi_moe_prefill_gate_up_wgmma and kimi_moe_prefill_down_wgmma compute exactly what kimi_moe_prefill_gate_up and
// kimi_moe_prefill_down do (same arguments, same 128-row tiles of tile_start, same outputs), for Hopper. The mma.sync
// mainloop tops out near 350 TFLOP/s: every warp both copies and multiplies, ldmatrix feeds the tensor cores through
// registers, and the 128 x 128 tile makes each byte fetched from L2 serve 64 flops. Here, in the manner of CUTLASS's
// warp-specialised Hopper GEMM (and of kimi_mla_prefill_wgmma_d192_v128 in mla.cu):
//   - the tile is 128 rows x 256 columns x 64 k (85 flops a byte from L2): gate-up's 256 columns are 128 gate rows
//     f0 + [0, 128) and the same 128 up rows, so each thread's accumulators hold the gate and the up value of the same
//     (row, f) 64 registers apart and the SwiGLU epilogue needs no exchange; down's are 256 output columns;
//   - warpgroups 0 and 1 (consumers) each multiply 64 of the rows with wgmma m64n256k16 straight from shared memory
//     (128 fp32 accumulators a thread), and release a stage as soon as the wgmma that read it has retired (wait_group
//     1: the next k step's products are already queued);
//   - warpgroup 2 (producer) copies A and B by cp.async into a 4-stage ring of 48 KiB stages guarded by mbarriers
//     (full: the stage holds k step j, one arrival per producer thread; empty: both consumers are done with it, 256).
//     The copies' layout is mma.cuh's swizzled tile, which on a 1,024-byte-aligned base is the 128-byte-swizzled
//     K-major layout wgmma's descriptors name. Each producer thread announces a stage by cp.async.mbarrier.arrive.noinc
//     right after issuing its copies: the arrival happens when they land, so the producer never waits for its own
//     copies, only for a free stage, and all four stages can be in flight. (cp.async writes through the generic proxy,
//     wgmma reads through the async one: each consumer thread fences the proxies after its wait on `full`.) A rows
//     are gathered through token_of_row as in the mma.sync kernel (TMA cannot gather rows on Hopper); rows past the
//     tile and columns past K are zero-filled, so any D and F that are multiples of 8 work, partial tiles included.
//   - the epilogue goes through shared memory (a 64 x 256-byte buffer a consumer warpgroup, beside the ring): the
//     warpgroup writes its accumulators there (gate-up: h as bf16 by stmatrix; down: y as fp32 by 8-byte stores, in 4
//     passes of 64 columns), meets at a named barrier, and copies the rows out in 16-byte pieces, so a warp's store
//     covers two whole 256-byte row segments (the fragment-order stores wrote 16 bytes (h) or 32 bytes (y) of each of
//     8 rows). The buffer's 16-byte chunks are XOR-swizzled by the row so that neither side has bank conflicts.
//   - the grid is persistent (one block an SM, 225 KiB of shared memory): block b takes work items b, b + grid, ...,
//     item w = tile w / NB's column block w % NB (column blocks of one tile are neighbours, so they share its A rows in
//     L2, and the ~9 tiles of an expert follow each other, so its weights stay in L2). The producer runs ahead into
//     the next item while the consumers write the previous one's outputs.
// Registers. __launch_bounds__(384, 1) fixes the count at entry to 65,536 / 384 = 168 a thread, and so the pool the
// warpgroups share after setmaxnreg: 384 · 168 = 64,512 = 128 · P + 256 · C. ptxas compiles the code after each
// setmaxnreg to that count (it can, because the entry count is known: without the minimum of 1 block it ignores
// setmaxnreg, warning C7508). The first version (P = 56, C = 224) spilled 92 / 148 bytes at a reported 168. The
// consumers cannot have been short (128 accumulators + ~40 for the rest fit 224 with room), so the spills were most
// likely the producer's: after LLVM hoists the loop-invariant addresses out of its k loop, 24 copies a stage hold 8 A
// and 16 B row pointers (48 registers as 64-bit pointers), the stage's shared address, the loop state (item, k step,
// counts, ~10) and the tile's bounds (~6), about 65 at worst, over 56. Now P = 88 (65 + 23 of margin), C = 208:
//   consumer, mainloop: 128 accumulators + 2 shared addresses (the stage's A and B; the k16 descriptors are those plus
//   an immediate) + ~10 of loop state (item, k step, stage, parity, KT, NB, items) + ~6 (expert, first row, rows, lane
//   ids) ≈ 146; epilogue: the accumulators not yet written (128 at the start) + 4 packed values + ~10 of addresses and
//   indices ≈ 145. 208 leaves ~60 free, so neither side should spill; check it in the sm_90a report build.sh prints
//   (its sm_90 one shows these kernels as trap stubs), and that no C7508 (setmaxnreg ignored) appears there.
// 2 · 208 + 88 = 504 = 3 · 168, the whole pool (setmaxnreg.inc waits forever for registers the pool does not have).
// The alternatives were worse: four consumer warpgroups of m64n128 (64 accumulators each) make 640 threads, an entry
// count of 65,536 / 640 → 96 registers and a pool of 640 · 96, i.e. 4C + P ≤ 480 (C = 104, P = 64 at best: 64 + ~40
// for a consumer, and the producer tighter than now), and each k16 step then reads the A tile twice as often per flop;
// a 64 x 256 tile a block halves the flops each B byte serves. So the tile and the warpgroups stay as they were.
// The PTX targets (compute_90, compute_80) cannot express wgmma: there these kernels only trap, and MoeKernels launches
// them only where the sm_90a cubin is loaded (compute capability 9.0). KIMI_REQUIRES_SM90A: build.sh builds this
// file's cubin too (the whole module then loads from it on Hopper).
constexpr int MOE_WG_N = 256, MOE_WG_STAGES = 4, MOE_WG_THREADS = 384;
constexpr int MOE_WG_PRODUCER_REGISTERS = 88, MOE_WG_CONSUMER_REGISTERS = 208;
static_assert(128 * MOE_WG_PRODUCER_REGISTERS + 256 * MOE_WG_CONSUMER_REGISTERS <= MOE_WG_THREADS * (65536 / MOE_WG_THREADS / 8 * 8),
              "the warpgroups' registers after setmaxnreg must fit the pool the launch bound gives the block");
constexpr int MOE_WG_A_BYTES = MOE_TILE_M * TILE_K * 2, MOE_WG_B_BYTES = MOE_WG_N * TILE_K * 2;
constexpr int MOE_WG_STAGE_BYTES = MOE_WG_A_BYTES + MOE_WG_B_BYTES;
// The epilogue's buffer: 64 rows of 256 bytes a consumer warpgroup (gate-up: 128 bf16 h; down: 64 fp32 y of a pass).
constexpr int MOE_WG_OUT_ROW_BYTES = 256, MOE_WG_OUT_BYTES = 64 * MOE_WG_OUT_ROW_BYTES;
// The 1,024-byte alignment the swizzle atoms need, the ring, the two epilogue buffers, the mbarriers full[4] and empty[4].
constexpr int MOE_WG_SMEM_BYTES = 1024 + MOE_WG_STAGES * MOE_WG_STAGE_BYTES + 2 * MOE_WG_OUT_BYTES + 2 * MOE_WG_STAGES * 8;
static_assert(MOE_WG_SMEM_BYTES == 230464, "MoeKernels.WgmmaSharedBytes (C#)");
static_assert(MOE_WG_SMEM_BYTES <= 232448, "sm_90's largest opt-in shared memory a block (227 KiB)");

#if defined(KDA_EMULATE) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace moe_wg {

// Arrives on `bar` once every cp.async this thread has issued so far has landed (.noinc: the arrival is one of the
// count the barrier was initialised with).
__device__ __forceinline__ void cp_async_mbar_arrive(uint64_t* bar)
{
#ifdef KDA_EMULATE
    emu_cp_async_mbarrier_arrive(bar);
#else
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar)) : "memory");
#endif
}
// stmatrix .x4: lane i addresses row i % 8 of 8×8 bf16 matrix i / 8 (16-byte rows); lane l holds row l / 4, columns
// 2(l % 4), +1 of matrix j in r[j].
__device__ __forceinline__ void stmatrix_x4(const uint32_t (&r)[4], void* row)
{
#ifdef KDA_EMULATE
    emu_stmatrix(r, 4, row);
#else
    asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(smem_u32(row)), "r"(r[0]), "r"(r[1]),
                 "r"(r[2]), "r"(r[3])
                 : "memory");
#endif
}

// d[64×256] (+)= A[64×16]·B[256×16]ᵀ, bf16 operands from shared memory, both K-major; accumulate = false overwrites d.
__device__ __forceinline__ void mma_m64n256(float (&d)[128], uint64_t desc_a, uint64_t desc_b, bool accumulate)
{
#ifdef KDA_EMULATE
    emu_wgmma_ss(d, 256, false, accumulate, desc_a, desc_b);
#else
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, %128, %129, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
#endif
}

// Copies k step kt of work item (A rows, B rows) into ring stage `stage`; producer thread p copies chunk p % 8 of rows
// p / 8 + 16 i (a warp: four whole 128-byte rows a copy instruction). a_row[i]: A row p / 8 + 16 i's element offset
// from `a`, NO_ROW past the tile. B row p / 8 + 16 i of the tile is weight row b_row(i) from `b` (NO_ROW: none).
template <typename BRow>
__device__ __forceinline__ void load_stage(unsigned char* stage, const uint16_t* a, const uint32_t (&a_row)[8], const uint16_t* b,
                                           BRow b_row, int kt, int K)
{
    const int p = threadIdx.x & 127, chunk = p & 7, r0 = p >> 3, gk = kt * TILE_K + chunk * 8;
    const bool k_in = gk < K;
    const uint32_t sa = smem_u32(stage), sb = sa + MOE_WG_A_BYTES;
#pragma unroll
    for (int i = 0; i < 8; i++)
    {
        const bool ok = k_in && a_row[i] != NO_ROW;
        cp_async16(sa + 2 * swizzled(r0 + 16 * i, chunk), ok ? a + a_row[i] + gk : a, ok);
    }
#pragma unroll
    for (int i = 0; i < 16; i++)
    {
        const uint32_t row = b_row(i);
        const bool ok = k_in && row != NO_ROW;
        cp_async16(sb + 2 * swizzled(r0 + 16 * i, chunk), ok ? b + static_cast<size_t>(row) * K + gk : b, ok);
    }
}

// The grouped GEMM of both kernels: GATE_UP (A = xb rows gathered through row_map = token_of_row, B = gate and up rows
// of expert e, K = D; h = bf16(silu(g)·u)) or down (A = h rows, B = down[e], K = F; y rows through row_map =
// pair_of_row). The design is described above.
template <bool GATE_UP>
__device__ __forceinline__ void grouped(void* out, const uint16_t* __restrict__ a, const int* __restrict__ row_map,
                                        const int* __restrict__ offsets, const int* __restrict__ tile_start,
                                        const uint16_t* __restrict__ weights, int D, int E, int F)
{
    const int K = GATE_UP ? D : F;
    const int NB = GATE_UP ? (F + MOE_WG_N / 2 - 1) / (MOE_WG_N / 2) : (D + MOE_WG_N - 1) / MOE_WG_N; // column blocks a tile
    const int KT = (K + TILE_K - 1) / TILE_K;
    const int items = tile_start[E] * NB;
    unsigned char* raw = reinterpret_cast<unsigned char*>(moe_smem());
    unsigned char* ring = raw + (1024 - smem_u32(raw) % 1024) % 1024;
    unsigned char* out_buffers = ring + MOE_WG_STAGES * MOE_WG_STAGE_BYTES;
    uint64_t* full = reinterpret_cast<uint64_t*>(out_buffers + 2 * MOE_WG_OUT_BYTES);
    uint64_t* empty = full + MOE_WG_STAGES;
    if (threadIdx.x == 0)
        for (int s = 0; s < MOE_WG_STAGES; s++)
        {
            mbar_init(&full[s], 128);
            mbar_init(&empty[s], 256);
        }
    __syncthreads();
    const int wg = threadIdx.x / 128;

    if (wg == 2) // ---- producer
    {
        setmaxnreg_dec<MOE_WG_PRODUCER_REGISTERS>();
        const int r0 = (threadIdx.x & 127) >> 3;
        int step = 0; // k steps copied so far, over this block's items: stage step % 4, its use number step / 4
        for (int w = blockIdx.x; w < items; w += gridDim.x)
        {
            int e, row0, rows;
            find_tile(tile_start, offsets, E, w / NB, e, row0, rows);
            const int nb = w % NB;
            uint32_t a_row[8];
#pragma unroll
            for (int i = 0; i < 8; i++)
            {
                const int r = r0 + 16 * i;
                a_row[i] = r < rows ? static_cast<uint32_t>(GATE_UP ? row_map[row0 + r] : row0 + r) * K : NO_ROW;
            }
            const uint16_t* b = weights + static_cast<size_t>(e) * (GATE_UP ? 2 * F : D) * K;
            // Gate-up: tile rows [0, 128) are gate rows f0 + n, [128, 256) the up rows F + f0 + n − 128 (i ≥ 8 is the
            // up half: r0 < 16). Down: output rows 256 nb + n.
            const int n0 = GATE_UP ? nb * (MOE_WG_N / 2) + r0 : nb * MOE_WG_N + r0;
            auto b_row = [&](int i) -> uint32_t {
                if (GATE_UP)
                {
                    const int f = n0 + 16 * (i & 7);
                    return f < F ? static_cast<uint32_t>(i >= 8 ? F + f : f) : NO_ROW;
                }
                const int n = n0 + 16 * i;
                return n < D ? static_cast<uint32_t>(n) : NO_ROW;
            };
            for (int kt = 0; kt < KT; kt++, step++)
            {
                const int s = step % MOE_WG_STAGES;
                // The stage's previous use, step − 4, must be done (its empty phase step / 4 − 1).
                if (step >= MOE_WG_STAGES) mbar_wait(&empty[s], (step / MOE_WG_STAGES + 1) & 1);
                load_stage(ring + s * MOE_WG_STAGE_BYTES, a, a_row, b, b_row, kt, K);
                cp_async_mbar_arrive(&full[s]);
            }
        }
        // Nothing is left to do; the copies in flight end before the thread does.
        cp_async_commit();
        cp_async_wait<0>();
        return;
    }

    // ---- consumers: warpgroup wg multiplies tile rows 64 wg + [0, 64); warp q of it holds rows 16q + g, 16q + g + 8.
    setmaxnreg_inc<MOE_WG_CONSUMER_REGISTERS>();
    const int t = threadIdx.x & 127, q = t >> 5, lane = t & 31, g = lane >> 2, c = lane & 3;
    unsigned char* out_rows = out_buffers + wg * MOE_WG_OUT_BYTES; // this warpgroup's 64 rows of 256 bytes
    int step = 0;
    for (int w = blockIdx.x; w < items; w += gridDim.x)
    {
        int e, row0, rows;
        find_tile(tile_start, offsets, E, w / NB, e, row0, rows);
        const int nb = w % NB;
        float acc[128]; // d[4i + j] = tile (64 wg + 16q + g + 8 (j / 2), column 8i + 2c + j % 2)
        for (int kt = 0; kt < KT; kt++, step++)
        {
            const int s = step % MOE_WG_STAGES;
            mbar_wait(&full[s], (step / MOE_WG_STAGES) & 1);
            fence_proxy_async(); // the producer's cp.async writes, acquired above, come before the wgmma's reads
            const uint32_t sa = smem_u32(ring + s * MOE_WG_STAGE_BYTES) + wg * 64 * 128, sb = smem_u32(ring + s * MOE_WG_STAGE_BYTES) + MOE_WG_A_BYTES;
            wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < TILE_K / 16; ks++) mma_m64n256(acc, wgmma_desc(sa + 32 * ks), wgmma_desc(sb + 32 * ks), kt > 0 || ks > 0);
            wgmma_commit();
            wgmma_wait<1>(); // the previous step's products have retired: its stage is free
            if (kt > 0) mbar_arrive(&empty[(step - 1) % MOE_WG_STAGES]);
        }
        wgmma_wait<0>();
        pin(acc);
        mbar_arrive(&empty[(step - 1) % MOE_WG_STAGES]);
        if (64 * wg >= rows) continue; // every row of this warpgroup is past the tile (the same for its 128 threads)

        // The epilogue, in passes of 64 rows × 256 bytes through out_rows (gate-up: the 128 h columns of this column
        // block in one pass; down: 64 of its 256 y columns a pass). A pass's 16-byte chunk k of row r sits at chunk
        // k ^ swz(r): swz = r % 8 (bf16, written by stmatrix: a matrix's 8 rows hit 8 different chunks) or 2 (r % 8)
        // (fp32, written by 8-byte stores: the 4 rows of a half warp hit 8 different chunks); either way the copy-out's
        // 8 lanes reading 8 chunks of one row hit 8 different chunk positions modulo 8, i.e. all 32 banks.
        constexpr int PASSES = GATE_UP ? 1 : MOE_WG_N / 64, CHUNK_ELEMS = GATE_UP ? 8 : 4;
        const int cols = GATE_UP ? F : D;
#pragma unroll
        for (int p = 0; p < PASSES; p++)
        {
            const int col0 = GATE_UP ? nb * (MOE_WG_N / 2) : nb * MOE_WG_N + 64 * p; // the pass's first output column
            if (col0 >= cols) break;                                               // the rest lies past the matrix
            named_barrier(1 + wg, 128); // the warpgroup's copy-out of the previous pass (or item) has read out_rows
            if (GATE_UP)
            {
                // Matrices of an stmatrix: rows 16q + [0, 8) and + [8, 16) of column blocks i and i + 1 (8 h each).
                const int m = lane >> 3, row = 16 * q + 8 * (m & 1) + (lane & 7);
#pragma unroll
                for (int i = 0; i < MOE_WG_N / 16; i += 2)
                {
                    uint32_t r[4];
#pragma unroll
                    for (int j = 0; j < 4; j++)
                    {
                        const int d = 4 * (i + (j >> 1)) + 2 * (j & 1); // gate; its up is 64 registers on
                        r[j] = pack_bf16x2(silu(acc[d]) * acc[d + 64], silu(acc[d + 1]) * acc[d + 65]);
                    }
                    stmatrix_x4(r, out_rows + row * MOE_WG_OUT_ROW_BYTES + (((i + (m >> 1)) ^ (row & 7)) << 4));
                }
            }
            else
            {
#pragma unroll
                for (int i = 0; i < 8; i++)
#pragma unroll
                    for (int half = 0; half < 2; half++)
                    {
                        const int row = 16 * q + g + 8 * half, chunk = 2 * i + (c >> 1), d = 4 * (8 * p + i) + 2 * half;
                        *reinterpret_cast<float2*>(out_rows + row * MOE_WG_OUT_ROW_BYTES + ((chunk ^ ((row & 7) << 1)) << 4) + 8 * (c & 1)) =
                            make_float2(acc[d], acc[d + 1]);
                    }
            }
            named_barrier(1 + wg, 128); // the pass is in out_rows
            // Thread t copies chunk t % 16 of rows t / 16 + 8 j: a warp stores two whole rows (512 bytes) at a time.
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                const int row = (t >> 4) + 8 * j, chunk = t & 15, r = 64 * wg + row, col = col0 + CHUNK_ELEMS * chunk;
                if (r >= rows || col >= cols) continue; // cols is a multiple of 8: a chunk lies wholly inside or past it
                const int swz = GATE_UP ? row & 7 : (row & 7) << 1;
                const uint4 v = *reinterpret_cast<const uint4*>(out_rows + row * MOE_WG_OUT_ROW_BYTES + ((chunk ^ swz) << 4));
                if (GATE_UP) *reinterpret_cast<uint4*>(static_cast<uint16_t*>(out) + static_cast<size_t>(row0 + r) * F + col) = v;
                else *reinterpret_cast<uint4*>(static_cast<float*>(out) + static_cast<size_t>(row_map[row0 + r]) * D + col) = v;
            }
        }
    }
}

} // namespace moe_wg
#endif

extern "C" __global__ void __launch_bounds__(MOE_WG_THREADS, 1)
kimi_moe_prefill_gate_up_wgmma(uint16_t* __restrict__ h, const uint16_t* __restrict__ xb, const int* __restrict__ token_of_row,
                               const int* __restrict__ offsets, const int* __restrict__ tile_start, const uint16_t* __restrict__ gate_up,
                               int D, int E, int F)
{
#if defined(KDA_EMULATE) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
    moe_wg::grouped<true>(h, xb, token_of_row, offsets, tile_start, gate_up, D, E, F);
#else
    (void)h; (void)xb; (void)token_of_row; (void)offsets; (void)tile_start; (void)gate_up; (void)D; (void)E; (void)F;
    __trap();
#endif
}

extern "C" __global__ void __launch_bounds__(MOE_WG_THREADS, 1)
kimi_moe_prefill_down_wgmma(float* __restrict__ y, const uint16_t* __restrict__ h, const int* __restrict__ pair_of_row,
                            const int* __restrict__ offsets, const int* __restrict__ tile_start, const uint16_t* __restrict__ down,
                            int D, int E, int F)
{
#if defined(KDA_EMULATE) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
    moe_wg::grouped<false>(y, h, pair_of_row, offsets, tile_start, down, D, E, F);
#else
    (void)y; (void)h; (void)pair_of_row; (void)offsets; (void)tile_start; (void)down; (void)D; (void)E; (void)F;
    __trap();
#endif
}

// ROUTER + ROUTE for decode on Hopper as one thread-block cluster (kimi_moe_router_route_cluster_f32): what
// kimi_moe_router_route_f32 computes for E = 256 experts (the block route's shapes: block_routes), with the logits
// exchanged through distributed shared memory instead of global memory, a fence, an arrival count and a read back
// through L2 (that hand-off is latency on every MoE layer's chain). Grid 8 = one cluster of 8 blocks of 16 warps (the
// launch's cluster attribute), router_cluster_smem_bytes(D, T) of dynamic shared memory. Block r holds experts
// 32r .. 32r + 31: before the wait it copies their router rows (32·D bf16) into shared memory; after it, warp w forms
// the logits of experts 32r + 2w and + 1 for every token, exactly as the other kernel's warp does for its expert (the
// same lanes, order and sums, so the logits are equal to the bit), keeps them in shared memory and writes them to
// `logits` (read only by tests). After a cluster barrier block 0 gathers the 256 logits of each token from the 8
// blocks and routes them with its first four warps (route_token_block); the others wait at a second barrier until it
// has read their shared memory. D % 8 == 0, T ≤ MoeKernels.MaxDecodeTokens.
constexpr int MOE_RC_BLOCKS = 8, MOE_RC_WARPS = 16, MOE_RC_EXPERTS = 32;   // experts a block: two a warp
static_assert(MOE_RC_BLOCKS * MOE_RC_EXPERTS == 2 * MOE_ROUTER_WARPS * 32, "the cluster holds the block route's 256 experts");
__host__ __device__ constexpr size_t router_cluster_smem_bytes(int D, int T)
{
    return static_cast<size_t>(MOE_RC_EXPERTS) * D * 2 + static_cast<size_t>(T) * (MOE_RC_EXPERTS + MOE_RC_BLOCKS * MOE_RC_EXPERTS) * 4;
}

#if defined(KDA_EMULATE) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void router_route_cluster(int* __restrict__ experts, float* __restrict__ weights, float* __restrict__ logits,
                                                     const float* __restrict__ x, const uint16_t* __restrict__ router,
                                                     const float* __restrict__ bias, int T, int D, int A, int S, int renormalize,
                                                     float scale, int biased)
{
    constexpr int E = MOE_RC_BLOCKS * MOE_RC_EXPERTS;
    const int rank = static_cast<int>(cluster_rank()), lane = threadIdx.x & 31, warp = threadIdx.x >> 5, D8 = D >> 3;
    uint16_t* rows = moe_smem();                                                   // [32][D] this block's router rows
    float* mine = reinterpret_cast<float*>(rows + static_cast<size_t>(MOE_RC_EXPERTS) * D);   // [T][32] their logits
    float* all = mine + T * MOE_RC_EXPERTS;                                        // [T][256] block 0: every logit

    const uint16_t* src = router + static_cast<size_t>(rank) * MOE_RC_EXPERTS * D;   // the block's 32 rows, contiguous
    for (int i = threadIdx.x; i < MOE_RC_EXPERTS * D8; i += MOE_RC_WARPS * 32) cp_async16(smem_u32(rows + 8 * i), src + 8 * i, true);
    cp_async_commit();
    wait_for_predecessor(); // x
    allow_successor();      // after the wait: the gate-up kernel reads x before its own wait (and the ids after it)
    cp_async_wait<0>();
    __syncthreads();

    const uint4* w0 = reinterpret_cast<const uint4*>(rows + static_cast<size_t>(2 * warp) * D);
    const uint4* w1 = reinterpret_cast<const uint4*>(rows + static_cast<size_t>(2 * warp + 1) * D);
    for (int t = 0; t < T; t++)
    {
        const float* xt = x + static_cast<size_t>(t) * D;
        float acc0 = 0.0f, acc1 = 0.0f;
        for (int kk = lane; kk < D8; kk += 32)
        {
            const float4 lo = __ldg(reinterpret_cast<const float4*>(xt) + 2 * kk), hi = __ldg(reinterpret_cast<const float4*>(xt) + 2 * kk + 1);
            const float xs[8] = { lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w };
            acc0 = dot8_f32(w0[kk], xs, acc0);
            acc1 = dot8_f32(w1[kk], xs, acc1);
        }
        acc0 = warp_sum(acc0);
        acc1 = warp_sum(acc1);
        if (lane == 0)
        {
            const int e = rank * MOE_RC_EXPERTS + 2 * warp;
            mine[t * MOE_RC_EXPERTS + 2 * warp] = acc0;
            mine[t * MOE_RC_EXPERTS + 2 * warp + 1] = acc1;
            logits[static_cast<size_t>(t) * E + e] = acc0;
            logits[static_cast<size_t>(t) * E + e + 1] = acc1;
        }
    }
    cluster_sync(); // every block's logits are in its shared memory

    if (rank == 0)
        for (int i = threadIdx.x; i < T * E; i += MOE_RC_WARPS * 32)
        {
            const int t = i / E, e = i - t * E;
            all[i] = *cluster_map(mine + t * MOE_RC_EXPERTS + e % MOE_RC_EXPERTS, static_cast<unsigned>(e / MOE_RC_EXPERTS));
        }
    cluster_arrive(); // block 0 is done with the others' shared memory (the others: nothing more to share)
    if (rank == 0)
    {
        __syncthreads(); // `all` complete
        if (warp < MOE_ROUTER_WARPS)
            for (int t = 0; t < T; t++)
            {
                const float* row = all + t * E;
                route_token_block(experts, weights, [&](int e) { return row[e]; }, bias, t, E, A, S, renormalize, scale, biased,
                                  [] { named_barrier(1, MOE_ROUTER_WARPS * 32); });
            }
    }
    cluster_wait(); // no block leaves while block 0 may still read its shared memory
}
#endif

extern "C" __global__ void __launch_bounds__(MOE_RC_WARPS * 32, 1)
kimi_moe_router_route_cluster_f32(int* __restrict__ experts, float* __restrict__ weights, float* __restrict__ logits,
                                  const float* __restrict__ x, const uint16_t* __restrict__ router, const float* __restrict__ bias,
                                  int T, int D, int A, int S, int renormalize, float scale, int biased)
{
#if defined(KDA_EMULATE) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
    router_route_cluster(experts, weights, logits, x, router, bias, T, D, A, S, renormalize, scale, biased);
#else
    (void)experts; (void)weights; (void)logits; (void)x; (void)router; (void)bias; (void)T; (void)D; (void)A; (void)S;
    (void)renormalize; (void)scale; (void)biased;
    __trap();
#endif
}
