using KimiLinear.Tokenization;

namespace KimiLinear;

public sealed partial class KimiModel
{
    private KimiTokenizer? _tokenizer;
    private bool _tokenizerLoaded;
    private object? _tokenizerLock;

    /// <summary>
    /// The checkpoint's tokenizer (its <c>tiktoken.model</c> and <c>tokenizer_config.json</c>), loaded on first use;
    /// null when the checkpoint directory has no <c>tiktoken.model</c>, in which case only the token-level APIs work.
    /// </summary>
    public KimiTokenizer? Tokenizer =>
        LazyInitializer.EnsureInitialized(ref _tokenizer, ref _tokenizerLoaded, ref _tokenizerLock, () =>
            File.Exists(Path.Combine(ModelDirectory, "tiktoken.model")) ? KimiTokenizer.Load(ModelDirectory) : null);

    /// <summary>The tokenizer, or a clear error for the text APIs when the checkpoint has none.</summary>
    internal KimiTokenizer RequireTokenizer() =>
        Tokenizer ?? throw new InvalidOperationException(
            $"The checkpoint in '{ModelDirectory}' has no tiktoken.model, so text generation and chat are unavailable. " +
            "Add the checkpoint's tiktoken.model and tokenizer_config.json, or use the token-level methods (GenerateTokens).");

    /// <summary>Stop tokens used when <see cref="Generation.GenerationOptions.StopTokenIds"/> is null: the tokenizer's
    /// end-of-turn tokens and config.json's <c>eos_token_id</c>, those the model can emit.</summary>
    internal IEnumerable<int> DefaultStopTokenIds =>
        (Tokenizer?.StopTokenIds ?? []).Concat(Config.EosTokenIds).Where(id => id < Config.VocabSize).Distinct();
}
