using KimiLinear.Cuda.Interop;
using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// MLA attention on the GPU (<c>kernels/mla.cu</c>; its opening comment has the math). Decode takes the absorbed form
/// (MQA over the bf16 latent cache): <see cref="AbsorbQuery"/>, <c>DecodeAttention</c> (the slices' partials, over one
/// cache or over a table of several sequences' caches) and <see cref="AbsorbOutput"/> (their merge, then W_UV).
/// Prefill takes the expanded form, <see cref="PrefillAttention"/>, over keysValues = latent[:, :R]·kvBᵀ computed by a
/// GEMM before. Activations are fp32, kvB and the cache bf16 (as <see cref="ushort"/> bits). Everything is queued on the
/// stream without a host synchronisation, so the calls can be captured in a CUDA graph.
/// </summary>
/// <remarks>
/// The attention products run on the tensor cores with fp32 accumulation; the fp32 operands (q_lat, the softmax
/// weights) enter as fp16 and the bf16 values they meet are converted to fp16, exact for magnitudes up to 65504 (the
/// normalised latent, k_pe, the expanded keys/values and q_lat = W_UKᵀ·q are far below; the weights are ≤ 1). Results
/// land within ~5e-4 relative of a float64 reference.
/// <para>
/// Query t of a call sits at position start + t and sees cache rows [0, start + t]; the cache rows past that are never
/// read (they may hold anything, NaN included). Every span must start 16-byte aligned (whole buffers and arena spans
/// are); layouts are row-major.
/// </para>
/// </remarks>
internal static unsafe class MlaKernels
{
    // Launch geometry and dynamic shared memory, as kernels/mla.cu defines them (kAbsorb*, kQueryTokens, kDecode*,
    // kPrefill*, absorb_query_smem_bytes, absorb_output_smem_bytes, decode_smem_bytes, prefill_smem_bytes). The three
    // decode kernels are launched programmatically where the device has it (KernelCatalog): each waits for its
    // predecessor before reading what that wrote.
    private const int AbsorbThreads = 256;
    private const int AbsorbWarps = AbsorbThreads / 32;
    private const int AbsorbColumns = MlaDecodeScratch.OutputColumnsPerBlock;
    private const int QueryTokens = 4;
    private const int DecodeWarps = 8;
    private const int DecodeThreads = DecodeWarps * 32;
    private const int DecodeRows = 48;
    private const int DecodeStages = 3;
    private const int DecodeMaxQuerySteps = 9;
    private const int DecodeMaxRank = 512;
    private const int DecodeMaxHeads = 32;
    private const int DecodeWgmmaThreads = 384;
    // decode_wgmma_smem_bytes: 1 KB of alignment slack, Q (72 KB), 2 stages of 64 cache rows (72 KB each), P (8 KB),
    // α [32], 6 mbarriers.
    private const int DecodeWgmmaSharedBytes = 1024 + 64 * 576 * 2 + 2 * DecodeWgmmaRows * 576 * 2 + 64 * 64 * 2 + 32 * 4 + 6 * 8;
    private const int DecodeWgmmaRows = 64;   // kWdRows: the cache rows of a tile, the rows of its copy-engine boxes
    private const int PrefillThreads = 256;
    private const int PrefillRows = 128;
    private const int PrefillStages = 3;
    private const int PrefillMaxQueryHeadDim = 192;
    private const int PrefillMaxValueDim = 128;
    private const int PrefillWgmmaThreads = 512;
    private const int PrefillWgmmaRows = 192;
    // prefill_wgmma_smem_bytes: 1 KB of alignment slack, Q (72 KB), 3 stages of K and V (40 KB each), 6 mbarriers.
    private const int PrefillWgmmaSharedBytes = 1024 + 192 * 192 * 2 + 3 * (64 * 192 * 2 + 64 * 128 * 2) + 6 * 8;
    private const int PrefillWgmmaKeys = 64;   // kWgKeys: the keys of a tile, the rows of its copy-engine boxes
    private const float Log2E = 1.4426950408889634f;
    // The one-launch decode (kimi_mla_decode_fused_r512_d576): clusters of kFusedBlocks blocks for kFusedHeads heads,
    // each holding up to kFusedMaxRows cache rows 1,168 bytes apart (decode_fused_smem_bytes: the rows, q_lat and P as
    // bf16 hi/lo [8][576] and [8][184], then fp32 scratch [8][256], q_lat columns [256], q [128], (max, sum) [4][2],
    // W_UV sums [16][8]).
    private const int FusedBlocks = 8;
    private const int FusedHeads = 4;
    private const int FusedThreads = 512;
    private const int FusedMaxRows = 176;
    private const int FusedRowBytes = 576 * 2 + 16;
    private const int FusedSharedBytes = FusedMaxRows * FusedRowBytes + 2 * FusedHeads * FusedRowBytes + 2 * FusedHeads * (FusedMaxRows + 8) * 2
        + (8 * 256 + 256 + 128 + 2 * FusedHeads + 16 * 8) * sizeof(float);

