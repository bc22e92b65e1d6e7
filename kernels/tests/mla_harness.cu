// mla_harness.cu — CPU check of kernels/mla.cu on the CUDA emulator (kernels/kda/tests/cuda_emu.h), before GPU time:
//   g++ -O1 -std=c++17 -DKDA_EMULATE -x c++ -o /tmp/mla_emu kernels/tests/mla_harness.cu && /tmp/mla_emu
// Every kernel against a float64 reference of the same math on random data of odd sizes, the cache rows past the
// visible length poisoned with NaN. Error = ‖out − ref‖ / ‖ref‖ (limit 2e-3; the hi/lo splits keep it near 1e-6).
// The tests that count are KimiLinear.Tests/Cuda/MlaKernelTests.cs on the GPU; this is the fast development loop.
#include "../mla.cu"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using namespace mla;   // the extern "C" kernels live in the namespace too

static uint16_t f2bf(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
static float bf2f(uint16_t b) { return bf16_to_f32(b); }
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
static void report(const char* what, const std::vector<float>& got, const std::vector<double>& ref) {
    double num = 0, den = 0;
    bool nan = false;
    for (size_t i = 0; i < ref.size(); i++) {
        if (!std::isfinite(got[i])) nan = true;
        num += (got[i] - ref[i]) * (got[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    const double err = std::sqrt(num / den);
    const bool ok = !nan && err <= 2e-3;
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

static void check_decode(Shape sh, int start, int T, int splits) {
    const int D = sh.R + sh.P, L = start + T, MT = (sh.H + 15) / 16;
    std::vector<uint16_t> lat = rand_bf16(size_t(L + 5) * D, 1.f);
    for (size_t i = size_t(L) * D; i < lat.size(); i++) lat[i] = 0x7FC0;   // rows past L: NaN
    std::vector<float> qlat = rand_f32(size_t(T) * sh.H * D, 0.3f);
    const float scale = 1.f / std::sqrt(float(sh.N + sh.P));
    std::vector<float> po(size_t(T) * splits * sh.H * sh.R, NAN), pml(size_t(T) * splits * sh.H * 2, NAN), out(size_t(T) * sh.H * sh.R, NAN);
    int startv = start;
    emu_launch(kimi_mla_decode_partial, 1, dim3(splits, T), dim3(kDecodeThreads), mla::decode_smem_bytes(D, MT),
               po.data(), pml.data(), (const float*)qlat.data(), (const uint16_t*)lat.data(), (const int*)&startv, sh.H, sh.R, D,
               scale * 1.4426950408889634f);
    emu_launch(kimi_mla_decode_combine, 1, dim3(sh.H, T), dim3(mla::kCombineThreads), size_t(splits) * 4,
               out.data(), (const float*)po.data(), (const float*)pml.data(), sh.H, sh.R, splits);
    char what[128];
    std::snprintf(what, sizeof what, "decode H=%d R=%d P=%d start=%d T=%d splits=%d", sh.H, sh.R, sh.P, start, T, splits);
    report(what, out, decode_ref(qlat, lat, start, T, sh, scale));
}

static void check_absorb(Shape sh, int T) {
    const int D = sh.R + sh.P, qk = sh.N + sh.P;
    std::vector<uint16_t> kvb = rand_bf16(size_t(sh.H) * (sh.N + sh.V) * sh.R, 0.1f);
    std::vector<float> q = rand_f32(size_t(T) * sh.H * qk, 1.f), qlat(size_t(T) * sh.H * D, NAN);
    emu_launch(kimi_mla_absorb_query, 1, dim3((sh.R + 63) / 64, sh.H), dim3(mla::kAbsorbThreads),
               size_t(mla::kAbsorbGroups) * mla::kAbsorbTokens * mla::kAbsorbColumns * 4,
               qlat.data(), (const float*)q.data(), (const uint16_t*)kvb.data(), T, sh.H, sh.N, sh.P, sh.V, sh.R);
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

    std::vector<float> ol = rand_f32(size_t(T) * sh.H * sh.R, 1.f), o(size_t(T) * sh.H * sh.V, NAN);
    emu_launch(kimi_mla_absorb_output, 1, dim3((sh.V + 3) / 4, sh.H), dim3(mla::kAbsorbThreads), 0,
               o.data(), (const float*)ol.data(), (const uint16_t*)kvb.data(), T, sh.H, sh.N, sh.V, sh.R);
    std::vector<double> oref(o.size());
    for (int t = 0; t < T; t++)
        for (int h = 0; h < sh.H; h++)
            for (int v = 0; v < sh.V; v++) {
                double s = 0;
                for (int r = 0; r < sh.R; r++)
                    s += double(bf2f(kvb[(size_t(h) * (sh.N + sh.V) + sh.N + v) * sh.R + r])) * ol[(size_t(t) * sh.H + h) * sh.R + r];
                oref[size_t(t) * sh.H * sh.V + h * sh.V + v] = s;
            }
    std::snprintf(what, sizeof what, "absorb output H=%d V=%d R=%d T=%d", sh.H, sh.V, sh.R, T);
    report(what, o, oref);
}

static void check_prefill(Shape sh, int start, int T, bool exact) {
    const int L = start + T, D = sh.R + sh.P, qk = sh.N + sh.P, pv = sh.N + sh.V;
    std::vector<uint16_t> q = rand_bf16(size_t(T) * sh.H * qk, 1.f);
    std::vector<uint16_t> kv = rand_bf16(size_t(L + 3) * sh.H * pv, 1.f), lat = rand_bf16(size_t(L + 3) * D, 1.f);
    for (size_t i = size_t(L) * sh.H * pv; i < kv.size(); i++) kv[i] = 0x7FC0;
    for (size_t i = size_t(L) * D; i < lat.size(); i++) lat[i] = 0x7FC0;
    const float scale = 1.f / std::sqrt(float(qk));
    std::vector<float> o(size_t(T) * sh.H * sh.V, NAN);
    auto kernel = exact ? kimi_mla_prefill_d192_v128 : kimi_mla_prefill_general;
    emu_launch(kernel, 1, dim3((T + 63) / 64, sh.H), dim3(mla::kPrefillThreads), mla::prefill_smem_bytes(qk, sh.V),
               o.data(), (const uint16_t*)q.data(), (const uint16_t*)kv.data(), (const uint16_t*)lat.data(), start, T, sh.H, sh.N, sh.P,
               sh.V, sh.R, scale * 1.4426950408889634f);
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
    std::snprintf(what, sizeof what, "prefill%s H=%d N=%d P=%d V=%d start=%d T=%d", exact ? " d192" : "", sh.H, sh.N, sh.P, sh.V, start, T);
    report(what, o, ref);
}

int main() {
    const Shape tiny{4, 32, 16, 32, 64}, full{32, 128, 64, 128, 512};
    check_absorb(tiny, 3);
    check_absorb({3, 32, 16, 32, 192}, 5);
    check_decode(tiny, 0, 1, 5);
    check_decode(tiny, 5, 3, 5);
    check_decode(tiny, 300, 2, 3);
    check_decode({20, 32, 16, 32, 128}, 37, 2, 3);
    check_prefill(tiny, 0, 37, false);
    check_prefill(tiny, 5, 3, false);
    check_prefill({2, 24, 8, 40, 64}, 70, 67, false);
    check_prefill({2, 128, 64, 128, 512}, 9, 20, true);
    check_decode(full, 40, 1, 2);
    std::printf("%d failed\n", failures);
    return failures != 0;
}
