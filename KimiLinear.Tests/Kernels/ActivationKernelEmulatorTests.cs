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
    public Task KernelLogicPassesOnTheCpuEmulator() => EmulatorScript.RunAsync("kernels/tests/activations_emu_check.sh");
}
