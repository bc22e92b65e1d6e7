using System.Text;
using System.Text.Json.Nodes;
using KimiLinear.Loading;

namespace KimiLinear.Tests.Loading;

/// <summary>Writes safetensors files for tests, including deliberately broken ones.</summary>
internal sealed class SafetensorsBuilder
{
    private readonly List<(string Name, string DType, long[] Shape, byte[] Data)> _tensors = [];

    public SafetensorsBuilder Add(string name, string dtype, long[] shape, byte[] data)
    {
        _tensors.Add((name, dtype, shape, data));
        return this;
    }

    /// <summary>Every tensor of the tiny golden model, optionally edited (return null to drop one).</summary>
    public static SafetensorsBuilder FromTinyModel(Func<SafeTensorInfo, (string DType, long[] Shape)?>? edit = null)
    {
        var builder = new SafetensorsBuilder();
        using var checkpoint = Checkpoint.Open(FixturePaths.TinyModel);
        foreach (string name in checkpoint.TensorNames.Order(StringComparer.Ordinal))
        {
            checkpoint.TryFind(name, out var file, out var info);
            var changed = edit is null ? (info.DType.ToString(), info.Shape) : edit(info);
            if (changed is { } c)
                builder.Add(name, c.DType, c.Shape, file.GetBytes(name).ToArray());
        }
        return builder;
    }

    /// <summary>The file's bytes; <paramref name="overrideOffsets"/> may replace a tensor's [begin, end].</summary>
    public byte[] Build(Func<string, (long Begin, long End)?>? overrideOffsets = null)
    {
        var header = new JsonObject();
        long offset = 0;
        using var data = new MemoryStream();
        foreach (var (name, dtype, shape, bytes) in _tensors)
        {
            var (begin, end) = overrideOffsets?.Invoke(name) ?? (offset, offset + bytes.Length);
            header[name] = new JsonObject
            {
                ["dtype"] = dtype,
                ["shape"] = new JsonArray(shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(begin, end),
            };
            data.Write(bytes);
            offset += bytes.Length;
        }
        byte[] json = Encoding.UTF8.GetBytes(header.ToJsonString());
        using var file = new MemoryStream();
        file.Write(BitConverter.GetBytes((long)json.Length));
        file.Write(json);
        data.Position = 0;
        data.CopyTo(file);
        return file.ToArray();
    }
}

/// <summary>A temporary directory removed on dispose.</summary>
internal sealed class TempDirectory : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("kimi-test-").FullName;

    /// <summary>A copy of the tiny golden model's files.</summary>
    public static TempDirectory WithTinyModel()
    {
        var dir = new TempDirectory();
        foreach (var file in Directory.GetFiles(FixturePaths.TinyModel))
            if (!file.EndsWith("golden.safetensors", StringComparison.Ordinal) && !file.EndsWith("golden.json", StringComparison.Ordinal))
                System.IO.File.Copy(file, System.IO.Path.Combine(dir.Path, System.IO.Path.GetFileName(file)));
        return dir;
    }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}
