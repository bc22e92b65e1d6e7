using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;

// `gpu [report.md]` times the CUDA kernels with CUDA events (see GpuKernelBenchmarks); anything else goes to BenchmarkDotNet.
if (args.Length > 0 && args[0] == "gpu") return KimiLinear.Benchmarks.GpuKernelBenchmarks.Run(args);
// `model [proxy|real] [report.md] [contexts...]` runs the whole model on the GPU (see GpuModelBenchmarks).
if (args.Length > 0 && args[0] == "model") return KimiLinear.Benchmarks.GpuModelBenchmarks.Run(args);

// Runs the benchmarks named on the command line (BenchmarkDotNet's --filter etc.). Where no .NET SDK is installed
// (the GPU machine ships only a runtime) BenchmarkDotNet cannot build its generated project, so it runs in-process.
var config = DefaultConfig.Instance;
if (!SdkPresent())
    config = config.AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance)).WithOptions(ConfigOptions.DisableOptimizationsValidator);
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args, config);
return 0;

static bool SdkPresent()
{
    try
    {
        using var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("dotnet", "--list-sdks")
        { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false });
        if (p is null) return false;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return p.ExitCode == 0 && output.Trim().Length > 0;
    }
    catch (System.ComponentModel.Win32Exception)
    {
        return false;
    }
}

/// <summary>Entry point type (named so BenchmarkSwitcher can find this assembly).</summary>
public partial class Program;
