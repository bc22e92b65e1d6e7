namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// One value per kernel entry point shipped in the embedded PTX. Adding a kernel: write it in
/// <c>kernels/&lt;family&gt;.cu</c>, add its id here and its row in <see cref="KernelCatalog"/>, rebuild the PTX.
/// </summary>
internal enum KernelId
{
    EmbeddingGatherBf16,
    RmsNormResidualBf16,
    SwiGluBf16,
    GemvBf16,
    GemvBf16F32,
    GemmBf16,
    SoftmaxF32,
    ArgmaxF32,
    SampleTopKTopPF32,
}

/// <summary>Where each <see cref="KernelId"/> lives: its module (the <c>.cu</c> file's name) and its <c>extern "C"</c> name.</summary>
internal static class KernelCatalog
{
    /// <summary>
    /// A kernel's module and entry point. <paramref name="Programmatic"/>: the kernel calls
    /// <c>griddepcontrol.wait</c> before it touches memory an earlier kernel writes or reads, so it may be launched
    /// with programmatic dependent launch (it starts while its predecessor drains; see <c>kernels/gemv.cu</c>).
    /// </summary>
    public readonly record struct Entry(string Module, string Name, bool Programmatic = false);

    public static Entry Of(KernelId id) => id switch
    {
        KernelId.EmbeddingGatherBf16 => new("embedding", "kimi_embedding_gather_bf16"),
        KernelId.RmsNormResidualBf16 => new("rmsnorm", "kimi_rmsnorm_residual_bf16"),
        KernelId.SwiGluBf16 => new("swiglu", "kimi_swiglu_bf16"),
        KernelId.GemvBf16 => new("gemv", "kimi_gemv_bf16", Programmatic: true),
        KernelId.GemvBf16F32 => new("gemv", "kimi_gemv_bf16_f32", Programmatic: true),
        KernelId.GemmBf16 => new("gemm", "kimi_gemm_bf16"),
        KernelId.SoftmaxF32 => new("sampling", "kimi_softmax_f32"),
        KernelId.ArgmaxF32 => new("sampling", "kimi_argmax_f32"),
        KernelId.SampleTopKTopPF32 => new("sampling", "kimi_sample_topk_topp_f32"),
        _ => throw new ArgumentOutOfRangeException(nameof(id), id, "no catalog entry for this kernel id"),
    };

    public static IReadOnlyList<KernelId> All { get; } = Enum.GetValues<KernelId>();
}
