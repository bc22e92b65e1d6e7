namespace KimiLinear.Tests.Kernels;

/// <summary>
/// The MLA CUDA kernels (kernels/mla.cu) compiled for the CPU against the CUDA emulator (kernels/kda/tests/cuda_emu.h,
/// which also emulates mma.sync and ldmatrix) and checked against a float64 reference by kernels/tests/mla_harness.cu:
/// query/output absorption, flash-decoding with several slices and tiles, the causal prefill at the tiny dims, odd dims
/// and the model's (N + P = 192, V = 128) kernel, the wgmma decode partial (against the reference and the mma.sync kernel),
/// the table forms of the three decode partials (several caches in one launch, bit for bit one launch a cache),
/// all with NaN past the visible cache rows (--quick: the shorter cases). This checks indexing, fragment layouts and
/// synchronisation where there is no GPU (CI); MlaKernelTests on the GPU is the real test.
/// </summary>
public sealed class MlaKernelEmulatorTests
{
    [Fact]
    public Task KernelLogicPassesOnTheCpuEmulator() => EmulatorScript.RunAsync("kernels/tests/mla_emu_check.sh", "--quick");
}
