using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using KimiLinear.Cuda.Kernels;

namespace KimiLinear.Tests.Cuda;

/// <summary>
/// CPU-side guards for the committed kernels (they run in CI, which has no nvcc): the embedded PTX was built from the
/// current sources for the targets each source names, C# agrees on those targets, and every entry point C# launches
/// exists in it.
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

    /// <summary>
    /// The sources kernels/build.sh builds, relative to kernels/ with '/' separators: kernels/&lt;family&gt;.cu and
    /// kernels/&lt;family&gt;/&lt;family&gt;.cu.
    /// </summary>
    private static string[] KernelSources(string folder) =>
        Directory.GetFiles(folder, "*.cu").Select(Path.GetFileName)
            .Concat(Directory.GetDirectories(folder)
                .Where(dir => File.Exists(Path.Combine(dir, Path.GetFileName(dir) + ".cu")))
                .Select(dir => Path.GetFileName(dir) + "/" + Path.GetFileName(dir) + ".cu"))
            .ToArray()!;

    /// <summary>The targets build.sh builds a source for: its <c>// KIMI_PTX_TARGETS:</c> line, else sm90 and sm80.</summary>
    private static string[] TargetsOfSource(string path)
    {
        const string Marker = "// KIMI_PTX_TARGETS:";
        string? line = File.ReadLines(path).FirstOrDefault(l => l.StartsWith(Marker, StringComparison.Ordinal));
        return line is null ? [.. KernelCatalog.DefaultTargets] : line[Marker.Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
    }

    private static string ModuleOf(string source) => Path.GetFileNameWithoutExtension(source);

    [Fact]
    public void Manifest_MatchesEveryKernelSource()
    {
        string manifestText = KernelImages.EmbeddedText("manifest.json")
            ?? throw new Xunit.Sdk.XunitException("manifest.json is not embedded: run kernels/build.sh on the GPU machine (docs/gpu.md)");
        Dictionary<string, string> recorded = JsonDocument.Parse(manifestText).RootElement.GetProperty("sources").EnumerateObject()
            .ToDictionary(p => p.Name, p => p.Value.GetString()!);
        string folder = KernelsFolder();
        string[] sources = KernelSources(folder).Concat(Directory.GetFiles(folder, "*.cuh").Select(Path.GetFileName)).ToArray()!;
        foreach (string source in sources)
        {
            Assert.True(recorded.TryGetValue(source, out string? hash), $"kernels/{source} has no PTX yet: rebuild with kernels/build.sh");
            string actual = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(folder, source))));
            Assert.True(actual == hash, $"kernels/{source} changed since its PTX was built: rebuild with kernels/build.sh and commit the output");
        }
        Assert.Empty(recorded.Keys.Except(sources)); // a deleted source leaves no stale entry
    }

    [Fact]
    public void EveryKernelSource_HasItsPtxEmbedded_ForExactlyItsTargets()
    {
        string[] embedded = KernelImages.EmbeddedNames().ToArray();
        string folder = KernelsFolder();
        foreach (string source in KernelSources(folder))
        {
            string[] targets = TargetsOfSource(Path.Combine(folder, source));
            foreach (string target in new[] { "sm90", "sm80" })
            {
                string file = KernelImages.FileName(ModuleOf(source), target);
                if (targets.Contains(target))
                    Assert.True(embedded.Contains(file), $"{file} is not embedded in KimiLinear.Cuda");
                else
                    Assert.False(embedded.Contains(file), $"{file} is embedded, but kernels/{source} is built only for {string.Join(", ", targets)}");
            }
        }
    }

    [Fact]
    public void KernelCatalog_AgreesWithEachSourceOnItsTargets()
    {
        string folder = KernelsFolder();
        string[] sources = KernelSources(folder);
        Assert.Equal(sources.Length, sources.Select(ModuleOf).Distinct().Count()); // one source per module name
        foreach (string source in sources)
            Assert.True(TargetsOfSource(Path.Combine(folder, source)).SequenceEqual(KernelCatalog.TargetsOf(ModuleOf(source))),
                $"kernels/{source} is built for {string.Join(", ", TargetsOfSource(Path.Combine(folder, source)))} but KernelCatalog.TargetsOf(\"{ModuleOf(source)}\") says {string.Join(", ", KernelCatalog.TargetsOf(ModuleOf(source)))}");
        Assert.Contains("kda/kda.cu", sources);
    }

    [Fact]
    public void EveryKernelId_NamesAnEntryPointThePtxHas()
    {
        foreach (KernelId id in KernelCatalog.All)
        {
            KernelCatalog.Entry entry = KernelCatalog.Of(id);
            Assert.Matches(EntryName(), entry.Name);
            foreach (string target in KernelCatalog.TargetsOf(entry.Module))
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
