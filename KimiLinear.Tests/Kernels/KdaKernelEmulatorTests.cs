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
    public Task KernelLogicPassesOnTheCpuEmulator() => EmulatorScript.RunAsync("kernels/kda/tests/emu_check.sh");
}
