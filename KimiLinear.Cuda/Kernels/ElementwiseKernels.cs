using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// Row-wise kernels of the layer body: embedding gather (<c>kernels/embedding.cu</c>), RMSNorm with fused residual
/// add (<c>kernels/rmsnorm.cu</c>) and SwiGLU (<c>kernels/swiglu.cu</c>). bf16 travels as <see cref="ushort"/> bits.
/// </summary>
internal static unsafe class ElementwiseKernels
{
    private const int RowThreads = 256;

    /// <summary>output[t, :] = table[ids[t], :] for output [T, D], table [V, D], ids [T]; an id outside [0, V) yields a NaN row.</summary>
    public static void EmbeddingGather(CudaStream stream, DeviceSpan<ushort> output, DeviceSpan<ushort> table, DeviceSpan<int> ids, int t, int d, int v)
    {
        KernelChecks.Positive(t, nameof(t));
        KernelChecks.Positive(d, nameof(d));
        KernelChecks.Positive(v, nameof(v));
        KernelChecks.Holds(output, (long)t * d, nameof(output));
        KernelChecks.Holds(table, (long)v * d, nameof(table));
        KernelChecks.Holds(ids, t, nameof(ids));
        ulong pOut = output.Pointer, pTable = table.Pointer, pIds = ids.Pointer;
        void** args = stackalloc void*[] { &pOut, &pTable, &pIds, &t, &d, &v };
        stream.Context.Kernels.Launch(KernelId.EmbeddingGatherBf16, new Dim3((uint)t), new Dim3(RowThreads), 0, stream, args);
    }

    /// <summary>
    /// residual[T, D] += x[T, D] (skipped when <paramref name="x"/> is null), then
    /// output[T, D] = residual · rsqrt(mean(residual²) + eps) · weight[D]. The residual stream is fp32.
    /// </summary>
    public static void RmsNormResidual(CudaStream stream, DeviceSpan<ushort> output, DeviceSpan<float> residual, DeviceSpan<ushort>? x,
        DeviceSpan<ushort> weight, int t, int d, float eps)
    {
        KernelChecks.Positive(t, nameof(t));
        KernelChecks.Positive(d, nameof(d));
        if (!(eps >= 0)) throw new ArgumentOutOfRangeException(nameof(eps), eps, "eps must be a non-negative number");
        KernelChecks.Holds(output, (long)t * d, nameof(output));
        KernelChecks.Holds(residual, (long)t * d, nameof(residual));
        if (x is { } xs) KernelChecks.Holds(xs, (long)t * d, nameof(x));
        KernelChecks.Holds(weight, d, nameof(weight));
        ulong pOut = output.Pointer, pResidual = residual.Pointer, pX = x?.Pointer ?? 0, pWeight = weight.Pointer;
        void** args = stackalloc void*[] { &pOut, &pResidual, &pX, &pWeight, &t, &d, &eps };
        stream.Context.Kernels.Launch(KernelId.RmsNormResidualBf16, new Dim3((uint)t), new Dim3(RowThreads), 0, stream, args);
    }

    /// <summary>
    /// output[t, f] = silu(gate[t, f]) · up[t, f] for output [T, F]; gate and up rows are <paramref name="gateStride"/>
    /// and <paramref name="upStride"/> elements apart (a fused gate‖up projection [T, 2F] passes up = gate + F, strides 2F).
    /// </summary>
    public static void SwiGlu(CudaStream stream, DeviceSpan<ushort> output, DeviceSpan<ushort> gate, DeviceSpan<ushort> up, int t, int f,
        int gateStride, int upStride)
    {
        KernelChecks.Positive(t, nameof(t));
        KernelChecks.Positive(f, nameof(f));
        if (gateStride < f || upStride < f) throw new ArgumentException($"row strides ({gateStride}, {upStride}) must be at least F = {f}");
        KernelChecks.Holds(output, (long)t * f, nameof(output));
        KernelChecks.Holds(gate, (long)(t - 1) * gateStride + f, nameof(gate));
        KernelChecks.Holds(up, (long)(t - 1) * upStride + f, nameof(up));
        ulong pOut = output.Pointer, pGate = gate.Pointer, pUp = up.Pointer;
        void** args = stackalloc void*[] { &pOut, &pGate, &pUp, &t, &f, &gateStride, &upStride };
        stream.Context.Kernels.Launch(KernelId.SwiGluBf16, new Dim3((uint)t), new Dim3(RowThreads), 0, stream, args);
    }
}
