using KimiLinear.Backends;
using KimiLinear.Cuda.Kernels;
using KimiLinear.Cuda.Memory;
using KimiLinear.Layers;
using KimiLinear.Loading;
using KimiLinear.Numerics;
using KimiLinear.State;

namespace KimiLinear.Cuda.Backend;

/// <summary>
/// The model's kernels on one NVIDIA GPU. Activations and KDA state are fp32 (the CPU backend's semantics, so the two
/// agree closely), weights bf16, the MLA latent cache bf16. All work goes to one stream in order; the host waits only
/// when it reads a result (the logits). Forward steps are serialised: sessions may be used from several threads, and
/// their steps take turns on the device.
/// </summary>
internal sealed class CudaBackend : IKimiBackend, IDisposable
{
    /// <summary>
    /// Tokens per forward step of a long prompt unless <see cref="KimiModelOptions.PrefillPieceTokens"/> says otherwise:
    /// big enough that prefill GEMMs run near the tensor-core peak (16K pieces measured only 1.7 % faster at a 32K
    /// prompt), small enough that a step's activations (~0.1 MB a token for the 48B model) stay a few GB.
    /// </summary>
    public const int DefaultPrefillPieceTokens = 8192;

    /// <summary>Tokens a call takes through the decode kernels (MLA flash-decoding, expert GEMVs) rather than the prefill ones.</summary>
    private const int DecodeTokens = 16;

    private readonly CudaContext _context;
    private readonly CudaStream _stream;
    private readonly StepArena _arena;
    private readonly DeviceWeights _weights;
    private readonly object _gate = new();
    private readonly CublasLtGemm? _cublas;
    private readonly Dictionary<int, KdaBatch> _kdaBatches = [];
    private readonly Dictionary<KdaShape, KdaPrefillScratch> _kdaScratch = [];
    private readonly Dictionary<MlaShape, MlaDecodeScratch> _mlaScratch = [];
    private MoeDecodeScratch? _moeDecodeScratch;
    private ArgmaxScratch? _argmaxScratch;       // ChooseNext's argmax (one row)
    private MoePrefillScratch? _moePrefillScratch;

    // The decode step being run: its token and position live in the session's device memory (SessionDecoder), so that a
    // recorded step (a CUDA graph) replays with new ones.
    private DeviceSpan<int> _stepInputs; // [2]: token, position of the step being queued
    private bool _inDecodeStep;
    private int _stepPosition;
    private bool _decodeWarm;                       // a decode step ran unrecorded: every lazy allocation is done
    private int _fusedMlaMaxLength = MlaKernels.FusedDecodeMaxLength;   // FusedMlaMaxLength

    /// <summary>
    /// A backend on <paramref name="context"/>, which it then owns (disposing the backend disposes it), running prompts
    /// in pieces of at most <paramref name="prefillPieceTokens"/> tokens.
    /// </summary>
    public CudaBackend(CudaContext context, int prefillPieceTokens = DefaultPrefillPieceTokens)
    {
        if (prefillPieceTokens < 1)
            throw new ArgumentOutOfRangeException(nameof(prefillPieceTokens), prefillPieceTokens,
                "KimiModelOptions.PrefillPieceTokens must be at least 1 (a forward step takes at least one token).");
        PrefillPieceTokens = prefillPieceTokens;
        _context = context;
        _stream = context.CreateStream();
        _arena = new StepArena(context);
        _weights = new DeviceWeights(context, _stream);
        try
        {
            _cublas = CublasLtGemm.TryCreate(context, out _);
            // Module loads synchronise, which a graph capture forbids: load every kernel now. Programmatic dependent
            // launch lets each GEMV stream its weights while its predecessor drains (kernels/gemv.cu).
            context.Kernels.LoadAll();
            context.Kernels.ProgrammaticLaunch = true;
        }
        catch
        {
            _cublas?.Dispose();
            _weights.Dispose();
            _arena.Dispose();
            _stream.Dispose();
            throw;
        }
    }

    public string DeviceName => _context.Device.Name;

    public int MaxTokensPerForward => PrefillPieceTokens;

    /// <summary>Most tokens a forward step takes (the piece size of a long prompt).</summary>
    private int PrefillPieceTokens { get; }

    public Tensor RunDecodeStep(SessionState state, int token, int position, Func<int, Tensor> step)
    {
        var decoder = Decoder(state);
        if (token != IKimiBackend.ChosenToken)
            decoder.StepInputs.Slice(0, 1).Fill(token, _stream);
        else if (decoder.ChoiceCount == 0)
            throw new InvalidOperationException("A decode step of the chosen token, but no greedy choice was made for this session.");
        decoder.StepInputs.Slice(1, 1).Fill(position, _stream);
        var caches = state.Mla.OfType<MlaLayerState>().Select(m => m.Latent).ToArray();
        if (decoder.Recording is DecodeRecording recording && recording.Fits(_arena.Generation, caches, FusedMlaDecode(position)))
        {
            recording.Graph.Launch(_stream);
            return recording.Logits;
        }
        decoder.Recording?.Dispose();
        decoder.Recording = null;
        (_inDecodeStep, _stepInputs, _stepPosition) = (true, decoder.StepInputs, position);
        try
        {
            if (!_decodeWarm)
            {
                // The first decode step runs as it is: it uploads parameters and sizes scratch, which a capture forbids.
                var logits = step(token);
                _decodeWarm = true;
                return logits;
            }
            Tensor? result = null;
            var graph = _stream.Capture(_ => result = step(token));
            decoder.Recording = new DecodeRecording(graph, result!, _arena.Generation, caches, FusedMlaDecode(position));
            graph.Launch(_stream);
            return result!;
        }
        finally
        {
            _inDecodeStep = false;
        }
    }

