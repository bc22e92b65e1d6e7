// mla_harness.cu — development harness for kernels/mla.cu (llm.c dev/cuda style):
//   CPU:  g++ -O1 -std=c++17 -DKDA_EMULATE -x c++ -o /tmp/mla_emu kernels/tests/mla_harness.cu && /tmp/mla_emu
//         (the CUDA emulator of kernels/kda/tests/cuda_emu.h: checks logic, fragment layouts and barriers, not speed)
//   GPU:  nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -o /tmp/mla_harness kernels/tests/mla_harness.cu -lcuda && /tmp/mla_harness [--bench | --bench-decode | --bench-prefill]
//         (the same checks, then with --bench each kernel alone timed with CUDA events at the model's shapes, the decode
//         partial both as mma.sync and as wgmma, and B caches as B one-cache launches against one table launch;
//         -DMLA_DECODE_ROWS=r -DMLA_DECODE_STAGES=n build the decode kernel's other configurations,
//         -DMLA_WD_MIN_SLICE_ROWS=m the wgmma decode partial with slices of at least m rows)
// Every kernel against a float64 reference of the same math on random data of odd sizes, the cache rows past the
// visible length poisoned with NaN. Error = ‖out − ref‖ / ‖ref‖ (limit 2e-3; the fp16 tensor-core operands keep it near 2e-4,
// the wgmma prefill's bf16 softmax weights near 1.3e-3).
// The tests that count are KimiLinear.Tests/Cuda/MlaKernelTests.cs on the GPU; this is the fast development loop.
#include "../mla.cu"
#ifndef KDA_EMULATE
#include <cuda.h>   // cuTensorMapEncodeTiled (the driver API: link with -lcuda)
#endif

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace mla;   // the extern "C" kernels live in the namespace too

#define CK(x)                                                                                                         \
    do {                                                                                                              \
        cudaError_t e_ = (x);                                                                                         \
        if (e_ != cudaSuccess) {                                                                                      \
            std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #x, __FILE__, __LINE__, cudaGetErrorString(e_));     \
            std::exit(2);                                                                                             \
        }                                                                                                             \
    } while (0)

#ifndef KDA_EMULATE
static cudaStream_t g_stream = 0;       // the timings' own stream (graphs are captured from it)
static bool g_programmatic = false;     // launch with programmatic dependent launch, as the C# library does on sm_90
#endif

// One launch on the emulator or the GPU (raising the dynamic shared-memory limit where needed), as thread-block
// clusters of `cluster_x` blocks along x where it is above 1 (the launch's cluster attribute, as the C# library passes
// it), with programmatic dependent launch as g_programmatic says.
template <typename... P, typename... A>
static void launch_cluster(void (*k)(P...), int cluster_x, dim3 grid, dim3 block, size_t smem, A... args) {
#ifdef KDA_EMULATE
    emu_launch_cluster(k, cluster_x, grid, block, smem, args...);
#else
    cudaStreamCaptureStatus capturing;
    CK(cudaStreamIsCapturing(g_stream, &capturing));   // the opt-in happened before the capture (timings run each work once first)
    if (smem > 48 * 1024 && capturing == cudaStreamCaptureStatusNone)
        CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = g_stream;
    cudaLaunchAttribute attributes[2] = {};
    unsigned count = 0;
    if (cluster_x > 1) {
        attributes[count].id = cudaLaunchAttributeClusterDimension;
        attributes[count].val.clusterDim.x = unsigned(cluster_x);
        attributes[count].val.clusterDim.y = 1;
        attributes[count++].val.clusterDim.z = 1;
    }
    if (g_programmatic) {
        attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attributes[count++].val.programmaticStreamSerializationAllowed = 1;
    }
    config.attrs = attributes;
    config.numAttrs = count;
    CK(cudaLaunchKernelEx(&config, k, P(args)...));
#endif
}
template <typename... P, typename... A>
static void launch(void (*k)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
    launch_cluster(k, 1, grid, block, smem, args...);
}

