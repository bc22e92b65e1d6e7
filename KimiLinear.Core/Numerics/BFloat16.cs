namespace KimiLinear.Numerics;

/// <summary>
/// bfloat16 as raw <see cref="ushort"/> bits (the checkpoint's weight format): the top 16 bits of an IEEE float32.
/// Widening is exact; narrowing rounds to nearest, ties to even, as PyTorch's <c>.to(torch.bfloat16)</c> does.
/// </summary>
internal static class BFloat16
{
    /// <summary>The bits of a quiet NaN.</summary>
    public const ushort NaN = 0x7FC0;

    /// <summary>Widens bf16 bits to float32 (exact).</summary>
    public static float ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>Narrows a float32 to bf16 bits, rounding to nearest even; NaN stays a (quiet) NaN.</summary>
    public static ushort FromSingle(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value)) return (ushort)((bits >> 16) | 0x40); // keep the sign, force quiet: rounding could carry a NaN into ±∞
        uint roundingBias = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + roundingBias) >> 16);
    }

    /// <summary>Narrows every element of <paramref name="source"/> into <paramref name="destination"/>.</summary>
    public static void FromSingle(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length < source.Length)
            throw new ArgumentException($"destination holds {destination.Length} elements, source has {source.Length}", nameof(destination));
        for (int i = 0; i < source.Length; i++) destination[i] = FromSingle(source[i]);
    }

    /// <summary>Widens every element of <paramref name="source"/> into <paramref name="destination"/>.</summary>
    public static void ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length)
            throw new ArgumentException($"destination holds {destination.Length} elements, source has {source.Length}", nameof(destination));
        for (int i = 0; i < source.Length; i++) destination[i] = ToSingle(source[i]);
    }
}
