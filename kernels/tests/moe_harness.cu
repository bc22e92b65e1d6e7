// moe_harness.cu — development check of kernels/moe.cu on the CPU emulator (kernels/kda/tests/cuda_emu.h): every
// kernel against a plain reference on random data of odd sizes, before any GPU time is spent.
//   g++ -O1 -std=c++17 -DKDA_EMULATE -I kernels/tests/emu -x c++ -o moe_emu kernels/tests/moe_harness.cu && ./moe_emu
// (kernels/tests/moe_emu_check.sh does this). The mma.sync / ldmatrix paths run through mma.cuh's emulated versions,
// which follow the hardware's register layout. The C# tests (KimiLinear.Tests/Cuda/MoeKernelTests.cs) check the same
// things on the GPU against CpuBackend.MoeRoute and a double reference.
// Checks: route == a float replica of CpuBackend.MoeRoute (ids exact, weights ≤ 1e-6 relative; groups 1 and > 1,
// biased on/off), followed by the S shared pairs (E + s, 1.0); decode and prefill ≤ 1e-3 relative (‖out − ref‖ / ‖ref‖) against a double reference from the same
// bf16 weights (x and h rounded to bf16, as the kernels define); prefill == decode ≤ 1e-4.
#include "../moe.cu"

#include <cmath>
#include <cstring>
#include <cstdio>
#include <random>
#include <vector>

