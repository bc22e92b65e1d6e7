using System.Runtime.CompilerServices;
using KimiLinear.Generation;
using KimiLinear.Tokenization;

namespace KimiLinear.Chat;

/// <summary>
/// A conversation with a model in its chat format. The conversation's state stays in a <see cref="KimiSession"/>, so each
/// turn feeds only its new tokens: earlier turns are never prefilled again. Not thread-safe; one conversation per
/// instance. Save it with <see cref="Save"/> and resume it, in another process too, with <see cref="Load"/>.
/// </summary>
public sealed class ChatSession : IDisposable
{
    private readonly KimiTokenizer _tokenizer;
    private readonly int _endOfTurn;               // <|im_end|>
    private readonly List<KimiChatMessage> _messages = [];
    private readonly List<KimiChatMessage> _pending = []; // added, not yet fed to the session
    private readonly List<int> _tokens = [];        // every token fed to the session, in order
    private bool _turnOpen;                         // the last assistant turn ended without <|im_end|> (cut short)

    /// <summary>Starts a conversation on <paramref name="model"/>, optionally with a system prompt.</summary>
    /// <exception cref="InvalidOperationException">The checkpoint has no tokenizer, or its tokenizer has no chat tokens.</exception>
    public ChatSession(KimiModel model, string? systemPrompt = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        Model = model;
        _tokenizer = model.RequireTokenizer();
        _endOfTurn = _tokenizer.TryGetSpecialTokenId("<|im_end|>") ?? throw new InvalidOperationException(
            $"The tokenizer of '{model.ModelDirectory}' has no <|im_end|> token, so it has no chat format.");
        Session = model.CreateSession();
        if (systemPrompt is not null)
            Add(new KimiChatMessage("system", systemPrompt));
    }

    /// <summary>The model the conversation runs on.</summary>
    public KimiModel Model { get; }

    /// <summary>The conversation so far: every message added or generated, in order.</summary>
    public IReadOnlyList<KimiChatMessage> Messages => _messages;

    /// <summary>Tokens of the conversation held in the model's state (messages added since the last reply are not yet counted).</summary>
    public int TokenCount => Session.Length;

    /// <summary>The session holding the conversation's state.</summary>
    internal KimiSession Session { get; }

    /// <summary>Every token fed to <see cref="Session"/>, in order.</summary>
    internal IReadOnlyList<int> Tokens => _tokens;

    /// <summary>Messages added but not yet fed.</summary>
    internal IReadOnlyList<KimiChatMessage> PendingMessages => _pending;

    /// <summary>Why the last reply ended (null before the first).</summary>
    internal GenerationFinishReason? LastFinishReason { get; private set; }

    /// <summary>Tokens the last reply generated, a final stop token included.</summary>
    internal int LastGeneratedTokenCount { get; private set; }

    /// <summary>Whether the last assistant turn was cut short before its <c>&lt;|im_end|&gt;</c>.</summary>
    internal bool TurnOpen => _turnOpen;

    /// <summary>
    /// Appends a message (any role: system, user, assistant, tool) without generating a reply; it is fed to the model with
    /// the next reply. Use it to replay earlier history or add tool results.
    /// </summary>
    public void Add(KimiChatMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        ArgumentException.ThrowIfNullOrEmpty(message.Role, nameof(message));
        _messages.Add(message);
        _pending.Add(message);
    }

    /// <summary>Sends a user message and returns the assistant's reply (which joins the conversation).</summary>
    /// <param name="userMessage">The user's message; not empty.</param>
    /// <param name="options">Sampling and stopping; null = defaults.</param>
    /// <param name="cancellationToken">Stops the reply at the next token boundary; the partial reply stays in the conversation.</param>
    /// <exception cref="ArgumentException">The message is empty or does not fit in the context (the conversation is then unchanged).</exception>
    public string Send(string userMessage, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        using var reply = StartUserTurn(userMessage, options);
        return reply.ReadToEnd(cancellationToken);
    }

    /// <summary>Sends a user message and streams the assistant's reply; otherwise as <see cref="Send"/>.</summary>
    public IAsyncEnumerable<string> SendStreamingAsync(string userMessage, GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        var reply = StartUserTurn(userMessage, options);
        return KimiSession.StreamAsync<string>(reply, reply.TryNextPiece, cancellationToken);
    }

