// kda_harness.cu — development harness for kernels/kda/kda.cu (llm.c dev/cuda style): validate every kernel against a
// float64 CPU reference of the same math, then time it with CUDA events.
//
//   GPU:  nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xcompiler -fopenmp -o kda_harness
//              kernels/kda/tests/kda_harness.cu && ./kda_harness [--bench | --bench-prefill | --bench-decode | --bench-prepare] [fixture dir]
//   CPU:  g++ -O2 -std=c++17 -fopenmp -DKDA_EMULATE -x c++ -o kda_emu kernels/kda/tests/kda_harness.cu && ./kda_emu
//         (runs the kernels on the CUDA emulator of cuda_emu.h: checks logic, barriers and indexing, not speed)
//
// Checks: the golden kda_ops cases (fp32, ≤ 1e-5 relative), random packed variable-length batches with odd lengths
// (fp32 ≤ 1e-5, bf16 ≤ 1e-3 against the reference rounded to bf16), a packed batch equal to separate calls, NaN-poisoned
// input tails / scratch / output tails, the fused decode step over several tokens, the table decode step over separate
// per-sequence buffers equal to single-sequence steps, and prefill followed by decode steps equal to the reference and
// to one long prefill. Error = ‖out − ref‖ / ‖ref‖; any NaN fails.
#include "../kda.cu"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#define CK(x)                                                                                                         \
    do {                                                                                                              \
        cudaError_t e_ = (x);                                                                                         \
        if (e_ != cudaSuccess) {                                                                                      \
            std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #x, __FILE__, __LINE__, cudaGetErrorString(e_));     \
            std::exit(2);                                                                                             \
        }                                                                                                             \
    } while (0)

static cudaStream_t g_stream;
#ifdef KDA_EMULATE
#define LAUNCH(kern, grid, block, smem, ...) emu_launch(kern, grid, block, smem, __VA_ARGS__)
#else
#define LAUNCH(kern, grid, block, smem, ...) kern<<<grid, block, smem, g_stream>>>(__VA_ARGS__)
#endif
#define CHECK_LAUNCH() CK(cudaGetLastError())

// The decode step's blocks G (kda.cu: each steps the items b, b + G, ...): 5 in the checks, so that blocks step
// several items, unevenly; one a multiprocessor (KdaKernels.DecodeBlocks) in the benchmarks.
static int g_decode_blocks = 5;
static int g_sms = 132;   // the card's multiprocessors (main sets it; the emulator has none)
static dim3 decode_grid(int H, int N) { return dim3(std::min(H * N, g_decode_blocks)); }

using bf16 = __nv_bfloat16;

// ---- host bf16 ------------------------------------------------------------------------------------------------------
static uint16_t f2bf(float f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}
static float bf2f(uint16_t b) { uint32_t u = uint32_t(b) << 16; float f; std::memcpy(&f, &u, 4); return f; }
template <typename Tin> static float quant(float x) { return std::is_same<Tin, bf16>::value ? bf2f(f2bf(x)) : x; }
template <typename Tin> static void quant_all(std::vector<float>& v) { for (float& x : v) x = quant<Tin>(x); }