static uint16_t f2bf(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}
static float bf2f(uint16_t b)
{
    uint32_t u = uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

static int failures = 0;
static void report(bool ok, const char* what, double value)
{
    std::printf("%s %-60s %.3g\n", ok ? "PASS" : "FAIL", what, value);
    failures += !ok;
}

static std::mt19937 rng(7);
static float normal() { return std::normal_distribution<float>(0.f, 1.f)(rng); }

// CpuBackend.MoeRoute, in float as C# computes it, then the S shared pairs (E + s, 1.0): rows of A + S pairs.
static void route_reference(const std::vector<float>& logits, const std::vector<float>& bias, int T, int E, int A, int S, int groups,
                            int topk, bool renorm, float scale, bool biased, std::vector<int>& ids, std::vector<float>& w)
{
    const int P = A + S;
    ids.assign(T * P, 0);
    w.assign(T * P, 0.f);
    auto top = [](const std::vector<float>& v, int k) {
        std::vector<int> r;
        std::vector<bool> taken(v.size());
        for (int j = 0; j < k; j++)
        {
            int best = -1;
            for (int i = 0; i < int(v.size()); i++)
                if (!taken[i] && (best < 0 || v[i] > v[best])) best = i;
            taken[best] = true;
            r.push_back(best);
        }
        return r;
    };
    for (int t = 0; t < T; t++)
    {
        std::vector<float> s(E), sel(E);
        for (int i = 0; i < E; i++) s[i] = 1.f / (1.f + std::exp(-logits[t * E + i])), sel[i] = s[i] + bias[i];
        if (groups > 1)
        {
            int per = E / groups;
            std::vector<float> gs(groups);
            for (int g = 0; g < groups; g++)
            {
                int best = g * per;
                for (int i = g * per; i < (g + 1) * per; i++)
                    if (sel[i] > sel[best]) best = i;
                float second = -INFINITY;
                for (int i = g * per; i < (g + 1) * per; i++)
                    if (i != best && sel[i] > second) second = sel[i];
                gs[g] = sel[best] + (per > 1 ? second : 0.f);
            }
            auto keep = top(gs, topk);
            for (int g = 0; g < groups; g++)
                if (std::find(keep.begin(), keep.end(), g) == keep.end())
                    for (int i = g * per; i < (g + 1) * per; i++) sel[i] = -INFINITY;
        }
        auto chosen = top(sel, A);
        float sum = 0;
        for (int a = 0; a < A; a++)
        {
            ids[t * P + a] = chosen[a];
            w[t * P + a] = biased ? sel[chosen[a]] : s[chosen[a]];
            sum += w[t * P + a];
        }
        for (int a = 0; a < A; a++)
        {
            if (renorm) w[t * P + a] /= sum + 1e-20f;
            w[t * P + a] *= scale;
        }
        for (int i = 0; i < S; i++) ids[t * P + A + i] = E + i, w[t * P + A + i] = 1.f;
    }
}

template <typename T> static T* upload(const std::vector<T>& h)
{
    T* d;
    cudaMalloc(&d, h.size() * sizeof(T) + 64);
    std::memcpy(d, h.data(), h.size() * sizeof(T));
    return d;
}

// ties: logits and bias from a few values, so that many selection values are exactly equal (chosen lowest index first).
static void check_route(int T, int E, int A, int S, int groups, int topk, bool renorm, bool biased, bool ties = false)
{
    const int P = A + S;
    std::vector<float> logits(T * E), bias(E);
    for (float& v : logits) v = ties ? std::round(normal()) : 2 * normal();
    for (float& v : bias) v = ties ? 0.25f * float(rng() % 2) : 0.1f * normal();
    std::vector<int> ids;
    std::vector<float> w;
    const float scale = 2.5f;
    route_reference(logits, bias, T, E, A, S, groups, topk, renorm, scale, biased, ids, w);
    int* d_ids = upload(std::vector<int>(T * P, -7));
    float* d_w = upload(std::vector<float>(T * P, NAN));
    emu_launch(kimi_moe_route_f32, dim3((T + MOE_ROUTE_WARPS - 1) / MOE_ROUTE_WARPS), dim3(MOE_ROUTE_WARPS * 32), 0, d_ids, d_w,
               upload(logits), upload(bias), T, E, A, S, groups, topk, int(renorm), scale, int(biased));
    int wrong = 0;
    double worst = 0;
    for (int i = 0; i < T * P; i++)
    {
        wrong += d_ids[i] != ids[i];
        worst = std::max(worst, std::fabs(double(d_w[i]) - w[i]) / std::max(1e-30, std::fabs(double(w[i]))));
    }
    char what[128];
    std::snprintf(what, sizeof what, "route T=%d E=%d A=%d S=%d groups=%d/%d renorm=%d biased=%d%s (ids wrong, weight err)", T, E, A,
                  S, groups, topk, renorm, biased, ties ? " ties" : "");
    report(wrong == 0 && worst <= 1e-6, what, wrong + worst);
}

// A random router [E, D] and correction bias [E]; with `ties`, experts 2k and 2k + 1 get the same row and bias, so
// every logit and selection is tied with its neighbour's.
static void random_router(int E, int D, bool ties, std::vector<uint16_t>& router, std::vector<float>& bias)
{
    router.resize(size_t(E) * D);
    for (uint16_t& v : router) v = f2bf(0.05f * normal());
    bias.resize(E);
    for (float& v : bias) v = 0.1f * normal();
    if (ties)
        for (int e = 1; e < E; e += 2)
        {
            std::copy_n(router.begin() + size_t(e - 1) * D, D, router.begin() + size_t(e) * D);
            bias[e] = bias[e - 1];
        }
}

// The fused decode router + route: logits against a double x · routerᵀ from the same bf16 rows (≤ 1e-5 relative), ids
// and weights against route_reference on the kernel's own logits (so a near tie cannot flip the comparison), and twice in
// a row with new inputs (the arrival counter is back to zero after each launch). With `ties`, experts 2k and 2k + 1 have
// the same row and bias, so every logit and selection is tied with its neighbour's and the lower index must win.
static void check_router_route(int T, int D, int E, int A, int S, int groups, int topk, bool ties = false)
{
    const int P = A + S;
    std::vector<uint16_t> router;
    std::vector<float> bias;
    random_router(E, D, ties, router, bias);
    unsigned* arrivals = upload(std::vector<unsigned>(1, 0));
    const int blocks = (E + MOE_ROUTER_WARPS - 1) / MOE_ROUTER_WARPS;
    for (int round = 0; round < 2; round++)
    {
        std::vector<float> x(size_t(T) * D);
        for (float& v : x) v = normal();
        float* d_logits = upload(std::vector<float>(size_t(T) * E, NAN));
        int* d_ids = upload(std::vector<int>(T * P, -7));
        float* d_w = upload(std::vector<float>(T * P, NAN));
        emu_launch(kimi_moe_router_route_f32, dim3(blocks), dim3(MOE_ROUTER_WARPS * 32), 0, d_ids, d_w, d_logits, arrivals,
                   upload(x), upload(router), upload(bias), T, D, E, A, S, groups, topk, 1, 2.5f, 0);
        double logit_err = 0;
        for (int t = 0; t < T; t++)
            for (int e = 0; e < E; e++)
            {
                double want = 0, scale = 0;
                for (int k = 0; k < D; k++)
                {
                    const double term = double(bf2f(router[size_t(e) * D + k])) * x[size_t(t) * D + k];
                    want += term, scale += std::fabs(term);
                }
                logit_err = std::max(logit_err, std::fabs(d_logits[size_t(t) * E + e] - want) / std::max(scale, 1e-30));
            }
        std::vector<int> ids;
        std::vector<float> w;
        route_reference(std::vector<float>(d_logits, d_logits + size_t(T) * E), bias, T, E, A, S, groups, topk, true, 2.5f, false, ids, w);
        int wrong = 0;
        double worst = 0;
        for (int i = 0; i < T * P; i++)
        {
            wrong += d_ids[i] != ids[i];
            worst = std::max(worst, std::fabs(double(d_w[i]) - w[i]) / std::max(1e-30, std::fabs(double(w[i]))));
        }
        char what[160];
        std::snprintf(what, sizeof what, "router+route T=%d D=%d E=%d A=%d S=%d groups=%d/%d%s, call %d (logit err, ids wrong, weight err, arrivals)",
                      T, D, E, A, S, groups, topk, ties ? " ties" : "", round + 1);
        report(logit_err <= 1e-5 && wrong == 0 && worst <= 1e-6 && *arrivals == 0, what, logit_err + wrong + worst + *arrivals);
    }
}

// The cluster router (kimi_moe_router_route_cluster_f32, E = 256) against the one-kernel router on the same inputs:
// logits, ids and weights equal to the bit (the same sums in the same order, the same route), twice in a row.
static void check_router_cluster(int T, int D, int A, int S, bool ties = false)
{
    const int E = 256, P = A + S;
    std::vector<uint16_t> router;
    std::vector<float> bias;
    random_router(E, D, ties, router, bias);
    unsigned* arrivals = upload(std::vector<unsigned>(1, 0));
    for (int round = 0; round < 2; round++)
    {
        std::vector<float> x(size_t(T) * D);
        for (float& v : x) v = normal();
        float* want_logits = upload(std::vector<float>(size_t(T) * E, NAN));
        int* want_ids = upload(std::vector<int>(T * P, -7));
        float* want_w = upload(std::vector<float>(T * P, NAN));
        emu_launch(kimi_moe_router_route_f32, dim3(E / MOE_ROUTER_WARPS), dim3(MOE_ROUTER_WARPS * 32), 0, want_ids, want_w, want_logits,
                   arrivals, upload(x), upload(router), upload(bias), T, D, E, A, S, 1, 1, 1, 2.5f, 0);
        float* logits = upload(std::vector<float>(size_t(T) * E, NAN));
        int* ids = upload(std::vector<int>(T * P + 3, -7));
        float* w = upload(std::vector<float>(T * P + 3, NAN));
        emu_launch_cluster(kimi_moe_router_route_cluster_f32, MOE_RC_BLOCKS, dim3(MOE_RC_BLOCKS), dim3(MOE_RC_WARPS * 32),
                           router_cluster_smem_bytes(D, T), ids, w, logits, upload(x), upload(router), upload(bias), T, D, A, S, 1, 2.5f, 0);
        int differ = 0;
        for (int i = 0; i < T * E; i++) differ += std::memcmp(&logits[i], &want_logits[i], 4) != 0;
        for (int i = 0; i < T * P; i++) differ += ids[i] != want_ids[i] || std::memcmp(&w[i], &want_w[i], 4) != 0;
        for (int i = T * P; i < T * P + 3; i++) differ += ids[i] != -7 || !std::isnan(w[i]);
        char what[160];
        std::snprintf(what, sizeof what, "cluster router T=%d D=%d A=%d S=%d%s, call %d == one-kernel router (values differing)", T, D, A, S,
                      ties ? " ties" : "", round + 1);
        report(differ == 0, what, differ);
    }
}

// E and A count the S shared experts too (the kernels' view): each token's last S pairs are (E - S + s, 1.0).
struct Moe
{
    int T, D, E, A, F, S;
    std::vector<float> x, w;
    std::vector<int> ids;
    std::vector<uint16_t> gate_up, down;
};

// E routed and S shared experts, A routed pairs a token.
static Moe make_moe(int T, int D, int E, int A, int F, int S = 0)
{
    Moe m{T, D, E + S, A + S, F, S, {}, {}, {}, {}, {}};
    m.x.resize(size_t(T) * D);
    for (float& v : m.x) v = normal();
    m.gate_up.resize(size_t(m.E) * 2 * F * D);
    for (auto& v : m.gate_up) v = f2bf(normal() / std::sqrt(float(D)));
    m.down.resize(size_t(m.E) * D * F);
    for (auto& v : m.down) v = f2bf(normal() / std::sqrt(float(F)));
    for (int t = 0; t < T; t++)
    {
        std::vector<int> perm(E);
        for (int i = 0; i < E; i++) perm[i] = i;
        std::shuffle(perm.begin(), perm.end(), rng);
        for (int a = 0; a < A; a++) m.ids.push_back(perm[a]), m.w.push_back(0.2f + std::uniform_real_distribution<float>(0, 1)(rng));
        for (int s = 0; s < S; s++) m.ids.push_back(E + s), m.w.push_back(1.f);
    }
    return m;
}

// out = base + Σ_a w · expert(x), in double from the bf16 weights, x and h rounded to bf16.
static std::vector<double> moe_reference(const Moe& m, const std::vector<float>& base)
{
    std::vector<double> out(base.begin(), base.end());
    std::vector<double> h(m.F);
    for (int t = 0; t < m.T; t++)
        for (int a = 0; a < m.A; a++)
        {
            const int e = m.ids[t * m.A + a];
            for (int f = 0; f < m.F; f++)
            {
                double g = 0, u = 0;
                for (int k = 0; k < m.D; k++)
                {
                    double xv = bf2f(f2bf(m.x[size_t(t) * m.D + k]));
                    g += bf2f(m.gate_up[(size_t(e) * 2 * m.F + f) * m.D + k]) * xv;
                    u += bf2f(m.gate_up[(size_t(e) * 2 * m.F + m.F + f) * m.D + k]) * xv;
                }
                h[f] = bf2f(f2bf(float(g / (1 + std::exp(-g)) * u)));
            }
            for (int d = 0; d < m.D; d++)
            {
                double y = 0;
                for (int f = 0; f < m.F; f++) y += bf2f(m.down[(size_t(e) * m.D + d) * m.F + f]) * h[f];
                out[size_t(t) * m.D + d] += m.w[t * m.A + a] * y;
            }
        }
    return out;
}

static double rel_err(const std::vector<float>& got, const std::vector<double>& want)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); i++)
    {
        if (!std::isfinite(got[i])) return INFINITY;
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    return std::sqrt(num / den);
}

