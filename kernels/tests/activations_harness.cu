// activations_harness.cu — CPU-emulator checks of kernels/activations.cu and the fp32-x GEMV of kernels/gemv.cu,
// for developing them without a GPU (nvcc and the device are on the lent GPU machine only). Run by
// activations_emu_check.sh, and so by ActivationKernelEmulatorTests in CI:
//   g++ -O1 -std=c++17 -I kernels/tests/emu -x c++ kernels/tests/activations_harness.cu && ./a.out
// Every kernel runs on the fiber emulator (kernels/kda/tests/cuda_emu.h: real __syncthreads and warp-shuffle
// semantics) against a double-precision reference of the same contract, at odd sizes, through both the 16-byte and
// the element-wise paths (a pointer one float into a buffer is not 16-byte aligned), with NaN-poisoned output tails.
// The GPU tests (KimiLinear.Tests/Cuda/ActivationKernelTests.cs) check the same against the C# CPU backend on the card.
#include "../activations.cu"
#include "../gemv.cu"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

static int g_failed = 0, g_passed = 0;
static std::mt19937 g_rng(1234);
constexpr int TAIL = 5;

static float randn(float scale = 1) { return std::normal_distribution<float>(0, scale)(g_rng); }
static std::vector<float> randv(size_t n, float scale = 1)
{
    std::vector<float> v(n);
    for (float& x : v) x = randn(scale);
    return v;
}
static uint16_t f2bf(float f) { __nv_bfloat16 b = __float2bfloat16_rn(f); return b.bits; }
static float bf2f(uint16_t b) { uint32_t u = uint32_t(b) << 16; float f; std::memcpy(&f, &u, 4); return f; }
static std::vector<float> poisoned(size_t n, size_t offset) { return std::vector<float>(offset + n + TAIL, NAN); }

// ‖got − want‖ / ‖want‖ ≤ tol over n values, no NaN where want is finite, and the TAIL values after got[n] still NaN.
static void check(const char* what, const float* got, const std::vector<double>& want, double tol)
{
    double d2 = 0, r2 = 0;
    bool ok = true;
    for (size_t i = 0; i < want.size(); i++)
    {
        if (!std::isfinite(want[i])) // NaN must stay NaN, an infinity must be that infinity; neither enters the norms
        {
            ok &= std::isnan(want[i]) ? std::isnan(got[i]) : double(got[i]) == want[i];
            continue;
        }
        d2 += (got[i] - want[i]) * (got[i] - want[i]);
        r2 += want[i] * want[i];
    }
    for (int i = 0; i < TAIL; i++) ok &= std::isnan(got[want.size() + i]);
    const double rel = r2 > 0 ? std::sqrt(d2 / r2) : std::sqrt(d2);
    ok &= rel <= tol;
    std::printf("%s %-60s rel %.2e\n", ok ? "PASS" : "FAIL", what, rel);
    (ok ? g_passed : g_failed)++;
}

static void test_embed(int T, int D, int V)
{
    std::vector<uint16_t> table(size_t(V) * D);
    for (auto& b : table) b = f2bf(randn());
    std::vector<int> ids(T);
    for (int t = 0; t < T; t++) ids[t] = int(g_rng() % V);
    ids[T / 2] = V; // out of range: a NaN row
    std::vector<float> out = poisoned(size_t(T) * D, 0);
    std::vector<double> want(size_t(T) * D);
    for (int t = 0; t < T; t++)
        for (int d = 0; d < D; d++) want[size_t(t) * D + d] = ids[t] < V ? bf2f(table[size_t(ids[t]) * D + d]) : NAN;
    emu_launch(kimi_embed_f32, dim3(T), dim3(ROW_THREADS), 0, out.data(), table.data(), ids.data(), T, D, V);
    char name[96];
    std::snprintf(name, sizeof name, "embed T=%d D=%d V=%d", T, D, V);
    check(name, out.data(), want, 0);
}

