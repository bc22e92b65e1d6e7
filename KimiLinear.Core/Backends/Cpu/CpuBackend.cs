using System.Numerics.Tensors;
using KimiLinear.Layers;
using KimiLinear.Loading;
using KimiLinear.State;

namespace KimiLinear.Backends.Cpu;

/// <summary>
/// The CPU implementation of every kernel: fp32 activations and state, bf16 weights read from the mapped checkpoint.
/// This is the executable specification the GPU backend is tested against, so each method is the plain math of the spec
/// (`spec/kimi-linear.md`), vectorised with TensorPrimitives and parallel over rows or heads where the work is large.
/// Stateless apart from its options, so sessions may call it from several threads at once.
/// </summary>
internal sealed class CpuBackend(int? threads = null, int tokensPerForward = CpuBackend.DefaultTokensPerForward) : IKimiBackend
{
    /// <summary>Multiply-adds below which an element-wise kernel runs on the calling thread rather than the pool.</summary>
    private const long SerialWorkLimit = 1 << 16;

    /// <summary>Floats of scratch that may live on the stack.</summary>
    private const int StackScratchLimit = 1024;

    private readonly ParallelOptions _parallel = new() { MaxDegreeOfParallelism = threads ?? Environment.ProcessorCount };

    private static CpuTensor Cpu(Tensor t) => t as CpuTensor
        ?? throw new ArgumentException($"Tensor {t} belongs to another backend; the CPU backend takes only its own tensors.");

    public string DeviceName => $"CPU ({_parallel.MaxDegreeOfParallelism} threads)";

    /// <summary>Nothing to do: the CPU reads bf16 weights from the mapped checkpoint.</summary>
    public void PrepareWeights(IReadOnlyList<WeightMatrix> matrices, IReadOnlyList<MoeExperts> experts, IProgress<long> uploaded,
        CancellationToken cancellationToken) { }

    public Tensor Allocate(int rows, int cols) => new CpuTensor(rows, cols);

    public void Clear(Tensor tensor) => Cpu(tensor).Span.Clear();

    public Tensor AllocateState(int rows, int cols) => new CpuTensor(rows, cols);

    public Tensor AllocateCache(int rows, int cols) => new CpuTensor(rows, cols);

    public Tensor GrowRows(Tensor tensor, int validRows, int rows)
    {
        var grown = new CpuTensor(rows, tensor.Cols);
        CopyRows(tensor, validRows, grown, 0);
        return grown;
    }

    /// <summary>Nothing to scope: activations are garbage-collected arrays, and sessions may run concurrently.</summary>
    public IDisposable BeginForward() => NoScope.Instance;

    /// <summary>
    /// Tokens a forward step takes by default: a longer prompt runs in pieces, so its activations (a few KB a token a
    /// tensor) stay bounded; the state carries between pieces exactly as between calls.
    /// </summary>
    public const int DefaultTokensPerForward = 4096;

    public int MaxTokensPerForward { get; } = tokensPerForward > 0 ? tokensPerForward
        : throw new ArgumentOutOfRangeException(nameof(tokensPerForward), tokensPerForward,
            "KimiModelOptions.PrefillPieceTokens must be at least 1 (a forward step takes at least one token).");

    /// <summary>Nothing to release: the garbage collector frees a layer's arrays.</summary>
    public IDisposable BeginScratch() => NoScope.Instance;

    /// <summary>Runs the step: on the CPU there is no launch overhead to save.</summary>
    public Tensor RunDecodeStep(SessionState state, int token, int position, Func<int, Tensor> step) =>
        step(token == IKimiBackend.ChosenToken ? Choices(state).Latest : token);

    public GreedyChoice ChooseNext(SessionState state, Tensor logits)
    {
        var row = Cpu(logits);
        if (row.Rows != 1)
            throw new ArgumentException($"ChooseNext takes one row of logits, not {row}.", nameof(logits));
        return Choices(state).Add(TensorPrimitives.IndexOfMax<float>(row.Span));
    }

    public int ReadChoice(SessionState state, GreedyChoice choice) => Choices(state).Read(choice);

    private static GreedyChoices Choices(SessionState state)
    {
        if (state.Decoder is GreedyChoices choices)
            return choices;
        state.Decoder?.Dispose();
        return (GreedyChoices)(state.Decoder = new GreedyChoices());
    }

