using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// The intermediates the chunked prefill passes from its intra-chunk kernel to its scan (kernels/kda/kda.cu,
/// CHUNKED PREFILL), for up to <see cref="Chunks"/> chunks of one layer shape. One allocation, reusable across calls.
/// </summary>
/// <remarks>
/// Each tensor takes the bytes of its fp32 shape, W, QG and KG with K padded to the scan's 64 or 128. For bf16
/// activations the scan's matrix operands W, QG, KG and A are held as two bf16 planes in those bytes instead (each
/// (chunk, head) block: x ≈ hi + lo, hi then lo, rows padded and swizzled; kda.cu's OperandStore), the tensor-core
/// operands of the scan, which copies each block whole; U (slice-major) and γ are fp32 either way.
/// </remarks>
internal sealed class KdaPrefillScratch : IDisposable
{
    private const int C = KdaKernels.ChunkTokens;

    private readonly DeviceBuffer<float> _storage; // the six tensors below, one after another (each a multiple of 64 floats but γ, which is last)

    /// <summary>Chunks of room: at least the <see cref="KdaBatch.Chunks"/> of a batch it serves.</summary>
    public int Chunks { get; }

    /// <summary>The layer shape it is laid out for.</summary>
    public KdaShape Shape { get; }

    /// <summary>W = (I + L)⁻¹·Diag(β)·(k̂ ⊙ 2^G): [NC, H, 64, K] fp32 for fp32 activations, [NC, H, 2, 64, KP] bf16 for bf16 (remarks).</summary>
    public DeviceSpan<float> W => Part(0, KeyRows);

    /// <summary>QG = q̂ ⊙ 2^G, laid out as <see cref="W"/>.</summary>
    public DeviceSpan<float> QueryDecayed => Part(KeyRows, KeyRows);

    /// <summary>KG = k̂ ⊙ 2^(G_last − G), laid out as <see cref="W"/>.</summary>
    public DeviceSpan<float> KeyDecayed => Part(2 * KeyRows, KeyRows);

    /// <summary>[NC, H, V/32, 64, 32] U = (I + L)⁻¹·Diag(β)·v, by 32-column slice (one scan block's).</summary>
    public DeviceSpan<float> U => Part(3 * KeyRows, ValueRows);

    /// <summary>A, the causal intra-chunk attention: [NC, H, 64, 64] fp32, or [NC, H, 2, 64, 64] bf16 (remarks).</summary>
    public DeviceSpan<float> A => Part(3 * KeyRows + ValueRows, PairRows);

    /// <summary>[NC, H, K] γ = 2^G_last, the decay across the whole chunk.</summary>
    public DeviceSpan<float> Gamma => Part(3 * KeyRows + ValueRows + PairRows, (long)Chunks * Shape.KeyWidth);

    private long KeyRows => (long)Chunks * Shape.Heads * C * KdaKernels.PaddedKeyDim(Shape.KeyDim);
    private long ValueRows => (long)Chunks * Shape.Heads * C * Shape.ValueDim;
    private long PairRows => (long)Chunks * Shape.Heads * C * C;

    /// <summary>Allocates room for <paramref name="chunks"/> chunks of layers of <paramref name="shape"/>.</summary>
    public KdaPrefillScratch(CudaContext context, KdaShape shape, int chunks)
    {
        KernelChecks.Positive(chunks, nameof(chunks));
        KernelChecks.Positive(shape.Heads, "shape.Heads");
        KernelChecks.Positive(shape.KeyDim, "shape.KeyDim");
        KernelChecks.Positive(shape.ValueDim, "shape.ValueDim");
        (Shape, Chunks) = (shape, chunks);
        _storage = context.Allocate<float>(3 * KeyRows + ValueRows + PairRows + (long)chunks * shape.KeyWidth);
    }

    private DeviceSpan<float> Part(long start, long length) => _storage.Slice(start, length);

    /// <inheritdoc />
    public void Dispose() => _storage.Dispose();
}
