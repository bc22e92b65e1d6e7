using System.Buffers;
using System.Text;
using Microsoft.ML.Tokenizers;

namespace KimiLinear.Tokenization;

/// <summary>
/// The Kimi tokenizer: byte-level BPE over <c>tiktoken.model</c> plus 258 special tokens, giving exactly the ids of
/// Python <c>tokenization_kimi.py</c> (tiktoken). Thread-safe.
/// </summary>
/// <remarks>
/// Encoding follows the Python code step by step: lone surrogates become U+FFFD (tiktoken's fallback), the text is cut
/// at the wrapper's long-input limits (<see cref="LongInputSplitter"/>), special tokens are split out by our own
/// matcher (<see cref="KimiSpecialTokens"/>), the text between them is cut into pieces by <see cref="KimiPreTokenizer"/>
/// and each piece is byte-pair encoded by Microsoft.ML.Tokenizers' <see cref="TiktokenTokenizer"/>, which is given no
/// special tokens so that its cache can never answer for one.
/// </remarks>
public sealed class KimiTokenizer
{
    // Pieces up to 15 chars are cached by the library; a larger cache than its default 8,192 keeps varied text fast.
    private const int BpeCacheSize = 1 << 16;

    private readonly TiktokenTokenizer _bpe;
    private readonly KimiSpecialTokens _specials;
    private readonly byte[][] _tokenBytes;            // [VocabSize] UTF-8 bytes of each id (special ids: their names)
    private KimiChatTemplate? _chat;                  // built on first use: it needs the chat markers to be named
    private readonly int[] _stopTokenIds;

    private KimiTokenizer(TiktokenTokenizer bpe, KimiSpecialTokens specials, byte[][] tokenBytes)
    {
        _bpe = bpe;
        _specials = specials;
        _tokenBytes = tokenBytes;
        _stopTokenIds = new[] { "<|im_end|>", "[EOS]" }.Select(specials.TryGetId).OfType<int>().ToArray();
    }

