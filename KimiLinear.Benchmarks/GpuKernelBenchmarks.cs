using System.Globalization;
using System.Text;
using KimiLinear.Cuda;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;
using KimiLinear.Numerics;

namespace KimiLinear.Benchmarks;

/// <summary>
/// <c>dotnet KimiLinear.Benchmarks.dll gpu [report.md [moe]]</c>: times the CUDA kernels on the GPU with CUDA events
/// (median of 50 timed runs after warm-up, random data) and prints one table with the fraction of each ceiling:
/// the device-to-device copy bandwidth measured in the same run for memory-bound kernels, the H100's ~798 TFLOP/s
/// bf16 rate for GEMMs. Kernels whose working set would fit in L2 rotate over enough copies of their inputs to
/// exceed it, so the numbers are DRAM numbers. GEMVs are timed as 64 launches captured in one CUDA graph, as decode
/// will run them, with and without programmatic dependent launch; the table gives the time per GEMV. A third argument
/// <c>moe</c> times only the copy and the MoE kernels (<see cref="Moe"/>), <c>mla</c> only the MLA kernels: the decode
/// attention over the bf16 latent cache (one token, the model's 32 heads, cache bytes over the copy bandwidth) and the
/// expanded causal prefill (FLOPs T²/2·H·(192 + 128)·2 over the bf16 peak).
/// </summary>
internal static class GpuKernelBenchmarks
{
    private const int Runs = 50;
    private const double Bf16PeakTflops = 798; // H100 SXM, measured with PyTorch on the GPU machine (TARGETS.md)

    private sealed record Row(string Kernel, string Shape, double MedianUs, string Rate, double Fraction, string Ceiling);

    public static int Run(string[] args)
    {
        if (!CudaDevice.IsAvailable(out string reason))
        {
            Console.Error.WriteLine(reason);
            return 1;
        }
        using CudaContext gpu = CudaContext.Create(0);
        using CudaStream stream = gpu.CreateStream();
        gpu.Kernels.LoadAll(); // JIT and module loads stay out of the timings and out of graph captures
        int driver = CudaDevice.DriverVersion;
        string header = $"{gpu.Device}, driver CUDA {driver / 1000}.{driver % 1000 / 10}, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC";
        Console.WriteLine(header);
        var rows = new List<Row>();
        var random = new Random(42);

        double copyGBs = CopyBandwidth(gpu, stream, rows);
        if (args.Length > 2 && args[2] == "moe")
        {
            rows.AddRange(Moe(gpu, stream, random, copyGBs));
            return Report(args, header, rows);
        }
        if (args.Length > 2 && args[2] == "mla")
        {
            rows.AddRange(MlaKernelRows(gpu, stream, random, copyGBs));
            return Report(args, header, rows);
        }
        foreach (bool programmatic in new[] { false, true })
        {
            gpu.Kernels.ProgrammaticLaunch = programmatic;
            foreach ((int n, int k) in new[] { (4096, 2304), (2304, 4096), (6144, 2304), (163_840, 2304) })
                rows.Add(Gemv(gpu, stream, random, n, k, copyGBs, programmatic, f32Activations: false));
            // The CUDA backend's GEMV: fp32 x in, fp32 y out, the same bf16 weight stream.
            foreach ((int n, int k) in new[] { (4096, 2304), (2304, 4096), (163_840, 2304) })
                rows.Add(Gemv(gpu, stream, random, n, k, copyGBs, programmatic, f32Activations: true));
        }
        rows.AddRange(Gemm(gpu, stream, random, 32_768, 4096, 2304));
        rows.AddRange(RowKernels(gpu, stream, random, copyGBs));
        rows.AddRange(Moe(gpu, stream, random, copyGBs));
        rows.AddRange(MlaKernelRows(gpu, stream, random, copyGBs));
        return Report(args, header, rows);
    }

    private static int Report(string[] args, string header, List<Row> rows)
    {
        var table = new StringBuilder();
        table.AppendLine($"Card: {header}");
        table.AppendLine();
        table.AppendLine("| kernel | shape | median | rate | of ceiling |");
        table.AppendLine("|---|---|---|---|---|");
        foreach (Row row in rows)
            table.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {row.Kernel} | {row.Shape} | {row.MedianUs:F1} µs | {row.Rate} | {row.Fraction:P0} of {row.Ceiling} |"));
        Console.WriteLine();
        Console.Write(table);
        if (args.Length > 1) File.WriteAllText(args[1], table.ToString());
        return 0;
    }

