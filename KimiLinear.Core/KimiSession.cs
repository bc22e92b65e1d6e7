namespace KimiLinear;

/// <summary>
/// One sequence's state on a model: KDA conv windows and recurrent states, MLA latent caches. Not thread-safe; use one
/// session per thread.
/// </summary>
public sealed partial class KimiSession : IDisposable
{
    /// <summary>The model this session runs on.</summary>
    public KimiModel Model { get; }

    /// <summary>Tokens held so far.</summary>
    public int Length { get; private set; }

    internal KimiSession(KimiModel model) => Model = model;

    /// <summary>
    /// Appends <paramref name="tokens"/> to the sequence and returns the logits of every new position,
    /// row-major [tokens.Length, vocab].
    /// </summary>
    public float[] Forward(ReadOnlySpan<int> tokens) => throw new NotImplementedException("foundation in progress");

    /// <summary>Empties the sequence.</summary>
    public void Reset() => Length = 0;

    /// <summary>Writes the whole state (KDA conv windows and recurrent states, MLA latent caches) to a stream.</summary>
    public void SaveState(Stream stream) => throw new NotImplementedException("foundation in progress");

    /// <summary>Replaces this session's state with one written by <see cref="SaveState"/> for the same model.</summary>
    public void RestoreState(Stream stream) => throw new NotImplementedException("foundation in progress");

    /// <inheritdoc />
    public void Dispose() { }
}
