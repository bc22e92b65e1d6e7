using System.Reflection;
using System.Runtime.InteropServices;

namespace KimiLinear.Cuda.Interop;

/// <summary>
/// The CUDA driver API entry points this library uses, bound with source-generated P/Invoke. Names are the exported,
/// versioned symbols (<c>cuMemAlloc_v2</c>, …): the unversioned names in <c>cuda.h</c> are macros for these.
/// Every call goes through <see cref="CudaException.ThrowIfFailed"/>; nothing here checks results itself.
/// </summary>
/// <remarks>
/// The library is <c>libcuda.so.1</c> on Linux (not <c>libcuda.so</c>, which only the toolkit installs) and
/// <c>nvcuda.dll</c> on Windows; the resolver below maps the logical name to those.
/// </remarks>
internal static unsafe partial class CudaDriver
{
    private const string Library = "cuda";

    static CudaDriver() => NativeLibrary.SetDllImportResolver(typeof(CudaDriver).Assembly, Resolve);

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        if (name != Library) return 0;
        string file = OperatingSystem.IsWindows() ? "nvcuda.dll" : "libcuda.so.1";
        return NativeLibrary.TryLoad(file, assembly, path, out nint lib) ? lib : 0;
    }

    // Initialisation, version, errors
    [LibraryImport(Library)] internal static partial CuResult cuInit(uint flags);
    [LibraryImport(Library)] internal static partial CuResult cuDriverGetVersion(out int version);
    [LibraryImport(Library)] internal static partial CuResult cuGetErrorName(CuResult error, out byte* name);
    [LibraryImport(Library)] internal static partial CuResult cuGetErrorString(CuResult error, out byte* text);

    // Devices
    [LibraryImport(Library)] internal static partial CuResult cuDeviceGetCount(out int count);
    [LibraryImport(Library)] internal static partial CuResult cuDeviceGet(out int device, int ordinal);
    [LibraryImport(Library)] internal static partial CuResult cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(Library)] internal static partial CuResult cuDeviceGetAttribute(out int value, DeviceAttribute attribute, int device);
    [LibraryImport(Library)] internal static partial CuResult cuDeviceTotalMem_v2(out nuint bytes, int device);

    // Contexts: the library uses each device's primary context (the one the runtime API and cuBLAS use too).
    [LibraryImport(Library)] internal static partial CuResult cuDevicePrimaryCtxRetain(out nint context, int device);
    [LibraryImport(Library)] internal static partial CuResult cuDevicePrimaryCtxRelease_v2(int device);
    [LibraryImport(Library)] internal static partial CuResult cuCtxSetCurrent(nint context);
    [LibraryImport(Library)] internal static partial CuResult cuCtxGetCurrent(out nint context);
    [LibraryImport(Library)] internal static partial CuResult cuCtxSynchronize();

    // Profiler range: what `ncu --profile-from-start off` and Nsight Systems' capture range record.
    [LibraryImport(Library)] internal static partial CuResult cuProfilerStart();
    [LibraryImport(Library)] internal static partial CuResult cuProfilerStop();

    // Memory
    [LibraryImport(Library)] internal static partial CuResult cuMemGetInfo_v2(out nuint free, out nuint total);
    [LibraryImport(Library)] internal static partial CuResult cuMemAlloc_v2(out ulong pointer, nuint bytes);
    [LibraryImport(Library)] internal static partial CuResult cuMemFree_v2(ulong pointer);
    [LibraryImport(Library)] internal static partial CuResult cuMemHostAlloc(out nint pointer, nuint bytes, uint flags);
    [LibraryImport(Library)] internal static partial CuResult cuMemHostGetDevicePointer_v2(out ulong device, nint host, uint flags);
    [LibraryImport(Library)] internal static partial CuResult cuMemFreeHost(nint pointer);
    [LibraryImport(Library)] internal static partial CuResult cuMemcpyHtoDAsync_v2(ulong destination, void* source, nuint bytes, nint stream);
    [LibraryImport(Library)] internal static partial CuResult cuMemcpyDtoHAsync_v2(void* destination, ulong source, nuint bytes, nint stream);
    [LibraryImport(Library)] internal static partial CuResult cuMemcpyDtoDAsync_v2(ulong destination, ulong source, nuint bytes, nint stream);
    [LibraryImport(Library)] internal static partial CuResult cuMemcpy2DAsync_v2(Memcpy2D* copy, nint stream);
    [LibraryImport(Library)] internal static partial CuResult cuMemsetD8Async(ulong destination, byte value, nuint count, nint stream);
    [LibraryImport(Library)] internal static partial CuResult cuMemsetD16Async(ulong destination, ushort value, nuint count, nint stream);
    [LibraryImport(Library)] internal static partial CuResult cuMemsetD32Async(ulong destination, uint value, nuint count, nint stream);

    // Modules and launches
    [LibraryImport(Library)] internal static partial CuResult cuModuleLoadDataEx(out nint module, byte* image, uint optionCount, JitOption* options, void** optionValues);
    [LibraryImport(Library)] internal static partial CuResult cuModuleUnload(nint module);
    [LibraryImport(Library)] internal static partial CuResult cuModuleGetFunction(out nint function, nint module, byte* name);
    [LibraryImport(Library)] internal static partial CuResult cuFuncSetAttribute(nint function, FunctionAttribute attribute, int value);
    [LibraryImport(Library)]
    internal static partial CuResult cuLaunchKernel(nint function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, nint stream, void** parameters, void** extra);

    [LibraryImport(Library)] internal static partial CuResult cuLaunchKernelEx(LaunchConfig* config, nint function, void** parameters, void** extra);

    // Streams, events, graphs
    [LibraryImport(Library)] internal static partial CuResult cuStreamCreate(out nint stream, uint flags);
    [LibraryImport(Library)] internal static partial CuResult cuStreamDestroy_v2(nint stream);
    [LibraryImport(Library)] internal static partial CuResult cuStreamSynchronize(nint stream);
    [LibraryImport(Library)] internal static partial CuResult cuStreamWaitEvent(nint stream, nint @event, uint flags);
    [LibraryImport(Library)] internal static partial CuResult cuStreamBeginCapture_v2(nint stream, StreamCaptureMode mode);
    [LibraryImport(Library)] internal static partial CuResult cuStreamEndCapture(nint stream, out nint graph);
    [LibraryImport(Library)] internal static partial CuResult cuEventCreate(out nint @event, uint flags);
    [LibraryImport(Library)] internal static partial CuResult cuEventDestroy_v2(nint @event);
    [LibraryImport(Library)] internal static partial CuResult cuEventRecord(nint @event, nint stream);
    [LibraryImport(Library)] internal static partial CuResult cuEventSynchronize(nint @event);
    [LibraryImport(Library)] internal static partial CuResult cuEventElapsedTime(out float milliseconds, nint start, nint end);
    [LibraryImport(Library)] internal static partial CuResult cuGraphInstantiateWithFlags(out nint graphExec, nint graph, ulong flags);
    [LibraryImport(Library)] internal static partial CuResult cuGraphLaunch(nint graphExec, nint stream);
    [LibraryImport(Library)] internal static partial CuResult cuGraphExecDestroy(nint graphExec);
    [LibraryImport(Library)] internal static partial CuResult cuGraphDestroy(nint graph);

    // Tensor maps (the copy engine's descriptors of global arrays, sm_90+)
    [LibraryImport(Library)]
    internal static partial CuResult cuTensorMapEncodeTiled(TensorMap* tensorMap, TensorMapDataType dataType, uint rank, ulong globalAddress,
        ulong* globalDim, ulong* globalStrides, uint* boxDim, uint* elementStrides, TensorMapInterleave interleave, TensorMapSwizzle swizzle,
        TensorMapL2Promotion l2Promotion, TensorMapOobFill oobFill);
}

