using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// The CUDA backend's kernels over fp32 activations (<c>kernels/activations.cu</c>), with the semantics of the CPU
/// backend's methods of the same names: embedding, RMSNorm, gated RMSNorm, element-wise add / SwiGLU / sigmoid, the MoE
/// row gather and scatter-add, the MLA latent-cache write and the fp32 ↔ bf16 conversions. bf16 travels as
/// <see cref="ushort"/> bits. Every launch is queued on the given stream without a host synchronisation, so a CUDA graph
/// may capture it.
/// </summary>
internal static unsafe class ActivationKernels
{
    private const int RowThreads = 256;        // ROW_THREADS in activations.cu
    private const int GatedRowsPerBlock = 8;   // GATED_ROWS in activations.cu: a warp a row
    private const long MaxElementBlocks = 4096; // element kernels loop over the rest (grid-stride)

    /// <summary>
    /// output[t, :] = table[ids[t], :] widened to fp32, for output [T, D], table [V, D] bf16, ids [T]. An id outside
    /// [0, V) yields a NaN row (no out-of-bounds read); the backend validates ids before.
    /// </summary>
    public static void Embed(CudaStream stream, DeviceSpan<float> output, DeviceSpan<ushort> table, DeviceSpan<int> ids, int t, int d, int v)
    {
        KernelChecks.Positive(t, nameof(t));
        KernelChecks.Positive(d, nameof(d));
        KernelChecks.Positive(v, nameof(v));
        KernelChecks.Holds(output, (long)t * d, nameof(output));
        KernelChecks.Holds(table, (long)v * d, nameof(table));
        KernelChecks.Holds(ids, t, nameof(ids));
        ulong pOut = output.Pointer, pTable = table.Pointer, pIds = ids.Pointer;
        void** args = stackalloc void*[] { &pOut, &pTable, &pIds, &t, &d, &v };
        stream.Context.Kernels.Launch(KernelId.EmbedF32, new Dim3((uint)t), new Dim3(RowThreads), 0, stream, args);
    }

    /// <summary>
    /// x[t, :] += add[t, :] when <paramref name="add"/> is given, then y[t, :] = x[t, :] · rsqrt(mean(x[t, :]²) + eps) ·
    /// weight for x, add, y [T, N] and weight [N]; <paramref name="y"/> may be <paramref name="x"/>.
    /// </summary>
    public static void RmsNorm(CudaStream stream, DeviceSpan<float> y, DeviceSpan<float> x, DeviceSpan<float> weight, int t, int n, float eps,
        DeviceSpan<float>? add = null)
    {
        KernelChecks.Positive(t, nameof(t));
        KernelChecks.Positive(n, nameof(n));
        CheckEps(eps);
        KernelChecks.Holds(y, (long)t * n, nameof(y));
        KernelChecks.Holds(x, (long)t * n, nameof(x));
        KernelChecks.Holds(weight, n, nameof(weight));
        if (add is { } a) KernelChecks.Holds(a, (long)t * n, nameof(add));
        ulong pY = y.Pointer, pX = x.Pointer, pAdd = add?.Pointer ?? 0, pWeight = weight.Pointer;
        void** args = stackalloc void*[] { &pY, &pX, &pAdd, &pWeight, &t, &n, &eps };
        stream.Context.Kernels.Launch(KernelId.RmsNormF32, new Dim3((uint)t), new Dim3(RowThreads), 0, stream, args);
    }

    /// <summary>accumulator[i] += x[i] for i &lt; <paramref name="count"/>.</summary>
    public static void Add(CudaStream stream, DeviceSpan<float> accumulator, DeviceSpan<float> x, long count)
    {
        CheckCount(count);
        KernelChecks.Holds(accumulator, count, nameof(accumulator));
        KernelChecks.Holds(x, count, nameof(x));
        ulong pAcc = accumulator.Pointer, pX = x.Pointer;
        void** args = stackalloc void*[] { &pAcc, &pX, &count };
        LaunchElements(stream, KernelId.AddF32, count, args);
    }

    /// <summary>output[i] = silu(gate[i]) · up[i] for i &lt; <paramref name="count"/>; output may be gate or up.</summary>
    public static void SwiGlu(CudaStream stream, DeviceSpan<float> output, DeviceSpan<float> gate, DeviceSpan<float> up, long count)
    {
        CheckCount(count);
        KernelChecks.Holds(output, count, nameof(output));
        KernelChecks.Holds(gate, count, nameof(gate));
        KernelChecks.Holds(up, count, nameof(up));
        ulong pOut = output.Pointer, pGate = gate.Pointer, pUp = up.Pointer;
        void** args = stackalloc void*[] { &pOut, &pGate, &pUp, &count };
        LaunchElements(stream, KernelId.SwiGluF32, count, args);
    }


