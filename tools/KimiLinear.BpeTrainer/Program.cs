// Trains the demo model's byte-level BPE on tinyshakespeare and encodes the corpus for tools/train_demo_model.py.
//
//   dotnet run -c Release --project tools/KimiLinear.BpeTrainer -- \
//       --corpus ../shared/corpus/tinyshakespeare.txt \
//       --regex KimiLinear.Tests/Fixtures/tokenizer/kimi-pretokenizer-dotnet-bmp.regex.txt \
//       --ranks 3072 --model-dir models/kimi-linear-demo --data-dir .gpu-demo/data \
//       --prompts tools/demo_prompts.json
//
// The vocabulary is learned from the training split only (the first 90 % of the characters), so the validation
// split (the last 10 %) stays unseen. Writes tiktoken.model and tokenizer_config.json to --model-dir, and
// train.ids / val.ids (int32 little-endian), split.json (character and token counts) and, given --prompts (a JSON
// array of strings), prompts.json ([{text, ids}], the reference prompts encoded the same way) to --data-dir.
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using KimiLinear.BpeTrainer;
using KimiLinear.Tokenization;
using Microsoft.ML.Tokenizers;

var options = ParseArguments(args);
string corpusPath = options["corpus"];
string text = File.ReadAllText(corpusPath, new UTF8Encoding(false, throwOnInvalidBytes: true));
int rankCount = int.Parse(options["ranks"], System.Globalization.CultureInfo.InvariantCulture);
int modelMaxLength = int.Parse(options.GetValueOrDefault("model-max-length", "4096"), System.Globalization.CultureInfo.InvariantCulture);
string modelDir = options["model-dir"], dataDir = options["data-dir"];
Directory.CreateDirectory(modelDir);
Directory.CreateDirectory(dataDir);

// Split by characters; never between the halves of a surrogate pair.
int trainChars = (int)((long)text.Length * 9 / 10);
if (char.IsLowSurrogate(text[trainChars]))
    trainChars++;
string train = text[..trainChars], validation = text[trainChars..];

var regex = new Regex(File.ReadAllText(options["regex"]).Trim(), RegexOptions.Compiled);
var preTokenizer = new RegexPreTokenizer(regex, specialTokens: null);

var pieceCounts = new Dictionary<string, long>(StringComparer.Ordinal);
foreach (var (offset, length) in preTokenizer.PreTokenize(train))
{
    string piece = train.Substring(offset, length);
    pieceCounts[piece] = pieceCounts.GetValueOrDefault(piece) + 1;
}
Console.WriteLine($"corpus {text.Length:N0} chars: train {train.Length:N0}, validation {validation.Length:N0}; {pieceCounts.Count:N0} distinct pieces");

var trainer = new BpeTrainer(pieceCounts);
trainer.Train(rankCount);
string tiktokenPath = Path.Combine(modelDir, "tiktoken.model");
TiktokenFile.Write(tiktokenPath, trainer.Tokens);
File.WriteAllText(Path.Combine(modelDir, "tokenizer_config.json"), KimiSpecialTokens.TokenizerConfigJson(rankCount, modelMaxLength));
Console.WriteLine($"wrote {rankCount} ranks to {tiktokenPath}; longest token {trainer.Tokens.Max(t => t.Length)} bytes");

// Encode with the engine's own tokenizer over the written files, so the ids are exactly what the engine will produce.
var tokenizer = KimiTokenizer.Load(modelDir);
var split = new Dictionary<string, object>
{
    ["corpus"] = Path.GetFileName(corpusPath),
    ["corpus_sha256"] = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(corpusPath))),
    ["corpus_chars"] = text.Length,
    ["bpe_ranks"] = rankCount,
    ["vocab_size"] = rankCount + KimiSpecialTokens.SlotCount,
};
foreach (var (name, part) in new[] { ("train", train), ("val", validation) })
{
    var ids = tokenizer.Encode(part, allowSpecialTokens: false);
    string decoded = tokenizer.Decode(ids);
    if (decoded != part)
        throw new InvalidOperationException($"The {name} split does not survive encode + decode: the BPE file or the pre-tokenizer is broken.");
    var bytes = new byte[ids.Length * 4];
    for (int i = 0; i < ids.Length; i++)
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(i * 4), ids[i]);
    File.WriteAllBytes(Path.Combine(dataDir, $"{name}.ids"), bytes);
    split[$"{name}_chars"] = part.Length;
    split[$"{name}_tokens"] = ids.Length;
    Console.WriteLine($"{name}: {part.Length:N0} chars → {ids.Length:N0} tokens ({(double)part.Length / ids.Length:F3} chars/token)");
}
var indented = new JsonSerializerOptions { WriteIndented = true };
File.WriteAllText(Path.Combine(dataDir, "split.json"), JsonSerializer.Serialize(split, indented) + "\n");

if (options.TryGetValue("prompts", out var promptsPath))
{
    var prompts = JsonSerializer.Deserialize<string[]>(File.ReadAllText(promptsPath))
        ?? throw new InvalidDataException($"{promptsPath}: expected a JSON array of strings.");
    var encoded = prompts.Select(p => new { text = p, ids = tokenizer.Encode(p, allowSpecialTokens: false) }).ToArray();
    File.WriteAllText(Path.Combine(dataDir, "prompts.json"), JsonSerializer.Serialize(encoded, indented) + "\n");
    Console.WriteLine($"prompts: {string.Join(", ", encoded.Select(e => e.ids.Length))} tokens");
}
return 0;

static Dictionary<string, string> ParseArguments(string[] args)
{
    var required = new[] { "corpus", "regex", "ranks", "model-dir", "data-dir" };
    var options = new Dictionary<string, string>(StringComparer.Ordinal);
    for (int i = 0; i < args.Length; i++)
    {
        if (!args[i].StartsWith("--", StringComparison.Ordinal) || i + 1 >= args.Length)
            throw new ArgumentException($"Expected '--name value' pairs, got '{args[i]}'. Options: --{string.Join(" --", required)} [--model-max-length N] [--prompts FILE].");
        options[args[i][2..]] = args[++i];
    }
    foreach (var name in required)
    {
        if (!options.ContainsKey(name))
            throw new ArgumentException($"Missing --{name}. Options: --{string.Join(" --", required)} [--model-max-length N] [--prompts FILE].");
    }
    return options;
}
