// Kernels over fp32 activations, the CUDA backend's tensors (KimiLinear.Cuda/Kernels/ActivationKernels.cs): the same
// semantics as KimiLinear.Core/Backends/Cpu/CpuBackend.cs, with fp32 math throughout, so GPU-vs-CPU tests stay tight.
// Weights (the embedding table) are bf16 bits; the per-layer vectors (norm weights) fp32; indices int32.
//
// Two launch shapes:
//   row kernels       grid = rows, 256 threads striding over the row's columns (embed, RMSNorm, gather, scatter-add,
//                     latent rows); gated RMSNorm runs a warp per row instead (its rows are one 128-wide head).
//   element kernels   grid-stride loops over a flat count (add, SwiGLU, conversions); any grid size works.
// Each has a 16-byte vector path (four floats a step) taken when the widths are multiples of four and the pointers
// aligned for it, else one element a step. Nothing here synchronises with the host or allocates, so every kernel may
// be captured in a CUDA graph. Every kernel but the latent-row writer lets its successor launch at once
// (programmatic_prologue(); the RMSNorm also requests its weight before it waits): launched with programmatic
// dependent launch (a decode step's graph), the next kernel's launch latency and weight loads overlap this one. The
// latent-row writer lets its successor launch only after its own wait (see there).
// In-place use: RMSNorm (y == x), SwiGLU (output == gate or up) and gated RMSNorm (y == o) may alias, so those
// pointers carry no __restrict__; each thread writes only elements it has already read itself.
#include "common.cuh"

constexpr int ROW_THREADS = 256; // ActivationKernels.RowThreads

__device__ __forceinline__ bool aligned8(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 7) == 0; }
__device__ __forceinline__ float sigmoid_f32(float x) { return 1.0f / (1.0f + expf(-x)); }

// ---- rows -------------------------------------------------------------------------------------------------------------

// out[t, :] = table[ids[t], :] widened to fp32.  out [T, D] fp32; table [V, D] bf16; ids [T] int32.
// An id outside [0, V) writes a NaN row instead of reading out of bounds (the backend validates ids first).
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
kimi_embed_f32(float* __restrict__ out, const uint16_t* __restrict__ table, const int* __restrict__ ids, int T, int D, int V)
{
    programmatic_prologue();
    const int t = blockIdx.x;
    if (t >= T) return;
    const int id = ids[t];
    float* dst = out + static_cast<size_t>(t) * D;
    if (id < 0 || id >= V)
    {
        for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = __uint_as_float(0x7FC00000u);
        return;
    }
    const uint16_t* src = table + static_cast<size_t>(id) * D;
    if ((D & 3) == 0 && aligned8(table) && aligned16(out))
    {
        const uint2* s = reinterpret_cast<const uint2*>(src);
        float4* d = reinterpret_cast<float4*>(dst);
        for (int i = threadIdx.x; i < (D >> 2); i += blockDim.x)
        {
            const uint2 v = __ldg(s + i);
            d[i] = make_float4(bf16_lo(v.x), bf16_hi(v.x), bf16_lo(v.y), bf16_hi(v.y));
        }
    }
    else
    {
        for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = bf16_to_f32(src[i]);
    }
}

// With add: x[t, :] += add[t, :] first (the residual stream takes the layer's output), then
// y[t, :] = x[t, :] · rsqrt(mean(x[t, :]²) + eps) · weight[:].  x, add, y [T, N] fp32 (y may be x; add may be null);
// weight [N] fp32. One block a row; the mean is a block sum in fp32.
// Rows of up to RMSNORM_HELD_VECTORS · 4 · ROW_THREADS values (the model's 2,304 and 512) with 16-byte-aligned
// pointers are held in registers: the weight's vectors are requested before the programmatic wait (they do not depend
// on the predecessor), then all of the row's x and add vectors at once, so the kernel waits for one L2 round trip
// instead of one a loop iteration, and y is formed from the registers. It is a decode step's post-attention norm, on
// the critical path 27 times a token. Longer or unaligned rows loop.
constexpr int RMSNORM_HELD_VECTORS = 4;

