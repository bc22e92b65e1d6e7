using KimiLinear.Cuda;
using KimiLinear.Cuda.Memory;
using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>
/// The GPU the tests share, opened once. Tests call <see cref="Require"/> first: without a driver or device they
/// report skipped with the reason (CI has no GPU); on the GPU machine they run.
/// </summary>
internal static class Gpu
{
    private static readonly Lazy<CudaContext?> Shared = new(() => CudaDevice.IsAvailable(out _) ? CudaContext.Create(0) : null);

    public static CudaContext Require()
    {
        if (!CudaDevice.IsAvailable(out string reason)) Assert.Skip("No GPU: " + reason);
        return Shared.Value!;
    }

    /// <summary>The bits of a quiet bf16 NaN, the poison for bf16 outputs.</summary>
    public const ushort Bf16NaN = 0x7FC0;

    /// <summary>Extra elements past every kernel output, poisoned with NaN and checked untouched afterwards.</summary>
    public const int Tail = 37;

    /// <summary>Uploads <paramref name="data"/> into a new buffer of the same length.</summary>
    public static DeviceBuffer<T> Upload<T>(this CudaContext context, CudaStream stream, T[] data) where T : unmanaged
    {
        DeviceBuffer<T> buffer = context.Allocate<T>(data.Length);
        buffer.CopyFrom(data, stream);
        return buffer;
    }

    /// <summary>A buffer of <paramref name="length"/> + <see cref="Tail"/> elements, all set to the bit pattern <paramref name="poison"/>.</summary>
    public static DeviceBuffer<T> Poisoned<T>(this CudaContext context, CudaStream stream, long length, T poison) where T : unmanaged
    {
        DeviceBuffer<T> buffer = context.Allocate<T>(length + Tail);
        buffer.Span.Fill(poison, stream);
        return buffer;
    }

    /// <summary>Asserts the <see cref="Tail"/> elements after the first <paramref name="length"/> still hold the poison bits.</summary>
    public static void AssertTailUntouched<T>(T[] all, long length, T poison) where T : unmanaged, IEquatable<T>
    {
        for (long i = length; i < all.Length; i++)
            Assert.True(all[i].Equals(poison), $"element {i} past the output's {length} was overwritten");
    }

    public static ushort[] RandomBf16(Random random, long count, float scale = 1f)
    {
        var data = new ushort[count];
        for (long i = 0; i < count; i++) data[i] = BFloat16.FromSingle(Normal(random) * scale);
        return data;
    }

    public static float[] RandomF32(Random random, long count, float scale = 1f)
    {
        var data = new float[count];
        for (long i = 0; i < count; i++) data[i] = Normal(random) * scale;
        return data;
    }

    public static float Normal(Random random) =>
        (float)(Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));

    public static float[] Widen(ushort[] bf16, long count)
    {
        var result = new float[count];
        BFloat16.ToSingle(bf16.AsSpan(0, checked((int)count)), result);
        return result;
    }
}
