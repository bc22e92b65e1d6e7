using KimiLinear.Backends;
using KimiLinear.Backends.Cpu;
using KimiLinear.Configuration;

namespace KimiLinear.Tests.Model;

/// <summary>
/// A configuration unlike the golden model's (odd head dims, conv width 3, grouped routing, no shared expert, no dense
/// layer, tied embeddings, MLA first) with random weights: the prefill and decode paths must still agree.
/// </summary>
public sealed class SyntheticModelTests
{
    internal const string OddConfig = """
        {"hidden_size":96,"num_hidden_layers":4,"vocab_size":301,"rms_norm_eps":1e-6,"max_position_embeddings":4096,
         "linear_attn_config":{"full_attn_layers":[1,4],"kda_layers":[2,3],"head_dim":40,"num_heads":3,"short_conv_kernel_size":3},
         "mla_use_nope":true,"q_lora_rank":null,"num_attention_heads":2,"kv_lora_rank":40,"qk_nope_head_dim":24,
         "qk_rope_head_dim":8,"v_head_dim":20,"intermediate_size":64,"first_k_dense_replace":0,"moe_layer_freq":1,
         "num_experts":8,"num_experts_per_token":3,"moe_intermediate_size":24,"num_shared_experts":0,
         "num_expert_group":4,"topk_group":2,"moe_renormalize":true,"routed_scaling_factor":1.5,"tie_word_embeddings":true}
        """;

    [Fact]
    public void OddConfigurationPrefillEqualsDecodeSteps()
    {
        using var model = KimiModel.CreateSynthetic(KimiConfig.Parse(OddConfig), seed: 7);
        var random = new Random(3);
        var ids = Enumerable.Range(0, 70).Select(_ => random.Next(301)).ToArray();
        using var whole = model.CreateSession();
        var expected = whole.Forward(ids);
        Assert.All(expected, v => Assert.True(float.IsFinite(v)));
        using var stepped = model.CreateSession();
        stepped.Forward(ids.AsSpan(0, 60));
        for (int t = 60; t < ids.Length; t++)
            TensorAssert.Close(stepped.Forward(ids.AsSpan(t, 1)), expected.AsSpan(t * 301, 301), 1e-5, $"position {t}");
    }

    [Fact]
    public void GroupedRoutingKeepsOnlyTheBestGroups()
    {
        var backend = new CpuBackend();
        var logits = backend.Allocate(1, 8);
        // sigmoid scores; groups of 2: {0,1} {2,3} {4,5} {6,7}. Expert 6 alone is best, but group {2,3} has the best pair.
        float[] raw = [0.0f, 0.1f, 2.0f, 2.0f, -1f, -1f, 3.0f, -3.0f];
        backend.Upload(raw, logits);
        var experts = new int[3];
        var weights = new float[3];
        backend.MoeRoute(logits, new float[8], new MoeRouting(3, 4, 2, Renormalize: true, ScalingFactor: 2f, BiasedWeights: false), experts, weights);
        // group sums: {0,1} 0.5+0.525, {2,3} 1.76, {4,5} 0.54, {6,7} 0.953+0.047 = 1.0 → keep {2,3} and {0,1}
        Assert.Equal([2, 3, 1], experts);
        float s2 = 1 / (1 + MathF.Exp(-2f)), s1 = 1 / (1 + MathF.Exp(-0.1f));
        Assert.Equal(s2 / (2 * s2 + s1) * 2, weights[0], 5);
        Assert.Equal(s1 / (2 * s2 + s1) * 2, weights[2], 5);
    }

    [Fact]
    public void CorrectionBiasChoosesButDoesNotWeigh()
    {
        var backend = new CpuBackend();
        var logits = backend.Allocate(1, 4);
        backend.Upload([1f, 0f, 0f, -1f], logits);
        float[] bias = [0f, 0f, 0f, 5f];
        var experts = new int[2];
        var plain = new float[2];
        var biased = new float[2];
        backend.MoeRoute(logits, bias, new MoeRouting(2, 1, 1, true, 1f, BiasedWeights: false), experts, plain);
        Assert.Equal([3, 0], experts);
        float s3 = 1 / (1 + MathF.Exp(1f)), s0 = 1 / (1 + MathF.Exp(-1f));
        Assert.Equal(s3 / (s3 + s0), plain[0], 5);
        backend.MoeRoute(logits, bias, new MoeRouting(2, 1, 1, true, 1f, BiasedWeights: true), experts, biased);
        Assert.Equal((s3 + 5) / (s3 + 5 + s0), biased[0], 5);
    }
}
