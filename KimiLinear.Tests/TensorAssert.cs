using System.Globalization;
using System.Text;

namespace KimiLinear.Tests;

/// <summary>Comparisons of float tensors that say where and by how much they differ.</summary>
internal static class TensorAssert
{
    private const int MismatchesShown = 5;

    /// <summary>
    /// Fails unless <paramref name="actual"/> is finite everywhere and ‖actual − expected‖ / ‖expected‖ ≤
    /// <paramref name="relTol"/> (2-norms over the whole tensor; absolute error when expected is all zeros). The message
    /// names <paramref name="what"/>, the relative error, the largest absolute error and its index, and the first
    /// elements off by more than relTol × the RMS of expected.
    /// </summary>
    public static void Close(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, double relTol, string what)
    {
        if (actual.Length != expected.Length)
            Assert.Fail($"{what}: {actual.Length} elements, expected {expected.Length}.");
        for (int i = 0; i < expected.Length; i++)
            if (!float.IsFinite(expected[i]))
                Assert.Fail($"{what}: the reference itself is not finite at [{i}] ({Format(expected[i])}).");
        for (int i = 0; i < actual.Length; i++)
            if (!float.IsFinite(actual[i]))
                Assert.Fail($"{what}: [{i}] = {Format(actual[i])} (first non-finite element of {actual.Length}; expected {Format(expected[i])}).");

        double diff2 = 0, ref2 = 0, maxAbs = -1;
        int maxAt = 0;
        for (int i = 0; i < actual.Length; i++)
        {
            double d = (double)actual[i] - expected[i];
            diff2 += d * d;
            ref2 += (double)expected[i] * expected[i];
            if (Math.Abs(d) > maxAbs)
                (maxAbs, maxAt) = (Math.Abs(d), i);
        }
        double rel = ref2 > 0 ? Math.Sqrt(diff2 / ref2) : Math.Sqrt(diff2);
        if (rel <= relTol)
            return;

        double elementTol = relTol * Math.Sqrt(ref2 / Math.Max(1, expected.Length));
        var first = new StringBuilder();
        for (int i = 0, shown = 0; i < actual.Length && shown < MismatchesShown; i++)
        {
            if (Math.Abs((double)actual[i] - expected[i]) > elementTol)
            {
                first.Append(CultureInfo.InvariantCulture, $" [{i}] {Format(actual[i])} vs {Format(expected[i])};");
                shown++;
            }
        }
        Assert.Fail(string.Create(CultureInfo.InvariantCulture,
            $"{what}: relative error {rel:E3} > {relTol:E1}; max abs error {maxAbs:E3} at [{maxAt}] " +
            $"({Format(actual[maxAt])} vs {Format(expected[maxAt])}); first mismatches (actual vs expected):{first}"));
    }

    // Element-wise form, for kernels compared with a float64 CPU reference where a norm would hide a bad element
    // (poisoned tails, single wrong lanes).

    /// <summary>Passes when |actual[i] − expected[i]| ≤ tolerance(i) for every i, and no actual value is NaN or ∞ where expected is finite.</summary>
    public static void Close(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual, Func<int, double> tolerance, string what)
    {
        Assert.True(actual.Length >= expected.Length, $"{what}: {actual.Length} values, expected {expected.Length}");
        var mismatches = new List<string>();
        double worst = 0;
        int worstAt = -1;
        for (int i = 0; i < expected.Length; i++)
        {
            double e = expected[i], a = actual[i];
            if (!double.IsFinite(a) && double.IsFinite(e))
            {
                mismatches.Add($"[{i}] = {a}, expected {e}");
            }
            else
            {
                double error = Math.Abs(a - e);
                if (error > worst)
                {
                    worst = error;
                    worstAt = i;
                }
                if (error > tolerance(i)) mismatches.Add($"[{i}] = {a}, expected {e} (error {error:G3} > {tolerance(i):G3})");
            }
            if (mismatches.Count >= 8) break;
        }
        Assert.True(mismatches.Count == 0,
            $"{what}: {mismatches.Count}+ mismatches (largest error {worst:G3} at {worstAt}):{Environment.NewLine}{string.Join(Environment.NewLine, mismatches)}");
    }

    /// <summary>Relative tolerance <paramref name="relative"/> of the reference plus an absolute floor.</summary>
    public static void Close(ReadOnlySpan<double> expected, ReadOnlySpan<float> actual, double relative, double absolute, string what)
    {
        double[] e = expected.ToArray();
        Close(expected, actual, i => absolute + relative * Math.Abs(e[i]), what);
    }

    private static string Format(float x) => x.ToString("G9", CultureInfo.InvariantCulture);
}
