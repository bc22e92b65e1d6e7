using System.Runtime.CompilerServices;
using KimiLinear.Cuda.Interop;

namespace KimiLinear.Cuda.Memory;

/// <summary>
/// An owned page-locked host allocation of <see cref="Length"/> elements (<c>cuMemAllocHost</c>): a copy from the device
/// into it is queued on a stream and the host goes on, reading the values once an event after the copy has been reached.
/// </summary>
internal sealed unsafe class PinnedHostBuffer<T> : IDisposable where T : unmanaged
{
    private readonly PinnedHostMemoryHandle _memory;

    /// <summary>Number of elements.</summary>
    public int Length { get; }

    public PinnedHostBuffer(CudaContext context, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        Length = length;
        context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuMemAllocHost_v2(out nint pointer, (nuint)((long)length * Unsafe.SizeOf<T>())), "cuMemAllocHost_v2");
        _memory = new PinnedHostMemoryHandle(context.Handle, pointer);
    }

    /// <summary>Element <paramref name="index"/>; read it only after the copies that write it have been waited for.</summary>
    public T this[int index]
    {
        get
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)Length, nameof(index));
            ObjectDisposedException.ThrowIf(_memory.IsClosed, this);
            return ((T*)_memory.Pointer)[index];
        }
    }

    /// <summary>Queues a copy of <paramref name="source"/> (one element) into element <paramref name="index"/>; returns at once.</summary>
    public void CopyFrom(DeviceSpan<T> source, int index, CudaStream stream)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)Length, nameof(index));
        ObjectDisposedException.ThrowIf(_memory.IsClosed, this);
        if (source.Length != 1)
            throw new ArgumentException($"CopyFrom takes one element, not {source.Length}.", nameof(source));
        stream.Context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuMemcpyDtoHAsync_v2((T*)_memory.Pointer + index, source.Pointer, (nuint)Unsafe.SizeOf<T>(), stream.Raw));
    }

    /// <inheritdoc />
    public void Dispose() => _memory.Dispose();
}
