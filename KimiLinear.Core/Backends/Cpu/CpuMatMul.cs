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

    /// <summary>
    /// Weight elements below which a decode GEMV runs on one core: 128 KiB of bf16 read in ~3 µs, about what handing
    /// blocks to a pool thread costs.
    /// </summary>
    private const long GemvParallelElements = 1 << 16;

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
                // Blocks of rows go to whichever core is free (balanced even when another process holds a core);
                // a small matrix stays on the calling thread, where waking a pool thread would cost what it saves.
                if ((long)outputs * inputs < GemvParallelElements)
                    GemvRows(w, xPtr, yPtr, tokens, 0, outputs);
                else
                    Parallel.For(0, blocks, parallel, block =>
                        GemvRows(w, xPtr, yPtr, tokens, block * RowsPerBlock, Math.Min(outputs, (block + 1) * RowsPerBlock)));
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

    /// <summary>y[t, n] = w[n] · x[t] for output rows [start, end) of a bf16 matrix.</summary>
    private static void GemvRows(WeightMatrix w, float* x, float* y, int tokens, int start, int end)
    {
        int inputs = w.Cols, outputs = w.Rows;
        for (int n = start; n < end; n++)
        {
            ushort* row = w.BFloat16Data + (long)n * inputs;
            for (int t = 0; t < tokens; t++)
                y[(long)t * outputs + n] = DotBFloat16(row, x + (long)t * inputs, inputs);
        }
    }

    /// <summary>a·b + c, fused where the hardware has FMA (on net9+, which exposes it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> MulAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) =>
#if NET9_0_OR_GREATER
        Vector256.MultiplyAddEstimate(a, b, c);
#else
        a * b + c;
#endif

    /// <summary>w[row] · x, reading a bf16 row in place (no widened copy).</summary>
    public static float DotRow(WeightMatrix w, int row, ReadOnlySpan<float> x)
    {
        if (x.Length != w.Cols)
            throw new ArgumentException($"DotRow '{w.Name}': x has {x.Length} floats, the row {w.Cols}.");
        if (!w.IsBFloat16)
            return TensorPrimitives.Dot(w.FloatRow(row), x);
        fixed (float* px = x)
            return DotBFloat16(w.BFloat16Data + (long)row * w.Cols, px, w.Cols);
    }

    /// <summary>accumulator += scale · w[row], reading a bf16 row in place (no widened copy).</summary>
    public static void MultiplyAddRow(WeightMatrix w, int row, float scale, Span<float> accumulator)
    {
        if (accumulator.Length != w.Cols)
            throw new ArgumentException($"MultiplyAddRow '{w.Name}': accumulator has {accumulator.Length} floats, the row {w.Cols}.");
        if (!w.IsBFloat16)
        {
            TensorPrimitives.MultiplyAdd(w.FloatRow(row), scale, accumulator, accumulator);
            return;
        }
        ushort* wr = w.BFloat16Data + (long)row * w.Cols;
        int i = 0, n = w.Cols;
        fixed (float* acc = accumulator)
        {
            if (Vector256.IsHardwareAccelerated)
            {
                var s = Vector256.Create(scale);
                for (; i <= n - 16; i += 16)
                {
                    var (lo, hi) = Vector256.Widen(Vector256.Load(wr + i));
                    Vector256.Store(Vector256.ShiftLeft(lo, 16).AsSingle() * s + Vector256.Load(acc + i), acc + i);
                    Vector256.Store(Vector256.ShiftLeft(hi, 16).AsSingle() * s + Vector256.Load(acc + i + 8), acc + i + 8);
                }
            }
            for (; i < n; i++)
                acc[i] += Numerics.BFloat16.ToSingle(wr[i]) * scale;
        }
    }

    /// <summary>
    /// Σ bf16(w[i]) · x[i], widening 32 weights at a time (bf16 is the top half of a float). Four independent
    /// accumulators: with one or two, each step waits for the previous add, which caps a core below its share of memory
    /// bandwidth (~27 GB/s measured here with two).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float DotBFloat16(ushort* w, float* x, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            Vector256<float> acc0 = Vector256<float>.Zero, acc1 = Vector256<float>.Zero;
            Vector256<float> acc2 = Vector256<float>.Zero, acc3 = Vector256<float>.Zero;
            for (; i <= n - 32; i += 32)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Load(w + i));
                acc0 = MulAdd(Vector256.ShiftLeft(lo, 16).AsSingle(), Vector256.Load(x + i), acc0);
                acc1 = MulAdd(Vector256.ShiftLeft(hi, 16).AsSingle(), Vector256.Load(x + i + 8), acc1);
                (lo, hi) = Vector256.Widen(Vector256.Load(w + i + 16));
                acc2 = MulAdd(Vector256.ShiftLeft(lo, 16).AsSingle(), Vector256.Load(x + i + 16), acc2);
                acc3 = MulAdd(Vector256.ShiftLeft(hi, 16).AsSingle(), Vector256.Load(x + i + 24), acc3);
            }
            for (; i <= n - 16; i += 16)
            {
                var (lo, hi) = Vector256.Widen(Vector256.Load(w + i));
                acc0 = MulAdd(Vector256.ShiftLeft(lo, 16).AsSingle(), Vector256.Load(x + i), acc0);
                acc1 = MulAdd(Vector256.ShiftLeft(hi, 16).AsSingle(), Vector256.Load(x + i + 8), acc1);
            }
            sum = Vector256.Sum((acc0 + acc1) + (acc2 + acc3));
        }
        for (; i < n; i++)
            sum += Numerics.BFloat16.ToSingle(w[i]) * x[i];
        return sum;
    }
}
