using System.Numerics.Tensors;
using KimiLinear.Generation;

namespace KimiLinear.Sampling;

/// <summary>
/// Picks the next token from one row of logits: repetition penalty, then greedy at temperature 0, otherwise temperature,
/// top-k, top-p and min-p, then a draw from a seeded <see cref="Random"/>. One instance per generation call: it owns the
/// random stream, so the same seed and logits give the same tokens. This runs once per token beside a GPU decode step of
/// about 2 ms on a 163,840-token vocabulary, so whole-vocabulary passes are vectorised (TensorPrimitives) where they can
/// be, and nothing sorts the vocabulary: top-k keeps a heap of k, top-p gathers the likely tokens before sorting.
/// </summary>
internal sealed class TokenSampler
{
    /// <summary>Weight floors (relative to the best token) tried in turn when gathering the top-p candidates.</summary>
    private static readonly float[] s_weightFloors = [1e-2f, 1e-4f, 1e-6f, 0f];

    private readonly GenerationOptions _options;
    private readonly Random _random;
    private readonly float[] _all;      // [vocab] exp((logit − max) / T) of every token, by id
    private readonly int[] _identity;   // [vocab] 0, 1, 2, …: the candidate ids while every token is one
    private readonly int[] _ids;        // [vocab] candidate ids after a filter (descending weight once sorted)
    private readonly float[] _weights;  // [vocab] their weights
    private readonly PriorityQueue<int, float> _heap = new();

    public TokenSampler(GenerationOptions options, int vocabSize)
    {
        _options = options;
        // System.Random with an explicit seed uses its legacy algorithm, which is the same on every .NET version.
        _random = new Random(options.Seed ?? Random.Shared.Next());
        _all = new float[vocabSize];
        _identity = Enumerable.Range(0, vocabSize).ToArray();
        _ids = new int[vocabSize];
        _weights = new float[vocabSize];
    }

    /// <summary>Chooses a token from <paramref name="logits"/> [vocab], which it modifies (penalty applied in place).</summary>
    /// <param name="logits">One row of logits.</param>
    /// <param name="seen">Tokens the repetition penalty applies to.</param>
    public int Sample(Span<float> logits, IReadOnlySet<int> seen)
    {
        ApplyRepetitionPenalty(logits, seen, _options.RepetitionPenalty);
        if (_options.Temperature == 0)
            return ArgMax(logits);
        var (ids, weights, count) = Filter(logits);
        return Draw(ids, weights, count);
    }

