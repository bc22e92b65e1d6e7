using KimiLinear.Backends;
using KimiLinear.Configuration;
using KimiLinear.Loading;

namespace KimiLinear.Layers;

/// <summary>
/// Mixture of experts (spec §4): a sigmoid router whose correction bias only chooses the experts, grouped top-k,
/// renormalised and scaled weights, SwiGLU experts, plus the always-on shared expert. Tokens are grouped per expert so
/// that each chosen expert runs once over all its tokens.
/// </summary>
internal sealed class MoeBlock
{
    private readonly WeightMatrix _router;       // gate.weight [E, D]
    private readonly float[] _correctionBias;    // e_score_correction_bias [E] (selection only, by default)
    private readonly DenseMlp[] _experts;        // E experts of width F (w1 = gate, w3 = up, w2 = down)
    private readonly DenseMlp? _sharedExpert;    // width S·F
    private readonly MoeRouting _routing;

    public MoeBlock(IWeightSource weights, string prefix, KimiConfig config, bool biasedRoutingWeights)
    {
        int d = config.HiddenSize, e = config.NumExperts, f = config.MoeIntermediateSize;
        _router = weights.Matrix(prefix + "gate.weight", e, d);
        _correctionBias = weights.Floats(prefix + "gate.e_score_correction_bias", e);
        _experts = new DenseMlp[e];
        for (int i = 0; i < e; i++)
        {
            string expert = $"{prefix}experts.{i}.";
            _experts[i] = new DenseMlp(
                weights.Matrix(expert + "w1.weight", f, d),
                weights.Matrix(expert + "w3.weight", f, d),
                weights.Matrix(expert + "w2.weight", d, f));
        }
        if (config.NumSharedExperts > 0)
            _sharedExpert = DenseMlp.Load(weights, prefix + "shared_experts.", d, f * config.NumSharedExperts);
        _routing = new MoeRouting(config.ExpertsPerToken, config.NumExpertGroups, config.TopKGroups,
            config.MoeRenormalize, config.RoutedScalingFactor, biasedRoutingWeights);
    }

    /// <summary>x: [T, D] (after post_attention_layernorm) → [T, D].</summary>
    public Tensor Forward(IKimiBackend backend, Tensor x)
    {
        int tokens = x.Rows, active = _routing.ExpertsPerToken;
        var logits = backend.Allocate(tokens, _router.Rows); // [T, E]
        backend.MatMul(x, _router, logits);
        var chosen = new int[tokens * active];               // [T, A]
        var weights = new float[tokens * active];            // [T, A]
        backend.MoeRoute(logits, _correctionBias, _routing, chosen, weights);

        var output = _sharedExpert?.Forward(backend, x) ?? backend.Allocate(tokens, x.Cols);
        foreach (var group in Enumerable.Range(0, chosen.Length).GroupBy(i => chosen[i]).OrderBy(g => g.Key))
        {
            int[] rows = group.Select(i => i / active).ToArray();
            float[] scales = group.Select(i => weights[i]).ToArray();
            var selected = backend.Allocate(rows.Length, x.Cols); // [tokens routed to this expert, D]
            backend.GatherRows(x, rows, selected);
            backend.ScatterAddRows(_experts[group.Key].Forward(backend, selected), rows, scales, output);
        }
        return output;
    }
}
