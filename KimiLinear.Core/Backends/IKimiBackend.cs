using KimiLinear.Loading;

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
/// The kernels the model graph is made of, one method per kernel. The CPU implementation is the executable specification;
/// every other backend must agree with it. Shapes use T tokens, D hidden, H heads, K key dim, V value dim, E experts,
/// A active experts, L cached tokens.
/// </summary>
internal interface IKimiBackend
{
    /// <summary>A zeroed tensor.</summary>
    Tensor Allocate(int rows, int cols);
    /// <summary>Copies host floats into <paramref name="destination"/> (row-major, whole tensor).</summary>
    void Upload(ReadOnlySpan<float> source, Tensor destination);
    /// <summary>Copies the whole tensor to host floats.</summary>
    void Download(Tensor source, Span<float> destination);
    /// <summary>Copies rows [0, rows) of <paramref name="source"/> into <paramref name="destination"/> at row <paramref name="destinationRow"/>.</summary>
    void CopyRows(Tensor source, int rows, Tensor destination, int destinationRow);
    /// <summary>destination[row + t] = (left[t] | right[t]). left: [T, A]; right: [T, B]; destination: [≥ row + T, A + B].</summary>
    void WriteConcatenatedRows(Tensor left, Tensor right, Tensor destination, int row);

    /// <summary>x[t] = table[ids[t]]. table: [vocab, D]; x: [T, D].</summary>
    void Embed(WeightMatrix table, ReadOnlySpan<int> ids, Tensor x);
    /// <summary>y[t] = x[t] · rsqrt(mean(x[t]²) + eps) · weight, row by row. x, y: [T, N]; weight: [N].</summary>
    void RmsNorm(Tensor x, float[] weight, float eps, Tensor y);
    /// <summary>accumulator += x (same shape).</summary>
    void Add(Tensor accumulator, Tensor x);
    /// <summary>y = x · wᵀ. x: [T, in]; w: [out, in]; y: [T, out].</summary>
    void MatMul(Tensor x, WeightMatrix w, Tensor y);
    /// <summary>output = SiLU(gate) ⊙ up. All [T, N].</summary>
    void SwiGlu(Tensor gate, Tensor up, Tensor output);
    /// <summary>x = sigmoid(x) in place.</summary>
    void Sigmoid(Tensor x);

    /// <summary>
    /// Causal depthwise conv + SiLU with a carried window: y[t,c] = SiLU(Σ_w taps[c,w] · p[t−W+1+w, c]) where inputs
    /// before this call come from <paramref name="window"/>, which is then updated to the last W−1 inputs.
    /// x, y: [T, C]; taps: [C, W] (tap W−1 multiplies the current token); window: [C, W−1], oldest first.
    /// </summary>
    void ShortConvSilu(Tensor x, float[] taps, Tensor window, Tensor y);
    /// <summary>g[t, h·K+d] = −exp(aLog[h]) · softplus(f[t, h·K+d] + dtBias[h·K+d]) (softplus linear above 20). f, g: [T, H·K].</summary>
    void KdaGate(Tensor f, float[] aLog, float[] dtBias, Tensor g);
    /// <summary>
    /// The KDA core over T tokens: L2-normalise q and k per head, scale q by K^−½, gated delta rule on the fp32 state.
    /// q, k, g: [T, H·K]; v, o: [T, H·V]; beta: [T, H]; state: [H, K·V] (row = key channel), updated in place.
    /// <paramref name="chunked"/> selects the chunkwise-parallel prefill algorithm (else the token-by-token recurrence).
    /// </summary>
    void KdaCore(Tensor q, Tensor k, Tensor v, Tensor g, Tensor beta, Tensor state, Tensor o, int heads, int keyDim, int valueDim, bool chunked);
    /// <summary>y[t, h] = o[t, h] · rsqrt(mean(o[t, h]²) + eps) · weight ⊙ sigmoid(z[t, h]) per head of width weight.Length. o, z, y: [T, H·V].</summary>
    void GatedRmsNorm(Tensor o, Tensor z, float[] weight, float eps, Tensor y);

    /// <summary>
    /// MLA attention of T queries at positions [start, start + T) over the latent cache rows [0, start + T) (causal,
    /// no positional encoding). q: [T, H·(nope + rope)]; latent: [≥ start+T, R + rope] rows of (c_n | k_pe);
    /// kvB: [H·(nope + V), R]; o: [T, H·V]. <paramref name="absorbed"/> folds kvB into the query and output
    /// (MQA over the 576-wide latent) instead of expanding keys and values per head.
    /// </summary>
    void MlaAttention(Tensor q, Tensor latent, int start, WeightMatrix kvB, Tensor o, int heads, int nopeDim, int ropeDim, int valueDim, bool absorbed);

    /// <summary>
    /// Chooses A experts per token: scores = sigmoid(logits); selection by scores + bias (grouped top-k); weights from
    /// the scores, renormalised and scaled. logits: [T, E]; bias: [E]; experts, weights: [T·A] row-major, host memory.
    /// </summary>
    void MoeRoute(Tensor logits, float[] bias, MoeRouting routing, Span<int> experts, Span<float> weights);
    /// <summary>y[i] = x[rows[i]]. x: [T, D]; y: [rows.Length, D].</summary>
    void GatherRows(Tensor x, ReadOnlySpan<int> rows, Tensor y);
    /// <summary>accumulator[rows[i]] += scales[i] · x[i]. x: [rows.Length, D]; accumulator: [T, D].</summary>
    void ScatterAddRows(Tensor x, ReadOnlySpan<int> rows, ReadOnlySpan<float> scales, Tensor accumulator);
}
