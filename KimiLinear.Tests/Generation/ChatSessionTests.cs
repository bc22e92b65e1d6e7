// The synchronous generation calls here are short and take an optional token; cancellation has its own tests.
#pragma warning disable xUnit1051

using KimiLinear.Chat;
using KimiLinear.Generation;
using KimiLinear.Tokenization;

namespace KimiLinear.Tests.Generation;

public class ChatSessionTests
{
    private static KimiModel Model => TinyChatModel.Model;
    private static int EndOfTurn => TinyChatModel.Special(163586);

    private static GenerationOptions Reply(int seed, int maxTokens = 8) => new() { Temperature = 1, Seed = seed, MaxTokens = maxTokens };

    /// <summary>Logits [probe.Length, vocab] of <paramref name="probe"/> fed after what <paramref name="session"/> holds.</summary>
    private static float[] Probe(KimiSession session, int[] probe) => session.Forward(probe);

    private static void AssertClose(float[] expected, float[] actual, float tolerance)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (var i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= tolerance, $"logit {i}: {actual[i]} vs {expected[i]} (tolerance {tolerance})");
    }

    [Fact]
    public void Multi_turn_chat_gives_the_logits_of_prefilling_the_whole_conversation_at_once()
    {
        using var chat = new ChatSession(Model, "You are terse.");
        chat.Send("Hi there", Reply(1));
        chat.Send("And then?", Reply(2));
        Assert.Equal(chat.Tokens.Count, chat.Session.Length);
        Assert.Equal(["system", "user", "assistant", "user", "assistant"], chat.Messages.Select(m => m.Role));
        var tokenizer = Model.Tokenizer!;
        // The first turn is exactly the chat template's encoding of the first two messages.
        var opening = tokenizer.EncodeChat([chat.Messages[0], chat.Messages[1]]);
        Assert.Equal(opening, chat.Tokens.Take(opening.Length));

        var probe = tokenizer.EncodeChat([new KimiChatMessage("user", "Last one.")]);
        var incremental = Probe(chat.Session, probe);
        using var whole = Model.CreateSession();
        var atOnce = whole.Forward([.. chat.Tokens, .. probe]);
        AssertClose(atOnce.AsSpan(atOnce.Length - incremental.Length).ToArray(), incremental, 1e-4f);
    }

    [Fact]
    public void History_added_as_messages_is_fed_as_the_chat_template_encodes_the_whole_conversation()
    {
        using var chat = new ChatSession(Model, "Be kind.");
        chat.Add(new KimiChatMessage("user", "Hello"));
        chat.Add(new KimiChatMessage("assistant", "Hi! How can I help?"));
        chat.Send("Tell me a story.", Reply(3, 2));
        var expected = Model.Tokenizer!.EncodeChat(chat.Messages.Take(4).ToList(), addGenerationPrompt: true);
        Assert.Equal(expected, chat.Tokens.Take(expected.Length));
    }

    [Fact]
    public void A_reply_cut_short_is_closed_with_end_of_turn_before_the_next_message()
    {
        using var chat = new ChatSession(Model);
        chat.Send("Hello", Reply(4, 3) with { StopTokenIds = [] });
        var replyEnd = chat.Tokens.Count;
        chat.Send("Go on", Reply(5, 2));
        Assert.Equal(EndOfTurn, chat.Tokens[replyEnd]);
        Assert.Equal(TinyChatModel.Special(163587), chat.Tokens[replyEnd + 1]); // <|im_user|>
    }

    [Fact]
    public void Saved_conversation_resumes_with_identical_logits_and_replies()
    {
        var path = Path.Combine(Path.GetTempPath(), $"kimi-chat-{Guid.NewGuid():N}.kchat");
        try
        {
            using var chat = new ChatSession(Model, "Remember this.");
            chat.Send("My name is Ada.", Reply(6));
            chat.Add(new KimiChatMessage("user", "pending message"));
            chat.Save(path);

            using var resumed = ChatSession.Load(Model, path);
            Assert.Equal(chat.Messages, resumed.Messages);
            Assert.Equal(chat.Tokens, resumed.Tokens);
            Assert.Equal(chat.TokenCount, resumed.TokenCount);
            Assert.Equal(chat.Respond(Reply(7)), resumed.Respond(Reply(7)));

            var probe = Model.Tokenizer!.EncodeChat([new KimiChatMessage("user", "What is my name?")]);
            Assert.Equal(Probe(chat.Session, probe), Probe(resumed.Session, probe));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Damaged_saved_conversation_gives_a_clear_error_and_the_model_stays_usable()
    {
        var path = Path.Combine(Path.GetTempPath(), $"kimi-chat-{Guid.NewGuid():N}.kchat");
        try
        {
            using (var chat = new ChatSession(Model))
            {
                chat.Send("Hello", Reply(8));
                chat.Save(path);
            }
            var good = File.ReadAllBytes(path);

            var flipped = good.ToArray();
            flipped[flipped.Length / 2] ^= 0x40;
            File.WriteAllBytes(path, flipped);
            var e = Assert.Throws<InvalidDataException>(() => ChatSession.Load(Model, path));
            Assert.Contains(path, e.Message);
            Assert.Contains("checksum", e.Message);

            File.WriteAllBytes(path, good[..(good.Length - 10)]);
            Assert.Contains("checksum", Assert.Throws<InvalidDataException>(() => ChatSession.Load(Model, path)).Message);

            File.WriteAllText(path, "not a chat session");
            Assert.Contains("KIMICHAT", Assert.Throws<InvalidDataException>(() => ChatSession.Load(Model, path)).Message);

            File.WriteAllBytes(path, good);
            using var resumed = ChatSession.Load(Model, path);
            Assert.NotNull(resumed.Send("Still there?", Reply(9, 2)));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Cancelled_reply_stays_in_the_conversation_and_the_chat_goes_on()
    {
        using var chat = new ChatSession(Model);
        using var cancel = new CancellationTokenSource();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var _ in chat.SendStreamingAsync("Tell me everything", Reply(10, 50) with { StopTokenIds = [] }, cancel.Token))
                await cancel.CancelAsync();
        });
        Assert.Equal("assistant", chat.Messages[^1].Role);
        Assert.Equal(chat.Tokens.Count, chat.Session.Length);
        chat.Send("Shorter, please.", Reply(11, 2));
        Assert.Equal(4, chat.Messages.Count);
    }

    [Fact]
    public void Empty_message_is_rejected_and_the_conversation_is_unchanged()
    {
        using var chat = new ChatSession(Model);
        Assert.Throws<ArgumentException>(() => chat.Send(""));
        Assert.Empty(chat.Messages);
        Assert.Equal(0, chat.TokenCount);
        Assert.Throws<InvalidOperationException>(() => chat.Respond());
    }
}