    public GreedyChoice ChooseNext(SessionState state, Tensor logits)
    {
        var row = Device(logits);
        if (row.Rows != 1 || row.IsBFloat16)
            throw new ArgumentException($"ChooseNext takes one fp32 row of logits, not {row}.", nameof(logits));
        var decoder = Decoder(state);
        var choice = new GreedyChoice(decoder.ChoiceCount + 1);
        int slot = GreedyChoice.SlotOf(choice.Sequence);
        // Into the session's step token (the next decode step of ChosenToken reads it there) and the host's slot.
        var token = decoder.StepInputs.Slice(0, 1);
        _argmaxScratch ??= new ArgmaxScratch(_stream, 1);
        SamplingKernels.Argmax(_stream, token, row.F32, 1, row.Cols, _argmaxScratch, decoder.Choices.Mapped.Slice(slot, 1));
        decoder.ChoiceReady[slot].Record(_stream);
        decoder.ChoiceCount = choice.Sequence;
        return choice;
    }

    public int ReadChoice(SessionState state, GreedyChoice choice)
    {
        var decoder = Decoder(state);
        int slot = choice.Slot(decoder.ChoiceCount);
        decoder.ChoiceReady[slot].Synchronize();
        return decoder.Choices[slot];
    }

    private SessionDecoder Decoder(SessionState state)
    {
        if (state.Decoder is SessionDecoder decoder)
            return decoder;
        state.Decoder?.Dispose();
        state.Decoder = null;
        return (SessionDecoder)(state.Decoder = new SessionDecoder(_context));
    }

    /// <summary>
    /// A session's decode machinery on this backend: the step's token and position where kernels read them (ChooseNext
    /// writes the greedy choice into the token, so a decode step of ChosenToken needs nothing from the host), the two
    /// latest greedy choices coming back to the host, and the recorded step.
    /// </summary>
    private sealed class SessionDecoder : IDisposable
    {
        /// <summary>[2]: the step's token, its position.</summary>
        public DeviceBuffer<int> StepInputs { get; }
        /// <summary>[2]: choice n lands in element <see cref="GreedyChoice.Slot"/>, once <see cref="ChoiceReady"/> of it is reached.</summary>
        public MappedHostBuffer<int> Choices { get; }
        public CudaEvent[] ChoiceReady { get; } = new CudaEvent[2];
        /// <summary>Choices made so far (the latest's sequence number).</summary>
        public long ChoiceCount { get; set; }
        public DecodeRecording? Recording { get; set; }

