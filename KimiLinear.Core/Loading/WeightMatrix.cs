using System.Runtime.InteropServices;
using KimiLinear.Numerics;

namespace KimiLinear.Loading;

/// <summary>
/// A weight matrix [Rows, Cols], row-major, as a linear layer stores it (y = W·x). BF16 weights stay in the mapped
/// checkpoint file (the 98 GB real checkpoint is never copied into managed memory); F16 and F32 weights are widened to
/// float once at load. A row range of a matrix is a view over the same data.
/// </summary>
internal sealed unsafe class WeightMatrix
{
    private readonly ushort* _bf16;   // [Rows, Cols] mapped bf16, or null
    private readonly float[]? _f32;   // [Rows, Cols] widened copy, or null
    private readonly int _f32Offset;

    /// <summary>The checkpoint tensor this matrix comes from (with the row range for views).</summary>
    public string Name { get; }
    /// <summary>Output features.</summary>
    public int Rows { get; }
    /// <summary>Input features.</summary>
    public int Cols { get; }

    /// <summary>The matrix this one is a row range of (itself when it is not a view).</summary>
    public WeightMatrix Source { get; }

    /// <summary>Row of <see cref="Source"/> where this matrix starts.</summary>
    public int SourceRow { get; }

    /// <summary>
    /// Set for a synthetic matrix that has no host data: a GPU backend generates its values on the device (uniform in
    /// ±<see cref="SyntheticRange"/>, from this seed), so a full-size benchmark model needs no 30 GB of host memory.
    /// </summary>
    public ulong? SyntheticSeed { get; }

    /// <summary>Half-width of a synthetic matrix's uniform values.</summary>
    public float SyntheticRange { get; }

    /// <summary>Whether the data is bf16 in the mapped file (else float in managed memory).</summary>
    public bool IsBFloat16 => _bf16 != null;

    /// <summary>Mapped bf16 data, [Rows, Cols]; only when <see cref="IsBFloat16"/>.</summary>
    public ushort* BFloat16Data => _bf16;

    /// <summary>Slot where a GPU backend keeps its device copy of this matrix.</summary>
    public object? DeviceCopy { get; set; }

    public WeightMatrix(string name, ushort* bf16, int rows, int cols)
        : this(name, bf16, null, 0, rows, cols, null, 0) { }

    public WeightMatrix(string name, float[] f32, int offset, int rows, int cols)
        : this(name, null, f32, offset, rows, cols, null, 0) { }

    private WeightMatrix(string name, ushort* bf16, float[]? f32, int f32Offset, int rows, int cols, WeightMatrix? source, int sourceRow,
        ulong? syntheticSeed = null, float syntheticRange = 0)
    {
        _bf16 = bf16;
        (Name, _f32, _f32Offset, Rows, Cols) = (name, f32, f32Offset, rows, cols);
        (Source, SourceRow, SyntheticSeed, SyntheticRange) = (source ?? this, sourceRow, syntheticSeed, syntheticRange);
    }

    /// <summary>A synthetic matrix without host data, generated on the device from <paramref name="seed"/>.</summary>
    public static WeightMatrix OnDevice(string name, int rows, int cols, ulong seed, float range) =>
        new(name, null, null, 0, rows, cols, null, 0, seed, range);

    /// <summary>Rows [start, start + count) as a matrix over the same data.</summary>
    public WeightMatrix RowRange(int start, int count)
    {
        if (start < 0 || count < 0 || start + count > Rows)
            throw new ArgumentOutOfRangeException(nameof(start), $"rows [{start}, {start + count}) outside [0, {Rows}) of '{Name}'.");
        string name = $"{Name}[{start}:{start + count}]";
        return new WeightMatrix(name, _bf16 == null ? null : _bf16 + (long)start * Cols, _f32, _f32Offset + start * Cols, count, Cols,
            Source, SourceRow + start, SyntheticSeed, SyntheticRange);
    }

    /// <summary>Mapped bf16 row <paramref name="row"/>.</summary>
    public ReadOnlySpan<ushort> BFloat16Row(int row) => new(_bf16 + (long)row * Cols, Cols);

    /// <summary>Float row <paramref name="row"/> when the matrix is held as float.</summary>
    public ReadOnlySpan<float> FloatRow(int row) => _f32.AsSpan(_f32Offset + row * Cols, Cols);

    /// <summary>Writes row <paramref name="row"/> widened to float.</summary>
    public void RowToSingle(int row, Span<float> destination)
    {
        if (SyntheticSeed is not null)
            throw new InvalidOperationException($"'{Name}' is a synthetic weight that exists only on the GPU; the CPU backend cannot read it.");
        if (_bf16 != null)
            BFloat16.ToSingle(BFloat16Row(row), destination);
        else
            FloatRow(row).CopyTo(destination);
    }

    /// <summary>The whole matrix as float (a copy; for small matrices and tests).</summary>
    public float[] ToSingleArray()
    {
        var result = new float[(long)Rows * Cols];
        for (int r = 0; r < Rows; r++)
            RowToSingle(r, result.AsSpan(r * Cols, Cols));
        return result;
    }
}