    /// <summary>Median milliseconds of <paramref name="work"/> over <see cref="Runs"/> event-timed runs, after warm-up.</summary>
    private static double MedianMs(CudaContext gpu, CudaStream stream, Action work)
    {
        using CudaEvent start = gpu.CreateEvent(), end = gpu.CreateEvent();
        for (int i = 0; i < 5; i++) work();
        stream.Synchronize();
        var times = new double[Runs];
        for (int i = 0; i < Runs; i++)
        {
            start.Record(stream);
            work();
            end.Record(stream);
            end.Synchronize();
            times[i] = end.ElapsedMillisecondsSince(start);
        }
        Array.Sort(times);
        return times[Runs / 2];
    }

    private static double CopyBandwidth(CudaContext gpu, CudaStream stream, List<Row> rows)
    {
        const long Bytes = 1L << 30;
        using DeviceBuffer<byte> a = gpu.Allocate<byte>(Bytes), b = gpu.Allocate<byte>(Bytes);
        a.Span.Fill(0x5A, stream);
        double ms = MedianMs(gpu, stream, () => b.Span.CopyFrom(a.Span, stream));
        double gbs = 2.0 * Bytes / (ms * 1e6); // bytes read plus bytes written
        rows.Add(new Row("device-to-device copy", "1 GiB", ms * 1000, $"{gbs:F0} GB/s", 1, "itself"));
        return gbs;
    }

    /// <summary>Fills a device buffer with random bf16, repeating one random 16 Mi-element block (uploading 755 MB element by element would be slow).</summary>
    private static DeviceBuffer<ushort> RandomBf16(CudaContext gpu, CudaStream stream, Random random, long length)
    {
        int blockLength = (int)Math.Min(length, 1 << 24);
        var block = new ushort[blockLength];
        for (int i = 0; i < blockLength; i++) block[i] = BFloat16.FromSingle((float)(random.NextDouble() * 2 - 1));
        DeviceBuffer<ushort> buffer = gpu.Allocate<ushort>(length);
        for (long offset = 0; offset < length; offset += blockLength)
            buffer.Slice(offset, Math.Min(blockLength, length - offset)).CopyFrom(block.AsSpan(0, (int)Math.Min(blockLength, length - offset)), stream);
        return buffer;
    }

    /// <summary>bf16 x and y, or (<paramref name="f32Activations"/>) fp32 x and y as the CUDA backend runs it.</summary>
    private static Row Gemv(CudaContext gpu, CudaStream stream, Random random, int n, int k, double copyGBs, bool programmatic, bool f32Activations)
    {
        long bytes = 2L * n * k;
        // Enough weight copies to exceed the L2 cache (50 MB on H100) several times over.
        int copies = (int)Math.Clamp(256L * 1024 * 1024 / bytes, 1, 32);
        var weights = Enumerable.Range(0, copies).Select(_ => RandomBf16(gpu, stream, random, (long)n * k)).ToArray();
        using DeviceBuffer<ushort> x = RandomBf16(gpu, stream, random, k);
        using DeviceBuffer<ushort> y = gpu.Allocate<ushort>(n);
        using DeviceBuffer<float> x32 = gpu.Allocate<float>(k), y32 = gpu.Allocate<float>(n);
        x32.CopyFrom(Enumerable.Range(0, k).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray(), stream);
        // Many launches per graph, as in a decode step (hundreds of kernels): the graph's own launch cost is paid once.
        const int launches = 64;
        using CudaGraph graph = stream.Capture(s =>
        {
            for (int i = 0; i < launches; i++)
                if (f32Activations) MatmulKernels.Gemv(s, y32, weights[i % copies], x32, n, k);
                else MatmulKernels.Gemv(s, y, weights[i % copies], x, n, k);
        });
        double ms = MedianMs(gpu, stream, () => graph.Launch(stream)) / launches;
        foreach (DeviceBuffer<ushort> w in weights) w.Dispose();
        int activationBytes = f32Activations ? 4 : 2;
        double gbs = (bytes + activationBytes * ((double)k + n)) / (ms * 1e6);
        string kernel = (f32Activations ? "fp32-activation GEMV" : "bf16 GEMV") + (programmatic ? ", programmatic launch" : "");
        return new Row(kernel, $"[{n}×{k}]", ms * 1000, $"{gbs:F0} GB/s", gbs / copyGBs, "D2D copy");
    }