// The decode kernels' grid as MoeKernels sizes it for a GPU of `sms` SMs: one wave, the items spread evenly over its warps.
static int stream_blocks(int items, int warps, int blocks_per_sm, int sms)
{
    const long capacity = long(sms) * blocks_per_sm * warps, per_warp = (items + capacity - 1) / capacity;
    return int(((items + per_warp - 1) / per_warp + warps - 1) / warps);
}

// sms: the SM count the gate-up grid is sized for (few SMs: each warp streams many items, its ring crossing items).
static std::vector<float> run_decode(const Moe& m, const std::vector<float>& base, int sms = 132)
{
    float* out = upload(base);
    uint16_t* h = upload(std::vector<uint16_t>(size_t(m.T) * m.A * m.F, 0x7FC0));
    int* ids = upload(m.ids);
    const int gu_items = m.F / MOE_GU_F * m.T * m.A;
    emu_launch(kimi_moe_decode_gate_up, dim3(stream_blocks(gu_items, MOE_GU_WARPS, MOE_GU_BLOCKS_PER_SM, sms)), dim3(MOE_GU_WARPS * 32), 0,
               h, upload(m.x), ids, upload(m.gate_up), m.T, m.D, m.E, m.A, m.F, m.S);
    emu_launch(kimi_moe_decode_down, dim3(m.T, m.D / MOE_DOWN_ROWS), dim3(MOE_DOWN_WARPS * 32), 0,
               out, h, ids, upload(m.w), upload(m.down), m.T, m.D, m.E, m.A, m.F);
    return std::vector<float>(out, out + base.size());
}

