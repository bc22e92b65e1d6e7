namespace KimiLinear.Tests.Cuda;

/// <summary>Element-wise comparison against a reference: NaN/∞ first, then per-element tolerance, reporting the first mismatches.</summary>
internal static class TensorAssert
{
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
}
