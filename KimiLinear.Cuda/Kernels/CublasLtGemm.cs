using System.Runtime.InteropServices;
using KimiLinear.Cuda.Interop;
using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// The optional cuBLASLt path for the prefill GEMM. cuBLASLt ships with the CUDA toolkit (and PyTorch), not with the
/// driver, so it is opened at run time only where present; the hand-written <see cref="O:KimiLinear.Cuda.Kernels.MatmulKernels.Gemm"/> always
/// works without it. Same contract: C[M, N] = A[M, K] · B[N, K]ᵀ, bf16 in, bf16 or fp32 out, fp32 accumulation; A's
/// rows may be <c>lda</c> elements apart.
/// </summary>
/// <remarks>
/// cuBLASLt is column-major. A row-major [M, N] C is a column-major [N, M] Cᵀ = B · Aᵀ, so the call is
/// m = N, n = M, k = K with the weight B as the transposed first operand ("TN", cuBLAS's fastest layout); A's row
/// stride lda is the leading dimension of cuBLAS's second operand, and an fp32 C is the C/D layouts' type.
/// Plans (descriptors and the chosen algorithm) are cached per shape, stride and output type.
/// </remarks>
internal sealed unsafe class CublasLtGemm : IDisposable
{
    /// <summary>Environment variable naming the cuBLASLt library file to use.</summary>
    public const string LibraryVariable = "KIMILINEAR_CUBLASLT";

    private const long WorkspaceBytes = 32L << 20;
    private const int CudaR32F = 0, CudaR16BF = 14, ComputeF32 = 68, OpN = 0, OpT = 1;
    private const int DescTransA = 3, DescTransB = 4, PrefMaxWorkspaceBytes = 1;

    [StructLayout(LayoutKind.Sequential)]
    private struct HeuristicResult
    {
        public fixed ulong Algo[8];   // cublasLtMatmulAlgo_t
        public nuint WorkspaceSize;
        public int State;
        public float WavesCount;
        public fixed int Reserved[4];
    }

    private sealed class Plan
    {
        public nint Desc, LayoutA, LayoutB, LayoutC;
        public HeuristicResult Heuristic;
    }

    private readonly nint _library;
    private readonly nint _handle;
    private readonly CudaContext _context;
    private readonly DeviceBuffer<byte> _workspace;
    private readonly Dictionary<(int M, int N, int K, int Lda, bool F32Out), Plan> _plans = [];
    private bool _disposed;

    private readonly delegate* unmanaged<nint, int> _destroy;
    private readonly delegate* unmanaged<nint*, int, int, int> _descCreate;
    private readonly delegate* unmanaged<nint, int, void*, nuint, int> _descSetAttribute;
    private readonly delegate* unmanaged<nint, int> _descDestroy;
    private readonly delegate* unmanaged<nint*, int, ulong, ulong, long, int> _layoutCreate;
    private readonly delegate* unmanaged<nint, int> _layoutDestroy;
    private readonly delegate* unmanaged<nint*, int> _prefCreate;
    private readonly delegate* unmanaged<nint, int, void*, nuint, int> _prefSetAttribute;
    private readonly delegate* unmanaged<nint, int> _prefDestroy;
    private readonly delegate* unmanaged<nint, nint, nint, nint, nint, nint, nint, int, HeuristicResult*, int*, int> _heuristic;
    private readonly delegate* unmanaged<nint, nint, void*, ulong, nint, ulong, nint, void*, ulong, nint, ulong, nint, void*, ulong, nuint, nint, int> _matmul;

