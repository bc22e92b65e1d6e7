using KimiLinear.Generation;

namespace KimiLinear.Sampling;

/// <summary>
/// Picks the next token from one row of logits: repetition penalty, then greedy at temperature 0, otherwise temperature,
/// top-k, top-p and min-p, then a draw from a seeded <see cref="Random"/>. One instance per generation call: it owns the
/// random stream, so the same seed and logits give the same tokens.
/// </summary>
internal sealed class TokenSampler
{
    private readonly GenerationOptions _options;
    private readonly Random _random;
    // [vocab] candidate token ids, in the order the filters leave them (descending logit once a filter has sorted).
    private readonly int[] _candidates;
    // [vocab] exp((logit - max) / temperature) of each candidate, same order as _candidates.
    private readonly double[] _weights;
    private readonly PriorityQueue<int, float> _heap = new();

    public TokenSampler(GenerationOptions options, int vocabSize)
    {
        _options = options;
        // System.Random with an explicit seed uses its legacy algorithm, which is the same on every .NET version.
        _random = new Random(options.Seed ?? Random.Shared.Next());
        _candidates = new int[vocabSize];
        _weights = new double[vocabSize];
    }

    /// <summary>Chooses a token from <paramref name="logits"/> [vocab], which it modifies (penalty applied in place).</summary>
    /// <param name="logits">One row of logits.</param>
    /// <param name="seen">Tokens the repetition penalty applies to.</param>
    public int Sample(Span<float> logits, IReadOnlySet<int> seen)
    {
        ApplyRepetitionPenalty(logits, seen, _options.RepetitionPenalty);
        return _options.Temperature == 0 ? ArgMax(logits) : Draw(Filter(logits));
    }

    /// <summary>The distribution <see cref="Sample"/> draws from at a nonzero temperature (no penalty): token → probability.</summary>
    internal Dictionary<int, double> Distribution(ReadOnlySpan<float> logits)
    {
        var count = Filter(logits);
        var total = 0.0;
        for (var i = 0; i < count; i++)
            total += _weights[i];
        var distribution = new Dictionary<int, double>(count);
        for (var i = 0; i < count; i++)
            distribution[_candidates[i]] = _weights[i] / total;
        return distribution;
    }

    /// <summary>
    /// Applies temperature, top-k, top-p and min-p: leaves the surviving ids in <see cref="_candidates"/>[0..count) and
    /// their unnormalised probabilities in <see cref="_weights"/>, and returns count.
    /// </summary>
    private int Filter(ReadOnlySpan<float> logits)
    {
        var count = KeepTopK(logits);
        var sorted = count < logits.Length;
        var maxLogit = sorted ? logits[_candidates[0]] : Max(logits);
        // Weights relative to the best token, so the largest is exp(0) = 1 and nothing overflows.
        var invTemperature = 1.0 / _options.Temperature;
        for (var i = 0; i < count; i++)
            _weights[i] = Math.Exp((logits[_candidates[i]] - maxLogit) * invTemperature);

        if (_options.TopP < 1)
        {
            var total = 0.0;
            for (var i = 0; i < count; i++)
                total += _weights[i];
            if (!sorted)
                count = SortTopMass(logits, count, total, maxLogit);
            count = KeepTopP(count, total);
        }
        if (_options.MinP > 0)
            count = KeepMinP(count);
        return count;
    }

    /// <summary>Hugging Face semantics: a seen token's positive logit is divided by the penalty, a negative one multiplied.</summary>
    internal static void ApplyRepetitionPenalty(Span<float> logits, IReadOnlySet<int> seen, float penalty)
    {
        if (penalty == 1)
            return;
        foreach (var id in seen)
        {
            ref var l = ref logits[id];
            l = l > 0 ? l / penalty : l * penalty;
        }
    }

    /// <summary>Index of the largest logit; the lowest index wins a tie.</summary>
    internal static int ArgMax(ReadOnlySpan<float> logits)
    {
        var best = 0;
        for (var i = 1; i < logits.Length; i++)
            if (logits[i] > logits[best])
                best = i;
        return best;
    }

    private static float Max(ReadOnlySpan<float> logits) => logits[ArgMax(logits)];

    /// <summary>Fills <see cref="_candidates"/> with the top-k ids by logit, descending, or with every id in order when top-k is off.</summary>
    private int KeepTopK(ReadOnlySpan<float> logits)
    {
        var k = _options.TopK;
        if (k > 0 && k < logits.Length)
        {
            SelectTop(logits, k);
            return k;
        }
        for (var i = 0; i < logits.Length; i++)
            _candidates[i] = i;
        return logits.Length;
    }

    /// <summary>
    /// Puts the most likely tokens first, descending, with their weights, until they hold at least TopP of
    /// <paramref name="total"/>; returns how many. Selecting a growing top-n avoids sorting the whole vocabulary
    /// (163,840 ids) when the mass is concentrated, as it usually is.
    /// </summary>
    private int SortTopMass(ReadOnlySpan<float> logits, int count, double total, float maxLogit)
    {
        var invTemperature = 1.0 / _options.Temperature;
        for (var n = Math.Min(64, count); ; n = Math.Min(n * 8, count))
        {
            SelectTop(logits, n);
            var mass = 0.0;
            for (var i = 0; i < n; i++)
            {
                _weights[i] = Math.Exp((logits[_candidates[i]] - maxLogit) * invTemperature);
                mass += _weights[i];
            }
            if (n == count || mass >= _options.TopP * total)
                return n;
        }
    }

    /// <summary>Keeps the shortest prefix of the sorted candidates whose weights reach TopP of <paramref name="total"/>.</summary>
    private int KeepTopP(int count, double total)
    {
        var threshold = _options.TopP * total;
        var mass = 0.0;
        for (var i = 0; i < count; i++)
        {
            mass += _weights[i];
            if (mass >= threshold)
                return i + 1;
        }
        return count;
    }

    /// <summary>Keeps candidates at least MinP as likely as the most likely one (order kept).</summary>
    private int KeepMinP(int count)
    {
        var best = 0.0;
        for (var i = 0; i < count; i++)
            best = Math.Max(best, _weights[i]);
        var threshold = _options.MinP * best;
        var kept = 0;
        for (var i = 0; i < count; i++)
        {
            if (_weights[i] < threshold)
                continue;
            _candidates[kept] = _candidates[i];
            _weights[kept] = _weights[i];
            kept++;
        }
        return kept;
    }

    /// <summary>Draws one candidate with probability proportional to its weight.</summary>
    private int Draw(int count)
    {
        var total = 0.0;
        for (var i = 0; i < count; i++)
            total += _weights[i];
        var target = _random.NextDouble() * total;
        for (var i = 0; i < count; i++)
        {
            target -= _weights[i];
            if (target < 0)
                return _candidates[i];
        }
        return _candidates[count - 1]; // rounding left target at ~0 after the last weight
    }

    /// <summary>Writes the ids of the <paramref name="n"/> largest logits to <see cref="_candidates"/>[0..n), descending.</summary>
    private void SelectTop(ReadOnlySpan<float> logits, int n)
    {
        // A min-heap of the best n so far: each further logit costs one comparison unless it enters the heap.
        _heap.Clear();
        for (var i = 0; i < n; i++)
            _heap.Enqueue(i, logits[i]);
        for (var i = n; i < logits.Length; i++)
        {
            _heap.TryPeek(out _, out var smallest);
            if (logits[i] > smallest)
                _heap.EnqueueDequeue(i, logits[i]);
        }
        for (var i = n - 1; i >= 0; i--)
            _candidates[i] = _heap.Dequeue();
    }
}
