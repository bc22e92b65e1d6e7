using KimiLinear.Backends;

namespace KimiLinear.State;

/// <summary>All per-sequence state of a model: one entry per decoder layer (KDA state or MLA cache).</summary>
internal sealed class SessionState(KdaLayerState?[] kda, MlaLayerState?[] mla) : IDisposable
{
    /// <summary>Per layer: the KDA state, or null for MLA layers.</summary>
    public KdaLayerState?[] Kda { get; } = kda;
    /// <summary>Per layer: the MLA cache, or null for KDA layers.</summary>
    public MlaLayerState?[] Mla { get; } = mla;

    /// <summary>Tokens in the sequence.</summary>
    public int Length { get; set; }

    /// <summary>
    /// A backend's per-session decode machinery, or null until the first decode step or greedy choice: the recording of
    /// the decode step (a CUDA graph), the step's token and position where kernels read them, the greedy choices.
    /// </summary>
    public IDisposable? Decoder { get; set; }

    /// <summary>Frees tensors that own device memory (a GPU backend's state) and the decode recording; the CPU's are garbage-collected.</summary>
    public void Dispose()
    {
        Decoder?.Dispose();
        Decoder = null;
        foreach (var tensor in Kda.OfType<KdaLayerState>().SelectMany(k => k.Tensors).Concat(Mla.OfType<MlaLayerState>().Select(m => m.Latent)))
            (tensor as IDisposable)?.Dispose();
    }
}
