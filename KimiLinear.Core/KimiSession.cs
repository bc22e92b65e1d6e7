using KimiLinear.Backends;
using KimiLinear.State;

namespace KimiLinear;

/// <summary>
/// One sequence's state on a model: KDA conv windows and recurrent states, MLA latent caches. Not thread-safe; use one
/// session per thread (sessions of one model may run concurrently).
/// </summary>
public sealed partial class KimiSession : IDisposable
{
    private SessionState _state;
    private bool _disposed;

    /// <summary>The model this session runs on.</summary>
    public KimiModel Model { get; }

    /// <summary>Tokens held so far.</summary>
    public int Length => _state.Length;

    internal KimiSession(KimiModel model)
    {
        Model = model;
        _state = model.CreateState();
    }

    internal SessionState State => _state;

    /// <summary>
    /// Appends <paramref name="tokens"/> to the sequence and returns the logits of every new position,
    /// row-major [tokens.Length, vocab].
    /// </summary>
    /// <exception cref="ArgumentException">No tokens, a token id outside [0, vocab), or the sequence would exceed the
    /// model's maximum length. The session is unchanged.</exception>
    public float[] Forward(ReadOnlySpan<int> tokens) => Forward(tokens, MlaForm.Auto);

    /// <summary>
    /// Appends <paramref name="tokens"/> like <see cref="Forward(ReadOnlySpan{int})"/> but returns only the logits of the
    /// last position, [vocab]: what generation needs, without projecting every prompt position onto the vocabulary.
    /// </summary>
    /// <exception cref="ArgumentException">As for <see cref="Forward(ReadOnlySpan{int})"/>; the session is unchanged.</exception>
    public float[] ForwardLast(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Validate(tokens);
        return Model.Forward(_state, tokens, lastOnly: true);
    }

    /// <summary>
    /// Appends <paramref name="tokens"/> like <see cref="ForwardLast"/> and returns the token greedy decoding picks next
    /// (the largest logit; the lowest id among ties), found on the model's device.
    /// </summary>
    internal int ForwardGreedy(ReadOnlySpan<int> tokens) => ReadChoice(ForwardChoosing(tokens));

    /// <summary>Appends <paramref name="tokens"/> and queues greedy decoding's next token without waiting for it.</summary>
    internal GreedyChoice ForwardChoosing(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Validate(tokens);
        return Model.ForwardChoosing(_state, tokens);
    }

    /// <summary>Appends the latest greedy choice without waiting for it, and queues the next.</summary>
    internal GreedyChoice FeedChoice()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Model.FeedChoice(_state);
    }

    /// <summary>Waits for a greedy choice (one of the two latest) and returns its token.</summary>
    internal int ReadChoice(GreedyChoice choice)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Model.ReadChoice(_state, choice);
    }

    internal float[] Forward(ReadOnlySpan<int> tokens, MlaForm attention, Action<int, float[]>? onHidden = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Validate(tokens);
        return Model.Forward(_state, tokens, lastOnly: false, attention, onHidden);
    }

    /// <summary>Checks that <paramref name="tokens"/> may be appended (for <see cref="KimiModel.DecodeBatch"/>).</summary>
    internal void ValidateNext(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Validate(tokens);
    }

    private void Validate(ReadOnlySpan<int> tokens)
    {
        if (tokens.IsEmpty)
            throw new ArgumentException("No tokens to process: pass at least one token id.", nameof(tokens));
        int vocab = Model.Config.VocabSize;
        for (int i = 0; i < tokens.Length; i++)
            if ((uint)tokens[i] >= (uint)vocab)
                throw new ArgumentException($"Token id {tokens[i]} at position {i} is outside the model's vocabulary [0, {vocab}).", nameof(tokens));
        long total = (long)_state.Length + tokens.Length;
        if (total > Model.MaxSequenceLength)
            throw new ArgumentException($"The session holds {_state.Length} tokens; {tokens.Length} more would make {total}, past the model's maximum length of {Model.MaxSequenceLength}.", nameof(tokens));
    }

    /// <summary>Empties the sequence.</summary>
    public void Reset()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var old = _state;
        _state = Model.CreateState();
        old.Dispose();
    }

    /// <summary>Writes the whole state (KDA conv windows and recurrent states, MLA latent caches) to a stream.</summary>
    public void SaveState(Stream stream)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        SessionStateFile.Write(stream, Model, _state);
    }

    /// <summary>Replaces this session's state with one written by <see cref="SaveState"/> for the same model.</summary>
    /// <exception cref="InvalidDataException">The stream is not a saved state of this model; the session is unchanged.</exception>
    public void RestoreState(Stream stream)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var old = _state;
        _state = SessionStateFile.Read(stream, Model);
        old.Dispose();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _state.Dispose(); // a GPU session's caches go back to the device now, not at the next garbage collection
    }
}
