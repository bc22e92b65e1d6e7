using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using KimiLinear.Configuration;
using KimiLinear.Loading;
using KimiLinear.Tokenization;

namespace KimiLinear.Tests.Demo;

/// <summary>
/// The built-in demo model (<c>models/kimi-linear-demo</c>, trained by tools/train_demo_model.py) against the reference
/// outputs the training script wrote (Fixtures/demo/reference.safetensors): transformers' float32 logits on the bf16
/// checkpoint, so 1e-4 relative is the bar, as for the tiny golden model. Also checks the committed files themselves:
/// the published format, the tokenizer's layout and the validation loss the training log records.
/// </summary>
public sealed class DemoModelTests : IClassFixture<DemoModelFixture>
{
    private const double Tolerance = 1e-4;
    private const double MaxValidationNatsPerChar = 1.8;
    private const long MaxModelDirectoryBytes = 25L << 20;
    private readonly DemoModelFixture _fixture;

    public DemoModelTests(DemoModelFixture fixture) => _fixture = fixture;

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void LogitsMatchReferenceFromEmptySession(int reference)
    {
        using var session = _fixture.Model.CreateSession();
        var ids = _fixture.Reference.ReadInt32($"case{reference}.input_ids");
        var logits = session.Forward(ids);
        TensorAssert.Close(logits, _fixture.Reference.ReadFloat32($"case{reference}.logits"), Tolerance, $"case {reference} logits (T = {ids.Length})");
    }

    [Fact]
    public void GreedyContinuationMatchesReference()
    {
        using var session = _fixture.Model.CreateSession();
        int vocab = _fixture.Model.Config.VocabSize;
        var prompt = _fixture.Reference.ReadInt32("greedy.prompt_ids");
        var expected = _fixture.Reference.ReadInt32("greedy.generated_ids");

        var logits = session.Forward(prompt);
        var last = logits.AsSpan((prompt.Length - 1) * vocab, vocab).ToArray();
        var generated = new List<int>();
        for (int step = 0; step < expected.Length; step++)
        {
            int next = System.Numerics.Tensors.TensorPrimitives.IndexOfMax<float>(last);
            generated.Add(next);
            last = session.Forward([next]);
        }
        Assert.Equal(expected, generated);
    }

    [Fact]
    public void TokenizerEncodesPromptsToReferenceIds()
    {
        // The reference ids were checked against Python tiktoken when they were made.
        var tokenizer = KimiTokenizer.Load(FixturePaths.DemoModel);
        using var cases = JsonDocument.Parse(_fixture.ReferenceMetadata["cases"]);
        Assert.Equal(5, cases.RootElement.GetArrayLength());
        foreach (var c in cases.RootElement.EnumerateArray())
        {
            int n = c.GetProperty("case").GetInt32();
            string text = c.GetProperty("text").GetString()!;
            Assert.Equal(_fixture.Reference.ReadInt32($"case{n}.input_ids"), tokenizer.Encode(text));
        }
    }

    [Fact]
    public void TrainingLogRecordsValidationLossWithinTarget()
    {
        string log = File.ReadAllText(Path.Combine(FixturePaths.DemoModel, "training_log.txt"));
        var m = Regex.Match(log, @"^exported checkpoint: validation ([0-9.]+) nats/token, ([0-9.]+) nats/char .*?; (\d+) tokens, (\d+) chars", RegexOptions.Multiline);
        Assert.True(m.Success, "training_log.txt has no 'exported checkpoint: validation … nats/token, … nats/char (…; N tokens, M chars …)' line.");
        double perToken = Parse(m.Groups[1].Value), perChar = Parse(m.Groups[2].Value);
        double tokens = Parse(m.Groups[3].Value), chars = Parse(m.Groups[4].Value);
        Assert.InRange(perToken * tokens / chars, perChar - 1e-3, perChar + 1e-3); // nats/char is the same total NLL over characters
        Assert.True(perChar <= MaxValidationNatsPerChar, $"validation loss {perChar} nats/char is above {MaxValidationNatsPerChar}.");
    }

