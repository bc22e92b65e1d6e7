// The synchronous generation calls here are short and take an optional token; cancellation has its own tests.
#pragma warning disable xUnit1051

using KimiLinear.Generation;
using Microsoft.Extensions.Logging;

namespace KimiLinear.Tests.Generation;

public class GenerationTests
{
    private static KimiModel Model => TinyChatModel.Model;

    /// <summary>Sampling with no stop tokens, so random weights cannot end a run early by chance.</summary>
    private static GenerationOptions Sampled(int seed, int maxTokens = 12) =>
        new() { Temperature = 1, TopP = 0.95f, Seed = seed, MaxTokens = maxTokens, StopTokenIds = [] };

    private static GenerationOptions Greedy(int maxTokens) => new() { Temperature = 0, MaxTokens = maxTokens, StopTokenIds = [] };

    [Fact]
    public void Greedy_generation_matches_the_golden_decode_and_keeps_every_token_in_the_session()
    {
        var (prompt, greedy) = TinyChatModel.GoldenDecode();
        using var session = Model.CreateSession();
        Assert.Equal(greedy, session.GenerateTokens(prompt, Greedy(greedy.Length)));
        Assert.Equal(prompt.Length + greedy.Length, session.Length);
    }

    [Fact]
    public void A_second_call_continues_the_sequence_of_the_first()
    {
        var (prompt, greedy) = TinyChatModel.GoldenDecode();
        using var session = Model.CreateSession();
        var first = session.GenerateTokens(prompt, Greedy(10));
        // The session holds prompt + 10 tokens; feeding the reference's 11th gives its 12th onwards.
        var second = session.GenerateTokens(greedy.AsSpan(10, 1), Greedy(greedy.Length - 11));
        Assert.Equal(greedy[..10], first);
        Assert.Equal(greedy[11..], second);
    }

    [Fact]
    public async Task Streamed_tokens_equal_the_blocking_ones()
    {
        var (prompt, greedy) = TinyChatModel.GoldenDecode();
        using var session = Model.CreateSession();
        var streamed = new List<int>();
        await foreach (var token in session.GenerateTokensStreamingAsync(prompt, Greedy(greedy.Length), TestContext.Current.CancellationToken))
            streamed.Add(token);
        Assert.Equal(greedy, streamed);
        Assert.Equal(prompt.Length + greedy.Length, session.Length);
    }

    [Fact]
    public async Task Seeded_generation_is_deterministic_and_streaming_gives_the_same_text()
    {
        string Run(int seed)
        {
            using var session = Model.CreateSession();
            return session.Generate("To be, or not", Sampled(seed));
        }
        var first = Run(42);
        Assert.Equal(first, Run(42));
        Assert.NotEqual(first, Run(43));

        using var streaming = Model.CreateSession();
        var pieces = new List<string>();
        await foreach (var piece in streaming.GenerateStreamingAsync("To be, or not", Sampled(42), TestContext.Current.CancellationToken))
            pieces.Add(piece);
        Assert.Equal(first, string.Concat(pieces));
    }

    [Fact]
    public void Max_tokens_is_honoured()
    {
        using var session = Model.CreateSession();
        var tokens = session.GenerateTokens([1, 2, 3], Sampled(1, maxTokens: 5));
        Assert.Equal(5, tokens.Length);
        Assert.Equal(3 + 5, session.Length);
    }

    [Fact]
    public void Stop_token_ends_generation_and_stays_in_the_session()
    {
        var (prompt, greedy) = TinyChatModel.GoldenDecode();
        var at = Enumerable.Range(1, greedy.Length - 1).First(i => !greedy[..i].Contains(greedy[i]));
        using var session = Model.CreateSession();
        var tokens = session.GenerateTokens(prompt, Greedy(greedy.Length) with { StopTokenIds = [greedy[at]] });
        Assert.Equal(greedy[..at], tokens);
        Assert.Equal(prompt.Length + at + 1, session.Length);
    }

    [Fact]
    public void Stop_sequence_cuts_the_text_before_it_and_ends_generation()
    {
        const string prompt = "Once upon a time";
        string full;
        int fullLength;
        using (var session = Model.CreateSession())
        {
            full = session.Generate(prompt, Greedy(24));
            fullLength = session.Length;
        }
        // A two-character stop from the middle of the text, at its first occurrence.
        var start = Enumerable.Range(full.Length / 2, full.Length / 2 - 1).First(i => full.IndexOf(full.Substring(i, 2), StringComparison.Ordinal) == i);
        using var stopped = Model.CreateSession();
        var text = stopped.Generate(prompt, Greedy(24) with { StopSequences = ["never appears", full.Substring(start, 2)] });
        Assert.Equal(full[..start], text);
        Assert.True(stopped.Length < fullLength, "generation should end at the stop sequence");
    }