        public SessionDecoder(CudaContext context)
        {
            StepInputs = context.Allocate<int>(2);
            try
            {
                Choices = new MappedHostBuffer<int>(context, 2);
                for (int i = 0; i < ChoiceReady.Length; i++)
                    ChoiceReady[i] = context.CreateEvent(timing: false);
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        /// <summary>Waits for the session's queued work (the last choice is its last work) before freeing what it uses.</summary>
        public void Dispose()
        {
            try
            {
                if (ChoiceCount > 0 && ChoiceReady[GreedyChoice.SlotOf(ChoiceCount)] is { } last)
                    last.Synchronize();
            }
            finally
            {
                Recording?.Dispose();
                foreach (var ready in ChoiceReady) ready?.Dispose();
                Choices?.Dispose();
                StepInputs.Dispose();
            }
        }
    }

    /// <summary>A session's recorded decode step and what its addresses depend on.</summary>
    private sealed class DecodeRecording(CudaGraph graph, Tensor logits, int arenaGeneration, Tensor[] caches, bool fusedMla) : IDisposable
    {
        public CudaGraph Graph { get; } = graph;
        /// <summary>[1, vocab] where a replay leaves the logits.</summary>
        public Tensor Logits { get; } = logits;

        /// <summary>
        /// Whether the step memory and the caches are where they were when recorded, and the MLA layers would take the
        /// same decode path (<see cref="FusedMlaDecode"/>) at the step's position.
        /// </summary>
        public bool Fits(int generation, Tensor[] current, bool fusedMlaNow) =>
            generation == arenaGeneration && fusedMlaNow == fusedMla && current.Length == caches.Length
            && current.Zip(caches).All(p => ReferenceEquals(p.First, p.Second));

        public void Dispose() => Graph.Dispose();
    }

    public void PrepareWeights(IReadOnlyList<WeightMatrix> matrices, IReadOnlyList<MoeExperts> experts, IProgress<long> uploaded,
        CancellationToken cancellationToken)
    {
        lock (_gate)
            _weights.Upload(matrices, experts, uploaded, cancellationToken);
    }

    // ---- memory ----

    public IDisposable BeginForward()
    {
        Monitor.Enter(_gate);
        try
        {
            _context.Bind();
            _arena.Reset();
            return new ForwardScope(this);
        }
        catch
        {
            Monitor.Exit(_gate);
            throw;
        }
    }

    private sealed class ForwardScope(CudaBackend backend) : IDisposable
    {
        private bool _ended;

        public void Dispose()
        {
            if (_ended) return;
            _ended = true;
            Monitor.Exit(backend._gate);
        }
    }

    public IDisposable BeginScratch() => new ScratchScope(_arena, _arena.Mark());

    private sealed class ScratchScope(StepArena arena, StepArena.Position mark) : IDisposable
    {
        public void Dispose() => arena.Rewind(mark);
    }

    public Tensor Allocate(int rows, int cols) => CudaTensor.Float(rows, cols, _arena.Rent<float>(Math.Max(1L, (long)rows * cols)));

    public void Clear(Tensor tensor) => Device(tensor).F32.Fill(0f, _stream);

    public Tensor AllocateState(int rows, int cols)
    {
        lock (_gate)
        {
            var buffer = _context.Allocate<float>(Math.Max(1L, (long)rows * cols));
            buffer.Span.Fill(0f, _stream);
            return CudaTensor.Float(rows, cols, buffer.Span, buffer);
        }
    }

    public Tensor AllocateCache(int rows, int cols)
    {
        lock (_gate)
        {
            var buffer = _context.Allocate<ushort>(Math.Max(1L, (long)rows * cols));
            buffer.Span.Fill((ushort)0, _stream);
            return CudaTensor.BFloat16(rows, cols, buffer.Span, buffer);
        }
    }

    public Tensor GrowRows(Tensor tensor, int validRows, int rows)
    {
        lock (_gate)
        {
            var old = Device(tensor);
            var grown = (CudaTensor)(old.IsBFloat16 ? AllocateCache(rows, old.Cols) : AllocateState(rows, old.Cols));
            CopyRows(old, validRows, grown, 0);
            old.Dispose(); // cuMemFree waits for the copy
            return grown;
        }
    }

    public void Upload(ReadOnlySpan<float> source, Tensor destination)
    {
        lock (_gate)
        {
            var target = Device(destination);
            if (target.IsBFloat16)
            {
                var narrowed = new ushort[source.Length];
                BFloat16.FromSingle(source, narrowed);
                target.Bf16.CopyFrom(narrowed, _stream);
            }
            else
                target.F32.CopyFrom(source, _stream);
        }
    }

    public void Download(Tensor source, Span<float> destination)
    {
        lock (_gate)
        {
            var tensor = Device(source);
            if (tensor.IsBFloat16)
            {
                var bits = new ushort[destination.Length];
                tensor.Bf16.CopyTo(bits, _stream);
                BFloat16.ToSingle(bits, destination);
            }
            else
                tensor.F32.CopyTo(destination, _stream);
        }
    }

    public void CopyRows(Tensor source, int rows, Tensor destination, int destinationRow)
    {
        var (s, d) = (Device(source), Device(destination));
        if (s.Cols != d.Cols || s.IsBFloat16 != d.IsBFloat16 || rows > s.Rows || destinationRow + rows > d.Rows)
            throw new ArgumentException($"CopyRows: {rows} rows of {s} into {d} at row {destinationRow}.");
        if (s.IsBFloat16)
            d.Bf16.Slice((long)destinationRow * d.Cols, (long)rows * d.Cols).CopyFrom(s.Bf16.Slice(0, (long)rows * s.Cols), _stream);
        else
            d.F32.Slice((long)destinationRow * d.Cols, (long)rows * d.Cols).CopyFrom(s.F32.Slice(0, (long)rows * s.Cols), _stream);
    }

    public void WriteLatentRows(RmsNormed latent, Tensor sharedKey, Tensor destination, int row)
    {
        var (l, r, d) = (Device(latent.Input), Device(sharedKey), Device(destination));
        if (l.Rows != r.Rows || l.Cols + r.Cols != d.Cols || row + l.Rows > d.Rows || latent.Weight.Length != l.Cols)
            throw new ArgumentException($"WriteLatentRows: {l} (norm weight [{latent.Weight.Length}]) | {r} into {d} at row {row}.");
        ActivationKernels.WriteLatentRows(_stream, d.Bf16, l.F32, _weights.Of(latent.Weight), latent.Eps, r.F32, l.Rows, l.Cols, r.Cols, Scalar(row));
    }

    /// <summary>One launch a cache (the rows are on the device in one copy), nothing gathered.</summary>
    public void WriteLatentRows(RmsNormed latent, Tensor sharedKey, IReadOnlyList<Tensor> destinations, ReadOnlySpan<int> rows)
    {
        var (l, r) = (Device(latent.Input), Device(sharedKey));
        if (l.Rows != destinations.Count || r.Rows != destinations.Count || rows.Length != destinations.Count || latent.Weight.Length != l.Cols)
            throw new ArgumentException($"WriteLatentRows: {destinations.Count} caches for {l} (norm weight [{latent.Weight.Length}]) | {r} at {rows.Length} positions.");
        var positions = Indices(rows);
        var weight = _weights.Of(latent.Weight);
        for (int n = 0; n < destinations.Count; n++)
        {
            var d = Device(destinations[n]);
            if (l.Cols + r.Cols != d.Cols || rows[n] >= d.Rows)
                throw new ArgumentException($"WriteLatentRows: row {n} of {l} | {r} into {d} at row {rows[n]}.");
            ActivationKernels.WriteLatentRows(_stream, d.Bf16, l.F32.Slice((long)n * l.Cols, l.Cols), weight, latent.Eps,
                r.F32.Slice((long)n * r.Cols, r.Cols), 1, l.Cols, r.Cols, positions.Slice(n, 1));
        }
    }

    // ---- dense layers ----

    public void Embed(WeightMatrix table, ReadOnlySpan<int> ids, Tensor x) =>
        ActivationKernels.Embed(_stream, Device(x).F32, _weights.Of(table), _inDecodeStep ? _stepInputs.Slice(0, 1) : Indices(ids),
            ids.Length, table.Cols, table.Rows);

    public void RmsNorm(Tensor x, float[] weight, float eps, Tensor y) =>
        ActivationKernels.RmsNorm(_stream, Device(y).F32, Device(x).F32, _weights.Of(weight), x.Rows, x.Cols, eps);

    public void AddRmsNorm(Tensor residual, Tensor x, float[] weight, float eps, Tensor y) =>
        ActivationKernels.RmsNorm(_stream, Device(y).F32, Device(residual).F32, _weights.Of(weight), residual.Rows, residual.Cols, eps, Device(x).F32);

    public void Add(Tensor accumulator, Tensor x) => ActivationKernels.Add(_stream, Device(accumulator).F32, Device(x).F32, x.Length);

    public void SwiGlu(Tensor gate, Tensor up, Tensor output) =>
        ActivationKernels.SwiGlu(_stream, Device(output).F32, Device(gate).F32, Device(up).F32, output.Length);

    /// <summary>One token: the bandwidth-bound GEMV; more: the activations in bf16 through the tensor-core GEMM.</summary>
    public void MatMul(Tensor x, WeightMatrix w, Tensor y)
    {
        var (input, output) = (Device(x), Device(y));
        if (input.Cols != w.Cols || output.Cols != w.Rows || output.Rows != input.Rows)
            throw new ArgumentException($"MatMul '{w.Name}' [{w.Rows}, {w.Cols}]: x {input} and y {output} do not fit.");
        if (input.Rows == 1 || w.Cols % 8 != 0)
        {
            var weight = _weights.Of(w);
            for (int t = 0; t < input.Rows; t++)
                MatmulKernels.Gemv(_stream, output.F32.Slice((long)t * w.Rows, w.Rows), weight, input.F32.Slice((long)t * w.Cols, w.Cols), w.Rows, w.Cols);
            return;
        }
        Gemm(output, Narrowed(input), w);
    }

    /// <summary>x in bf16, as the tensor-core GEMM takes it (one rounding; fp32 accumulation).</summary>
    private DeviceSpan<ushort> Narrowed(CudaTensor x)
    {
        var a = _arena.Rent<ushort>(x.Length);
        ActivationKernels.ToBFloat16(_stream, a, x.F32, x.Length);
        return a;
    }

    /// <summary>y = x · wᵀ for x given in bf16 (<see cref="Narrowed"/>).</summary>
    private void Gemm(CudaTensor y, DeviceSpan<ushort> x, WeightMatrix w) => Gemm(y.F32, x, w.Cols, _weights.Of(w), y.Rows, w.Rows, w.Cols);

    /// <summary>
    /// One token through projections whose weights and outputs lie one after another (the layers arrange it): one GEMV
    /// over all their rows, the launch latency paid once. Several tokens: x narrowed to bf16 once, one GEMM each.
    /// </summary>
    public void MatMul(Tensor x, ReadOnlySpan<WeightMatrix> weights, ReadOnlySpan<Tensor> outputs)
    {
        if (weights.Length != outputs.Length)
            throw new ArgumentException($"MatMul: {weights.Length} weights for {outputs.Length} outputs.");
        if (x.Rows == 1 && Contiguous(weights, outputs, out int rows))
        {
            var input = Device(x);
            var first = _weights.Of(weights[0]);
            MatmulKernels.Gemv(_stream, new DeviceSpan<float>(Device(outputs[0]).Pointer, rows), new DeviceSpan<ushort>(first.Pointer, (long)rows * x.Cols),
                input.F32, rows, x.Cols);
            return;
        }
        if (x.Rows > 1 && x.Cols % 8 == 0)
        {
            var narrowed = Narrowed(Device(x)); // once for all the projections
            for (int i = 0; i < weights.Length; i++)
            {
                var y = Device(outputs[i]);
                if (y.Cols != weights[i].Rows || y.Rows != x.Rows || weights[i].Cols != x.Cols)
                    throw new ArgumentException($"MatMul '{weights[i].Name}' [{weights[i].Rows}, {weights[i].Cols}]: x {x} and y {y} do not fit.");
                Gemm(y, narrowed, weights[i]);
            }
            return;
        }
        for (int i = 0; i < weights.Length; i++)
            MatMul(x, weights[i], outputs[i]);
    }

    /// <summary>
    /// One token: the projections' GEMV normalises x as it loads it (kimi_gemv_rmsnorm_f32), so the norm costs no launch
    /// of its own. Several tokens: the norm into step memory, then the products.
    /// </summary>
    public void MatMul(RmsNormed x, ReadOnlySpan<WeightMatrix> weights, ReadOnlySpan<Tensor> outputs)
    {
        var input = Device(x.Input);
        if (weights.Length != outputs.Length)
            throw new ArgumentException($"MatMul: {weights.Length} weights for {outputs.Length} outputs.");
        if (input.Rows == 1 && !input.IsBFloat16 && weights[0].Cols == input.Cols && Contiguous(weights, outputs, out int rows))
        {
            MatmulKernels.GemvRmsNorm(_stream, new DeviceSpan<float>(Device(outputs[0]).Pointer, rows),
                new DeviceSpan<ushort>(_weights.Of(weights[0]).Pointer, (long)rows * input.Cols), input.F32, _weights.Of(x.Weight), x.Eps, rows, input.Cols);
            return;
        }
        var normed = Allocate(input.Rows, input.Cols);
        RmsNorm(x.Input, x.Weight, x.Eps, normed);
        MatMul(normed, weights, outputs);
    }

    /// <summary>
    /// One token through independent products whose inputs, weights and outputs each lie one after another and whose
    /// weights have one shape (KDA's f_b and g_b): one GEMV launch, each block reading its product's input.
    /// </summary>
    public void MatMul(ReadOnlySpan<Tensor> inputs, ReadOnlySpan<WeightMatrix> weights, ReadOnlySpan<Tensor> outputs)
    {
        if (inputs.Length != weights.Length || outputs.Length != weights.Length)
            throw new ArgumentException($"MatMul: {inputs.Length} inputs and {outputs.Length} outputs for {weights.Length} weights.");
        if (SameShapeContiguous(inputs, weights) && Contiguous(weights, outputs, out int rows))
        {
            int perProduct = weights[0].Rows;
            if (weights.Length == 1 || perProduct % MatmulKernels.GemvRowsPerBlock == 0)
            {
                MatmulKernels.Gemv(_stream, new DeviceSpan<float>(Device(outputs[0]).Pointer, rows), new DeviceSpan<ushort>(_weights.Of(weights[0]).Pointer, (long)rows * weights[0].Cols),
                    new DeviceSpan<float>(Device(inputs[0]).Pointer, (long)inputs.Length * weights[0].Cols), rows, weights[0].Cols, perProduct);
                return;
            }
        }
        for (int i = 0; i < weights.Length; i++)
            MatMul(inputs[i], weights[i], outputs[i]);
    }

    /// <summary>Whether every weight has the first one's shape and the [1, K] fp32 inputs lie one after another.</summary>
    private static bool SameShapeContiguous(ReadOnlySpan<Tensor> inputs, ReadOnlySpan<WeightMatrix> weights)
    {
        for (int i = 0; i < weights.Length; i++)
        {
            var x = Device(inputs[i]);
            if (weights[i].Rows != weights[0].Rows || weights[i].Cols != weights[0].Cols || x.Rows != 1 || x.Cols != weights[i].Cols || x.IsBFloat16)
                return false;
            if (i > 0 && x.Pointer != Device(inputs[i - 1]).Pointer + (ulong)(4L * x.Cols))
                return false;
        }
        return true;
    }

    /// <summary>Whether each weight starts where the previous ends, and each [1, N] output likewise; <paramref name="rows"/> = Σ N.</summary>
    private bool Contiguous(ReadOnlySpan<WeightMatrix> weights, ReadOnlySpan<Tensor> outputs, out int rows)
    {
        rows = 0;
        for (int i = 0; i < weights.Length; i++)
        {
            var (w, y) = (weights[i], Device(outputs[i]));
            if (w.Cols != weights[0].Cols || y.Rows != 1 || y.Cols != w.Rows || y.IsBFloat16)
                return false;
            if (i > 0 && (_weights.Of(w).Pointer != _weights.Of(weights[i - 1]).Pointer + (ulong)(2L * weights[i - 1].Rows * w.Cols)
                          || y.Pointer != Device(outputs[i - 1]).Pointer + (ulong)(4L * outputs[i - 1].Cols)))
                return false;
            rows += w.Rows;
        }
        return true;
    }

    private void Gemm(DeviceSpan<float> c, DeviceSpan<ushort> a, int lda, DeviceSpan<ushort> b, int m, int n, int k)
    {
        if (_cublas is not null)
            _cublas.Run(_stream, c, a, lda, b, m, n, k);
        else
            MatmulKernels.Gemm(_stream, c, a, lda, b, m, n, k);
    }

    private void Gemm(DeviceSpan<ushort> c, DeviceSpan<ushort> a, int lda, DeviceSpan<ushort> b, int m, int n, int k)
    {
        if (_cublas is not null)
            _cublas.Run(_stream, c, a, lda, b, m, n, k);
        else
            MatmulKernels.Gemm(_stream, c, a, lda, b, m, n, k);
    }

    public void GatherRows(Tensor x, ReadOnlySpan<int> rows, Tensor y) =>
        ActivationKernels.GatherRows(_stream, Device(y).F32, Device(x).F32, Indices(rows), rows.Length, x.Cols);

    public void ScatterAddRows(Tensor x, ReadOnlySpan<int> rows, ReadOnlySpan<float> scales, Tensor accumulator)
    {
        var scaleSpan = _arena.Rent<float>(Math.Max(1, scales.Length));
        scaleSpan.CopyFrom(scales, _stream);
        ActivationKernels.ScatterAddRows(_stream, Device(accumulator).F32, Device(x).F32, Indices(rows), scaleSpan, rows.Length, x.Cols);
    }

    // ---- KDA ----

    public void KdaMixer(KdaMixerInputs inputs, KdaMixerParameters parameters, KdaLayerState state, Tensor y)
    {
        int tokens = inputs.Query.Rows;
        var shape = new KdaShape(parameters.Heads, parameters.HeadDim, parameters.HeadDim);
        var layer = LayerParameters(parameters);
        var cache = new KdaLayerCache<float>(Device(state.QueryWindow).F32, Device(state.KeyWindow).F32, Device(state.ValueWindow).F32,
            Device(state.Recurrent).F32);
        var projections = Projections(inputs);
        if (tokens == 1)
        {
            KdaKernels.DecodeStep(_stream, shape, 1, parameters.Eps, projections, Device(inputs.OutputGate).F32, layer, cache, Device(y).F32);
            return;
        }

        // The core runs on bf16 q, k, v (bf16 bits as ushort), as FLA runs it for serving engines: the pre-kernel
        // rounds its fp32 conv outputs once, the bf16 kernels keep the gate, β, state and every accumulation in fp32,
        // and the o they write is widened again by the output norm. (On the fp32 kernels, the accuracy reference path
        // of KdaKernels, the same prefill took the 3xTF32 scan and twice the bytes.)
        var batch = Batch(tokens);
        var core = new KdaCoreInputs<ushort>(
            _arena.Rent<ushort>((long)tokens * shape.KeyWidth), _arena.Rent<ushort>((long)tokens * shape.KeyWidth),
            _arena.Rent<ushort>((long)tokens * shape.ValueWidth), _arena.Rent<float>((long)tokens * shape.KeyWidth), _arena.Rent<float>((long)tokens * shape.Heads));
        KdaKernels.Prepare(_stream, shape, batch, projections, layer, cache, core);
        var o = _arena.Rent<ushort>((long)tokens * shape.ValueWidth); // [T, H·V] bf16, before the output norm
        KdaKernels.ChunkedPrefill(_stream, shape, batch, core, PrefillScratch(shape, batch.Chunks), cache.State, o);
        ActivationKernels.GatedRmsNorm(_stream, Device(y).F32, o, Device(inputs.OutputGate).F32, _weights.Of(parameters.OutputNorm),
            tokens * shape.Heads, shape.ValueDim, parameters.Eps);
    }

    /// <summary>Every sequence's token in one launch of the table decode step: each session's state stays where it is.</summary>
    public void KdaMixer(KdaMixerInputs inputs, KdaMixerParameters parameters, IReadOnlyList<KdaLayerState> states, Tensor y)
    {
        if (inputs.Query.Rows != states.Count || y.Rows != states.Count)
            throw new ArgumentException($"KdaMixer: {states.Count} states for {inputs.Query.Rows} input rows and {y.Rows} output rows.");
        var caches = new KdaLayerCache<float>[states.Count];
        for (int n = 0; n < caches.Length; n++)
            caches[n] = new KdaLayerCache<float>(Device(states[n].QueryWindow).F32, Device(states[n].KeyWindow).F32,
                Device(states[n].ValueWindow).F32, Device(states[n].Recurrent).F32);
        KdaKernels.DecodeStep(_stream, new KdaShape(parameters.Heads, parameters.HeadDim, parameters.HeadDim), parameters.Eps,
            Projections(inputs), Device(inputs.OutputGate).F32, LayerParameters(parameters), caches, Device(y).F32);
    }

    private KdaLayerParameters<float> LayerParameters(KdaMixerParameters parameters) =>
        new(_weights.Of(parameters.QueryConv), _weights.Of(parameters.KeyConv), _weights.Of(parameters.ValueConv),
            _weights.Of(parameters.ALog), _weights.Of(parameters.DtBias), _weights.Of(parameters.OutputNorm));

    private static KdaProjections<float> Projections(KdaMixerInputs inputs) =>
        new(Device(inputs.Query).F32, Device(inputs.Key).F32, Device(inputs.Value).F32, Device(inputs.Forget).F32, Device(inputs.Beta).F32);

    /// <summary>A one-sequence batch of <paramref name="tokens"/> (prefill pieces come in few lengths, so they are kept).</summary>
    private KdaBatch Batch(int tokens)
    {
        if (!_kdaBatches.TryGetValue(tokens, out var batch))
            _kdaBatches.Add(tokens, batch = new KdaBatch(_stream, [tokens]));
        return batch;
    }

    private KdaPrefillScratch PrefillScratch(KdaShape shape, int chunks)
    {
        if (_kdaScratch.TryGetValue(shape, out var scratch) && scratch.Chunks >= chunks)
            return scratch;
        scratch?.Dispose();
        return _kdaScratch[shape] = new KdaPrefillScratch(_context, shape, Math.Max(chunks, PrefillPieceTokens / KdaKernels.ChunkTokens));
    }

    // ---- MLA ----

    public void MlaAttention(Tensor q, Tensor latent, int start, WeightMatrix kvB, Tensor o, int heads, int nopeDim, int ropeDim, int valueDim, bool absorbed)
    {
        var shape = new MlaShape(heads, nopeDim, ropeDim, valueDim, kvB.Cols);
        int tokens = q.Rows;
        float scale = 1f / MathF.Sqrt(nopeDim + ropeDim);
        var cache = Device(latent).Bf16;
        var weight = _weights.Of(kvB);
        if (absorbed && tokens == 1 && FusedMlaDecode(start) && MlaKernels.RunsFusedDecode(_context, shape))
        {
            // A short cache: the whole absorbed decode in one launch (the decode step's recording knows this choice).
            // The flash-decoding's scratch is sized now all the same: the step that first outgrows this path is
            // recorded, and a capture cannot allocate.
            DecodeScratch(shape);
            MlaKernels.DecodeFused(_stream, Device(o).F32, Device(q).F32, cache, Scalar(start), weight, shape, scale);
            return;
        }
        if (absorbed && tokens <= DecodeTokens)
        {
            var queryLatent = _arena.Rent<float>((long)tokens * heads * (shape.Rank + ropeDim)); // [T, H, R + P]
            MlaKernels.AbsorbQuery(_stream, queryLatent, Device(q).F32, weight, shape, tokens);
            var scratch = DecodeScratch(shape);
            MlaKernels.DecodeAttention(_stream, queryLatent, cache, Scalar(start), tokens, shape, scale, scratch);
            MlaKernels.AbsorbOutput(_stream, Device(o).F32, scratch, weight, shape, tokens);
            return;
        }
        // Expanded (absorbed prefill is the same math; the expanded form does a third of its FLOPs):
        // keys and values of every cached token from the latent, then causal flash attention.
        int length = start + tokens, perHead = nopeDim + valueDim;
        var query = _arena.Rent<ushort>(q.Length);                                                 // [T, H·(N + P)] bf16
        ActivationKernels.ToBFloat16(_stream, query, Device(q).F32, q.Length);
        var keysValues = _arena.Rent<ushort>((long)length * heads * perHead);                      // [L, H·(N + V)] bf16
        Gemm(keysValues, cache, latent.Cols, weight, length, heads * perHead, shape.Rank);
        MlaKernels.PrefillAttention(_stream, Device(o).F32, query, keysValues, cache, start, tokens, shape, scale);
    }

    /// <summary>
    /// Three launches per scratch-full of sequences (16), whatever their caches' lengths: kvB folded into all N queries
    /// at once, the flash-decoding over every sequence's own cache (their addresses in the launch's table, their
    /// positions on the device) into one scratch token each, and the merge with kvB's W_UV out of them (kv_b_proj read
    /// twice a step, not twice a session).
    /// </summary>
    public void MlaAttention(Tensor q, IReadOnlyList<Tensor> latents, ReadOnlySpan<int> starts, WeightMatrix kvB, Tensor o, int heads, int nopeDim, int ropeDim, int valueDim)
    {
        int sequences = latents.Count;
        if (q.Rows != sequences || o.Rows != sequences || starts.Length != sequences)
            throw new ArgumentException($"MlaAttention: {sequences} caches for {q.Rows} query rows, {o.Rows} output rows and {starts.Length} starts.");
        var shape = new MlaShape(heads, nopeDim, ropeDim, valueDim, kvB.Cols);
        float scale = 1f / MathF.Sqrt(nopeDim + ropeDim);
        var weight = _weights.Of(kvB);
        long queryWidth = (long)heads * shape.LatentWidth;
        var queryLatent = _arena.Rent<float>(sequences * queryWidth); // [N, H, R + P]
        MlaKernels.AbsorbQuery(_stream, queryLatent, Device(q).F32, weight, shape, sequences);
        var positions = Indices(starts);
        var scratch = DecodeScratch(shape);
        int perLaunch = Math.Min(scratch.MaxTokens, MlaKernels.DecodeTableSequences);
        Span<DeviceSpan<ushort>> caches = stackalloc DeviceSpan<ushort>[perLaunch];
        for (int first = 0; first < sequences; first += perLaunch)
        {
            int count = Math.Min(perLaunch, sequences - first);
            for (int i = 0; i < count; i++) caches[i] = Device(latents[first + i]).Bf16;
            MlaKernels.DecodeAttention(_stream, queryLatent.Slice(first * queryWidth, count * queryWidth), caches[..count],
                positions.Slice(first, count), shape, scale, scratch);
            MlaKernels.AbsorbOutput(_stream, Device(o).F32.Slice((long)first * o.Cols, (long)count * o.Cols), scratch, weight, shape, count);
        }
    }

    /// <summary>
    /// The longest cache (rows, the new token's included) a one-token decode runs MLA's one-launch decode over, where the
    /// layer's shape has it; longer ones take the three-kernel flash-decoding. At most (and by default)
    /// <see cref="MlaKernels.FusedDecodeMaxLength"/>; 0 turns it off (tests compare the two paths on one model).
    /// </summary>
    internal int FusedMlaMaxLength
    {
        get => _fusedMlaMaxLength;
        set => _fusedMlaMaxLength = value is >= 0 and <= MlaKernels.FusedDecodeMaxLength ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, $"0 to {MlaKernels.FusedDecodeMaxLength}");
    }