// ---- device buffers (owned by the tests; freed at the end of each test) ---------------------------------------------
struct DevPool {
    std::vector<void*> ptrs;
    ~DevPool() { for (void* p : ptrs) cudaFree(p); }
    template <typename T> T* alloc(size_t n) { T* p; CK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T))); ptrs.push_back(p); return p; }
    // Uploads h as Tin followed by `tail` NaN elements (poison that no kernel may read).
    template <typename Tin> Tin* upload(const std::vector<float>& h, size_t tail = 0) {
        Tin* d = alloc<Tin>(h.size() + tail);
        if (std::is_same<Tin, bf16>::value) {
            std::vector<uint16_t> b(h.size() + tail, 0x7fc0);
            for (size_t i = 0; i < h.size(); ++i) b[i] = f2bf(h[i]);
            CK(cudaMemcpy(d, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
        } else {
            std::vector<float> f(h); f.resize(h.size() + tail, NAN);
            CK(cudaMemcpy(d, f.data(), f.size() * 4, cudaMemcpyHostToDevice));
        }
        return d;
    }
    int* upload_int(const std::vector<int>& h) { int* d = alloc<int>(h.size()); CK(cudaMemcpy(d, h.data(), h.size() * 4, cudaMemcpyHostToDevice)); return d; }
};
template <typename Tin> static std::vector<float> download(const Tin* d, size_t n) {
    std::vector<float> out(n);
    if (std::is_same<Tin, bf16>::value) {
        std::vector<uint16_t> b(n);
        CK(cudaMemcpy(b.data(), d, n * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < n; ++i) out[i] = bf2f(b[i]);
    } else {
        CK(cudaMemcpy(out.data(), d, n * 4, cudaMemcpyDeviceToHost));
    }
    return out;
}

// Host floats into an existing device buffer of Tin.
template <typename Tin> static void copy_in(Tin* d, const std::vector<float>& h) {
    if (std::is_same<Tin, bf16>::value) {
        std::vector<uint16_t> b(h.size());
        for (size_t i = 0; i < h.size(); ++i) b[i] = f2bf(h[i]);
        CK(cudaMemcpy(d, b.data(), b.size() * 2, cudaMemcpyHostToDevice));
    } else {
        CK(cudaMemcpy(d, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
    }
}

// ---- checking -------------------------------------------------------------------------------------------------------
static int g_pass = 0, g_fail = 0;
static double rel_err(const std::vector<float>& out, const std::vector<double>& ref, size_t n = SIZE_MAX) {
    n = std::min(n, out.size());
    double num = 0, den = 0;
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(out[i])) return NAN;
        const double d = out[i] - ref[i];
        num += d * d; den += ref[i] * ref[i];
    }
    return std::sqrt(num / std::max(den, 1e-300));
}
static double rel_err_f(const std::vector<float>& out, const std::vector<float>& ref) {
    std::vector<double> r(ref.begin(), ref.end());
    return rel_err(out, r);
}
// bf16 outputs: also compare against the reference rounded to bf16 (the output's own rounding is ~1.5e-3 relative).
template <typename Tin> static std::vector<double> as_stored(const std::vector<double>& ref) {
    std::vector<double> r(ref);
    for (double& x : r) x = quant<Tin>(float(x));
    return r;
}
// The bf16 scan the prefill runs: the 32-column one (chunk_prefill) or, where the image has it, the wide one
// (wide_scan); the checks run with both, the wide one's tagged.
static bool g_wide_scan = false;
// random_gates' gates times this, or (g_gate_min < 0) uniform in (g_min, −0.001) instead: these set how the bf16
// prefill's intra blocks take their chunks (kda.cu: steep, mild (kMildRange) or whole-mild (kWholeMildRange)). Scale 1
// makes most chunks steep, some mild or whole-mild (H3 T640: 74, 1 and 9 of its two calls' 84 blocks, emulator);
// scale 0.02 all whole-mild; uniform in (−2.5, −0.001) every 64-token chunk mild and none whole-mild (shorter ones
// may be; bench_prefill's "mild"). Tagged when not scale 1.
static float g_gate_scale = 1.f, g_gate_min = 0.f;
static std::string tagged(const std::string& name) {
    char gates[48] = "";
    if (g_gate_min < 0.f) snprintf(gates, sizeof gates, "[gates U(%g, 0)] ", g_gate_min);
    else if (g_gate_scale != 1.f) snprintf(gates, sizeof gates, "[gates x%g] ", g_gate_scale);
    return (g_wide_scan ? "[wide scan] " : "") + std::string(gates) + name;
}
static void check(const std::string& name, double err, double tol) {
    const bool ok = err <= tol;   // NaN fails
    (ok ? g_pass : g_fail)++;
    std::printf("%s %-58s rel %.3e (tol %.0e)\n", ok ? "PASS" : "FAIL", tagged(name).c_str(), err, tol);
}
static void check_bool(const std::string& name, bool ok) {
    (ok ? g_pass : g_fail)++;
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", tagged(name).c_str());
}
template <typename Tin> static const char* tname() { return std::is_same<Tin, bf16>::value ? "bf16" : "f32"; }
template <typename Tin> static double tol() { return std::is_same<Tin, bf16>::value ? 1e-3 : 1e-5; }

// ---- CPU reference (float64) ----------------------------------------------------------------------------------------
// One token of one head: S ← Diag(exp g)S; r = v − Sᵀk; S += k (β r)ᵀ; o = Sᵀq.  S [K][V].
template <typename FV, typename FG>
static void ref_head_token(int K, int V, const double* q, const double* k, const FV* v, const FG* g, double beta, double* S, double* o) {
    std::vector<double> r(V, 0.0);
    for (int d = 0; d < K; ++d) {
        const double a = std::exp(double(g[d]));
        for (int j = 0; j < V; ++j) { S[d * V + j] *= a; r[j] += S[d * V + j] * double(k[d]); }
    }
    for (int j = 0; j < V; ++j) r[j] = beta * (double(v[j]) - r[j]);
    for (int j = 0; j < V; ++j) o[j] = 0;
    for (int d = 0; d < K; ++d)
        for (int j = 0; j < V; ++j) { S[d * V + j] += double(k[d]) * r[j]; o[j] += S[d * V + j] * double(q[d]); }
}
// L2 normalisation of one raw q or k row of length K (eps inside the sqrt; q also scaled by K^-½), in float64.
static std::vector<double> l2norm(const float* x, int K, bool is_q) {
    double ss = 0;
    for (int d = 0; d < K; ++d) ss += double(x[d]) * x[d];
    const double s = 1.0 / std::sqrt(ss + 1e-6) * (is_q ? 1.0 / std::sqrt(double(K)) : 1.0);
    std::vector<double> out(K);
    for (int d = 0; d < K; ++d) out[d] = x[d] * s;
    return out;
}
// A packed batch through the recurrence: raw q, k [T,H,K] (normalised here), v [T,H,V], g [T,H,K], beta [T,H];
// S [N,H,K,V] in/out; o [T,H,V].
static void ref_core(const std::vector<int>& lens, int H, int K, int V, const std::vector<float>& q, const std::vector<float>& k,
    const std::vector<float>& v, const std::vector<float>& g, const std::vector<float>& beta, std::vector<double>& S,
    std::vector<double>& o) {
    int t0 = 0;
    for (size_t n = 0; n < lens.size(); ++n) {
#pragma omp parallel for
        for (int h = 0; h < H; ++h)
            for (int t = t0; t < t0 + lens[n]; ++t) {
                const size_t xk = (size_t(t) * H + h) * K, xv = (size_t(t) * H + h) * V;
                const std::vector<double> qh = l2norm(&q[xk], K, true), kh = l2norm(&k[xk], K, false);
                ref_head_token(K, V, qh.data(), kh.data(), &v[xv], &g[xk], beta[size_t(t) * H + h], &S[(n * H + h) * K * V], &o[xv]);
            }
        t0 += lens[n];
    }
}
// The decode layer's parameters (as stored: quantized to Tin where the kernel reads Tin).
struct LayerParams {
    int H, K, V;
    float rms_eps = 1e-5f;
    std::vector<float> wq, wk, wv, a_log, dt_bias, wnorm;   // [HK,4], [HK,4], [HV,4], [H], [HK], [V]
};
static double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
static double softplus(double x) { return x > 20 ? x : std::log1p(std::exp(x)); }
// One token of the fused decode step for one sequence: windows [3][C] (as stored) shift; S [H][K][V]; y [HV].
template <typename Tin>
static void ref_decode_token(const LayerParams& P, const float* pq, const float* pk, const float* pv, const float* pf,
    const float* pb, const float* pz, std::vector<float>& wq_win, std::vector<float>& wk_win, std::vector<float>& wv_win,
    double* S, double* y) {
    const int H = P.H, K = P.K, V = P.V, HK = H * K, HV = H * V;
    auto conv = [&](const std::vector<float>& w, std::vector<float>& win, const float* x, int C, std::vector<double>& out) {
        out.resize(C);
        for (int c = 0; c < C; ++c) {
            double acc = double(w[4 * c]) * win[c] + double(w[4 * c + 1]) * win[C + c] + double(w[4 * c + 2]) * win[2 * C + c] + double(w[4 * c + 3]) * x[c];
            out[c] = quant<Tin>(float(acc * sigm(acc)));
            win[c] = win[C + c]; win[C + c] = win[2 * C + c]; win[2 * C + c] = x[c];
        }
    };
    std::vector<double> q, k, v;
    conv(P.wq, wq_win, pq, HK, q); conv(P.wk, wk_win, pk, HK, k); conv(P.wv, wv_win, pv, HV, v);
    std::vector<double> g(K), o(V);
    for (int h = 0; h < H; ++h) {
        double qs = 0, ks = 0;
        for (int d = 0; d < K; ++d) { qs += q[h * K + d] * q[h * K + d]; ks += k[h * K + d] * k[h * K + d]; }
        const double qn = 1.0 / std::sqrt(qs + 1e-6) / std::sqrt(double(K)), kn = 1.0 / std::sqrt(ks + 1e-6);
        std::vector<double> qh(K), kh(K);
        for (int d = 0; d < K; ++d) {
            qh[d] = q[h * K + d] * qn; kh[d] = k[h * K + d] * kn;
            g[d] = -std::exp(double(P.a_log[h])) * softplus(double(pf[h * K + d]) + P.dt_bias[h * K + d]);
        }
        ref_head_token(K, V, qh.data(), kh.data(), &v[h * V], g.data(), sigm(pb[h]), S + size_t(h) * K * V, o.data());
        double ms = 0;
        for (int j = 0; j < V; ++j) ms += o[j] * o[j];
        const double rs = 1.0 / std::sqrt(ms / V + P.rms_eps);
        for (int j = 0; j < V; ++j) y[h * V + j] = o[j] * rs * P.wnorm[j] * sigm(pz[h * V + j]);
    }
}

// ---- random inputs --------------------------------------------------------------------------------------------------
static std::mt19937_64 g_rng(20261127);
static std::vector<float> randn(size_t n, double sd = 1.0, double mean = 0.0) {
    std::normal_distribution<double> dist(mean, sd);
    std::vector<float> v(n);
    for (float& x : v) x = float(dist(g_rng));
    return v;
}
static std::vector<float> randu(size_t n, double lo, double hi) {
    std::uniform_real_distribution<double> dist(lo, hi);
    std::vector<float> v(n);
    for (float& x : v) x = float(dist(g_rng));
    return v;
}
// Realistic gates: g = −exp(A_log)·softplus(f + dt_bias) with A = exp(A_log) ∈ [1, 16] and dt_bias spread so decays
// range from barely-forgetting to strong; every 29th token of head 0 forgets almost everything (g = −60). All times
// g_gate_scale; or, while g_gate_min < 0, uniform in (g_gate_min, −0.001) instead.
static std::vector<float> random_gates(int T, int H, int K) {
    if (g_gate_min < 0.f) return randu(size_t(T) * H * K, g_gate_min, -0.001);
    std::vector<float> a_log = randu(H, 0.0, std::log(16.0)), dtb = randu(size_t(H) * K, -6.0, 1.0), f = randn(size_t(T) * H * K);
    std::vector<float> g(f.size());
    for (int t = 0; t < T; ++t)
        for (int h = 0; h < H; ++h)
            for (int d = 0; d < K; ++d) {
                const size_t x = (size_t(t) * H + h) * K + d;
                g[x] = g_gate_scale * ((h == 0 && t % 29 == 28) ? -60.0f : float(-std::exp(double(a_log[h])) * softplus(double(f[x]) + dtb[h * K + d])));
            }
    return g;
}
static std::vector<float> random_beta(size_t n) {
    std::vector<float> b = randn(n);
    for (float& x : b) x = float(sigm(x));
    return b;
}

// ---- kernels by dtype -----------------------------------------------------------------------------------------------
template <typename Tin> struct Kern;
template <> struct Kern<bf16> {
    static constexpr auto decode = kimi_kda_decode_step_bf16;
    static constexpr auto decode_table = kimi_kda_decode_step_table_bf16;
    static constexpr auto intra = kimi_kda_chunk_intra_bf16;
    static constexpr auto prefill = kimi_kda_chunk_prefill_bf16;
    static constexpr auto prefill_wide = kimi_kda_chunk_prefill_wide_bf16;
    static constexpr auto prepare = kimi_kda_prepare_bf16;
    static constexpr auto window = kimi_kda_conv_window_update_bf16;
};
template <> struct Kern<float> {
    static constexpr auto decode = kimi_kda_decode_step_f32;
    static constexpr auto decode_table = kimi_kda_decode_step_table_f32;
    static constexpr auto intra = kimi_kda_chunk_intra_f32;
    static constexpr auto prefill = kimi_kda_chunk_prefill_f32;
    static constexpr auto prefill_wide = nullptr;
    static constexpr auto prepare = kimi_kda_prepare_f32;
    static constexpr auto window = kimi_kda_conv_window_update_f32;
};

// Device-side prefill problem: offsets, inputs with NaN tails, NaN-filled scratch, NaN-poisoned output tail.
template <typename Tin> struct PrefillDev {
    int H, K, V, N, T, NC;
    int *cu, *co;
    Tin *q, *k, *v, *o;
    float *g, *beta, *state, *w, *u, *a, *qg, *kg, *gam;
    PrefillDev(DevPool& pool, const std::vector<int>& lens, int H_, int K_, int V_) : H(H_), K(K_), V(V_) {
        N = int(lens.size());
        std::vector<int> cuh(N + 1, 0), coh(N + 1, 0);
        for (int n = 0; n < N; ++n) { cuh[n + 1] = cuh[n] + lens[n]; coh[n + 1] = coh[n] + (lens[n] + kda::kChunk - 1) / kda::kChunk; }
        T = cuh[N]; NC = coh[N];
        cu = pool.upload_int(cuh); co = pool.upload_int(coh);
        const size_t pad = size_t(T + kda::kChunk) * H;   // one chunk of NaN past the last token
        q = pool.alloc<Tin>(pad * K); k = pool.alloc<Tin>(pad * K); v = pool.alloc<Tin>(pad * V);
        g = pool.alloc<float>(pad * K); beta = pool.alloc<float>(pad); state = pool.alloc<float>(size_t(N) * H * K * V);
        o = pool.upload<Tin>(std::vector<float>(), pad * V);   // all NaN until written
        const size_t ch = size_t(std::max(NC, 1)) * H;
        const size_t kp = kda::chunk_prefill_kpad(K);   // bf16 inputs: W, QG, KG rows padded to KP
        w = pool.alloc<float>(ch * 64 * kp); u = pool.alloc<float>(ch * 64 * V); a = pool.alloc<float>(ch * 64 * 64);
        qg = pool.alloc<float>(ch * 64 * kp); kg = pool.alloc<float>(ch * 64 * kp); gam = pool.alloc<float>(ch * K);
        for (float* p : {g, beta}) CK(cudaMemset(p, 0xff, (p == beta ? pad : pad * K) * 4));   // 0xffffffff is a NaN
        CK(cudaMemset(q, 0xff, pad * K * sizeof(Tin))); CK(cudaMemset(k, 0xff, pad * K * sizeof(Tin))); CK(cudaMemset(v, 0xff, pad * V * sizeof(Tin)));
        CK(cudaMemset(w, 0xff, ch * 64 * kp * 4)); CK(cudaMemset(u, 0xff, ch * 64 * V * 4)); CK(cudaMemset(a, 0xff, ch * 64 * 64 * 4));
        CK(cudaMemset(qg, 0xff, ch * 64 * kp * 4)); CK(cudaMemset(kg, 0xff, ch * 64 * kp * 4)); CK(cudaMemset(gam, 0xff, ch * K * 4));
        CK(cudaFuncSetAttribute(Kern<Tin>::intra, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kda::chunk_intra_smem_bytes(K, V))));
        CK(cudaFuncSetAttribute(Kern<Tin>::prefill, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kda::chunk_prefill_smem_bytes<Tin>(K))));
        if constexpr (kHasWide)
            CK(cudaFuncSetAttribute(Kern<Tin>::prefill_wide, cudaFuncAttributeMaxDynamicSharedMemorySize,
                int(kda::wide_scan_smem_bytes(kda::chunk_prefill_kpad(K)))));
    }
    static constexpr bool kHasWide = std::is_same<Tin, bf16>::value;
    // Bytes of the scratch between the kernels as allocated above (w, qg, kg: 64 × KP, u: 64 × V, a: 64 × 64, gam: K
    // floats a chunk and head; bf16 inputs keep hi/lo planes in fp32's room): 144.5 KiB a chunk and head at K = V = 128.
    double scratch_bytes() const { return double(NC) * H * (3.0 * 64 * kda::chunk_prefill_kpad(K) + 64.0 * V + 64.0 * 64 + K) * 4; }
    // Host inputs for the first T tokens (the NaN tail stays) and the initial state.
    void load(const std::vector<float>& hq, const std::vector<float>& hk, const std::vector<float>& hv,
        const std::vector<float>& hg, const std::vector<float>& hb, const std::vector<float>& hstate) {
        copy_in(q, hq); copy_in(k, hk); copy_in(v, hv); copy_in(g, hg); copy_in(beta, hb); copy_in(state, hstate);
    }
    void run() { run_intra(); run_scan(); }
    void run_intra() {
        if (NC > 0) {
            auto intra = Kern<Tin>::intra;
            LAUNCH(intra, dim3(NC * H), dim3(kda::kIntraThreads), kda::chunk_intra_smem_bytes(K, V), H, K, V, N,
                (const int*)cu, (const int*)co, (const Tin*)q, (const Tin*)k, (const Tin*)v, (const float*)g, (const float*)beta, w, u, a, qg, kg, gam);
            CHECK_LAUNCH();
        }
    }
    void run_scan() { run_scan(g_wide_scan); }
    void run_scan(bool wide) {   // the launches of kda.cu's LAUNCH GEOMETRY
        if constexpr (kHasWide) {
            if (wide) {
                auto prefill = Kern<Tin>::prefill_wide;
                LAUNCH(prefill, dim3((V + kda::kWideScanCols - 1) / kda::kWideScanCols, H, N), dim3(kda::kWideScanThreads),
                    kda::wide_scan_smem_bytes(kda::chunk_prefill_kpad(K)), H, K, V, (const int*)cu, (const int*)co, (const float*)w,
                    (const float*)u, (const float*)a, (const float*)qg, (const float*)kg, (const float*)gam, state, o);
                CHECK_LAUNCH();
                return;
            }
        }
        auto prefill = Kern<Tin>::prefill;
        LAUNCH(prefill, dim3(V / kda::kPrefillCols, H, N), dim3(kda::kPrefillThreads), kda::chunk_prefill_smem_bytes<Tin>(K),
            H, K, V, (const int*)cu, (const int*)co, (const float*)w, (const float*)u, (const float*)a, (const float*)qg,
            (const float*)kg, (const float*)gam, state, o);
        CHECK_LAUNCH();
    }
};

// ---- tests ----------------------------------------------------------------------------------------------------------
// Minimal safetensors reader for the fp32 golden fixture.
struct SafeTensors {
    std::string header;
    std::vector<char> data;
    bool open(const std::string& path) {
        std::ifstream f(path, std::ios::binary);
        if (!f) return false;
        uint64_t n = 0;
        f.read(reinterpret_cast<char*>(&n), 8);
        header.resize(n);
        f.read(&header[0], n);
        data.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
        return true;
    }
    std::vector<float> get(const std::string& name) {
        const size_t at = header.find("\"" + name + "\"");
        if (at == std::string::npos) { std::fprintf(stderr, "missing tensor %s\n", name.c_str()); std::exit(2); }
        const size_t off = header.find("data_offsets", at);
        const size_t lb = header.find('[', off);
        long a = 0, b = 0;
        std::sscanf(header.c_str() + lb, "[%ld,%ld]", &a, &b);
        std::vector<float> out((b - a) / 4);
        std::memcpy(out.data(), data.data() + a, b - a);
        return out;
    }
};

