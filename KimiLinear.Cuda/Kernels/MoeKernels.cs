using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// The expert geometry of one MoE layer. The S shared experts (one S·F-wide MLP split into S experts of width F) are
/// stacked after the routed ones and used by every token with weight 1.0: a token's row of pairs holds its A routed
/// choices, then (E + s, 1.0) for each s.
/// </summary>
/// <param name="Hidden">D, the model width (a multiple of 8).</param>
/// <param name="Experts">E, the routed experts (at most <see cref="MoeKernels.MaxExperts"/>).</param>
/// <param name="ExpertsPerToken">A, the routed experts each token uses (at most E; A + S at most <see cref="MoeKernels.MaxExpertsPerToken"/>).</param>
/// <param name="Intermediate">F, each expert's width (a multiple of 8).</param>
/// <param name="SharedExperts">S, the shared experts of width F (0 or more).</param>
internal readonly record struct MoeShape(int Hidden, int Experts, int ExpertsPerToken, int Intermediate, int SharedExperts = 0)
{
    /// <summary>E + S: the experts stacked in the weights.</summary>
    public int StackedExperts => Experts + SharedExperts;

    /// <summary>A + S: the (expert, weight) pairs of a token's row.</summary>
    public int PairsPerToken => ExpertsPerToken + SharedExperts;
}

/// <summary>How the router turns scores into choices and weights (spec §4; CpuBackend.MoeRoute has the same rule).</summary>
/// <param name="Groups">Expert groups (1: plain top-k); at most <see cref="MoeKernels.MaxGroups"/>, dividing E.</param>
/// <param name="TopKGroups">Groups that stay eligible when <paramref name="Groups"/> &gt; 1 (1..Groups).</param>
/// <param name="Renormalize">Divide the chosen weights by their sum (+1e-20).</param>
/// <param name="ScalingFactor">Multiplies every weight last.</param>
/// <param name="BiasedWeights">Weights from the bias-corrected scores instead of the plain sigmoid scores.</param>
internal readonly record struct MoeRoutingRule(int Groups, int TopKGroups, bool Renormalize, float ScalingFactor, bool BiasedWeights);

/// <summary>
/// The experts of an MoE layer on the GPU (<c>kernels/moe.cu</c>; its opening comment has the math and the launch
/// geometry): the router's choice, the experts for decode (GEMVs over only the chosen experts' weights) and for
/// prefill (tokens grouped per expert, grouped GEMMs on the tensor cores). The shared experts run as experts E..E+S-1
/// that <see cref="Route"/> appends to every token's choices (see <see cref="MoeShape"/>).
/// </summary>
/// <remarks>
/// Activations are fp32, weights bf16 (<see cref="ushort"/> bits) stacked per expert, routed then shared: <c>gateUp</c>
/// [E+S, 2F, D] (rows [0, F) of expert e are w1, the gate; [F, 2F) are w3, the up projection) and <c>down</c>
/// [E+S, D, F] (w2). Both expert paths compute output[t] += Σ_p weights[t, p] · w2·(silu(w1·x̃) ⊙ (w3·x̃)) over the
/// token's A + S pairs p, with x̃ = x rounded to bf16 and the hidden rounded to bf16 before w2, in fp32, summing over p
/// in a fixed order: the results are deterministic, and decode and prefill agree up to fp32 rounding. A token's expert
/// ids must be distinct (as <see cref="Route"/> makes them); an id outside [0, E + S) makes that token's output NaN
/// instead of reading out of bounds. Every span must start 16-byte aligned (whole buffers and arena spans are).
/// </remarks>
internal static unsafe class MoeKernels
{
    /// <summary>Most experts a layer may have (the router keeps a token's E scores in one warp's registers).</summary>
    public const int MaxExperts = 1024;          // MOE_MAX_EXPERTS in moe.cu

    /// <summary>Most experts a token may use, routed and shared (one lane of a warp each).</summary>
    public const int MaxExpertsPerToken = 32;

    /// <summary>Most expert groups (one lane of a warp each).</summary>
    public const int MaxGroups = 32;

    /// <summary>
    /// Most tokens <see cref="DecodeExperts"/> takes in one call: its GEMVs read a chosen expert's rows once a pair
    /// (from L2 for the tokens after the first), so beyond a batched decode step <see cref="PrefillExperts"/> is faster.
    /// </summary>
    public const int MaxDecodeTokens = 16;

