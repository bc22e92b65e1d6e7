using BenchmarkDotNet.Attributes;
using KimiLinear.Configuration;

namespace KimiLinear.Benchmarks;

/// <summary>
/// Whole-model CPU speed: prefill of a prompt from an empty session, and decode steps after a prompt, on the golden tiny
/// model (4 layers, hidden 256) and on a randomly initialised ~120M-parameter Kimi Linear (8 layers, hidden 1024,
/// 6 KDA + 2 MLA, 8 experts top-2 + shared). Tokens/s = tokens / mean time.
/// </summary>
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 6)]
public class CpuEngineBenchmarks
{
    /// <summary>~120M parameters: 33.6M embeddings + lm_head, 27M KDA, 3.8M MLA, 8.7M dense MLP, 49M MoE.</summary>
    private const string Synthetic120M = """
        {"hidden_size":1024,"num_hidden_layers":8,"vocab_size":16384,"rms_norm_eps":1e-5,"model_max_length":65536,
         "linear_attn_config":{"full_attn_layers":[4,8],"kda_layers":[1,2,3,5,6,7],"head_dim":128,"num_heads":8,"short_conv_kernel_size":4},
         "mla_use_nope":true,"q_lora_rank":null,"num_attention_heads":8,"kv_lora_rank":256,"qk_nope_head_dim":64,
         "qk_rope_head_dim":32,"v_head_dim":64,"intermediate_size":2816,"first_k_dense_replace":1,"moe_layer_freq":1,
         "num_experts":8,"num_experts_per_token":2,"moe_intermediate_size":256,"num_shared_experts":1,
         "num_expert_group":1,"topk_group":1,"moe_renormalize":true,"routed_scaling_factor":2.446,"tie_word_embeddings":false}
        """;

    private const int DecodeSteps = 16;

    private KimiModel _model = null!;
    private int[] _prompt = null!;
    private byte[] _promptState = null!;
    private KimiSession _session = null!;

    [Params("tiny", "synthetic-120M")]
    public string Model { get; set; } = "tiny";

    [Params(128)]
    public int PromptTokens { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _model = Model == "tiny"
            ? KimiModel.Load(Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny"))
            : KimiModel.CreateSynthetic(KimiConfig.Parse(Synthetic120M), seed: 1);
        var random = new Random(5);
        _prompt = Enumerable.Range(0, PromptTokens).Select(_ => random.Next(_model.Config.VocabSize)).ToArray();
        _session = _model.CreateSession();
        _session.Forward(_prompt);
        using var saved = new MemoryStream();
        _session.SaveState(saved);
        _promptState = saved.ToArray();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _session.Dispose();
        _model.Dispose();
    }

    /// <summary>Prefill of <see cref="PromptTokens"/> tokens from an empty session.</summary>
    [Benchmark]
    public float[] Prefill()
    {
        using var session = _model.CreateSession();
        return session.Forward(_prompt);
    }

    /// <summary><see cref="DecodeSteps"/> single-token steps after the prompt (state restored first, a small cost).</summary>
    [Benchmark(OperationsPerInvoke = DecodeSteps)]
    public float[] DecodeStep()
    {
        _session.RestoreState(new MemoryStream(_promptState));
        float[] logits = [];
        for (int i = 0; i < DecodeSteps; i++)
            logits = _session.Forward([_prompt[i]]);
        return logits;
    }
}
