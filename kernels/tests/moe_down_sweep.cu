// Geometry sweep for the MoE decode down kernel (kimi_moe_decode_down in kernels/moe.cu), for the GPU machine:
//   nvcc -O3 -std=c++17 -arch=sm_90 -o moe_down_sweep kernels/tests/moe_down_sweep.cu && ./moe_down_sweep
// The committed kernel and variants of its design (a block of WARPS warps owns ROWS output rows of one token and
// splits K = the token's A hiddens concatenated by column slots; each lane keeps DEPTH chunks in flight; MINB blocks an
// SM in the launch bounds, 0 = none): each variant is checked against the committed kernel's output, then timed as 16
// launches over distinct expert sets in one CUDA graph (the sets' weights exceed L2), median of 50 replays, against a
// 1 GiB device-to-device copy. Shape: the proxy's decode step, T = 1, D = 2304, F = 1024, 8 routed experts + 1 shared.
#include "../moe.cu"
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, __LINE__, #x); exit(1); } } while (0)

template <int WARPS, int ROWS, int DEPTH, int MINB>
__global__ void __launch_bounds__(WARPS * 32, MINB) down_var(float* __restrict__ output, const uint16_t* __restrict__ h, const int* __restrict__ experts,
                                                            const float* __restrict__ weights, const uint16_t* __restrict__ down, int T, int D, int E, int A, int F)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, t = blockIdx.x, d0 = blockIdx.y * ROWS;
    const int F8 = F >> 3, K8 = A * F8, slots = (K8 + 31) >> 5;
    const int chunks = warp < slots ? (slots - warp + WARPS - 1) / WARPS : 0;
    int my_e = lane < A ? experts[t * A + lane] : 0;
    const float my_w = lane < A ? weights[t * A + lane] : 0.0f;
    const bool bad = warp_or(valid_expert(my_e, E) ? 0u : 1u) != 0;
    my_e = valid_expert(my_e, E) ? my_e : 0;
    uint4 wv[DEPTH][ROWS];
    float wa[DEPTH];
    auto request = [&](int c, uint4 (&slot)[ROWS], float& slot_weight)
    {
        const int kk = (c * WARPS + warp) * 32 + lane, a = min(kk / F8, A - 1), j = kk - a * F8;
        const int e = __shfl_sync(0xFFFFFFFFu, my_e, a);
        slot_weight = __shfl_sync(0xFFFFFFFFu, my_w, a);
        const uint4* row8 = reinterpret_cast<const uint4*>(down + (static_cast<size_t>(e) * D + d0) * F);
#pragma unroll
        for (int r = 0; r < ROWS; r++) slot[r] = kk < K8 ? __ldcs(row8 + static_cast<size_t>(r) * F8 + j) : make_uint4(0, 0, 0, 0);
    };
#pragma unroll
    for (int d = 0; d < DEPTH; d++)
        if (d < chunks) request(d, wv[d], wa[d]);
    wait_for_predecessor();
    allow_successor();
    const uint4* h8 = reinterpret_cast<const uint4*>(h + static_cast<size_t>(t) * A * F);
    float acc[ROWS] = {};
    for (int c0 = 0; c0 < chunks; c0 += DEPTH)
    {
#pragma unroll
        for (int d = 0; d < DEPTH; d++)
        {
            const int c = c0 + d;
            if (c >= chunks) break;
            const int kk = (c * WARPS + warp) * 32 + lane;
            const uint4 hv = kk < K8 ? __ldg(h8 + kk) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int r = 0; r < ROWS; r++) acc[r] = fmaf(wa[d], dot8_bf16(wv[d][r], hv), acc[r]);
            if (c + DEPTH < chunks) request(c + DEPTH, wv[d], wa[d]);
        }
    }
    __shared__ float partial[WARPS][ROWS];
#pragma unroll
    for (int r = 0; r < ROWS; r++)
    {
        const float sum = warp_sum(acc[r]);
        if (lane == 0) partial[warp][r] = sum;
    }
    __syncthreads();
    if (warp == 0 && lane < ROWS)
    {
        float total = 0.0f;
#pragma unroll
        for (int q = 0; q < WARPS; q++) total += partial[q][lane];
        output[static_cast<size_t>(t) * D + d0 + lane] += bad ? NAN : total;
    }
}

using Launch = void (*)(cudaStream_t, float*, const uint16_t*, const int*, const float*, const uint16_t*, int, int, int, int, int);

template <int WARPS, int ROWS, int DEPTH, int MINB>
static void launch_var(cudaStream_t s, float* out, const uint16_t* h, const int* ids, const float* w, const uint16_t* down, int T, int D, int E, int A, int F)
{
    down_var<WARPS, ROWS, DEPTH, MINB><<<dim3(T, D / ROWS), WARPS * 32, 0, s>>>(out, h, ids, w, down, T, D, E, A, F);
}

static void launch_committed(cudaStream_t s, float* out, const uint16_t* h, const int* ids, const float* w, const uint16_t* down, int T, int D, int E, int A, int F)
{
    kimi_moe_decode_down<<<dim3(T, D / MOE_DOWN_ROWS), MOE_DOWN_WARPS * 32, 0, s>>>(out, h, ids, w, down, T, D, E, A, F);
}

