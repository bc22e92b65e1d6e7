using KimiLinear.Backends;
using KimiLinear.Loading;

namespace KimiLinear.Layers;

/// <summary>
/// The experts of a MoE block (spec §4) and how tokens are routed to them: the router, E SwiGLU experts of width F, the
/// router's correction bias (selection only, by default), the routing rule, and the always-on shared expert (S·F wide).
/// A backend runs them through <see cref="IKimiBackend.MoeExperts"/>; <see cref="ForwardGrouped"/> is the routed part
/// in backend primitives, for backends that route on the host.
/// </summary>
internal sealed class MoeExperts
{
    /// <summary>gate.weight [E, D]: the router's logits are x · routerᵀ.</summary>
    public WeightMatrix Router { get; }
    /// <summary>Expert e's w1 (gate) [F, D].</summary>
    public WeightMatrix[] Gate { get; }
    /// <summary>Expert e's w3 (up) [F, D].</summary>
    public WeightMatrix[] Up { get; }
    /// <summary>Expert e's w2 (down) [D, F].</summary>
    public WeightMatrix[] Down { get; }
    /// <summary>e_score_correction_bias [E].</summary>
    public float[] CorrectionBias { get; }
    /// <summary>How experts are chosen and weighted.</summary>
    public MoeRouting Routing { get; }
    /// <summary>
    /// The shared expert(s): one SwiGLU MLP of width S·F that every token uses with weight 1, or null (S = 0). SwiGLU
    /// acts per hidden unit and down is linear, so it equals S experts of width F (its row blocks of gate and up, column
    /// blocks of down), which a GPU backend runs as experts E..E+S-1 of its routed kernels.
    /// </summary>
    public DenseMlp? Shared { get; }

    /// <summary>E.</summary>
    public int Count => Gate.Length;

    /// <summary>S: the shared expert's width in units of F.</summary>
    public int SharedCount { get; }

    /// <summary>Slot where a GPU backend keeps its device copy (the experts stacked per weight kind).</summary>
    public object? DeviceCopy { get; set; }

    public MoeExperts(WeightMatrix router, WeightMatrix[] gate, WeightMatrix[] up, WeightMatrix[] down, float[] correctionBias, MoeRouting routing,
        DenseMlp? shared = null)
    {
        (Router, Gate, Up, Down, CorrectionBias, Routing, Shared) = (router, gate, up, down, correctionBias, routing, shared);
        if (shared is not null)
        {
            int f = gate[0].Rows;
            if (shared.Gate.Rows % f != 0 || shared.Gate.Rows == 0)
                throw new ArgumentException($"The shared expert '{shared.Gate.Name}' has {shared.Gate.Rows} rows; expected a positive multiple of the experts' width F = {f}.", nameof(shared));
            SharedCount = shared.Gate.Rows / f;
        }
    }

    /// <summary>
    /// output[t] += Σ_a weights[t, a] · expert(chosen[t, a])(x[t]), with tokens grouped per expert so that each chosen
    /// expert runs once over all its tokens. chosen, weights: [T·A] row-major.
    /// </summary>
    public void ForwardGrouped(IKimiBackend backend, Tensor x, ReadOnlySpan<int> chosen, ReadOnlySpan<float> weights, Tensor output)
    {
        int active = Routing.ExpertsPerToken;
        var experts = chosen.ToArray();
        var order = Enumerable.Range(0, experts.Length).OrderBy(i => experts[i]).ToArray(); // slots by expert, then token
        for (int start = 0; start < order.Length;)
        {
            int expert = experts[order[start]], end = start;
            while (end < order.Length && experts[order[end]] == expert)
                end++;
            var rows = new int[end - start];
            var scales = new float[end - start];
            for (int i = start; i < end; i++)
                (rows[i - start], scales[i - start]) = (order[i] / active, weights[order[i]]);
            var selected = backend.Allocate(rows.Length, x.Cols);   // [tokens routed to this expert, D]
            backend.GatherRows(x, rows, selected);
            var gate = backend.Allocate(rows.Length, Gate[expert].Rows); // [tokens, F]
            var up = backend.Allocate(rows.Length, Up[expert].Rows);     // [tokens, F]
            backend.MatMul(selected, Gate[expert], gate);
            backend.MatMul(selected, Up[expert], up);
            backend.SwiGlu(gate, up, gate);
            var down = backend.Allocate(rows.Length, Down[expert].Rows); // [tokens, D]
            backend.MatMul(gate, Down[expert], down);
            backend.ScatterAddRows(down, rows, scales, output);
            start = end;
        }
    }
}
