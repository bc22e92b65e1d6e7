using System.Runtime.CompilerServices;

namespace KimiLinear.Cuda.Memory;

/// <summary>
/// A bump allocator over one device allocation, for activations that live for one forward step: rent spans while
/// building the step, <see cref="Reset"/> before the next. Nothing is freed individually, so renting costs no driver
/// call and the addresses repeat from step to step (which a captured graph needs).
/// </summary>
public sealed class DeviceArena : IDisposable
{
    /// <summary>Every rented span starts on this boundary (bytes): enough for 16-byte vector loads and cp.async.</summary>
    public const int Alignment = 256;

    private readonly DeviceBuffer<byte> _storage;

    /// <summary>Capacity in bytes.</summary>
    public long Capacity => _storage.Length;

    /// <summary>Bytes rented since the last <see cref="Reset"/>, alignment padding included.</summary>
    public long Used { get; private set; }

    /// <summary>Reserves <paramref name="capacityBytes"/> of device memory for the arena.</summary>
    public DeviceArena(CudaContext context, long capacityBytes) => _storage = context.Allocate<byte>(capacityBytes);

    /// <summary>Rents <paramref name="length"/> elements, valid until the next <see cref="Reset"/>.</summary>
    /// <exception cref="Interop.CudaOutOfMemoryException">The arena has too little room left.</exception>
    public DeviceSpan<T> Rent<T>(long length) where T : unmanaged
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        long bytes = checked(length * Unsafe.SizeOf<T>());
        long start = (Used + Alignment - 1) / Alignment * Alignment;
        if (start + bytes > Capacity)
            throw new Interop.CudaOutOfMemoryException(bytes, Math.Max(0, Capacity - start), $"DeviceArena.Rent<{typeof(T).Name}>({length:N0})", "DeviceArena.Rent");
        Used = start + bytes;
        return new DeviceSpan<T>(_storage.Span.Pointer + (ulong)start, length);
    }

    /// <summary>Makes the whole capacity available again. Spans rented before are then invalid.</summary>
    public void Reset() => Used = 0;

    /// <summary>Frees what was rented after <see cref="Used"/> was <paramref name="used"/> (a stack discipline).</summary>
    public void Rewind(long used)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(used);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(used, Used);
        Used = used;
    }

    /// <inheritdoc />
    public void Dispose() => _storage.Dispose();
}
