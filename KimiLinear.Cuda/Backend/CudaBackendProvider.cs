using KimiLinear.Backends;
using KimiLinear.Configuration;
using KimiLinear.Cuda.Interop;

namespace KimiLinear.Cuda.Backend;

/// <summary>
/// Creates the CUDA backend for KimiLinear.Core, which finds this type by name (<c>BackendProvider</c> there): referencing
/// the KimiLinear.Cuda package is all an application does to run models on its GPU.
/// </summary>
internal static class CudaBackendProvider
{
    /// <summary>
    /// The backend for <paramref name="config"/> on the GPU, or null when <paramref name="required"/> is false and the
    /// GPU cannot run it (then the CPU does). When required, every reason is an exception that says what is missing.
    /// </summary>
    public static IKimiBackend? TryCreate(KimiConfig config, KimiModelOptions options, bool required)
    {
        if (!CudaDevice.IsAvailable(out string reason))
            return required ? throw new CudaUnavailableException($"KimiDevice.Cuda: {reason}") : null;
        var device = CudaDevice.Get(options.CudaDeviceIndex);
        string? unsupported = Unsupported(config, device);
        if (unsupported is not null)
            return required ? throw new NotSupportedException($"The CUDA backend cannot run this model on {device.Name}: {unsupported}") : null;
        var context = CudaContext.Create(options.CudaDeviceIndex);
        try
        {
            return new CudaBackend(context, options.PrefillPieceTokens ?? CudaBackend.DefaultPrefillPieceTokens);
        }
        catch
        {
            context.Dispose();
            throw;
        }
    }

    /// <summary>What the kernels cannot do for this configuration or device, or null.</summary>
    private static string? Unsupported(KimiConfig config, CudaDeviceInfo device)
    {
        if (device.ComputeCapability.Major < 9)
            return $"the KDA kernels need compute capability 9.0 or newer (up to 218 KiB of shared memory a block); the device has {device.ComputeCapability.Major}.{device.ComputeCapability.Minor}.";
        if (config.LayerKinds.Contains(LayerKind.Kda))
        {
            if (config.KdaConvSize != 4)
                return $"the KDA kernels take short convs of width 4; linear_attn_config.short_conv_kernel_size is {config.KdaConvSize}.";
            if (config.KdaHeadDim > 128 || config.KdaHeadDim % 32 != 0)
                return $"the KDA kernels take head dims that are multiples of 32 up to 128; linear_attn_config.head_dim is {config.KdaHeadDim}.";
        }
        return null;
    }
}
