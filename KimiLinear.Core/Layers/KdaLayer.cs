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
    private readonly float _eps;

    private readonly WeightMatrix _queryProjection;  // [H·K, D]
    private readonly WeightMatrix _keyProjection;    // [H·K, D]
    private readonly WeightMatrix _valueProjection;  // [H·V, D]
    private readonly float[] _queryConv;             // [H·K, W] depthwise taps, tap W−1 = current token
    private readonly float[] _keyConv;               // [H·K, W]
    private readonly float[] _valueConv;             // [H·V, W]
    private readonly WeightMatrix _gateDown;         // f_a_proj [K, D]: forget-gate rank = head dim
    private readonly WeightMatrix _gateUp;           // f_b_proj [H·K, K]
    private readonly float[] _aLog;                  // [H] fp32 log decay rate per head
    private readonly float[] _dtBias;                // [H·K] fp32
    private readonly WeightMatrix _betaProjection;   // b_proj [H, D]
    private readonly WeightMatrix _outputGateDown;   // g_a_proj [V, D]
    private readonly WeightMatrix _outputGateUp;     // g_b_proj [H·V, V] (no bias in Kimi Linear)
    private readonly float[] _outputNorm;            // o_norm [V], shared by all heads
    private readonly WeightMatrix _outputProjection; // [D, H·V]

    public KdaLayer(IWeightSource weights, string prefix, KimiConfig config)
    {
        (_heads, _headDim, _convSize, _eps) = (config.KdaHeads, config.KdaHeadDim, config.KdaConvSize, config.RmsNormEps);
        int d = config.HiddenSize, width = config.KdaProjectionSize;
        _queryProjection = weights.Matrix(prefix + "q_proj.weight", width, d);
        _keyProjection = weights.Matrix(prefix + "k_proj.weight", width, d);
        _valueProjection = weights.Matrix(prefix + "v_proj.weight", width, d);
        _queryConv = weights.Floats(prefix + "q_conv1d.weight", width, 1, _convSize);
        _keyConv = weights.Floats(prefix + "k_conv1d.weight", width, 1, _convSize);
        _valueConv = weights.Floats(prefix + "v_conv1d.weight", width, 1, _convSize);
        _gateDown = weights.Matrix(prefix + "f_a_proj.weight", _headDim, d);
        _gateUp = weights.Matrix(prefix + "f_b_proj.weight", width, _headDim);
        _aLog = weights.Floats(prefix + "A_log", 1, 1, _heads, 1);
        _dtBias = weights.Floats(prefix + "dt_bias", width);
        _betaProjection = weights.Matrix(prefix + "b_proj.weight", _heads, d);
        _outputGateDown = weights.Matrix(prefix + "g_a_proj.weight", _headDim, d);
        _outputGateUp = weights.Matrix(prefix + "g_b_proj.weight", width, _headDim);
        _outputNorm = weights.Floats(prefix + "o_norm.weight", _headDim);
        _outputProjection = weights.Matrix(prefix + "o_proj.weight", d, width);
    }

    public KdaLayerState CreateState(IKimiBackend backend)
    {
        int width = _heads * _headDim;
        return new KdaLayerState(
            backend.Allocate(width, _convSize - 1), backend.Allocate(width, _convSize - 1), backend.Allocate(width, _convSize - 1),
            backend.Allocate(_heads, _headDim * _headDim));
    }

    /// <summary>x: [T, D] (after input_layernorm) → [T, D]. Prefill (T &gt; 1) runs the chunked algorithm, decode the recurrence.</summary>
    public Tensor Forward(IKimiBackend backend, Tensor x, KdaLayerState state)
    {
        int tokens = x.Rows, width = _heads * _headDim;
        var q = ConvolvedProjection(backend, x, _queryProjection, _queryConv, state.QueryWindow); // [T, H·K]
        var k = ConvolvedProjection(backend, x, _keyProjection, _keyConv, state.KeyWindow);       // [T, H·K]
        var v = ConvolvedProjection(backend, x, _valueProjection, _valueConv, state.ValueWindow); // [T, H·V]

        var g = backend.Allocate(tokens, width);                   // [T, H·K] log decay, ≤ 0
        backend.KdaGate(LowRank(backend, x, _gateDown, _gateUp), _aLog, _dtBias, g);
        var beta = backend.Allocate(tokens, _heads);               // [T, H]
        backend.MatMul(x, _betaProjection, beta);
        backend.Sigmoid(beta);

        var o = backend.Allocate(tokens, width);                   // [T, H·V]
        backend.KdaCore(q, k, v, g, beta, state.Recurrent, o, _heads, _headDim, _headDim, chunked: tokens > 1);

        var gated = backend.Allocate(tokens, width);               // [T, H·V]
        backend.GatedRmsNorm(o, LowRank(backend, x, _outputGateDown, _outputGateUp), _outputNorm, _eps, gated);
        var output = backend.Allocate(tokens, _outputProjection.Rows);
        backend.MatMul(gated, _outputProjection, output);
        return output;
    }

    private static Tensor ConvolvedProjection(IKimiBackend backend, Tensor x, WeightMatrix projection, float[] taps, Tensor window)
    {
        var projected = backend.Allocate(x.Rows, projection.Rows);
        backend.MatMul(x, projection, projected);
        var convolved = backend.Allocate(x.Rows, projection.Rows);
        backend.ShortConvSilu(projected, taps, window, convolved);
        return convolved;
    }

    private static Tensor LowRank(IKimiBackend backend, Tensor x, WeightMatrix down, WeightMatrix up)
    {
        var low = backend.Allocate(x.Rows, down.Rows);
        backend.MatMul(x, down, low);
        var result = backend.Allocate(x.Rows, up.Rows);
        backend.MatMul(low, up, result);
        return result;
    }
}