    /// <summary>The longest cache (rows, this step's included) <see cref="DecodeFused"/> takes: 8 slices of 176 rows.</summary>
    public const int FusedDecodeMaxLength = FusedBlocks * FusedMaxRows;

    private static int DecodeSharedBytes(int d, int mTiles) =>
        DecodeStages * DecodeRows * (d + 8) * 2 + DecodeWarps * 16 * (DecodeRows + 8) * 4 + mTiles * 16 * (DecodeRows + 8) * 2 + mTiles * 16 * 4;

    private static int AbsorbQuerySharedBytes(int nopeDim) => (QueryTokens * nopeDim + AbsorbWarps * QueryTokens * AbsorbColumns) * sizeof(float);

    private static int AbsorbOutputSharedBytes(int splits) => (splits + AbsorbWarps * AbsorbColumns + AbsorbColumns + AbsorbWarps) * sizeof(float);

    private static int PrefillSharedBytes(int queryHeadDim, int valueDim) => PrefillStages * 64 * ((queryHeadDim + 8) + (valueDim + 8)) * 2;

    /// <summary>
    /// Folds W_UK into the queries: q_lat[t, h, :R] = Σ_n q[t, h, n]·kvB[h(N+V) + n, :] and q_lat[t, h, R:] = q[t, h, N:]
    /// (the rope part, scored against the shared k_pe as it is). Reads W_UK once for all tokens.
    /// </summary>
    /// <param name="stream">Where to queue it (one launch).</param>
    /// <param name="queryLatent">[T, H, R + P] fp32 out.</param>
    /// <param name="q">
    /// [T, H·(N + P)] fp32, per head the nope part then the rope part; under programmatic launch read before the kernel's
    /// wait, so it must not be the output of the kernel launched just before, and that kernel must let this one launch
    /// only after its own wait (the latent-row writer, <see cref="ActivationKernels.WriteLatentRows"/>, does).
    /// </param>
    /// <param name="kvB">kv_b_proj's weight [H·(N + V), R] bf16.</param>
    /// <param name="shape">R and P multiples of 8.</param>
    /// <param name="t">T ≥ 1.</param>
    public static void AbsorbQuery(CudaStream stream, DeviceSpan<float> queryLatent, DeviceSpan<float> q, DeviceSpan<ushort> kvB, MlaShape shape, int t)
    {
        CheckShape(shape);
        KernelChecks.Positive(t, nameof(t));
        KernelChecks.HoldsAligned(queryLatent, (long)t * shape.Heads * shape.LatentWidth, nameof(queryLatent));
        KernelChecks.HoldsAligned(q, (long)t * shape.QueryWidth, nameof(q));
        KernelChecks.HoldsAligned(kvB, (long)shape.KeyValueWidth * shape.Rank, nameof(kvB));
        int shared = AbsorbQuerySharedBytes(shape.NopeDim);
        CheckShared(stream, shared, "MLA query absorption");
        int h = shape.Heads, n = shape.NopeDim, p = shape.RopeDim, v = shape.ValueDim, r = shape.Rank;
        ulong pOut = queryLatent.Pointer, pQ = q.Pointer, pW = kvB.Pointer;
        void** args = stackalloc void*[] { &pOut, &pQ, &pW, &t, &h, &n, &p, &v, &r };
        stream.Context.Kernels.Launch(KernelId.MlaAbsorbQuery, new Dim3((uint)((r + AbsorbColumns - 1) / AbsorbColumns), (uint)h),
            new Dim3(AbsorbThreads), shared, stream, args);
    }

