using KimiLinear.Backends;
using KimiLinear.Configuration;
using KimiLinear.Loading;

namespace KimiLinear.Layers;

/// <summary>
/// Mixture of experts (spec §4): a sigmoid router whose correction bias only chooses the experts, grouped top-k,
/// renormalised and scaled weights, SwiGLU experts, plus the always-on shared expert.
/// </summary>
internal sealed class MoeBlock
{
    private readonly MoeExperts _experts;        // the router [E, D], E experts of width F, the correction bias, the routing rule
    private readonly DenseMlp? _sharedExpert;    // width S·F

    /// <summary>The routed experts with their routing rule.</summary>
    public MoeExperts Experts => _experts;

    public MoeBlock(IWeightSource weights, string prefix, KimiConfig config, bool biasedRoutingWeights)
    {
        int d = config.HiddenSize, e = config.NumExperts, f = config.MoeIntermediateSize;
        var router = weights.Matrix(prefix + "gate.weight", e, d);
        var bias = weights.Floats(prefix + "gate.e_score_correction_bias", e);
        var (gate, up, down) = (new WeightMatrix[e], new WeightMatrix[e], new WeightMatrix[e]);
        for (int i = 0; i < e; i++)
        {
            string expert = $"{prefix}experts.{i}.";
            gate[i] = weights.Matrix(expert + "w1.weight", f, d);
            up[i] = weights.Matrix(expert + "w3.weight", f, d);
            down[i] = weights.Matrix(expert + "w2.weight", d, f);
        }
        var routing = new MoeRouting(config.ExpertsPerToken, config.NumExpertGroups, config.TopKGroups,
            config.MoeRenormalize, config.RoutedScalingFactor, biasedRoutingWeights);
        _experts = new MoeExperts(router, gate, up, down, bias, routing);
        if (config.NumSharedExperts > 0)
            _sharedExpert = DenseMlp.Load(weights, prefix + "shared_experts.", d, f * config.NumSharedExperts);
    }

    /// <summary>x: [T, D] (after post_attention_layernorm) → [T, D].</summary>
    public Tensor Forward(IKimiBackend backend, Tensor x)
    {
        var output = _sharedExpert?.Forward(backend, x) ?? Zeros(backend, x.Rows, x.Cols); // [T, D]
        backend.MoeExperts(x, _experts, output);
        return output;
    }

    private static Tensor Zeros(IKimiBackend backend, int rows, int cols)
    {
        var zeros = backend.Allocate(rows, cols);
        backend.Clear(zeros);
        return zeros;
    }
}
