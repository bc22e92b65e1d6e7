// GEMV layout sweep (kernels/gemv.cu's design space), for the GPU machine: nvcc -O3 -std=c++17 -arch=sm_90.
// Times the committed kernel and a family of variants at the model's decode shapes with the method of
// `KimiLinear.Benchmarks gpu` (64 launches in one CUDA graph, programmatic dependent launch, weight copies rotated to
// exceed L2, median of 50 replays after 5 warm-ups, a 1 GiB device-to-device copy as the ceiling in the same run), and
// checks every variant against a double-precision CPU reference (odd N, poisoned tail) first.
// Variant parameters: R rows per warp group, U 16-byte vectors per lane per row per chunk, D chunks in flight (a ring
// of registers, all requested before griddepcontrol.wait), S warps splitting K (reduced through shared memory),
// W warps per block, LD load flavour (0 ld.global.cs, 1 ld.global.nc.L1::no_allocate, 2 the same with an L2::256B hint).
#include "../gemv.cu"
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); exit(1); } } while (0)

template <int LD>
__device__ __forceinline__ uint4 ldw(const uint4* p)
{
    uint4 v;
    if constexpr (LD == 0) v = __ldcs(p);
    else if constexpr (LD == 1)
        asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    else
        asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// Chunk c of this warp's rows: U vectors a lane a row, column slot j = c * U + u at vector (j * S + s) * 32 + lane.
template <int R, int U, int S, int LD>
__device__ __forceinline__ void var_load_chunk(uint4 (&dst)[R][U], const uint4* const (&w8)[R], int c, int s, int lane, int K8)
{
#pragma unroll
    for (int u = 0; u < U; u++)
    {
        const int kk = ((c * U + u) * S + s) * 32 + lane;
#pragma unroll
        for (int r = 0; r < R; r++) dst[r][u] = kk < K8 ? ldw<LD>(w8[r] + kk) : make_uint4(0, 0, 0, 0);
    }
}

template <int R, int U, int D, int S, int W, int LD, typename OutT>
__global__ void __launch_bounds__(W * 32) gemv_var(OutT* __restrict__ y, const uint16_t* __restrict__ Wt, const uint16_t* __restrict__ x, int N, int K)
{
    static_assert(W % S == 0, "warps per block must be a multiple of the K split");
    constexpr int G = W / S; // row groups per block
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = warp / S, s = warp % S;
    const int row0 = (blockIdx.x * G + g) * R;
    allow_successor();
    const int K8 = K >> 3;
    const uint4* x8 = reinterpret_cast<const uint4*>(x);
    const uint4* w8[R];
#pragma unroll
    for (int r = 0; r < R; r++) w8[r] = reinterpret_cast<const uint4*>(Wt + static_cast<size_t>(min(row0 + r, N - 1)) * K);
    // Column slot j of this warp: vector (j * S + s) * 32 + lane.
    const int J32 = (K8 + 31) >> 5;
    const int nj = J32 > s ? (J32 - s + S - 1) / S : 0;
    const int nc = (nj + U - 1) / U;
    uint4 wv[D][R][U];
#pragma unroll
    for (int d = 0; d < D; d++) var_load_chunk<R, U, S, LD>(wv[d], w8, d, s, lane, K8);
    wait_for_predecessor();
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = 0.0f;
    for (int c0 = 0; c0 < nc; c0 += D)
    {
#pragma unroll
        for (int d = 0; d < D; d++)
        {
            const int c = c0 + d;
            if (c < nc)
            {
                uint4 xv[U];
#pragma unroll
                for (int u = 0; u < U; u++)
                {
                    const int kk = ((c * U + u) * S + s) * 32 + lane;
                    xv[u] = kk < K8 ? __ldg(x8 + kk) : make_uint4(0, 0, 0, 0);
                }
#pragma unroll
                for (int u = 0; u < U; u++)
#pragma unroll
                    for (int r = 0; r < R; r++) acc[r] = dot8(wv[d][r][u], xv[u], acc[r]);
                if (c + D < nc) var_load_chunk<R, U, S, LD>(wv[d], w8, c + D, s, lane, K8);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
    if constexpr (S == 1)
    {
#pragma unroll
        for (int r = 0; r < R; r++)
            if (lane == r && row0 + r < N) store_out(y, row0 + r, acc[r]);
    }
    else
    {
        __shared__ float part[W][R];
        if (lane == 0)
#pragma unroll
            for (int r = 0; r < R; r++) part[warp][r] = acc[r];
        __syncthreads();
        if (s == 0 && lane < R && row0 + lane < N)
        {
            float t = 0.0f;
#pragma unroll
            for (int q = 0; q < S; q++)
#pragma unroll
                for (int r = 0; r < R; r++)
                    if (r == lane) t += part[g * S + q][r];
            store_out(y, row0 + lane, t);
        }
    }
}

struct Variant
{
    const char* name;
    void (*bf16)(uint16_t*, const uint16_t*, const uint16_t*, int, int);
    void (*f32)(float*, const uint16_t*, const uint16_t*, int, int);
    int rowsPerBlock, threads;
};

#define VAR(R, U, D, S, W, LD) Variant{ "R" #R " U" #U " D" #D " S" #S " W" #W " LD" #LD, \
    gemv_var<R, U, D, S, W, LD, uint16_t>, gemv_var<R, U, D, S, W, LD, float>, (W / S) * R, W * 32 }

static const Variant variants[] = {
    { "kernels/gemv.cu", kimi_gemv_bf16, kimi_gemv_bf16_f32, GEMV_ROWS_PER_BLOCK, GEMV_WARPS * 32 },
    VAR(2, 4, 2, 1, 4, 0),
    VAR(2, 3, 3, 1, 4, 0),
    VAR(2, 3, 3, 1, 4, 2),
    VAR(2, 3, 3, 1, 2, 0),
    VAR(2, 3, 3, 1, 8, 0),
    VAR(2, 4, 4, 1, 4, 0),
    VAR(1, 4, 4, 1, 4, 0),
    VAR(1, 4, 4, 1, 4, 2),
    VAR(1, 4, 4, 1, 8, 0),
    VAR(1, 4, 4, 1, 2, 0),
    VAR(1, 8, 2, 1, 4, 1),
    VAR(2, 4, 2, 2, 8, 0),
    VAR(2, 2, 4, 2, 4, 0),
    VAR(2, 2, 4, 2, 4, 2),
    VAR(1, 4, 2, 2, 8, 0),
    VAR(1, 2, 4, 2, 4, 0),
    VAR(4, 2, 2, 2, 8, 0),
    VAR(2, 2, 2, 4, 8, 0),
    VAR(1, 2, 2, 4, 8, 0),
    VAR(1, 3, 3, 1, 4, 0),
    VAR(1, 3, 3, 1, 8, 2),
    { "kernels/gemv.cu again", kimi_gemv_bf16, kimi_gemv_bf16_f32, GEMV_ROWS_PER_BLOCK, GEMV_WARPS * 32 },
};

__global__ void fill_random(uint16_t* p, size_t n, uint32_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
        p[i] = f32_to_bf16(((h >> 8) * (1.0f / 16777216.0f)) * 2.0f - 1.0f);
    }
}

template <typename OutT>
static void launch(void (*fn)(OutT*, const uint16_t*, const uint16_t*, int, int), const Variant& v, cudaStream_t st, bool pdl,
                   OutT* y, const uint16_t* w, const uint16_t* x, int n, int k)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((n + v.rowsPerBlock - 1) / v.rowsPerBlock);
    cfg.blockDim = dim3(v.threads);
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, fn, y, w, x, n, k));
}

