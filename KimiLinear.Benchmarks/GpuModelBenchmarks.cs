using System.Diagnostics;
using System.Globalization;
using System.Text;
using KimiLinear.Configuration;
using KimiLinear.Cuda;

namespace KimiLinear.Benchmarks;

/// <summary>
/// <c>dotnet KimiLinear.Benchmarks.dll model [proxy|real] [report.md] [contexts...]</c>: the whole model on the GPU with
/// synthetic weights generated on the device, as a user runs it: wall-clock time of <c>KimiSession.ForwardLast</c>
/// (logits copied back to the host every step), after warm-up. <c>proxy</c> is TARGETS.md's 48B-A3B-e64 (every
/// dimension of Kimi-Linear-48B-A3B, 64 experts instead of 256: fits one 80 GB card, reads the same bytes per token);
/// <c>real</c> is the published configuration (an H200). Prints prefill tokens/s at 1K and 32K tokens and decode
/// tokens/s at each context (default 1K and 128K), both with the logits copied to the host and as greedy generation
/// runs a step (the next token picked on the device, <c>KimiSession.ForwardGreedy</c>), with the fraction of the bandwidth floor: the bytes one decode step
/// must read (every weight but the routed experts, 8 experts of each MoE layer, the lm_head, the latent cache) over
/// 3.0 TB/s (H100) or 4.3 TB/s (H200), as TARGETS.md counts them. Then batched decode (<c>KimiModel.DecodeBatch</c>)
/// of 4 and 16 sessions at 1K context each.
/// </summary>
internal static class GpuModelBenchmarks
{
    private const int DecodeSteps = 64;

    public static int Run(string[] args)
    {
        if (!CudaDevice.IsAvailable(out string reason))
        {
            Console.Error.WriteLine(reason);
            return 1;
        }
        string variant = args.Length > 1 ? args[1] : "proxy";
        string? report = args.Length > 2 ? args[2] : null;
        int[] contexts = args.Length > 3 ? args[3..].Select(int.Parse).ToArray() : [1024, 131_072];

        string json = File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Configs", "kimi-linear-48b-a3b.json"));
        if (variant == "proxy")
            json = json.Replace("\"num_experts\": 256", "\"num_experts\": 64");
        var config = KimiConfig.Parse(json);
        var device = CudaDevice.Get(0);
        double bandwidth = device.Name.Contains("H200", StringComparison.Ordinal) ? 4.3e12 : 3.0e12; // TARGETS.md
        var output = new StringBuilder();
        void Line(string text)
        {
            Console.WriteLine(text);
            output.AppendLine(text);
        }

        // KIMI_BENCH_PIECE=n runs prompts in pieces of n tokens (KimiModelOptions.PrefillPieceTokens; default the backend's).
        int? piece = Environment.GetEnvironmentVariable("KIMI_BENCH_PIECE") is { Length: > 0 } p ? int.Parse(p) : null;
        Line($"Card: {device}, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC; model: {variant} ({config.NumExperts} experts), bf16 weights, batch 1" +
            (piece is { } n ? $", prompts in pieces of {n:N0} tokens" : ""));
        var load = Stopwatch.StartNew();
        // Room past the 1M-token context for the decode steps timed after a 1,048,576-token prompt.
        var options = new KimiModelOptions { Device = KimiDevice.Cuda, MaxSequenceLength = (1 << 20) + 4096, PrefillPieceTokens = piece };
        using var model = KimiModel.CreateSynthetic(config, options, seed: 1);
        Line($"weights generated on the device in {load.Elapsed.TotalSeconds:F1} s");
        Line("");
        Line("| measure | context | median | tokens/s | floor | of floor |");
        Line("|---|---|---|---|---|---|");
        var random = new Random(7);
        int[] Tokens(int count) => Enumerable.Range(0, count).Select(_ => random.Next(config.VocabSize)).ToArray();

        if (Environment.GetEnvironmentVariable("KIMI_BENCH_PROFILE") is { Length: > 0 } profiled)
        {
            Profile(model, profiled, Tokens);
            return 0;
        }

        // KIMI_BENCH_PREFILLS="1024,32768" (the default) picks the prompt lengths timed; "" times none (profiling decode).
        var prefills = (Environment.GetEnvironmentVariable("KIMI_BENCH_PREFILLS") ?? "1024,32768")
            .Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse);
        foreach (int prompt in prefills)
        {
            var times = new List<double>();
            // Short prompts take a few tens of ms and vary by more between runs than long ones: time more of them.
            int runs = prompt <= 8192 ? 9 : 3;
            for (int run = 0; run < runs; run++)
            {
                using var session = model.CreateSession();
                var ids = Tokens(prompt);
                var clock = Stopwatch.StartNew();
                session.ForwardLast(ids);
                times.Add(clock.Elapsed.TotalSeconds);
            }
            double median = Median(times.Skip(1).ToList()); // the first run pays for kernel loading and memory growth
            Line(string.Create(CultureInfo.InvariantCulture, $"| prefill | {prompt:N0} tokens | {median * 1e3:F1} ms | {prompt / median:N0} | | |"));
        }

