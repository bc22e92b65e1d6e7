using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// Kimi Delta Attention on the GPU (<c>kernels/kda/kda.cu</c>; its opening comment has the math): the fused decode step,
/// the prefill's pre-kernel (short convs, gate, β) with the conv-window update, and the chunked prefill over packed
/// variable-length sequences. T is the activation dtype: <see cref="float"/> (everything fp32, the accuracy reference)
/// or bf16 as <see cref="ushort"/> bits (bf16 activations and weights; gate parameters, g, β and the state stay fp32).
/// The kernels need compute capability 9.0 (the prefill scan takes up to 218 KiB of shared memory a block): on older
/// cards the first launch throws <see cref="Interop.CudaUnavailableException"/> saying so.
/// </summary>
/// <remarks>
/// A layer's prefill is <see cref="Prepare{T, TOut}"/> then <see cref="ChunkedPrefill{T}"/>; each decoded token is one
/// <c>DecodeStep</c>, over sequences in one cache or, with a table of addresses, over sequences in caches of their own.
/// Both paths keep the same <see cref="KdaLayerCache{T}"/>, so a sequence may be prefilled in pieces and decoded in
/// between. Tokens past a batch's last one are never read, and outputs are written only up to
/// their shapes.
/// </remarks>
internal static unsafe class KdaKernels
{
    /// <summary>Tokens per prefill chunk (FLA's C).</summary>
    public const int ChunkTokens = 64;

    // Launch geometry and dynamic shared memory, as kernels/kda/kda.cu defines them (kDecode*, kIntra*, kPrefill*,
    // kPrepareThreads, chunk_intra_smem_bytes, chunk_prefill_kpad, chunk_prefill_smem_bytes).
    private const int DecodeThreads = 512;
    private const int DecodeStages = 3;   // state buffers: items copied ahead + 1 (two in use up to kDecodeOneAheadItems items a block)
    private const int DecodeSharedBytes = (DecodeStages * 128 * 128 + 6 * 128 + 16 * 32 + 8 + 4 + 2 * DecodeStages) * sizeof(float);
    private const int PrepareThreads = 256;
    private const int PrepareTokens = 16;   // kPrepareTokens: tokens a prepare block walks
    private const int IntraThreads = 256;
    private const int PrefillThreads = 512;
    private const int PrefillColumns = 32; // state columns per scan block
    private const int WideScanThreads = 256;   // kWideScanThreads: the wide scan's two warpgroups
    private const int WideScanColumns = 128;   // kWideScanCols: state columns per wide-scan block
    private const int MaxKeyDim = 128;

    private const int IntraLdL = ChunkTokens + 8;   // kLdL: L's and A's row stride in shared memory
    private const int IntraLdT = ChunkTokens + 4;   // kLdT: the row stride of q, k and G, stored a channel a row
    private static int IntraSharedBytes(int k, int v) =>   // k, G; q and G_last, later L, A, T', v; β, norms
        sizeof(float) * (2 * k * IntraLdT
            + Math.Max(k * IntraLdT + k, ChunkTokens * IntraLdL + Math.Max(ChunkTokens * IntraLdL, ChunkTokens * (v + 8) / 2) + 32 * 33)
            + 3 * ChunkTokens);

    /// <summary>K padded to the scan's 64 or 128 (kda.cu's chunk_prefill_kpad; K above 128 is refused before use).</summary>
    internal static int PaddedKeyDim(int k) => k <= 64 ? 64 : Math.Max(128, k);

    // The scan lays its rows out for conflict-free tensor-core fragments (chunk_prefill_smem_bytes). fp32 inputs:
    // ScanOperands' fp32 stages. bf16: the wgmma scan's WgmmaOperands (1 KiB of alignment slack, three slots of
    // [64][KP] hi/lo planes for each of two operand rings, the split state and Vn, γ twice, three mbarriers), which
    // also holds the mma.sync scan of the compute_90 image.
    private static int PrefillSharedBytes<T>(int k) where T : unmanaged
    {
        int kp = PaddedKeyDim(k), ld = PrefillColumns + 8;
        return typeof(T) == typeof(float)
            ? sizeof(float) * (2 * kp * ld + 2 * ChunkTokens * (kp + 4) + ChunkTokens * (kp + 8) + 2 * ChunkTokens * (ChunkTokens + 4) + 3 * ChunkTokens * ld + kp)
            : 1024 + sizeof(ushort) * (12 * ChunkTokens * kp + 2 * PrefillColumns * kp + 2 * PrefillColumns * ChunkTokens)
              + sizeof(float) * 2 * kp + 3 * sizeof(ulong);
    }