    /// <summary>A session's two latest greedy choices, known at once on the CPU.</summary>
    private sealed class GreedyChoices : IDisposable
    {
        private readonly int[] _tokens = new int[2];
        private long _count;

        public GreedyChoice Add(int token)
        {
            _count++;
            _tokens[GreedyChoice.SlotOf(_count)] = token;
            return new GreedyChoice(_count);
        }

        public int Latest => _count > 0 ? _tokens[GreedyChoice.SlotOf(_count)]
            : throw new InvalidOperationException("A decode step of the chosen token, but no greedy choice was made for this session.");

        public int Read(GreedyChoice choice) => _tokens[choice.Slot(_count)];

        public void Dispose() { }
    }

    private sealed class NoScope : IDisposable
    {
        public static readonly NoScope Instance = new();
        public void Dispose() { }
    }

    public void Upload(ReadOnlySpan<float> source, Tensor destination) => source.CopyTo(Cpu(destination).Span);

    public void Download(Tensor source, Span<float> destination) => Cpu(source).Span.CopyTo(destination);

    public void CopyRows(Tensor source, int rows, Tensor destination, int destinationRow)
    {
        var (s, d) = (Cpu(source), Cpu(destination));
        if (s.Cols != d.Cols || destinationRow + rows > d.Rows || rows > s.Rows)
            throw new ArgumentException($"CopyRows: {rows} rows of {s} into {d} at row {destinationRow}.");
        s.Span[..(rows * s.Cols)].CopyTo(d.Span[(destinationRow * d.Cols)..]);
    }

    public void WriteLatentRows(RmsNormed latent, Tensor sharedKey, Tensor destination, int row)
    {
        var (l, r, d) = (Cpu(latent.Input), Cpu(sharedKey), Cpu(destination));
        if (l.Rows != r.Rows || l.Cols + r.Cols != d.Cols || row + l.Rows > d.Rows || latent.Weight.Length != l.Cols)
            throw new ArgumentException($"WriteLatentRows: {l} (norm weight [{latent.Weight.Length}]) | {r} into {d} at row {row}.");
        for (int t = 0; t < l.Rows; t++)
        {
            RmsNormRow(l.Row(t), latent.Weight, latent.Eps, d.Row(row + t)[..l.Cols]);
            r.Row(t).CopyTo(d.Row(row + t)[l.Cols..]);
        }
    }

    /// <summary>The specification of the batched form: one single-row write a cache.</summary>
    public void WriteLatentRows(RmsNormed latent, Tensor sharedKey, IReadOnlyList<Tensor> destinations, ReadOnlySpan<int> rows)
    {
        if (latent.Input.Rows != destinations.Count || sharedKey.Rows != destinations.Count || rows.Length != destinations.Count)
            throw new ArgumentException($"WriteLatentRows: {destinations.Count} caches for {latent.Input.Rows} | {sharedKey.Rows} rows at {rows.Length} positions.");
        for (int n = 0; n < destinations.Count; n++)
            WriteLatentRows(latent with { Input = RowOf(latent.Input, n) }, RowOf(sharedKey, n), destinations[n], rows[n]);
    }

    public void Embed(WeightMatrix table, ReadOnlySpan<int> ids, Tensor x)
    {
        var output = Cpu(x);
        for (int t = 0; t < ids.Length; t++)
            table.RowToSingle(ids[t], output.Row(t));
    }

    public void MatMul(RmsNormed x, ReadOnlySpan<WeightMatrix> weights, ReadOnlySpan<Tensor> outputs)
    {
        var normed = Allocate(x.Input.Rows, x.Input.Cols);
        RmsNorm(x.Input, x.Weight, x.Eps, normed);
        MatMul(normed, weights, outputs);
    }

    public void RmsNorm(Tensor x, float[] weight, float eps, Tensor y)
    {
        var (input, output) = (Cpu(x), Cpu(y));
        for (int t = 0; t < input.Rows; t++)
            RmsNormRow(input.Row(t), weight, eps, output.Row(t));
    }

    private static void RmsNormRow(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps, Span<float> y)
    {
        float meanSquare = TensorPrimitives.SumOfSquares(x) / x.Length;
        float inverse = 1f / MathF.Sqrt(meanSquare + eps);
        TensorPrimitives.Multiply(x, inverse, y);
        TensorPrimitives.Multiply(y, weight, y);
    }

