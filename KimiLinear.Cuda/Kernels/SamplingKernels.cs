using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>From logits [T, V] (fp32) to probabilities or tokens, one row per sequence (<c>kernels/sampling.cu</c>).</summary>
internal static unsafe class SamplingKernels
{
    /// <summary>The largest top-k the GPU sampler supports (one candidate per thread of a 1,024-thread block).</summary>
    public const int MaxTopK = 1024;

    private const int RowThreads = 1024;
    private const int ArgmaxThreads = 256, ArgmaxValues = 16; // ARGMAX_THREADS, ARGMAX_VALUES in sampling.cu: a block's values

    /// <summary>probabilities[T, V] = softmax(logits[T, V]) per row.</summary>
    public static void Softmax(CudaStream stream, DeviceSpan<float> probabilities, DeviceSpan<float> logits, int t, int v)
    {
        CheckRows(logits, t, v);
        KernelChecks.Holds(probabilities, (long)t * v, nameof(probabilities));
        ulong pOut = probabilities.Pointer, pIn = logits.Pointer;
        void** args = stackalloc void*[] { &pOut, &pIn, &t, &v };
        stream.Context.Kernels.Launch(KernelId.SoftmaxF32, new Dim3((uint)t), new Dim3(RowThreads), 0, stream, args);
    }

    /// <summary>
    /// tokens[t] = argmax of row t (first occurrence of the maximum; NaN skipped; -1 for a row of NaN), read by many
    /// blocks a row that meet in <paramref name="scratch"/> (which the kernel leaves as it found it); the same into
    /// <paramref name="copy"/>[t] where given (a <see cref="MappedHostBuffer{T}"/>'s elements: the host reads them
    /// after an event, without a copy operation).
    /// </summary>
    public static void Argmax(CudaStream stream, DeviceSpan<int> tokens, DeviceSpan<float> logits, int t, int v, ArgmaxScratch scratch,
        DeviceSpan<int>? copy = null)
    {
        CheckRows(logits, t, v);
        KernelChecks.Holds(tokens, t, nameof(tokens));
        if (copy is { } second)
            KernelChecks.Holds(second, t, nameof(copy));
        ArgumentNullException.ThrowIfNull(scratch);
        if (t > scratch.MaxRows)
            throw new ArgumentException($"The argmax scratch has room for {scratch.MaxRows} rows, but the call has T = {t}", nameof(scratch));
        ulong pOut = tokens.Pointer, pCopy = copy?.Pointer ?? 0, pKeys = scratch.Keys.Pointer, pArrivals = scratch.Arrivals.Pointer, pIn = logits.Pointer;
        void** args = stackalloc void*[] { &pOut, &pCopy, &pKeys, &pArrivals, &pIn, &t, &v };
        int blocks = (v + ArgmaxThreads * ArgmaxValues - 1) / (ArgmaxThreads * ArgmaxValues);
        stream.Context.Kernels.Launch(KernelId.ArgmaxF32, new Dim3((uint)blocks, (uint)t), new Dim3(ArgmaxThreads), 0, stream, args);
    }

    /// <summary>
    /// Samples tokens[t] from row t restricted to its <paramref name="topK"/> largest logits (ties to the lower index),
    /// softmaxed at <paramref name="temperature"/>, then to the shortest most-likely-first prefix whose mass reaches
    /// <paramref name="topP"/>; <paramref name="uniforms"/>[t] ∈ [0, 1) is the row's random draw, made by the caller.
    /// </summary>
    public static void SampleTopKTopP(CudaStream stream, DeviceSpan<int> tokens, DeviceSpan<float> logits, DeviceSpan<float> uniforms,
        int t, int v, int topK, float temperature, float topP)
    {
        CheckRows(logits, t, v);
        KernelChecks.Holds(tokens, t, nameof(tokens));
        KernelChecks.Holds(uniforms, t, nameof(uniforms));
        if (topK < 1 || topK > Math.Min(MaxTopK, v))
            throw new ArgumentOutOfRangeException(nameof(topK), topK, $"top-k must be in 1..{Math.Min(MaxTopK, v)} (at most {MaxTopK} on the GPU, at most V)");
        if (!(temperature > 0) || float.IsInfinity(temperature))
            throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "temperature must be a positive finite number (use Argmax for greedy)");
        if (!(topP > 0 && topP <= 1)) throw new ArgumentOutOfRangeException(nameof(topP), topP, "top-p must be in (0, 1]");
        ulong pOut = tokens.Pointer, pIn = logits.Pointer, pU = uniforms.Pointer;
        void** args = stackalloc void*[] { &pOut, &pIn, &pU, &t, &v, &topK, &temperature, &topP };
        stream.Context.Kernels.Launch(KernelId.SampleTopKTopPF32, new Dim3((uint)t), new Dim3(RowThreads), 0, stream, args);
    }

    private static void CheckRows(DeviceSpan<float> logits, int t, int v)
    {
        KernelChecks.Positive(t, nameof(t));
        KernelChecks.Positive(v, nameof(v));
        KernelChecks.Holds(logits, (long)t * v, nameof(logits));
    }
}

/// <summary>
/// Where the blocks of <see cref="SamplingKernels.Argmax"/> meet: a 64-bit best key and an arrival count per row, zero
/// between launches (the last block of a row resets them). For one stream at a time.
/// </summary>
internal sealed class ArgmaxScratch : IDisposable
{
    private readonly DeviceBuffer<uint> _keys;       // [rows] the row's best (value, index) key so far: 64 bits, two uints
    private readonly DeviceBuffer<uint> _arrivals;   // [rows] the row's blocks done so far

    /// <summary>Rows a call may take.</summary>
    public int MaxRows { get; }

    /// <summary>Allocates room for <paramref name="maxRows"/> rows and queues its zeroing on <paramref name="stream"/>.</summary>
    public ArgmaxScratch(CudaStream stream, int maxRows)
    {
        ArgumentNullException.ThrowIfNull(stream);
        KernelChecks.Positive(maxRows, nameof(maxRows));
        MaxRows = maxRows;
        _keys = stream.Context.Allocate<uint>(2L * maxRows);
        try
        {
            _arrivals = stream.Context.Allocate<uint>(maxRows);
            _keys.Span.Fill(0u, stream);
            _arrivals.Span.Fill(0u, stream);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    internal DeviceSpan<uint> Keys => _keys.Span;
    internal DeviceSpan<uint> Arrivals => _arrivals.Span;

    /// <inheritdoc />
    public void Dispose()
    {
        _keys.Dispose();
        _arrivals?.Dispose();
    }
}
