using KimiLinear.Layers;
using KimiLinear.Loading;
using KimiLinear.State;

namespace KimiLinear.Backends;

/// <summary>The routing rule of a MoE block (from the configuration).</summary>
/// <param name="ExpertsPerToken">A: experts chosen per token.</param>
/// <param name="Groups">Expert groups; top-k runs within the best <paramref name="TopKGroups"/> groups.</param>
/// <param name="TopKGroups">Groups kept.</param>
/// <param name="Renormalize">Normalise the chosen weights to sum 1.</param>
/// <param name="ScalingFactor">Multiplier of the routed weights.</param>
/// <param name="BiasedWeights">Weights from the bias-corrected scores (HF remote code) rather than the plain scores.</param>
internal readonly record struct MoeRouting(int ExpertsPerToken, int Groups, int TopKGroups, bool Renormalize, float ScalingFactor, bool BiasedWeights);

/// <summary>
/// The rows of <paramref name="Input"/> after an RMSNorm not yet applied: x · rsqrt(mean(x²) + eps) · weight, row by
/// row. A pre-norm layer hands its input so to the projections that consume it (<see cref="IKimiBackend.MatMul(RmsNormed,
/// ReadOnlySpan{WeightMatrix}, ReadOnlySpan{Tensor})"/>), which may normalise as they load it.
/// </summary>
/// <param name="Input">[T, D] the residual stream.</param>
/// <param name="Weight">[D] the norm's weight.</param>
/// <param name="Eps">Added to the mean square.</param>
internal readonly record struct RmsNormed(Tensor Input, float[] Weight, float Eps);

/// <summary>
/// A greedy choice a backend made for a session (<see cref="IKimiBackend.ChooseNext"/>), perhaps not yet known to the
/// host: <see cref="IKimiBackend.ReadChoice"/> waits for it. <paramref name="Sequence"/> counts the session's choices.
/// </summary>
internal readonly record struct GreedyChoice(long Sequence)
{
    /// <summary>
    /// Where a backend keeps this choice among the session's two latest, <paramref name="latest"/> being the sequence
    /// number of the session's latest choice; a choice older than those two (or not made yet) is an error.
    /// </summary>
    public int Slot(long latest) => Sequence >= 1 && Sequence <= latest && Sequence > latest - 2 ? SlotOf(Sequence)
        : throw new InvalidOperationException($"Greedy choice {Sequence} is no longer readable: the session's latest is {latest}, and only the two latest are kept.");

    /// <summary>The slot of choice <paramref name="sequence"/>: its parity.</summary>
    public static int SlotOf(long sequence) => (int)(sequence & 1);
}

