using System.Buffers;
using System.Numerics;
using System.Numerics.Tensors;

namespace KimiLinear.Backends.Cpu;

/// <summary>
/// The KDA core for one sequence: L2-normalise q and k per head (eps 1e-6 inside the sqrt), scale q by K^-1/2, then the
/// gated delta rule over fp32 state S [H, K, V] (row = key channel, column = value channel), updated in place.
/// </summary>
/// <remarks>
/// Per head and token (spec §2.2 step 7): S ← Diag(exp g)·S; r = v − Sᵀk̂; S ← S + k̂ ⊗ βr; o = Sᵀq̂ (updated state).
/// <para>
/// The state is [K, V] (row = key channel) because the gate decays key channels: each decay and each rank-1 write then
/// touches whole contiguous rows, and prefill and decode must agree on one layout (the spec's pitfall 4: mixing [K, V]
/// and [V, K] silently destroys long-context recall). It is fp32 because it integrates every token of the sequence:
/// bf16 rounding would accumulate over thousands of steps (vLLM forces fp32 for the same reason).
/// </para>
/// <para>
/// Heads are independent, so both paths run one head per work item (in parallel when the call is big enough) and walk
/// that head's tokens in order. Inputs are read in their [T, H, ·] layout; nothing is transposed up front.
/// </para>
/// </remarks>
internal static unsafe class KdaCore
{
    /// <summary>Added to the sum of squares inside the square root of the q/k L2 norm (FLA's <c>l2norm</c>).</summary>
    private const float NormEpsilon = 1e-6f;

    /// <summary>
    /// Side of the blocks of a chunk's intra-chunk matrices (FLA's sub-chunk). Off-diagonal blocks factor their decay
    /// through a reference row; only the diagonal blocks need a separate exponential per (row, column) pair.
    /// </summary>
    private const int SubChunk = 16;

    /// <summary>Multiply-adds per call below which handing heads to pool threads costs more than it saves.</summary>
    private const long ParallelThreshold = 1L << 16;

    /// <summary>Scratch floats above which the recurrent path rents from the pool instead of using the stack.</summary>
    private const int StackScratchLimit = 4096;

    /// <summary>Token-by-token gated delta rule (the decode path; valid for any T).</summary>
    /// <param name="q">Raw queries [T, H, K].</param>
    /// <param name="k">Raw keys [T, H, K].</param>
    /// <param name="v">Values [T, H, V].</param>
    /// <param name="g">Log-decay per key channel [T, H, K], ≤ 0 (already activated).</param>
    /// <param name="beta">Write strength [T, H], after the sigmoid.</param>
    /// <param name="state">Recurrent state [H, K, V], read and overwritten.</param>
    /// <param name="o">Output [T, H, V].</param>
    /// <param name="tokens">T.</param>
    /// <param name="heads">H.</param>
    /// <param name="keyDim">K.</param>
    /// <param name="valueDim">V.</param>
    public static void Recurrent(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<float> g,
        ReadOnlySpan<float> beta, Span<float> state, Span<float> o, int tokens, int heads, int keyDim, int valueDim)
    {
        Validate(q, k, v, g, beta, state, o, tokens, heads, keyDim, valueDim);
        if (tokens == 0)
            return;
        fixed (float* pq = q, pk = k, pv = v, pg = g, pb = beta, ps = state, po = o)
        {
            var p = new Problem(pq, pk, pv, pg, pb, ps, po, tokens, heads, keyDim, valueDim);
            if (p.WorthParallel)
                Parallel.For(0, heads, h => RecurrentHead(p, h));
            else
                for (int h = 0; h < heads; h++)
                    RecurrentHead(p, h);
        }
    }

