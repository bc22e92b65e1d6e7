using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using KimiLinear.Cuda.Kernels;

namespace KimiLinear.Tests.Cuda;

/// <summary>
/// CPU-side guards for the committed kernels (they run in CI, which has no nvcc): the embedded PTX was built from the
/// current sources, and every entry point C# launches exists in it.
/// </summary>
public sealed partial class KernelFreshnessTests
{
    private static string KernelsFolder()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "kernels");
            if (File.Exists(Path.Combine(candidate, "build.sh"))) return candidate;
        }
        throw new DirectoryNotFoundException($"no kernels/build.sh above {AppContext.BaseDirectory}: run the tests from a checkout");
    }

    [Fact]
    public void Manifest_MatchesEveryKernelSource()
    {
        string manifestText = KernelImages.EmbeddedText("manifest.json")
            ?? throw new Xunit.Sdk.XunitException("manifest.json is not embedded: run kernels/build.sh on the GPU machine (docs/gpu.md)");
        Dictionary<string, string> recorded = JsonDocument.Parse(manifestText).RootElement.GetProperty("sources").EnumerateObject()
            .ToDictionary(p => p.Name, p => p.Value.GetString()!);
        string folder = KernelsFolder();
        string[] sources = Directory.GetFiles(folder, "*.cu").Concat(Directory.GetFiles(folder, "*.cuh")).Select(Path.GetFileName).ToArray()!;
        foreach (string source in sources)
        {
            Assert.True(recorded.TryGetValue(source, out string? hash), $"kernels/{source} has no PTX yet: rebuild with kernels/build.sh");
            string actual = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(folder, source))));
            Assert.True(actual == hash, $"kernels/{source} changed since its PTX was built: rebuild with kernels/build.sh and commit the output");
        }
        Assert.Empty(recorded.Keys.Except(sources)); // a deleted source leaves no stale entry
    }

    [Fact]
    public void EveryKernelSource_HasItsPtxEmbedded()
    {
        string[] embedded = KernelImages.EmbeddedNames().ToArray();
        foreach (string cu in Directory.GetFiles(KernelsFolder(), "*.cu"))
            foreach (string target in new[] { "sm90", "sm80" })
            {
                string file = KernelImages.FileName(Path.GetFileNameWithoutExtension(cu), target);
                Assert.True(embedded.Contains(file), $"{file} is not embedded in KimiLinear.Cuda");
            }
    }

    [Fact]
    public void EveryKernelId_NamesAnEntryPointThePtxHas()
    {
        foreach (KernelId id in KernelCatalog.All)
        {
            KernelCatalog.Entry entry = KernelCatalog.Of(id);
            Assert.Matches(EntryName(), entry.Name);
            foreach (string target in new[] { "sm90", "sm80" })
            {
                string file = KernelImages.FileName(entry.Module, target);
                byte[] image = KernelImages.TryLoad(file) ?? throw new Xunit.Sdk.XunitException($"{file} is not embedded");
                string ptx = System.Text.Encoding.ASCII.GetString(image);
                Assert.True(ptx.Contains($".entry {entry.Name}(", StringComparison.Ordinal), $"{file} has no entry point {entry.Name} ({id})");
            }
        }
    }

    [GeneratedRegex("^kimi_[a-z0-9_]+$")]
    private static partial Regex EntryName();
}
