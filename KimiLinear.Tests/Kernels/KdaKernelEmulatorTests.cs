using System.Diagnostics;

namespace KimiLinear.Tests.Kernels;

/// <summary>
/// The KDA CUDA kernels (kernels/kda/kda.cu) compiled for the CPU against a small emulator of the CUDA features they use
/// (kernels/kda/tests/cuda_emu.h) and checked against a float64 reference: golden kda_ops cases, packed odd-length
/// batches, decode steps, prefill then decode, NaN-poisoned tails. This checks their indexing and synchronisation where
/// there is no GPU (CI); the GPU run of the same harness is the real test.
/// </summary>
public sealed class KdaKernelEmulatorTests
{
    [Fact]
    public async Task KernelLogicPassesOnTheCpuEmulator()
    {
        string? root = RepositoryRoot();
        Assert.SkipWhen(root is null, "the kernel sources are not beside this test assembly (run from a clone of the repository)");
        Assert.SkipWhen(!OnPath("g++"), "g++ is not installed");
        var start = new ProcessStartInfo("bash", [Path.Combine(root!, "kernels", "kda", "tests", "emu_check.sh")])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(start)!;
        var ct = TestContext.Current.CancellationToken;
        var stderr = process.StandardError.ReadToEndAsync(ct);
        string output = await process.StandardOutput.ReadToEndAsync(ct);
        await process.WaitForExitAsync(ct);
        string failures = string.Join('\n', output.Split('\n').Where(l => l.StartsWith("FAIL", StringComparison.Ordinal)));
        Assert.True(process.ExitCode == 0, $"emu_check.sh exited {process.ExitCode}:\n{failures}\n{await stderr}");
        Assert.Contains("PASS", output);
    }

    private static string? RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "kernels", "kda", "tests", "emu_check.sh")))
                return dir.FullName;
        return null;
    }

    private static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator).Any(d => File.Exists(Path.Combine(d, program)));
}
