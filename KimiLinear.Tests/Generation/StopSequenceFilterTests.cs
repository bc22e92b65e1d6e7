using KimiLinear.Generation;

namespace KimiLinear.Tests.Generation;

public class StopSequenceFilterTests
{
    private static (string Text, bool Stopped) Run(IReadOnlyList<string> stops, IEnumerable<string> pieces)
    {
        var filter = new StopSequenceFilter(stops);
        var text = string.Concat(pieces.Select(filter.Push)) + filter.Flush();
        return (text, filter.Stopped);
    }

    [Fact]
    public void Stop_sequence_split_over_pieces_is_cut_and_never_released()
    {
        var filter = new StopSequenceFilter(["lo Wo"]);
        Assert.Equal("He", filter.Push("Hel")); // the "l" could begin the stop sequence: held back
        Assert.Equal("l", filter.Push("lo W")); // "lo W" could begin it
        Assert.Equal("", filter.Push("orld"));
        Assert.True(filter.Stopped);
        Assert.Equal("", filter.Flush());
    }

    [Fact]
    public void Held_text_is_released_when_it_turns_out_not_to_be_a_stop() =>
        Assert.Equal(("abc", false), Run(["abd"], ["ab", "c"]));

    [Fact]
    public void First_stop_sequence_to_complete_wins_whatever_the_split()
    {
        Assert.Equal(("xy", true), Run(["yzw", "z"], ["xyzw"]));
        Assert.Equal(("xy", true), Run(["yzw", "z"], ["x", "y", "z", "w"]));
        Assert.Equal(("x", true), Run(["yz", "z"], ["xyz"])); // both complete at "z": the longer one starts first
    }

    [Fact]
    public void Held_text_is_flushed_at_the_end() =>
        Assert.Equal(("the en", false), Run(["end."], ["the e", "n"]));

    [Fact]
    public void Random_splits_give_the_text_up_to_the_first_stop()
    {
        var random = new Random(5);
        for (var trial = 0; trial < 2000; trial++)
        {
            string Word(int min, int max) => new([.. Enumerable.Range(0, random.Next(min, max)).Select(_ => "abc"[random.Next(3)])]);
            var text = Word(0, 40);
            var stops = Enumerable.Range(0, random.Next(0, 3)).Select(_ => Word(1, 5)).ToArray();
            var pieces = new List<string>();
            for (var at = 0; at < text.Length;)
            {
                var n = Math.Min(random.Next(0, 5), text.Length - at);
                pieces.Add(text.Substring(at, n));
                at += n;
            }
            // As if the text came one character at a time: the first stop to be complete, the longest if several are.
            var expected = (text, false);
            for (var end = 1; end <= text.Length; end++)
            {
                var ending = stops.Where(s => text[..end].EndsWith(s, StringComparison.Ordinal)).ToArray();
                if (ending.Length > 0)
                {
                    expected = (text[..(end - ending.Max(s => s.Length))], true);
                    break;
                }
            }
            Assert.True(expected == Run(stops, pieces), $"text '{text}', stops [{string.Join(", ", stops)}], pieces [{string.Join("|", pieces)}]: got {Run(stops, pieces)}, expected {expected}");
        }
    }
}
