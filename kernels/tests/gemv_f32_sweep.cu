// Layout sweep for the fp32-activation GEMV (kimi_gemv_f32 in kernels/gemv.cu), for the GPU machine:
//   nvcc -O3 -std=c++17 -arch=sm_90 -o gemv_f32_sweep kernels/tests/gemv_f32_sweep.cu && ./gemv_f32_sweep
// Same method as gemv_sweep.cu and the
// `KimiLinear.Benchmarks gpu` table: every variant is first checked against a double-precision reference (odd N and
// K, poisoned tail), then timed as 64 programmatic launches in one CUDA graph over enough weight copies to exceed L2,
// median of 50 replays, against a 1 GiB device-to-device copy in the same process.
// What differs from the bf16-x GEMV: x is twice the bytes, and every row group of a block reads all of it, so with 2
// rows a group the block reads as many bytes of x (from L2) as of weights. Parameters: R rows a row group, U 16-byte
// weight vectors a lane a row a chunk, D chunks in flight (all requested before griddepcontrol.wait), S warps splitting
// K, W warps a block, XS 0 = x read from global memory per chunk, 1 = x staged once a block in shared memory after
// the wait (split into the low and high four floats of each 8-value slot, so lanes read consecutive 16-byte words).
#include "../gemv.cu"
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); exit(1); } } while (0)

template <int R, int U, int S>
__device__ __forceinline__ void f32_load_chunk(uint4 (&dst)[R][U], const uint4* const (&w8)[R], int c, int s, int lane, int K8)
{
#pragma unroll
    for (int u = 0; u < U; u++)
    {
        const int kk = ((c * U + u) * S + s) * 32 + lane;
#pragma unroll
        for (int r = 0; r < R; r++) dst[r][u] = kk < K8 ? __ldcs(w8[r] + kk) : make_uint4(0, 0, 0, 0);
    }
}

template <int R, int U, int D, int S, int W, int XS>
__global__ void __launch_bounds__(W * 32) gemv_f32_var(float* __restrict__ y, const uint16_t* __restrict__ Wt, const float* __restrict__ x, int N, int K,
                                                       int /* rows_per_x, as kimi_gemv_f32 takes it: the sweep times one product */)
{
    static_assert(W % S == 0, "warps per block must be a multiple of the K split");
    constexpr int G = W / S;
    extern __shared__ float4 xs[]; // XS = 1: [K8] low halves, then [K8] high halves
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = warp / S, s = warp % S;
    const int row0 = (blockIdx.x * G + g) * R;
    allow_successor();
    const int K8 = K >> 3;
    const uint4* w8[R];
#pragma unroll
    for (int r = 0; r < R; r++) w8[r] = reinterpret_cast<const uint4*>(Wt + static_cast<size_t>(min(row0 + r, N - 1)) * K);
    const int J32 = (K8 + 31) >> 5;
    const int nj = J32 > s ? (J32 - s + S - 1) / S : 0;
    const int nc = (nj + U - 1) / U;
    uint4 wv[D][R][U];
#pragma unroll
    for (int d = 0; d < D; d++) f32_load_chunk<R, U, S>(wv[d], w8, d, s, lane, K8);
    wait_for_predecessor();
    if constexpr (XS == 1)
    {
        const float4* x4 = reinterpret_cast<const float4*>(x);
        for (int i = threadIdx.x; i < 2 * K8; i += W * 32) xs[(i & 1) * K8 + (i >> 1)] = __ldg(x4 + i);
        __syncthreads();
    }
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
                f32x8 xv[U];
#pragma unroll
                for (int u = 0; u < U; u++)
                {
                    const int kk = ((c * U + u) * S + s) * 32 + lane;
                    if constexpr (XS == 1)
                        xv[u] = kk < K8 ? f32x8{xs[kk], xs[K8 + kk]} : f32x8{make_float4(0, 0, 0, 0), make_float4(0, 0, 0, 0)};
                    else
                        xv[u] = load_x8(x, kk, kk < K8);
                }
#pragma unroll
                for (int u = 0; u < U; u++)
#pragma unroll
                    for (int r = 0; r < R; r++) acc[r] = dot8(wv[d][r][u], xv[u], acc[r]);
                if (c + D < nc) f32_load_chunk<R, U, S>(wv[d], w8, c + D, s, lane, K8);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) acc[r] = warp_sum(acc[r]);
    if constexpr (S == 1)
    {
#pragma unroll
        for (int r = 0; r < R; r++)
            if (lane == r && row0 + r < N) y[row0 + r] = acc[r];
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
            y[row0 + lane] = t;
        }
    }
}

