using KimiLinear.Backends;

namespace KimiLinear.State;

/// <summary>
/// What a KDA layer carries from one call to the next for one sequence: the last W−1 pre-conv projection inputs of q, k
/// and v (the short convs are causal), and the recurrent state. The state is fp32: it sums thousands of rank-1 updates
/// and decays, where bf16 would lose long-context recall.
/// </summary>
internal sealed class KdaLayerState(Tensor queryWindow, Tensor keyWindow, Tensor valueWindow, Tensor recurrent)
{
    /// <summary>[W−1, H·K] last q projections, oldest first (the layout the GPU kernels keep too).</summary>
    public Tensor QueryWindow { get; } = queryWindow;
    /// <summary>[W−1, H·K] last k projections.</summary>
    public Tensor KeyWindow { get; } = keyWindow;
    /// <summary>[W−1, H·V] last v projections.</summary>
    public Tensor ValueWindow { get; } = valueWindow;
    /// <summary>[H, K·V] fp32 state S, row = key channel, column = value channel (the same layout in prefill and decode).</summary>
    public Tensor Recurrent { get; } = recurrent;

    /// <summary>Every tensor, in a fixed order (for reset, save and restore).</summary>
    public IEnumerable<Tensor> Tensors => [QueryWindow, KeyWindow, ValueWindow, Recurrent];
}