/// <summary>
/// The kernels the model graph is made of, one method per kernel. The CPU implementation is the executable specification;
/// every other backend must agree with it. Shapes use T tokens, D hidden, H heads, K key dim, V value dim, E experts,
/// A active experts, L cached tokens.
/// </summary>
internal interface IKimiBackend
{
    /// <summary>What the model runs on, for messages ("CPU (8 threads)", "NVIDIA H100 80GB HBM3").</summary>
    string DeviceName { get; }
    /// <summary>
    /// Called once after loading with every bound matrix and every MoE block's experts: a GPU backend checks that they
    /// fit its memory (a clear error if not) and uploads them, reporting bytes done.
    /// </summary>
    void PrepareWeights(IReadOnlyList<WeightMatrix> matrices, IReadOnlyList<MoeExperts> experts, IProgress<long> uploaded, CancellationToken cancellationToken);
    /// <summary>
    /// A tensor for activations of the current forward step (a GPU reuses its memory afterwards). Its contents are
    /// undefined until written: every kernel writes its whole output, and <see cref="Clear"/> zeroes an accumulator.
    /// </summary>
    Tensor Allocate(int rows, int cols);
    /// <summary>
    /// Starts a scope whose activation tensors are released when it is disposed (scopes nest, like a stack): a layer's
    /// intermediates then take memory for one layer, not for the whole step. Tensors allocated before the scope stay.
    /// </summary>
    IDisposable BeginScratch();
    /// <summary>Sets every element of <paramref name="tensor"/> to zero.</summary>
    void Clear(Tensor tensor);
    /// <summary>A zeroed fp32 tensor that outlives forward steps (session state: KDA windows and state).</summary>
    Tensor AllocateState(int rows, int cols);
    /// <summary>
    /// A zeroed tensor for attention cache rows that outlive forward steps (the MLA latent cache). A GPU backend keeps it
    /// in bf16 (half the memory and bandwidth of a long context); values read back are what it stores.
    /// </summary>
    Tensor AllocateCache(int rows, int cols);
    /// <summary>
    /// <paramref name="tensor"/> with room for <paramref name="rows"/> rows, its first <paramref name="validRows"/> kept:
    /// the same tensor when it can grow in place, else a new tensor of the same kind holding a copy (the old one is then
    /// invalid).
    /// </summary>
    Tensor GrowRows(Tensor tensor, int validRows, int rows);
    /// <summary>
    /// Starts one forward step; disposing the scope ends it. Activation tensors live until then. A backend that keeps one
    /// device's work in order serialises steps here.
    /// </summary>
    IDisposable BeginForward();
    /// <summary>
    /// Runs one decode step of <paramref name="state"/>'s session: <paramref name="step"/> queues the whole step for a
    /// token at <paramref name="position"/> and returns the logits tensor. <paramref name="token"/> may be
    /// <see cref="ChosenToken"/>: the session's latest <see cref="ChooseNext"/>, which the step reads where the backend
    /// put it, so the host need not wait for it; <paramref name="step"/> gets the token id where the host knows it, else
    /// <see cref="ChosenToken"/>. A backend may record the work the first time and replay the recording on later steps
    /// without calling <paramref name="step"/> (a CUDA graph), kept in <see cref="SessionState.Decoder"/>: so the step
    /// queues the same work every token, and the token and position reach kernels only through <see cref="Embed"/>
    /// (which then reads the step's token, not its ids), the cache row of
    /// <see cref="WriteLatentRows(RmsNormed, Tensor, Tensor, int)"/> and the start of
    /// <see cref="MlaAttention(Tensor, Tensor, int, WeightMatrix, Tensor, int, int, int, int, bool)"/>.
    /// </summary>
    Tensor RunDecodeStep(SessionState state, int token, int position, Func<int, Tensor> step);
    /// <summary>The <c>token</c> of <see cref="RunDecodeStep"/> that stands for the session's latest greedy choice.</summary>
    const int ChosenToken = -1;
    /// <summary>Most tokens one forward step takes; a longer prompt is run in pieces of this size (bounded activation memory).</summary>
    int MaxTokensPerForward { get; }
    /// <summary>Copies host floats into <paramref name="destination"/> (row-major, whole tensor).</summary>
    void Upload(ReadOnlySpan<float> source, Tensor destination);
    /// <summary>Copies the whole tensor to host floats.</summary>
    void Download(Tensor source, Span<float> destination);
    /// <summary>
    /// Queues greedy decoding's choice for <paramref name="state"/>'s session: the index of the largest value of
    /// <paramref name="logits"/> [1, N], the lowest among ties, found where the logits are (a GPU sends back one int
    /// instead of the vocabulary's logits), without waiting for it. It becomes the session's <see cref="ChosenToken"/>.
    /// </summary>
    GreedyChoice ChooseNext(SessionState state, Tensor logits);
    /// <summary>
    /// Waits for <paramref name="choice"/> and returns the token. A session keeps its two latest choices readable (the
    /// one a caller is about to return and the one the step feeding it makes); an older one is an error.
    /// </summary>
    int ReadChoice(SessionState state, GreedyChoice choice);
    /// <summary>Copies rows [0, rows) of <paramref name="source"/> into <paramref name="destination"/> at row <paramref name="destinationRow"/>.</summary>
    void CopyRows(Tensor source, int rows, Tensor destination, int destinationRow);
    /// <summary>
    /// MLA cache rows: destination[row + t] = (RmsNorm(latent[t]) | sharedKey[t]), the compressed latent normalised as it
    /// is written. latent: [T, R] with its norm; sharedKey: [T, P]; destination: [≥ row + T, R + P].
    /// </summary>
    void WriteLatentRows(RmsNormed latent, Tensor sharedKey, Tensor destination, int row);
    /// <summary>
    /// One row into each of N caches (a batched decode step): destinations[n][rows[n]] = (RmsNorm(latent[n]) | sharedKey[n]).
    /// latent: [N, R]; sharedKey: [N, P]; destinations[n]: [&gt; rows[n], R + P], no two the same.
    /// </summary>
    void WriteLatentRows(RmsNormed latent, Tensor sharedKey, IReadOnlyList<Tensor> destinations, ReadOnlySpan<int> rows);