    [Fact]
    public async Task Cancellation_mid_stream_stops_at_a_token_boundary_and_the_session_goes_on()
    {
        var (prompt, greedy) = TinyChatModel.GoldenDecode();
        using var session = Model.CreateSession();
        using var cancel = new CancellationTokenSource();
        var received = new List<int>();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var token in session.GenerateTokensStreamingAsync(prompt, Greedy(greedy.Length), cancel.Token))
            {
                received.Add(token);
                if (received.Count == 3)
                    await cancel.CancelAsync();
            }
        });
        Assert.Equal(greedy[..3], received);
        Assert.Equal(prompt.Length + 3, session.Length); // the tokens received, no more

        // The same session continues exactly where the reference does.
        Assert.Equal(greedy[4..9], session.GenerateTokens(greedy.AsSpan(3, 1), Greedy(5)));

        // Text streaming: cancel after the first piece, then generate again on the same session.
        using var textCancel = new CancellationTokenSource();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in session.GenerateStreamingAsync("and", Sampled(3, 20), textCancel.Token))
                await textCancel.CancelAsync();
        });
        Assert.NotEmpty(session.Generate("more", Sampled(4, 3)));
    }

    [Fact]
    public async Task Two_sessions_generating_at_once_give_what_each_gives_alone()
    {
        string Run(string prompt, int seed)
        {
            using var session = Model.CreateSession();
            return session.Generate(prompt, Sampled(seed, 16));
        }
        var alone = (Run("First Citizen:", 1), Run("Second Citizen: we are", 2));
        for (var round = 0; round < 3; round++)
        {
            var a = Task.Run(() => Run("First Citizen:", 1), TestContext.Current.CancellationToken);
            var b = Task.Run(() => Run("Second Citizen: we are", 2), TestContext.Current.CancellationToken);
            Assert.Equal(alone, (await a, await b));
        }
    }

    [Fact]
    public void Empty_prompt_is_rejected_and_the_session_stays_usable()
    {
        using var session = Model.CreateSession();
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => session.Generate("")).Message);
        Assert.Throws<ArgumentException>(() => session.GenerateTokens([]));
        Assert.Equal(0, session.Length);
        Assert.NotEmpty(session.Generate("ok", Sampled(1, 2)));
    }

    [Theory]
    [InlineData(-0.5f, 0.9f, "Temperature")]
    [InlineData(1f, 1.5f, "TopP")]
    public void Out_of_range_options_are_named_and_nothing_runs(float temperature, float topP, string option)
    {
        using var session = Model.CreateSession();
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => session.Generate("hello", new GenerationOptions { Temperature = temperature, TopP = topP }));
        Assert.Equal(option, e.ParamName);
        Assert.Equal(0, session.Length);
        Assert.NotEmpty(session.Generate("hello", Sampled(1, 2)));
    }

    [Fact]
    public void Token_outside_the_vocabulary_is_rejected()
    {
        using var session = Model.CreateSession();
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => session.GenerateTokens([5, 600]));
        Assert.Contains("600", e.Message);
        Assert.Equal(0, session.Length);
    }

    [Fact]
    public void Prompt_longer_than_the_context_is_rejected_and_a_full_context_ends_generation()
    {
        using var model = KimiModel.Load(TinyChatModel.Directory, new KimiModelOptions { MaxSequenceLength = 64 });
        using var session = model.CreateSession();
        var e = Assert.Throws<ArgumentException>(() => session.Generate(new string('a', 64)));
        Assert.Contains("64", e.Message);
        Assert.Equal(0, session.Length);

        // 60 prompt tokens leave room for 4 generated ones, whatever MaxTokens says.
        Assert.Equal(4, session.GenerateTokens(Enumerable.Range(1, 60).ToArray(), Sampled(1, 20)).Length);
        Assert.Equal(64, session.Length);
        Assert.Throws<ArgumentException>(() => session.GenerateTokens([1], Sampled(1)));

        session.Reset();
        Assert.NotEmpty(session.Generate("short", Sampled(2, 3)));
    }

    [Fact]
    public void Text_methods_on_a_checkpoint_without_a_tokenizer_say_what_is_missing()
    {
        using var model = KimiModel.Load(Path.Combine(AppContext.BaseDirectory, "Fixtures", "tiny"));
        Assert.Null(model.Tokenizer);
        using var session = model.CreateSession();
        Assert.Contains("tiktoken.model", Assert.Throws<InvalidOperationException>(() => session.Generate("hi")).Message);
        Assert.Throws<InvalidOperationException>(() => model.AsChatClient());
        Assert.Equal(2, session.GenerateTokens([1, 2], Greedy(2)).Length);
    }

    [Fact]
    public void Generation_reports_to_the_model_logger()
    {
        var logger = new ListLogger();
        using var model = KimiModel.Load(TinyChatModel.Directory, new KimiModelOptions { Logger = logger });
        using var session = model.CreateSession();
        session.GenerateTokens([1, 2, 3, 4], Sampled(1, maxTokens: 3));
        Assert.Contains(logger.Messages, m => m.StartsWith("Generated 3 tokens after a 4-token prompt", StringComparison.Ordinal) && m.EndsWith("MaxTokens", StringComparison.Ordinal));
    }

    private sealed class ListLogger : ILogger
    {
        public List<string> Messages { get; } = [];
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Messages.Add(formatter(state, exception));
    }
}