/// <summary><c>CUlaunchConfig</c>: launch geometry plus attributes, for <c>cuLaunchKernelEx</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct LaunchConfig
{
    public uint GridX, GridY, GridZ, BlockX, BlockY, BlockZ, SharedBytes;
    public nint Stream;
    public LaunchAttribute* Attributes;
    public uint AttributeCount;
}

/// <summary>
/// <c>CUlaunchAttribute</c>: an id, padding to 8 bytes, and a 64-byte value union: one int (<see cref="Value"/>) for
/// most attributes, three for the cluster dimension.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 72)]
internal struct LaunchAttribute
{
    /// <summary>CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION (value: x, y, z blocks per cluster).</summary>
    public const int ClusterDimension = 4;

    /// <summary>CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION.</summary>
    public const int ProgrammaticStreamSerialization = 6;

    [FieldOffset(0)] public int Id;
    [FieldOffset(8)] public int Value;
    [FieldOffset(8)] public uint ClusterX;
    [FieldOffset(12)] public uint ClusterY;
    [FieldOffset(16)] public uint ClusterZ;
}

/// <summary><c>CUDA_MEMCPY2D</c>: a pitched copy of Height rows of WidthInBytes (here device to device).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct Memcpy2D
{
    /// <summary>CU_MEMORYTYPE_DEVICE.</summary>
    public const int DeviceMemory = 2;

    public nuint SourceXInBytes, SourceY;
    public int SourceMemoryType;
    public nint SourceHost;
    public ulong SourceDevice;
    public nint SourceArray;
    public nuint SourcePitch;
    public nuint DestinationXInBytes, DestinationY;
    public int DestinationMemoryType;
    public nint DestinationHost;
    public ulong DestinationDevice;
    public nint DestinationArray;
    public nuint DestinationPitch;
    public nuint WidthInBytes, Height;
}

