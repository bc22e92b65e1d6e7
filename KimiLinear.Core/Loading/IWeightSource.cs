namespace KimiLinear.Loading;

/// <summary>
/// Where the layers get their weights, by published tensor name and the shape the configuration implies: a checkpoint
/// on disk, or synthetic random weights for benchmarks. Owns the memory the weights live in.
/// </summary>
internal interface IWeightSource : IDisposable
{
    /// <summary>A [rows, cols] matrix.</summary>
    WeightMatrix Matrix(string name, int rows, int cols);
    /// <summary>A float tensor of exactly <paramref name="shape"/>, in managed memory (small tensors only).</summary>
    float[] Floats(string name, params long[] shape);
    /// <summary>Every matrix handed out so far, in order (row-range views are not listed; their source is).</summary>
    IReadOnlyList<WeightMatrix> Matrices { get; }
    /// <summary>Bytes of the tensors handed out so far.</summary>
    long BytesBound { get; }
    /// <summary>Bytes of all tensors the source holds (for progress).</summary>
    long TotalBytes { get; }
    /// <summary>Tensors the source holds that nobody asked for.</summary>
    IEnumerable<string> UnusedTensors { get; }
}