static float bf(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }

static bool check(const Variant& v, cudaStream_t st, int n, int k, uint32_t seed)
{
    std::vector<uint16_t> w((size_t)n * k), x(k);
    srand(seed);
    for (auto& e : w) { float f = (rand() / (float)RAND_MAX) * 2 - 1; uint32_t u; memcpy(&u, &f, 4); e = (uint16_t)(u >> 16); }
    for (auto& e : x) { float f = (rand() / (float)RAND_MAX) * 2 - 1; uint32_t u; memcpy(&u, &f, 4); e = (uint16_t)(u >> 16); }
    uint16_t *dw, *dx; float* dy;
    CK(cudaMalloc(&dw, w.size() * 2)); CK(cudaMalloc(&dx, k * 2)); CK(cudaMalloc(&dy, (n + 64) * 4));
    CK(cudaMemcpy(dw, w.data(), w.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx, x.data(), k * 2, cudaMemcpyHostToDevice));
    CK(cudaMemset(dy, 0xFF, (n + 64) * 4)); // NaN
    launch(v.f32, v, st, true, dy, dw, dx, n, k);
    CK(cudaGetLastError());
    std::vector<float> y(n + 64);
    CK(cudaMemcpy(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost));
    bool ok = true;
    for (int i = 0; i < n && ok; i++)
    {
        double ref = 0, mag = 0;
        for (int j = 0; j < k; j++) { double t = (double)bf(w[(size_t)i * k + j]) * bf(x[j]); ref += t; mag += fabs(t); }
        if (!(fabs(y[i] - ref) <= 1e-5 * mag + 1e-6)) { printf("  MISMATCH %s n=%d k=%d row %d: %g vs %g\n", v.name, n, k, i, y[i], ref); ok = false; }
    }
    for (int i = n; i < n + 64 && ok; i++)
        if (!std::isnan(y[i])) { printf("  TAIL WRITTEN %s n=%d k=%d at %d\n", v.name, n, k, i); ok = false; }
    CK(cudaFree(dw)); CK(cudaFree(dx)); CK(cudaFree(dy));
    return ok;
}

