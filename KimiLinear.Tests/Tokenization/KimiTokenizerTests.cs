using System.Text;
using KimiLinear.Tokenization;
using static KimiLinear.Tests.Tokenization.TokenizerFixtures;

namespace KimiLinear.Tests.Tokenization;

/// <summary>Special tokens, decoding, invalid input and the model-vocabulary check on the real Kimi tokenizer.</summary>
public class KimiTokenizerTests
{
    [Fact]
    public void Load_NamesAll258SpecialIdsAsThePythonTokenizer()
    {
        var expected = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(FixtureDirectory, "kimi-special-tokens.json")));
        int count = 0;
        foreach (var entry in expected.RootElement.EnumerateObject())
        {
            count++;
            Assert.Equal(entry.Value.GetInt32(), Kimi.TryGetSpecialTokenId(entry.Name));
            Assert.Equal(entry.Name, Kimi.Decode([entry.Value.GetInt32()]));
        }
        Assert.Equal(258, count);
        Assert.Equal(163_584, Kimi.BaseVocabSize);
        Assert.Equal(163_842, Kimi.VocabSize);
        Assert.Equal([163_586, 163_585], Kimi.StopTokenIds);
        Assert.Null(Kimi.TryGetSpecialTokenId("<|not_a_token|>"));
    }

    [Fact]
    public void SpecialTokens_StillEncodeAfter10MBOfVariedText()
    {
        // Microsoft.ML.Tokenizers 2.0.1 keeps special tokens only in its LRU cache; enough distinct pieces evict them.
        // Random words over several scripts make far more distinct pieces than any cache holds.
        var random = new Random(7);
        string[] alphabets = ["abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "абвгдежзийклмнопрстуфхцчшщъыьэюя", "αβγδεζηθικλμνξοπρστυφχψω", "0123456789", "你好世界中文字汉语", ".,;:!?-'\"()"];
        var text = new StringBuilder(1 << 20);
        long total = 0;
        while (total < 10_000_000)
        {
            text.Clear();
            while (text.Length < 1 << 20)
            {
                string alphabet = alphabets[random.Next(alphabets.Length)];
                text.Append(' ');
                for (int n = random.Next(1, 12); n > 0; n--)
                    text.Append(alphabet[random.Next(alphabet.Length)]);
            }
            total += text.Length;
            Assert.NotEmpty(Kimi.Encode(text.ToString()));
        }

        for (int id = Kimi.BaseVocabSize; id < Kimi.VocabSize; id++)
        {
            string name = Kimi.Decode([id]);
            Assert.Equal([id], Kimi.Encode(name));
            Assert.Equal([1, id, 2], Kimi.Encode($"\"{name}#")); // '"' = 1, '#' = 2
            Assert.DoesNotContain(id, Kimi.Encode(name, allowSpecialTokens: false));
        }
    }

    [Fact]
    public void LoneSurrogates_EncodeAsReplacementCharacters()
    {
        // In code, not [InlineData]: attribute strings are stored as UTF-8, which cannot hold a lone surrogate.
        (string Text, string AsPythonSees)[] cases =
        [
            ("a\uD800b", "a\uFFFDb"),
            ("\uDC00", "\uFFFD"),
            ("x\uD83D", "x\uFFFD"),
            ("\uDE42\uD83D!", "\uFFFD\uFFFD!"),
            ("ok \uD83D\uDE42 \uD83D", "ok \U0001F642 \uFFFD"),
        ];
        foreach (var (text, asPythonSees) in cases)
        {
            Assert.Equal(text.Length, asPythonSees.Length);
            int[] ids = Kimi.Encode(text);
            Assert.Equal(Kimi.Encode(asPythonSees), ids);
            Assert.Equal(asPythonSees, Kimi.Decode(ids));
        }
    }

    [Fact]
    public void Decode_RendersIncompleteUtf8AsReplacement()
    {
        int[] emoji = Kimi.Encode("\U0001F642");          // split over two byte-level tokens
        Assert.True(emoji.Length > 1);
        Assert.Equal("\uFFFD", Kimi.Decode(emoji.AsSpan(0, 1)));
        Assert.Equal("", Kimi.Decode([]));
    }

    [Fact]
    public void Decode_RejectsIdsOutsideTheVocabulary()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Kimi.Decode([1, 2, 163_842]));
        Assert.Contains("163842", e.Message);
        Assert.Contains("position 2", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => Kimi.Decode([-1]));
    }

    [Fact]
    public void StreamingDecoder_EmitsOnlyCompleteCharactersAndMatchesDecode()
    {
        var random = new Random(11);
        string[] samples = ["Hello 🙂 world", "你好，世界！", "👩‍💻 👨‍👩‍👧‍👦", "naïve café", "<|im_end|>x", "𝔘𝔫𝔦"];
        for (int trial = 0; trial < 300; trial++)
        {
            // Real token sequences, and random ids that cut UTF-8 sequences anywhere (including invalid bytes).
            int[] ids = trial % 2 == 0
                ? Kimi.Encode(string.Concat(Enumerable.Range(0, random.Next(1, 5)).Select(_ => samples[random.Next(samples.Length)])))
                : Enumerable.Range(0, random.Next(1, 30)).Select(_ => random.Next(random.Next(2) == 0 ? 256 : Kimi.VocabSize)).ToArray();
            var decoder = Kimi.CreateStreamingDecoder();
            var streamed = new StringBuilder();
            foreach (int id in ids)
            {
                string piece = decoder.Append(id);
                if (piece.Length > 0)
                    Assert.False(char.IsHighSurrogate(piece[^1]), "a piece ends inside a surrogate pair");
                streamed.Append(piece);
            }
            streamed.Append(decoder.Flush());
            Assert.Equal(Kimi.Decode(ids), streamed.ToString());
        }
    }

    [Fact]
    public void StreamingDecoder_HoldsBytesUntilTheCharacterCompletes_AndResets()
    {
        int[] emoji = Kimi.Encode("\U0001F642");
        var decoder = Kimi.CreateStreamingDecoder();
        Assert.Equal("", decoder.Append(emoji[0]));
        Assert.Equal("\U0001F642", string.Concat(emoji.Skip(1).Select(decoder.Append)));

        Assert.Equal("", decoder.Append(emoji[0]));
        Assert.Equal("\uFFFD", decoder.Flush());
        Assert.Equal("", decoder.Flush());

        Assert.Equal("", decoder.Append(emoji[0]));
        decoder.Reset();
        Assert.Equal("a", decoder.Append(Kimi.Encode("a")[0]));

        Assert.Throws<ArgumentOutOfRangeException>(() => decoder.Append(-5));
        Assert.Equal("b", decoder.Append(Kimi.Encode("b")[0]));   // still usable
    }

    [Fact]
    public void ThrowIfOutsideModelVocab_NamesIdAndPosition()
    {
        Kimi.ThrowIfOutsideModelVocab([0, 163_839, 163_586], 163_840);
        var e = Assert.Throws<ArgumentException>(() => Kimi.ThrowIfOutsideModelVocab([5, 163_840], 163_840));
        Assert.Contains("163840", e.Message);
        Assert.Contains("position 1", e.Message);
        Assert.Throws<ArgumentException>(() => Kimi.ThrowIfOutsideModelVocab([-1], 163_840));
        Assert.Throws<ArgumentException>(() => Kimi.ThrowIfOutsideModelVocab([1000], 1000));
    }

    [Fact]
    public void Encode_IsThreadSafe()
    {
        string[] texts = Cases("fuzz").Take(200).Select(c => c.Text).ToArray();
        int[][] expected = texts.Select(t => Kimi.Encode(t)).ToArray();
        Parallel.For(0, 8, worker =>
        {
            for (int k = 0; k < texts.Length; k++)
            {
                int i = (k + worker * 25) % texts.Length;
                Assert.Equal(expected[i], Kimi.Encode(texts[i]));
            }
        });
    }
}
