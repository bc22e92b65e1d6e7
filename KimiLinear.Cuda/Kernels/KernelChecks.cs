using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Kernels;

/// <summary>Argument checks shared by the kernel wrappers: a kernel must never be launched over too-short buffers.</summary>
internal static class KernelChecks
{
    public static void Positive(int value, string name)
    {
        if (value <= 0) throw new ArgumentOutOfRangeException(name, value, $"{name} must be positive");
    }

    public static void Holds<T>(DeviceSpan<T> span, long needed, string name) where T : unmanaged
    {
        if (span.Length < needed)
            throw new ArgumentException($"{name} holds {span.Length:N0} elements but the kernel needs {needed:N0}", name);
    }

    /// <summary><see cref="Holds"/>, and the span starts 16-byte aligned (for kernels that move 16-byte vectors).</summary>
    public static void HoldsAligned<T>(DeviceSpan<T> span, long needed, string name) where T : unmanaged
    {
        Holds(span, needed, name);
        if (span.Pointer % 16 != 0)
            throw new ArgumentException($"{name} must start 16-byte aligned, but starts at device address 0x{span.Pointer:x}", name);
    }
}