    private static IEnumerable<Row> Gemm(CudaContext gpu, CudaStream stream, Random random, int m, int n, int k)
    {
        using DeviceBuffer<ushort> a = RandomBf16(gpu, stream, random, (long)m * k), b = RandomBf16(gpu, stream, random, (long)n * k);
        using DeviceBuffer<ushort> c = gpu.Allocate<ushort>((long)m * n);
        double flops = 2.0 * m * n * k;
        string shape = $"[{m}×{k}]·[{k}×{n}]";
        double ms = MedianMs(gpu, stream, () => MatmulKernels.Gemm(stream, c, a, b, m, n, k));
        var rows = new List<Row> { GemmRow("bf16 GEMM, hand-written mma.sync", shape, ms, flops) };
        using CublasLtGemm? cublas = CublasLtGemm.TryCreate(gpu, out string reason);
        if (cublas is null)
        {
            Console.WriteLine("cuBLASLt GEMM not timed: " + reason);
            return rows;
        }
        Console.WriteLine("cuBLASLt: " + reason);
        ms = MedianMs(gpu, stream, () => cublas.Run(stream, c, a, b, m, n, k));
        rows.Add(GemmRow("bf16 GEMM, cuBLASLt", shape, ms, flops));
        return rows;
    }

    private static Row GemmRow(string kernel, string shape, double ms, double flops)
    {
        double tflops = flops / (ms * 1e9);
        return new Row(kernel, shape, ms * 1000, $"{tflops:F0} TFLOP/s", tflops / Bf16PeakTflops, "bf16 peak");
    }