        foreach (int context in contexts)
        {
            using var session = model.CreateSession();
            var clock = Stopwatch.StartNew();
            session.ForwardLast(Tokens(context));
            double prefill = clock.Elapsed.TotalSeconds;
            for (int i = 0; i < 4; i++)
                session.ForwardLast(Tokens(1));
            var steps = new List<double>();
            for (int i = 0; i < DecodeSteps; i++)
            {
                var token = Tokens(1);
                clock.Restart();
                session.ForwardLast(token);
                steps.Add(clock.Elapsed.TotalSeconds);
            }
            double median = Median(steps);
            double floor = DecodeBytes(config, context) / bandwidth;
            Line(string.Create(CultureInfo.InvariantCulture,
                $"| decode, logits to the host (prefill of the context: {prefill:F1} s) | {context:N0} | {median * 1e3:F3} ms | {1 / median:N0} | {floor * 1e3:F3} ms ({1 / floor:N0} tok/s) | {floor / median:P0} |"));
            // Greedy generation's step (GenerateTokens at temperature 0): the device picks the token, one int comes back.
            int next = session.ForwardGreedy(Tokens(1));
            steps.Clear();
            for (int i = 0; i < DecodeSteps; i++)
            {
                clock.Restart();
                next = session.ForwardGreedy([next]);
                steps.Add(clock.Elapsed.TotalSeconds);
            }
            median = Median(steps);
            Line(string.Create(CultureInfo.InvariantCulture,
                $"| decode, greedy token on the device | {context:N0} | {median * 1e3:F3} ms | {1 / median:N0} | {floor * 1e3:F3} ms ({1 / floor:N0} tok/s) | {floor / median:P0} |"));
            // Greedy generation as GenerateTokens runs it: each step feeds the token the step before chose, from where the
            // device chose it, so the next step is queued before the host has read the token.
            var choice = session.ForwardChoosing(Tokens(1));
            steps.Clear();
            for (int i = 0; i < DecodeSteps; i++)
            {
                clock.Restart();
                var nextChoice = session.FeedChoice();
                session.ReadChoice(choice);
                choice = nextChoice;
                steps.Add(clock.Elapsed.TotalSeconds);
            }
            session.ReadChoice(choice);
            median = Median(steps);
            Line(string.Create(CultureInfo.InvariantCulture,
                $"| decode, greedy generation (next step queued before the token is read) | {context:N0} | {median * 1e3:F3} ms | {1 / median:N0} | {floor * 1e3:F3} ms ({1 / floor:N0} tok/s) | {floor / median:P0} |"));
        }
        // Several sessions a step (KimiModel.DecodeBatch): the weights are read once for all of them.
        // KIMI_BENCH_BATCHES="4,16" (the default) picks the batched decode sizes timed; "" times none.
        var batches = (Environment.GetEnvironmentVariable("KIMI_BENCH_BATCHES") ?? "4,16")
            .Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse);
        foreach (int sessions in batches)
        {
            var batch = Enumerable.Range(0, sessions).Select(_ => model.CreateSession()).ToList();
            foreach (var session in batch)
                session.ForwardLast(Tokens(1024));
            model.DecodeBatch(batch, Tokens(sessions));
            var steps = new List<double>();
            var clock = new Stopwatch();
            for (int i = 0; i < DecodeSteps / 4; i++)
            {
                var tokens = Tokens(sessions);
                clock.Restart();
                model.DecodeBatch(batch, tokens);
                steps.Add(clock.Elapsed.TotalSeconds);
            }
            double median = Median(steps);
            Line(string.Create(CultureInfo.InvariantCulture,
                $"| batched decode, {sessions} sessions | 1,024 each | {median * 1e3:F3} ms a step | {sessions / median:N0} in all | | |"));
            foreach (var session in batch)
                session.Dispose();
        }
        if (report is not null)
            File.WriteAllText(report, output.ToString());
        return 0;
    }

    /// <summary>
    /// KIMI_BENCH_PROFILE="decode,prefill": under <c>ncu --profile-from-start off</c>, records one decode step at a
    /// 1K context (recorded as a graph and replayed, as in the timed runs) and one 8,192-token prefill piece that
    /// follows 8,192 tokens of context, and nothing else.
    /// </summary>
    private static void Profile(KimiModel model, string what, Func<int, int[]> tokens)
    {
        foreach (string part in what.Split(','))
        {
            using var session = model.CreateSession();
            (int context, int step) = part == "decode" ? (1024, 1) : (8192, 8192);
            session.ForwardLast(tokens(context));
            for (int i = 0; i < 4 && step == 1; i++)
                session.ForwardLast(tokens(1));
            var ids = tokens(step);
            CudaProfiler.Start();
            session.ForwardLast(ids);
            CudaProfiler.Stop();
            Console.WriteLine($"profiled: {part} ({step} tokens after {context})");
        }
    }

    /// <summary>Bytes one decode step reads: every bf16 weight except the routed experts not chosen, plus the latent cache.</summary>
    private static double DecodeBytes(KimiConfig c, int context)
    {
        double d = c.HiddenSize, kda = c.KdaHeads * c.KdaHeadDim, heads = c.MlaHeads;
        double kdaLayer = 3 * kda * d + 2 * c.KdaHeadDim * d + 2 * kda * c.KdaHeadDim + c.KdaHeads * d + kda * d;
        double mlaLayer = heads * c.QkHeadDim * d + (c.KvLoraRank + c.QkRopeHeadDim) * d
            + heads * (c.QkNopeHeadDim + c.VHeadDim) * c.KvLoraRank + d * heads * c.VHeadDim;
        double expert = 3 * c.MoeIntermediateSize * d;
        double moeLayer = c.NumExperts * d + (c.ExpertsPerToken + c.NumSharedExperts) * expert;
        double elements = c.VocabSize * d + 1 * d; // lm_head, the embedding row
        for (int i = 0; i < c.NumLayers; i++)
        {
            elements += c.LayerKinds[i] == LayerKind.Kda ? kdaLayer : mlaLayer;
            elements += c.IsMoeLayer(i) ? moeLayer : 3 * c.IntermediateSize * d;
        }
        int mlaLayers = c.LayerKinds.Count(k => k == LayerKind.Mla);
        return 2 * elements + 2.0 * mlaLayers * context * (c.KvLoraRank + c.QkRopeHeadDim);
    }

    private static double Median(List<double> values)
    {
        var sorted = values.OrderBy(v => v).ToList();
        return sorted[sorted.Count / 2];
    }
}
