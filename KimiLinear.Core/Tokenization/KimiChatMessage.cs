namespace KimiLinear.Tokenization;

/// <summary>One message of a conversation for <see cref="KimiTokenizer.EncodeChat"/>.</summary>
/// <param name="Role">"system", "user", "assistant", "tool" or any other role (rendered like "system").</param>
/// <param name="Content">The text, or null for none (an assistant turn that only calls tools).</param>
public sealed record KimiChatMessage(string Role, string? Content)
{
    /// <summary>Overrides the role name written after the role marker (the template's <c>message.name</c>).</summary>
    public string? Name { get; init; }

    /// <summary>Tool calls made by an assistant message.</summary>
    public IReadOnlyList<KimiToolCall>? ToolCalls { get; init; }

    /// <summary>For role "tool": the id of the call this message answers.</summary>
    public string? ToolCallId { get; init; }
}
