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
    KdaDecodeStepF32,
    KdaDecodeStepBf16,
    KdaDecodeStepTableF32,
    KdaDecodeStepTableBf16,
    KdaPrepareF32,
    KdaPrepareBf16,
    KdaPrepareF32Bf16,
    KdaConvWindowUpdateF32,
    KdaConvWindowUpdateBf16,
    KdaChunkIntraF32,
    KdaChunkIntraBf16,
    KdaChunkPrefillF32,
    KdaChunkPrefillBf16,
    KdaChunkPrefillWideBf16,
    FillUniformBf16,
    EmbedF32,
    RmsNormF32,
    GatedRmsNormF32,
    GatedRmsNormBf16Output,
    AddF32,
    SwiGluF32,
    GatherRowsF32,
    ScatterAddRowsF32,
    WriteLatentRowsF32,
    F32ToBf16,
    SplitBf16,
    GemvF32,
    GemvRmsNormF32,
    GemvStreamF32,
    GemmBf16F32,
    MlaAbsorbQuery,
    MlaCombineAbsorbOutput,
    MlaDecodePartial,
    MlaDecodePartialH32R512D576,
    MlaDecodePartialWgmmaH32R512D576,
    MlaDecodePartialTable,
    MlaDecodePartialTableH32R512D576,
    MlaDecodePartialTableWgmmaH32R512D576,
    MlaDecodeFusedR512D576,
    MlaPrefillD192V128,
    MlaPrefillGeneral,
    MlaPrefillWgmmaD192V128,
    MoeRouteF32,
    MoeRouterRouteF32,
    MoeRouterRouteClusterF32,
    MoeDecodeGateUp,
    MoeDecodeDown,
    MoePrefillCount,
    MoePrefillSchedule,
    MoePrefillPlace,
    MoePrefillGateUp,
    MoePrefillDown,
    MoePrefillGateUpWgmma,
    MoePrefillDownWgmma,
    MoePrefillCombine,
}

