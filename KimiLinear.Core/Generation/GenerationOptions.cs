namespace KimiLinear.Generation;

/// <summary>
/// How a generation call samples and when it stops. Sampling applies, in order, the repetition penalty, the temperature,
/// top-k, top-p and min-p (the order Hugging Face transformers uses), then draws from what is left.
/// </summary>
public sealed record GenerationOptions
{
    /// <summary>Most tokens to generate (stop tokens included). Default 256; at least 1.</summary>
    public int MaxTokens { get; init; } = 256;

    /// <summary>Divides the logits before the softmax. 0 = greedy (always the most likely token). Default 0.7; 0 to 100.</summary>
    public float Temperature { get; init; } = 0.7f;

    /// <summary>Keep the most likely tokens whose probabilities add up to at least this. 1 = off. Default 0.95; (0, 1].</summary>
    public float TopP { get; init; } = 0.95f;

    /// <summary>Keep only the this many most likely tokens. 0 = off (the default).</summary>
    public int TopK { get; init; }

    /// <summary>Drop tokens less likely than this fraction of the most likely one. 0 = off (the default); [0, 1].</summary>
    public float MinP { get; init; }

    /// <summary>
    /// Penalises tokens already in this call's prompt or output (positive logits divided by it, negative multiplied), as in
    /// Hugging Face transformers. 1 = off (the default); greater than 0.
    /// </summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>Seed of the sampler's random numbers: the same seed, prompt and session give the same text. Null = a fresh seed each call.</summary>
    public int? Seed { get; init; }

    /// <summary>Texts that end the generation when they appear in the output; the output stops just before the first one.</summary>
    public IReadOnlyList<string> StopSequences { get; init; } = [];

    /// <summary>
    /// Token ids that end the generation (they are kept in the session but not returned as text). Null = the checkpoint's
    /// stop tokens: the tokenizer's end-of-turn tokens and <c>config.json</c>'s <c>eos_token_id</c>. Empty = none.
    /// </summary>
    public IReadOnlyList<int>? StopTokenIds { get; init; }

    /// <summary>Largest temperature accepted; beyond it sampling is uniform noise and almost surely a mistake.</summary>
    internal const float MaxTemperature = 100f;

    /// <summary>
    /// Throws <see cref="ArgumentOutOfRangeException"/> naming the first option out of range, or
    /// <see cref="ArgumentException"/> for an unusable stop sequence.
    /// </summary>
    public void Validate()
    {
        if (MaxTokens < 1)
            throw new ArgumentOutOfRangeException(nameof(MaxTokens), MaxTokens, "MaxTokens must be at least 1.");
        if (!(Temperature >= 0 && Temperature <= MaxTemperature))
            throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, $"Temperature must be between 0 (greedy) and {MaxTemperature}.");
        if (!(TopP > 0 && TopP <= 1))
            throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "TopP must be greater than 0 and at most 1 (1 = off).");
        if (TopK < 0)
            throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "TopK must be 0 (off) or positive.");
        if (!(MinP >= 0 && MinP <= 1))
            throw new ArgumentOutOfRangeException(nameof(MinP), MinP, "MinP must be between 0 (off) and 1.");
        if (!(RepetitionPenalty > 0 && float.IsFinite(RepetitionPenalty)))
            throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), RepetitionPenalty, "RepetitionPenalty must be a finite number greater than 0 (1 = off).");
        ArgumentNullException.ThrowIfNull(StopSequences, nameof(StopSequences));
        foreach (var stop in StopSequences)
            if (string.IsNullOrEmpty(stop))
                throw new ArgumentException("StopSequences must not contain null or empty strings.", nameof(StopSequences));
    }
}
