using KimiLinear.Backends.Cpu;

namespace KimiLinear.Tests.Kda;

/// <summary>
/// One sequence's KDA-core inputs, and runs of either path over a token range. Every argument is handed over inside a
/// NaN-filled margin: the core works through raw pointers, so a read past a span shows up as NaN in the result, and a
/// write past one is caught by checking the margins afterwards.
/// </summary>
internal sealed class KdaInputs
{
    private const int Margin = 64;

    public int Tokens { get; }
    public int Heads { get; }
    public int KeyDim { get; }
    public int ValueDim { get; }
    public float[] Q { get; }            // [T, H, K] raw
    public float[] K { get; }            // [T, H, K] raw
    public float[] V { get; }            // [T, H, V]
    public float[] G { get; }            // [T, H, K] log-decay ≤ 0
    public float[] Beta { get; }         // [T, H] in (0, 1)
    public float[] InitialState { get; } // [H, K, V]

    public KdaInputs(int tokens, int heads, int keyDim, int valueDim, float[] q, float[] k, float[] v, float[] g, float[] beta, float[] initialState)
    {
        (Tokens, Heads, KeyDim, ValueDim) = (tokens, heads, keyDim, valueDim);
        (Q, K, V, G, Beta, InitialState) = (q, k, v, g, beta, initialState);
    }

    /// <summary>Seeded random inputs with a nonzero initial state; see <see cref="KdaCoreTests.Gates"/> for g.</summary>
    public static KdaInputs Random(int seed, int tokens, int heads, int keyDim, int valueDim, KdaCoreTests.Gates gates)
    {
        var rng = new Random(seed);
        float Normal() => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        float[] Fill(int n, Func<float> f) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = f(); return a; }

        int hk = heads * keyDim;
        var q = Fill(tokens * hk, Normal);
        var k = Fill(tokens * hk, Normal);
        var v = Fill(tokens * heads * valueDim, Normal);
        var beta = Fill(tokens * heads, () => 1f / (1f + MathF.Exp(-Normal())));
        var rate = Fill(heads, () => MathF.Exp(2.7f * (float)rng.NextDouble())); // exp(A_log), A_log ∈ [0, 2.7]
        var g = new float[tokens * hk];
        for (int i = 0; i < g.Length; i++)
        {
            int t = i / hk, h = i % hk / keyDim;
            float softplus = MathF.Log(1f + MathF.Exp(Normal()));
            g[i] = -rate[h] * softplus;
            if (gates == KdaCoreTests.Gates.Harsh && (t % 17 == 16 || rng.NextDouble() < 0.02))
                g[i] = -60f;
        }
        var state = Fill(heads * keyDim * valueDim, () => 0.5f * Normal());
        return new KdaInputs(tokens, heads, keyDim, valueDim, q, k, v, g, beta, state);
    }

    public (float[] O, float[] State) RunRecurrent(int start, int count, float[]? state = null) => Run(start, count, state, chunked: false);

    public (float[] O, float[] State) RunChunked(int start, int count, float[]? state = null) => Run(start, count, state, chunked: true);

    private (float[] O, float[] State) Run(int start, int count, float[]? state, bool chunked)
    {
        int hk = Heads * KeyDim, hv = Heads * ValueDim;
        var q = Padded(Q.AsSpan(start * hk, count * hk));
        var k = Padded(K.AsSpan(start * hk, count * hk));
        var v = Padded(V.AsSpan(start * hv, count * hv));
        var g = Padded(G.AsSpan(start * hk, count * hk));
        var beta = Padded(Beta.AsSpan(start * Heads, count * Heads));
        var s = Padded(state ?? InitialState);
        var o = Padded(new float[count * hv]);

        if (chunked)
            KdaCore.Chunked(Inner(q), Inner(k), Inner(v), Inner(g), Inner(beta), Inner(s), Inner(o), count, Heads, KeyDim, ValueDim);
        else
            KdaCore.Recurrent(Inner(q), Inner(k), Inner(v), Inner(g), Inner(beta), Inner(s), Inner(o), count, Heads, KeyDim, ValueDim);

        AssertMarginsIntact(s, "state");
        AssertMarginsIntact(o, "o");
        return (Inner(o).ToArray(), Inner(s).ToArray());
    }

    private static float[] Padded(ReadOnlySpan<float> data)
    {
        var buffer = new float[data.Length + 2 * Margin];
        Array.Fill(buffer, float.NaN);
        data.CopyTo(buffer.AsSpan(Margin));
        return buffer;
    }

    private static Span<float> Inner(float[] padded) => padded.AsSpan(Margin, padded.Length - 2 * Margin);

    private static void AssertMarginsIntact(float[] padded, string name)
    {
        for (int i = 0; i < Margin; i++)
        {
            Assert.True(float.IsNaN(padded[i]), $"{name}: written {Margin - i} floats before its start");
            Assert.True(float.IsNaN(padded[^(i + 1)]), $"{name}: written {i + 1} floats past its end");
        }
    }
}
