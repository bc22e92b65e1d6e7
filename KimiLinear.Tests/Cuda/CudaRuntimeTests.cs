using System.Text;
using KimiLinear.Cuda;
using KimiLinear.Cuda.Interop;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;
using KimiLinear.Numerics;

namespace KimiLinear.Tests.Cuda;

/// <summary>The driver layer: discovery, errors, memory, streams, graphs, module loading. GPU tests run one at a time.</summary>
[Collection("GPU")]
public sealed class CudaRuntimeTests
{
    [Fact]
    public void Discovery_ReportsDevicesOrAPlainReason()
    {
        if (CudaDevice.IsAvailable(out string reason))
        {
            Assert.True(CudaDevice.Count > 0);
            CudaDeviceInfo info = CudaDevice.Get(0);
            Assert.False(string.IsNullOrWhiteSpace(info.Name));
            Assert.True(info.ComputeCapability.Major >= 1 && info.TotalMemoryBytes > 0 && info.MultiprocessorCount > 0, info.ToString());
            Assert.True(CudaDevice.DriverVersion >= 1000);
        }
        else
        {
            // This is what CI sees: a message a user can act on, and the same from every entry point.
            Assert.False(string.IsNullOrWhiteSpace(reason));
            var error = Assert.Throws<CudaUnavailableException>(() => CudaContext.Create(0));
            Assert.Equal(reason, error.Message);
            Assert.Throws<CudaUnavailableException>(() => CudaDevice.Count);
        }
    }

    [Fact]
    public void DeviceIndexOutOfRange_Throws()
    {
        Gpu.Require();
        var error = Assert.Throws<CudaUnavailableException>(() => CudaContext.Create(CudaDevice.Count));
        Assert.Contains("out of range", error.Message);
        Assert.Throws<CudaUnavailableException>(() => CudaDevice.Get(-1));
    }

    [Fact]
    public void DriverErrors_NameTheErrorAndTheCall()
    {
        Gpu.Require();
        var error = Assert.Throws<CudaException>(() => CudaException.ThrowIfFailed(CudaDriver.cuMemFree_v2(0xDEAD0000)));
        Assert.Contains("cuMemFree_v2", error.Call);
        Assert.StartsWith("CUDA_ERROR_", error.ErrorName);
        Assert.Contains(error.ErrorName, error.Message);
    }

    [Fact]
    public void AllocateAndFreeInALoop_GivesTheMemoryBack()
    {
        CudaContext gpu = Gpu.Require();
        using (CudaStream warm = gpu.CreateStream()) gpu.Allocate<byte>(1).Dispose();
        long before = gpu.GetMemoryInfo().Free;
        for (int i = 0; i < 40; i++)
        {
            using DeviceBuffer<float> buffer = gpu.Allocate<float>(64L << 20); // 256 MiB
            using CudaStream stream = gpu.CreateStream();
            using CudaEvent marker = gpu.CreateEvent();
            buffer.Slice(0, 1024).Fill(1f, stream);
            marker.Record(stream);
            marker.Synchronize();
            using var arena = new DeviceArena(gpu, 16 << 20);
            arena.Rent<ushort>(1000);
        }
        long after = gpu.GetMemoryInfo().Free;
        Assert.True(after >= before - (8L << 20), $"free memory went from {before:N0} to {after:N0} bytes: something leaked");
    }

    [Fact]
    public void OutOfMemory_SaysHowMuchWasAskedAndFree()
    {
        CudaContext gpu = Gpu.Require();
        long tooMuch = gpu.Device.TotalMemoryBytes + (1L << 30);
        var error = Assert.Throws<CudaOutOfMemoryException>(() => gpu.Allocate<byte>(tooMuch));
        Assert.Equal(tooMuch, error.BytesRequested);
        Assert.InRange(error.BytesFree, 1, gpu.Device.TotalMemoryBytes);
        using DeviceBuffer<byte> stillWorks = gpu.Allocate<byte>(1 << 20); // the context survives the failure
    }

    [Fact]
    public void Arena_RentsAlignedSpansAndRefusesOverflow()
    {
        CudaContext gpu = Gpu.Require();
        using var arena = new DeviceArena(gpu, 1 << 20);
        DeviceSpan<ushort> a = arena.Rent<ushort>(3);
        DeviceSpan<float> b = arena.Rent<float>(5);
        Assert.Equal(0ul, b.Pointer % DeviceArena.Alignment);
        Assert.Equal((ulong)DeviceArena.Alignment, b.Pointer - a.Pointer);
        var error = Assert.Throws<CudaOutOfMemoryException>(() => arena.Rent<byte>(2 << 20));
        Assert.Equal(2L << 20, error.BytesRequested);
        arena.Reset();
        Assert.Equal(a.Pointer, arena.Rent<byte>(1).Pointer);
    }

