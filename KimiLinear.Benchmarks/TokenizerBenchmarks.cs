using System.Text;
using BenchmarkDotNet.Attributes;
using KimiLinear.Tokenization;

namespace KimiLinear.Benchmarks;

/// <summary>
/// Encoding throughput of <see cref="KimiTokenizer"/> with the real Kimi vocabulary (the test fixtures' tiktoken.model):
/// English prose (tinyshakespeare, 1,115,394 chars) and mixed CJK / emoji text (about 1 M chars, generated below).
/// chars/s = text length / the reported time.
/// </summary>
[SimpleJob(launchCount: 1, warmupCount: 3, iterationCount: 10)]
[MemoryDiagnoser, MinColumn, MedianColumn]
public class TokenizerBenchmarks
{
    private KimiTokenizer _tokenizer = null!;
    private string _english = "";
    private string _mixed = "";

    [GlobalSetup]
    public void Setup()
    {
        string fixtures = Path.Combine(RepositoryRoot(), "KimiLinear.Tests", "Fixtures", "tokenizer");
        _tokenizer = KimiTokenizer.Load(fixtures);
        _english = File.ReadAllText(Path.Combine(fixtures, "tinyshakespeare.txt"));
        _mixed = MixedCjkEmoji(1_000_000);
        Console.WriteLine($"// english: {_english.Length} chars; mixed: {_mixed.Length} chars");
    }

    /// <summary>tinyshakespeare, 1,115,394 chars.</summary>
    [Benchmark]
    public int EncodeEnglishProse() => _tokenizer.Encode(_english).Length;

    /// <summary>The pre-tokenizer alone on tinyshakespeare: the share of <see cref="EncodeEnglishProse"/> that is our splitting.</summary>
    [Benchmark]
    public int SplitEnglishProse()
    {
        int pieces = 0;
        foreach (var _ in KimiPreTokenizer.Instance.PreTokenize(_english)) pieces++;
        return pieces;
    }

    /// <summary>Chinese, Japanese and Korean sentences with emoji (ZWJ sequences included) and some Latin, ~1 M chars.</summary>
    [Benchmark]
    public int EncodeMixedCjkEmoji() => _tokenizer.Encode(_mixed).Length;

    /// <summary>Deterministic sentences from a small multilingual word list; Han runs reach BPE uncached, as in real text.</summary>
    internal static string MixedCjkEmoji(int length)
    {
        string[] words =
        [
            "你好", "世界", "欢迎", "使用", "模型", "注意力", "线性", "长文本", "推理", "速度", "我们", "今天", "天气", "很好", "学习",
            "こんにちは", "テキスト", "日本語", "の", "は", "です", "ありがとう", "カタカナ", "ひらがな",
            "안녕하세요", "세계", "한국어", "모델", "감사합니다",
            "🙂", "🚀", "🎉", "😀", "👩\u200D💻", "👍🏽", "🇯🇵", "❤️",
            "Kimi", "Linear", "GPU", "2026", "token",
        ];
        string[] punctuation = ["，", "。", "！", "？", "、", " ", " ", "\n"];
        var random = new Random(2026);
        var text = new StringBuilder(length + 64);
        while (text.Length < length)
        {
            for (int n = random.Next(2, 9); n > 0; n--)
                text.Append(words[random.Next(words.Length)]);
            text.Append(punctuation[random.Next(punctuation.Length)]);
        }
        return text.ToString();
    }

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "KimiLinear.sln")))
                return dir.FullName;
        throw new DirectoryNotFoundException($"No KimiLinear.sln above {AppContext.BaseDirectory}.");
    }
}
