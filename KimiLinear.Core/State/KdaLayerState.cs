using KimiLinear.Backends;

namespace KimiLinear.State;

/// <summary>
/// What a KDA layer carries from one call to the next for one sequence: the last W−1 pre-conv projection inputs of q, k
/// and v (the short convs are causal), and the recurrent state. The state is fp32: it sums thousands of rank-1 updates
/// and decays, where bf16 would lose long-context recall.
/// </summary>
internal sealed class KdaLayerState(Tensor queryWindow, Tensor keyWindow, Tensor valueWindow, Tensor recurrent)
{
    /// <summary>[H·K, W−1] last q projections per channel, oldest first.</summary>
    public Tensor QueryWindow { get; } = queryWindow;
    /// <summary>[H·K, W−1] last k projections per channel.</summary>
    public Tensor KeyWindow { get; } = keyWindow;
    /// <summary>[H·V, W−1] last v projections per channel.</summary>
    public Tensor ValueWindow { get; } = valueWindow;
    /// <summary>[H, K·V] fp32 state S, row = key channel, column = value channel (the same layout in prefill and decode).</summary>
    public Tensor Recurrent { get; } = recurrent;

    /// <summary>Every tensor, in a fixed order (for reset, save and restore).</summary>
    public IEnumerable<Tensor> Tensors => [QueryWindow, KeyWindow, ValueWindow, Recurrent];
}