    /// <summary>x[t] = table[ids[t]]. table: [vocab, D]; x: [T, D].</summary>
    void Embed(WeightMatrix table, ReadOnlySpan<int> ids, Tensor x);
    /// <summary>y[t] = x[t] · rsqrt(mean(x[t]²) + eps) · weight, row by row. x, y: [T, N]; weight: [N].</summary>
    void RmsNorm(Tensor x, float[] weight, float eps, Tensor y);
    /// <summary>residual += x, then y = RmsNorm(residual) row by row (one pass where a backend can). All [T, N]; weight: [N].</summary>
    void AddRmsNorm(Tensor residual, Tensor x, float[] weight, float eps, Tensor y);
    /// <summary>accumulator += x (same shape).</summary>
    void Add(Tensor accumulator, Tensor x);
    /// <summary>y = x · wᵀ. x: [T, in]; w: [out, in]; y: [T, out].</summary>
    void MatMul(Tensor x, WeightMatrix w, Tensor y);
    /// <summary>
    /// outputs[i] = x · weights[i]ᵀ for projections that share their input (q, k, v, ... of one layer). A backend may run
    /// them as one product when the weights and the outputs lie one after another in its memory: layers bind such
    /// weights and allocate such outputs in the same order, one after another.
    /// </summary>
    void MatMul(Tensor x, ReadOnlySpan<WeightMatrix> weights, ReadOnlySpan<Tensor> outputs);
    /// <summary>
    /// outputs[i] = RMSNorm(x) · weights[i]ᵀ, as <see cref="MatMul(Tensor, ReadOnlySpan{WeightMatrix}, ReadOnlySpan{Tensor})"/>
    /// of the normed rows: a backend may normalise as the product loads x (a decode step's norm then needs no launch).
    /// </summary>
    void MatMul(RmsNormed x, ReadOnlySpan<WeightMatrix> weights, ReadOnlySpan<Tensor> outputs);
    /// <summary>
    /// outputs[i] = inputs[i] · weights[i]ᵀ: independent products issued together, so that a backend may run them as one
    /// (a decode step's launch latency paid once) when inputs, weights and outputs each lie one after another in its
    /// memory, as for <see cref="MatMul(Tensor, ReadOnlySpan{WeightMatrix}, ReadOnlySpan{Tensor})"/>.
    /// </summary>
    void MatMul(ReadOnlySpan<Tensor> inputs, ReadOnlySpan<WeightMatrix> weights, ReadOnlySpan<Tensor> outputs);
    /// <summary>output = SiLU(gate) ⊙ up. All [T, N].</summary>
    void SwiGlu(Tensor gate, Tensor up, Tensor output);

    /// <summary>
    /// The KDA token mixer after its projections (spec §2): per channel the causal short conv + SiLU of q, k, v over
    /// the carried windows (then the windows advance), the gate g = −exp(A_log)·softplus(f + dt_bias), β = σ(b), the
    /// KDA core on the fp32 state (the chunked algorithm when T &gt; 1, else the recurrence), and the sigmoid-gated
    /// per-head RMSNorm. One call, so that a GPU runs it as its fused kernels.
    /// </summary>
    /// <param name="inputs">The projections of T tokens (<see cref="KdaMixerInputs"/>).</param>
    /// <param name="parameters">The layer's conv taps, gate and norm parameters.</param>
    /// <param name="state">The sequence's windows and state, advanced by T tokens.</param>
    /// <param name="y">[T, H·V] the gated, normalised output (the input of o_proj).</param>
    void KdaMixer(KdaMixerInputs inputs, KdaMixerParameters parameters, KdaLayerState state, Tensor y);

    /// <summary>
    /// One decode token of each of N sequences through the KDA token mixer: row n of <paramref name="inputs"/> and of
    /// <paramref name="y"/> belongs to <paramref name="states"/>[n], and the result is what N one-token
    /// <see cref="KdaMixer(KdaMixerInputs, KdaMixerParameters, KdaLayerState, Tensor)"/> calls give. One call, so that a
    /// GPU runs every sequence in one launch though each keeps its state in its own memory (a batched decode step).
    /// </summary>
    /// <param name="inputs">The projections of N tokens, one a sequence.</param>
    /// <param name="parameters">The layer's conv taps, gate and norm parameters.</param>
    /// <param name="states">N distinct sequences' windows and states, each advanced by one token.</param>
    /// <param name="y">[N, H·V] the gated, normalised outputs.</param>
    void KdaMixer(KdaMixerInputs inputs, KdaMixerParameters parameters, IReadOnlyList<KdaLayerState> states, Tensor y);