    /// <summary>
    /// Chunkwise-parallel form of the same rule (spec §2.4, FLA <c>chunk_kda</c>): equal to <see cref="Recurrent"/> up to
    /// fp32 rounding, with most of the work in small matrix products. The last chunk may be partial.
    /// </summary>
    /// <param name="q">Raw queries [T, H, K].</param>
    /// <param name="k">Raw keys [T, H, K].</param>
    /// <param name="v">Values [T, H, V].</param>
    /// <param name="g">Log-decay per key channel [T, H, K], ≤ 0 (already activated).</param>
    /// <param name="beta">Write strength [T, H], after the sigmoid.</param>
    /// <param name="state">Recurrent state [H, K, V], read and overwritten.</param>
    /// <param name="o">Output [T, H, V].</param>
    /// <param name="tokens">T.</param>
    /// <param name="heads">H.</param>
    /// <param name="keyDim">K.</param>
    /// <param name="valueDim">V.</param>
    /// <param name="chunkSize">Tokens per chunk (64 as in FLA).</param>
    public static void Chunked(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<float> g,
        ReadOnlySpan<float> beta, Span<float> state, Span<float> o, int tokens, int heads, int keyDim, int valueDim,
        int chunkSize = 64)
    {
        Validate(q, k, v, g, beta, state, o, tokens, heads, keyDim, valueDim);
        ArgumentOutOfRangeException.ThrowIfLessThan(chunkSize, 1);
        if (tokens == 0)
            return;
        fixed (float* pq = q, pk = k, pv = v, pg = g, pb = beta, ps = state, po = o)
        {
            var p = new Problem(pq, pk, pv, pg, pb, ps, po, tokens, heads, keyDim, valueDim);
            if (p.WorthParallel)
                Parallel.For(0, heads, h => ChunkedHead(p, h, chunkSize));
            else
                for (int h = 0; h < heads; h++)
                    ChunkedHead(p, h, chunkSize);
        }
    }

    private static void RecurrentHead(in Problem p, int h)
    {
        int kd = p.KeyDim, vd = p.ValueDim;
        int need = 3 * kd + vd;
        float[]? rented = null;
        Span<float> scratch = need <= StackScratchLimit ? stackalloc float[need] : (rented = ArrayPool<float>.Shared.Rent(need));
        try
        {
            Span<float> qn = scratch[..kd];                 // [K] q̂
            Span<float> kn = scratch.Slice(kd, kd);         // [K] k̂
            Span<float> decay = scratch.Slice(2 * kd, kd);  // [K] exp(g) ≤ 1
            Span<float> r = scratch.Slice(3 * kd, vd);      // [V] prediction error v − Sᵀk̂
            Span<float> s = p.State(h);                     // [K, V]
            float queryScale = 1f / MathF.Sqrt(kd);
            for (int t = 0; t < p.Tokens; t++)
            {
                L2Normalize(p.Query(t, h), qn, queryScale);
                L2Normalize(p.Key(t, h), kn, 1f);
                TensorPrimitives.Exp(p.Gate(t, h), decay);
                float b = p.Beta(t, h);

                p.Value(t, h).CopyTo(r);
                DecayAndPredict(s, decay, kn, r, vd);
                WriteAndRead(s, kn, b, r, qn, p.Output(t, h), vd);
            }
        }
        finally
        {
            if (rented is not null)
                ArrayPool<float>.Shared.Return(rented);
        }
    }

    // The two sweeps of a recurrent step each read and write every element of S once. They walk S in strips of four
    // vectors of columns, top to bottom, so that the strip's accumulators (r, o) and operands stay in registers: per
    // vector of S one load and one store, where row-at-a-time library calls would also load and store r or o each time
    // and pay a call per 128-float row. Columns past the last whole strip go element by element.
    private const int StripVectors = 4;

