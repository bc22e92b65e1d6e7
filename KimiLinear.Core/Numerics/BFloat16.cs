using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace KimiLinear.Numerics;

/// <summary>
/// bfloat16 ↔ float. A bf16 value is the upper 16 bits of a float, so widening is a shift; narrowing rounds to nearest
/// even, as PyTorch does, and keeps NaN a NaN.
/// </summary>
public static class BFloat16
{
    /// <summary>Widens one bf16 bit pattern.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>Rounds a float to the nearest bf16 (ties to even).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FromSingle(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
            return (ushort)((bits >> 16) | 0x40); // quiet NaN, sign kept
        uint roundingBias = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + roundingBias) >> 16);
    }

    /// <summary>Widens <paramref name="source"/> into <paramref name="destination"/> (same length).</summary>
    public static void ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length)
            throw new ArgumentException($"destination has {destination.Length} elements; {source.Length} needed.", nameof(destination));
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            ref ushort src = ref System.Runtime.InteropServices.MemoryMarshal.GetReference(source);
            ref float dst = ref System.Runtime.InteropServices.MemoryMarshal.GetReference(destination);
            for (; i <= source.Length - 16; i += 16)
            {
                var packed = Vector256.LoadUnsafe(ref src, (nuint)i);
                var (lo, hi) = Vector256.Widen(packed);
                Vector256.ShiftLeft(lo, 16).AsSingle().StoreUnsafe(ref dst, (nuint)i);
                Vector256.ShiftLeft(hi, 16).AsSingle().StoreUnsafe(ref dst, (nuint)(i + 8));
            }
        }
        for (; i < source.Length; i++)
            destination[i] = ToSingle(source[i]);
    }

    /// <summary>Rounds <paramref name="source"/> into <paramref name="destination"/> (same length).</summary>
    public static void FromSingle(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length < source.Length)
            throw new ArgumentException($"destination has {destination.Length} elements; {source.Length} needed.", nameof(destination));
        for (int i = 0; i < source.Length; i++)
            destination[i] = FromSingle(source[i]);
    }
}