    /// <summary>
    /// MLA attention of T queries at positions [start, start + T) over the latent cache rows [0, start + T) (causal,
    /// no positional encoding). q: [T, H·(nope + rope)]; latent: [≥ start+T, R + rope] rows of (c_n | k_pe);
    /// kvB: [H·(nope + V), R]; o: [T, H·V]. <paramref name="absorbed"/> folds kvB into the query and output
    /// (MQA over the 576-wide latent) instead of expanding keys and values per head.
    /// </summary>
    void MlaAttention(Tensor q, Tensor latent, int start, WeightMatrix kvB, Tensor o, int heads, int nopeDim, int ropeDim, int valueDim, bool absorbed);

    /// <summary>
    /// Absorbed MLA attention of one query of each of N sequences over its own cache (a batched decode step): row n of
    /// <paramref name="q"/> and <paramref name="o"/> belongs to <paramref name="latents"/>[n] and attends to its rows
    /// [0, <paramref name="starts"/>[n]] (its own row written). What N one-row absorbed
    /// <see cref="MlaAttention(Tensor, Tensor, int, WeightMatrix, Tensor, int, int, int, int, bool)"/> calls give; a GPU
    /// folds kvB into the N queries and out of the N outputs once each (reading it twice a step, not twice a sequence)
    /// and attends over all N caches in one launch.
    /// </summary>
    void MlaAttention(Tensor q, IReadOnlyList<Tensor> latents, ReadOnlySpan<int> starts, WeightMatrix kvB, Tensor o, int heads, int nopeDim, int ropeDim, int valueDim);

    /// <summary>
    /// A MoE block added into the residual stream: the router's logits x · routerᵀ [T, E], then A experts per token
    /// (sigmoid scores; the correction bias only selects; grouped top-k; weights renormalised and scaled), and
    /// shared(x) + Σ weight · expert(x) added to <paramref name="residual"/> [T, D]. x: [T, D]. The logits must be as
    /// accurate as fp32 inputs make them: experts are chosen discretely, so a rounding of x can swap an expert and
    /// change a token's output.
    /// </summary>
    void MoeExperts(Tensor x, MoeExperts experts, Tensor residual);
    /// <summary>y[i] = x[rows[i]]. x: [T, D]; y: [rows.Length, D].</summary>
    void GatherRows(Tensor x, ReadOnlySpan<int> rows, Tensor y);
    /// <summary>accumulator[rows[i]] += scales[i] · x[i]. x: [rows.Length, D]; accumulator: [T, D].</summary>
    void ScatterAddRows(Tensor x, ReadOnlySpan<int> rows, ReadOnlySpan<float> scales, Tensor accumulator);
}

/// <summary>A KDA layer's projections of T tokens, before the short convs and activations.</summary>
/// <param name="Query">q_proj output [T, H·K].</param>
/// <param name="Key">k_proj output [T, H·K].</param>
/// <param name="Value">v_proj output [T, H·V].</param>
/// <param name="Forget">f_b_proj output [T, H·K], before the gate.</param>
/// <param name="Beta">b_proj output [T, H], before the sigmoid.</param>
/// <param name="OutputGate">g_b_proj output [T, H·V], before the sigmoid of the output norm.</param>
internal readonly record struct KdaMixerInputs(Tensor Query, Tensor Key, Tensor Value, Tensor Forget, Tensor Beta, Tensor OutputGate);

/// <summary>A KDA layer's parameters besides its projections.</summary>
/// <param name="Heads">H.</param>
/// <param name="HeadDim">K = V.</param>
/// <param name="QueryConv">q_conv1d taps [H·K, W]; tap W−1 multiplies the current token.</param>
/// <param name="KeyConv">k_conv1d taps [H·K, W].</param>
/// <param name="ValueConv">v_conv1d taps [H·V, W].</param>
/// <param name="ALog">A_log [H].</param>
/// <param name="DtBias">dt_bias [H·K].</param>
/// <param name="OutputNorm">o_norm weight [V], shared by all heads.</param>
/// <param name="Eps">The output norm's epsilon.</param>
internal sealed record KdaMixerParameters(int Heads, int HeadDim, float[] QueryConv, float[] KeyConv, float[] ValueConv,
    float[] ALog, float[] DtBias, float[] OutputNorm, float Eps)
{
    /// <summary>W, the short conv's width.</summary>
    public int ConvSize => QueryConv.Length / (Heads * HeadDim);
}
