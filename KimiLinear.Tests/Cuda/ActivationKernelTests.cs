using KimiLinear.Backends.Cpu;
using KimiLinear.Cuda;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;
using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>
/// The fp32-activation kernels (<c>kernels/activations.cu</c>) against the CPU backend, the executable specification, on
/// random data of odd sizes: both the 16-byte and the element-wise paths (a span starting one float into a buffer is
/// not 16-byte aligned), in-place use where allowed, poisoned output tails.
/// </summary>
[Collection("GPU")]
public sealed class ActivationKernelTests
{
    private const double Fp32 = 1e-5; // relative, where no bf16 rounding is involved: fp32 reduction order and expf only

    private static readonly CpuBackend Cpu = new(threads: 1);

    private static CpuTensor Tensor(float[] data, int rows, int cols)
    {
        var tensor = new CpuTensor(rows, cols);
        data.AsSpan(0, rows * cols).CopyTo(tensor.Span);
        return tensor;
    }

    /// <summary>A NaN-poisoned buffer of <paramref name="length"/> + <see cref="Gpu.Tail"/> floats, from <paramref name="offset"/> on.</summary>
    private static DeviceBuffer<float> PoisonedF32(CudaContext gpu, CudaStream stream, long length, int offset = 0) =>
        gpu.Poisoned(stream, length + offset, float.NaN);

    private static void AssertTailNaN(float[] all, long length, string what)
    {
        for (long i = length; i < all.Length; i++) Assert.True(float.IsNaN(all[i]), $"{what}: element {i} past the output's {length} was overwritten");
    }

