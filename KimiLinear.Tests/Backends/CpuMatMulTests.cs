using KimiLinear.Backends.Cpu;
using KimiLinear.Loading;

namespace KimiLinear.Tests.Backends;

/// <summary>
/// The bf16 products of the CPU backend against a float64 loop over the same (widened) weights: the decode GEMV on one
/// core and across cores, the tiled path for more tokens, and the single-row helpers of the absorbed MLA, at widths
/// that leave every remainder of the 32- and 16-wide vector loops.
/// </summary>
public sealed class CpuMatMulTests
{
    /// <summary>fp32 sums of at most ~1000 products of values ≤ 1: relative error ~1e-6 of the sum of |terms|.</summary>
    private const double Tolerance = 1e-5;

    [Theory]
    [InlineData(1, 37, 1)]
    [InlineData(1, 37, 47)]
    [InlineData(2, 19, 33)]
    [InlineData(1, 300, 259)]  // 77,700 weights: above the single-core limit, split into blocks of rows
    [InlineData(2, 301, 1029)]
    [InlineData(3, 37, 75)]    // three tokens: the tiled path
    public void Multiply_matches_float64(int tokens, int rows, int cols)
    {
        using var weights = new SyntheticWeights(seed: rows * 31 + cols);
        var w = weights.Matrix("w", rows, cols);
        var wide = w.ToSingleArray();
        var rng = new Random(cols);
        var x = Enumerable.Range(0, tokens * cols).Select(_ => 2 * rng.NextSingle() - 1).ToArray();
        var y = new float[tokens * rows];
        CpuMatMul.Multiply(x, tokens, w, y, new ParallelOptions { MaxDegreeOfParallelism = 2 });
        for (int t = 0; t < tokens; t++)
            for (int n = 0; n < rows; n++)
            {
                double expected = 0, scale = 0;
                for (int k = 0; k < cols; k++)
                {
                    expected += (double)wide[n * cols + k] * x[t * cols + k];
                    scale += Math.Abs((double)wide[n * cols + k] * x[t * cols + k]);
                }
                Assert.True(Math.Abs(y[t * rows + n] - expected) <= Tolerance * (scale + 1e-30),
                    $"y[{t}, {n}] = {y[t * rows + n]}, expected {expected} (|terms| sum {scale})");
            }
    }

    [Theory]
    [InlineData(1, true)]
    [InlineData(45, true)]
    [InlineData(256, true)]
    [InlineData(45, false)]
    public void Row_helpers_match_float64(int cols, bool bf16)
    {
        using var weights = new SyntheticWeights(seed: cols);
        var source = weights.Matrix("w", 3, cols);
        var w = bf16 ? source : new WeightMatrix("w32", source.ToSingleArray(), 0, 3, cols).RowRange(1, 2);
        var wide = w.ToSingleArray();
        var rng = new Random(cols + 1);
        var x = Enumerable.Range(0, cols).Select(_ => 2 * rng.NextSingle() - 1).ToArray();
        var accumulator = Enumerable.Range(0, cols).Select(_ => 2 * rng.NextSingle() - 1).ToArray();
        var start = accumulator.ToArray();
        const float scale = -1.5f;

        float dot = CpuMatMul.DotRow(w, 1, x);
        CpuMatMul.MultiplyAddRow(w, 1, scale, accumulator);

        double expectedDot = 0;
        for (int k = 0; k < cols; k++)
        {
            expectedDot += (double)wide[cols + k] * x[k];
            Assert.Equal(start[k] + (double)scale * wide[cols + k], accumulator[k], 1e-6);
        }
        Assert.Equal(expectedDot, dot, 1e-5);
        Assert.Throws<ArgumentException>(() => CpuMatMul.DotRow(w, 1, x.AsSpan(1)));
    }
}
