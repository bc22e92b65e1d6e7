// Turning logits into tokens on the GPU, one row (one sequence) per block (argmax: many blocks a row, below):
//   kimi_softmax_f32:          out[t, :] = exp(x[t, :] - max) / sum exp(x[t, :] - max)
//   kimi_argmax_f32:           out[t] = the smallest v with x[t, v] = max_v x[t, v] (torch.argmax's first occurrence);
//                              NaN is skipped; a row of only NaN gives -1
//   kimi_sample_topk_topp_f32: keep the k largest logits (ties to the lower index), softmax them at `temperature`,
//                              keep the shortest prefix (most likely first) whose mass reaches top_p (at least one),
//                              and return the first kept token whose cumulative mass exceeds u[t] * kept mass
//   x, out(softmax) [T, V] fp32; out(argmax, sample) [T] int32; u [T] fp32 uniforms in [0, 1) drawn by the host
//   (so a seeded host RNG makes sampling reproducible and testable).
// Launch: grid T blocks, 1024 threads (SAMPLE_THREADS; any multiple of 32 for softmax); argmax as its comment says.
// Sampling preconditions: 1 <= k <= 1024 (= SAMPLE_THREADS), k <= V, temperature > 0, 0 < top_p <= 1.
// Sampling steps: (1) radix-select the k-th largest order-preserving key in four 8-bit histogram passes; (2) gather
// the keys above it, and the ties equal to it in index order, in chunks of 1024 with a block scan; (3) bitonic-sort
// the k candidates by (value desc, index asc) in shared memory; (4) exponentials, a block prefix sum, top-p cut, draw.
#include "common.cuh"

constexpr int SAMPLE_THREADS = 1024;

extern "C" __global__ void __launch_bounds__(1024)
kimi_softmax_f32(float* __restrict__ out, const float* __restrict__ x, int T, int V)
{
    const int t = blockIdx.x;
    if (t >= T) return;
    const float* row = x + static_cast<size_t>(t) * V;
    float* o = out + static_cast<size_t>(t) * V;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, row[i]);
    m = block_max(m);
    float s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(row[i] - m);
    const float inv = 1.0f / block_sum(s);
    for (int i = threadIdx.x; i < V; i += blockDim.x) o[i] = expf(row[i] - m) * inv;
}


// ARGMAX (kimi_argmax_f32): many blocks a row, so that a decode step's 163,840 logits are read by the whole GPU (one
// 1,024-thread block a row read them at ~18 GB/s: ~37 µs a greedy token). Block (b, t) takes ARGMAX_VALUES values a
// thread of row t (float4 loads, all requested at once, where V % 4 == 0 and the row is 16-byte aligned) and folds each
// into a 64-bit key, order_key(value) above ~index, so that the larger value wins and equal values go to the lower
// index (-0 counts as +0, as the comparison does; NaN's key is 0, below every other); the block's largest key goes to
// keys[t] by atomicMax, and the last block of the row (counted in arrivals[t]) turns it into the index and leaves
// keys[t] and arrivals[t] at 0 for the next launch; where `copy` is not null, it writes the index to copy[t] too
// (mapped host memory: a greedy step's choice reaches the host without a copy operation, ~10 µs a token).
// Launch: grid (ceil(V / (ARGMAX_THREADS · ARGMAX_VALUES)), T), ARGMAX_THREADS threads (SamplingKernels.Argmax); keys
// and arrivals start at 0 (ArgmaxScratch).
constexpr int ARGMAX_THREADS = 256, ARGMAX_VALUES = 16;

