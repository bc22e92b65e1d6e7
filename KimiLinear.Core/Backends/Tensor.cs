namespace KimiLinear.Backends;

/// <summary>
/// An activation or state tensor owned by a backend: [Rows, Cols], row-major, fp32 on the CPU. Layers see only this
/// shape; each backend keeps its own storage (managed arrays on the CPU, device memory on a GPU).
/// </summary>
internal abstract class Tensor(int rows, int cols)
{
    /// <summary>Outer dimension (tokens for activations).</summary>
    public int Rows { get; } = rows;
    /// <summary>Inner, contiguous dimension.</summary>
    public int Cols { get; } = cols;
    /// <summary>Rows × Cols.</summary>
    public long Length => (long)Rows * Cols;
    /// <summary>The shape as "[rows, cols]" for messages.</summary>
    public override string ToString() => $"[{Rows}, {Cols}]";
}
