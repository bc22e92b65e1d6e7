namespace KimiLinear.Tokenization;

/// <summary>A tool call made by the assistant.</summary>
/// <param name="Id">The call id, e.g. "functions.get_weather:0" (Kimi's native form).</param>
/// <param name="ArgumentsJson">The arguments as the JSON text the model wrote; rendered verbatim.</param>
public sealed record KimiToolCall(string Id, string ArgumentsJson);