    private static IEnumerable<Row> MlaKernelRows(CudaContext gpu, CudaStream stream, Random random, double copyGBs)
    {
        var shape = new MlaShape(Heads: 32, NopeDim: 128, RopeDim: 64, ValueDim: 128, Rank: 512);
        var rows = new List<Row>();
        double halfWeightBytes = (double)shape.KeyValueWidth * shape.Rank; // W_UK or W_UV: half of kvB's bf16 bytes
        Row WeightRow(string kernel, string shape, double ms) =>
            new(kernel, shape, ms * 1000, $"{halfWeightBytes / (ms * 1e6):F0} GB/s", halfWeightBytes / (ms * 1e6) / copyGBs, "D2D copy");
        using (DeviceBuffer<ushort> kvB = RandomBf16(gpu, stream, random, (long)shape.KeyValueWidth * shape.Rank))
        using (DeviceBuffer<float> q = gpu.Allocate<float>(shape.QueryWidth), queryLatent = gpu.Allocate<float>(shape.Heads * shape.LatentWidth),
               o = gpu.Allocate<float>(shape.OutputWidth))
        using (var scratch = new MlaDecodeScratch(gpu, shape, maxTokens: 1))
        using (DeviceBuffer<int> start = gpu.Allocate<int>(1))
        {
            q.CopyFrom(Enumerable.Range(0, shape.QueryWidth).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray(), stream);
            MlaKernels.AbsorbQuery(stream, queryLatent, q, kvB, shape, 1);
            double ms = MedianMs(gpu, stream, () => MlaKernels.AbsorbQuery(stream, queryLatent, q, kvB, shape, 1));
            rows.Add(WeightRow("MLA absorb query (W_UK), alone", "T=1, H=32, N=128, R=512 (4 MB, L2-resident)", ms));
            // The absorptions as a decode graph meets them: W from DRAM (16 copies of kvB, 134 MB, in turn), 16 launches
            // captured in one graph under programmatic launch; the time per launch.
            const int Copies = 16;
            var weights = Enumerable.Range(0, Copies).Select(_ => RandomBf16(gpu, stream, random, (long)shape.KeyValueWidth * shape.Rank)).ToArray();
            try
            {
                using (CudaGraph graph = stream.Capture(s =>
                {
                    foreach (DeviceBuffer<ushort> w in weights) MlaKernels.AbsorbQuery(s, queryLatent, q, w, shape, 1);
                }))
                    rows.Add(WeightRow("MLA absorb query (W_UK), 16 in a graph", "T=1, H=32, N=128, R=512 (4 MB from DRAM), per launch",
                        MedianMs(gpu, stream, () => graph.Launch(stream)) / Copies));
                foreach (int length in new[] { 1024, 131_072 })
                {
                    // The merge reads the slices one partial kernel left at this length (22 filled at 1K, all 132 at 128K).
                    using DeviceBuffer<ushort> cache = RandomBf16(gpu, stream, random, length * (long)shape.LatentWidth);
                    start.CopyFrom([length - 1], stream);
                    MlaKernels.DecodeAttention(stream, queryLatent, cache, start, 1, shape, shape.Scale, scratch);
                    MlaKernels.AbsorbOutput(stream, o, scratch, kvB, shape, 1);
                    ms = MedianMs(gpu, stream, () => MlaKernels.AbsorbOutput(stream, o, scratch, kvB, shape, 1));
                    rows.Add(WeightRow("MLA merge slices + absorb output (W_UV), alone", $"L={length}, T=1, H=32, V=128, R=512, {scratch.Splits} slices (L2-resident)", ms));
                    using CudaGraph graph = stream.Capture(s =>
                    {
                        foreach (DeviceBuffer<ushort> w in weights) MlaKernels.AbsorbOutput(s, o, scratch, w, shape, 1);
                    });
                    rows.Add(WeightRow("MLA merge slices + absorb output (W_UV), 16 in a graph",
                        $"L={length}, T=1, H=32, V=128, R=512 (4 MB from DRAM), per launch", MedianMs(gpu, stream, () => graph.Launch(stream)) / Copies));
                }
            }
            finally
            {
                foreach (DeviceBuffer<ushort> w in weights) w.Dispose();
            }
            foreach (int length in new[] { 1024, 32_768, 131_072 })
            {
                long bytes = 2L * length * shape.LatentWidth;
                // Enough cache copies to exceed the L2 cache: each run reads another one from DRAM.
                int copies = (int)Math.Clamp(256L * 1024 * 1024 / bytes, 1, 32);
                var caches = Enumerable.Range(0, copies).Select(_ => RandomBf16(gpu, stream, random, length * (long)shape.LatentWidth)).ToArray();
                start.CopyFrom([length - 1], stream);
                // The default partial kernel (wgmma on Hopper), then the mma.sync one it replaces there, on the same caches.
                foreach (bool wgmma in gpu.Kernels.RunsSm90a("mla") ? new[] { true, false } : [false])
                {
                    int next = 0;
                    ms = MedianMs(gpu, stream, () => MlaKernels.DecodeAttention(stream, queryLatent, caches[next++ % copies], start, 1, shape, shape.Scale, scratch, wgmma));
                    double gbs = bytes / (ms * 1e6);
                    rows.Add(new Row($"MLA decode attention (slices, no merge, {(wgmma ? "wgmma" : "mma.sync")})", $"L={length}, T=1, H=32, R+P=576, {scratch.Splits} slices",
                        ms * 1000, $"{gbs:F0} GB/s", gbs / copyGBs, "D2D copy"));
                }
                foreach (DeviceBuffer<ushort> cache in caches) cache.Dispose();
            }
            // A whole decode layer's three kernels as the model replays them: one captured graph, each kernel under
            // programmatic launch where the device has it. Bytes: the cache rows plus W_UK and W_UV.
            foreach (int length in new[] { 1024, 131_072 })
            {
                using DeviceBuffer<ushort> cache = RandomBf16(gpu, stream, random, length * (long)shape.LatentWidth);
                start.CopyFrom([length - 1], stream);
                foreach (bool wgmma in gpu.Kernels.RunsSm90a("mla") ? new[] { true, false } : [false])
                {
                    void Layer(CudaStream s)
                    {
                        MlaKernels.AbsorbQuery(s, queryLatent, q, kvB, shape, 1);
                        MlaKernels.DecodeAttention(s, queryLatent, cache, start, 1, shape, shape.Scale, scratch, wgmma);
                        MlaKernels.AbsorbOutput(s, o, scratch, kvB, shape, 1);
                    }
                    Layer(stream);
                    using CudaGraph graph = stream.Capture(Layer);
                    ms = MedianMs(gpu, stream, () => graph.Launch(stream));
                    double gbs = (2L * length * shape.LatentWidth + 2 * halfWeightBytes) / (ms * 1e6);
                    rows.Add(new Row($"MLA decode layer (3 kernels, one graph, {(wgmma ? "wgmma" : "mma.sync")})", $"L={length}, T=1, H=32, R+P=576, {scratch.Splits} slices",
                        ms * 1000, $"{gbs:F0} GB/s", gbs / copyGBs, "D2D copy"));
                }
            }
        }
        // From an empty cache, and the last 8K piece of a 32K prompt as the backend runs it (keys = the whole prefix).
        foreach ((int start, int tokens) in new[] { (0, 4096), (0, 32_768), (24_576, 8192) })
        {
            long length = (long)start + tokens;
            using DeviceBuffer<ushort> q = RandomBf16(gpu, stream, random, (long)tokens * shape.QueryWidth);
            using DeviceBuffer<ushort> keysValues = RandomBf16(gpu, stream, random, length * shape.KeyValueWidth);
            using DeviceBuffer<ushort> latent = RandomBf16(gpu, stream, random, length * shape.LatentWidth);
            using DeviceBuffer<float> o = gpu.Allocate<float>((long)tokens * shape.OutputWidth);
            // The causal trapezoid: query t sees start + t + 1 keys.
            double flops = ((double)length * length - (double)start * start) / 2 * shape.Heads * (shape.QueryHeadDim + shape.ValueDim) * 2;
            // The default kernel (wgmma on Hopper), then the mma.sync one it replaces there, on the same data.
            foreach (bool wgmma in gpu.Kernels.RunsSm90a("mla") ? new[] { true, false } : [false])
            {
                double ms = MedianMs(gpu, stream, () => MlaKernels.PrefillAttention(stream, o, q, keysValues, latent, start, tokens, shape, shape.Scale, wgmma));
                rows.Add(GemmRow($"MLA prefill attention (causal, {(wgmma ? "wgmma" : "mma.sync")})", $"T={tokens}, start={start}, H=32, N+P=192, V=128", ms, flops));
            }
        }
        return rows;
    }