// withAdd: the residual form, x += add then the norm of the sum (x must then hold the sum afterwards).
static void test_rmsnorm(int T, int N, int offset, bool inPlace, bool withAdd = false)
{
    std::vector<float> x = randv(size_t(T) * N, 3), w = randv(N), add = randv(size_t(T) * N, 2);
    std::vector<double> want(size_t(T) * N), sum(size_t(T) * N);
    for (size_t i = 0; i < sum.size(); i++) sum[i] = withAdd ? float(x[i] + add[i]) : x[i];
    for (int t = 0; t < T; t++)
    {
        double ss = 0;
        for (int i = 0; i < N; i++) ss += sum[size_t(t) * N + i] * sum[size_t(t) * N + i];
        const double inv = 1 / std::sqrt(ss / N + 1e-5);
        for (int i = 0; i < N; i++) want[size_t(t) * N + i] = sum[size_t(t) * N + i] * inv * w[i];
    }
    std::vector<float> bx = poisoned(x.size(), offset), by = poisoned(x.size(), offset);
    std::copy(x.begin(), x.end(), bx.begin() + offset);
    float* y = inPlace ? bx.data() + offset : by.data() + offset;
    emu_launch(kimi_rmsnorm_f32, dim3(T), dim3(ROW_THREADS), 0, y, bx.data() + offset, withAdd ? (const float*)add.data() : nullptr,
               (const float*)w.data(), T, N, 1e-5f);
    char name[96];
    std::snprintf(name, sizeof name, "rmsnorm%s T=%d N=%d offset=%d%s", withAdd ? " + residual" : "", T, N, offset, inPlace ? " in place" : "");
    check(name, y, want, 1e-6);
    if (withAdd && !inPlace)
        check((std::string(name) + ": x holds the sum").c_str(), bx.data() + offset, sum, 0);
}

static void test_gated_rmsnorm(int rows, int W, int offset, bool inPlace)
{
    std::vector<float> o = randv(size_t(rows) * W, 2), z = randv(size_t(rows) * W, 3), w = randv(W);
    std::vector<double> want(o.size());
    for (int r = 0; r < rows; r++)
    {
        double ss = 0;
        for (int i = 0; i < W; i++) ss += double(o[size_t(r) * W + i]) * o[size_t(r) * W + i];
        const double inv = 1 / std::sqrt(ss / W + 1e-5);
        for (int i = 0; i < W; i++)
            want[size_t(r) * W + i] = o[size_t(r) * W + i] * inv * w[i] / (1 + std::exp(-double(z[size_t(r) * W + i])));
    }
    std::vector<float> bo = poisoned(o.size(), offset), bz = poisoned(o.size(), offset), by = poisoned(o.size(), offset);
    std::copy(o.begin(), o.end(), bo.begin() + offset);
    std::copy(z.begin(), z.end(), bz.begin() + offset);
    float* y = inPlace ? bo.data() + offset : by.data() + offset;
    emu_launch(kimi_gated_rmsnorm_f32, dim3((rows + GATED_ROWS - 1) / GATED_ROWS), dim3(GATED_ROWS * 32), 0, y,
               (const float*)bo.data() + offset, (const float*)bz.data() + offset, (const float*)w.data(), rows, W, 1e-5f);
    char name[96];
    std::snprintf(name, sizeof name, "gated rmsnorm rows=%d W=%d offset=%d%s", rows, W, offset, inPlace ? " in place" : "");
    check(name, y, want, 1e-6);
}