    public void AddRmsNorm(Tensor residual, Tensor x, float[] weight, float eps, Tensor y)
    {
        Add(residual, x);
        RmsNorm(residual, weight, eps, y);
    }

    public void Add(Tensor accumulator, Tensor x) => TensorPrimitives.Add(Cpu(accumulator).Span, Cpu(x).Span, Cpu(accumulator).Span);

    public void MatMul(Tensor x, WeightMatrix w, Tensor y)
    {
        var (input, output) = (Cpu(x), Cpu(y));
        if (input.Cols != w.Cols || output.Cols != w.Rows || output.Rows != input.Rows)
            throw new ArgumentException($"MatMul '{w.Name}' [{w.Rows}, {w.Cols}]: x {input} and y {output} do not fit.");
        CpuMatMul.Multiply(input.Data, input.Rows, w, output.Data, _parallel);
    }

    public void MatMul(Tensor x, ReadOnlySpan<WeightMatrix> weights, ReadOnlySpan<Tensor> outputs)
    {
        for (int i = 0; i < weights.Length; i++)
            MatMul(x, weights[i], outputs[i]);
    }

    public void MatMul(ReadOnlySpan<Tensor> inputs, ReadOnlySpan<WeightMatrix> weights, ReadOnlySpan<Tensor> outputs)
    {
        for (int i = 0; i < weights.Length; i++)
            MatMul(inputs[i], weights[i], outputs[i]);
    }

    public void SwiGlu(Tensor gate, Tensor up, Tensor output)
    {
        // Element-wise, so output may alias gate or up.
        Span<float> g = Cpu(gate).Span, u = Cpu(up).Span, o = Cpu(output).Span;
        for (int i = 0; i < o.Length; i++)
            o[i] = g[i] / (1f + MathF.Exp(-g[i])) * u[i];
    }

    /// <summary>
    /// Causal depthwise conv + SiLU with a carried window: y[t,c] = SiLU(Σ_w taps[c,w] · p[t−W+1+w, c]) where inputs
    /// before this call come from <paramref name="window"/>, which is then updated to the last W−1 inputs.
    /// x, y: [T, C]; taps: [C, W] (tap W−1 multiplies the current token); window: [W−1, C], oldest first.
    /// </summary>
    public void ShortConvSilu(Tensor x, float[] taps, Tensor window, Tensor y)
    {
        var (input, state, output) = (Cpu(x), Cpu(window), Cpu(y));
        int tokens = input.Rows, channels = input.Cols, width = state.Rows + 1;
        // Decode is a few thousand multiply-adds, less than the cost of waking a pool thread.
        if ((long)tokens * channels * width < SerialWorkLimit)
            for (int c = 0; c < channels; c++)
                ShortConvChannel(input, taps, state, output, c);
        else
            Parallel.For(0, channels, _parallel, c => ShortConvChannel(input, taps, state, output, c));
        SiluInPlace(output.Span);
    }

    /// <summary>
    /// Channel <paramref name="c"/> of <see cref="ShortConvSilu"/> before the SiLU (applied to the whole output at once,
    /// vectorised). Position p of the channel's sequence is carried input p for p &lt; W−1, else this call's input p − (W−1).
    /// </summary>
    private static void ShortConvChannel(CpuTensor input, float[] taps, CpuTensor state, CpuTensor output, int c)
    {
        int tokens = input.Rows, channels = input.Cols, history = state.Rows, width = history + 1;
        float[] carried = state.Data, x = input.Data;
        int channelTaps = c * width;
        float At(int p) => p < history ? carried[p * channels + c] : x[(p - history) * channels + c];
        for (int t = 0; t < tokens; t++)
        {
            // a plain loop: the window is a handful of taps, shorter than a vector
            float sum = 0;
            for (int i = 0; i < width; i++)
                sum += taps[channelTaps + i] * At(t + i);
            output.Data[t * channels + c] = sum;
        }
        // The new window is positions [T, T + W−1); in place, since slot i reads position T + i > i, not yet overwritten.
        for (int i = 0; i < history; i++)
            carried[i * channels + c] = At(tokens + i);
    }

