namespace KimiLinear.Tests;

/// <summary>Paths of the reference data copied next to the test assembly.</summary>
public static class FixturePaths
{
    /// <summary>The folder of fixture set <paramref name="name"/> (tiny, kda_ops, tokenizer, ...).</summary>
    public static string Get(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    /// <summary>The golden tiny model's checkpoint directory.</summary>
    public static string TinyModel => Get("tiny");

    /// <summary>
    /// The built-in demo model, <c>models/kimi-linear-demo</c> at the repository root: found by walking up from the test
    /// assembly rather than copied next to it (11 MB).
    /// </summary>
    public static string DemoModel
    {
        get
        {
            const string relative = "models/kimi-linear-demo";
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, relative);
                if (File.Exists(Path.Combine(candidate, "config.json")))
                    return candidate;
            }
            throw new DirectoryNotFoundException($"No {relative}/config.json in any folder above {AppContext.BaseDirectory}.");
        }
    }
}