    private CublasLtGemm(CudaContext context, nint library)
    {
        _context = context;
        _library = library;
        var create = (delegate* unmanaged<nint*, int>)NativeLibrary.GetExport(library, "cublasLtCreate");
        _destroy = (delegate* unmanaged<nint, int>)NativeLibrary.GetExport(library, "cublasLtDestroy");
        _descCreate = (delegate* unmanaged<nint*, int, int, int>)NativeLibrary.GetExport(library, "cublasLtMatmulDescCreate");
        _descSetAttribute = (delegate* unmanaged<nint, int, void*, nuint, int>)NativeLibrary.GetExport(library, "cublasLtMatmulDescSetAttribute");
        _descDestroy = (delegate* unmanaged<nint, int>)NativeLibrary.GetExport(library, "cublasLtMatmulDescDestroy");
        _layoutCreate = (delegate* unmanaged<nint*, int, ulong, ulong, long, int>)NativeLibrary.GetExport(library, "cublasLtMatrixLayoutCreate");
        _layoutDestroy = (delegate* unmanaged<nint, int>)NativeLibrary.GetExport(library, "cublasLtMatrixLayoutDestroy");
        _prefCreate = (delegate* unmanaged<nint*, int>)NativeLibrary.GetExport(library, "cublasLtMatmulPreferenceCreate");
        _prefSetAttribute = (delegate* unmanaged<nint, int, void*, nuint, int>)NativeLibrary.GetExport(library, "cublasLtMatmulPreferenceSetAttribute");
        _prefDestroy = (delegate* unmanaged<nint, int>)NativeLibrary.GetExport(library, "cublasLtMatmulPreferenceDestroy");
        _heuristic = (delegate* unmanaged<nint, nint, nint, nint, nint, nint, nint, int, HeuristicResult*, int*, int>)
            NativeLibrary.GetExport(library, "cublasLtMatmulAlgoGetHeuristic");
        _matmul = (delegate* unmanaged<nint, nint, void*, ulong, nint, ulong, nint, void*, ulong, nint, ulong, nint, void*, ulong, nuint, nint, int>)
            NativeLibrary.GetExport(library, "cublasLtMatmul");
        context.Bind();
        nint handle;
        Check(create(&handle), "cublasLtCreate");
        _handle = handle;
        _workspace = context.Allocate<byte>(WorkspaceBytes);
    }

    /// <summary>Opens cuBLASLt if the machine has it; otherwise returns null and says why in <paramref name="reason"/>.</summary>
    public static CublasLtGemm? TryCreate(CudaContext context, out string reason)
    {
        string[] candidates = Environment.GetEnvironmentVariable(LibraryVariable) is { Length: > 0 } explicitPath
            ? [explicitPath]
            : OperatingSystem.IsWindows() ? ["cublasLt64_13.dll", "cublasLt64_12.dll"] : ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"];
        foreach (string candidate in candidates)
        {
            if (!NativeLibrary.TryLoad(candidate, out nint library)) continue;
            reason = candidate;
            return new CublasLtGemm(context, library);
        }
        reason = $"cuBLASLt not found (tried {string.Join(", ", candidates)}; set {LibraryVariable} to its path)";
        return null;
    }

    /// <summary>Queues C = A · Bᵀ, bf16 out, A contiguous (see the class remarks for the shapes).</summary>
    public void Run(CudaStream stream, DeviceSpan<ushort> c, DeviceSpan<ushort> a, DeviceSpan<ushort> b, int m, int n, int k) =>
        Run(stream, c, a, k, b, m, n, k);

    /// <summary>Queues C = A · Bᵀ, bf16 out, A's rows <paramref name="lda"/> elements apart (lda ≥ K, a multiple of 8).</summary>
    public void Run(CudaStream stream, DeviceSpan<ushort> c, DeviceSpan<ushort> a, int lda, DeviceSpan<ushort> b, int m, int n, int k)
    {
        MatmulKernels.CheckGemmShapes(c, a, lda, b, m, n, k);
        Run(stream, c.Pointer, f32Out: false, a, lda, b, m, n, k);
    }

    /// <summary>Queues C = A · Bᵀ, fp32 out, A's rows <paramref name="lda"/> elements apart (lda ≥ K, a multiple of 8).</summary>
    public void Run(CudaStream stream, DeviceSpan<float> c, DeviceSpan<ushort> a, int lda, DeviceSpan<ushort> b, int m, int n, int k)
    {
        MatmulKernels.CheckGemmShapes(c, a, lda, b, m, n, k);
        Run(stream, c.Pointer, f32Out: true, a, lda, b, m, n, k);
    }

