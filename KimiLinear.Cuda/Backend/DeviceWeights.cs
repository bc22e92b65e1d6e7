using System.Runtime.InteropServices;
using KimiLinear.Cuda.Interop;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;
using KimiLinear.Layers;
using KimiLinear.Loading;
using KimiLinear.Numerics;

namespace KimiLinear.Cuda.Backend;

/// <summary>
/// The model's weights in device memory, uploaded once: every matrix in bf16 (fp32 checkpoints are narrowed on the way),
/// each MoE block's experts (routed, then the shared expert's S slices of width F) stacked per weight kind so one kernel
/// can pick any expert by index, and the small fp32 parameters (norm weights, biases, conv taps) uploaded on first use.
/// </summary>
internal sealed class DeviceWeights(CudaContext context, CudaStream stream) : IDisposable
{
    /// <summary>Elements (bf16) each matrix's start is aligned to: 256 bytes, as cuMemAlloc aligns.</summary>
    private const long Alignment = 128;

    /// <summary>Memory kept free beyond the weights for activations, caches and the driver.</summary>
    private const long HeadroomBytes = 2L << 30;

    private readonly List<IDisposable> _buffers = [];
    private readonly Dictionary<float[], DeviceBuffer<float>> _parameters = new(ReferenceEqualityComparer.Instance);

    /// <summary>A matrix's device storage, kept in <see cref="WeightMatrix.DeviceCopy"/> of its source matrix.</summary>
    private sealed record Storage(DeviceSpan<ushort> Span);

    /// <summary>
    /// Checks that everything fits, then uploads <paramref name="matrices"/> and stacks <paramref name="experts"/>.
    /// </summary>
    /// <exception cref="CudaOutOfMemoryException">The weights do not fit; the message says how much they need and how much is free.</exception>
    public void Upload(IReadOnlyList<WeightMatrix> matrices, IReadOnlyList<MoeExperts> experts, IProgress<long> uploaded, CancellationToken cancellationToken)
    {
        long needed = matrices.Sum(m => 2L * m.Rows * m.Cols);
        var (free, total) = context.GetMemoryInfo();
        if (needed + HeadroomBytes > free)
            throw new CudaOutOfMemoryException(needed + HeadroomBytes, free,
                $"the model's {matrices.Count} weight matrices in bf16 ({needed / (double)(1L << 30):F1} GiB, plus {HeadroomBytes >> 30} GiB for activations and caches) on {context.Device.Name} ({total / (double)(1L << 30):F1} GiB in all)",
                "cuMemGetInfo_v2");

        long done = 0;
        var stacked = new HashSet<WeightMatrix>(ReferenceEqualityComparer.Instance);
        foreach (var set in experts)
        {
            cancellationToken.ThrowIfCancellationRequested();
            set.DeviceCopy = Stack(set);
            stacked.UnionWith(set.Gate.Concat(set.Up).Concat(set.Down));
            if (set.Shared is { } shared)
                stacked.UnionWith([shared.Gate, shared.Up, shared.Down]);
            done += (long)(set.Count + set.SharedCount) * 3 * set.Gate[0].Rows * set.Gate[0].Cols * sizeof(ushort); // w1, w3 and w2 of each expert
            uploaded.Report(done);
        }
        // Every other matrix in one allocation, in binding order: projections a layer binds one after another sit one
        // after another, so the backend can run same-input projections as one product.
        var plain = matrices.Where(m => !stacked.Contains(m)).ToList();
        var offsets = new long[plain.Count];
        long elements = 0;
        for (int i = 0; i < plain.Count; i++)
        {
            offsets[i] = elements;
            elements = (elements + (long)plain[i].Rows * plain[i].Cols + Alignment - 1) / Alignment * Alignment;
        }
        var all = Own(context.Allocate<ushort>(Math.Max(1, elements)));
        for (int i = 0; i < plain.Count; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var span = all.Slice(offsets[i], (long)plain[i].Rows * plain[i].Cols);
            Fill(span, plain[i]);
            plain[i].DeviceCopy = new Storage(span);
            done += span.ByteLength;
            uploaded.Report(done);
        }
        stream.Synchronize();
    }

    /// <summary>The device copy of <paramref name="matrix"/> (a row range of its source's copy for views).</summary>
    public DeviceSpan<ushort> Of(WeightMatrix matrix) =>
        matrix.Source.DeviceCopy is Storage storage
            ? storage.Span.Slice((long)matrix.SourceRow * matrix.Cols, (long)matrix.Rows * matrix.Cols)
            : throw new InvalidOperationException($"Weight '{matrix.Name}' was not uploaded to the GPU.");

    /// <summary>The stacked experts of a MoE block.</summary>
    public static StackedExperts Of(MoeExperts experts) =>
        experts.DeviceCopy as StackedExperts ?? throw new InvalidOperationException("The MoE experts were not uploaded to the GPU.");