    [Fact]
    public void CheckpointIsInThePublishedFormat()
    {
        var config = _fixture.Model.Config;
        Assert.Equal([LayerKind.Kda, LayerKind.Kda, LayerKind.Kda, LayerKind.Mla], config.LayerKinds);
        Assert.True(config.NumExperts > 1 && config.NumSharedExperts == 1 && config.FirstDenseLayers == 1);

        using var file = SafeTensorFile.Open(Path.Combine(FixturePaths.DemoModel, "model.safetensors"));
        foreach (var tensor in file.Tensors.Values)
        {
            bool fp32 = tensor.Name.EndsWith(".A_log", StringComparison.Ordinal) || tensor.Name.EndsWith(".dt_bias", StringComparison.Ordinal);
            Assert.True(tensor.DType == (fp32 ? SafeTensorDType.F32 : SafeTensorDType.BF16), $"{tensor.Name} is {tensor.DType}");
        }
        Assert.Equal([1, 1, config.KdaHeads, 1], file.Get("model.layers.0.self_attn.A_log").Shape);
        Assert.Equal([config.KdaProjectionSize, 1, config.KdaConvSize], file.Get("model.layers.0.self_attn.q_conv1d.weight").Shape);
        Assert.Contains("model.layers.3.block_sparse_moe.experts.7.w1.weight", file.Tensors.Keys);
        // Router balancing during training moved the selection biases off zero, so the engine's use of them is exercised.
        var bias = BFloat16ToFloat(file.GetBytes("model.layers.1.block_sparse_moe.gate.e_score_correction_bias"));
        Assert.Contains(bias, b => Math.Abs(b) > 0.01f);

        long bytes = Directory.EnumerateFiles(FixturePaths.DemoModel).Sum(f => new FileInfo(f).Length);
        Assert.True(bytes <= MaxModelDirectoryBytes, $"the demo model directory holds {bytes:N0} bytes, over {MaxModelDirectoryBytes:N0}.");
    }

    [Fact]
    public void TokenizerFilesFollowKimisLayout()
    {
        var lines = File.ReadAllLines(Path.Combine(FixturePaths.DemoModel, "tiktoken.model"));
        int bpe = lines.Length;
        for (int rank = 0; rank < bpe; rank++)
        {
            var parts = lines[rank].Split(' ');
            Assert.Equal(rank.ToString(CultureInfo.InvariantCulture), parts[1]);
            if (rank < 256)
                Assert.Equal([(byte)rank], Convert.FromBase64String(parts[0])); // ranks 0..255 are the single bytes in byte order
        }
        Assert.Equal(bpe + 256, _fixture.Model.Config.VocabSize);

        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(FixturePaths.DemoModel, "tokenizer_config.json")));
        var named = doc.RootElement.GetProperty("added_tokens_decoder").EnumerateObject()
            .ToDictionary(p => int.Parse(p.Name, CultureInfo.InvariantCulture) - bpe, p => p.Value.GetProperty("content").GetString());
        var kimi = new Dictionary<int, string?>
        {
            [0] = "[BOS]", [1] = "[EOS]", [2] = "<|im_end|>", [3] = "<|im_user|>", [4] = "<|im_assistant|>",
            [6] = "<|start_header_id|>", [7] = "<|end_header_id|>", [9] = "[EOT]", [10] = "<|im_system|>",
            [11] = "<|tool_calls_section_begin|>", [12] = "<|tool_calls_section_end|>", [13] = "<|tool_call_begin|>",
            [14] = "<|tool_call_argument_begin|>", [15] = "<|tool_call_end|>", [17] = "<|im_middle|>",
            [254] = "[UNK]", [255] = "[PAD]",
        };
        Assert.Equal(kimi.OrderBy(p => p.Key), named.OrderBy(p => p.Key));
        var tokenizer = KimiTokenizer.Load(FixturePaths.DemoModel);
        Assert.Equal(bpe, tokenizer.BaseVocabSize);
        foreach (var (offset, name) in kimi)
            Assert.Equal(bpe + offset, tokenizer.TryGetSpecialTokenId(name!));
        Assert.Equal(bpe, _fixture.Model.Config.BosTokenId);
        Assert.Equal([bpe + 2], _fixture.Model.Config.EosTokenIds);
        Assert.Equal(bpe + 255, _fixture.Model.Config.PadTokenId);
    }

    private static double Parse(string s) => double.Parse(s, CultureInfo.InvariantCulture);

    private static float[] BFloat16ToFloat(ReadOnlySpan<byte> bytes)
    {
        var values = new float[bytes.Length / 2];
        for (int i = 0; i < values.Length; i++)
            values[i] = BitConverter.Int32BitsToSingle(System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(bytes[(2 * i)..]) << 16);
        return values;
    }
}

/// <summary>The demo model and its reference outputs, loaded once per test class.</summary>
public sealed class DemoModelFixture : IDisposable
{
    public KimiModel Model { get; } = KimiModel.Load(FixturePaths.DemoModel);
    public SafeTensorFile Reference { get; } = SafeTensorFile.Open(ReferencePath);

    /// <summary>The reference file's <c>__metadata__</c> (the prompt texts, how it was made).</summary>
    public IReadOnlyDictionary<string, string> ReferenceMetadata { get; } = ReadMetadata(ReferencePath);

    private static string ReferencePath => Path.Combine(FixturePaths.Get("demo"), "reference.safetensors");

    // SafeTensorFile validates tensors and skips the metadata; the header is read again here for its string map.
    private static Dictionary<string, string> ReadMetadata(string path)
    {
        using var stream = File.OpenRead(path);
        Span<byte> length = stackalloc byte[8];
        stream.ReadExactly(length);
        var header = new byte[System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(length)];
        stream.ReadExactly(header);
        using var doc = JsonDocument.Parse(header);
        return doc.RootElement.GetProperty("__metadata__").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!);
    }

    public void Dispose()
    {
        Model.Dispose();
        Reference.Dispose();
    }
}