    /// <summary>x ← SiLU(x) = x · sigmoid(x), a stack buffer of sigmoids at a time.</summary>
    private static void SiluInPlace(Span<float> x)
    {
        Span<float> sigmoid = stackalloc float[StackScratchLimit];
        for (int i = 0; i < x.Length; i += sigmoid.Length)
        {
            var chunk = x.Slice(i, Math.Min(sigmoid.Length, x.Length - i));
            var s = sigmoid[..chunk.Length];
            TensorPrimitives.Sigmoid(chunk, s);
            TensorPrimitives.Multiply(chunk, s, chunk);
        }
    }

    public void KdaMixer(KdaMixerInputs inputs, KdaMixerParameters parameters, KdaLayerState state, Tensor y)
    {
        int tokens = inputs.Query.Rows, heads = parameters.Heads, headDim = parameters.HeadDim;
        var q = Allocate(tokens, inputs.Query.Cols);  // [T, H·K] after conv + SiLU
        var k = Allocate(tokens, inputs.Key.Cols);    // [T, H·K]
        var v = Allocate(tokens, inputs.Value.Cols);  // [T, H·V]
        ShortConvSilu(inputs.Query, parameters.QueryConv, state.QueryWindow, q);
        ShortConvSilu(inputs.Key, parameters.KeyConv, state.KeyWindow, k);
        ShortConvSilu(inputs.Value, parameters.ValueConv, state.ValueWindow, v);
        var g = Allocate(tokens, inputs.Forget.Cols); // [T, H·K] log decay, ≤ 0
        KdaGate(inputs.Forget, parameters.ALog, parameters.DtBias, g);
        var beta = Allocate(tokens, heads);           // [T, H]
        TensorPrimitives.Sigmoid(Cpu(inputs.Beta).Span, Cpu(beta).Span);
        var o = Allocate(tokens, heads * headDim);    // [T, H·V]
        KdaCore(q, k, v, g, beta, state.Recurrent, o, heads, headDim, headDim, chunked: tokens > 1);
        GatedRmsNorm(o, inputs.OutputGate, parameters.OutputNorm, parameters.Eps, y);
    }

    /// <summary>The specification of the batched form: one single-token <see cref="KdaMixer(KdaMixerInputs, KdaMixerParameters, KdaLayerState, Tensor)"/> a sequence.</summary>
    public void KdaMixer(KdaMixerInputs inputs, KdaMixerParameters parameters, IReadOnlyList<KdaLayerState> states, Tensor y)
    {
        if (inputs.Query.Rows != states.Count || y.Rows != states.Count)
            throw new ArgumentException($"KdaMixer: {states.Count} states for {inputs.Query.Rows} input rows and {y.Rows} output rows.");
        var output = Allocate(1, y.Cols);
        for (int n = 0; n < states.Count; n++)
        {
            var row = new KdaMixerInputs(RowOf(inputs.Query, n), RowOf(inputs.Key, n), RowOf(inputs.Value, n), RowOf(inputs.Forget, n),
                RowOf(inputs.Beta, n), RowOf(inputs.OutputGate, n));
            KdaMixer(row, parameters, states[n], output);
            Cpu(output).Span.CopyTo(Cpu(y).Row(n));
        }
    }

    /// <summary>A copy of row <paramref name="row"/> of <paramref name="x"/> as a [1, cols] tensor.</summary>
    private CpuTensor RowOf(Tensor x, int row)
    {
        var copy = new CpuTensor(1, x.Cols);
        Cpu(x).Row(row).CopyTo(copy.Span);
        return copy;
    }

    /// <summary>g[t, h·K+d] = −exp(aLog[h]) · softplus(f[t, h·K+d] + dtBias[h·K+d]) (softplus linear above 20). f, g: [T, H·K].</summary>
    public void KdaGate(Tensor f, float[] aLog, float[] dtBias, Tensor g)
    {
        var (input, output) = (Cpu(f), Cpu(g));
        int width = dtBias.Length, headDim = width / aLog.Length;
        for (int t = 0; t < input.Rows; t++)
        {
            var fr = input.Row(t);
            var gr = output.Row(t);
            for (int c = 0; c < width; c++)
            {
                float z = fr[c] + dtBias[c];
                float softplus = z > 20f ? z : MathF.Log(1f + MathF.Exp(z));  // PyTorch's threshold: linear above 20
                gr[c] = -MathF.Exp(aLog[c / headDim]) * softplus;
            }
        }
    }

