using Microsoft.ML.Tokenizers;
using static KimiLinear.Tokenization.PieceCharClass;

namespace KimiLinear.Tokenization;

/// <summary>
/// Splits text into the pieces tiktoken's Rust core cuts with Kimi's pre-tokenizer regex (<c>pat_str</c> of
/// <c>tokenization_kimi.py</c>), written out by hand because .NET's Regex cannot express it as written (no
/// <c>\p{Han}</c>, no <c>&amp;&amp;</c>, and it matches UTF-16 code units where Rust matches code points). The regex
/// is eight alternatives, tried in order at each position, each greedy with backtracking:
/// <code>
/// 1  [\p{Han}]+
/// 2  [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&amp;&amp;[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&amp;&amp;[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
/// 3  [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&amp;&amp;[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&amp;&amp;[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
/// 4  \p{N}{1,3}
/// 5   ?[^\s\p{L}\p{N}]+[\r\n]*
/// 6  \s*[\r\n]+
/// 7  \s+(?!\S)
/// 8  \s+
/// </code>
/// Each method below returns exactly the match that backtracking order yields (the first success), so the pieces equal
/// Rust's on any valid text. Tests check this against the exact .NET translation on random strings.
/// </summary>
/// <remarks>
/// Text must not hold lone surrogates (<see cref="KimiTokenizer"/> replaces them with U+FFFD first, as Python tiktoken
/// does); if one arrives anyway it is classed like U+FFFD. An "end" in these rules is the end of the span given, which
/// tiktoken cuts at special tokens and the Python wrapper at its long-input limits.
/// </remarks>
internal sealed class KimiPreTokenizer : PreTokenizer
{
    /// <summary>The stateless, thread-safe instance.</summary>
    public static readonly KimiPreTokenizer Instance = new();

    private KimiPreTokenizer() { }

    /// <inheritdoc />
    public override IEnumerable<(int Offset, int Length)> PreTokenize(string text)
    {
        for (int i = 0; i < text.Length;)
        {
            int length = NextPieceLength(text, i);
            yield return (i, length);
            i += length;
        }
    }

