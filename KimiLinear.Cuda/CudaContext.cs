using KimiLinear.Cuda.Interop;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda;

/// <summary>
/// One GPU as this library uses it: the device's primary context, its kernels and its allocations. Any thread may
/// use it; each operation makes the context current on the calling thread first, so work continues correctly after an
/// <c>await</c> that resumed elsewhere. Objects created from it (buffers, streams, …) keep the context alive until they
/// are disposed too.
/// </summary>
public sealed class CudaContext : IDisposable
{
    private readonly Lazy<KernelLibrary> _kernels;

    internal ContextHandle Handle { get; }

    /// <summary>The device this context runs on.</summary>
    public CudaDeviceInfo Device { get; }

    private CudaContext(CudaDeviceInfo device, ContextHandle handle)
    {
        Device = device;
        Handle = handle;
        _kernels = new Lazy<KernelLibrary>(() => new KernelLibrary(this));
    }

    /// <summary>Opens device <paramref name="deviceIndex"/>.</summary>
    /// <exception cref="CudaUnavailableException">No driver, no device, or the index is out of range.</exception>
    public static CudaContext Create(int deviceIndex = 0)
    {
        CudaDeviceInfo info = CudaDevice.Get(deviceIndex);
        var handle = ContextHandle.RetainPrimary(CudaDevice.Resolve(deviceIndex));
        var context = new CudaContext(info, handle);
        context.Bind();
        return context;
    }

    /// <summary>The kernels shipped with this library, loaded into this context on first use.</summary>
    internal KernelLibrary Kernels => _kernels.Value;

    /// <summary>Free and total device memory in bytes, as the driver reports them now.</summary>
    public (long Free, long Total) GetMemoryInfo()
    {
        Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuMemGetInfo_v2(out nuint free, out nuint total));
        return ((long)free, (long)total);
    }

    /// <summary>Allocates an uninitialised device buffer of <paramref name="length"/> elements.</summary>
    /// <exception cref="CudaOutOfMemoryException">The device has too little free memory.</exception>
    public DeviceBuffer<T> Allocate<T>(long length) where T : unmanaged => new(this, length);

    /// <summary>Creates a stream whose work does not synchronise with the legacy default stream.</summary>
    public CudaStream CreateStream() => new(this);

    /// <summary>Creates an event; <paramref name="timing"/> false makes a cheaper event for ordering only.</summary>
    public CudaEvent CreateEvent(bool timing = true) => new(this, timing);

    /// <summary>Blocks until all work on this device has finished; surfaces any asynchronous kernel error.</summary>
    public void Synchronize()
    {
        Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuCtxSynchronize());
    }

    /// <summary>Makes this context current on the calling thread (cheap when it already is).</summary>
    internal void Bind()
    {
        ObjectDisposedException.ThrowIf(Handle.IsClosed, this);
        Handle.MakeCurrent();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (Handle.IsClosed) return;
        if (_kernels.IsValueCreated) _kernels.Value.Dispose();
        Handle.Dispose();
    }
}