    /// <summary>
    /// The KDA core over T tokens: L2-normalise q and k per head, scale q by K^−½, gated delta rule on the fp32 state.
    /// q, k, g: [T, H·K]; v, o: [T, H·V]; beta: [T, H]; state: [H, K·V] (row = key channel), updated in place.
    /// <paramref name="chunked"/> selects the chunkwise-parallel prefill algorithm (else the token-by-token recurrence).
    /// </summary>
    public void KdaCore(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor state, Tensor o, int heads, int keyDim, int valueDim, bool chunked)
    {
        int tokens = Cpu(q).Rows;
        if (chunked)
            global::KimiLinear.Backends.Cpu.KdaCore.Chunked(Cpu(q).Data, Cpu(k).Data, Cpu(v).Data, Cpu(g).Data, Cpu(beta).Data,
                Cpu(state).Data, Cpu(o).Data, tokens, heads, keyDim, valueDim);
        else
            global::KimiLinear.Backends.Cpu.KdaCore.Recurrent(Cpu(q).Data, Cpu(k).Data, Cpu(v).Data, Cpu(g).Data, Cpu(beta).Data,
                Cpu(state).Data, Cpu(o).Data, tokens, heads, keyDim, valueDim);
    }

    /// <summary>y[t, h] = o[t, h] · rsqrt(mean(o[t, h]²) + eps) · weight ⊙ sigmoid(z[t, h]) per head of width weight.Length. o, z, y: [T, H·V].</summary>
    public void GatedRmsNorm(Tensor o, Tensor z, float[] weight, float eps, Tensor y)
    {
        var (input, gate, output) = (Cpu(o), Cpu(z), Cpu(y));
        int width = weight.Length, groups = input.Cols / width;
        for (int t = 0; t < input.Rows; t++)
            for (int h = 0; h < groups; h++)
            {
                var span = output.Data.AsSpan(t * input.Cols + h * width, width);
                RmsNormRow(input.Data.AsSpan(t * input.Cols + h * width, width), weight, eps, span);
                var zs = gate.Data.AsSpan(t * input.Cols + h * width, width);
                for (int i = 0; i < width; i++)
                    span[i] *= 1f / (1f + MathF.Exp(-zs[i]));
            }
    }

    public void MlaAttention(Tensor q, Tensor latent, int start, WeightMatrix kvB, Tensor o, int heads, int nopeDim, int ropeDim, int valueDim, bool absorbed)
    {
        var (queries, cache, output) = (Cpu(q), Cpu(latent), Cpu(o));
        float scale = 1f / MathF.Sqrt(nopeDim + ropeDim); // no YaRN/mscale factor: nothing is rotated
        if (absorbed)
            MlaAbsorbed(queries, cache, start, kvB, output, heads, nopeDim, ropeDim, valueDim, kvB.Cols, scale);
        else
            MlaExpanded(queries, cache, start, kvB, output, heads, nopeDim, ropeDim, valueDim, kvB.Cols, scale);
    }

    /// <summary>The specification of the batched form: one single-row absorbed attention a cache.</summary>
    public void MlaAttention(Tensor q, IReadOnlyList<Tensor> latents, ReadOnlySpan<int> starts, WeightMatrix kvB, Tensor o, int heads, int nopeDim, int ropeDim, int valueDim)
    {
        if (q.Rows != latents.Count || o.Rows != latents.Count || starts.Length != latents.Count)
            throw new ArgumentException($"MlaAttention: {latents.Count} caches for {q.Rows} query rows, {o.Rows} output rows and {starts.Length} starts.");
        var output = Allocate(1, o.Cols);
        for (int n = 0; n < latents.Count; n++)
        {
            MlaAttention(RowOf(q, n), latents[n], starts[n], kvB, output, heads, nopeDim, ropeDim, valueDim, absorbed: true);
            Cpu(output).Span.CopyTo(Cpu(o).Row(n));
        }
    }

