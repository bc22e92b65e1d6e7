using KimiLinear.Tokenization;

namespace KimiLinear.Generation;

/// <summary>
/// A <see cref="TokenGeneration"/> seen as text: tokens go through the tokenizer's streaming decoder (which holds back
/// incomplete UTF-8) and a <see cref="StopSequenceFilter"/>. Stop tokens end the text without being rendered.
/// </summary>
internal sealed class TextGeneration : IDisposable
{
    private readonly KimiStreamingDecoder _decoder;
    private readonly StopSequenceFilter _filter;
    private bool _ended;

    public TextGeneration(KimiSession session, int[] prompt, GenerationOptions? options)
    {
        var tokenizer = session.Model.RequireTokenizer();
        Tokens = new TokenGeneration(session, prompt, options);
        _decoder = tokenizer.CreateStreamingDecoder();
        _filter = new StopSequenceFilter((options ?? new GenerationOptions()).StopSequences);
    }

    /// <summary>The token-level run underneath (counts, finish reason).</summary>
    public TokenGeneration Tokens { get; }

    /// <summary>Produces the next non-empty piece of text, or returns false when the generation has ended.</summary>
    public bool TryNextPiece(CancellationToken cancellationToken, out string piece)
    {
        while (!_ended)
        {
            string text;
            if (Tokens.TryNext(cancellationToken, out var token))
            {
                text = _filter.Push(_decoder.Append(token));
                if (_filter.Stopped)
                {
                    Tokens.Stop(GenerationFinishReason.StopSequence);
                    _ended = true;
                }
            }
            else
            {
                text = _filter.Push(_decoder.Flush()) + _filter.Flush();
                _ended = true;
            }
            if (text.Length > 0)
            {
                piece = text;
                return true;
            }
        }
        piece = "";
        return false;
    }

    /// <summary>Runs to the end and returns the whole text.</summary>
    public string ReadToEnd(CancellationToken cancellationToken)
    {
        var text = new System.Text.StringBuilder();
        while (TryNextPiece(cancellationToken, out var piece))
            text.Append(piece);
        return text.ToString();
    }

    /// <inheritdoc cref="TokenGeneration.Dispose"/>
    public void Dispose() => Tokens.Dispose();
}
