using KimiLinear.Backends;
using KimiLinear.Backends.Cpu;
using KimiLinear.Cuda;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;
using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>
/// The MoE kernels (kernels/moe.cu): the router against CpuBackend.MoeRoute (same ids, same order, then the S shared
/// experts with weight 1), the decode and prefill experts (routed and shared) against a double reference from the same
/// bf16 weights on odd sizes, prefill against decode, and the determinism, graph capture and bad-id behaviour the
/// wrappers promise.
/// </summary>
[Collection("GPU")]
public sealed class MoeKernelTests
{
    // x and the hidden are rounded to bf16 by the kernels and by the reference alike; what is left is fp32 accumulation
    // and the occasional hidden value whose bf16 rounding flips between fp32 and double sums.
    private const double ExpertTolerance = 1e-3;
    // Decode and prefill compute the same roundings, summed in different orders. Where their fp32 sums of a hidden value
    // straddle a bf16 rounding boundary, the value rounds one bf16 step (2⁻⁸ relative) apart, which moves its token's
    // output by about 2⁻⁸/√F of its norm (1.2e-4 at F = 1024); the H100 showed about one such value a token at D = 2304
    // (1.17e-4 over 16 tokens). 5e-4 allows ~17 a token; a wrong product or a lost pair is off by far more.
    private const double PathTolerance = 5e-4;
    private const float Scale = 2.5f;

    public static TheoryData<int, int, int, int, int, int, bool, bool, bool> RouteCases => new()
    {
        // T, E, A, S, groups, top-k groups, renormalize, biased weights, tied logits
        { 37, 64, 8, 0, 1, 1, true, false, false },
        { 37, 64, 8, 1, 1, 1, true, true, false },
        { 37, 64, 8, 2, 4, 2, true, false, false },
        { 37, 64, 8, 0, 4, 2, false, true, false },
        { 19, 64, 8, 1, 4, 2, true, false, true },   // many exact ties: the lower index must win, in groups and experts
        { 1, 256, 8, 1, 1, 1, true, false, false },  // the model's decode shape
        { 9, 256, 8, 1, 1, 1, true, false, true },   // the model's E with exact ties: 8 values a lane, lowest index first
        { 7, 100, 8, 1, 4, 2, true, true, false },   // E in (64, 256], not a multiple of 32: the lanes past E hold nothing
        { 4, 300, 8, 0, 1, 1, true, false, false },  // E over 256: 32 values a lane
        { 5, 8, 2, 2, 4, 2, true, true, false },     // groups of 2: the group score is both members
        { 3, 64, 8, 0, 8, 1, true, false, false },   // A larger than one group: the rest are -inf, lowest index first
        { 3, 64, 30, 2, 1, 1, true, false, false },  // A + S = 32: every lane of the warp writes a pair
    };

    [Theory]
    [MemberData(nameof(RouteCases))]
    public void Route_MatchesCpuBackend(int t, int e, int a, int shared, int groups, int topk, bool renormalize, bool biased, bool tied)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(t * 31 + e + groups * 7 + (biased ? 1 : 0) + (tied ? 2 : 0));
        float[] logits = tied
            ? Enumerable.Range(0, t * e).Select(_ => random.Next(4) * 0.5f).ToArray()
            : Gpu.RandomF32(random, (long)t * e, 2f);
        float[] bias = tied ? new float[e] : Gpu.RandomF32(random, e, 0.1f);

