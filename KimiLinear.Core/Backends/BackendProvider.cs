using KimiLinear.Backends.Cpu;
using KimiLinear.Configuration;

namespace KimiLinear.Backends;

/// <summary>
/// Picks the backend for <see cref="KimiModelOptions.Device"/>. The CUDA backend lives in the KimiLinear.Cuda assembly,
/// which references this one, so it is found by name at run time: an application that references the KimiLinear.Cuda
/// package gets GPU execution without any registration call.
/// </summary>
internal static class BackendProvider
{
    /// <summary>The type in KimiLinear.Cuda with <c>static IKimiBackend? TryCreate(KimiConfig, KimiModelOptions, bool required)</c>.</summary>
    private const string CudaProviderType = "KimiLinear.Cuda.Backend.CudaBackendProvider, KimiLinear.Cuda";

    public static IKimiBackend Create(KimiConfig config, KimiModelOptions options)
    {
        if (options.Device == KimiDevice.Cpu)
            return new CpuBackend(options.CpuThreads, options.PrefillPieceTokens ?? CpuBackend.DefaultTokensPerForward);
        bool required = options.Device == KimiDevice.Cuda;
        var provider = Type.GetType(CudaProviderType, throwOnError: false);
        if (provider is null)
            return required
                ? throw new NotSupportedException("KimiDevice.Cuda needs the KimiLinear.Cuda package: add a reference to it (the assembly KimiLinear.Cuda was not found).")
                : new CpuBackend(options.CpuThreads, options.PrefillPieceTokens ?? CpuBackend.DefaultTokensPerForward);
        var create = provider.GetMethod("TryCreate", System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic)
            ?? throw new MissingMethodException(CudaProviderType, "TryCreate");
        try
        {
            return (IKimiBackend?)create.Invoke(null, [config, options, required]) ?? new CpuBackend(options.CpuThreads, options.PrefillPieceTokens ?? CpuBackend.DefaultTokensPerForward);
        }
        catch (System.Reflection.TargetInvocationException e) when (e.InnerException is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException);
            throw;
        }
    }
}