static float median(std::vector<float> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

int main()
{
    const int T = 1, D = 2304, F = 1024, E = 257, A = 9, Sets = 16;
    std::mt19937 rng(7);
    const size_t down_elems = size_t(E) * D * F;
    std::vector<uint16_t> host_down(down_elems);
    for (auto& v : host_down) v = uint16_t(0x3C00 + (rng() & 0x3FF)); // bf16 in [1/128, 1/64) ... finite, varied
    std::vector<uint16_t> host_h(size_t(T) * A * F);
    for (auto& v : host_h) v = uint16_t((rng() & 1 ? 0xBC00 : 0x3C00) + (rng() & 0x3FF));
    std::vector<int> ids(Sets * T * A);
    std::vector<float> wts(Sets * T * A);
    for (int s = 0; s < Sets; s++)
    {
        std::vector<int> perm(E - 1);
        for (int i = 0; i < E - 1; i++) perm[i] = i;
        std::shuffle(perm.begin(), perm.end(), rng);
        for (int a = 0; a < A; a++) ids[s * A + a] = a < A - 1 ? perm[a] : E - 1, wts[s * A + a] = 0.1f + 0.01f * a;
    }
    uint16_t *d_down, *d_h; int* d_ids; float *d_w, *d_out, *d_ref;
    CK(cudaMalloc(&d_down, down_elems * 2)); CK(cudaMalloc(&d_h, host_h.size() * 2)); CK(cudaMalloc(&d_ids, ids.size() * 4));
    CK(cudaMalloc(&d_w, wts.size() * 4)); CK(cudaMalloc(&d_out, D * 4)); CK(cudaMalloc(&d_ref, D * 4));
    CK(cudaMemcpy(d_down, host_down.data(), down_elems * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_h, host_h.data(), host_h.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_w, wts.data(), wts.size() * 4, cudaMemcpyHostToDevice));
    cudaStream_t s; CK(cudaStreamCreate(&s));
    cudaEvent_t e0, e1; CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));

    // The copy ceiling.
    void *ca, *cb; const size_t copy = size_t(1) << 30;
    CK(cudaMalloc(&ca, copy)); CK(cudaMalloc(&cb, copy));
    std::vector<float> ct;
    for (int i = 0; i < 20; i++) { cudaEventRecord(e0, s); cudaMemcpyAsync(cb, ca, copy, cudaMemcpyDeviceToDevice, s); cudaEventRecord(e1, s); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); ct.push_back(ms); }
    const double copy_gbs = 2.0 * copy / (median(ct) * 1e6); // read + written, as the benchmarks count it
    printf("copy: %.0f GB/s\n", copy_gbs);
    CK(cudaFree(ca)); CK(cudaFree(cb));

    CK(cudaMemset(d_ref, 0, D * 4));
    launch_committed(s, d_ref, d_h, d_ids, d_w, d_down, T, D, E, A, F);
    std::vector<float> ref(D), got(D);
    CK(cudaMemcpy(ref.data(), d_ref, D * 4, cudaMemcpyDeviceToHost));
    const double bytes = double(A) * D * F * 2;

    struct Var { const char* name; Launch fn; };
    const Var vars[] = {
        {"committed (4 warps, 2 rows, depth 4, 9 blocks/SM)", launch_committed},
        {"4 warps, 2 rows, depth 8", launch_var<4, 2, 8, 1>},
        {"4 warps, 2 rows, depth 3, 11 blocks/SM", launch_var<4, 2, 3, 11>},
        {"4 warps, 2 rows, depth 2, 12 blocks/SM", launch_var<4, 2, 2, 12>},
        {"4 warps, 2 rows, depth 5, 8 blocks/SM", launch_var<4, 2, 5, 8>},
        {"4 warps, 4 rows, depth 5, 5 blocks/SM", launch_var<4, 4, 5, 5>},
        {"8 warps, 2 rows, depth 5, 4 blocks/SM", launch_var<8, 2, 5, 4>},
        {"8 warps, 4 rows, depth 5", launch_var<8, 4, 5, 1>},
    };
    for (const Var& v : vars)
    {
        CK(cudaMemset(d_out, 0, D * 4));
        v.fn(s, d_out, d_h, d_ids, d_w, d_down, T, D, E, A, F);
        CK(cudaStreamSynchronize(s));
        CK(cudaGetLastError());
        CK(cudaMemcpy(got.data(), d_out, D * 4, cudaMemcpyDeviceToHost));
        double num = 0, den = 0;
        for (int i = 0; i < D; i++) num += (got[i] - ref[i]) * double(got[i] - ref[i]), den += double(ref[i]) * ref[i];
        const double err = std::sqrt(num / den);
        cudaGraph_t g; cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        for (int set = 0; set < Sets; set++) v.fn(s, d_out, d_h, d_ids + set * A, d_w + set * A, d_down, T, D, E, A, F);
        CK(cudaStreamEndCapture(s, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        for (int i = 0; i < 5; i++) cudaGraphLaunch(ge, s);
        std::vector<float> times;
        for (int i = 0; i < 50; i++) { cudaEventRecord(e0, s); cudaGraphLaunch(ge, s); cudaEventRecord(e1, s); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); times.push_back(ms); }
        const double us = median(times) * 1000 / Sets, gbs = bytes / (us * 1e3);
        printf("%-42s %7.2f us  %5.0f GB/s  %3.0f %% of copy   rel err vs committed %.1e\n", v.name, us, gbs, 100 * gbs / copy_gbs, err);
        cudaGraphExecDestroy(ge); cudaGraphDestroy(g);
    }
    return 0;
}
