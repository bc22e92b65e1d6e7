using KimiLinear.Backends;
using KimiLinear.Backends.Cpu;
using KimiLinear.Configuration;
using KimiLinear.Layers;
using KimiLinear.Loading;
using KimiLinear.State;
using Microsoft.Extensions.Logging;

namespace KimiLinear;

/// <summary>
/// A loaded Kimi Linear checkpoint: embeddings → decoder layers (KDA or MLA token mixer, dense MLP or MoE) → final norm →
/// lm_head. Immutable after loading, so sessions created from it may run concurrently on different threads.
/// </summary>
public sealed partial class KimiModel : IDisposable
{
    /// <summary>Rows of the MLA latent cache a new session starts with; it doubles as the sequence grows.</summary>
    private const int InitialCacheRows = 256;

    private readonly IWeightSource _weights;
    private readonly WeightMatrix _embedding;   // embed_tokens [vocab, D]
    private readonly DecoderLayer[] _layers;
    private readonly float[] _finalNorm;        // model.norm [D]
    private readonly WeightMatrix _lmHead;      // lm_head [vocab, D] (the embedding when tied)
    private bool _disposed;

    /// <summary>The checkpoint's configuration.</summary>
    public KimiConfig Config { get; }

    /// <summary>The checkpoint directory this model was loaded from.</summary>
    public string ModelDirectory { get; }

    /// <summary>The options the model was loaded with.</summary>
    public KimiModelOptions Options { get; }

    /// <summary>Longest sequence a session may hold.</summary>
    public int MaxSequenceLength { get; }

    internal IKimiBackend Backend { get; }

    /// <summary>The decoder layers (for tests that run one layer kind on two backends).</summary>
    internal IReadOnlyList<DecoderLayer> Layers => _layers;

    private KimiModel(string directory, KimiConfig config, KimiModelOptions options, IKimiBackend backend, IWeightSource weights,
        IProgress<KimiLoadProgress>? progress, CancellationToken cancellationToken)
    {
        (ModelDirectory, Config, Options, Backend, _weights) = (directory, config, options, backend, weights);
        MaxSequenceLength = options.MaxSequenceLength ?? config.MaxSequenceLength;
        long total = weights.TotalBytes;
        void Report(string stage) => progress?.Report(new KimiLoadProgress(stage, weights.BytesBound, total));

        int d = config.HiddenSize;
        _embedding = weights.Matrix("model.embed_tokens.weight", config.VocabSize, d);
        Report("embeddings");
        _layers = new DecoderLayer[config.NumLayers];
        for (int i = 0; i < _layers.Length; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            _layers[i] = new DecoderLayer(weights, i, config, options);
            Report($"layer {i + 1}/{_layers.Length}");
        }
        _finalNorm = weights.Floats("model.norm.weight", d);
        _lmHead = config.TieWordEmbeddings ? _embedding : weights.Matrix("lm_head.weight", config.VocabSize, d);
        Report("weights bound");
        backend.PrepareWeights(weights.Matrices, _layers.Select(l => l.Experts).OfType<MoeExperts>().ToList(),
            new Progress<long>(bytes => progress?.Report(new KimiLoadProgress("uploading weights", bytes, weights.BytesBound))), cancellationToken);
        Report("done");

        var unused = weights.UnusedTensors.Take(10).ToList();
        if (unused.Count > 0)
            options.Logger?.LogWarning("Checkpoint '{Directory}' has tensors the model does not use, e.g. {Names}", directory, string.Join(", ", unused));
        options.Logger?.LogInformation("Loaded {Layers}-layer Kimi Linear model from '{Directory}' ({Bytes:N0} bytes of weights) on {Device}",
            config.NumLayers, directory, weights.BytesBound, backend.DeviceName);
    }

