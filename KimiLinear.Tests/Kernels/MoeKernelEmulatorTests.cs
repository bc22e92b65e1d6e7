namespace KimiLinear.Tests.Kernels;

/// <summary>
/// The MoE CUDA kernels (kernels/moe.cu) on the CPU emulator, tensor-core tiles included (mma.cuh's emulated path):
/// the router against a replica of CpuBackend.MoeRoute, decode and prefill experts against a double reference on small
/// odd shapes, prefill against decode, bad expert ids (kernels/tests/moe_harness.cu, --quick). Where there is no GPU
/// (CI) this checks their indexing and synchronisation; MoeKernelTests on the GPU is the real test.
/// </summary>
public sealed class MoeKernelEmulatorTests
{
    [Fact]
    public Task KernelLogicPassesOnTheCpuEmulator() => EmulatorScript.RunAsync("kernels/tests/moe_emu_check.sh", "--quick");
}