static void test_golden(const std::string& dir) {
    SafeTensors st;
    if (!st.open(dir + "/kda_ops.safetensors")) { check_bool("golden fixture found at " + dir, false); return; }
    const int cases[6][5] = {{2, 1, 2, 64, 64}, {1, 63, 2, 64, 64}, {2, 64, 2, 64, 64}, {1, 65, 3, 64, 32}, {1, 300, 2, 128, 128}, {1, 200, 1, 128, 128}};
    for (int c = 0; c < 6; ++c) {
        const int B = cases[c][0], T = cases[c][1], H = cases[c][2], K = cases[c][3], V = cases[c][4];
        const std::string p = "kda" + std::to_string(c) + ".";
        std::vector<float> q = st.get(p + "q"), k = st.get(p + "k"), v = st.get(p + "v"), g = st.get(p + "g"), b = st.get(p + "beta");
        std::vector<float> s0 = st.get(p + "initial_state"), o_ref = st.get(p + "o"), s_ref = st.get(p + "final_state");
        DevPool pool;
        PrefillDev<float> dev(pool, std::vector<int>(B, T), H, K, V);
        dev.load(q, k, v, g, b, s0);
        dev.run();
        CK(cudaDeviceSynchronize());
        const std::vector<float> o = download(dev.o, size_t(B) * T * H * V), s = download(dev.state, s0.size());
        char name[96];
        std::snprintf(name, sizeof name, "golden kda%d (B%d T%d H%d K%d V%d) prefill f32 o", c, B, T, H, K, V);
        check(name, rel_err_f(o, o_ref), 1e-5);
        std::snprintf(name, sizeof name, "golden kda%d prefill f32 final state", c);
        check(name, rel_err_f(s, s_ref), 1e-5);
    }
}

// Random packed batch with odd lengths through the chunked prefill; packed vs separate calls; poisoned tails.
template <typename Tin> static void test_prefill_random(int H, int K, int V, const std::vector<int>& lens, bool separate) {
    int T = 0;
    for (int l : lens) T += l;
    const int N = int(lens.size());
    std::vector<float> q = randn(size_t(T) * H * K), k = randn(size_t(T) * H * K), v = randn(size_t(T) * H * V);
    std::vector<float> g = random_gates(T, H, K), b = random_beta(size_t(T) * H), s0 = randn(size_t(N) * H * K * V, 0.3);
    quant_all<Tin>(q); quant_all<Tin>(k); quant_all<Tin>(v);
    std::vector<double> S(s0.begin(), s0.end()), o_ref(size_t(T) * H * V);
    ref_core(lens, H, K, V, q, k, v, g, b, S, o_ref);

    DevPool pool;
    PrefillDev<Tin> dev(pool, lens, H, K, V);
    dev.load(q, k, v, g, b, s0);
    dev.run();
    CK(cudaDeviceSynchronize());
    const std::vector<float> o = download(dev.o, size_t(T + kda::kChunk) * H * V), s = download(dev.state, s0.size());
    char name[128];
    std::snprintf(name, sizeof name, "prefill %s H%d K%d V%d N%d T%d o", tname<Tin>(), H, K, V, N, T);
    check(name, rel_err(o, std::is_same<Tin, bf16>::value ? as_stored<Tin>(o_ref) : o_ref, size_t(T) * H * V), tol<Tin>());
    if (std::is_same<Tin, bf16>::value) std::printf("     (bf16 o against the unrounded reference: %.3e)\n", rel_err(o, o_ref, size_t(T) * H * V));
    std::snprintf(name, sizeof name, "prefill %s H%d K%d V%d N%d T%d final state", tname<Tin>(), H, K, V, N, T);
    check(name, rel_err(s, S), tol<Tin>());
    bool tail_ok = true;
    for (size_t i = size_t(T) * H * V; i < o.size(); ++i) tail_ok &= std::isnan(o[i]);
    std::snprintf(name, sizeof name, "prefill %s: output past the last token untouched", tname<Tin>());
    check_bool(name, tail_ok);

    if (separate) {   // each sequence alone must give bit-identical results
        bool same = true;
        int t0 = 0;
        for (int n = 0; n < N; ++n) {
            const int L = lens[n];
            auto slice = [&](const std::vector<float>& x, int w) { return std::vector<float>(x.begin() + size_t(t0) * H * w, x.begin() + size_t(t0 + L) * H * w); };
            std::vector<float> sn(s0.begin() + size_t(n) * H * K * V, s0.begin() + size_t(n + 1) * H * K * V);
            std::vector<float> bn(b.begin() + size_t(t0) * H, b.begin() + size_t(t0 + L) * H);
            DevPool p1;
            PrefillDev<Tin> d1(p1, {L}, H, K, V);
            d1.load(slice(q, K), slice(k, K), slice(v, V), slice(g, K), bn, sn);
            d1.run();
            CK(cudaDeviceSynchronize());
            const std::vector<float> o1 = download(d1.o, size_t(L) * H * V), s1 = download(d1.state, sn.size());
            same &= std::memcmp(o1.data(), o.data() + size_t(t0) * H * V, o1.size() * 4) == 0;
            same &= std::memcmp(s1.data(), s.data() + size_t(n) * H * K * V, s1.size() * 4) == 0;
            t0 += L;
        }
        std::snprintf(name, sizeof name, "prefill %s: packed batch bit-identical to separate calls", tname<Tin>());
        check_bool(name, same);
    }
}

// Device copy of a decode layer (parameters, per-sequence windows and state).
template <typename Tin> struct DecodeDev {
    int H, K, V, N;
    float rms_eps;
    Tin *wq, *wk, *wv, *wnorm, *cq, *ck, *cv, *pq, *pk, *pv, *pf, *pb, *pz, *y;
    float *a_log, *dt_bias, *state;
    DecodeDev(DevPool& pool, const LayerParams& P, int N_, const std::vector<float>& cqh, const std::vector<float>& ckh,
        const std::vector<float>& cvh, const std::vector<float>& sh) : H(P.H), K(P.K), V(P.V), N(N_), rms_eps(P.rms_eps) {
        wq = pool.upload<Tin>(P.wq); wk = pool.upload<Tin>(P.wk); wv = pool.upload<Tin>(P.wv); wnorm = pool.upload<Tin>(P.wnorm);
        a_log = pool.upload<float>(P.a_log); dt_bias = pool.upload<float>(P.dt_bias);
        cq = pool.upload<Tin>(cqh); ck = pool.upload<Tin>(ckh); cv = pool.upload<Tin>(cvh); state = pool.upload<float>(sh);
        const size_t HK = size_t(H) * K, HV = size_t(H) * V;
        pq = pool.alloc<Tin>(N * HK); pk = pool.alloc<Tin>(N * HK); pf = pool.alloc<Tin>(N * HK);
        pv = pool.alloc<Tin>(N * HV); pz = pool.alloc<Tin>(N * HV); pb = pool.alloc<Tin>(size_t(N) * H);
        y = pool.upload<Tin>(std::vector<float>(), N * HV);   // NaN until written
    }
    void set_token(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
        const std::vector<float>& f, const std::vector<float>& b, const std::vector<float>& z) {
        copy_in(pq, q); copy_in(pk, k); copy_in(pv, v); copy_in(pf, f); copy_in(pb, b); copy_in(pz, z);
    }
    void run() {
        auto decode = Kern<Tin>::decode;
        LAUNCH(decode, decode_grid(H, N), dim3(kda::kDecodeThreads), kda::kDecodeSmemBytes,
            H, K, V, N, rms_eps, (const Tin*)pq, (const Tin*)pk, (const Tin*)pv, (const Tin*)pf, (const Tin*)pb, (const Tin*)pz,
            (const Tin*)wq, (const Tin*)wk, (const Tin*)wv, (const float*)a_log, (const float*)dt_bias, (const Tin*)wnorm, cq, ck, cv, state, y);
        CHECK_LAUNCH();
    }
#ifndef KDA_EMULATE
    // The same step with programmatic dependent launch: its prologue (state copy, windows, parameters) may overlap the
    // previous kernel in the stream, and it waits for that kernel only before reading the new token's projections.
    void run_pdl() {
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = decode_grid(H, N);
        cfg.blockDim = dim3(kda::kDecodeThreads);
        cfg.dynamicSmemBytes = kda::kDecodeSmemBytes;
        cfg.stream = g_stream;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        CK(cudaLaunchKernelEx(&cfg, Kern<Tin>::decode, H, K, V, N, rms_eps, (const Tin*)pq, (const Tin*)pk, (const Tin*)pv,
            (const Tin*)pf, (const Tin*)pb, (const Tin*)pz, (const Tin*)wq, (const Tin*)wk, (const Tin*)wv,
            (const float*)a_log, (const float*)dt_bias, (const Tin*)wnorm, cq, ck, cv, state, y));
    }
#endif
};
// The pre-kernel's grid: channel blocks x token tiles (KdaKernels.Prepare).
static dim3 prepare_grid(int HK, int HV, int T) {
    return dim3((std::max(HK, HV) + kda::kPrepareThreads - 1) / kda::kPrepareThreads, (T + kda::kPrepareTokens - 1) / kda::kPrepareTokens);
}
// The pre-kernel and the window update on device: raw projections [T, ·] of a packed batch → prefill inputs in `pre`
// (q, k, v, g, beta), windows of `dec` advanced past the batch.
template <typename Tin> static void gpu_prepare(DevPool& pool, PrefillDev<Tin>& pre, DecodeDev<Tin>& dec,
    const std::vector<float>& rq, const std::vector<float>& rk, const std::vector<float>& rv, const std::vector<float>& rf,
    const std::vector<float>& rb) {
    const int H = pre.H, K = pre.K, V = pre.V;
    Tin *pq = pool.upload<Tin>(rq), *pk = pool.upload<Tin>(rk), *pv = pool.upload<Tin>(rv), *pf = pool.upload<Tin>(rf), *pb = pool.upload<Tin>(rb);
    auto prepare = Kern<Tin>::prepare;
    auto window = Kern<Tin>::window;
    if (pre.T > 0) {
        LAUNCH(prepare, prepare_grid(H * K, H * V, pre.T), dim3(kda::kPrepareThreads), 0, H, K, V, pre.N, (const int*)pre.cu, (const Tin*)pq,
            (const Tin*)pk, (const Tin*)pv, (const Tin*)pf, (const Tin*)pb, (const Tin*)dec.wq, (const Tin*)dec.wk,
            (const Tin*)dec.wv, (const float*)dec.a_log, (const float*)dec.dt_bias, (const Tin*)dec.cq, (const Tin*)dec.ck,
            (const Tin*)dec.cv, pre.q, pre.k, pre.v, pre.g, pre.beta);
        CHECK_LAUNCH();
    }
    const int C = std::max(H * K, H * V);
    LAUNCH(window, dim3((C + kda::kPrepareThreads - 1) / kda::kPrepareThreads, pre.N), dim3(kda::kPrepareThreads), 0,
        H, K, V, (const int*)pre.cu, (const Tin*)pq, (const Tin*)pk, (const Tin*)pv, dec.cq, dec.ck, dec.cv);
    CHECK_LAUNCH();
}

template <typename Tin> static LayerParams random_params(int H, int K, int V) {
    LayerParams P{H, K, V};
    P.wq = randn(size_t(H) * K * 4, 0.5); P.wk = randn(size_t(H) * K * 4, 0.5); P.wv = randn(size_t(H) * V * 4, 0.5);
    P.a_log = randu(H, 0.0, std::log(16.0)); P.dt_bias = randu(size_t(H) * K, -6.0, 1.0); P.wnorm = randn(V, 0.1, 1.0);
    quant_all<Tin>(P.wq); quant_all<Tin>(P.wk); quant_all<Tin>(P.wv); quant_all<Tin>(P.wnorm);
    return P;
}
struct TokenInputs { std::vector<float> q, k, v, f, b, z; };
template <typename Tin> static TokenInputs random_token(int N, int H, int K, int V) {
    TokenInputs x{randn(size_t(N) * H * K), randn(size_t(N) * H * K), randn(size_t(N) * H * V), randn(size_t(N) * H * K),
        randn(size_t(N) * H), randn(size_t(N) * H * V)};
    for (auto* p : {&x.q, &x.k, &x.v, &x.f, &x.b, &x.z}) quant_all<Tin>(*p);
    return x;
}

