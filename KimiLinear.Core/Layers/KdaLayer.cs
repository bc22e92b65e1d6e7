using KimiLinear.Backends;
using KimiLinear.Configuration;
using KimiLinear.Loading;
using KimiLinear.State;

namespace KimiLinear.Layers;

/// <summary>
/// Kimi Delta Attention (spec §2): q, k, v projections through causal short convs + SiLU; a per-channel forget gate
/// −exp(A_log)·softplus(f + dt_bias) from a low-rank projection; beta = sigmoid; the gated delta rule over an fp32 state
/// (chunked for prefill, recurrent for decode); a sigmoid-gated per-head RMSNorm; the output projection.
/// </summary>
internal sealed class KdaLayer
{
    private readonly int _heads, _headDim, _convSize;

    private readonly WeightMatrix _queryProjection;  // [H·K, D]
    private readonly WeightMatrix _keyProjection;    // [H·K, D]
    private readonly WeightMatrix _valueProjection;  // [H·V, D]
    private readonly WeightMatrix _gateDown;         // f_a_proj [K, D]: forget-gate rank = head dim
    private readonly WeightMatrix _outputGateDown;   // g_a_proj [V, D]
    private readonly WeightMatrix _betaProjection;   // b_proj [H, D]
    private readonly WeightMatrix _gateUp;           // f_b_proj [H·K, K]
    private readonly WeightMatrix _outputGateUp;     // g_b_proj [H·V, V] (no bias in Kimi Linear)
    private readonly WeightMatrix _outputProjection; // [D, H·V]
    private readonly KdaMixerParameters _mixer;      // conv taps [H·K, W], A_log [H], dt_bias [H·K], o_norm [V] (fp32)

    public KdaLayer(IWeightSource weights, string prefix, KimiConfig config)
    {
        (_heads, _headDim, _convSize) = (config.KdaHeads, config.KdaHeadDim, config.KdaConvSize);
        int d = config.HiddenSize, width = config.KdaProjectionSize;
        // The six projections of x first, in the order Forward allocates their outputs: a backend may run them as one product.
        _queryProjection = weights.Matrix(prefix + "q_proj.weight", width, d);
        _keyProjection = weights.Matrix(prefix + "k_proj.weight", width, d);
        _valueProjection = weights.Matrix(prefix + "v_proj.weight", width, d);
        _gateDown = weights.Matrix(prefix + "f_a_proj.weight", _headDim, d);
        _outputGateDown = weights.Matrix(prefix + "g_a_proj.weight", _headDim, d);
        _betaProjection = weights.Matrix(prefix + "b_proj.weight", _heads, d);
        _gateUp = weights.Matrix(prefix + "f_b_proj.weight", width, _headDim);
        _outputGateUp = weights.Matrix(prefix + "g_b_proj.weight", width, _headDim);
        _outputProjection = weights.Matrix(prefix + "o_proj.weight", d, width);
        _mixer = new KdaMixerParameters(_heads, _headDim,
            QueryConv: weights.Floats(prefix + "q_conv1d.weight", width, 1, _convSize),
            KeyConv: weights.Floats(prefix + "k_conv1d.weight", width, 1, _convSize),
            ValueConv: weights.Floats(prefix + "v_conv1d.weight", width, 1, _convSize),
            ALog: weights.Floats(prefix + "A_log", 1, 1, _heads, 1),
            DtBias: weights.Floats(prefix + "dt_bias", width),
            OutputNorm: weights.Floats(prefix + "o_norm.weight", _headDim),
            Eps: config.RmsNormEps);
    }

    public KdaLayerState CreateState(IKimiBackend backend)
    {
        int width = _heads * _headDim;
        return new KdaLayerState(
            backend.AllocateState(_convSize - 1, width), backend.AllocateState(_convSize - 1, width), backend.AllocateState(_convSize - 1, width),
            backend.AllocateState(_heads, _headDim * _headDim));
    }

    /// <summary>
    /// x: [T, D] (input_layernorm, applied by the first projections) → [T, D], each sequence of <paramref name="batch"/>
    /// on its own state (layer <paramref name="layer"/> of it). Prefill (T &gt; 1 rows of a sequence) runs the chunked
    /// algorithm, decode the recurrence.
    /// </summary>
    public Tensor Forward(IKimiBackend backend, RmsNormed x, IReadOnlyList<SequenceRows> batch, int layer)
    {
        int tokens = x.Input.Rows, width = _heads * _headDim;
        var q = backend.Allocate(tokens, width);                 // [T, H·K] before the short conv
        var k = backend.Allocate(tokens, width);                 // [T, H·K]
        var v = backend.Allocate(tokens, width);                 // [T, H·V]
        var forgetLow = backend.Allocate(tokens, _headDim);      // [T, K] f_a output
        var outputGateLow = backend.Allocate(tokens, _headDim);  // [T, V] g_a output
        var beta = backend.Allocate(tokens, _heads);             // [T, H] before the sigmoid
        backend.MatMul(x, [_queryProjection, _keyProjection, _valueProjection, _gateDown, _outputGateDown, _betaProjection],
            [q, k, v, forgetLow, outputGateLow, beta]);
        var forget = backend.Allocate(tokens, _gateUp.Rows);               // [T, H·K]
        var outputGate = backend.Allocate(tokens, _outputGateUp.Rows);     // [T, H·V], right after forget (f_b, g_b bound so too)
        backend.MatMul([forgetLow, outputGateLow], [_gateUp, _outputGateUp], [forget, outputGate]);
        var gated = backend.Allocate(tokens, width);                       // [T, H·V]
        if (StepRows.IsDecodeBatch(batch))
            backend.KdaMixer(new KdaMixerInputs(q, k, v, forget, beta, outputGate), _mixer, batch.Select(s => s.State.Kda[layer]!).ToArray(), gated);
        else
            StepRows.ForEachSequence(backend, batch, [q, k, v, forget, beta, outputGate], gated, (sequence, own, y) =>
                backend.KdaMixer(new KdaMixerInputs(own[0], own[1], own[2], own[3], own[4], own[5]), _mixer, sequence.State.Kda[layer]!, y));
        return Project(backend, gated, _outputProjection);
    }

    private static Tensor Project(IKimiBackend backend, Tensor x, WeightMatrix projection)
    {
        var projected = backend.Allocate(x.Rows, projection.Rows);
        backend.MatMul(x, projection, projected);
        return projected;
    }

}
