using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// bf16 matrix products against nn.Linear weights W [N, K] (row-major): the GEMV of decode and the GEMM of prefill
/// (<c>kernels/gemv.cu</c>, <c>kernels/gemm.cu</c>). bf16 travels as <see cref="ushort"/> bits.
/// </summary>
internal static unsafe class MatmulKernels
{
    private const int GemvRowsPerBlock = 2 * 2;  // GEMV_ROWS_PER_BLOCK in gemv.cu: 2 row groups of 2 rows
    private const int GemvThreads = 4 * 32;
    private const int GemmTile = 128;            // BM = BN in gemm.cu
    private const int GemmThreads = 256;
    private const int GemmSharedBytes = 3 * (128 + 128) * 64 * 2; // GEMM_SMEM_BYTES in gemm.cu

    /// <summary>y[N] = W[N, K] · x[K], bf16 out.</summary>
    public static void Gemv(CudaStream stream, DeviceSpan<ushort> y, DeviceSpan<ushort> weight, DeviceSpan<ushort> x, int n, int k) =>
        Gemv(stream, KernelId.GemvBf16, y.Pointer, y.Length, weight, x, n, k);

    /// <summary>y[N] = W[N, K] · x[K], fp32 out (logits).</summary>
    public static void Gemv(CudaStream stream, DeviceSpan<float> y, DeviceSpan<ushort> weight, DeviceSpan<ushort> x, int n, int k) =>
        Gemv(stream, KernelId.GemvBf16F32, y.Pointer, y.Length, weight, x, n, k);

    private static void Gemv(CudaStream stream, KernelId id, ulong yPointer, long yLength, DeviceSpan<ushort> weight, DeviceSpan<ushort> x, int n, int k)
    {
        KernelChecks.Positive(n, nameof(n));
        KernelChecks.Positive(k, nameof(k));
        if (yLength < n) throw new ArgumentException($"y holds {yLength:N0} elements but the kernel needs {n:N0}", "y");
        KernelChecks.Holds(weight, (long)n * k, nameof(weight));
        KernelChecks.Holds(x, k, nameof(x));
        ulong pY = yPointer, pW = weight.Pointer, pX = x.Pointer;
        void** args = stackalloc void*[] { &pY, &pW, &pX, &n, &k };
        stream.Context.Kernels.Launch(id, new Dim3((uint)((n + GemvRowsPerBlock - 1) / GemvRowsPerBlock)), new Dim3(GemvThreads), 0, stream, args);
    }

    /// <summary>
    /// C[M, N] = A[M, K] · B[N, K]ᵀ with the hand-written tensor-core kernel (mma.sync); needs no CUDA toolkit.
    /// K must be a multiple of 8 and the spans 16-byte aligned (whole buffers and arena spans are).
    /// </summary>
    public static void Gemm(CudaStream stream, DeviceSpan<ushort> c, DeviceSpan<ushort> a, DeviceSpan<ushort> b, int m, int n, int k)
    {
        CheckGemmShapes(c, a, b, m, n, k);
        ulong pC = c.Pointer, pA = a.Pointer, pB = b.Pointer;
        void** args = stackalloc void*[] { &pC, &pA, &pB, &m, &n, &k };
        var grid = new Dim3((uint)((n + GemmTile - 1) / GemmTile), (uint)((m + GemmTile - 1) / GemmTile));
        stream.Context.Kernels.Launch(KernelId.GemmBf16, grid, new Dim3(GemmThreads), GemmSharedBytes, stream, args);
    }

    /// <summary>The GEMM contract shared by the hand-written kernel and cuBLASLt.</summary>
    internal static void CheckGemmShapes(DeviceSpan<ushort> c, DeviceSpan<ushort> a, DeviceSpan<ushort> b, int m, int n, int k)
    {
        KernelChecks.Positive(m, nameof(m));
        KernelChecks.Positive(n, nameof(n));
        KernelChecks.Positive(k, nameof(k));
        if (k % 8 != 0) throw new ArgumentException($"the bf16 GEMM needs K to be a multiple of 8 (16-byte rows), got K = {k}", nameof(k));
        if ((a.Pointer | b.Pointer) % 16 != 0) throw new ArgumentException("the bf16 GEMM needs A and B 16-byte aligned", nameof(a));
        KernelChecks.Holds(c, (long)m * n, nameof(c));
        KernelChecks.Holds(a, (long)m * k, nameof(a));
        KernelChecks.Holds(b, (long)n * k, nameof(b));
    }
}
