using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// The per-slice partial results of the MLA flash-decoding (<c>MlaKernels.DecodeAttention</c>): each of
/// <see cref="Splits"/> blocks per token leaves its unnormalised output and its softmax (max, sum) here for
/// <see cref="MlaKernels.AbsorbOutput"/>, which merges them and leaves its per-block partial products and per-head
/// arrival counts here too. Sized once for up to <see cref="MaxTokens"/> tokens of one layer shape; reusable across
/// calls and layers of that shape, one call at a time.
/// </summary>
internal sealed class MlaDecodeScratch : IDisposable
{
    /// <summary>Weight columns (of R) each output-absorption block merges and multiplies (kAbsorbColumns in kernels/mla.cu).</summary>
    internal const int OutputColumnsPerBlock = 128;

    private readonly DeviceBuffer<float> _outputs;  // [maxTokens, S, H, R] Σ_s 2^(score − max)·row[:R] per slice
    private readonly DeviceBuffer<float> _stats;    // [maxTokens, S, H, 2] (max in log2 units, sum) per slice
    private readonly DeviceBuffer<float> _parts;    // [maxTokens, H, G, V] W_UV products over each block's 128 columns of R
    private readonly DeviceBuffer<int> _arrivals;   // [H] blocks of the head done so far; the last one resets it to 0

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

    /// <summary>G = ⌈R / 128⌉, the output-absorption blocks per head, each over 128 columns of the latent.</summary>
    public int OutputBlocks { get; }

    /// <summary>[MaxTokens, H, G, V] the output-absorption blocks' partial products.</summary>
    public DeviceSpan<float> Parts => _parts.Span;

    /// <summary>[H] per head, how many of its G output-absorption blocks have finished (0 between calls).</summary>
    public DeviceSpan<int> Arrivals => _arrivals.Span;

    /// <summary>Allocates room for <paramref name="maxTokens"/> tokens of layers of <paramref name="shape"/> on <paramref name="context"/>'s device.</summary>
    public MlaDecodeScratch(CudaContext context, MlaShape shape, int maxTokens)
    {
        ArgumentNullException.ThrowIfNull(context);
        KernelChecks.Positive(maxTokens, nameof(maxTokens));
        KernelChecks.Positive(shape.Heads, "shape.Heads");
        KernelChecks.Positive(shape.Rank, "shape.Rank");
        KernelChecks.Positive(shape.ValueDim, "shape.ValueDim");
        (Shape, MaxTokens, Splits) = (shape, maxTokens, context.Device.MultiprocessorCount);
        OutputBlocks = (shape.Rank + OutputColumnsPerBlock - 1) / OutputColumnsPerBlock;
        long slices = (long)maxTokens * Splits * shape.Heads;
        _outputs = context.Allocate<float>(slices * shape.Rank);
        try
        {
            _stats = context.Allocate<float>(slices * 2);
            _parts = context.Allocate<float>((long)maxTokens * shape.Heads * OutputBlocks * shape.ValueDim);
            _arrivals = context.Allocate<int>(shape.Heads);
            using CudaStream setup = context.CreateStream();
            _arrivals.Span.Fill(0, setup); // the kernel expects 0 and leaves 0
            setup.Synchronize();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _outputs?.Dispose();
        _stats?.Dispose();
        _parts?.Dispose();
        _arrivals?.Dispose();
    }
}