    // Launch geometry, as kernels/moe.cu defines it.
    private const int RouteWarps = 4;            // MOE_ROUTE_WARPS
    private const int RouterWarps = 4;           // MOE_ROUTER_WARPS: experts a fused router + route block
    private const int ClusterRouterBlocks = 8;   // MOE_RC_BLOCKS: the cluster router's blocks (one cluster)
    private const int ClusterRouterWarps = 16;   // MOE_RC_WARPS: two experts a warp
    private const int ClusterRouterExperts = 32; // MOE_RC_EXPERTS: experts a block
    private const int RouteSurvivors = 8;        // MOE_ROUTE_SURVIVORS: the block route's most choices
    private const int DecodeGateUpWarps = 4;     // MOE_GU_WARPS
    private const int DecodeGateUpRows = 2;      // gate-up f's an item: MOE_GU_F (F % 8 == 0: whole items)
    private const int DecodeGateUpBlocksPerSm = 4; // MOE_GU_BLOCKS_PER_SM (the launch bounds)
    private const int DecodeDownWarps = 4;       // MOE_DOWN_WARPS
    private const int DecodeDownRows = 2;        // output rows a block: MOE_DOWN_ROWS (D % 8 == 0: whole blocks)
    internal const int GemmTileRows = 128;       // MOE_TILE_M: sorted rows a grouped-GEMM tile
    internal const int MaxGridY = 65535;         // a launch's largest grid height
    private const int GemmTileColumns = 128;     // MOE_TILE_N
    private const int GemmThreads = 256;
    private const int GemmSharedBytes = 3 * (128 + 128) * 64 * 2; // MOE_GEMM_SMEM_BYTES
    private const int WgmmaTileColumns = 256;    // MOE_WG_N: gate-up's are 128 gate and 128 up rows
    private const int WgmmaThreads = 384;        // MOE_WG_THREADS: two consumer warpgroups and a producer
    private const int WgmmaSharedBytes = 1024 + 4 * (128 + 256) * 64 * 2 + 2 * 64 * 256 + 2 * 4 * 8; // MOE_WG_SMEM_BYTES: ring, epilogue buffers, mbarriers
    private const int ElementwiseThreads = 256;  // MOE_ELEMENTWISE_THREADS
    private const int CountBlocks = 1024;        // the count kernel's grid-stride loops need no more

    /// <summary>
    /// Chooses <c>shape.ExpertsPerToken</c> experts per token from the router logits, exactly as CpuBackend.MoeRoute
    /// does (the same ids in the same order, best first; weights equal up to fp32 rounding), and appends the shared
    /// experts (E + s, weight 1.0).
    /// </summary>
    /// <param name="s">Where to queue it (one launch, graph-capturable, programmatic dependent launch).</param>
    /// <param name="experts">[T, A+S] the chosen expert ids, best first, then the shared experts E..E+S-1.</param>
    /// <param name="weights">[T, A+S] their weights (1.0 for the shared experts).</param>
    /// <param name="logits">[T, E] router logits.</param>
    /// <param name="bias">[E] the score-correction bias (selection only unless <c>rule.BiasedWeights</c>).</param>
    /// <param name="shape">E, A and S are read.</param>
    /// <param name="rule">Grouping, renormalisation, scaling.</param>
    /// <param name="t">T, the tokens (≥ 1).</param>
    public static void Route(CudaStream s, DeviceSpan<int> experts, DeviceSpan<float> weights, DeviceSpan<float> logits,
        DeviceSpan<float> bias, MoeShape shape, MoeRoutingRule rule, int t)
    {
        CheckRouting(shape, rule);
        KernelChecks.Positive(t, nameof(t));
        int e = shape.Experts, a = shape.ExpertsPerToken, shared = shape.SharedExperts;
        KernelChecks.Holds(experts, (long)t * shape.PairsPerToken, nameof(experts));
        KernelChecks.Holds(weights, (long)t * shape.PairsPerToken, nameof(weights));
        KernelChecks.Holds(logits, (long)t * e, nameof(logits));
        KernelChecks.Holds(bias, e, nameof(bias));
        ulong pIds = experts.Pointer, pWeights = weights.Pointer, pLogits = logits.Pointer, pBias = bias.Pointer;
        int groups = rule.Groups, topk = rule.TopKGroups, renormalize = rule.Renormalize ? 1 : 0, biased = rule.BiasedWeights ? 1 : 0;
        float scale = rule.ScalingFactor;
        void** args = stackalloc void*[] { &pIds, &pWeights, &pLogits, &pBias, &t, &e, &a, &shared, &groups, &topk, &renormalize, &scale, &biased };
        s.Context.Kernels.Launch(KernelId.MoeRouteF32, new Dim3((uint)((t + RouteWarps - 1) / RouteWarps)), new Dim3(RouteWarps * 32), 0, s, args);
    }