    private void Run(CudaStream stream, ulong c, bool f32Out, DeviceSpan<ushort> a, int lda, DeviceSpan<ushort> b, int m, int n, int k)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Plan plan = GetPlan(m, n, k, lda, f32Out);
        float alpha = 1, beta = 0;
        _context.Bind();
        fixed (ulong* algo = plan.Heuristic.Algo)
            Check(_matmul(_handle, plan.Desc, &alpha, b.Pointer, plan.LayoutA, a.Pointer, plan.LayoutB, &beta, c, plan.LayoutC,
                c, plan.LayoutC, algo, _workspace.Span.Pointer, (nuint)WorkspaceBytes, stream.Raw), "cublasLtMatmul");
    }

    private Plan GetPlan(int m, int n, int k, int lda, bool f32Out)
    {
        if (_plans.TryGetValue((m, n, k, lda, f32Out), out Plan? cached)) return cached;
        nint desc, layoutA, layoutB, layoutC;
        Check(_descCreate(&desc, ComputeF32, CudaR32F), "cublasLtMatmulDescCreate");
        var plan = new Plan { Desc = desc };
        int transA = OpT, transB = OpN;
        Check(_descSetAttribute(desc, DescTransA, &transA, sizeof(int)), "cublasLtMatmulDescSetAttribute(TRANSA)");
        Check(_descSetAttribute(desc, DescTransB, &transB, sizeof(int)), "cublasLtMatmulDescSetAttribute(TRANSB)");
        Check(_layoutCreate(&layoutA, CudaR16BF, (ulong)k, (ulong)n, k), "cublasLtMatrixLayoutCreate(weights)");
        plan.LayoutA = layoutA;
        Check(_layoutCreate(&layoutB, CudaR16BF, (ulong)k, (ulong)m, lda), "cublasLtMatrixLayoutCreate(activations)");
        plan.LayoutB = layoutB;
        Check(_layoutCreate(&layoutC, f32Out ? CudaR32F : CudaR16BF, (ulong)n, (ulong)m, n), "cublasLtMatrixLayoutCreate(output)");
        plan.LayoutC = layoutC;
        nint preference;
        Check(_prefCreate(&preference), "cublasLtMatmulPreferenceCreate");
        try
        {
            ulong workspace = WorkspaceBytes;
            Check(_prefSetAttribute(preference, PrefMaxWorkspaceBytes, &workspace, sizeof(ulong)), "cublasLtMatmulPreferenceSetAttribute");
            int found = 0;
            HeuristicResult result;
            Check(_heuristic(_handle, plan.Desc, plan.LayoutA, plan.LayoutB, plan.LayoutC, plan.LayoutC, preference, 1, &result, &found),
                "cublasLtMatmulAlgoGetHeuristic");
            if (found == 0)
                throw new InvalidOperationException($"cuBLASLt has no algorithm for a bf16 GEMM of M={m}, N={n}, K={k}, lda={lda}, {(f32Out ? "fp32" : "bf16")} out");
            plan.Heuristic = result;
        }
        finally
        {
            _prefDestroy(preference);
        }
        _plans.Add((m, n, k, lda, f32Out), plan);
        return plan;
    }

    private static void Check(int status, string call)
    {
        if (status != 0) throw new InvalidOperationException($"{call} failed: cublasStatus_t {status}");
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _context.Bind();
        foreach (Plan plan in _plans.Values)
        {
            _layoutDestroy(plan.LayoutA);
            _layoutDestroy(plan.LayoutB);
            _layoutDestroy(plan.LayoutC);
            _descDestroy(plan.Desc);
        }
        _plans.Clear();
        _destroy(_handle);
        _workspace.Dispose();
        NativeLibrary.Free(_library);
    }
}
