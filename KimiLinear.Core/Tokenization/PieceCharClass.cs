using System.Globalization;
using System.Text;

namespace KimiLinear.Tokenization;

/// <summary>
/// The character classes Kimi's pre-tokenizer regex (<c>pat_str</c>, see <see cref="KimiPreTokenizer"/>) tests, as
/// bit flags per code point. Rust's regex engine (which tiktoken runs) sees code points, so a supplementary-plane
/// character is classed by its own Unicode category, never as two surrogates.
/// </summary>
/// <remarks>
/// General categories come from the runtime's Unicode data (<see cref="CharUnicodeInfo"/>). .NET has no script
/// property, so Script=Han is the explicit range list below. Both follow Unicode 16.0, the version of the reference
/// engine (npm tiktoken 1.0.22) and of .NET 10: every code point splits there as in that engine (checked exhaustively
/// while building this; the reference tests keep the cases that tell versions apart). The shipped .NET regex
/// translation instead lists Unicode 17's new Han code points (U+16FF2.., U+2B73A.., U+2CEA2.., U+323B0..), which the
/// engine treats as unassigned symbols. On .NET 8 (Unicode 15.0) characters added in 15.1 and 16.0 are classed as
/// unassigned.
/// </remarks>
internal static class PieceCharClass
{
    /// <summary><c>\p{L}</c>.</summary>
    public const byte Letter = 1;
    /// <summary><c>\p{N}</c>.</summary>
    public const byte Number = 2;
    /// <summary><c>\p{Han}</c> (a script: it also holds symbols such as U+2E80 and numbers such as U+3007).</summary>
    public const byte Han = 4;
    /// <summary><c>[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&amp;&amp;[^\p{Han}]]</c>: letters that may open a word.</summary>
    public const byte Upper = 8;
    /// <summary><c>[\p{Ll}\p{Lm}\p{Lo}\p{M}&amp;&amp;[^\p{Han}]]</c>: letters that may continue a word.</summary>
    public const byte Lower = 16;
    /// <summary><c>\s</c>: Unicode White_Space (the same set as .NET's <c>\s</c>).</summary>
    public const byte Space = 32;
    /// <summary><c>[\r\n]</c>.</summary>
    public const byte LineBreak = 64;

    /// <summary>Script=Han, inclusive ranges (Unicode 16.0 Scripts.txt).</summary>
    private static readonly (int First, int Last)[] HanRanges =
    [
        (0x2E80, 0x2E99), (0x2E9B, 0x2EF3), (0x2F00, 0x2FD5), (0x3005, 0x3005), (0x3007, 0x3007), (0x3021, 0x3029),
        (0x3038, 0x303B), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFA6D), (0xFA70, 0xFAD9),
        (0x16FE2, 0x16FE3), (0x16FF0, 0x16FF1), (0x20000, 0x2A6DF), (0x2A700, 0x2B739), (0x2B740, 0x2B81D),
        (0x2B820, 0x2CEA1), (0x2CEB0, 0x2EBE0), (0x2EBF0, 0x2EE5D), (0x2F800, 0x2FA1D), (0x30000, 0x3134A),
        (0x31350, 0x323AF),
    ];

    // One byte per BMP code unit: the splitter's hot loop is a table load. Surrogates get the class of U+FFFD, which is
    // what a lone surrogate is replaced with before encoding (pairs never reach this table).
    private static readonly byte[] Bmp = BuildBmpTable();

    /// <summary>Class of a BMP character.</summary>
    public static byte Of(char c) => Bmp[c];

    /// <summary>Class of any code point.</summary>
    public static byte Of(int codePoint) =>
        codePoint <= 0xFFFF ? Bmp[codePoint] : Compute(codePoint, Rune.GetUnicodeCategory(new Rune(codePoint)));

    /// <summary>Reads the code point at <paramref name="index"/> and returns its class and its length in chars.</summary>
    public static byte At(ReadOnlySpan<char> text, int index, out int width)
    {
        char c = text[index];
        if (char.IsHighSurrogate(c) && index + 1 < text.Length && char.IsLowSurrogate(text[index + 1]))
        {
            width = 2;
            return Of(char.ConvertToUtf32(c, text[index + 1]));
        }
        width = 1;
        return Bmp[c];
    }

    private static byte[] BuildBmpTable()
    {
        var table = new byte[0x10000];
        byte replacement = Compute(0xFFFD, CharUnicodeInfo.GetUnicodeCategory('\uFFFD'));
        for (int c = 0; c < table.Length; c++)
            table[c] = c is >= 0xD800 and <= 0xDFFF ? replacement : Compute(c, CharUnicodeInfo.GetUnicodeCategory((char)c));
        return table;
    }

    private static byte Compute(int codePoint, UnicodeCategory category)
    {
        bool han = IsHan(codePoint);
        bool mark = category is UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark;
        bool upperOrTitle = category is UnicodeCategory.UppercaseLetter or UnicodeCategory.TitlecaseLetter;
        bool lower = category is UnicodeCategory.LowercaseLetter;
        bool modifierOrOther = category is UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter;

        byte flags = 0;
        if (upperOrTitle || lower || modifierOrOther) flags |= Letter;
        if (category is UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber) flags |= Number;
        if (han) flags |= Han;
        if (!han && (upperOrTitle || modifierOrOther || mark)) flags |= Upper;
        if (!han && (lower || modifierOrOther || mark)) flags |= Lower;
        if (IsWhiteSpace(codePoint)) flags |= Space;
        if (codePoint is '\r' or '\n') flags |= LineBreak;
        return flags;
    }

    private static bool IsHan(int codePoint)
    {
        foreach (var (first, last) in HanRanges)
            if (codePoint >= first && codePoint <= last)
                return true;
        return false;
    }

    // Unicode White_Space: \t..\r, space, U+0085, and the Z categories (.NET's \s is the same set).
    private static bool IsWhiteSpace(int codePoint) =>
        codePoint is (>= 0x09 and <= 0x0D) or 0x20 or 0x85
        || (codePoint <= 0xFFFF && CharUnicodeInfo.GetUnicodeCategory((char)codePoint) is
            UnicodeCategory.SpaceSeparator or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator);
}
