namespace KimiLinear.State;

/// <summary>
/// The rows of a forward step that belong to one sequence: a prompt's tokens in a prefill step (the whole step), or
/// one row per session in a batched decode step. Projections and experts run over all the step's rows at once (the
/// weights are read once); the token mixers, which carry per-sequence state, run sequence by sequence.
/// </summary>
/// <param name="State">The sequence's state.</param>
/// <param name="FirstRow">Its first row in the step's [T, ·] tensors.</param>
/// <param name="Rows">How many rows it has.</param>
/// <param name="Position">The sequence position of its first row (its length before the step).</param>
internal readonly record struct SequenceRows(SessionState State, int FirstRow, int Rows, int Position)
{
    /// <summary>Indices of its rows in the step's tensors.</summary>
    public int[] Indices() => Enumerable.Range(FirstRow, Rows).ToArray();
}
