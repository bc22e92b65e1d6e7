using System.Numerics.Tensors;
using BenchmarkDotNet.Attributes;
using KimiLinear.Backends.Cpu;
using KimiLinear.Loading;

namespace KimiLinear.Benchmarks;

/// <summary>
/// The CPU bf16 GEMV (decode: one token times a [N, K] bf16 weight) against this machine's memory read bandwidth,
/// measured in the same run by summing a 512 MiB float array on all cores. Both stream from DRAM: each benchmark cycles
/// through enough distinct matrices (≥ 256 MiB) that nothing stays in cache, as in decode, where every weight is read
/// once per token. Achieved bandwidth = weight bytes / time; the fraction is that over ReadBandwidth's bytes / time.
/// </summary>
[SimpleJob(launchCount: 1, warmupCount: 2, iterationCount: 8)]
public unsafe class GemvBandwidthBenchmarks
{
    private const long StreamBytes = 512L << 20;
    private const long CycleBytes = 256L << 20;

    private float[] _stream = null!;
    private SyntheticWeights _weights = null!;
    private WeightMatrix[] _matrices = null!;
    private float[] _x = null!;
    private float[] _y = null!;
    private int _next;
    private readonly ParallelOptions _parallel = new() { MaxDegreeOfParallelism = Environment.ProcessorCount };

    /// <summary>Weight shape "N×K" (the model's decode shapes).</summary>
    [Params("4096x2304", "2304x4096", "6144x2304")]
    public string Shape { get; set; } = "4096x2304";

    [GlobalSetup]
    public void Setup()
    {
        var parts = Shape.Split('x');
        int n = int.Parse(parts[0], System.Globalization.CultureInfo.InvariantCulture), k = int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture);
        int copies = (int)Math.Max(2, CycleBytes / (2L * n * k));
        _weights = new SyntheticWeights(1);
        _matrices = Enumerable.Range(0, copies).Select(i => _weights.Matrix($"w{i}", n, k)).ToArray();
        _x = Enumerable.Range(0, k).Select(i => MathF.Sin(i)).ToArray();
        _y = new float[n];
        _stream = new float[StreamBytes / sizeof(float)];
        new Random(2).NextBytes(System.Runtime.InteropServices.MemoryMarshal.AsBytes(_stream.AsSpan()));
        for (int i = 0; i < _stream.Length; i++)
            _stream[i] = float.IsFinite(_stream[i]) ? _stream[i] : 0;
    }

    [GlobalCleanup]
    public void Cleanup() => _weights.Dispose();

    /// <summary>Reads 512 MiB on all cores: this machine's memory read bandwidth in the same conditions.</summary>
    [Benchmark(Baseline = true)]
    public double ReadBandwidth()
    {
        int parts = Environment.ProcessorCount * 4, length = _stream.Length / parts;
        var sums = new double[parts];
        Parallel.For(0, parts, _parallel, p => sums[p] = TensorPrimitives.Sum(_stream.AsSpan(p * length, length)));
        return sums.Sum();
    }

    /// <summary>One y = W·x with the next matrix of the cycle.</summary>
    [Benchmark]
    public float Gemv()
    {
        var w = _matrices[_next];
        _next = (_next + 1) % _matrices.Length;
        CpuMatMul.Multiply(_x, 1, w, _y, _parallel);
        return _y[0];
    }
}