extern "C" __global__ void __launch_bounds__(ROW_THREADS)
kimi_rmsnorm_f32(float* y, float* x, const float* add, const float* __restrict__ weight, int T, int N, float eps)
{
    allow_successor();
    const int t = blockIdx.x;
    float* xr = x + static_cast<size_t>(t) * N;
    const float* ar = add == nullptr ? nullptr : add + static_cast<size_t>(t) * N;
    float* yr = y + static_cast<size_t>(t) * N;
    const bool vec = (N & 3) == 0 && aligned16(x) && aligned16(y) && aligned16(weight) && (add == nullptr || aligned16(add));
    const int N4 = N >> 2;
    if (vec && N4 <= RMSNORM_HELD_VECTORS * static_cast<int>(blockDim.x))
    {
        const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float4 w[RMSNORM_HELD_VECTORS], v[RMSNORM_HELD_VECTORS], a[RMSNORM_HELD_VECTORS];
#pragma unroll
        for (int s = 0; s < RMSNORM_HELD_VECTORS; s++)
        {
            const int i = threadIdx.x + s * blockDim.x;
            w[s] = i < N4 ? __ldg(reinterpret_cast<const float4*>(weight) + i) : zero;
        }
        wait_for_predecessor();
        if (t >= T) return;
#pragma unroll
        for (int s = 0; s < RMSNORM_HELD_VECTORS; s++)
        {
            const int i = threadIdx.x + s * blockDim.x;
            v[s] = i < N4 ? reinterpret_cast<const float4*>(xr)[i] : zero;
            a[s] = i < N4 && ar != nullptr ? reinterpret_cast<const float4*>(ar)[i] : zero;
        }
        float sumsq = 0.0f;
#pragma unroll
        for (int s = 0; s < RMSNORM_HELD_VECTORS; s++)
        {
            const int i = threadIdx.x + s * blockDim.x;
            if (ar != nullptr)
            {
                v[s] = make_float4(v[s].x + a[s].x, v[s].y + a[s].y, v[s].z + a[s].z, v[s].w + a[s].w);
                if (i < N4) reinterpret_cast<float4*>(xr)[i] = v[s];
            }
            sumsq = fmaf(v[s].x, v[s].x, fmaf(v[s].y, v[s].y, fmaf(v[s].z, v[s].z, fmaf(v[s].w, v[s].w, sumsq))));
        }
        // block_sum's barriers order every read of x above before any write of y below (y may be x).
        const float inv = rsqrtf(block_sum(sumsq) / static_cast<float>(N) + eps);
#pragma unroll
        for (int s = 0; s < RMSNORM_HELD_VECTORS; s++)
        {
            const int i = threadIdx.x + s * blockDim.x;
            if (i < N4)
                reinterpret_cast<float4*>(yr)[i] = make_float4(v[s].x * inv * w[s].x, v[s].y * inv * w[s].y, v[s].z * inv * w[s].z, v[s].w * inv * w[s].w);
        }
        return;
    }
    wait_for_predecessor();
    if (t >= T) return;
    float sumsq = 0.0f;
    if (vec)
        for (int i = threadIdx.x; i < N4; i += blockDim.x)
        {
            float4 v = reinterpret_cast<const float4*>(xr)[i];
            if (ar != nullptr)
            {
                const float4 a = reinterpret_cast<const float4*>(ar)[i];
                v = make_float4(v.x + a.x, v.y + a.y, v.z + a.z, v.w + a.w);
                reinterpret_cast<float4*>(xr)[i] = v;
            }
            sumsq = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, sumsq))));
        }
    else
        for (int i = threadIdx.x; i < N; i += blockDim.x)
        {
            float v = xr[i];
            if (ar != nullptr) xr[i] = v = v + ar[i];
            sumsq = fmaf(v, v, sumsq);
        }
    // block_sum's barriers also order every read of x above before any write of y below (y may be x); each thread
    // reads back below only the elements of x it wrote itself.
    const float inv = rsqrtf(block_sum(sumsq) / static_cast<float>(N) + eps);
    if (vec)
        for (int i = threadIdx.x; i < N4; i += blockDim.x)
        {
            const float4 v = reinterpret_cast<const float4*>(xr)[i], w = reinterpret_cast<const float4*>(weight)[i];
            reinterpret_cast<float4*>(yr)[i] = make_float4(v.x * inv * w.x, v.y * inv * w.y, v.z * inv * w.z, v.w * inv * w.w);
        }
    else
        for (int i = threadIdx.x; i < N; i += blockDim.x) yr[i] = xr[i] * inv * weight[i];
}