    /// <summary>
    /// Absorbed attention of T queries over the latent cache (MQA over R + P wide rows), as flash-decoding: a fixed
    /// number of slices (<see cref="MlaDecodeScratch.Splits"/>) per token, each block one slice for all heads, leaving
    /// each slice's unnormalised output and softmax (max, sum) in <paramref name="scratch"/>; <see cref="AbsorbOutput"/>
    /// merges them into out[t, h, :] = Σ_s p_s·latent[s, :R] with p = softmax over s ≤ start + t of
    /// scale·(q_lat[t, h]·latent[s]). The grid does not depend on start, which is read on the device: a captured decode
    /// graph stays valid while the cache grows. On Hopper the model's shape runs a partial kernel on wgmma whose q_lat and
    /// softmax weights enter as bf16 hi + lo pairs (within ~1e-5 of a float64 reference; the mma.sync kernels ~3e-4).
    /// </summary>
    /// <param name="stream">Where to queue it (one launch).</param>
    /// <param name="queryLatent">[T, H, R + P] fp32, what <see cref="AbsorbQuery"/> writes.</param>
    /// <param name="latent">The cache [≥ start + T, R + P] bf16 rows (c | k_pe), rows start .. start + T − 1 already appended.</param>
    /// <param name="start">
    /// A device int: the position of the first query (the cache length before this call), written by a copy or fill
    /// queued before the kernels of the step, not by a kernel: under programmatic launch the partial kernel reads it, and
    /// the cache rows before it, while its predecessor still runs.
    /// </param>
    /// <param name="t">T, 1 ≤ T ≤ <paramref name="scratch"/>'s MaxTokens.</param>
    /// <param name="shape">H ≤ 32; R a multiple of 64, ≤ 512; R + P a multiple of 16 (576 at most for H &gt; 16).</param>
    /// <param name="scale">The softmax scale, usually <see cref="MlaShape.Scale"/>.</param>
    /// <param name="scratch">The slices' partials, laid out for <paramref name="shape"/>.</param>
    /// <param name="allowWarpgroupMma">
    /// Whether the model's shape (H 32, R 512, R + P 576) may take the wgmma partial kernel where the device runs it
    /// (Hopper); false forces the mma.sync kernel, so that tests and benchmarks can reach both on one device.
    /// </param>
    public static void DecodeAttention(CudaStream stream, DeviceSpan<float> queryLatent, DeviceSpan<ushort> latent,
        DeviceSpan<int> start, int t, MlaShape shape, float scale, MlaDecodeScratch scratch, bool allowWarpgroupMma = true)
    {
        DecodePartial partial = CheckDecode(stream, queryLatent, t, shape, scale, scratch, allowWarpgroupMma);
        KernelChecks.HoldsAligned(latent, (long)t * shape.LatentWidth, nameof(latent)); // at least the call's own rows; start is on the device
        KernelChecks.Holds(start, 1, nameof(start));
        ulong pLatent = latent.Pointer;
        TensorMap* map = stackalloc TensorMap[2];
        map = Aligned(map);
        if (partial.TakesTensorMaps)
            EncodeRows(map, latent.Pointer, shape.LatentWidth, latent.Length / shape.LatentWidth, DecodeWgmmaRows);
        LaunchDecode(stream, partial.Single, partial, queryLatent, partial.TakesTensorMaps ? map : &pLatent, start, t, shape, scale, scratch);
    }

    /// <summary>
    /// Caches one table <c>DecodeAttention</c> takes (kDecodeTableSequences in kernels/mla.cu: its table is a kernel
    /// parameter), as many as the backend's decode scratch has tokens, so one AbsorbOutput follows each launch.
    /// </summary>
    public const int DecodeTableSequences = 16;

