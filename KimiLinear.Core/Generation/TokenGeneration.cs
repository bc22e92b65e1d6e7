using System.Diagnostics;
using KimiLinear.Backends;
using KimiLinear.Sampling;
using Microsoft.Extensions.Logging;

namespace KimiLinear.Generation;

/// <summary>
/// One generation call on a session, token by token: the prompt is prefilled on the first step, then each step feeds the
/// token returned by the step before and samples the next. Once the run is disposed the session holds the prompt and
/// every token the run produced, stop token included — whether it finished, was cancelled or was abandoned — so the
/// session can always be continued. Since every returned token is fed, greedy decoding on the backend appends it before
/// returning it (the backend reads it where it chose it): a GPU runs that step while the caller handles the token, so it
/// never waits for the host between tokens. A sampled token is fed lazily (on the next step, or on <see cref="Dispose"/>)
/// so it reaches the caller one decode step sooner.
/// </summary>
internal sealed class TokenGeneration : IDisposable
{
    private readonly KimiSession _session;
    private readonly int[] _prompt;
    private readonly GenerationOptions _options;
    private readonly HashSet<int> _stopTokens;
    private readonly TokenSampler _sampler;
    // Tokens the repetition penalty applies to: this call's prompt and output (left empty when the penalty is off).
    private readonly HashSet<int> _seen = [];
    private readonly List<int> _output = [];
    // Greedy without a repetition penalty needs only the best token, which the backend finds where the logits are (a
    // GPU step then returns one int, not the vocabulary's logits); anything else samples from the logits on the host.
    private readonly bool _greedyOnBackend;
    private float[]? _logits;     // [vocab] logits of the next position (when sampling on the host)
    private GreedyChoice _choice; // the next position's greedy token, perhaps still being chosen (when _greedyOnBackend)
    private bool _started;        // the prompt has been fed
    private int? _unfed;          // the last sampled token returned, not yet fed to the session
    private long _startedAt;      // Stopwatch timestamp of the prefill's start
    private bool _disposed;

    /// <summary>Validates the arguments; nothing touches the session before the first <see cref="TryNext"/>.</summary>
    public TokenGeneration(KimiSession session, int[] prompt, GenerationOptions? options)
    {
        _session = session;
        _options = options ?? new GenerationOptions();
        _options.Validate();
        var model = session.Model;
        var vocab = model.Config.VocabSize;
        if (prompt.Length == 0)
            throw new ArgumentException("The prompt is empty: give at least one token to condition the generation on.", nameof(prompt));
        // Forward checks ids too, but only when the (lazy) prefill runs: check here so a bad call fails when it is made.
        for (var i = 0; i < prompt.Length; i++)
            if ((uint)prompt[i] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(prompt), prompt[i], $"Prompt token {i} is {prompt[i]}, outside the model's vocabulary [0, {vocab}).");
        // One position beyond the prompt must stay free: the first generated token is fed before the run ends.
        var room = model.MaxSequenceLength - session.Length - 1;
        if (prompt.Length > room)
            throw new ArgumentException(
                $"The prompt has {prompt.Length} tokens but only {Math.Max(room, 0)} fit: the session holds {session.Length} of the model's " +
                $"{model.MaxSequenceLength}-token context and one position is kept for the answer. Shorten the prompt or reset the session.",
                nameof(prompt));

        _stopTokens = [.. _options.StopTokenIds ?? model.DefaultStopTokenIds];
        foreach (var id in _stopTokens)
            if ((uint)id >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(GenerationOptions.StopTokenIds), id, $"Stop token {id} is outside the model's vocabulary [0, {vocab}).");
        _prompt = prompt;
        _sampler = new TokenSampler(_options, vocab);
        _greedyOnBackend = _options.Temperature == 0 && _options.RepetitionPenalty == 1;
        if (_options.RepetitionPenalty != 1)
            _seen.UnionWith(prompt);
    }