    /// <summary>Loads the checkpoint in <paramref name="modelDirectory"/> (config.json + safetensors).</summary>
    /// <exception cref="FileNotFoundException">config.json, the safetensors file or a shard is missing.</exception>
    /// <exception cref="InvalidDataException">A config field, tensor dtype or shape, or a file is malformed; the message names it.</exception>
    /// <exception cref="NotSupportedException">The requested device cannot run the whole model.</exception>
    public static KimiModel Load(string modelDirectory, KimiModelOptions? options = null) =>
        LoadCore(modelDirectory, options ?? new KimiModelOptions(), null, CancellationToken.None);

    /// <summary>Loads a checkpoint off the calling thread, reporting progress; cancellation leaves nothing behind.</summary>
    public static Task<KimiModel> LoadAsync(string modelDirectory, KimiModelOptions? options = null,
        IProgress<KimiLoadProgress>? progress = null, CancellationToken cancellationToken = default) =>
        Task.Run(() => LoadCore(modelDirectory, options ?? new KimiModelOptions(), progress, cancellationToken), cancellationToken);

    private static KimiModel LoadCore(string directory, KimiModelOptions options, IProgress<KimiLoadProgress>? progress, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        if (!System.IO.Directory.Exists(directory))
            throw new DirectoryNotFoundException($"Model directory '{directory}' does not exist.");
        if (options.MaxSequenceLength is < 1)
            throw new ArgumentOutOfRangeException(nameof(options), options.MaxSequenceLength, "KimiModelOptions.MaxSequenceLength must be at least 1.");
        if (options.CpuThreads is < 1)
            throw new ArgumentOutOfRangeException(nameof(options), options.CpuThreads, "KimiModelOptions.CpuThreads must be at least 1.");

        var config = KimiConfig.Load(directory);
        return Create(directory, config, options, new CheckpointWeights(Checkpoint.Open(directory)), progress, cancellationToken);
    }

    /// <summary>
    /// A model of <paramref name="config"/> with random weights (see <see cref="SyntheticWeights"/>), for benchmarks of
    /// configurations without a checkpoint at hand.
    /// </summary>
    internal static KimiModel CreateSynthetic(KimiConfig config, KimiModelOptions? options = null, int seed = 0)
    {
        options ??= new KimiModelOptions();
        // With KimiDevice.Cuda the matrices are generated on the GPU: a full-size model needs no host copy.
        bool onDevice = options.Device == KimiDevice.Cuda;
        return Create("(synthetic)", config, options, new SyntheticWeights(seed, onDevice), null, CancellationToken.None);
    }

    private static KimiModel Create(string directory, KimiConfig config, KimiModelOptions options, IWeightSource weights,
        IProgress<KimiLoadProgress>? progress, CancellationToken cancellationToken)
    {
        IKimiBackend? backend = null;
        try
        {
            backend = BackendProvider.Create(config, options);
            return new KimiModel(directory, config, options, backend, weights, progress, cancellationToken);
        }
        catch
        {
            (backend as IDisposable)?.Dispose();
            weights.Dispose();
            throw;
        }
    }

