using BenchmarkDotNet.Attributes;
using KimiLinear.Generation;
using KimiLinear.Sampling;

namespace KimiLinear.Benchmarks;

/// <summary>
/// Choosing one token from one row of logits at the real vocabulary (163,840): the per-token cost sampling adds to every
/// decode step, to set against the GPU decode floor of about 2 ms per token. The logits are a fixed random row shaped
/// like a trained model's (a few strong candidates over a long tail).
/// </summary>
[SimpleJob(launchCount: 1, warmupCount: 3, iterationCount: 10)]
[MedianColumn]
public class SamplerBenchmarks
{
    private const int Vocab = 163_840;
    private float[] _row = null!;
    private float[] _logits = null!;
    private TokenSampler _sampler = null!;
    private readonly HashSet<int> _seen = [];

    /// <summary>Sampling settings: greedy, the defaults (temperature 0.7, top-p 0.95), top-k 40, min-p 0.05.</summary>
    [Params("greedy", "default", "top-k 40", "min-p 0.05")]
    public string Settings { get; set; } = "default";

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(1);
        // A long tail around -2 with a few dozen tokens well above it, as a trained model's logits look.
        _row = Enumerable.Range(0, Vocab).Select(_ => (float)(random.NextDouble() * 4 - 4)).ToArray();
        for (var i = 0; i < 40; i++)
            _row[random.Next(Vocab)] = 4 + (float)random.NextDouble() * 6;
        _logits = new float[Vocab];
        var options = Settings switch
        {
            "greedy" => new GenerationOptions { Temperature = 0 },
            "top-k 40" => new GenerationOptions { TopK = 40, TopP = 1 },
            "min-p 0.05" => new GenerationOptions { MinP = 0.05f, TopP = 1 },
            _ => new GenerationOptions(),
        };
        _sampler = new TokenSampler(options with { Seed = 1 }, Vocab);
    }

    [Benchmark]
    public int Sample()
    {
        _row.CopyTo(_logits); // Sample modifies the row in place (the repetition penalty)
        return _sampler.Sample(_logits, _seen);
    }
}
