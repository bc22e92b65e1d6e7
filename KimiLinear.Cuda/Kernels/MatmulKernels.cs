using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// Matrix products against bf16 nn.Linear weights W [N, K] (row-major): the GEMV of decode and the GEMM of prefill
/// (<c>kernels/gemv.cu</c>, <c>kernels/gemm.cu</c>), with bf16 or fp32 activations in and out as each overload says.
/// bf16 travels as <see cref="ushort"/> bits. All accumulate in fp32.
/// </summary>
internal static unsafe class MatmulKernels
{
    /// <summary>A GEMV kernel's block: the rows it owns and its threads (GemvLayout in gemv.cu).</summary>
    private readonly record struct GemvGeometry(int RowsPerBlock, int Threads);

    private static readonly GemvGeometry GemvBf16Geometry = new(RowsPerBlock: 2 * 2, Threads: 4 * 32); // GemvBf16Layout: 2 groups of 2 rows
    private static readonly GemvGeometry GemvF32Geometry = new(RowsPerBlock: 4 * 4, Threads: 8 * 32);  // GemvF32Layout: 4 groups of 4 rows
    // The streaming GEMV (gemv_stream in gemv.cu): GEMV_STREAM_WARPS, GEMV_STREAM_ROWS rows an item, the blocks an SM
    // holds under its launch bounds (GEMV_STREAM_BLOCKS_PER_SM).
    private const int GemvStreamWarps = 8, GemvStreamRows = 4, GemvStreamBlocksPerSm = 2;
    private const int GemmTile = 128;            // BM = BN in gemm.cu
    private const int GemmThreads = 256;
    private const int GemmSharedBytes = 3 * (128 + 128) * 64 * 2; // GEMM_SMEM_BYTES in gemm.cu

    /// <summary>y[N] = W[N, K] · x[K], bf16 x, bf16 out.</summary>
    public static void Gemv(CudaStream stream, DeviceSpan<ushort> y, DeviceSpan<ushort> weight, DeviceSpan<ushort> x, int n, int k) =>
        Gemv(stream, KernelId.GemvBf16, GemvBf16Geometry, y.Pointer, y.Length, weight, x.Pointer, x.Length, n, k);

    /// <summary>y[N] = W[N, K] · x[K], bf16 x, fp32 out (logits).</summary>
    public static void Gemv(CudaStream stream, DeviceSpan<float> y, DeviceSpan<ushort> weight, DeviceSpan<ushort> x, int n, int k) =>
        Gemv(stream, KernelId.GemvBf16F32, GemvBf16Geometry, y.Pointer, y.Length, weight, x.Pointer, x.Length, n, k);

    /// <summary>
    /// y[N] = W[N, K] · x[K], fp32 x, fp32 out (the CUDA backend's activations): the bf16-x kernel's design and
    /// programmatic dependent launch, with 4 rows a warp group sharing each (twice as large) load of x.
    /// </summary>
    public static void Gemv(CudaStream stream, DeviceSpan<float> y, DeviceSpan<ushort> weight, DeviceSpan<float> x, int n, int k) =>
        Gemv(stream, y, weight, x, n, k, rowsPerX: n);

    /// <summary>
    /// Independent products of the same K in one launch (one launch latency, not several): y[i] = W[i] · x[i / rowsPerX]
    /// for W [N, K], x [ceil(N / rowsPerX), K]; <paramref name="rowsPerX"/> = N is the plain GEMV. Otherwise
    /// <paramref name="rowsPerX"/> must be a multiple of <see cref="GemvRowsPerBlock"/> (a block's rows share one x).
    /// A product whose blocks fit in one wave runs as blocks of rows (kimi_gemv_f32); a larger one as streams of rows
    /// (kimi_gemv_stream_f32), which keeps the memory pipe busy where the blocked layout would run in waves.
    /// </summary>
    public static void Gemv(CudaStream stream, DeviceSpan<float> y, DeviceSpan<ushort> weight, DeviceSpan<float> x, int n, int k, int rowsPerX)
    {
        KernelChecks.Positive(rowsPerX, nameof(rowsPerX));
        if (rowsPerX != n && rowsPerX % GemvRowsPerBlock != 0)
            throw new ArgumentException($"rowsPerX {rowsPerX} is neither N ({n}) nor a multiple of the {GemvRowsPerBlock} rows a block", nameof(rowsPerX));
        rowsPerX = Math.Min(rowsPerX, n);
        int sms = stream.Context.Device.MultiprocessorCount;
        if ((n + GemvF32Geometry.RowsPerBlock - 1) / GemvF32Geometry.RowsPerBlock <= GemvStreamBlocksPerSm * sms)
        {
            Gemv(stream, KernelId.GemvF32, GemvF32Geometry, y.Pointer, y.Length, weight, x.Pointer, x.Length, n, k, rowsPerX);
            return;
        }
        CheckGemv(y.Length, weight, x.Length, n, k, rowsPerX);
        ulong pY = y.Pointer, pW = weight.Pointer, pX = x.Pointer;
        void** args = stackalloc void*[] { &pY, &pW, &pX, &n, &k, &rowsPerX };
        stream.Context.Kernels.Launch(KernelId.GemvStreamF32, new Dim3((uint)StreamGemvBlocks(n, sms)), new Dim3(GemvStreamWarps * 32), 0, stream, args);
    }