        int pairs = a + shared; // a row: the A choices, then (E + s, 1.0) for each shared expert
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dLogits = gpu.Upload(stream, logits), dBias = gpu.Upload(stream, bias);
        using DeviceBuffer<int> ids = gpu.Poisoned(stream, (long)t * pairs, -7);
        using DeviceBuffer<float> weights = gpu.Poisoned(stream, (long)t * pairs, float.NaN);
        MoeKernels.Route(stream, ids, weights, dLogits, dBias, new MoeShape(8, e, a, 8, shared), new MoeRoutingRule(groups, topk, renormalize, Scale, biased), t);
        int[] actualIds = ids.ToArray(stream);
        float[] actualWeights = weights.ToArray(stream);
        AssertRoutedAsCpu(logits, bias, new MoeRouting(a, groups, topk, renormalize, Scale, biased), t, e, shared, actualIds, actualWeights, "");
        Gpu.AssertTailUntouched(actualIds, (long)t * pairs, -7);
        for (int i = t * pairs; i < actualWeights.Length; i++) Assert.True(float.IsNaN(actualWeights[i]), $"weights tail element {i} overwritten");
    }

    [Theory]
    // T, D, E, A, S, groups, top-k groups
    [InlineData(1, 2304, 64, 8, 1, 1, 1)]    // the proxy model's decode step
    [InlineData(1, 2304, 256, 8, 1, 1, 1)]   // the real model's
    [InlineData(3, 40, 13, 3, 2, 1, 1)]      // E not a multiple of the block's 4 experts; two shared experts
    [InlineData(5, 96, 64, 8, 0, 8, 4)]      // grouped top-k
    [InlineData(16, 3200, 64, 8, 1, 1, 1)]   // D beyond the 3,072 columns requested before the wait; the largest batch
    // Above 64 experts the last block ranks the candidates with all its warps (moe.cu, route_token_block):
    [InlineData(16, 2304, 256, 8, 1, 1, 1)]  // the real model's largest batch, token after token
    [InlineData(3, 96, 200, 8, 1, 1, 1)]     // a warp's candidates partly past E
    [InlineData(1, 2304, 256, 8, 1, 1, 1, true)] // every logit tied with its neighbour's: the lower index must win
    [InlineData(2, 64, 300, 8, 1, 1, 1)]     // over 256 experts: a warp routes each token
    public void RouterRoute_MatchesRouterProductThenCpuRoute(int t, int d, int e, int a, int shared, int groups, int topk, bool ties = false)
    {
        CudaContext gpu = Gpu.Require();
        var random = new Random(t * 131 + d + e + groups);
        ushort[] router = Gpu.RandomBf16(random, (long)e * d, 0.05f);
        float[] bias = Gpu.RandomF32(random, e, 0.1f);
        if (ties) // experts 2k and 2k + 1 get the same row and bias, so the same logit and selection
            for (int expert = 1; expert < e; expert += 2)
            {
                Array.Copy(router, (long)(expert - 1) * d, router, (long)expert * d, d);
                bias[expert] = bias[expert - 1];
            }
        var shape = new MoeShape(d, e, a, 8, shared);
        var rule = new MoeRoutingRule(groups, topk, true, Scale, false);
        int pairs = shape.PairsPerToken;
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<ushort> dRouter = gpu.Upload(stream, router);
        using DeviceBuffer<float> dBias = gpu.Upload(stream, bias);
        using var scratch = new MoeDecodeScratch(stream, shape, t);
        // Two calls with different inputs: the blocks' arrival count must be back at zero after each.
        for (int call = 0; call < 2; call++)
        {
            float[] x = Gpu.RandomF32(random, (long)t * d, 1f);
            using DeviceBuffer<float> dX = gpu.Upload(stream, x);
            using DeviceBuffer<int> ids = gpu.Poisoned(stream, (long)t * pairs + 3, -7);
            using DeviceBuffer<float> weights = gpu.Poisoned(stream, (long)t * pairs + 3, float.NaN);
            MoeKernels.RouterRoute(stream, ids, weights, dX, dRouter, dBias, scratch, shape, rule, t);
            float[] logits = scratch.Logits.Slice(0, (long)t * e).ToArray(stream);
            for (int token = 0; token < t; token++)
                for (int expert = 0; expert < e; expert++)
                {
                    double expected = 0, magnitude = 0;
                    for (int k = 0; k < d; k++)
                    {
                        double term = BFloat16.ToSingle(router[(long)expert * d + k]) * (double)x[(long)token * d + k];
                        expected += term;
                        magnitude += Math.Abs(term);
                    }
                    double error = Math.Abs(logits[token * e + expert] - expected) / magnitude;
                    Assert.True(error <= 1e-5, $"call {call}: logit of token {token}, expert {expert}: {logits[token * e + expert]:R}, expected {expected:R}");
                }

            // The choice on the kernel's own logits (a near tie between fp32 sums could otherwise flip it).
            int[] actualIds = ids.ToArray(stream);
            AssertRoutedAsCpu(logits, bias, new MoeRouting(a, groups, topk, true, Scale, false), t, e, shared, actualIds, weights.ToArray(stream), $"call {call}: ");
            Gpu.AssertTailUntouched(actualIds, (long)t * pairs, -7);
        }
    }

    [Theory]
    [InlineData(1, 40, 8, 2, 24, 0)]
    [InlineData(3, 40, 8, 2, 24, 0)]
    [InlineData(16, 40, 8, 2, 24, 0)]    // every token of the largest decode batch; experts shared between tokens
    [InlineData(2, 2304, 4, 2, 1024, 0)] // the model's D and F: each warp streams several items, its ring crossing them
    [InlineData(7, 2304, 9, 8, 1024, 1)] // the model's D, F, A and S: tokens sharing experts, ~16 gate-up items a warp
    [InlineData(2, 4096, 5, 3, 1040, 0)] // D/8 = 512 (16 chunks an item); down's K crosses pairs inside a slot (F/8 = 130)
    [InlineData(3, 256, 12, 10, 64, 0)]  // A = 10 pairs of F/8 = 8 vectors: several pairs a slot of 32
    [InlineData(1, 40, 8, 2, 24, 1)]     // the shared expert of a single decode token
    [InlineData(5, 40, 8, 2, 24, 2)]     // two shared experts, each chosen by every token
    [InlineData(16, 256, 12, 3, 64, 1)]  // the shared expert chosen by 16 tokens
    [InlineData(15, 256, 12, 3, 64, 2)]
    public void DecodeExperts_MatchReference(int t, int d, int e, int a, int f, int shared)
    {
        CudaContext gpu = Gpu.Require();
        var moe = new MoeCase(new Random(t + d + e + f + shared), t, new MoeShape(d, e, a, f, shared));
        using CudaStream stream = gpu.CreateStream();
        using MoeCase.Device dev = moe.Upload(gpu, stream);
        using var scratch = new MoeDecodeScratch(stream, moe.Shape, t);
        MoeKernels.DecodeExperts(stream, dev.Output, dev.X, dev.Experts, dev.Weights, dev.GateUp, dev.Down, scratch, moe.Shape, t);
        float[] output = dev.Output.ToArray(stream);
        TensorAssert.Close(output.AsSpan(0, t * d), moe.Reference(), ExpertTolerance, $"decode experts T={t} D={d} E={e} A={a} F={f} S={shared}");
        for (int i = t * d; i < output.Length; i++) Assert.True(float.IsNaN(output[i]), $"output tail element {i} overwritten");
    }

    [Theory]
    [InlineData(1, 40, 8, 2, 24, 0)]
    [InlineData(3, 40, 8, 2, 24, 0)]
    [InlineData(77, 40, 8, 2, 24, 0)]
    [InlineData(300, 200, 4, 2, 136, 0)] // experts past one 128-row tile, several k tiles, partial column tiles
    [InlineData(5, 2304, 3, 2, 1024, 1)] // the model's D, F and S, one partial tile per expert
    [InlineData(17, 40, 8, 2, 24, 1)]    // just past decode: the shared expert's 17 rows are one group
    [InlineData(77, 40, 8, 2, 24, 2)]
    [InlineData(259, 200, 4, 2, 136, 2)] // each shared expert's rows span three 128-row tiles
    public void PrefillExperts_MatchReference(int t, int d, int e, int a, int f, int shared)
    {
        CudaContext gpu = Gpu.Require();
        var moe = new MoeCase(new Random(t * 3 + d + e + f + shared), t, new MoeShape(d, e, a, f, shared));
        using CudaStream stream = gpu.CreateStream();
        using MoeCase.Device dev = moe.Upload(gpu, stream);
        using var scratch = new MoePrefillScratch(gpu, moe.Shape, t + 5); // more room than needed: the grids follow t
        MoeKernels.PrefillExperts(stream, dev.Output, dev.X, dev.Experts, dev.Weights, dev.GateUp, dev.Down, scratch, moe.Shape, t);
        float[] output = dev.Output.ToArray(stream);
        TensorAssert.Close(output.AsSpan(0, t * d), moe.Reference(), ExpertTolerance, $"prefill experts T={t} D={d} E={e} A={a} F={f} S={shared}");
        for (int i = t * d; i < output.Length; i++) Assert.True(float.IsNaN(output[i]), $"output tail element {i} overwritten");
    }

    [Theory]
    [InlineData(3, 40, 8, 2, 24, 0)]        // most experts without rows; one k step, one partial column block
    [InlineData(77, 40, 8, 2, 24, 1)]       // odd row counts; the shared expert's 77 rows
    [InlineData(300, 200, 4, 2, 136, 0)]    // experts past one 128-row tile, K not a multiple of 64, partial column blocks
    [InlineData(259, 200, 4, 2, 136, 2)]    // each shared expert's rows span three tiles
    [InlineData(130, 2304, 3, 2, 1024, 1)]  // the model's D, F and S: 36 and 16 k steps, the shared expert's second tile 2 rows
    public void PrefillExperts_WgmmaBesideMmaSync_BothMatchReference(int t, int d, int e, int a, int f, int shared)
    {
        // The same data through the wgmma grouped GEMMs (Hopper's default) and the mma.sync ones (allowWarpgroupMma
        // false), each against the reference and against each other (they sum the products in different orders).
        CudaContext gpu = Gpu.Require();
        if (!gpu.Kernels.RunsSm90a("moe")) Assert.Skip($"the wgmma grouped GEMMs need the sm_90a cubin (Hopper); this is {gpu.Device.Name}");
        var moe = new MoeCase(new Random(t * 5 + d + e + f + shared), t, new MoeShape(d, e, a, f, shared));
        using CudaStream stream = gpu.CreateStream();
        using MoeCase.Device dev = moe.Upload(gpu, stream);
        using var scratch = new MoePrefillScratch(gpu, moe.Shape, t);
        float[] Prefill(bool wgmma)
        {
            dev.Output.CopyFrom(moe.Base, stream);
            MoeKernels.PrefillExperts(stream, dev.Output, dev.X, dev.Experts, dev.Weights, dev.GateUp, dev.Down, scratch, moe.Shape, t, wgmma);
            float[] output = dev.Output.ToArray(stream);
            for (int i = t * d; i < output.Length; i++) Assert.True(float.IsNaN(output[i]), $"output tail element {i} overwritten");
            return output[..(t * d)];
        }
        float[] wgmma = Prefill(true), mma = Prefill(false);
        float[] reference = moe.Reference();
        string what = $"T={t} D={d} E={e} A={a} F={f} S={shared}";
        TensorAssert.Close(wgmma, reference, ExpertTolerance, $"wgmma prefill experts {what}");
        TensorAssert.Close(mma, reference, ExpertTolerance, $"mma.sync prefill experts {what}");
        TensorAssert.Close(wgmma, mma, PathTolerance, $"wgmma vs mma.sync prefill experts {what}");
    }

    [Theory]
    [InlineData(3)]
    [InlineData(16)]
    public void PrefillExperts_EqualsDecodeExperts_AndRepeatsBitForBit(int t)
    {
        CudaContext gpu = Gpu.Require();
        var moe = new MoeCase(new Random(t), t, new MoeShape(2304, 8, 4, 1024, 1));
        using CudaStream stream = gpu.CreateStream();
        using MoeCase.Device dev = moe.Upload(gpu, stream);
        using var decodeScratch = new MoeDecodeScratch(stream, moe.Shape, MoeKernels.MaxDecodeTokens);
        using var prefillScratch = new MoePrefillScratch(gpu, moe.Shape, t);
        MoeKernels.DecodeExperts(stream, dev.Output, dev.X, dev.Experts, dev.Weights, dev.GateUp, dev.Down, decodeScratch, moe.Shape, t);
        float[] decoded = dev.Output.ToArray(stream)[..(t * moe.Shape.Hidden)];
        float[] Prefill()
        {
            dev.Output.CopyFrom(moe.Base, stream);
            MoeKernels.PrefillExperts(stream, dev.Output, dev.X, dev.Experts, dev.Weights, dev.GateUp, dev.Down, prefillScratch, moe.Shape, t);
            return dev.Output.ToArray(stream)[..(t * moe.Shape.Hidden)];
        }
        float[] prefilled = Prefill();
        TensorAssert.Close(prefilled, decoded, PathTolerance, $"prefill vs decode, T={t}");
        Assert.Equal(prefilled, Prefill()); // the expert grouping uses atomics, the arithmetic does not depend on it
    }

    [Fact]
    public void DecodeExperts_InAGraph_ReadsTheExpertIdsWhenReplayed()
    {
        CudaContext gpu = Gpu.Require();
        const int T = 2;
        var shape = new MoeShape(64, 8, 2, 32, 1);
        var first = new MoeCase(new Random(11), T, shape);
        var second = first with { Experts = [5, 0, 8, 7, 6, 8] };
        using CudaStream stream = gpu.CreateStream();
        using MoeCase.Device dev = first.Upload(gpu, stream);
        using var scratch = new MoeDecodeScratch(stream, shape, T);
        gpu.Kernels.LoadAll(); // loading a module synchronises, which a capture forbids
        using CudaGraph graph = stream.Capture(s =>
            MoeKernels.DecodeExperts(s, dev.Output, dev.X, dev.Experts, dev.Weights, dev.GateUp, dev.Down, scratch, shape, T));
        graph.Launch(stream);
        TensorAssert.Close(dev.Output.ToArray(stream).AsSpan(0, T * shape.Hidden), first.Reference(), ExpertTolerance, "graph, first ids");
        dev.Output.CopyFrom(second.Base, stream);
        dev.Experts.CopyFrom(second.Experts, stream);
        graph.Launch(stream);
        TensorAssert.Close(dev.Output.ToArray(stream).AsSpan(0, T * shape.Hidden), second.Reference(), ExpertTolerance, "graph, new ids");
    }

    [Fact]
    public void RouteThenDecodeExperts_InAGraph_UseEachReplaysRoute()
    {
        // The down kernel reads the ids and weights before its programmatic wait (the gate-up kernel lets it launch
        // only once the route kernel has finished): each replay with new logits must use the new choice.
        CudaContext gpu = Gpu.Require();
        const int T = 4;
        var shape = new MoeShape(256, 16, 4, 64, 1);
        var rule = new MoeRoutingRule(1, 1, true, Scale, false);
        var random = new Random(23);
        var moe = new MoeCase(random, T, shape);
        float[] bias = Gpu.RandomF32(random, shape.Experts, 0.1f);
        using CudaStream stream = gpu.CreateStream();
        using MoeCase.Device dev = moe.Upload(gpu, stream);
        using DeviceBuffer<float> logits = gpu.Allocate<float>((long)T * shape.Experts), dBias = gpu.Upload(stream, bias);
        using var scratch = new MoeDecodeScratch(stream, shape, T);
        gpu.Kernels.LoadAll(); // loading a module synchronises, which a capture forbids
        using CudaGraph graph = stream.Capture(s =>
        {
            MoeKernels.Route(s, dev.Experts, dev.Weights, logits, dBias, shape, rule, T);
            MoeKernels.DecodeExperts(s, dev.Output, dev.X, dev.Experts, dev.Weights, dev.GateUp, dev.Down, scratch, shape, T);
        });
        var cpu = new CpuBackend(1);
        Tensor cpuLogits = cpu.Allocate(T, shape.Experts);
        for (int replay = 0; replay < 3; replay++)
        {
            float[] values = Gpu.RandomF32(random, (long)T * shape.Experts, 2f);
            logits.CopyFrom(values, stream);
            dev.Output.CopyFrom(moe.Base, stream);
            graph.Launch(stream);

            cpu.Upload(values, cpuLogits);
            var ids = new int[T * shape.ExpertsPerToken];
            var weights = new float[T * shape.ExpertsPerToken];
            cpu.MoeRoute(cpuLogits, bias, new MoeRouting(shape.ExpertsPerToken, rule.Groups, rule.TopKGroups, rule.Renormalize, Scale, rule.BiasedWeights), ids, weights);
            var routed = moe with
            {
                Experts = ids.Chunk(shape.ExpertsPerToken).SelectMany(row => row.Append(shape.Experts)).ToArray(),
                Weights = weights.Chunk(shape.ExpertsPerToken).SelectMany(row => row.Append(1f)).ToArray(),
            };
            TensorAssert.Close(dev.Output.ToArray(stream).AsSpan(0, T * shape.Hidden), routed.Reference(), ExpertTolerance, $"replay {replay}");
        }
    }

    [Fact]
    public void StreamBlocks_FillOneWave_WithTheItemsSpreadEvenly()
    {
        foreach ((long items, int warps, int blocksPerSm, int sms) in new[] { (4608L, 8, 2, 132), (1152L, 4, 4, 132), (73728L, 8, 2, 132), (7L, 8, 2, 132), (1000L, 4, 4, 1), (2113L, 8, 2, 132) })
        {
            int blocks = MoeKernels.StreamBlocks(items, warps, blocksPerSm, sms);
            long capacity = (long)sms * blocksPerSm * warps, perWarp = (items + capacity - 1) / capacity, gridWarps = (long)blocks * warps;
            Assert.True(blocks <= sms * blocksPerSm, $"{items} items: {blocks} blocks exceed one wave of {sms * blocksPerSm}");
            Assert.True(gridWarps * perWarp >= items, $"{items} items: {gridWarps} warps of {perWarp} items leave some out");
            Assert.True((gridWarps - warps) * perWarp < items, $"{items} items: {blocks} blocks, the last one needless");
        }
    }

    [Fact]
    public void ExpertIdOutOfRange_PoisonsOnlyItsToken()
    {
        CudaContext gpu = Gpu.Require();
        const int T = 3;
        var shape = new MoeShape(40, 8, 2, 24, 1);
        var moe = new MoeCase(new Random(5), T, shape);
        moe.Experts[4] = 9; // token 1, slot 1 (rows of A + S = 3 pairs; 9 = E + S is past the shared expert)
        using CudaStream stream = gpu.CreateStream();
        using MoeCase.Device dev = moe.Upload(gpu, stream);
        using var decodeScratch = new MoeDecodeScratch(stream, shape, T);
        using var prefillScratch = new MoePrefillScratch(gpu, shape, T);
        foreach (bool decode in new[] { true, false })
        {
            dev.Output.CopyFrom(moe.Base, stream);
            if (decode) MoeKernels.DecodeExperts(stream, dev.Output, dev.X, dev.Experts, dev.Weights, dev.GateUp, dev.Down, decodeScratch, shape, T);
            else MoeKernels.PrefillExperts(stream, dev.Output, dev.X, dev.Experts, dev.Weights, dev.GateUp, dev.Down, prefillScratch, shape, T);
            float[] output = dev.Output.ToArray(stream);
            Assert.All(output.AsSpan(shape.Hidden, shape.Hidden).ToArray(), v => Assert.True(float.IsNaN(v), "token 1 should be NaN"));
            Assert.All(output.AsSpan(0, shape.Hidden).ToArray(), v => Assert.True(float.IsFinite(v), "token 0 should be finite"));
            Assert.All(output.AsSpan(2 * shape.Hidden, shape.Hidden).ToArray(), v => Assert.True(float.IsFinite(v), "token 2 should be finite"));
        }
    }

    [Fact]
    public void Wrappers_RejectBadShapesAndScratch()
    {
        CudaContext gpu = Gpu.Require();
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> f32 = gpu.Allocate<float>(1 << 16);
        using DeviceBuffer<int> ids = gpu.Allocate<int>(1024);
        using DeviceBuffer<ushort> bf16 = gpu.Allocate<ushort>(1 << 16);
        var shape = new MoeShape(40, 8, 2, 24);
        var error = Assert.Throws<ArgumentException>(() =>
            MoeKernels.Route(stream, ids, f32, f32, f32, shape, new MoeRoutingRule(3, 1, true, 1f, false), 4));
        Assert.Contains("divide E = 8", error.Message);
        error = Assert.Throws<ArgumentException>(() =>
            MoeKernels.Route(stream, ids, f32, f32, f32, shape with { SharedExperts = 31 }, new MoeRoutingRule(1, 1, true, 1f, false), 4));
        Assert.Contains("SharedExperts (S)", error.Message);
        error = Assert.Throws<ArgumentException>(() => new MoeDecodeScratch(stream, shape with { Hidden = 42 }, 1));
        Assert.Contains("multiple of 8", error.Message);
        using var scratch = new MoeDecodeScratch(stream, shape, 4);
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            MoeKernels.DecodeExperts(stream, f32, f32, ids, f32, bf16, bf16, scratch, shape, MoeKernels.MaxDecodeTokens + 1));
        error = Assert.Throws<ArgumentException>(() =>
            MoeKernels.DecodeExperts(stream, f32, f32, ids, f32, bf16, bf16, scratch, shape with { Intermediate = 32 }, 1));
        Assert.Contains("laid out for", error.Message);
        error = Assert.Throws<ArgumentException>(() => MoeKernels.DecodeExperts(stream, f32, f32, ids, f32, bf16, bf16, scratch, shape, 5));
        Assert.Contains("room for 4 tokens", error.Message);
        error = Assert.Throws<ArgumentException>(() =>
            MoeKernels.DecodeExperts(stream, f32, f32, ids, f32, bf16.Span.Slice(0, 100), bf16, scratch, shape, 1));
        Assert.Contains("gateUp", error.Message);
    }

    /// <summary>
    /// Each token's row of <paramref name="actualIds"/> and <paramref name="actualWeights"/> [T, A+S] is CpuBackend.MoeRoute's
    /// choice from <paramref name="logits"/> [T, E] (same ids in the same order, weights within fp32 rounding), followed
    /// by the S shared experts E..E+S-1 with weight 1.
    /// </summary>
    private static void AssertRoutedAsCpu(float[] logits, float[] bias, MoeRouting routing, int t, int e, int shared,
        int[] actualIds, float[] actualWeights, string what)
    {
        int a = routing.ExpertsPerToken, pairs = a + shared;
        var cpu = new CpuBackend(1);
        Tensor cpuLogits = cpu.Allocate(t, e);
        cpu.Upload(logits.AsSpan(0, t * e), cpuLogits);
        var expectedIds = new int[t * a];
        var expectedWeights = new float[t * a];
        cpu.MoeRoute(cpuLogits, bias, routing, expectedIds, expectedWeights);
        for (int token = 0; token < t; token++)
        {
            Assert.Equal(expectedIds[(token * a)..((token + 1) * a)], actualIds[(token * pairs)..(token * pairs + a)]);
            Assert.Equal(Enumerable.Range(e, shared), actualIds[(token * pairs + a)..((token + 1) * pairs)]);
            for (int slot = 0; slot < pairs; slot++)
            {
                float actual = actualWeights[token * pairs + slot], expected = slot < a ? expectedWeights[token * a + slot] : 1f;
                Assert.True(Math.Abs(actual - expected) <= 1e-6 * Math.Abs(expected), $"{what}weight of token {token}, slot {slot}: {actual:R}, expected {expected:R}");
            }
        }
    }

    /// <summary>
    /// Random inputs of one expert call and its double reference: each token's row is A distinct routed experts with
    /// random weights, then the S shared experts E..E+S-1 with weight 1 (as the router writes it).
    /// </summary>
    private sealed record MoeCase(MoeShape Shape, int T, float[] X, float[] Base, int[] Experts, float[] Weights, ushort[] GateUp, ushort[] Down)
    {
        public MoeCase(Random random, int t, MoeShape shape) : this(shape, t,
            Gpu.RandomF32(random, (long)t * shape.Hidden), Gpu.RandomF32(random, (long)t * shape.Hidden),
            Rows(random, t, shape), Enumerable.Range(0, t * shape.PairsPerToken).Select(i => i % shape.PairsPerToken < shape.ExpertsPerToken ? 0.2f + random.NextSingle() : 1f).ToArray(),
            Gpu.RandomBf16(random, 2L * shape.StackedExperts * shape.Intermediate * shape.Hidden, 1 / MathF.Sqrt(shape.Hidden)),
            Gpu.RandomBf16(random, (long)shape.StackedExperts * shape.Hidden * shape.Intermediate, 1 / MathF.Sqrt(shape.Intermediate)))
        {
        }

        private static int[] Rows(Random random, int t, MoeShape shape) =>
            Enumerable.Range(0, t).SelectMany(_ => Enumerable.Range(0, shape.Experts).OrderBy(_ => random.Next()).Take(shape.ExpertsPerToken)
                .Concat(Enumerable.Range(shape.Experts, shape.SharedExperts))).ToArray();

        /// <summary>Base + Σ_p w·w2·bf16(silu(w1·x̃) ⊙ (w3·x̃)) over the A + S pairs, x̃ = bf16(x), in double.</summary>
        public float[] Reference()
        {
            int d = Shape.Hidden, f = Shape.Intermediate, a = Shape.PairsPerToken;
            var output = new double[T * d];
            for (int i = 0; i < output.Length; i++) output[i] = Base[i];
            Parallel.For(0, T, t =>
            {
                var x = new double[d];
                for (int k = 0; k < d; k++) x[k] = BFloat16.ToSingle(BFloat16.FromSingle(X[t * d + k]));
                var h = new double[f];
                for (int slot = 0; slot < a; slot++)
                {
                    long e = Experts[t * a + slot];
                    for (int j = 0; j < f; j++)
                    {
                        double g = 0, u = 0;
                        for (int k = 0; k < d; k++)
                        {
                            g += BFloat16.ToSingle(GateUp[(e * 2 * f + j) * d + k]) * x[k];
                            u += BFloat16.ToSingle(GateUp[(e * 2 * f + f + j) * d + k]) * x[k];
                        }
                        h[j] = BFloat16.ToSingle(BFloat16.FromSingle((float)(g / (1 + Math.Exp(-g)) * u)));
                    }
                    for (int i = 0; i < d; i++)
                    {
                        double y = 0;
                        for (int j = 0; j < f; j++) y += BFloat16.ToSingle(Down[(e * d + i) * f + j]) * h[j];
                        output[t * d + i] += Weights[t * a + slot] * y;
                    }
                }
            });
            return output.Select(v => (float)v).ToArray();
        }

        public Device Upload(CudaContext gpu, CudaStream stream)
        {
            DeviceBuffer<float> output = gpu.Poisoned(stream, (long)T * Shape.Hidden, float.NaN);
            output.CopyFrom(Base, stream);
            return new Device(output, gpu.Upload(stream, X), gpu.Upload(stream, Experts), gpu.Upload(stream, Weights),
                gpu.Upload(stream, GateUp), gpu.Upload(stream, Down));
        }

        /// <summary>The case on the GPU; output starts as Base (followed by a NaN tail).</summary>
        public sealed record Device(DeviceBuffer<float> Output, DeviceBuffer<float> X, DeviceBuffer<int> Experts, DeviceBuffer<float> Weights,
            DeviceBuffer<ushort> GateUp, DeviceBuffer<ushort> Down) : IDisposable
        {
            public void Dispose()
            {
                Output.Dispose();
                X.Dispose();
                Experts.Dispose();
                Weights.Dispose();
                GateUp.Dispose();
                Down.Dispose();
            }
        }
    }
}