// wgmma: the grouped GEMMs of kimi_moe_prefill_*_wgmma, on a persistent grid of `blocks` blocks (each takes several
// work items, its ring crossing them); otherwise the mma.sync ones.
static std::vector<float> run_prefill(const Moe& m, const std::vector<float>& base, bool wgmma = false, int blocks = 3)
{
    const int P = m.T * m.A, tiles = (P + MOE_TILE_M - 1) / MOE_TILE_M + m.E;
    float* out = upload(base);
    int* ids = upload(m.ids);
    int* counts = upload(std::vector<int>(m.E, 0));
    int* rank = upload(std::vector<int>(P, -3));
    int* offsets = upload(std::vector<int>(m.E + 1, -3));
    int* tile_start = upload(std::vector<int>(m.E + 1, -3));
    int* token_of_row = upload(std::vector<int>(P, -3));
    int* pair_of_row = upload(std::vector<int>(P, -3));
    uint16_t* xb = upload(std::vector<uint16_t>(size_t(m.T) * m.D, 0x7FC0));
    uint16_t* h = upload(std::vector<uint16_t>(size_t(P) * m.F, 0x7FC0));
    float* y = upload(std::vector<float>(size_t(P) * m.D, NAN));
    const int B = MOE_ELEMENTWISE_THREADS;
    emu_launch(kimi_moe_prefill_count, dim3(3), dim3(B), 0, counts, rank, xb, upload(m.x), ids, m.T, m.D, m.E, m.A);
    emu_launch(kimi_moe_prefill_schedule, dim3(1), dim3(32), 0, offsets, tile_start, counts, m.E);
    emu_launch(kimi_moe_prefill_place, dim3((P + B - 1) / B), dim3(B), 0, token_of_row, pair_of_row, ids, rank, offsets, P, m.E, m.A);
    if (wgmma)
    {
        emu_launch(kimi_moe_prefill_gate_up_wgmma, dim3(blocks), dim3(MOE_WG_THREADS), MOE_WG_SMEM_BYTES, h, xb, token_of_row,
                   offsets, tile_start, upload(m.gate_up), m.D, m.E, m.F);
        emu_launch(kimi_moe_prefill_down_wgmma, dim3(blocks), dim3(MOE_WG_THREADS), MOE_WG_SMEM_BYTES, y, h, pair_of_row,
                   offsets, tile_start, upload(m.down), m.D, m.E, m.F);
    }
    else
    {
        emu_launch(kimi_moe_prefill_gate_up, dim3((m.F + 63) / 64, tiles), dim3(MOE_GEMM_THREADS), MOE_GEMM_SMEM_BYTES, h, xb, token_of_row,
                   offsets, tile_start, upload(m.gate_up), m.D, m.E, m.F);
        emu_launch(kimi_moe_prefill_down, dim3((m.D + 127) / 128, tiles), dim3(MOE_GEMM_THREADS), MOE_GEMM_SMEM_BYTES, y, h, pair_of_row,
                   offsets, tile_start, upload(m.down), m.D, m.E, m.F);
    }
    emu_launch(kimi_moe_prefill_combine, dim3((m.T * m.D / 4 + B - 1) / B), dim3(B), 0, out, y, ids, upload(m.w), m.T, m.D, m.E, m.A);
    return std::vector<float>(out, out + base.size());
}