// o as bf16 bits (the KDA core's output on the model's bf16 prefill path): the same norm of the widened values.
static void test_gated_rmsnorm_bf16o(int rows, int W, int offset)
{
    std::vector<uint16_t> o(offset + size_t(rows) * W);
    for (auto& b : o) b = f2bf(randn(2));
    std::vector<float> z = randv(size_t(rows) * W, 3), w = randv(W);
    std::vector<double> want(size_t(rows) * W);
    for (int r = 0; r < rows; r++)
    {
        double ss = 0;
        for (int i = 0; i < W; i++) ss += double(bf2f(o[offset + size_t(r) * W + i])) * bf2f(o[offset + size_t(r) * W + i]);
        const double inv = 1 / std::sqrt(ss / W + 1e-5);
        for (int i = 0; i < W; i++)
            want[size_t(r) * W + i] = bf2f(o[offset + size_t(r) * W + i]) * inv * w[i] / (1 + std::exp(-double(z[size_t(r) * W + i])));
    }
    std::vector<float> by = poisoned(want.size(), 0);
    emu_launch(kimi_gated_rmsnorm_bf16o, dim3((rows + GATED_ROWS - 1) / GATED_ROWS), dim3(GATED_ROWS * 32), 0, by.data(),
               (const uint16_t*)o.data() + offset, (const float*)z.data(), (const float*)w.data(), rows, W, 1e-5f);
    char name[96];
    std::snprintf(name, sizeof name, "gated rmsnorm, bf16 o, rows=%d W=%d o offset=%d", rows, W, offset);
    check(name, by.data(), want, 1e-6);
}

// add, SwiGLU (output = gate: in place); `blocks` small so that the grid-stride loop takes several passes.
static void test_elements(long long n, int offset, int blocks)
{
    std::vector<float> a = randv(n, 2), b = randv(n, 3);
    std::vector<double> sum(n), swiglu(n);
    for (long long i = 0; i < n; i++)
    {
        sum[i] = double(a[i]) + b[i];
        swiglu[i] = a[i] / (1 + std::exp(-double(a[i]))) * b[i];
    }
    char name[96];
    std::vector<float> ba = poisoned(n, offset), bb = poisoned(n, offset);
    std::copy(a.begin(), a.end(), ba.begin() + offset);
    std::copy(b.begin(), b.end(), bb.begin() + offset);
    float *pa = ba.data() + offset, *pb = bb.data() + offset;
    emu_launch(kimi_swiglu_f32, dim3(blocks), dim3(ROW_THREADS), 0, pa, (const float*)pa, (const float*)pb, n);
    std::snprintf(name, sizeof name, "swiglu in place n=%lld offset=%d blocks=%d", n, offset, blocks);
    check(name, pa, swiglu, 1e-6);
    std::copy(a.begin(), a.end(), ba.begin() + offset);
    emu_launch(kimi_add_f32, dim3(blocks), dim3(ROW_THREADS), 0, pa, (const float*)pb, n);
    std::snprintf(name, sizeof name, "add n=%lld offset=%d blocks=%d", n, offset, blocks);
    check(name, pa, sum, 1e-7);
}

static void test_conversions(long long n, int offset)
{
    std::vector<float> x = randv(n, 100);
    const float special[] = {1.00390625f /* tie: rounds down to even */, 1.01171875f /* tie: up to even */, INFINITY, -INFINITY, NAN, 1e-40f};
    for (int i = 0; i < 6 && i < n; i++) x[i] = special[i];
    std::vector<float> bx = poisoned(n, offset);
    std::copy(x.begin(), x.end(), bx.begin() + offset);
    std::vector<uint16_t> by(offset + n + TAIL, 0xFFFF);
    emu_launch(kimi_f32_to_bf16, dim3(3), dim3(ROW_THREADS), 0, by.data() + offset, (const float*)bx.data() + offset, n);
    bool ok = true;
    for (long long i = 0; i < n; i++)
    {
        uint32_t u;
        std::memcpy(&u, &x[i], 4);
        // Round to nearest even by the integer rule (independent of the emulator's own conversion).
        const uint16_t want = std::isnan(x[i]) ? 0 : uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
        const uint16_t got = by[offset + i];
        if (std::isnan(x[i]) ? !std::isnan(bf2f(got)) : got != want) ok = false;
    }
    for (int i = 0; i < TAIL; i++) ok &= by[offset + n + i] == 0xFFFF;
    std::printf("%s %-60s\n", ok ? "PASS" : "FAIL", ("f32 -> bf16 n=" + std::to_string(n) + " offset=" + std::to_string(offset)).c_str());
    (ok ? g_passed : g_failed)++;

    // hi + lo carries about 16 significant bits of x.
    std::vector<uint16_t> hi(n), lo(n);
    emu_launch(kimi_split_bf16, dim3(3), dim3(ROW_THREADS), 0, hi.data(), lo.data(), (const float*)bx.data() + offset, n);
    bool split = true;
    for (long long i = 0; i < n; i++)
        if (std::isfinite(x[i]) && std::fabs(double(bf2f(hi[i])) + bf2f(lo[i]) - x[i]) > std::fabs(x[i]) * std::ldexp(1.0, -16) + 1e-38) split = false;
    std::printf("%s %-60s\n", split ? "PASS" : "FAIL", ("split bf16 n=" + std::to_string(n) + " offset=" + std::to_string(offset)).c_str());
    (split ? g_passed : g_failed)++;
}

