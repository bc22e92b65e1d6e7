// Talks to a Kimi Linear model through Microsoft.Extensions.AI's IChatClient, the interface other providers implement
// too: one reply as a whole, then one streamed, each with its finish reason and token usage.
using System.CommandLine;
using KimiLinear.Samples;
using Microsoft.Extensions.AI;

var cli = new SampleCommandLine(defaultMaxTokens: 60);
var questions = new Argument<string[]>("questions") { Description = "User messages to send in turn.", Arity = ArgumentArity.ZeroOrMore };
var root = cli.CreateRootCommand("Chats with a Kimi Linear model through IChatClient.", async (parse, cancellationToken) =>
{
    using var model = await cli.LoadModelAsync(parse, cancellationToken);
    using IChatClient client = model.AsChatClient(cli.GenerationOptions(parse));
    var chatOptions = new ChatOptions { Instructions = "You are a helpful assistant." };

    var asked = parse.GetValue(questions) is { Length: > 0 } given ? given : ["What is the capital of France?", "And of Italy?"];
    List<ChatMessage> history = [];
    for (var i = 0; i < asked.Length; i++)
    {
        history.Add(new ChatMessage(ChatRole.User, asked[i]));
        Console.WriteLine($"user: {asked[i]}");
        Console.Write("assistant: ");
        ChatResponse response;
        if (i % 2 == 0)
        {
            response = await client.GetResponseAsync(history, chatOptions, cancellationToken);
            Console.Write(response.Text);
        }
        else
        {
            List<ChatResponseUpdate> updates = [];
            await foreach (var update in client.GetStreamingResponseAsync(history, chatOptions, cancellationToken))
            {
                Console.Write(update.Text);
                updates.Add(update);
            }
            response = updates.ToChatResponse();
        }
        history.AddMessages(response);
        Console.WriteLine();
        Console.Error.WriteLine($"[{(i % 2 == 0 ? "whole" : "streamed")}; finish: {response.FinishReason}; tokens in {response.Usage?.InputTokenCount} " +
                                $"({response.Usage?.CachedInputTokenCount} already in the state), out {response.Usage?.OutputTokenCount}]");
    }
});
root.Add(questions);
return await root.Parse(args).InvokeAsync();
