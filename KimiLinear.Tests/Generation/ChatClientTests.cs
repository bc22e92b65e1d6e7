using KimiLinear.Generation;
using Microsoft.Extensions.AI;

namespace KimiLinear.Tests.Generation;

public class ChatClientTests
{
    private static KimiModel Model => TinyChatModel.Model;

    [Fact]
    public async Task Streaming_and_non_streaming_give_the_same_reply()
    {
        var ct = TestContext.Current.CancellationToken;
        using var client = Model.AsChatClient();
        var options = new ChatOptions { Seed = 5, Temperature = 1, MaxOutputTokens = 6 };
        ChatMessage[] messages = [new(ChatRole.System, "Be brief."), new(ChatRole.User, "Hello")];

        var response = await client.GetResponseAsync(messages, options, ct);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in client.GetStreamingResponseAsync(messages, options, ct))
            updates.Add(update);

        Assert.Equal(ChatRole.Assistant, response.Messages.Single().Role);
        Assert.Equal(response.Text, string.Concat(updates.Select(u => u.Text)));
        Assert.Equal(response.FinishReason, updates[^1].FinishReason);
        var usage = updates[^1].Contents.OfType<UsageContent>().Single().Details;
        Assert.Equal(response.Usage!.OutputTokenCount, usage.OutputTokenCount);
        Assert.InRange(usage.OutputTokenCount!.Value, 1, 6);
    }

    [Fact]
    public async Task Max_output_tokens_gives_finish_reason_length()
    {
        using var client = Model.AsChatClient(new GenerationOptions { StopTokenIds = [] });
        var response = await client.GetResponseAsync([new(ChatRole.User, "Count to ten")],
            new ChatOptions { MaxOutputTokens = 3, Temperature = 0 }, TestContext.Current.CancellationToken);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        Assert.Equal(3, response.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task A_call_that_extends_the_last_conversation_reuses_its_state()
    {
        var ct = TestContext.Current.CancellationToken;
        using var client = Model.AsChatClient(new GenerationOptions { StopTokenIds = [], MaxTokens = 4 });
        List<ChatMessage> conversation = [new(ChatRole.User, "Hello")];
        var first = await client.GetResponseAsync(conversation, cancellationToken: ct);
        conversation.AddRange(first.Messages);
        conversation.Add(new(ChatRole.User, "More"));
        var second = await client.GetResponseAsync(conversation, cancellationToken: ct);
        Assert.Equal(first.Usage!.TotalTokenCount, second.Usage!.CachedInputTokenCount);

        // A conversation that does not extend it starts afresh.
        var other = await client.GetResponseAsync([new(ChatRole.User, "Unrelated")], cancellationToken: ct);
        Assert.Equal(0, other.Usage!.CachedInputTokenCount);
    }

    [Fact]
    public async Task Tools_are_refused_clearly()
    {
        using var client = Model.AsChatClient();
        var options = new ChatOptions { Tools = [AIFunctionFactory.Create(() => 42, "answer")] };
        await Assert.ThrowsAsync<NotSupportedException>(() => client.GetResponseAsync([new(ChatRole.User, "Hi")], options, TestContext.Current.CancellationToken));
    }

    [Fact]
    public void Metadata_and_services_are_exposed()
    {
        using var client = Model.AsChatClient();
        Assert.Equal("KimiLinear", client.GetService<ChatClientMetadata>()!.ProviderName);
        Assert.Same(Model, client.GetService<KimiModel>());
        Assert.Same(client, client.GetService<IChatClient>());
    }
}
