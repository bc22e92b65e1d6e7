using System.Diagnostics;

namespace KimiLinear.Tests.Kernels;

/// <summary>
/// Runs a kernel family's CPU-emulator check (a script under <c>kernels/</c> that compiles the family's harness with g++
/// against kernels/kda/tests/cuda_emu.h and prints one PASS/FAIL line per check) and fails with the FAIL lines.
/// Skips where the sources are not beside the test assembly or g++ is missing.
/// </summary>
internal static class EmulatorScript
{
    public static async Task RunAsync(string script, params string[] arguments)
    {
        string? root = RepositoryRoot(script);
        Assert.SkipWhen(root is null, "the kernel sources are not beside this test assembly (run from a clone of the repository)");
        Assert.SkipWhen(!OnPath("g++"), "g++ is not installed");
        var start = new ProcessStartInfo("bash", [Path.Combine(root!, script), .. arguments])
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
        Assert.True(process.ExitCode == 0, $"{script} exited {process.ExitCode}:\n{failures}\n{await stderr}");
        Assert.Contains("PASS", output);
    }

    private static string? RepositoryRoot(string script)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, script)))
                return dir.FullName;
        return null;
    }

    private static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator).Any(d => File.Exists(Path.Combine(d, program)));
}