    // wide_scan_smem_bytes: 1 KiB of alignment slack, three operand slots of two [2][64][KP] bf16 planes each, γ twice,
    // one chunk's U for the block's columns, four mbarriers.
    private static int WideScanSharedBytes(int k)
    {
        int kp = PaddedKeyDim(k);
        return 1024 + 3 * sizeof(ushort) * 4 * ChunkTokens * kp + sizeof(float) * (2 * kp + ChunkTokens * WideScanColumns) + 4 * sizeof(ulong);
    }

    /// <summary>
    /// Whether the bf16 scan runs as the wide scan (kda.cu's wide_scan: 128 columns a block, state in registers) rather
    /// than the 32-column one: where the card runs the sm_90a kernels and the 32-column scan's blocks (one a
    /// multiprocessor) would take more than two waves. On the H200 a chunk of the wide scan takes ~5.2 µs for 128
    /// columns and one of the 32-column scan ~2.1 µs for 32, so the wide one wins from three waves of the other on
    /// (H = 32, K = V = 128, run 98 of kernels/kda/NOTES.md: B = 8, T = 8,192 1.44–1.68 ms against 2.50–2.57; B = 1,
    /// T = 4,096 0.33 against 0.13).
    /// </summary>
    internal static bool TakesWideScan(CudaContext context, KdaShape shape, int sequences) =>
        context.Kernels.RunsSm90a("kda") && (long)sequences * shape.Heads * (shape.ValueDim / PrefillColumns) > 2L * context.Device.MultiprocessorCount;

    /// <summary>
    /// One token of <paramref name="sequences"/> sequences through a KDA layer's core, fused: per channel the short
    /// conv + SiLU of q, k, v over the carried window (then the window shifts), the gate g and β; L2-normalised q̂, k̂;
    /// the delta-rule update of the fp32 state; o = Sᵀq̂; and the sigmoid-gated RMSNorm y = o·rsqrt(mean o² + eps)·w·σ(z).
    /// </summary>
    /// <param name="stream">Where to queue it (capturable in a CUDA graph: no host sync, no scratch).</param>
    /// <param name="shape">K ≤ 128; V one of 16, 32, 64, 128.</param>
    /// <param name="sequences">N, one new token each.</param>
    /// <param name="rmsEps">The output RMSNorm's epsilon (≥ 0).</param>
    /// <param name="token">The new token's projections, one row per sequence: [N, H·K], [N, H·K], [N, H·V], [N, H·K], [N, H].</param>
    /// <param name="outputGate">z [N, H·V], g_b_proj's output, before the sigmoid.</param>
    /// <param name="layer">Conv taps, A_log, dt_bias, o_norm weight.</param>
    /// <param name="cache">Windows and state of the N sequences, advanced by one token.</param>
    /// <param name="y">[N, H·V] the gated, normalised output (the input of o_proj).</param>
    /// <param name="maxBlocks">At most this many blocks step the H·N heads (0: one a multiprocessor); tests pass a few so
    /// that each block steps several.</param>
    public static void DecodeStep<T>(CudaStream stream, KdaShape shape, int sequences, float rmsEps, KdaProjections<T> token,
        DeviceSpan<T> outputGate, KdaLayerParameters<T> layer, KdaLayerCache<T> cache, DeviceSpan<T> y, int maxBlocks = 0) where T : unmanaged
    {
        KernelId id = Pick<T>(KernelId.KdaDecodeStepF32, KernelId.KdaDecodeStepBf16);
        CheckDecode(shape, sequences, rmsEps, token, outputGate, layer, y);
        CheckWindows(cache, shape, sequences, nameof(cache));
        KernelChecks.HoldsAligned(cache.State, (long)sequences * shape.Heads * shape.StateSize, "cache.State");

        int h = shape.Heads, k = shape.KeyDim, v = shape.ValueDim;
        ulong pq = token.Query.Pointer, pk = token.Key.Pointer, pv = token.Value.Pointer, pf = token.Forget.Pointer, pb = token.Beta.Pointer;
        ulong pz = outputGate.Pointer, wq = layer.QueryConv.Pointer, wk = layer.KeyConv.Pointer, wv = layer.ValueConv.Pointer;
        ulong aLog = layer.ALog.Pointer, dtBias = layer.DtBias.Pointer, wNorm = layer.NormWeight.Pointer;
        ulong cq = cache.QueryWindow.Pointer, ck = cache.KeyWindow.Pointer, cv = cache.ValueWindow.Pointer, state = cache.State.Pointer;
        ulong py = y.Pointer;
        void** args = stackalloc void*[]
        {
            &h, &k, &v, &sequences, &rmsEps, &pq, &pk, &pv, &pf, &pb, &pz, &wq, &wk, &wv, &aLog, &dtBias, &wNorm, &cq, &ck, &cv, &state, &py,
        };
        stream.Context.Kernels.Launch(id, new Dim3((uint)DecodeBlocks(stream, h * sequences, maxBlocks)), new Dim3(DecodeThreads),
            DecodeSharedBytes, stream, args);
    }

