using System.Runtime.CompilerServices;
using KimiLinear.Cuda.Interop;

namespace KimiLinear.Cuda.Memory;

/// <summary>
/// An owned device allocation of <see cref="Length"/> elements of <typeparamref name="T"/> (<c>cuMemAlloc</c>: 256-byte
/// aligned). Dispose it to give the memory back; a finalizer frees it too, but late.
/// </summary>
public sealed class DeviceBuffer<T> : IDisposable where T : unmanaged
{
    private readonly DeviceMemoryHandle _memory;

    /// <summary>The context the memory belongs to.</summary>
    public CudaContext Context { get; }

    /// <summary>Number of elements.</summary>
    public long Length { get; }

    /// <summary>Size in bytes.</summary>
    public long ByteLength => Length * Unsafe.SizeOf<T>();

    internal DeviceBuffer(CudaContext context, long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        Context = context;
        Length = length;
        long bytes = checked(length * Unsafe.SizeOf<T>());
        context.Bind();
        CuResult result = CudaDriver.cuMemAlloc_v2(out ulong pointer, (nuint)bytes);
        if (result == CuResult.OutOfMemory)
        {
            CudaDriver.cuMemGetInfo_v2(out nuint free, out _);
            throw new CudaOutOfMemoryException(bytes, (long)free, $"DeviceBuffer<{typeof(T).Name}>[{length:N0}]", "cuMemAlloc_v2");
        }
        CudaException.ThrowIfFailed(result, "cuMemAlloc_v2");
        _memory = new DeviceMemoryHandle(context.Handle, pointer);
    }

    /// <summary>The whole buffer as a span.</summary>
    public DeviceSpan<T> Span
    {
        get
        {
            ObjectDisposedException.ThrowIf(_memory.IsClosed, this);
            return new DeviceSpan<T>(_memory.Pointer, Length);
        }
    }

    /// <summary>The whole buffer as a span.</summary>
    public static implicit operator DeviceSpan<T>(DeviceBuffer<T> buffer) => buffer.Span;

    /// <summary>Elements <paramref name="start"/> .. <paramref name="start"/> + <paramref name="length"/> as a span.</summary>
    public DeviceSpan<T> Slice(long start, long length) => Span.Slice(start, length);

    /// <summary>Queues a copy of <paramref name="source"/> into the start of the buffer.</summary>
    public void CopyFrom(ReadOnlySpan<T> source, CudaStream stream) => Span.CopyFrom(source, stream);

    /// <summary>Copies the first <c>destination.Length</c> elements to the host after the stream's queued work.</summary>
    public void CopyTo(Span<T> destination, CudaStream stream) => Span.CopyTo(destination, stream);

    /// <summary>Copies the whole buffer to a new array (synchronous).</summary>
    public T[] ToArray(CudaStream stream) => Span.ToArray(stream);

    /// <inheritdoc />
    public void Dispose() => _memory.Dispose();
}
