using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>Weights generated on the device for full-size benchmark models (<c>kernels/synthetic.cu</c>).</summary>
internal static unsafe class SyntheticKernels
{
    private const int Threads = 256;
    private const int MaxBlocks = 4096; // grid-stride: enough blocks to fill any card, few enough to be cheap to launch

    /// <summary>y[i] = bf16 of a uniform value in ±<paramref name="range"/>, a function of (<paramref name="seed"/>, i) only.</summary>
    public static void FillUniform(CudaStream stream, DeviceSpan<ushort> y, ulong seed, float range)
    {
        if (y.Length == 0) return;
        if (!(range >= 0) || float.IsInfinity(range)) throw new ArgumentOutOfRangeException(nameof(range), range, "range must be a finite non-negative number");
        ulong pY = y.Pointer;
        long n = y.Length;
        void** args = stackalloc void*[] { &pY, &n, &seed, &range };
        uint blocks = (uint)Math.Min(MaxBlocks, (n / 8 + Threads - 1) / Threads + 1);
        stream.Context.Kernels.Launch(KernelId.FillUniformBf16, new Dim3(blocks), new Dim3(Threads), 0, stream, args);
    }
}