// Several fused decode steps of N sequences against the reference; then the windows and state carried.
template <typename Tin> static void test_decode(int N, int H, int K, int V, int steps) {
    const LayerParams P = random_params<Tin>(H, K, V);
    const size_t HK = size_t(H) * K, HV = size_t(H) * V;
    std::vector<float> cq = randn(N * 3 * HK), ck = randn(N * 3 * HK), cv = randn(N * 3 * HV), s0 = randn(size_t(N) * HV * K, 0.3);
    quant_all<Tin>(cq); quant_all<Tin>(ck); quant_all<Tin>(cv);
    DevPool pool;
    DecodeDev<Tin> dev(pool, P, N, cq, ck, cv, s0);
    std::vector<double> S(s0.begin(), s0.end()), y_ref(N * HV);
    double worst_y = 0;
    for (int step = 0; step < steps; ++step) {
        const TokenInputs x = random_token<Tin>(N, H, K, V);
        dev.set_token(x.q, x.k, x.v, x.f, x.b, x.z);
        dev.run();
        for (int n = 0; n < N; ++n) {
            std::vector<float> wq(3 * HK), wk(3 * HK), wv(3 * HV);
            for (int i = 0; i < 3; ++i) {   // this sequence's windows [3][C]
                std::copy_n(&cq[(size_t(n) * 3 + i) * HK], HK, &wq[i * HK]);
                std::copy_n(&ck[(size_t(n) * 3 + i) * HK], HK, &wk[i * HK]);
                std::copy_n(&cv[(size_t(n) * 3 + i) * HV], HV, &wv[i * HV]);
            }
            ref_decode_token<Tin>(P, &x.q[n * HK], &x.k[n * HK], &x.v[n * HV], &x.f[n * HK], &x.b[size_t(n) * H], &x.z[n * HV],
                wq, wk, wv, &S[size_t(n) * HV * K], &y_ref[n * HV]);
            for (int i = 0; i < 3; ++i) {
                std::copy_n(&wq[i * HK], HK, &cq[(size_t(n) * 3 + i) * HK]);
                std::copy_n(&wk[i * HK], HK, &ck[(size_t(n) * 3 + i) * HK]);
                std::copy_n(&wv[i * HV], HV, &cv[(size_t(n) * 3 + i) * HV]);
            }
        }
        CK(cudaDeviceSynchronize());
        const std::vector<float> y = download(dev.y, N * HV);
        const double e = rel_err(y, std::is_same<Tin, bf16>::value ? as_stored<Tin>(y_ref) : y_ref);
        worst_y = (std::isnan(e) || e > worst_y) ? e : worst_y;
        if (std::isnan(worst_y)) break;
    }
    char name[128];
    std::snprintf(name, sizeof name, "decode %s N%d H%d K%d V%d, %d steps: y (worst step)", tname<Tin>(), N, H, K, V, steps);
    check(name, worst_y, tol<Tin>());
    std::snprintf(name, sizeof name, "decode %s N%d H%d K%d V%d: state after %d steps", tname<Tin>(), N, H, K, V, steps);
    check(name, rel_err(download(dev.state, S.size()), S), tol<Tin>());
    const std::vector<float> gq = download(dev.cq, cq.size()), gk = download(dev.ck, ck.size()), gv = download(dev.cv, cv.size());
    std::snprintf(name, sizeof name, "decode %s N%d H%d K%d V%d: conv windows carried exactly", tname<Tin>(), N, H, K, V);
    check_bool(name, gq == cq && gk == ck && gv == cv);
}

// The table decode step (each sequence's windows and state a separate allocation, as sessions keep them) over N
// sequences == N single-sequence steps of the contiguous entry, bit for bit: y, the state and the windows, carried over
// several steps. The sequences are allocated in reverse order, and y has a NaN tail that must stay NaN.
template <typename Tin> static void test_decode_table(int N, int H, int K, int V, int steps) {
    const LayerParams P = random_params<Tin>(H, K, V);
    const size_t HK = size_t(H) * K, HV = size_t(H) * V, S = HV * K;
    DevPool pool;
    std::vector<std::vector<float>> cq(N), ck(N), cv(N), s0(N);
    for (int n = 0; n < N; ++n) {
        cq[n] = randn(3 * HK); ck[n] = randn(3 * HK); cv[n] = randn(3 * HV); s0[n] = randn(S, 0.3);
        quant_all<Tin>(cq[n]); quant_all<Tin>(ck[n]); quant_all<Tin>(cv[n]);
    }
    // One sequence each: run alone, and the table's storage (allocated last sequence first).
    std::vector<std::unique_ptr<DecodeDev<Tin>>> alone(N), owned(N);
    for (int n = 0; n < N; ++n) alone[n] = std::make_unique<DecodeDev<Tin>>(pool, P, 1, cq[n], ck[n], cv[n], s0[n]);
    for (int n = N - 1; n >= 0; --n) owned[n] = std::make_unique<DecodeDev<Tin>>(pool, P, 1, cq[n], ck[n], cv[n], s0[n]);
    kda::DecodeTable<Tin> table = {};
    for (int n = 0; n < N; ++n) {
        table.conv_q[n] = owned[n]->cq; table.conv_k[n] = owned[n]->ck; table.conv_v[n] = owned[n]->cv; table.state[n] = owned[n]->state;
    }
    Tin *pq = pool.alloc<Tin>(N * HK), *pk = pool.alloc<Tin>(N * HK), *pf = pool.alloc<Tin>(N * HK);
    Tin *pv = pool.alloc<Tin>(N * HV), *pz = pool.alloc<Tin>(N * HV), *pb = pool.alloc<Tin>(size_t(N) * H);
    Tin* y = pool.upload<Tin>(std::vector<float>(), N * HV + HV);   // NaN, the tail must stay so
    const DecodeDev<Tin>& p0 = *owned[0];
    bool same = true;
    for (int step = 0; step < steps && same; ++step) {
        const TokenInputs x = random_token<Tin>(N, H, K, V);
        copy_in(pq, x.q); copy_in(pk, x.k); copy_in(pv, x.v); copy_in(pf, x.f); copy_in(pb, x.b); copy_in(pz, x.z);
        auto decode = Kern<Tin>::decode_table;
        LAUNCH(decode, decode_grid(H, N), dim3(kda::kDecodeThreads), kda::kDecodeSmemBytes,
            H, K, V, N, P.rms_eps, (const Tin*)pq, (const Tin*)pk, (const Tin*)pv, (const Tin*)pf, (const Tin*)pb, (const Tin*)pz,
            (const Tin*)p0.wq, (const Tin*)p0.wk, (const Tin*)p0.wv, (const float*)p0.a_log, (const float*)p0.dt_bias,
            (const Tin*)p0.wnorm, table, y);
        CHECK_LAUNCH();
        auto row = [](const std::vector<float>& a, int n, size_t w) { return std::vector<float>(a.begin() + n * w, a.begin() + (n + 1) * w); };
        for (int n = 0; n < N; ++n) {
            alone[n]->set_token(row(x.q, n, HK), row(x.k, n, HK), row(x.v, n, HV), row(x.f, n, HK), row(x.b, n, H), row(x.z, n, HV));
            alone[n]->run();
        }
        CK(cudaDeviceSynchronize());
        const std::vector<float> yt = download(y, N * HV + HV);
        for (int n = 0; n < N; ++n) same = same && download(alone[n]->y, HV) == row(yt, n, HV);
        for (size_t i = N * HV; i < yt.size(); ++i) same = same && std::isnan(yt[i]);
    }
    for (int n = 0; n < N; ++n) {
        const DecodeDev<Tin>& a = *alone[n];
        const DecodeDev<Tin>& b = *owned[n];
        same = same && download(a.state, S) == download(b.state, S) && download(a.cq, 3 * HK) == download(b.cq, 3 * HK) &&
            download(a.ck, 3 * HK) == download(b.ck, 3 * HK) && download(a.cv, 3 * HV) == download(b.cv, 3 * HV);
    }
    char name[128];
    std::snprintf(name, sizeof name, "decode table %s N%d H%d K%d V%d, %d steps: y, state, windows == N single steps", tname<Tin>(), N, H, K, V, steps);
    check_bool(name, same);
}

// The model's prefill entry (fp32 projections, windows and taps in; bf16 q, k, v out) against the fp32 pre-kernel on the
// same inputs: q, k, v are the fp32 results rounded to bf16 and g, β the same, bit for bit (only the stores differ).
static void test_prepare_f32_bf16(const std::vector<int>& lens, int H, int K, int V) {
    const int N = int(lens.size()), T = std::accumulate(lens.begin(), lens.end(), 0);
    const size_t HK = size_t(H) * K, HV = size_t(H) * V;
    const LayerParams P = random_params<float>(H, K, V);
    std::vector<int> cu(N + 1, 0);
    for (int n = 0; n < N; ++n) cu[n + 1] = cu[n] + lens[n];
    DevPool pool;
    const int* dcu = pool.upload_int(cu);
    const float *pq = pool.upload<float>(randn(T * HK)), *pk = pool.upload<float>(randn(T * HK)), *pv = pool.upload<float>(randn(T * HV));
    const float *pf = pool.upload<float>(randn(T * HK)), *pb = pool.upload<float>(randn(size_t(T) * H));
    const float *wq = pool.upload<float>(P.wq), *wk = pool.upload<float>(P.wk), *wv = pool.upload<float>(P.wv);
    const float *a_log = pool.upload<float>(P.a_log), *dt_bias = pool.upload<float>(P.dt_bias);
    const float *cq = pool.upload<float>(randn(N * 3 * HK)), *ck = pool.upload<float>(randn(N * 3 * HK)), *cv = pool.upload<float>(randn(N * 3 * HV));
    float *q32 = pool.alloc<float>(T * HK), *k32 = pool.alloc<float>(T * HK), *v32 = pool.alloc<float>(T * HV);
    bf16 *q16 = pool.alloc<bf16>(T * HK), *k16 = pool.alloc<bf16>(T * HK), *v16 = pool.alloc<bf16>(T * HV);
    float *g32 = pool.alloc<float>(T * HK), *g16 = pool.alloc<float>(T * HK), *b32 = pool.alloc<float>(size_t(T) * H), *b16 = pool.alloc<float>(size_t(T) * H);
    LAUNCH(kimi_kda_prepare_f32, prepare_grid(int(HK), int(HV), T), dim3(kda::kPrepareThreads), 0, H, K, V, N, dcu, pq, pk, pv, pf, pb,
        wq, wk, wv, a_log, dt_bias, cq, ck, cv, q32, k32, v32, g32, b32);
    CHECK_LAUNCH();
    LAUNCH(kimi_kda_prepare_f32_bf16, prepare_grid(int(HK), int(HV), T), dim3(kda::kPrepareThreads), 0, H, K, V, N, dcu, pq, pk, pv, pf, pb,
        wq, wk, wv, a_log, dt_bias, cq, ck, cv, q16, k16, v16, g16, b16);
    CHECK_LAUNCH();
    CK(cudaDeviceSynchronize());
    auto rounded = [](std::vector<float> x) { quant_all<bf16>(x); return x; };
    char name[128];
    std::snprintf(name, sizeof name, "prepare f32 → bf16 N%d T%d H%d K%d V%d: q, k, v == the fp32 pre-kernel's, rounded", N, T, H, K, V);
    check_bool(name, download(q16, T * HK) == rounded(download(q32, T * HK)) && download(k16, T * HK) == rounded(download(k32, T * HK)) &&
                     download(v16, T * HV) == rounded(download(v32, T * HV)));
    check_bool("prepare f32 → bf16: g and β == the fp32 pre-kernel's", download(g16, T * HK) == download(g32, T * HK) &&
                                                                       download(b16, size_t(T) * H) == download(b32, size_t(T) * H));
}

