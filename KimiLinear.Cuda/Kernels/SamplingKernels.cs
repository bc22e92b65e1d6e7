using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>From logits [T, V] (fp32) to probabilities or tokens, one row per sequence (<c>kernels/sampling.cu</c>).</summary>
internal static unsafe class SamplingKernels
{
    /// <summary>The largest top-k the GPU sampler supports (one candidate per thread of a 1,024-thread block).</summary>
    public const int MaxTopK = 1024;

    private const int RowThreads = 1024;

    /// <summary>probabilities[T, V] = softmax(logits[T, V]) per row.</summary>
    public static void Softmax(CudaStream stream, DeviceSpan<float> probabilities, DeviceSpan<float> logits, int t, int v)
    {
        CheckRows(logits, t, v);
        KernelChecks.Holds(probabilities, (long)t * v, nameof(probabilities));
        ulong pOut = probabilities.Pointer, pIn = logits.Pointer;
        void** args = stackalloc void*[] { &pOut, &pIn, &t, &v };
        stream.Context.Kernels.Launch(KernelId.SoftmaxF32, new Dim3((uint)t), new Dim3(RowThreads), 0, stream, args);
    }

    /// <summary>tokens[t] = argmax of row t (first occurrence of the maximum; NaN skipped; -1 for a row of NaN).</summary>
    public static void Argmax(CudaStream stream, DeviceSpan<int> tokens, DeviceSpan<float> logits, int t, int v)
    {
        CheckRows(logits, t, v);
        KernelChecks.Holds(tokens, t, nameof(tokens));
        ulong pOut = tokens.Pointer, pIn = logits.Pointer;
        void** args = stackalloc void*[] { &pOut, &pIn, &t, &v };
        stream.Context.Kernels.Launch(KernelId.ArgmaxF32, new Dim3((uint)t), new Dim3(RowThreads), 0, stream, args);
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
