using KimiLinear.Backends;

namespace KimiLinear.State;

/// <summary>
/// An MLA layer's cache for one sequence: per token the normalised latent c_n (R = 512) and the shared key part k_pe
/// (64): 576 values instead of 32 heads of expanded keys and values. Without positional encoding the cache is
/// position-independent, which is what makes weight absorption exact.
/// </summary>
internal sealed class MlaLayerState(Tensor latent)
{
    /// <summary>[capacity, R + rope] rows (c_n | k_pe); rows [0, the session's length) are valid.</summary>
    public Tensor Latent { get; set; } = latent;
}