// A device copy of a host vector (host memory itself on the emulator's runtime subset).
template <typename T> struct Dev {
    T* p = nullptr;
    size_t n;
    explicit Dev(const std::vector<T>& h) : n(h.size()) {
        CK(cudaMalloc(&p, n * sizeof(T)));
        CK(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    }
    Dev(const Dev&) = delete;
    ~Dev() { cudaFree(p); }
    std::vector<T> get() const {
        std::vector<T> h(n);
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
        return h;
    }
};

static uint16_t f2bf(float f) {   // round to nearest even, as the kernels' f32_to_bf16
    uint32_t u; std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}
static float bf2f(uint16_t b) { uint32_t u = uint32_t(b) << 16; float f; std::memcpy(&f, &u, 4); return f; }
static std::mt19937 rng(7);
static std::vector<uint16_t> rand_bf16(size_t n, float scale) {
    std::normal_distribution<float> d(0.f, scale);
    std::vector<uint16_t> v(n);
    for (auto& x : v) x = f2bf(d(rng));
    return v;
}
static std::vector<float> rand_f32(size_t n, float scale) {
    std::normal_distribution<float> d(0.f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}
static int failures = 0;
static void report(const char* what, const std::vector<float>& got, const std::vector<double>& ref, double limit = 2e-3) {
    double num = 0, den = 0;
    bool nan = false;
    for (size_t i = 0; i < ref.size(); i++) {
        if (!std::isfinite(got[i])) nan = true;
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    const double err = std::sqrt(num / den);
    const bool ok = !nan && err <= limit;
    failures += !ok;
    std::printf("%s %-60s rel err %.3g%s\n", ok ? "PASS" : "FAIL", what, err, nan ? " (non-finite)" : "");
}

struct Shape { int H, N, P, V, R; };

// Absorbed MQA reference: softmax over s ≤ start + t of scale·q_lat·row, out = Σ p·row[:R].
static std::vector<double> decode_ref(const std::vector<float>& qlat, const std::vector<uint16_t>& lat, int start, int T, Shape sh, float scale) {
    const int D = sh.R + sh.P;
    std::vector<double> out(size_t(T) * sh.H * sh.R, 0.0);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < sh.H; h++) {
            const int len = start + t + 1;
            std::vector<double> sc(len);
            double mx = -1e300;
            for (int s = 0; s < len; s++) {
                double d = 0;
                for (int i = 0; i < D; i++) d += double(qlat[(size_t(t) * sh.H + h) * D + i]) * bf2f(lat[size_t(s) * D + i]);
                sc[s] = d * scale;
                mx = std::max(mx, sc[s]);
            }
            double sum = 0;
            for (int s = 0; s < len; s++) { sc[s] = std::exp(sc[s] - mx); sum += sc[s]; }
            for (int s = 0; s < len; s++)
                for (int r = 0; r < sh.R; r++) out[(size_t(t) * sh.H + h) * sh.R + r] += sc[s] / sum * bf2f(lat[size_t(s) * D + r]);
        }
    return out;
}

// W_UV·out for every token and head: the decode path's output from the latent mix.
static std::vector<double> absorb_output_ref(const std::vector<double>& mixed, const std::vector<uint16_t>& kvb, int T, Shape sh) {
    std::vector<double> o(size_t(T) * sh.H * sh.V, 0.0);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < sh.H; h++)
            for (int v = 0; v < sh.V; v++) {
                double s = 0;
                for (int r = 0; r < sh.R; r++)
                    s += double(bf2f(kvb[(size_t(h) * (sh.N + sh.V) + sh.N + v) * sh.R + r])) * mixed[(size_t(t) * sh.H + h) * sh.R + r];
                o[size_t(t) * sh.H * sh.V + h * sh.V + v] = s;
            }
    return o;
}

static int output_blocks(Shape sh) { return (sh.R + kAbsorbColumns - 1) / kAbsorbColumns; }

// The partial kernel, then the merge + W_UV kernel, against W_UV·(the float64 attention). Where the merge adds parts
// across blocks (R > 128) the call is made twice (outputs re-poisoned): the head counters must be back at 0 after the
// first for the second to be right.
static void check_decode(Shape sh, int start, int T, int splits) {
    const int D = sh.R + sh.P, L = start + T, MT = (sh.H + 15) / 16, G = output_blocks(sh);
    std::vector<uint16_t> lat = rand_bf16(size_t(L + 5) * D, 1.f);
    for (size_t i = size_t(L) * D; i < lat.size(); i++) lat[i] = 0x7FC0;   // rows past L: NaN
    std::vector<float> qlat = rand_f32(size_t(T) * sh.H * D, 0.3f);
    std::vector<uint16_t> kvb = rand_bf16(size_t(sh.H) * (sh.N + sh.V) * sh.R, 0.1f);
    const float scale = 1.f / std::sqrt(float(sh.N + sh.P));
    Dev<float> po(std::vector<float>(size_t(T) * splits * sh.H * sh.R, NAN)), pml(std::vector<float>(size_t(T) * splits * sh.H * 2, NAN));
    Dev<float> parts(std::vector<float>(size_t(T) * sh.H * G * sh.V, NAN)), dq(qlat);
    Dev<int> arrivals(std::vector<int>(sh.H, 0));
    Dev<uint16_t> dlat(lat), dkvb(kvb);
    Dev<int> dstart(std::vector<int>{start});
    const bool exact = sh.H == 32 && sh.R == 512 && D == 576;   // the model's shape: the specialised kernel
    const std::vector<double> ref = absorb_output_ref(decode_ref(qlat, lat, start, T, sh, scale), kvb, T, sh);
    for (int call = 0; call < (G > 1 ? 2 : 1); call++) {
        Dev<float> out(std::vector<float>(size_t(T) * sh.H * sh.V, NAN));
        launch(exact ? kimi_mla_decode_partial_h32_r512_d576 : kimi_mla_decode_partial, dim3(splits, T), dim3(kDecodeThreads),
               decode_smem_bytes(D, MT), po.p, pml.p, (const float*)dq.p,
               (const uint16_t*)dlat.p, (const int*)dstart.p, sh.H, sh.R, D, scale * 1.4426950408889634f);
        launch(kimi_mla_combine_absorb_output, dim3(G, sh.H), dim3(kAbsorbThreads), absorb_output_smem_bytes(splits), out.p, parts.p,
               arrivals.p, (const float*)po.p, (const float*)pml.p, (const uint16_t*)dkvb.p, T, sh.H, sh.N, sh.V, sh.R, splits);
        char what[128];
        std::snprintf(what, sizeof what, "decode%s H=%d R=%d P=%d start=%d T=%d splits=%d%s", exact ? " h32" : "", sh.H, sh.R, sh.P,
                      start, T, splits, call ? " (again)" : "");
        report(what, out.get(), ref);
    }
    const std::vector<int> left = arrivals.get();
    if (std::any_of(left.begin(), left.end(), [](int a) { return a != 0; })) {
        failures++;
        std::printf("FAIL head counters not reset after the merge (H=%d)\n", sh.H);
    }
}

// The copy engine's map of `rows` rows of `columns` bf16 values, `row_bytes` apart, in boxes of 64 × 64 with the 128-byte
// swizzle (what MlaKernels.PrefillAttention encodes for the wgmma prefill).
static TensorMap bf16_rows_map(const uint16_t* base, uint64_t columns, uint64_t rows, uint64_t row_bytes) {
    TensorMap map;
#ifdef KDA_EMULATE
    emu_encode_tensor_map_2d(&map, base, 2, columns, rows, row_bytes, 64, 64);
#else
    const cuuint64_t extent[2] = {columns, rows}, pitch[1] = {row_bytes};
    const cuuint32_t box[2] = {64, 64}, step[2] = {1, 1};
    const CUresult r = cuTensorMapEncodeTiled(reinterpret_cast<CUtensorMap*>(&map), CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<uint16_t*>(base),
                                              extent, pitch, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                              CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) { std::fprintf(stderr, "cuTensorMapEncodeTiled failed: %d\n", int(r)); std::exit(2); }
#endif
    return map;
}

// The wgmma decode partial's view of a latent cache of `rows` rows (R + P = 576 columns).
static TensorMap latent_map(const uint16_t* lat, int rows) { return bf16_rows_map(lat, 576, uint64_t(rows), 576 * 2); }

// The Hopper decode partial (kimi_mla_decode_partial_wgmma_h32_r512_d576, the model's shape only) against the reference
// and against the mma.sync kernel on the same data, both merged by the same combine. Its q_lat and p enter as bf16 hi +
// lo pairs, so it must land near fp32 (limit 1e-4): a lost lo half shows as ~1e-3.
static void check_decode_wgmma(int start, int T, int splits) {
    const Shape sh{32, 128, 64, 128, 512};
    const int D = sh.R + sh.P, L = start + T, G = (sh.R + kAbsorbColumns - 1) / kAbsorbColumns;
    std::vector<uint16_t> lat = rand_bf16(size_t(L + 5) * D, 1.f);
    for (size_t i = size_t(L) * D; i < lat.size(); i++) lat[i] = 0x7FC0;   // rows past L: NaN
    std::vector<float> qlat = rand_f32(size_t(T) * sh.H * D, 1.f);
    std::vector<uint16_t> kvb = rand_bf16(size_t(sh.H) * (sh.N + sh.V) * sh.R, 0.1f);
    const float scale = 1.f / std::sqrt(float(sh.N + sh.P));
    Dev<float> dq(qlat);
    Dev<uint16_t> dlat(lat), dkvb(kvb);
    Dev<int> dstart(std::vector<int>{start});
    auto run = [&](bool wgmma) {
        Dev<float> po(std::vector<float>(size_t(T) * splits * sh.H * sh.R, NAN)), pml(std::vector<float>(size_t(T) * splits * sh.H * 2, NAN));
        Dev<float> parts(std::vector<float>(size_t(T) * sh.H * G * sh.V, NAN)), out(std::vector<float>(size_t(T) * sh.H * sh.V, NAN));
        Dev<int> arrivals(std::vector<int>(sh.H, 0));
        if (wgmma)
            launch(kimi_mla_decode_partial_wgmma_h32_r512_d576, dim3(splits, T), dim3(kWdThreads), decode_wgmma_smem_bytes(), po.p, pml.p,
                   (const float*)dq.p, latent_map(dlat.p, L + 5), (const int*)dstart.p, sh.H, sh.R, D, scale * 1.4426950408889634f);
        else
            launch(kimi_mla_decode_partial_h32_r512_d576, dim3(splits, T), dim3(kDecodeThreads), decode_smem_bytes(D, 2), po.p, pml.p,
                   (const float*)dq.p, (const uint16_t*)dlat.p, (const int*)dstart.p, sh.H, sh.R, D, scale * 1.4426950408889634f);
        launch(kimi_mla_combine_absorb_output, dim3(G, sh.H), dim3(kAbsorbThreads), absorb_output_smem_bytes(splits), out.p, parts.p,
               arrivals.p, (const float*)po.p, (const float*)pml.p, (const uint16_t*)dkvb.p, T, sh.H, sh.N, sh.V, sh.R, splits);
        return out.get();
    };
    const std::vector<float> wg = run(true), mma = run(false);
    const std::vector<double> ref = absorb_output_ref(decode_ref(qlat, lat, start, T, sh, scale), kvb, T, sh);
    char what[128];
    std::snprintf(what, sizeof what, "decode wgmma h32 start=%d T=%d splits=%d", start, T, splits);
    report(what, wg, ref, 1e-4);
    std::snprintf(what, sizeof what, "decode wgmma h32 start=%d T=%d splits=%d vs mma.sync", start, T, splits);
    report(what, wg, std::vector<double>(mma.begin(), mma.end()));
}

// The one-launch decode of one token over a short cache (kimi_mla_decode_fused_r512_d576, the model's N, V, R, P; H a multiple of 4)
// against the float64 reference of the whole absorbed path (q_lat from q and W_UK, the attention, W_UV), the cache's
// rows past the length NaN. Its q_lat and p enter as bf16 hi + lo pairs, so it must land near fp32 (limit 1e-4).
// Called again on the same buffers (outputs re-poisoned) one row longer, as a decode graph replays while the cache grows.
static void check_decode_fused(int H, int start) {
    const Shape sh{H, 128, 64, 128, 512};
    const int D = sh.R + sh.P, qk = sh.N + sh.P;
    std::vector<uint16_t> lat = rand_bf16(size_t(start + 8) * D, 1.f);
    std::vector<float> q = rand_f32(size_t(sh.H) * qk, 1.f);
    std::vector<uint16_t> kvb = rand_bf16(size_t(sh.H) * (sh.N + sh.V) * sh.R, 0.1f);
    const float scale = 1.f / std::sqrt(float(sh.N + sh.P));
    std::vector<float> qlat(size_t(sh.H) * D);   // the float64 query absorption, as floats for decode_ref
    for (int h = 0; h < sh.H; h++) {
        for (int r = 0; r < sh.R; r++) {
            double s = 0;
            for (int n = 0; n < sh.N; n++) s += double(q[h * qk + n]) * bf2f(kvb[(size_t(h) * (sh.N + sh.V) + n) * sh.R + r]);
            qlat[size_t(h) * D + r] = float(s);
        }
        for (int i = 0; i < sh.P; i++) qlat[size_t(h) * D + sh.R + i] = q[h * qk + sh.N + i];
    }
    Dev<float> dq(q);
    Dev<uint16_t> dkvb(kvb);
    for (int call = 0; call < 2; call++) {
        const int at = start + call, L = at + 1;
        std::vector<uint16_t> poisoned = lat;
        for (size_t i = size_t(L) * D; i < poisoned.size(); i++) poisoned[i] = 0x7FC0;   // rows past L: NaN
        Dev<uint16_t> dlat(poisoned);
        Dev<int> dstart(std::vector<int>{at});
        Dev<float> out(std::vector<float>(size_t(sh.H) * sh.V, NAN));
        launch_cluster(kimi_mla_decode_fused_r512_d576, kFusedBlocks, dim3(kFusedBlocks, sh.H / kFusedHeads), dim3(kFusedThreads),
                       decode_fused_smem_bytes(), out.p, (const float*)dq.p, (const uint16_t*)dlat.p, (const uint16_t*)dkvb.p,
                       (const int*)dstart.p, scale * 1.4426950408889634f);
        const std::vector<double> ref = absorb_output_ref(decode_ref(qlat, poisoned, at, 1, sh, scale), kvb, 1, sh);
        char what[128];
        std::snprintf(what, sizeof what, "decode fused H=%d start=%d", sh.H, at);
        report(what, out.get(), ref, 1e-4);
    }
}

// The table form of a decode partial (one token of each of N sequences, caches allocated apart, each of its own length
// with NaN rows past it) against N single-cache launches of the same partial into the same scratch tokens: the slices
// are the same work on the same rows, so partials and stats must agree bit for bit (NaN-poisoned alike, so slices that
// write nothing agree too). Then the table form's partials, merged in one launch, against the float64 reference of each
// sequence.
enum class Partial { General, H32, Wgmma };   // kimi_mla_decode_partial[_table], _h32_r512_d576, _wgmma_h32_r512_d576
static void check_decode_table(Shape sh, const std::vector<int>& starts, int splits, Partial kind) {
    const int D = sh.R + sh.P, N = int(starts.size()), MT = (sh.H + 15) / 16, G = output_blocks(sh);
    const float scale = 1.f / std::sqrt(float(sh.N + sh.P)), scale_log2 = scale * 1.4426950408889634f;
    std::vector<std::vector<uint16_t>> lats;
    std::vector<Dev<uint16_t>*> caches;
    std::vector<Dev<int>*> single_starts;
    DecodeTable table = {};
    for (int n = 0; n < N; n++) {
        lats.push_back(rand_bf16(size_t(starts[n] + 4) * D, 1.f));
        for (size_t i = size_t(starts[n] + 1) * D; i < lats[n].size(); i++) lats[n][i] = 0x7FC0;   // rows past the length: NaN
        caches.push_back(new Dev<uint16_t>(lats[n]));
        single_starts.push_back(new Dev<int>(std::vector<int>{starts[n]}));
        table.latent[n] = caches[n]->p;
    }
    std::vector<float> qlat = rand_f32(size_t(N) * sh.H * D, kind == Partial::Wgmma ? 1.f : 0.3f);
    std::vector<uint16_t> kvb = rand_bf16(size_t(sh.H) * (sh.N + sh.V) * sh.R, 0.1f);
    Dev<float> dq(qlat);
    Dev<uint16_t> dkvb(kvb);
    Dev<int> dstarts(starts);
    const size_t slice_rows = size_t(splits) * sh.H;   // one token's [S, H] partials
    Dev<float> po_one(std::vector<float>(N * slice_rows * sh.R, NAN)), pml_one(std::vector<float>(N * slice_rows * 2, NAN));
    Dev<float> po_table(std::vector<float>(N * slice_rows * sh.R, NAN)), pml_table(std::vector<float>(N * slice_rows * 2, NAN));
    const dim3 block(kind == Partial::Wgmma ? kWdThreads : kDecodeThreads);
    const size_t smem = kind == Partial::Wgmma ? decode_wgmma_smem_bytes() : decode_smem_bytes(D, MT);
    if (kind == Partial::Wgmma) {   // the caches as tensor maps
        DecodeMaps maps = {};
        for (int n = 0; n < N; n++) maps.latent[n] = latent_map(caches[n]->p, starts[n] + 4);
        for (int n = 0; n < N; n++)
            launch(kimi_mla_decode_partial_wgmma_h32_r512_d576, dim3(splits, 1), block, smem, po_one.p + n * slice_rows * sh.R,
                   pml_one.p + n * slice_rows * 2, (const float*)dq.p + size_t(n) * sh.H * D, maps.latent[n], (const int*)single_starts[n]->p,
                   sh.H, sh.R, D, scale_log2);
        launch(kimi_mla_decode_partial_table_wgmma_h32_r512_d576, dim3(splits, N), block, smem, po_table.p, pml_table.p, (const float*)dq.p,
               maps, (const int*)dstarts.p, sh.H, sh.R, D, scale_log2);
    } else {
        auto one = kind == Partial::H32 ? kimi_mla_decode_partial_h32_r512_d576 : kimi_mla_decode_partial;
        auto many = kind == Partial::H32 ? kimi_mla_decode_partial_table_h32_r512_d576 : kimi_mla_decode_partial_table;
        for (int n = 0; n < N; n++)
            launch(one, dim3(splits, 1), block, smem, po_one.p + n * slice_rows * sh.R, pml_one.p + n * slice_rows * 2,
                   (const float*)dq.p + size_t(n) * sh.H * D, (const uint16_t*)caches[n]->p, (const int*)single_starts[n]->p, sh.H, sh.R, D,
                   scale_log2);
        launch(many, dim3(splits, N), block, smem, po_table.p, pml_table.p, (const float*)dq.p, table, (const int*)dstarts.p, sh.H, sh.R, D,
               scale_log2);
    }

    const char* name = kind == Partial::Wgmma ? " wgmma h32" : kind == Partial::H32 ? " h32" : "";
    std::string lengths;
    for (int n = 0; n < N; n++) lengths += (n ? "," : "") + std::to_string(starts[n] + 1);
    const std::vector<float> a = po_one.get(), b = po_table.get(), am = pml_one.get(), bm = pml_table.get();
    const bool same = std::memcmp(a.data(), b.data(), a.size() * 4) == 0 && std::memcmp(am.data(), bm.data(), am.size() * 4) == 0;
    failures += !same;
    std::printf("%s decode table%s H=%d R=%d P=%d splits=%d lengths %s == one launch a cache (bit for bit)\n", same ? "PASS" : "FAIL", name,
                sh.H, sh.R, sh.P, splits, lengths.c_str());

    Dev<float> parts(std::vector<float>(size_t(N) * sh.H * G * sh.V, NAN)), out(std::vector<float>(size_t(N) * sh.H * sh.V, NAN));
    Dev<int> arrivals(std::vector<int>(sh.H, 0));
    launch(kimi_mla_combine_absorb_output, dim3(G, sh.H), dim3(kAbsorbThreads), absorb_output_smem_bytes(splits), out.p, parts.p,
           arrivals.p, (const float*)po_table.p, (const float*)pml_table.p, (const uint16_t*)dkvb.p, N, sh.H, sh.N, sh.V, sh.R, splits);
    std::vector<double> mixed;
    for (int n = 0; n < N; n++) {
        const std::vector<float> q(qlat.begin() + size_t(n) * sh.H * D, qlat.begin() + size_t(n + 1) * sh.H * D);
        const std::vector<double> m = decode_ref(q, lats[n], starts[n], 1, sh, scale);
        mixed.insert(mixed.end(), m.begin(), m.end());
    }
    char what[160];
    std::snprintf(what, sizeof what, "decode table%s H=%d R=%d splits=%d lengths %s, merged", name, sh.H, sh.R, splits, lengths.c_str());
    report(what, out.get(), absorb_output_ref(mixed, kvb, N, sh), kind == Partial::Wgmma ? 1e-4 : 2e-3);
    for (auto* c : caches) delete c;
    for (auto* d : single_starts) delete d;
}

static void check_absorb(Shape sh, int T) {
    const int D = sh.R + sh.P, qk = sh.N + sh.P;
    std::vector<uint16_t> kvb = rand_bf16(size_t(sh.H) * (sh.N + sh.V) * sh.R, 0.1f);
    std::vector<float> q = rand_f32(size_t(T) * sh.H * qk, 1.f);
    Dev<uint16_t> dkvb(kvb);
    Dev<float> dq(q), dqlat(std::vector<float>(size_t(T) * sh.H * D, NAN));
    launch(kimi_mla_absorb_query, dim3((sh.R + kAbsorbColumns - 1) / kAbsorbColumns, sh.H), dim3(kAbsorbThreads),
           absorb_query_smem_bytes(sh.N), dqlat.p, (const float*)dq.p, (const uint16_t*)dkvb.p, T, sh.H, sh.N, sh.P, sh.V, sh.R);
    const std::vector<float> qlat = dqlat.get();
    std::vector<double> ref(qlat.size());
    for (int t = 0; t < T; t++)
        for (int h = 0; h < sh.H; h++) {
            for (int r = 0; r < sh.R; r++) {
                double s = 0;
                for (int n = 0; n < sh.N; n++) s += double(q[size_t(t) * sh.H * qk + h * qk + n]) * bf2f(kvb[(size_t(h) * (sh.N + sh.V) + n) * sh.R + r]);
                ref[(size_t(t) * sh.H + h) * D + r] = s;
            }
            for (int i = 0; i < sh.P; i++) ref[(size_t(t) * sh.H + h) * D + sh.R + i] = q[size_t(t) * sh.H * qk + h * qk + sh.N + i];
        }
    char what[128];
    std::snprintf(what, sizeof what, "absorb query H=%d N=%d R=%d T=%d", sh.H, sh.N, sh.R, T);
    report(what, qlat, ref);
}

enum class Prefill { General, D192, Wgmma };   // kimi_mla_prefill_general, _d192_v128, _wgmma_d192_v128
static void launch_prefill(Prefill kind, float* o, const uint16_t* q, const uint16_t* kv, const uint16_t* lat, int start, int T, int H, int N,
                           int P, int V, int R, float scale_log2) {
    if (kind == Prefill::Wgmma) {
        const int L = start + T;
        const TensorMap kv_map = bf16_rows_map(kv, uint64_t(H) * (N + V), uint64_t(L), uint64_t(H) * (N + V) * 2);
        const TensorMap latent_map = bf16_rows_map(lat, uint64_t(R + P), uint64_t(L), uint64_t(R + P) * 2);
        launch(kimi_mla_prefill_wgmma_d192_v128, dim3(unsigned((T + kWgRows - 1) / kWgRows), H), dim3(kWgThreads), prefill_wgmma_smem_bytes(), o, q,
               kv_map, latent_map, start, T, H, N, P, V, R, scale_log2);
    } else
        launch(kind == Prefill::D192 ? kimi_mla_prefill_d192_v128 : kimi_mla_prefill_general, dim3(unsigned((T + kPrefillRows - 1) / kPrefillRows), H),
               dim3(kPrefillThreads),
               prefill_smem_bytes(N + P, V), o, q, kv, lat, start, T, H, N, P, V, R, scale_log2);
}

static void check_prefill(Shape sh, int start, int T, Prefill kind) {
    const int L = start + T, D = sh.R + sh.P, qk = sh.N + sh.P, pv = sh.N + sh.V;
    std::vector<uint16_t> q = rand_bf16(size_t(T) * sh.H * qk, 1.f);
    std::vector<uint16_t> kv = rand_bf16(size_t(L + 3) * sh.H * pv, 1.f), lat = rand_bf16(size_t(L + 3) * D, 1.f);
    for (size_t i = size_t(L) * sh.H * pv; i < kv.size(); i++) kv[i] = 0x7FC0;
    for (size_t i = size_t(L) * D; i < lat.size(); i++) lat[i] = 0x7FC0;
    const float scale = 1.f / std::sqrt(float(qk));
    Dev<float> dout(std::vector<float>(size_t(T) * sh.H * sh.V, NAN));
    Dev<uint16_t> dq(q), dkv(kv), dlat(lat);
    launch_prefill(kind, dout.p, dq.p, dkv.p, dlat.p, start, T, sh.H, sh.N, sh.P, sh.V, sh.R, scale * 1.4426950408889634f);
    const std::vector<float> o = dout.get();
    std::vector<double> ref(o.size(), 0.0);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < sh.H; h++) {
            const int len = start + t + 1;
            std::vector<double> sc(len);
            double mx = -1e300, sum = 0;
            for (int s = 0; s < len; s++) {
                double d = 0;
                for (int n = 0; n < sh.N; n++) d += double(bf2f(q[size_t(t) * sh.H * qk + h * qk + n])) * bf2f(kv[size_t(s) * sh.H * pv + h * pv + n]);
                for (int i = 0; i < sh.P; i++) d += double(bf2f(q[size_t(t) * sh.H * qk + h * qk + sh.N + i])) * bf2f(lat[size_t(s) * D + sh.R + i]);
                sc[s] = d * scale;
                mx = std::max(mx, sc[s]);
            }
            for (int s = 0; s < len; s++) { sc[s] = std::exp(sc[s] - mx); sum += sc[s]; }
            for (int s = 0; s < len; s++)
                for (int v = 0; v < sh.V; v++)
                    ref[size_t(t) * sh.H * sh.V + h * sh.V + v] += sc[s] / sum * bf2f(kv[size_t(s) * sh.H * pv + h * pv + sh.N + v]);
        }
    char what[128];
    std::snprintf(what, sizeof what, "prefill%s H=%d N=%d P=%d V=%d start=%d T=%d",
                  kind == Prefill::Wgmma ? " wgmma" : kind == Prefill::D192 ? " d192" : "", sh.H, sh.N, sh.P, sh.V, start, T);
    report(what, o, ref);
}

