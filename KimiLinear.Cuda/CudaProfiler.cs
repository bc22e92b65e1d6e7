using KimiLinear.Cuda.Interop;

namespace KimiLinear.Cuda;

/// <summary>
/// Marks the work a profiler records (<c>ncu --profile-from-start off</c>): only what is launched between
/// <see cref="Start"/> and <see cref="Stop"/> on the calling thread's current context. Used by the model benchmark's
/// profile mode to isolate one decode step or one prefill piece.
/// </summary>
internal static class CudaProfiler
{
    public static void Start() => CudaException.ThrowIfFailed(CudaDriver.cuProfilerStart());

    public static void Stop() => CudaException.ThrowIfFailed(CudaDriver.cuProfilerStop());
}