    /// <summary>Expand every cached latent into per-head keys and values (the MHA form), then causal softmax attention.</summary>
    private void MlaExpanded(CpuTensor queries, CpuTensor cache, int start, WeightMatrix kvB, CpuTensor output,
        int heads, int nopeDim, int ropeDim, int valueDim, int rank, float scale)
    {
        int tokens = queries.Rows, length = start + tokens, perHead = nopeDim + valueDim, qkDim = nopeDim + ropeDim;
        var compressed = new CpuTensor(length, rank);            // [L, R] c_n
        for (int s = 0; s < length; s++)
            cache.Row(s)[..rank].CopyTo(compressed.Row(s));
        var keysValues = new CpuTensor(length, heads * perHead); // [L, H·(nope + V)]
        MatMul(compressed, kvB, keysValues);
        Parallel.For(0, heads * tokens, _parallel, () => new float[length], (work, _, scores) =>
        {
            int h = work / tokens, t = work % tokens, visible = start + t + 1;
            var qRow = queries.Row(t).Slice(h * qkDim, qkDim);
            for (int s = 0; s < visible; s++)
            {
                var kv = keysValues.Row(s).Slice(h * perHead, perHead);
                scores[s] = scale * (TensorPrimitives.Dot(qRow[..nopeDim], kv[..nopeDim])
                                     + TensorPrimitives.Dot(qRow[nopeDim..], cache.Row(s).Slice(rank, ropeDim)));
            }
            var p = scores.AsSpan(0, visible);
            TensorPrimitives.SoftMax(p, p);
            var outRow = output.Row(t).Slice(h * valueDim, valueDim);
            outRow.Clear();
            for (int s = 0; s < visible; s++)
                TensorPrimitives.MultiplyAdd(keysValues.Row(s).Slice(h * perHead + nopeDim, valueDim), p[s], outRow, outRow);
            return scores;
        }, _ => { });
    }

    /// <summary>
    /// Weight absorption (exact because nothing rotates the keys): q_lat = W_UKᵀ q_nope scores against the cached latent
    /// directly, the softmax mixes latents, and W_UV maps the mixture to the head's output. MQA over 576-wide keys.
    /// </summary>
    private void MlaAbsorbed(CpuTensor queries, CpuTensor cache, int start, WeightMatrix kvB, CpuTensor output,
        int heads, int nopeDim, int ropeDim, int valueDim, int rank, float scale)
    {
        int tokens = queries.Rows, length = start + tokens, perHead = nopeDim + valueDim, qkDim = nopeDim + ropeDim;
        Parallel.For(0, heads, _parallel, h =>
        {
            // W_UK_h = kvB rows [h·perHead, h·perHead + nope), W_UV_h = the next V rows, both [·, R]: read in place
            // (a widened per-head copy would cost more than the products themselves at decode).
            int firstKeyRow = h * perHead, firstValueRow = firstKeyRow + nopeDim;
            var queryLatent = new float[rank];
            var mixedLatent = new float[rank];
            var scores = new float[length];
            for (int t = 0; t < tokens; t++)
            {
                int visible = start + t + 1;
                var qRow = queries.Row(t).Slice(h * qkDim, qkDim);
                Array.Clear(queryLatent);
                for (int i = 0; i < nopeDim; i++)
                    CpuMatMul.MultiplyAddRow(kvB, firstKeyRow + i, qRow[i], queryLatent);
                for (int s = 0; s < visible; s++)
                {
                    var row = cache.Row(s);
                    scores[s] = scale * (TensorPrimitives.Dot(queryLatent, row[..rank]) + TensorPrimitives.Dot(qRow[nopeDim..], row.Slice(rank, ropeDim)));
                }
                var p = scores.AsSpan(0, visible);
                TensorPrimitives.SoftMax(p, p);
                Array.Clear(mixedLatent);
                for (int s = 0; s < visible; s++)
                    TensorPrimitives.MultiplyAdd(cache.Row(s)[..rank], p[s], mixedLatent, mixedLatent);
                var outRow = output.Row(t).Slice(h * valueDim, valueDim);
                for (int i = 0; i < valueDim; i++)
                    outRow[i] = CpuMatMul.DotRow(kvB, firstValueRow + i, mixedLatent);
            }
        });
    }

