using KimiLinear.Loading;

namespace KimiLinear.Tests.Model;

/// <summary>
/// The whole engine against the Hugging Face reference on the tiny 4-layer model (3 KDA + 1 MLA, dense MLP then MoE):
/// logits of five prompts, the hidden states of one, and a cached greedy decode. The reference ran in float32 on the
/// bf16 weights, as this engine does, so 1e-4 relative is the bar (golden/README.md).
/// </summary>
public sealed class TinyGoldenTests : IClassFixture<TinyModelFixture>
{
    private const double Tolerance = 1e-4;
    private readonly TinyModelFixture _fixture;

    public TinyGoldenTests(TinyModelFixture fixture) => _fixture = fixture;

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void LogitsMatchReferenceFromEmptySession(int golden)
    {
        using var session = _fixture.Model.CreateSession();
        var ids = _fixture.Golden.ReadInt32($"case{golden}.input_ids");
        var logits = session.Forward(ids);
        TensorAssert.Close(logits, _fixture.Golden.ReadFloat32($"case{golden}.logits"), Tolerance, $"case {golden} logits (T = {ids.Length})");
        Assert.Equal(ids.Length, session.Length);
    }

    [Fact]
    public void HiddenStatesOfCase4MatchReference()
    {
        using var session = _fixture.Model.CreateSession();
        var hidden = new Dictionary<int, float[]>();
        session.Forward(_fixture.Golden.ReadInt32("case4.input_ids"), MlaForm.Auto, (index, values) => hidden[index] = values);
        for (int j = 0; j <= _fixture.Model.Config.NumLayers; j++)
            TensorAssert.Close(hidden[j], _fixture.Golden.ReadFloat32($"case4.hidden.{j}"), Tolerance, $"hidden.{j}");
    }

    /// <summary>
    /// <see cref="RoutingMargins"/> (which the GPU model tests trust to name routing near-ties) walks the layers as the
    /// model's forward does: it checks each layer's output against the model's own, and measures every MoE layer.
    /// </summary>
    [Fact]
    public void RoutingMarginsWalkTheModelsForward()
    {
        var ids = _fixture.Golden.ReadInt32("case4.input_ids");
        var config = _fixture.Model.Config;
        var margins = RoutingMargins.Of(_fixture.Model, ids);
        Assert.Equal(Enumerable.Range(0, config.NumLayers).Where(config.IsMoeLayer), margins.Keys.Order());
        Assert.All(margins.Values, layer => Assert.Equal(ids.Length, layer.Length));
    }

    [Fact]
    public void GreedyDecodeMatchesReferenceTokensAndLogits()
    {
        using var session = _fixture.Model.CreateSession();
        int vocab = _fixture.Model.Config.VocabSize;
        var prompt = _fixture.Golden.ReadInt32("decode.prompt_ids");
        var expectedTokens = _fixture.Golden.ReadInt32("decode.generated_ids");
        var expectedLogits = _fixture.Golden.ReadFloat32("decode.step_logits");

        var logits = session.Forward(prompt);
        var last = logits.AsSpan((prompt.Length - 1) * vocab, vocab).ToArray();
        for (int step = 0; step < expectedTokens.Length; step++)
        {
            TensorAssert.Close(last, expectedLogits.AsSpan(step * vocab, vocab), Tolerance, $"decode step {step} logits");
            int next = System.Numerics.Tensors.TensorPrimitives.IndexOfMax<float>(last);
            Assert.Equal(expectedTokens[step], next);
            last = session.Forward([next]);
        }
    }
}

/// <summary>The tiny golden model and its reference outputs, loaded once per test class.</summary>
public sealed class TinyModelFixture : IDisposable
{
    public KimiModel Model { get; } = KimiModel.Load(FixturePaths.TinyModel);
    public SafeTensorFile Golden { get; } = SafeTensorFile.Open(Path.Combine(FixturePaths.TinyModel, "golden.safetensors"));

    public void Dispose()
    {
        Model.Dispose();
        Golden.Dispose();
    }
}
