namespace KimiLinear.Tokenization;

/// <summary>
/// The long-input splitting of <c>tokenization_kimi.py</c>'s <c>encode</c>, which tiktoken needs to stay fast and not
/// panic: the text is cut into chunks of 400,000 code points, and each chunk where a run of white space or of non-white
/// space grows past 25,000 code points. Each piece is then encoded on its own, so these cuts change the ids of
/// pathological input (a run of 25,001 spaces gives 100 ids, not 99) and are reproduced exactly.
/// </summary>
internal static class LongInputSplitter
{
    /// <summary><c>TIKTOKEN_MAX_ENCODE_CHARS</c>, in code points.</summary>
    public const int MaxChunkCodePoints = 400_000;

    /// <summary><c>MAX_NO_WHITESPACES_CHARS</c>, in code points.</summary>
    public const int MaxRunCodePoints = 25_000;

    /// <summary>Appends the (start, length) char ranges the Python wrapper encodes one by one.</summary>
    public static void Split(ReadOnlySpan<char> text, List<(int Start, int Length)> pieces)
    {
        if (text.Length <= MaxRunCodePoints)
        {
            // No run and no chunk can exceed its limit: the common case costs nothing.
            if (text.Length > 0) pieces.Add((0, text.Length));
            return;
        }

        int chunkCodePoints = 0;
        int sliceStart = 0, runLength = 0;
        bool runIsSpace = false;
        for (int i = 0; i < text.Length;)
        {
            int width = i + 1 < text.Length && char.IsSurrogatePair(text[i], text[i + 1]) ? 2 : 1;
            if (chunkCodePoints == MaxChunkCodePoints)
            {
                // A new chunk starts a new slice and a new run, as in the Python code.
                pieces.Add((sliceStart, i - sliceStart));
                sliceStart = i;
                chunkCodePoints = runLength = 0;
            }
            bool isSpace = IsPythonSpace(text[i]);
            if (chunkCodePoints == 0 || isSpace != runIsSpace)
            {
                runIsSpace = isSpace;
                runLength = 1;
            }
            else if (++runLength > MaxRunCodePoints)
            {
                pieces.Add((sliceStart, i - sliceStart));
                sliceStart = i;
                runLength = 1;
            }
            chunkCodePoints++;
            i += width;
        }
        pieces.Add((sliceStart, text.Length - sliceStart));
    }

    /// <summary>
    /// Python's <c>str.isspace</c> for one code point: Unicode White_Space plus the information separators
    /// U+001C..U+001F. Every such character is in the BMP, so a surrogate is never one.
    /// </summary>
    public static bool IsPythonSpace(char c) =>
        (PieceCharClass.Of(c) & PieceCharClass.Space) != 0 || c is >= '\u001C' and <= '\u001F';
}
