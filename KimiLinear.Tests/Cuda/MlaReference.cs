using KimiLinear.Cuda.Kernels;
using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>
/// Double-precision references for the MLA kernels (kernels/mla.cu), computed from the same bf16 values the kernels
/// read: the absorbed decode steps and the expanded causal prefill. Query t sits at position start + t and sees cache
/// rows [0, start + t].
/// </summary>
internal static class MlaReference
{
    /// <summary>q_lat [T, H, R + P]: W_UKᵀ·q_nope, then q_rope as it is.</summary>
    public static float[] AbsorbQuery(float[] q, ushort[] kvB, MlaShape shape, int t)
    {
        int d = shape.LatentWidth, qk = shape.QueryHeadDim, perHead = shape.NopeDim + shape.ValueDim;
        var result = new float[t * shape.Heads * d];
        Parallel.For(0, shape.Heads, h =>
        {
            for (int i = 0; i < t; i++)
            {
                for (int r = 0; r < shape.Rank; r++)
                {
                    double sum = 0;
                    for (int n = 0; n < shape.NopeDim; n++)
                        sum += (double)q[i * shape.QueryWidth + h * qk + n] * BFloat16.ToSingle(kvB[(long)(h * perHead + n) * shape.Rank + r]);
                    result[(i * shape.Heads + h) * d + r] = (float)sum;
                }
                for (int p = 0; p < shape.RopeDim; p++)
                    result[(i * shape.Heads + h) * d + shape.Rank + p] = q[i * shape.QueryWidth + h * qk + shape.NopeDim + p];
            }
        });
        return result;
    }

    /// <summary>o [T, H·V]: W_UV·outLatent per head.</summary>
    public static float[] AbsorbOutput(float[] outLatent, ushort[] kvB, MlaShape shape, int t)
    {
        int perHead = shape.NopeDim + shape.ValueDim;
        var result = new float[t * shape.OutputWidth];
        Parallel.For(0, shape.Heads, h =>
        {
            for (int i = 0; i < t; i++)
                for (int v = 0; v < shape.ValueDim; v++)
                {
                    double sum = 0;
                    for (int r = 0; r < shape.Rank; r++)
                        sum += (double)BFloat16.ToSingle(kvB[(long)(h * perHead + shape.NopeDim + v) * shape.Rank + r]) * outLatent[(i * shape.Heads + h) * shape.Rank + r];
                    result[i * shape.OutputWidth + h * shape.ValueDim + v] = (float)sum;
                }
        });
        return result;
    }

    /// <summary>
    /// outLatent [T, H, R] from the decode slices' outputs [T, S, H, R] and (max in log2 units, sum) [T, S, H, 2]:
    /// Σ_s 2^(m_s − M)·O_s / Σ_s 2^(m_s − M)·l_s, empty slices (max −∞) left out.
    /// </summary>
    public static float[] MergeSlices(float[] outputs, float[] stats, int splits, MlaShape shape, int t)
    {
        var result = new float[t * shape.Heads * shape.Rank];
        Parallel.For(0, t * shape.Heads, work =>
        {
            int i = work / shape.Heads, h = work % shape.Heads;
            int Slice(int s) => (i * splits + s) * shape.Heads + h;
            double top = double.NegativeInfinity;
            for (int s = 0; s < splits; s++) top = Math.Max(top, stats[2 * Slice(s)]);
            double denominator = 0;
            var merged = new double[shape.Rank];
            for (int s = 0; s < splits; s++)
            {
                if (float.IsNegativeInfinity(stats[2 * Slice(s)])) continue;
                double weight = Math.Pow(2, stats[2 * Slice(s)] - top);
                denominator += weight * stats[2 * Slice(s) + 1];
                for (int r = 0; r < shape.Rank; r++) merged[r] += weight * outputs[(long)Slice(s) * shape.Rank + r];
            }
            for (int r = 0; r < shape.Rank; r++) result[work * shape.Rank + r] = (float)(merged[r] / denominator);
        });
        return result;
    }

    /// <summary>outLatent [T, H, R]: softmax over the visible rows of scale·(q_lat·row), mixing row[:R].</summary>
    public static float[] Decode(float[] queryLatent, ushort[] latent, int start, int t, MlaShape shape, float scale)
    {
        int d = shape.LatentWidth;
        var result = new float[t * shape.Heads * shape.Rank];
        Parallel.For(0, t * shape.Heads, work =>
        {
            int i = work / shape.Heads, h = work % shape.Heads, visible = start + i + 1;
            var scores = new double[visible];
            for (int s = 0; s < visible; s++)
            {
                double dot = 0;
                for (int c = 0; c < d; c++) dot += (double)queryLatent[work * d + c] * BFloat16.ToSingle(latent[(long)s * d + c]);
                scores[s] = scale * dot;
            }
            double[] p = Softmax(scores);
            var mixed = new double[shape.Rank];
            for (int s = 0; s < visible; s++)
                for (int r = 0; r < shape.Rank; r++) mixed[r] += p[s] * BFloat16.ToSingle(latent[(long)s * d + r]);
            for (int r = 0; r < shape.Rank; r++) result[work * shape.Rank + r] = (float)mixed[r];
        });
        return result;
    }

    /// <summary>o [T, H·V]: causal attention with key = (keysValues nope part | k_pe) and value = keysValues value part.</summary>
    public static float[] Prefill(ushort[] q, ushort[] keysValues, ushort[] latent, int start, int t, MlaShape shape, float scale)
    {
        int qk = shape.QueryHeadDim, perHead = shape.NopeDim + shape.ValueDim;
        var result = new float[t * shape.OutputWidth];
        Parallel.For(0, t * shape.Heads, work =>
        {
            int i = work / shape.Heads, h = work % shape.Heads, visible = start + i + 1;
            var scores = new double[visible];
            for (int s = 0; s < visible; s++)
            {
                double dot = 0;
                for (int n = 0; n < shape.NopeDim; n++)
                    dot += (double)BFloat16.ToSingle(q[i * shape.QueryWidth + h * qk + n]) * BFloat16.ToSingle(keysValues[(long)s * shape.KeyValueWidth + h * perHead + n]);
                for (int p = 0; p < shape.RopeDim; p++)
                    dot += (double)BFloat16.ToSingle(q[i * shape.QueryWidth + h * qk + shape.NopeDim + p]) * BFloat16.ToSingle(latent[(long)s * shape.LatentWidth + shape.Rank + p]);
                scores[s] = scale * dot;
            }
            double[] weights = Softmax(scores);
            for (int v = 0; v < shape.ValueDim; v++)
            {
                double sum = 0;
                for (int s = 0; s < visible; s++)
                    sum += weights[s] * BFloat16.ToSingle(keysValues[(long)s * shape.KeyValueWidth + h * perHead + shape.NopeDim + v]);
                result[i * shape.OutputWidth + h * shape.ValueDim + v] = (float)sum;
            }
        });
        return result;
    }

    private static double[] Softmax(double[] scores)
    {
        double max = scores.Max(), sum = 0;
        var p = new double[scores.Length];
        for (int s = 0; s < scores.Length; s++) sum += p[s] = Math.Exp(scores[s] - max);
        for (int s = 0; s < scores.Length; s++) p[s] /= sum;
        return p;
    }
}
