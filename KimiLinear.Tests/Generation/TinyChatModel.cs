using System.Text.Json;
using System.Text.Json.Nodes;

namespace KimiLinear.Tests.Generation;

/// <summary>
/// The golden tiny model (random weights, vocabulary 512) with a byte-level tokenizer beside it, so the text and chat APIs
/// run end to end in tests: <c>tiktoken.model</c> holds the 256 single bytes (ranks 0..255, no merges) and
/// <c>tokenizer_config.json</c> the real Kimi special tokens moved from 163584+k to 256+k. Ids 512 and 513 (the last
/// reserved specials) fall outside the model; the model never emits them. Random weights emit arbitrary bytes, so decoded
/// text is often invalid UTF-8 (rendered as U+FFFD).
/// </summary>
internal static class TinyChatModel
{
    private const int RealBaseVocab = 163584;
    private const int BaseVocab = 256;

    private static readonly Lazy<string> s_directory = new(Create);
    private static readonly Lazy<KimiModel> s_model = new(() => KimiModel.Load(Directory));

    /// <summary>A temporary checkpoint directory: the tiny model plus the byte-level tokenizer.</summary>
    public static string Directory => s_directory.Value;

    /// <summary>The tiny model loaded once for all tests (sessions may run concurrently on it).</summary>
    public static KimiModel Model => s_model.Value;

    /// <summary>Id of a special token in the byte-level tokenizer, from its id in the real Kimi tokenizer.</summary>
    public static int Special(int realId) => realId - RealBaseVocab + BaseVocab;

    /// <summary>The golden decode: a 37-token prompt and the 24 tokens the reference generates greedily after it.</summary>
    public static (int[] Prompt, int[] Greedy) GoldenDecode()
    {
        var golden = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny", "golden.safetensors");
        return (ReadInt32Tensor(golden, "decode.prompt_ids"), ReadInt32Tensor(golden, "decode.generated_ids"));
    }

    private static string Create()
    {
        var source = Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny");
        var directory = Path.Combine(Path.GetTempPath(), $"kimi-tiny-chat-{Environment.ProcessId}");
        System.IO.Directory.CreateDirectory(directory);
        foreach (var file in System.IO.Directory.GetFiles(source).Where(f => !Path.GetFileName(f).StartsWith("golden", StringComparison.Ordinal)))
            File.Copy(file, Path.Combine(directory, Path.GetFileName(file)), overwrite: true);

        File.WriteAllLines(Path.Combine(directory, "tiktoken.model"),
            Enumerable.Range(0, BaseVocab).Select(b => $"{Convert.ToBase64String([(byte)b])} {b}"));

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Fixtures", "tokenizer", "tokenizer_config.json")))!.AsObject();
        var added = new JsonObject();
        foreach (var (id, entry) in config["added_tokens_decoder"]!.AsObject())
            added[(int.Parse(id) - RealBaseVocab + BaseVocab).ToString()] = entry!.DeepClone();
        config["added_tokens_decoder"] = added;
        File.WriteAllText(Path.Combine(directory, "tokenizer_config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        AppDomain.CurrentDomain.ProcessExit += (_, _) => System.IO.Directory.Delete(directory, recursive: true);
        return directory;
    }

    /// <summary>Reads one I32 tensor from a safetensors file (8-byte header length, JSON header, then data).</summary>
    private static int[] ReadInt32Tensor(string path, string name)
    {
        var bytes = File.ReadAllBytes(path);
        var headerLength = (int)BitConverter.ToUInt64(bytes, 0);
        var entry = JsonDocument.Parse(bytes.AsMemory(8, headerLength)).RootElement.GetProperty(name);
        var offsets = entry.GetProperty("data_offsets");
        var start = 8 + headerLength + offsets[0].GetInt32();
        var end = 8 + headerLength + offsets[1].GetInt32();
        return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(bytes.AsSpan(start, end - start)).ToArray();
    }
}