    /// <summary>
    /// Whether a one-token decode at position <paramref name="start"/> takes the one-launch MLA decode (where the layer's
    /// shape has it): while the cache, this token's row included, fits its slices. A recorded decode step replays
    /// the choice made when it was recorded, so it is recorded again when this answer changes (<see cref="DecodeRecording"/>).
    /// </summary>
    private bool FusedMlaDecode(int start) => start + 1 <= _fusedMlaMaxLength;

    private MlaDecodeScratch DecodeScratch(MlaShape shape)
    {
        if (!_mlaScratch.TryGetValue(shape, out var scratch))
            _mlaScratch.Add(shape, scratch = new MlaDecodeScratch(_context, shape, DecodeTokens));
        return scratch;
    }

    // ---- MoE ----

    /// <summary>
    /// The router, then the routed and shared experts in the same kernels (the shared expert's S slices are experts
    /// E..E+S-1 that the route kernel appends to every token's choices), accumulating straight into the residual.
    /// </summary>
    public void MoeExperts(Tensor x, MoeExperts experts, Tensor residual)
    {
        int tokens = x.Rows;
        var stacked = DeviceWeights.Of(experts);
        var shape = new MoeShape(stacked.Hidden, stacked.Experts, experts.Routing.ExpertsPerToken, stacked.Intermediate, stacked.Shared);
        var rule = new MoeRoutingRule(experts.Routing.Groups, experts.Routing.TopKGroups, experts.Routing.Renormalize,
            experts.Routing.ScalingFactor, experts.Routing.BiasedWeights);
        var chosen = _arena.Rent<int>((long)tokens * shape.PairsPerToken);    // [T, A+S]
        var weights = _arena.Rent<float>((long)tokens * shape.PairsPerToken); // [T, A+S]
        var bias = _weights.Of(experts.CorrectionBias);
        if (tokens <= DecodeTokens)
        {
            // Decode: the router GEMV and the choice in one launch (the router rows stream in before its wait).
            _moeDecodeScratch ??= new MoeDecodeScratch(_stream, shape, DecodeTokens);
            MoeKernels.RouterRoute(_stream, chosen, weights, Device(x).F32, _weights.Of(experts.Router), bias, _moeDecodeScratch, shape, rule, tokens);
            MoeKernels.DecodeExperts(_stream, Device(residual).F32, Device(x).F32, chosen, weights, stacked.GateUp, stacked.Down,
                _moeDecodeScratch, shape, tokens);
        }
        else
        {
            MoeKernels.Route(_stream, chosen, weights, RouterLogits(Device(x), experts.Router), bias, shape, rule, tokens);
            if (_moePrefillScratch is null)
                _moePrefillScratch = new MoePrefillScratch(_context, shape, PrefillPieceTokens);
            MoeKernels.PrefillExperts(_stream, Device(residual).F32, Device(x).F32, chosen, weights, stacked.GateUp, stacked.Down,
                _moePrefillScratch, shape, tokens);
        }
    }