    /// <summary>Starts an empty sequence.</summary>
    public KimiSession CreateSession()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new KimiSession(this);
    }

    internal SessionState CreateState()
    {
        var kda = new KdaLayerState?[_layers.Length];
        var mla = new MlaLayerState?[_layers.Length];
        int capacity = Math.Min(InitialCacheRows, MaxSequenceLength);
        for (int i = 0; i < _layers.Length; i++)
        {
            kda[i] = _layers[i].Kda?.CreateState(Backend);
            mla[i] = _layers[i].Mla?.CreateState(Backend, capacity);
        }
        return new SessionState(kda, mla);
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> (already validated) through the model on <paramref name="state"/> and returns the
    /// logits [T, vocab], or only the last position's [vocab] when <paramref name="lastOnly"/> (generation needs no more,
    /// and the lm_head is the largest matrix). <paramref name="attention"/> picks the MLA form; <paramref name="onHidden"/>
    /// sees the residual stream after the embedding (0), after each layer (1..N−1) and after the final norm (N).
    /// A prompt longer than the backend's <see cref="IKimiBackend.MaxTokensPerForward"/> runs in pieces (chunked
    /// prefill: the state carries between them exactly as between calls).
    /// </summary>
    internal float[] Forward(SessionState state, ReadOnlySpan<int> tokens, bool lastOnly = false, MlaForm attention = MlaForm.Auto,
        Action<int, float[]>? onHidden = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (lastOnly)
            return ForwardLast(state, tokens, attention, onHidden, DownloadLogits);
        int piece = Backend.MaxTokensPerForward;
        if (tokens.Length <= piece)
            return Guarded(state, tokens.ToArray(), ids => ForwardPiece(state, ids, Logits.All, attention, onHidden, DownloadLogits)!);
        if (onHidden is not null)
            throw new NotSupportedException($"Hidden states are captured only for inputs of at most {piece} tokens.");
        return Guarded(state, tokens.ToArray(), ids =>
        {
            var all = new float[(long)ids.Length * Config.VocabSize];
            for (int start = 0; start < ids.Length; start += piece)
            {
                var part = ids.AsSpan(start, Math.Min(piece, ids.Length - start));
                ForwardPiece(state, part, Logits.All, attention, null, DownloadLogits)!.CopyTo(all, (long)start * Config.VocabSize);
            }
            return all;
        });
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> like <see cref="Forward"/> with <c>lastOnly</c> and returns the next token greedy
    /// decoding picks (the largest logit, the lowest id among ties), found by the backend where the logits are: a GPU
    /// step then sends back one int rather than the vocabulary's 640 KB of logits.
    /// </summary>
    internal int ForwardGreedy(SessionState state, ReadOnlySpan<int> tokens) => ReadChoice(state, ForwardChoosing(state, tokens));

    /// <summary>
    /// Runs <paramref name="tokens"/> like <see cref="ForwardGreedy"/> but only queues the greedy choice: it becomes the
    /// session's latest choice, which <see cref="FeedChoice"/> can append before the host has read it.
    /// </summary>
    internal GreedyChoice ForwardChoosing(SessionState state, ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return ForwardLast(state, tokens, MlaForm.Auto, null, logits => Backend.ChooseNext(state, logits));
    }

    /// <summary>
    /// Appends the session's latest greedy choice, read where the backend put it (so a GPU runs this step while the
    /// host still reads the choice), and queues the choice after it.
    /// </summary>
    /// <exception cref="InvalidOperationException">The session is full, or has no greedy choice.</exception>
    internal GreedyChoice FeedChoice(SessionState state)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (state.Length >= MaxSequenceLength)
            throw new InvalidOperationException($"The session holds {state.Length} tokens, the model's maximum: no room for the chosen token.");
        return ForwardPiece(state, [IKimiBackend.ChosenToken], Logits.Last, MlaForm.Auto, null, logits => Backend.ChooseNext(state, logits));
    }

    /// <summary>Waits for <paramref name="choice"/> (one of the session's two latest) and returns its token.</summary>
    internal int ReadChoice(SessionState state, GreedyChoice choice) => Backend.ReadChoice(state, choice);

    /// <summary>
    /// Runs <paramref name="tokens"/> and reads the last position's logits [1, vocab] with <paramref name="read"/> while
    /// they are still on the backend. A prompt longer than the backend's <see cref="IKimiBackend.MaxTokensPerForward"/>
    /// runs in pieces (chunked prefill: the state carries between them exactly as between calls).
    /// </summary>
    private T ForwardLast<T>(SessionState state, ReadOnlySpan<int> tokens, MlaForm attention, Action<int, float[]>? onHidden, Func<Tensor, T> read)
    {
        int piece = Backend.MaxTokensPerForward;
        if (tokens.Length <= piece)
            return Guarded(state, tokens.ToArray(), ids => ForwardPiece(state, ids, Logits.Last, attention, onHidden, read)!);
        if (onHidden is not null)
            throw new NotSupportedException($"Hidden states are captured only for inputs of at most {piece} tokens.");
        return Guarded(state, tokens.ToArray(), ids =>
        {
            for (int start = 0; ; start += piece)
            {
                var part = ids.AsSpan(start, Math.Min(piece, ids.Length - start));
                if (start + part.Length == ids.Length)
                    return ForwardPiece(state, part, Logits.Last, attention, null, read)!;
                ForwardPiece(state, part, Logits.None, attention, null, read);
            }
        });
    }

    /// <summary>
    /// Runs <paramref name="forward"/> over <paramref name="tokens"/>; if a step of several tokens fails part-way (its
    /// activations are the largest allocation), the session is left as it was. A failed single-token decode step is a
    /// device fault, and copying the state for every token would cost more than the step.
    /// </summary>
    private T Guarded<T>(SessionState state, int[] tokens, Func<int[], T> forward)
    {
        if (tokens.Length == 1)
            return forward(tokens);
        using var checkpoint = new StateCheckpoint(Backend, state);
        try
        {
            return forward(tokens);
        }
        catch
        {
            checkpoint.Restore();
            throw;
        }
    }

    /// <summary>
    /// One decode step for several sessions at once: <paramref name="tokens"/>[i] is appended to
    /// <paramref name="sessions"/>[i], and the logits of each new position come back in the same order. The projections,
    /// experts and lm_head read their weights once for all the sessions (what bounds decode speed), the KDA and MLA
    /// mixers run on each session's own state. Computes what one <see cref="KimiSession.ForwardLast"/> per session does,
    /// up to rounding: a GPU multiplies several rows in bf16 on its tensor cores where a single row runs in fp32.
    /// </summary>
    /// <exception cref="ArgumentException">No sessions, a count of tokens other than one per session, a session twice or of
    /// another model, a token id outside the vocabulary, or a session at the maximum length. No session is changed.</exception>
    /// <exception cref="ObjectDisposedException">The model or a session is disposed.</exception>
    public IReadOnlyList<float[]> DecodeBatch(IReadOnlyList<KimiSession> sessions, ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(sessions);
        if (sessions.Count == 0)
            throw new ArgumentException("DecodeBatch needs at least one session.", nameof(sessions));
        if (tokens.Length != sessions.Count)
            throw new ArgumentException($"DecodeBatch takes one token per session: {sessions.Count} sessions, {tokens.Length} tokens.", nameof(tokens));
        if (sessions.Distinct().Count() != sessions.Count)
            throw new ArgumentException("DecodeBatch was given the same session twice; a session takes one token a step.", nameof(sessions));
        for (int i = 0; i < sessions.Count; i++)
        {
            if (!ReferenceEquals(sessions[i].Model, this))
                throw new ArgumentException($"Session {i} belongs to another model.", nameof(sessions));
            sessions[i].ValidateNext(tokens.Slice(i, 1));
        }

        var backend = Backend;
        var batch = new SequenceRows[sessions.Count];
        for (int i = 0; i < batch.Length; i++)
        {
            var state = sessions[i].State;
            batch[i] = new SequenceRows(state, i, 1, state.Length);
            for (int l = 0; l < _layers.Length; l++)
                _layers[l].Mla?.Reserve(backend, state.Mla[l]!, state.Length, state.Length + 1);
        }
        float[] all;
        using (backend.BeginForward())
        {
            var logits = Compute(batch, tokens, Logits.All, absorbed: true, onHidden: null)!; // [N, vocab]
            all = new float[logits.Length];
            backend.Download(logits, all);
        }
        var result = new float[batch.Length][];
        for (int i = 0; i < batch.Length; i++)
        {
            batch[i].State.Length++;
            result[i] = all.AsSpan(i * Config.VocabSize, Config.VocabSize).ToArray();
        }
        return result;
    }

    /// <summary>Which positions' logits a forward step computes.</summary>
    private enum Logits { None, Last, All }

    /// <summary>
    /// One forward step over <paramref name="tokens"/> (at most <see cref="IKimiBackend.MaxTokensPerForward"/>): returns
    /// what <paramref name="read"/> makes of the <paramref name="wanted"/> logits, read inside the step (the backend's
    /// step memory is reused by the next one); default for <see cref="Logits.None"/>.
    /// </summary>
    private T? ForwardPiece<T>(SessionState state, ReadOnlySpan<int> tokens, Logits wanted, MlaForm attention, Action<int, float[]>? onHidden,
        Func<Tensor, T> read)
    {
        var backend = Backend;
        int count = tokens.Length, position = state.Length;
        bool absorbed = attention switch { MlaForm.Absorbed => true, MlaForm.Expanded => false, _ => count == 1 };
        for (int i = 0; i < _layers.Length; i++)
            _layers[i].Mla?.Reserve(backend, state.Mla[i]!, position, position + count);

        using var step = backend.BeginForward();
        SequenceRows[] batch = [new(state, 0, count, position)];
        Tensor? logits;
        if (count == 1 && wanted != Logits.None && onHidden is null)
        {
            // A decode step: the same work every token, so a backend may record it once and replay it.
            logits = backend.RunDecodeStep(state, tokens[0], position, token => Compute(batch, [token], wanted, absorbed, null)!);
        }
        else
            logits = Compute(batch, tokens, wanted, absorbed, onHidden);
        state.Length += count;
        return logits is null ? default : read(logits);
    }

    private float[] DownloadLogits(Tensor logits)
    {
        var result = new float[logits.Length];
        Backend.Download(logits, result);
        return result;
    }

    /// <summary>
    /// Queues the layers over <paramref name="tokens"/>, whose rows belong to the sequences of <paramref name="batch"/>,
    /// and returns the logits tensor (null for <see cref="Logits.None"/>). Reads the states and writes them; each
    /// <see cref="SessionState.Length"/> is the caller's.
    /// </summary>
    private Tensor? Compute(IReadOnlyList<SequenceRows> batch, ReadOnlySpan<int> tokens, Logits wanted, bool absorbed, Action<int, float[]>? onHidden)
    {
        var backend = Backend;
        int count = tokens.Length;
        var hidden = backend.Allocate(count, Config.HiddenSize); // [T, D] residual stream, fp32
        backend.Embed(_embedding, tokens, hidden);
        Capture(onHidden, 0, hidden);
        for (int i = 0; i < _layers.Length; i++)
        {
            _layers[i].Forward(backend, hidden, batch, absorbed);
            if (i < _layers.Length - 1)
                Capture(onHidden, i + 1, hidden);
        }
        if (wanted == Logits.None)
            return null;

        if (wanted == Logits.Last && count > 1)
        {
            var last = backend.Allocate(1, Config.HiddenSize);   // [1, D]
            backend.GatherRows(hidden, [count - 1], last);
            hidden = last;
        }
        var logits = backend.Allocate(hidden.Rows, Config.VocabSize); // [T or 1, vocab]
        if (onHidden is null)
        {
            // The lm_head applies the final norm (a backend may normalise as it loads the row).
            backend.MatMul(new RmsNormed(hidden, _finalNorm, Config.RmsNormEps), [_lmHead], [logits]);
            return logits;
        }
        var normed = backend.Allocate(hidden.Rows, Config.HiddenSize);
        backend.RmsNorm(hidden, _finalNorm, Config.RmsNormEps, normed);
        Capture(onHidden, _layers.Length, normed);
        backend.MatMul(normed, _lmHead, logits);
        return logits;
    }

    private void Capture(Action<int, float[]>? onHidden, int index, Tensor hidden)
    {
        if (onHidden is null)
            return;
        var copy = new float[hidden.Length];
        Backend.Download(hidden, copy);
        onHidden(index, copy);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        (Backend as IDisposable)?.Dispose();
        _weights.Dispose();
    }
}

/// <summary>Which form of MLA attention to run.</summary>
internal enum MlaForm
{
    /// <summary>Expanded for prefill, absorbed for single-token decode.</summary>
    Auto,
    /// <summary>Per-head keys and values expanded from the latent cache.</summary>
    Expanded,
    /// <summary>kv_b_proj folded into the query and output: attention over the latent itself.</summary>
    Absorbed,
}
