using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace KimiLinear.Cuda.Interop;

/// <summary>A CUDA driver call failed. Carries the driver's error code, its name and description, and the call.</summary>
public class CudaException : Exception
{
    /// <summary>The driver's result code.</summary>
    public CuResult Result { get; }

    /// <summary>The driver's name for <see cref="Result"/>, e.g. <c>CUDA_ERROR_OUT_OF_MEMORY</c>.</summary>
    public string ErrorName { get; }

    /// <summary>The failing call as written in the source, e.g. <c>CudaDriver.cuMemAlloc_v2(out ptr, bytes)</c>.</summary>
    public string Call { get; }

    /// <summary>Creates the exception for a failed driver call.</summary>
    public CudaException(CuResult result, string call, string? detail = null)
        : base(Describe(result, call, detail, out string name))
    {
        Result = result;
        ErrorName = name;
        Call = call;
    }

    /// <summary>For subclasses whose condition is not a driver result (no driver, no device).</summary>
    protected CudaException(string message, CuResult result, string call) : base(message)
    {
        Result = result;
        ErrorName = ErrorNameOf(result);
        Call = call;
    }

    /// <summary>
    /// The one choke point every driver call goes through: throws a <see cref="CudaException"/> naming the error and
    /// the call unless <paramref name="result"/> is <see cref="CuResult.Success"/>.
    /// </summary>
    internal static void ThrowIfFailed(CuResult result, [CallerArgumentExpression(nameof(result))] string call = "")
    {
        if (result != CuResult.Success) throw new CudaException(result, call);
    }

    private static string Describe(CuResult result, string call, string? detail, out string name)
    {
        name = ErrorNameOf(result);
        string text = ErrorStringOf(result);
        string message = $"{call} failed: {name} ({(int)result}): {text}";
        return detail is null ? message : message + Environment.NewLine + detail;
    }

    /// <summary>The driver's symbolic name for a result, or its number when the driver does not know it.</summary>
    internal static unsafe string ErrorNameOf(CuResult result)
    {
        try
        {
            return CudaDriver.cuGetErrorName(result, out byte* p) == CuResult.Success && p != null
                ? Marshal.PtrToStringUTF8((nint)p) ?? result.ToString()
                : $"CUresult {(int)result}";
        }
        catch (DllNotFoundException)
        {
            return $"CUresult {(int)result}";
        }
    }

    private static unsafe string ErrorStringOf(CuResult result)
    {
        try
        {
            return CudaDriver.cuGetErrorString(result, out byte* p) == CuResult.Success && p != null
                ? Marshal.PtrToStringUTF8((nint)p) ?? "" : "no description from the driver";
        }
        catch (DllNotFoundException)
        {
            return "no description (driver not loaded)";
        }
    }
}

/// <summary>No usable CUDA driver or device: the driver library is missing, reports no device, or the index is out of range.</summary>
public sealed class CudaUnavailableException : CudaException
{
    internal CudaUnavailableException(string message, CuResult result = CuResult.NoDevice, string call = "")
        : base(message, result, call) { }
}

/// <summary>A device allocation did not fit. Says how much was asked for and how much the device (or arena) had free.</summary>
public sealed class CudaOutOfMemoryException : CudaException
{
    /// <summary>Bytes requested.</summary>
    public long BytesRequested { get; }

    /// <summary>Bytes free when the request failed (device memory, or the arena's remaining capacity).</summary>
    public long BytesFree { get; }

    internal CudaOutOfMemoryException(long requested, long free, string where, string call)
        : base($"Out of GPU memory: {where} needed {requested:N0} bytes but only {free:N0} bytes were free.", CuResult.OutOfMemory, call)
    {
        BytesRequested = requested;
        BytesFree = free;
    }
}

/// <summary>A kernel module (PTX or cubin) failed to load. <see cref="JitLog"/> holds the JIT compiler's error log.</summary>
public sealed class CudaModuleLoadException : CudaException
{
    /// <summary>The JIT compiler's error and info log (may be empty).</summary>
    public string JitLog { get; }

    internal CudaModuleLoadException(CuResult result, string call, string moduleName, string jitLog, string? hint)
        : base(result, call, $"module '{moduleName}'" + (hint is null ? "" : $": {hint}") +
                             (jitLog.Length == 0 ? "" : Environment.NewLine + "JIT log:" + Environment.NewLine + jitLog))
    {
        JitLog = jitLog;
    }
}