    /// <summary>S ← Diag(decay)·S and r ← r − Σ_d k̂[d]·S[d, :] (on the decayed rows): r enters as v, leaves as v − Sᵀk̂.</summary>
    private static void DecayAndPredict(Span<float> state, ReadOnlySpan<float> decay, ReadOnlySpan<float> kn, Span<float> r, int vd)
    {
        int kd = kn.Length, w = Vector<float>.Count, j = 0;
        fixed (float* s = state, a = decay, k = kn, pr = r)
        {
            for (; j + StripVectors * w <= vd; j += StripVectors * w)
            {
                var r0 = Vector.Load(pr + j);
                var r1 = Vector.Load(pr + j + w);
                var r2 = Vector.Load(pr + j + 2 * w);
                var r3 = Vector.Load(pr + j + 3 * w);
                for (int d = 0; d < kd; d++)
                {
                    float* row = s + (long)d * vd + j;
                    var av = new Vector<float>(a[d]);
                    var kv = new Vector<float>(-k[d]);
                    var x0 = Vector.Load(row) * av;
                    var x1 = Vector.Load(row + w) * av;
                    var x2 = Vector.Load(row + 2 * w) * av;
                    var x3 = Vector.Load(row + 3 * w) * av;
                    Vector.Store(x0, row);
                    Vector.Store(x1, row + w);
                    Vector.Store(x2, row + 2 * w);
                    Vector.Store(x3, row + 3 * w);
                    r0 = TileGemm.MulAdd(kv, x0, r0);
                    r1 = TileGemm.MulAdd(kv, x1, r1);
                    r2 = TileGemm.MulAdd(kv, x2, r2);
                    r3 = TileGemm.MulAdd(kv, x3, r3);
                }
                Vector.Store(r0, pr + j);
                Vector.Store(r1, pr + j + w);
                Vector.Store(r2, pr + j + 2 * w);
                Vector.Store(r3, pr + j + 3 * w);
            }
            for (; j < vd; j++)
            {
                float acc = pr[j];
                for (int d = 0; d < kd; d++)
                {
                    float x = s[(long)d * vd + j] * a[d];
                    s[(long)d * vd + j] = x;
                    acc -= k[d] * x;
                }
                pr[j] = acc;
            }
        }
    }

    /// <summary>S ← S + β·k̂ ⊗ r, and o = Sᵀq̂ on the updated rows.</summary>
    private static void WriteAndRead(Span<float> state, ReadOnlySpan<float> kn, float beta, ReadOnlySpan<float> r,
        ReadOnlySpan<float> qn, Span<float> o, int vd)
    {
        int kd = kn.Length, w = Vector<float>.Count, j = 0;
        fixed (float* s = state, k = kn, pr = r, q = qn, po = o)
        {
            for (; j + StripVectors * w <= vd; j += StripVectors * w)
            {
                var r0 = Vector.Load(pr + j);
                var r1 = Vector.Load(pr + j + w);
                var r2 = Vector.Load(pr + j + 2 * w);
                var r3 = Vector.Load(pr + j + 3 * w);
                Vector<float> o0 = default, o1 = default, o2 = default, o3 = default;
                for (int d = 0; d < kd; d++)
                {
                    float* row = s + (long)d * vd + j;
                    var kv = new Vector<float>(beta * k[d]);
                    var qv = new Vector<float>(q[d]);
                    var x0 = TileGemm.MulAdd(kv, r0, Vector.Load(row));
                    var x1 = TileGemm.MulAdd(kv, r1, Vector.Load(row + w));
                    var x2 = TileGemm.MulAdd(kv, r2, Vector.Load(row + 2 * w));
                    var x3 = TileGemm.MulAdd(kv, r3, Vector.Load(row + 3 * w));
                    Vector.Store(x0, row);
                    Vector.Store(x1, row + w);
                    Vector.Store(x2, row + 2 * w);
                    Vector.Store(x3, row + 3 * w);
                    o0 = TileGemm.MulAdd(qv, x0, o0);
                    o1 = TileGemm.MulAdd(qv, x1, o1);
                    o2 = TileGemm.MulAdd(qv, x2, o2);
                    o3 = TileGemm.MulAdd(qv, x3, o3);
                }
                Vector.Store(o0, po + j);
                Vector.Store(o1, po + j + w);
                Vector.Store(o2, po + j + 2 * w);
                Vector.Store(o3, po + j + 3 * w);
            }
            for (; j < vd; j++)
            {
                float acc = 0;
                for (int d = 0; d < kd; d++)
                {
                    float x = s[(long)d * vd + j] + beta * k[d] * pr[j];
                    s[(long)d * vd + j] = x;
                    acc += q[d] * x;
                }
                po[j] = acc;
            }
        }
    }