/// <summary><c>CUdevice_attribute</c> values used here.</summary>
internal enum DeviceAttribute
{
    MultiprocessorCount = 16,
    L2CacheSize = 38,
    ComputeCapabilityMajor = 75,
    ComputeCapabilityMinor = 76,
    MaxSharedMemoryPerBlockOptin = 97,
}

/// <summary><c>CUfunction_attribute</c> values used here.</summary>
internal enum FunctionAttribute
{
    MaxDynamicSharedSizeBytes = 8,
}

/// <summary><c>CUjit_option</c> values used here.</summary>
internal enum JitOption
{
    InfoLogBuffer = 3,
    InfoLogBufferSizeBytes = 4,
    ErrorLogBuffer = 5,
    ErrorLogBufferSizeBytes = 6,
}

/// <summary><c>CUstreamCaptureMode</c>.</summary>
internal enum StreamCaptureMode
{
    Global = 0,
    ThreadLocal = 1,
    Relaxed = 2,
}

/// <summary>
/// <c>CUtensorMap</c>: 128 opaque bytes (64-byte aligned where the driver writes it) describing a global array to the copy
/// engine (TMA); a kernel takes it by value as a <c>__grid_constant__</c> parameter.
/// </summary>
[StructLayout(LayoutKind.Sequential, Size = 128)]
internal unsafe struct TensorMap
{
    private fixed ulong _opaque[16];
}

/// <summary><c>CUtensorMapDataType</c> values used here.</summary>
internal enum TensorMapDataType
{
    BFloat16 = 9,
}

/// <summary><c>CUtensorMapInterleave</c>.</summary>
internal enum TensorMapInterleave
{
    None = 0,
}

/// <summary><c>CUtensorMapSwizzle</c> values used here.</summary>
internal enum TensorMapSwizzle
{
    Bytes128 = 3,
}

/// <summary><c>CUtensorMapL2promotion</c> values used here.</summary>
internal enum TensorMapL2Promotion
{
    Bytes256 = 3,
}

/// <summary><c>CUtensorMapFloatOOBfill</c>: elements outside the array land as zeros.</summary>
internal enum TensorMapOobFill
{
    Zeros = 0,
}