/// <summary>Where each <see cref="KernelId"/> lives: its module (the <c>.cu</c> file's name) and its <c>extern "C"</c> name.</summary>
internal static class KernelCatalog
{
    /// <summary>
    /// A kernel's module and entry point. <paramref name="Programmatic"/>: the kernel calls
    /// <c>griddepcontrol.wait</c> before it touches memory an earlier kernel writes or reads, so it may be launched
    /// with programmatic dependent launch (it starts while its predecessor drains; see <c>kernels/gemv.cu</c>).
    /// <paramref name="ClusterX"/>: launched as thread-block clusters of that many blocks along x (the grid's x a
    /// multiple of it; compute capability 9.0), 1 for plain blocks.
    /// </summary>
    public readonly record struct Entry(string Module, string Name, bool Programmatic = false, int ClusterX = 1);

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
        KernelId.KdaDecodeStepF32 => new("kda", "kimi_kda_decode_step_f32", Programmatic: true),
        KernelId.KdaDecodeStepBf16 => new("kda", "kimi_kda_decode_step_bf16", Programmatic: true),
        KernelId.KdaDecodeStepTableF32 => new("kda", "kimi_kda_decode_step_table_f32", Programmatic: true),
        KernelId.KdaDecodeStepTableBf16 => new("kda", "kimi_kda_decode_step_table_bf16", Programmatic: true),
        KernelId.KdaPrepareF32 => new("kda", "kimi_kda_prepare_f32"),
        KernelId.KdaPrepareBf16 => new("kda", "kimi_kda_prepare_bf16"),
        KernelId.KdaPrepareF32Bf16 => new("kda", "kimi_kda_prepare_f32_bf16"),
        KernelId.KdaConvWindowUpdateF32 => new("kda", "kimi_kda_conv_window_update_f32"),
        KernelId.KdaConvWindowUpdateBf16 => new("kda", "kimi_kda_conv_window_update_bf16"),
        KernelId.KdaChunkIntraF32 => new("kda", "kimi_kda_chunk_intra_f32"),
        KernelId.KdaChunkIntraBf16 => new("kda", "kimi_kda_chunk_intra_bf16"),
        KernelId.KdaChunkPrefillF32 => new("kda", "kimi_kda_chunk_prefill_f32"),
        KernelId.KdaChunkPrefillBf16 => new("kda", "kimi_kda_chunk_prefill_bf16"),
        KernelId.KdaChunkPrefillWideBf16 => new("kda", "kimi_kda_chunk_prefill_wide_bf16"),
        KernelId.FillUniformBf16 => new("synthetic", "kimi_fill_uniform_bf16"),
        KernelId.EmbedF32 => new("activations", "kimi_embed_f32", Programmatic: true),
        KernelId.RmsNormF32 => new("activations", "kimi_rmsnorm_f32", Programmatic: true),
        KernelId.GatedRmsNormF32 => new("activations", "kimi_gated_rmsnorm_f32", Programmatic: true),
        KernelId.GatedRmsNormBf16Output => new("activations", "kimi_gated_rmsnorm_bf16o", Programmatic: true),
        KernelId.AddF32 => new("activations", "kimi_add_f32", Programmatic: true),
        KernelId.SwiGluF32 => new("activations", "kimi_swiglu_f32", Programmatic: true),
        KernelId.GatherRowsF32 => new("activations", "kimi_gather_rows_f32", Programmatic: true),
        KernelId.ScatterAddRowsF32 => new("activations", "kimi_scatter_add_rows_f32", Programmatic: true),
        KernelId.WriteLatentRowsF32 => new("activations", "kimi_write_latent_rows_f32", Programmatic: true),
        KernelId.F32ToBf16 => new("activations", "kimi_f32_to_bf16", Programmatic: true),
        KernelId.SplitBf16 => new("activations", "kimi_split_bf16", Programmatic: true),
        KernelId.GemvF32 => new("gemv", "kimi_gemv_f32", Programmatic: true),
        KernelId.GemvRmsNormF32 => new("gemv", "kimi_gemv_rmsnorm_f32", Programmatic: true),
        KernelId.GemvStreamF32 => new("gemv", "kimi_gemv_stream_f32", Programmatic: true),
        KernelId.GemmBf16F32 => new("gemm", "kimi_gemm_bf16_f32"),
        KernelId.MlaAbsorbQuery => new("mla", "kimi_mla_absorb_query", Programmatic: true),
        KernelId.MlaCombineAbsorbOutput => new("mla", "kimi_mla_combine_absorb_output", Programmatic: true),
        KernelId.MlaDecodePartial => new("mla", "kimi_mla_decode_partial", Programmatic: true),
        KernelId.MlaDecodePartialH32R512D576 => new("mla", "kimi_mla_decode_partial_h32_r512_d576", Programmatic: true),
        KernelId.MlaDecodePartialWgmmaH32R512D576 => new("mla", "kimi_mla_decode_partial_wgmma_h32_r512_d576", Programmatic: true),
        KernelId.MlaDecodePartialTable => new("mla", "kimi_mla_decode_partial_table", Programmatic: true),
        KernelId.MlaDecodePartialTableH32R512D576 => new("mla", "kimi_mla_decode_partial_table_h32_r512_d576", Programmatic: true),
        KernelId.MlaDecodePartialTableWgmmaH32R512D576 => new("mla", "kimi_mla_decode_partial_table_wgmma_h32_r512_d576", Programmatic: true),
        KernelId.MlaDecodeFusedR512D576 => new("mla", "kimi_mla_decode_fused_r512_d576", Programmatic: true, ClusterX: 8),
        KernelId.MlaPrefillD192V128 => new("mla", "kimi_mla_prefill_d192_v128"),
        KernelId.MlaPrefillGeneral => new("mla", "kimi_mla_prefill_general"),
        KernelId.MlaPrefillWgmmaD192V128 => new("mla", "kimi_mla_prefill_wgmma_d192_v128"),
        KernelId.MoeRouteF32 => new("moe", "kimi_moe_route_f32", Programmatic: true),
        KernelId.MoeRouterRouteF32 => new("moe", "kimi_moe_router_route_f32", Programmatic: true),
        KernelId.MoeRouterRouteClusterF32 => new("moe", "kimi_moe_router_route_cluster_f32", Programmatic: true, ClusterX: 8),
        KernelId.MoeDecodeGateUp => new("moe", "kimi_moe_decode_gate_up", Programmatic: true),
        KernelId.MoeDecodeDown => new("moe", "kimi_moe_decode_down", Programmatic: true),
        KernelId.MoePrefillCount => new("moe", "kimi_moe_prefill_count"),
        KernelId.MoePrefillSchedule => new("moe", "kimi_moe_prefill_schedule"),
        KernelId.MoePrefillPlace => new("moe", "kimi_moe_prefill_place"),
        KernelId.MoePrefillGateUp => new("moe", "kimi_moe_prefill_gate_up"),
        KernelId.MoePrefillDown => new("moe", "kimi_moe_prefill_down"),
        KernelId.MoePrefillGateUpWgmma => new("moe", "kimi_moe_prefill_gate_up_wgmma"),
        KernelId.MoePrefillDownWgmma => new("moe", "kimi_moe_prefill_down_wgmma"),
        KernelId.MoePrefillCombine => new("moe", "kimi_moe_prefill_combine"),
        _ => throw new ArgumentOutOfRangeException(nameof(id), id, "no catalog entry for this kernel id"),
    };

    public static IReadOnlyList<KernelId> All { get; } = Enum.GetValues<KernelId>();

    /// <summary>The PTX target a device of compute capability <paramref name="capability"/> loads: <c>sm90</c> (Hopper and newer) or <c>sm80</c> (Ampere, Ada).</summary>
    public static string TargetFor((int Major, int Minor) capability) => capability.Major >= 9 ? "sm90" : "sm80";

    /// <summary>The PTX targets every module is built for unless its source says otherwise.</summary>
    public static IReadOnlyList<string> DefaultTargets { get; } = ["sm90", "sm80"];

    /// <summary>A module built for fewer targets than the default: its targets, what it is, and the feature that needs them.</summary>
    private readonly record struct Restricted(string[] Targets, string Description, string Feature);

    private static readonly Dictionary<string, Restricted> RestrictedModules = new()
    {
        ["kda"] = new(["sm90"], "The KDA kernels (kernels/kda/kda.cu)", "up to 218 KiB of shared memory a block"),
    };

    /// <summary>
    /// The PTX targets <paramref name="module"/> is built for, newest first: those on its source's
    /// <c>// KIMI_PTX_TARGETS:</c> line, which <c>kernels/build.sh</c> reads (the freshness tests check that the two
    /// agree), or <see cref="DefaultTargets"/>.
    /// </summary>
    public static IReadOnlyList<string> TargetsOf(string module) =>
        RestrictedModules.TryGetValue(module, out Restricted restricted) ? restricted.Targets : DefaultTargets;

    /// <summary>
    /// Why <paramref name="module"/> cannot run on a device of compute capability <paramref name="capability"/> (it has
    /// no image for that device's target), or null when it can.
    /// </summary>
    public static string? Unsupported(string module, string deviceName, (int Major, int Minor) capability)
    {
        if (!RestrictedModules.TryGetValue(module, out Restricted restricted) || restricted.Targets.Contains(TargetFor(capability))) return null;
        string oldest = restricted.Targets[^1]; // "sm90" → 9.0
        return $"{restricted.Description} need compute capability {oldest[2..^1]}.{oldest[^1]} or newer ({restricted.Feature}); " +
               $"{deviceName} has compute capability {capability.Major}.{capability.Minor}.";
    }
}
