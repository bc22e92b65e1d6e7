using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

// The operand groups of the KDA kernels (kernels/kda/kda.cu). T is the activation dtype: float, or bf16 as ushort bits.
// Every span must start 16-byte aligned (whole buffers and arena spans are); layouts are row-major.

/// <summary>Head geometry of one KDA layer.</summary>
/// <param name="Heads">H.</param>
/// <param name="KeyDim">K, the query and key head dim.</param>
/// <param name="ValueDim">V, the value head dim.</param>
internal readonly record struct KdaShape(int Heads, int KeyDim, int ValueDim)
{
    /// <summary>H·K: one row of q, k, the forget-gate input or g.</summary>
    public int KeyWidth => Heads * KeyDim;

    /// <summary>H·V: one row of v, the output gate, o or y.</summary>
    public int ValueWidth => Heads * ValueDim;

    /// <summary>K·V: one head's recurrent state.</summary>
    public long StateSize => (long)KeyDim * ValueDim;
}

/// <summary>A KDA layer's parameters as the kernels read them.</summary>
/// <param name="QueryConv">q_conv1d taps [H·K, 4] (checkpoint [H·K, 1, 4]); tap 3 multiplies the current token.</param>
/// <param name="KeyConv">k_conv1d taps [H·K, 4].</param>
/// <param name="ValueConv">v_conv1d taps [H·V, 4].</param>
/// <param name="ALog">A_log [H], fp32.</param>
/// <param name="DtBias">dt_bias [H·K], fp32.</param>
/// <param name="NormWeight">o_norm weight [V], shared by all heads; read by the decode step only.</param>
internal readonly record struct KdaLayerParameters<T>(DeviceSpan<T> QueryConv, DeviceSpan<T> KeyConv, DeviceSpan<T> ValueConv,
    DeviceSpan<float> ALog, DeviceSpan<float> DtBias, DeviceSpan<T> NormWeight) where T : unmanaged;

/// <summary>What a KDA layer carries from call to call for N sequences; the kernels read and update it in place.</summary>
/// <param name="QueryWindow">[N, 3, H·K] the last 3 pre-conv q inputs of each sequence, oldest first.</param>
/// <param name="KeyWindow">[N, 3, H·K] likewise for k.</param>
/// <param name="ValueWindow">[N, 3, H·V] likewise for v.</param>
/// <param name="State">[N, H, K, V] fp32 recurrent state (row = key channel).</param>
internal readonly record struct KdaLayerCache<T>(DeviceSpan<T> QueryWindow, DeviceSpan<T> KeyWindow, DeviceSpan<T> ValueWindow,
    DeviceSpan<float> State) where T : unmanaged;

/// <summary>Projection outputs before the short convs and activations, one row per token (per sequence in decode).</summary>
/// <param name="Query">q_proj output [rows, H·K].</param>
/// <param name="Key">k_proj output [rows, H·K].</param>
/// <param name="Value">v_proj output [rows, H·V].</param>
/// <param name="Forget">f_b_proj output [rows, H·K], before the gate −exp(A_log)·softplus(f + dt_bias).</param>
/// <param name="Beta">b_proj output [rows, H], before the sigmoid.</param>
internal readonly record struct KdaProjections<T>(DeviceSpan<T> Query, DeviceSpan<T> Key, DeviceSpan<T> Value, DeviceSpan<T> Forget,
    DeviceSpan<T> Beta) where T : unmanaged;

/// <summary>The KDA core's inputs for T packed tokens: what <see cref="KdaKernels.Prepare{T, TOut}"/> writes.</summary>
/// <param name="Query">[T, H, K] after conv + SiLU, not yet normalised (the core L2-normalises q and k).</param>
/// <param name="Key">[T, H, K] likewise.</param>
/// <param name="Value">[T, H, V] after conv + SiLU.</param>
/// <param name="Gate">[T, H, K] fp32 log-decay g ≤ 0.</param>
/// <param name="Beta">[T, H] fp32 write strength, after the sigmoid.</param>
internal readonly record struct KdaCoreInputs<T>(DeviceSpan<T> Query, DeviceSpan<T> Key, DeviceSpan<T> Value, DeviceSpan<float> Gate,
    DeviceSpan<float> Beta) where T : unmanaged;