    /// <summary>
    /// The router and <see cref="Route"/> in one launch, for a few tokens (decode): logits[t, e] = x[t] · router[e] (fp32
    /// x, bf16 weights, fp32 sums, as the fp32-input GEMV), then the same choice as <see cref="Route"/> made by the last
    /// block to finish. The router rows are requested before the programmatic wait. With 256 experts (up to 8 chosen, one
    /// group) on Hopper one thread-block cluster does it, its blocks handing the logits to the routing block through
    /// distributed shared memory (the same logits and choice, to the bit).
    /// </summary>
    /// <param name="s">Where to queue it (one launch, graph-capturable, programmatic dependent launch).</param>
    /// <param name="experts">[T, A+S] the chosen expert ids, best first, then the shared experts E..E+S-1.</param>
    /// <param name="weights">[T, A+S] their weights (1.0 for the shared experts).</param>
    /// <param name="x">[T, D] the layer input (after post_attention_layernorm).</param>
    /// <param name="router">[E, D] bf16 router weights.</param>
    /// <param name="bias">[E] the score-correction bias.</param>
    /// <param name="scratch">Holds the logits and the blocks' arrival count; laid out for <paramref name="shape"/>.</param>
    /// <param name="shape">D, E, A and S are read.</param>
    /// <param name="rule">Grouping, renormalisation, scaling.</param>
    /// <param name="t">T, 1 to <see cref="MaxDecodeTokens"/>.</param>
    public static void RouterRoute(CudaStream s, DeviceSpan<int> experts, DeviceSpan<float> weights, DeviceSpan<float> x,
        DeviceSpan<ushort> router, DeviceSpan<float> bias, MoeDecodeScratch scratch, MoeShape shape, MoeRoutingRule rule, int t)
    {
        CheckRouting(shape, rule);
        ArgumentNullException.ThrowIfNull(scratch);
        if (t is <= 0 or > MaxDecodeTokens)
            throw new ArgumentOutOfRangeException(nameof(t), t, $"RouterRoute takes 1 to {MaxDecodeTokens} tokens a call; use a GEMM and Route for more");
        CheckScratch(scratch.Shape, scratch.MaxTokens, shape, t, nameof(scratch));
        int d = shape.Hidden, e = shape.Experts, a = shape.ExpertsPerToken, shared = shape.SharedExperts;
        KernelChecks.Holds(experts, (long)t * shape.PairsPerToken, nameof(experts));
        KernelChecks.Holds(weights, (long)t * shape.PairsPerToken, nameof(weights));
        KernelChecks.HoldsAligned(x, (long)t * d, nameof(x));
        KernelChecks.HoldsAligned(router, (long)e * d, nameof(router));
        KernelChecks.Holds(bias, e, nameof(bias));
        ulong pIds = experts.Pointer, pWeights = weights.Pointer, pLogits = scratch.Logits.Pointer, pArrivals = scratch.Arrivals.Pointer;
        ulong pX = x.Pointer, pRouter = router.Pointer, pBias = bias.Pointer;
        int groups = rule.Groups, topk = rule.TopKGroups, renormalize = rule.Renormalize ? 1 : 0, biased = rule.BiasedWeights ? 1 : 0;
        float scale = rule.ScalingFactor;
        int clusterShared = ClusterRouterExperts * d * sizeof(ushort) + t * (ClusterRouterExperts + ClusterRouterBlocks * ClusterRouterExperts) * sizeof(float);
        if (e == ClusterRouterBlocks * ClusterRouterExperts && a <= RouteSurvivors && groups == 1 && s.Context.Kernels.RunsSm90a("moe")
            && clusterShared <= s.Context.Device.MaxSharedMemoryPerBlock)
        {
            // 256 experts on Hopper (the model's): one cluster whose blocks hand the logits over in distributed shared
            // memory, not through global memory and a last-block count (moe.cu, kimi_moe_router_route_cluster_f32).
            void** clusterArgs = stackalloc void*[] { &pIds, &pWeights, &pLogits, &pX, &pRouter, &pBias, &t, &d, &a, &shared, &renormalize, &scale, &biased };
            s.Context.Kernels.Launch(KernelId.MoeRouterRouteClusterF32, new Dim3(ClusterRouterBlocks), new Dim3(ClusterRouterWarps * 32), clusterShared, s, clusterArgs);
            return;
        }
        void** args = stackalloc void*[] { &pIds, &pWeights, &pLogits, &pArrivals, &pX, &pRouter, &pBias, &t, &d, &e, &a, &shared, &groups, &topk, &renormalize, &scale, &biased };
        s.Context.Kernels.Launch(KernelId.MoeRouterRouteF32, new Dim3((uint)((e + RouterWarps - 1) / RouterWarps)), new Dim3(RouterWarps * 32), 0, s, args);
    }