    /// <summary>
    /// Loads <c>tiktoken.model</c> and <c>tokenizer_config.json</c> from <paramref name="modelDirectory"/> as a Kimi
    /// checkpoint ships them. The special ids are the 258 after the BPE ranks.
    /// </summary>
    /// <exception cref="FileNotFoundException">A file is missing.</exception>
    /// <exception cref="InvalidDataException">A file is malformed; the message names the file and, where there is one, the line.</exception>
    public static KimiTokenizer Load(string modelDirectory)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelDirectory);
        string modelPath = Path.Combine(modelDirectory, "tiktoken.model");
        string configPath = Path.Combine(modelDirectory, "tokenizer_config.json");
        foreach (string path in new[] { modelPath, configPath })
            if (!File.Exists(path))
                throw new FileNotFoundException($"{path}: not found; a Kimi tokenizer needs tiktoken.model and tokenizer_config.json.", path);

        var model = TiktokenModelFile.Read(modelPath);
        int baseVocab = model.TokensByRank.Length;
        var specials = KimiSpecialTokens.Load(configPath, baseVocab);

        var bpe = TiktokenTokenizer.Create(new MemoryStream(model.FileBytes, writable: false), KimiPreTokenizer.Instance,
            normalizer: null, specialTokens: null, cacheSize: BpeCacheSize);

        var tokenBytes = new byte[baseVocab + KimiSpecialTokens.Count][];
        model.TokensByRank.CopyTo(tokenBytes, 0);
        for (int id = baseVocab; id < tokenBytes.Length; id++)
            tokenBytes[id] = Encoding.UTF8.GetBytes(specials.NameOf(id));
        return new KimiTokenizer(bpe, specials, tokenBytes);
    }

    /// <summary>The number of BPE ranks in <c>tiktoken.model</c> (163,584 for Kimi); also the first special id.</summary>
    public int BaseVocabSize => _specials.FirstId;

    /// <summary><see cref="BaseVocabSize"/> + 258 special ids (163,842 for Kimi, two more than the model's 163,840 rows).</summary>
    public int VocabSize => _tokenBytes.Length;

    /// <summary>Ids that end generation: <c>&lt;|im_end|&gt;</c> (end of turn) and <c>[EOS]</c>, those that exist.</summary>
    public IReadOnlyList<int> StopTokenIds => _stopTokenIds;

    /// <summary>The id of special token <paramref name="name"/> (e.g. "&lt;|im_end|&gt;" → 163586), or null.</summary>
    public int? TryGetSpecialTokenId(string name) => _specials.TryGetId(name);

    /// <summary>Encodes <paramref name="text"/> as Python <c>tokenizer.encode(text, allow_special_tokens)</c> does.</summary>
    /// <param name="text">Any string; lone surrogates are encoded as U+FFFD.</param>
    /// <param name="allowSpecialTokens">Whether special token names in the text become their ids (Kimi's default) or
    /// are encoded as plain text. Pass false for untrusted text.</param>
    public int[] Encode(string text, bool allowSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = ReplaceLoneSurrogates(text);
        var chunks = new List<(int Start, int Length)>(1);
        LongInputSplitter.Split(text, chunks);

        var ids = new List<int>(text.Length / 3 + 4);
        foreach (var (start, length) in chunks)
            EncodeCore(text, start, length, allowSpecialTokens, ids);
        return ids.ToArray();
    }

    /// <summary>
    /// Encodes as tiktoken's core does, without the Python wrapper's long-input cuts: the reference corpus ids were
    /// made this way (the wrapper would cut tinyshakespeare at code point 400,000, between "As " and "we").
    /// </summary>
    internal int[] EncodeWithoutLongInputSplitting(string text, bool allowSpecialTokens = true)
    {
        text = ReplaceLoneSurrogates(text);
        var ids = new List<int>(text.Length / 3 + 4);
        EncodeCore(text, 0, text.Length, allowSpecialTokens, ids);
        return ids.ToArray();
    }

    /// <summary>tiktoken's <c>encode</c>: special tokens split out, the text between them pre-tokenized and byte-pair encoded.</summary>
    private void EncodeCore(string text, int start, int length, bool allowSpecialTokens, List<int> ids)
    {
        if (!allowSpecialTokens)
        {
            EncodeOrdinary(text, start, length, ids);
            return;
        }
        int position = start;
        foreach (var match in _specials.Pattern.EnumerateMatches(text.AsSpan(start, length)))
        {
            EncodeOrdinary(text, position, start + match.Index - position, ids);
            ids.Add(_specials.IdOf(text.Substring(start + match.Index, match.Length)));
            position = start + match.Index + match.Length;
        }
        EncodeOrdinary(text, position, start + length - position, ids);
    }

    private void EncodeOrdinary(string text, int start, int length, List<int> ids)
    {
        if (length == 0)
            return;
        string segment = length == text.Length ? text : text.Substring(start, length);
        ids.AddRange(_bpe.EncodeToIds(segment, considerPreTokenization: true, considerNormalization: false));
    }

    /// <summary>Decodes ids to text; bytes that are not valid UTF-8 become U+FFFD (Python's <c>errors="replace"</c>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside 0..<see cref="VocabSize"/>-1; the message names it and its position.</exception>
    public string Decode(ReadOnlySpan<int> ids)
    {
        int byteCount = 0;
        for (int i = 0; i < ids.Length; i++)
            byteCount += TokenBytes(ids[i], nameof(ids), i).Length;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(byteCount);
        try
        {
            int written = 0;
            foreach (int id in ids)
            {
                _tokenBytes[id].CopyTo(buffer, written);
                written += _tokenBytes[id].Length;
            }
            return Encoding.UTF8.GetString(buffer, 0, written);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Starts a decoder for text generated one id at a time.</summary>
    public KimiStreamingDecoder CreateStreamingDecoder() => new(this);

    /// <summary>
    /// Renders a conversation to ids exactly as Kimi Linear's chat template followed by <see cref="Encode"/> would
    /// (markers are added as ids and only the text between them is encoded).
    /// </summary>
    /// <remarks>
    /// <para><b>Verified</b> against the template's published lines 1–25 and a llama.cpp prompt-token count of the real
    /// model (the <c>chat_prompt_check</c> reference case): no BOS; no default system prompt; the tool declaration
    /// <c>&lt;|im_system|&gt;tool_declare&lt;|im_middle|&gt;{tools as compact JSON}&lt;|im_end|&gt;</c> first when tools are given;
    /// each message as <c>&lt;|im_user|&gt;</c>, <c>&lt;|im_assistant|&gt;</c> or (system, tool and any other role)
    /// <c>&lt;|im_system|&gt;</c>, then the name (<c>message.name</c> or the role), <c>&lt;|im_middle|&gt;</c>, the content and
    /// <c>&lt;|im_end|&gt;</c>, with nothing between messages; and the generation prompt
    /// <c>&lt;|im_assistant|&gt;assistant&lt;|im_middle|&gt;</c>.</para>
    /// <para><b>Taken from the Kimi K2 template</b> (lines 26–48 of Kimi Linear's are not public): an assistant's tool calls
    /// follow its content as <c>&lt;|tool_calls_section_begin|&gt;</c>, per call
    /// <c>&lt;|tool_call_begin|&gt;{id}&lt;|tool_call_argument_begin|&gt;{arguments}&lt;|tool_call_end|&gt;</c>, then
    /// <c>&lt;|tool_calls_section_end|&gt;</c>; a tool result's content is <c>## Return of {tool_call_id}\n{content}</c>;
    /// and the last message is closed with <c>&lt;|im_end|&gt;</c> only when a generation prompt follows (Kimi-K2-Instruct-0905,
    /// whose first 19 lines match Kimi Linear's), so that without one the model continues the last message.</para>
    /// <para><b>Assumed</b> from Hugging Face transformers, which renders the template: the tools JSON is spelled as its
    /// <c>tojson</c> writes it (Python <c>json.dumps</c>, <c>ensure_ascii=False</c>, key order kept, floats as Python's
    /// <c>repr</c>).</para>
    /// </remarks>
    /// <param name="messages">The conversation. Roles "user" and "assistant" get their own markers; every other role
    /// (system, tool, …) is rendered under <c>&lt;|im_system|&gt;</c>.</param>
    /// <param name="addGenerationPrompt">Close the last message and append <c>&lt;|im_assistant|&gt;assistant&lt;|im_middle|&gt;</c>
    /// so the model answers next. Without it the last message is left open (no <c>&lt;|im_end|&gt;</c>), for the model to continue.</param>
    /// <param name="toolsJson">A JSON array of tool declarations (OpenAI style), or null; written as compact JSON.</param>
    /// <param name="allowSpecialTokensInContent">Whether special token names inside message text become special ids.
    /// Off by default, so user text cannot inject a turn marker.</param>
    /// <exception cref="ArgumentException">A message or its role is null, or <paramref name="toolsJson"/> is not a JSON array.</exception>
    /// <exception cref="InvalidOperationException">tokenizer_config.json does not name a marker the conversation needs.</exception>
    public int[] EncodeChat(IReadOnlyList<KimiChatMessage> messages, bool addGenerationPrompt = true,
                            string? toolsJson = null, bool allowSpecialTokensInContent = false)
    {
        ArgumentNullException.ThrowIfNull(messages);
        _chat ??= new KimiChatTemplate(this, _specials);
        return _chat.Render(messages, addGenerationPrompt, toolsJson, allowSpecialTokensInContent);
    }

    /// <summary>
    /// Throws unless every id has an embedding row in a model with <paramref name="modelVocabSize"/> rows. Kimi's
    /// tokenizer has two ids (163840, 163841) beyond the model's 163,840 rows; a smaller demo model may have fewer.
    /// </summary>
    /// <exception cref="ArgumentException">An id is negative or ≥ <paramref name="modelVocabSize"/>; the message names the id and its position.</exception>
    public void ThrowIfOutsideModelVocab(ReadOnlySpan<int> ids, int modelVocabSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(modelVocabSize);
        for (int i = 0; i < ids.Length; i++)
        {
            int id = ids[i];
            if (id < 0 || id >= modelVocabSize)
            {
                string name = id >= BaseVocabSize && id < VocabSize ? $" (special token '{_specials.NameOf(id)}')" : "";
                throw new ArgumentException(
                    $"Token id {id}{name} at position {i} is outside the model's vocabulary of {modelVocabSize} ids (0..{modelVocabSize - 1}); it has no embedding row.",
                    nameof(ids));
            }
        }
    }

    /// <summary>The bytes of <paramref name="id"/>, or an exception naming the argument (and position, if any).</summary>
    internal byte[] TokenBytes(int id, string paramName, int position = -1) =>
        (uint)id < (uint)_tokenBytes.Length
            ? _tokenBytes[id]
            : throw new ArgumentOutOfRangeException(paramName, id,
                $"Token id {id}{(position >= 0 ? $" at position {position}" : "")} is outside the tokenizer's vocabulary (0..{_tokenBytes.Length - 1}).");

    /// <summary>Python tiktoken re-encodes text it cannot write as UTF-8 with each lone surrogate replaced by U+FFFD.</summary>
    private static string ReplaceLoneSurrogates(string text)
    {
        int first = text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF');
        if (first < 0)
            return text;
        char[]? copy = null;
        for (int i = first; i < text.Length; i++)
        {
            if (!char.IsSurrogate(text[i]))
                continue;
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                i++;
                continue;
            }
            copy ??= text.ToCharArray();
            copy[i] = '\uFFFD';
        }
        return copy is null ? text : new string(copy);
    }
}