// Continuing sequences (random carried windows and state): prefill of T0 tokens from raw projections (pre-kernel,
// window update, chunked prefill) then `steps` fused decode steps == the reference, and the state == one prefill of all
// T0 + steps tokens (host-prepared inputs). The pre-kernel's outputs are checked against the reference too.
template <typename Tin> static void test_prefill_then_decode(int N, int H, int K, int V, int T0, int steps) {
    const LayerParams P = random_params<Tin>(H, K, V);
    const size_t HK = size_t(H) * K, HV = size_t(H) * V;
    const int T = T0 + steps;
    std::vector<float> w0q = randn(N * 3 * HK), w0k = randn(N * 3 * HK), w0v = randn(N * 3 * HV), s0 = randn(size_t(N) * HV * K, 0.3);
    quant_all<Tin>(w0q); quant_all<Tin>(w0k); quant_all<Tin>(w0v);
    std::vector<TokenInputs> raw;   // raw[t]: token t of every sequence
    for (int t = 0; t < T; ++t) raw.push_back(random_token<Tin>(N, H, K, V));
    // Host preparation of all T tokens (conv + SiLU as stored, gate, β) and the windows after T0 tokens.
    std::vector<float> pq(size_t(N) * T * HK), pk(pq.size()), pv(size_t(N) * T * HV), pg(pq.size()), pb(size_t(N) * T * H);
    std::vector<float> win_q(w0q), win_k(w0k), win_v(w0v);
    auto conv = [&](const std::vector<float>& w, std::vector<float>& win, const float* x, int C, float* out) {
        for (int c = 0; c < C; ++c) {
            const double acc = double(w[4 * c]) * win[c] + double(w[4 * c + 1]) * win[C + c] + double(w[4 * c + 2]) * win[2 * C + c] + double(w[4 * c + 3]) * x[c];
            out[c] = quant<Tin>(float(acc * sigm(acc)));
            win[c] = win[C + c]; win[C + c] = win[2 * C + c]; win[2 * C + c] = x[c];
        }
    };
    for (int n = 0; n < N; ++n) {
        std::vector<float> wq(&w0q[n * 3 * HK], &w0q[(n + 1) * 3 * HK]), wk(&w0k[n * 3 * HK], &w0k[(n + 1) * 3 * HK]), wv(&w0v[n * 3 * HV], &w0v[(n + 1) * 3 * HV]);
        for (int t = 0; t < T; ++t) {
            const TokenInputs& x = raw[t];
            const size_t row = size_t(n) * T + t;   // packed token index (sequence-major)
            conv(P.wq, wq, &x.q[n * HK], int(HK), &pq[row * HK]);
            conv(P.wk, wk, &x.k[n * HK], int(HK), &pk[row * HK]);
            conv(P.wv, wv, &x.v[n * HV], int(HV), &pv[row * HV]);
            for (int c = 0; c < int(HK); ++c)
                pg[row * HK + c] = float(-std::exp(double(P.a_log[c / K])) * softplus(double(x.f[n * HK + c]) + P.dt_bias[c]));
            for (int h = 0; h < H; ++h) pb[row * H + h] = float(sigm(x.b[size_t(n) * H + h]));
            if (t == T0 - 1) {
                std::copy(wq.begin(), wq.end(), &win_q[n * 3 * HK]);
                std::copy(wk.begin(), wk.end(), &win_k[n * 3 * HK]);
                std::copy(wv.begin(), wv.end(), &win_v[n * 3 * HV]);
            }
        }
    }
    auto first = [&](const std::vector<float>& x, size_t w, int Tn) {   // the first Tn tokens of every sequence, packed
        std::vector<float> out;
        for (int n = 0; n < N; ++n) out.insert(out.end(), x.begin() + size_t(n) * T * w, x.begin() + (size_t(n) * T + Tn) * w);
        return out;
    };
    auto raw_first = [&](std::vector<float> TokenInputs::*field, size_t w) {   // raw inputs of the first T0 tokens, packed
        std::vector<float> out;
        for (int n = 0; n < N; ++n)
            for (int t = 0; t < T0; ++t) out.insert(out.end(), (raw[t].*field).begin() + n * w, (raw[t].*field).begin() + (n + 1) * w);
        return out;
    };
    // Reference: the recurrence over the first T0 prepared tokens, then the fused-step reference for the rest.
    std::vector<double> S_ref(s0.begin(), s0.end()), o_pre(size_t(N) * T0 * HV), y_ref(size_t(N) * steps * HV);
    ref_core(std::vector<int>(N, T0), H, K, V, first(pq, HK, T0), first(pk, HK, T0), first(pv, HV, T0), first(pg, HK, T0),
        first(pb, H, T0), S_ref, o_pre);
    for (int n = 0; n < N; ++n) {
        std::vector<float> wq(&win_q[n * 3 * HK], &win_q[(n + 1) * 3 * HK]), wk(&win_k[n * 3 * HK], &win_k[(n + 1) * 3 * HK]),
            wv(&win_v[n * 3 * HV], &win_v[(n + 1) * 3 * HV]);
        for (int s = 0; s < steps; ++s) {
            const TokenInputs& x = raw[T0 + s];
            ref_decode_token<Tin>(P, &x.q[n * HK], &x.k[n * HK], &x.v[n * HV], &x.f[n * HK], &x.b[size_t(n) * H], &x.z[n * HV],
                wq, wk, wv, &S_ref[size_t(n) * HV * K], &y_ref[(size_t(n) * steps + s) * HV]);
        }
    }
    DevPool pool;
    // A: pre-kernel + window update + chunked prefill over T0 tokens, then decode steps.
    PrefillDev<Tin> pre(pool, std::vector<int>(N, T0), H, K, V);
    DecodeDev<Tin> dec(pool, P, N, w0q, w0k, w0v, s0);
    CK(cudaMemcpy(pre.state, dec.state, s0.size() * 4, cudaMemcpyDeviceToDevice));
    gpu_prepare(pool, pre, dec, raw_first(&TokenInputs::q, HK), raw_first(&TokenInputs::k, HK), raw_first(&TokenInputs::v, HV),
        raw_first(&TokenInputs::f, HK), raw_first(&TokenInputs::b, H));
    pre.run();
    CK(cudaDeviceSynchronize());
    char name[128];
    std::snprintf(name, sizeof name, "prepare %s N%d T0=%d H%d K%d V%d: conv q, k, v as stored", tname<Tin>(), N, T0, H, K, V);
    {
        const size_t nk = size_t(N) * T0 * HK, nv = size_t(N) * T0 * HV;
        std::vector<float> gq = download(pre.q, nk), gk = download(pre.k, nk), gv = download(pre.v, nv);
        gq.insert(gq.end(), gk.begin(), gk.end()); gq.insert(gq.end(), gv.begin(), gv.end());
        std::vector<float> rq = first(pq, HK, T0), rk = first(pk, HK, T0), rv = first(pv, HV, T0);
        rq.insert(rq.end(), rk.begin(), rk.end()); rq.insert(rq.end(), rv.begin(), rv.end());
        check(name, rel_err_f(gq, rq), tol<Tin>());
        std::snprintf(name, sizeof name, "prepare %s: gate g and beta", tname<Tin>());
        std::vector<float> gg = download(pre.g, nk), gb = download(pre.beta, size_t(N) * T0 * H);
        gg.insert(gg.end(), gb.begin(), gb.end());
        std::vector<float> rg = first(pg, HK, T0), rb = first(pb, H, T0);
        rg.insert(rg.end(), rb.begin(), rb.end());
        check(name, rel_err_f(gg, rg), 1e-5);
        std::snprintf(name, sizeof name, "conv window update %s: windows after T0 tokens exact", tname<Tin>());
        check_bool(name, download(dec.cq, win_q.size()) == win_q && download(dec.ck, win_k.size()) == win_k && download(dec.cv, win_v.size()) == win_v);
    }
    CK(cudaMemcpy(dec.state, pre.state, s0.size() * 4, cudaMemcpyDeviceToDevice));
    double worst = 0;
    for (int s = 0; s < steps; ++s) {
        const TokenInputs& x = raw[T0 + s];
        dec.set_token(x.q, x.k, x.v, x.f, x.b, x.z);
        dec.run();
        CK(cudaDeviceSynchronize());
        const std::vector<float> y = download(dec.y, N * HV);
        std::vector<double> yr(N * HV);
        for (int n = 0; n < N; ++n) std::copy_n(&y_ref[(size_t(n) * steps + s) * HV], HV, &yr[n * HV]);
        const double e = rel_err(y, std::is_same<Tin, bf16>::value ? as_stored<Tin>(yr) : yr);
        worst = (std::isnan(e) || e > worst) ? e : worst;
    }
    const std::vector<float> sA = download(dec.state, s0.size());
    // B: one prefill of all T tokens from the same initial state.
    PrefillDev<Tin> all(pool, std::vector<int>(N, T), H, K, V);
    all.load(pq, pk, pv, pg, pb, s0);
    all.run();
    CK(cudaDeviceSynchronize());
    const std::vector<float> sB = download(all.state, s0.size());
    std::snprintf(name, sizeof name, "prefill(%d)+%d decode %s N%d H%d K%d V%d: decode y", T0, steps, tname<Tin>(), N, H, K, V);
    check(name, worst, tol<Tin>());
    std::snprintf(name, sizeof name, "prefill(%d)+%d decode %s: state vs reference", T0, steps, tname<Tin>());
    check(name, rel_err(sA, S_ref), tol<Tin>());
    std::snprintf(name, sizeof name, "prefill(%d)+%d decode %s: state vs one prefill(%d)", T0, steps, tname<Tin>(), T);
    check(name, rel_err_f(sA, sB), tol<Tin>());
}

// ---- benchmarks (GPU only) ------------------------------------------------------------------------------------------
__global__ void fill_uniform_f32(float* p, size_t n, uint32_t seed, float lo, float hi) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t x = uint32_t(i) * 2654435761u ^ seed;
        x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
        p[i] = lo + (hi - lo) * (float(x >> 8) * (1.0f / 16777216.0f));
    }
}
__global__ void fill_uniform_bf16(bf16* p, size_t n, uint32_t seed, float lo, float hi) {
    for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
        uint32_t x = uint32_t(i) * 2654435761u ^ seed;
        x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
        p[i] = __float2bfloat16_rn(lo + (hi - lo) * (float(x >> 8) * (1.0f / 16777216.0f)));
    }
}
static uint32_t g_seed = 1;
static void fill(float* p, size_t n, float lo, float hi) { LAUNCH(fill_uniform_f32, dim3(1024), dim3(256), 0, p, n, g_seed++ * 0x9e3779b9u, lo, hi); CHECK_LAUNCH(); }
static void fill(bf16* p, size_t n, float lo, float hi) { LAUNCH(fill_uniform_bf16, dim3(1024), dim3(256), 0, p, n, g_seed++ * 0x9e3779b9u, lo, hi); CHECK_LAUNCH(); }
static float median(std::vector<float> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; }

// Times `body` (enqueued on g_stream) with events: warm-up, then the median of `reps` runs, in ms.
template <typename F> static float time_ms(F body, int warm, int reps) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    for (int i = 0; i < warm; ++i) body();
    CK(cudaStreamSynchronize(g_stream));
    std::vector<float> t;
    for (int i = 0; i < reps; ++i) {
        CK(cudaEventRecord(e0, g_stream));
        body();
        CK(cudaEventRecord(e1, g_stream));
        CK(cudaEventSynchronize(e1));
        float ms; CK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms);
    }
    CK(cudaEventDestroy(e0)); CK(cudaEventDestroy(e1));
    return median(t);
}
static const double kPeakBytesPerSec = 3.0e12;

#ifndef KDA_EMULATE
// A device-to-device copy of n floats of state into a fresh buffer, timed: the yardstick of the B = 64 decode bar.
static float state_copy_ms(DevPool& pool, const float* state, size_t n, int warm, int reps) {
    float* dst = pool.alloc<float>(n);
    return time_ms([&] { CK(cudaMemcpyAsync(dst, state, n * 4, cudaMemcpyDeviceToDevice, g_stream)); }, warm, reps);
}
#endif

