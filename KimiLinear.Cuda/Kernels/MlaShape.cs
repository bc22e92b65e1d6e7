namespace KimiLinear.Cuda.Kernels;

/// <summary>Head geometry of one MLA layer (spec §3): the model has H 32, N 128, P 64, V 128, R 512.</summary>
/// <param name="Heads">H.</param>
/// <param name="NopeDim">N, qk_nope_head_dim: the query/key part that goes through kv_b_proj.</param>
/// <param name="RopeDim">P, qk_rope_head_dim: the query/key part shared by all heads (k_pe; never rotated).</param>
/// <param name="ValueDim">V, v_head_dim.</param>
/// <param name="Rank">R, kv_lora_rank: the compressed latent c.</param>
internal readonly record struct MlaShape(int Heads, int NopeDim, int RopeDim, int ValueDim, int Rank)
{
    /// <summary>N + P: one head's query (and key) width.</summary>
    public int QueryHeadDim => NopeDim + RopeDim;

    /// <summary>H·(N + P): one row of q.</summary>
    public int QueryWidth => Heads * QueryHeadDim;

    /// <summary>R + P: one latent cache row (c | k_pe), and one head's absorbed query.</summary>
    public int LatentWidth => Rank + RopeDim;

    /// <summary>H·(N + V): one row of keysValues = latent[:, :R]·kvBᵀ, and kvB's row count.</summary>
    public int KeyValueWidth => Heads * (NopeDim + ValueDim);

    /// <summary>H·V: one row of the attention output.</summary>
    public int OutputWidth => Heads * ValueDim;

    /// <summary>1/√(N + P), the softmax scale (no YaRN factor: nothing is rotated).</summary>
    public float Scale => 1f / MathF.Sqrt(QueryHeadDim);
}
