namespace KimiLinear.Generation;

/// <summary>
/// Passes streamed text through until a stop sequence appears, then cuts the text just before it. Text that could still
/// turn out to be the start of a stop sequence is held back until the next piece decides it, so nothing of a stop
/// sequence is ever released, even when it arrives split over several tokens.
/// </summary>
internal sealed class StopSequenceFilter
{
    private readonly IReadOnlyList<string> _stops;
    private string _held = "";

    public StopSequenceFilter(IReadOnlyList<string> stopSequences) => _stops = stopSequences;

    /// <summary>True once a stop sequence has been seen; later input is ignored.</summary>
    public bool Stopped { get; private set; }

    /// <summary>Adds <paramref name="piece"/> and returns the text that is now certain to be output.</summary>
    public string Push(string piece)
    {
        if (Stopped || piece.Length == 0)
            return "";
        if (_stops.Count == 0)
            return piece;

        var text = _held + piece;
        var cut = FirstStop(text);
        if (cut >= 0)
        {
            Stopped = true;
            _held = "";
            return text[..cut];
        }
        var keep = LongestStopPrefixSuffix(text);
        _held = text[^keep..];
        return text[..^keep];
    }

    /// <summary>Releases what is held back when the output ends without a stop sequence.</summary>
    public string Flush()
    {
        var rest = Stopped ? "" : _held;
        _held = "";
        return rest;
    }

    /// <summary>
    /// Where the stop sequence that completes first in <paramref name="text"/> starts (the longest one if several complete at
    /// the same character), or -1. Judging by the end, not the start, makes the result independent of how the text was
    /// split into pieces: it is the stop a character-by-character stream would have hit.
    /// </summary>
    private int FirstStop(string text)
    {
        var (start, end) = (-1, int.MaxValue);
        foreach (var stop in _stops)
        {
            var at = text.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (at + stop.Length < end || (at + stop.Length == end && at < start)))
                (start, end) = (at, at + stop.Length);
        }
        return start;
    }

    /// <summary>Length of the longest end of <paramref name="text"/> that begins some stop sequence.</summary>
    private int LongestStopPrefixSuffix(string text)
    {
        var longest = 0;
        foreach (var stop in _stops)
            for (var n = Math.Min(stop.Length - 1, text.Length); n > longest; n--)
                if (text.AsSpan(text.Length - n).SequenceEqual(stop.AsSpan(0, n)))
                {
                    longest = n;
                    break;
                }
        return longest;
    }
}
