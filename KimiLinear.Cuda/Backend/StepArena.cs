using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Backend;

/// <summary>
/// Device memory for the activations of one forward step: a stack allocator over blocks that grow on demand. A layer
/// marks the stack and rewinds it when done (<see cref="Mark"/>, <see cref="Rewind"/>), so a step needs one layer's
/// intermediates, not all of them. When a step needed more than one block, the next <see cref="Reset"/> replaces the
/// blocks by one of the peak size, so after the first steps of a shape every step rents the same addresses (what a
/// replayed graph needs).
/// </summary>
internal sealed class StepArena(CudaContext context) : IDisposable
{
    private const long MinimumBlockBytes = 64L << 20;

    private readonly List<DeviceArena> _blocks = [];
    private int _current;   // the block rentals come from; blocks after it are empty, kept for reuse
    private long _peak;     // most bytes in use at once since the last merge

    /// <summary>Changes whenever memory rented before may have moved: a recording of rented addresses is stale then.</summary>
    public int Generation { get; private set; }

    /// <summary>A position of the stack: <see cref="Rewind"/> to it frees everything rented after.</summary>
    public readonly record struct Position(int Block, long Used);

    /// <summary>Rents <paramref name="length"/> elements, valid until the stack is rewound past them or <see cref="Reset"/>.</summary>
    public DeviceSpan<T> Rent<T>(long length) where T : unmanaged
    {
        long bytes = checked(length * System.Runtime.CompilerServices.Unsafe.SizeOf<T>()) + DeviceArena.Alignment;
        while (_blocks.Count > 0 && _blocks[_current].Capacity - _blocks[_current].Used < bytes && _current + 1 < _blocks.Count)
            _current++; // a later block is empty (the stack was rewound before it)
        if (_blocks.Count == 0 || _blocks[_current].Capacity - _blocks[_current].Used < bytes)
        {
            // Grow by what is needed only (a long prompt's attention scratch is many GB; doubling could not fit beside it).
            _blocks.Add(new DeviceArena(context, Math.Max(bytes, MinimumBlockBytes)));
            _current = _blocks.Count - 1;
        }
        var span = _blocks[_current].Rent<T>(length);
        _peak = Math.Max(_peak, InUse);
        return span;
    }

    /// <summary>The top of the stack now.</summary>
    public Position Mark() => new(_current, _blocks.Count == 0 ? 0 : _blocks[_current].Used);

    /// <summary>Frees everything rented since <paramref name="position"/> (its spans become invalid).</summary>
    public void Rewind(Position position)
    {
        for (int b = _blocks.Count - 1; b > position.Block; b--)
            _blocks[b].Reset();
        _current = position.Block;
        if (_blocks.Count > 0)
            _blocks[_current].Rewind(position.Used);
    }

    /// <summary>Makes all memory available again; spans rented before are invalid. Call between steps.</summary>
    public void Reset()
    {
        if (_blocks.Count > 1)
        {
            // The stream runs this step's kernels after the last step's (one stream); cuMemFree waits for the device.
            foreach (var block in _blocks)
                block.Dispose();
            _blocks.Clear();
            // An eighth more than the peak: a long prompt's pieces need a little more each (their prefix grows).
            _blocks.Add(new DeviceArena(context, Math.Max(MinimumBlockBytes, _peak + _peak / 8)));
            Generation++;
        }
        foreach (var block in _blocks)
            block.Reset();
        _current = 0;
    }

    private long InUse
    {
        get
        {
            long used = 0;
            for (int b = 0; b <= _current; b++)
                used += _blocks[b].Used;
            return used;
        }
    }

    public void Dispose()
    {
        foreach (var block in _blocks)
            block.Dispose();
        _blocks.Clear();
    }
}
