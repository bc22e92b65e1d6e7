using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Backend;

/// <summary>
/// Device memory for the activations of one forward step: a bump allocator that grows. A step that outgrows the current
/// block continues in a new one; at the next <see cref="Reset"/> the blocks are merged into one of the peak size, so
/// after the first steps of a shape every step rents from one block at the same addresses (what a replayed graph needs).
/// </summary>
internal sealed class StepArena(CudaContext context) : IDisposable
{
    private const long MinimumBlockBytes = 64L << 20;

    private readonly List<DeviceArena> _blocks = [];
    private long _peak;

    /// <summary>Changes whenever memory rented before may have moved: a recording of rented addresses is stale then.</summary>
    public int Generation { get; private set; }

    /// <summary>Rents <paramref name="length"/> elements, valid until the next <see cref="Reset"/>.</summary>
    public DeviceSpan<T> Rent<T>(long length) where T : unmanaged
    {
        long bytes = checked(length * System.Runtime.CompilerServices.Unsafe.SizeOf<T>()) + DeviceArena.Alignment;
        if (_blocks.Count == 0 || _blocks[^1].Capacity - _blocks[^1].Used < bytes)
            _blocks.Add(new DeviceArena(context, Math.Max(bytes, Math.Max(MinimumBlockBytes, _blocks.Count == 0 ? 0 : 2 * _blocks[^1].Capacity))));
        return _blocks[^1].Rent<T>(length);
    }

    /// <summary>Makes all memory available again; spans rented before are invalid. Call when no queued work still reads them.</summary>
    public void Reset()
    {
        long used = _blocks.Sum(b => b.Used + DeviceArena.Alignment);
        _peak = Math.Max(_peak, used);
        if (_blocks.Count > 1)
        {
            // The stream is idle between steps' uses only after a sync, which Download before Reset provides; freeing
            // also waits for the device (cuMemFree synchronises).
            foreach (var block in _blocks)
                block.Dispose();
            _blocks.Clear();
            _blocks.Add(new DeviceArena(context, Math.Max(MinimumBlockBytes, _peak)));
            Generation++;
        }
        foreach (var block in _blocks)
            block.Reset();
    }

    /// <summary>Bytes of device memory the arena holds.</summary>
    public long Capacity => _blocks.Sum(b => b.Capacity);

    public void Dispose()
    {
        foreach (var block in _blocks)
            block.Dispose();
        _blocks.Clear();
    }
}