    /// <summary>Generates the assistant's reply to the messages added since the last reply.</summary>
    /// <inheritdoc cref="Send" path="/param[@name='options' or @name='cancellationToken']"/>
    /// <exception cref="InvalidOperationException">No message was added since the last reply.</exception>
    public string Respond(GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        using var reply = StartReply(options);
        return reply.ReadToEnd(cancellationToken);
    }

    /// <summary>Streams the assistant's reply to the messages added since the last reply; otherwise as <see cref="Respond"/>.</summary>
    public IAsyncEnumerable<string> RespondStreamingAsync(GenerationOptions? options = null, CancellationToken cancellationToken = default)
    {
        var reply = StartReply(options);
        return KimiSession.StreamAsync<string>(reply, reply.TryNextPiece, cancellationToken);
    }

    /// <summary>Writes the conversation and the model's state to <paramref name="path"/> (replacing it atomically).</summary>
    public void Save(string path) => ChatSessionFile.Write(path, this);

    /// <summary>
    /// Resumes a conversation written by <see cref="Save"/> for the same model. A damaged or foreign file gives
    /// <see cref="InvalidDataException"/> naming the file and the problem; the model stays usable.
    /// </summary>
    public static ChatSession Load(KimiModel model, string path) => ChatSessionFile.Read(path, model);

    /// <inheritdoc />
    public void Dispose() => Session.Dispose();

    private Reply StartUserTurn(string userMessage, GenerationOptions? options)
    {
        ArgumentNullException.ThrowIfNull(userMessage);
        if (userMessage.Length == 0)
            throw new ArgumentException("The message is empty.", nameof(userMessage));
        var message = new KimiChatMessage("user", userMessage);
        _pending.Add(message);
        try
        {
            var reply = StartReply(options);
            _messages.Add(message);
            return reply;
        }
        catch
        {
            _pending.RemoveAt(_pending.Count - 1);
            throw;
        }
    }

    private Reply StartReply(GenerationOptions? options)
    {
        if (_pending.Count == 0)
            throw new InvalidOperationException("Nothing to reply to: add a message first.");
        var prompt = new List<int>();
        if (_turnOpen)
            prompt.Add(_endOfTurn);
        // The chat format puts nothing between messages, so the encoding of the new messages continues the old exactly.
        prompt.AddRange(_tokenizer.EncodeChat(_pending, addGenerationPrompt: true));
        return new Reply(this, new TextGeneration(Session, [.. prompt], options));
    }

    /// <summary>
    /// A reply being generated. The pending messages count as fed once the prompt goes in; disposing the reply records it,
    /// whole or partial, in the conversation. A reply that never started leaves the conversation as it was.
    /// </summary>
    private sealed class Reply(ChatSession chat, TextGeneration generation) : IDisposable
    {
        private readonly System.Text.StringBuilder _text = new();

        public bool TryNextPiece(CancellationToken cancellationToken, out string piece)
        {
            var more = generation.TryNextPiece(cancellationToken, out piece);
            _text.Append(piece);
            return more;
        }

        public string ReadToEnd(CancellationToken cancellationToken)
        {
            while (TryNextPiece(cancellationToken, out _)) { }
            return _text.ToString();
        }

        public void Dispose()
        {
            generation.Dispose();
            if (!generation.Tokens.Started)
                return;
            chat._pending.Clear();
            chat._tokens.AddRange(generation.Tokens.Transcript);
            // A reply cut short (length, stop sequence, cancellation) still needs its <|im_end|> before the next turn.
            chat._turnOpen = chat._tokens[^1] != chat._endOfTurn;
            chat.LastFinishReason = generation.Tokens.FinishReason;
            chat.LastGeneratedTokenCount = generation.Tokens.GeneratedTokenCount;
            chat._messages.Add(new KimiChatMessage("assistant", _text.ToString()));
        }
    }

    /// <summary>Rebuilds a conversation from the parts of a saved file; <paramref name="restoreState"/> fills its session.</summary>
    internal static ChatSession Restore(KimiModel model, IEnumerable<KimiChatMessage> messages, IEnumerable<KimiChatMessage> pending,
        IEnumerable<int> tokens, bool turnOpen, Action<KimiSession> restoreState)
    {
        var chat = new ChatSession(model);
        try
        {
            chat._messages.AddRange(messages);
            chat._pending.AddRange(pending);
            chat._tokens.AddRange(tokens);
            chat._turnOpen = turnOpen;
            restoreState(chat.Session);
            return chat;
        }
        catch
        {
            chat.Dispose();
            throw;
        }
    }
}