    private static IEnumerable<Row> RowKernels(CudaContext gpu, CudaStream stream, Random random, double copyGBs)
    {
        const int Tokens = 4096, Hidden = 2304, Ffn = 9216, Vocab = 163_840, Batch = 8;
        var rows = new List<Row>();
        Row MemoryRow(string kernel, string shape, double ms, double bytes) =>
            new(kernel, shape, ms * 1000, $"{bytes / (ms * 1e6):F0} GB/s", bytes / (ms * 1e6) / copyGBs, "D2D copy");

        using (DeviceBuffer<ushort> x = RandomBf16(gpu, stream, random, (long)Tokens * Hidden), w = RandomBf16(gpu, stream, random, Hidden),
               o = gpu.Allocate<ushort>((long)Tokens * Hidden))
        using (DeviceBuffer<float> residual = gpu.Allocate<float>((long)Tokens * Hidden))
        {
            residual.Span.Fill(0.5f, stream);
            double ms = MedianMs(gpu, stream, () => ElementwiseKernels.RmsNormResidual(stream, o, residual, x.Span, w, Tokens, Hidden, 1e-5f));
            rows.Add(MemoryRow("RMSNorm + residual", $"T={Tokens}, D={Hidden}", ms, (long)Tokens * Hidden * (2 + 4 + 4 + 2)));
        }
        using (DeviceBuffer<ushort> gu = RandomBf16(gpu, stream, random, 2L * 1024 * Ffn), o = gpu.Allocate<ushort>(1024L * Ffn))
        {
            double ms = MedianMs(gpu, stream, () => ElementwiseKernels.SwiGlu(stream, o, gu, gu.Span.Slice(Ffn), 1024, Ffn, 2 * Ffn, 2 * Ffn));
            rows.Add(MemoryRow("SwiGLU", $"T=1024, F={Ffn}", ms, 1024L * Ffn * 6));
        }
        using (DeviceBuffer<ushort> table = RandomBf16(gpu, stream, random, (long)Vocab * Hidden), o = gpu.Allocate<ushort>((long)Tokens * Hidden))
        using (DeviceBuffer<int> ids = gpu.Allocate<int>(Tokens))
        {
            ids.CopyFrom(Enumerable.Range(0, Tokens).Select(_ => random.Next(Vocab)).ToArray(), stream);
            double ms = MedianMs(gpu, stream, () => ElementwiseKernels.EmbeddingGather(stream, o, table, ids, Tokens, Hidden, Vocab));
            rows.Add(MemoryRow("embedding gather", $"T={Tokens}, D={Hidden}", ms, 4L * Tokens * Hidden));
        }
        using (DeviceBuffer<float> logits = gpu.Allocate<float>((long)Batch * Vocab), probs = gpu.Allocate<float>((long)Batch * Vocab),
               u = gpu.Allocate<float>(Batch))
        using (DeviceBuffer<int> tokens = gpu.Allocate<int>(Batch))
        {
            var host = new float[(long)Batch * Vocab];
            for (int i = 0; i < host.Length; i++) host[i] = (float)(random.NextDouble() * 8 - 4);
            logits.CopyFrom(host, stream);
            u.CopyFrom([0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f, 0.8f], stream);
            string shape = $"T={Batch}, V={Vocab}";
            double ms = MedianMs(gpu, stream, () => SamplingKernels.Softmax(stream, probs, logits, Batch, Vocab));
            rows.Add(MemoryRow("softmax", shape, ms, 8.0 * Batch * Vocab));
            using var argmaxScratch = new ArgmaxScratch(stream, Batch);
            ms = MedianMs(gpu, stream, () => SamplingKernels.Argmax(stream, tokens, logits, Batch, Vocab, argmaxScratch));
            rows.Add(MemoryRow("argmax", shape, ms, 4.0 * Batch * Vocab));
            ms = MedianMs(gpu, stream, () => SamplingKernels.SampleTopKTopP(stream, tokens, logits, u, Batch, Vocab, 50, 0.8f, 0.95f));
            rows.Add(MemoryRow("top-k/top-p sample (k=50)", shape, ms, 4.0 * Batch * Vocab));
        }
        return rows;
    }

