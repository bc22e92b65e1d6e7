using KimiLinear.Backends;
using KimiLinear.Sampling;
using KimiLinear.State;

namespace KimiLinear.Tests.Model;

/// <summary>
/// The engine's two paths must agree with each other: a long prefill (chunked KDA, expanded MLA) against a shorter
/// prefill followed by single-token decode steps (recurrent KDA, absorbed MLA), for the logits and every carried state;
/// and the two MLA forms on the same input.
/// </summary>
public sealed class ConsistencyTests(TinyModelFixture fixture) : IClassFixture<TinyModelFixture>
{
    /// <summary>Both sides are fp32 computations of the same math in a different order; 1e-5 leaves room for that only.</summary>
    private const double Tolerance = 1e-5;

    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(64)]
    public void PrefillEqualsShorterPrefillThenDecodeSteps(int steps)
    {
        var ids = fixture.Golden.ReadInt32("case4.input_ids"); // T = 150
        int vocab = fixture.Model.Config.VocabSize, prefix = ids.Length - steps;

        using var whole = fixture.Model.CreateSession();
        var expected = whole.Forward(ids);

        using var stepped = fixture.Model.CreateSession();
        stepped.Forward(ids.AsSpan(0, prefix));
        for (int t = prefix; t < ids.Length; t++)
        {
            var logits = stepped.Forward(ids.AsSpan(t, 1));
            TensorAssert.Close(logits, expected.AsSpan(t * vocab, vocab), Tolerance, $"logits at position {t}");
        }
        Assert.Equal(whole.Length, stepped.Length);
        AssertStatesClose(whole.State, stepped.State, fixture.Model.Backend);
    }

    [Fact]
    public void PrefillInTwoPartsEqualsOnePrefill()
    {
        var ids = fixture.Golden.ReadInt32("case4.input_ids");
        using var whole = fixture.Model.CreateSession();
        var expected = whole.Forward(ids);
        using var split = fixture.Model.CreateSession();
        split.Forward(ids.AsSpan(0, 37));
        var tail = split.Forward(ids.AsSpan(37));
        int vocab = fixture.Model.Config.VocabSize;
        TensorAssert.Close(tail, expected.AsSpan(37 * vocab), Tolerance, "logits of the second part");
        AssertStatesClose(whole.State, split.State, fixture.Model.Backend);
    }

    /// <summary>
    /// Greedy generation's chain (TokenGeneration): each step appends the latest choice from where the backend put it,
    /// before the host reads that choice. Same tokens and states as feeding each token; only the two latest choices read.
    /// </summary>
    [Fact]
    public void ChainedGreedyChoicesEqualFeedingEachToken()
    {
        var ids = fixture.Golden.ReadInt32("case4.input_ids")[..20];
        using var explicitly = fixture.Model.CreateSession();
        var expected = new List<int> { explicitly.ForwardGreedy(ids) };
        for (int i = 0; i < 6; i++)
            expected.Add(explicitly.ForwardGreedy([expected[^1]]));

        using var chained = fixture.Model.CreateSession();
        var choice = chained.ForwardChoosing(ids);
        var oldest = choice;
        var actual = new List<int>();
        for (int i = 0; i < 6; i++)
        {
            var next = chained.FeedChoice();
            actual.Add(chained.ReadChoice(choice));
            choice = next;
        }
        actual.Add(chained.ReadChoice(choice));
        Assert.Equal(expected, actual);
        Assert.Equal(ids.Length + 6, chained.Length);
        AssertStatesClose(explicitly.State, chained.State, fixture.Model.Backend);
        var error = Assert.Throws<InvalidOperationException>(() => chained.ReadChoice(oldest));
        Assert.Contains("no longer readable", error.Message);

        using var fresh = fixture.Model.CreateSession();
        error = Assert.Throws<InvalidOperationException>(() => fresh.FeedChoice());
        Assert.Contains("no greedy choice", error.Message);
        Assert.Equal(0, fresh.Length);
    }

    /// <summary>
    /// A prompt longer than a forward step takes runs in pieces (chunked prefill), for every way of reading the result:
    /// all logits, the last position's, and greedy generation's token (picked by the backend); then the sessions go on alike.
    /// </summary>
    [Theory]
    [InlineData(7)]   // pieces shorter than a KDA chunk
    [InlineData(64)]  // exactly one chunk
    [InlineData(100)] // the last piece short
    public void PromptInPiecesEqualsOneForwardStep(int tokensPerForward)
    {
        var ids = fixture.Golden.ReadInt32("case4.input_ids"); // T = 150
        int vocab = fixture.Model.Config.VocabSize;
        using var pieced = KimiModel.Load(FixturePaths.TinyModel, new KimiModelOptions { PrefillPieceTokens = tokensPerForward });
        Assert.Equal(tokensPerForward, pieced.Backend.MaxTokensPerForward);

        using var whole = fixture.Model.CreateSession();
        var expected = whole.Forward(ids);
        using var all = pieced.CreateSession();
        TensorAssert.Close(all.Forward(ids), expected, Tolerance, "all logits, in pieces");
        AssertStatesClose(whole.State, all.State, fixture.Model.Backend);

        var last = expected.AsSpan((ids.Length - 1) * vocab, vocab).ToArray();
        using var lastOnly = pieced.CreateSession();
        TensorAssert.Close(lastOnly.ForwardLast(ids), last, Tolerance, "last logits, in pieces");
        using var greedy = pieced.CreateSession();
        Assert.Equal(TokenSampler.ArgMax(last), greedy.ForwardGreedy(ids));
        Assert.Equal(ids.Length, greedy.Length);

        var next = whole.Forward([5]);
        TensorAssert.Close(greedy.Forward([5]), next, Tolerance, "a decode step after the pieces");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-5)]
    public void PrefillPieceTokensBelowOne_IsAClearError(int pieceTokens)
    {
        var error = Assert.Throws<ArgumentOutOfRangeException>(() =>
            KimiModel.Load(FixturePaths.TinyModel, new KimiModelOptions { PrefillPieceTokens = pieceTokens }));
        Assert.Contains("PrefillPieceTokens", error.Message);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(65)]
    [InlineData(150)]
    public void AbsorbedAttentionEqualsExpandedAttention(int tokens)
    {
        var all = fixture.Golden.ReadInt32("case4.input_ids");
        var ids = all.AsSpan(0, tokens).ToArray();
        var more = all.AsSpan(0, 3).ToArray(); // three more tokens after the prefix
        using var expanded = fixture.Model.CreateSession();
        using var absorbed = fixture.Model.CreateSession();
        var a = expanded.Forward(ids, MlaForm.Expanded);
        var b = absorbed.Forward(ids, MlaForm.Absorbed);
        TensorAssert.Close(b, a, Tolerance, $"absorbed vs expanded logits, T = {tokens}");
        // and continuing after a cached prefix
        TensorAssert.Close(absorbed.Forward(more, MlaForm.Absorbed), expanded.Forward(more, MlaForm.Expanded),
            Tolerance, "absorbed vs expanded with a cached prefix");
    }

    private static void AssertStatesClose(SessionState expected, SessionState actual, IKimiBackend backend)
    {
        for (int layer = 0; layer < expected.Kda.Length; layer++)
        {
            if (expected.Kda[layer] is { } kda)
            {
                var pairs = kda.Tensors.Zip(actual.Kda[layer]!.Tensors, (e, a) => (e, a)).ToArray();
                string[] names = ["q conv window", "k conv window", "v conv window", "recurrent state"];
                for (int i = 0; i < pairs.Length; i++)
                    TensorAssert.Close(Download(backend, pairs[i].a), Download(backend, pairs[i].e), Tolerance, $"layer {layer} {names[i]}");
            }
            if (expected.Mla[layer] is { } mla)
            {
                var other = actual.Mla[layer]!;
                Assert.Equal(expected.Length, actual.Length);
                int valid = expected.Length * mla.Latent.Cols;
                TensorAssert.Close(Download(backend, other.Latent).AsSpan(0, valid), Download(backend, mla.Latent).AsSpan(0, valid),
                    Tolerance, $"layer {layer} latent cache");
            }
        }
    }

    private static float[] Download(IKimiBackend backend, Tensor t)
    {
        var values = new float[t.Length];
        backend.Download(t, values);
        return values;
    }
}