#ifndef KDA_EMULATE
// ---- timing (GPU only) ----------------------------------------------------------------------------------------------
__global__ void fill_bf16(uint16_t* p, size_t n, uint32_t seed) {   // hash-random values in (-1, 1)
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t x = uint32_t(i) * 2654435761u ^ seed;
        x ^= x >> 15; x *= 2246822519u; x ^= x >> 13;
        p[i] = f32_to_bf16((x >> 8) * (2.0f / 16777216.0f) - 1.0f);
    }
}
static uint16_t* random_bf16_device(size_t n, uint32_t seed) {
    uint16_t* p;
    CK(cudaMalloc(&p, n * 2));
    fill_bf16<<<1024, 256>>>(p, n, seed);
    CK(cudaGetLastError());
    return p;
}
// Median of 30 event-timed runs after 3 warm-up runs, in microseconds.
static float median_us(const std::function<void()>& work) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) work();
    std::vector<float> t;
    for (int i = 0; i < 30; i++) {
        CK(cudaEventRecord(a, g_stream)); work(); CK(cudaEventRecord(b, g_stream)); CK(cudaEventSynchronize(b));
        float ms; CK(cudaEventElapsedTime(&ms, a, b)); t.push_back(ms * 1000);
    }
    CK(cudaEventDestroy(a)); CK(cudaEventDestroy(b));
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}
// Median of 30 replays of `work` captured once as a CUDA graph (under programmatic launch, as the library's decode
// graph), in microseconds.
static float graph_us(const std::function<void()>& work) {
    g_programmatic = true;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeThreadLocal));
    work();
    CK(cudaStreamEndCapture(g_stream, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    g_programmatic = false;
    const float us = median_us([&] { CK(cudaGraphLaunch(exec, g_stream)); });
    CK(cudaGraphExecDestroy(exec)); CK(cudaGraphDestroy(graph));
    return us;
}
// The floor under every timing of one launch: a kernel that does nothing, on the decode kernels' grid.
__global__ void empty_kernel() {}
static void bench(bool decode, bool prefill) {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    CK(cudaStreamCreate(&g_stream));
    const int H = 32, N = 128, V = 128, R = 512, P = 64, D = R + P, MT = 2, splits = prop.multiProcessorCount, G = R / kAbsorbColumns;
    const float scale_log2 = 1.4426950408889634f / std::sqrt(192.f);
    std::printf("== bench on %s (%d SMs); decode tiles of %d rows, %d stages; %d slices\n", prop.name, splits, kDecodeRows, kDecodeStages, splits);
    if (decode) {
        // kvB (8.4 MB) stays in L2 across the runs, as in the C# benchmark's rows "alone".
        uint16_t* kvb = random_bf16_device(size_t(H) * (N + V) * R, 5);
        Dev<float> q(rand_f32(size_t(H) * (N + P), 1.f)), qlat(std::vector<float>(size_t(H) * D));
        Dev<float> po(std::vector<float>(size_t(splits) * H * R)), pml(std::vector<float>(size_t(splits) * H * 2));
        Dev<float> parts(std::vector<float>(size_t(H) * G * V)), o(std::vector<float>(size_t(H) * V));
        Dev<int> arrivals(std::vector<int>(H, 0));
        auto query = [&] { launch(kimi_mla_absorb_query, dim3(G, H), dim3(kAbsorbThreads), absorb_query_smem_bytes(N), qlat.p, (const float*)q.p,
                                  (const uint16_t*)kvb, 1, H, N, P, V, R); };
        auto output = [&] { launch(kimi_mla_combine_absorb_output, dim3(G, H), dim3(kAbsorbThreads), absorb_output_smem_bytes(splits), o.p, parts.p,
                                   arrivals.p, (const float*)po.p, (const float*)pml.p, (const uint16_t*)kvb, 1, H, N, V, R, splits); };
        auto empty = [&] { launch(empty_kernel, dim3(G, H), dim3(kAbsorbThreads), 0); };
        std::printf("launch floor: an empty kernel alone %5.1f us, 3 in a PDL graph %5.1f us\n", median_us(empty),
                    graph_us([&] { empty(); empty(); empty(); }));
        std::printf("absorb query alone %5.1f us\n", median_us(query));
        for (int L : {1024, 4096, 32768, 131072}) {
            uint16_t* lat = random_bf16_device(size_t(L) * D, 1);
            Dev<int> dstart(std::vector<int>{L - 1});
            auto partial = [&] { launch(kimi_mla_decode_partial_h32_r512_d576, dim3(splits, 1), dim3(kDecodeThreads), decode_smem_bytes(D, MT), po.p,
                                        pml.p, (const float*)qlat.p, (const uint16_t*)lat, (const int*)dstart.p, H, R, D, scale_log2); };
            auto partial_wgmma = [&] { launch(kimi_mla_decode_partial_wgmma_h32_r512_d576, dim3(splits, 1), dim3(kWdThreads), decode_wgmma_smem_bytes(),
                                              po.p, pml.p, (const float*)qlat.p, latent_map(lat, L), (const int*)dstart.p, H, R, D, scale_log2); };
            auto layer = [&] { query(); partial(); output(); };
            auto layer_wgmma = [&] { query(); partial_wgmma(); output(); };
            const float tp = median_us(partial), to = median_us(output), tl = median_us(layer), tg = graph_us(layer);
            const double gb = 2.0 * L * D / 1e3;   // cache bytes / 1e3 = GB/s at µs
            std::printf("decode L=%6d: partial %7.1f us (%4.0f GB/s)  merge+output %5.1f us  layer: launches %7.1f us, PDL graph %7.1f us\n", L, tp,
                        gb / tp, to, tl, tg);
            const float tw = median_us(partial_wgmma), tgw = graph_us(layer_wgmma);
            std::printf("decode L=%6d: wgmma partial %7.1f us (%4.0f GB/s)  layer: PDL graph %7.1f us\n", L, tw, gb / tw, tgw);
            CK(cudaFree(lat));
        }
        // A batched decode step's attention: B sessions' caches of L rows each, allocated apart, as B one-cache launches
        // (what the backend did before the table form) and as one table launch; the wgmma kernel, one token each.
        for (int L : {1024, 32768})
            for (int B : {4, 16}) {
                std::vector<uint16_t*> lats;
                DecodeMaps maps = {};
                for (int n = 0; n < B; n++) {
                    lats.push_back(random_bf16_device(size_t(L) * D, 10 + n));
                    maps.latent[n] = latent_map(lats[n], L);
                }
                Dev<int> dstarts(std::vector<int>(B, L - 1));
                Dev<float> bq(rand_f32(size_t(B) * H * D, 1.f));
                Dev<float> bpo(std::vector<float>(size_t(B) * splits * H * R)), bpml(std::vector<float>(size_t(B) * splits * H * 2));
                auto each = [&] {
                    for (int n = 0; n < B; n++)
                        launch(kimi_mla_decode_partial_wgmma_h32_r512_d576, dim3(splits, 1), dim3(kWdThreads), decode_wgmma_smem_bytes(),
                               bpo.p + size_t(n) * splits * H * R, bpml.p + size_t(n) * splits * H * 2, (const float*)bq.p + size_t(n) * H * D,
                               maps.latent[n], (const int*)dstarts.p + n, H, R, D, scale_log2);
                };
                auto table_launch = [&] {
                    launch(kimi_mla_decode_partial_table_wgmma_h32_r512_d576, dim3(splits, B), dim3(kWdThreads), decode_wgmma_smem_bytes(), bpo.p,
                           bpml.p, (const float*)bq.p, maps, (const int*)dstarts.p, H, R, D, scale_log2);
                };
                table_launch();   // once outside a capture: the shared-memory opt-in (launch) cannot happen inside one
                CK(cudaDeviceSynchronize());
                const float te = graph_us(each), tt = graph_us(table_launch);
                std::printf("BENCH decode_table wgmma B=%2d L=%6d: %2d launches %7.1f us, one table launch %7.1f us (PDL graphs; %4.0f GB/s)\n", B, L,
                            B, te, tt, 2.0 * B * L * D / 1e3 / tt);
                for (uint16_t* p : lats) CK(cudaFree(p));
            }
        CK(cudaFree(kvb));
    }
    // (start, T): from an empty cache, and the backend's last 8K piece of a 32K prompt.
    for (const std::pair<int, int> piece : {std::pair{0, 4096}, std::pair{0, 32768}, std::pair{24576, 8192}}) {
        if (!prefill) break;
        const int start = piece.first, T = piece.second, L = start + T;
        uint16_t *q = random_bf16_device(size_t(T) * H * 192, 2), *kv = random_bf16_device(size_t(L) * H * 256, 3),
                 *lat = random_bf16_device(size_t(L) * D, 4);
        float* o;
        CK(cudaMalloc(&o, size_t(T) * H * 128 * 4));
        const double flops = (double(L) * L - double(start) * start) / 2 * H * 320 * 2;   // the causal trapezoid
        for (Prefill kind : {Prefill::D192, Prefill::Wgmma}) {
            const float us = median_us([&] { launch_prefill(kind, o, q, kv, lat, start, T, H, 128, 64, 128, R, scale_log2); });
            std::printf("prefill %-7s start=%5d T=%5d H=32: %9.1f us  %5.1f TFLOP/s ((L^2-start^2)/2*H*320*2)\n",
                        kind == Prefill::Wgmma ? "wgmma" : "mma", start, T, us, flops / us / 1e6);
        }
        CK(cudaFree(q)); CK(cudaFree(kv)); CK(cudaFree(lat)); CK(cudaFree(o));
    }
}
#endif

#ifndef KDA_EMULATE
// --bench-fused: the one-launch decode against the three-kernel decode (query absorption, wgmma partial, merge + W_UV)
// at short caches, each alone and in PDL graphs, and how many of its clusters the device holds at once.
static void bench_fused() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    CK(cudaStreamCreate(&g_stream));
    const int H = 32, N = 128, V = 128, R = 512, P = 64, D = R + P, splits = prop.multiProcessorCount, G = R / kAbsorbColumns;
    const float scale_log2 = 1.4426950408889634f / std::sqrt(192.f);
    const size_t smem = decode_fused_smem_bytes();
    CK(cudaFuncSetAttribute(kimi_mla_decode_fused_r512_d576, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(kFusedBlocks, H / kFusedHeads);
    config.blockDim = dim3(kFusedThreads);
    config.dynamicSmemBytes = smem;
    cudaLaunchAttribute cluster = {};
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = kFusedBlocks; cluster.val.clusterDim.y = 1; cluster.val.clusterDim.z = 1;
    config.attrs = &cluster;
    config.numAttrs = 1;
    int fit = 0;
    CK(cudaOccupancyMaxActiveClusters(&fit, (void*)kimi_mla_decode_fused_r512_d576, &config));
    std::printf("== fused decode on %s (%d SMs): %zu bytes of shared memory a block, %d clusters of %d at once (%d for H = 32)\n", prop.name,
                splits, smem, fit, kFusedBlocks, H / kFusedHeads);
    uint16_t* kvb = random_bf16_device(size_t(H) * (N + V) * R, 5);
    Dev<float> q(rand_f32(size_t(H) * (N + P), 1.f)), qlat(std::vector<float>(size_t(H) * D));
    Dev<float> po(std::vector<float>(size_t(splits) * H * R)), pml(std::vector<float>(size_t(splits) * H * 2));
    Dev<float> parts(std::vector<float>(size_t(H) * G * V)), o(std::vector<float>(size_t(H) * V));
    Dev<int> arrivals(std::vector<int>(H, 0));
    for (int L : {64, 1024, 1408}) {
        uint16_t* lat = random_bf16_device(size_t(L) * D, 1);
        Dev<int> dstart(std::vector<int>{L - 1});
        auto query = [&] { launch(kimi_mla_absorb_query, dim3(G, H), dim3(kAbsorbThreads), absorb_query_smem_bytes(N), qlat.p, (const float*)q.p,
                                  (const uint16_t*)kvb, 1, H, N, P, V, R); };
        auto partial = [&] { launch(kimi_mla_decode_partial_wgmma_h32_r512_d576, dim3(splits, 1), dim3(kWdThreads), decode_wgmma_smem_bytes(),
                                    po.p, pml.p, (const float*)qlat.p, latent_map(lat, L), (const int*)dstart.p, H, R, D, scale_log2); };
        auto output = [&] { launch(kimi_mla_combine_absorb_output, dim3(G, H), dim3(kAbsorbThreads), absorb_output_smem_bytes(splits), o.p, parts.p,
                                   arrivals.p, (const float*)po.p, (const float*)pml.p, (const uint16_t*)kvb, 1, H, N, V, R, splits); };
        auto fused = [&] {
            launch_cluster(kimi_mla_decode_fused_r512_d576, kFusedBlocks, dim3(kFusedBlocks, H / kFusedHeads), dim3(kFusedThreads), smem, o.p,
                           (const float*)q.p, (const uint16_t*)lat, (const uint16_t*)kvb, (const int*)dstart.p, scale_log2);
        };
        // Alone first: the shared-memory opt-ins happen there, outside the captures.
        const float three_alone = median_us([&] { query(); partial(); output(); }), fused_alone = median_us(fused);
        const float three = graph_us([&] { for (int i = 0; i < 4; i++) { query(); partial(); output(); } }) / 4;
        const float one = graph_us([&] { for (int i = 0; i < 4; i++) fused(); }) / 4;
        std::printf("BENCH L=%5d: three kernels alone %6.1f us, in a PDL graph %6.1f us a layer | fused alone %6.1f us, in a PDL graph %6.1f us\n",
                    L, three_alone, three, fused_alone, one);
        CK(cudaFree(lat));
    }
    CK(cudaFree(kvb));
}
#endif

// --quick: what CI runs (KimiLinear.Tests' MlaKernelEmulatorTests, under a minute); without it, two longer
// wgmma decode cases too.
#ifndef KDA_EMULATE
// --profile-decode L: the wgmma decode partial at a cache of L rows, one slice an SM, launched twice (the second is the
// one to profile: ncu --launch-skip 1 --launch-count 1 -k regex:decode_partial_wgmma).
static void profile_decode(int L) {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    const int H = 32, R = 512, D = 576, splits = prop.multiProcessorCount;
    const float scale_log2 = 1.4426950408889634f / std::sqrt(192.f);
    uint16_t* lat = random_bf16_device(size_t(L) * D, 1);
    Dev<float> qlat(rand_f32(size_t(H) * D, 1.f));
    Dev<float> po(std::vector<float>(size_t(splits) * H * R)), pml(std::vector<float>(size_t(splits) * H * 2));
    Dev<int> dstart(std::vector<int>{L - 1});
    for (int i = 0; i < 2; i++)
        launch(kimi_mla_decode_partial_wgmma_h32_r512_d576, dim3(splits, 1), dim3(kWdThreads), decode_wgmma_smem_bytes(), po.p, pml.p,
               (const float*)qlat.p, latent_map(lat, L), (const int*)dstart.p, H, R, D, scale_log2);
    CK(cudaDeviceSynchronize());
    CK(cudaFree(lat));
    std::printf("profiled: wgmma decode partial, L = %d, %d slices\n", L, splits);
}
#endif

int main(int argc, char** argv) {
#ifndef KDA_EMULATE
    if (argc > 1 && std::strcmp(argv[1], "--bench-fused") == 0) {
        bench_fused();
        return 0;
    }
    if (argc > 2 && std::strcmp(argv[1], "--profile-decode") == 0) {
        profile_decode(std::atoi(argv[2]));
        return 0;
    }
#endif
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const Shape tiny{4, 32, 16, 32, 64}, full{32, 128, 64, 128, 512};
    check_absorb(tiny, 3);
    check_absorb({3, 32, 16, 32, 192}, 5);
    check_absorb(full, 1);
    check_absorb(full, 16);                    // four passes of 4 tokens over the held W_UK
    check_absorb({2, 160, 16, 144, 200}, 7);   // N > 128 (rows past the held ones), R not a multiple of 128
    check_decode(tiny, 0, 1, 5);
    check_decode(tiny, 5, 3, 5);
    check_decode(tiny, 300, 2, 3);
    check_decode({20, 32, 16, 32, 128}, 37, 2, 3);
    // Slice edges: one exact 48-row tile, one row past it, 64 rows, T = 16 with slices ending inside a tile, and an
    // 8-tile slice wrapping the 3-slot ring.
    check_decode(tiny, 47, 1, 2);
    check_decode(tiny, 48, 1, 2);
    check_decode(tiny, 63, 1, 2);
    check_decode(tiny, 64, 1, 2);
    check_decode(tiny, 127, 2, 2);
    check_decode(tiny, 200, 16, 3);
    check_decode(tiny, 700, 1, 2);
    check_prefill(tiny, 0, 37, Prefill::General);
    check_prefill(tiny, 5, 3, Prefill::General);
    check_prefill({2, 24, 8, 40, 64}, 70, 67, Prefill::General);
    for (Prefill kind : {Prefill::D192, Prefill::Wgmma}) {
        check_prefill({2, 128, 64, 128, 512}, 9, 20, kind);
        check_prefill({1, 128, 64, 128, 512}, 100, 200, kind);   // two query tiles, the 3-stage ring wrapping, warps skipping tiles
    }
    check_prefill({1, 128, 64, 128, 512}, 0, 70, Prefill::Wgmma);     // one query tile: the last two warpgroups' rows past T
    check_prefill({1, 128, 64, 128, 512}, 3, 150, Prefill::Wgmma);    // the third warpgroup's rows past T
    check_prefill({1, 128, 64, 128, 512}, 250, 330, Prefill::Wgmma);  // 2 query tiles, 9 key tiles: the ring wraps thrice
    check_decode(full, 40, 1, 2);
    check_decode(full, 500, 3, 2);   // five 48-row tiles a slice: the 3-slot ring wraps
    check_decode({32, 128, 48, 128, 512}, 130, 2, 2);   // H = 32, R = 512 but D = 560: the general kernel
    check_decode({2, 32, 16, 144, 192}, 70, 3, 5);     // V > 128 (rows past the held W_UV), R = 192: a half-used second block
    check_decode(full, 40, 5, 3);                       // five tokens through the merge, odd slice count
    // The Hopper decode kernel: L = 1 (one row, 63 masked), 47, 1000 and 2 slices (8 tiles: the 2-stage ring wraps
    // thrice, the last tile partial), more slices than rows, T = 3 and 16 (each token's slices end elsewhere).
    check_decode_wgmma(0, 1, 2);
    check_decode_wgmma(46, 1, 3);
    check_decode_wgmma(999, 1, 2);
    check_decode_wgmma(5, 3, 7);
    check_decode_wgmma(120, 16, 2);
    // The table forms: caches of different lengths, some shorter than the slice count (empty slices), one sequence
    // alone, and a full table of 16 (the scratch's tokens) for the general kernel.
    check_decode_table(tiny, {0, 47, 5, 300, 2}, 5, Partial::General);
    check_decode_table({20, 32, 16, 32, 128}, {37}, 3, Partial::General);
    check_decode_table(tiny, {3, 0, 1, 90, 48, 7, 63, 64, 2, 11, 200, 4, 5, 130, 9, 1}, 3, Partial::General);
    check_decode_table(full, {40, 0, 130, 3}, 3, Partial::H32);
    check_decode_table(full, {0, 70, 2, 150}, 5, Partial::Wgmma);
    // The one-launch short-cache decode: a cache of 1 row (7 empty slices) and 2, slices shorter than a k16 step,
    // odd slice lengths (the zero-filled rows up to 16), the appended row at a slice's first and last row, and the
    // longest cache it takes (8 slices of 176 rows: the two calls end at 1,407 and 1,408 rows).
    check_decode_fused(4, 0);
    check_decode_fused(4, 20);
    check_decode_fused(4, 135);
    check_decode_fused(4, 1406);
    if (!quick) {
        check_decode_fused(32, 1000);
        check_decode_wgmma(300, 3, 2);
        check_decode_wgmma(2000, 1, 3);
    }
    std::printf("%d failed\n", failures);
#ifndef KDA_EMULATE
    if (argc > 1 && std::strncmp(argv[1], "--bench", 7) == 0)
        bench(std::strcmp(argv[1], "--bench-prefill") != 0, std::strcmp(argv[1], "--bench-decode") != 0);
#endif
    return failures != 0;
}
