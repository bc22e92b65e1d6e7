using KimiLinear.Cuda;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;
using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>Embedding gather, RMSNorm with residual, SwiGLU against the CPU reference, at odd and model sizes.</summary>
[Collection("GPU")]
public sealed class ElementwiseKernelTests
{
    private const double Bf16Rounding = 1.0 / 256; // one bf16 ulp, relative: the GPU and the reference may round apart

    [Theory]
    [InlineData(7, 2303, 1001)]  // odd D: element-wise path
    [InlineData(5, 2304, 999)]   // model D: 16-byte path
    [InlineData(1, 8, 3)]
    public void EmbeddingGather_CopiesRowsAndMarksBadIds(int t, int d, int v)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(t * 31 + d);
        ushort[] table = Gpu.RandomBf16(random, (long)v * d);
        int[] ids = Enumerable.Range(0, t).Select(i => i == 0 ? v - 1 : random.Next(v)).ToArray();
        if (t > 2) ids[2] = v; // out of range: must become a NaN row, not an out-of-bounds read
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dTable = gpu.Upload(stream, table), dOut = gpu.Poisoned(stream, (long)t * d, (ushort)0xFFFF);
        using DeviceBuffer<int> dIds = gpu.Upload(stream, ids);
        ElementwiseKernels.EmbeddingGather(stream, dOut, dTable, dIds, t, d, v);
        ushort[] got = dOut.ToArray(stream);
        float[] expected = CpuReference.EmbeddingGather(table, ids, d, v);
        for (int i = 0; i < t * d; i++)
            Assert.True(float.IsNaN(expected[i]) ? float.IsNaN(BFloat16.ToSingle(got[i])) : BFloat16.FromSingle(expected[i]) == got[i],
                $"element {i} (row {i / d}): got bits {got[i]:X4}, expected {expected[i]}");
        Gpu.AssertTailUntouched(got, (long)t * d, (ushort)0xFFFF);
    }

    [Theory]
    [InlineData(5, 2303, true)]
    [InlineData(3, 2304, true)]
    [InlineData(4, 2304, false)] // no residual input: a plain RMSNorm of the residual stream
    [InlineData(1, 1, true)]
    public void RmsNormResidual_MatchesReference(int t, int d, bool withX)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(t * 7 + d);
        float[] residual = Gpu.RandomF32(random, (long)t * d, 3f);
        ushort[] x = Gpu.RandomBf16(random, (long)t * d), weight = Gpu.RandomBf16(random, d);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dResidual = gpu.Upload(stream, residual);
        using DeviceBuffer<ushort> dX = gpu.Upload(stream, x), dWeight = gpu.Upload(stream, weight);
        using DeviceBuffer<ushort> dOut = gpu.Poisoned(stream, (long)t * d, Gpu.Bf16NaN);
        ElementwiseKernels.RmsNormResidual(stream, dOut, dResidual, withX ? dX.Span : null, dWeight, t, d, 1e-5f);
        double[] expected = CpuReference.RmsNormResidual(residual, withX ? x : null, weight, t, d, 1e-5f);
        ushort[] got = dOut.ToArray(stream);
        Assert.Equal(residual, dResidual.ToArray(stream)); // the same fp32 additions in the same order
        TensorAssert.Close(expected, Gpu.Widen(got, (long)t * d), 2 * Bf16Rounding, 1e-6, "RMSNorm output");
        Gpu.AssertTailUntouched(got, (long)t * d, Gpu.Bf16NaN);
    }

    [Theory]
    [InlineData(3, 1001, true)]   // fused gate‖up rows of 2F, odd F: one value per step
    [InlineData(2, 2048, true)]   // fused, 16-byte steps
    [InlineData(2, 4096, false)]  // separate gate and up buffers
    [InlineData(1, 1, false)]
    public void SwiGlu_MatchesReference(int t, int f, bool fused)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(t * 5 + f);
        using CudaStream stream = gpu.CreateStream();
        ushort[] gate, up;
        int gateStride, upStride;
        using DeviceBuffer<ushort> dOut = gpu.Poisoned(stream, (long)t * f, Gpu.Bf16NaN);
        DeviceSpan<ushort> dGate, dUp;
        var owned = new List<DeviceBuffer<ushort>>();
        if (fused)
        {
            ushort[] gu = Gpu.RandomBf16(random, 2L * t * f, 3f);
            gate = gu;
            up = gu[f..];
            gateStride = upStride = 2 * f;
            DeviceBuffer<ushort> dGu = gpu.Upload(stream, gu);
            owned.Add(dGu);
            dGate = dGu.Span;
            dUp = dGu.Span.Slice(f);
        }
        else
        {
            gate = Gpu.RandomBf16(random, (long)t * f, 3f);
            up = Gpu.RandomBf16(random, (long)t * f);
            gateStride = upStride = f;
            DeviceBuffer<ushort> g = gpu.Upload(stream, gate), u = gpu.Upload(stream, up);
            owned.AddRange([g, u]);
            dGate = g.Span;
            dUp = u.Span;
        }
        ElementwiseKernels.SwiGlu(stream, dOut, dGate, dUp, t, f, gateStride, upStride);
        ushort[] got = dOut.ToArray(stream);
        owned.ForEach(b => b.Dispose());
        TensorAssert.Close(CpuReference.SwiGlu(gate, up, t, f, gateStride, upStride), Gpu.Widen(got, (long)t * f), 2 * Bf16Rounding, 1e-6, "SwiGLU");
        Gpu.AssertTailUntouched(got, (long)t * f, Gpu.Bf16NaN);
    }
}
