using KimiLinear.Backends;
using KimiLinear.Configuration;
using KimiLinear.Loading;
using KimiLinear.State;

namespace KimiLinear.Layers;

/// <summary>
/// One pre-norm block: h += mixer(RMSNorm(h)); h += ffn(RMSNorm(h)). The token mixer is KDA or MLA, the channel mixer
/// the dense MLP (first layers) or MoE. The residual stream stays fp32.
/// </summary>
internal sealed class DecoderLayer
{
    private readonly int _index;                  // this layer's entry in each session's state
    private readonly float _eps;
    private readonly float[] _inputNorm;          // input_layernorm [D]
    private readonly float[] _postAttentionNorm;  // post_attention_layernorm [D]
    private readonly DenseMlp? _mlp;
    private readonly MoeBlock? _moe;

    /// <summary>The KDA token mixer, or null for an MLA layer.</summary>
    public KdaLayer? Kda { get; }
    /// <summary>The MoE experts (routed and shared), or null for a dense-MLP layer.</summary>
    public MoeExperts? Experts => _moe?.Experts;
    /// <summary>The MLA token mixer, or null for a KDA layer.</summary>
    public MlaLayer? Mla { get; }

    public DecoderLayer(IWeightSource weights, int index, KimiConfig config, KimiModelOptions options)
    {
        _index = index;
        string prefix = $"model.layers.{index}.";
        int d = config.HiddenSize;
        _eps = config.RmsNormEps;
        _inputNorm = weights.Floats(prefix + "input_layernorm.weight", d);
        _postAttentionNorm = weights.Floats(prefix + "post_attention_layernorm.weight", d);
        if (config.LayerKinds[index] == LayerKind.Kda)
            Kda = new KdaLayer(weights, prefix + "self_attn.", config);
        else
            Mla = new MlaLayer(weights, prefix + "self_attn.", config);
        if (config.IsMoeLayer(index))
            _moe = new MoeBlock(weights, prefix + "block_sparse_moe.", config, options.BiasedRoutingWeights);
        else
            _mlp = DenseMlp.Load(weights, prefix + "mlp.", d, config.IntermediateSize);
    }

    /// <summary>
    /// Updates the residual stream <paramref name="hidden"/> [T, D] in place and each sequence's state for this layer;
    /// the step's rows belong to the sequences of <paramref name="batch"/>.
    /// </summary>
    public void Forward(IKimiBackend backend, Tensor hidden, IReadOnlyList<SequenceRows> batch, bool absorbedAttention)
    {
        using var scratch = backend.BeginScratch(); // everything but the residual stream dies with the layer
        MixChannels(backend, MixTokens(backend, hidden, batch, absorbedAttention), hidden);
    }

    /// <summary>
    /// The block's first half, h += mixer(RMSNorm(h)), with this layer's state; returns RMSNorm(h) [T, D], the channel
    /// mixer's input. Tensors it allocates belong to the caller's scratch scope.
    /// </summary>
    public Tensor MixTokens(IKimiBackend backend, Tensor hidden, IReadOnlyList<SequenceRows> batch, bool absorbedAttention)
    {
        // The mixer's first projections apply the input norm (a backend may normalise as they load the row).
        var input = new RmsNormed(hidden, _inputNorm, _eps);
        var mixed = Kda is not null
            ? Kda.Forward(backend, input, batch, _index)
            : Mla!.Forward(backend, input, batch, _index, absorbedAttention);
        var normed = backend.Allocate(hidden.Rows, hidden.Cols);
        backend.AddRmsNorm(hidden, mixed, _postAttentionNorm, _eps, normed);
        return normed;
    }

    /// <summary>The block's second half, h += ffn(<paramref name="normed"/>) (the MoE or dense MLP).</summary>
    public void MixChannels(IKimiBackend backend, Tensor normed, Tensor hidden)
    {
        if (_moe is not null)
            _moe.Forward(backend, normed, hidden); // adds into the residual stream itself
        else
            backend.Add(hidden, _mlp!.Forward(backend, normed));
    }
}