// Per row of width W: y = o · rsqrt(mean(o²) + eps) · weight · sigmoid(z).  o, z, y [rows, W] (y may be o); z, y,
// weight [W] fp32; o fp32, or bf16 bits (_bf16o: the KDA core's output when the model's prefill runs it on bf16,
// kda.cu). A warp a row (rows = T·H heads of W = 128), GATED_ROWS rows a block; the reduction is a warp sum.
constexpr int GATED_ROWS = 8; // ActivationKernels.GatedRowsPerBlock

__device__ __forceinline__ float load_o(const float* o, int i) { return o[i]; }
__device__ __forceinline__ float load_o(const uint16_t* o, int i) { return bf16_to_f32(o[i]); }
__device__ __forceinline__ float4 load_o4(const float* o, int i) { return reinterpret_cast<const float4*>(o)[i]; }
__device__ __forceinline__ float4 load_o4(const uint16_t* o, int i)
{
    const uint2 p = reinterpret_cast<const uint2*>(o)[i];
    return make_float4(bf16_lo(p.x), bf16_hi(p.x), bf16_lo(p.y), bf16_hi(p.y));
}
__device__ __forceinline__ bool aligned_o4(const float* o) { return aligned16(o); }
__device__ __forceinline__ bool aligned_o4(const uint16_t* o) { return aligned8(o); }

template <typename O>
__device__ __forceinline__ void gated_rmsnorm(float* y, const O* o, const float* __restrict__ z, const float* __restrict__ weight, int rows, int W, float eps)
{
    programmatic_prologue();
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * GATED_ROWS + (threadIdx.x >> 5);
    if (row >= rows) return; // whole warps leave together: the warp sum below has every lane of a live row
    const O* orow = o + static_cast<size_t>(row) * W;
    const float* zrow = z + static_cast<size_t>(row) * W;
    float* yrow = y + static_cast<size_t>(row) * W;
    const bool vec = (W & 3) == 0 && aligned_o4(o) && aligned16(z) && aligned16(y) && aligned16(weight);
    float sumsq = 0.0f;
    if (vec)
        for (int i = lane; i < (W >> 2); i += 32)
        {
            const float4 v = load_o4(orow, i);
            sumsq = fmaf(v.x, v.x, fmaf(v.y, v.y, fmaf(v.z, v.z, fmaf(v.w, v.w, sumsq))));
        }
    else
        for (int i = lane; i < W; i += 32) sumsq = fmaf(load_o(orow, i), load_o(orow, i), sumsq);
    const float inv = rsqrtf(warp_sum(sumsq) / static_cast<float>(W) + eps);
    if (vec)
        for (int i = lane; i < (W >> 2); i += 32)
        {
            const float4 v = load_o4(orow, i), g = reinterpret_cast<const float4*>(zrow)[i];
            const float4 w = reinterpret_cast<const float4*>(weight)[i];
            reinterpret_cast<float4*>(yrow)[i] = make_float4(v.x * inv * w.x * sigmoid_f32(g.x), v.y * inv * w.y * sigmoid_f32(g.y),
                                                            v.z * inv * w.z * sigmoid_f32(g.z), v.w * inv * w.w * sigmoid_f32(g.w));
        }
    else
        for (int i = lane; i < W; i += 32) yrow[i] = load_o(orow, i) * inv * weight[i] * sigmoid_f32(zrow[i]);
}

extern "C" __global__ void __launch_bounds__(GATED_ROWS * 32)
kimi_gated_rmsnorm_f32(float* y, const float* o, const float* __restrict__ z, const float* __restrict__ weight, int rows, int W, float eps)
{
    gated_rmsnorm(y, o, z, weight, rows, W, eps);
}

extern "C" __global__ void __launch_bounds__(GATED_ROWS * 32)
kimi_gated_rmsnorm_bf16o(float* __restrict__ y, const uint16_t* __restrict__ o, const float* __restrict__ z, const float* __restrict__ weight,
                         int rows, int W, float eps)
{
    gated_rmsnorm(y, o, z, weight, rows, W, eps);
}

