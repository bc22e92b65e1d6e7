using KimiLinear.Tokenization;
using static KimiLinear.Tests.Tokenization.TokenizerFixtures;

namespace KimiLinear.Tests.Tokenization;

/// <summary>
/// Every case of reference-cases.json (ids from the Rust tiktoken core and published Python tiktoken cases) must match
/// exactly, and decoding must give the text back.
/// </summary>
public class ReferenceCaseTests
{
    [Theory]
    [InlineData("fixed")]
    [InlineData("published")]
    [InlineData("fuzz")]
    [InlineData("suppfuzz")]
    public void Group_MatchesReferenceIdsAndRoundTrips(string group) => AssertGroup(Reference, group);

    /// <summary>
    /// Our extra cases from the same engine: contractions with ſ, K and marks; random text over all planes; and Unicode
    /// 17's new Han code points, which the engine (Unicode 16) classes as unassigned.
    /// </summary>
    [Theory]
    [InlineData("contractions")]
    [InlineData("random")]
    [InlineData("unicode17Han")]
    public void ExtraGroup_MatchesReferenceIdsAndRoundTrips(string group) => AssertGroup(ExtraReference, group);

    private static void AssertGroup(System.Text.Json.JsonElement file, string group)
    {
        var failures = new List<string>();
        int count = 0;
        foreach (var (text, expected, _) in Cases(file, group))
        {
            count++;
            int[] actual = Kimi.Encode(text);
            if (!actual.SequenceEqual(expected))
                failures.Add($"'{Show(text)}': expected [{string.Join(",", expected)}], got [{string.Join(",", actual)}]");
            else if (Kimi.Decode(actual) != text)
                failures.Add($"'{Show(text)}': decodes to '{Show(Kimi.Decode(actual))}'");
        }
        Assert.True(count > 0);
        Assert.True(failures.Count == 0, $"{failures.Count} of {count} {group} cases differ:\n" + string.Join("\n", failures.Take(20)));
    }

    [Fact]
    public void Fixed_OrdinaryEncodingTreatsSpecialNamesAsText()
    {
        foreach (var (text, _, c) in Cases("fixed"))
            Assert.Equal(Ids(c.GetProperty("ordinary")), Kimi.Encode(text, allowSpecialTokens: false));
    }

    [Fact]
    public void TinyShakespeare_MatchesCountHashAndFirstIds()
    {
        // The reference ids come from tiktoken's core on the whole file; Encode adds the Python wrapper, which cuts the
        // text at code point 400,000 (between "As " and "we") and so gives one id more there and the same ids elsewhere.
        var corpus = Reference.GetProperty("corpora").GetProperty("tinyshakespeare");
        string text = File.ReadAllText(Path.Combine(FixtureDirectory, corpus.GetProperty("file").GetString()!));
        int[] ids = Kimi.EncodeWithoutLongInputSplitting(text);
        Assert.Equal(corpus.GetProperty("token_count").GetInt32(), ids.Length);
        Assert.Equal(Ids(corpus.GetProperty("first_20")), ids.Take(20));
        Assert.Equal(corpus.GetProperty("fnv1a64").GetString(), Fnv1a64(ids));
        Assert.Equal(text, Kimi.Decode(ids));

        int[] wrapped = Kimi.Encode(text);
        int[] byChunk = [.. Kimi.EncodeWithoutLongInputSplitting(text[..400_000]),
                         .. Kimi.EncodeWithoutLongInputSplitting(text[400_000..800_000]),
                         .. Kimi.EncodeWithoutLongInputSplitting(text[800_000..])];
        Assert.Equal(byChunk, wrapped);
        Assert.Equal(ids.Length + 1, wrapped.Length);
    }

    [Theory]
    [InlineData("'a' * 25001")]
    [InlineData("' ' * 25001")]
    [InlineData("'\U0001F642' * 25001")]
    [InlineData("'a ' * 200000 + 'b'")]
    public void LongInput_MatchesPythonWrapperGold(string expression)
    {
        var gold = Reference.GetProperty("long_inputs_hf_wrapper").GetProperty("cases").EnumerateArray()
            .Single(c => c.GetProperty("text").GetString() == expression);
        string text = expression switch
        {
            "'a ' * 200000 + 'b'" => string.Concat(Enumerable.Repeat("a ", 200000)) + "b",
            _ => string.Concat(Enumerable.Repeat(expression[1..expression.IndexOf('\'', 1)], 25001)),
        };
        int[] ids = Kimi.Encode(text);
        Assert.Equal(gold.GetProperty("count").GetInt32(), ids.Length);
        Assert.Equal(gold.GetProperty("fnv1a64").GetString(), Fnv1a64(ids));
        Assert.Equal(text, Kimi.Decode(ids));
    }

    [Fact]
    public void ChatPromptCheck_RendersToTheLlamaCppTokenCount()
    {
        var check = Reference.GetProperty("chat_prompt_check");
        int[] rendered = Kimi.EncodeChat(
        [
            new KimiChatMessage("system", "Answer in one sentence."),
            new KimiChatMessage("user", "What is the main idea behind Kimi Linear?"),
        ]);
        Assert.Equal(check.GetProperty("token_count").GetInt32(), rendered.Length);
        Assert.Equal(Kimi.Encode(check.GetProperty("text").GetString()!), rendered);
    }
}
