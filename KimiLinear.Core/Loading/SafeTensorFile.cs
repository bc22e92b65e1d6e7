using System.IO.MemoryMappedFiles;
using System.Text.Json;

namespace KimiLinear.Loading;

/// <summary>Element types a safetensors file may declare that this project reads.</summary>
public enum SafeTensorDType
{
    /// <summary>bfloat16 (the Kimi checkpoints' weight type).</summary>
    BF16,
    /// <summary>IEEE half.</summary>
    F16,
    /// <summary>IEEE single (Kimi stores A_log and dt_bias so).</summary>
    F32,
    /// <summary>32-bit signed integer.</summary>
    I32,
    /// <summary>64-bit signed integer.</summary>
    I64,
}

/// <summary>One tensor's entry in a safetensors header.</summary>
/// <param name="Name">The tensor's name.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions, outermost first.</param>
/// <param name="Offset">Byte offset of the data from the start of the file.</param>
/// <param name="ByteLength">Bytes of data.</param>
public sealed record SafeTensorInfo(string Name, SafeTensorDType DType, long[] Shape, long Offset, long ByteLength)
{
    /// <summary>Number of elements.</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>The shape as "[a, b]".</summary>
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    /// <summary>Bytes per element of <paramref name="dtype"/>.</summary>
    public static int ElementSize(SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.BF16 or SafeTensorDType.F16 => 2,
        SafeTensorDType.F32 or SafeTensorDType.I32 => 4,
        _ => 8,
    };
}

/// <summary>
/// A memory-mapped safetensors file: an 8-byte little-endian header length, a JSON header of
/// <c>name → {dtype, shape, data_offsets}</c>, then the data. The header is validated completely at open (length inside the
/// file, JSON well-formed, known dtypes, offsets inside the data region, sizes matching shapes, no overlaps), so that
/// every later read is in bounds. Tensor data is never copied into managed memory unless a caller asks for it.
/// </summary>
public sealed unsafe class SafeTensorFile : IDisposable
{
    /// <summary>Largest header accepted (the format's own reference implementation uses 100 MB).</summary>
    private const long MaxHeaderBytes = 100_000_000;

    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly byte* _base;
    private bool _disposed;

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>Tensors by name.</summary>
    public IReadOnlyDictionary<string, SafeTensorInfo> Tensors { get; }

    private SafeTensorFile(string path, MemoryMappedFile? map, MemoryMappedViewAccessor? view, Dictionary<string, SafeTensorInfo> tensors)
    {
        Path = path;
        _map = map;
        _view = view;
        Tensors = tensors;
        if (view is not null)
        {
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            _base = p + view.PointerOffset;
        }
    }

    /// <summary>Maps and validates the file at <paramref name="path"/>.</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="InvalidDataException">The file is not a well-formed safetensors file; the message says what is wrong.</exception>
    public static SafeTensorFile Open(string path)
    {
        if (!File.Exists(path))
            throw new FileNotFoundException($"Safetensors file '{path}' does not exist.", path);
        long fileLength = new FileInfo(path).Length;
        if (fileLength < 8)
            throw new InvalidDataException($"{path}: {fileLength} bytes is too short for a safetensors file (an 8-byte header length comes first).");

        byte[] header;
        using (var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            Span<byte> lengthBytes = stackalloc byte[8];
            stream.ReadExactly(lengthBytes);
            long headerLength = BitConverter.ToInt64(lengthBytes);
            if (headerLength <= 0 || headerLength > MaxHeaderBytes || headerLength > fileLength - 8)
                throw new InvalidDataException($"{path}: header length {headerLength} does not fit the file ({fileLength} bytes; at most {Math.Min(MaxHeaderBytes, fileLength - 8)} possible). The file is truncated or not safetensors.");
            header = new byte[headerLength];
            stream.ReadExactly(header);
        }
        long dataStart = 8 + header.Length;
        var tensors = ParseHeader(path, header, dataStart, fileLength);

        if (fileLength == dataStart)
            return new SafeTensorFile(path, null, null, tensors); // only empty tensors: nothing to map
        var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        try
        {
            var view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            return new SafeTensorFile(path, map, view, tensors);
        }
        catch
        {
            map.Dispose();
            throw;
        }
    }