    /// <summary>
    /// G, the decode step's blocks: each steps the heads b, b + G, ... of the H·N (kernels/kda/kda.cu) with the next
    /// heads' states in flight, and a block's 197 KiB of shared memory fit once an SM, so one block an SM streams any
    /// batch without a partial last wave. Every SM takes one even where that leaves the blocks' item counts uneven:
    /// the fewest blocks with even counts (128 of 16 items at H = 32, B = 64, against 132) was 7 % slower (kernels/kda
    /// NOTES, decode d9).
    /// </summary>
    private static int DecodeBlocks(CudaStream stream, int heads, int maxBlocks)
    {
        int wave = stream.Context.Device.MultiprocessorCount;
        return Math.Min(heads, maxBlocks > 0 ? Math.Min(maxBlocks, wave) : wave);
    }

    /// <summary>Sequences one launch of the table decode step takes (kDecodeTableSequences: its table is a kernel parameter).</summary>
    public const int DecodeTableSequences = 32;

    /// <summary>
    /// <see cref="DecodeStep{T}(CudaStream, KdaShape, int, float, KdaProjections{T}, DeviceSpan{T}, KdaLayerParameters{T}, KdaLayerCache{T}, DeviceSpan{T}, int)"/>
    /// for sequences whose windows and states lie apart (each session's own allocations): <paramref name="caches"/>[n]
    /// holds sequence n alone. Their addresses travel in the launch's parameters (one launch per
    /// <see cref="DecodeTableSequences"/> sequences), so nothing is copied in or out and nothing on the device must be
    /// kept in step with the sessions. Row n of every other operand is sequence n's, as in the contiguous form, whose
    /// results it equals bit for bit.
    /// </summary>
    /// <param name="stream">Where to queue it (capturable in a CUDA graph, like the contiguous form).</param>
    /// <param name="shape">K ≤ 128; V one of 16, 32, 64, 128.</param>
    /// <param name="rmsEps">The output RMSNorm's epsilon (≥ 0).</param>
    /// <param name="token">The new token's projections, one row per sequence (N = <paramref name="caches"/>.Length).</param>
    /// <param name="outputGate">z [N, H·V], before the sigmoid.</param>
    /// <param name="layer">Conv taps, A_log, dt_bias, o_norm weight.</param>
    /// <param name="caches">One sequence's windows [3, H·K], [3, H·K], [3, H·V] and state [H, K, V] each, no two sharing a state.</param>
    /// <param name="y">[N, H·V] the gated, normalised output.</param>
    /// <param name="maxBlocks">As for the contiguous form.</param>
    public static void DecodeStep<T>(CudaStream stream, KdaShape shape, float rmsEps, KdaProjections<T> token, DeviceSpan<T> outputGate,
        KdaLayerParameters<T> layer, ReadOnlySpan<KdaLayerCache<T>> caches, DeviceSpan<T> y, int maxBlocks = 0) where T : unmanaged
    {
        KernelId id = Pick<T>(KernelId.KdaDecodeStepTableF32, KernelId.KdaDecodeStepTableBf16);
        CheckDecode(shape, caches.Length, rmsEps, token, outputGate, layer, y);
        var states = new HashSet<ulong>();
        for (int n = 0; n < caches.Length; n++)
        {
            CheckWindows(caches[n], shape, 1, $"caches[{n}]");
            KernelChecks.HoldsAligned(caches[n].State, shape.Heads * shape.StateSize, $"caches[{n}].State");
            if (!states.Add(caches[n].State.Pointer))
                throw new ArgumentException($"caches[{n}] has the state of an earlier sequence: each sequence needs its own", nameof(caches));
        }

        int h = shape.Heads, k = shape.KeyDim, v = shape.ValueDim, hk = shape.KeyWidth, hv = shape.ValueWidth;
        ulong wq = layer.QueryConv.Pointer, wk = layer.KeyConv.Pointer, wv = layer.ValueConv.Pointer;
        ulong aLog = layer.ALog.Pointer, dtBias = layer.DtBias.Pointer, wNorm = layer.NormWeight.Pointer;
        // kda::DecodeTable<T>: conv_q, conv_k, conv_v, state, DecodeTableSequences addresses each; unused entries stay 0.
        ulong* table = stackalloc ulong[4 * DecodeTableSequences];
        ulong pq, pk, pv, pf, pb, pz, py;
        int count;
        void** args = stackalloc void*[]
        {
            &h, &k, &v, &count, &rmsEps, &pq, &pk, &pv, &pf, &pb, &pz, &wq, &wk, &wv, &aLog, &dtBias, &wNorm, table, &py,
        };
        for (int first = 0; first < caches.Length; first += DecodeTableSequences)
        {
            count = Math.Min(DecodeTableSequences, caches.Length - first);
            new Span<ulong>(table, 4 * DecodeTableSequences).Clear();
            for (int n = 0; n < count; n++)
            {
                var cache = caches[first + n];
                table[n] = cache.QueryWindow.Pointer;
                table[DecodeTableSequences + n] = cache.KeyWindow.Pointer;
                table[2 * DecodeTableSequences + n] = cache.ValueWindow.Pointer;
                table[3 * DecodeTableSequences + n] = cache.State.Pointer;
            }
            (pq, pk, pv) = (token.Query.Slice((long)first * hk).Pointer, token.Key.Slice((long)first * hk).Pointer, token.Value.Slice((long)first * hv).Pointer);
            (pf, pb, pz) = (token.Forget.Slice((long)first * hk).Pointer, token.Beta.Slice((long)first * h).Pointer, outputGate.Slice((long)first * hv).Pointer);
            py = y.Slice((long)first * hv).Pointer;
            stream.Context.Kernels.Launch(id, new Dim3((uint)DecodeBlocks(stream, h * count, maxBlocks)), new Dim3(DecodeThreads),
                DecodeSharedBytes, stream, args);
        }
    }