static void check_experts(int T, int D, int E, int A, int F, bool decode, bool prefill, int S = 0)
{
    Moe m = make_moe(T, D, E, A, F, S);
    std::vector<float> base(size_t(T) * D);
    for (float& v : base) v = normal();
    std::vector<double> want = moe_reference(m, base);
    std::vector<float> dec, pre;
    char what[128];
    if (decode)
    {
        // 132 SMs (the H100), 1 (every warp many items) and 3 (items not a multiple of the warps).
        for (int sms : {132, 1, 3})
        {
            dec = run_decode(m, base, sms);
            std::snprintf(what, sizeof what, "decode  T=%d D=%d E=%d A=%d F=%d S=%d, %d SMs vs double reference", T, D, E, A, F, S, sms);
            double err = rel_err(dec, want);
            report(err <= 1e-3, what, err);
        }
    }
    if (prefill)
    {
        pre = run_prefill(m, base);
        std::snprintf(what, sizeof what, "prefill T=%d D=%d E=%d A=%d F=%d S=%d vs double reference", T, D, E, A, F, S);
        double err = rel_err(pre, want);
        report(err <= 1e-3, what, err);
    }
    if (prefill)
    {
        // The wgmma GEMMs on 3 blocks (several items each) and on 1 (every item: the ring crosses them all).
        for (int blocks : {3, 1})
        {
            std::vector<float> wg = run_prefill(m, base, true, blocks);
            std::snprintf(what, sizeof what, "prefill wgmma, %d blocks, T=%d D=%d E=%d A=%d F=%d S=%d vs double reference", blocks, T, D, E, A, F, S);
            double err = rel_err(wg, want);
            report(err <= 1e-3, what, err);
            std::vector<double> p(pre.begin(), pre.end());
            err = rel_err(wg, p);
            std::snprintf(what, sizeof what, "prefill wgmma == mma.sync, %d blocks, T=%d", blocks, T);
            report(err <= 1e-4, what, err);
        }
    }
    if (decode && prefill)
    {
        std::vector<double> d(dec.begin(), dec.end());
        double err = rel_err(pre, d);
        std::snprintf(what, sizeof what, "prefill == decode T=%d", T);
        report(err <= 1e-4, what, err);
    }
}

