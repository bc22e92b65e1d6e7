using KimiLinear.Cuda;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;
using KimiLinear.Loading;
using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>
/// The KDA kernels (kernels/kda/kda.cu) through their C# wrappers against the float64 golden <c>kda_ops</c> cases and
/// the CPU reference (<see cref="KdaReference"/>, core from <c>KdaCore</c>): packed batches of odd lengths with a nonzero
/// initial state, K = V = 64 and 128, fp32 and bf16 activations; packed equal to separate calls; decode steps; prefill
/// then decode equal to one long prefill. Inputs carry NaN past their last token, scratch starts NaN, and outputs have
/// NaN-poisoned tails that must stay untouched.
/// </summary>
/// <remarks>
/// Errors are ‖actual − expected‖ / ‖expected‖ over a whole tensor. fp32: ≤ 1e-5 (the kernels and KdaCore each land within
/// a few 1e-6 of float64). bf16: ≤ 1e-3 against the reference rounded to bf16 where the kernel stores bf16 (one bf16
/// rounding alone is up to 3.9e-3 per element, so the unrounded reference would be the wrong yardstick).
/// </remarks>
[Collection("GPU")]
public sealed class KdaKernelTests
{
    private const double F32Tolerance = 1e-5, Bf16Tolerance = 1e-3;
    private const float RmsEps = 1e-5f;

    private static double Tolerance(bool bf16) => bf16 ? Bf16Tolerance : F32Tolerance;

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void ChunkedPrefill_MatchesFloat64Golden(int caseIndex)
    {
        CudaContext gpu = Gpu.Require();
        using var file = SafeTensorFile.Open(Path.Combine(FixturePaths.Get("kda_ops"), "kda_ops.safetensors"));
        string name = $"kda{caseIndex}";
        long[] dims = file.Tensors[$"{name}.q"].Shape; // [B, T, H, K]: B sequences of T tokens, packed
        int batch = (int)dims[0], tokens = (int)dims[1], heads = (int)dims[2], keyDim = (int)dims[3];
        var shape = new KdaShape(heads, keyDim, (int)file.Tensors[$"{name}.v"].Shape[3]);
        float[] Read(string tensor) => file.ReadFloat32($"{name}.{tensor}");

        using var device = new Device<float>(gpu);
        var (o, state) = device.Prefill(shape, Enumerable.Repeat(tokens, batch).ToArray(), Read("q"), Read("k"), Read("v"), Read("g"),
            Read("beta"), Read("initial_state"));

        TensorAssert.Close(o, Read("o"), F32Tolerance, $"{name} (B {batch}, T {tokens}, {shape}) o vs float64");
        TensorAssert.Close(state, Read("final_state"), F32Tolerance, $"{name} final state vs float64");
    }

    /// <summary>Packed sequences of odd lengths against the reference and against separate calls; bf16 with either scan
    /// (<paramref name="wideScan"/>: the wide one, which the shapes here would not choose by themselves).</summary>
    [Theory]
    [InlineData(false, 64, false)]
    [InlineData(false, 128, false)]
    [InlineData(true, 64, false)]
    [InlineData(true, 128, false)]
    [InlineData(true, 64, true)]
    [InlineData(true, 128, true)]
    public void ChunkedPrefill_PackedOddLengths_MatchesKdaCoreAndSeparateCalls(bool bf16, int dim, bool wideScan)
    {
        if (bf16) PackedPrefill<ushort>(dim, wideScan);
        else PackedPrefill<float>(dim, null);
    }

    /// <summary>
    /// Several decode steps of 3 sequences against the reference; with <paramref name="maxBlocks"/> &gt; 0 fewer blocks than
    /// the 9 heads, so that each steps several with the next heads' states in flight: unevenly, 9 heads over 4 blocks,
    /// one head ahead; all 9 on one block, two ahead (more than kda.cu's kDecodeOneAheadItems a block).
    /// </summary>
    [Theory]
    [InlineData(false, 64, 0)]
    [InlineData(false, 128, 0)]
    [InlineData(true, 64, 0)]
    [InlineData(true, 128, 0)]
    [InlineData(false, 128, 4)]
    [InlineData(false, 128, 1)]
    [InlineData(true, 64, 1)]
    public void DecodeStep_SeveralTokens_MatchesReference(bool bf16, int dim, int maxBlocks)
    {
        if (bf16) DecodeSteps<ushort>(dim, maxBlocks);
        else DecodeSteps<float>(dim, maxBlocks);
    }