    /// <summary>
    /// One head over all chunks. Within a chunk of n tokens, G is the running sum of g from the chunk start (inclusive),
    /// so the decay between tokens s ≤ r is exp(G_r − G_s) and every exponential evaluated here has the form exp(x ≤ 0):
    /// exp(G_r − G_s) for s ≤ r, exp(G_r), exp(G_n − G_r). G reaches hundreds or thousands below zero within one chunk
    /// (|g| goes up to ~50 per step in the real model, and a chunk sums 64 steps), so the textbook factorisation
    /// exp(G_r)·exp(−G_s) overflows fp32 to ∞ and yields ∞·0 = NaN; products of two factors ≤ 1 can only underflow, and
    /// only where the true value is below fp32's range as well.
    /// <para>
    /// G itself is kept in double: it is a running sum that reaches hundreds below zero, where an fp32 ulp is ~3e-5, and
    /// two such sums subtracted in fp32 put that absolute error into every decay factor (on the golden cases that made the
    /// chunked output 10× less accurate than the recurrent one). Differences are rounded to fp32 only after subtracting,
    /// which makes each decay factor as exact as the recurrent path's per-step exp(g); it costs one conversion per K-row.
    /// </para>
    /// </summary>
    private static void ChunkedHead(in Problem p, int h, int chunkSize)
    {
        int kd = p.KeyDim, vd = p.ValueDim, c = chunkSize;
        var layout = new ChunkScratch(c, kd, vd);
        float[] rented = ArrayPool<float>.Shared.Rent(layout.Length);
        double[] rentedGates = ArrayPool<double>.Shared.Rent((c + 1) * kd);
        try
        {
            Span<float> all = rented.AsSpan(0, layout.Length);
            Span<double> cg = rentedGates.AsSpan(0, c * kd);  // [C, K] G
            Span<double> work = rentedGates.AsSpan(c * kd, kd); // [K]
            Span<float> s = p.State(h); // [K, V]
            for (int t0 = 0; t0 < p.Tokens; t0 += c)
                ChunkStep(p, h, t0, Math.Min(c, p.Tokens - t0), layout, all, cg, work, s);
        }
        finally
        {
            ArrayPool<double>.Shared.Return(rentedGates);
            ArrayPool<float>.Shared.Return(rented);
        }
    }

