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

    /// <summary>x: [T, D] → [T, D].</summary>
    public Tensor Forward(IKimiBackend backend, Tensor x)
    {
        var gate = backend.Allocate(x.Rows, _gate.Rows); // [T, F]
        var up = backend.Allocate(x.Rows, _up.Rows);     // [T, F], right after gate (bound right after it too)
        backend.MatMul(x, [_gate, _up], [gate, up]);
        backend.SwiGlu(gate, up, gate);
        var output = backend.Allocate(x.Rows, _down.Rows);
        backend.MatMul(gate, _down, output);
        return output;
    }
}
