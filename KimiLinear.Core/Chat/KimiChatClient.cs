using System.Runtime.CompilerServices;
using KimiLinear.Generation;
using KimiLinear.Tokenization;
using Microsoft.Extensions.AI;

namespace KimiLinear.Chat;

/// <summary>
/// <see cref="IChatClient"/> over a <see cref="KimiModel"/>, for code written against Microsoft.Extensions.AI. Each call
/// gets the whole conversation, as the interface requires; the client keeps the state of the last conversation it served,
/// so a call that extends it (the previous messages, then the reply, then new messages) feeds only the new messages.
/// <see cref="ChatOptions"/> map to <see cref="GenerationOptions"/>: MaxOutputTokens, Temperature, TopP, TopK, Seed,
/// StopSequences and Instructions (a leading system message); <c>min_p</c> and <c>repetition_penalty</c> may be given in
/// AdditionalProperties. Frequency and presence penalties are ignored; tools and non-text content are not supported.
/// </summary>
public sealed class KimiChatClient : IChatClient
{
    private readonly KimiModel _model;
    private readonly GenerationOptions _defaults;
    private readonly ChatClientMetadata _metadata;
    private ChatSession? _cached; // the last conversation served, free for the next call that extends it

    /// <summary>Serves <paramref name="model"/>; <paramref name="defaults"/> supply what a call's ChatOptions leave unset.</summary>
    public KimiChatClient(KimiModel model, GenerationOptions? defaults = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        model.RequireTokenizer();
        _model = model;
        _defaults = defaults ?? new GenerationOptions();
        _metadata = new ChatClientMetadata("KimiLinear", defaultModelId: ModelId);
    }

