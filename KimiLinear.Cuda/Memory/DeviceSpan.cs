using System.Runtime.CompilerServices;
using KimiLinear.Cuda.Interop;

namespace KimiLinear.Cuda.Memory;

/// <summary>
/// A non-owning view of <see cref="Length"/> elements of device memory: what kernels take, so that whole buffers,
/// slices of them and arena allocations are passed alike. Valid while the memory it views is.
/// </summary>
/// <remarks>
/// Copies are queued on a stream. From or to ordinary (pageable) managed memory the driver stages them, so the host
/// span may be reused as soon as the call returns, and a copy to the host has finished when the call returns.
/// </remarks>
public readonly struct DeviceSpan<T> where T : unmanaged
{
    /// <summary>Device address of the first element.</summary>
    public ulong Pointer { get; }

    /// <summary>Number of elements.</summary>
    public long Length { get; }

    /// <summary>Size in bytes.</summary>
    public long ByteLength => Length * Unsafe.SizeOf<T>();

    internal DeviceSpan(ulong pointer, long length)
    {
        Pointer = pointer;
        Length = length;
    }

    /// <summary>The <paramref name="length"/> elements starting at <paramref name="start"/>.</summary>
    public DeviceSpan<T> Slice(long start, long length)
    {
        if (start < 0 || length < 0 || start + length > Length)
            throw new ArgumentOutOfRangeException(nameof(start), $"slice [{start}, {start + length}) is outside the span's {Length} elements");
        return new DeviceSpan<T>(Pointer + (ulong)(start * Unsafe.SizeOf<T>()), length);
    }

    /// <summary>The elements from <paramref name="start"/> to the end.</summary>
    public DeviceSpan<T> Slice(long start) => Slice(start, Length - start);

    /// <summary>Queues a copy of <paramref name="source"/> into the start of this span.</summary>
    public unsafe void CopyFrom(ReadOnlySpan<T> source, CudaStream stream)
    {
        CheckFits(source.Length, nameof(source));
        if (source.IsEmpty) return;
        stream.Context.Bind();
        fixed (T* p = source)
            CudaException.ThrowIfFailed(CudaDriver.cuMemcpyHtoDAsync_v2(Pointer, p, (nuint)((long)source.Length * Unsafe.SizeOf<T>()), stream.Raw));
    }

    /// <summary>Copies the first <c>destination.Length</c> elements into <paramref name="destination"/>, after the work queued on <paramref name="stream"/>.</summary>
    public unsafe void CopyTo(Span<T> destination, CudaStream stream)
    {
        CheckFits(destination.Length, nameof(destination));
        if (destination.IsEmpty) return;
        stream.Context.Bind();
        fixed (T* p = destination)
            CudaException.ThrowIfFailed(CudaDriver.cuMemcpyDtoHAsync_v2(p, Pointer, (nuint)((long)destination.Length * Unsafe.SizeOf<T>()), stream.Raw));
        // Into pageable memory the driver returns only once the copy is done; into pinned memory it would not, so wait.
        stream.Synchronize();
    }

    /// <summary>Queues a device-to-device copy of <paramref name="source"/> into the start of this span.</summary>
    public void CopyFrom(DeviceSpan<T> source, CudaStream stream)
    {
        CheckFits(source.Length, nameof(source));
        if (source.Length == 0) return;
        stream.Context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuMemcpyDtoDAsync_v2(Pointer, source.Pointer, (nuint)source.ByteLength, stream.Raw));
    }

    /// <summary>
    /// Queues a device-to-device copy of a block of <paramref name="width"/> columns of a row-major matrix into the start
    /// of this span, densely: row r of the block (<paramref name="source"/> + r·<paramref name="sourcePitch"/>) lands
    /// at r·<paramref name="width"/>. Pitch and width count elements.
    /// </summary>
    public unsafe void CopyColumnsFrom(DeviceSpan<T> source, long sourcePitch, long width, long rows, CudaStream stream)
    {
        if (width <= 0 || rows <= 0 || sourcePitch < width || source.Length < (rows - 1) * sourcePitch + width)
            throw new ArgumentException($"CopyColumnsFrom: {rows} rows of {width} at pitch {sourcePitch} do not lie inside the source's {source.Length} elements.", nameof(source));
        CheckFits(rows * width, nameof(source));
        long size = Unsafe.SizeOf<T>();
        var copy = new Memcpy2D
        {
            SourceMemoryType = Memcpy2D.DeviceMemory, SourceDevice = source.Pointer, SourcePitch = (nuint)(sourcePitch * size),
            DestinationMemoryType = Memcpy2D.DeviceMemory, DestinationDevice = Pointer, DestinationPitch = (nuint)(width * size),
            WidthInBytes = (nuint)(width * size), Height = (nuint)rows,
        };
        stream.Context.Bind();
        CudaException.ThrowIfFailed(CudaDriver.cuMemcpy2DAsync_v2(&copy, stream.Raw));
    }

    /// <summary>Copies the whole span to a new array (synchronous).</summary>
    public T[] ToArray(CudaStream stream)
    {
        var result = new T[checked((int)Length)];
        CopyTo(result, stream);
        return result;
    }

    /// <summary>
    /// Queues a fill of every element with the bit pattern <paramref name="value"/> (elements of 1, 2 or 4 bytes):
    /// e.g. poisoning an output with NaN before a kernel runs.
    /// </summary>
    public void Fill(T value, CudaStream stream)
    {
        if (Length == 0) return;
        stream.Context.Bind();
        switch (Unsafe.SizeOf<T>())
        {
            case 1: CudaException.ThrowIfFailed(CudaDriver.cuMemsetD8Async(Pointer, Unsafe.As<T, byte>(ref value), (nuint)Length, stream.Raw)); break;
            case 2: CudaException.ThrowIfFailed(CudaDriver.cuMemsetD16Async(Pointer, Unsafe.As<T, ushort>(ref value), (nuint)Length, stream.Raw)); break;
            case 4: CudaException.ThrowIfFailed(CudaDriver.cuMemsetD32Async(Pointer, Unsafe.As<T, uint>(ref value), (nuint)Length, stream.Raw)); break;
            default: throw new NotSupportedException($"Fill supports elements of 1, 2 or 4 bytes, not {typeof(T).Name} ({Unsafe.SizeOf<T>()} bytes)");
        }
    }

    private void CheckFits(long count, string parameter)
    {
        if (count > Length)
            throw new ArgumentException($"{count} elements do not fit the device span's {Length}", parameter);
    }
}