    [Theory]
    [InlineData(3, 37, 1001)]  // odd D: element-wise path
    [InlineData(17, 258, 999)] // D % 4 == 2: element-wise path
    [InlineData(5, 2304, 77)]  // model D: vector path
    public void Embed_WidensRowsAndMarksBadIds(int t, int d, int v)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(t * 31 + d);
        ushort[] table = Gpu.RandomBf16(random, (long)v * d);
        int[] ids = Enumerable.Range(0, t).Select(i => i == 0 ? v - 1 : random.Next(v)).ToArray();
        ids[1] = v;      // out of range: must become a NaN row, not an out-of-bounds read
        if (t > 2) ids[2] = -1;
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dTable = gpu.Upload(stream, table);
        using DeviceBuffer<int> dIds = gpu.Upload(stream, ids);
        using DeviceBuffer<float> dOut = PoisonedF32(gpu, stream, (long)t * d);
        ActivationKernels.Embed(stream, dOut, dTable, dIds, t, d, v);
        float[] got = dOut.ToArray(stream);
        float[] expected = CpuReference.EmbeddingGather(table, ids, d, v);
        for (int i = 0; i < t * d; i++)
            Assert.True(float.IsNaN(expected[i]) ? float.IsNaN(got[i]) : expected[i] == got[i],
                $"element {i} (row {i / d}): got {got[i]}, expected {expected[i]}");
        AssertTailNaN(got, (long)t * d, "embed");
    }

    [Theory]
    [InlineData(3, 37, false, 0)]
    [InlineData(17, 258, false, 1)] // misaligned spans: element-wise path
    [InlineData(4, 2304, false, 0)]
    [InlineData(5, 512, true, 0)]   // in place (y = x), vector path
    [InlineData(3, 37, true, 1)]    // in place, element-wise path
    public void RmsNorm_MatchesCpuBackend(int t, int n, bool inPlace, int offset)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(t * 7 + n);
        float[] x = Gpu.RandomF32(random, (long)t * n, 3f), weight = Gpu.RandomF32(random, n);
        var expected = new CpuTensor(t, n);
        Cpu.RmsNorm(Tensor(x, t, n), weight, 1e-5f, expected);

        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dX = PoisonedF32(gpu, stream, (long)t * n, offset), dY = PoisonedF32(gpu, stream, (long)t * n, offset);
        using DeviceBuffer<float> dWeight = gpu.Upload(stream, weight);
        DeviceSpan<float> xs = dX.Span.Slice(offset), ys = inPlace ? xs : dY.Span.Slice(offset);
        xs.CopyFrom(x, stream);
        ActivationKernels.RmsNorm(stream, ys, xs, dWeight, t, n, 1e-5f);
        float[] got = ys.ToArray(stream);
        TensorAssert.Close(got.AsSpan(0, t * n), expected.Span, Fp32, "RMSNorm");
        AssertTailNaN(got, (long)t * n, "RMSNorm");
        if (!inPlace) Assert.Equal(x, xs.ToArray(stream)[..(t * n)]);

        // The residual form: x += add, then the norm of the sum; x keeps the sum.
        float[] add = Gpu.RandomF32(random, (long)t * n, 2f);
        var sum = Tensor(x, t, n);
        Cpu.Add(sum, Tensor(add, t, n));
        Cpu.RmsNorm(sum, weight, 1e-5f, expected);
        using DeviceBuffer<float> dAdd = gpu.Upload(stream, add);
        xs.CopyFrom(x, stream);
        ActivationKernels.RmsNorm(stream, ys, xs, dWeight, t, n, 1e-5f, dAdd.Span);
        TensorAssert.Close(ys.ToArray(stream).AsSpan(0, t * n), expected.Span, Fp32, "RMSNorm after the residual add");
        if (!inPlace) Assert.Equal(sum.Data, xs.ToArray(stream)[..(t * n)]);
    }

    [Theory]
    [InlineData(3, 5, 37, false, 0)]  // odd width: element-wise path, rows not a multiple of the 8 a block
    [InlineData(17, 4, 128, false, 0)] // model head width
    [InlineData(2, 32, 128, true, 0)]  // in place (y = o)
    [InlineData(3, 3, 128, false, 1)]  // misaligned: element-wise path
    public void GatedRmsNorm_MatchesCpuBackend(int t, int heads, int width, bool inPlace, int offset)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(t * 11 + heads * 3 + width);
        int cols = heads * width, rows = t * heads;
        float[] o = Gpu.RandomF32(random, (long)t * cols, 2f), z = Gpu.RandomF32(random, (long)t * cols, 3f), weight = Gpu.RandomF32(random, width);
        var expected = new CpuTensor(t, cols);
        Cpu.GatedRmsNorm(Tensor(o, t, cols), Tensor(z, t, cols), weight, 1e-5f, expected);

        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dO = PoisonedF32(gpu, stream, (long)t * cols, offset), dZ = PoisonedF32(gpu, stream, (long)t * cols, offset);
        using DeviceBuffer<float> dY = PoisonedF32(gpu, stream, (long)t * cols, offset), dWeight = gpu.Upload(stream, weight);
        DeviceSpan<float> os = dO.Span.Slice(offset), zs = dZ.Span.Slice(offset), ys = inPlace ? os : dY.Span.Slice(offset);
        os.CopyFrom(o, stream);
        zs.CopyFrom(z, stream);
        ActivationKernels.GatedRmsNorm(stream, ys, os, zs, dWeight, rows, width, 1e-5f);
        float[] got = ys.ToArray(stream);
        TensorAssert.Close(got.AsSpan(0, t * cols), expected.Span, Fp32, "gated RMSNorm");
        AssertTailNaN(got, (long)t * cols, "gated RMSNorm");
    }

    /// <summary>o as bf16 bits (the KDA core's output on the model's prefill): the CPU norm of the widened values.</summary>
    [Theory]
    [InlineData(17, 4, 128, 0)] // model head width
    [InlineData(3, 5, 37, 0)]   // odd width: element-wise path
    [InlineData(3, 3, 128, 1)]  // o one element in: not 8-byte aligned, element-wise path
    public void GatedRmsNorm_Bf16Output_MatchesCpuBackendOnTheWidenedValues(int t, int heads, int width, int offset)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(t * 13 + heads * 5 + width + offset);
        int cols = heads * width, rows = t * heads;
        ushort[] o = Gpu.RandomBf16(random, (long)t * cols, 2f);
        float[] z = Gpu.RandomF32(random, (long)t * cols, 3f), weight = Gpu.RandomF32(random, width);
        var expected = new CpuTensor(t, cols);
        Cpu.GatedRmsNorm(Tensor(Gpu.Widen(o, o.Length), t, cols), Tensor(z, t, cols), weight, 1e-5f, expected);

        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dO = gpu.Poisoned(stream, offset + (long)t * cols, Gpu.Bf16NaN);
        using DeviceBuffer<float> dZ = gpu.Upload(stream, z), dY = PoisonedF32(gpu, stream, (long)t * cols, 0), dWeight = gpu.Upload(stream, weight);
        DeviceSpan<ushort> os = dO.Span.Slice(offset);
        os.CopyFrom(o, stream);
        ActivationKernels.GatedRmsNorm(stream, dY.Span, os, dZ.Span, dWeight, rows, width, 1e-5f);
        float[] got = dY.ToArray(stream);
        TensorAssert.Close(got.AsSpan(0, t * cols), expected.Span, Fp32, "gated RMSNorm of bf16 o");
        AssertTailNaN(got, (long)t * cols, "gated RMSNorm of bf16 o");
    }

    [Theory]
    [InlineData(1001, 0)]  // count % 4 != 0: vector body and element-wise tail
    [InlineData(4096, 1)]  // misaligned: element-wise only
    [InlineData(1, 0)]
    [InlineData(4_500_001, 0)] // more elements than one pass of the capped grid (4,096 blocks × 256 threads × 4) covers
    public void Add_SwiGlu_Sigmoid_MatchCpuBackend(int count, int offset)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(count + offset);
        float[] a = Gpu.RandomF32(random, count, 2f), b = Gpu.RandomF32(random, count, 3f);
        var sum = Tensor(a, 1, count);
        Cpu.Add(sum, Tensor(b, 1, count));
        var swiglu = new CpuTensor(1, count);
        Cpu.SwiGlu(Tensor(a, 1, count), Tensor(b, 1, count), swiglu);

        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dA = PoisonedF32(gpu, stream, count, offset), dB = PoisonedF32(gpu, stream, count, offset);
        using DeviceBuffer<float> dOut = PoisonedF32(gpu, stream, count, offset);
        DeviceSpan<float> sa = dA.Span.Slice(offset), sb = dB.Span.Slice(offset), so = dOut.Span.Slice(offset);
        sa.CopyFrom(a, stream);
        sb.CopyFrom(b, stream);
        ActivationKernels.SwiGlu(stream, so, sa, sb, count);
        float[] got = so.ToArray(stream);
        TensorAssert.Close(got.AsSpan(0, count), swiglu.Span, Fp32, "SwiGLU");
        AssertTailNaN(got, count, "SwiGLU");

        ActivationKernels.SwiGlu(stream, sa, sa, sb, count); // output = gate, in place
        TensorAssert.Close(sa.ToArray(stream).AsSpan(0, count), swiglu.Span, Fp32, "SwiGLU in place");
        sa.CopyFrom(a, stream);

        ActivationKernels.Add(stream, sa, sb, count);
        got = sa.ToArray(stream);
        Assert.Equal(sum.Data, got[..count]); // one fp32 addition an element: exact
        AssertTailNaN(got, count, "add");
    }

    [Theory]
    [InlineData(17, 258, 23)]
    [InlineData(9, 2304, 5)]
    [InlineData(4, 37, 1)]
    public void GatherRows_MatchesCpuBackend_AndMarksBadRows(int t, int cols, int count)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(t + cols + count);
        float[] x = Gpu.RandomF32(random, (long)t * cols);
        int[] rows = Enumerable.Range(0, count).Select(_ => random.Next(t)).ToArray(); // repeats allowed
        var expected = new CpuTensor(count, cols);
        Cpu.GatherRows(Tensor(x, t, cols), rows, expected);

        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dX = gpu.Upload(stream, x), dY = PoisonedF32(gpu, stream, (long)count * cols);
        using DeviceBuffer<int> dRows = gpu.Upload(stream, rows);
        ActivationKernels.GatherRows(stream, dY, dX, dRows, count, cols);
        float[] got = dY.ToArray(stream);
        Assert.Equal(expected.Data, got[..(count * cols)]);
        AssertTailNaN(got, (long)count * cols, "gather");

        dRows.CopyFrom([t], stream); // one past x's last row: a NaN row, no out-of-bounds read
        ActivationKernels.GatherRows(stream, dY, dX, dRows, 1, cols);
        Assert.All(dY.ToArray(stream)[..cols], v => Assert.True(float.IsNaN(v)));
    }

    [Theory]
    [InlineData(17, 258, 11)]
    [InlineData(9, 2304, 9)]  // every row
    [InlineData(5, 37, 2)]
    public void ScatterAddRows_MatchesCpuBackend(int t, int cols, int count)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(t * 3 + cols + count);
        float[] accumulator = Gpu.RandomF32(random, (long)t * cols), x = Gpu.RandomF32(random, (long)count * cols);
        int[] rows = Enumerable.Range(0, t).OrderBy(_ => random.Next()).Take(count).ToArray(); // distinct, as the contract says
        float[] scales = Gpu.RandomF32(random, count);
        var expected = Tensor(accumulator, t, cols);
        Cpu.ScatterAddRows(Tensor(x, count, cols), rows, scales, expected);

        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dAcc = gpu.Upload(stream, accumulator), dX = gpu.Upload(stream, x), dScales = gpu.Upload(stream, scales);
        using DeviceBuffer<int> dRows = gpu.Upload(stream, rows);
        ActivationKernels.ScatterAddRows(stream, dAcc, dX, dRows, dScales, count, cols);
        TensorAssert.Close(dAcc.ToArray(stream), expected.Span, Fp32, "scatter-add");

        dRows.CopyFrom([t], stream); // past the accumulator's last row: skipped, not written out of bounds
        ActivationKernels.ScatterAddRows(stream, dAcc.Span.Slice(0, (long)t * cols), dX, dRows, dScales, 1, cols);
        TensorAssert.Close(dAcc.ToArray(stream), expected.Span, Fp32, "scatter-add of a bad row");
    }

    /// <summary>
    /// The MLA cache rows: RmsNorm(left)·weight | right in bf16, at the row a device scalar names. The normalised columns
    /// within a bf16 rounding of a double reference (the kernel's fp32 mean may round them the other way), the copied
    /// ones exact.
    /// </summary>
    [Fact]
    public void WriteLatentRows_WritesTheRowsTheDeviceScalarNames_AlsoWhenReplayedFromAGraph()
    {
        CudaContext gpu = Gpu.Require();
        const int T = 3, A = 37, B = 11, Capacity = 20, W = A + B;
        const float Eps = 1e-6f;
        var random = new Random(5);
        float[] left = Gpu.RandomF32(random, T * A, 3f), right = Gpu.RandomF32(random, T * B);
        float[] weight = Enumerable.Range(0, A).Select(i => 0.5f + i % 5 * 0.25f).ToArray();
        var normalised = new double[T * A];
        for (int t = 0; t < T; t++)
        {
            double mean = Enumerable.Range(0, A).Sum(c => (double)left[t * A + c] * left[t * A + c]) / A;
            for (int c = 0; c < A; c++) normalised[t * A + c] = left[t * A + c] / Math.Sqrt(mean + Eps) * weight[c];
        }
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dLeft = gpu.Upload(stream, left), dRight = gpu.Upload(stream, right), dWeight = gpu.Upload(stream, weight);
        using DeviceBuffer<ushort> latent = gpu.Allocate<ushort>(Capacity * W);
        using DeviceBuffer<int> first = gpu.Upload(stream, new[] { 5 });
        latent.Span.Fill(Gpu.Bf16NaN, stream);

        void AssertRows(ushort[] got, params int[] firstRows)
        {
            for (int row = 0; row < Capacity; row++)
            {
                int i = Array.FindIndex(firstRows, f => row >= f && row < f + T);
                for (int c = 0; c < W; c++)
                {
                    ushort value = got[row * W + c];
                    if (i >= 0 && c < A)
                    {
                        double expected = normalised[(row - firstRows[i]) * A + c], actual = BFloat16.ToSingle(value);
                        Assert.True(Math.Abs(actual - expected) <= Math.Abs(expected) / 256, $"latent row {row}, column {c}: got {actual:R}, expected {expected:R}");
                        continue;
                    }
                    ushort exact = i < 0 ? Gpu.Bf16NaN : BFloat16.FromSingle(right[(row - firstRows[i]) * B + c - A]);
                    Assert.True(exact == value, $"latent row {row}, column {c}: got {value:X4}, expected {exact:X4}");
                }
            }
        }

        ActivationKernels.WriteLatentRows(stream, latent, dLeft, dWeight, Eps, dRight, T, A, B, first);
        AssertRows(latent.ToArray(stream), 5);

        // A captured graph reads the row from device memory at replay: the same graph writes where `first` now says.
        using CudaGraph graph = stream.Capture(s => ActivationKernels.WriteLatentRows(s, latent, dLeft, dWeight, Eps, dRight, T, A, B, first));
        first.CopyFrom(new[] { 12 }, stream);
        graph.Launch(stream);
        AssertRows(latent.ToArray(stream), 5, 12);

        first.CopyFrom(new[] { Capacity - 1 }, stream); // would run past the capacity: nothing written
        graph.Launch(stream);
        AssertRows(latent.ToArray(stream), 5, 12);
    }

    [Theory]
    [InlineData(1001, 0)]
    [InlineData(4099, 1)] // misaligned: element-wise path
    public void ToBFloat16_RoundsToNearestEven_AndSplitKeepsSixteenBits(int count, int offset)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(count);
        float[] x = Gpu.RandomF32(random, count, 100f);
        // Ties (exactly half a bf16 ulp) both ways, the largest finite float, infinities, NaN, a subnormal.
        float[] special = [BitConverter.UInt32BitsToSingle(0x3F808000), BitConverter.UInt32BitsToSingle(0x3F818000), float.MaxValue,
            float.PositiveInfinity, float.NegativeInfinity, float.NaN, -0f, 1e-40f];
        special.CopyTo(x, 3);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dX = PoisonedF32(gpu, stream, count, offset), dBack = PoisonedF32(gpu, stream, count, offset);
        using DeviceBuffer<ushort> dY = gpu.Poisoned(stream, count + offset, (ushort)0xFFFF);
        DeviceSpan<float> xs = dX.Span.Slice(offset), back = dBack.Span.Slice(offset);
        DeviceSpan<ushort> ys = dY.Span.Slice(offset);
        xs.CopyFrom(x, stream);
        ActivationKernels.ToBFloat16(stream, ys, xs, count);
        ushort[] got = ys.ToArray(stream);
        for (int i = 0; i < count; i++)
        {
            ushort expected = BFloat16.FromSingle(x[i]);
            Assert.True(float.IsNaN(x[i]) ? float.IsNaN(BFloat16.ToSingle(got[i])) : expected == got[i],
                $"element {i} ({x[i]:R}): got {got[i]:X4}, expected {expected:X4}");
        }
        Gpu.AssertTailUntouched(got, count, (ushort)0xFFFF);

        using DeviceBuffer<ushort> dLo = gpu.Poisoned(stream, count + offset, (ushort)0xFFFF);
        DeviceSpan<ushort> los = dLo.Span.Slice(offset);
        ActivationKernels.SplitBFloat16(stream, ys, los, xs, count);
        ushort[] hi = ys.ToArray(stream), lo = los.ToArray(stream);
        for (int i = 0; i < count; i++)
        {
            if (float.IsNaN(x[i]))
                continue; // the NaN check of ToBFloat16 above covers it
            Assert.Equal(BFloat16.FromSingle(x[i]), hi[i]);
            if (!float.IsFinite(BFloat16.ToSingle(hi[i])))
                continue; // infinities, NaN and finite floats past bf16's range have no finite split
            Assert.Equal(BFloat16.FromSingle(x[i] - BFloat16.ToSingle(hi[i])), lo[i]);
            double split = (double)BFloat16.ToSingle(hi[i]) + BFloat16.ToSingle(lo[i]);
            Assert.True(Math.Abs(split - x[i]) <= Math.Abs(x[i]) * Math.Pow(2, -16) + 1e-38, $"element {i}: {x[i]:R} split into {split:R}");
        }
        Gpu.AssertTailUntouched(lo, count, (ushort)0xFFFF);
    }

    [Fact]
    public void Wrappers_RejectTooShortBuffersAndBadArguments()
    {
        CudaContext gpu = Gpu.Require();
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> small = gpu.Allocate<float>(10);
        using DeviceBuffer<ushort> table = gpu.Allocate<ushort>(100);
        using DeviceBuffer<int> ids = gpu.Allocate<int>(4);
        Assert.Contains("output", Assert.Throws<ArgumentException>(() => ActivationKernels.Embed(stream, small, table, ids, 4, 10, 10)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => ActivationKernels.RmsNorm(stream, small, small, small, 1, 10, float.NaN));
        Assert.Throws<ArgumentOutOfRangeException>(() => ActivationKernels.Add(stream, small, small, 0));
        Assert.Equal("up", Assert.Throws<ArgumentException>(() => ActivationKernels.SwiGlu(stream, small, small, small.Span.Slice(1), 10)).ParamName);
        Assert.Contains("latent holds 2 rows", Assert.Throws<ArgumentException>(
            () => ActivationKernels.WriteLatentRows(stream, table.Span.Slice(0, 8), small, small, 1e-6f, small, 3, 2, 2, ids)).Message);
        Assert.Equal("weight", Assert.Throws<ArgumentException>(
            () => ActivationKernels.WriteLatentRows(stream, table, small, small.Span.Slice(0, 1), 1e-6f, small, 1, 2, 2, ids)).ParamName);
    }
}
