using KimiLinear.Backends.Cpu;
using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>
/// The host side of the KDA kernel tests: the parts of a KDA layer around the core (short conv + SiLU, gate, β, gated
/// RMSNorm) in double precision, with the core itself from the CPU backend's <see cref="KdaCore"/>. Values the kernels
/// store in the activation dtype are rounded to it here too (<paramref name="bf16"/> arguments).
/// </summary>
internal static class KdaReference
{
    /// <summary>x rounded to bf16 and back when <paramref name="bf16"/>, else x.</summary>
    public static float Stored(float x, bool bf16) => bf16 ? BFloat16.ToSingle(BFloat16.FromSingle(x)) : x;

    /// <summary>Every element through <see cref="Stored"/>, in place; returns <paramref name="x"/>.</summary>
    public static float[] Stored(float[] x, bool bf16)
    {
        for (int i = 0; i < x.Length; i++) x[i] = Stored(x[i], bf16);
        return x;
    }

    /// <summary>
    /// One token of the causal depthwise conv + SiLU for channels [C]: taps [C, 4] (tap 3 = current input), window
    /// [3, C] (oldest first) shifted to end with <paramref name="input"/>. Returns the outputs as stored.
    /// </summary>
    public static float[] ConvStep(float[] taps, float[] window, ReadOnlySpan<float> input, bool bf16)
    {
        int c = input.Length;
        var output = new float[c];
        for (int i = 0; i < c; i++)
        {
            double acc = (double)taps[4 * i] * window[i] + (double)taps[4 * i + 1] * window[c + i] + (double)taps[4 * i + 2] * window[2 * c + i]
                         + (double)taps[4 * i + 3] * input[i];
            output[i] = Stored((float)(acc / (1 + Math.Exp(-acc))), bf16);
            window[i] = window[c + i];
            window[c + i] = window[2 * c + i];
            window[2 * c + i] = input[i];
        }
        return output;
    }

    /// <summary>g [H·K] = −exp(A_log[h])·softplus(f + dt_bias), softplus linear above 20 (PyTorch's threshold).</summary>
    public static float[] Gate(ReadOnlySpan<float> f, float[] aLog, float[] dtBias, int keyDim)
    {
        var g = new float[f.Length];
        for (int c = 0; c < f.Length; c++)
        {
            double z = (double)f[c] + dtBias[c];
            g[c] = (float)(-Math.Exp(aLog[c / keyDim]) * (z > 20 ? z : Math.Log(1 + Math.Exp(z))));
        }
        return g;
    }

    public static float Sigmoid(float x) => (float)(1 / (1 + Math.Exp(-(double)x)));

    /// <summary>y [H·V] = o·rsqrt(mean_j o² + eps)·w[j]·σ(z) per head, as the decode step fuses it.</summary>
    public static float[] GatedRmsNorm(ReadOnlySpan<float> o, ReadOnlySpan<float> z, float[] weight, float eps)
    {
        int v = weight.Length;
        var y = new float[o.Length];
        for (int h = 0; h < o.Length / v; h++)
        {
            double sumSquares = 0;
            for (int j = 0; j < v; j++) sumSquares += (double)o[h * v + j] * o[h * v + j];
            double scale = 1 / Math.Sqrt(sumSquares / v + eps);
            for (int j = 0; j < v; j++) y[h * v + j] = (float)(o[h * v + j] * scale * weight[j] / (1 + Math.Exp(-(double)z[h * v + j])));
        }
        return y;
    }

    /// <summary>
    /// The KDA core over packed sequences of <paramref name="lengths"/>: q, k [T, H, K] raw, v [T, H, V], g [T, H, K],
    /// β [T, H]; <paramref name="state"/> [N, H, K, V] updated in place; returns o [T, H, V]. Token by token
    /// (<see cref="KdaCore.Recurrent"/>), one sequence at a time.
    /// </summary>
    public static float[] Core(int[] lengths, int heads, int keyDim, int valueDim, float[] q, float[] k, float[] v, float[] g, float[] beta, float[] state)
    {
        int hk = heads * keyDim, hv = heads * valueDim, hs = heads * keyDim * valueDim;
        var o = new float[lengths.Sum() * hv];
        int t0 = 0;
        for (int n = 0; n < lengths.Length; n++)
        {
            int len = lengths[n];
            KdaCore.Recurrent(q.AsSpan(t0 * hk, len * hk), k.AsSpan(t0 * hk, len * hk), v.AsSpan(t0 * hv, len * hv), g.AsSpan(t0 * hk, len * hk),
                beta.AsSpan(t0 * heads, len * heads), state.AsSpan(n * hs, hs), o.AsSpan(t0 * hv, len * hv), len, heads, keyDim, valueDim);
            t0 += len;
        }
        return o;
    }
}