    /// <summary>
    /// The prefill's pre-kernel over a packed batch: per token, the short conv + SiLU of q, k, v (reaching into each
    /// sequence's carried window for its first 3 tokens; results rounded to T as stored), the gate g and β = σ(b). Then
    /// each sequence's windows become its last 3 pre-conv inputs. The state in <paramref name="cache"/> is not touched.
    /// </summary>
    /// <param name="stream">Where to queue it (two launches).</param>
    /// <param name="shape">Any positive H, K, V.</param>
    /// <param name="batch">The sequences' lengths and offsets (T tokens).</param>
    /// <param name="projections">The batch's projections: [T, H·K], [T, H·K], [T, H·V], [T, H·K], [T, H].</param>
    /// <param name="layer">Conv taps, A_log, dt_bias (the norm weight is not read).</param>
    /// <param name="cache">The N sequences' windows: read, then advanced past the batch.</param>
    /// <param name="output">The core's inputs for the T tokens: q, k, v as <typeparamref name="TOut"/>, which is
    /// <typeparamref name="T"/> or, from fp32 projections, bf16 (the model's prefill runs its core on bf16 q, k, v).</param>
    public static void Prepare<T, TOut>(CudaStream stream, KdaShape shape, KdaBatch batch, KdaProjections<T> projections,
        KdaLayerParameters<T> layer, KdaLayerCache<T> cache, KdaCoreInputs<TOut> output) where T : unmanaged where TOut : unmanaged
    {
        KernelId prepare = typeof(T) == typeof(TOut) ? Pick<T>(KernelId.KdaPrepareF32, KernelId.KdaPrepareBf16)
            : typeof(T) == typeof(float) && typeof(TOut) == typeof(ushort) ? KernelId.KdaPrepareF32Bf16
            : throw new NotSupportedException($"the KDA pre-kernel writes its inputs' dtype, or bf16 from float; not {typeof(TOut).Name} from {typeof(T).Name}");
        KernelId window = Pick<T>(KernelId.KdaConvWindowUpdateF32, KernelId.KdaConvWindowUpdateBf16);
        CheckShape(shape);
        CheckProjections(projections, shape, batch.Tokens, nameof(projections));
        CheckLayer(layer, shape, nameof(layer));
        CheckWindows(cache, shape, batch.Sequences, nameof(cache));
        CheckCoreInputs(output, shape, batch.Tokens, nameof(output));
        if (batch.Tokens == 0) return; // nothing to convolve, and the windows stay as they are

        int h = shape.Heads, k = shape.KeyDim, v = shape.ValueDim, n = batch.Sequences;
        ulong cu = batch.TokenOffsets.Pointer;
        ulong pq = projections.Query.Pointer, pk = projections.Key.Pointer, pv = projections.Value.Pointer;
        ulong pf = projections.Forget.Pointer, pb = projections.Beta.Pointer;
        ulong wq = layer.QueryConv.Pointer, wk = layer.KeyConv.Pointer, wv = layer.ValueConv.Pointer;
        ulong aLog = layer.ALog.Pointer, dtBias = layer.DtBias.Pointer;
        ulong cq = cache.QueryWindow.Pointer, ck = cache.KeyWindow.Pointer, cv = cache.ValueWindow.Pointer;
        ulong q = output.Query.Pointer, kk = output.Key.Pointer, vv = output.Value.Pointer, g = output.Gate.Pointer, beta = output.Beta.Pointer;
        void** prepareArgs = stackalloc void*[]
        {
            &h, &k, &v, &n, &cu, &pq, &pk, &pv, &pf, &pb, &wq, &wk, &wv, &aLog, &dtBias, &cq, &ck, &cv, &q, &kk, &vv, &g, &beta,
        };
        int channels = Math.Max(shape.KeyWidth, shape.ValueWidth);
        stream.Context.Kernels.Launch(prepare, new Dim3((uint)((channels + PrepareThreads - 1) / PrepareThreads), (uint)((batch.Tokens + PrepareTokens - 1) / PrepareTokens)),
            new Dim3(PrepareThreads), 0, stream, prepareArgs);

        // A second launch: the window update overwrites what every token of the pre-kernel may still read.
        void** windowArgs = stackalloc void*[] { &h, &k, &v, &cu, &pq, &pk, &pv, &cq, &ck, &cv };
        stream.Context.Kernels.Launch(window, new Dim3((uint)((channels + PrepareThreads - 1) / PrepareThreads), (uint)n),
            new Dim3(PrepareThreads), 0, stream, windowArgs);
    }