    /// <inheritdoc />
    public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text)
    {
        // A span cannot live in an iterator, so the pieces are collected up front.
        var pieces = new List<(int, int)>(text.Length / 4 + 1);
        for (int i = 0; i < text.Length;)
        {
            int length = NextPieceLength(text, i);
            pieces.Add((i, length));
            i += length;
        }
        return pieces;
    }

    /// <summary>Length in chars of the piece that starts at <paramref name="start"/> (always ≥ 1).</summary>
    public static int NextPieceLength(ReadOnlySpan<char> text, int start)
    {
        byte first = At(text, start, out int firstWidth);

        if ((first & Han) != 0)
            return RunEnd(text, start, Han) - start;

        int end = WordEnd(text, start, first, firstWidth);
        if (end >= 0)
            return end - start;

        if ((first & Number) != 0)
        {
            end = start + firstWidth;
            for (int n = 1; n < 3 && end < text.Length; n++)
            {
                if ((At(text, end, out int w) & Number) == 0) break;
                end += w;
            }
            return end - start;
        }

        // 5:  ?[^\s\p{L}\p{N}]+[\r\n]*  — a leading space joins a following run of symbols.
        int symbols = text[start] == ' ' && start + 1 < text.Length && IsSymbol(At(text, start + 1, out _)) ? start + 1
            : IsSymbol(first) ? start : -1;
        if (symbols >= 0)
        {
            end = symbols;
            while (end < text.Length && IsSymbol(At(text, end, out int w))) end += w;
            while (end < text.Length && text[end] is '\r' or '\n') end++;
            return end - start;
        }

        // Only white space is left (every other class matched above). White space is all in the BMP.
        int runEnd = start;
        int lastLineBreak = -1;
        for (; runEnd < text.Length && (Of(text[runEnd]) & Space) != 0; runEnd++)
            if (text[runEnd] is '\r' or '\n') lastLineBreak = runEnd;
        System.Diagnostics.Debug.Assert(runEnd > start, "every code point is Han, a letter, a number, a symbol or white space");
        if (lastLineBreak >= 0)
            return lastLineBreak + 1 - start;                  // 6: through the last line break
        if (runEnd == text.Length || runEnd - start == 1)
            return runEnd - start;                             // 7 at the end of text, else 8 for a single char
        return runEnd - 1 - start;                             // 7: leave the last one to lead the next piece
    }

    // [^\s\p{L}\p{N}]
    private static bool IsSymbol(byte c) => (c & (Space | Letter | Number)) == 0;

    // [^\r\n\p{L}\p{N}]
    private static bool IsPrefix(byte c) => (c & (LineBreak | Letter | Number)) == 0;

    /// <summary>Alternatives 2 then 3, each first with the optional prefix taken, then without; -1 if none matches.</summary>
    private static int WordEnd(ReadOnlySpan<char> text, int start, byte first, int firstWidth)
    {
        // The prefix can only be part of a match when a letter follows it.
        bool prefix = IsPrefix(first) && start + firstWidth < text.Length
            && (At(text, start + firstWidth, out _) & (Upper | Lower)) != 0;
        bool letter = (first & (Upper | Lower)) != 0;
        if (!prefix && !letter)
            return -1;

        int end;
        if (prefix && (end = LowerTailEnd(text, start + firstWidth)) >= 0) return end;
        if (letter && (end = LowerTailEnd(text, start)) >= 0) return end;
        if (prefix && (end = UpperHeadEnd(text, start + firstWidth)) >= 0) return end;
        return letter ? UpperHeadEnd(text, start) : -1;
    }

    /// <summary>Alternative 2 after its prefix: <c>U*W+C?</c> from <paramref name="from"/>, or -1.</summary>
    private static int LowerTailEnd(ReadOnlySpan<char> text, int from)
    {
        // U* takes the longest run, then gives back one code point at a time until W+ can start. W+ starts either right
        // after the run (a W that is not U: an Ll) or on the run's last code point that is also W (Lm, Lo, M); in the
        // latter case W+ is that one code point, since what follows it in the run is not W.
        int end = from;
        int lastLower = -1, lastLowerWidth = 0;
        while (end < text.Length)
        {
            byte c = At(text, end, out int w);
            if ((c & Upper) == 0) break;
            if ((c & Lower) != 0) (lastLower, lastLowerWidth) = (end, w);
            end += w;
        }
        if (end < text.Length && (At(text, end, out _) & Lower) != 0)
        {
            end = RunEnd(text, end, Lower);
            return end + ContractionLength(text, end);
        }
        if (lastLower < 0)
            return -1;
        end = lastLower + lastLowerWidth;
        return end + ContractionLength(text, end);
    }

    /// <summary>Alternative 3 after its prefix: <c>U+W*C?</c> from <paramref name="from"/>, or -1.</summary>
    private static int UpperHeadEnd(ReadOnlySpan<char> text, int from)
    {
        if (from >= text.Length || (At(text, from, out _) & Upper) == 0)
            return -1;
        int end = RunEnd(text, RunEnd(text, from, Upper), Lower);
        return end + ContractionLength(text, end);
    }

    private static int RunEnd(ReadOnlySpan<char> text, int from, byte flag)
    {
        int end = from;
        while (end < text.Length && (At(text, end, out int w) & flag) != 0) end += w;
        return end;
    }

    /// <summary>
    /// <c>(?i:'s|'t|'re|'ve|'m|'ll|'d)</c>. Rust's case-insensitive match uses Unicode simple case folding, under which
    /// U+017F LATIN SMALL LETTER LONG S (ſ) equals 's'; no other non-ASCII letter folds onto these letters.
    /// </summary>
    private static int ContractionLength(ReadOnlySpan<char> text, int at)
    {
        if (at + 1 >= text.Length || text[at] != '\'')
            return 0;
        char c = text[at + 1];
        if (c is 's' or 'S' or '\u017F' or 't' or 'T' or 'm' or 'M' or 'd' or 'D')
            return 2;
        if (at + 2 >= text.Length)
            return 0;
        char c2 = text[at + 2];
        return (c, c2) switch
        {
            ('r' or 'R', 'e' or 'E') => 3,
            ('v' or 'V', 'e' or 'E') => 3,
            ('l' or 'L', 'l' or 'L') => 3,
            _ => 0,
        };
    }
}