struct Variant
{
    const char* name;
    void (*fn)(float*, const uint16_t*, const float*, int, int, int); // kimi_gemv_f32's arguments (rows_per_x = N)
    int rowsPerBlock, threads;
    bool stagesX;
};

#define VAR(R, U, D, S, W, XS) Variant{ "R" #R " U" #U " D" #D " S" #S " W" #W " XS" #XS, gemv_f32_var<R, U, D, S, W, XS>, (W / S) * R, W * 32, XS == 1 }

static const Variant variants[] = {
    { "kernels/gemv.cu kimi_gemv_f32", kimi_gemv_f32, GemvF32Layout::ROWS_PER_BLOCK, GemvF32Layout::WARPS * 32, false },
    VAR(4, 2, 2, 2, 8, 0), // the committed layout as a sweep template
    VAR(2, 2, 4, 2, 4, 0), // the bf16-x layout (the first fp32 kernel)
    VAR(2, 2, 4, 2, 4, 1),
    VAR(4, 2, 2, 2, 4, 0),
    VAR(4, 2, 3, 2, 8, 0),
    VAR(4, 1, 4, 2, 8, 0),
    VAR(4, 2, 2, 4, 8, 0),
    VAR(4, 2, 2, 2, 8, 1),
    VAR(2, 2, 2, 4, 8, 0),
    { "kernels/gemv.cu kimi_gemv_f32 again", kimi_gemv_f32, GemvF32Layout::ROWS_PER_BLOCK, GemvF32Layout::WARPS * 32, false },
};

static size_t smem_bytes(const Variant& v, int k) { return v.stagesX ? static_cast<size_t>(k) * 4 : 0; }

__global__ void fill_random(uint16_t* p, size_t n, uint32_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
        p[i] = f32_to_bf16(((h >> 8) * (1.0f / 16777216.0f)) * 2.0f - 1.0f);
    }
}

static void launch(const Variant& v, cudaStream_t st, float* y, const uint16_t* w, const float* x, int n, int k)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((n + v.rowsPerBlock - 1) / v.rowsPerBlock);
    cfg.blockDim = dim3(v.threads);
    cfg.dynamicSmemBytes = smem_bytes(v, k);
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    CK(cudaLaunchKernelEx(&cfg, v.fn, y, w, x, n, k, n));
}

static float bf(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }

