using KimiLinear.Cuda.Interop;

namespace KimiLinear.Cuda;

/// <summary>A marker in a stream (<c>CUevent</c>): for ordering streams and for timing GPU work.</summary>
public sealed class CudaEvent : IDisposable
{
    private const uint DisableTiming = 2; // CU_EVENT_DISABLE_TIMING

    private readonly EventHandle _handle;
    private readonly CudaContext _context;

    internal CudaEvent(CudaContext context, bool timing)
    {
        _context = context;
        context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuEventCreate(out nint @event, timing ? 0 : DisableTiming));
        _handle = new EventHandle(context.Handle, @event);
    }

    internal nint Raw
    {
        get
        {
            ObjectDisposedException.ThrowIf(_handle.IsClosed, this);
            return _handle.DangerousGetHandle();
        }
    }

    /// <summary>Marks the point in <paramref name="stream"/> reached once all work queued before it has finished.</summary>
    public void Record(CudaStream stream)
    {
        _context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuEventRecord(Raw, stream.Raw));
    }

    /// <summary>Blocks until the recorded point has been reached.</summary>
    public void Synchronize()
    {
        _context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuEventSynchronize(Raw));
    }

    /// <summary>GPU time in milliseconds from <paramref name="start"/> to this event (both recorded and reached).</summary>
    public float ElapsedMillisecondsSince(CudaEvent start)
    {
        _context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuEventElapsedTime(out float ms, start.Raw, Raw));
        return ms;
    }

    /// <inheritdoc />
    public void Dispose() => _handle.Dispose();
}
