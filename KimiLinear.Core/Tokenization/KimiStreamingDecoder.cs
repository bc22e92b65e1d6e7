using System.Text;

namespace KimiLinear.Tokenization;

/// <summary>
/// Turns ids into text one id at a time, as a model generates them. A token may end in the middle of a UTF-8 sequence
/// (an emoji or a CJK character is often split over two or three tokens), so text is emitted only once each character
/// is complete; bytes that can never complete a character become U+FFFD as soon as that is certain, exactly as
/// <see cref="KimiTokenizer.Decode"/> renders them. Concatenating every <see cref="Append"/> result and
/// <see cref="Flush"/> gives <see cref="KimiTokenizer.Decode"/> of the same ids. Not thread-safe: one per stream.
/// </summary>
public sealed class KimiStreamingDecoder
{
    private readonly KimiTokenizer _tokenizer;
    private readonly Decoder _utf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetDecoder();

    internal KimiStreamingDecoder(KimiTokenizer tokenizer) => _tokenizer = tokenizer;

    /// <summary>Adds <paramref name="id"/> and returns the text it completes ("" while a UTF-8 sequence is incomplete).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The id is not in the tokenizer's vocabulary; the decoder is unchanged.</exception>
    public string Append(int id) => Decode(_tokenizer.TokenBytes(id, nameof(id)), flush: false);

    /// <summary>Returns whatever is pending (an incomplete UTF-8 sequence as U+FFFD) and starts afresh.</summary>
    public string Flush() => Decode(ReadOnlySpan<byte>.Empty, flush: true);

    /// <summary>Drops any pending bytes.</summary>
    public void Reset() => _utf8.Reset();

    private string Decode(ReadOnlySpan<byte> bytes, bool flush)
    {
        int count = _utf8.GetCharCount(bytes, flush);
        if (count == 0)
        {
            _utf8.GetChars(bytes, Span<char>.Empty, flush);   // keeps the incomplete bytes pending
            return "";
        }
        var chars = count <= 256 ? stackalloc char[count] : new char[count];
        int written = _utf8.GetChars(bytes, chars, flush);
        return new string(chars[..written]);
    }
}
