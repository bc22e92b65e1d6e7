namespace KimiLinear;

/// <summary>Where a model's layers run.</summary>
public enum KimiDevice
{
    /// <summary>The GPU when one is present and a GPU backend is referenced, otherwise the CPU.</summary>
    Auto,
    /// <summary>The CPU engine (the executable specification).</summary>
    Cpu,
    /// <summary>An NVIDIA GPU through KimiLinear.Cuda.</summary>
    Cuda,
}

/// <summary>Options for <see cref="KimiModel.Load(string, KimiModelOptions?)"/>.</summary>
public sealed record KimiModelOptions
{
    /// <summary>
    /// Where the model runs. Default <see cref="KimiDevice.Cpu"/>; <see cref="KimiDevice.Auto"/> and
    /// <see cref="KimiDevice.Cuda"/> need the KimiLinear.Cuda package referenced.
    /// </summary>
    public KimiDevice Device { get; init; } = KimiDevice.Cpu;

    /// <summary>Which GPU runs the model when <see cref="Device"/> picks CUDA (0 = the first). Default 0.</summary>
    public int CudaDeviceIndex { get; init; }

    /// <summary>Largest number of tokens a session may hold; null = the checkpoint's <c>model_max_length</c>.</summary>
    public int? MaxSequenceLength { get; init; }

    /// <summary>
    /// Route with the HF remote code's biased weights (the correction bias also scales the chosen experts) instead of the
    /// plain sigmoid scores that vLLM, SGLang and the transformers-native port use. Expert selection is the same either way.
    /// </summary>
    public bool BiasedRoutingWeights { get; init; }

    /// <summary>Threads the CPU engine may use for matrix work; null = all cores.</summary>
    public int? CpuThreads { get; init; }

    /// <summary>
    /// Most tokens one forward step takes: a longer prompt runs in pieces of this size, so the activation memory of a
    /// prefill is bounded by it. null = the backend's default (CPU 4,096 tokens, CUDA 8,192). On a GPU larger pieces give
    /// the prefill's matrix products more rows at once, for more activation memory (docs/performance.md measures both).
    /// </summary>
    public int? PrefillPieceTokens { get; init; }

    /// <summary>Where loading and generation report what they do; null = nowhere.</summary>
    public Microsoft.Extensions.Logging.ILogger? Logger { get; init; }
}

/// <summary>Progress of <see cref="KimiModel.LoadAsync"/>: bytes of tensor data mapped/uploaded so far.</summary>
/// <param name="Stage">What is being done ("reading config", "mapping weights", "uploading to GPU", ...).</param>
/// <param name="BytesDone">Bytes of weights processed.</param>
/// <param name="BytesTotal">Bytes of weights in the checkpoint.</param>
public readonly record struct KimiLoadProgress(string Stage, long BytesDone, long BytesTotal);