// Decode step, H = 32, K = V = 128, bf16: L layers (own state and windows each, so B = 1 is not an L2-resident toy)
// captured in one CUDA graph; per-layer time = median graph time / L. Bytes: state read + write, windows read + write,
// projections, output, parameters.
static void bench_decode(int B, int L) {
    const int H = 32, K = 128, V = 128, HK = H * K, HV = H * V;
    DevPool pool;
    std::vector<std::unique_ptr<DecodeDev<bf16>>> layers;
    const LayerParams P = random_params<bf16>(H, K, V);
    for (int l = 0; l < L; ++l) {
        auto d = std::make_unique<DecodeDev<bf16>>(pool, P, B, std::vector<float>(size_t(B) * 3 * HK), std::vector<float>(size_t(B) * 3 * HK),
            std::vector<float>(size_t(B) * 3 * HV), std::vector<float>(size_t(B) * HV * K));
        fill(d->state, size_t(B) * HV * K, -0.3f, 0.3f);
        fill(d->cq, size_t(B) * 3 * HK, -1, 1); fill(d->ck, size_t(B) * 3 * HK, -1, 1); fill(d->cv, size_t(B) * 3 * HV, -1, 1);
        fill(d->pq, size_t(B) * HK, -1, 1); fill(d->pk, size_t(B) * HK, -1, 1); fill(d->pv, size_t(B) * HV, -1, 1);
        fill(d->pf, size_t(B) * HK, -2, 2); fill(d->pb, size_t(B) * H, -2, 2); fill(d->pz, size_t(B) * HV, -2, 2);
        layers.push_back(std::move(d));
    }
    CK(cudaDeviceSynchronize());
    auto graph_of = [&](int count, bool pdl) {
        cudaGraph_t g; cudaGraphExec_t e;
        CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeGlobal));
#ifndef KDA_EMULATE
        for (int l = 0; l < count; ++l) { if (pdl) layers[l]->run_pdl(); else layers[l]->run(); }
#endif
        CK(cudaStreamEndCapture(g_stream, &g));
        CK(cudaGraphInstantiate(&e, g, 0));
        CK(cudaGraphDestroy(g));
        return e;
    };
    cudaGraphExec_t gL = graph_of(L, false), g1 = graph_of(1, false), gP = graph_of(L, true);
    {   // the PDL graph must give bit-identical windows, states and outputs: run both once from the same start
        std::vector<float*> saved;
        auto snap = [&](bool restore) {
            size_t i = 0;
            for (auto& d : layers) {
                const size_t ns = size_t(B) * HV * K, nk = size_t(B) * 3 * HK, nv = size_t(B) * 3 * HV;
                if (!restore) { saved.push_back(pool.alloc<float>(ns)); saved.push_back(pool.alloc<float>(nk)); saved.push_back(pool.alloc<float>(nk)); saved.push_back(pool.alloc<float>(nv)); }
                auto cp = [&](void* a, void* b, size_t bytes) { CK(cudaMemcpy(restore ? a : b, restore ? b : a, bytes, cudaMemcpyDeviceToDevice)); };
                cp(d->state, saved[i], ns * 4); cp(d->cq, saved[i + 1], nk * 2); cp(d->ck, saved[i + 2], nk * 2); cp(d->cv, saved[i + 3], nv * 2);
                i += 4;
            }
        };
        auto result = [&] {
            std::vector<float> r;
            for (auto& d : layers) {
                const std::vector<float> s = download(d->state, size_t(B) * HV * K), yy = download(d->y, size_t(B) * HV),
                    c = download(d->cq, size_t(B) * 3 * HK);
                r.insert(r.end(), s.begin(), s.end()); r.insert(r.end(), yy.begin(), yy.end()); r.insert(r.end(), c.begin(), c.end());
            }
            return r;
        };
        snap(false);
        CK(cudaGraphLaunch(gL, g_stream)); CK(cudaStreamSynchronize(g_stream));
        const std::vector<float> plain = result();
        snap(true);
        CK(cudaGraphLaunch(gP, g_stream)); CK(cudaStreamSynchronize(g_stream));
        const std::vector<float> pdl = result();
        check_bool("decode B=" + std::to_string(B) + " graph of " + std::to_string(L) + " layers with PDL bit-identical to without",
            plain.size() == pdl.size() && std::memcmp(plain.data(), pdl.data(), plain.size() * 4) == 0);
    }
    const float msL = time_ms([&] { CK(cudaGraphLaunch(gL, g_stream)); }, 10, 60);
    const float ms1 = time_ms([&] { CK(cudaGraphLaunch(g1, g_stream)); }, 20, 200);
    const float msP = time_ms([&] { CK(cudaGraphLaunch(gP, g_stream)); }, 10, 60);
    CK(cudaGraphExecDestroy(gL)); CK(cudaGraphExecDestroy(g1)); CK(cudaGraphExecDestroy(gP));
    const double bytes = double(B) * (2.0 * HV * K * 4 + 2.0 * 3 * (2 * HK + HV) * 2 + (3 * HK + 2 * HV + H) * 2 + HV * 2) +
                         (2 * HK + HV) * 4 * 2 + HK * 4 + H * 4 + V * 2;
    const double per = msL / L * 1e-3;
    const double perP = msP / L * 1e-3;
    std::printf("BENCH decode_step bf16 B=%-3d H=32 K=V=128: %8.2f us/layer (graph of %d layers), %7.1f GB/s, %5.1f%% of 3.0 TB/s; single-layer graph %7.2f us\n",
        B, per * 1e6, L, bytes / per / 1e9, 100.0 * bytes / per / kPeakBytesPerSec, ms1 * 1e3);
    std::printf("BENCH decode_step bf16 B=%-3d H=32 K=V=128: %8.2f us/layer (graph of %d layers, programmatic dependent launch), %7.1f GB/s, %5.1f%% of 3.0 TB/s\n",
        B, perP * 1e6, L, bytes / perP / 1e9, 100.0 * bytes / perP / kPeakBytesPerSec);
#ifndef KDA_EMULATE
    if (B == 64) {   // the yardstick of the B = 64 bar: a device copy of the state's bytes, timed the same way
        const size_t n = size_t(B) * HV * K;
        const float ms = state_copy_ms(pool, layers[0]->state, n, 10, 60);
        std::printf("BENCH decode_step bf16 B=%-3d: a copy of the state's %zu MB: %.2f us (%.0f GB/s read + written); the step %.3f× that (PDL)\n",
            B, n * 4 >> 20, ms * 1e3, 2.0 * n * 4 / (ms * 1e-3) / 1e9, perP / (ms * 1e-3));
    }
#endif
}

// The table form at the same shapes: B sequences a layer, each its own allocation (as sessions keep them), L layers in
// a graph; the bytes are bench_decode's, so the two lines compare the addressing alone.
static void bench_decode_table(int B, int L) {
    const int H = 32, K = 128, V = 128, HK = H * K, HV = H * V;
    DevPool pool;
    const LayerParams P = random_params<bf16>(H, K, V);
    std::vector<std::unique_ptr<DecodeDev<bf16>>> owners;   // one sequence each: windows and state
    std::vector<kda::DecodeTable<bf16>> tables(L);
    std::vector<std::unique_ptr<DecodeDev<bf16>>> layers;   // the layers' parameters, projections [B, ·] and y
    for (int l = 0; l < L; ++l) {
        const std::vector<float> none;
        auto d = std::make_unique<DecodeDev<bf16>>(pool, P, B, none, none, none, none);
        fill(d->pq, size_t(B) * HK, -1, 1); fill(d->pk, size_t(B) * HK, -1, 1); fill(d->pv, size_t(B) * HV, -1, 1);
        fill(d->pf, size_t(B) * HK, -2, 2); fill(d->pb, size_t(B) * H, -2, 2); fill(d->pz, size_t(B) * HV, -2, 2);
        tables[l] = {};
        for (int n = 0; n < B; ++n) {
            auto o = std::make_unique<DecodeDev<bf16>>(pool, P, 1, std::vector<float>(3 * HK), std::vector<float>(3 * HK),
                std::vector<float>(3 * HV), std::vector<float>(size_t(HV) * K));
            fill(o->state, size_t(HV) * K, -0.3f, 0.3f);
            fill(o->cq, 3 * HK, -1, 1); fill(o->ck, 3 * HK, -1, 1); fill(o->cv, 3 * HV, -1, 1);
            tables[l].conv_q[n] = o->cq; tables[l].conv_k[n] = o->ck; tables[l].conv_v[n] = o->cv; tables[l].state[n] = o->state;
            owners.push_back(std::move(o));
        }
        layers.push_back(std::move(d));
    }
    CK(cudaDeviceSynchronize());
    cudaGraph_t g; cudaGraphExec_t e;
    CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeGlobal));
#ifndef KDA_EMULATE
    for (int l = 0; l < L; ++l) {
        const DecodeDev<bf16>& d = *layers[l];
        kimi_kda_decode_step_table_bf16<<<decode_grid(H, B), kda::kDecodeThreads, kda::kDecodeSmemBytes, g_stream>>>(
            H, K, V, B, d.rms_eps, d.pq, d.pk, d.pv, d.pf, d.pb, d.pz, d.wq, d.wk, d.wv, d.a_log, d.dt_bias, d.wnorm, tables[l], d.y);
    }
#endif
    CK(cudaStreamEndCapture(g_stream, &g));
    CK(cudaGraphInstantiate(&e, g, 0));
    CK(cudaGraphDestroy(g));
    const float ms = time_ms([&] { CK(cudaGraphLaunch(e, g_stream)); }, 10, 60);
    CK(cudaGraphExecDestroy(e));
    const double bytes = double(B) * (2.0 * HV * K * 4 + 2.0 * 3 * (2 * HK + HV) * 2 + (3 * HK + 2 * HV + H) * 2 + HV * 2) +
                         (2 * HK + HV) * 4 * 2 + HK * 4 + H * 4 + V * 2;
    const double per = ms / L * 1e-3;
    std::printf("BENCH decode_step_table bf16 B=%-3d H=32 K=V=128: %8.2f us/layer (graph of %d layers, separate states), %7.1f GB/s, %5.1f%% of 3.0 TB/s\n",
        B, per * 1e6, L, bytes / per / 1e9, 100.0 * bytes / per / kPeakBytesPerSec);
}

