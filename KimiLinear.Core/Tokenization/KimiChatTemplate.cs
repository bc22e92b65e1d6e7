using System.Text.Json;

namespace KimiLinear.Tokenization;

/// <summary>
/// Kimi Linear's chat template (<c>chat_template.jinja</c> of Kimi-Linear-48B-A3B-Instruct), rendered straight to ids:
/// markers are added as special ids and only the text between them is encoded, so text cannot smuggle in a marker.
/// The format, and which parts of it are verified, is documented on <see cref="KimiTokenizer.EncodeChat"/>.
/// </summary>
internal sealed class KimiChatTemplate
{
    private readonly KimiTokenizer _tokenizer;
    private readonly KimiSpecialTokens _specials;
    private readonly int _imUser, _imAssistant, _imSystem, _imMiddle, _imEnd;

    public KimiChatTemplate(KimiTokenizer tokenizer, KimiSpecialTokens specials)
    {
        _tokenizer = tokenizer;
        _specials = specials;
        _imUser = specials.IdOf("<|im_user|>");
        _imAssistant = specials.IdOf("<|im_assistant|>");
        _imSystem = specials.IdOf("<|im_system|>");
        _imMiddle = specials.IdOf("<|im_middle|>");
        _imEnd = specials.IdOf("<|im_end|>");
    }

    public int[] Render(IReadOnlyList<KimiChatMessage> messages, bool addGenerationPrompt, string? toolsJson, bool allowSpecialTokensInContent)
    {
        var ids = new List<int>();
        void Text(string text) => ids.AddRange(_tokenizer.Encode(text, allowSpecialTokensInContent));

        if (toolsJson is not null && CompactTools(toolsJson) is { } tools)
        {
            ids.Add(_imSystem);
            ids.AddRange(_tokenizer.Encode("tool_declare", allowSpecialTokens: false));
            ids.Add(_imMiddle);
            Text(tools);
            ids.Add(_imEnd);
        }

        for (int i = 0; i < messages.Count; i++)
        {
            var message = messages[i] ?? throw new ArgumentException($"messages[{i}] is null.", nameof(messages));
            string role = message.Role ?? throw new ArgumentException($"messages[{i}].Role is null.", nameof(messages));
            ids.Add(role switch { "user" => _imUser, "assistant" => _imAssistant, _ => _imSystem });
            Text(string.IsNullOrEmpty(message.Name) ? role : message.Name);   // Jinja: message.get('name') or role
            ids.Add(_imMiddle);

            if (role == "assistant" && message.ToolCalls is { Count: > 0 } calls)
            {
                if (!string.IsNullOrEmpty(message.Content)) Text(message.Content);
                // Tool-call markers are looked up only here, so a tokenizer without them still renders plain chats.
                ids.Add(_specials.IdOf("<|tool_calls_section_begin|>"));
                foreach (var call in calls)
                {
                    ids.Add(_specials.IdOf("<|tool_call_begin|>"));
                    Text(call.Id);
                    ids.Add(_specials.IdOf("<|tool_call_argument_begin|>"));
                    Text(call.ArgumentsJson);
                    ids.Add(_specials.IdOf("<|tool_call_end|>"));
                }
                ids.Add(_specials.IdOf("<|tool_calls_section_end|>"));
            }
            else if (role == "tool")
                Text($"## Return of {message.ToolCallId}\n{message.Content}");
            else if (message.Content is not null)
                Text(message.Content);
            if (i < messages.Count - 1 || addGenerationPrompt)
                ids.Add(_imEnd);
        }

        if (addGenerationPrompt)
        {
            ids.Add(_imAssistant);
            ids.AddRange(_tokenizer.Encode("assistant", allowSpecialTokens: false));
            ids.Add(_imMiddle);
        }
        return ids.ToArray();
    }

    /// <summary>The tools array in the template's spelling, or null when it is empty (the template skips it).</summary>
    private static string? CompactTools(string toolsJson)
    {
        string compact;
        try
        {
            compact = PythonJson.Compact(toolsJson);
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"toolsJson is not valid JSON: line {e.LineNumber + 1}: {e.Message}", nameof(toolsJson), e);
        }
        if (!compact.StartsWith('['))
            throw new ArgumentException("toolsJson must be a JSON array of tool declarations.", nameof(toolsJson));
        return compact == "[]" ? null : compact;
    }
}
