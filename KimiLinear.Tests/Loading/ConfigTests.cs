using System.Text.Json.Nodes;
using KimiLinear.Configuration;

namespace KimiLinear.Tests.Loading;

public sealed class ConfigTests
{
    private static JsonObject TinyConfig() =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(FixturePaths.TinyModel, "config.json")))!.AsObject();

    [Fact]
    public void ReadsTheTinyConfigWithOneBasedLayerLists()
    {
        var config = KimiConfig.Load(FixturePaths.TinyModel);
        Assert.Equal([LayerKind.Kda, LayerKind.Kda, LayerKind.Kda, LayerKind.Mla], config.LayerKinds);
        Assert.Equal(256, config.HiddenSize);
        Assert.Equal(64, config.KdaHeadDim);
        Assert.Equal(80, config.MlaLatentSize);
        Assert.Equal(2.446f, config.RoutedScalingFactor);
        Assert.Equal([510], config.EosTokenIds);
        Assert.False(config.IsMoeLayer(0));
        Assert.True(config.IsMoeLayer(1));
    }

    [Fact]
    public void ReadsThePublishedKimiLinear48BConfig()
    {
        // The published config.json (spec §1), abridged to the fields the engine reads.
        const string json = """
            {"hidden_size":2304,"num_hidden_layers":27,"vocab_size":163840,"rms_norm_eps":1e-05,"model_max_length":1048576,
             "linear_attn_config":{"full_attn_layers":[4,8,12,16,20,24,27],"head_dim":128,
               "kda_layers":[1,2,3,5,6,7,9,10,11,13,14,15,17,18,19,21,22,23,25,26],"num_heads":32,"short_conv_kernel_size":4},
             "mla_use_nope":true,"q_lora_rank":null,"num_attention_heads":32,"kv_lora_rank":512,"qk_nope_head_dim":128,
             "qk_rope_head_dim":64,"v_head_dim":128,"intermediate_size":9216,"first_k_dense_replace":1,"moe_layer_freq":1,
             "num_experts":256,"num_experts_per_token":8,"moe_intermediate_size":1024,"num_shared_experts":1,
             "num_expert_group":1,"topk_group":1,"moe_renormalize":true,"moe_router_activation_func":"sigmoid",
             "routed_scaling_factor":2.446,"tie_word_embeddings":false,"bos_token_id":163584,"eos_token_id":163586}
            """;
        var config = KimiConfig.Parse(json);
        Assert.Equal(27, config.NumLayers);
        Assert.Equal(7, config.LayerKinds.Count(k => k == LayerKind.Mla));
        Assert.Equal([3, 7, 11, 15, 19, 23, 26], config.LayerKinds.Select((k, i) => (k, i)).Where(p => p.k == LayerKind.Mla).Select(p => p.i));
        Assert.Equal(576, config.MlaLatentSize);
        Assert.Equal(4096, config.KdaProjectionSize);
        Assert.Equal(1048576, config.MaxSequenceLength);
    }

    public static TheoryData<string, string, string> BadFields => new()
    {
        // (JSON path to change, new value as JSON, text the message must name)
        { "linear_attn_config.kda_layers", "[1, 2, 3, 4]", "each layer listed once" },
        { "linear_attn_config.kda_layers", "[1, 2]", "layer 3 (1-based) in neither list" },
        { "linear_attn_config.kda_layers", "[0, 1, 2]", "1-based layer numbers" },
        { "linear_attn_config.full_attn_layers", "[5]", "1-based layer numbers" },
        { "linear_attn_config.head_dim", "0", "linear_attn_config.head_dim" },
        { "num_experts_per_token", "9", "num_experts_per_token" },
        { "num_expert_group", "3", "a divisor of num_experts" },
        { "topk_group", "2", "topk_group" },
        { "mla_use_nope", "false", "mla_use_nope" },
        { "q_lora_rank", "64", "q_lora_rank" },
        { "hidden_size", "-1", "hidden_size" },
        { "hidden_size", "\"256\"", "hidden_size" },
        { "rms_norm_eps", "0", "rms_norm_eps" },
        { "moe_router_activation_func", "\"softmax\"", "moe_router_activation_func" },
        { "eos_token_id", "512", "eos_token_id" },
        { "kv_lora_rank", "null", "kv_lora_rank" },
    };

    [Theory]
    [MemberData(nameof(BadFields))]
    public void FieldOutOfRangeIsAClearError(string field, string value, string expectedInMessage)
    {
        var root = TinyConfig();
        var parts = field.Split('.');
        var target = parts.Length == 2 ? root[parts[0]]!.AsObject() : root;
        target[parts[^1]] = JsonNode.Parse(value);
        var error = Assert.Throws<InvalidDataException>(() => KimiConfig.Parse(root.ToJsonString(), "test/config.json"));
        Assert.Contains("test/config.json", error.Message);
        Assert.Contains(expectedInMessage, error.Message);
    }

    [Fact]
    public void MissingRequiredFieldNamesIt()
    {
        var root = TinyConfig();
        root.Remove("vocab_size");
        var error = Assert.Throws<InvalidDataException>(() => KimiConfig.Parse(root.ToJsonString()));
        Assert.Contains("'vocab_size' is missing", error.Message);
    }

    [Fact]
    public void MalformedJsonAndMissingFileAreClearErrors()
    {
        Assert.Contains("not valid JSON", Assert.Throws<InvalidDataException>(() => KimiConfig.Parse("{\"hidden_size\": ", "x.json")).Message);
        var dir = Directory.CreateTempSubdirectory("kimi-config-").FullName;
        try
        {
            Assert.Contains("No config.json", Assert.Throws<FileNotFoundException>(() => KimiConfig.Load(dir)).Message);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