template <typename Work>
static float median_ms(cudaStream_t st, Work work, int runs = 50)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
    for (int i = 0; i < 5; i++) work();
    CK(cudaStreamSynchronize(st));
    std::vector<float> t(runs);
    for (int i = 0; i < runs; i++)
    {
        CK(cudaEventRecord(a, st)); work(); CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b)); CK(cudaEventElapsedTime(&t[i], a, b));
    }
    std::sort(t.begin(), t.end());
    CK(cudaEventDestroy(a)); CK(cudaEventDestroy(b));
    return t[runs / 2];
}

int main(int argc, char** argv)
{
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

    // Copy ceiling.
    const size_t cb = 1ull << 30;
    void *ca, *cbuf;
    CK(cudaMalloc(&ca, cb)); CK(cudaMalloc(&cbuf, cb)); CK(cudaMemset(ca, 0x5A, cb));
    // On the stream, as the C# benchmark copies (a memcpy node in a graph measured ~20 % slower on the H100).
    float cms = median_ms(st, [&] { CK(cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, st)); });
    double copy = 2.0 * cb / (cms * 1e6);
    printf("D2D copy 1 GiB: %.1f us, %.0f GB/s\n", cms * 1000, copy);
    CK(cudaFree(ca)); CK(cudaFree(cbuf));
    cudaGraph_t g; cudaGraphExec_t ge;

    const int nv = sizeof(variants) / sizeof(variants[0]);
    bool allok = true;
    for (int i = 0; i < nv; i++)
    {
        cudaFuncAttributes fa;
        CK(cudaFuncGetAttributes(&fa, (const void*)variants[i].bf16));
        int occ = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, (const void*)variants[i].bf16, variants[i].threads, 0));
        bool ok = check(variants[i], st, 1001, 2304, 11 + i) && check(variants[i], st, 2304, 4096, 12 + i) &&
                  check(variants[i], st, 37, 4104, 13 + i) && check(variants[i], st, 5, 8, 14 + i) && check(variants[i], st, 3, 1032, 15 + i);
        printf("%-32s regs %3d local %d blocks/SM %2d warps/SM %2d  %s\n", variants[i].name, fa.numRegs, (int)fa.localSizeBytes, occ,
               occ * variants[i].threads / 32, ok ? "ok" : "WRONG");
        allok &= ok;
    }

    const int shapes[4][2] = { { 4096, 2304 }, { 2304, 4096 }, { 6144, 2304 }, { 163840, 2304 } };
    const size_t pool = 1ull << 30; // bf16 elements: 2 GiB, enough for the LM head and 256 MB of rotation
    uint16_t *dw, *dx, *dy;
    CK(cudaMalloc(&dw, pool * 2)); CK(cudaMalloc(&dx, 65536 * 2)); CK(cudaMalloc(&dy, 163840 * 2));
    cudaLaunchConfig_t fc = {};
    fc.gridDim = dim3(4096);
    fc.blockDim = dim3(256);
    fc.stream = st;
    CK(cudaLaunchKernelEx(&fc, fill_random, dw, pool, 1234u));
    CK(cudaLaunchKernelEx(&fc, fill_random, dx, (size_t)65536, 99u));
    CK(cudaStreamSynchronize(st));
    printf("\n| variant | [4096x2304] | [2304x4096] | [6144x2304] | [163840x2304] |\n|---|---|---|---|---|\n");
    for (int i = 0; i < nv; i++)
    {
        printf("| %s |", variants[i].name);
        for (auto& sh : shapes)
        {
            const int n = sh[0], k = sh[1];
            const size_t elems = (size_t)n * k, bytes = elems * 2;
            const int copies = (int)std::min<size_t>(32, std::max<size_t>(1, (256ull << 20) / bytes));
            const size_t stride = (elems + 127) / 128 * 128;
            const int launches = 64;
            CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
            for (int l = 0; l < launches; l++) launch(variants[i].bf16, variants[i], st, true, dy, dw + (l % copies) * stride, dx, n, k);
            CK(cudaStreamEndCapture(st, &g)); CK(cudaGraphInstantiate(&ge, g, 0));
            float ms = median_ms(st, [&] { CK(cudaGraphLaunch(ge, st)); }) / launches;
            CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
            double gbs = (bytes + 2.0 * k + 2.0 * n) / (ms * 1e6);
            printf(" %.2f us %.0f%% |", ms * 1000, 100 * gbs / copy);
            fflush(stdout);
        }
        printf("\n");
    }
    CK(cudaGetLastError());
    printf("\ncopy %.0f GB/s; correctness %s\n", copy, allok ? "all ok" : "FAILURES");
    return allok ? 0 : 1;
}
