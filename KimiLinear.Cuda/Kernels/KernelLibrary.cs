using System.Text;
using System.Text.RegularExpressions;
using KimiLinear.Cuda.Interop;

namespace KimiLinear.Cuda.Kernels;

/// <summary>Launch geometry (grid or block extent).</summary>
internal readonly record struct Dim3(uint X, uint Y = 1, uint Z = 1);

/// <summary>
/// The shipped kernels loaded into one context: modules load on first use (the driver JIT-compiles the PTX for the
/// device then, and caches the result on disk), functions are looked up once per <see cref="KernelId"/>, and
/// <see cref="Launch"/> is the one place kernels are started from.
/// </summary>
internal sealed unsafe partial class KernelLibrary : IDisposable
{
    private const int JitLogBytes = 16 * 1024;
    private const int DefaultSharedLimit = 48 * 1024; // above this a function must opt in to more dynamic shared memory

    private readonly CudaContext _context;
    private readonly Dictionary<string, CudaModuleHandle> _modules = [];
    private readonly nint[] _functions = new nint[KernelCatalog.All.Count];
    private readonly int[] _sharedLimits = new int[KernelCatalog.All.Count];
    private readonly Dictionary<string, bool> _runsSm90a = []; // RunsSm90a's answers (each reads an embedded image)
    private readonly object _gate = new();

    /// <summary>The PTX target used on this device: <c>sm90</c> (Hopper and newer) or <c>sm80</c> (Ampere, Ada).</summary>
    public string Target { get; }

    /// <summary>
    /// Whether kernels that support it (<see cref="KernelCatalog.Entry.Programmatic"/>) are launched with programmatic
    /// dependent launch. On by default where the device has it (compute capability 9.0+); off, every launch waits for
    /// the previous one to finish, which is useful for timing kernels alone.
    /// </summary>
    public bool ProgrammaticLaunch { get; set; }

    public KernelLibrary(CudaContext context)
    {
        _context = context;
        (int major, int minor) = context.Device.ComputeCapability;
        if (major < 8)
            throw new CudaUnavailableException(
                $"{context.Device.Name} has compute capability {major}.{minor}; the kernels need 8.0 or newer (bf16 tensor cores).",
                CuResult.NoBinaryForGpu, "KernelLibrary");
        Target = KernelCatalog.TargetFor((major, minor));
        ProgrammaticLaunch = major >= 9;
    }

    /// <summary>Queues kernel <paramref name="id"/> on <paramref name="stream"/>; <paramref name="args"/> points at each argument in order.</summary>
    public void Launch(KernelId id, Dim3 grid, Dim3 block, int sharedBytes, CudaStream stream, void** args)
    {
        nint function = Function(id);
        if (sharedBytes > DefaultSharedLimit && _sharedLimits[(int)id] < sharedBytes)
        {
            CudaException.ThrowIfFailed(CudaDriver.cuFuncSetAttribute(function, FunctionAttribute.MaxDynamicSharedSizeBytes, sharedBytes));
            _sharedLimits[(int)id] = sharedBytes;
        }
        _context.Bind();
        KernelCatalog.Entry entry = KernelCatalog.Of(id);
        LaunchAttribute* attributes = stackalloc LaunchAttribute[2];
        uint count = 0;
        if (entry.ClusterX > 1)
        {
            if (grid.X % (uint)entry.ClusterX != 0)
                throw new ArgumentException($"{entry.Name} runs as clusters of {entry.ClusterX} blocks along x; the grid's x is {grid.X}", nameof(grid));
            attributes[count++] = new LaunchAttribute { Id = LaunchAttribute.ClusterDimension, ClusterX = (uint)entry.ClusterX, ClusterY = 1, ClusterZ = 1 };
        }
        if (ProgrammaticLaunch && entry.Programmatic)
            attributes[count++] = new LaunchAttribute { Id = LaunchAttribute.ProgrammaticStreamSerialization, Value = 1 };
        if (count > 0)
        {
            var config = new LaunchConfig
            {
                GridX = grid.X, GridY = grid.Y, GridZ = grid.Z, BlockX = block.X, BlockY = block.Y, BlockZ = block.Z,
                SharedBytes = (uint)sharedBytes, Stream = stream.Raw, Attributes = attributes, AttributeCount = count,
            };
            CudaException.ThrowIfFailed(CudaDriver.cuLaunchKernelEx(&config, function, args, null), entry.Name);
            return;
        }
        CudaException.ThrowIfFailed(CudaDriver.cuLaunchKernel(function, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z,
            (uint)sharedBytes, stream.Raw, args, null), entry.Name);
    }

    /// <summary>
    /// Loads every shipped kernel this device can run now (a module built only for newer devices, see
    /// <see cref="KernelCatalog.TargetsOf"/>, is left out: launching it throws). Call before capturing a graph: loading
    /// a module synchronises the context, which a stream capture forbids.
    /// </summary>
    public void LoadAll()
    {
        foreach (KernelId id in KernelCatalog.All)
            if (KernelCatalog.Unsupported(KernelCatalog.Of(id).Module, _context.Device.Name, _context.Device.ComputeCapability) is null)
                Function(id);
    }