// Copies `cols` floats from src to dst, four at a time when both are 16-byte aligned and cols % 4 == 0.
__device__ __forceinline__ void copy_row(float* __restrict__ dst, const float* __restrict__ src, int cols, bool vec)
{
    if (vec)
        for (int i = threadIdx.x; i < (cols >> 2); i += blockDim.x) reinterpret_cast<float4*>(dst)[i] = reinterpret_cast<const float4*>(src)[i];
    else
        for (int i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
}

// y[i, :] = x[rows[i], :].  y [count, C]; x [xRows, C]; rows [count] int32.
// A row index outside [0, xRows) writes a NaN row instead of reading out of bounds.
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
kimi_gather_rows_f32(float* __restrict__ y, const float* __restrict__ x, const int* __restrict__ rows, int count, int C, int xRows)
{
    programmatic_prologue();
    const int i = blockIdx.x;
    if (i >= count) return;
    const int r = rows[i];
    float* dst = y + static_cast<size_t>(i) * C;
    if (r < 0 || r >= xRows)
    {
        for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = __uint_as_float(0x7FC00000u);
        return;
    }
    copy_row(dst, x + static_cast<size_t>(r) * C, C, (C & 3) == 0 && aligned16(x) && aligned16(y));
}

// accumulator[rows[i], :] += scales[i] · x[i, :].  accumulator [accRows, C]; x [count, C]; rows, scales [count].
// The rows of one launch are distinct (a token appears once among one expert's tokens), so blocks never add into the
// same row and no atomics are needed. A row index outside [0, accRows) is skipped rather than written out of bounds.
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
kimi_scatter_add_rows_f32(float* __restrict__ accumulator, const float* __restrict__ x, const int* __restrict__ rows,
                          const float* __restrict__ scales, int count, int C, int accRows)
{
    programmatic_prologue();
    const int i = blockIdx.x;
    if (i >= count) return;
    const int r = rows[i];
    if (r < 0 || r >= accRows) return;
    const float s = scales[i];
    const float* src = x + static_cast<size_t>(i) * C;
    float* dst = accumulator + static_cast<size_t>(r) * C;
    if ((C & 3) == 0 && aligned16(x) && aligned16(accumulator))
        for (int c = threadIdx.x; c < (C >> 2); c += blockDim.x)
        {
            const float4 v = reinterpret_cast<const float4*>(src)[c];
            float4 a = reinterpret_cast<float4*>(dst)[c];
            a.x = fmaf(s, v.x, a.x);
            a.y = fmaf(s, v.y, a.y);
            a.z = fmaf(s, v.z, a.z);
            a.w = fmaf(s, v.w, a.w);
            reinterpret_cast<float4*>(dst)[c] = a;
        }
    else
        for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = fmaf(s, src[c], dst[c]);
}

// latent[*firstRow + i, :] = bf16(RmsNorm(left[i, :]) · weight | right[i, :]).  latent [capacity, A + B] bf16 (the MLA
// cache rows of c_n | k_pe); left [T, A] (the compressed latent c, normalised here: kv_a_layernorm, one kernel fewer on
// the decode chain), right [T, B] fp32; weight [A]; firstRow: one int32 in device memory, so a captured decode graph
// writes the row the step's position says. A first row that would put any of the T rows outside [0, capacity) writes
// nothing (all or nothing: a graph replayed past the cache's end leaves the cache as it was). The norm: as
// kimi_rmsnorm_f32's, x · rsqrt(mean(x²) + eps) · weight with the mean a block sum in fp32.
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
kimi_write_latent_rows_f32(uint16_t* __restrict__ latent, const float* __restrict__ left, const float* __restrict__ weight,
                           float eps, const float* __restrict__ right, int T, int A, int B, const int* __restrict__ firstRow,
                           int capacity)
{
    // Its successor, the MLA query absorption, reads q (the projections' output, written before this kernel) before
    // its own wait: so it launches only once this kernel has waited, when everything before this kernel has finished.
    wait_for_predecessor();
    allow_successor();
    const int i = blockIdx.x;
    const int first = *firstRow;
    if (i >= T || first < 0 || first > capacity - T) return; // the whole block
    uint16_t* dst = latent + static_cast<size_t>(first + i) * (A + B);
    const float* l = left + static_cast<size_t>(i) * A;
    const float* r = right + static_cast<size_t>(i) * B;
    float sumsq = 0.0f;
    for (int c = threadIdx.x; c < A; c += blockDim.x) sumsq = fmaf(l[c], l[c], sumsq);
    const float inv = rsqrtf(block_sum(sumsq) / static_cast<float>(A) + eps);
    for (int c = threadIdx.x; c < A + B; c += blockDim.x) dst[c] = f32_to_bf16(c < A ? l[c] * inv * weight[c] : r[c - A]);
}

// ---- elements -----------------------------------------------------------------------------------------------------------
// Grid-stride loops: thread g handles vectors g, g + stride, ...; the tail of count % 4 elements is done element-wise
// by the first threads.

__device__ __forceinline__ size_t grid_thread() { return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ size_t grid_stride() { return static_cast<size_t>(gridDim.x) * blockDim.x; }

// accumulator[i] += x[i].
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
kimi_add_f32(float* __restrict__ accumulator, const float* __restrict__ x, long long count)
{
    programmatic_prologue();
    const size_t n = static_cast<size_t>(count);
    size_t start = 0;
    if (aligned16(accumulator) && aligned16(x))
    {
        start = n & ~size_t(3);
        for (size_t v = grid_thread(); v < (n >> 2); v += grid_stride())
        {
            float4 a = reinterpret_cast<float4*>(accumulator)[v];
            const float4 b = reinterpret_cast<const float4*>(x)[v];
            a.x += b.x;
            a.y += b.y;
            a.z += b.z;
            a.w += b.w;
            reinterpret_cast<float4*>(accumulator)[v] = a;
        }
    }
    for (size_t i = start + grid_thread(); i < n; i += grid_stride()) accumulator[i] += x[i];
}

__device__ __forceinline__ float silu_times(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// output[i] = silu(gate[i]) · up[i]; output may be gate or up.
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
kimi_swiglu_f32(float* output, const float* gate, const float* up, long long count)
{
    programmatic_prologue();
    const size_t n = static_cast<size_t>(count);
    size_t start = 0;
    if (aligned16(output) && aligned16(gate) && aligned16(up))
    {
        start = n & ~size_t(3);
        for (size_t v = grid_thread(); v < (n >> 2); v += grid_stride())
        {
            const float4 g = reinterpret_cast<const float4*>(gate)[v], u = reinterpret_cast<const float4*>(up)[v];
            reinterpret_cast<float4*>(output)[v] =
                make_float4(silu_times(g.x, u.x), silu_times(g.y, u.y), silu_times(g.z, u.z), silu_times(g.w, u.w));
        }
    }
    for (size_t i = start + grid_thread(); i < n; i += grid_stride()) output[i] = silu_times(gate[i], up[i]);
}

// y[i] = bf16(x[i]), rounded to nearest even; NaN stays NaN.
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
kimi_f32_to_bf16(uint16_t* __restrict__ y, const float* __restrict__ x, long long count)
{
    programmatic_prologue();
    const size_t n = static_cast<size_t>(count);
    size_t start = 0;
    if (aligned16(x) && aligned8(y))
    {
        start = n & ~size_t(3);
        for (size_t v = grid_thread(); v < (n >> 2); v += grid_stride())
        {
            const float4 a = reinterpret_cast<const float4*>(x)[v];
            reinterpret_cast<uint2*>(y)[v] = make_uint2(pack_bf16x2(a.x, a.y), pack_bf16x2(a.z, a.w));
        }
    }
    for (size_t i = start + grid_thread(); i < n; i += grid_stride()) y[i] = f32_to_bf16(x[i]);
}

// x[i] ≈ hi[i] + lo[i] in two bf16 values: hi = bf16(x), lo = bf16(x − hi) (about 16 significant bits together, for x
// within bf16's finite range). Two
// tensor-core GEMMs over hi and lo then give an fp32-accurate product where one rounding of x matters: the MoE router,
// whose logits pick experts discretely.
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
kimi_split_bf16(uint16_t* __restrict__ hi, uint16_t* __restrict__ lo, const float* __restrict__ x, long long count)
{
    programmatic_prologue();
    const size_t n = static_cast<size_t>(count);
    for (size_t i = grid_thread(); i < n; i += grid_stride())
    {
        const uint16_t h = f32_to_bf16(x[i]);
        hi[i] = h;
        lo[i] = f32_to_bf16(x[i] - bf16_to_f32(h));
    }
}
