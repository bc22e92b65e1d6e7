namespace KimiLinear.Tests;

/// <summary>Paths of the reference data copied next to the test assembly.</summary>
public static class FixturePaths
{
    /// <summary>The folder of fixture set <paramref name="name"/> (tiny, kda_ops, tokenizer, ...).</summary>
    public static string Get(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    /// <summary>The golden tiny model's checkpoint directory.</summary>
    public static string TinyModel => Get("tiny");
}
