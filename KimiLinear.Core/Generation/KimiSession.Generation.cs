using System.Runtime.CompilerServices;
using KimiLinear.Generation;

namespace KimiLinear;

public sealed partial class KimiSession
{
    /// <summary>
    /// Generates text after <paramref name="prompt"/>, continuing this session: the prompt and the generated tokens
    /// (stop token included) stay in the session, so a later call continues the same sequence.
    /// </summary>
    /// <param name="prompt">Text to continue; special-token names such as <c>&lt;|im_end|&gt;</c> in it are read as special tokens.</param>
    /// <param name="options">Sampling and stopping; null = defaults.</param>
    /// <param name="cancellationToken">Stops the generation at the next token boundary (with <see cref="OperationCanceledException"/>); the session keeps what was generated.</param>
    /// <returns>The generated text, without stop tokens and cut before the first stop sequence.</returns>
    /// <exception cref="ArgumentException">The prompt is empty or does not fit in the context.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range.</exception>
    /// <exception cref="InvalidOperationException">The checkpoint has no tokenizer.</exception>
    public string Generate(string prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        using var run = StartText(prompt, options);
        return run.ReadToEnd(cancellationToken);
    }

    /// <summary>
    /// Streams the text generated after <paramref name="prompt"/> piece by piece as tokens are produced; otherwise as
    /// <see cref="Generate(string, GenerationOptions?, CancellationToken)"/>. Arguments are checked when this is called;
    /// the model runs on the thread pool while the enumeration is awaited. Abandoning the enumeration ends the
    /// generation like cancellation does.
    /// </summary>
    public IAsyncEnumerable<string> GenerateStreamingAsync(string prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        var run = StartText(prompt, options);
        return StreamAsync<string>(run, run.TryNextPiece, cancellationToken);
    }

    /// <summary>
    /// Generates token ids after <paramref name="prompt"/> (ids of this model's vocabulary), continuing this session; the
    /// stop token that ended the generation, if any, is kept in the session but not returned. Needs no tokenizer.
    /// </summary>
    /// <param name="prompt">Token ids to continue; at least one.</param>
    /// <param name="options">Sampling and stopping (stop sequences apply only to the text methods); null = defaults.</param>
    /// <param name="cancellationToken">Stops the generation at the next token boundary; the session keeps what was generated.</param>
    public int[] GenerateTokens(ReadOnlySpan<int> prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        using var run = new TokenGeneration(this, prompt.ToArray(), options);
        var tokens = new List<int>();
        while (run.TryNext(cancellationToken, out var token))
            tokens.Add(token);
        return [.. tokens];
    }

    /// <summary>Streams the ids generated after <paramref name="prompt"/> one by one; otherwise as <see cref="GenerateTokens"/>.</summary>
    public IAsyncEnumerable<int> GenerateTokensStreamingAsync(IReadOnlyList<int> prompt, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        var run = new TokenGeneration(this, [.. prompt], options);
        return StreamAsync<int>(run, run.TryNext, cancellationToken);
    }

    private TextGeneration StartText(string prompt, GenerationOptions? options)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        if (prompt.Length == 0)
            throw new ArgumentException("The prompt is empty: give some text to continue.", nameof(prompt));
        var tokenizer = Model.RequireTokenizer();
        var ids = tokenizer.Encode(prompt);
        tokenizer.ThrowIfOutsideModelVocab(ids, Model.Config.VocabSize);
        return new TextGeneration(this, ids, options);
    }

    /// <summary>Produces the next item of a run, or returns false at its end.</summary>
    internal delegate bool TryNextItem<T>(CancellationToken cancellationToken, out T item);

    /// <summary>
    /// Runs <paramref name="next"/> on the thread pool once per item until it returns false, then disposes
    /// <paramref name="run"/> (which feeds the last token) however the enumeration ends.
    /// </summary>
    internal static async IAsyncEnumerable<T> StreamAsync<T>(IDisposable run, TryNextItem<T> next,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        using (run)
        {
            while (true)
            {
                var (more, item) = await Task.Run(() => (next(cancellationToken, out var item), item), cancellationToken).ConfigureAwait(false);
                if (!more)
                    yield break;
                yield return item;
            }
        }
    }
}
