using System.Runtime.CompilerServices;
using KimiLinear.Cuda.Interop;

namespace KimiLinear.Cuda.Memory;

/// <summary>
/// An owned page-locked host allocation of <see cref="Length"/> elements mapped into the device's address space
/// (<c>cuMemHostAlloc</c> with <c>CU_MEMHOSTALLOC_DEVICEMAP</c>): a kernel writes <see cref="Mapped"/> directly, and the
/// host reads the values once an event after that kernel has been reached. A value crosses without a copy operation
/// queued behind the kernel, which costs a decode step ~10 µs on an H100 (docs/performance.md).
/// </summary>
internal sealed unsafe class MappedHostBuffer<T> : IDisposable where T : unmanaged
{
    private const uint DeviceMap = 0x02; // CU_MEMHOSTALLOC_DEVICEMAP

    private readonly PinnedHostMemoryHandle _memory;

    /// <summary>Number of elements.</summary>
    public int Length { get; }

    /// <summary>The buffer as kernels address it.</summary>
    public DeviceSpan<T> Mapped { get; }

    public MappedHostBuffer(CudaContext context, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        Length = length;
        context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuMemHostAlloc(out nint pointer, (nuint)((long)length * Unsafe.SizeOf<T>()), DeviceMap), "cuMemHostAlloc");
        _memory = new PinnedHostMemoryHandle(context.Handle, pointer);
        try
        {
            CudaException.ThrowIfFailed(CudaDriver.cuMemHostGetDevicePointer_v2(out ulong device, pointer, 0), "cuMemHostGetDevicePointer_v2");
            Mapped = new DeviceSpan<T>(device, length);
        }
        catch
        {
            _memory.Dispose();
            throw;
        }
    }

    /// <summary>Element <paramref name="index"/>; read it only after the kernels that write it have been waited for.</summary>
    public T this[int index]
    {
        get
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)Length, nameof(index));
            ObjectDisposedException.ThrowIf(_memory.IsClosed, this);
            return ((T*)_memory.Pointer)[index];
        }
    }

    /// <inheritdoc />
    public void Dispose() => _memory.Dispose();
}
