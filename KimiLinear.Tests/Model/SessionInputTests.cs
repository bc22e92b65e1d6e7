namespace KimiLinear.Tests.Model;

/// <summary>Bad input to a session is an ArgumentException naming the value, and the session stays usable and unchanged.</summary>
public sealed class SessionInputTests(TinyModelFixture fixture) : IClassFixture<TinyModelFixture>
{
    private static readonly int[] Prompt = [3, 14, 159, 265, 35];

    [Theory]
    [InlineData(-1)]
    [InlineData(512)]
    [InlineData(int.MaxValue)]
    public void TokenOutsideVocabularyIsRejectedAndSessionStaysUsable(int bad)
    {
        using var session = fixture.Model.CreateSession();
        session.Forward(Prompt.AsSpan(0, 2));
        var error = Assert.Throws<ArgumentException>(() => session.Forward([7, bad]));
        Assert.Contains(bad.ToString(System.Globalization.CultureInfo.InvariantCulture), error.Message);
        Assert.Contains("position 1", error.Message);
        Assert.Equal(2, session.Length);
        AssertContinuesLikeAFreshSession(session);
    }

    /// <summary>
    /// A step that fails part-way, after some layers have advanced their state (here: an exception from the hidden-state
    /// hook after layer 1; on a GPU, running out of memory while the step's activations grow), leaves the session as it was.
    /// </summary>
    [Fact]
    public void StepFailingPartWayLeavesTheSessionAsItWas()
    {
        using var session = fixture.Model.CreateSession();
        session.Forward(Prompt.AsSpan(0, 2));
        var error = Assert.Throws<InvalidOperationException>(() => session.Forward(Prompt.AsSpan(2, 2), MlaForm.Auto,
            (layer, _) => { if (layer == 2) throw new InvalidOperationException("fault after layer 1"); }));
        Assert.Equal("fault after layer 1", error.Message);
        Assert.Equal(2, session.Length);
        AssertContinuesLikeAFreshSession(session);
    }

    [Fact]
    public void DecodeBatchEqualsOneStepPerSession()
    {
        int[] lengths = [1, 3, 5];
        var batched = lengths.Select(_ => fixture.Model.CreateSession()).ToList();
        var single = lengths.Select(_ => fixture.Model.CreateSession()).ToList();
        for (int i = 0; i < lengths.Length; i++)
        {
            batched[i].Forward(Prompt.AsSpan(0, lengths[i]));
            single[i].Forward(Prompt.AsSpan(0, lengths[i]));
        }
        int[] next = [7, 100, 511];
        for (int step = 0; step < 3; step++)
        {
            var logits = fixture.Model.DecodeBatch(batched, next);
            for (int i = 0; i < lengths.Length; i++)
                TensorAssert.Close(logits[i], single[i].ForwardLast([next[i]]), 1e-5, $"step {step}, session {i}");
            next = logits.Select(l => System.Numerics.Tensors.TensorPrimitives.IndexOfMax<float>(l)).ToArray();
        }
        Assert.All(batched.Zip(single), p => Assert.Equal(p.Second.Length, p.First.Length));
        foreach (var session in batched.Concat(single))
            session.Dispose();
    }

    /// <summary>
    /// Batches of changing composition and order (a session in one step, out of the next, listed in another place): each
    /// session's state is carried as if it were decoded alone, whichever row it takes.
    /// </summary>
    [Fact]
    public void DecodeBatchesOfChangingCompositionEqualOneStepPerSession()
    {
        int[] lengths = [2, 5, 1, 4];
        var batched = lengths.Select(_ => fixture.Model.CreateSession()).ToList();
        var single = lengths.Select(_ => fixture.Model.CreateSession()).ToList();
        for (int i = 0; i < lengths.Length; i++)
        {
            batched[i].Forward(Prompt.AsSpan(0, lengths[i]));
            single[i].Forward(Prompt.AsSpan(0, lengths[i]));
        }
        int[][] steps = [[0, 1, 2, 3], [3, 1], [2, 0, 3], [1, 2, 0, 3], [0, 2]];
        for (int step = 0; step < steps.Length; step++)
        {
            int[] members = steps[step];
            int[] tokens = members.Select(i => (step * 37 + i * 101) % 512).ToArray();
            var logits = fixture.Model.DecodeBatch(members.Select(i => batched[i]).ToList(), tokens);
            for (int j = 0; j < members.Length; j++)
                TensorAssert.Close(logits[j], single[members[j]].ForwardLast([tokens[j]]), 1e-5, $"step {step}, session {members[j]} in row {j}");
        }
        Assert.All(batched.Zip(single), p => Assert.Equal(p.Second.Length, p.First.Length));
        foreach (var session in batched.Concat(single))
            session.Dispose();
    }