    /// <summary>
    /// <see cref="DecodeAttention(CudaStream, DeviceSpan{float}, DeviceSpan{ushort}, DeviceSpan{int}, int, MlaShape, float, MlaDecodeScratch, bool)"/>
    /// for one query of each of N sequences with caches of their own (a batched decode step), in one launch: query n
    /// attends to rows [0, starts[n]] of <paramref name="latents"/>[n] and its slices go to scratch token n, so one
    /// <see cref="AbsorbOutput"/> of N tokens merges them all. The caches' addresses travel in the launch's parameters
    /// (nothing is gathered, nothing on the device must be kept in step with the sessions) and the lengths stay on the
    /// device, as in the one-cache form, whose partials it equals bit for bit (the same kernel body per slice).
    /// </summary>
    /// <param name="stream">Where to queue it (one launch).</param>
    /// <param name="queryLatent">[N, H, R + P] fp32, what <see cref="AbsorbQuery"/> writes for the N queries.</param>
    /// <param name="latents">
    /// N caches (1 ≤ N ≤ <see cref="DecodeTableSequences"/> and ≤ <paramref name="scratch"/>'s MaxTokens), each
    /// [≥ starts[n] + 1, R + P] bf16 with its query's own row already appended.
    /// </param>
    /// <param name="starts">[N] device ints: query n's position in its cache (that cache's length before this step), written as
    /// <c>start</c> of the one-cache form is.</param>
    /// <param name="shape">As for the one-cache form.</param>
    /// <param name="scale">The softmax scale, usually <see cref="MlaShape.Scale"/>.</param>
    /// <param name="scratch">The slices' partials, laid out for <paramref name="shape"/>.</param>
    /// <param name="allowWarpgroupMma">As for the one-cache form.</param>
    public static void DecodeAttention(CudaStream stream, DeviceSpan<float> queryLatent, ReadOnlySpan<DeviceSpan<ushort>> latents,
        DeviceSpan<int> starts, MlaShape shape, float scale, MlaDecodeScratch scratch, bool allowWarpgroupMma = true)
    {
        int sequences = latents.Length;
        KernelChecks.Positive(sequences, "latents.Length");
        if (sequences > DecodeTableSequences)
            throw new ArgumentException($"one MLA decode launch takes at most {DecodeTableSequences} caches, got {sequences}", nameof(latents));
        DecodePartial partial = CheckDecode(stream, queryLatent, sequences, shape, scale, scratch, allowWarpgroupMma);
        KernelChecks.Holds(starts, sequences, nameof(starts));
        // mla::DecodeTable: DecodeTableSequences cache addresses, or for the wgmma kernel mla::DecodeMaps: as many tensor
        // maps; entries past N stay 0 (the grid never reads them).
        ulong* table = stackalloc ulong[DecodeTableSequences];
        new Span<ulong>(table, DecodeTableSequences).Clear();
        TensorMap* maps = stackalloc TensorMap[DecodeTableSequences + 1];
        maps = Aligned(maps);
        new Span<TensorMap>(maps, DecodeTableSequences).Clear();
        for (int n = 0; n < sequences; n++)
        {
            KernelChecks.HoldsAligned(latents[n], shape.LatentWidth, $"latents[{n}]"); // at least its query's own row; the start is on the device
            table[n] = latents[n].Pointer;
            if (partial.TakesTensorMaps)
                EncodeRows(&maps[n], latents[n].Pointer, shape.LatentWidth, latents[n].Length / shape.LatentWidth, DecodeWgmmaRows);
        }
        LaunchDecode(stream, partial.Table, partial, queryLatent, partial.TakesTensorMaps ? maps : table, starts, sequences, shape, scale, scratch);
    }

    /// <summary>
    /// Merges the slices <c>DecodeAttention</c> left in <paramref name="scratch"/> by log-sum-exp into the
    /// attention-mixed latent out[t, h, :R] and applies W_UV: o[t, h·V + v] = Σ_r kvB[h(N+V) + N + v, r]·out[t, h, r].
    /// One launch of ⌈R / 128⌉ blocks per head, each merging 128 columns of out and multiplying them by the matching
    /// columns of the head's W_UV (read once for all tokens); the head's last block to finish adds the blocks' parts.
    /// </summary>
    /// <param name="stream">Where to queue it (one launch).</param>
    /// <param name="o">[T, H·V] fp32 out.</param>
    /// <param name="scratch">The slices of the preceding <c>DecodeAttention</c> of the same T tokens (or sequences).</param>
    /// <param name="kvB">kv_b_proj's weight [H·(N + V), R] bf16.</param>
    /// <param name="shape">R and P multiples of 8.</param>
    /// <param name="t">T, 1 ≤ T ≤ <paramref name="scratch"/>'s MaxTokens.</param>
    public static void AbsorbOutput(CudaStream stream, DeviceSpan<float> o, MlaDecodeScratch scratch, DeviceSpan<ushort> kvB, MlaShape shape, int t)
    {
        ArgumentNullException.ThrowIfNull(scratch);
        CheckShape(shape);
        KernelChecks.Positive(t, nameof(t));
        CheckScratch(scratch, shape, t);
        KernelChecks.HoldsAligned(o, (long)t * shape.OutputWidth, nameof(o));
        KernelChecks.HoldsAligned(kvB, (long)shape.KeyValueWidth * shape.Rank, nameof(kvB));
        int splits = scratch.Splits, shared = AbsorbOutputSharedBytes(splits);
        CheckShared(stream, shared, "MLA output absorption");
        int h = shape.Heads, n = shape.NopeDim, v = shape.ValueDim, r = shape.Rank;
        ulong pO = o.Pointer, pParts = scratch.Parts.Pointer, pArrivals = scratch.Arrivals.Pointer;
        ulong pSlices = scratch.Outputs.Pointer, pStats = scratch.Stats.Pointer, pW = kvB.Pointer;
        void** args = stackalloc void*[] { &pO, &pParts, &pArrivals, &pSlices, &pStats, &pW, &t, &h, &n, &v, &r, &splits };
        stream.Context.Kernels.Launch(KernelId.MlaCombineAbsorbOutput, new Dim3((uint)scratch.OutputBlocks, (uint)h),
            new Dim3(AbsorbThreads), shared, stream, args);
    }

