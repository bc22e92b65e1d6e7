using KimiLinear.Backends;
using KimiLinear.Cuda.Memory;

namespace KimiLinear.Cuda.Backend;

/// <summary>
/// A tensor of the CUDA backend: fp32 [Rows, Cols] in device memory (activations and KDA state), or bf16 for the MLA
/// latent cache. Step tensors view the backend's step arena; state and cache tensors own their buffer.
/// </summary>
internal sealed class CudaTensor : Tensor, IDisposable
{
    private readonly DeviceSpan<float> _f32;
    private readonly DeviceSpan<ushort> _bf16;
    private readonly IDisposable? _owner;

    /// <summary>Whether the elements are bf16 (the MLA cache) rather than fp32.</summary>
    public bool IsBFloat16 { get; }

    private CudaTensor(int rows, int cols, DeviceSpan<float> f32, DeviceSpan<ushort> bf16, bool isBFloat16, IDisposable? owner)
        : base(rows, cols) => (_f32, _bf16, IsBFloat16, _owner) = (f32, bf16, isBFloat16, owner);

    /// <summary>An fp32 tensor over <paramref name="data"/> (at least rows × cols elements), owning <paramref name="owner"/> if given.</summary>
    public static CudaTensor Float(int rows, int cols, DeviceSpan<float> data, IDisposable? owner = null) =>
        new(rows, cols, data.Slice(0, (long)rows * cols), default, false, owner);

    /// <summary>A bf16 tensor over <paramref name="data"/>, owning <paramref name="owner"/> if given.</summary>
    public static CudaTensor BFloat16(int rows, int cols, DeviceSpan<ushort> data, IDisposable? owner = null) =>
        new(rows, cols, default, data.Slice(0, (long)rows * cols), true, owner);

    /// <summary>The fp32 elements.</summary>
    public DeviceSpan<float> F32 => IsBFloat16 ? throw new InvalidOperationException($"tensor {this} is bf16, not fp32") : _f32;

    /// <summary>The bf16 elements.</summary>
    public DeviceSpan<ushort> Bf16 => IsBFloat16 ? _bf16 : throw new InvalidOperationException($"tensor {this} is fp32, not bf16");

    /// <summary>Device address of the first element.</summary>
    public ulong Pointer => IsBFloat16 ? _bf16.Pointer : _f32.Pointer;

    /// <summary>Bytes of one element.</summary>
    public int ElementSize => IsBFloat16 ? sizeof(ushort) : sizeof(float);

    /// <summary>Frees the buffer this tensor owns (state and cache tensors); step tensors own nothing.</summary>
    public void Dispose() => _owner?.Dispose();
}
