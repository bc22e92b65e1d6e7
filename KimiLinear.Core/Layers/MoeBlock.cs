using KimiLinear.Backends;
using KimiLinear.Configuration;
using KimiLinear.Loading;

namespace KimiLinear.Layers;

/// <summary>
/// Mixture of experts (spec §4): a sigmoid router whose correction bias only chooses the experts, grouped top-k,
/// renormalised and scaled weights, SwiGLU experts, plus the always-on shared expert. Its output goes straight into the
/// residual stream (one pass on a GPU instead of an output tensor and an add).
/// </summary>
internal sealed class MoeBlock
{
    private readonly MoeExperts _experts; // the router [E, D], E experts of width F, the correction bias, the routing rule, the shared expert (width S·F)

    /// <summary>The experts with their routing rule.</summary>
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
        var shared = config.NumSharedExperts > 0
            ? DenseMlp.Load(weights, prefix + "shared_experts.", d, f * config.NumSharedExperts)
            : null;
        _experts = new MoeExperts(router, gate, up, down, bias, routing, shared);
    }

    /// <summary>residual += MoE(x). x: [T, D] (after post_attention_layernorm); residual: [T, D], the residual stream.</summary>
    public void Forward(IKimiBackend backend, Tensor x, Tensor residual) => backend.MoeExperts(x, _experts, residual);
}