    /// <summary>
    /// y[N] = W[N, K] · RMSNorm(x) with RMSNorm(x) = x · rsqrt(mean(x²) + eps) · normWeight: a decode step's input norm
    /// inside the projection that consumes it (the streaming GEMV: each block computes the row's RMS after its
    /// programmatic wait and keeps the normalised row in shared memory, 4·K bytes). x [K] fp32, normWeight [K] fp32.
    /// </summary>
    public static void GemvRmsNorm(CudaStream stream, DeviceSpan<float> y, DeviceSpan<ushort> weight, DeviceSpan<float> x,
        DeviceSpan<float> normWeight, float eps, int n, int k)
    {
        CheckGemv(y.Length, weight, x.Length, n, k, n);
        KernelChecks.Holds(normWeight, k, nameof(normWeight));
        if (!(eps > 0) || float.IsInfinity(eps))
            throw new ArgumentOutOfRangeException(nameof(eps), eps, "eps must be positive and finite.");
        long sharedBytes = 4L * k; // the normalised row
        if (sharedBytes > stream.Context.Device.MaxSharedMemoryPerBlock)
            throw new ArgumentOutOfRangeException(nameof(k), k,
                $"K = {k:N0} needs {sharedBytes:N0} bytes of shared memory for the normalised row; the device has {stream.Context.Device.MaxSharedMemoryPerBlock:N0} a block.");
        ulong pY = y.Pointer, pW = weight.Pointer, pX = x.Pointer, pNorm = normWeight.Pointer;
        void** args = stackalloc void*[] { &pY, &pW, &pX, &pNorm, &eps, &n, &k };
        var grid = new Dim3((uint)StreamGemvBlocks(n, stream.Context.Device.MultiprocessorCount));
        stream.Context.Kernels.Launch(KernelId.GemvRmsNormF32, grid, new Dim3(GemvStreamWarps * 32), (int)sharedBytes, stream, args);
    }

    /// <summary>The streaming GEMV's grid for N rows: one wave, items of <see cref="GemvStreamRows"/> rows spread evenly.</summary>
    private static int StreamGemvBlocks(int n, int multiprocessors) =>
        MoeKernels.StreamBlocks((n + GemvStreamRows - 1) / GemvStreamRows, GemvStreamWarps, GemvStreamBlocksPerSm, multiprocessors);

    /// <summary>The shapes every fp32-x GEMV checks: y holds N, W holds N·K, x holds one K row per product of rowsPerX rows.</summary>
    private static void CheckGemv(long yLength, DeviceSpan<ushort> weight, long xLength, int n, int k, int rowsPerX)
    {
        KernelChecks.Positive(n, nameof(n));
        KernelChecks.Positive(k, nameof(k));
        if (yLength < n) throw new ArgumentException($"y holds {yLength:N0} elements but the kernel needs {n:N0}", "y");
        KernelChecks.Holds(weight, (long)n * k, nameof(weight));
        long xNeeded = (long)((n + rowsPerX - 1) / rowsPerX) * k;
        if (xLength < xNeeded) throw new ArgumentException($"x holds {xLength:N0} elements but the kernel needs {xNeeded:N0}", "x");
    }

    /// <summary>Rows of the fp32-x GEMV's block: products run together (<c>rowsPerX</c>) are a multiple of it.</summary>
    public static int GemvRowsPerBlock => GemvF32Geometry.RowsPerBlock;