    /// <summary>The device copy of a small fp32 parameter, uploaded on first use.</summary>
    public DeviceSpan<float> Of(float[] values)
    {
        if (!_parameters.TryGetValue(values, out var buffer))
        {
            buffer = context.Allocate<float>(values.Length);
            buffer.CopyFrom(values, stream);
            _parameters.Add(values, buffer);
        }
        return buffer.Span;
    }

    private StackedExperts Stack(MoeExperts set)
    {
        int e = set.Count, s = set.SharedCount, f = set.Gate[0].Rows, d = set.Gate[0].Cols;
        long matrix = (long)f * d;
        var gateUp = Own(context.Allocate<ushort>(2L * (e + s) * matrix)); // [E+S, 2F, D]: w1 rows then w3 rows per expert
        var down = Own(context.Allocate<ushort>((e + s) * matrix));        // [E+S, D, F]
        for (int i = 0; i < e; i++)
        {
            Place(gateUp.Slice(2 * i * matrix, matrix), set.Gate[i]);
            Place(gateUp.Slice((2 * i + 1) * matrix, matrix), set.Up[i]);
            Place(down.Slice(i * matrix, matrix), set.Down[i]);
        }
        if (set.Shared is { } shared)
        {
            // Shared slice j is expert E + j: rows [jF, (j+1)F) of gate and up, columns [jF, (j+1)F) of down. The
            // whole matrices go through one staging buffer (Fill reads every kind of source), then to their slots.
            using var staging = context.Allocate<ushort>(s * matrix); // [S·F, D] or [D, S·F]
            foreach (var (source, slot) in new[] { (shared.Gate, 0), (shared.Up, 1) })
            {
                Fill(staging.Span, source);
                for (int j = 0; j < s; j++)
                    gateUp.Slice((2L * (e + j) + slot) * matrix, matrix).CopyFrom(staging.Slice(j * matrix, matrix), stream);
            }
            Fill(staging.Span, shared.Down);
            for (int j = 0; j < s; j++)
                down.Slice((e + j) * matrix, matrix).CopyColumnsFrom(staging.Span.Slice((long)j * f), (long)s * f, f, d, stream);
            stream.Synchronize(); // the staging buffer is freed next
        }
        return new StackedExperts(gateUp.Span, down.Span, e, s, f, d);
    }

    private void Place(DeviceSpan<ushort> destination, WeightMatrix matrix)
    {
        Fill(destination, matrix);
        matrix.DeviceCopy = new Storage(destination);
    }

    /// <summary>Writes <paramref name="matrix"/>'s values into <paramref name="destination"/> as bf16.</summary>
    private unsafe void Fill(DeviceSpan<ushort> destination, WeightMatrix matrix)
    {
        long count = (long)matrix.Rows * matrix.Cols;
        if (matrix.SyntheticSeed is { } seed)
            SyntheticKernels.FillUniform(stream, destination, seed, matrix.SyntheticRange);
        else if (matrix.IsBFloat16)
        {
            // Straight from the mapped checkpoint; the driver stages pageable memory, a block at a time.
            context.Bind();
            CudaException.ThrowIfFailed(CudaDriver.cuMemcpyHtoDAsync_v2(destination.Pointer, matrix.BFloat16Data, (nuint)(count * sizeof(ushort)), stream.Raw));
        }
        else
        {
            var row = new float[matrix.Cols];
            var narrowed = new ushort[count];
            for (int r = 0; r < matrix.Rows; r++)
            {
                matrix.RowToSingle(r, row);
                BFloat16.FromSingle(row, narrowed.AsSpan(r * matrix.Cols, matrix.Cols));
            }
            destination.CopyFrom(narrowed, stream);
        }
    }

    private DeviceBuffer<ushort> Own(DeviceBuffer<ushort> buffer)
    {
        _buffers.Add(buffer);
        return buffer;
    }

    public void Dispose()
    {
        foreach (var buffer in _buffers)
            buffer.Dispose();
        foreach (var buffer in _parameters.Values)
            buffer.Dispose();
        _buffers.Clear();
        _parameters.Clear();
    }
}

/// <summary>A MoE block's experts stacked in device memory: the E routed experts, then the S shared slices.</summary>
/// <param name="GateUp">[E+S, 2F, D]: expert e's w1 (gate) rows, then its w3 (up) rows.</param>
/// <param name="Down">[E+S, D, F]: expert e's w2.</param>
/// <param name="Experts">E.</param>
/// <param name="Shared">S.</param>
/// <param name="Intermediate">F.</param>
/// <param name="Hidden">D.</param>
internal sealed record StackedExperts(DeviceSpan<ushort> GateUp, DeviceSpan<ushort> Down, int Experts, int Shared, int Intermediate, int Hidden);
