using System.Text;
using KimiLinear.Cuda.Interop;

namespace KimiLinear.Cuda;

/// <summary>What the driver reports about one GPU.</summary>
/// <param name="Index">Device ordinal.</param>
/// <param name="Name">Marketing name, e.g. "NVIDIA H100 80GB HBM3".</param>
/// <param name="ComputeCapability">Major and minor compute capability, e.g. (9, 0) for Hopper.</param>
/// <param name="TotalMemoryBytes">Device memory in bytes.</param>
/// <param name="MultiprocessorCount">Streaming multiprocessors.</param>
/// <param name="L2CacheBytes">L2 cache size in bytes.</param>
/// <param name="MaxSharedMemoryPerBlock">Shared memory a block may opt in to, in bytes.</param>
public sealed record CudaDeviceInfo(int Index, string Name, (int Major, int Minor) ComputeCapability, long TotalMemoryBytes,
    int MultiprocessorCount, int L2CacheBytes, int MaxSharedMemoryPerBlock)
{
    /// <inheritdoc />
    public override string ToString() =>
        $"{Name} (device {Index}, compute {ComputeCapability.Major}.{ComputeCapability.Minor}, {TotalMemoryBytes / (1L << 20):N0} MiB, {MultiprocessorCount} SMs)";
}

/// <summary>Device discovery. Every member initialises the driver on first use and fails with a plain message when there is none.</summary>
public static class CudaDevice
{
    private static readonly Lazy<CudaUnavailableException?> InitFailure = new(Initialize);

    /// <summary>True when the driver loads and reports at least one device; otherwise <paramref name="reason"/> says why not.</summary>
    public static bool IsAvailable(out string reason)
    {
        CudaUnavailableException? failure = InitFailure.Value;
        reason = failure?.Message ?? "";
        return failure is null;
    }

    /// <summary>The number of CUDA devices.</summary>
    /// <exception cref="CudaUnavailableException">No driver or no device.</exception>
    public static int Count
    {
        get
        {
            EnsureInitialized();
            CudaException.ThrowIfFailed(CudaDriver.cuDeviceGetCount(out int count));
            return count;
        }
    }

    /// <summary>The driver's CUDA version as major × 1000 + minor × 10 (e.g. 13000 for CUDA 13.0).</summary>
    public static int DriverVersion
    {
        get
        {
            EnsureInitialized();
            CudaException.ThrowIfFailed(CudaDriver.cuDriverGetVersion(out int version));
            return version;
        }
    }

    /// <summary>Describes device <paramref name="index"/>.</summary>
    /// <exception cref="CudaUnavailableException">No driver, no device, or <paramref name="index"/> out of range.</exception>
    public static unsafe CudaDeviceInfo Get(int index)
    {
        int device = Resolve(index);
        byte* name = stackalloc byte[256];
        CudaException.ThrowIfFailed(CudaDriver.cuDeviceGetName(name, 256, device));
        CudaException.ThrowIfFailed(CudaDriver.cuDeviceTotalMem_v2(out nuint total, device));
        return new CudaDeviceInfo(index, Encoding.UTF8.GetString(new ReadOnlySpan<byte>(name, 256)).TrimEnd('\0'),
            (Attribute(device, DeviceAttribute.ComputeCapabilityMajor), Attribute(device, DeviceAttribute.ComputeCapabilityMinor)),
            (long)total, Attribute(device, DeviceAttribute.MultiprocessorCount), Attribute(device, DeviceAttribute.L2CacheSize),
            Attribute(device, DeviceAttribute.MaxSharedMemoryPerBlockOptin));
    }

    /// <summary>Maps an index to the driver's device handle, checking the range.</summary>
    internal static int Resolve(int index)
    {
        int count = Count;
        if ((uint)index >= (uint)count)
            throw new CudaUnavailableException(
                $"CUDA device index {index} is out of range: the driver reports {count} device(s) (valid indices 0..{count - 1}).",
                CuResult.InvalidDevice, "cuDeviceGet");
        CudaException.ThrowIfFailed(CudaDriver.cuDeviceGet(out int device, index));
        return device;
    }

    internal static void EnsureInitialized()
    {
        if (InitFailure.Value is { } failure) throw failure;
    }

    private static int Attribute(int device, DeviceAttribute attribute)
    {
        CudaException.ThrowIfFailed(CudaDriver.cuDeviceGetAttribute(out int value, attribute, device));
        return value;
    }

    private static CudaUnavailableException? Initialize()
    {
        CuResult result;
        try
        {
            result = CudaDriver.cuInit(0);
        }
        catch (DllNotFoundException)
        {
            string library = OperatingSystem.IsWindows() ? "nvcuda.dll" : "libcuda.so.1";
            return new CudaUnavailableException(
                $"No CUDA driver: {library} could not be loaded. Install the NVIDIA driver (see README, GPU requirements) or use the CPU backend.",
                CuResult.NotInitialized, "load " + library);
        }
        if (result == CuResult.Success)
        {
            if (CudaDriver.cuDeviceGetCount(out int count) == CuResult.Success && count > 0) return null;
            result = CuResult.NoDevice;
        }
        return new CudaUnavailableException(
            $"No usable CUDA device: cuInit returned {CudaException.ErrorNameOf(result)}. The driver is installed, but no GPU is visible to this process.",
            result, "cuInit(0)");
    }
}
