using KimiLinear.Cuda;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;
using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>
/// The MLA kernels (kernels/mla.cu) through <see cref="MlaKernels"/> against the double-precision
/// <see cref="MlaReference"/> on random data: the tiny model's dims (H 4, N 32, P 16, V 32, R 64) and the real ones
/// (H 32, N 128, P 64, V 128, R 512); T = 1, 3, 16/37; start = 0, 5, 300 and longer. Cache rows past the visible length
/// hold NaN, outputs have NaN-poisoned tails; neither may leak.
/// </summary>
/// <remarks>
/// Error = ‖actual − expected‖ / ‖expected‖ over the whole output, ≤ 2e-3 against the reference computed from the same
/// bf16 values. (The kernels feed their fp32 tensor-core operands, q_lat and the softmax weights, as fp16 and land
/// near 3e-4; as bf16 they would already cost ~2e-3.)
/// </remarks>
[Collection("GPU")]
public sealed class MlaKernelTests
{
    private const double Tolerance = 2e-3;

    // The wgmma decode partial feeds q_lat and the softmax weights as bf16 hi + lo pairs: it lands near fp32 (~4e-6 in
    // the emulator), which the mma.sync kernels (fp16 operands, ~3e-4) cannot reach, so passing this bound also shows
    // that the wgmma kernel is the one that ran.
    private const double WgmmaDecodeTolerance = 1e-4;