    /// <summary>
    /// Whether <see cref="DecodeFused"/> runs for <paramref name="shape"/> on <paramref name="context"/>'s device: the
    /// model's head dims (N 128, P 64, V 128, R 512), a multiple of 4 heads, and the mla module's sm_90a cubin loaded
    /// (thread-block clusters, Hopper).
    /// </summary>
    public static bool RunsFusedDecode(CudaContext context, MlaShape shape) =>
        shape is { NopeDim: 128, RopeDim: 64, ValueDim: 128, Rank: 512 } && shape.Heads > 0 && shape.Heads % FusedHeads == 0
        && context.Kernels.RunsSm90a("mla");

    /// <summary>
    /// The whole absorbed decode of one token over a short cache in one launch: what <see cref="AbsorbQuery"/>,
    /// <see cref="DecodeAttention(CudaStream, DeviceSpan{float}, DeviceSpan{ushort}, DeviceSpan{int}, int, MlaShape, float, MlaDecodeScratch, bool)"/>
    /// and <see cref="AbsorbOutput"/> compute for T = 1, o[h·V + v] = Σ_r W_UV_h[v, r]·out[h, r] with out the softmax
    /// mix of the cache rows 0 .. start under q_lat = q·W_UK. Clusters of 8 blocks, one for every 4 heads, each block a
    /// slice of the cache held in shared memory (kernels/mla.cu). Its q_lat and softmax weights enter the tensor cores
    /// as bf16 hi + lo pairs (within ~1e-5 of a float64 reference).
    /// </summary>
    /// <param name="stream">Where to queue it (one launch).</param>
    /// <param name="o">[1, H·V] fp32 out.</param>
    /// <param name="q">
    /// [1, H·(N + P)] fp32; under programmatic launch read before the kernel's wait, as <see cref="AbsorbQuery"/> reads it
    /// (the same precondition on the kernel launched just before).
    /// </param>
    /// <param name="latent">The cache [≥ start + 1, R + P] bf16, row start (this step's) appended by the kernel launched just before.</param>
    /// <param name="start">
    /// A device int, the cache's length before this step, at most <see cref="FusedDecodeMaxLength"/> − 1 (the kernel traps
    /// past it: a graph that replays this launch must be recorded again before the cache grows past it), written as
    /// <c>DecodeAttention</c>'s start is.
    /// </param>
    /// <param name="kvB">kv_b_proj's weight [H·(N + V), R] bf16.</param>
    /// <param name="shape">One that <see cref="RunsFusedDecode"/> accepts.</param>
    /// <param name="scale">The softmax scale, usually <see cref="MlaShape.Scale"/>.</param>
    public static void DecodeFused(CudaStream stream, DeviceSpan<float> o, DeviceSpan<float> q, DeviceSpan<ushort> latent, DeviceSpan<int> start,
        DeviceSpan<ushort> kvB, MlaShape shape, float scale)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (!RunsFusedDecode(stream.Context, shape))
            throw new ArgumentException(
                $"the one-launch MLA decode needs N 128, P 64, V 128, R 512, a multiple of {FusedHeads} heads and the sm_90a kernels (Hopper); " +
                $"got H = {shape.Heads}, N = {shape.NopeDim}, P = {shape.RopeDim}, V = {shape.ValueDim}, R = {shape.Rank} on {stream.Context.Device.Name}",
                nameof(shape));
        CheckScale(scale);
        KernelChecks.HoldsAligned(o, shape.OutputWidth, nameof(o));
        KernelChecks.HoldsAligned(q, shape.QueryWidth, nameof(q));
        KernelChecks.HoldsAligned(latent, shape.LatentWidth, nameof(latent)); // at least this step's row; the start is on the device
        KernelChecks.HoldsAligned(kvB, (long)shape.KeyValueWidth * shape.Rank, nameof(kvB));
        KernelChecks.Holds(start, 1, nameof(start));
        CheckShared(stream, FusedSharedBytes, "MLA one-launch decode");
        ulong pO = o.Pointer, pQ = q.Pointer, pLatent = latent.Pointer, pKvB = kvB.Pointer, pStart = start.Pointer;
        float scaleLog2 = scale * Log2E;
        void** args = stackalloc void*[] { &pO, &pQ, &pLatent, &pKvB, &pStart, &scaleLog2 };
        stream.Context.Kernels.Launch(KernelId.MlaDecodeFusedR512D576, new Dim3(FusedBlocks, (uint)(shape.Heads / FusedHeads)), new Dim3(FusedThreads),
            FusedSharedBytes, stream, args);
    }

    /// <summary>
    /// Causal flash attention of T queries in the expanded form, on the tensor cores: per head, key s =
    /// (keysValues[s, h(N+V) : +N] | latent[s, R : R+P]), value s = keysValues[s, h(N+V)+N : +V], softmax over
    /// s ≤ start + t of scale·(q·key). N + P = 192, V = 128 (the model) runs a kernel with those dims compiled in; on
    /// Hopper, N = 128, P = 64, V = 128 runs one on warpgroup MMA (wgmma) with its own loading warps.
    /// </summary>
    /// <param name="stream">Where to queue it (one launch).</param>
    /// <param name="o">[T, H·V] fp32 out.</param>
    /// <param name="q">[T, H·(N + P)] bf16, per head the nope part then the rope part.</param>
    /// <param name="keysValues">[≥ L, H·(N + V)] bf16 = latent[:, :R]·kvBᵀ, L = start + T.</param>
    /// <param name="latent">The cache [≥ L, R + P] bf16 (k_pe = columns R .. R + P).</param>
    /// <param name="start">The position of the first query (≥ 0).</param>
    /// <param name="t">T ≥ 1.</param>
    /// <param name="shape">N, P, V multiples of 8; N + P a multiple of 16 and ≤ 192; V ≤ 128.</param>
    /// <param name="scale">The softmax scale, usually <see cref="MlaShape.Scale"/>.</param>
    /// <param name="allowWarpgroupMma">
    /// Whether the model's shape (N 128, P 64, V 128) may take the wgmma kernel where the device runs it (Hopper); false
    /// forces the mma.sync kernel, so that tests and benchmarks can reach both on one device.
    /// </param>
    public static void PrefillAttention(CudaStream stream, DeviceSpan<float> o, DeviceSpan<ushort> q, DeviceSpan<ushort> keysValues, DeviceSpan<ushort> latent,
        int start, int t, MlaShape shape, float scale, bool allowWarpgroupMma = true)
    {
        CheckShape(shape);
        if (shape.NopeDim % 8 != 0 || shape.QueryHeadDim % 16 != 0 || shape.QueryHeadDim > PrefillMaxQueryHeadDim
            || shape.ValueDim % 8 != 0 || shape.ValueDim > PrefillMaxValueDim)
            throw new ArgumentException(
                $"the MLA prefill kernel needs N a multiple of 8, N + P a multiple of 16 and ≤ {PrefillMaxQueryHeadDim}, V a multiple of 8 and ≤ {PrefillMaxValueDim}; " +
                $"got N = {shape.NopeDim}, P = {shape.RopeDim}, V = {shape.ValueDim}", nameof(shape));
        if (start < 0) throw new ArgumentOutOfRangeException(nameof(start), start, "start must be ≥ 0");
        KernelChecks.Positive(t, nameof(t));
        CheckScale(scale);
        long length = (long)start + t;
        KernelChecks.HoldsAligned(o, (long)t * shape.OutputWidth, nameof(o));
        KernelChecks.HoldsAligned(q, (long)t * shape.QueryWidth, nameof(q));
        KernelChecks.HoldsAligned(keysValues, length * shape.KeyValueWidth, nameof(keysValues));
        KernelChecks.HoldsAligned(latent, length * shape.LatentWidth, nameof(latent));
        // The model's shape on Hopper: the warpgroup-MMA kernel (sm_90a cubin only); elsewhere mma.sync.
        bool wgmma = allowWarpgroupMma && shape is { NopeDim: 128, RopeDim: 64, ValueDim: 128 } && stream.Context.Kernels.RunsSm90a("mla");
        KernelId id = wgmma ? KernelId.MlaPrefillWgmmaD192V128
            : shape.QueryHeadDim == 192 && shape.ValueDim == 128 ? KernelId.MlaPrefillD192V128 : KernelId.MlaPrefillGeneral;
        int threads = wgmma ? PrefillWgmmaThreads : PrefillThreads, rows = wgmma ? PrefillWgmmaRows : PrefillRows;
        int shared = wgmma ? PrefillWgmmaSharedBytes : PrefillSharedBytes(shape.QueryHeadDim, shape.ValueDim);
        CheckShared(stream, shared, "MLA prefill");

        int h = shape.Heads, n = shape.NopeDim, p = shape.RopeDim, v = shape.ValueDim, r = shape.Rank;
        float scaleLog2 = scale * Log2E;
        ulong pO = o.Pointer, pQ = q.Pointer, pKv = keysValues.Pointer, pLatent = latent.Pointer;
        // The wgmma kernel reads keysValues and the latent cache through the copy engine: maps of their first L rows
        // (rows past them land as zeros), encoded for this call's addresses and length, passed by value.
        TensorMap* maps = stackalloc TensorMap[3];
        maps = Aligned(maps);
        void* kvArgument = &pKv, latentArgument = &pLatent;
        if (wgmma)
        {
            EncodeRows(&maps[0], keysValues.Pointer, shape.KeyValueWidth, length, PrefillWgmmaKeys);
            EncodeRows(&maps[1], latent.Pointer, shape.LatentWidth, length, PrefillWgmmaKeys);
            kvArgument = &maps[0];
            latentArgument = &maps[1];
        }
        void** args = stackalloc void*[] { &pO, &pQ, kvArgument, latentArgument, &start, &t, &h, &n, &p, &v, &r, &scaleLog2 };
        stream.Context.Kernels.Launch(id, new Dim3((uint)((t + rows - 1) / rows), (uint)h), new Dim3((uint)threads), shared, stream, args);
    }

    /// <summary>The first 64-byte-aligned map in a buffer of one more than needed (the driver writes maps 64-byte aligned).</summary>
    private static TensorMap* Aligned(TensorMap* buffer) => (TensorMap*)(((nuint)buffer + 63) & ~(nuint)63);

    /// <summary>
    /// A tensor map of <paramref name="rows"/> rows of <paramref name="columns"/> bf16 values (rows packed, 16-byte
    /// aligned as the callers check) in boxes of <paramref name="boxRows"/> rows × 64 columns (128 bytes: the 128-byte
    /// swizzle the wgmma operands use). Each kernel's box rows are its tile's, so the two kernels' constants stay apart.
    /// </summary>
    private static void EncodeRows(TensorMap* map, ulong address, long columns, long rows, uint boxRows)
    {
        ulong* extent = stackalloc ulong[] { (ulong)columns, (ulong)rows };
        ulong* pitch = stackalloc ulong[] { (ulong)columns * sizeof(ushort) };
        uint* box = stackalloc uint[] { 64, boxRows };
        uint* step = stackalloc uint[] { 1, 1 };
        CudaException.ThrowIfFailed(CudaDriver.cuTensorMapEncodeTiled(map, TensorMapDataType.BFloat16, 2, address, extent, pitch, box, step,
            TensorMapInterleave.None, TensorMapSwizzle.Bytes128, TensorMapL2Promotion.Bytes256, TensorMapOobFill.Zeros));
    }

    /// <summary>
    /// A decode partial kernel in its two forms (one cache, a table of caches) and its launch geometry;
    /// <paramref name="TakesTensorMaps"/>: the caches go as tensor maps (the wgmma kernel reads them by the copy engine),
    /// not as addresses.
    /// </summary>
    private readonly record struct DecodePartial(KernelId Single, KernelId Table, int Threads, int SharedBytes, bool TakesTensorMaps = false);

    /// <summary>What both forms of <c>DecodeAttention</c> check besides the caches and starts, and the kernel they run.</summary>
    private static DecodePartial CheckDecode(CudaStream stream, DeviceSpan<float> queryLatent, int t, MlaShape shape, float scale,
        MlaDecodeScratch scratch, bool allowWarpgroupMma)
    {
        ArgumentNullException.ThrowIfNull(scratch);
        CheckShape(shape);
        int d = shape.LatentWidth, mTiles = (shape.Heads + 15) / 16;
        if (shape.Heads > DecodeMaxHeads || shape.Rank % 64 != 0 || shape.Rank > DecodeMaxRank || d % 16 != 0
            || d > 16 * DecodeMaxQuerySteps * (DecodeWarps / mTiles))
            throw new ArgumentException(
                $"the MLA decode kernel needs H ≤ {DecodeMaxHeads}, R a multiple of 64 and ≤ {DecodeMaxRank}, R + P a multiple of 16 and ≤ " +
                $"{16 * DecodeMaxQuerySteps * (DecodeWarps / mTiles)} (at H = {shape.Heads}); got H = {shape.Heads}, R = {shape.Rank}, P = {shape.RopeDim}", nameof(shape));
        KernelChecks.Positive(t, nameof(t));
        CheckScratch(scratch, shape, t);
        CheckScale(scale);
        KernelChecks.HoldsAligned(queryLatent, (long)t * shape.Heads * d, nameof(queryLatent));
        // The model's shape has a build with every loop bound fixed (kernels/mla.cu says why that matters); on Hopper, one
        // on warpgroup MMA (wgmma) with its own loading warps (sm_90a cubin only).
        bool modelShape = shape.Heads == 32 && shape.Rank == 512 && d == 576;
        bool wgmma = allowWarpgroupMma && modelShape && stream.Context.Kernels.RunsSm90a("mla");
        DecodePartial partial = wgmma
            ? new(KernelId.MlaDecodePartialWgmmaH32R512D576, KernelId.MlaDecodePartialTableWgmmaH32R512D576, DecodeWgmmaThreads, DecodeWgmmaSharedBytes,
                TakesTensorMaps: true)
            : modelShape
                ? new(KernelId.MlaDecodePartialH32R512D576, KernelId.MlaDecodePartialTableH32R512D576, DecodeThreads, DecodeSharedBytes(d, mTiles))
                : new(KernelId.MlaDecodePartial, KernelId.MlaDecodePartialTable, DecodeThreads, DecodeSharedBytes(d, mTiles));
        CheckShared(stream, partial.SharedBytes, "MLA decode");
        return partial;
    }

    /// <summary>
    /// One launch of a decode partial over grid (S, <paramref name="rows"/>): the forms differ only in their fourth and
    /// fifth arguments, the cache (<paramref name="latentArgument"/> points at its address, or at the table) and the
    /// device start(s).
    /// </summary>
    private static void LaunchDecode(CudaStream stream, KernelId id, DecodePartial partial, DeviceSpan<float> queryLatent, void* latentArgument,
        DeviceSpan<int> starts, int rows, MlaShape shape, float scale, MlaDecodeScratch scratch)
    {
        int h = shape.Heads, r = shape.Rank, d = shape.LatentWidth, splits = scratch.Splits;
        float scaleLog2 = scale * Log2E;
        ulong pPart = scratch.Outputs.Pointer, pStats = scratch.Stats.Pointer, pQ = queryLatent.Pointer, pStarts = starts.Pointer;
        void** args = stackalloc void*[] { &pPart, &pStats, &pQ, latentArgument, &pStarts, &h, &r, &d, &scaleLog2 };
        stream.Context.Kernels.Launch(id, new Dim3((uint)splits, (uint)rows), new Dim3((uint)partial.Threads), partial.SharedBytes, stream, args);
    }

    private static void CheckShape(MlaShape shape)
    {
        KernelChecks.Positive(shape.Heads, "shape.Heads");
        KernelChecks.Positive(shape.NopeDim, "shape.NopeDim");
        KernelChecks.Positive(shape.RopeDim, "shape.RopeDim");
        KernelChecks.Positive(shape.ValueDim, "shape.ValueDim");
        KernelChecks.Positive(shape.Rank, "shape.Rank");
        // The kernels move 16-byte (8 bf16) pieces of kvB and latent rows.
        if (shape.Rank % 8 != 0 || shape.RopeDim % 8 != 0)
            throw new ArgumentException($"the MLA kernels need R and P to be multiples of 8; got R = {shape.Rank}, P = {shape.RopeDim}", nameof(shape));
    }

    private static void CheckScratch(MlaDecodeScratch scratch, MlaShape shape, int t)
    {
        if (scratch.Shape != shape)
            throw new ArgumentException($"the scratch is laid out for {scratch.Shape}, not {shape}", nameof(scratch));
        if (t > scratch.MaxTokens)
            throw new ArgumentException($"the scratch has room for {scratch.MaxTokens} tokens but the call decodes {t}", nameof(scratch));
    }

    private static void CheckScale(float scale)
    {
        if (!(scale > 0 && float.IsFinite(scale))) throw new ArgumentOutOfRangeException(nameof(scale), scale, "scale must be a positive finite number");
    }

    private static void CheckShared(CudaStream stream, int bytes, string kernel)
    {
        CudaDeviceInfo device = stream.Context.Device;
        if (bytes > device.MaxSharedMemoryPerBlock)
            throw new NotSupportedException(
                $"the {kernel} kernel needs {bytes:N0} bytes of shared memory per block for this shape, but {device.Name} offers {device.MaxSharedMemoryPerBlock:N0}");
    }
}
