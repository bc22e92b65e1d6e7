using System.Text.Json;
using System.Text.Json.Nodes;

namespace KimiLinear.Configuration;

/// <summary>
/// Reads config.json with the published Kimi field names and checks every value the engine depends on. Each error names
/// the source file, the field, the value found and what is allowed.
/// </summary>
internal sealed class ConfigReader
{
    private readonly JsonObject _root;
    private readonly string _source;

    private ConfigReader(JsonObject root, string source) => (_root, _source) = (root, source);

    public static KimiConfig Read(string json, string source)
    {
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON ({e.Message}).", e);
        }
        if (node is not JsonObject root)
            throw new InvalidDataException($"{source}: expected a JSON object at the top level.");
        return new ConfigReader(root, source).Build();
    }

    private KimiConfig Build()
    {
        int hidden = Int("hidden_size", min: 1);
        int layers = Int("num_hidden_layers", min: 1);
        int vocab = Int("vocab_size", min: 1);

        var linear = _root["linear_attn_config"] as JsonObject
            ?? throw Error("linear_attn_config", _root["linear_attn_config"], "an object with kda_layers, full_attn_layers, num_heads, head_dim, short_conv_kernel_size");
        var kinds = LayerKindsFrom(linear, layers);
        int kdaHeads = Int(linear, "linear_attn_config.num_heads", "num_heads", min: 1);
        int kdaHeadDim = Int(linear, "linear_attn_config.head_dim", "head_dim", min: 1);
        int convSize = Int(linear, "linear_attn_config.short_conv_kernel_size", "short_conv_kernel_size", min: 1, max: 16);

        if (!(Bool("mla_use_nope", fallback: false)))
            throw Error("mla_use_nope", _root["mla_use_nope"], "true (Kimi Linear's MLA layers use no positional encoding; rotary MLA is not supported)");
        if (_root["q_lora_rank"] is { } qLora && qLora.GetValueKind() != JsonValueKind.Null)
            throw Error("q_lora_rank", qLora, "null (Kimi Linear projects queries with a plain q_proj)");

        int experts = Int("num_experts", min: 1);
        int topK = Int("num_experts_per_token", min: 1);
        if (topK > experts)
            throw Error("num_experts_per_token", topK, $"at most num_experts = {experts}");
        // Without use_grouped_topk the group fields are ignored: plain top-k over all experts.
        bool grouped = Bool("use_grouped_topk", fallback: true);
        int groups = grouped ? Int("num_expert_group", fallback: 1, min: 1) : 1;
        if (experts % groups != 0)
            throw Error("num_expert_group", groups, $"a divisor of num_experts = {experts}");
        int topKGroups = grouped ? Int("topk_group", fallback: groups, min: 1) : 1;
        if (topKGroups > groups)
            throw Error("topk_group", topKGroups, $"at most num_expert_group = {groups}");
        if (groups > 1 && topK > topKGroups * (experts / groups))
            throw Error("num_experts_per_token", topK, $"at most topk_group × experts per group = {topKGroups * (experts / groups)}");
        string activation = String("moe_router_activation_func", fallback: "sigmoid");
        if (activation != "sigmoid")
            throw Error("moe_router_activation_func", activation, "\"sigmoid\"");
        string act = String("hidden_act", fallback: "silu");
        if (act != "silu")
            throw Error("hidden_act", act, "\"silu\"");
        int moeFreq = Int("moe_layer_freq", fallback: 1, min: 1);
        if (moeFreq != 1)
            throw Error("moe_layer_freq", moeFreq, "1 (every layer after first_k_dense_replace is MoE)");
        int firstDense = Int("first_k_dense_replace", fallback: 0, min: 0, max: layers);

        int maxLength = _root.ContainsKey("model_max_length")
            ? Int("model_max_length", min: 1)
            : Int("max_position_embeddings", min: 1);

        var config = new KimiConfig
        {
            HiddenSize = hidden,
            VocabSize = vocab,
            LayerKinds = kinds,
            RmsNormEps = Float("rms_norm_eps", min: 0f, exclusiveMin: true),
            MaxSequenceLength = maxLength,
            TieWordEmbeddings = Bool("tie_word_embeddings", fallback: false),
            KdaHeads = kdaHeads,
            KdaHeadDim = kdaHeadDim,
            KdaConvSize = convSize,
            MlaHeads = Int("num_attention_heads", min: 1),
            KvLoraRank = Int("kv_lora_rank", min: 1),
            QkNopeHeadDim = Int("qk_nope_head_dim", min: 1),
            QkRopeHeadDim = Int("qk_rope_head_dim", min: 0),
            VHeadDim = Int("v_head_dim", min: 1),
            IntermediateSize = Int("intermediate_size", min: 1),
            FirstDenseLayers = firstDense,
            NumExperts = experts,
            ExpertsPerToken = topK,
            MoeIntermediateSize = Int("moe_intermediate_size", min: 1),
            NumSharedExperts = Int("num_shared_experts", fallback: 0, min: 0),
            NumExpertGroups = groups,
            TopKGroups = topKGroups,
            MoeRenormalize = Bool("moe_renormalize", fallback: true),
            RoutedScalingFactor = Float("routed_scaling_factor", fallback: 1f, min: 0f, exclusiveMin: true),
            BosTokenId = OptionalInt("bos_token_id"),
            EosTokenIds = IntList("eos_token_id"),
            PadTokenId = OptionalInt("pad_token_id"),
        };
        foreach (var eos in config.EosTokenIds)
            if (eos < 0 || eos >= vocab)
                throw Error("eos_token_id", eos, $"an id in [0, vocab_size = {vocab})");
        return config;
    }

    /// <summary>Both lists are 1-based; together they must name every layer exactly once.</summary>
    private LayerKind[] LayerKindsFrom(JsonObject linear, int layers)
    {
        var kinds = new LayerKind?[layers];
        void Mark(string field, LayerKind kind)
        {
            if (linear[field] is not JsonArray list)
                throw Error($"linear_attn_config.{field}", linear[field], "a list of 1-based layer numbers");
            foreach (var item in list)
            {
                if (item is not JsonValue value || !value.TryGetValue(out int oneBased) || oneBased < 1 || oneBased > layers)
                    throw Error($"linear_attn_config.{field}", item, $"1-based layer numbers in [1, num_hidden_layers = {layers}]");
                if (kinds[oneBased - 1] is not null)
                    throw Error($"linear_attn_config.{field}", oneBased, "each layer listed once in kda_layers or full_attn_layers, not twice");
                kinds[oneBased - 1] = kind;
            }
        }
        Mark("kda_layers", LayerKind.Kda);
        Mark("full_attn_layers", LayerKind.Mla);
        int missing = Array.IndexOf(kinds, null);
        if (missing >= 0)
            throw Error("linear_attn_config", $"layer {missing + 1} (1-based) in neither list", "every layer 1..num_hidden_layers in kda_layers or full_attn_layers");
        return kinds.Select(k => k!.Value).ToArray();
    }

    private InvalidDataException Error(string field, object? value, string allowed)
    {
        string shown = value switch
        {
            null => "missing",
            JsonNode n => n.ToJsonString(),
            string s => s,
            _ => Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture) ?? "?",
        };
        return new InvalidDataException($"{_source}: field '{field}' is {shown}; expected {allowed}.");
    }

    private int Int(string field, int? fallback = null, int min = int.MinValue, int max = int.MaxValue) =>
        Int(_root, field, field, fallback, min, max);

    private int Int(JsonObject obj, string fullName, string field, int? fallback = null, int min = int.MinValue, int max = int.MaxValue)
    {
        var node = obj[field];
        int value;
        if (node is null || node.GetValueKind() == JsonValueKind.Null)
        {
            value = fallback ?? throw Error(fullName, null, "an integer");
        }
        else if (node is not JsonValue v || !v.TryGetValue(out value))
        {
            if (node is JsonValue d && d.TryGetValue(out double dbl) && dbl == Math.Floor(dbl) && dbl >= int.MinValue && dbl <= int.MaxValue)
                value = (int)dbl;
            else
                throw Error(fullName, node, "an integer");
        }
        if (value < min || value > max)
            throw Error(fullName, value, max == int.MaxValue ? $"an integer ≥ {min}" : $"an integer in [{min}, {max}]");
        return value;
    }

    private int? OptionalInt(string field) =>
        _root[field] is null || _root[field]!.GetValueKind() == JsonValueKind.Null ? null : Int(field);

    private int[] IntList(string field) => _root[field] switch
    {
        null => [],
        JsonArray list => list.Select(n => n is JsonValue v && v.TryGetValue(out int i) ? i : throw Error(field, n, "an integer or a list of integers")).ToArray(),
        var n when n.GetValueKind() == JsonValueKind.Null => [],
        _ => [Int(field)],
    };

    private float Float(string field, float? fallback = null, float min = float.MinValue, bool exclusiveMin = false)
    {
        var node = _root[field];
        double value;
        if (node is null || node.GetValueKind() == JsonValueKind.Null)
            value = fallback ?? throw Error(field, null, "a number");
        else if (node is not JsonValue v || !v.TryGetValue(out value))
            throw Error(field, node, "a number");
        if (double.IsNaN(value) || (exclusiveMin ? value <= min : value < min))
            throw Error(field, value, exclusiveMin ? $"a number > {min}" : $"a number ≥ {min}");
        return (float)value;
    }

    private bool Bool(string field, bool fallback)
    {
        var node = _root[field];
        if (node is null || node.GetValueKind() == JsonValueKind.Null)
            return fallback;
        if (node is JsonValue v && v.TryGetValue(out bool b))
            return b;
        throw Error(field, node, "true or false");
    }

    private string String(string field, string fallback)
    {
        var node = _root[field];
        if (node is null || node.GetValueKind() == JsonValueKind.Null)
            return fallback;
        if (node is JsonValue v && v.TryGetValue(out string? s))
            return s;
        throw Error(field, node, "a string");
    }
}