    /// <summary>
    /// The experts for a few tokens (decode): output[t] += Σ_p weights[t, p] · expert_{experts[t, p]}(x[t]) over the
    /// token's A + S pairs. Reads each chosen expert's weights once (tokens sharing an expert share the read), at GEMV speed.
    /// Each token's last S pairs must be the shared experts E..E+S-1 (as <see cref="Route"/> and <see cref="RouterRoute"/>
    /// write them): under programmatic launch the first kernel runs them before waiting for the ids, reading x early, so
    /// x must not be written by the kernel right before this call (the router is that kernel in the model).
    /// </summary>
    /// <param name="s">Where to queue it (two launches, graph-capturable: the ids are read on the device; programmatic dependent launch).</param>
    /// <param name="output">[T, D] accumulated into.</param>
    /// <param name="x">[T, D] the layer input (after post_attention_layernorm).</param>
    /// <param name="experts">[T, A+S] expert ids in [0, E+S), e.g. from <see cref="Route"/>.</param>
    /// <param name="weights">[T, A+S] their weights.</param>
    /// <param name="gateUp">[E+S, 2F, D] w1 then w3 of every expert.</param>
    /// <param name="down">[E+S, D, F] w2 of every expert.</param>
    /// <param name="scratch">Holds the [T, A+S, F] hidden between the two kernels; laid out for <paramref name="shape"/>.</param>
    /// <param name="shape">The layer's geometry.</param>
    /// <param name="t">T, 1 to <see cref="MaxDecodeTokens"/>.</param>
    public static void DecodeExperts(CudaStream s, DeviceSpan<float> output, DeviceSpan<float> x, DeviceSpan<int> experts,
        DeviceSpan<float> weights, DeviceSpan<ushort> gateUp, DeviceSpan<ushort> down, MoeDecodeScratch scratch, MoeShape shape, int t)
    {
        CheckExpertCall(output, x, experts, weights, gateUp, down, shape, t);
        ArgumentNullException.ThrowIfNull(scratch);
        if (t > MaxDecodeTokens)
            throw new ArgumentOutOfRangeException(nameof(t), t, $"DecodeExperts takes at most {MaxDecodeTokens} tokens a call; use PrefillExperts for more");
        CheckScratch(scratch.Shape, scratch.MaxTokens, shape, t, nameof(scratch));

        DecodeGateUp(s, scratch.Hidden, x, experts, gateUp, shape, t);
        DecodeDown(s, output, scratch.Hidden, experts, weights, down, shape, t);
    }

    /// <summary>The first decode kernel: hidden[t, p] = bf16(silu(w1·x̃) ⊙ (w3·x̃)) of expert experts[t, p] (arguments checked by the caller).</summary>
    internal static void DecodeGateUp(CudaStream s, DeviceSpan<ushort> hidden, DeviceSpan<float> x, DeviceSpan<int> experts,
        DeviceSpan<ushort> gateUp, MoeShape shape, int t)
    {
        // The kernels see E + S experts and A + S pairs a token: a shared expert is one more expert every token chose.
        int d = shape.Hidden, e = shape.StackedExperts, a = shape.PairsPerToken, f = shape.Intermediate, shared = shape.SharedExperts;
        ulong pHidden = hidden.Pointer, pX = x.Pointer, pIds = experts.Pointer, pGateUp = gateUp.Pointer;
        void** args = stackalloc void*[] { &pHidden, &pX, &pIds, &pGateUp, &t, &d, &e, &a, &f, &shared };
        int blocks = StreamBlocks((long)f / DecodeGateUpRows * t * a, DecodeGateUpWarps, DecodeGateUpBlocksPerSm, s.Context.Device.MultiprocessorCount);
        s.Context.Kernels.Launch(KernelId.MoeDecodeGateUp, new Dim3((uint)blocks), new Dim3(DecodeGateUpWarps * 32), 0, s, args);
    }

