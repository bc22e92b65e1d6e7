using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>
/// Plain, double-precision references for the CUDA kernels (same contracts as the <c>kernels/*.cu</c> headers).
/// For the matrix products they also return the magnitude Σ|w·x| per output, which scales the rounding tolerance.
/// </summary>
internal static class CpuReference
{
    public static float[] EmbeddingGather(ushort[] table, int[] ids, int d, int v)
    {
        var output = new float[ids.Length * d];
        for (int t = 0; t < ids.Length; t++)
            for (int i = 0; i < d; i++)
                output[t * d + i] = ids[t] >= 0 && ids[t] < v ? BFloat16.ToSingle(table[(long)ids[t] * d + i]) : float.NaN;
        return output;
    }

    /// <summary>Returns the normalised output; updates <paramref name="residual"/> in place (fp32, as the kernel does).</summary>
    public static double[] RmsNormResidual(float[] residual, ushort[]? x, ushort[] weight, int t, int d, float eps)
    {
        var output = new double[t * d];
        for (int r = 0; r < t; r++)
        {
            double sumsq = 0;
            for (int i = 0; i < d; i++)
            {
                if (x is not null) residual[r * d + i] += BFloat16.ToSingle(x[r * d + i]);
                sumsq += (double)residual[r * d + i] * residual[r * d + i];
            }
            double inv = 1 / Math.Sqrt(sumsq / d + eps);
            for (int i = 0; i < d; i++) output[r * d + i] = residual[r * d + i] * inv * BFloat16.ToSingle(weight[i]);
        }
        return output;
    }

    public static double[] SwiGlu(ushort[] gate, ushort[] up, int t, int f, int gateStride, int upStride)
    {
        var output = new double[t * f];
        for (int r = 0; r < t; r++)
            for (int i = 0; i < f; i++)
            {
                double g = BFloat16.ToSingle(gate[r * gateStride + i]);
                output[r * f + i] = g / (1 + Math.Exp(-g)) * BFloat16.ToSingle(up[r * upStride + i]);
            }
        return output;
    }

    /// <summary>C[M, N] = A[M, K] · B[N, K]ᵀ (GEMV is M = 1); <paramref name="magnitude"/> gets Σ_k |A·B| per output.</summary>
    public static double[] MatMulTransposed(ushort[] a, ushort[] b, int m, int n, int k, out double[] magnitude)
    {
        float[] af = Gpu.Widen(a, (long)m * k), bf = Gpu.Widen(b, (long)n * k);
        var c = new double[(long)m * n];
        var mag = new double[(long)m * n];
        Parallel.For(0, m, i =>
        {
            for (int j = 0; j < n; j++)
            {
                double sum = 0, abs = 0;
                for (int p = 0; p < k; p++)
                {
                    double prod = (double)af[(long)i * k + p] * bf[(long)j * k + p];
                    sum += prod;
                    abs += Math.Abs(prod);
                }
                c[(long)i * n + j] = sum;
                mag[(long)i * n + j] = abs;
            }
        });
        magnitude = mag;
        return c;
    }

    public static double[] Softmax(float[] logits, int t, int v)
    {
        var output = new double[t * v];
        for (int r = 0; r < t; r++)
        {
            double max = double.NegativeInfinity, sum = 0;
            for (int i = 0; i < v; i++) max = Math.Max(max, logits[r * v + i]);
            for (int i = 0; i < v; i++) sum += Math.Exp(logits[r * v + i] - max);
            for (int i = 0; i < v; i++) output[r * v + i] = Math.Exp(logits[r * v + i] - max) / sum;
        }
        return output;
    }

    /// <summary>First index of the maximum, NaN skipped, -1 when every value is NaN (torch.argmax's tie rule).</summary>
    public static int Argmax(ReadOnlySpan<float> row)
    {
        int best = -1;
        for (int i = 0; i < row.Length; i++)
            if (!float.IsNaN(row[i]) && (best < 0 || row[i] > row[best])) best = i;
        return best;
    }

    /// <summary>
    /// Top-k, temperature, top-p, then the draw <paramref name="u"/>, as <c>kimi_sample_topk_topp_f32</c> defines them.
    /// <paramref name="cutAmbiguous"/> / <paramref name="drawAmbiguous"/> are set when the top-p boundary / the draw lies
    /// within float32 rounding (1e-5 of the mass; the kernel's prefix sum of ≤ 1,024 terms errs by ~1e-6) of a
    /// decision, where the kernel may legitimately differ; tests then draw new logits / a new uniform.
    /// </summary>
    public static int SampleTopKTopP(ReadOnlySpan<float> row, int k, float temperature, float topP, float u,
        out bool cutAmbiguous, out bool drawAmbiguous)
    {
        const double Margin = 1e-5;
        float[] values = row.ToArray();
        int[] order = Enumerable.Range(0, values.Length).ToArray();
        Array.Sort(order, (x, y) => values[x] != values[y] ? values[y].CompareTo(values[x]) : x.CompareTo(y));
        var cum = new double[k];
        double invTemp = 1.0 / temperature;
        for (int i = 0; i < k; i++)
            cum[i] = (i > 0 ? cum[i - 1] : 0) + Math.Exp((values[order[i]] - values[order[0]]) * invTemp);
        double total = cum[k - 1], limit = topP * total;
        cutAmbiguous = drawAmbiguous = false;
        int kept = 1;
        for (int i = 1; i < k; i++)
        {
            if (Math.Abs(cum[i - 1] - limit) <= Margin * total) cutAmbiguous = true;
            if (cum[i - 1] < limit) kept = i + 1;
        }
        double r = u * cum[kept - 1];
        for (int i = 0; i < kept; i++)
        {
            if (Math.Abs(cum[i] - r) <= Margin * total) drawAmbiguous = true;
            if (cum[i] > r) return order[i];
        }
        return order[kept - 1];
    }
}
