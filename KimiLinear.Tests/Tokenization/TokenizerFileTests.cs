using System.Text;
using KimiLinear.Tokenization;

namespace KimiLinear.Tests.Tokenization;

/// <summary>
/// Loading a small tokenizer in the same format (as the built-in demo model ships one), and the errors for malformed
/// files: each names the file and, where there is one, the line.
/// </summary>
public sealed class TokenizerFileTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kimi-tok-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private string ModelPath => Path.Combine(_directory, "tiktoken.model");
    private string ConfigPath => Path.Combine(_directory, "tokenizer_config.json");

    /// <summary>256 single bytes (in byte order) then the merges "th", "he", "the", " the", "ll".</summary>
    private static List<string> SmallModelLines()
    {
        var lines = Enumerable.Range(0, 256).Select(b => $"{Convert.ToBase64String([(byte)b])} {b}").ToList();
        string[] merges = ["th", "he", "the", " the", "ll"];
        for (int i = 0; i < merges.Length; i++)
            lines.Add($"{Convert.ToBase64String(Encoding.UTF8.GetBytes(merges[i]))} {256 + i}");
        return lines;
    }

    private const string SmallConfig = """
        {
          "added_tokens_decoder": {
            "261": { "content": "[BOS]", "special": true },
            "263": { "content": "<|im_end|>", "special": true },
            "264": { "content": "<|im_user|>", "special": true },
            "265": { "content": "<|im_assistant|>", "special": true },
            "266": { "content": "<|im_system|>", "special": true },
            "267": { "content": "<|im_middle|>", "special": true }
          }
        }
        """;

    private void Write(IEnumerable<string> modelLines, string config = SmallConfig)
    {
        File.WriteAllText(ModelPath, string.Join("\n", modelLines) + "\n");
        File.WriteAllText(ConfigPath, config);
    }

    private InvalidDataException LoadFails() => Assert.Throws<InvalidDataException>(() => KimiTokenizer.Load(_directory));

    [Fact]
    public void SmallModel_LoadsWithSpecialIdsAfterItsRanks()
    {
        Write(SmallModelLines());
        var tokenizer = KimiTokenizer.Load(_directory);
        Assert.Equal(261, tokenizer.BaseVocabSize);
        Assert.Equal(261 + 258, tokenizer.VocabSize);
        Assert.Equal(263, tokenizer.TryGetSpecialTokenId("<|im_end|>"));
        Assert.Equal(262, tokenizer.TryGetSpecialTokenId("<|reserved_token_262|>"));
        Assert.Equal([263], tokenizer.StopTokenIds);   // this config names no [EOS]

        // Byte-level BPE with the small ranks: " hello" is ' ' + "he" + "ll" + 'o' (bytes are ranked by value here).
        int[] ids = tokenizer.Encode("the the hello");
        Assert.Equal([258, 259, ' ', 257, 260, 'o'], ids);
        Assert.Equal("the the hello", tokenizer.Decode(ids));
        Assert.Equal([261, 't', 263], tokenizer.Encode("[BOS]t<|im_end|>"));
    }

    [Fact]
    public void SmallModel_Chat_UsesItsOwnSpecialIds()
    {
        Write(SmallModelLines());
        var tokenizer = KimiTokenizer.Load(_directory);
        int[] ids = tokenizer.EncodeChat([new KimiChatMessage("user", "hi")]);
        Assert.Equal(264, ids[0]);
        Assert.Equal(tokenizer.Encode("<|im_user|>user<|im_middle|>hi<|im_end|><|im_assistant|>assistant<|im_middle|>"), ids);
        // The tool-call markers are not named here: only a conversation with tool calls needs them.
        var call = new KimiChatMessage("assistant", null) { ToolCalls = [new KimiToolCall("c0", "{}")] };
        var e = Assert.Throws<InvalidOperationException>(() => tokenizer.EncodeChat([call]));
        Assert.Contains("<|tool_calls_section_begin|>", e.Message);
    }

    [Fact]
    public void MalformedLine_NamesFileAndLine()
    {
        var lines = SmallModelLines();
        lines[9] = "not-a-valid-line";
        Write(lines);
        var e = LoadFails();
        Assert.Contains(ModelPath, e.Message);
        Assert.Contains("line 10", e.Message);
    }

    [Theory]
    [InlineData("QUI= 5 6", "one space")]
    [InlineData("Q@== 5", "base64")]
    [InlineData("QQ== five", "rank")]
    [InlineData("QQ==\t5", "one space")]
    public void MalformedLines_SayWhatIsWrong(string line, string expected)
    {
        var lines = SmallModelLines();
        lines.Insert(3, line);
        Write(lines);
        var e = LoadFails();
        Assert.Contains("line 4", e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void DuplicateRank_NamesBothLines()
    {
        var lines = SmallModelLines();
        lines[260] = $"{Convert.ToBase64String("zz"u8.ToArray())} 7";
        Write(lines);
        var e = LoadFails();
        Assert.Contains("duplicate rank 7", e.Message);
        Assert.Contains("line 261", e.Message);
        Assert.Contains("line 8", e.Message);
    }

    [Fact]
    public void DuplicateBytes_NamesBothRanks()
    {
        var lines = SmallModelLines();
        lines[260] = $"{Convert.ToBase64String("th"u8.ToArray())} 260";
        Write(lines);
        var e = LoadFails();
        Assert.Contains("line 261", e.Message);
        Assert.Contains("rank 256", e.Message);
    }

    [Fact]
    public void MissingSingleByte_NamesTheByte()
    {
        var lines = SmallModelLines();
        lines[0x41] = $"{Convert.ToBase64String("xyz"u8.ToArray())} 65";
        Write(lines);
        var e = LoadFails();
        Assert.Contains(ModelPath, e.Message);
        Assert.Contains("0x41", e.Message);
    }

    [Fact]
    public void RankGap_IsRejected()
    {
        var lines = SmallModelLines();
        lines[260] = $"{Convert.ToBase64String("ll"u8.ToArray())} 9000";
        Write(lines);
        var e = LoadFails();
        Assert.Contains("line 261", e.Message);
        Assert.Contains("9000", e.Message);
    }

    [Fact]
    public void MalformedConfigJson_NamesFileAndLine()
    {
        Write(SmallModelLines(), "{\n  \"added_tokens_decoder\": {\n    \"261\": { \"content\": \"[BOS]\" \n  }\n");
        var e = LoadFails();
        Assert.Contains(ConfigPath, e.Message);
        Assert.Contains("line 5", e.Message);
    }

    [Theory]
    [InlineData("""{ "added_tokens_decoder": { "12": { "content": "x" } } }""", "added_tokens_decoder[\"12\"]")]
    [InlineData("""{ "added_tokens_decoder": { "261": { "content": "" } } }""", "content")]
    [InlineData("""{ "added_tokens_decoder": { "261": "[BOS]" } }""", "content")]
    [InlineData("""{ "added_tokens_decoder": [] }""", "added_tokens_decoder")]
    [InlineData("""{ "added_tokens_decoder": { "261": { "content": "<|a|>" }, "262": { "content": "<|a|>" } } }""", "261 and 262")]
    [InlineData("[]", "object")]
    public void InvalidConfigContents_SayWhatIsWrong(string config, string expected)
    {
        Write(SmallModelLines(), config);
        var e = LoadFails();
        Assert.Contains(ConfigPath, e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void MissingFiles_AreNamed()
    {
        var e = Assert.Throws<FileNotFoundException>(() => KimiTokenizer.Load(_directory));
        Assert.Contains("tiktoken.model", e.Message);
        File.WriteAllText(ModelPath, string.Join("\n", SmallModelLines()));
        e = Assert.Throws<FileNotFoundException>(() => KimiTokenizer.Load(_directory));
        Assert.Contains("tokenizer_config.json", e.Message);
    }
}
