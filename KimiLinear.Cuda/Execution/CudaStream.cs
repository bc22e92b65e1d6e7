using KimiLinear.Cuda.Interop;

namespace KimiLinear.Cuda;

/// <summary>An ordered queue of GPU work (<c>CUstream</c>). Copies and kernel launches on one stream run in order.</summary>
public sealed class CudaStream : IDisposable
{
    private const uint NonBlocking = 1; // CU_STREAM_NON_BLOCKING: no implicit sync with the legacy default stream

    private readonly StreamHandle _handle;

    /// <summary>The context this stream belongs to.</summary>
    public CudaContext Context { get; }

    internal CudaStream(CudaContext context)
    {
        Context = context;
        context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuStreamCreate(out nint stream, NonBlocking));
        _handle = new StreamHandle(context.Handle, stream);
    }

    /// <summary>The raw <c>CUstream</c>, valid while this object is alive.</summary>
    internal nint Raw
    {
        get
        {
            ObjectDisposedException.ThrowIf(_handle.IsClosed, this);
            return _handle.DangerousGetHandle();
        }
    }

    /// <summary>Blocks until all work queued so far has finished; surfaces asynchronous kernel errors.</summary>
    public void Synchronize()
    {
        Context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuStreamSynchronize(Raw));
    }

    /// <summary>Makes later work on this stream wait for <paramref name="event"/> (recorded on any stream).</summary>
    public void Wait(CudaEvent @event)
    {
        Context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuStreamWaitEvent(Raw, @event.Raw, 0));
    }

    /// <summary>
    /// Records the work <paramref name="enqueue"/> queues on this stream into a graph instead of running it, and returns
    /// the graph ready to replay. The capture is thread-local: <paramref name="enqueue"/> must queue its work
    /// synchronously on the calling thread, and must not allocate or synchronise (the driver rejects both while capturing);
    /// kernels it launches must be loaded beforehand (<c>Kernels.LoadAll()</c>), as loading a module synchronises.
    /// </summary>
    public CudaGraph Capture(Action<CudaStream> enqueue)
    {
        Context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuStreamBeginCapture_v2(Raw, StreamCaptureMode.ThreadLocal));
        try
        {
            enqueue(this);
        }
        catch
        {
            // End the capture so the stream is usable again; the partial graph is discarded.
            if (CudaDriver.cuStreamEndCapture(Raw, out nint partial) == CuResult.Success && partial != 0)
                CudaDriver.cuGraphDestroy(partial);
            throw;
        }
        CudaException.ThrowIfFailed(CudaDriver.cuStreamEndCapture(Raw, out nint graph));
        return new CudaGraph(Context, new GraphHandle(Context.Handle, graph));
    }

    /// <inheritdoc />
    public void Dispose() => _handle.Dispose();
}
