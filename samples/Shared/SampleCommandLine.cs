using System.CommandLine;
using KimiLinear.Generation;

namespace KimiLinear.Samples;

/// <summary>
/// What every sample's command line shares: the model directory (default: the built-in demo model copied beside the
/// executable), the device, and the sampling flags, plus loading with a progress bar and turning library errors into a
/// one-line message and exit code 1.
/// </summary>
internal sealed class SampleCommandLine
{
    private static readonly GenerationOptions s_defaults = new();

    private readonly Option<string?> _model = new("--model")
    {
        Description = "Checkpoint directory (config.json, *.safetensors, tiktoken.model, tokenizer_config.json). Default: the built-in demo model.",
    };
    private readonly Option<string> _device = new("--device")
    {
        Description = "Where the model runs: cpu, cuda or auto (the GPU when usable, else the CPU).",
        DefaultValueFactory = _ => "cpu",
    };
    private readonly Option<int> _maxTokens;
    private readonly Option<float> _temperature = new("--temperature") { Description = "Sampling temperature; 0 = greedy.", DefaultValueFactory = _ => s_defaults.Temperature };
    private readonly Option<float> _topP = new("--top-p") { Description = "Nucleus sampling mass; 1 = off.", DefaultValueFactory = _ => s_defaults.TopP };
    private readonly Option<int> _topK = new("--top-k") { Description = "Keep only the k most likely tokens; 0 = off.", DefaultValueFactory = _ => s_defaults.TopK };
    private readonly Option<float> _minP = new("--min-p") { Description = "Drop tokens less likely than this fraction of the best; 0 = off.", DefaultValueFactory = _ => s_defaults.MinP };
    private readonly Option<float> _repetitionPenalty = new("--repetition-penalty") { Description = "Penalty for repeating tokens; 1 = off.", DefaultValueFactory = _ => s_defaults.RepetitionPenalty };
    private readonly Option<int?> _seed = new("--seed") { Description = "Random seed; the same seed gives the same text. Default: a fresh one." };
    private readonly Option<string[]> _stop = new("--stop") { Description = "Stop when this text appears (repeatable)." };

    public SampleCommandLine(int defaultMaxTokens)
    {
        _device.AcceptOnlyFromAmong("cpu", "cuda", "auto");
        _maxTokens = new("--max-tokens") { Description = "Most tokens to generate.", DefaultValueFactory = _ => defaultMaxTokens };
    }

    /// <summary>Where the sample projects copy the built-in demo model.</summary>
    public static string DemoModelDirectory => Path.Combine(AppContext.BaseDirectory, "models", "kimi-linear-demo");

    /// <summary>A root command with the shared options and <paramref name="run"/> as its action (errors handled).</summary>
    public RootCommand CreateRootCommand(string description, Func<ParseResult, CancellationToken, Task> run)
    {
        var root = new RootCommand(description) { _model, _device, _maxTokens, _temperature, _topP, _topK, _minP, _repetitionPenalty, _seed, _stop };
        root.SetAction(async (parse, cancellationToken) =>
        {
            try
            {
                await run(parse, cancellationToken);
                return 0;
            }
            catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or InvalidOperationException or NotSupportedException)
            {
                Console.Error.WriteLine($"error: {e.Message}");
                return 1;
            }
            catch (OperationCanceledException)
            {
                Console.Error.WriteLine("cancelled");
                return 130;
            }
        });
        return root;
    }

    /// <summary>The generation options the flags give.</summary>
    public GenerationOptions GenerationOptions(ParseResult parse) => new()
    {
        MaxTokens = parse.GetValue(_maxTokens),
        Temperature = parse.GetValue(_temperature),
        TopP = parse.GetValue(_topP),
        TopK = parse.GetValue(_topK),
        MinP = parse.GetValue(_minP),
        RepetitionPenalty = parse.GetValue(_repetitionPenalty),
        Seed = parse.GetValue(_seed),
        StopSequences = parse.GetValue(_stop) ?? [],
    };

    /// <summary>Loads the model the flags name, drawing a progress bar on stderr.</summary>
    public async Task<KimiModel> LoadModelAsync(ParseResult parse, CancellationToken cancellationToken)
    {
        var options = GenerationOptions(parse);
        options.Validate(); // bad flags fail before the (possibly long) load
        var directory = parse.GetValue(_model);
        if (directory is null)
        {
            directory = DemoModelDirectory;
            if (!File.Exists(Path.Combine(directory, "config.json")))
                throw new DirectoryNotFoundException($"The built-in demo model is not at '{directory}' (the build copies models/kimi-linear-demo there); pass --model DIR.");
        }
        var device = parse.GetValue(_device) switch { "cuda" => KimiDevice.Cuda, "auto" => KimiDevice.Auto, _ => KimiDevice.Cpu };
        using var bar = new ConsoleProgressBar($"Loading {Path.GetFileName(Path.TrimEndingDirectorySeparator(directory))}");
        return await KimiModel.LoadAsync(directory, new KimiModelOptions { Device = device }, bar, cancellationToken);
    }
}