    /// <summary>
    /// x · routerᵀ [T, E] for prefill, as accurate as fp32 inputs: the GEMM runs twice, over x's bf16 high and low parts,
    /// since one bf16 rounding of x would swap near-tied experts (a different expert for that token). (Decode computes
    /// the logits inside <see cref="MoeKernels.RouterRoute"/>, from fp32 x.)
    /// </summary>
    private DeviceSpan<float> RouterLogits(CudaTensor x, WeightMatrix router)
    {
        int tokens = x.Rows, experts = router.Rows;
        var logits = _arena.Rent<float>((long)tokens * experts);
        var weight = _weights.Of(router);
        var (high, low) = (_arena.Rent<ushort>(x.Length), _arena.Rent<ushort>(x.Length));
        ActivationKernels.SplitBFloat16(_stream, high, low, x.F32, x.Length);
        var fromLow = _arena.Rent<float>((long)tokens * experts);
        Gemm(logits, high, router.Cols, weight, tokens, experts, router.Cols);
        Gemm(fromLow, low, router.Cols, weight, tokens, experts, router.Cols);
        ActivationKernels.Add(_stream, logits, fromLow, (long)tokens * experts);
        return logits;
    }

    // ---- helpers ----

    private static CudaTensor Device(Tensor t) => t as CudaTensor
        ?? throw new ArgumentException($"Tensor {t} belongs to another backend; the CUDA backend takes only its own tensors.");

