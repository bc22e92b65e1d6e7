using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using KimiLinear.Loading;

namespace KimiLinear.Backends.Cpu;

/// <summary>
/// y = x · wᵀ on the CPU with bf16 (mapped) or float weights and fp32 accumulation, split over output rows across cores.
/// With one or two input rows (decode) each weight row is streamed once through a fused bf16→fp32 dot product, so the
/// time is the weight bytes over memory bandwidth; with more rows a block of weight rows is widened once and multiplied
/// with all input rows in register tiles.
/// </summary>
internal static unsafe class CpuMatMul
{
    /// <summary>Weight rows per parallel work item: enough work to amortise scheduling, few enough to balance cores.</summary>
    private const int RowsPerBlock = 16;

    public static void Multiply(ReadOnlySpan<float> x, int tokens, WeightMatrix w, Span<float> y, ParallelOptions parallel)
    {
        int inputs = w.Cols, outputs = w.Rows;
        if (x.Length < tokens * inputs || y.Length < tokens * outputs)
            throw new ArgumentException($"MatMul '{w.Name}': x needs {tokens}×{inputs}, y {tokens}×{outputs}.");
        int blocks = (outputs + RowsPerBlock - 1) / RowsPerBlock;
        fixed (float* xp = x, yp = y)
        {
            float* xPtr = xp, yPtr = yp;
            if (tokens <= 2 && w.IsBFloat16)
            {
                Parallel.For(0, blocks, parallel, block =>
                {
                    int end = Math.Min(outputs, (block + 1) * RowsPerBlock);
                    for (int n = block * RowsPerBlock; n < end; n++)
                    {
                        ushort* row = w.BFloat16Data + (long)n * inputs;
                        for (int t = 0; t < tokens; t++)
                            yPtr[(long)t * outputs + n] = DotBFloat16(row, xPtr + (long)t * inputs, inputs);
                    }
                });
                return;
            }
            int yLength = y.Length;
            Parallel.For(0, blocks, parallel, () => ArrayPool<float>.Shared.Rent(RowsPerBlock * inputs + inputs), (block, _, scratch) =>
            {
                // Widen this block of weight rows once, transposed to [K, RowsPerBlock], so that TileGemm's register
                // tiles (4 tokens × 16 outputs) reuse every loaded weight vector for four tokens.
                int start = block * RowsPerBlock, count = Math.Min(RowsPerBlock, outputs - start);
                var row = scratch.AsSpan(RowsPerBlock * inputs, inputs);
                var transposed = scratch.AsSpan(0, RowsPerBlock * inputs);
                for (int r = 0; r < count; r++)
                {
                    w.RowToSingle(start + r, row);
                    for (int k = 0; k < inputs; k++)
                        transposed[k * RowsPerBlock + r] = row[k];
                }
                var output = new Span<float>(yPtr, yLength);
                for (int t = 0; t < tokens; t++)
                    output.Slice(t * outputs + start, count).Clear();
                TileGemm.MultiplyAccumulate(new ReadOnlySpan<float>(xPtr, tokens * inputs), inputs, 1, transposed, RowsPerBlock,
                    output[start..], outputs, tokens, count, inputs);
                return scratch;
            }, scratch => ArrayPool<float>.Shared.Return(scratch));
        }
    }

    /// <summary>Σ bf16(w[i]) · x[i], widening 16 weights at a time (bf16 is the top half of a float).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float DotBFloat16(ushort* w, float* x, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            Vector256<float> acc0 = Vector256<float>.Zero, acc1 = Vector256<float>.Zero;
            for (; i <= n - 16; i += 16)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Load(w + i));
                acc0 += Vector256.ShiftLeft(lo, 16).AsSingle() * Vector256.Load(x + i);
                acc1 += Vector256.ShiftLeft(hi, 16).AsSingle() * Vector256.Load(x + i + 8);
            }
            sum = Vector256.Sum(acc0 + acc1);
        }
        for (; i < n; i++)
            sum += Numerics.BFloat16.ToSingle(w[i]) * x[i];
        return sum;
    }
}