    /// <summary>Tokens [t0, t0 + n) of head h: outputs, and the state carried to the next chunk.</summary>
    private static void ChunkStep(in Problem p, int h, int t0, int n, in ChunkScratch at, Span<float> scratch,
        Span<double> cg, Span<double> work, Span<float> s)
    {
        int kd = p.KeyDim, vd = p.ValueDim, c = at.Chunk;
        // cg [C, K]: G, the chunk-local cumulative log-decay (≤ 0, non-increasing down each column), in double.
        Span<float> qn = at.Queries(scratch);    // [C, K] q̂, then q̂ ⊙ exp(G)
        Span<float> kn = at.Keys(scratch);       // [C, K] k̂
        Span<float> w = at.W(scratch);           // [C, K] W = (I + L)⁻¹·Diag(β)·(k̂ ⊙ exp(G)), then k̂ ⊙ exp(G_last − G)
        Span<float> u = at.U(scratch);           // [C, V] U = (I + L)⁻¹·Diag(β)·v, then V_new = U − W·S
        Span<float> kk = at.KK(scratch);         // [C, C] L, strictly lower, row r scaled by β_r
        Span<float> qk = at.QK(scratch);         // [C, C] A_qk, lower including the diagonal
        Span<float> qRef = at.QueryRef(scratch); // [SubChunk, K] q̂_r ⊙ exp(G_r − G_ref)
        Span<float> kRef = at.KeyRef(scratch);   // [SubChunk, K] k̂_r ⊙ exp(G_r − G_ref)
        Span<float> colRef = at.ColumnRef(scratch); // [K, SubChunk] (k̂_s ⊙ exp(G_ref − G_s))ᵀ for one block of columns
        Span<float> tmp = at.Temp(scratch);      // [K]

        float queryScale = 1f / MathF.Sqrt(kd);
        for (int r = 0; r < n; r++)
        {
            L2Normalize(p.Query(t0 + r, h), qn.Slice(r * kd, kd), queryScale);
            L2Normalize(p.Key(t0 + r, h), kn.Slice(r * kd, kd), 1f);
            Span<double> gr = cg.Slice(r * kd, kd);
            TensorPrimitives.ConvertTruncating(p.Gate(t0 + r, h), gr); // float → double is exact
            if (r > 0)
                TensorPrimitives.Add(gr, cg.Slice((r - 1) * kd, kd), gr);
        }

        // Intra-chunk matrices L[r, s] = β_r Σ_d k̂_r k̂_s e^{G_r − G_s} (s < r) and A_qk[r, s] = Σ_d q̂_r k̂_s e^{G_r − G_s}
        // (s ≤ r), by blocks of SubChunk rows. Off-diagonal blocks split each decay at the block's first row n0
        // (s < n0 ≤ r): e^{G_r − G_s} = e^{G_r − G_n0}·e^{G_n0 − G_s}, both factors ≤ 1, one exponential per row and
        // column, and the block is a small matrix product. The diagonal block has no such reference row, so it
        // exponentiates each difference, always with s ≤ r. The zeros above the diagonal are read by the triangular
        // products below.
        kk[..(c * c)].Clear();
        qk[..(c * c)].Clear();
        for (int r0 = 0; r0 < n; r0 += SubChunk)
        {
            int rows = Math.Min(SubChunk, n - r0);
            ReadOnlySpan<double> gRef = cg.Slice(r0 * kd, kd);
            if (r0 > 0)
            {
                for (int i = 0; i < rows; i++)
                {
                    int r = r0 + i;
                    Decay(cg.Slice(r * kd, kd), gRef, work, tmp);
                    TensorPrimitives.Multiply(qn.Slice(r * kd, kd), tmp, qRef.Slice(i * kd, kd));
                    TensorPrimitives.Multiply(kn.Slice(r * kd, kd), tmp, kRef.Slice(i * kd, kd));
                }
            }
            for (int s0 = 0; s0 < r0; s0 += SubChunk) // blocks before r0 are full
            {
                for (int j = 0; j < SubChunk; j++)
                {
                    Decay(gRef, cg.Slice((s0 + j) * kd, kd), work, tmp);
                    ReadOnlySpan<float> ks = kn.Slice((s0 + j) * kd, kd);
                    for (int d = 0; d < kd; d++)
                        colRef[d * SubChunk + j] = ks[d] * tmp[d];
                }
                TileGemm.MultiplyAccumulate(kRef, kd, 1, colRef, SubChunk, kk[(r0 * c + s0)..], c, rows, SubChunk, kd);
                TileGemm.MultiplyAccumulate(qRef, kd, 1, colRef, SubChunk, qk[(r0 * c + s0)..], c, rows, SubChunk, kd);
            }
            for (int r = r0; r < r0 + rows; r++)
            {
                ReadOnlySpan<double> gr = cg.Slice(r * kd, kd);
                for (int sIdx = r0; sIdx <= r; sIdx++)
                {
                    Decay(gr, cg.Slice(sIdx * kd, kd), work, tmp);
                    TensorPrimitives.Multiply(kn.Slice(sIdx * kd, kd), tmp, tmp); // k̂_s ⊙ e^{G_r − G_s}
                    qk[r * c + sIdx] = TensorPrimitives.Dot(qn.Slice(r * kd, kd), tmp);
                    if (sIdx < r)
                        kk[r * c + sIdx] = TensorPrimitives.Dot(kn.Slice(r * kd, kd), tmp);
                }
            }
        }
        for (int r = 1; r < n; r++)
            TensorPrimitives.Multiply(kk.Slice(r * c, r), p.Beta(t0 + r, h), kk.Slice(r * c, r));

        // (I + L)·[W | U] = Diag(β)·[k̂ ⊙ e^G | v] by forward substitution (I + L is unit lower triangular: no inverse is
        // formed, nothing is divided), a block of SubChunk rows at a time: subtract the earlier blocks' contribution as
        // one product, then substitute row by row inside the block.
        for (int r = 0; r < n; r++)
        {
            float br = p.Beta(t0 + r, h);
            Span<float> wr = w.Slice(r * kd, kd);
            Decay(cg.Slice(r * kd, kd), tmp);
            TensorPrimitives.Multiply(kn.Slice(r * kd, kd), tmp, wr);
            TensorPrimitives.Multiply(wr, br, wr);
            TensorPrimitives.Multiply(p.Value(t0 + r, h), br, u.Slice(r * vd, vd));
        }
        for (int r0 = 0; r0 < n; r0 += SubChunk)
        {
            int rows = Math.Min(SubChunk, n - r0);
            TileGemm.MultiplyAccumulate(kk[(r0 * c)..], c, 1, w, kd, w[(r0 * kd)..], kd, rows, kd, r0, -1f);
            TileGemm.MultiplyAccumulate(kk[(r0 * c)..], c, 1, u, vd, u[(r0 * vd)..], vd, rows, vd, r0, -1f);
            for (int r = r0 + 1; r < r0 + rows; r++)
            {
                Span<float> wr = w.Slice(r * kd, kd), ur = u.Slice(r * vd, vd);
                for (int x = r0; x < r; x++)
                {
                    float l = kk[r * c + x];
                    TensorPrimitives.MultiplyAdd(w.Slice(x * kd, kd), -l, wr, wr);
                    TensorPrimitives.MultiplyAdd(u.Slice(x * vd, vd), -l, ur, ur);
                }
            }
        }

        // Pseudo-values V_new = U − W·S: what each token writes once the incoming state's prediction is removed.
        TileGemm.MultiplyAccumulate(w, kd, 1, s, vd, u, vd, n, vd, kd, -1f);

        // O = (q̂ ⊙ e^G)·S + A_qk·V_new: the incoming state decayed to each row, plus this chunk's own writes.
        Span<float> o = p.OutputRows(t0, h, n);
        int ldo = p.Heads * vd;
        for (int r = 0; r < n; r++)
        {
            Span<float> qr = qn.Slice(r * kd, kd);
            Decay(cg.Slice(r * kd, kd), tmp);
            TensorPrimitives.Multiply(qr, tmp, qr);
            o.Slice(r * ldo, vd).Clear();
        }
        TileGemm.MultiplyAccumulate(qn, kd, 1, s, vd, o, ldo, n, vd, kd);
        TileGemm.MultiplyAccumulate(qk, c, 1, u, vd, o, ldo, n, vd, n, lowerTriangular: true);

        // S ← Diag(e^{G_last})·S + (k̂ ⊙ e^{G_last − G})ᵀ·V_new.
        ReadOnlySpan<double> gLast = cg.Slice((n - 1) * kd, kd);
        Decay(gLast, tmp);
        for (int d = 0; d < kd; d++)
        {
            Span<float> row = s.Slice(d * vd, vd);
            TensorPrimitives.Multiply(row, tmp[d], row);
        }
        for (int r = 0; r < n; r++)
        {
            Decay(gLast, cg.Slice(r * kd, kd), work, tmp);
            TensorPrimitives.Multiply(kn.Slice(r * kd, kd), tmp, w.Slice(r * kd, kd));
        }
        TileGemm.MultiplyAccumulate(w, 1, kd, u, vd, s, vd, kd, vd, n);
    }

