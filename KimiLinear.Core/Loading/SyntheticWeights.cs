using System.Runtime.InteropServices;
using KimiLinear.Numerics;

namespace KimiLinear.Loading;

/// <summary>
/// Random weights of the right shapes for benchmarks of configurations nobody has a checkpoint of (the 48B model on a
/// development machine, a ~100M-parameter model on the CPU). Matrices are bf16 in native memory with values uniform in
/// ±0.02·√3 (standard deviation 0.02, the published initializer range); small tensors get values in the ranges a trained
/// model has, chosen by name: norm weights 1, A_log = ln U(1, 16), dt_bias U(−5, −1), correction bias ±0.01, conv taps ±0.3.
/// Deterministic for a seed. With <paramref name="onDevice"/> the matrices have no host data and a GPU backend generates
/// them in device memory (the 48B model's 98 GB never exist on the host).
/// </summary>
internal sealed unsafe class SyntheticWeights(int seed, bool onDevice = false) : IWeightSource
{
    private const float MatrixRange = 0.02f * 1.7320508f; // uniform ±0.02·√3 has standard deviation 0.02

    private readonly Random _random = new(seed);
    private readonly List<nint> _allocations = [];
    private readonly List<WeightMatrix> _matrices = [];

    public IReadOnlyList<WeightMatrix> Matrices => _matrices;

    public long BytesBound { get; private set; }
    public long TotalBytes => BytesBound;
    public IEnumerable<string> UnusedTensors => [];

    public WeightMatrix Matrix(string name, int rows, int cols)
    {
        long count = (long)rows * cols;
        BytesBound += count * sizeof(ushort);
        if (onDevice)
        {
            var deferred = WeightMatrix.OnDevice(name, rows, cols, (ulong)seed << 32 | (uint)_matrices.Count, MatrixRange);
            _matrices.Add(deferred);
            return deferred;
        }
        var data = (ushort*)NativeMemory.Alloc((nuint)count, sizeof(ushort));
        _allocations.Add((nint)data);
        for (long i = 0; i < count; i++)
            data[i] = BFloat16.FromSingle((2 * _random.NextSingle() - 1) * MatrixRange);
        var matrix = new WeightMatrix(name, data, rows, cols);
        _matrices.Add(matrix);
        return matrix;
    }

    public float[] Floats(string name, params long[] shape)
    {
        var values = new float[shape.Aggregate(1L, (a, b) => a * b)];
        Func<float> next = name switch
        {
            _ when name.EndsWith("norm.weight", StringComparison.Ordinal) => () => 1f,
            _ when name.EndsWith("A_log", StringComparison.Ordinal) => () => MathF.Log(1 + 15 * _random.NextSingle()),
            _ when name.EndsWith("dt_bias", StringComparison.Ordinal) => () => -5 + 4 * _random.NextSingle(),
            _ when name.EndsWith("e_score_correction_bias", StringComparison.Ordinal) => () => 0.01f * (2 * _random.NextSingle() - 1),
            _ => () => 0.3f * (2 * _random.NextSingle() - 1),
        };
        for (int i = 0; i < values.Length; i++)
            values[i] = next();
        BytesBound += values.Length * sizeof(float);
        return values;
    }

    public void Dispose()
    {
        foreach (var p in _allocations)
            NativeMemory.Free((void*)p);
        _allocations.Clear();
    }
}
