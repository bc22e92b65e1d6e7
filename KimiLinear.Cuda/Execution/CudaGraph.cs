using KimiLinear.Cuda.Interop;

namespace KimiLinear.Cuda;

/// <summary>
/// A captured sequence of GPU work, instantiated once and replayed with one launch: this is how a decode step runs,
/// without a host round trip per kernel. Replays read and write the same device addresses the capture saw.
/// </summary>
public sealed class CudaGraph : IDisposable
{
    private readonly CudaContext _context;
    private readonly GraphHandle _graph;
    private readonly GraphExecHandle _exec;

    internal CudaGraph(CudaContext context, GraphHandle graph)
    {
        _context = context;
        _graph = graph;
        try
        {
            CudaException.ThrowIfFailed(CudaDriver.cuGraphInstantiateWithFlags(out nint exec, graph.DangerousGetHandle(), 0));
            _exec = new GraphExecHandle(context.Handle, exec);
        }
        catch
        {
            graph.Dispose();
            throw;
        }
    }

    /// <summary>Queues one replay of the whole graph on <paramref name="stream"/>.</summary>
    public void Launch(CudaStream stream)
    {
        ObjectDisposedException.ThrowIf(_exec.IsClosed, this);
        _context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuGraphLaunch(_exec.DangerousGetHandle(), stream.Raw));
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _exec.Dispose();
        _graph.Dispose();
    }
}
