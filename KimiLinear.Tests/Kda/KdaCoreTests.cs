using KimiLinear.Backends.Cpu;
using KimiLinear.Loading;

namespace KimiLinear.Tests.Kda;

/// <summary>
/// The KDA core's two paths against each other on random inputs, across calls, and at the edges.
/// </summary>
/// <remarks>
/// Tolerance: both paths compute in fp32 and each lands within a few 1e-6 relative of a float64 recurrence (the golden
/// cases; FLA's own fp32 chunk kernel is at ≤ 7e-6 there). Their difference is therefore bounded by the sum of the two
/// errors, ~1e-5 relative: the same budget the golden tests grant each path against float64.
/// </remarks>
public sealed class KdaCoreTests
{
    private const double Tolerance = 1e-5;

    public enum Gates
    {
        /// <summary>g = −exp(a)·softplus(x), a ~ U[0, 2.7] per head (the real model's A_log range), x ~ N(0, 1).</summary>
        Realistic,
        /// <summary>Realistic, plus near-total forgetting: g = −60 in every channel every 17th step and in 2 % of entries.</summary>
        Harsh,
    }

    /// <summary>
    /// The six <c>kda_ops</c> fixture cases, (B, T, H, K, V) = (2,1,2,64,64), (1,63,2,64,64), (2,64,2,64,64),
    /// (1,65,3,64,32), (1,300,2,128,128), (1,200,1,128,128) with g = −60 every 17th step in case 5, against a float64
    /// token-by-token recurrence; each batch element is its own sequence.
    /// </summary>
    [Theory]
    [InlineData(0, false)]
    [InlineData(1, false)]
    [InlineData(2, false)]
    [InlineData(3, false)]
    [InlineData(4, false)]
    [InlineData(5, false)]
    [InlineData(0, true)]
    [InlineData(1, true)]
    [InlineData(2, true)]
    [InlineData(3, true)]
    [InlineData(4, true)]
    [InlineData(5, true)]
    public void Matches_float64_golden(int caseIndex, bool chunked)
    {
        using var file = SafeTensorFile.Open(Path.Combine(AppContext.BaseDirectory, "Fixtures", "kda_ops", "kda_ops.safetensors"));
        string name = $"kda{caseIndex}";
        long[] shape = file.Tensors[$"{name}.q"].Shape; // [B, T, H, K]
        int batch = (int)shape[0], tokens = (int)shape[1], heads = (int)shape[2], keyDim = (int)shape[3];
        int valueDim = (int)file.Tensors[$"{name}.v"].Shape[3];
        float[] Read(string tensor) => file.ReadFloat32($"{name}.{tensor}");
        float[] q = Read("q"), k = Read("k"), v = Read("v"), g = Read("g"), beta = Read("beta"), s0 = Read("initial_state");
        float[] oRef = Read("o"), sRef = Read("final_state");

        int tk = tokens * heads * keyDim, tv = tokens * heads * valueDim, th = tokens * heads, kv = heads * keyDim * valueDim;
        for (int b = 0; b < batch; b++)
        {
            var x = new KdaInputs(tokens, heads, keyDim, valueDim, q[(b * tk)..((b + 1) * tk)], k[(b * tk)..((b + 1) * tk)],
                v[(b * tv)..((b + 1) * tv)], g[(b * tk)..((b + 1) * tk)], beta[(b * th)..((b + 1) * th)], s0[(b * kv)..((b + 1) * kv)]);
            var (o, s) = chunked ? x.RunChunked(0, tokens) : x.RunRecurrent(0, tokens);
            string path = chunked ? "chunked" : "recurrent";
            TensorAssert.Close(o, oRef.AsSpan(b * tv, tv), Tolerance, $"{name} batch {b} o ({path} vs float64)");
            TensorAssert.Close(s, sRef.AsSpan(b * kv, kv), Tolerance, $"{name} batch {b} final state ({path} vs float64)");
        }
    }

