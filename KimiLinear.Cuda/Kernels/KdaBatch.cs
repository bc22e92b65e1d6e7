using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// N sequences packed one after another into T token rows, as the KDA prefill kernels address them: token offsets
/// (cu_seqlens) and chunk offsets on the device, the totals on the host.
/// </summary>
internal sealed class KdaBatch : IDisposable
{
    private readonly DeviceBuffer<int> _offsets; // [2(N + 1)]: token offsets, then chunk offsets

    /// <summary>N.</summary>
    public int Sequences { get; }

    /// <summary>T, the total token count.</summary>
    public int Tokens { get; }

    /// <summary>NC = Σ ceil(length / 64): the chunks the prefill works in (scratch rows).</summary>
    public int Chunks { get; }

    /// <summary>[N + 1] cu_seqlens: sequence n holds tokens [offsets[n], offsets[n + 1]).</summary>
    public DeviceSpan<int> TokenOffsets => _offsets.Slice(0, Sequences + 1);

    /// <summary>[N + 1] chunk_offsets: sequence n owns scratch chunks [offsets[n], offsets[n + 1]).</summary>
    public DeviceSpan<int> ChunkOffsets => _offsets.Slice(Sequences + 1, Sequences + 1);

    /// <summary>Uploads the offsets of sequences of <paramref name="lengths"/> tokens (empty sequences allowed) on <paramref name="stream"/>.</summary>
    public KdaBatch(CudaStream stream, ReadOnlySpan<int> lengths)
    {
        if (lengths.IsEmpty) throw new ArgumentException("a batch needs at least one sequence", nameof(lengths));
        var offsets = new int[2 * (lengths.Length + 1)];
        long tokens = 0, chunks = 0;
        for (int n = 0; n < lengths.Length; n++)
        {
            if (lengths[n] < 0) throw new ArgumentOutOfRangeException(nameof(lengths), lengths[n], $"sequence {n} has a negative length");
            tokens += lengths[n];
            chunks += (lengths[n] + KdaKernels.ChunkTokens - 1) / KdaKernels.ChunkTokens;
            if (tokens > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(lengths), tokens, "the batch holds more than 2³¹ − 1 tokens");
            offsets[n + 1] = (int)tokens;
            offsets[lengths.Length + 1 + n + 1] = (int)chunks;
        }
        (Sequences, Tokens, Chunks) = (lengths.Length, (int)tokens, (int)chunks);
        _offsets = stream.Context.Allocate<int>(offsets.Length);
        _offsets.CopyFrom(offsets, stream);
    }

    /// <inheritdoc />
    public void Dispose() => _offsets.Dispose();
}