    /// <summary>
    /// The table form over sequences with caches of their own (as sessions keep them), more than one launch takes (35 =
    /// 32 + 3) and an odd head count, equals one single-sequence call per sequence bit for bit, over several steps.
    /// </summary>
    [Theory]
    [InlineData(false, 64, 0)]
    [InlineData(true, 128, 0)]
    [InlineData(true, 128, 7)] // the table's 96 and 9 heads stepped by 7 blocks
    public void DecodeStep_TableOfSeparateCaches_EqualsOneCallPerSequence(bool bf16, int dim, int maxBlocks)
    {
        if (bf16) DecodeTable<ushort>(dim, maxBlocks);
        else DecodeTable<float>(dim, maxBlocks);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void PrepareAndPrefill_ThenDecodeSteps_EqualOneLongPrefill(bool bf16)
    {
        if (bf16) PrefillThenDecode<ushort>();
        else PrefillThenDecode<float>();
    }

    /// <summary>
    /// The model's prefill runs its core on bf16 q, k, v from fp32 projections: that pre-kernel's q, k, v are the fp32
    /// pre-kernel's rounded to bf16, bit for bit, and its g, β and advanced windows the same (only the stores differ).
    /// </summary>
    [Fact]
    public void Prepare_Fp32ProjectionsToBf16_IsTheFp32PreKernelRounded()
    {
        CudaContext gpu = Gpu.Require();
        int[] lengths = [70, 2, 33]; // the second is shorter than the conv window
        var shape = new KdaShape(2, 128, 128);
        int hk = shape.KeyWidth, hv = shape.ValueWidth;
        var random = new Random(17);
        var layer = LayerHost.Random(random, shape, bf16: false);
        var start = CacheHost.Random(random, shape, lengths.Length, bf16: false);
        var raw = TokenHost.Random(random, shape, lengths.Sum(), bf16: false);
        using var device = new Device<float>(gpu);
        CudaStream stream = device.Stream;
        using var batch = new KdaBatch(stream, lengths);
        long tokens = batch.Tokens;
        KdaLayerParameters<float> parameters = device.Upload(layer);
        KdaProjections<float> projections = device.Upload(raw);
        var (cacheWide, windowsWide, _) = device.Upload(start);
        var (cacheNarrow, windowsNarrow, _) = device.Upload(start);
        using DeviceBuffer<float> qWide = gpu.Poisoned(stream, tokens * hk, float.NaN), kWide = gpu.Poisoned(stream, tokens * hk, float.NaN);
        using DeviceBuffer<float> vWide = gpu.Poisoned(stream, tokens * hv, float.NaN);
        using DeviceBuffer<ushort> qNarrow = gpu.Poisoned(stream, tokens * hk, Gpu.Bf16NaN), kNarrow = gpu.Poisoned(stream, tokens * hk, Gpu.Bf16NaN);
        using DeviceBuffer<ushort> vNarrow = gpu.Poisoned(stream, tokens * hv, Gpu.Bf16NaN);
        using DeviceBuffer<float> gWide = gpu.Poisoned(stream, tokens * hk, float.NaN), gNarrow = gpu.Poisoned(stream, tokens * hk, float.NaN);
        using DeviceBuffer<float> betaWide = gpu.Poisoned(stream, tokens * shape.Heads, float.NaN);
        using DeviceBuffer<float> betaNarrow = gpu.Poisoned(stream, tokens * shape.Heads, float.NaN);

        KdaKernels.Prepare(stream, shape, batch, projections, parameters, cacheWide, new KdaCoreInputs<float>(qWide, kWide, vWide, gWide, betaWide));
        KdaKernels.Prepare(stream, shape, batch, projections, parameters, cacheNarrow,
            new KdaCoreInputs<ushort>(qNarrow, kNarrow, vNarrow, gNarrow, betaNarrow));

        foreach (var (name, wide, narrow, length) in new[] { ("q", qWide, qNarrow, tokens * hk), ("k", kWide, kNarrow, tokens * hk), ("v", vWide, vNarrow, tokens * hv) })
        {
            ushort[] bits = narrow.ToArray(stream);
            Gpu.AssertTailUntouched(bits, length, Gpu.Bf16NaN);
            float[] expected = KdaReference.Stored(wide.ToArray(stream)[..(int)length], bf16: true);
            Assert.True(Gpu.Widen(bits, length).AsSpan().SequenceEqual(expected), $"bf16 {name} differs from the fp32 pre-kernel's rounded");
        }
        Assert.True(gNarrow.ToArray(stream).AsSpan().SequenceEqual(gWide.ToArray(stream)), "g differs (NaN tail included)");
        Assert.True(betaNarrow.ToArray(stream).AsSpan().SequenceEqual(betaWide.ToArray(stream)), "β differs (NaN tail included)");
        foreach (var (wide, narrow) in new[] { (windowsWide.Q, windowsNarrow.Q), (windowsWide.K, windowsNarrow.K), (windowsWide.V, windowsNarrow.V) })
            Assert.True(device.Read(narrow).AsSpan().SequenceEqual(device.Read(wide)), "the conv windows after the two pre-kernels differ");
    }

    [Fact]
    public void KdaKernels_SayPlainlyTheyNeedComputeCapability9()
    {
        string? message = KernelCatalog.Unsupported("kda", "NVIDIA A100-SXM4-80GB", (8, 0));
        Assert.NotNull(message);
        Assert.Contains("KDA", message);
        Assert.Contains("compute capability 9.0 or newer", message);
        Assert.Contains("NVIDIA A100-SXM4-80GB has compute capability 8.0", message);
        Assert.Null(KernelCatalog.Unsupported("kda", "NVIDIA H100 80GB HBM3", (9, 0)));
        Assert.Null(KernelCatalog.Unsupported("gemv", "NVIDIA A100-SXM4-80GB", (8, 0)));
        Assert.All(Enum.GetValues<KernelId>().Where(id => KernelCatalog.Of(id).Module == "kda"),
            id => Assert.Equal(["sm90"], KernelCatalog.TargetsOf(KernelCatalog.Of(id).Module)));
    }

    [Fact]
    public void Wrappers_RejectWhatTheKernelsCannotRun_BeforeLaunching()
    {
        // Fake device addresses: every check below throws before anything is launched or dereferenced (no GPU needed).
        var big = new DeviceSpan<float>(0x10000, 1 << 24);
        var token = new KdaProjections<float>(big, big, big, big, big);
        var layer = new KdaLayerParameters<float>(big, big, big, big, big, big);
        var cache = new KdaLayerCache<float>(big, big, big, big);
        void Decode(KdaShape shape, DeviceSpan<float> y) => KdaKernels.DecodeStep(null!, shape, 2, RmsEps, token, big, layer, cache, y);

        Assert.Contains("K ≤ 128, got K = 192", Assert.Throws<ArgumentException>(() => Decode(new KdaShape(2, 192, 128), big)).Message);
        Assert.Contains("16, 32, 64 or 128, got V = 48", Assert.Throws<ArgumentException>(() => Decode(new KdaShape(2, 128, 48), big)).Message);
        Assert.Contains("y holds 100 elements but the kernel needs 512",
            Assert.Throws<ArgumentException>(() => Decode(new KdaShape(2, 64, 128), new DeviceSpan<float>(0x10000, 100))).Message);
        Assert.Contains("16-byte aligned", Assert.Throws<ArgumentException>(() => Decode(new KdaShape(2, 64, 128), new DeviceSpan<float>(0x10004, 1 << 20))).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => KdaKernels.DecodeStep(null!, new KdaShape(2, 64, 64), 0, RmsEps, token, big, layer, cache, big));

        // The table form: one sequence a cache, none sharing a state, at least one sequence.
        var shape64 = new KdaShape(2, 64, 64);
        var other = new KdaLayerCache<float>(big, big, big, new DeviceSpan<float>(0x20000000, 1 << 20));
        void Table(params KdaLayerCache<float>[] caches) => KdaKernels.DecodeStep(null!, shape64, RmsEps, token, big, layer, caches, big);
        Assert.Contains("state of an earlier sequence", Assert.Throws<ArgumentException>(() => Table(cache, other, cache)).Message);
        Assert.Contains("caches[1].State holds 100 elements", Assert.Throws<ArgumentException>(
            () => Table(cache, new KdaLayerCache<float>(big, big, big, new DeviceSpan<float>(0x20000000, 100)))).Message);
        Assert.Contains("caches[0].ValueWindow", Assert.Throws<ArgumentException>(
            () => Table(new KdaLayerCache<float>(big, big, new DeviceSpan<float>(0x20000000, 10), big))).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => Table());
        Assert.Contains("V to be 16, 32, 64 or 128", Assert.Throws<ArgumentException>(
            () => KdaKernels.DecodeStep(null!, new KdaShape(2, 64, 48), RmsEps, token, big, layer, [cache], big)).Message);

        var inputs = new KdaCoreInputs<float>(big, big, big, big, big);
        Assert.Contains("K + V ≤ 256; got K = 128, V = 160", Assert.Throws<ArgumentException>(
            () => KdaKernels.ChunkedPrefill(null!, new KdaShape(2, 128, 160), null!, inputs, null!, big, big)).Message);
        Assert.Contains("multiple of 4", Assert.Throws<ArgumentException>(
            () => KdaKernels.ChunkedPrefill(null!, new KdaShape(2, 62, 64), null!, inputs, null!, big, big)).Message);
        var ints = new DeviceSpan<int>(0x10000, 1 << 20);
        Assert.Throws<NotSupportedException>(() => KdaKernels.DecodeStep(null!, new KdaShape(1, 64, 64), 1, RmsEps,
            new KdaProjections<int>(ints, ints, ints, ints, ints), ints, new KdaLayerParameters<int>(ints, ints, ints, big, big, ints),
            new KdaLayerCache<int>(ints, ints, ints, big), ints));
    }

    private static void PackedPrefill<T>(int dim, bool? wideScan) where T : unmanaged
    {
        CudaContext gpu = Gpu.Require();
        bool bf16 = Device<T>.Bf16;
        int[] lengths = [1, 63, 64, 65, 129];
        const int heads = 2;
        var shape = new KdaShape(heads, dim, dim);
        var random = new Random(dim * 2 + (bf16 ? 1 : 0));
        int tokens = lengths.Sum(), hk = shape.KeyWidth, hv = shape.ValueWidth;
        float[] q = KdaReference.Stored(Gpu.RandomF32(random, tokens * hk), bf16), k = KdaReference.Stored(Gpu.RandomF32(random, tokens * hk), bf16);
        float[] v = KdaReference.Stored(Gpu.RandomF32(random, tokens * hv), bf16);
        float[] g = RandomGates(random, tokens, heads, dim), beta = Gpu.RandomF32(random, tokens * heads).Select(KdaReference.Sigmoid).ToArray();
        float[] s0 = Gpu.RandomF32(random, lengths.Length * heads * dim * dim, 0.3f);
        float[] expectedState = (float[])s0.Clone();
        float[] expectedO = KdaReference.Core(lengths, heads, dim, dim, q, k, v, g, beta, expectedState);

        using var device = new Device<T>(gpu);
        var (o, state) = device.Prefill(shape, lengths, q, k, v, g, beta, s0, wideScan);
        string what = $"prefill {typeof(T).Name}{(wideScan == true ? " (wide scan)" : "")} K = V = {dim}, lengths {string.Join(", ", lengths)}";
        TensorAssert.Close(o, KdaReference.Stored(expectedO, bf16), Tolerance(bf16), what + ": o vs KdaCore");
        TensorAssert.Close(state, expectedState, Tolerance(bf16), what + ": final state vs KdaCore");

        int t0 = 0, stateSize = heads * dim * dim;
        for (int n = 0; n < lengths.Length; n++)
        {
            int len = lengths[n];
            var (oAlone, stateAlone) = device.Prefill(shape, [len], q[(t0 * hk)..((t0 + len) * hk)], k[(t0 * hk)..((t0 + len) * hk)],
                v[(t0 * hv)..((t0 + len) * hv)], g[(t0 * hk)..((t0 + len) * hk)], beta[(t0 * heads)..((t0 + len) * heads)],
                s0[(n * stateSize)..((n + 1) * stateSize)], wideScan);
            Assert.True(oAlone.AsSpan().SequenceEqual(o.AsSpan(t0 * hv, len * hv)), $"{what}: sequence {n} alone gives another o than packed");
            Assert.True(stateAlone.AsSpan().SequenceEqual(state.AsSpan(n * stateSize, stateSize)), $"{what}: sequence {n} alone gives another state than packed");
            t0 += len;
        }
    }

    private static void DecodeSteps<T>(int dim, int maxBlocks) where T : unmanaged
    {
        CudaContext gpu = Gpu.Require();
        bool bf16 = Device<T>.Bf16;
        const int sequences = 3, heads = 3, steps = 5;
        var shape = new KdaShape(heads, dim, dim);
        var random = new Random(100 + dim * 2 + (bf16 ? 1 : 0));
        var layer = LayerHost.Random(random, shape, bf16);
        var reference = CacheHost.Random(random, shape, sequences, bf16);

        using var device = new Device<T>(gpu);
        KdaLayerParameters<T> parameters = device.Upload(layer);
        var (cache, windowBuffers, stateBuffer) = device.Upload(reference);
        DeviceBuffer<T> y = device.Upload([], (long)sequences * shape.ValueWidth + Gpu.Tail);
        string what = $"decode {typeof(T).Name} N = {sequences}, H = {heads}, K = V = {dim}, at most {maxBlocks} blocks (0: one an SM)";
        for (int step = 0; step < steps; step++)
        {
            var token = TokenHost.Random(random, shape, sequences, bf16);
            KdaKernels.DecodeStep(device.Stream, shape, sequences, RmsEps, device.Upload(token), device.Upload(token.Z), parameters, cache, y, maxBlocks);
            float[] expected = DecodeReference(layer, shape, token, reference, bf16);
            float[] actual = device.Read(y);
            TensorAssert.Close(actual.AsSpan(0, expected.Length), KdaReference.Stored(expected, bf16), Tolerance(bf16), $"{what}, step {step}: y");
            AssertNaN(actual.AsSpan(expected.Length), $"{what}: y past its end");
        }
        float[] state = device.Read(stateBuffer);
        TensorAssert.Close(state.AsSpan(0, reference.State.Length), reference.State, Tolerance(bf16), $"{what}: state after {steps} steps");
        AssertNaN(state.AsSpan(reference.State.Length), $"{what}: state past its end");
        AssertWindows(device, windowBuffers, reference, what + $": conv windows after {steps} steps");
    }

    private static void DecodeTable<T>(int dim, int maxBlocks) where T : unmanaged
    {
        CudaContext gpu = Gpu.Require();
        bool bf16 = Device<T>.Bf16;
        const int sequences = KdaKernels.DecodeTableSequences + 3, heads = 3, steps = 3;
        var shape = new KdaShape(heads, dim, dim);
        var random = new Random(300 + dim * 2 + (bf16 ? 1 : 0));
        var layer = LayerHost.Random(random, shape, bf16);
        var starts = Enumerable.Range(0, sequences).Select(_ => CacheHost.Random(random, shape, 1, bf16)).ToArray();

        using var device = new Device<T>(gpu);
        KdaLayerParameters<T> parameters = device.Upload(layer);
        var alone = starts.Select(c => device.Upload(c)).ToArray();
        var table = starts.Select(c => device.Upload(c)).ToArray();
        KdaLayerCache<T>[] caches = table.Select(c => c.Cache).ToArray();
        DeviceBuffer<T> y = device.Upload([], (long)sequences * shape.ValueWidth + Gpu.Tail);
        DeviceBuffer<T> yAlone = device.Upload([], shape.ValueWidth);
        string what = $"table decode {typeof(T).Name} N = {sequences}, H = {heads}, K = V = {dim}, at most {maxBlocks} blocks (0: one an SM)";
        for (int step = 0; step < steps; step++)
        {
            var token = TokenHost.Random(random, shape, sequences, bf16);
            KdaKernels.DecodeStep(device.Stream, shape, RmsEps, device.Upload(token), device.Upload(token.Z), parameters, caches, y, maxBlocks);
            float[] actual = device.Read(y);
            for (int n = 0; n < sequences; n++)
            {
                var row = token.Rows([n], shape);
                KdaKernels.DecodeStep(device.Stream, shape, 1, RmsEps, device.Upload(row), device.Upload(row.Z), parameters, alone[n].Cache, yAlone);
                Assert.True(device.Read(yAlone).AsSpan().SequenceEqual(actual.AsSpan(n * shape.ValueWidth, shape.ValueWidth)),
                    $"{what}, step {step}: sequence {n}'s y differs from its single-sequence step");
            }
            AssertNaN(actual.AsSpan(sequences * shape.ValueWidth), $"{what}: y past its end");
        }
        for (int n = 0; n < sequences; n++)
        {
            float[] state = device.Read(table[n].State);
            Assert.True(device.Read(alone[n].State).AsSpan().SequenceEqual(state), $"{what}: sequence {n}'s state after {steps} steps");
            AssertNaN(state.AsSpan(starts[n].State.Length), $"{what}: sequence {n}'s state past its end");
            foreach (var (a, b, name) in new[] { (alone[n].Windows.Q, table[n].Windows.Q, "q"), (alone[n].Windows.K, table[n].Windows.K, "k"),
                         (alone[n].Windows.V, table[n].Windows.V, "v") })
                Assert.True(device.Read(a).AsSpan().SequenceEqual(device.Read(b)), $"{what}: sequence {n}'s {name} window after {steps} steps");
        }
    }

    private static void PrefillThenDecode<T>() where T : unmanaged
    {
        CudaContext gpu = Gpu.Require();
        bool bf16 = Device<T>.Bf16;
        int[] prefill = [70, 2]; // the second is shorter than the conv window: its first tokens reach into the carried one
        const int heads = 2, dim = 128, steps = 3;
        var shape = new KdaShape(heads, dim, dim);
        int sequences = prefill.Length, hk = shape.KeyWidth, hv = shape.ValueWidth;
        int[] total = prefill.Select(p => p + steps).ToArray();
        var random = new Random(7 + (bf16 ? 1 : 0));
        var layer = LayerHost.Random(random, shape, bf16);
        var start = CacheHost.Random(random, shape, sequences, bf16);
        var raw = TokenHost.Random(random, shape, total.Sum(), bf16); // all tokens of every sequence, packed by sequence

        // Reference: conv, gate and β token by token from the carried windows, the core over every token, the output norm.
        var windows = start.Clone(); // the windows after every token
        var prepared = new TokenHost(new float[raw.Q.Length], new float[raw.K.Length], new float[raw.V.Length], new float[raw.F.Length],
            new float[raw.B.Length], []); // Q, K, V after conv + SiLU; F holds g, B holds β
        var afterPrefill = start.Clone(); // the windows after each sequence's prefill tokens
        for (int n = 0, first = 0; n < sequences; first += total[n], n++)
            for (int t = 0; t < total[n]; t++)
            {
                windows.Step(layer, raw, first + t, n, prepared, bf16);
                if (t < prefill[n]) afterPrefill.Step(layer, raw, first + t, n, null, bf16);
            }
        float[] expectedState = (float[])start.State.Clone();
        float[] o = KdaReference.Core(total, heads, dim, dim, prepared.Q, prepared.K, prepared.V, prepared.F, prepared.B, expectedState);

        using var device = new Device<T>(gpu);
        KdaLayerParameters<T> parameters = device.Upload(layer);
        string what = $"{typeof(T).Name} prefill ({string.Join(", ", prefill)}) + {steps} decode steps";

        // A: Prepare and ChunkedPrefill over the prefill tokens, then decode steps, all on one cache.
        var (cacheA, windowsA, stateA) = device.Upload(start);
        int[] prefillRows = RowsOf(total, prefill, 0);
        TokenHost preparedA = device.PrepareAndPrefill(shape, prefill, raw.Rows(prefillRows, shape), parameters, cacheA);
        string preparedWhat = $"{what}: prepared";
        TensorAssert.Close(preparedA.Q, Gather(prepared.Q, prefillRows, hk), Tolerance(bf16), preparedWhat + " q");
        TensorAssert.Close(preparedA.K, Gather(prepared.K, prefillRows, hk), Tolerance(bf16), preparedWhat + " k");
        TensorAssert.Close(preparedA.V, Gather(prepared.V, prefillRows, hv), Tolerance(bf16), preparedWhat + " v");
        TensorAssert.Close(preparedA.F, Gather(prepared.F, prefillRows, hk), F32Tolerance, preparedWhat + " g");
        TensorAssert.Close(preparedA.B, Gather(prepared.B, prefillRows, heads), F32Tolerance, preparedWhat + " β");
        AssertWindows(device, windowsA, afterPrefill, $"{what}: conv windows after the prefill");

        DeviceBuffer<T> y = device.Upload([], (long)sequences * hv + Gpu.Tail);
        for (int step = 0; step < steps; step++)
        {
            int[] rows = RowsOf(total, Enumerable.Repeat(1, sequences).ToArray(), prefill.Select(p => p + step).ToArray());
            TokenHost token = raw.Rows(rows, shape);
            KdaKernels.DecodeStep(device.Stream, shape, sequences, RmsEps, device.Upload(token), device.Upload(token.Z), parameters, cacheA, y);
            float[] expected = new float[sequences * hv];
            for (int n = 0; n < sequences; n++)
                KdaReference.GatedRmsNorm(o.AsSpan(rows[n] * hv, hv), raw.Z.AsSpan(rows[n] * hv, hv), layer.NormWeight, RmsEps).CopyTo(expected, n * hv);
            float[] actual = device.Read(y);
            TensorAssert.Close(actual.AsSpan(0, expected.Length), KdaReference.Stored(expected, bf16), Tolerance(bf16), $"{what}: y of decode step {step}");
            AssertNaN(actual.AsSpan(expected.Length), $"{what}: y past its end");
        }
        float[] finalA = device.Read(stateA)[..expectedState.Length];
        TensorAssert.Close(finalA, expectedState, Tolerance(bf16), $"{what}: final state vs KdaCore");
        AssertWindows(device, windowsA, windows, $"{what}: conv windows after the decode steps");

        // B: one Prepare and ChunkedPrefill over all the tokens, from the same start.
        var (cacheB, windowsB, stateB) = device.Upload(start);
        device.PrepareAndPrefill(shape, total, raw.Rows(RowsOf(total, total, 0), shape), parameters, cacheB);
        TensorAssert.Close(finalA, device.Read(stateB)[..expectedState.Length], Tolerance(bf16), $"{what}: final state vs one prefill of every token");
        AssertWindows(device, windowsB, windows, $"{what}: conv windows after one prefill of every token");
    }

    /// <summary>
    /// Packed row indices (sequences of <paramref name="total"/> rows one after another) of <paramref name="count"/>[n]
    /// rows of each sequence n starting at its row <paramref name="first"/>[n].
    /// </summary>
    private static int[] RowsOf(int[] total, int[] count, int[] first)
    {
        var rows = new List<int>();
        for (int n = 0, start = 0; n < total.Length; start += total[n], n++)
            for (int i = 0; i < count[n]; i++) rows.Add(start + first[n] + i);
        return [.. rows];
    }

    private static int[] RowsOf(int[] total, int[] count, int first) => RowsOf(total, count, Enumerable.Repeat(first, total.Length).ToArray());

    private static float[] Gather(float[] x, int[] rows, int width)
    {
        var result = new float[rows.Length * width];
        for (int i = 0; i < rows.Length; i++) Array.Copy(x, rows[i] * width, result, i * width, width);
        return result;
    }

    /// <summary>One decode step of every sequence on the host: advances <paramref name="cache"/>, returns y [N, H·V] (unrounded).</summary>
    private static float[] DecodeReference(LayerHost layer, KdaShape shape, TokenHost token, CacheHost cache, bool bf16)
    {
        int sequences = cache.Sequences, hv = shape.ValueWidth;
        var prepared = new TokenHost(new float[token.Q.Length], new float[token.K.Length], new float[token.V.Length], new float[token.F.Length],
            new float[token.B.Length], []);
        for (int n = 0; n < sequences; n++) cache.Step(layer, token, n, n, prepared, bf16);
        var y = new float[sequences * hv];
        for (int n = 0; n < sequences; n++)
        {
            int hk = shape.KeyWidth, stateSize = shape.Heads * (int)shape.StateSize;
            float[] state = cache.State[(n * stateSize)..((n + 1) * stateSize)];
            float[] o = KdaReference.Core([1], shape.Heads, shape.KeyDim, shape.ValueDim, prepared.Q[(n * hk)..((n + 1) * hk)],
                prepared.K[(n * hk)..((n + 1) * hk)], prepared.V[(n * hv)..((n + 1) * hv)], prepared.F[(n * hk)..((n + 1) * hk)],
                prepared.B[(n * shape.Heads)..((n + 1) * shape.Heads)], state);
            state.CopyTo(cache.State, n * stateSize);
            KdaReference.GatedRmsNorm(o, token.Z.AsSpan(n * hv, hv), layer.NormWeight, RmsEps).CopyTo(y, n * hv);
        }
        return y;
    }

    /// <summary>g = −exp(A_log)·softplus(f + dt_bias) with exp(A_log) ∈ [1, 16] and dt_bias ∈ [−6, 1]; every 29th token of head 0 forgets almost everything (g = −60).</summary>
    private static float[] RandomGates(Random random, int tokens, int heads, int keyDim)
    {
        float[] aLog = Enumerable.Range(0, heads).Select(_ => (float)(random.NextDouble() * Math.Log(16))).ToArray();
        float[] dtBias = Enumerable.Range(0, heads * keyDim).Select(_ => (float)(random.NextDouble() * 7 - 6)).ToArray();
        var g = new float[tokens * heads * keyDim];
        for (int t = 0; t < tokens; t++)
        {
            float[] row = KdaReference.Gate(Gpu.RandomF32(random, heads * keyDim), aLog, dtBias, keyDim);
            if (t % 29 == 28) Array.Fill(row, -60f, 0, keyDim);
            row.CopyTo(g, t * heads * keyDim);
        }
        return g;
    }

    private static void AssertNaN(ReadOnlySpan<float> tail, string what)
    {
        for (int i = 0; i < tail.Length; i++) Assert.True(float.IsNaN(tail[i]), $"{what}: element {i} was overwritten");
    }

    private static void AssertWindows<T>(Device<T> device, (DeviceBuffer<T> Q, DeviceBuffer<T> K, DeviceBuffer<T> V) buffers, CacheHost expected, string what)
        where T : unmanaged
    {
        Assert.True(device.Read(buffers.Q).AsSpan().SequenceEqual(expected.QueryWindow), $"{what}: q window differs");
        Assert.True(device.Read(buffers.K).AsSpan().SequenceEqual(expected.KeyWindow), $"{what}: k window differs");
        Assert.True(device.Read(buffers.V).AsSpan().SequenceEqual(expected.ValueWindow), $"{what}: v window differs");
    }

    /// <summary>A layer's parameters on the host, rounded to the activation dtype where the kernels read it.</summary>
    private sealed record LayerHost(float[] QueryConv, float[] KeyConv, float[] ValueConv, float[] ALog, float[] DtBias, float[] NormWeight)
    {
        public static LayerHost Random(Random random, KdaShape shape, bool bf16) => new(
            KdaReference.Stored(Gpu.RandomF32(random, 4L * shape.KeyWidth, 0.5f), bf16),
            KdaReference.Stored(Gpu.RandomF32(random, 4L * shape.KeyWidth, 0.5f), bf16),
            KdaReference.Stored(Gpu.RandomF32(random, 4L * shape.ValueWidth, 0.5f), bf16),
            Enumerable.Range(0, shape.Heads).Select(_ => (float)(random.NextDouble() * Math.Log(16))).ToArray(),
            Enumerable.Range(0, shape.KeyWidth).Select(_ => (float)(random.NextDouble() * 7 - 6)).ToArray(),
            KdaReference.Stored(Gpu.RandomF32(random, shape.ValueDim, 0.1f).Select(w => w + 1).ToArray(), bf16));
    }

    /// <summary>
    /// Rows of projection outputs on the host (as stored): Q, K, F [rows, H·K], V, Z [rows, H·V], B [rows, H]. Also used
    /// for prepared rows, with F holding g and B holding β.
    /// </summary>
    private sealed record TokenHost(float[] Q, float[] K, float[] V, float[] F, float[] B, float[] Z)
    {
        public static TokenHost Random(Random random, KdaShape shape, int rows, bool bf16) => new(
            KdaReference.Stored(Gpu.RandomF32(random, (long)rows * shape.KeyWidth), bf16),
            KdaReference.Stored(Gpu.RandomF32(random, (long)rows * shape.KeyWidth), bf16),
            KdaReference.Stored(Gpu.RandomF32(random, (long)rows * shape.ValueWidth), bf16),
            KdaReference.Stored(Gpu.RandomF32(random, (long)rows * shape.KeyWidth), bf16),
            KdaReference.Stored(Gpu.RandomF32(random, (long)rows * shape.Heads), bf16),
            KdaReference.Stored(Gpu.RandomF32(random, (long)rows * shape.ValueWidth), bf16));

        public TokenHost Rows(int[] rows, KdaShape shape) => new(Gather(Q, rows, shape.KeyWidth), Gather(K, rows, shape.KeyWidth),
            Gather(V, rows, shape.ValueWidth), Gather(F, rows, shape.KeyWidth), Gather(B, rows, shape.Heads), Gather(Z, rows, shape.ValueWidth));
    }

    /// <summary>The host copy of N sequences' conv windows ([N, 3, H·K], [N, 3, H·K], [N, 3, H·V]) and state [N, H, K, V].</summary>
    private sealed class CacheHost(KdaShape shape, int sequences, float[] queryWindow, float[] keyWindow, float[] valueWindow, float[] state)
    {
        public KdaShape Shape { get; } = shape;
        public int Sequences { get; } = sequences;
        public float[] QueryWindow { get; } = queryWindow;
        public float[] KeyWindow { get; } = keyWindow;
        public float[] ValueWindow { get; } = valueWindow;
        public float[] State { get; } = state;

        public static CacheHost Random(Random random, KdaShape shape, int sequences, bool bf16) => new(shape, sequences,
            KdaReference.Stored(Gpu.RandomF32(random, 3L * sequences * shape.KeyWidth), bf16),
            KdaReference.Stored(Gpu.RandomF32(random, 3L * sequences * shape.KeyWidth), bf16),
            KdaReference.Stored(Gpu.RandomF32(random, 3L * sequences * shape.ValueWidth), bf16),
            Gpu.RandomF32(random, sequences * shape.Heads * shape.StateSize, 0.3f));

        public CacheHost Clone() => new(Shape, Sequences, (float[])QueryWindow.Clone(), (float[])KeyWindow.Clone(), (float[])ValueWindow.Clone(),
            (float[])State.Clone());

        /// <summary>
        /// Row <paramref name="row"/> of <paramref name="x"/> into sequence <paramref name="sequence"/>'s windows; writes the
        /// conv outputs, g and β into the same row of <paramref name="prepared"/> (if given).
        /// </summary>
        public void Step(LayerHost layer, TokenHost x, int row, int sequence, TokenHost? prepared, bool bf16)
        {
            int hk = Shape.KeyWidth, hv = Shape.ValueWidth, heads = Shape.Heads;
            float[] q = Conv(layer.QueryConv, QueryWindow, x.Q.AsSpan(row * hk, hk));
            float[] k = Conv(layer.KeyConv, KeyWindow, x.K.AsSpan(row * hk, hk));
            float[] v = Conv(layer.ValueConv, ValueWindow, x.V.AsSpan(row * hv, hv));
            if (prepared is null) return;
            q.CopyTo(prepared.Q, row * hk);
            k.CopyTo(prepared.K, row * hk);
            v.CopyTo(prepared.V, row * hv);
            KdaReference.Gate(x.F.AsSpan(row * hk, hk), layer.ALog, layer.DtBias, Shape.KeyDim).CopyTo(prepared.F, row * hk);
            for (int h = 0; h < heads; h++) prepared.B[row * heads + h] = KdaReference.Sigmoid(x.B[row * heads + h]);

            float[] Conv(float[] taps, float[] windows, ReadOnlySpan<float> input)
            {
                int c = input.Length;
                float[] window = windows[(sequence * 3 * c)..((sequence + 1) * 3 * c)];
                float[] output = KdaReference.ConvStep(taps, window, input, bf16);
                window.CopyTo(windows, sequence * 3 * c);
                return output;
            }
        }
    }

    /// <summary>One test's device buffers, freed together; activations are <typeparamref name="T"/> (float, or bf16 bits).</summary>
    private sealed class Device<T> : IDisposable where T : unmanaged
    {
        private readonly List<IDisposable> _owned = [];
        private readonly CudaContext _gpu;

        public static bool Bf16 => typeof(T) == typeof(ushort);
        private static T NaN => Bf16 ? (T)(object)Gpu.Bf16NaN : (T)(object)float.NaN;

        public CudaStream Stream { get; }

        public Device(CudaContext gpu)
        {
            _gpu = gpu;
            Stream = Own(gpu.CreateStream());
        }

        /// <summary><paramref name="data"/> in <typeparamref name="T"/>, followed by <paramref name="tail"/> NaN elements.</summary>
        public DeviceBuffer<T> Upload(float[] data, long tail = 0) => Upload(Encode(data), NaN, tail);

        /// <summary><paramref name="data"/> in fp32, followed by <paramref name="tail"/> NaN elements.</summary>
        public DeviceBuffer<float> UploadF32(float[] data, long tail = 0) => Upload(data, float.NaN, tail);

        public KdaLayerParameters<T> Upload(LayerHost layer) => new(Upload(layer.QueryConv), Upload(layer.KeyConv), Upload(layer.ValueConv),
            UploadF32(layer.ALog), UploadF32(layer.DtBias), Upload(layer.NormWeight));

        public KdaProjections<T> Upload(TokenHost x) => new(Upload(x.Q), Upload(x.K), Upload(x.V), Upload(x.F), Upload(x.B));

        /// <summary>The cache on the device (state with a NaN tail), and its buffers for reading back.</summary>
        public (KdaLayerCache<T> Cache, (DeviceBuffer<T> Q, DeviceBuffer<T> K, DeviceBuffer<T> V) Windows, DeviceBuffer<float> State) Upload(CacheHost cache)
        {
            DeviceBuffer<T> q = Upload(cache.QueryWindow), k = Upload(cache.KeyWindow), v = Upload(cache.ValueWindow);
            DeviceBuffer<float> state = UploadF32(cache.State, Gpu.Tail);
            return (new KdaLayerCache<T>(q, k, v, state), (q, k, v), state);
        }

        public float[] Read(DeviceBuffer<T> buffer) => Decode(buffer.ToArray(Stream));

        public float[] Read(DeviceBuffer<float> buffer) => buffer.ToArray(Stream);

        /// <summary>
        /// <see cref="KdaKernels.ChunkedPrefill{T}"/> over packed sequences of <paramref name="lengths"/>, with a chunk of NaN
        /// token rows after every input, NaN scratch and a NaN-poisoned tail after o and the state (checked untouched).
        /// Returns o [T, H, V] and the final state [N, H, K, V].
        /// </summary>
        public (float[] O, float[] State) Prefill(KdaShape shape, int[] lengths, float[] q, float[] k, float[] v, float[] g, float[] beta, float[] state,
            bool? wideScan = null)
        {
            using var batch = new KdaBatch(Stream, lengths);
            long rows = (long)KdaKernels.ChunkTokens * shape.Heads;
            var input = new KdaCoreInputs<T>(Upload(q, rows * shape.KeyDim), Upload(k, rows * shape.KeyDim), Upload(v, rows * shape.ValueDim),
                UploadF32(g, rows * shape.KeyDim), UploadF32(beta, rows));
            DeviceBuffer<float> s = UploadF32(state, Gpu.Tail);
            long outputs = (long)batch.Tokens * shape.ValueWidth;
            DeviceBuffer<T> o = Upload([], outputs + Gpu.Tail);
            Prefill(shape, batch, input, s, o, wideScan);
            float[] oAll = Read(o), sAll = Read(s);
            AssertNaN(oAll.AsSpan((int)outputs), "prefill: o past its end");
            AssertNaN(sAll.AsSpan(state.Length), "prefill: state past its end");
            return (oAll[..(int)outputs], sAll[..state.Length]);
        }

        /// <summary>
        /// <see cref="KdaKernels.Prepare{T, TOut}"/> of the packed projections <paramref name="x"/> into NaN-tailed core inputs
        /// (tails checked untouched), then <see cref="KdaKernels.ChunkedPrefill{T}"/> into the cache's state. Returns the
        /// host copy of the core inputs (F = g, B = β).
        /// </summary>
        public TokenHost PrepareAndPrefill(KdaShape shape, int[] lengths, TokenHost x,
            KdaLayerParameters<T> layer, KdaLayerCache<T> cache)
        {
            using var batch = new KdaBatch(Stream, lengths);
            long tokens = batch.Tokens;
            DeviceBuffer<T> q = Upload([], tokens * shape.KeyWidth + Gpu.Tail), k = Upload([], tokens * shape.KeyWidth + Gpu.Tail);
            DeviceBuffer<T> v = Upload([], tokens * shape.ValueWidth + Gpu.Tail);
            DeviceBuffer<float> g = UploadF32([], tokens * shape.KeyWidth + Gpu.Tail), beta = UploadF32([], tokens * shape.Heads + Gpu.Tail);
            var inputs = new KdaCoreInputs<T>(q, k, v, g, beta);
            KdaKernels.Prepare(Stream, shape, batch, Upload(x), layer, cache, inputs);
            DeviceBuffer<T> o = Upload([], tokens * shape.ValueWidth + Gpu.Tail);
            Prefill(shape, batch, inputs, cache.State, o);

            float[] Trimmed(float[] all, long length, string name)
            {
                AssertNaN(all.AsSpan((int)length), $"prepare: {name} past its end");
                return all[..(int)length];
            }
            return new TokenHost(Trimmed(Read(q), tokens * shape.KeyWidth, "q"), Trimmed(Read(k), tokens * shape.KeyWidth, "k"),
                Trimmed(Read(v), tokens * shape.ValueWidth, "v"), Trimmed(Read(g), tokens * shape.KeyWidth, "g"),
                Trimmed(Read(beta), tokens * shape.Heads, "β"), []);
        }

        private void Prefill(KdaShape shape, KdaBatch batch, KdaCoreInputs<T> input, DeviceSpan<float> state, DeviceSpan<T> o, bool? wideScan = null)
        {
            using var scratch = new KdaPrefillScratch(_gpu, shape, Math.Max(batch.Chunks, 1));
            foreach (DeviceSpan<float> part in new[] { scratch.W, scratch.QueryDecayed, scratch.KeyDecayed, scratch.U, scratch.A, scratch.Gamma })
                part.Fill(float.NaN, Stream);
            KdaKernels.ChunkedPrefill(Stream, shape, batch, input, scratch, state, o, wideScan);
            Stream.Synchronize(); // the scratch is freed on return
        }

        private DeviceBuffer<TE> Upload<TE>(TE[] data, TE poison, long tail) where TE : unmanaged
        {
            DeviceBuffer<TE> buffer = Own(_gpu.Allocate<TE>(data.Length + tail));
            if (tail > 0) buffer.Span.Fill(poison, Stream);
            buffer.CopyFrom(data, Stream);
            return buffer;
        }

        private static T[] Encode(float[] x)
        {
            if (!Bf16) return (T[])(object)x.ToArray();
            var bits = new ushort[x.Length];
            BFloat16.FromSingle(x, bits);
            return (T[])(object)bits;
        }

        private static float[] Decode(T[] x) => Bf16 ? Gpu.Widen((ushort[])(object)x, x.Length) : (float[])(object)x;

        private TD Own<TD>(TD disposable) where TD : IDisposable
        {
            _owned.Add(disposable);
            return disposable;
        }

        public void Dispose()
        {
            for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        }
    }
}