    [Theory]
    [InlineData(1, 3, 60, 36, Gates.Realistic)]
    [InlineData(63, 3, 60, 36, Gates.Realistic)]
    [InlineData(64, 3, 60, 36, Gates.Realistic)]
    [InlineData(65, 3, 60, 36, Gates.Realistic)]
    [InlineData(129, 3, 60, 36, Gates.Realistic)]
    [InlineData(1000, 3, 60, 36, Gates.Realistic)]
    [InlineData(1, 2, 60, 36, Gates.Harsh)]
    [InlineData(65, 2, 60, 36, Gates.Harsh)]
    [InlineData(1000, 2, 60, 36, Gates.Harsh)]
    [InlineData(129, 2, 128, 128, Gates.Realistic)]
    [InlineData(200, 2, 128, 128, Gates.Harsh)]
    [InlineData(70, 1, 17, 5, Gates.Realistic)]
    public void Chunked_matches_recurrent(int tokens, int heads, int keyDim, int valueDim, Gates gates)
    {
        var x = KdaInputs.Random(seed: tokens * 31 + keyDim, tokens, heads, keyDim, valueDim, gates);

        var (oRec, sRec) = x.RunRecurrent(0, tokens);
        var (oChunk, sChunk) = x.RunChunked(0, tokens);

        TensorAssert.Close(oChunk, oRec, Tolerance, "o (chunked vs recurrent)");
        TensorAssert.Close(sChunk, sRec, Tolerance, "final state (chunked vs recurrent)");
    }

    [Theory]
    [InlineData(150, 7, Gates.Realistic)]
    [InlineData(64, 1, Gates.Harsh)]
    [InlineData(1, 20, Gates.Realistic)]
    public void Chunked_prefill_then_recurrent_decode_equals_recurrent_throughout(int prefill, int decode, Gates gates)
    {
        var x = KdaInputs.Random(seed: 7 + prefill, prefill + decode, heads: 3, keyDim: 60, valueDim: 36, gates);

        var (oAll, sAll) = x.RunRecurrent(0, prefill + decode);
        var (oPrefill, state) = x.RunChunked(0, prefill);
        var (oDecode, sEnd) = x.RunRecurrent(prefill, decode, state);

        TensorAssert.Close([.. oPrefill, .. oDecode], oAll, Tolerance, "o (chunked prefill + decode vs recurrent)");
        TensorAssert.Close(sEnd, sAll, Tolerance, "final state (chunked prefill + decode vs recurrent)");
    }

    [Theory]
    [InlineData(100, 77, Gates.Realistic)]
    [InlineData(37, 200, Gates.Harsh)]
    public void Chunked_in_two_calls_equals_one_call(int first, int second, Gates gates)
    {
        var x = KdaInputs.Random(seed: first * second, first + second, heads: 3, keyDim: 60, valueDim: 36, gates);

        var (oOne, sOne) = x.RunChunked(0, first + second);
        var (oA, state) = x.RunChunked(0, first);
        var (oB, sTwo) = x.RunChunked(first, second, state);

        TensorAssert.Close([.. oA, .. oB], oOne, Tolerance, "o (two chunked calls vs one)");
        TensorAssert.Close(sTwo, sOne, Tolerance, "final state (two chunked calls vs one)");
    }