// Vector path only (K % 8 == 0): the variants have no scalar path; the committed kernel's is tested by the C# tests.
static bool check(const Variant& v, cudaStream_t st, int n, int k, uint32_t seed)
{
    std::vector<uint16_t> w((size_t)n * k);
    std::vector<float> x(k);
    srand(seed);
    for (auto& e : w) { float f = (rand() / (float)RAND_MAX) * 2 - 1; uint32_t u; memcpy(&u, &f, 4); e = (uint16_t)(u >> 16); }
    for (auto& e : x) e = (rand() / (float)RAND_MAX) * 2 - 1;
    uint16_t* dw; float *dx, *dy;
    CK(cudaMalloc(&dw, w.size() * 2)); CK(cudaMalloc(&dx, k * 4)); CK(cudaMalloc(&dy, (n + 64) * 4));
    CK(cudaMemcpy(dw, w.data(), w.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dx, x.data(), k * 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(dy, 0xFF, (n + 64) * 4));
    launch(v, st, dy, dw, dx, n, k);
    CK(cudaGetLastError());
    std::vector<float> y(n + 64);
    CK(cudaMemcpy(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost));
    bool ok = true;
    for (int i = 0; i < n && ok; i++)
    {
        double ref = 0, mag = 0;
        for (int j = 0; j < k; j++) { double t = (double)bf(w[(size_t)i * k + j]) * x[j]; ref += t; mag += fabs(t); }
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

int main()
{
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    const size_t cb = 1ull << 30;
    void *ca, *cbuf;
    CK(cudaMalloc(&ca, cb)); CK(cudaMalloc(&cbuf, cb)); CK(cudaMemset(ca, 0x5A, cb));
    float cms = median_ms(st, [&] { CK(cudaMemcpyAsync(cbuf, ca, cb, cudaMemcpyDeviceToDevice, st)); });
    double copy = 2.0 * cb / (cms * 1e6);
    printf("D2D copy 1 GiB: %.1f us, %.0f GB/s\n", cms * 1000, copy);
    CK(cudaFree(ca)); CK(cudaFree(cbuf));

    const int nv = sizeof(variants) / sizeof(variants[0]);
    bool allok = true;
    for (int i = 0; i < nv; i++)
    {
        cudaFuncAttributes fa;
        CK(cudaFuncGetAttributes(&fa, (const void*)variants[i].fn));
        int occ = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, (const void*)variants[i].fn, variants[i].threads, smem_bytes(variants[i], 4096)));
        bool ok = check(variants[i], st, 1001, 2304, 11 + i) && check(variants[i], st, 2304, 4096, 12 + i) &&
                  check(variants[i], st, 37, 4104, 13 + i) && check(variants[i], st, 5, 8, 14 + i) && check(variants[i], st, 3, 1032, 15 + i);
        printf("%-40s regs %3d local %d blocks/SM(K=4096) %2d  %s\n", variants[i].name, fa.numRegs, (int)fa.localSizeBytes, occ, ok ? "ok" : "WRONG");
        allok &= ok;
    }

    const int shapes[4][2] = { { 4096, 2304 }, { 2304, 4096 }, { 6144, 2304 }, { 163840, 2304 } };
    const size_t pool = 1ull << 30;
    uint16_t* dw; float *dx, *dy;
    CK(cudaMalloc(&dw, pool * 2)); CK(cudaMalloc(&dx, 65536 * 4)); CK(cudaMalloc(&dy, 163840 * 4));
    cudaLaunchConfig_t fc = {};
    fc.gridDim = dim3(4096);
    fc.blockDim = dim3(256);
    fc.stream = st;
    CK(cudaLaunchKernelEx(&fc, fill_random, dw, pool, 1234u));
    CK(cudaMemsetAsync(dx, 0x3C, 65536 * 4, st)); // every x = 0.0117…: finite, nonzero
    CK(cudaStreamSynchronize(st));
    cudaGraph_t g; cudaGraphExec_t ge;
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
            for (int l = 0; l < launches; l++) launch(variants[i], st, dy, dw + (l % copies) * stride, dx, n, k);
            CK(cudaStreamEndCapture(st, &g)); CK(cudaGraphInstantiate(&ge, g, 0));
            float ms = median_ms(st, [&] { CK(cudaGraphLaunch(ge, st)); }) / launches;
            CK(cudaGraphExecDestroy(ge)); CK(cudaGraphDestroy(g));
            double gbs = (bytes + 4.0 * k + 4.0 * n) / (ms * 1e6);
            printf(" %.2f us %.0f%% |", ms * 1000, 100 * gbs / copy);
            fflush(stdout);
        }
        printf("\n");
    }
    CK(cudaGetLastError());
    printf("\ncopy %.0f GB/s; correctness %s\n", copy, allok ? "all ok" : "FAILURES");
    return allok ? 0 : 1;
}
