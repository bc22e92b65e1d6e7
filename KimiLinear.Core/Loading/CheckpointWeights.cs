namespace KimiLinear.Loading;

/// <summary>
/// Binds checkpoint tensors to the engine's weights by their published names, checking each one's dtype and shape
/// against what the configuration implies. Errors name the tensor, the file, what was expected and what was found.
/// BF16 matrices stay in the mapped files, so this owns the checkpoint.
/// </summary>
internal sealed unsafe class CheckpointWeights(Checkpoint checkpoint) : IWeightSource
{
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);
    private readonly List<WeightMatrix> _matrices = [];

    /// <summary>Every matrix bound so far.</summary>
    public IReadOnlyList<WeightMatrix> Matrices => _matrices;

    /// <summary>Bytes of the tensors bound so far.</summary>
    public long BytesBound { get; private set; }

    /// <summary>Bytes of tensor data in the checkpoint.</summary>
    public long TotalBytes { get; } = checkpoint.TotalBytes;

    /// <summary>Tensors in the checkpoint that no layer asked for.</summary>
    public IEnumerable<string> UnusedTensors => checkpoint.TensorNames.Where(n => !_used.Contains(n));

    /// <summary>A [rows, cols] matrix.</summary>
    public WeightMatrix Matrix(string name, int rows, int cols)
    {
        var (file, info) = Find(name, [rows, cols]);
        var matrix = info.DType == SafeTensorDType.BF16
            ? new WeightMatrix(name, (ushort*)file.DataPointer(info), rows, cols)
            : new WeightMatrix(name, file.ReadFloat32(name), 0, rows, cols);
        _matrices.Add(matrix);
        return matrix;
    }

    /// <summary>A float tensor of exactly <paramref name="shape"/>, widened into managed memory (small tensors only).</summary>
    public float[] Floats(string name, params long[] shape)
    {
        var (file, _) = Find(name, shape);
        return file.ReadFloat32(name);
    }

    private (SafeTensorFile File, SafeTensorInfo Info) Find(string name, long[] shape)
    {
        if (!checkpoint.TryFind(name, out var file, out var info))
            throw new InvalidDataException($"Checkpoint '{checkpoint.Directory}' has no tensor '{name}' (expected {Text(shape)}).");
        if (info.DType is not (SafeTensorDType.BF16 or SafeTensorDType.F16 or SafeTensorDType.F32))
            throw new InvalidDataException($"{file.Path}: tensor '{name}' has dtype {info.DType}; expected BF16, F16 or F32.");
        if (!info.Shape.AsSpan().SequenceEqual(shape))
            throw new InvalidDataException($"{file.Path}: tensor '{name}' has shape {info.ShapeText}; the configuration implies {Text(shape)}.");
        _used.Add(name);
        BytesBound += info.ByteLength;
        return (file, info);
    }

    private static string Text(long[] shape) => "[" + string.Join(", ", shape) + "]";

    /// <inheritdoc />
    public void Dispose() => checkpoint.Dispose();
}
