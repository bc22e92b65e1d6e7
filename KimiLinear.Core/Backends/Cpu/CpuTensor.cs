namespace KimiLinear.Backends.Cpu;

/// <summary>A CPU tensor: [Rows, Cols] floats in a managed array.</summary>
internal sealed class CpuTensor(int rows, int cols) : Tensor(rows, cols)
{
    /// <summary>[Rows, Cols] row-major.</summary>
    public float[] Data { get; } = new float[checked(rows * cols)];

    /// <summary>The whole tensor.</summary>
    public Span<float> Span => Data;

    /// <summary>Row <paramref name="row"/>.</summary>
    public Span<float> Row(int row) => Data.AsSpan(row * Cols, Cols);
}