    /// <summary>Host indices in step memory.</summary>
    private DeviceSpan<int> Indices(ReadOnlySpan<int> values)
    {
        var span = _arena.Rent<int>(Math.Max(1, values.Length));
        span.CopyFrom(values, _stream);
        return span;
    }

    /// <summary>
    /// A device int holding the position <paramref name="value"/>: kernels that a replayed decode step runs with a new
    /// position each token (cache rows, attention starts) read it from device memory.
    /// </summary>
    private DeviceSpan<int> Scalar(int value)
    {
        if (_inDecodeStep)
            return value == _stepPosition ? _stepInputs.Slice(1, 1)
                : throw new InvalidOperationException($"A decode step at position {_stepPosition} asked for position {value}; a recorded step can only vary its own position.");
        var span = _arena.Rent<int>(1);
        span.Fill(value, _stream);
        return span;
    }

    public void Dispose()
    {
        lock (_gate)
        {
            foreach (var batch in _kdaBatches.Values) batch.Dispose();
            foreach (var scratch in _kdaScratch.Values) scratch.Dispose();
            foreach (var scratch in _mlaScratch.Values) scratch.Dispose();
            _moeDecodeScratch?.Dispose();
            _argmaxScratch?.Dispose();
            _moePrefillScratch?.Dispose();
            _cublas?.Dispose();
            _weights.Dispose();
            _arena.Dispose();
            _stream.Dispose();
            _context.Dispose();
        }
    }
}
