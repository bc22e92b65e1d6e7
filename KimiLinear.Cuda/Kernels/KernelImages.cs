namespace KimiLinear.Cuda.Kernels;

/// <summary>
/// The compiled kernels: PTX (and, where a kernel needs Hopper-only instructions, sm_90a cubin) built by
/// <c>kernels/build.sh</c> and embedded in this assembly. Setting <see cref="OverrideVariable"/> to a folder makes
/// the library load images from there instead: the GPU workflow uses it to test freshly built kernels before they
/// are committed.
/// </summary>
internal static class KernelImages
{
    /// <summary>Environment variable naming a folder of kernel images to use instead of the embedded ones.</summary>
    public const string OverrideVariable = "KIMILINEAR_KERNEL_DIR";

    private const string ResourcePrefix = "KimiLinear.Cuda.Kernels.ptx.";

    /// <summary>File name of a module's image for a target: <c>gemv.sm90.ptx</c>, <c>gemv.sm80.ptx</c>, <c>gemv.sm90a.cubin</c>.</summary>
    public static string FileName(string module, string target) => target == "sm90a" ? $"{module}.sm90a.cubin" : $"{module}.{target}.ptx";

    /// <summary>The image's bytes, or null when no such image exists.</summary>
    public static byte[]? TryLoad(string fileName)
    {
        if (Environment.GetEnvironmentVariable(OverrideVariable) is { Length: > 0 } folder)
        {
            string path = Path.Combine(folder, fileName);
            return File.Exists(path) ? File.ReadAllBytes(path) : null;
        }
        using Stream? stream = typeof(KernelImages).Assembly.GetManifestResourceStream(ResourcePrefix + fileName);
        if (stream is null) return null;
        var bytes = new byte[stream.Length];
        stream.ReadExactly(bytes);
        return bytes;
    }

    /// <summary>Names of the embedded images (for the freshness tests).</summary>
    public static IEnumerable<string> EmbeddedNames() =>
        typeof(KernelImages).Assembly.GetManifestResourceNames()
            .Where(n => n.StartsWith(ResourcePrefix, StringComparison.Ordinal))
            .Select(n => n[ResourcePrefix.Length..]);

    /// <summary>The embedded text resource (manifest.json), or null.</summary>
    public static string? EmbeddedText(string fileName)
    {
        using Stream? stream = typeof(KernelImages).Assembly.GetManifestResourceStream(ResourcePrefix + fileName);
        return stream is null ? null : new StreamReader(stream).ReadToEnd();
    }
}
