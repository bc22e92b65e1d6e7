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

    [Fact]
    public void Gemm_RejectsKNotAMultipleOf8()
    {
        CudaContext gpu = Gpu.Require();
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> buffer = gpu.Allocate<ushort>(1000);
        var error = Assert.Throws<ArgumentException>(() => MatmulKernels.Gemm(stream, buffer, buffer, buffer, 2, 2, 7));
        Assert.Contains("multiple of 8", error.Message);
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
