using KimiLinear.Backends;

namespace KimiLinear.State;

/// <summary>
/// A copy of a session's state taken before a multi-token step, so that a step that fails part-way (out of GPU memory
/// while its activations grow, a fault) leaves the session as it was: the KDA windows and recurrent states are copied
/// (a few MB a layer); the MLA caches need only the length, since a step writes cache rows past it and never before.
/// </summary>
internal sealed class StateCheckpoint : IDisposable
{
    private readonly IKimiBackend _backend;
    private readonly SessionState _state;
    private readonly int _length;
    private readonly List<(Tensor Live, Tensor Copy)> _copies = [];

    public StateCheckpoint(IKimiBackend backend, SessionState state)
    {
        (_backend, _state, _length) = (backend, state, state.Length);
        try
        {
            foreach (var tensor in state.Kda.OfType<KdaLayerState>().SelectMany(k => k.Tensors))
            {
                var copy = backend.AllocateState(tensor.Rows, tensor.Cols);
                _copies.Add((tensor, copy));
                backend.CopyRows(tensor, tensor.Rows, copy, 0);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Puts the state back as it was when the checkpoint was taken.</summary>
    public void Restore()
    {
        foreach (var (live, copy) in _copies)
            _backend.CopyRows(copy, copy.Rows, live, 0);
        _state.Length = _length;
    }

    public void Dispose()
    {
        foreach (var (_, copy) in _copies)
            (copy as IDisposable)?.Dispose();
        _copies.Clear();
    }
}
