using KimiLinear.Configuration;

namespace KimiLinear;

/// <summary>A loaded Kimi Linear checkpoint. Thread-safe: sessions created from it may run concurrently.</summary>
public sealed partial class KimiModel : IDisposable
{
    /// <summary>The checkpoint's configuration.</summary>
    public KimiConfig Config { get; }

    /// <summary>The checkpoint directory this model was loaded from.</summary>
    public string ModelDirectory { get; } = "";

    private KimiModel(KimiConfig config) => Config = config;

    /// <summary>Loads the checkpoint in <paramref name="modelDirectory"/> (config.json + safetensors).</summary>
    public static KimiModel Load(string modelDirectory, KimiModelOptions? options = null) =>
        throw new NotImplementedException("foundation in progress");

    /// <summary>Loads a checkpoint off the calling thread, reporting progress; cancellation leaves nothing behind.</summary>
    public static Task<KimiModel> LoadAsync(string modelDirectory, KimiModelOptions? options = null,
        IProgress<KimiLoadProgress>? progress = null, CancellationToken cancellationToken = default) =>
        throw new NotImplementedException("foundation in progress");

    /// <summary>Starts an empty sequence.</summary>
    public KimiSession CreateSession() => throw new NotImplementedException("foundation in progress");

    /// <inheritdoc />
    public void Dispose() { }
}
