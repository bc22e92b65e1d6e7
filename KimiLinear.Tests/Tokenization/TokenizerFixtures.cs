using System.Text.Json;
using KimiLinear.Tokenization;

namespace KimiLinear.Tests.Tokenization;

/// <summary>The real Kimi tokenizer and its reference cases, loaded once for all tokenizer tests.</summary>
internal static class TokenizerFixtures
{
    public static string FixtureDirectory { get; } = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tokenizer");

    private static readonly Lazy<KimiTokenizer> LazyKimi = new(() => KimiTokenizer.Load(FixtureDirectory));
    private static readonly Lazy<JsonDocument> LazyReference = new(() =>
        JsonDocument.Parse(File.ReadAllBytes(Path.Combine(FixtureDirectory, "reference-cases.json"))));
    private static readonly Lazy<JsonDocument> LazyExtraReference = new(() =>
        JsonDocument.Parse(File.ReadAllBytes(Path.Combine(FixtureDirectory, "extra-reference-cases.json"))));

    public static KimiTokenizer Kimi => LazyKimi.Value;

    public static JsonElement Reference => LazyReference.Value.RootElement;

    /// <summary>Our own extra cases from the same engine (see make-extra-reference-cases.mjs).</summary>
    public static JsonElement ExtraReference => LazyExtraReference.Value.RootElement;

    /// <summary>(text, ids) of a reference group such as "fixed" or "fuzz".</summary>
    public static IEnumerable<(string Text, int[] Ids, JsonElement Case)> Cases(string group) => Cases(Reference, group);

    /// <summary>(text, ids) of a group in <paramref name="file"/>.</summary>
    public static IEnumerable<(string Text, int[] Ids, JsonElement Case)> Cases(JsonElement file, string group) =>
        file.GetProperty(group).EnumerateArray().Select(c => (c.GetProperty("text").GetString()!, Ids(c.GetProperty("ids")), c));

    public static int[] Ids(JsonElement array) => array.EnumerateArray().Select(e => e.GetInt32()).ToArray();

    /// <summary>FNV-1a 64 over each id as 4 little-endian bytes (the reference file's hash).</summary>
    public static string Fnv1a64(IReadOnlyList<int> ids)
    {
        ulong hash = 0xcbf29ce484222325;
        foreach (int id in ids)
            for (int b = 0; b < 4; b++)
            {
                hash ^= (byte)(id >> (8 * b));
                hash *= 0x100000001b3;
            }
        return hash.ToString("x16");
    }

    /// <summary>The text with control and non-ASCII characters escaped, for failure messages.</summary>
    public static string Show(string text) =>
        string.Concat(text.Select(c => c is >= ' ' and <= '~' ? c.ToString() : $"\\u{(int)c:X4}"));
}
