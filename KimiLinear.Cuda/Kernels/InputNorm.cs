using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// An RMSNorm a kernel applies to its input rows as it loads them (x · rsqrt(mean(x²) + eps) · weight), so that the
/// norm needs no launch of its own: the MoE block's post-attention norm, MLA's latent norm.
/// </summary>
/// <param name="Weight">[N] fp32 norm weight, N the rows' width.</param>
/// <param name="Eps">The norm's epsilon (&gt; 0).</param>
internal readonly record struct InputNorm(DeviceSpan<float> Weight, float Eps)
{
    /// <summary>Throws unless the weight holds <paramref name="width"/> 16-byte aligned values and eps is positive and finite.</summary>
    public void Check(int width)
    {
        KernelChecks.HoldsAligned(Weight, width, "norm.Weight");
        if (!(Eps > 0) || float.IsInfinity(Eps))
            throw new ArgumentOutOfRangeException("norm", Eps, "the input norm's eps must be positive and finite.");
    }
}