    /// <summary>
    /// The second decode kernel: output[t] += Σ_p weights[t, p] · w2·hidden[t, p] (arguments checked by the caller).
    /// Under programmatic launch it reads <paramref name="experts"/> and <paramref name="weights"/> before waiting for
    /// its predecessor, so that kernel must not be the one writing them (<see cref="DecodeGateUp"/> is not).
    /// </summary>
    internal static void DecodeDown(CudaStream s, DeviceSpan<float> output, DeviceSpan<ushort> hidden, DeviceSpan<int> experts,
        DeviceSpan<float> weights, DeviceSpan<ushort> down, MoeShape shape, int t)
    {
        int d = shape.Hidden, e = shape.StackedExperts, a = shape.PairsPerToken, f = shape.Intermediate;
        ulong pOut = output.Pointer, pHidden = hidden.Pointer, pIds = experts.Pointer, pWeights = weights.Pointer, pDown = down.Pointer;
        void** args = stackalloc void*[] { &pOut, &pHidden, &pIds, &pWeights, &pDown, &t, &d, &e, &a, &f };
        s.Context.Kernels.Launch(KernelId.MoeDecodeDown, new Dim3((uint)t, (uint)(d / DecodeDownRows)), new Dim3(DecodeDownWarps * 32), 0, s, args);
    }

    /// <summary>
    /// The grid of a decode kernel whose warps stream items (moe.cu's gate-up, gemv.cu's streaming GEMV): one wave (the blocks the SMs hold at once under
    /// the kernel's launch bounds), with no more warps than the evenly spread items need: each warp takes
    /// ceil(items / capacity) of them, or one fewer.
    /// </summary>
    internal static int StreamBlocks(long items, int warpsPerBlock, int blocksPerSm, int multiprocessors)
    {
        long capacity = (long)multiprocessors * blocksPerSm * warpsPerBlock, perWarp = (items + capacity - 1) / capacity;
        long warps = (items + perWarp - 1) / perWarp;
        return (int)((warps + warpsPerBlock - 1) / warpsPerBlock);
    }