__device__ __forceinline__ unsigned long long argmax_key(float v, int i)
{
    if (isnan(v)) return 0ull;
    return (static_cast<unsigned long long>(order_key(v)) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
}

extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS)
kimi_argmax_f32(int* __restrict__ out, int* __restrict__ copy, unsigned long long* __restrict__ keys, unsigned* __restrict__ arrivals,
                const float* __restrict__ x, int T, int V)
{
    __shared__ unsigned long long warp_keys[ARGMAX_THREADS / 32];
    const int t = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float* row = x + static_cast<size_t>(t) * V;
    const int first = blockIdx.x * ARGMAX_THREADS * ARGMAX_VALUES; // this block's values: [first, first + THREADS · VALUES)
    unsigned long long key = 0;
    if ((V & 3) == 0 && aligned16(row))
    {
        float4 v[ARGMAX_VALUES / 4];
#pragma unroll
        for (int u = 0; u < ARGMAX_VALUES / 4; u++)
        {
            const int i = first + (u * ARGMAX_THREADS + threadIdx.x) * 4;
            v[u] = i < V ? __ldg(reinterpret_cast<const float4*>(row + i)) : make_float4(NAN, NAN, NAN, NAN);
        }
#pragma unroll
        for (int u = 0; u < ARGMAX_VALUES / 4; u++)
        {
            const int i = first + (u * ARGMAX_THREADS + threadIdx.x) * 4;
            key = max(key, max(max(argmax_key(v[u].x, i), argmax_key(v[u].y, i + 1)), max(argmax_key(v[u].z, i + 2), argmax_key(v[u].w, i + 3))));
        }
    }
    else
    {
#pragma unroll
        for (int u = 0; u < ARGMAX_VALUES; u++)
        {
            const int i = first + u * ARGMAX_THREADS + threadIdx.x;
            if (i < V) key = max(key, argmax_key(row[i], i));
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) key = max(key, __shfl_xor_sync(0xFFFFFFFFu, key, o));
    if (lane == 0) warp_keys[warp] = key;
    __syncthreads();
    if (threadIdx.x == 0)
    {
#pragma unroll
        for (int w = 1; w < ARGMAX_THREADS / 32; w++) key = max(key, warp_keys[w]);
        atomicMax(keys + t, key);
        __threadfence(); // the key before the arrival
        if (atomicAdd(arrivals + t, 1u) == gridDim.x - 1)
        {
            __threadfence(); // every block's key after their arrivals
            const unsigned long long best = atomicExch(keys + t, 0ull);
            arrivals[t] = 0;
            const int index = best == 0 ? -1 : static_cast<int>(0xFFFFFFFFu - static_cast<uint32_t>(best));
            out[t] = index;
            if (copy != nullptr) copy[t] = index;
        }
    }
}

// Candidate a goes before b: larger value first, then lower index.
__device__ __forceinline__ bool goes_before(float av, int ai, float bv, int bi) { return av > bv || (av == bv && ai < bi); }

// Exclusive block scan of 0/1 flags (blockDim.x == SAMPLE_THREADS); `total` receives the block's count.
__device__ __forceinline__ int block_exclusive_count(bool flag, int* warp_counts, int& total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t ballot = __ballot_sync(0xFFFFFFFFu, flag);
    __syncthreads();  // warp_counts may still be read from the previous call
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int before = 0;
    total = 0;
    for (int w = 0; w < SAMPLE_THREADS / 32; w++)
    {
        const int c = warp_counts[w];
        before += w < warp ? c : 0;
        total += c;
    }
    return before + __popc(ballot & ((1u << lane) - 1u));
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
kimi_sample_topk_topp_f32(int* __restrict__ out, const float* __restrict__ x, const float* __restrict__ u,
                          int T, int V, int k, float temperature, float top_p)
{
    __shared__ int hist[256];
    __shared__ uint32_t s_prefix;
    __shared__ int s_remaining, s_count, s_choice;
    __shared__ int warp_counts[SAMPLE_THREADS / 32];
    __shared__ float cand_v[SAMPLE_THREADS];
    __shared__ int cand_i[SAMPLE_THREADS];
    __shared__ float cum[SAMPLE_THREADS];

    const int t = blockIdx.x;
    if (t >= T) return;
    const int tid = threadIdx.x;
    const float* row = x + static_cast<size_t>(t) * V;

    // (1) Radix select: after the four passes s_prefix is the k-th largest key and s_remaining how many keys equal
    // to it belong to the top k.
    if (tid == 0)
    {
        s_prefix = 0;
        s_remaining = k;
    }
    uint32_t mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8)
    {
        for (int b = tid; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        const uint32_t prefix = s_prefix;
        for (int i = tid; i < V; i += blockDim.x)
        {
            const uint32_t key = order_key(row[i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1);
        }
        __syncthreads();
        if (tid == 0)
        {
            int remaining = s_remaining, above = 0, bin = 0;
            for (bin = 255; bin > 0; bin--)
            {
                if (above + hist[bin] >= remaining) break;
                above += hist[bin];
            }
            s_remaining = remaining - above;
            s_prefix = prefix | (static_cast<uint32_t>(bin) << shift);
        }
        mask |= 255u << shift;
        __syncthreads();
    }
    const uint32_t threshold = s_prefix;
    const int ties_wanted = s_remaining;

    // (2) Gather: every key above the threshold, and the first ties_wanted keys equal to it in index order.
    if (tid == 0) s_count = 0;
    int ties_before = 0;
    for (int base = 0; base < V; base += SAMPLE_THREADS)
    {
        const int i = base + tid;
        const float v = i < V ? row[i] : 0.0f;
        const uint32_t key = i < V ? order_key(v) : 0u;
        const bool tie = i < V && key == threshold;
        int chunk_ties;
        const int rank = ties_before + block_exclusive_count(tie, warp_counts, chunk_ties);
        if (i < V && (key > threshold || (tie && rank < ties_wanted)))
        {
            const int slot = atomicAdd(&s_count, 1);
            cand_v[slot] = v;
            cand_i[slot] = i;
        }
        ties_before += chunk_ties;
        if (ties_before >= ties_wanted && base + SAMPLE_THREADS < V)
        {
            // All ties taken; the rest only adds keys above the threshold, gathered without the scan.
            for (int j = base + SAMPLE_THREADS + tid; j < V; j += SAMPLE_THREADS)
            {
                const float w = row[j];
                if (order_key(w) > threshold)
                {
                    const int slot = atomicAdd(&s_count, 1);
                    cand_v[slot] = w;
                    cand_i[slot] = j;
                }
            }
            break;
        }
    }
    __syncthreads();

    // (3) Bitonic sort of the k candidates, padded to a power of two with entries that sort last.
    int size = 1;
    while (size < k) size <<= 1;
    if (tid >= k && tid < size)
    {
        cand_v[tid] = -INFINITY;
        cand_i[tid] = 0x7FFFFFFF;
    }
    for (int span = 2; span <= size; span <<= 1)
        for (int stride = span >> 1; stride > 0; stride >>= 1)
        {
            __syncthreads();
            const int j = tid ^ stride;
            if (tid < size && j > tid)
            {
                const bool ascending = (tid & span) == 0;  // "ascending" = best first within this run
                const bool j_first = goes_before(cand_v[j], cand_i[j], cand_v[tid], cand_i[tid]);
                if (ascending == j_first)
                {
                    const float tv = cand_v[tid];
                    const int ti = cand_i[tid];
                    cand_v[tid] = cand_v[j];
                    cand_i[tid] = cand_i[j];
                    cand_v[j] = tv;
                    cand_i[j] = ti;
                }
            }
        }
    __syncthreads();

    // (4) Weights relative to the largest logit (exponent <= 0, so nothing overflows), inclusive prefix sum.
    const float inv_temp = 1.0f / temperature;
    cum[tid] = tid < k ? expf((cand_v[tid] - cand_v[0]) * inv_temp) : 0.0f;
    for (int offset = 1; offset < SAMPLE_THREADS; offset <<= 1)
    {
        __syncthreads();
        const float add = tid >= offset ? cum[tid - offset] : 0.0f;
        __syncthreads();
        cum[tid] += add;
    }
    __syncthreads();
    const float total = cum[k - 1];
    // Kept: candidates whose mass before them is under top_p; the first always is.
    const bool kept = tid < k && (tid == 0 || cum[tid - 1] < top_p * total);
    int kept_count;
    block_exclusive_count(kept, warp_counts, kept_count);
    const float r = u[t] * cum[kept_count - 1];
    if (tid == 0) s_choice = kept_count - 1;  // if rounding puts r at the very top, take the last kept token
    __syncthreads();
    if (tid < kept_count && cum[tid] > r && (tid == 0 || cum[tid - 1] <= r)) s_choice = tid;
    __syncthreads();
    if (tid == 0) out[t] = cand_i[s_choice];
}