    /// <summary>
    /// The chunked prefill of the KDA core over a packed batch, from each sequence's state in <paramref name="state"/>
    /// (updated to the state after its last token): the intra-chunk kernel (one block per chunk and head) writes
    /// <paramref name="scratch"/>, then the scan walks each sequence's chunks. Equal to the token-by-token recurrence up
    /// to fp32 rounding.
    /// </summary>
    /// <param name="stream">Where to queue it (two launches).</param>
    /// <param name="shape">K ≤ 128 and a multiple of 4; V a multiple of 32; K + V ≤ 256.</param>
    /// <param name="batch">The sequences' lengths and offsets (T tokens, NC chunks).</param>
    /// <param name="input">q, k raw (normalised here), v, g, β for the T tokens (what <see cref="Prepare{T, TOut}"/> writes).</param>
    /// <param name="scratch">Room for at least <see cref="KdaBatch.Chunks"/> chunks of this shape.</param>
    /// <param name="state">[N, H, K, V] fp32: initial in, final out.</param>
    /// <param name="o">[T, H, V] the core's output (before the output norm).</param>
    /// <param name="wideScan">Whether the scan runs as the wide scan (null: as <see cref="TakesWideScan"/> chooses for
    /// bf16; true is refused for fp32 activations or without the sm_90a kernels); tests pass both.</param>
    public static void ChunkedPrefill<T>(CudaStream stream, KdaShape shape, KdaBatch batch, KdaCoreInputs<T> input, KdaPrefillScratch scratch,
        DeviceSpan<float> state, DeviceSpan<T> o, bool? wideScan = null) where T : unmanaged
    {
        KernelId intra = Pick<T>(KernelId.KdaChunkIntraF32, KernelId.KdaChunkIntraBf16);
        KernelId scan = Pick<T>(KernelId.KdaChunkPrefillF32, KernelId.KdaChunkPrefillBf16);
        CheckShape(shape);
        if (shape.KeyDim > MaxKeyDim || shape.KeyDim % 4 != 0 || shape.ValueDim % PrefillColumns != 0 || shape.KeyDim + shape.ValueDim > 256)
            throw new ArgumentException(
                $"the KDA chunked prefill needs K ≤ {MaxKeyDim} and a multiple of 4, V a multiple of {PrefillColumns}, and K + V ≤ 256; got K = {shape.KeyDim}, V = {shape.ValueDim}",
                nameof(shape));
        CheckCoreInputs(input, shape, batch.Tokens, nameof(input));
        if (scratch.Shape != shape)
            throw new ArgumentException($"the scratch is laid out for {scratch.Shape}, not {shape}", nameof(scratch));
        if (scratch.Chunks < batch.Chunks)
            throw new ArgumentException($"the scratch has room for {scratch.Chunks} chunks but the batch has {batch.Chunks}", nameof(scratch));
        KernelChecks.HoldsAligned(state, (long)batch.Sequences * shape.Heads * shape.StateSize, nameof(state));
        KernelChecks.HoldsAligned(o, (long)batch.Tokens * shape.ValueWidth, nameof(o));
        if (wideScan == true && (typeof(T) != typeof(ushort) || !stream.Context.Kernels.RunsSm90a("kda")))
            throw new ArgumentException("the wide KDA scan takes bf16 activations and needs the sm_90a kernels (Hopper)", nameof(wideScan));
        if (batch.Tokens == 0) return; // every state stays as it is
        bool wide = typeof(T) == typeof(ushort) && (wideScan ?? TakesWideScan(stream.Context, shape, batch.Sequences));

        int h = shape.Heads, k = shape.KeyDim, v = shape.ValueDim, n = batch.Sequences;
        ulong cu = batch.TokenOffsets.Pointer, co = batch.ChunkOffsets.Pointer;
        ulong q = input.Query.Pointer, kk = input.Key.Pointer, vv = input.Value.Pointer, g = input.Gate.Pointer, beta = input.Beta.Pointer;
        ulong w = scratch.W.Pointer, u = scratch.U.Pointer, a = scratch.A.Pointer, qg = scratch.QueryDecayed.Pointer;
        ulong kg = scratch.KeyDecayed.Pointer, gamma = scratch.Gamma.Pointer, s = state.Pointer, po = o.Pointer;
        void** intraArgs = stackalloc void*[] { &h, &k, &v, &n, &cu, &co, &q, &kk, &vv, &g, &beta, &w, &u, &a, &qg, &kg, &gamma };
        stream.Context.Kernels.Launch(intra, new Dim3((uint)batch.Chunks * (uint)h), new Dim3(IntraThreads), IntraSharedBytes(k, v), stream, intraArgs);
        // The scan is a plain launch, after intra has finished: its four slice blocks of a head, consecutive in launch
        // order, then land on SMs of one GPC, and it runs 6-14 % faster than with a grid that puts them apart. With
        // programmatic dependent launch, which lets each block take whichever SM intra's last blocks leave first, the
        // prefill was 3-4 % slower, most likely for that reason (kernels/kda/NOTES.md, runs 195, 198, 199).
        void** scanArgs = stackalloc void*[] { &h, &k, &v, &cu, &co, &w, &u, &a, &qg, &kg, &gamma, &s, &po };
        if (wide)
        {
            stream.Context.Kernels.Launch(KernelId.KdaChunkPrefillWideBf16, new Dim3((uint)((v + WideScanColumns - 1) / WideScanColumns), (uint)h, (uint)n),
                new Dim3(WideScanThreads), WideScanSharedBytes(k), stream, scanArgs);
        }
        else
        {
            stream.Context.Kernels.Launch(scan, new Dim3((uint)(v / PrefillColumns), (uint)h, (uint)n), new Dim3(PrefillThreads),
                PrefillSharedBytes<T>(k), stream, scanArgs);
        }
    }

