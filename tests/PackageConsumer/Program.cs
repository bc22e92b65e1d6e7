// Generates text with the packaged library, as a user's app would: load, generate, chat through IChatClient.
// Usage: PackageConsumer MODEL_DIR. Exits 1 when anything fails or no text comes out.
using KimiLinear;
using KimiLinear.Generation;
using Microsoft.Extensions.AI;

if (args.Length != 1)
{
    Console.Error.WriteLine("usage: PackageConsumer MODEL_DIR");
    return 2;
}

using var model = await KimiModel.LoadAsync(args[0]);
using var session = model.CreateSession();
var text = session.Generate("ROMEO:\n", new GenerationOptions { MaxTokens = 24, Seed = 1 });
Console.WriteLine($"generated: {text}");

using var client = model.AsChatClient(new GenerationOptions { MaxTokens = 8, Seed = 2 });
var reply = await client.GetResponseAsync([new ChatMessage(ChatRole.User, "Hello")]);
Console.WriteLine($"chat client ({reply.FinishReason}, {reply.Usage?.OutputTokenCount} tokens): {reply.Text}");

if (text.Length == 0 || reply.Usage?.OutputTokenCount is not > 0)
{
    Console.Error.WriteLine("package consumer: no text was generated");
    return 1;
}
Console.WriteLine($"package consumer: OK (KimiLinear.Core {typeof(KimiModel).Assembly.GetName().Version})");
return 0;