static void test_gather_scatter(int T, int C, int count)
{
    std::vector<float> x = randv(size_t(T) * C);
    std::vector<int> rows(count);
    for (int i = 0; i < count; i++) rows[i] = int(g_rng() % T);
    rows[count - 1] = T; // out of range: a NaN row
    std::vector<double> want(size_t(count) * C);
    for (int i = 0; i < count; i++)
        for (int c = 0; c < C; c++) want[size_t(i) * C + c] = rows[i] < T ? x[size_t(rows[i]) * C + c] : NAN;
    std::vector<float> y = poisoned(want.size(), 0);
    emu_launch(kimi_gather_rows_f32, dim3(count), dim3(ROW_THREADS), 0, y.data(), (const float*)x.data(), (const int*)rows.data(), count, C, T);
    check(("gather rows T=" + std::to_string(T) + " C=" + std::to_string(C) + " count=" + std::to_string(count)).c_str(), y.data(), want, 0);

    // Scatter-add: distinct rows (a shuffled prefix of 0..T-1) and one out of range, which must be skipped.
    std::vector<int> perm(T);
    for (int i = 0; i < T; i++) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), g_rng);
    const int n = std::min(count, T);
    std::vector<int> srows(perm.begin(), perm.begin() + n);
    srows.push_back(T);
    std::vector<float> xs = randv(size_t(n + 1) * C), scales = randv(n + 1), acc = randv(size_t(T) * C);
    std::vector<double> wacc(acc.begin(), acc.end());
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) wacc[size_t(srows[i]) * C + c] += double(scales[i]) * xs[size_t(i) * C + c];
    acc.resize(acc.size() + TAIL, NAN);
    emu_launch(kimi_scatter_add_rows_f32, dim3(n + 1), dim3(ROW_THREADS), 0, acc.data(), (const float*)xs.data(),
               (const int*)srows.data(), (const float*)scales.data(), n + 1, C, T);
    check(("scatter-add rows T=" + std::to_string(T) + " C=" + std::to_string(C) + " count=" + std::to_string(n)).c_str(), acc.data(), wacc, 1e-6);
}