    /// <summary>The f32 or bf16 entry point for activation dtype <typeparamref name="T"/>.</summary>
    private static KernelId Pick<T>(KernelId f32, KernelId bf16) where T : unmanaged =>
        typeof(T) == typeof(float) ? f32
        : typeof(T) == typeof(ushort) ? bf16
        : throw new NotSupportedException($"the KDA kernels take float or bf16 (as ushort) activations, not {typeof(T).Name}");

    /// <summary>What both forms of the decode step need besides the windows and states.</summary>
    private static void CheckDecode<T>(KdaShape shape, int sequences, float rmsEps, KdaProjections<T> token, DeviceSpan<T> outputGate,
        KdaLayerParameters<T> layer, DeviceSpan<T> y) where T : unmanaged
    {
        CheckShape(shape);
        if (shape.KeyDim > MaxKeyDim) throw new ArgumentException($"the KDA decode step needs K ≤ {MaxKeyDim}, got K = {shape.KeyDim}", nameof(shape));
        if (shape.ValueDim is not (16 or 32 or 64 or 128))
            throw new ArgumentException($"the KDA decode step needs V to be 16, 32, 64 or 128, got V = {shape.ValueDim}", nameof(shape));
        KernelChecks.Positive(sequences, nameof(sequences));
        if (!(rmsEps >= 0)) throw new ArgumentOutOfRangeException(nameof(rmsEps), rmsEps, "rmsEps must be a non-negative number");
        CheckProjections(token, shape, sequences, nameof(token));
        KernelChecks.HoldsAligned(outputGate, (long)sequences * shape.ValueWidth, nameof(outputGate));
        CheckLayer(layer, shape, nameof(layer));
        KernelChecks.HoldsAligned(layer.NormWeight, shape.ValueDim, "layer.NormWeight");
        KernelChecks.HoldsAligned(y, (long)sequences * shape.ValueWidth, nameof(y));
    }