    /// <summary>
    /// Per row of width W: y = o · rsqrt(mean(o²) + eps) · weight · sigmoid(z), for o, z, y [rows, W] (rows = T·H
    /// heads) and weight [W]; <paramref name="y"/> may be <paramref name="o"/>. Matches <c>CpuBackend.GatedRmsNorm</c>.
    /// <paramref name="o"/> is fp32, or bf16 bits (ushort): the KDA core's output on the model's bf16 prefill path.
    /// </summary>
    public static void GatedRmsNorm<TO>(CudaStream stream, DeviceSpan<float> y, DeviceSpan<TO> o, DeviceSpan<float> z, DeviceSpan<float> weight,
        int rows, int width, float eps) where TO : unmanaged
    {
        KernelId kernel = typeof(TO) == typeof(float) ? KernelId.GatedRmsNormF32
            : typeof(TO) == typeof(ushort) ? KernelId.GatedRmsNormBf16Output
            : throw new NotSupportedException($"the gated RMSNorm reads o as float or bf16 (as ushort), not {typeof(TO).Name}");
        KernelChecks.Positive(rows, nameof(rows));
        KernelChecks.Positive(width, nameof(width));
        CheckEps(eps);
        long count = (long)rows * width;
        KernelChecks.Holds(y, count, nameof(y));
        KernelChecks.Holds(o, count, nameof(o));
        KernelChecks.Holds(z, count, nameof(z));
        KernelChecks.Holds(weight, width, nameof(weight));
        ulong pY = y.Pointer, pO = o.Pointer, pZ = z.Pointer, pWeight = weight.Pointer;
        void** args = stackalloc void*[] { &pY, &pO, &pZ, &pWeight, &rows, &width, &eps };
        var grid = new Dim3((uint)((rows + GatedRowsPerBlock - 1) / GatedRowsPerBlock));
        stream.Context.Kernels.Launch(kernel, grid, new Dim3(GatedRowsPerBlock * 32), 0, stream, args);
    }

    /// <summary>
    /// y[i, :] = x[rows[i], :] for y [count, cols] and rows [count]. x's row count is its length / cols; a row index
    /// outside it yields a NaN row (no out-of-bounds read).
    /// </summary>
    public static void GatherRows(CudaStream stream, DeviceSpan<float> y, DeviceSpan<float> x, DeviceSpan<int> rows, int count, int cols)
    {
        KernelChecks.Positive(count, nameof(count));
        KernelChecks.Positive(cols, nameof(cols));
        KernelChecks.Holds(y, (long)count * cols, nameof(y));
        KernelChecks.Holds(rows, count, nameof(rows));
        int xRows = RowsIn(x, cols, nameof(x));
        ulong pY = y.Pointer, pX = x.Pointer, pRows = rows.Pointer;
        void** args = stackalloc void*[] { &pY, &pX, &pRows, &count, &cols, &xRows };
        stream.Context.Kernels.Launch(KernelId.GatherRowsF32, new Dim3((uint)count), new Dim3(RowThreads), 0, stream, args);
    }

    /// <summary>
    /// accumulator[rows[i], :] += scales[i] · x[i, :] for x [count, cols], rows and scales [count]. The rows of one
    /// call must be distinct (one block adds each row, without atomics: a repeated row would lose an addition).
    /// The accumulator's row count is its length / cols; a row index outside it is skipped (no out-of-bounds write).
    /// </summary>
    public static void ScatterAddRows(CudaStream stream, DeviceSpan<float> accumulator, DeviceSpan<float> x, DeviceSpan<int> rows,
        DeviceSpan<float> scales, int count, int cols)
    {
        KernelChecks.Positive(count, nameof(count));
        KernelChecks.Positive(cols, nameof(cols));
        KernelChecks.Holds(x, (long)count * cols, nameof(x));
        KernelChecks.Holds(rows, count, nameof(rows));
        KernelChecks.Holds(scales, count, nameof(scales));
        int accumulatorRows = RowsIn(accumulator, cols, nameof(accumulator));
        ulong pAcc = accumulator.Pointer, pX = x.Pointer, pRows = rows.Pointer, pScales = scales.Pointer;
        void** args = stackalloc void*[] { &pAcc, &pX, &pRows, &pScales, &count, &cols, &accumulatorRows };
        stream.Context.Kernels.Launch(KernelId.ScatterAddRowsF32, new Dim3((uint)count), new Dim3(RowThreads), 0, stream, args);
    }

