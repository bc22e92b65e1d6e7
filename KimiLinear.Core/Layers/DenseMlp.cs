using KimiLinear.Backends;
using KimiLinear.Loading;

namespace KimiLinear.Layers;

/// <summary>SwiGLU feed-forward: down(SiLU(gate·x) ⊙ up·x). The dense MLP of the first layers, the shared expert and each routed expert.</summary>
internal sealed class DenseMlp
{
    private readonly WeightMatrix _gate; // [F, D]
    private readonly WeightMatrix _up;   // [F, D]
    private readonly WeightMatrix _down; // [D, F]

    public DenseMlp(WeightMatrix gate, WeightMatrix up, WeightMatrix down) => (_gate, _up, _down) = (gate, up, down);

    /// <summary>gate_proj [F, D].</summary>
    public WeightMatrix Gate => _gate;
    /// <summary>up_proj [F, D].</summary>
    public WeightMatrix Up => _up;
    /// <summary>down_proj [D, F].</summary>
    public WeightMatrix Down => _down;

    /// <summary>The published names gate_proj / up_proj / down_proj under <paramref name="prefix"/>.</summary>
    public static DenseMlp Load(IWeightSource weights, string prefix, int hidden, int width) => new(
        weights.Matrix(prefix + "gate_proj.weight", width, hidden),
        weights.Matrix(prefix + "up_proj.weight", width, hidden),
        weights.Matrix(prefix + "down_proj.weight", hidden, width));

    /// <summary>x: [T, D] → [T, D] (the shared and routed experts of the CPU's MoE).</summary>
    public Tensor Forward(IKimiBackend backend, Tensor x)
    {
        var (gate, up) = Hidden(backend, x.Rows);
        backend.MatMul(x, [_gate, _up], [gate, up]);
        backend.SwiGlu(gate, up, gate);
        var output = backend.Allocate(x.Rows, _down.Rows);
        backend.MatMul(gate, _down, output);
        return output;
    }

    /// <summary>
    /// residual += MLP(RMSNorm(x)), x: [T, D] (the dense layers): the norm inside the gate/up product, the down
    /// projection added into the residual stream, where the backend can.
    /// </summary>
    public void AddForward(IKimiBackend backend, RmsNormed x, Tensor residual)
    {
        var (gate, up) = Hidden(backend, x.Input.Rows);
        backend.MatMul(x, [_gate, _up], [gate, up]);
        backend.SwiGlu(gate, up, gate);
        backend.MatMulAdd(gate, _down, residual);
    }

    /// <summary>gate [T, F], then up [T, F] right after it (bound right after it too: one product where a backend can).</summary>
    private (Tensor Gate, Tensor Up) Hidden(IKimiBackend backend, int tokens) =>
        (backend.Allocate(tokens, _gate.Rows), backend.Allocate(tokens, _up.Rows));
}