// Chunked prefill (intra + scan), H = 32, K = V = 128, q/k/v/o as Tin, fp32 g/β/state. Bytes: the minimum the op must
// move (inputs once, output once, state in and out); the fp32 scratch between the two kernels is extra traffic. Gates
// g uniform in (g_min, −0.001) a token: at −0.5 every chunk whole-mild (kda.cu's kWholeMildRange: a chunk decays by
// ≤ 2^46); at −2.5 ("mild") every chunk mild but none whole-mild (a chunk decays by ~2^115 in most channels, a 16-token
// block by ≤ 2^58 in all); at −6 ("steep") a 16-token block's decay exceeds 2^80 in some channel of nearly every chunk:
// the element-wise path's time.
template <typename Tin> static void bench_prefill(int B, int T, float g_min = -0.5f) {
    const char* gates = g_min < -3.f ? " steep" : g_min < -1.f ? " mild" : "";
    const int H = 32, K = 128, V = 128;
    const std::vector<int> lens(B, T);
    const size_t Tt = size_t(B) * T;
    DevPool pool;
    PrefillDev<Tin> dev(pool, lens, H, K, V);
    const float sc = 1.0f / std::sqrt(float(K));   // rows of roughly unit norm, like L2-normalised q̂/k̂
    fill(dev.q, Tt * H * K, -sc * 1.7f, sc * 1.7f); fill(dev.k, Tt * H * K, -sc * 1.7f, sc * 1.7f); fill(dev.v, Tt * H * V, -1, 1);
    fill(dev.g, Tt * H * K, g_min, -0.001f); fill(dev.beta, Tt * H, 0.05f, 0.95f); fill(dev.state, size_t(B) * H * K * V, -0.3f, 0.3f);
    CK(cudaDeviceSynchronize());
    // Each timed unit is one CUDA graph (as the model runs it), replayed: median of 50 after 3 warm-up replays.
    auto graph_ms = [&](auto enqueue) {
        cudaGraph_t gr; cudaGraphExec_t ex;
        CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeGlobal));
        enqueue();
        CK(cudaStreamEndCapture(g_stream, &gr));
        CK(cudaGraphInstantiate(&ex, gr, 0));
        CK(cudaGraphDestroy(gr));
        const float t = time_ms([&] { CK(cudaGraphLaunch(ex, g_stream)); }, 3, 50);
        CK(cudaGraphExecDestroy(ex));
        return t;
    };
    // bf16: the scan KdaKernels.TakesWideScan chooses (the wide one where the 32-column scan's blocks, one an SM, take
    // more than two waves), the other one's time beside it.
    const bool wide = PrefillDev<Tin>::kHasWide && int64_t(B) * H * (V / kda::kPrefillCols) > 2 * g_sms;
    g_wide_scan = wide;
    const float ms = graph_ms([&] { dev.run(); });
    const float ms_intra = graph_ms([&] { dev.run_intra(); }), ms_scan = graph_ms([&] { dev.run_scan(); });
    char other[64] = "";
    if (PrefillDev<Tin>::kHasWide)
        std::snprintf(other, sizeof other, "; %s scan, the %s %.3f", wide ? "wide" : "32-column", wide ? "32-column" : "wide",
            graph_ms([&] { dev.run_scan(!wide); }));
    g_wide_scan = false;
    const double bytes = double(Tt) * H * ((K * 2 + V * 2) * sizeof(Tin) + K * 4 + 4) + 2.0 * B * H * K * V * 4;
    std::printf("BENCH chunk_prefill %s%s B=%d T=%-6d H=32 K=V=128: %9.3f ms (intra %.3f + scan %.3f%s; graphs, median of 50), %7.1f GB/s, %5.1f%% of 3.0 TB/s (min bytes)\n",
        tname<Tin>(), gates, B, T, ms, ms_intra, ms_scan, other, bytes / (ms * 1e-3) / 1e9, 100.0 * bytes / (ms * 1e-3) / kPeakBytesPerSec);
    // This design's own floor: its scratch is written once and read at least once, on top of the least bytes.
    const double scratch = dev.scratch_bytes(), moved = bytes + 2 * scratch;
    std::printf("FLOOR chunk_prefill %s B=%d T=%-6d: %.2f GB moved with the scratch (%.2f GB written, read at least once): %.1f%% of 3.0 TB/s; at 3.0 TB/s that alone takes %.3f ms\n",
        tname<Tin>(), B, T, moved / 1e9, scratch / 1e9, 100.0 * moved / (ms * 1e-3) / kPeakBytesPerSec, moved / kPeakBytesPerSec * 1e3);
}

// The thirtieth session's plan (a head's 4 scan blocks as a cluster doing its intra work by channel quarters) asked
// first what a chunk's intra work costs one SM when split so; run 168 answered it (half a chunk a quarter: dropped).
// A quarter is intra at K = V = 32 (its pair sums over 32 channels, its quarter of QG, KG, W, its 32 columns of U,
// and the whole T'), so each (chunk, head) of K = V = 128 becomes 4 heads of K = V = 32. What the split adds (the 4
// partial L, A summed through distributed shared memory) is not in it. ring > 0 writes block b's scratch to slot
// b mod ring (timing only: the scratch then stays in L2, as the split design keeps it on chip).
template <int KC> __global__ void __launch_bounds__(kda::kIntraThreads, 2) intra_ring_bf16(int ring, int H, int K, int V,
    int num_seqs, const int* cu_seqlens, const int* chunk_offsets, const bf16* q, const bf16* k, const bf16* v,
    const float* g, const float* beta, float* w_out, float* u_out, float* a_out, float* qg_out, float* kg_out,
    float* gamma_out) {
    if (ring > 0) {   // chunk_intra writes block b's scratch at b times each stride: shift every base back
        const size_t base = blockIdx.x / ring * size_t(ring), kp = kda::chunk_prefill_kpad(K);
        w_out -= base * 64 * kp; qg_out -= base * 64 * kp; kg_out -= base * 64 * kp;
        u_out -= base * 64 * V; a_out -= base * 64 * 64; gamma_out -= base * K;
    }
    kda::chunk_intra<bf16, KC>(H, K, V, num_seqs, cu_seqlens, chunk_offsets, q, k, v, g, beta, w_out, u_out, a_out,
        qg_out, kg_out, gamma_out);
}

static void bench_split_intra(int T) {
    DevPool pool;
    struct Case { const char* name; int H, K; void (*kern)(int, int, int, int, int, const int*, const int*, const bf16*,
        const bf16*, const bf16*, const float*, const float*, float*, float*, float*, float*, float*, float*); };
    const Case cases[] = {{"K=V=128 H=32 (today)", 32, 128, intra_ring_bf16<128>},
                          {"K=V=32 H=128 (quarters, KC=32)", 128, 32, intra_ring_bf16<32>},
                          {"K=V=32 H=128 (quarters, generic)", 128, 32, intra_ring_bf16<0>}};
    int clock_khz = 0;
#ifndef KDA_EMULATE
    CK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0));
    const int warm = 3, reps = 50;
#else
    const int warm = 0, reps = 1;   // the emulator checks the wrapper and the comparison, not speed
#endif
    std::vector<float> first;   // KC = 32's scratch, compared with the generic path's below
    for (const Case& cs : cases) {
        const int H = cs.H, K = cs.K, V = cs.K;
        PrefillDev<bf16> dev(pool, {T}, H, K, V);
        const float sc = 1.0f / std::sqrt(float(K));
        const size_t n = size_t(T) * H * K;
        g_seed = 1;   // the same inputs in each case at the same shape
        fill(dev.q, n, -sc * 1.7f, sc * 1.7f); fill(dev.k, n, -sc * 1.7f, sc * 1.7f); fill(dev.v, n, -1, 1);
        fill(dev.g, n, -0.5f, -0.001f); fill(dev.beta, size_t(T) * H, 0.05f, 0.95f);
        const int smem = int(kda::chunk_intra_smem_bytes(K, V)), one_per_sm = std::max(smem, 120 << 10);
        CK(cudaFuncSetAttribute(cs.kern, cudaFuncAttributeMaxDynamicSharedMemorySize, one_per_sm));
        int regs = 0;
#ifndef KDA_EMULATE
        cudaFuncAttributes fa;
        CK(cudaFuncGetAttributes(&fa, cs.kern));
        regs = fa.numRegs;
#endif
        const int blocks = dev.NC * H;
        for (int ring : {64, 0})   // ring 0 last: its scratch is compared below
            for (int bytes : {one_per_sm, smem}) {
                int per_sm = 0;
#ifndef KDA_EMULATE
                CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, cs.kern, kda::kIntraThreads, bytes));
#endif
                const float ms = time_ms([&] {
                    LAUNCH(cs.kern, dim3(blocks), dim3(kda::kIntraThreads), bytes, ring, H, K, V, dev.N, (const int*)dev.cu,
                        (const int*)dev.co, (const bf16*)dev.q, (const bf16*)dev.k, (const bf16*)dev.v, (const float*)dev.g,
                        (const float*)dev.beta, dev.w, dev.u, dev.a, dev.qg, dev.kg, dev.gam);
                }, warm, reps);
                CHECK_LAUNCH();
                // An SM's time a block: the kernel's time over the blocks each SM ran (≈ blocks / SMs).
                const double sm_us = ms * 1e3 * g_sms / blocks, sm_cycles = sm_us * clock_khz * 1e-3;
                std::printf("SPLIT intra %-34s T=%d ring=%-2d: %8.3f ms, %d blocks an SM (%d regs), %6.2f SM-us a block = %5.0f cycles at %.2f GHz; block wall ~%5.0f cycles\n",
                    cs.name, T, ring, ms, per_sm, regs, sm_us, sm_cycles, clock_khz * 1e-6, sm_cycles * per_sm);
            }
        if (K == 32) {   // KC = 32 must give the generic path's scratch
            const size_t m = size_t(dev.NC) * H * 64 * (3 * kda::chunk_prefill_kpad(K) + V + 64);
            std::vector<float> out(m);
            CK(cudaDeviceSynchronize());
            size_t at = 0;
            for (auto [p, len] : {std::pair{dev.w, size_t(dev.NC) * H * 64 * kda::chunk_prefill_kpad(K)},
                                  std::pair{dev.qg, size_t(dev.NC) * H * 64 * kda::chunk_prefill_kpad(K)},
                                  std::pair{dev.kg, size_t(dev.NC) * H * 64 * kda::chunk_prefill_kpad(K)},
                                  std::pair{dev.u, size_t(dev.NC) * H * 64 * V}, std::pair{dev.a, size_t(dev.NC) * H * 64 * 64}}) {
                CK(cudaMemcpy(out.data() + at, p, len * 4, cudaMemcpyDeviceToHost));
                at += len;
            }
            if (first.empty()) first = out;
            else {
                double num = 0, den = 0;
                for (size_t i = 0; i < m; ++i) {
                    if (std::isnan(first[i]) != std::isnan(out[i])) { num = INFINITY; break; }
                    if (!std::isnan(out[i])) { num += double(first[i] - out[i]) * (first[i] - out[i]); den += double(out[i]) * out[i]; }
                }
                std::printf("SPLIT intra KC=32 against generic, T=%d: rel %.3g\n", T, std::sqrt(num / std::max(den, 1e-300)));
            }
        }
    }
}

// The pre-kernel and the window update over B sequences of T tokens, bf16 q, k, v out: from bf16 projections (the bf16
// entry) or from fp32 ones (the model's prefill: kimi_kda_prepare_f32_bf16).
template <typename Tin> static void bench_prepare(int B, int T) {
    const int H = 32, K = 128, V = 128, HK = H * K, HV = H * V;
    const size_t Tt = size_t(B) * T;
    DevPool pool;
    PrefillDev<bf16> pre(pool, std::vector<int>(B, T), H, K, V);
    const LayerParams P = random_params<Tin>(H, K, V);
    DecodeDev<Tin> dec(pool, P, B, std::vector<float>(size_t(B) * 3 * HK), std::vector<float>(size_t(B) * 3 * HK),
        std::vector<float>(size_t(B) * 3 * HV), std::vector<float>(size_t(B) * HV * K));
    Tin *pq = pool.alloc<Tin>(Tt * HK), *pk = pool.alloc<Tin>(Tt * HK), *pv = pool.alloc<Tin>(Tt * HV), *pf = pool.alloc<Tin>(Tt * HK), *pb = pool.alloc<Tin>(Tt * H);
    fill(pq, Tt * HK, -1, 1); fill(pk, Tt * HK, -1, 1); fill(pv, Tt * HV, -1, 1); fill(pf, Tt * HK, -2, 2); fill(pb, Tt * H, -2, 2);
    CK(cudaDeviceSynchronize());
    constexpr bool from_f32 = std::is_same<Tin, float>::value;
    auto window = Kern<Tin>::window;
    const float ms = time_ms([&] {
        if constexpr (from_f32) {
            LAUNCH(kimi_kda_prepare_f32_bf16, prepare_grid(H * K, H * V, pre.T), dim3(kda::kPrepareThreads), 0, H, K, V, pre.N, (const int*)pre.cu,
                (const Tin*)pq, (const Tin*)pk, (const Tin*)pv, (const Tin*)pf, (const Tin*)pb, (const Tin*)dec.wq, (const Tin*)dec.wk,
                (const Tin*)dec.wv, (const float*)dec.a_log, (const float*)dec.dt_bias, (const Tin*)dec.cq, (const Tin*)dec.ck,
                (const Tin*)dec.cv, pre.q, pre.k, pre.v, pre.g, pre.beta);
        } else {
            LAUNCH(Kern<bf16>::prepare, prepare_grid(H * K, H * V, pre.T), dim3(kda::kPrepareThreads), 0, H, K, V, pre.N, (const int*)pre.cu,
                (const Tin*)pq, (const Tin*)pk, (const Tin*)pv, (const Tin*)pf, (const Tin*)pb, (const Tin*)dec.wq, (const Tin*)dec.wk,
                (const Tin*)dec.wv, (const float*)dec.a_log, (const float*)dec.dt_bias, (const Tin*)dec.cq, (const Tin*)dec.ck,
                (const Tin*)dec.cv, pre.q, pre.k, pre.v, pre.g, pre.beta);
        }
        LAUNCH(window, dim3(HK / kda::kPrepareThreads, B), dim3(kda::kPrepareThreads), 0, H, K, V, (const int*)pre.cu,
            (const Tin*)pq, (const Tin*)pk, (const Tin*)pv, dec.cq, dec.ck, dec.cv);
    }, 3, 50);
    CHECK_LAUNCH();
    // Read: q, k, f, v, b projections as Tin. Written: q, k, v bf16, g and β fp32.
    const double bytes = double(Tt) * ((3.0 * HK + HV + H) * sizeof(Tin) + (2.0 * HK + HV) * 2 + HK * 4 + H * 4);
    std::printf("BENCH prepare+window %s→bf16 B=%d T=%-6d H=32 K=V=128: %9.3f ms, %7.1f GB/s, %5.1f%% of 3.0 TB/s\n",
        from_f32 ? "f32" : "bf16", B, T, ms, bytes / (ms * 1e-3) / 1e9, 100.0 * bytes / (ms * 1e-3) / kPeakBytesPerSec);
}

