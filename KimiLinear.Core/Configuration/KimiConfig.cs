
namespace KimiLinear.Configuration;

/// <summary>Which token mixer a decoder layer uses.</summary>
public enum LayerKind
{
    /// <summary>Kimi Delta Attention (linear attention with a fixed-size recurrent state).</summary>
    Kda,
    /// <summary>Multi-head latent attention over the whole context, without positional encoding.</summary>
    Mla,
}

/// <summary>
/// A Kimi Linear checkpoint's <c>config.json</c>, read with the published field names and validated for everything the
/// engine uses. Layer indices in <c>linear_attn_config</c> are 1-based in the file; <see cref="LayerKinds"/> is 0-based.
/// </summary>
public sealed record KimiConfig
{
    /// <summary>Model width d (2304 for Kimi-Linear-48B-A3B).</summary>
    public required int HiddenSize { get; init; }
    /// <summary>Rows of the embedding and lm_head (163,840).</summary>
    public required int VocabSize { get; init; }
    /// <summary>Token-mixer kind of each decoder layer, 0-based.</summary>
    public required IReadOnlyList<LayerKind> LayerKinds { get; init; }
    /// <summary>Epsilon of every RMSNorm except the MLA latent norm.</summary>
    public required float RmsNormEps { get; init; }
    /// <summary>Longest sequence the model supports (<c>model_max_length</c>, else <c>max_position_embeddings</c>).</summary>
    public required int MaxSequenceLength { get; init; }
    /// <summary>False: a separate lm_head matrix.</summary>
    public required bool TieWordEmbeddings { get; init; }

    /// <summary>KDA heads H.</summary>
    public required int KdaHeads { get; init; }
    /// <summary>KDA key and value head dim (K = V).</summary>
    public required int KdaHeadDim { get; init; }
    /// <summary>KDA short-conv kernel width W.</summary>
    public required int KdaConvSize { get; init; }

    /// <summary>MLA heads.</summary>
    public required int MlaHeads { get; init; }
    /// <summary>Latent KV width (512).</summary>
    public required int KvLoraRank { get; init; }
    /// <summary>Query/key dims that get no rotation in the original design (128).</summary>
    public required int QkNopeHeadDim { get; init; }
    /// <summary>Query/key dims shared by all heads through k_pe (64). Never rotated: Kimi Linear is NoPE.</summary>
    public required int QkRopeHeadDim { get; init; }
    /// <summary>MLA value head dim (128).</summary>
    public required int VHeadDim { get; init; }

    /// <summary>Dense SwiGLU width of the first <see cref="FirstDenseLayers"/> layers.</summary>
    public required int IntermediateSize { get; init; }
    /// <summary>Layers [0, FirstDenseLayers) use the dense MLP; the rest MoE.</summary>
    public required int FirstDenseLayers { get; init; }
    /// <summary>Routed experts E.</summary>
    public required int NumExperts { get; init; }
    /// <summary>Experts chosen per token.</summary>
    public required int ExpertsPerToken { get; init; }
    /// <summary>Expert SwiGLU width.</summary>
    public required int MoeIntermediateSize { get; init; }
    /// <summary>Shared experts (their SwiGLU width is this × <see cref="MoeIntermediateSize"/>).</summary>
    public required int NumSharedExperts { get; init; }
    /// <summary>Expert groups for grouped top-k.</summary>
    public required int NumExpertGroups { get; init; }
    /// <summary>Groups kept by grouped top-k.</summary>
    public required int TopKGroups { get; init; }
    /// <summary>Whether the chosen weights are normalised to sum 1.</summary>
    public required bool MoeRenormalize { get; init; }
    /// <summary>Multiplier of the routed sum.</summary>
    public required float RoutedScalingFactor { get; init; }

    /// <summary>Beginning-of-sequence id, if the checkpoint names one.</summary>
    public int? BosTokenId { get; init; }
    /// <summary>End ids the checkpoint names (<c>eos_token_id</c>, a number or a list).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    /// <summary>Padding id, if any.</summary>
    public int? PadTokenId { get; init; }

    /// <summary>Decoder layers.</summary>
    public int NumLayers => LayerKinds.Count;
    /// <summary>KDA projection width H·K (4096 for the real model, wider than the model).</summary>
    public int KdaProjectionSize => KdaHeads * KdaHeadDim;
    /// <summary>MLA query/key head dim (nope + rope = 192).</summary>
    public int QkHeadDim => QkNopeHeadDim + QkRopeHeadDim;
    /// <summary>Values cached per token per MLA layer: latent + k_pe (576).</summary>
    public int MlaLatentSize => KvLoraRank + QkRopeHeadDim;
    /// <summary>Whether layer <paramref name="layer"/> (0-based) uses MoE rather than the dense MLP.</summary>
    public bool IsMoeLayer(int layer) => layer >= FirstDenseLayers;

    /// <summary>Reads and validates <c>config.json</c> in <paramref name="modelDirectory"/>.</summary>
    public static KimiConfig Load(string modelDirectory)
    {
        var path = Path.Combine(modelDirectory, "config.json");
        if (!File.Exists(path))
            throw new FileNotFoundException($"No config.json in '{modelDirectory}': a Kimi Linear checkpoint directory holds config.json and its safetensors.", path);
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses and validates config.json text; <paramref name="source"/> names it in errors.</summary>
    public static KimiConfig Parse(string json, string source = "config.json") =>
        ConfigReader.Read(json, source);
}