    /// <summary>dst = exp(later − earlier): the decay between two tokens of a chunk, ≤ 1 when later is not earlier.</summary>
    private static void Decay(ReadOnlySpan<double> later, ReadOnlySpan<double> earlier, Span<double> work, Span<float> dst)
    {
        TensorPrimitives.Subtract(later, earlier, work);
        Decay(work, dst);
    }

    /// <summary>dst = exp(cumulative) ≤ 1: the decay from the chunk start (or an exponent already formed in double).</summary>
    private static void Decay(ReadOnlySpan<double> cumulative, Span<float> dst)
    {
        TensorPrimitives.ConvertTruncating(cumulative, dst); // double → float rounds to nearest
        TensorPrimitives.Exp(dst, dst);
    }

    /// <summary>dst = x / sqrt(Σ x² + 1e-6) · scale (FLA's l2norm, eps inside the square root).</summary>
    private static void L2Normalize(ReadOnlySpan<float> x, Span<float> dst, float scale)
    {
        float inv = scale / MathF.Sqrt(TensorPrimitives.SumOfSquares(x) + NormEpsilon);
        TensorPrimitives.Multiply(x, inv, dst);
    }

    private static void Validate(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, ReadOnlySpan<float> g,
        ReadOnlySpan<float> beta, ReadOnlySpan<float> state, ReadOnlySpan<float> o, int tokens, int heads, int keyDim, int valueDim)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(keyDim, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(valueDim, 1);
        long th = (long)tokens * heads;
        CheckLength(q, th * keyDim, nameof(q), "[T, H, K]");
        CheckLength(k, th * keyDim, nameof(k), "[T, H, K]");
        CheckLength(g, th * keyDim, nameof(g), "[T, H, K]");
        CheckLength(v, th * valueDim, nameof(v), "[T, H, V]");
        CheckLength(o, th * valueDim, nameof(o), "[T, H, V]");
        CheckLength(beta, th, nameof(beta), "[T, H]");
        CheckLength(state, (long)heads * keyDim * valueDim, nameof(state), "[H, K, V]");

        void CheckLength(ReadOnlySpan<float> span, long expected, string name, string shape)
        {
            if (span.Length != expected)
                throw new ArgumentException(
                    $"{name} has {span.Length} floats; expected {shape} = {expected} for T = {tokens}, H = {heads}, K = {keyDim}, V = {valueDim}.",
                    name);
        }
    }

