namespace KimiLinear.Generation;

/// <summary>Why a generation ended (cancellation ends it with an exception instead).</summary>
internal enum GenerationFinishReason
{
    /// <summary>The model produced a stop token.</summary>
    StopToken,
    /// <summary>A stop sequence appeared in the text.</summary>
    StopSequence,
    /// <summary><see cref="GenerationOptions.MaxTokens"/> tokens were generated.</summary>
    MaxTokens,
    /// <summary>The session reached the longest sequence the model allows.</summary>
    ContextFull,
}