    /// <summary>The shared expert's output, the routed experts added into it, the sum added into the residual stream.</summary>
    public void MoeExperts(Tensor x, MoeExperts experts, Tensor residual)
    {
        Tensor output; // [T, D]
        if (experts.Shared is { } shared)
            output = shared.Forward(this, x);
        else
            Clear(output = Allocate(x.Rows, x.Cols));
        var logits = Allocate(x.Rows, experts.Count); // [T, E]
        MatMul(x, experts.Router, logits);
        var chosen = new int[x.Rows * experts.Routing.ExpertsPerToken];    // [T, A]
        var weights = new float[chosen.Length];                            // [T, A]
        MoeRoute(logits, experts.CorrectionBias, experts.Routing, chosen, weights);
        experts.ForwardGrouped(this, x, chosen, weights, output);
        Add(residual, output);
    }

    /// <summary>
    /// Chooses A experts per token: scores = sigmoid(logits); selection by scores + bias (grouped top-k); weights from
    /// the scores, renormalised and scaled. logits: [T, E]; bias: [E]; experts, weights: [T·A] row-major.
    /// </summary>
    public void MoeRoute(Tensor logits, float[] bias, MoeRouting routing, Span<int> experts, Span<float> weights)
    {
        var input = Cpu(logits);
        int count = input.Cols, active = routing.ExpertsPerToken, perGroup = count / routing.Groups;
        var scores = new float[count];
        var selection = new float[count];
        var groupScores = new float[routing.Groups];
        for (int t = 0; t < input.Rows; t++)
        {
            TensorPrimitives.Sigmoid(input.Row(t), scores);
            TensorPrimitives.Add(scores, bias, selection);
            if (routing.Groups > 1)
            {
                // DeepSeek-V3 grouped top-k: a group's score is the sum of its two best selection scores; only the
                // best TopKGroups groups stay eligible.
                for (int g = 0; g < routing.Groups; g++)
                {
                    var group = selection.AsSpan(g * perGroup, perGroup);
                    int best = TensorPrimitives.IndexOfMax(group);
                    float second = float.NegativeInfinity;
                    for (int i = 0; i < perGroup; i++)
                        if (i != best && group[i] > second)
                            second = group[i];
                    groupScores[g] = group[best] + (perGroup > 1 ? second : 0f);
                }
                var keep = TopIndices(groupScores, routing.TopKGroups);
                for (int g = 0; g < routing.Groups; g++)
                    if (Array.IndexOf(keep, g) < 0)
                        selection.AsSpan(g * perGroup, perGroup).Fill(float.NegativeInfinity);
            }
            var chosen = TopIndices(selection, active);
            var rowWeights = weights.Slice(t * active, active);
            for (int a = 0; a < active; a++)
            {
                experts[t * active + a] = chosen[a];
                rowWeights[a] = routing.BiasedWeights ? selection[chosen[a]] : scores[chosen[a]];
            }
            if (routing.Renormalize)
                TensorPrimitives.Divide(rowWeights, TensorPrimitives.Sum(rowWeights) + 1e-20f, rowWeights);
            TensorPrimitives.Multiply(rowWeights, routing.ScalingFactor, rowWeights);
        }
    }

    /// <summary>Indices of the <paramref name="k"/> largest values, best first; ties go to the lower index.</summary>
    private static int[] TopIndices(ReadOnlySpan<float> values, int k)
    {
        var result = new int[k];
        var taken = new bool[values.Length];
        for (int j = 0; j < k; j++)
        {
            int best = -1;
            for (int i = 0; i < values.Length; i++)
                if (!taken[i] && (best < 0 || values[i] > values[best]))
                    best = i;
            taken[best] = true;
            result[j] = best;
        }
        return result;
    }

    public void GatherRows(Tensor x, ReadOnlySpan<int> rows, Tensor y)
    {
        var (input, output) = (Cpu(x), Cpu(y));
        for (int i = 0; i < rows.Length; i++)
            input.Row(rows[i]).CopyTo(output.Row(i));
    }

    public void ScatterAddRows(Tensor x, ReadOnlySpan<int> rows, ReadOnlySpan<float> scales, Tensor accumulator)
    {
        var (input, output) = (Cpu(x), Cpu(accumulator));
        for (int i = 0; i < rows.Length; i++)
            TensorPrimitives.MultiplyAdd(input.Row(i), scales[i], output.Row(rows[i]), output.Row(rows[i]));
    }
}