    private string ModelId => Path.GetFileName(Path.TrimEndingDirectorySeparator(_model.ModelDirectory));

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var (chat, fedBefore) = Prepare(messages, options, out var generation);
        var succeeded = false;
        try
        {
            var text = await Task.Run(() => chat.Respond(generation, cancellationToken), cancellationToken).ConfigureAwait(false);
            succeeded = true;
            return new ChatResponse(new ChatMessage(ChatRole.Assistant, text))
            {
                ModelId = ModelId,
                CreatedAt = DateTimeOffset.UtcNow,
                FinishReason = FinishReasonOf(chat),
                Usage = UsageOf(chat, fedBefore),
            };
        }
        finally
        {
            Release(chat, succeeded);
        }
    }

    /// <inheritdoc />
    public IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var (chat, fedBefore) = Prepare(messages, options, out var generation);
        return StreamAsync(chat, fedBefore, generation, cancellationToken);
    }

    private async IAsyncEnumerable<ChatResponseUpdate> StreamAsync(ChatSession chat, int fedBefore, GenerationOptions generation,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var succeeded = false;
        try
        {
            var responseId = Guid.NewGuid().ToString("N");
            await foreach (var piece in chat.RespondStreamingAsync(generation, cancellationToken).ConfigureAwait(false))
                yield return new ChatResponseUpdate(ChatRole.Assistant, piece) { ResponseId = responseId, ModelId = ModelId };
            succeeded = true;
            yield return new ChatResponseUpdate(ChatRole.Assistant, [new UsageContent(UsageOf(chat, fedBefore))])
            {
                ResponseId = responseId,
                ModelId = ModelId,
                CreatedAt = DateTimeOffset.UtcNow,
                FinishReason = FinishReasonOf(chat),
            };
        }
        finally
        {
            Release(chat, succeeded);
        }
    }

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null)
            return null;
        if (serviceType == typeof(ChatClientMetadata))
            return _metadata;
        if (serviceType == typeof(KimiModel))
            return _model;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Releases the kept conversation state; the model stays open (it belongs to the caller).</summary>
    public void Dispose() => Interlocked.Exchange(ref _cached, null)?.Dispose();

    /// <summary>
    /// Finds or makes the conversation the messages continue, adds the messages it has not seen, and maps the options.
    /// Returns the chat and how many tokens it held before (those are the cached input).
    /// </summary>
    private (ChatSession Chat, int FedBefore) Prepare(IEnumerable<ChatMessage> messages, ChatOptions? options, out GenerationOptions generation)
    {
        ArgumentNullException.ThrowIfNull(messages);
        generation = MapOptions(options);
        var wanted = new List<KimiChatMessage>();
        if (options?.Instructions is { Length: > 0 } instructions)
            wanted.Add(new KimiChatMessage("system", instructions));
        wanted.AddRange(messages.Select(ToKimi));
        if (wanted.Count == 0)
            throw new ArgumentException("No messages: give at least one.", nameof(messages));

        // Take the cached conversation if the request extends it; another call running at the same time gets a fresh one.
        var chat = Interlocked.Exchange(ref _cached, null);
        if (chat is not null && !(chat.Messages.Count < wanted.Count && chat.PendingMessages.Count == 0 &&
                                  chat.Messages.SequenceEqual(wanted.Take(chat.Messages.Count))))
        {
            chat.Dispose();
            chat = null;
        }
        chat ??= new ChatSession(_model);
        var fedBefore = chat.TokenCount;
        foreach (var message in wanted.Skip(chat.Messages.Count))
            chat.Add(message);
        return (chat, fedBefore);
    }

    /// <summary>Keeps a conversation that ended cleanly for the next call; drops one that failed or was cancelled.</summary>
    private void Release(ChatSession chat, bool succeeded)
    {
        if (succeeded)
            Interlocked.Exchange(ref _cached, chat)?.Dispose();
        else
            chat.Dispose();
    }

    private GenerationOptions MapOptions(ChatOptions? options)
    {
        if (options is null)
            return _defaults;
        if (options.Tools is { Count: > 0 })
            throw new NotSupportedException("KimiChatClient does not support tool calling yet; call without ChatOptions.Tools.");
        var extra = options.AdditionalProperties;
        return _defaults with
        {
            MaxTokens = options.MaxOutputTokens ?? _defaults.MaxTokens,
            Temperature = options.Temperature ?? _defaults.Temperature,
            TopP = options.TopP ?? _defaults.TopP,
            TopK = options.TopK ?? _defaults.TopK,
            // ChatOptions' seed is 64-bit; the sampler's is 32-bit: fold the halves so every bit still matters.
            Seed = options.Seed is { } seed ? unchecked((int)seed ^ (int)(seed >> 32)) : _defaults.Seed,
            StopSequences = options.StopSequences is { } stops ? [.. stops] : _defaults.StopSequences,
            MinP = extra is not null && extra.TryGetValue("min_p", out float minP) ? minP : _defaults.MinP,
            RepetitionPenalty = extra is not null && extra.TryGetValue("repetition_penalty", out float penalty) ? penalty : _defaults.RepetitionPenalty,
        };
    }

    private static KimiChatMessage ToKimi(ChatMessage message)
    {
        foreach (var content in message.Contents)
            if (content is not TextContent)
                throw new NotSupportedException($"KimiChatClient handles text only; a {message.Role} message holds {content.GetType().Name}.");
        return new KimiChatMessage(message.Role.Value, message.Text) { Name = message.AuthorName };
    }

    private static ChatFinishReason FinishReasonOf(ChatSession chat) =>
        chat.LastFinishReason is GenerationFinishReason.MaxTokens or GenerationFinishReason.ContextFull
            ? ChatFinishReason.Length
            : ChatFinishReason.Stop;

    private static UsageDetails UsageOf(ChatSession chat, int fedBefore)
    {
        var output = chat.LastGeneratedTokenCount;
        var input = chat.TokenCount - fedBefore - output;
        return new UsageDetails
        {
            InputTokenCount = input + fedBefore,
            CachedInputTokenCount = fedBefore,
            OutputTokenCount = output,
            TotalTokenCount = input + fedBefore + output,
        };
    }
}
