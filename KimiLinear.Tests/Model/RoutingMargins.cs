using KimiLinear.Backends;
using KimiLinear.State;

namespace KimiLinear.Tests.Model;

/// <summary>
/// How close each token's expert choice is to a tie, in each MoE layer of one prefill: the last chosen expert's
/// selection score (sigmoid + correction bias) less the best one left out. A run whose activations round differently
/// (the GPU's bf16 GEMM inputs, a decode step against a prefill) may send a token whose margin is below that rounding to
/// another expert, which moves its output far more than any rounding does; a test that compares two such runs token by
/// token has to know where routing can go either way.
/// </summary>
internal static class RoutingMargins
{
    /// <summary>Margins [T] by layer index, for each MoE layer of <paramref name="model"/> (ungrouped routing).</summary>
    public static Dictionary<int, float[]> Of(KimiModel model, int[] ids)
    {
        // The embedding and each layer's output, from an ordinary forward (hidden state j: after layer j − 1).
        var reference = new Dictionary<int, float[]>();
        using (var session = model.CreateSession())
            session.Forward(ids, MlaForm.Expanded, (j, values) => reference[j] = values);

        // The layers one by one, as KimiModel.Compute runs them, stopping between each block's halves.
        var backend = model.Backend;
        var margins = new Dictionary<int, float[]>();
        using var state = model.CreateState();
        for (int i = 0; i < model.Layers.Count; i++)
            model.Layers[i].Mla?.Reserve(backend, state.Mla[i]!, 0, ids.Length);
        using var step = backend.BeginForward();
        var hidden = backend.Allocate(ids.Length, model.Config.HiddenSize);   // [T, D]
        backend.Upload(reference[0], hidden);
        SequenceRows[] batch = [new(state, 0, ids.Length, 0)];
        for (int i = 0; i < model.Layers.Count; i++)
        {
            var layer = model.Layers[i];
            using var scratch = backend.BeginScratch();
            var normed = layer.MixTokens(backend, hidden, batch, absorbedAttention: false);   // [T, D]
            if (layer.Experts is { } experts)
                margins[i] = Margins(backend, normed, experts);
            layer.MixChannels(backend, normed, hidden);
            if (i + 1 < model.Layers.Count)   // the walk is the model's forward (its last hidden state is normed)
            {
                var walked = new float[hidden.Length];
                backend.Download(hidden, walked);
                TensorAssert.Close(walked, reference[i + 1], 1e-6, $"RoutingMargins' walk after layer {i}");
            }
        }
        return margins;
    }

    private static float[] Margins(IKimiBackend backend, Tensor x, Layers.MoeExperts experts)
    {
        var routing = experts.Routing;
        if (routing.Groups != 1)
            throw new NotSupportedException($"RoutingMargins measures ungrouped routing; this model routes within {routing.Groups} groups.");
        int tokens = x.Rows, count = experts.Count, chosen = routing.ExpertsPerToken;
        var logits = backend.Allocate(tokens, count);   // [T, E]
        backend.MatMul(x, experts.Router, logits);
        var values = new float[logits.Length];
        backend.Download(logits, values);
        var margins = new float[tokens];
        var selection = new float[count];
        for (int t = 0; t < tokens; t++)
        {
            for (int e = 0; e < count; e++)
                selection[e] = 1f / (1f + MathF.Exp(-values[t * count + e])) + experts.CorrectionBias[e];
            Array.Sort(selection, (a, b) => b.CompareTo(a));
            margins[t] = selection[chosen - 1] - selection[chosen];
        }
        return margins;
    }
}
