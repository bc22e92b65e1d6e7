using System.Diagnostics;

namespace KimiLinear.Tests.Kernels;

/// <summary>
/// The MLA CUDA kernels (kernels/mla.cu) compiled for the CPU against the CUDA emulator (kernels/kda/tests/cuda_emu.h,
/// which also emulates mma.sync and ldmatrix) and checked against a float64 reference by kernels/tests/mla_harness.cu:
/// query/output absorption, flash-decoding with several slices and tiles, the causal prefill at the tiny dims, odd dims
/// and the model's (N + P = 192, V = 128) kernel, all with NaN past the visible cache rows. This checks indexing,
/// fragment layouts and synchronisation where there is no GPU (CI); MlaKernelTests on the GPU is the real test.
/// </summary>
public sealed class MlaKernelEmulatorTests
{
    [Fact]
    public async Task KernelLogicPassesOnTheCpuEmulator()
    {
        string? script = FindUpwards(Path.Combine("kernels", "tests", "mla_emu_check.sh"));
        Assert.SkipWhen(script is null, "the kernel sources are not beside this test assembly (run from a clone of the repository)");
        Assert.SkipWhen(!(Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator).Any(d => File.Exists(Path.Combine(d, "g++"))),
            "g++ is not installed");
        using var process = Process.Start(new ProcessStartInfo("bash", [script!]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        var ct = TestContext.Current.CancellationToken;
        var stderr = process.StandardError.ReadToEndAsync(ct);
        string output = await process.StandardOutput.ReadToEndAsync(ct);
        await process.WaitForExitAsync(ct);
        string failures = string.Join('\n', output.Split('\n').Where(l => l.StartsWith("FAIL", StringComparison.Ordinal)));
        Assert.True(process.ExitCode == 0, $"mla_emu_check.sh exited {process.ExitCode}:\n{failures}\n{await stderr}");
        Assert.Contains("PASS", output);
    }

    private static string? FindUpwards(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, relative)))
                return Path.Combine(dir.FullName, relative);
        return null;
    }
}