    private static void Gemv(CudaStream stream, KernelId id, GemvGeometry geometry, ulong yPointer, long yLength, DeviceSpan<ushort> weight, ulong xPointer, long xLength,
        int n, int k, int rowsPerX = 0)
    {
        CheckGemv(yLength, weight, xLength, n, k, rowsPerX == 0 ? n : rowsPerX);
        ulong pY = yPointer, pW = weight.Pointer, pX = xPointer;
        // kimi_gemv_f32 takes rows_per_x as a sixth argument; the bf16-x kernels have five and never read it.
        void** args = stackalloc void*[] { &pY, &pW, &pX, &n, &k, &rowsPerX };
        var grid = new Dim3((uint)((n + geometry.RowsPerBlock - 1) / geometry.RowsPerBlock));
        stream.Context.Kernels.Launch(id, grid, new Dim3((uint)geometry.Threads), 0, stream, args);
    }

    /// <summary>
    /// C[M, N] = A[M, K] · B[N, K]ᵀ, bf16 out, with the hand-written tensor-core kernel (mma.sync); needs no CUDA toolkit.
    /// K must be a multiple of 8 and A, B 16-byte aligned (whole buffers and arena spans are).
    /// </summary>
    public static void Gemm(CudaStream stream, DeviceSpan<ushort> c, DeviceSpan<ushort> a, DeviceSpan<ushort> b, int m, int n, int k) =>
        Gemm(stream, c, a, k, b, m, n, k);

    /// <summary>
    /// C[M, N] = A · B[N, K]ᵀ, bf16 out, where A's M rows of K are <paramref name="lda"/> elements apart (lda ≥ K, a
    /// multiple of 8: e.g. the first 512 columns of 576-wide latent rows). Otherwise as the contiguous overload.
    /// </summary>
    public static void Gemm(CudaStream stream, DeviceSpan<ushort> c, DeviceSpan<ushort> a, int lda, DeviceSpan<ushort> b, int m, int n, int k)
    {
        CheckGemmShapes(c, a, lda, b, m, n, k);
        LaunchGemm(stream, KernelId.GemmBf16, c.Pointer, a, lda, b, m, n, k);
    }

    /// <summary>
    /// C[M, N] = A · B[N, K]ᵀ, fp32 out (the CUDA backend's activations), where A's M rows of K are
    /// <paramref name="lda"/> elements apart (lda ≥ K, a multiple of 8). bf16 inputs, fp32 accumulation.
    /// </summary>
    public static void Gemm(CudaStream stream, DeviceSpan<float> c, DeviceSpan<ushort> a, int lda, DeviceSpan<ushort> b, int m, int n, int k)
    {
        CheckGemmShapes(c, a, lda, b, m, n, k);
        LaunchGemm(stream, KernelId.GemmBf16F32, c.Pointer, a, lda, b, m, n, k);
    }

    private static void LaunchGemm(CudaStream stream, KernelId id, ulong cPointer, DeviceSpan<ushort> a, int lda, DeviceSpan<ushort> b, int m, int n, int k)
    {
        ulong pC = cPointer, pA = a.Pointer, pB = b.Pointer;
        void** args = stackalloc void*[] { &pC, &pA, &lda, &pB, &m, &n, &k };
        var grid = new Dim3((uint)((n + GemmTile - 1) / GemmTile), (uint)((m + GemmTile - 1) / GemmTile));
        stream.Context.Kernels.Launch(id, grid, new Dim3(GemmThreads), GemmSharedBytes, stream, args);
    }

    /// <summary>The GEMM contract shared by the hand-written kernel and cuBLASLt.</summary>
    internal static void CheckGemmShapes<TC>(DeviceSpan<TC> c, DeviceSpan<ushort> a, int lda, DeviceSpan<ushort> b, int m, int n, int k)
        where TC : unmanaged
    {
        KernelChecks.Positive(m, nameof(m));
        KernelChecks.Positive(n, nameof(n));
        KernelChecks.Positive(k, nameof(k));
        if (k % 8 != 0) throw new ArgumentException($"the bf16 GEMM needs K to be a multiple of 8 (16-byte rows), got K = {k}", nameof(k));
        if (lda < k || lda % 8 != 0)
            throw new ArgumentOutOfRangeException(nameof(lda), lda, $"A's row stride must be at least K = {k} and a multiple of 8 (16-byte rows)");
        if ((a.Pointer | b.Pointer) % 16 != 0) throw new ArgumentException("the bf16 GEMM needs A and B 16-byte aligned", nameof(a));
        KernelChecks.Holds(c, (long)m * n, nameof(c));
        KernelChecks.Holds(a, (long)(m - 1) * lda + k, nameof(a));
        KernelChecks.Holds(b, (long)n * k, nameof(b));
    }
}