    private static MlaShape ShapeNamed(string name) => name switch
    {
        "tiny" => new MlaShape(Heads: 4, NopeDim: 32, RopeDim: 16, ValueDim: 32, Rank: 64),
        "full" => new MlaShape(Heads: 32, NopeDim: 128, RopeDim: 64, ValueDim: 128, Rank: 512),
        // The model's heads and rank with another rope width: the general decode kernel at 32 heads (full takes the
        // build specialised for H 32, R 512, R + P 576).
        "rope48" => new MlaShape(Heads: 32, NopeDim: 128, RopeDim: 48, ValueDim: 128, Rank: 512),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "no such test shape"),
    };

    [Theory]
    [InlineData("tiny", 1)]
    [InlineData("tiny", 37)]
    [InlineData("full", 1)]
    [InlineData("full", 3)]
    public void AbsorbQueryAndOutput_MatchReference(string shapeName, int t)
    {
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        var random = new Random(t * 7 + shape.Heads);
        ushort[] kvB = Gpu.RandomBf16(random, (long)shape.KeyValueWidth * shape.Rank, 0.1f);
        float[] q = Gpu.RandomF32(random, t * shape.QueryWidth), mixed = Gpu.RandomF32(random, t * shape.Heads * shape.Rank);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dKvB = gpu.Upload(stream, kvB);
        using DeviceBuffer<float> dQ = gpu.Upload(stream, q), dMixed = gpu.Upload(stream, mixed);
        using DeviceBuffer<float> dQueryLatent = gpu.Poisoned(stream, t * shape.Heads * shape.LatentWidth, float.NaN);
        using DeviceBuffer<float> dO = gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN);

        MlaKernels.AbsorbQuery(stream, dQueryLatent, dQ, dKvB, shape, t);
        MlaKernels.AbsorbOutput(stream, dO, dMixed, dKvB, shape, t);

        AssertCloseWithUntouchedTail(dQueryLatent.ToArray(stream), MlaReference.AbsorbQuery(q, kvB, shape, t), $"{shapeName} q_lat, T {t}");
        AssertCloseWithUntouchedTail(dO.ToArray(stream), MlaReference.AbsorbOutput(mixed, kvB, shape, t), $"{shapeName} W_UV output, T {t}");
    }

    [Theory]
    [InlineData("tiny", 0, 1)]
    [InlineData("tiny", 5, 3)]
    [InlineData("tiny", 300, 37)]
    [InlineData("full", 0, 1)]
    [InlineData("full", 5, 3)]
    [InlineData("full", 300, 16)]
    [InlineData("full", 4000, 3)] // several 48-row tiles per slice
    [InlineData("tiny", 47, 1)]    // the cache exactly one 48-row tile
    [InlineData("tiny", 48, 1)]    // one row into the second slice
    [InlineData("tiny", 63, 1)]
    [InlineData("tiny", 200, 16)]  // T = 16, each token's slices ending elsewhere in a tile
    [InlineData("full", 6335, 1)]  // 132 SMs: exactly one 48-row tile in every slice (the pipeline's prologue alone)
    [InlineData("full", 6336, 16)] // one row more: 96-row slices, the last one short; T = 16
    [InlineData("full", 8447, 1)]
    [InlineData("full", 20000, 2)] // four tiles per slice: the 3-slot ring wraps, loads refill slots while two are read
    [InlineData("tiny", 30000, 1)] // five tiles per slice, the last slice short
    [InlineData("rope48", 0, 1)]
    [InlineData("rope48", 20000, 3)]
    public void DecodeAttention_MatchesReference(string shapeName, int start, int t)
    {
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        var random = new Random(start * 31 + t);
        ushort[] latent = PoisonedCache(random, shape, start + t, capacity: start + t + 9);
        float[] queryLatent = Gpu.RandomF32(random, t * shape.Heads * shape.LatentWidth);
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: t);
        using DeviceBuffer<ushort> dLatent = gpu.Upload(stream, latent);
        using DeviceBuffer<float> dQuery = gpu.Upload(stream, queryLatent);
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { start });
        using DeviceBuffer<float> dOut = gpu.Poisoned(stream, t * shape.Heads * shape.Rank, float.NaN);

        MlaKernels.DecodeAttention(stream, dOut, dQuery, dLatent, dStart, t, shape, shape.Scale, scratch);

        AssertCloseWithUntouchedTail(dOut.ToArray(stream), MlaReference.Decode(queryLatent, latent, start, t, shape, shape.Scale),
            $"{shapeName} decode, start {start}, T {t}, {scratch.Splits} slices");
    }

    [Theory]
    [InlineData(0, 1)]      // one row: 63 of the tile's rows masked
    [InlineData(46, 1)]
    [InlineData(999, 1)]
    [InlineData(5, 3)]      // fewer rows than slices: most slices empty
    [InlineData(120, 16)]   // T = 16, each token's slices ending elsewhere in a tile
    [InlineData(6335, 1)]
    [InlineData(20000, 2)]  // 160-row slices: 3 tiles, the last partial
    [InlineData(65535, 1)]  // 8 tiles a slice: the 2-stage ring wraps 4 times
    public void DecodeAttention_WgmmaBesideMmaSync_BothMatchReference(int start, int t)
    {
        // The model's shape through both partial kernels on the same data: the wgmma one (Hopper's default) and the
        // mma.sync one (allowWarpgroupMma false), each against the reference, the wgmma one to its tighter bound.
        CudaContext gpu = Gpu.Require();
        if (!gpu.Kernels.RunsSm90a("mla")) Assert.Skip($"the wgmma decode kernel needs the sm_90a cubin (Hopper); this is {gpu.Device.Name}");
        MlaShape shape = ShapeNamed("full");
        var random = new Random(start * 17 + t);
        ushort[] latent = PoisonedCache(random, shape, start + t, capacity: start + t + 9);
        float[] queryLatent = Gpu.RandomF32(random, t * shape.Heads * shape.LatentWidth);
        float[] expected = MlaReference.Decode(queryLatent, latent, start, t, shape, shape.Scale);
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: t);
        using DeviceBuffer<ushort> dLatent = gpu.Upload(stream, latent);
        using DeviceBuffer<float> dQuery = gpu.Upload(stream, queryLatent);
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { start });
        using DeviceBuffer<float> dWgmma = gpu.Poisoned(stream, t * shape.Heads * shape.Rank, float.NaN);
        using DeviceBuffer<float> dMma = gpu.Poisoned(stream, t * shape.Heads * shape.Rank, float.NaN);

        MlaKernels.DecodeAttention(stream, dWgmma, dQuery, dLatent, dStart, t, shape, shape.Scale, scratch);
        MlaKernels.DecodeAttention(stream, dMma, dQuery, dLatent, dStart, t, shape, shape.Scale, scratch, allowWarpgroupMma: false);

        TensorAssert.Close(dWgmma.ToArray(stream), expected, WgmmaDecodeTolerance, $"wgmma decode, start {start}, T {t}, {scratch.Splits} slices");
        AssertCloseWithUntouchedTail(dMma.ToArray(stream), expected, $"mma.sync decode, start {start}, T {t}, {scratch.Splits} slices");
    }

    // The full shape twice: on Hopper the default takes the wgmma partial kernel, allowWgmma false the mma.sync one.
    [Theory]
    [InlineData("tiny", true)]
    [InlineData("full", true)]
    [InlineData("full", false)]
    public void DecodeAttention_CapturedGraph_FollowsTheLengthOnTheDevice(string shapeName, bool allowWgmma)
    {
        // One graph captured at length 0, replayed while the cache grows past the slice count and the 48/64-row tiles,
        // and past 132 slices of exactly one tile (6336 rows on an H100): every replay must see exactly the rows its
        // device-side start makes visible.
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        int[] starts = [0, 1, 33, 700, 2049, 6335, 6336, 8448];
        var random = new Random(11);
        ushort[] latent = PoisonedCache(random, shape, starts[^1] + 1, capacity: starts[^1] + 1);
        float[] queryLatent = Gpu.RandomF32(random, shape.Heads * shape.LatentWidth);
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: 1);
        using DeviceBuffer<ushort> dLatent = gpu.Upload(stream, latent);
        using DeviceBuffer<float> dQuery = gpu.Upload(stream, queryLatent);
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { 0 });
        using DeviceBuffer<float> dOut = gpu.Poisoned(stream, shape.Heads * shape.Rank, float.NaN);
        // One call outside the capture: module loads and the shared-memory opt-in must not happen inside it.
        MlaKernels.DecodeAttention(stream, dOut, dQuery, dLatent, dStart, 1, shape, shape.Scale, scratch, allowWgmma);
        using CudaGraph graph = stream.Capture(s => MlaKernels.DecodeAttention(s, dOut, dQuery, dLatent, dStart, 1, shape, shape.Scale, scratch, allowWgmma));

        foreach (int start in starts)
        {
            // Rows past start + 1 are NaN for this step: the cache has not grown that far yet.
            ushort[] visible = latent.ToArray();
            Array.Fill(visible, Gpu.Bf16NaN, (start + 1) * shape.LatentWidth, visible.Length - (start + 1) * shape.LatentWidth);
            dLatent.CopyFrom(visible, stream);
            dStart.CopyFrom(new[] { start }, stream);
            graph.Launch(stream);
            AssertCloseWithUntouchedTail(dOut.ToArray(stream), MlaReference.Decode(queryLatent, visible, start, 1, shape, shape.Scale),
                $"{shapeName} graph replay at start {start}{(allowWgmma ? "" : " (mma.sync)")}");
        }
    }

    // The full shape twice: on Hopper the default takes the wgmma kernel, allowWgmma false the mma.sync one.
    [Theory]
    [InlineData("tiny", 0, 1, true)]
    [InlineData("tiny", 5, 3, true)]
    [InlineData("tiny", 300, 37, true)]
    [InlineData("tiny", 0, 130, true)]  // three query tiles, the last partial
    [InlineData("full", 0, 37, true)]
    [InlineData("full", 5, 3, true)]
    [InlineData("full", 300, 37, true)]
    [InlineData("full", 64, 129, true)]
    [InlineData("full", 700, 203, true)]  // 2 query tiles, 15 key tiles: the 3-stage ring wraps 5 times
    [InlineData("full", 0, 37, false)]
    [InlineData("full", 300, 37, false)]
    [InlineData("full", 64, 129, false)]
    public void PrefillAttention_MatchesReference(string shapeName, int start, int t, bool allowWgmma)
    {
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        var random = new Random(start * 13 + t);
        int length = start + t, capacity = length + 5;
        ushort[] q = Gpu.RandomBf16(random, t * shape.QueryWidth);
        ushort[] keysValues = Gpu.RandomBf16(random, (long)capacity * shape.KeyValueWidth);
        Array.Fill(keysValues, Gpu.Bf16NaN, length * shape.KeyValueWidth, (capacity - length) * shape.KeyValueWidth);
        ushort[] latent = PoisonedCache(random, shape, length, capacity);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dQ = gpu.Upload(stream, q), dKv = gpu.Upload(stream, keysValues), dLatent = gpu.Upload(stream, latent);
        using DeviceBuffer<float> dO = gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN);

        MlaKernels.PrefillAttention(stream, dO, dQ, dKv, dLatent, start, t, shape, shape.Scale, allowWgmma);

        AssertCloseWithUntouchedTail(dO.ToArray(stream), MlaReference.Prefill(q, keysValues, latent, start, t, shape, shape.Scale),
            $"{shapeName} prefill{(allowWgmma ? "" : " (mma.sync)")}, start {start}, T {t}");
    }

    [Fact]
    public void Hopper_RunsTheMlaModuleFromItsSm90aCubin()
    {
        // Otherwise the prefill tests above would quietly test the mma.sync kernel twice on an H100.
        CudaContext gpu = Gpu.Require();
        Assert.Equal(gpu.Device.ComputeCapability == (9, 0), gpu.Kernels.RunsSm90a("mla"));
    }

    [Theory]
    [InlineData("tiny", 1)]
    [InlineData("tiny", 3)]
    [InlineData("full", 3)]
    public void DecodePath_EqualsPrefillPath_ForTheSameQueries(string shapeName, int t)
    {
        // kvB rows are signed unit vectors, so keysValues = latent[:, :R]·kvBᵀ is exact in bf16 and both forms compute
        // the same attention from the same values: absorbed (AbsorbQuery → DecodeAttention → AbsorbOutput) and expanded.
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        const int Start = 300;
        int length = Start + t;
        var random = new Random(t);
        ushort[] kvB = new ushort[(long)shape.KeyValueWidth * shape.Rank];
        var columnOf = new int[shape.KeyValueWidth];
        var signOf = new float[shape.KeyValueWidth];
        for (int row = 0; row < shape.KeyValueWidth; row++)
        {
            (columnOf[row], signOf[row]) = (random.Next(shape.Rank), random.Next(2) == 0 ? -1f : 1f);
            kvB[(long)row * shape.Rank + columnOf[row]] = BFloat16.FromSingle(signOf[row]);
        }
        ushort[] latent = PoisonedCache(random, shape, length, length + 3);
        var keysValues = new ushort[length * shape.KeyValueWidth];
        for (int s = 0; s < length; s++)
            for (int row = 0; row < shape.KeyValueWidth; row++)
                keysValues[s * shape.KeyValueWidth + row] = BFloat16.FromSingle(signOf[row] * BFloat16.ToSingle(latent[s * shape.LatentWidth + columnOf[row]]));
        ushort[] q = Gpu.RandomBf16(random, t * shape.QueryWidth);
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: t);
        using DeviceBuffer<ushort> dKvB = gpu.Upload(stream, kvB), dLatent = gpu.Upload(stream, latent), dKv = gpu.Upload(stream, keysValues);
        using DeviceBuffer<ushort> dQ16 = gpu.Upload(stream, q);
        using DeviceBuffer<float> dQ = gpu.Upload(stream, Gpu.Widen(q, q.Length));
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { Start });
        using DeviceBuffer<float> dQueryLatent = gpu.Allocate<float>(t * shape.Heads * shape.LatentWidth), dMixed = gpu.Allocate<float>(t * shape.Heads * shape.Rank);
        using DeviceBuffer<float> decoded = gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN), prefilled = gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN);

        MlaKernels.AbsorbQuery(stream, dQueryLatent, dQ, dKvB, shape, t);
        MlaKernels.DecodeAttention(stream, dMixed, dQueryLatent, dLatent, dStart, t, shape, shape.Scale, scratch);
        MlaKernels.AbsorbOutput(stream, decoded, dMixed, dKvB, shape, t);
        MlaKernels.PrefillAttention(stream, prefilled, dQ16, dKv, dLatent, Start, t, shape, shape.Scale);

        float[] expected = MlaReference.Prefill(q, keysValues, latent, Start, t, shape, shape.Scale);
        AssertCloseWithUntouchedTail(prefilled.ToArray(stream), expected, $"{shapeName} prefill path, T {t}");
        AssertCloseWithUntouchedTail(decoded.ToArray(stream), expected, $"{shapeName} decode path, T {t}");
    }

    [Theory]
    [InlineData("tiny", 40, 2)]
    [InlineData("full", 3000, 3)]
    public void DecodeChain_TwoLayersBackToBack_ShareBuffersSafely(string shapeName, int start, int t)
    {
        // Two layers queued without a synchronisation, through the same q_lat, mixed and scratch buffers, as the
        // backend does: under programmatic launch (on by default from sm_90) a kernel that read its predecessor's
        // output early, or overwrote a buffer its predecessor still read, would mix the layers.
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        var random = new Random(start + t);
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: t);
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { start });
        using DeviceBuffer<float> dQueryLatent = gpu.Allocate<float>(t * shape.Heads * shape.LatentWidth), dMixed = gpu.Allocate<float>(t * shape.Heads * shape.Rank);
        var layers = new (ushort[] KvB, ushort[] Latent, float[] Q, DeviceBuffer<ushort> DKvB, DeviceBuffer<ushort> DLatent, DeviceBuffer<float> DQ, DeviceBuffer<float> DO)[2];
        try
        {
            for (int i = 0; i < layers.Length; i++)
            {
                ushort[] kvB = Gpu.RandomBf16(random, (long)shape.KeyValueWidth * shape.Rank, 0.1f);
                ushort[] latent = PoisonedCache(random, shape, start + t, capacity: start + t + 4);
                float[] q = Gpu.RandomF32(random, t * shape.QueryWidth);
                layers[i] = (kvB, latent, q, gpu.Upload(stream, kvB), gpu.Upload(stream, latent), gpu.Upload(stream, q),
                    gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN));
            }
            stream.Synchronize();
            foreach (var layer in layers)
            {
                MlaKernels.AbsorbQuery(stream, dQueryLatent, layer.DQ, layer.DKvB, shape, t);
                MlaKernels.DecodeAttention(stream, dMixed, dQueryLatent, layer.DLatent, dStart, t, shape, shape.Scale, scratch);
                MlaKernels.AbsorbOutput(stream, layer.DO, dMixed, layer.DKvB, shape, t);
            }
            for (int i = 0; i < layers.Length; i++)
            {
                var layer = layers[i];
                float[] queryLatent = MlaReference.AbsorbQuery(layer.Q, layer.KvB, shape, t);
                float[] mixed = MlaReference.Decode(queryLatent, layer.Latent, start, t, shape, shape.Scale);
                AssertCloseWithUntouchedTail(layer.DO.ToArray(stream), MlaReference.AbsorbOutput(mixed, layer.KvB, shape, t),
                    $"{shapeName} layer {i} of a back-to-back decode chain, start {start}, T {t}");
            }
        }
        finally
        {
            foreach (var layer in layers)
            {
                layer.DKvB?.Dispose();
                layer.DLatent?.Dispose();
                layer.DQ?.Dispose();
                layer.DO?.Dispose();
            }
        }
    }

    [Fact]
    public void Wrappers_RejectShapesTheKernelsCannotRun()
    {
        CudaContext gpu = Gpu.Require();
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> f = gpu.Allocate<float>(1 << 20);
        using DeviceBuffer<ushort> u = gpu.Allocate<ushort>(1 << 20);
        using DeviceBuffer<int> start = gpu.Upload(stream, new[] { 0 });
        var wideValues = new MlaShape(4, 32, 16, 136, 64);
        var error = Assert.Throws<ArgumentException>(() => MlaKernels.PrefillAttention(stream, f, u, u, u, 0, 1, wideValues, 0.1f));
        Assert.Contains("V = 136", error.Message);
        var manyHeads = new MlaShape(33, 32, 16, 32, 64);
        using var scratch = new MlaDecodeScratch(gpu, manyHeads, 1);
        error = Assert.Throws<ArgumentException>(() => MlaKernels.DecodeAttention(stream, f, f, u, start, 1, manyHeads, 0.1f, scratch));
        Assert.Contains("H = 33", error.Message);
        MlaShape tiny = ShapeNamed("tiny");
        error = Assert.Throws<ArgumentException>(() => MlaKernels.DecodeAttention(stream, f, f, u, start, 1, tiny, 0.1f, scratch));
        Assert.Contains("laid out for", error.Message);
        error = Assert.Throws<ArgumentException>(() => MlaKernels.AbsorbQuery(stream, f, f, u.Span.Slice(0, 100), tiny, 1));
        Assert.Contains("kvB", error.Message);
    }

    /// <summary>Random bf16 latent rows [capacity, R + P], NaN from row <paramref name="length"/> on.</summary>
    private static ushort[] PoisonedCache(Random random, MlaShape shape, int length, int capacity)
    {
        ushort[] latent = Gpu.RandomBf16(random, (long)capacity * shape.LatentWidth);
        Array.Fill(latent, Gpu.Bf16NaN, length * shape.LatentWidth, (capacity - length) * shape.LatentWidth);
        return latent;
    }

    private static void AssertCloseWithUntouchedTail(float[] actual, float[] expected, string what)
    {
        TensorAssert.Close(actual.AsSpan(0, expected.Length), expected, Tolerance, what);
        for (int i = expected.Length; i < actual.Length; i++) Assert.True(float.IsNaN(actual[i]), $"{what}: output tail element {i} overwritten");
    }
}
