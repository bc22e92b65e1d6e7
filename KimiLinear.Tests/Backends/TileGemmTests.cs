using KimiLinear.Backends.Cpu;

namespace KimiLinear.Tests.Backends;

/// <summary>The tiled fp32 product against a float64 triple loop, at sizes that leave every kind of tile remainder.</summary>
public sealed class TileGemmTests
{
    /// <summary>Each element is an fp32 dot product of at most 130 terms of N(0, 1) data: its relative error is ~1e-7.</summary>
    private const double Tolerance = 1e-6;

    [Theory]
    [InlineData(1, 1, 1, false, false)]
    [InlineData(5, 17, 3, false, false)]
    [InlineData(13, 40, 64, true, false)]
    [InlineData(64, 128, 128, false, false)]
    [InlineData(64, 128, 64, true, false)]
    [InlineData(7, 9, 33, true, false)]
    [InlineData(64, 36, 64, false, true)]
    [InlineData(19, 23, 19, true, true)]
    [InlineData(3, 130, 3, false, true)]
    public void Matches_float64_product(int m, int n, int depth, bool transposedA, bool lowerTriangular)
    {
        var rng = new Random(m * 1000 + n * 10 + depth);
        float Normal() => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        const float alpha = -0.75f;
        int ldb = n + 3, ldc = n + 5; // gaps between rows, poisoned below

        // A stored [m, depth] or, transposed, [depth, m]; zeros above the diagonal when triangular.
        var a = new float[m * depth];
        for (int i = 0; i < m; i++)
            for (int p = 0; p < depth; p++)
                a[transposedA ? p * m + i : i * depth + p] = lowerTriangular && p > i ? 0f : Normal();
        int aRow = transposedA ? 1 : depth, aCol = transposedA ? m : 1;
        var b = new float[depth * ldb];
        var c = new float[m * ldc];
        Array.Fill(b, float.NaN);
        Array.Fill(c, float.NaN);
        for (int p = 0; p < depth; p++)
            for (int j = 0; j < n; j++)
                b[p * ldb + j] = Normal();
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c[i * ldc + j] = Normal();

        var expected = new float[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int p = 0; p < depth; p++)
                    sum += (double)a[i * aRow + p * aCol] * b[p * ldb + j];
                expected[i * n + j] = (float)(c[i * ldc + j] + alpha * sum);
            }

        TileGemm.MultiplyAccumulate(a, aRow, aCol, b, ldb, c, ldc, m, n, depth, alpha, lowerTriangular);

        var actual = new float[m * n];
        for (int i = 0; i < m; i++)
        {
            c.AsSpan(i * ldc, n).CopyTo(actual.AsSpan(i * n));
            for (int j = n; j < ldc && i * ldc + j < c.Length; j++)
                Assert.True(float.IsNaN(c[i * ldc + j]), $"wrote c[{i}, {j}], outside the {n} columns");
        }
        TensorAssert.Close(actual, expected, Tolerance, $"C += {alpha}·A·B, {m}×{depth}·{depth}×{n}");
    }
}
