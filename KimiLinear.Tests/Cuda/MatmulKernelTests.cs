using KimiLinear.Cuda;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;
using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>bf16 GEMV and GEMM against a double-precision reference on random data, odd sizes, poisoned tails.</summary>
[Collection("GPU")]
public sealed class MatmulKernelTests
{
    // fp32 accumulation over K terms: error grows with Σ|w·x|; bf16 output adds one rounding of the result.
    private const double AccumulationError = 1e-5;
    private const double Bf16Rounding = 1.0 / 256;

    [Theory]
    [InlineData(1000, 2303)] // odd K: scalar path
    [InlineData(1001, 2304)] // model K, N not a multiple of the rows per block
    [InlineData(2304, 4096)]
    [InlineData(37, 8200)]   // K past one ring of chunks (refills), last column slot partial
    [InlineData(1, 8)]
    [InlineData(7, 5)]
    public void Gemv_Bf16AndF32Outputs_MatchReference(int n, int k)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(n + k);
        ushort[] w = Gpu.RandomBf16(random, (long)n * k), x = Gpu.RandomBf16(random, k);
        double[] expected = CpuReference.MatMulTransposed(x, w, 1, n, k, out double[] magnitude);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dW = gpu.Upload(stream, w), dX = gpu.Upload(stream, x);
        using DeviceBuffer<ushort> dY16 = gpu.Poisoned(stream, n, Gpu.Bf16NaN);
        using DeviceBuffer<float> dY32 = gpu.Poisoned(stream, n, float.NaN);
        MatmulKernels.Gemv(stream, dY16, dW, dX, n, k);
        MatmulKernels.Gemv(stream, dY32, dW, dX, n, k);
        ushort[] y16 = dY16.ToArray(stream);
        float[] y32 = dY32.ToArray(stream);
        TensorAssert.Close(expected, y32, i => AccumulationError * magnitude[i] + 1e-6, "GEMV fp32 out");
        TensorAssert.Close(expected, Gpu.Widen(y16, n), i => AccumulationError * magnitude[i] + Bf16Rounding * Math.Abs(expected[i]) + 1e-6, "GEMV bf16 out");
        Gpu.AssertTailUntouched(y16, n, Gpu.Bf16NaN);
        for (int i = n; i < y32.Length; i++) Assert.True(float.IsNaN(y32[i]), $"fp32 output tail element {i} overwritten");
    }

    [Theory]
    [InlineData(1000, 2303)] // odd K: scalar path
    [InlineData(1001, 2304)]
    [InlineData(2304, 4096)]
    [InlineData(37, 8200)]   // K past one ring of chunks
    [InlineData(7, 5)]
    [InlineData(9217, 2304)] // more blocks than one wave: the streaming kernel, a partial last item
    [InlineData(8193, 37)]   // the streaming kernel's element-wise path
    public void Gemv_F32Activations_MatchReference(int n, int k)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(n * 3 + k);
        ushort[] w = Gpu.RandomBf16(random, (long)n * k);
        float[] x = Gpu.RandomF32(random, k);
        double[] expected = MatMulF32(x, 1, k, w, n, out double[] magnitude);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dW = gpu.Upload(stream, w);
        using DeviceBuffer<float> dX = gpu.Upload(stream, x), dY = gpu.Poisoned(stream, n, float.NaN);
        MatmulKernels.Gemv(stream, dY, dW, dX, n, k);
        float[] y = dY.ToArray(stream);
        TensorAssert.Close(expected, y, i => AccumulationError * magnitude[i] + 1e-6, "GEMV fp32 x");
        for (int i = n; i < y.Length; i++) Assert.True(float.IsNaN(y[i]), $"output tail element {i} overwritten");
    }

    /// <summary>A decode step's input norm inside its projections: y = W · (x · rsqrt(mean(x²) + eps) · norm).</summary>
    [Theory]
    [InlineData(1000, 2303)] // odd K: scalar path
    [InlineData(4096 * 3 + 2 * 128 + 32, 2304)] // the model's KDA projections (q, k, v, f_a, g_a, β) in one launch
    [InlineData(37, 8200)]   // K past one ring of chunks
    [InlineData(7, 5)]
    public void GemvRmsNorm_MatchesNormThenProduct(int n, int k)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(n * 5 + k);
        ushort[] w = Gpu.RandomBf16(random, (long)n * k);
        float[] x = Gpu.RandomF32(random, k, 4f);
        float[] norm = Gpu.RandomF32(random, k, 1f);
        const float Eps = 1e-5f;
        double inverse = 1 / Math.Sqrt(x.Sum(v => (double)v * v) / k + Eps);
        float[] normed = x.Select((v, i) => (float)(v * inverse * norm[i])).ToArray();
        double[] expected = MatMulF32(normed, 1, k, w, n, out double[] magnitude);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dW = gpu.Upload(stream, w);
        using DeviceBuffer<float> dX = gpu.Upload(stream, x), dNorm = gpu.Upload(stream, norm), dY = gpu.Poisoned(stream, n + 5, float.NaN);
        MatmulKernels.GemvRmsNorm(stream, dY, dW, dX, dNorm, Eps, n, k);
        float[] y = dY.ToArray(stream);
        TensorAssert.Close(expected, y, i => AccumulationError * magnitude[i] + 1e-6, "GEMV of the RMS-normed x");
        for (int i = n; i < y.Length; i++) Assert.True(float.IsNaN(y[i]), $"output tail element {i} overwritten");
        Assert.Throws<ArgumentOutOfRangeException>(() => MatmulKernels.GemvRmsNorm(stream, dY, dW, dX, dNorm, 0f, n, k));
    }

    /// <summary>Independent products in one launch (KDA's f_b and g_b): each block of rows reads its own x.</summary>
    [Theory]
    [InlineData(2, 4096, 128)] // the model's f_b, g_b
    [InlineData(3, 48, 136)]   // K past one column slot, partial
    [InlineData(2, 16, 5)]     // odd K: scalar path
    [InlineData(5, 1600, 136)] // streaming (more blocks than one wave), K past one column slot
    [InlineData(3, 2048, 5)]   // streaming, odd K
    public void Gemv_F32SeveralProducts_EachReadsItsInput(int products, int rowsPerProduct, int k)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(products * 7 + rowsPerProduct + k);
        int n = products * rowsPerProduct;
        ushort[] w = Gpu.RandomBf16(random, (long)n * k);
        float[] x = Gpu.RandomF32(random, (long)products * k);
        var expected = new double[n];
        var magnitude = new double[n];
        for (int p = 0; p < products; p++)
        {
            double[] part = MatMulF32(x.AsSpan(p * k, k).ToArray(), 1, k, w.AsSpan(p * rowsPerProduct * k, rowsPerProduct * k).ToArray(), rowsPerProduct, out double[] m);
            part.CopyTo(expected, p * rowsPerProduct);
            m.CopyTo(magnitude, p * rowsPerProduct);
        }
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dW = gpu.Upload(stream, w);
        using DeviceBuffer<float> dX = gpu.Upload(stream, x), dY = gpu.Poisoned(stream, n, float.NaN);
        MatmulKernels.Gemv(stream, dY, dW, dX, n, k, rowsPerProduct);
        float[] y = dY.ToArray(stream);
        TensorAssert.Close(expected, y, i => AccumulationError * magnitude[i] + 1e-6, "GEMV of several products");
        for (int i = n; i < y.Length; i++) Assert.True(float.IsNaN(y[i]), $"output tail element {i} overwritten");
    }

    [Fact]
    public void Gemv_F32SeveralProducts_RejectsProductsThatSplitABlock()
    {
        CudaContext gpu = Gpu.Require();
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dW = gpu.Allocate<ushort>(40 * 8);
        using DeviceBuffer<float> dX = gpu.Allocate<float>(2 * 8), dY = gpu.Allocate<float>(40);
        var e = Assert.Throws<ArgumentException>(() => MatmulKernels.Gemv(stream, dY, dW, dX, 40, 8, 20));
        Assert.Contains("rowsPerX", e.Message);
    }

    [Fact]
    public void Gemv_F32ChainedWithProgrammaticLaunch_ReadsEachPredecessorsOutput()
    {
        // As the bf16 chain below, for the fp32-activation kernel: each GEMV reads the previous one's output.
        CudaContext gpu = Gpu.Require();
        const int D = 2304, Steps = 12;
        var random = new Random(4);
        ushort[] w = Gpu.RandomBf16(random, (long)D * D, 1f / 48);
        float[] x = Gpu.RandomF32(random, D);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dW = gpu.Upload(stream, w);
        using DeviceBuffer<float> a = gpu.Allocate<float>(D), b = gpu.Allocate<float>(D);
        float[] Chain(bool programmatic)
        {
            gpu.Kernels.ProgrammaticLaunch = programmatic;
            try
            {
                a.CopyFrom(x, stream);
                for (int i = 0; i < Steps; i++) MatmulKernels.Gemv(stream, i % 2 == 0 ? b : a, dW, i % 2 == 0 ? a : b, D, D);
                return (Steps % 2 == 0 ? a : b).ToArray(stream);
            }
            finally
            {
                gpu.Kernels.ProgrammaticLaunch = gpu.Device.ComputeCapability.Major >= 9;
            }
        }
        float[] serial = Chain(false);
        Assert.Contains(serial, v => v != 0);
        for (int repeat = 0; repeat < 5; repeat++) Assert.Equal(serial, Chain(true));
    }

    [Fact]
    public void Gemv_ChainedWithProgrammaticLaunch_ReadsEachPredecessorsOutput()
    {
        // Each GEMV's x is the previous GEMV's y, so a kernel that read x before its predecessor finished would
        // change the result; with and without programmatic launch the chain must agree bit for bit.
        CudaContext gpu = Gpu.Require();
        const int D = 2304, Steps = 12;
        var random = new Random(3);
        ushort[] w = Gpu.RandomBf16(random, (long)D * D, 1f / 48), x = Gpu.RandomBf16(random, D);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dW = gpu.Upload(stream, w), a = gpu.Allocate<ushort>(D), b = gpu.Allocate<ushort>(D);
        ushort[] Chain(bool programmatic)
        {
            gpu.Kernels.ProgrammaticLaunch = programmatic;
            try
            {
                a.CopyFrom(x, stream);
                for (int i = 0; i < Steps; i++) MatmulKernels.Gemv(stream, i % 2 == 0 ? b : a, dW, i % 2 == 0 ? a : b, D, D);
                return (Steps % 2 == 0 ? a : b).ToArray(stream);
            }
            finally
            {
                gpu.Kernels.ProgrammaticLaunch = gpu.Device.ComputeCapability.Major >= 9;
            }
        }
        ushort[] serial = Chain(false);
        Assert.Contains(serial, v => v != 0);
        for (int repeat = 0; repeat < 5; repeat++) Assert.Equal(serial, Chain(true));
    }

    public static TheoryData<int, int, int> GemmShapes => new()
    {
        { 257, 1000, 2296 }, // odd M and N, K a multiple of 8 but not of the 64-wide k tile
        { 128, 128, 64 },    // exactly one tile
        { 1, 33, 8 },
        { 200, 520, 2304 },  // model K
        { 131, 2304, 512 },
    };

    [Theory]
    [MemberData(nameof(GemmShapes))]
    public void Gemm_HandWritten_MatchesReference(int m, int n, int k) =>
        CheckGemm(m, n, k, (stream, c, a, b) => MatmulKernels.Gemm(stream, c, a, b, m, n, k));

    [Theory]
    [MemberData(nameof(GemmShapes))]
    public void Gemm_CublasLt_MatchesReference(int m, int n, int k)
    {
        CudaContext gpu = Gpu.Require();
        using CublasLtGemm? cublas = CublasLtGemm.TryCreate(gpu, out string reason);
        if (cublas is null) Assert.Skip(reason);
        CheckGemm(m, n, k, (stream, c, a, b) => cublas.Run(stream, c, a, b, m, n, k));
    }

    public static TheoryData<int, int, int, int> StridedGemmShapes => new()
    {
        { 37, 130, 512, 576 },   // the MLA prefill: first 512 columns of 576-wide latent rows, odd M and N
        { 257, 1000, 2296, 2296 },
        { 1, 33, 8, 16 },
        { 131, 2304, 512, 520 },
    };

    [Theory]
    [MemberData(nameof(StridedGemmShapes))]
    public void Gemm_HandWritten_StridedA_Fp32AndBf16Out_MatchReference(int m, int n, int k, int lda) =>
        CheckStridedGemm(m, n, k, lda,
            (stream, c, a, b) => MatmulKernels.Gemm(stream, c, a, lda, b, m, n, k),
            (stream, c, a, b) => MatmulKernels.Gemm(stream, c, a, lda, b, m, n, k));

    [Theory]
    [MemberData(nameof(StridedGemmShapes))]
    public void Gemm_CublasLt_StridedA_Fp32AndBf16Out_MatchReference(int m, int n, int k, int lda)
    {
        CudaContext gpu = Gpu.Require();
        using CublasLtGemm? cublas = CublasLtGemm.TryCreate(gpu, out string reason);
        if (cublas is null) Assert.Skip(reason);
        CheckStridedGemm(m, n, k, lda,
            (stream, c, a, b) => cublas.Run(stream, c, a, lda, b, m, n, k),
            (stream, c, a, b) => cublas.Run(stream, c, a, lda, b, m, n, k));
    }

    [Fact]
    public void Gemm_RejectsAStrideBelowKOrNotAMultipleOf8()
    {
        CudaContext gpu = Gpu.Require();
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> buffer = gpu.Allocate<ushort>(1000);
        using DeviceBuffer<float> c = gpu.Allocate<float>(100);
        Assert.Equal("lda", Assert.Throws<ArgumentOutOfRangeException>(() => MatmulKernels.Gemm(stream, c, buffer, 8, buffer, 2, 2, 16)).ParamName);
        Assert.Equal("lda", Assert.Throws<ArgumentOutOfRangeException>(() => MatmulKernels.Gemm(stream, c, buffer, 20, buffer, 2, 2, 16)).ParamName);
        // A's last row ends at (M − 1)·lda + K: 9·104 + 104 > 1000.
        Assert.Equal("a", Assert.Throws<ArgumentException>(() => MatmulKernels.Gemm(stream, c, buffer, 104, buffer, 10, 2, 104)).ParamName);
    }

    [Fact]
    public void Gemm_RejectsKNotAMultipleOf8()
    {
        CudaContext gpu = Gpu.Require();
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> buffer = gpu.Allocate<ushort>(1000);
        var error = Assert.Throws<ArgumentException>(() => MatmulKernels.Gemm(stream, buffer, buffer, buffer, 2, 2, 7));
        Assert.Contains("multiple of 8", error.Message);
    }

    /// <summary>C[M, N] = x[M, K] · W[N, K]ᵀ in double for fp32 x and bf16 W; <paramref name="magnitude"/> gets Σ_k |x·w|.</summary>
    private static double[] MatMulF32(float[] x, int m, int k, ushort[] w, int n, out double[] magnitude)
    {
        float[] wf = Gpu.Widen(w, (long)n * k);
        var c = new double[(long)m * n];
        var mag = new double[(long)m * n];
        Parallel.For(0, (long)m * n, o =>
        {
            long i = o / n, j = o % n;
            double sum = 0, abs = 0;
            for (int p = 0; p < k; p++)
            {
                double prod = (double)x[i * k + p] * wf[j * k + p];
                sum += prod;
                abs += Math.Abs(prod);
            }
            c[o] = sum;
            mag[o] = abs;
        });
        magnitude = mag;
        return c;
    }

    /// <summary>
    /// A is [M, K] inside rows of <paramref name="lda"/> bf16 (the columns past K hold NaN, which must never be read);
    /// runs the fp32-out and the bf16-out product against a double reference, poisoned output tails.
    /// </summary>
    private static void CheckStridedGemm(int m, int n, int k, int lda,
        Action<CudaStream, DeviceSpan<float>, DeviceSpan<ushort>, DeviceSpan<ushort>> gemmF32,
        Action<CudaStream, DeviceSpan<ushort>, DeviceSpan<ushort>, DeviceSpan<ushort>> gemmBf16)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(m * 7 + n * 3 + k + lda);
        ushort[] a = Gpu.RandomBf16(random, (long)m * k), b = Gpu.RandomBf16(random, (long)n * k);
        var strided = new ushort[(long)(m - 1) * lda + k];
        Array.Fill(strided, Gpu.Bf16NaN);
        for (int r = 0; r < m; r++) Array.Copy(a, (long)r * k, strided, (long)r * lda, k);
        double[] expected = CpuReference.MatMulTransposed(a, b, m, n, k, out double[] magnitude);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dA = gpu.Upload(stream, strided), dB = gpu.Upload(stream, b);
        using DeviceBuffer<float> dC32 = gpu.Poisoned(stream, (long)m * n, float.NaN);
        using DeviceBuffer<ushort> dC16 = gpu.Poisoned(stream, (long)m * n, Gpu.Bf16NaN);
        gemmF32(stream, dC32, dA, dB);
        gemmBf16(stream, dC16, dA, dB);
        float[] c32 = dC32.ToArray(stream);
        ushort[] c16 = dC16.ToArray(stream);
        TensorAssert.Close(expected, c32.AsSpan(0, m * n), i => AccumulationError * magnitude[i] + 1e-6, $"GEMM fp32 out {m}x{n}x{k}, lda {lda}");
        TensorAssert.Close(expected, Gpu.Widen(c16, (long)m * n),
            i => AccumulationError * magnitude[i] + Bf16Rounding * Math.Abs(expected[i]) + 1e-6, $"GEMM bf16 out {m}x{n}x{k}, lda {lda}");
        for (long i = (long)m * n; i < c32.Length; i++) Assert.True(float.IsNaN(c32[i]), $"fp32 output tail element {i} overwritten");
        Gpu.AssertTailUntouched(c16, (long)m * n, Gpu.Bf16NaN);
    }

    private static void CheckGemm(int m, int n, int k, Action<CudaStream, DeviceSpan<ushort>, DeviceSpan<ushort>, DeviceSpan<ushort>> gemm)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(m * 3 + n * 5 + k);
        ushort[] a = Gpu.RandomBf16(random, (long)m * k), b = Gpu.RandomBf16(random, (long)n * k);
        double[] expected = CpuReference.MatMulTransposed(a, b, m, n, k, out double[] magnitude);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dA = gpu.Upload(stream, a), dB = gpu.Upload(stream, b);
        using DeviceBuffer<ushort> dC = gpu.Poisoned(stream, (long)m * n, Gpu.Bf16NaN);
        gemm(stream, dC, dA, dB);
        ushort[] c = dC.ToArray(stream);
        TensorAssert.Close(expected, Gpu.Widen(c, (long)m * n),
            i => AccumulationError * magnitude[i] + Bf16Rounding * Math.Abs(expected[i]) + 1e-6, $"GEMM {m}x{n}x{k}");
        Gpu.AssertTailUntouched(c, (long)m * n, Gpu.Bf16NaN);
    }
}
