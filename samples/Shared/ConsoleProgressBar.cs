namespace KimiLinear.Samples;

/// <summary>
/// Draws load progress on one line of stderr, synchronously (so reports never arrive out of order), and ends the line when
/// disposed. Nothing is drawn when stderr is redirected except the final line, and nothing at all if loading failed
/// before its first report.
/// </summary>
internal sealed class ConsoleProgressBar(string label) : IProgress<KimiLoadProgress>, IDisposable
{
    private const int Width = 30;
    private readonly System.Diagnostics.Stopwatch _watch = System.Diagnostics.Stopwatch.StartNew();
    private readonly Lock _lock = new();
    private KimiLoadProgress _last;

    public void Report(KimiLoadProgress value)
    {
        lock (_lock)
        {
            _last = value;
            if (!Console.IsErrorRedirected)
                Console.Error.Write($"\r{Render(value)}");
        }
    }

    public void Dispose()
    {
        lock (_lock)
            if (_last.Stage is not null)
                Console.Error.WriteLine($"{(Console.IsErrorRedirected ? "" : "\r")}{Render(_last)} in {_watch.Elapsed.TotalSeconds:F1} s");
    }

    private string Render(KimiLoadProgress p)
    {
        var fraction = p.BytesTotal > 0 ? Math.Clamp((double)p.BytesDone / p.BytesTotal, 0, 1) : 0;
        var filled = (int)Math.Round(fraction * Width);
        return $"{label} [{new string('#', filled)}{new string('-', Width - filled)}] {fraction,4:P0} {p.Stage,-16}";
    }
}