    /// <summary>
    /// One call's arguments as raw pointers (pinned by the caller for the call's duration), so that per-head work can run
    /// on pool threads: spans cannot be captured by the lambdas Parallel.For needs.
    /// </summary>
    private readonly struct Problem(float* q, float* k, float* v, float* g, float* beta, float* state, float* o,
        int tokens, int heads, int keyDim, int valueDim)
    {
        private readonly float* _q = q, _k = k, _v = v, _g = g, _beta = beta, _state = state, _o = o;
        public readonly int Tokens = tokens, Heads = heads, KeyDim = keyDim, ValueDim = valueDim;

        public bool WorthParallel => Heads > 1 && Environment.ProcessorCount > 1 && (long)Tokens * Heads * KeyDim * ValueDim >= ParallelThreshold;

        public ReadOnlySpan<float> Query(int t, int h) => new(_q + Row(t, h) * KeyDim, KeyDim);
        public ReadOnlySpan<float> Key(int t, int h) => new(_k + Row(t, h) * KeyDim, KeyDim);
        public ReadOnlySpan<float> Gate(int t, int h) => new(_g + Row(t, h) * KeyDim, KeyDim);
        public ReadOnlySpan<float> Value(int t, int h) => new(_v + Row(t, h) * ValueDim, ValueDim);
        public Span<float> Output(int t, int h) => new(_o + Row(t, h) * ValueDim, ValueDim);
        /// <summary>Outputs of tokens [t, t + n) of head h: rows of V at a stride of H·V.</summary>
        public Span<float> OutputRows(int t, int h, int n) => new(_o + Row(t, h) * ValueDim, ((n - 1) * Heads + 1) * ValueDim);
        public float Beta(int t, int h) => _beta[Row(t, h)];
        public Span<float> State(int h) => new(_state + (long)h * KeyDim * ValueDim, KeyDim * ValueDim);

        private long Row(int t, int h) => (long)t * Heads + h;
    }

    /// <summary>Offsets of one head's chunk scratch inside a single rented buffer.</summary>
    private readonly struct ChunkScratch(int chunk, int keyDim, int valueDim)
    {
        public readonly int Chunk = chunk;
        private readonly int _ck = chunk * keyDim, _cv = chunk * valueDim, _cc = chunk * chunk, _sk = SubChunk * keyDim, _k = keyDim;

        public int Length => 3 * _ck + _cv + 2 * _cc + 3 * _sk + _k;

        public Span<float> Queries(Span<float> all) => all.Slice(0, _ck);
        public Span<float> Keys(Span<float> all) => all.Slice(_ck, _ck);
        public Span<float> W(Span<float> all) => all.Slice(2 * _ck, _ck);
        public Span<float> U(Span<float> all) => all.Slice(3 * _ck, _cv);
        public Span<float> KK(Span<float> all) => all.Slice(3 * _ck + _cv, _cc);
        public Span<float> QK(Span<float> all) => all.Slice(3 * _ck + _cv + _cc, _cc);
        public Span<float> QueryRef(Span<float> all) => all.Slice(3 * _ck + _cv + 2 * _cc, _sk);
        public Span<float> KeyRef(Span<float> all) => all.Slice(3 * _ck + _cv + 2 * _cc + _sk, _sk);
        public Span<float> ColumnRef(Span<float> all) => all.Slice(3 * _ck + _cv + 2 * _cc + 2 * _sk, _sk);
        public Span<float> Temp(Span<float> all) => all.Slice(3 * _ck + _cv + 2 * _cc + 3 * _sk, _k);
    }
}