    /// <summary>
    /// The MoE kernels at the model's expert shape (D = 2304, F = 1024, A = 8): the router (decode, E = 256; prefill,
    /// E = 64); the decode experts at E = 256, 16 calls with different expert sets captured in one graph (the weights
    /// they read, 8 × 3 × 4.7 MB a token, far exceed L2), against the copy bandwidth; the prefill experts at E = 64
    /// for T = 1K and 32K with routed ids, against the bf16 peak (FLOPs = T·A·3·2·F·D). Rows marked "+ shared" run the
    /// shared expert (S = 1) as expert E of the same kernels, as the model does: A + 1 pairs a token.
    /// </summary>
    private static IEnumerable<Row> Moe(CudaContext gpu, CudaStream stream, Random random, double copyGBs)
    {
        const int D = 2304, F = 1024, A = 8;
        var rows = new List<Row>();
        var rule = new MoeRoutingRule(1, 1, true, 2.446f, false);
        // The router reads T·E logits and writes T·A ids and weights.
        Row RouteRow(int t, int e, double ms)
        {
            double gbs = ((double)t * e * 4 + (double)t * A * 8) / (ms * 1e6);
            return new Row("MoE route", $"T={t}, E={e}, A={A}", ms * 1000, $"{gbs:F0} GB/s", gbs / copyGBs, "D2D copy");
        }
        DeviceBuffer<float> RandomF32(long length, float scale)
        {
            var host = new float[length];
            for (long i = 0; i < length; i++) host[i] = (float)(random.NextDouble() * 2 - 1) * scale;
            DeviceBuffer<float> buffer = gpu.Allocate<float>(length);
            buffer.CopyFrom(host, stream);
            return buffer;
        }

        // Decode: E = 256 (the real model).
        {
            const int E = 256, Sets = 16;
            var shape = new MoeShape(D, E, A, F);
            var withShared = shape with { SharedExperts = 1 };
            // E + 1 experts: the last is the shared expert of the "+ shared" rows.
            using DeviceBuffer<ushort> gateUp = RandomBf16(gpu, stream, random, 2L * (E + 1) * F * D), down = RandomBf16(gpu, stream, random, (long)(E + 1) * D * F);
            using DeviceBuffer<float> logits = RandomF32(E, 4), bias = RandomF32(E, 0.1f), weights = gpu.Allocate<float>(A);
            using DeviceBuffer<int> route = gpu.Allocate<int>(A);
            // 64 launches in one graph, as decode runs them: launched alone, the event timing is the host's launch cost.
            const int Launches = 64;
            using (CudaGraph routes = stream.Capture(s =>
                   {
                       for (int i = 0; i < Launches; i++) MoeKernels.Route(s, route, weights, logits, bias, shape, rule, 1);
                   }))
                rows.Add(RouteRow(1, E, MedianMs(gpu, stream, () => routes.Launch(stream)) / Launches));
            // The decode router for one token: the router GEMV then the route kernel, against the fused kernel, each
            // after an RMSNorm-sized kernel as in the model (so the fused one's early weight requests have something to
            // overlap). Bytes: the router rows read.
            {
                using DeviceBuffer<ushort> router = RandomBf16(gpu, stream, random, (long)E * D);
                using DeviceBuffer<float> x = RandomF32(D, 1), routerLogits = gpu.Allocate<float>(E), normWeight = RandomF32(D, 1), normed = gpu.Allocate<float>(D);
                var routed = shape with { SharedExperts = 1 };
                using var routerScratch = new MoeDecodeScratch(stream, routed, 1);
                using DeviceBuffer<int> sharedRoute = gpu.Allocate<int>(A + 1);
                using DeviceBuffer<float> sharedWeights = gpu.Allocate<float>(A + 1);
                Row RouterRow(string kernel, Action<CudaStream> call)
                {
                    using CudaGraph graph = stream.Capture(s =>
                    {
                        for (int i = 0; i < Launches; i++)
                        {
                            ActivationKernels.RmsNorm(s, normed, x, normWeight, 1, D, 1e-5f);
                            call(s);
                        }
                    });
                    double ms = MedianMs(gpu, stream, () => graph.Launch(stream)) / Launches, gbs = (double)E * D * 2 / (ms * 1e6);
                    return new Row(kernel, $"T=1, E={E}, D={D}, A={A}+1 (after an RMSNorm)", ms * 1000, $"{gbs:F0} GB/s", gbs / copyGBs, "D2D copy");
                }
                rows.Add(RouterRow("MoE router GEMV + route (+ RMSNorm)", s =>
                {
                    MatmulKernels.Gemv(s, routerLogits, router, normed, E, D);
                    MoeKernels.Route(s, sharedRoute, sharedWeights, routerLogits, bias, routed, rule, 1);
                }));
                rows.Add(RouterRow("MoE router + route fused (+ RMSNorm)", s =>
                    MoeKernels.RouterRoute(s, sharedRoute, sharedWeights, normed, router, bias, routerScratch, routed, rule, 1)));
            }
            double ms;

            foreach (int t in new[] { 1, 4 })
            {
                // Sets of distinct experts per token, so that consecutive calls in the graph read different weights.
                var ids = new int[Sets * t * A];
                for (int i = 0; i < Sets * t; i++)
                    Enumerable.Range(0, E).OrderBy(_ => random.Next()).Take(A).ToArray().CopyTo(ids, i * A);
                int unique = Enumerable.Range(0, Sets).Sum(set => ids.AsSpan(set * t * A, t * A).ToArray().Distinct().Count()) / Sets;
                using DeviceBuffer<int> dIds = gpu.Allocate<int>(ids.Length);
                dIds.CopyFrom(ids, stream);
                using DeviceBuffer<float> x = RandomF32((long)t * D, 1), w = RandomF32(Sets * t * A, 1), output = gpu.Allocate<float>((long)t * D);
                using var scratch = new MoeDecodeScratch(stream, shape, t);
                double bytes = unique * 3.0 * F * D * 2;
                Row DecodeRow(string kernel, double share, Action<CudaStream, int> call)
                {
                    using CudaGraph graph = stream.Capture(s =>
                    {
                        for (int set = 0; set < Sets; set++) call(s, set);
                    });
                    double ms = MedianMs(gpu, stream, () => graph.Launch(stream)) / Sets;
                    double gbs = bytes * share / (ms * 1e6);
                    return new Row(kernel, $"T={t}, E={E}, A={A}, D={D}, F={F} ({unique} experts, {bytes * share / 1e6:F0} MB)", ms * 1000,
                        $"{gbs:F0} GB/s", gbs / copyGBs, "D2D copy");
                }
                DeviceSpan<int> Ids(int set) => dIds.Span.Slice(set * t * A, t * A);
                gpu.Kernels.ProgrammaticLaunch = false;
                rows.Add(DecodeRow("MoE decode gate-up alone", 2.0 / 3, (s, set) => MoeKernels.DecodeGateUp(s, scratch.Hidden, x, Ids(set), gateUp, shape, t)));
                rows.Add(DecodeRow("MoE decode down alone", 1.0 / 3,
                    (s, set) => MoeKernels.DecodeDown(s, output, scratch.Hidden, Ids(set), w.Span.Slice(set * t * A, t * A), down, shape, t)));
                foreach (bool programmatic in new[] { false, true })
                {
                    gpu.Kernels.ProgrammaticLaunch = programmatic;
                    using CudaGraph graph = stream.Capture(s =>
                    {
                        for (int set = 0; set < Sets; set++)
                            MoeKernels.DecodeExperts(s, output, x, dIds.Span.Slice(set * t * A, t * A), w.Span.Slice(set * t * A, t * A), gateUp, down, scratch, shape, t);
                    });
                    ms = MedianMs(gpu, stream, () => graph.Launch(stream)) / Sets;
                    double gbs = bytes / (ms * 1e6);
                    rows.Add(new Row(programmatic ? "MoE decode experts, programmatic launch" : "MoE decode experts",
                        $"T={t}, E={E}, A={A}, D={D}, F={F} ({unique} experts, {bytes / 1e6:F0} MB)", ms * 1000, $"{gbs:F0} GB/s", gbs / copyGBs, "D2D copy"));
                }
                {
                    // The same sets with the shared expert appended to every token's row (expert E, weight 1).
                    int pairs = withShared.PairsPerToken;
                    var sharedIds = ids.Chunk(A).SelectMany(row => row.Append(E)).ToArray();
                    using DeviceBuffer<int> dSharedIds = gpu.Allocate<int>(sharedIds.Length);
                    dSharedIds.CopyFrom(sharedIds, stream);
                    using DeviceBuffer<float> sharedWeights = RandomF32(Sets * t * pairs, 1);
                    using var sharedScratch = new MoeDecodeScratch(stream, withShared, t);
                    using CudaGraph graph = stream.Capture(s =>
                    {
                        for (int set = 0; set < Sets; set++)
                            MoeKernels.DecodeExperts(s, output, x, dSharedIds.Span.Slice(set * t * pairs, t * pairs), sharedWeights.Span.Slice(set * t * pairs, t * pairs),
                                gateUp, down, sharedScratch, withShared, t);
                    });
                    ms = MedianMs(gpu, stream, () => graph.Launch(stream)) / Sets;
                    double sharedBytes = (unique + 1) * 3.0 * F * D * 2, gbs = sharedBytes / (ms * 1e6);
                    rows.Add(new Row("MoE decode experts + shared, programmatic launch",
                        $"T={t}, E={E}+1, A={A}+1, D={D}, F={F} ({unique + 1} experts, {sharedBytes / 1e6:F0} MB)", ms * 1000, $"{gbs:F0} GB/s", gbs / copyGBs, "D2D copy"));
                }
                gpu.Kernels.ProgrammaticLaunch = gpu.Device.ComputeCapability.Major >= 9;
            }
        }

        // Prefill: E = 64 (the proxy), ids from the router on random logits.
        {
            const int E = 64;
            // E + 1 experts: the last is the shared expert of the "+ shared" rows.
            using DeviceBuffer<ushort> gateUp = RandomBf16(gpu, stream, random, 2L * (E + 1) * F * D), down = RandomBf16(gpu, stream, random, (long)(E + 1) * D * F);
            using DeviceBuffer<float> bias = RandomF32(E, 0.1f);
            // 8,192 tokens + shared: the piece the backend's prefill hands the experts at a time.
            foreach ((int t, int shared) in new[] { (1024, 0), (1024, 1), (8192, 1), (32_768, 0), (32_768, 1) })
            {
                var shape = new MoeShape(D, E, A, F, shared);
                int pairs = shape.PairsPerToken;
                using DeviceBuffer<float> logits = RandomF32((long)t * E, 4), weights = gpu.Allocate<float>((long)t * pairs);
                using DeviceBuffer<float> x = RandomF32((long)t * D, 1), output = gpu.Allocate<float>((long)t * D);
                using DeviceBuffer<int> ids = gpu.Allocate<int>((long)t * pairs);
                double ms = MedianMs(gpu, stream, () => MoeKernels.Route(stream, ids, weights, logits, bias, shape, rule, t));
                if (shared == 0)
                    rows.Add(RouteRow(t, E, ms));
                using var scratch = new MoePrefillScratch(gpu, shape, t);
                // The default grouped GEMMs (wgmma on Hopper), then the mma.sync ones they replace there, on the same data.
                foreach (bool wgmma in gpu.Kernels.RunsSm90a("moe") ? new[] { true, false } : [false])
                {
                    ms = MedianMs(gpu, stream, () => MoeKernels.PrefillExperts(stream, output, x, ids, weights, gateUp, down, scratch, shape, t, wgmma));
                    rows.Add(GemmRow($"MoE prefill experts{(shared == 0 ? "" : " + shared")} (grouped {(wgmma ? "wgmma" : "mma.sync")})",
                        $"T={t}, E={E}{(shared == 0 ? "" : "+1")}, A={A}{(shared == 0 ? "" : "+1")}, D={D}, F={F}", ms, (double)t * pairs * 6 * F * D));
                }
            }
        }
        return rows;
    }
}