    /// <summary>The <c>CUfunction</c> of <paramref name="id"/>, loading its module if needed.</summary>
    public nint Function(KernelId id)
    {
        nint cached = _functions[(int)id];
        if (cached != 0) return cached;
        lock (_gate)
        {
            KernelCatalog.Entry entry = KernelCatalog.Of(id);
            if (!_modules.TryGetValue(entry.Module, out CudaModuleHandle? module))
            {
                module = LoadShippedModule(entry.Module);
                _modules.Add(entry.Module, module);
            }
            _context.Bind();
            byte[] name = Encoding.ASCII.GetBytes(entry.Name + "\0");
            nint function;
            fixed (byte* p = name)
                CudaException.ThrowIfFailed(CudaDriver.cuModuleGetFunction(out function, module.DangerousGetHandle(), p),
                    $"cuModuleGetFunction({entry.Name}) in module '{entry.Module}'");
            return _functions[(int)id] = function;
        }
    }

    private CudaModuleHandle LoadShippedModule(string module)
    {
        if (KernelCatalog.Unsupported(module, _context.Device.Name, _context.Device.ComputeCapability) is { } reason)
            throw new CudaUnavailableException(reason, CuResult.NoBinaryForGpu, "KernelLibrary");
        if (Sm90aImage(module) is { } cubin)
            return LoadImage(KernelImages.FileName(module, "sm90a"), cubin);
        string file = KernelImages.FileName(module, Target);
        byte[] image = KernelImages.TryLoad(file) ?? throw new InvalidOperationException(
            $"Kernel image '{file}' is missing: it is neither embedded nor in ${KernelImages.OverrideVariable}. Rebuild the kernels with kernels/build.sh (see docs/gpu.md).");
        return LoadImage(file, image);
    }

    /// <summary>
    /// Whether <paramref name="module"/> runs from its sm_90a cubin on this device, so that its Hopper-only kernels (wgmma)
    /// can be launched; elsewhere those kernels are stubs in the PTX and must not be.
    /// </summary>
    public bool RunsSm90a(string module)
    {
        lock (_gate)
        {
            if (!_runsSm90a.TryGetValue(module, out bool runs))
                _runsSm90a.Add(module, runs = Sm90aImage(module) is not null);
            return runs;
        }
    }

    // Hopper-only kernels ship as sm_90a cubin, which runs on compute capability 9.0 exactly.
    private byte[]? Sm90aImage(string module) =>
        _context.Device.ComputeCapability == (9, 0) ? KernelImages.TryLoad(KernelImages.FileName(module, "sm90a")) : null;

    /// <summary>Loads a PTX or cubin image; on failure the exception carries the JIT log and, for too-new PTX, says so.</summary>
    internal CudaModuleHandle LoadImage(string name, byte[] image)
    {
        bool isPtx = name.EndsWith(".ptx", StringComparison.Ordinal);
        byte[] data = isPtx && (image.Length == 0 || image[^1] != 0) ? [.. image, 0] : image; // PTX is read as a C string
        byte[] errorLog = new byte[JitLogBytes], infoLog = new byte[JitLogBytes];
        _context.Bind();
        CuResult result;
        nint module;
        fixed (byte* pData = data, pError = errorLog, pInfo = infoLog)
        {
            JitOption* options = stackalloc JitOption[4]
            {
                JitOption.ErrorLogBuffer, JitOption.ErrorLogBufferSizeBytes, JitOption.InfoLogBuffer, JitOption.InfoLogBufferSizeBytes,
            };
            void** values = stackalloc void*[4] { pError, (void*)JitLogBytes, pInfo, (void*)JitLogBytes };
            result = CudaDriver.cuModuleLoadDataEx(out module, pData, 4, options, values);
        }
        if (result != CuResult.Success)
        {
            string log = (CString(errorLog) + Environment.NewLine + CString(infoLog)).Trim();
            string? hint = result == CuResult.UnsupportedPtxVersion || (isPtx && log.Contains("Unsupported .version", StringComparison.OrdinalIgnoreCase))
                ? TooNewHint(data) : null;
            throw new CudaModuleLoadException(result, "cuModuleLoadDataEx", name, log, hint);
        }
        return new CudaModuleHandle(_context.Handle, module);
    }

    private static string TooNewHint(byte[] ptx)
    {
        Match version = PtxVersion().Match(Encoding.ASCII.GetString(ptx, 0, Math.Min(ptx.Length, 4096)));
        int driver = CudaDevice.DriverVersion;
        return $"the PTX (ISA {(version.Success ? version.Groups[1].Value : "?")}) is newer than the installed driver understands " +
               $"(driver supports CUDA {driver / 1000}.{driver % 1000 / 10}). Update the NVIDIA driver to the version the README's " +
               "'GPU requirements' names, or rebuild the kernels with an nvcc no newer than the driver.";
    }

    private static string CString(byte[] buffer)
    {
        int end = Array.IndexOf(buffer, (byte)0);
        return Encoding.UTF8.GetString(buffer, 0, end < 0 ? buffer.Length : end);
    }

    [GeneratedRegex(@"^\s*\.version\s+(\d+\.\d+)", RegexOptions.Multiline)]
    private static partial Regex PtxVersion();

    public void Dispose()
    {
        lock (_gate)
        {
            foreach (CudaModuleHandle module in _modules.Values) module.Dispose();
            _modules.Clear();
            Array.Clear(_functions);
        }
    }
}