// The normalised columns within a bf16 rounding (1/256 relative) of a double RmsNorm, the copied ones exact.
static void test_latent(int T, int A, int B, int capacity, int first)
{
    std::vector<float> l = randv(size_t(T) * A), r = randv(size_t(T) * B), w = randv(A);
    const float eps = 1e-6f;
    std::vector<uint16_t> latent(size_t(capacity) * (A + B) + TAIL, 0xFFFF);
    int firstRow = first;
    emu_launch(kimi_write_latent_rows_f32, dim3(T), dim3(ROW_THREADS), 0, latent.data(), (const float*)l.data(), (const float*)w.data(),
               eps, (const float*)r.data(), T, A, B, (const int*)&firstRow, capacity);
    const bool fits = first >= 0 && first + T <= capacity;
    bool ok = true;
    for (int row = 0; row < capacity; row++)
    {
        const int i = row - first;
        const bool written = fits && i >= 0 && i < T;
        double inv = 0;
        if (written)
        {
            double sumsq = 0;
            for (int c = 0; c < A; c++) sumsq += double(l[size_t(i) * A + c]) * l[size_t(i) * A + c];
            inv = 1 / std::sqrt(sumsq / A + eps);
        }
        for (int c = 0; c < A + B; c++)
        {
            const uint16_t got = latent[size_t(row) * (A + B) + c];
            if (written && c < A)
            {
                const double want = l[size_t(i) * A + c] * inv * w[c];
                ok &= std::fabs(bf2f(got) - want) <= std::fabs(want) / 256;
            }
            else
                ok &= got == (written ? f2bf(r[size_t(i) * B + c - A]) : 0xFFFF);
        }
    }
    for (int i = 0; i < TAIL; i++) ok &= latent[size_t(capacity) * (A + B) + i] == 0xFFFF;
    std::printf("%s latent rows T=%d A=%d B=%d capacity=%d first=%d%s\n", ok ? "PASS" : "FAIL", T, A, B, capacity, first,
                fits ? "" : " (past the capacity: nothing written)");
    (ok ? g_passed : g_failed)++;
}

// Products of [rows_per_x, K] weight blocks each with its own x (rows_per_x = N: one GEMV).
static void test_gemv(int N, int K, int rows_per_x = 0)
{
    if (rows_per_x == 0) rows_per_x = N;
    const int segments = (N + rows_per_x - 1) / rows_per_x;
    std::vector<uint16_t> w(size_t(N) * K);
    for (auto& b : w) b = f2bf(randn());
    std::vector<float> x = randv(size_t(segments) * K);
    std::vector<double> want(N);
    for (int n = 0; n < N; n++)
    {
        const float* xs = x.data() + size_t(n / rows_per_x) * K;
        double s = 0;
        for (int k = 0; k < K; k++) s += double(bf2f(w[size_t(n) * K + k])) * xs[k];
        want[n] = s;
    }
    std::vector<float> y = poisoned(N, 0);
    emu_launch(kimi_gemv_f32, dim3((N + GemvF32Layout::ROWS_PER_BLOCK - 1) / GemvF32Layout::ROWS_PER_BLOCK), dim3(GemvF32Layout::WARPS * 32), 0, y.data(),
               (const uint16_t*)w.data(), (const float*)x.data(), N, K, rows_per_x);
    check(("gemv fp32 x N=" + std::to_string(N) + " K=" + std::to_string(K) + " rows_per_x=" + std::to_string(rows_per_x)).c_str(), y.data(), want, 1e-5);
}

