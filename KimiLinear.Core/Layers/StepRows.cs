using KimiLinear.Backends;
using KimiLinear.State;

namespace KimiLinear.Layers;

/// <summary>How a token mixer runs one sequence of a step whose rows may belong to several sequences.</summary>
internal static class StepRows
{
    /// <summary>
    /// Whether <paramref name="batch"/> is a batched decode step: several sequences of one row each, sequence n at row n,
    /// which a mixer may run in one backend call over all the sequences' states.
    /// </summary>
    public static bool IsDecodeBatch(IReadOnlyList<SequenceRows> batch)
    {
        if (batch.Count < 2) return false; // one sequence runs as it is (a decode step of one session may be recorded)
        for (int n = 0; n < batch.Count; n++)
            if (batch[n].Rows != 1 || batch[n].FirstRow != n)
                return false;
        return true;
    }

    /// <summary>
    /// Runs <paramref name="mix"/> for each sequence of <paramref name="batch"/> on its rows of <paramref name="inputs"/>,
    /// writing its rows of <paramref name="output"/>. A step of one sequence passes the tensors as they are; otherwise
    /// each sequence's rows are gathered, mixed and copied back.
    /// </summary>
    public static void ForEachSequence(IKimiBackend backend, IReadOnlyList<SequenceRows> batch, Tensor[] inputs, Tensor output,
        Action<SequenceRows, Tensor[], Tensor> mix)
    {
        if (batch.Count == 1)
        {
            mix(batch[0], inputs, output);
            return;
        }
        foreach (var sequence in batch)
        {
            int[] rows = sequence.Indices();
            var own = new Tensor[inputs.Length];
            for (int i = 0; i < inputs.Length; i++)
            {
                own[i] = backend.Allocate(sequence.Rows, inputs[i].Cols);
                backend.GatherRows(inputs[i], rows, own[i]);
            }
            var result = backend.Allocate(sequence.Rows, output.Cols);
            mix(sequence, own, result);
            backend.CopyRows(result, sequence.Rows, output, sequence.FirstRow);
        }
    }
}
