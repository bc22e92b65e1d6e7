using System.Text.Json;
using System.Text.Json.Nodes;

namespace KimiLinear.BpeTrainer;

/// <summary>
/// Kimi's 256 special-token slots after the BPE ranks, laid out exactly as in Kimi's <c>tokenizer_config.json</c>
/// (there at B = 163,584): named slots at the same offsets from B, every other slot <c>&lt;|reserved_token_ID|&gt;</c>.
/// </summary>
public static class KimiSpecialTokens
{
    /// <summary>Special slots after the BPE ranks; the model's vocabulary is B + this.</summary>
    public const int SlotCount = 256;

    /// <summary>Named slots: offset from B, name, and the Hugging Face "special" flag Kimi gives it.</summary>
    public static readonly IReadOnlyList<(int Offset, string Name, bool Special)> Named =
    [
        (0, "[BOS]", true),
        (1, "[EOS]", true),
        (2, "<|im_end|>", true),
        (3, "<|im_user|>", true),
        (4, "<|im_assistant|>", true),
        (6, "<|start_header_id|>", true),
        (7, "<|end_header_id|>", true),
        (9, "[EOT]", true),
        (10, "<|im_system|>", true),
        (11, "<|tool_calls_section_begin|>", false),
        (12, "<|tool_calls_section_end|>", false),
        (13, "<|tool_call_begin|>", false),
        (14, "<|tool_call_argument_begin|>", false),
        (15, "<|tool_call_end|>", false),
        (17, "<|im_middle|>", true),
        (254, "[UNK]", true),
        (255, "[PAD]", true),
    ];

    /// <summary>Offsets of the ids config.json names: bos [BOS], eos &lt;|im_end|&gt; (end of turn), pad [PAD].</summary>
    public const int BosOffset = 0, EosOffset = 2, PadOffset = 255;

    /// <summary>All 256 slot names → ids for a BPE of <paramref name="bpeSize"/> ranks.</summary>
    public static Dictionary<string, int> All(int bpeSize)
    {
        var names = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int offset = 0; offset < SlotCount; offset++)
            names[$"<|reserved_token_{bpeSize + offset}|>"] = bpeSize + offset;
        foreach (var (offset, name, _) in Named)
        {
            names.Remove($"<|reserved_token_{bpeSize + offset}|>");
            names[name] = bpeSize + offset;
        }
        return names;
    }

    /// <summary>A <c>tokenizer_config.json</c> in Kimi's layout for a BPE of <paramref name="bpeSize"/> ranks.</summary>
    public static string TokenizerConfigJson(int bpeSize, int modelMaxLength)
    {
        var decoder = new JsonObject();
        foreach (var (offset, name, special) in Named)
        {
            decoder[(bpeSize + offset).ToString(System.Globalization.CultureInfo.InvariantCulture)] = new JsonObject
            {
                ["content"] = name,
                ["lstrip"] = false,
                ["normalized"] = false,
                ["rstrip"] = false,
                ["single_word"] = false,
                ["special"] = special,
            };
        }
        var root = new JsonObject
        {
            ["added_tokens_decoder"] = decoder,
            ["additional_special_tokens"] = new JsonArray(
                "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|start_header_id|>", "<|end_header_id|>",
                "[EOT]", "<|im_system|>", "<|im_middle|>"),
            ["bos_token"] = "[BOS]",
            ["eos_token"] = "[EOS]",
            ["pad_token"] = "[PAD]",
            ["unk_token"] = "[UNK]",
            ["clean_up_tokenization_spaces"] = false,
            ["model_max_length"] = modelMaxLength,
            ["tokenizer_class"] = "TikTokenTokenizer",
        };
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n";
    }
}