    [Fact]
    public void DecodeBatchRejectsBadInputAndChangesNoSession()
    {
        using var a = fixture.Model.CreateSession();
        using var b = fixture.Model.CreateSession();
        a.Forward(Prompt.AsSpan(0, 2));
        Assert.Contains("one token per session", Assert.Throws<ArgumentException>(() => fixture.Model.DecodeBatch([a, b], [1])).Message);
        Assert.Contains("same session twice", Assert.Throws<ArgumentException>(() => fixture.Model.DecodeBatch([a, a], [1, 2])).Message);
        Assert.Contains("512", Assert.Throws<ArgumentException>(() => fixture.Model.DecodeBatch([a, b], [1, 512])).Message);
        using var other = KimiModel.Load(FixturePaths.TinyModel);
        using var foreign = other.CreateSession();
        Assert.Contains("another model", Assert.Throws<ArgumentException>(() => fixture.Model.DecodeBatch([a, foreign], [1, 2])).Message);
        Assert.Equal(2, a.Length);
        Assert.Equal(0, b.Length);
        AssertContinuesLikeAFreshSession(a);
    }

    [Fact]
    public void EmptyInputIsRejected()
    {
        using var session = fixture.Model.CreateSession();
        Assert.Contains("No tokens", Assert.Throws<ArgumentException>(() => session.Forward([])).Message);
        Assert.Equal(0, session.Length);
    }

    [Fact]
    public void SequencePastTheMaximumLengthIsRejected()
    {
        using var model = KimiModel.Load(FixturePaths.TinyModel, new KimiModelOptions { MaxSequenceLength = 4 });
        using var session = model.CreateSession();
        session.Forward([1, 2, 3]);
        var error = Assert.Throws<ArgumentException>(() => session.Forward([4, 5]));
        Assert.Contains("maximum length of 4", error.Message);
        Assert.Equal(3, session.Length);
        session.Forward([4]);
        Assert.Equal(4, session.Length);
    }

    [Fact]
    public void ForwardLastEqualsTheLastRowOfForward()
    {
        using var all = fixture.Model.CreateSession();
        using var last = fixture.Model.CreateSession();
        var logits = all.Forward(Prompt);
        int vocab = fixture.Model.Config.VocabSize;
        // One row goes through the fused decode dot product, many rows through the blocked one: same math, another
        // summation order, so equal to fp32 rounding rather than bit for bit.
        TensorAssert.Close(last.ForwardLast(Prompt), logits.AsSpan(logits.Length - vocab), 1e-6, "last-position logits");
        Assert.Equal(all.Length, last.Length);
        TensorAssert.Close(last.ForwardLast([7]), all.Forward([7]), 1e-6, "next step after ForwardLast");
    }

    [Fact]
    public void ResetStartsAnEmptySequence()
    {
        using var session = fixture.Model.CreateSession();
        session.Forward([9, 9, 9, 9]);
        session.Reset();
        Assert.Equal(0, session.Length);
        using var fresh = fixture.Model.CreateSession();
        TensorAssert.Close(session.Forward(Prompt), fresh.Forward(Prompt), 0, "after Reset vs fresh");
    }

    [Fact]
    public void SavedStateRestoresIdenticalNextLogits()
    {
        using var session = fixture.Model.CreateSession();
        session.Forward(Prompt);
        using var saved = new MemoryStream();
        session.SaveState(saved);
        var expected = session.Forward([42]);

        using var restored = fixture.Model.CreateSession();
        saved.Position = 0;
        restored.RestoreState(saved);
        Assert.Equal(Prompt.Length, restored.Length);
        TensorAssert.Close(restored.Forward([42]), expected, 0, "next-token logits after restore");
    }

    [Fact]
    public void CorruptSavedStateIsRejectedAndSessionUnchanged()
    {
        using var session = fixture.Model.CreateSession();
        session.Forward(Prompt);
        using var saved = new MemoryStream();
        session.SaveState(saved);
        byte[] bytes = saved.ToArray();

        using var target = fixture.Model.CreateSession();
        target.Forward(Prompt.AsSpan(0, 2));
        Assert.Contains("truncated", Assert.Throws<InvalidDataException>(() => target.RestoreState(new MemoryStream(bytes[..^10]))).Message);
        Assert.Contains("magic", Assert.Throws<InvalidDataException>(() => target.RestoreState(new MemoryStream(new byte[64]))).Message);
        Assert.Equal(2, target.Length);
        AssertContinuesLikeAFreshSession(target);
    }

    /// <summary>After a rejected call the session must compute exactly what an untouched session with the same history does.</summary>
    private void AssertContinuesLikeAFreshSession(KimiSession session)
    {
        int held = session.Length;
        using var fresh = fixture.Model.CreateSession();
        fresh.Forward(Prompt.AsSpan(0, held));
        TensorAssert.Close(session.Forward(Prompt.AsSpan(held)), fresh.Forward(Prompt.AsSpan(held)), 0, "continuation");
    }
}