// An expert id outside [0, E + S) makes its token's output NaN and leaves the other tokens as they are.
static void check_bad_id()
{
    Moe m = make_moe(3, 40, 8, 2, 24, 1);
    m.ids[4] = 9; // token 1, slot 1 (rows of 3 pairs)
    std::vector<float> base(size_t(m.T) * m.D, 1.f);
    // Decode for 132 SMs and for 1 (each warp streams several items, the bad pair's among them).
    for (int decode = 0; decode < 3; decode++)
    {
        std::vector<float> out = decode ? run_decode(m, base, decode == 1 ? 132 : 1) : run_prefill(m, base);
        bool ok = true;
        for (int t = 0; t < m.T; t++)
            for (int d = 0; d < m.D; d++) ok &= std::isnan(out[t * m.D + d]) == (t == 1);
        report(ok, decode == 2 ? "decode, 1 SM: a bad expert id poisons only its token" : decode ? "decode: a bad expert id poisons only its token" : "prefill: a bad expert id poisons only its token", 0);
    }
    std::vector<float> out = run_prefill(m, base, true);
    bool ok = true;
    for (int t = 0; t < m.T; t++)
        for (int d = 0; d < m.D; d++) ok &= std::isnan(out[t * m.D + d]) == (t == 1);
    report(ok, "prefill wgmma: a bad expert id poisons only its token", 0);
}