    /// <summary>
    /// latent[firstRow + i, :] = bf16(RmsNorm(left[i, :])·weight | right[i, :]) for left [T, A], right [T, B] and latent
    /// [capacity, A + B] (the MLA cache rows c_n | k_pe: the compressed latent normalised by kv_a_layernorm here).
    /// <paramref name="firstRow"/> is one int in device memory, so a replayed decode graph writes the row the step's
    /// position says. A first row that would put any row outside the capacity (latent's length / (A + B)) writes
    /// nothing. Under programmatic launch its successor starts only after this kernel's wait, when everything queued
    /// before it has finished (<see cref="MlaKernels.AbsorbQuery"/> relies on it).
    /// </summary>
    public static void WriteLatentRows(CudaStream stream, DeviceSpan<ushort> latent, DeviceSpan<float> left, DeviceSpan<float> weight, float eps,
        DeviceSpan<float> right, int t, int a, int b, DeviceSpan<int> firstRow)
    {
        KernelChecks.Positive(t, nameof(t));
        KernelChecks.Positive(a, nameof(a));
        KernelChecks.Positive(b, nameof(b));
        KernelChecks.Holds(left, (long)t * a, nameof(left));
        KernelChecks.Holds(weight, a, nameof(weight));
        KernelChecks.Holds(right, (long)t * b, nameof(right));
        KernelChecks.Holds(firstRow, 1, nameof(firstRow));
        if (!(eps >= 0f) || float.IsInfinity(eps)) throw new ArgumentOutOfRangeException(nameof(eps), eps, "must be finite and ≥ 0");
        int capacity = RowsIn(latent, a + b, nameof(latent));
        if (capacity < t) throw new ArgumentException($"latent holds {capacity:N0} rows of {a + b} but {t:N0} are written", nameof(latent));
        ulong pLatent = latent.Pointer, pLeft = left.Pointer, pWeight = weight.Pointer, pRight = right.Pointer, pFirst = firstRow.Pointer;
        void** args = stackalloc void*[] { &pLatent, &pLeft, &pWeight, &eps, &pRight, &t, &a, &b, &pFirst, &capacity };
        stream.Context.Kernels.Launch(KernelId.WriteLatentRowsF32, new Dim3((uint)t), new Dim3(RowThreads), 0, stream, args);
    }

    /// <summary>y[i] = bf16(x[i]) for i &lt; <paramref name="count"/>, rounded to nearest even; NaN stays NaN.</summary>
    public static void ToBFloat16(CudaStream stream, DeviceSpan<ushort> y, DeviceSpan<float> x, long count)
    {
        CheckCount(count);
        KernelChecks.Holds(y, count, nameof(y));
        KernelChecks.Holds(x, count, nameof(x));
        ulong pY = y.Pointer, pX = x.Pointer;
        void** args = stackalloc void*[] { &pY, &pX, &count };
        LaunchElements(stream, KernelId.F32ToBf16, count, args);
    }

    /// <summary>
    /// x[i] ≈ hi[i] + lo[i] as two bf16 values (hi = bf16(x), lo = bf16(x − hi)) for i &lt; <paramref name="count"/>: two
    /// tensor-core GEMMs over hi and lo give a product about as accurate as fp32 inputs (the MoE router's logits).
    /// </summary>
    public static void SplitBFloat16(CudaStream stream, DeviceSpan<ushort> hi, DeviceSpan<ushort> lo, DeviceSpan<float> x, long count)
    {
        CheckCount(count);
        KernelChecks.Holds(hi, count, nameof(hi));
        KernelChecks.Holds(lo, count, nameof(lo));
        KernelChecks.Holds(x, count, nameof(x));
        ulong pHi = hi.Pointer, pLo = lo.Pointer, pX = x.Pointer;
        void** args = stackalloc void*[] { &pHi, &pLo, &pX, &count };
        LaunchElements(stream, KernelId.SplitBf16, count, args);
    }

    /// <summary>An element kernel's launch: a thread per four elements, at most <see cref="MaxElementBlocks"/> blocks.</summary>
    private static void LaunchElements(CudaStream stream, KernelId id, long count, void** args)
    {
        long blocks = Math.Clamp((count + 4L * RowThreads - 1) / (4L * RowThreads), 1, MaxElementBlocks);
        stream.Context.Kernels.Launch(id, new Dim3((uint)blocks), new Dim3(RowThreads), 0, stream, args);
    }

    private static void CheckCount(long count)
    {
        if (count <= 0) throw new ArgumentOutOfRangeException(nameof(count), count, "count must be positive");
    }

    private static void CheckEps(float eps)
    {
        if (!(eps >= 0) || float.IsInfinity(eps)) throw new ArgumentOutOfRangeException(nameof(eps), eps, "eps must be a finite non-negative number");
    }

    /// <summary>Whole rows of <paramref name="cols"/> elements in <paramref name="span"/> (at most int.MaxValue; the kernels index rows with int).</summary>
    private static int RowsIn<T>(DeviceSpan<T> span, int cols, string name) where T : unmanaged
    {
        long rows = span.Length / cols;
        if (rows == 0) throw new ArgumentException($"{name} holds {span.Length:N0} elements, less than one row of {cols}", name);
        return (int)Math.Min(rows, int.MaxValue);
    }
}
