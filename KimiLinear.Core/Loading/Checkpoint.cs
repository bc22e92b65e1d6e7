using System.Text.Json;

namespace KimiLinear.Loading;

/// <summary>
/// The safetensors files of one checkpoint: a single <c>model.safetensors</c>, or shards listed by
/// <c>model.safetensors.index.json</c> (<c>weight_map</c>: tensor name → shard file). Every shard is mapped and its header
/// validated at open; a tensor the index names must be in the shard it names.
/// </summary>
public sealed class Checkpoint : IDisposable
{
    private const string SingleFile = "model.safetensors";
    private const string IndexFile = "model.safetensors.index.json";

    private readonly List<SafeTensorFile> _files = [];
    private readonly Dictionary<string, SafeTensorFile> _fileOf = new(StringComparer.Ordinal);

    /// <summary>The checkpoint directory.</summary>
    public string Directory { get; }

    /// <summary>Every tensor name in the checkpoint.</summary>
    public IEnumerable<string> TensorNames => _fileOf.Keys;

    /// <summary>Bytes of tensor data in all files.</summary>
    public long TotalBytes => _files.Sum(f => f.Tensors.Values.Sum(t => t.ByteLength));

    private Checkpoint(string directory) => Directory = directory;

    /// <summary>Maps the safetensors files of the checkpoint in <paramref name="directory"/>.</summary>
    /// <exception cref="FileNotFoundException">Neither file layout is present, or a shard the index names is missing.</exception>
    /// <exception cref="InvalidDataException">A file or the index is malformed; the message names it.</exception>
    public static Checkpoint Open(string directory)
    {
        var checkpoint = new Checkpoint(directory);
        try
        {
            string index = Path.Combine(directory, IndexFile);
            string single = Path.Combine(directory, SingleFile);
            if (File.Exists(index))
                checkpoint.OpenShards(index);
            else if (File.Exists(single))
                checkpoint.Add(SafeTensorFile.Open(single));
            else
                throw new FileNotFoundException($"'{directory}' has neither {SingleFile} nor {IndexFile}.", single);
            return checkpoint;
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }
    }

    private void OpenShards(string indexPath)
    {
        Dictionary<string, string> weightMap;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(indexPath));
            if (!doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{indexPath}: expected an object \"weight_map\" of tensor name → shard file.");
            weightMap = new(StringComparer.Ordinal);
            foreach (var entry in map.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{indexPath}: weight_map entry '{entry.Name}' is {entry.Value.GetRawText()}; expected a shard file name.");
                weightMap[entry.Name] = entry.Value.GetString()!;
            }
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{indexPath}: not valid JSON ({e.Message}).", e);
        }

        var shards = new Dictionary<string, SafeTensorFile>(StringComparer.Ordinal);
        foreach (string shardName in weightMap.Values.Distinct().Order(StringComparer.Ordinal))
        {
            if (shardName.Contains('/') || shardName.Contains('\\') || shardName.Contains(".."))
                throw new InvalidDataException($"{indexPath}: shard name '{shardName}' must be a plain file name in the checkpoint directory.");
            string shardPath = Path.Combine(Directory, shardName);
            if (!File.Exists(shardPath))
                throw new FileNotFoundException($"Shard '{shardName}' named by {indexPath} is missing from '{Directory}'.", shardPath);
            var file = SafeTensorFile.Open(shardPath);
            _files.Add(file);
            shards[shardName] = file;
        }
        foreach (var (tensor, shardName) in weightMap)
        {
            var file = shards[shardName];
            if (!file.Tensors.ContainsKey(tensor))
                throw new InvalidDataException($"{indexPath} places tensor '{tensor}' in '{shardName}', but that shard has no such tensor.");
            _fileOf[tensor] = file;
        }
    }

    private void Add(SafeTensorFile file)
    {
        _files.Add(file);
        foreach (var name in file.Tensors.Keys)
            _fileOf[name] = file;
    }

    /// <summary>The file and header entry of <paramref name="name"/>, or false when the checkpoint lacks it.</summary>
    public bool TryFind(string name, out SafeTensorFile file, out SafeTensorInfo info)
    {
        if (_fileOf.TryGetValue(name, out var f))
        {
            file = f;
            info = f.Tensors[name];
            return true;
        }
        file = null!;
        info = null!;
        return false;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var f in _files)
            f.Dispose();
        _files.Clear();
        _fileOf.Clear();
    }
}