    /// <summary>
    /// The experts for many tokens (prefill): the T·(A+S) (token, slot) pairs are grouped by expert on the device (a
    /// shared expert's T rows are one more group), each expert multiplies all its rows at once on the tensor cores
    /// (gate-up with SwiGLU, then down), and the results are combined per token: output[t] += Σ_p weights[t, p] ·
    /// expert_{experts[t, p]}(x[t]). No host sync: the grids are sized for the worst case and surplus blocks exit.
    /// </summary>
    /// <param name="s">Where to queue it (a memset and six launches).</param>
    /// <param name="output">[T, D] accumulated into.</param>
    /// <param name="x">[T, D] the layer input.</param>
    /// <param name="experts">[T, A+S] expert ids in [0, E+S).</param>
    /// <param name="weights">[T, A+S] their weights.</param>
    /// <param name="gateUp">[E+S, 2F, D] w1 then w3 of every expert.</param>
    /// <param name="down">[E+S, D, F] w2 of every expert.</param>
    /// <param name="scratch">Room for at least T tokens of <paramref name="shape"/>.</param>
    /// <param name="shape">The layer's geometry.</param>
    /// <param name="t">T, 1 to <c>scratch.MaxTokens</c>.</param>
    /// <param name="allowWarpgroupMma">
    /// Whether the grouped GEMMs may be the wgmma kernels where the device runs them (Hopper); false forces the mma.sync
    /// kernels, so that tests and benchmarks can reach both on one device.
    /// </param>
    public static void PrefillExperts(CudaStream s, DeviceSpan<float> output, DeviceSpan<float> x, DeviceSpan<int> experts,
        DeviceSpan<float> weights, DeviceSpan<ushort> gateUp, DeviceSpan<ushort> down, MoePrefillScratch scratch, MoeShape shape, int t,
        bool allowWarpgroupMma = true)
    {
        CheckExpertCall(output, x, experts, weights, gateUp, down, shape, t);
        ArgumentNullException.ThrowIfNull(scratch);
        CheckScratch(scratch.Shape, scratch.MaxTokens, shape, t, nameof(scratch));

        int d = shape.Hidden, e = shape.StackedExperts, a = shape.PairsPerToken, f = shape.Intermediate, pairs = t * a;
        int tiles = (pairs + GemmTileRows - 1) / GemmTileRows + e; // Σ_e ceil(count_e / 128) never exceeds this
        ulong pOut = output.Pointer, pX = x.Pointer, pIds = experts.Pointer, pWeights = weights.Pointer;
        ulong pGateUp = gateUp.Pointer, pDown = down.Pointer;
        ulong counts = scratch.Counts.Pointer, rank = scratch.Rank.Pointer, offsets = scratch.Offsets.Pointer, tileStart = scratch.TileStart.Pointer;
        ulong tokenOfRow = scratch.TokenOfRow.Pointer, pairOfRow = scratch.PairOfRow.Pointer;
        ulong xb = scratch.RoundedInput.Pointer, hidden = scratch.Hidden.Pointer, y = scratch.ExpertOutput.Pointer;
        KernelLibrary kernels = s.Context.Kernels;

        scratch.Counts.Fill(0, s);
        int countBlocks = (int)Math.Min(CountBlocks, Math.Max((pairs + ElementwiseThreads - 1) / ElementwiseThreads, ((long)t * d / 4 + ElementwiseThreads - 1) / ElementwiseThreads));
        void** countArgs = stackalloc void*[] { &counts, &rank, &xb, &pX, &pIds, &t, &d, &e, &a };
        kernels.Launch(KernelId.MoePrefillCount, new Dim3((uint)countBlocks), new Dim3(ElementwiseThreads), 0, s, countArgs);
        void** scheduleArgs = stackalloc void*[] { &offsets, &tileStart, &counts, &e };
        kernels.Launch(KernelId.MoePrefillSchedule, new Dim3(1), new Dim3(32), 0, s, scheduleArgs);
        void** placeArgs = stackalloc void*[] { &tokenOfRow, &pairOfRow, &pIds, &rank, &offsets, &pairs, &e, &a };
        kernels.Launch(KernelId.MoePrefillPlace, new Dim3((uint)((pairs + ElementwiseThreads - 1) / ElementwiseThreads)), new Dim3(ElementwiseThreads), 0, s, placeArgs);
        void** gateUpArgs = stackalloc void*[] { &hidden, &xb, &tokenOfRow, &offsets, &tileStart, &pGateUp, &d, &e, &f };
        void** downArgs = stackalloc void*[] { &y, &hidden, &pairOfRow, &offsets, &tileStart, &pDown, &d, &e, &f };
        if (allowWarpgroupMma && kernels.RunsSm90a("moe") && s.Context.Device.MaxSharedMemoryPerBlock >= WgmmaSharedBytes)
        {
            // Persistent: one block an SM, each taking work items (tile, column block) in turn; no more blocks than items
            // the worst case could have.
            int sms = s.Context.Device.MultiprocessorCount;
            long gateUpItems = (long)tiles * ((f + WgmmaTileColumns / 2 - 1) / (WgmmaTileColumns / 2));
            long downItems = (long)tiles * ((d + WgmmaTileColumns - 1) / WgmmaTileColumns);
            kernels.Launch(KernelId.MoePrefillGateUpWgmma, new Dim3((uint)Math.Min(sms, gateUpItems)), new Dim3(WgmmaThreads), WgmmaSharedBytes, s, gateUpArgs);
            kernels.Launch(KernelId.MoePrefillDownWgmma, new Dim3((uint)Math.Min(sms, downItems)), new Dim3(WgmmaThreads), WgmmaSharedBytes, s, downArgs);
        }
        else
        {
            kernels.Launch(KernelId.MoePrefillGateUp, new Dim3((uint)((f + GemmTileColumns / 2 - 1) / (GemmTileColumns / 2)), (uint)tiles),
                new Dim3(GemmThreads), GemmSharedBytes, s, gateUpArgs);
            kernels.Launch(KernelId.MoePrefillDown, new Dim3((uint)((d + GemmTileColumns - 1) / GemmTileColumns), (uint)tiles),
                new Dim3(GemmThreads), GemmSharedBytes, s, downArgs);
        }
        long quads = (long)t * d / 4;
        void** combineArgs = stackalloc void*[] { &pOut, &y, &pIds, &pWeights, &t, &d, &e, &a };
        kernels.Launch(KernelId.MoePrefillCombine, new Dim3((uint)((quads + ElementwiseThreads - 1) / ElementwiseThreads)), new Dim3(ElementwiseThreads), 0, s, combineArgs);
    }

    /// <summary>The shape rules every MoE kernel relies on.</summary>
    internal static void CheckShape(MoeShape shape, string name = "shape")
    {
        if (shape.Hidden <= 0 || shape.Hidden % 8 != 0)
            throw new ArgumentException($"{name}.Hidden (D) must be a positive multiple of 8 (16-byte rows), got {shape.Hidden}", name);
        if (shape.Intermediate <= 0 || shape.Intermediate % 8 != 0)
            throw new ArgumentException($"{name}.Intermediate (F) must be a positive multiple of 8 (16-byte rows), got {shape.Intermediate}", name);
        if (shape.Experts is <= 0 or > MaxExperts)
            throw new ArgumentException($"{name}.Experts (E) must be 1 to {MaxExperts}, got {shape.Experts}", name);
        if (shape.ExpertsPerToken <= 0 || shape.ExpertsPerToken > Math.Min(shape.Experts, MaxExpertsPerToken))
            throw new ArgumentException(
                $"{name}.ExpertsPerToken (A) must be 1 to min(E = {shape.Experts}, {MaxExpertsPerToken}), got {shape.ExpertsPerToken}", name);
        if (shape.SharedExperts < 0 || shape.PairsPerToken > MaxExpertsPerToken)
            throw new ArgumentException(
                $"{name}.SharedExperts (S) must be 0 to {MaxExpertsPerToken} - A = {MaxExpertsPerToken - shape.ExpertsPerToken}, got {shape.SharedExperts}", name);
    }