    /// <summary>The distribution <see cref="Sample"/> draws from at a nonzero temperature (no penalty): token → probability.</summary>
    internal Dictionary<int, double> Distribution(ReadOnlySpan<float> logits)
    {
        var (ids, weights, count) = Filter(logits);
        var total = SumInDouble(weights.AsSpan(0, count));
        var distribution = new Dictionary<int, double>(count);
        for (var i = 0; i < count; i++)
            distribution[ids[i]] = weights[i] / total;
        return distribution;
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
    internal static int ArgMax(ReadOnlySpan<float> logits) => TensorPrimitives.IndexOfMax(logits);

    /// <summary>
    /// Applies temperature, top-k, top-p and min-p. Returns the surviving ids and their unnormalised probabilities
    /// (weights, the best being 1) in the first <c>Count</c> entries of the two arrays.
    /// </summary>
    private (int[] Ids, float[] Weights, int Count) Filter(ReadOnlySpan<float> logits)
    {
        var invTemperature = 1f / _options.Temperature;
        int[] ids;
        float[] weights;
        int count;
        if (_options.TopK > 0 && _options.TopK < logits.Length)
        {
            count = SelectTopK(logits, _options.TopK);
            // _weights holds the k logits, descending: turn them into weights relative to the best.
            var max = _weights[0];
            for (var i = 0; i < count; i++)
                _weights[i] = MathF.Exp((_weights[i] - max) * invTemperature);
            (ids, weights) = (_ids, _weights);
            if (_options.TopP < 1)
                count = KeepTopP(weights, count, SumInDouble(weights.AsSpan(0, count)));
        }
        else
        {
            // Weights relative to the best token, so the largest is exp(0) = 1 and nothing overflows.
            TensorPrimitives.Subtract(logits, TensorPrimitives.Max(logits), _all);
            TensorPrimitives.Multiply(_all, invTemperature, _all);
            TensorPrimitives.Exp(_all, _all);
            (ids, weights, count) = (_identity, _all, logits.Length);
            if (_options.TopP < 1)
            {
                var total = SumInDouble(_all);
                count = KeepTopP(_weights, GatherTopMass(total), total);
                (ids, weights) = (_ids, _weights);
            }
        }
        if (_options.MinP > 0)
        {
            count = KeepMinP(ids, weights, count);
            (ids, weights) = (_ids, _weights);
        }
        return (ids, weights, count);
    }

    /// <summary>
    /// Writes the ids of the <paramref name="k"/> largest logits to <see cref="_ids"/> and the logits to
    /// <see cref="_weights"/>, descending. A min-heap of the best k so far costs one comparison per further logit unless
    /// it enters the heap; gathering above a margin and sorting (as top-p does) degrades to sorting the whole vocabulary
    /// when a few strong tokens stand far above the rest.
    /// </summary>
    private int SelectTopK(ReadOnlySpan<float> logits, int k)
    {
        _heap.Clear();
        for (var i = 0; i < k; i++)
            _heap.Enqueue(i, logits[i]);
        for (var i = k; i < logits.Length; i++)
        {
            _heap.TryPeek(out _, out var smallest);
            if (logits[i] > smallest)
                _heap.EnqueueDequeue(i, logits[i]);
        }
        for (var i = k - 1; i >= 0; i--)
        {
            _heap.TryDequeue(out var id, out var logit);
            (_ids[i], _weights[i]) = (id, logit);
        }
        return k;
    }

    /// <summary>
    /// Gathers the tokens of <see cref="_all"/> at or above a weight floor, lowering the floor until they hold TopP of
    /// <paramref name="total"/>, and sorts them by descending weight. Tokens above a floor are a prefix of the descending
    /// order, so the top-p prefix lies inside them; usually the first floor leaves a few hundred tokens to sort instead
    /// of the whole vocabulary.
    /// </summary>
    private int GatherTopMass(double total)
    {
        var count = 0;
        foreach (var floor in s_weightFloors)
        {
            count = Gather(_all, floor, out var mass);
            if (mass >= _options.TopP * total)
                break;
        }
        SortDescending(count);
        return count;
    }

    /// <summary>Copies the ids and values of <paramref name="values"/> at or above <paramref name="floor"/> to <see cref="_ids"/>/<see cref="_weights"/>.</summary>
    private int Gather(ReadOnlySpan<float> values, float floor, out double sum)
    {
        var count = 0;
        sum = 0;
        for (var i = 0; i < values.Length; i++)
        {
            var v = values[i];
            if (v < floor)
                continue;
            _ids[count] = i;
            _weights[count++] = v;
            sum += v;
        }
        return count;
    }

    /// <summary>Sorts the first <paramref name="count"/> gathered candidates by descending value.</summary>
    private void SortDescending(int count)
    {
        var values = _weights.AsSpan(0, count);
        var ids = _ids.AsSpan(0, count);
        values.Sort(ids);
        values.Reverse();
        ids.Reverse();
    }

    /// <summary>Keeps the shortest prefix of the sorted candidates whose weights reach TopP of <paramref name="total"/>.</summary>
    private int KeepTopP(float[] weights, int count, double total)
    {
        var threshold = _options.TopP * total;
        double mass = 0;
        for (var i = 0; i < count; i++)
        {
            mass += weights[i];
            if (mass >= threshold)
                return i + 1;
        }
        return count;
    }

    /// <summary>Copies the candidates at least MinP as likely as the best one to <see cref="_ids"/>/<see cref="_weights"/> (order kept).</summary>
    private int KeepMinP(int[] ids, float[] weights, int count)
    {
        var threshold = _options.MinP * TensorPrimitives.Max(weights.AsSpan(0, count));
        var kept = 0;
        for (var i = 0; i < count; i++)
        {
            if (weights[i] < threshold)
                continue;
            _ids[kept] = ids[i];
            _weights[kept++] = weights[i];
        }
        return kept;
    }

    /// <summary>Draws one candidate with probability proportional to its weight.</summary>
    private int Draw(int[] ids, float[] weights, int count)
    {
        var target = _random.NextDouble() * SumInDouble(weights.AsSpan(0, count));
        for (var i = 0; i < count; i++)
        {
            target -= weights[i];
            if (target < 0)
                return ids[i];
        }
        return ids[count - 1]; // rounding left target at ~0 after the last weight
    }

    /// <summary>
    /// Sum in double: a float sum over 163,840 weights drifts by about 1e-6, enough to move which token sits at the top-p
    /// boundary. Four accumulators keep the additions independent, so this costs little more than the float sum.
    /// </summary>
    private static double SumInDouble(ReadOnlySpan<float> values)
    {
        double a = 0, b = 0, c = 0, d = 0;
        var i = 0;
        for (; i + 4 <= values.Length; i += 4)
        {
            a += values[i];
            b += values[i + 1];
            c += values[i + 2];
            d += values[i + 3];
        }
        for (; i < values.Length; i++)
            a += values[i];
        return a + b + c + d;
    }
}