    [Fact]
    public void Recurrent_one_token_per_call_is_bitwise_equal_to_one_call()
    {
        // Each head's arithmetic per token does not depend on how many tokens a call holds or on threading.
        const int tokens = 20;
        var x = KdaInputs.Random(seed: 3, tokens, heads: 32, keyDim: 64, valueDim: 64, Gates.Realistic);

        var (oOne, sOne) = x.RunRecurrent(0, tokens);
        float[] state = x.InitialState;
        var oSteps = new List<float>();
        for (int t = 0; t < tokens; t++)
        {
            (float[] o, state) = x.RunRecurrent(t, 1, state);
            oSteps.AddRange(o);
        }

        Assert.Equal(oOne, oSteps.ToArray());
        Assert.Equal(sOne, state);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void One_token_from_zero_state_writes_beta_k_v(bool chunked)
    {
        // S = 0: r = v, S' = β·k̂ ⊗ v, o = S'ᵀq̂ = β (q̂·k̂) v, with q̂ = q/‖q‖/√K and k̂ = k/‖k‖ (eps negligible here).
        const int heads = 2, keyDim = 4, valueDim = 3;
        float[] q = [1, 2, 2, 0, /* head 1 */ 0, 0, 3, 4];
        float[] k = [2, 0, 0, 0, /* head 1 */ 0, 0, 4, 3];
        float[] v = [1, -2, 3, /* head 1 */ 0.5f, 0.25f, -1];
        float[] g = new float[heads * keyDim];
        float[] beta = [0.5f, 0.25f];
        var state = new float[heads * keyDim * valueDim];
        var o = new float[heads * valueDim];

        if (chunked)
            KdaCore.Chunked(q, k, v, g, beta, state, o, 1, heads, keyDim, valueDim);
        else
            KdaCore.Recurrent(q, k, v, g, beta, state, o, 1, heads, keyDim, valueDim);

        // Head 0: q̂·k̂ = (1/3)/2 = 1/6; head 1: q̂·k̂ = (3·4 + 4·3)/25/2 = 0.48.
        float[] expectedO = [.. v[..3].Select(x => 0.5f / 6 * x), .. v[3..].Select(x => 0.25f * 0.48f * x)];
        var expectedState = new float[state.Length];
        for (int h = 0; h < heads; h++)
        {
            float kNorm = MathF.Sqrt(k.Skip(h * keyDim).Take(keyDim).Sum(x => x * x));
            for (int d = 0; d < keyDim; d++)
                for (int j = 0; j < valueDim; j++)
                    expectedState[(h * keyDim + d) * valueDim + j] = beta[h] * k[h * keyDim + d] / kNorm * v[h * valueDim + j];
        }
        TensorAssert.Close(o, expectedO, 1e-6, "o");
        TensorAssert.Close(state, expectedState, 1e-6, "state");
    }

    [Fact]
    public void Decay_of_minus_infinity_in_effect_forgets_the_state()
    {
        // exp(−1000) underflows to 0: the chunk path must give 0·S, not ∞·0 = NaN, and match the recurrent path.
        var x = KdaInputs.Random(seed: 11, tokens: 80, heads: 2, keyDim: 60, valueDim: 36, Gates.Realistic);
        for (int i = 10 * 2 * 60; i < 11 * 2 * 60; i++)
            x.G[i] = -1000f;

        var (oRec, sRec) = x.RunRecurrent(0, 80);
        var (oChunk, sChunk) = x.RunChunked(0, 80);

        TensorAssert.Close(oChunk, oRec, Tolerance, "o (chunked vs recurrent)");
        TensorAssert.Close(sChunk, sRec, Tolerance, "final state (chunked vs recurrent)");
    }

    [Theory]
    [InlineData("q")]
    [InlineData("k")]
    [InlineData("v")]
    [InlineData("g")]
    [InlineData("beta")]
    [InlineData("state")]
    [InlineData("o")]
    public void Wrong_length_names_the_argument(string which)
    {
        const int tokens = 3, heads = 2, keyDim = 4, valueDim = 5;
        float[] Make(string name, int length) => new float[name == which ? length + 1 : length];
        var q = Make("q", tokens * heads * keyDim);
        var k = Make("k", tokens * heads * keyDim);
        var v = Make("v", tokens * heads * valueDim);
        var g = Make("g", tokens * heads * keyDim);
        var beta = Make("beta", tokens * heads);
        var state = Make("state", heads * keyDim * valueDim);
        var o = Make("o", tokens * heads * valueDim);

        var e1 = Assert.Throws<ArgumentException>(() => KdaCore.Recurrent(q, k, v, g, beta, state, o, tokens, heads, keyDim, valueDim));
        var e2 = Assert.Throws<ArgumentException>(() => KdaCore.Chunked(q, k, v, g, beta, state, o, tokens, heads, keyDim, valueDim));
        foreach (var e in new[] { e1, e2 })
        {
            Assert.Equal(which, e.ParamName);
            Assert.Contains("expected", e.Message);
        }
    }
}
