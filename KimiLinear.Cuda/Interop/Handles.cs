using System.Runtime.InteropServices;

namespace KimiLinear.Cuda.Interop;

/// <summary>A retained primary context of one device; releasing it drops this library's reference.</summary>
internal sealed class ContextHandle : SafeHandle
{
    /// <summary>The device ordinal whose primary context this is.</summary>
    public int Device { get; }

    private ContextHandle(nint context, int device) : base(0, ownsHandle: true)
    {
        SetHandle(context);
        Device = device;
    }

    public override bool IsInvalid => handle == 0;

    public static ContextHandle RetainPrimary(int device)
    {
        CudaException.ThrowIfFailed(CudaDriver.cuDevicePrimaryCtxRetain(out nint context, device));
        return new ContextHandle(context, device);
    }

    /// <summary>
    /// Makes this context current on the calling thread if it is not already. The driver's current context is
    /// per thread, and an <c>await</c> may resume on another thread, so every operation calls this first.
    /// </summary>
    public void MakeCurrent()
    {
        CudaException.ThrowIfFailed(CudaDriver.cuCtxGetCurrent(out nint current));
        if (current != handle) CudaException.ThrowIfFailed(CudaDriver.cuCtxSetCurrent(handle));
    }

    protected override bool ReleaseHandle() =>
        CudaDriver.cuDevicePrimaryCtxRelease_v2(Device) is CuResult.Success or CuResult.Deinitialized;
}

/// <summary>
/// A driver object that belongs to a context. It holds a reference on the context so the context outlives it, and
/// frees itself with that context current (a finalizer thread has no current context of its own).
/// </summary>
internal abstract class ContextBoundHandle : SafeHandle
{
    private readonly ContextHandle _context;

    protected ContextBoundHandle(ContextHandle context, nint value) : base(0, ownsHandle: true)
    {
        bool added = false;
        context.DangerousAddRef(ref added);
        _context = context;
        SetHandle(value);
    }

    public override bool IsInvalid => handle == 0;

    protected sealed override bool ReleaseHandle()
    {
        try
        {
            CuResult result = CudaDriver.cuCtxSetCurrent(_context.DangerousGetHandle());
            if (result == CuResult.Success) result = Free(handle);
            return result is CuResult.Success or CuResult.Deinitialized;
        }
        finally
        {
            _context.DangerousRelease();
        }
    }

    /// <summary>Frees the driver object; the owning context is current.</summary>
    protected abstract CuResult Free(nint value);
}

/// <summary>A loaded module (<c>CUmodule</c>).</summary>
internal sealed class CudaModuleHandle(ContextHandle context, nint module) : ContextBoundHandle(context, module)
{
    protected override CuResult Free(nint value) => CudaDriver.cuModuleUnload(value);
}

/// <summary>A stream (<c>CUstream</c>).</summary>
internal sealed class StreamHandle(ContextHandle context, nint stream) : ContextBoundHandle(context, stream)
{
    protected override CuResult Free(nint value) => CudaDriver.cuStreamDestroy_v2(value);
}

/// <summary>An event (<c>CUevent</c>).</summary>
internal sealed class EventHandle(ContextHandle context, nint @event) : ContextBoundHandle(context, @event)
{
    protected override CuResult Free(nint value) => CudaDriver.cuEventDestroy_v2(value);
}

/// <summary>A device allocation (<c>CUdeviceptr</c>, stored in the handle's pointer-sized slot).</summary>
internal sealed class DeviceMemoryHandle(ContextHandle context, ulong pointer) : ContextBoundHandle(context, (nint)pointer)
{
    public ulong Pointer => (ulong)handle;

    protected override CuResult Free(nint value) => CudaDriver.cuMemFree_v2((ulong)value);
}

/// <summary>A page-locked host allocation (<c>cuMemAllocHost</c>): the device copies into it without the host waiting.</summary>
internal sealed class PinnedHostMemoryHandle(ContextHandle context, nint pointer) : ContextBoundHandle(context, pointer)
{
    public nint Pointer => handle;

    protected override CuResult Free(nint value) => CudaDriver.cuMemFreeHost(value);
}

/// <summary>A captured graph (<c>CUgraph</c>).</summary>
internal sealed class GraphHandle(ContextHandle context, nint graph) : ContextBoundHandle(context, graph)
{
    protected override CuResult Free(nint value) => CudaDriver.cuGraphDestroy(value);
}

/// <summary>An instantiated, launchable graph (<c>CUgraphExec</c>).</summary>
internal sealed class GraphExecHandle(ContextHandle context, nint graphExec) : ContextBoundHandle(context, graphExec)
{
    protected override CuResult Free(nint value) => CudaDriver.cuGraphExecDestroy(value);
}