    private static Dictionary<string, SafeTensorInfo> ParseHeader(string path, byte[] header, long dataStart, long fileLength)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: the safetensors header is not valid JSON ({e.Message}).", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{path}: the safetensors header must be a JSON object.");
            long dataLength = fileLength - dataStart;
            var tensors = new Dictionary<string, SafeTensorInfo>(StringComparer.Ordinal);
            foreach (var entry in doc.RootElement.EnumerateObject())
            {
                if (entry.Name == "__metadata__")
                    continue;
                var info = ParseEntry(path, entry, dataStart, dataLength);
                tensors[entry.Name] = info;
            }
            // Regions must not overlap: a corrupt header could alias two tensors onto the same bytes.
            SafeTensorInfo? previous = null;
            foreach (var t in tensors.Values.Where(t => t.ByteLength > 0).OrderBy(t => t.Offset))
            {
                if (previous is not null && t.Offset < previous.Offset + previous.ByteLength)
                    throw new InvalidDataException($"{path}: tensors '{previous.Name}' and '{t.Name}' overlap (data_offsets [{previous.Offset - dataStart}, {previous.Offset - dataStart + previous.ByteLength}) and [{t.Offset - dataStart}, ...)).");
                previous = t;
            }
            return tensors;
        }
    }

    private static SafeTensorInfo ParseEntry(string path, JsonProperty entry, long dataStart, long dataLength)
    {
        string name = entry.Name;
        var e = entry.Value;
        if (e.ValueKind != JsonValueKind.Object
            || !e.TryGetProperty("dtype", out var dtypeEl) || dtypeEl.ValueKind != JsonValueKind.String
            || !e.TryGetProperty("shape", out var shapeEl) || shapeEl.ValueKind != JsonValueKind.Array
            || !e.TryGetProperty("data_offsets", out var offEl) || offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
            throw new InvalidDataException($"{path}: tensor '{name}' needs \"dtype\" (string), \"shape\" (list) and \"data_offsets\" ([begin, end]).");
        string dtypeText = dtypeEl.GetString()!;
        SafeTensorDType dtype = dtypeText switch
        {
            "BF16" => SafeTensorDType.BF16,
            "F16" => SafeTensorDType.F16,
            "F32" => SafeTensorDType.F32,
            "I32" => SafeTensorDType.I32,
            "I64" => SafeTensorDType.I64,
            _ => throw new InvalidDataException($"{path}: tensor '{name}' has dtype \"{dtypeText}\"; supported are BF16, F16, F32, I32, I64."),
        };
        var shape = new long[shapeEl.GetArrayLength()];
        long count = 1;
        int i = 0;
        foreach (var d in shapeEl.EnumerateArray())
        {
            if (!d.TryGetInt64(out long dim) || dim < 0)
                throw new InvalidDataException($"{path}: tensor '{name}' has a shape entry {d.GetRawText()}; dimensions are non-negative integers.");
            shape[i++] = dim;
            count = checked(count * dim);
        }
        if (!offEl[0].TryGetInt64(out long begin) || !offEl[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw new InvalidDataException($"{path}: tensor '{name}' has data_offsets {offEl.GetRawText()}; expected [begin, end] with 0 ≤ begin ≤ end.");
        if (end > dataLength)
            throw new InvalidDataException($"{path}: tensor '{name}' ends at data offset {end}, past the end of the data ({dataLength} bytes). The file is truncated.");
        long expectedBytes = checked(count * SafeTensorInfo.ElementSize(dtype));
        if (end - begin != expectedBytes)
            throw new InvalidDataException($"{path}: tensor '{name}' ({dtypeText} [{string.Join(", ", shape)}]) needs {expectedBytes} bytes but data_offsets span {end - begin}.");
        return new SafeTensorInfo(name, dtype, shape, dataStart + begin, end - begin);
    }

    /// <summary>The entry for <paramref name="name"/>, or an exception naming the tensor and file.</summary>
    public SafeTensorInfo Get(string name) =>
        Tensors.TryGetValue(name, out var info) ? info : throw new KeyNotFoundException($"{Path}: no tensor named '{name}'.");

    /// <summary>Pointer to the mapped data of <paramref name="info"/>; valid until this file is disposed.</summary>
    internal byte* DataPointer(SafeTensorInfo info)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _base + info.Offset;
    }

    /// <summary>The raw bytes of a tensor (over the mapping; no copy). Tensors over 2 GiB must be read through pointers.</summary>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        var info = Get(name);
        if (info.ByteLength > int.MaxValue)
            throw new NotSupportedException($"{Path}: tensor '{name}' is {info.ByteLength} bytes, larger than one span can address.");
        return info.ByteLength == 0 ? default : new ReadOnlySpan<byte>(DataPointer(info), (int)info.ByteLength);
    }

    /// <summary>Reads a floating-point tensor (BF16, F16 or F32) into a new float array.</summary>
    public float[] ReadFloat32(string name)
    {
        var info = Get(name);
        var bytes = GetBytes(name);
        var result = new float[info.ElementCount];
        switch (info.DType)
        {
            case SafeTensorDType.F32:
                bytes.CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(result.AsSpan()));
                break;
            case SafeTensorDType.BF16:
                Numerics.BFloat16.ToSingle(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bytes), result);
                break;
            case SafeTensorDType.F16:
                var halves = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes);
                for (int i = 0; i < result.Length; i++)
                    result[i] = (float)halves[i];
                break;
            default:
                throw new InvalidDataException($"{Path}: tensor '{name}' is {info.DType}; expected a floating-point dtype (BF16, F16, F32).");
        }
        return result;
    }

    /// <summary>Reads an integer tensor (I32, or I64 values that fit in 32 bits) into a new int array.</summary>
    public int[] ReadInt32(string name)
    {
        var info = Get(name);
        var bytes = GetBytes(name);
        if (info.DType == SafeTensorDType.I32)
            return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(bytes).ToArray();
        if (info.DType == SafeTensorDType.I64)
            return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(bytes).ToArray().Select(v => checked((int)v)).ToArray();
        throw new InvalidDataException($"{Path}: tensor '{name}' is {info.DType}; expected I32 or I64.");
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        if (_view is not null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _map?.Dispose();
    }
}
