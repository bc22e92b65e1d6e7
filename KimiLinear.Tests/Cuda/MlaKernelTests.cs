using KimiLinear.Cuda;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;
using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>
/// The MLA kernels (kernels/mla.cu) through <see cref="MlaKernels"/> against the double-precision
/// <see cref="MlaReference"/> on random data: the tiny model's dims (H 4, N 32, P 16, V 32, R 64), the real ones
/// (H 32, N 128, P 64, V 128, R 512) and odd ones; T = 1, 3, 16/37; start = 0, 5, 300 and longer. Cache rows past the
/// visible length and empty slices' outputs hold NaN, outputs have NaN-poisoned tails; neither may leak. The decode
/// attention is checked through the output absorption that merges its slices (o = W_UV·out).
/// </summary>
/// <remarks>
/// Error = ‖actual − expected‖ / ‖expected‖ over the whole output, ≤ 2e-3 against the reference computed from the same
/// bf16 values. (The mma.sync kernels feed their fp32 tensor-core operands, q_lat and the softmax weights, as fp16 and
/// land near 3e-4. The wgmma prefill rounds the softmax weights to bf16, as the reference model's bf16 attention does,
/// and lands near 1.3e-3 on these random inputs; q_lat as bf16 alone would cost ~2e-3, hence the decode's hi + lo.)
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
        // The model's head dims with 4 heads: one cluster of the one-launch decode.
        "quad" => new MlaShape(Heads: 4, NopeDim: 128, RopeDim: 64, ValueDim: 128, Rank: 512),
        // Past the 128 W_UK rows / W_UV rows the absorption kernels hold in registers, and R not a multiple of their
        // 128-column blocks (the second block of a head half used).
        "odd" => new MlaShape(Heads: 3, NopeDim: 160, RopeDim: 16, ValueDim: 144, Rank: 200),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "no such test shape"),
    };

    [Theory]
    [InlineData("tiny", 1)]
    [InlineData("tiny", 37)]
    [InlineData("full", 1)]
    [InlineData("full", 3)]
    [InlineData("full", 16)] // four passes of 4 tokens over the W_UK held in registers
    [InlineData("odd", 5)]
    public void AbsorbQuery_MatchesReference(string shapeName, int t)
    {
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        var random = new Random(t * 7 + shape.Heads);
        ushort[] kvB = Gpu.RandomBf16(random, (long)shape.KeyValueWidth * shape.Rank, 0.1f);
        float[] q = Gpu.RandomF32(random, t * shape.QueryWidth);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dKvB = gpu.Upload(stream, kvB);
        using DeviceBuffer<float> dQ = gpu.Upload(stream, q);
        using DeviceBuffer<float> dQueryLatent = gpu.Poisoned(stream, t * shape.Heads * shape.LatentWidth, float.NaN);

        MlaKernels.AbsorbQuery(stream, dQueryLatent, dQ, dKvB, shape, t);

        AssertCloseWithUntouchedTail(dQueryLatent.ToArray(stream), MlaReference.AbsorbQuery(q, kvB, shape, t), $"{shapeName} q_lat, T {t}");
    }

    [Theory]
    [InlineData("tiny", 1)]
    [InlineData("tiny", 16)]
    [InlineData("full", 1)]
    [InlineData("full", 3)]
    [InlineData("odd", 5)]
    public void AbsorbOutput_MergesTheSlicesThenAppliesWUV(string shapeName, int t)
    {
        // Slices as the partial kernel leaves them, with random maxima (log2 units) and sums and about a quarter of
        // them empty (max −∞, sum 0, outputs NaN: never written). Called twice: the per-head arrival counters of the
        // first call must be back at 0 for the second to add the right parts.
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        var random = new Random(t * 13 + shape.Rank);
        ushort[] kvB = Gpu.RandomBf16(random, (long)shape.KeyValueWidth * shape.Rank, 0.1f);
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: t);
        int splits = scratch.Splits, slices = t * splits * shape.Heads;
        float[] outputs = Gpu.RandomF32(random, (long)slices * shape.Rank), stats = new float[slices * 2];
        for (int i = 0; i < slices; i++)
        {
            bool empty = i % splits != 0 && random.Next(4) == 0; // slice 0 of every token holds rows
            stats[2 * i] = empty ? float.NegativeInfinity : (float)(random.NextDouble() * 30 - 20);
            stats[2 * i + 1] = empty ? 0f : (float)(random.NextDouble() * 40 + 1);
            if (empty) Array.Fill(outputs, float.NaN, i * shape.Rank, shape.Rank);
        }
        // stats is laid out [T, S, H, 2] and outputs [T, S, H, R]: slice s of token i, head h at index (i·S + s)·H + h.
        scratch.Outputs.CopyFrom(outputs, stream);
        scratch.Stats.CopyFrom(stats, stream);
        using DeviceBuffer<ushort> dKvB = gpu.Upload(stream, kvB);
        float[] expected = MlaReference.AbsorbOutput(MlaReference.MergeSlices(outputs, stats, splits, shape, t), kvB, shape, t);

        for (int call = 1; call <= 2; call++)
        {
            using DeviceBuffer<float> dO = gpu.Poisoned(stream, t * shape.OutputWidth + 7, float.NaN);
            MlaKernels.AbsorbOutput(stream, dO, scratch, dKvB, shape, t);
            AssertCloseWithUntouchedTail(dO.ToArray(stream), expected, $"{shapeName} merged W_UV output, T {t}, call {call}");
        }
        Assert.All(scratch.Arrivals.ToArray(stream), count => Assert.Equal(0, count));
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
    public void DecodeAttentionThenAbsorbOutput_MatchReference(string shapeName, int start, int t)
    {
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        var random = new Random(start * 31 + t);
        ushort[] latent = PoisonedCache(random, shape, start + t, capacity: start + t + 9);
        float[] queryLatent = Gpu.RandomF32(random, t * shape.Heads * shape.LatentWidth);
        ushort[] kvB = Gpu.RandomBf16(random, (long)shape.KeyValueWidth * shape.Rank, 0.1f);
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: t);
        using DeviceBuffer<ushort> dLatent = gpu.Upload(stream, latent), dKvB = gpu.Upload(stream, kvB);
        using DeviceBuffer<float> dQuery = gpu.Upload(stream, queryLatent);
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { start });
        using DeviceBuffer<float> dO = gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN);

        MlaKernels.DecodeAttention(stream, dQuery, dLatent, dStart, t, shape, shape.Scale, scratch);
        MlaKernels.AbsorbOutput(stream, dO, scratch, dKvB, shape, t);

        float[] mixed = MlaReference.Decode(queryLatent, latent, start, t, shape, shape.Scale);
        AssertCloseWithUntouchedTail(dO.ToArray(stream), MlaReference.AbsorbOutput(mixed, kvB, shape, t),
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
        // The model's shape through both partial kernels on the same data, each merged with W_UV applied: the wgmma one
        // (Hopper's default) and the mma.sync one (allowWarpgroupMma false), each against the reference, the wgmma one
        // to its tighter bound.
        CudaContext gpu = Gpu.Require();
        if (!gpu.Kernels.RunsSm90a("mla")) Assert.Skip($"the wgmma decode kernel needs the sm_90a cubin (Hopper); this is {gpu.Device.Name}");
        MlaShape shape = ShapeNamed("full");
        var random = new Random(start * 17 + t);
        ushort[] latent = PoisonedCache(random, shape, start + t, capacity: start + t + 9);
        float[] queryLatent = Gpu.RandomF32(random, t * shape.Heads * shape.LatentWidth);
        ushort[] kvB = Gpu.RandomBf16(random, (long)shape.KeyValueWidth * shape.Rank, 0.1f);
        float[] expected = MlaReference.AbsorbOutput(MlaReference.Decode(queryLatent, latent, start, t, shape, shape.Scale), kvB, shape, t);
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: t);
        using DeviceBuffer<ushort> dLatent = gpu.Upload(stream, latent), dKvB = gpu.Upload(stream, kvB);
        using DeviceBuffer<float> dQuery = gpu.Upload(stream, queryLatent);
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { start });
        using DeviceBuffer<float> dWgmma = gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN);
        using DeviceBuffer<float> dMma = gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN);

        MlaKernels.DecodeAttention(stream, dQuery, dLatent, dStart, t, shape, shape.Scale, scratch);
        MlaKernels.AbsorbOutput(stream, dWgmma, scratch, dKvB, shape, t);
        MlaKernels.DecodeAttention(stream, dQuery, dLatent, dStart, t, shape, shape.Scale, scratch, allowWarpgroupMma: false);
        MlaKernels.AbsorbOutput(stream, dMma, scratch, dKvB, shape, t);

        AssertCloseWithUntouchedTail(dWgmma.ToArray(stream), expected, $"wgmma decode, start {start}, T {t}, {scratch.Splits} slices", WgmmaDecodeTolerance);
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
        ushort[] kvB = Gpu.RandomBf16(random, (long)shape.KeyValueWidth * shape.Rank, 0.1f);
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: 1);
        using DeviceBuffer<ushort> dLatent = gpu.Upload(stream, latent), dKvB = gpu.Upload(stream, kvB);
        using DeviceBuffer<float> dQuery = gpu.Upload(stream, queryLatent);
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { 0 });
        using DeviceBuffer<float> dO = gpu.Poisoned(stream, shape.OutputWidth, float.NaN);
        void Decode(CudaStream s)
        {
            MlaKernels.DecodeAttention(s, dQuery, dLatent, dStart, 1, shape, shape.Scale, scratch, allowWgmma);
            MlaKernels.AbsorbOutput(s, dO, scratch, dKvB, shape, 1);
        }
        ReplayWhileTheCacheGrows(stream, Decode, starts, latent, dLatent, dStart, dO, queryLatent, kvB, shape,
            $"{shapeName} graph replay{(allowWgmma ? "" : " (mma.sync)")}", Tolerance);
    }

    // The one-launch decode (clusters of 8 blocks, each a slice of the cache; Hopper): a cache of one row (7 slices
    // empty), slices shorter than a k16 step, this step's row the last (start 20) or the first (21) of its slice, odd
    // slice lengths (zero-filled up to 16 rows), and the longest cache it takes (1,408 rows: 8 slices of 176).
    [Theory]
    [InlineData("quad", 0)]
    [InlineData("quad", 20)]
    [InlineData("quad", 21)]
    [InlineData("full", 135)]
    [InlineData("full", 1000)]
    [InlineData("full", 1407)]
    public void DecodeFused_MatchesReference(string shapeName, int start)
    {
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        SkipUnlessFusedDecodeRuns(gpu, shape);
        var random = new Random(start * 17 + shape.Heads);
        ushort[] latent = PoisonedCache(random, shape, start + 1, capacity: start + 9);
        float[] q = Gpu.RandomF32(random, shape.QueryWidth);
        ushort[] kvB = Gpu.RandomBf16(random, (long)shape.KeyValueWidth * shape.Rank, 0.1f);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dLatent = gpu.Upload(stream, latent), dKvB = gpu.Upload(stream, kvB);
        using DeviceBuffer<float> dQ = gpu.Upload(stream, q);
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { start });
        using DeviceBuffer<float> dO = gpu.Poisoned(stream, shape.OutputWidth + 5, float.NaN);

        MlaKernels.DecodeFused(stream, dO, dQ, dLatent, dStart, dKvB, shape, shape.Scale);

        float[] mixed = MlaReference.Decode(MlaReference.AbsorbQuery(q, kvB, shape, 1), latent, start, 1, shape, shape.Scale);
        AssertCloseWithUntouchedTail(dO.ToArray(stream), MlaReference.AbsorbOutput(mixed, kvB, shape, 1),
            $"{shapeName} one-launch decode, start {start}", WgmmaDecodeTolerance);
    }

    [Fact]
    public void DecodeFused_CapturedGraph_FollowsTheLengthOnTheDevice()
    {
        // One graph captured at length 1, replayed while the cache grows past the slice count, a k16 step, a slice's
        // 176 rows' worth of tokens per slice and up to the longest cache the kernel takes.
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed("full");
        SkipUnlessFusedDecodeRuns(gpu, shape);
        int[] starts = [0, 1, 7, 8, 9, 130, 1023, 1406, MlaKernels.FusedDecodeMaxLength - 1];
        var random = new Random(12);
        ushort[] latent = PoisonedCache(random, shape, starts[^1] + 1, capacity: starts[^1] + 1);
        float[] q = Gpu.RandomF32(random, shape.QueryWidth);
        ushort[] kvB = Gpu.RandomBf16(random, (long)shape.KeyValueWidth * shape.Rank, 0.1f);
        float[] queryLatent = MlaReference.AbsorbQuery(q, kvB, shape, 1);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dLatent = gpu.Upload(stream, latent), dKvB = gpu.Upload(stream, kvB);
        using DeviceBuffer<float> dQ = gpu.Upload(stream, q);
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { 0 });
        using DeviceBuffer<float> dO = gpu.Poisoned(stream, shape.OutputWidth, float.NaN);
        ReplayWhileTheCacheGrows(stream, s => MlaKernels.DecodeFused(s, dO, dQ, dLatent, dStart, dKvB, shape, shape.Scale), starts, latent,
            dLatent, dStart, dO, queryLatent, kvB, shape, "one-launch decode graph replay", WgmmaDecodeTolerance);
    }

    [Fact]
    public void DecodeFused_OtherShapesAreANamedError()
    {
        CudaContext gpu = Gpu.Require();
        MlaShape tiny = ShapeNamed("tiny"), oddHeads = ShapeNamed("full") with { Heads = 6 };
        Assert.False(MlaKernels.RunsFusedDecode(gpu, tiny));
        Assert.False(MlaKernels.RunsFusedDecode(gpu, oddHeads));
        Assert.False(MlaKernels.RunsFusedDecode(gpu, ShapeNamed("rope48")));
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dO = gpu.Poisoned(stream, 4096, 0f), dQ = gpu.Poisoned(stream, 4096, 0f);
        using DeviceBuffer<ushort> dLatent = gpu.Poisoned(stream, 4096, (ushort)0), dKvB = gpu.Poisoned(stream, 1 << 20, (ushort)0);
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { 0 });
        var error = Assert.Throws<ArgumentException>(() => MlaKernels.DecodeFused(stream, dO, dQ, dLatent, dStart, dKvB, oddHeads, oddHeads.Scale));
        Assert.Contains("H = 6", error.Message);
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
        using DeviceBuffer<float> dQueryLatent = gpu.Allocate<float>(t * shape.Heads * shape.LatentWidth);
        using DeviceBuffer<float> decoded = gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN), prefilled = gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN);

        MlaKernels.AbsorbQuery(stream, dQueryLatent, dQ, dKvB, shape, t);
        MlaKernels.DecodeAttention(stream, dQueryLatent, dLatent, dStart, t, shape, shape.Scale, scratch);
        MlaKernels.AbsorbOutput(stream, decoded, scratch, dKvB, shape, t);
        MlaKernels.PrefillAttention(stream, prefilled, dQ16, dKv, dLatent, Start, t, shape, shape.Scale);

        float[] expected = MlaReference.Prefill(q, keysValues, latent, Start, t, shape, shape.Scale);
        AssertCloseWithUntouchedTail(prefilled.ToArray(stream), expected, $"{shapeName} prefill path, T {t}");
        AssertCloseWithUntouchedTail(decoded.ToArray(stream), expected, $"{shapeName} decode path, T {t}");
    }

    /// <summary>
    /// A batched decode step's MLA: one table DecodeAttention over N caches allocated apart, each of its own length (NaN
    /// past its rows; some shorter than the slice count, so most of their slices are empty), then one AbsorbOutput over
    /// the N scratch tokens: each row as the reference of its cache, and bit for bit what one DecodeAttention and one
    /// AbsorbOutput per cache give (the table form runs the same kernel body on the same rows).
    /// </summary>
    [Theory]
    [InlineData("tiny", true, new[] { 0, 47, 5, 300 })]
    [InlineData("full", true, new[] { 6336, 0, 300, 20000, 47 })] // on Hopper the wgmma partial kernel
    [InlineData("full", false, new[] { 6336, 0, 300, 20000, 47 })] // the mma.sync one built for the model's shape
    [InlineData("rope48", true, new[] { 3, 100 })]                 // the general kernel
    [InlineData("tiny", true, new[] { 9, 0, 1, 90, 48, 7, 63, 64, 2, 11, 200, 4, 5, 130, 3000, 1 })] // a full table (16)
    public void DecodeAttention_TableOfSeparateCaches_EqualsOneCallPerCache_AndMatchesReference(string shapeName, bool allowWgmma, int[] starts)
    {
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        int t = starts.Length, width = shape.Heads * shape.LatentWidth;
        var random = new Random(starts.Sum());
        ushort[][] latents = starts.Select(start => PoisonedCache(random, shape, start + 1, capacity: start + 5)).ToArray();
        float[] queryLatent = Gpu.RandomF32(random, t * width);
        ushort[] kvB = Gpu.RandomBf16(random, (long)shape.KeyValueWidth * shape.Rank, 0.1f);
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: t + 2); // room to spare: AbsorbOutput takes t
        var caches = latents.Select(latent => gpu.Upload(stream, latent)).ToArray();
        try
        {
            using DeviceBuffer<ushort> dKvB = gpu.Upload(stream, kvB);
            using DeviceBuffer<float> dQuery = gpu.Upload(stream, queryLatent);
            using DeviceBuffer<int> dStarts = gpu.Upload(stream, starts);
            using DeviceBuffer<float> dTable = gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN);
            using DeviceBuffer<float> dOneByOne = gpu.Poisoned(stream, t * shape.OutputWidth, float.NaN);

            MlaKernels.DecodeAttention(stream, dQuery, caches.Select(cache => cache.Span).ToArray(), dStarts, shape, shape.Scale, scratch, allowWgmma);
            MlaKernels.AbsorbOutput(stream, dTable, scratch, dKvB, shape, t);
            for (int n = 0; n < t; n++)
            {
                MlaKernels.DecodeAttention(stream, dQuery.Span.Slice((long)n * width, width), caches[n], dStarts.Span.Slice(n, 1), 1, shape, shape.Scale,
                    scratch, allowWgmma);
                MlaKernels.AbsorbOutput(stream, dOneByOne.Span.Slice((long)n * shape.OutputWidth, shape.OutputWidth), scratch, dKvB, shape, 1);
            }

            var mixed = new List<float>();
            for (int n = 0; n < t; n++)
                mixed.AddRange(MlaReference.Decode(queryLatent[(n * width)..((n + 1) * width)], latents[n], starts[n], 1, shape, shape.Scale));
            string what = $"{shapeName} decode of {t} caches of lengths {string.Join(", ", starts.Select(s => s + 1))} in one launch";
            float[] table = dTable.ToArray(stream);
            AssertCloseWithUntouchedTail(table, MlaReference.AbsorbOutput([.. mixed], kvB, shape, t), what);
            Assert.True(table.Select(BitConverter.SingleToInt32Bits).SequenceEqual(dOneByOne.ToArray(stream).Select(BitConverter.SingleToInt32Bits)),
                $"{what}: not bit for bit what one launch per cache gives");
        }
        finally
        {
            foreach (var buffer in caches) buffer.Dispose();
        }
    }

    [Theory]
    [InlineData("tiny", 40, 2)]
    [InlineData("full", 3000, 3)]
    public void DecodeChain_TwoLayersBackToBack_ShareBuffersSafely(string shapeName, int start, int t)
    {
        // Two layers queued without a synchronisation, through the same q_lat and scratch buffers, as the
        // backend does: under programmatic launch (on by default from sm_90) a kernel that read its predecessor's
        // output early, or overwrote a buffer its predecessor still read, would mix the layers.
        CudaContext gpu = Gpu.Require();
        MlaShape shape = ShapeNamed(shapeName);
        var random = new Random(start + t);
        using CudaStream stream = gpu.CreateStream();
        using var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: t);
        using DeviceBuffer<int> dStart = gpu.Upload(stream, new[] { start });
        using DeviceBuffer<float> dQueryLatent = gpu.Allocate<float>(t * shape.Heads * shape.LatentWidth);
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
                MlaKernels.DecodeAttention(stream, dQueryLatent, layer.DLatent, dStart, t, shape, shape.Scale, scratch);
                MlaKernels.AbsorbOutput(stream, layer.DO, scratch, layer.DKvB, shape, t);
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
        error = Assert.Throws<ArgumentException>(() => MlaKernels.DecodeAttention(stream, f, u, start, 1, manyHeads, 0.1f, scratch));
        Assert.Contains("H = 33", error.Message);
        MlaShape tiny = ShapeNamed("tiny");
        error = Assert.Throws<ArgumentException>(() => MlaKernels.DecodeAttention(stream, f, u, start, 1, tiny, 0.1f, scratch));
        Assert.Contains("laid out for", error.Message);
        // The table form: no more caches than the scratch has tokens, nor than one launch's table holds; none missing.
        using var smallScratch = new MlaDecodeScratch(gpu, tiny, 2);
        using var bigScratch = new MlaDecodeScratch(gpu, tiny, MlaKernels.DecodeTableSequences + 1);
        DeviceSpan<ushort>[] Caches(int n) => Enumerable.Repeat(u.Span, n).ToArray();
        error = Assert.Throws<ArgumentException>(() => MlaKernels.DecodeAttention(stream, f, Caches(3), start, tiny, 0.1f, smallScratch));
        Assert.Contains("room for 2 tokens but the call decodes 3", error.Message);
        error = Assert.Throws<ArgumentException>(() => MlaKernels.DecodeAttention(stream, f, Caches(MlaKernels.DecodeTableSequences + 1), start, tiny, 0.1f, bigScratch));
        Assert.Contains($"at most {MlaKernels.DecodeTableSequences} caches", error.Message);
        error = Assert.Throws<ArgumentException>(() => MlaKernels.DecodeAttention(stream, f, Caches(2), start, tiny, 0.1f, smallScratch));
        Assert.Contains("starts", error.Message); // one device start for two caches
        Assert.Throws<ArgumentOutOfRangeException>(() => MlaKernels.DecodeAttention(stream, f, Caches(0), start, tiny, 0.1f, smallScratch));
        error = Assert.Throws<ArgumentException>(() => MlaKernels.AbsorbOutput(stream, f, scratch, u, manyHeads, 2));
        Assert.Contains("room for 1 tokens", error.Message);
        error = Assert.Throws<ArgumentException>(() => MlaKernels.AbsorbQuery(stream, f, f, u.Span.Slice(0, 100), tiny, 1));
        Assert.Contains("kvB", error.Message);
    }

    /// <summary>Random bf16 latent rows [capacity, R + P], NaN from row <paramref name="length"/> on.</summary>
    /// <summary>
    /// Captures a one-token decode (after one call outside the capture: module loads and the shared-memory opt-in must not
    /// happen inside it) and replays it at each start, the cache's rows past start + 1 NaN for that step (it has not grown
    /// that far yet): every replay must see exactly the rows its device-side start makes visible, o = W_UV·attention.
    /// </summary>
    private static void ReplayWhileTheCacheGrows(CudaStream stream, Action<CudaStream> decode, int[] starts, ushort[] latent,
        DeviceBuffer<ushort> dLatent, DeviceBuffer<int> dStart, DeviceBuffer<float> dO, float[] queryLatent, ushort[] kvB, MlaShape shape,
        string what, double tolerance)
    {
        decode(stream);
        using CudaGraph graph = stream.Capture(decode);
        foreach (int start in starts)
        {
            ushort[] visible = latent.ToArray();
            Array.Fill(visible, Gpu.Bf16NaN, (start + 1) * shape.LatentWidth, visible.Length - (start + 1) * shape.LatentWidth);
            dLatent.CopyFrom(visible, stream);
            dStart.CopyFrom(new[] { start }, stream);
            graph.Launch(stream);
            float[] mixed = MlaReference.Decode(queryLatent, visible, start, 1, shape, shape.Scale);
            AssertCloseWithUntouchedTail(dO.ToArray(stream), MlaReference.AbsorbOutput(mixed, kvB, shape, 1), $"{what} at start {start}", tolerance);
        }
    }

    private static void SkipUnlessFusedDecodeRuns(CudaContext gpu, MlaShape shape)
    {
        if (!MlaKernels.RunsFusedDecode(gpu, shape)) Assert.Skip($"the one-launch MLA decode needs the sm_90a cubin (Hopper); this is {gpu.Device.Name}");
    }

    private static ushort[] PoisonedCache(Random random, MlaShape shape, int length, int capacity)
    {
        ushort[] latent = Gpu.RandomBf16(random, (long)capacity * shape.LatentWidth);
        Array.Fill(latent, Gpu.Bf16NaN, length * shape.LatentWidth, (capacity - length) * shape.LatentWidth);
        return latent;
    }

    private static void AssertCloseWithUntouchedTail(float[] actual, float[] expected, string what, double tolerance = Tolerance)
    {
        TensorAssert.Close(actual.AsSpan(0, expected.Length), expected, tolerance, what);
        for (int i = expected.Length; i < actual.Length; i++) Assert.True(float.IsNaN(actual[i]), $"{what}: output tail element {i} overwritten");
    }
}
