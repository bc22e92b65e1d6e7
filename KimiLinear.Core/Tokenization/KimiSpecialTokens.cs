using System.Text.Json;
using System.Text.RegularExpressions;

namespace KimiLinear.Tokenization;

/// <summary>
/// The 258 special tokens that follow the BPE ranks, named as <c>tokenization_kimi.py</c> names them: ids
/// <c>BaseVocabSize .. BaseVocabSize+257</c>, each taking its <c>content</c> from <c>added_tokens_decoder</c> in
/// <c>tokenizer_config.json</c> when listed there and <c>&lt;|reserved_token_{id}|&gt;</c> otherwise.
/// </summary>
/// <remarks>
/// Special tokens are found in text by our own matcher rather than by <c>TiktokenTokenizer</c>, whose 2.0.1 release
/// resolves them only through an LRU cache that evicts them after heavy use (then "&lt;|im_end|&gt;" silently becomes six
/// ordinary tokens).
/// </remarks>
internal sealed class KimiSpecialTokens
{
    /// <summary><c>256 + 2</c> special ids, as in <c>tokenization_kimi.py</c>.</summary>
    public const int Count = 258;

    private readonly string[] _names;                 // [Count] name of id FirstId + i
    private readonly Dictionary<string, int> _ids;    // name -> id

    /// <summary>The first special id (the number of BPE ranks).</summary>
    public int FirstId { get; }

    /// <summary>Finds special token names in text: leftmost match, longest name first where one is a prefix of another.</summary>
    public Regex Pattern { get; }

    private KimiSpecialTokens(int firstId, string[] names)
    {
        FirstId = firstId;
        _names = names;
        _ids = new Dictionary<string, int>(Count, StringComparer.Ordinal);
        for (int i = 0; i < names.Length; i++)
            _ids.Add(names[i], firstId + i);
        Pattern = new Regex(
            string.Join('|', names.OrderByDescending(n => n.Length).ThenBy(n => n, StringComparer.Ordinal).Select(Regex.Escape)),
            RegexOptions.CultureInvariant);
    }

    /// <summary>The name of special id <paramref name="id"/> (which must be in range).</summary>
    public string NameOf(int id) => _names[id - FirstId];

    /// <summary>The id named <paramref name="name"/>, or null.</summary>
    public int? TryGetId(string name) => _ids.TryGetValue(name, out int id) ? id : null;

    /// <summary>The id of a name known to exist (a <see cref="Pattern"/> match or a template marker).</summary>
    public int IdOf(string name) => _ids.TryGetValue(name, out int id)
        ? id
        : throw new InvalidOperationException($"No special token is named '{name}' (tokenizer_config.json, added_tokens_decoder).");

    /// <summary>Reads the names from <c>tokenizer_config.json</c> at <paramref name="path"/>.</summary>
    public static KimiSpecialTokens Load(string path, int firstId)
    {
        var names = new string?[Count];
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(File.ReadAllBytes(path),
                new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: line {e.LineNumber + 1}: not valid JSON ({e.Message})", e);
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{path}: expected a JSON object at the top level, found {document.RootElement.ValueKind}.");
            if (document.RootElement.TryGetProperty("added_tokens_decoder", out var decoder))
                ReadAddedTokens(decoder, path, firstId, names);
        }

        var seen = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < Count; i++)
        {
            string name = names[i] ??= $"<|reserved_token_{firstId + i}|>";
            if (!seen.TryAdd(name, firstId + i))
                throw new InvalidDataException($"{path}: special ids {seen[name]} and {firstId + i} are both named '{name}'.");
        }
        return new KimiSpecialTokens(firstId, names!);
    }

    private static void ReadAddedTokens(JsonElement decoder, string path, int firstId, string?[] names)
    {
        if (decoder.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: added_tokens_decoder must be an object of id -> token, found {decoder.ValueKind}.");
        foreach (var entry in decoder.EnumerateObject())
        {
            string field = $"added_tokens_decoder[\"{entry.Name}\"]";
            if (!int.TryParse(entry.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id)
                || id < firstId || id >= firstId + Count)
                throw new InvalidDataException($"{path}: {field}: the key must be a special id in {firstId}..{firstId + Count - 1} (the ids after the {firstId} BPE ranks).");
            if (entry.Value.ValueKind != JsonValueKind.Object
                || !entry.Value.TryGetProperty("content", out var content)
                || content.ValueKind != JsonValueKind.String
                || content.GetString() is not { Length: > 0 } name)
                throw new InvalidDataException($"{path}: {field}: expected an object with a non-empty string \"content\".");
            names[id - firstId] = name;
        }
    }
}
