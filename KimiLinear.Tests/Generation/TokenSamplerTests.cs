using KimiLinear.Generation;
using KimiLinear.Sampling;

namespace KimiLinear.Tests.Generation;

public class TokenSamplerTests
{
    /// <summary>The filters written out plainly: full sort, then top-k, top-p, min-p on the renormalised distribution.</summary>
    private static Dictionary<int, double> ReferenceDistribution(float[] logits, GenerationOptions o)
    {
        var max = logits.Max();
        var p = logits.Select(l => Math.Exp((l - max) / (double)o.Temperature)).ToArray();
        var order = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).ToList();
        if (o.TopK > 0)
            order = order.Take(o.TopK).ToList();
        if (o.TopP < 1)
        {
            var total = order.Sum(i => p[i]);
            var kept = new List<int>();
            var mass = 0.0;
            foreach (var i in order)
            {
                kept.Add(i);
                mass += p[i];
                if (mass >= o.TopP * total)
                    break;
            }
            order = kept;
        }
        if (o.MinP > 0)
        {
            var best = order.Max(i => p[i]);
            order = order.Where(i => p[i] >= o.MinP * best).ToList();
        }
        var sum = order.Sum(i => p[i]);
        return order.ToDictionary(i => i, i => p[i] / sum);
    }

    private static float[] RandomLogits(int vocab, float scale, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, vocab).Select(_ => (float)(random.NextDouble() * 2 - 1) * scale).ToArray();
    }

    [Theory]
    [InlineData(7, 1.0f, 0, 1.0f, 0f, 4f)]           // plain softmax
    [InlineData(7, 0.5f, 3, 1.0f, 0f, 4f)]           // top-k
    [InlineData(1001, 1.0f, 500, 1.0f, 0f, 20f)]     // top-k wider than the first logit margins catch
    [InlineData(1001, 1.3f, 0, 0.9f, 0f, 8f)]        // top-p, mass concentrated (first selection of 64 suffices)
    [InlineData(5003, 1.0f, 0, 0.5f, 0f, 0.1f)]      // top-p over a flat distribution: the selection must grow
    [InlineData(1001, 0.7f, 50, 0.8f, 0.05f, 6f)]    // all three filters
    [InlineData(1001, 1.0f, 0, 1.0f, 0.2f, 3f)]      // min-p alone
    [InlineData(163840, 0.8f, 0, 0.95f, 0f, 10f)]    // the real vocabulary
    [InlineData(163840, 1.0f, 40, 0.95f, 0.05f, 10f)]
    [InlineData(163840, 1.0f, 0, 0.999f, 0f, 10f)]       // top-p reaching below the first gather floor (1e-2)
    [InlineData(20011, 1.0f, 0, 0.9999999f, 0.1f, 10f)]  // ... and below the last nonzero one: every token gathered
    public void Filtered_distribution_matches_the_plain_reference(int vocab, float temperature, int topK, float topP, float minP, float scale)
    {
        var options = new GenerationOptions { Temperature = temperature, TopK = topK, TopP = topP, MinP = minP, Seed = 1 };
        var logits = RandomLogits(vocab, scale, seed: vocab);
        var expected = ReferenceDistribution(logits, options);
        var actual = new TokenSampler(options, vocab).Distribution(logits);

        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        // The sampler works in float (vectorised exp and sums over the vocabulary): about 1e-6 relative, not double's 1e-15.
        foreach (var (id, probability) in expected)
            Assert.True(Math.Abs(actual[id] - probability) <= 1e-5 * probability + 1e-10, $"token {id}: {actual[id]} vs reference {probability}");
    }

    [Fact]
    public void Draws_follow_the_distribution()
    {
        var options = new GenerationOptions { Temperature = 0.9f, TopK = 4, TopP = 1, Seed = 7 };
        var logits = new[] { 1.0f, 2.5f, -0.5f, 2.0f, 0.3f };
        var expected = ReferenceDistribution(logits, options);
        var sampler = new TokenSampler(options, logits.Length);
        const int draws = 40_000;
        var counts = new int[logits.Length];
        for (var i = 0; i < draws; i++)
            counts[sampler.Sample(logits.ToArray(), new HashSet<int>())]++;

        for (var id = 0; id < logits.Length; id++)
        {
            var p = expected.GetValueOrDefault(id);
            // Five standard deviations of a binomial proportion: a wrong distribution fails, a right one essentially never.
            var tolerance = 5 * Math.Sqrt(Math.Max(p * (1 - p), 1e-12) / draws);
            Assert.True(Math.Abs(counts[id] / (double)draws - p) <= tolerance, $"token {id}: frequency {counts[id] / (double)draws}, expected {p}");
        }
    }

    [Fact]
    public void Same_seed_gives_the_same_draws_and_another_seed_others()
    {
        var logits = RandomLogits(513, 2f, seed: 3);
        int[] Draws(int seed)
        {
            var sampler = new TokenSampler(new GenerationOptions { Temperature = 1, TopP = 1, Seed = seed }, logits.Length);
            return Enumerable.Range(0, 50).Select(_ => sampler.Sample(logits.ToArray(), new HashSet<int>())).ToArray();
        }
        Assert.Equal(Draws(11), Draws(11));
        Assert.NotEqual(Draws(11), Draws(12));
    }

    [Fact]
    public void Temperature_zero_is_greedy_and_ties_go_to_the_lowest_id()
    {
        var sampler = new TokenSampler(new GenerationOptions { Temperature = 0 }, 6);
        Assert.Equal(3, sampler.Sample(new[] { 0f, 1f, 2f, 5f, 5f, -1f }, new HashSet<int>()));
    }

    [Fact]
    public void Repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens()
    {
        var logits = new[] { 2f, -1f, 1.5f, 0.5f };
        TokenSampler.ApplyRepetitionPenalty(logits, new HashSet<int> { 0, 1 }, 2f);
        Assert.Equal(new[] { 1f, -2f, 1.5f, 0.5f }, logits);

        var sampler = new TokenSampler(new GenerationOptions { Temperature = 0, RepetitionPenalty = 2f }, 4);
        Assert.Equal(2, sampler.Sample(new[] { 2f, -1f, 1.5f, 0.5f }, new HashSet<int> { 0 }));
    }
}