    private static void CheckRouting(MoeShape shape, MoeRoutingRule rule)
    {
        CheckShape(shape);
        if (rule.Groups is <= 0 or > MaxGroups || shape.Experts % rule.Groups != 0)
            throw new ArgumentException($"rule.Groups must be 1 to {MaxGroups} and divide E = {shape.Experts}, got {rule.Groups}", nameof(rule));
        if (rule.TopKGroups <= 0 || rule.TopKGroups > rule.Groups)
            throw new ArgumentException($"rule.TopKGroups must be 1 to Groups = {rule.Groups}, got {rule.TopKGroups}", nameof(rule));
        if (!float.IsFinite(rule.ScalingFactor))
            throw new ArgumentException($"rule.ScalingFactor must be finite, got {rule.ScalingFactor}", nameof(rule));
    }

    private static void CheckExpertCall(DeviceSpan<float> output, DeviceSpan<float> x, DeviceSpan<int> experts, DeviceSpan<float> weights,
        DeviceSpan<ushort> gateUp, DeviceSpan<ushort> down, MoeShape shape, int t)
    {
        CheckShape(shape);
        KernelChecks.Positive(t, nameof(t));
        long d = shape.Hidden, f = shape.Intermediate, e = shape.StackedExperts, a = shape.PairsPerToken;
        KernelChecks.HoldsAligned(output, t * d, nameof(output));
        KernelChecks.HoldsAligned(x, t * d, nameof(x));
        KernelChecks.Holds(experts, t * a, nameof(experts));
        KernelChecks.Holds(weights, t * a, nameof(weights));
        KernelChecks.HoldsAligned(gateUp, e * 2 * f * d, nameof(gateUp));
        KernelChecks.HoldsAligned(down, e * d * f, nameof(down));
    }

    private static void CheckScratch(MoeShape laidOutFor, int maxTokens, MoeShape shape, int t, string name)
    {
        if (laidOutFor != shape)
            throw new ArgumentException($"{name} is laid out for {laidOutFor}, but the call is for {shape}", name);
        if (t > maxTokens)
            throw new ArgumentException($"{name} has room for {maxTokens} tokens, but the call has T = {t}", name);
    }
}

/// <summary>The [T, A+S, F] bf16 hidden that <see cref="MoeKernels.DecodeExperts"/> passes between its two kernels, for up to <see cref="MaxTokens"/> tokens.</summary>
internal sealed class MoeDecodeScratch : IDisposable
{
    private readonly DeviceBuffer<ushort> _hidden;     // [T, A+S, F] bf16 silu(w1·x) ⊙ (w3·x)
    private readonly DeviceBuffer<float> _logits;      // [T, E] router logits (RouterRoute)
    private readonly DeviceBuffer<uint> _arrivals;     // [1] RouterRoute's finished blocks: zero between launches

    /// <summary>The layer geometry it is laid out for.</summary>
    public MoeShape Shape { get; }

    /// <summary>Tokens of room (at most <see cref="MoeKernels.MaxDecodeTokens"/>).</summary>
    public int MaxTokens { get; }

    /// <summary>
    /// Allocates room for <paramref name="maxTokens"/> tokens of layers of <paramref name="shape"/> on
    /// <paramref name="stream"/>'s context, and queues the zeroing of the arrival count there.
    /// </summary>
    public MoeDecodeScratch(CudaStream stream, MoeShape shape, int maxTokens)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var context = stream.Context;
        MoeKernels.CheckShape(shape, nameof(shape));
        if (maxTokens is <= 0 or > MoeKernels.MaxDecodeTokens)
            throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens, $"maxTokens must be 1 to {MoeKernels.MaxDecodeTokens}");
        (Shape, MaxTokens) = (shape, maxTokens);
        _hidden = context.Allocate<ushort>((long)maxTokens * shape.PairsPerToken * shape.Intermediate);
        try
        {
            _logits = context.Allocate<float>((long)maxTokens * shape.Experts);
            _arrivals = context.Allocate<uint>(1);
            _arrivals.Span.Fill(0u, stream);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    internal DeviceSpan<ushort> Hidden => _hidden.Span;
    internal DeviceSpan<float> Logits => _logits.Span;
    internal DeviceSpan<uint> Arrivals => _arrivals.Span;

    /// <inheritdoc />
    public void Dispose()
    {
        _hidden.Dispose();
        _logits?.Dispose();
        _arrivals?.Dispose();
    }
}

