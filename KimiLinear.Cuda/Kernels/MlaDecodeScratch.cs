using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// The per-slice partial results of the MLA flash-decoding (<see cref="MlaKernels.DecodeAttention"/>): each of
/// <see cref="Splits"/> blocks per token leaves its unnormalised output and its softmax (max, sum) here for the combine
/// kernel. Sized once for up to <see cref="MaxTokens"/> tokens of one layer shape; reusable across calls and layers.
/// </summary>
internal sealed class MlaDecodeScratch : IDisposable
{
    private readonly DeviceBuffer<float> _outputs; // [maxTokens, S, H, R] Σ_s 2^(score − max)·row[:R] per slice
    private readonly DeviceBuffer<float> _stats;   // [maxTokens, S, H, 2] (max in log2 units, sum) per slice

    /// <summary>The layer shape it is laid out for.</summary>
    public MlaShape Shape { get; }

    /// <summary>The most tokens one call may decode.</summary>
    public int MaxTokens { get; }

    /// <summary>S, the fixed number of cache slices per token: one per multiprocessor, so one token fills the GPU.</summary>
    public int Splits { get; }

    /// <summary>[MaxTokens, S, H, R] the slices' unnormalised outputs.</summary>
    public DeviceSpan<float> Outputs => _outputs.Span;

    /// <summary>[MaxTokens, S, H, 2] the slices' softmax max (log2 units) and sum.</summary>
    public DeviceSpan<float> Stats => _stats.Span;

    /// <summary>Allocates room for <paramref name="maxTokens"/> tokens of layers of <paramref name="shape"/> on <paramref name="context"/>'s device.</summary>
    public MlaDecodeScratch(CudaContext context, MlaShape shape, int maxTokens)
    {
        ArgumentNullException.ThrowIfNull(context);
        KernelChecks.Positive(maxTokens, nameof(maxTokens));
        KernelChecks.Positive(shape.Heads, "shape.Heads");
        KernelChecks.Positive(shape.Rank, "shape.Rank");
        (Shape, MaxTokens, Splits) = (shape, maxTokens, context.Device.MultiprocessorCount);
        long slices = (long)maxTokens * Splits * shape.Heads;
        _outputs = context.Allocate<float>(slices * shape.Rank);
        try
        {
            _stats = context.Allocate<float>(slices * 2);
        }
        catch
        {
            _outputs.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _outputs.Dispose();
        _stats.Dispose();
    }
}
