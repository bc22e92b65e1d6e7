using System.Diagnostics;

namespace KimiLinear.Tests.Kernels;

/// <summary>
/// The fp32-activation kernels (kernels/activations.cu) and the fp32-x GEMV (kimi_gemv_f32 in kernels/gemv.cu) compiled
/// for the CPU against the CUDA emulator (kernels/kda/tests/cuda_emu.h) and checked against a float64 reference by
/// kernels/tests/activations_harness.cu: odd sizes, both the 16-byte and the element-wise paths, in-place use, bad row
/// indices, the all-or-nothing latent-row write, rounding ties, NaN-poisoned tails. This checks indexing and
/// synchronisation where there is no GPU (CI); ActivationKernelTests and MatmulKernelTests on the GPU are the real tests.
/// </summary>
public sealed class ActivationKernelEmulatorTests
{
    [Fact]
    public async Task KernelLogicPassesOnTheCpuEmulator()
    {
        string? script = FindUpwards(Path.Combine("kernels", "tests", "activations_emu_check.sh"));
        Assert.SkipWhen(script is null, "the kernel sources are not beside this test assembly (run from a clone of the repository)");
        Assert.SkipWhen(!(Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator).Any(d => File.Exists(Path.Combine(d, "g++"))),
            "g++ is not installed");
        using var process = Process.Start(new ProcessStartInfo("bash", [script!]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        var ct = TestContext.Current.CancellationToken;
        var stderr = process.StandardError.ReadToEndAsync(ct);
        string output = await process.StandardOutput.ReadToEndAsync(ct);
        await process.WaitForExitAsync(ct);
        string failures = string.Join('\n', output.Split('\n').Where(l => l.StartsWith("FAIL", StringComparison.Ordinal)));
        Assert.True(process.ExitCode == 0, $"activations_emu_check.sh exited {process.ExitCode}:\n{failures}\n{await stderr}");
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