    [Fact]
    public async Task Context_FollowsTheWorkAcrossThreadsAndAwait()
    {
        CudaContext gpu = Gpu.Require();
        float[] data = Gpu.RandomF32(new Random(1), 1000);
        using DeviceBuffer<float> buffer = gpu.Allocate<float>(data.Length);
        using CudaStream stream = gpu.CreateStream();
        await Task.Run(() => buffer.CopyFrom(data, stream), TestContext.Current.CancellationToken);
        await Task.Yield();
        float[] back = new float[data.Length];
        var thread = new Thread(() => buffer.CopyTo(back, stream));
        thread.Start();
        thread.Join();
        Assert.Equal(data, back);
    }

    [Fact]
    public void GraphReplay_RepeatsTheCapturedWork()
    {
        CudaContext gpu = Gpu.Require();
        const int T = 3, D = 257;
        var random = new Random(2);
        float[] residual = Gpu.RandomF32(random, T * D);
        ushort[] x = Gpu.RandomBf16(random, T * D), weight = Gpu.RandomBf16(random, D);
        using CudaStream stream = gpu.CreateStream();
        using DeviceBuffer<float> dResidual = gpu.Upload(stream, residual);
        using DeviceBuffer<ushort> dX = gpu.Upload(stream, x), dWeight = gpu.Upload(stream, weight), dOut = gpu.Allocate<ushort>(T * D);
        // The residual add accumulates, so each replay must really run the kernel again.
        gpu.Kernels.LoadAll(); // module loading synchronises, which a capture forbids
        using CudaGraph graph = stream.Capture(s => ElementwiseKernels.RmsNormResidual(s, dOut, dResidual, dX.Span, dWeight, T, D, 1e-6f));
        const int Replays = 4;
        for (int i = 0; i < Replays; i++) graph.Launch(stream);
        float[] got = dResidual.ToArray(stream);
        for (int i = 0; i < Replays; i++)
            for (int j = 0; j < T * D; j++) residual[j] += BFloat16.ToSingle(x[j]);
        Assert.Equal(residual, got);
    }

    [Fact]
    public void EventsTimeWorkOnAStream()
    {
        CudaContext gpu = Gpu.Require();
        using CudaStream stream = gpu.CreateStream();
        using CudaEvent start = gpu.CreateEvent(), end = gpu.CreateEvent();
        using DeviceBuffer<byte> a = gpu.Allocate<byte>(64 << 20), b = gpu.Allocate<byte>(64 << 20);
        start.Record(stream);
        b.Span.CopyFrom(a.Span, stream);
        end.Record(stream);
        end.Synchronize();
        Assert.InRange(end.ElapsedMillisecondsSince(start), 0.001f, 1000f);
    }

    [Fact]
    public void BrokenPtx_FailsWithTheJitLog()
    {
        CudaContext gpu = Gpu.Require();
        byte[] ptx = Encoding.ASCII.GetBytes(".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry broken() { this is not ptx; }\n");
        var error = Assert.Throws<CudaModuleLoadException>(() => gpu.Kernels.LoadImage("broken.ptx", ptx));
        Assert.Contains("broken.ptx", error.Message);
        Assert.False(string.IsNullOrWhiteSpace(error.JitLog), "the JIT log should say what is wrong");
    }

    [Fact]
    public void PtxNewerThanTheDriver_SaysSoPlainly()
    {
        CudaContext gpu = Gpu.Require();
        byte[] ptx = Encoding.ASCII.GetBytes(".version 99.9\n.target sm_80\n.address_size 64\n.visible .entry empty() { ret; }\n");
        var error = Assert.Throws<CudaModuleLoadException>(() => gpu.Kernels.LoadImage("future.ptx", ptx));
        Assert.Contains("newer than the installed driver", error.Message);
    }

    [Fact]
    public void EveryShippedKernel_Loads()
    {
        CudaContext gpu = Gpu.Require();
        foreach (KernelId id in KernelCatalog.All) Assert.NotEqual(0, gpu.Kernels.Function(id));
    }
}