/// <summary>
/// What <see cref="MoeKernels.PrefillExperts"/> keeps between its kernels, for up to <see cref="MaxTokens"/> tokens
/// (P = MaxTokens·(A+S) pairs). The fp32 expert outputs dominate: P·D·4 bytes (2.7 GB at 32K tokens, D = 2304, A = 8, S = 1).
/// One set of allocations, reusable across calls and layers of the same shape.
/// </summary>
internal sealed class MoePrefillScratch : IDisposable
{
    private readonly DeviceBuffer<int> _indices;   // the index arrays below, one after another
    private readonly DeviceBuffer<ushort> _rounded; // [T, D] bf16(x)
    private readonly DeviceBuffer<ushort> _hidden;  // [P, F] bf16 hidden, rows sorted by expert
    private readonly DeviceBuffer<float> _output;   // [P, D] fp32 expert outputs, rows in pair order (t·A + a)

    /// <summary>The layer geometry it is laid out for.</summary>
    public MoeShape Shape { get; }

    /// <summary>Tokens of room.</summary>
    public int MaxTokens { get; }

    /// <summary>Allocates room for <paramref name="maxTokens"/> tokens of layers of <paramref name="shape"/>.</summary>
    public MoePrefillScratch(CudaContext context, MoeShape shape, int maxTokens)
    {
        ArgumentNullException.ThrowIfNull(context);
        MoeKernels.CheckShape(shape, nameof(shape));
        KernelChecks.Positive(maxTokens, nameof(maxTokens));
        if ((long)maxTokens * shape.PairsPerToken / MoeKernels.GemmTileRows + shape.StackedExperts >= MoeKernels.MaxGridY)
            throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens,
                $"maxTokens · (A + S) / {MoeKernels.GemmTileRows} + E + S must stay below {MoeKernels.MaxGridY} (the grouped GEMMs' grid height)");
        // The grouped GEMMs address rows of xb, the hidden and one expert's weights with 32-bit element offsets.
        long largest = Math.Max(Math.Max((long)maxTokens * shape.Hidden, (long)maxTokens * shape.PairsPerToken * shape.Intermediate),
            2L * shape.Intermediate * shape.Hidden);
        if (largest >= uint.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(maxTokens), maxTokens,
                $"the prefill scratch's matrices must stay below 2^32 elements (T·D, T·(A+S)·F, 2F·D), but one holds {largest:N0}");
        (Shape, MaxTokens) = (shape, maxTokens);
        _indices = context.Allocate<int>(3 * (E + 1) + 3L * Pairs);
        try
        {
            _rounded = context.Allocate<ushort>((long)maxTokens * shape.Hidden);
            _hidden = context.Allocate<ushort>(Pairs * shape.Intermediate);
            _output = context.Allocate<float>(Pairs * shape.Hidden);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private long Pairs => (long)MaxTokens * Shape.PairsPerToken;
    private int E => Shape.StackedExperts; // the kernels' E: routed and shared

    /// <summary>[E+S] pairs per expert.</summary>
    internal DeviceSpan<int> Counts => _indices.Slice(0, E);
    /// <summary>[E+S + 1] first sorted row of each expert; the last entry = all rows.</summary>
    internal DeviceSpan<int> Offsets => _indices.Slice(E + 1, E + 1);
    /// <summary>[E+S + 1] first 128-row GEMM tile of each expert; the last entry = all tiles.</summary>
    internal DeviceSpan<int> TileStart => _indices.Slice(2 * (E + 1), E + 1);
    /// <summary>[P] each pair's place among its expert's rows.</summary>
    internal DeviceSpan<int> Rank => _indices.Slice(3 * (E + 1), Pairs);
    /// <summary>[P] the token of each sorted row.</summary>
    internal DeviceSpan<int> TokenOfRow => _indices.Slice(3 * (E + 1) + Pairs, Pairs);
    /// <summary>[P] the pair t·(A+S) + p of each sorted row.</summary>
    internal DeviceSpan<int> PairOfRow => _indices.Slice(3 * (E + 1) + 2 * Pairs, Pairs);
    internal DeviceSpan<ushort> RoundedInput => _rounded.Span;
    internal DeviceSpan<ushort> Hidden => _hidden.Span;
    internal DeviceSpan<float> ExpertOutput => _output.Span;

    /// <inheritdoc />
    public void Dispose()
    {
        _output?.Dispose();
        _hidden?.Dispose();
        _rounded?.Dispose();
        _indices.Dispose();
    }
}
