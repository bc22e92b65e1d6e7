// Interactive chat with a Kimi Linear model through ChatSession: each turn feeds only its new tokens, replies stream as
// they are generated, Ctrl+C stops the current reply, and /save, /load carry a conversation across runs.
using System.CommandLine;
using KimiLinear;
using KimiLinear.Chat;
using KimiLinear.Samples;

var cli = new SampleCommandLine(defaultMaxTokens: 300);
var systemOption = new Option<string?>("--system") { Description = "System prompt." };
var root = cli.CreateRootCommand("Chats with a Kimi Linear model in its chat format.", async (parse, cancellationToken) =>
{
    var options = cli.GenerationOptions(parse);
    using var model = await cli.LoadModelAsync(parse, cancellationToken);
    var chat = new ChatSession(model, parse.GetValue(systemOption));
    Console.Error.WriteLine("Type a message; /save FILE, /load FILE, /reset, /quit. Ctrl+C stops a reply.");

    // Ctrl+C cancels the reply in progress instead of ending the program.
    CancellationTokenSource? reply = null;
    Console.CancelKeyPress += (_, e) =>
    {
        if (reply is { } current)
        {
            e.Cancel = true;
            current.Cancel();
        }
    };

    try
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            Console.Write("\n> ");
            var line = Console.ReadLine();
            if (line is null or "/quit")
                break;
            var command = line.Split(' ', 2, StringSplitOptions.TrimEntries);
            switch (command[0])
            {
                case "":
                    continue;
                case "/save" when command.Length == 2:
                    chat.Save(command[1]);
                    Console.Error.WriteLine($"saved {chat.Messages.Count} messages, {chat.TokenCount} tokens to {command[1]}");
                    continue;
                case "/load" when command.Length == 2:
                    try
                    {
                        var loaded = ChatSession.Load(model, command[1]);
                        chat.Dispose();
                        chat = loaded;
                        Console.Error.WriteLine($"resumed {chat.Messages.Count} messages, {chat.TokenCount} tokens");
                    }
                    catch (Exception e) when (e is IOException or InvalidDataException)
                    {
                        Console.Error.WriteLine($"error: {e.Message}");
                    }
                    continue;
                case "/reset":
                    chat.Dispose();
                    chat = new ChatSession(model, parse.GetValue(systemOption));
                    continue;
            }

            using (reply = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken))
            {
                try
                {
                    await foreach (var piece in chat.SendStreamingAsync(line, options, reply.Token))
                        Console.Write(piece);
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    Console.Error.Write(" [stopped]");
                }
            }
            reply = null;
            Console.WriteLine();
        }
    }
    finally
    {
        chat.Dispose();
    }
});
root.Add(systemOption);
return await root.Parse(args).InvokeAsync();