    private static void CheckShape(KdaShape shape)
    {
        KernelChecks.Positive(shape.Heads, "shape.Heads");
        KernelChecks.Positive(shape.KeyDim, "shape.KeyDim");
        KernelChecks.Positive(shape.ValueDim, "shape.ValueDim");
    }

    private static void CheckProjections<T>(KdaProjections<T> p, KdaShape shape, long rows, string name) where T : unmanaged
    {
        KernelChecks.HoldsAligned(p.Query, rows * shape.KeyWidth, name + ".Query");
        KernelChecks.HoldsAligned(p.Key, rows * shape.KeyWidth, name + ".Key");
        KernelChecks.HoldsAligned(p.Value, rows * shape.ValueWidth, name + ".Value");
        KernelChecks.HoldsAligned(p.Forget, rows * shape.KeyWidth, name + ".Forget");
        KernelChecks.HoldsAligned(p.Beta, rows * shape.Heads, name + ".Beta");
    }

    private static void CheckLayer<T>(KdaLayerParameters<T> layer, KdaShape shape, string name) where T : unmanaged
    {
        KernelChecks.HoldsAligned(layer.QueryConv, 4L * shape.KeyWidth, name + ".QueryConv");
        KernelChecks.HoldsAligned(layer.KeyConv, 4L * shape.KeyWidth, name + ".KeyConv");
        KernelChecks.HoldsAligned(layer.ValueConv, 4L * shape.ValueWidth, name + ".ValueConv");
        KernelChecks.HoldsAligned(layer.ALog, shape.Heads, name + ".ALog");
        KernelChecks.HoldsAligned(layer.DtBias, shape.KeyWidth, name + ".DtBias");
    }

    private static void CheckWindows<T>(KdaLayerCache<T> cache, KdaShape shape, long sequences, string name) where T : unmanaged
    {
        KernelChecks.HoldsAligned(cache.QueryWindow, sequences * 3 * shape.KeyWidth, name + ".QueryWindow");
        KernelChecks.HoldsAligned(cache.KeyWindow, sequences * 3 * shape.KeyWidth, name + ".KeyWindow");
        KernelChecks.HoldsAligned(cache.ValueWindow, sequences * 3 * shape.ValueWidth, name + ".ValueWindow");
    }

    private static void CheckCoreInputs<T>(KdaCoreInputs<T> x, KdaShape shape, long tokens, string name) where T : unmanaged
    {
        KernelChecks.HoldsAligned(x.Query, tokens * shape.KeyWidth, name + ".Query");
        KernelChecks.HoldsAligned(x.Key, tokens * shape.KeyWidth, name + ".Key");
        KernelChecks.HoldsAligned(x.Value, tokens * shape.ValueWidth, name + ".Value");
        KernelChecks.HoldsAligned(x.Gate, tokens * shape.KeyWidth, name + ".Gate");
        KernelChecks.HoldsAligned(x.Beta, tokens * shape.Heads, name + ".Beta");
    }
}
