using KimiLinear.Backends;
using KimiLinear.Configuration;
using KimiLinear.Loading;
using KimiLinear.State;

namespace KimiLinear.Layers;

/// <summary>
/// Multi-head latent attention without positional encoding (spec §3): per token a 576-wide latent (c_n | k_pe) is
/// cached; queries attend to it through kv_b_proj, either expanded into per-head keys and values (prefill) or absorbed
/// into the query and output (decode, MQA over the latent).
/// </summary>
internal sealed class MlaLayer
{
    /// <summary>The HF reference builds kv_a_layernorm with the RMSNorm default, not rms_norm_eps.</summary>
    private const float LatentNormEps = 1e-6f;

    private readonly int _heads, _nopeDim, _ropeDim, _valueDim, _rank;

    private readonly WeightMatrix _queryProjection;  // [H·(nope + rope), D]
    private readonly WeightMatrix _latentProjection; // kv_a_proj_with_mqa rows [0, R): [R, D]
    private readonly WeightMatrix _sharedKeyProjection; // kv_a_proj_with_mqa rows [R, R + rope): [rope, D]
    private readonly float[] _latentNorm;            // kv_a_layernorm [R]
    private readonly WeightMatrix _keyValueUp;       // kv_b_proj [H·(nope + V), R]: per head nope key rows, then V value rows
    private readonly WeightMatrix _outputProjection; // [D, H·V]

    public MlaLayer(IWeightSource weights, string prefix, KimiConfig config)
    {
        (_heads, _nopeDim, _ropeDim, _valueDim, _rank) =
            (config.MlaHeads, config.QkNopeHeadDim, config.QkRopeHeadDim, config.VHeadDim, config.KvLoraRank);
        int d = config.HiddenSize;
        _queryProjection = weights.Matrix(prefix + "q_proj.weight", _heads * config.QkHeadDim, d);
        var kvA = weights.Matrix(prefix + "kv_a_proj_with_mqa.weight", _rank + _ropeDim, d);
        _latentProjection = kvA.RowRange(0, _rank);
        _sharedKeyProjection = kvA.RowRange(_rank, _ropeDim);
        _latentNorm = weights.Floats(prefix + "kv_a_layernorm.weight", _rank);
        _keyValueUp = weights.Matrix(prefix + "kv_b_proj.weight", _heads * (_nopeDim + _valueDim), _rank);
        _outputProjection = weights.Matrix(prefix + "o_proj.weight", d, _heads * _valueDim);
    }

    public MlaLayerState CreateState(IKimiBackend backend, int initialCapacity) =>
        new(backend.AllocateCache(initialCapacity, _rank + _ropeDim));

    /// <summary>
    /// x: [T, D] (input_layernorm, applied by the first projections) → [T, D]; each sequence of <paramref name="batch"/> writes its rows' latents into its cache (layer
    /// <paramref name="layer"/> of its state) at its position (room made by <see cref="Reserve"/>) and attends to its
    /// own cache. <paramref name="absorbed"/> picks the attention form.
    /// </summary>
    public Tensor Forward(IKimiBackend backend, RmsNormed x, IReadOnlyList<SequenceRows> batch, int layer, bool absorbed)
    {
        int tokens = x.Input.Rows;
        // The three projections of x, bound and allocated in this order so a backend may run them as one product.
        var q = backend.Allocate(tokens, _queryProjection.Rows);       // [T, H·(nope + rope)]
        var compressed = backend.Allocate(tokens, _rank);              // [T, R]
        var sharedKey = backend.Allocate(tokens, _ropeDim);            // [T, rope] k_pe, never rotated
        backend.MatMul(x, [_queryProjection, _latentProjection, _sharedKeyProjection], [q, compressed, sharedKey]);
        // c_n = RmsNorm(c) is only ever cached: the cache write normalises it.
        var normalised = new RmsNormed(compressed, _latentNorm, LatentNormEps);

        var o = backend.Allocate(tokens, _heads * _valueDim);          // [T, H·V]
        if (absorbed && StepRows.IsDecodeBatch(batch))
        {
            var caches = batch.Select(sequence => sequence.State.Mla[layer]!.Latent).ToArray();
            int[] positions = batch.Select(sequence => sequence.Position).ToArray();
            backend.WriteLatentRows(normalised, sharedKey, caches, positions);
            backend.MlaAttention(q, caches, positions, _keyValueUp, o, _heads, _nopeDim, _ropeDim, _valueDim);
        }
        else
            StepRows.ForEachSequence(backend, batch, [q, compressed, sharedKey], o, (sequence, own, output) =>
            {
                var cache = sequence.State.Mla[layer]!.Latent;
                backend.WriteLatentRows(normalised with { Input = own[1] }, own[2], cache, sequence.Position);
                backend.MlaAttention(own[0], cache, sequence.Position, _keyValueUp, output, _heads, _nopeDim, _ropeDim, _valueDim, absorbed);
            });
        var result = backend.Allocate(tokens, _outputProjection.Rows);
        backend.MatMul(o, _outputProjection, result);
        return result;
    }

    /// <summary>
    /// Makes room for cache rows up to <paramref name="needed"/>, keeping the <paramref name="valid"/> rows written so
    /// far; the capacity at least doubles when it grows, so appending costs amortised O(1) copies.
    /// </summary>
    public void Reserve(IKimiBackend backend, MlaLayerState state, int valid, int needed)
    {
        if (needed > state.Latent.Rows)
            state.Latent = backend.GrowRows(state.Latent, valid, Math.Max(needed, 2 * state.Latent.Rows));
    }
}