// One plain launch of each kernel at the benchmark shapes (prefill B=1 T=4,096, decode B=1 then B=64), for ncu -k ... -c 1.
static void profile_once() {
    const int H = 32, K = 128, V = 128, HK = H * K, HV = H * V, T = 4096;
    DevPool pool;
    PrefillDev<bf16> dev(pool, {T}, H, K, V);
    const float sc = 1.0f / std::sqrt(float(K));
    fill(dev.q, size_t(T) * HK, -sc * 1.7f, sc * 1.7f); fill(dev.k, size_t(T) * HK, -sc * 1.7f, sc * 1.7f); fill(dev.v, size_t(T) * HV, -1, 1);
    fill(dev.g, size_t(T) * HK, -0.5f, -0.001f); fill(dev.beta, size_t(T) * H, 0.05f, 0.95f); fill(dev.state, size_t(H) * K * V, -0.3f, 0.3f);
    dev.run();
#if !(defined(KDA_EMULATE) && defined(KDA_SCAN_MMA_SYNC))
    dev.run_scan(true);   // the wide scan at the same shape (ncu -k regex:kimi_kda_chunk_prefill_wide_bf16)
#endif
    const LayerParams P = random_params<bf16>(H, K, V);
    DecodeDev<bf16> d(pool, P, 1, std::vector<float>(3 * HK), std::vector<float>(3 * HK), std::vector<float>(3 * HV), std::vector<float>(size_t(HV) * K));
    fill(d.pq, HK, -1, 1); fill(d.pk, HK, -1, 1); fill(d.pv, HV, -1, 1); fill(d.pf, HK, -2, 2); fill(d.pb, H, -2, 2); fill(d.pz, HV, -2, 2);
    d.run();
    {   // decode at B=64 (ncu: the second decode launch), and a copy of its state's bytes, the yardstick of its bar
        const int B = 64;
        DecodeDev<bf16> e(pool, P, B, std::vector<float>(size_t(B) * 3 * HK), std::vector<float>(size_t(B) * 3 * HK),
            std::vector<float>(size_t(B) * 3 * HV), std::vector<float>(size_t(B) * HV * K));
        fill(e.state, size_t(B) * HV * K, -0.3f, 0.3f);
        fill(e.pq, B * HK, -1, 1); fill(e.pk, B * HK, -1, 1); fill(e.pv, B * HV, -1, 1); fill(e.pf, B * HK, -2, 2); fill(e.pb, B * H, -2, 2); fill(e.pz, B * HV, -2, 2);
        e.run();
#ifndef KDA_EMULATE
        const size_t n = size_t(B) * HV * K;
        const float ms = state_copy_ms(pool, e.state, n, 3, 50);
        std::printf("copy of the B=64 state (%zu MB read and written): %.2f us, %.0f GB/s\n", n * 4 >> 20, ms * 1e3, 2.0 * n * 4 / (ms * 1e-3) / 1e9);
#endif
    }
    CK(cudaDeviceSynchronize());
}

int main(int argc, char** argv) {
    bool bench = false, quick = false, profile = false, split = false, prefill_only = false, decode_only = false, prepare_only = false;
    std::string fixtures = "KimiLinear.Tests/Fixtures/kda_ops";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--bench") bench = true;
        else if (a == "--bench-prefill") bench = prefill_only = true;   // the prefill benchmarks only
        else if (a == "--bench-decode") bench = decode_only = true;     // the decode benchmarks only
        else if (a == "--bench-prepare") bench = prepare_only = true;   // the pre-kernel's benchmarks only
        else if (a == "--quick") quick = true;
        else if (a == "--profile") profile = true;
        else if (a == "--bench-split") split = true;   // intra by channel quarters (bench_split_intra, run 168)
        else fixtures = a;
    }
    CK(cudaStreamCreate(&g_stream));
#ifndef KDA_EMULATE
    {   // the decode step's shared memory is over the default 48 KiB
        const int bytes = int(kda::kDecodeSmemBytes);
        CK(cudaFuncSetAttribute(Kern<bf16>::decode, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
        CK(cudaFuncSetAttribute(Kern<bf16>::decode_table, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
        CK(cudaFuncSetAttribute(Kern<float>::decode, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
        CK(cudaFuncSetAttribute(Kern<float>::decode_table, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    }
#endif
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device: %s, %d SMs, L2 %d MiB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    g_sms = prop.multiProcessorCount;
    if (profile) { g_decode_blocks = prop.multiProcessorCount; profile_once(); return 0; }
#ifndef KDA_EMULATE
    if (split) { for (int T : {4096, 65536}) bench_split_intra(T); return 0; }
#else
    if (split) { bench_split_intra(130); return 0; }   // the wrapper and the comparison on two chunks and a tail
#endif

    test_golden(fixtures);
    const std::vector<int> odd = {1, 63, 64, 65, 130, 17, 300};
    test_prefill_random<float>(3, 128, 128, odd, true);
    test_prefill_random<bf16>(3, 128, 128, odd, true);
    test_prefill_random<float>(2, 64, 64, {5, 129, 64}, false);
    test_prefill_random<bf16>(2, 64, 32, {70, 3}, false);
    test_prefill_random<float>(2, 36, 32, {70, 5}, false);   // K % 8 == 4: padded k-steps, idle load threads
    test_prefill_random<bf16>(2, 36, 32, {70, 5}, false);    // ... and the bf16 planes' rows padded to KP = 64
    test_prefill_random<bf16>(1, 100, 96, {67}, false);      // ... and to KP = 128, 3 V slices
    test_prefill_random<float>(1, 32, 224, {70}, false);     // V > 128: v in 4 passes (fp32), and bf16 v's rows past
    test_prefill_random<bf16>(1, 32, 224, {70}, false);      // A's place (intra's q region sized by V), 7 V slices
    test_decode<float>(3, 4, 128, 128, 5);
    test_decode<bf16>(3, 4, 128, 128, 5);
    test_decode<float>(2, 3, 64, 64, 4);
    test_decode<bf16>(2, 3, 64, 64, 4);
    // More than kDecodeOneAheadItems items a block (5 blocks): the copies two items ahead in three buffers; the shapes
    // above take one or two items a block, one ahead.
    test_decode<float>(11, 3, 64, 64, 3);
    test_decode<bf16>(8, 4, 128, 128, 3);
    test_decode_table<float>(3, 2, 128, 128, 3);
    test_decode_table<bf16>(5, 3, 64, 32, 3);   // odd N, V = 32: 8 columns a block
    test_prefill_then_decode<float>(2, 2, 128, 128, 70, 3);
    test_prefill_then_decode<bf16>(2, 2, 128, 128, 70, 3);
    test_prefill_then_decode<float>(1, 2, 64, 64, 37, 2);
    test_prefill_then_decode<bf16>(3, 2, 64, 64, 2, 2);   // sequences shorter than the conv window
    // (g_gate_scale, g_gate_min): every 64-token chunk mild and none whole-mild; then every chunk whole-mild.
    for (auto [scale, g_min] : {std::pair{1.f, -2.5f}, std::pair{0.02f, 0.f}}) {
        g_gate_scale = scale, g_gate_min = g_min;
        test_prefill_random<bf16>(3, 128, 128, odd, true);
        test_prefill_random<bf16>(2, 36, 32, {70, 5}, false);
    }
    g_gate_scale = 1.f, g_gate_min = 0.f;
    test_prepare_f32_bf16({70, 2, 33}, 2, 128, 128);
    test_prepare_f32_bf16({37}, 3, 36, 32);
    if (!quick) test_prefill_random<bf16>(32, 128, 128, {4096}, false);   // the benchmark's B=1 shape, validated
#if !(defined(KDA_EMULATE) && defined(KDA_SCAN_MMA_SYNC))   // the image has the wide scan (sm_90a; the emulator's default)
    g_wide_scan = true;   // the bf16 prefill checks again, on the wide scan
    test_prefill_random<bf16>(3, 128, 128, odd, true);
    test_prefill_random<bf16>(2, 64, 32, {70, 3}, false);     // V = 32: three quarters of the block's columns idle
    test_prefill_random<bf16>(2, 36, 32, {70, 5}, false);     // KP = 64
    test_prefill_random<bf16>(1, 100, 96, {67}, false);       // KP = 128 past K, V = 96
    test_prefill_random<bf16>(1, 32, 224, {70}, false);       // two blocks, the second's last 32 columns idle
    test_prefill_then_decode<bf16>(2, 2, 128, 128, 70, 3);
    test_prefill_then_decode<bf16>(3, 2, 64, 64, 2, 2);
    if (!quick) test_prefill_random<bf16>(32, 128, 128, {4096}, false);
    g_wide_scan = false;
#endif
    std::printf("%d passed, %d failed\n", g_pass, g_fail);

    if (bench) {
        g_decode_blocks = prop.multiProcessorCount;   // one a multiprocessor (KdaKernels.DecodeBlocks)
#ifndef KDA_EMULATE
        int per_sm = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kimi_kda_decode_step_bf16, kda::kDecodeThreads, kda::kDecodeSmemBytes));
        std::printf("decode step: %d blocks of %d threads an SM (%zu B of shared memory a block); launching at most %d\n", per_sm,
                    kda::kDecodeThreads, kda::kDecodeSmemBytes, g_decode_blocks);
#endif
        if (!prefill_only && !prepare_only) {
            for (int B : {1, 16, 24, 32, 48, 64}) bench_decode(B, 16);
            for (int B : {4, 16, 32}) bench_decode_table(B, 16);
        }
        if (decode_only) return g_fail != 0;
        if (!prepare_only) {
            bench_prefill<bf16>(1, 4096);
            bench_prefill<bf16>(1, 16384);
            bench_prefill<bf16>(1, 65536);
            bench_prefill<bf16>(8, 8192);
            bench_prefill<bf16>(1, 65536, -2.5f);   // mild gates: the diagonal blocks through their first rows
            bench_prefill<bf16>(1, 4096, -6.f);     // steep gates: the element-wise diagonal blocks
            bench_prefill<bf16>(1, 65536, -6.f);
            bench_prefill<float>(1, 4096);   // the fp32 path (the accuracy reference; 3xTF32 scan)
            bench_prefill<float>(1, 65536);
        }
        if (!prefill_only) {
            for (int T : {4096, 65536}) {
                bench_prepare<bf16>(1, T);
                bench_prepare<float>(1, T);
            }
        }
    }
    CK(cudaStreamDestroy(g_stream));
    return g_fail ? 1 : 0;
}
