using BenchmarkDotNet.Attributes;
using KimiLinear.Backends.Cpu;

namespace KimiLinear.Benchmarks;

/// <summary>
/// The CPU KDA core at the real model's shapes (H = 32, K = V = 128): one decode step, and prefill of 1024 / 4096 tokens
/// by the chunked and (for comparison) the recurrent path. Inputs are random with realistic gates; the state is
/// carried from one invocation to the next, as in a session.
/// </summary>
[MemoryDiagnoser]
[SimpleJob(launchCount: 1, warmupCount: 3, iterationCount: 10)]
public class KdaCoreBenchmarks
{
    private const int Heads = 32, KeyDim = 128, ValueDim = 128, MaxTokens = 4096;

    private float[] _q = [], _k = [], _v = [], _g = [], _beta = []; // [T, H, K] ×3 (q, k, g), [T, H, V], [T, H]
    private float[] _state = [], _o = [];                           // [H, K, V], [T, H, V]

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        float Normal() => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        float[] Fill(int n, Func<float> f) { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = f(); return a; }

        int tk = MaxTokens * Heads * KeyDim, tv = MaxTokens * Heads * ValueDim;
        var rate = Fill(Heads, () => MathF.Exp(2.7f * (float)rng.NextDouble())); // exp(A_log), A_log ∈ [0, 2.7]
        _q = Fill(tk, Normal);
        _k = Fill(tk, Normal);
        _v = Fill(tv, Normal);
        _g = new float[tk];
        for (int i = 0; i < tk; i++)
            _g[i] = -rate[i / KeyDim % Heads] * MathF.Log(1f + MathF.Exp(Normal()));
        _beta = Fill(MaxTokens * Heads, () => 1f / (1f + MathF.Exp(-Normal())));
        _state = Fill(Heads * KeyDim * ValueDim, () => 0.1f * Normal());
        _o = new float[tv];
    }

    [Benchmark(Description = "Recurrent T=1 (decode step)")]
    public void DecodeStep() => Run(1, chunked: false);

    [Benchmark(Description = "Chunked T=1024")]
    public void Chunked1024() => Run(1024, chunked: true);

    [Benchmark(Description = "Chunked T=4096")]
    public void Chunked4096() => Run(4096, chunked: true);

    [Benchmark(Description = "Recurrent T=1024")]
    public void Recurrent1024() => Run(1024, chunked: false);

    private void Run(int tokens, bool chunked)
    {
        int tk = tokens * Heads * KeyDim, tv = tokens * Heads * ValueDim;
        if (chunked)
            KdaCore.Chunked(_q.AsSpan(0, tk), _k.AsSpan(0, tk), _v.AsSpan(0, tv), _g.AsSpan(0, tk), _beta.AsSpan(0, tokens * Heads),
                _state, _o.AsSpan(0, tv), tokens, Heads, KeyDim, ValueDim);
        else
            KdaCore.Recurrent(_q.AsSpan(0, tk), _k.AsSpan(0, tk), _v.AsSpan(0, tv), _g.AsSpan(0, tk), _beta.AsSpan(0, tokens * Heads),
                _state, _o.AsSpan(0, tv), tokens, Heads, KeyDim, ValueDim);
    }
}
