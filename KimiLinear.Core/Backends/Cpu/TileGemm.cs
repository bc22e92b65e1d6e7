using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace KimiLinear.Backends.Cpu;

/// <summary>
/// fp32 C += α·A·B for small operands that already sit in cache (the KDA chunk's 64 × 128 products), without packing.
/// Tiles of 4 rows × 2 vectors keep eight accumulators in registers, so each B vector loaded serves four rows and each
/// broadcast A element two vectors; one call replaces hundreds of per-row vector calls whose fixed cost would dominate.
/// </summary>
internal static unsafe class TileGemm
{
    private const int TileRows = 4;

    /// <summary>
    /// c[i, j] += alpha · Σ_p a[i, p]·b[p, j] for i &lt; m, j &lt; n, p &lt; depth. Element (i, p) of A is at
    /// <c>i·aRowStride + p·aColStride</c>, so a transposed operand needs no copy; rows of B and C are contiguous, at
    /// strides <c>ldb</c> and <c>ldc</c>. With <c>lowerTriangular</c>, A is lower triangular (a[i, p] = 0 for p &gt; i,
    /// stored as zeros) and each tile of rows stops at its last row, which halves the work of a triangular product;
    /// zeros above the diagonal inside a tile are still read.
    /// </summary>
    public static void MultiplyAccumulate(ReadOnlySpan<float> a, int aRowStride, int aColStride, ReadOnlySpan<float> b, int ldb,
        Span<float> c, int ldc, int m, int n, int depth, float alpha = 1f, bool lowerTriangular = false)
    {
        if (m == 0 || n == 0 || depth == 0)
            return;
        Debug.Assert(a.Length >= (long)(m - 1) * aRowStride + (long)(depth - 1) * aColStride + 1, "a too short");
        Debug.Assert(b.Length >= (long)(depth - 1) * ldb + n, "b too short");
        Debug.Assert(c.Length >= (long)(m - 1) * ldc + n, "c too short");
        fixed (float* pa = a, pb = b, pc = c)
        {
            for (int i0 = 0; i0 < m; i0 += TileRows)
            {
                int rows = Math.Min(TileRows, m - i0);
                int end = lowerTriangular ? Math.Min(depth, i0 + rows) : depth;
                // Rows past m repeat the last row: computed, never stored, so the tile code has one shape.
                float* a0 = pa + (long)i0 * aRowStride;
                float* a1 = pa + (long)Math.Min(i0 + 1, m - 1) * aRowStride;
                float* a2 = pa + (long)Math.Min(i0 + 2, m - 1) * aRowStride;
                float* a3 = pa + (long)Math.Min(i0 + 3, m - 1) * aRowStride;
                float* c0 = pc + (long)i0 * ldc;
                int w = Vector<float>.Count, j = 0;
                for (; j + 2 * w <= n; j += 2 * w)
                    TileTwoVectors(a0, a1, a2, a3, aColStride, pb + j, ldb, c0 + j, ldc, rows, end, alpha);
                for (; j + w <= n; j += w)
                    TileOneVector(a0, a1, a2, a3, aColStride, pb + j, ldb, c0 + j, ldc, rows, end, alpha);
                for (; j < n; j++)
                {
                    for (int i = 0; i < rows; i++)
                    {
                        float* ai = pa + (long)(i0 + i) * aRowStride;
                        float sum = 0;
                        for (int p = 0; p < end; p++)
                            sum += ai[(long)p * aColStride] * pb[(long)p * ldb + j];
                        c0[(long)i * ldc + j] += alpha * sum;
                    }
                }
            }
        }
    }

    private static void TileTwoVectors(float* a0, float* a1, float* a2, float* a3, int aColStride, float* b, int ldb,
        float* c, int ldc, int rows, int depth, float alpha)
    {
        int w = Vector<float>.Count;
        Vector<float> c00 = default, c01 = default, c10 = default, c11 = default;
        Vector<float> c20 = default, c21 = default, c30 = default, c31 = default;
        for (int p = 0; p < depth; p++)
        {
            float* bp = b + (long)p * ldb;
            var b0 = Vector.Load(bp);
            var b1 = Vector.Load(bp + w);
            long ap = (long)p * aColStride;
            var x = new Vector<float>(a0[ap]);
            c00 = MulAdd(x, b0, c00);
            c01 = MulAdd(x, b1, c01);
            x = new Vector<float>(a1[ap]);
            c10 = MulAdd(x, b0, c10);
            c11 = MulAdd(x, b1, c11);
            x = new Vector<float>(a2[ap]);
            c20 = MulAdd(x, b0, c20);
            c21 = MulAdd(x, b1, c21);
            x = new Vector<float>(a3[ap]);
            c30 = MulAdd(x, b0, c30);
            c31 = MulAdd(x, b1, c31);
        }
        var scale = new Vector<float>(alpha);
        Accumulate(c, c00, scale);
        Accumulate(c + w, c01, scale);
        if (rows > 1) { Accumulate(c + ldc, c10, scale); Accumulate(c + ldc + w, c11, scale); }
        if (rows > 2) { Accumulate(c + 2L * ldc, c20, scale); Accumulate(c + 2L * ldc + w, c21, scale); }
        if (rows > 3) { Accumulate(c + 3L * ldc, c30, scale); Accumulate(c + 3L * ldc + w, c31, scale); }
    }

    private static void TileOneVector(float* a0, float* a1, float* a2, float* a3, int aColStride, float* b, int ldb,
        float* c, int ldc, int rows, int depth, float alpha)
    {
        Vector<float> c0 = default, c1 = default, c2 = default, c3 = default;
        for (int p = 0; p < depth; p++)
        {
            var bp = Vector.Load(b + (long)p * ldb);
            long ap = (long)p * aColStride;
            c0 = MulAdd(new Vector<float>(a0[ap]), bp, c0);
            c1 = MulAdd(new Vector<float>(a1[ap]), bp, c1);
            c2 = MulAdd(new Vector<float>(a2[ap]), bp, c2);
            c3 = MulAdd(new Vector<float>(a3[ap]), bp, c3);
        }
        var scale = new Vector<float>(alpha);
        Accumulate(c, c0, scale);
        if (rows > 1) Accumulate(c + ldc, c1, scale);
        if (rows > 2) Accumulate(c + 2L * ldc, c2, scale);
        if (rows > 3) Accumulate(c + 3L * ldc, c3, scale);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Accumulate(float* c, Vector<float> sum, Vector<float> alpha) => Vector.Store(MulAdd(sum, alpha, Vector.Load(c)), c);

    /// <summary>a·b + c, fused where the hardware has FMA (on net9+, which exposes it for Vector&lt;T&gt;).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector<float> MulAdd(Vector<float> a, Vector<float> b, Vector<float> c) =>
#if NET9_0_OR_GREATER
        Vector.MultiplyAddEstimate(a, b, c);
#else
        a * b + c;
#endif
}