    /// <summary>Tokens in the prompt.</summary>
    public int PromptTokenCount => _prompt.Length;

    /// <summary>Tokens sampled so far, a final stop token included.</summary>
    public int GeneratedTokenCount => _output.Count;

    /// <summary>Whether the prompt has been fed (the first <see cref="TryNext"/> got past its cancellation check).</summary>
    public bool Started => _started;

    /// <summary>What the session holds beyond what it held before, once the run is disposed: the prompt, if fed, and the tokens sampled.</summary>
    public IEnumerable<int> Transcript => Started ? _prompt.Concat(_output) : [];

    /// <summary>Why the run ended; null while it can go on.</summary>
    public GenerationFinishReason? FinishReason { get; private set; }

    /// <summary>
    /// Produces the next token, or returns false when the run has ended (a stop token is kept in the session but not
    /// returned).
    /// Checks <paramref name="cancellationToken"/> before any work, so cancellation takes effect at a token boundary.
    /// </summary>
    public bool TryNext(CancellationToken cancellationToken, out int token)
    {
        token = 0;
        if (FinishReason is not null)
            return false;
        cancellationToken.ThrowIfCancellationRequested();
        if (!_started)
        {
            _startedAt = Stopwatch.GetTimestamp();
            Feed(_prompt);
            _started = true;
        }
        else if (_unfed is { } previous)
        {
            _unfed = null;
            Feed([previous]);
        }

        if (GeneratedTokenCount == _options.MaxTokens)
            return Finish(GenerationFinishReason.MaxTokens);
        if (_session.Length >= _session.Model.MaxSequenceLength)
            return Finish(GenerationFinishReason.ContextFull);

        if (_greedyOnBackend)
        {
            // Every returned token is fed: append this one now, from where the backend chose it, and read it while that runs.
            var choice = _choice;
            _choice = _session.FeedChoice();
            token = _session.ReadChoice(choice);
        }
        else
        {
            token = _sampler.Sample(_logits!, _seen);
            _unfed = token;
        }
        _output.Add(token);
        if (_stopTokens.Contains(token))
            return Finish(GenerationFinishReason.StopToken);
        if (_options.RepetitionPenalty != 1)
            _seen.Add(token);
        return true;
    }

    /// <summary>Appends <paramref name="tokens"/> to the session and keeps what choosing the next token needs.</summary>
    private void Feed(ReadOnlySpan<int> tokens)
    {
        if (_greedyOnBackend)
            _choice = _session.ForwardChoosing(tokens);
        else
            _logits = _session.ForwardLast(tokens);
    }

    /// <summary>Ends the run early because the caller found a stop (a stop sequence in the text).</summary>
    public void Stop(GenerationFinishReason reason) => FinishReason ??= reason;

    /// <summary>
    /// Feeds the last returned token so that the session holds everything this run produced; with greedy decoding on the
    /// backend, waits for the step already queued (its choice is not needed, but its errors are the caller's).
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        FeedUnfed();
        if (_greedyOnBackend && Started)
            _session.ReadChoice(_choice);
        if (Started && _session.Model.Options.Logger is { } logger && logger.IsEnabled(LogLevel.Debug))
        {
            var elapsed = Stopwatch.GetElapsedTime(_startedAt);
            logger.LogDebug("Generated {Generated} tokens after a {Prompt}-token prompt in {Milliseconds:F0} ms ({TokensPerSecond:F1} tokens/s); ended by {Reason}",
                GeneratedTokenCount, PromptTokenCount, elapsed.TotalMilliseconds, GeneratedTokenCount / elapsed.TotalSeconds,
                FinishReason?.ToString() ?? "the caller");
        }
    }

    private void FeedUnfed()
    {
        if (_unfed is not { } token)
            return;
        _unfed = null;
        Feed([token]);
    }

    private bool Finish(GenerationFinishReason reason)
    {
        FinishReason = reason;
        return false;
    }
}
