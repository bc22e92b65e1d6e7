// Continues a prompt with a Kimi Linear model, streaming the text as it is generated, then reports the speed.
// With no arguments it runs the built-in demo model (a small model trained on Shakespeare) on the CPU.
using System.CommandLine;
using System.Diagnostics;
using KimiLinear.Samples;

var cli = new SampleCommandLine(defaultMaxTokens: 200);
var promptArgument = new Argument<string>("prompt") { Description = "Text to continue.", Arity = ArgumentArity.ZeroOrOne, DefaultValueFactory = _ => "ROMEO:\n" };
var root = cli.CreateRootCommand("Continues a prompt with a Kimi Linear model and streams the text.", async (parse, cancellationToken) =>
{
    var prompt = parse.GetValue(promptArgument)!;
    var options = cli.GenerationOptions(parse);
    using var model = await cli.LoadModelAsync(parse, cancellationToken);
    using var session = model.CreateSession();

    Console.Write(prompt);
    var watch = Stopwatch.StartNew();
    var firstPiece = TimeSpan.Zero;
    await foreach (var piece in session.GenerateStreamingAsync(prompt, options, cancellationToken))
    {
        if (firstPiece == TimeSpan.Zero)
            firstPiece = watch.Elapsed;
        Console.Write(piece);
    }
    var total = watch.Elapsed;
    Console.WriteLine();

    var promptTokens = model.Tokenizer!.Encode(prompt).Length;
    var generated = session.Length - promptTokens;
    var decodeRate = generated > 1 && total > firstPiece ? $", {(generated - 1) / (total - firstPiece).TotalSeconds:F1} tokens/s after the first" : "";
    Console.Error.WriteLine($"[{promptTokens} prompt tokens; {generated} generated in {total.TotalSeconds:F2} s; first text after {firstPiece.TotalSeconds:F2} s{decodeRate}]");
});
root.Add(promptArgument);
return await root.Parse(args).InvokeAsync();