// The streaming GEMV (grid: one wave of `blocks`, as MatmulKernels sizes it; fewer warps than items exercises the
// ring across items): y = W · x per product of rows_per_x rows, or with `norm` y = W · RMSNorm(x) of one x row.
static void test_gemv_stream(int N, int K, int blocks, bool norm, int rows_per_x = 0, int offset = 0)
{
    if (rows_per_x == 0) rows_per_x = N;
    const int segments = (N + rows_per_x - 1) / rows_per_x;
    std::vector<uint16_t> w(size_t(N) * K);
    for (auto& b : w) b = f2bf(randn());
    std::vector<float> bx = randv(size_t(segments) * K + offset, 2.0f), nw = randv(K + offset);
    const float* x = bx.data() + offset; // offset 1: not 16-byte aligned, the element-wise path
    const float eps = 1e-5f;
    std::vector<double> xs(size_t(segments) * K);
    double ss = 0;
    for (int k = 0; k < K; k++) ss += double(x[k]) * x[k];
    const double inv = 1 / std::sqrt(ss / K + eps);
    for (size_t i = 0; i < xs.size(); i++) xs[i] = norm ? x[i] * inv * nw[offset + i] : x[i];
    std::vector<double> want(N);
    for (int n = 0; n < N; n++)
    {
        const double* xr = xs.data() + size_t(n / rows_per_x) * K;
        double s = 0;
        for (int k = 0; k < K; k++) s += double(bf2f(w[size_t(n) * K + k])) * xr[k];
        want[n] = s;
    }
    std::vector<float> y = poisoned(N, 0);
    const dim3 grid(blocks), block(GEMV_STREAM_WARPS * 32);
    if (norm)
        emu_launch(kimi_gemv_rmsnorm_f32, grid, block, size_t(K) * 4, y.data(), (const uint16_t*)w.data(), x,
                   (const float*)nw.data() + offset, eps, N, K);
    else
        emu_launch(kimi_gemv_stream_f32, grid, block, 0, y.data(), (const uint16_t*)w.data(), x, N, K, rows_per_x);
    char name[128];
    std::snprintf(name, sizeof name, "gemv stream%s N=%d K=%d blocks=%d rows_per_x=%d offset=%d", norm ? " rmsnorm" : "", N, K, blocks,
                  rows_per_x, offset);
    check(name, y.data(), want, 1e-5);
}

int main()
{
    test_embed(3, 37, 101);
    test_embed(5, 264, 33);
    test_rmsnorm(3, 37, 0, false);
    test_rmsnorm(4, 516, 0, false);
    test_rmsnorm(2, 516, 0, true);
    test_rmsnorm(3, 516, 1, true);
    test_rmsnorm(3, 516, 1, false, true);
    test_rmsnorm(5, 37, 0, false, true);
    test_rmsnorm(3, 2304, 0, false, true); // the model's width: the row held in registers
    test_rmsnorm(2, 2304, 0, true, true);
    test_rmsnorm(2, 512, 0, true);
    test_rmsnorm(2, 4100, 0, false, true); // one vector past what a block holds: the loop
    test_gated_rmsnorm(11, 37, 0, false);
    test_gated_rmsnorm(13, 128, 0, true);
    test_gated_rmsnorm(9, 128, 1, false);
    test_gated_rmsnorm_bf16o(13, 128, 0);
    test_gated_rmsnorm_bf16o(9, 128, 1);
    test_gated_rmsnorm_bf16o(5, 37, 0);
    test_elements(1, 0, 1);
    test_elements(4099, 0, 2);
    test_elements(4099, 1, 3);
    test_conversions(1001, 0);
    test_conversions(1001, 1);
    test_gather_scatter(17, 258, 23);
    test_gather_scatter(9, 260, 5);
    test_latent(3, 37, 11, 20, 5);
    test_latent(1, 512, 64, 8, 7);
    test_latent(3, 37, 11, 20, 18);
    test_gemv_stream(37, 2304, 1, true);       // 10 items on 8 warps: two items on some, a partial last item
    test_gemv_stream(203, 264, 3, true);       // 51 items on 24 warps; K8 = 33: a partial second chunk
    test_gemv_stream(16, 4104, 1, true);       // K past the ring
    test_gemv_stream(21, 37, 2, true, 0, 1);   // odd K, unaligned: element-wise
    test_gemv_stream(21, 132, 2, true);        // K % 8 = 4: element-wise products, the norm weight staged in shared memory
    test_gemv_stream(96, 128, 2, false, 32);   // three products (KDA's f_b, g_b at K = 128)
    test_gemv_stream(40, 136, 1, false, 16, 1);
    test_gemv(37, 2304);
    test_gemv(9, 4104);  // K past one ring of chunks, partial last slot
    test_gemv(7, 37);    // odd K: scalar path
    test_gemv(33, 1032); // rows not a multiple of the 16 a block
    test_gemv(96, 136, 32);  // three products, each with its own x (K = 136: one partial slot)
    test_gemv(40, 64, 32);   // the second product's rows end inside a block
    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