// --quick: the checks CI runs (KimiLinear.Tests' MoeKernelEmulatorTests), small shapes only; without it, also the
// model's D and F, ring refills and multi-tile prefill (about a minute).
int main(int argc, char** argv)
{
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    check_bad_id();
    check_route(37, 64, 8, 0, 1, 1, true, false);
    check_route(37, 64, 8, 1, 8, 4, true, false);
    check_route(37, 64, 8, 2, 8, 4, false, true);
    check_route(5, 8, 2, 1, 4, 2, true, true);
    check_route(9, 256, 8, 1, 1, 1, true, false);
    check_route(3, 1024, 32, 0, 32, 3, true, false);
    check_route(3, 1024, 30, 2, 32, 3, true, false); // A + S = 32: every lane writes a pair
    check_route(7, 100, 8, 1, 4, 2, true, true);      // E in (64, 256], not a multiple of 32: the 8-values-a-lane code
    check_route(4, 300, 8, 0, 1, 1, true, false);     // E over 256: the 32-values-a-lane code
    check_route(9, 256, 8, 1, 1, 1, true, false, true);
    check_route(9, 64, 8, 1, 8, 4, true, true, true);
    check_router_route(1, 40, 64, 8, 1, 8, 4);
    check_router_route(5, 96, 13, 3, 2, 1, 1);        // E not a multiple of the block's experts
    check_router_route(16, 3200, 64, 8, 1, 1, 1);     // D beyond the slots held before the wait; the largest decode batch
    check_router_route(1, 2304, 256, 8, 1, 1, 1);     // the real configuration's decode step
    check_router_route(1, 2304, 256, 8, 1, 1, 1, true);
    check_router_route(3, 64, 200, 8, 1, 1, 1, true); // the block route with a part-filled warp of candidates
    check_router_route(2, 64, 100, 1, 0, 1, 1);       // one choice
    check_router_cluster(1, 2304, 8, 1);              // the real configuration's decode step
    check_router_cluster(1, 2304, 8, 1, true);        // ties: the lower index wins, as in the one-kernel route
    check_router_cluster(3, 96, 8, 2);                // two shared experts, three tokens
    check_router_cluster(16, 200, 1, 0);              // the largest batch, one choice
    check_router_route(2, 64, 300, 8, 1, 1, 1);       // E over 256: a warp routes each token
    check_experts(1, 40, 8, 2, 24, true, true);
    check_experts(3, 40, 8, 2, 24, true, true);
    check_experts(16, 40, 8, 3, 24, true, true); // 48 pairs: the gate-up id scan takes two rounds of 32; several token passes
    check_experts(2, 48, 4, 2, 40, true, false); // five blocks of gate-up rows, D8 = 6 of 32 lanes
    check_experts(77, 40, 8, 2, 24, false, true);
    check_experts(5, 40, 8, 2, 24, true, true, 1);   // a shared expert: every token names expert E
    check_experts(16, 40, 8, 3, 24, true, true, 2);  // two shared experts, the largest decode batch
    check_experts(45, 40, 8, 2, 24, false, true, 1); // prefill: the shared expert's T rows are one more group
    check_experts(45, 136, 3, 2, 72, false, true, 1); // several k steps, K not a multiple of 64, partial column blocks
    // The wgmma epilogue: tiles of 64 < rows < 128 (both consumer warpgroups write, the second partly), two column
    // blocks a GEMM with the last one partial (gate-up: 8 of 128 f; down: 8 of 256 columns, one pass of four).
    check_experts(100, 264, 2, 2, 136, false, true, 1);
    if (!quick)
    {
        check_experts(16, 40, 8, 2, 24, true, false);
        check_experts(2, 4096, 5, 3, 1040, true, false);   // gate-up ring refills; down's K crosses pairs inside a slot
        check_experts(3, 2304, 12, 10, 1024, true, false); // the model's D and F; A = 10: down's ring refills
        check_experts(150, 200, 2, 2, 136, false, true);   // > 1 tile per expert, several k-tiles, partial n-tiles
        check_experts(16, 200, 3, 2, 136, true, true);
        check_experts(150, 200, 2, 2, 136, false, true, 2); // each shared expert > 1 tile
    }
    std::printf("%d failed\n", failures);
    return failures != 0;
}
