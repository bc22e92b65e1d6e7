// kda.cu — Kimi Delta Attention (KDA) kernels: the fused decode step and the chunked prefill (spec §2.2, §2.4, §2.5).
//
// MATH (per sequence, per head h; S is the fp32 recurrent state [K, V], row = key channel d, column = value channel j)
//   per token:  S ← Diag(exp g)·S;  r = v − Sᵀk̂;  S ← S + k̂ ⊗ (β r);  o = Sᵀq̂   (o uses the updated state)
//   q̂ = q / sqrt(Σq² + 1e-6) · K^-½,  k̂ = k / sqrt(Σk² + 1e-6),  g ≤ 0 the log-decay per key channel,
//   β = sigmoid(b).  Decode additionally fuses, per channel c, the causal depthwise conv (4 taps, tap 3 = current
//   token) + SiLU of q, k, v (result rounded to the input dtype, as FLA stores it), the gate
//   g = −exp(A_log[h])·softplus(f + dt_bias) (softplus linear above 20), and the gated RMSNorm of the output
//   y = o·rsqrt(mean_j o² + eps)·w_norm·sigmoid(z).
//
// CHUNKED PREFILL (C = 64 tokens per chunk; G = chunk-local cumulative g, kept in log2 units; every exponent used is
// ≤ 0, or within kMildRange where intra has tested the chunk for it, so nothing overflows with the unbounded softplus
// gate):
//   kimi_kda_chunk_intra_*   one block per (chunk, head), independent chunks, accumulating in fp32 (products between
//                            16-row sub-chunks on tensor cores, inside them too for bf16 inputs in mild chunks
//                            (pair_products): 3xTF32 for fp32 inputs, which keeps fp32's accuracy;
//                            three bf16 products of hi/lo parts for bf16 inputs, ~2^-16 relative); q̂, k̂ are normalised
//                            here from the raw (post-conv) q, k, exactly as the decode step does:
//     L[r,s]   = β_r Σ_d k̂_r[d] k̂_s[d] 2^(G_r[d]−G_s[d])   (s < r)      A[r,s] = Σ_d q̂_r[d] k̂_s[d] 2^(G_r[d]−G_s[d])  (s ≤ r)
//     (I + L)·W = β ⊙ (k̂ ⊙ 2^G)   and   (I + L)·U = β ⊙ v            (fp32 inputs: forward substitution, a column a
//                                                                    thread; bf16: T' = (I + L)⁻¹·Diag(β), its 16-row
//                                                                    diagonal blocks by substitution, the rest by block
//                                                                    products (solve_t), then
//                                                                    W = T'·(k̂ ⊙ 2^G) and U = T'·v on tensor cores, in
//                                                                    bf16 hi/lo parts)
//     QG = q̂ ⊙ 2^G,  KG = k̂ ⊙ 2^(G_last − G),  γ = 2^G_last
//   kimi_kda_prepare_*       per token: conv + SiLU of q, k, v (carried window for the first 3 tokens), gate, β;
//                            _f32_bf16: from fp32 projections, q, k, v stored as bf16 (the model's prefill);
//   kimi_kda_conv_window_update_*   then each sequence's window ← its last 3 pre-conv inputs;
//   kimi_kda_chunk_prefill_* one block per (32-column slice of V, head, sequence), walks the sequence's chunks
//                            (products on tensor cores accumulated in fp32: 3xTF32 for fp32 inputs, three bf16
//                            products of hi/lo parts for bf16 inputs, whose operand blocks intra splits and the copy
//                            engine brings, as wgmma in the sm_90a image and mma.sync in the compute_90 one; some
//                            warps carry the state, the others form the output from it):
//     Vn = U − W·S;   O = QG·S + A·Vn;   S ← Diag(γ)·S + KGᵀ·Vn
//   The state's columns never mix (every product above is column-separable in V), which is why a V slice is a unit of
//   work: B·H·V/32 blocks keep the card busy even at B = 1 without a two-pass split of the sequence.
//   kimi_kda_chunk_prefill_wide_bf16 (sm_90a only) the same scan for bf16 inputs with 128 columns a block, computed
//                            transposed so that the state and Vn stay in registers (wide_scan): slower a chunk, but
//                            a quarter of the blocks, for batches whose 32-column blocks take several waves.
//
// LAYOUTS (row-major; T = total packed tokens, N = sequences, H heads, K key dim, V value dim, NC = total chunks)
//   decode:  pq, pk, pf [N, H·K], pv, pz [N, H·V], pb [N, H]   projection outputs of the new token (pre-conv)
//            wq, wk [H·K, 4], wv [H·V, 4]                       conv taps (checkpoint [C, 1, 4]), tap 3 = current token
//            a_log [H] fp32, dt_bias [H·K] fp32, w_norm [V]     gate parameters, o_norm weight
//            conv_q, conv_k [N, 3, H·K], conv_v [N, 3, H·V]     last 3 pre-conv inputs, oldest first (read and updated)
//            state [N, H, K, V] fp32 (read and updated),  y [N, H·V]
//   decode_table: as decode, but the windows and state of sequence n are wherever table.conv_q[n], conv_k[n] [3, H·K],
//            conv_v[n] [3, H·V] and state[n] [H, K, V] point (one allocation per session; N ≤ 32 a launch)
//   prepare: pq, pk, pf [T, H·K], pv [T, H·V], pb [T, H] projection outputs (pre-conv), conv taps / a_log / dt_bias
//            as for decode, conv_q, conv_k [N, 3, H·K], conv_v [N, 3, H·V] windows (read by prepare, rewritten by
//            conv_window_update) → q, k [T, H, K], v [T, H, V] (as stored), g [T, H, K] fp32, beta [T, H] fp32.
//   prefill: q, k [T, H, K] raw (after conv + SiLU; normalised in the kernel), v [T, H, V], g [T, H, K] fp32 log-decay,
//            beta [T, H] fp32 (after the sigmoid), cu_seqlens [N+1] token offsets, chunk_offsets [N+1] where
//            chunk_offsets[n] = Σ_{m<n} ceil(len_m / 64) (the host derives it from the lengths),
//            scratch (written by intra, read by prefill): W, QG, KG [NC, H, 64, K] fp32 (bf16 inputs: [NC, H, 2, 64, KP]
//            bf16 hi/lo planes, swizzled: OperandStore; room for 64·KP floats a block either way), U [NC, H, V/32, 64, 32]
//            fp32 (by scan block), A [NC, H, 64, 64] fp32 (bf16: [NC, H, 2, 64, 64]), gamma [NC, H, K] fp32;
//            state [N, H, K, V] fp32 (initial in, final out), o [T, H, V].
//
// LAUNCH GEOMETRY
//   decode_step:   grid G, 1 ≤ G ≤ H·N (one block an SM: KdaKernels.DecodeBlocks), block 512, dynamic smem
//                  kDecodeSmemBytes (> 48 KiB: raise the limit); block b steps the H·N items b, b + G, ... (head h of
//                  sequence n is item n·H + h), the next items' states and the next item's inputs loaded while one is computed.
//                  Capturable in a CUDA graph (no host sync, no atomics, no scratch).
//                  May be launched with programmatic dependent launch: it copies its first one or two items' states and reads
//                  the conv windows, parameters and the new token's q, k, v, beta projections of its first item before
//                  griddepcontrol.wait, the gate inputs f and z after it.
//   decode_step_table: the same grid (N ≤ kDecodeTableSequences), block and shared memory; also capturable and
//                  launchable with programmatic dependent launch (its table is a kernel parameter, read at any time).
//   prepare:       grid (ceil(max(H·K, H·V) / 256), ceil(T / 16)), block 256;  conv_window_update: grid (ceil(max(H·K, H·V) / 256), N), block 256.
//   chunk_intra:   grid NC·H (block c·H + h: chunk c, head h), block 256, dynamic smem chunk_intra_smem_bytes(K, V) (> 48 KiB: raise the limit).
//   chunk_prefill: grid (V/32, H, N), block 512, dynamic smem chunk_prefill_smem_bytes<Tin>(K) (> 48 KiB).
//   chunk_prefill_wide: grid (ceil(V/128), H, N), block 256, dynamic smem wide_scan_smem_bytes(chunk_prefill_kpad(K)).
//
// PRECONDITIONS (the caller checks them; kernels do not)
//   decode: K ≤ 128; V ∈ {16, 32, 64, 128}. prefill: K ≤ 128, K % 4 == 0, V % 32 == 0, K + V ≤ 256.
//   decode with programmatic dependent launch: the kernel launched just before this one (the predecessor, which may
//   write f and z) lets it launch only after its own griddepcontrol.wait, so every kernel before the predecessor has
//   finished when this one starts: the one that wrote pq, pk, pv, pb (the projections) and the previous step of this
//   layer, which last wrote its state and windows. In the model the predecessor is the f_b/g_b GEMV (gemv.cu triggers
//   after its wait) or a launch without the programmatic attribute.
//   All pointers 16-byte aligned; state rows start 16-byte aligned (V % 4 == 0). Inputs are finite. Buffers do not
//   alias except where marked "read and updated" (a table names no window or state twice). Tokens past cu_seqlens[N] are never read (they may hold NaN).
//
// BUILD (kernels/build.sh): Hopper and newer only (compute_90 PTX, the sm_90a cubin below): the scan takes up to
// 218 KiB of shared memory a block (K = 128) and the decode step 133 KiB, more than Ampere (163 KiB) or Ada (99 KiB)
// allow, and the bf16 scan uses the copy engine and mbarriers (sm_90); the C# side refuses older cards with a message
// saying so (KernelCatalog.TargetsOf).
// KIMI_PTX_TARGETS: sm90
// KIMI_REQUIRES_SM90A: build.sh builds this file's sm_90a cubin too, whose bf16 scan runs on wgmma
// (chunk_prefill_wgmma); the compute_90 PTX keeps the mma.sync scan, which takes the same operands and launch. The
// whole module loads from the cubin on Hopper.
#ifdef KDA_EMULATE
#include "tests/cuda_emu.h"
#else
#include <cuda_bf16.h>
#endif
#include <stdint.h>
#include <type_traits>
#include "../fragments.cuh"
#include "../hopper.cuh"

// The bf16 scan runs on wgmma where the build has it: the sm_90a image, and the emulator unless it is told to check
// the mma.sync scan of the compute_90 image (KDA_SCAN_MMA_SYNC).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || (defined(KDA_EMULATE) && !defined(KDA_SCAN_MMA_SYNC))
#define KDA_SCAN_WGMMA 1
#endif

namespace kda {

constexpr int kChunk = 64;               // tokens per chunk (FLA's C)
constexpr float kL2Eps = 1e-6f;          // inside the sqrt of the q/k L2 norm
constexpr float kLog2e = 1.4426950408889634f;
constexpr int kDecodeThreads = 512;     // the decode step's roles below assume 16 warps: 4 channel roles of 128
constexpr int kDecodeGroups = 4;         // groups of 4 warps in the decode step, each owning V/4 state columns
// State buffers of the decode step (items copied ahead + 1), each item's copy requested once the item two before it
// has passed its first barrier (decode_steps). Against 2 buffers with the next item's copy requested at the top of
// an item (H200, run 109): B = 64 −5.7 %, B = 16 −6.2 %, B = 1 the same; 3 buffers requested at the top gained
// −2.3 % at B = 64 and lost 3 % at B = 16. 197 KB of shared memory a block.
constexpr int kDecodeStages = 3;
// Up to this many items a block, the copies run one item ahead in two of the buffers instead: with ~4 items a block
// (B = 16 at H = 32 on 132 SMs) two buffers were 4-5 % faster, with 5.8 (B = 24) 0.7 %, with ~8 (B = 32) 1.6-2.2 %
// slower and with 12-16 3.7 % (H200, runs 116, 117).
constexpr int kDecodeOneAheadItems = 6;
constexpr int kIntraThreads = 256;
constexpr int kIntraMmaQgUnits = 3;     // QG and KG units (8 rows × 32 channels) each of intra's tensor-core warps writes
// Mild chunks (bf16 inputs; pair_products): in every channel each 16-row block decays by at most 2^kMildRange (G at
// its first row minus G at its last, log2 units), and every row's Σq², Σk² is 0 or within [kMildNormSqMin,
// kMildNormSqMax]. Then a diagonal block's pairs factorize through its first row with factors in [2^-80, 2^80], every
// sum stays ≤ 2^120 (fp32 ends at 2^128) and every entry of a row that matters (≥ 2^-20 of its norm) stays a normal
// number after scaling, in fp32 and in its bf16 parts. Other chunks (a steeper gate; huge, tiny or NaN rows) take the
// exact element-wise path. With Mamba's dt initialisation ([0.001, 0.1]) and A ∈ [1, 16] every chunk is mild; with
// dt_bias spread to +1 (the harness's random_gates) about a third are (NOTES, intra M1).
constexpr float kMildRange = 80.f;
constexpr float kMildNormSqMin = 5.9604645e-8f;     // 2^-24
constexpr float kMildNormSqMax = 1099511627776.f;   // 2^40
// Whole-mild chunks (bf16 inputs), a subset of the mild ones: in every channel the whole chunk decays by at most
// 2^kWholeMildRange (−G_last ≤ 96). Then every pair factorizes through the chunk's start, 2^(G_r − G_s) = 2^G_r ·
// 2^−G_s, with 2^G_r ≥ 2^-96 and 2^−G_s ≤ 2^96: q̂ ⊙ 2^G (QG itself), k̂ ⊙ 2^G (W's K̃) and k̂ ⊙ 2^−G are formed once an
// element and every product of the chunk reads them as they are. Entries of q̂, k̂ that matter (≥ 2^-20 of their
// unit-norm row) stay normal numbers, their bf16 lo parts too (≥ 2^-124); the pairs above the diagonal, never read,
// are ≤ 2^80 (mild). With the benchmark's gates every chunk is whole-mild (NOTES, intra W1).
constexpr float kWholeMildRange = 96.f;
// Intra block b requests block b + kIntraPrefetchAhead's inputs into L2 (prefetch_intra_rows). Swept on the H200 (runs
// 80, 81; K = V = 128, two blocks an SM): 48-80 best for bf16 (intra −4 to −5 % at T = 65,536), 48-64 for fp32; 16 and 32
// slower than no prefetch for bf16, 128 and 160 gain little or lose.
constexpr int kIntraPrefetchAhead = 64;
constexpr int kPrefillThreads = 512;     // the scan's warp roles below assume 16 warps and 32 columns
constexpr int kPrefillCols = 32;         // state columns per prefill block
constexpr int kPrepareThreads = 256;
constexpr int kPrepareTokens = 16;      // tokens a prepare block walks (KdaKernels.PrepareTokens)
constexpr int kDecodeTableSequences = 32; // sequences one table launch takes (KdaKernels.DecodeTableSequences)

// The table decode step's per-sequence addresses, passed by value as a kernel parameter (1 KiB of the 4 KiB parameter
// space): entry n belongs to sequence n = blockIdx.z; entries past the grid are not read.
template <typename Tin> struct DecodeTable {
    Tin* conv_q[kDecodeTableSequences];   // [3, H·K] each
    Tin* conv_k[kDecodeTableSequences];   // [3, H·K]
    Tin* conv_v[kDecodeTableSequences];   // [3, H·V]
    float* state[kDecodeTableSequences];  // [H, K, V] fp32
};

// Dynamic shared memory, in floats: decode (state buffers [kDecodeStages] of [K][V], 128·128 floats apart; q, k, α, v,
// k_scale·β·r, o [128] each; warp partials [16][32]; Σq², Σk² partials [8]; the groups' Σo² [4]; the buffers'
// mbarriers [kDecodeStages], 8 bytes each); intra (k, G [K][kLdT] each, q
// [K][kLdT] and G_last [K] later reused for L and A [64][64] each, then for bf16 inputs T' and v's rows:
// chunk_intra_q_floats; β [64], row norms [128]); the scan's: ScanOperands, by input dtype (chunk_prefill_smem_bytes).
constexpr int kDecodeSmemFloats = kDecodeStages * 128 * 128 + 6 * 128 + 16 * 32 + 8 + 4 + 2 * kDecodeStages;
constexpr size_t kDecodeSmemBytes = kDecodeSmemFloats * sizeof(float);
__host__ __device__ constexpr int cmax(int a, int b) { return a > b ? a : b; }
// Intra keeps q, k and G a channel a row ([K][kLdT], row r of channel c at transposed_at(c, r)), so that what its loops
// read together lies together: a pair tile's 4 rows of a channel in one 16-byte load, a tensor-core fragment's two rows
// (2g, 2g + 1) of a channel in one 8-byte load, a channel's running sum in 16-byte pieces, and the load phase stores two
// rows of a channel at once. The stride ≡ 4 mod 32 words and the rows XORed by 4·(⌊c/8⌋ mod 4) (whole 4-row groups
// move, so the 16- and 8-byte pieces stay aligned) keep all of these free of bank conflicts (see each) with the loads
// and the QG, KG stores taking 4 rows × 64 bytes of a bf16 tensor an instruction (8 rows × 32 bytes, the unswizzled
// layout's pattern, queued on L1: +3 % for intra, run 147).
constexpr int kLdT = kChunk + 4;
__device__ __forceinline__ int transposed_swizzle(int c) { return 4 * ((c >> 3) & 3); }
__device__ __forceinline__ int transposed_at(int c, int r) { return c * kLdT + (r ^ transposed_swizzle(c)); }
// q [K][kLdT] and G_last [K], later L and A [64][64] each; with bf16 inputs then T' (over L) and v's rows [64][V+8] bf16
// (from A's place), and after both solve_t's scratch [32][33] (from chunk_intra_t_scratch floats on).
// L's and A's row stride in shared memory: ≡ 8 mod 32 words, so that the pair products' 8-byte stores (rows g, g + 8 of
// a fragment, columns 2t, 2t + 1) hit 32 banks; at 64 each fragment's 8 rows met in one (8-way conflicts).
constexpr int kLdL = kChunk + 8;
__host__ __device__ constexpr int chunk_intra_t_scratch(int V) { return kChunk * kLdL + cmax(kChunk * kLdL, kChunk * (V + 8) / 2); }
__host__ __device__ constexpr int chunk_intra_q_floats(int K, int V) {
    return cmax(K * kLdT + K, chunk_intra_t_scratch(V) + 32 * 33);   // + K: G_last (sglast) past q
}
__host__ __device__ constexpr size_t chunk_intra_smem_bytes(int K, int V) {
    return sizeof(float) * (2 * K * kLdT + chunk_intra_q_floats(K, V) + 3 * kChunk);
}
// The scan's row stride for its [rows][32] tiles (state slice, U, Vn): ≡ 8 mod 32 in fp32 words.
constexpr int kScanLd = kPrefillCols + 8;
// The scan pads K to 64 or 128: whole k-steps and 16 state rows per warp per m-tile.
__host__ __device__ constexpr int chunk_prefill_kpad(int K) { return K <= 64 ? 64 : 128; }
// Element (r, c) of a bf16 [rows][n] operand plane (n a multiple of 64) in 128-byte-swizzled atoms: columns in atoms of
// 64 ([n/64][rows][64], 128 bytes a row), the 16-byte piece p of row r stored at p ^ (r mod 8). This is wgmma's K-major
// SW128 layout (atoms 1,024-byte aligned), and the 8 rows of an ldmatrix matrix fall in 8 different bank groups.
__host__ __device__ constexpr int atom_swizzled(int r, int c, int rows) {
    return (c >> 6) * rows * 64 + r * 64 + ((((c >> 3) & 7) ^ (r & 7)) << 3) + (c & 7);
}

__device__ __forceinline__ float ld(float x) { return x; }
// Four consecutive values as loaded (p 16-byte aligned for fp32, 8-byte for bf16), widened to fp32 by widen() when
// used: bf16 quads then hold 2 registers in flight, not 4.
__device__ __forceinline__ float4 ld4_raw(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ uint2 ld4_raw(const __nv_bfloat16* p) { return *reinterpret_cast<const uint2*>(p); }
__device__ __forceinline__ float4 widen(float4 x) { return x; }
__device__ __forceinline__ float4 widen(uint2 u) {   // bf16 → fp32 is a 16-bit shift
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
        __uint_as_float(u.y & 0xffff0000u));
}
__device__ __forceinline__ float ld(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void st(float* p, float x) { *p = x; }
__device__ __forceinline__ void st(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }
// The value as stored in the input dtype (FLA keeps conv outputs in the model dtype before the KDA core).
__device__ __forceinline__ float stored(float x, const float*) { return x; }
__device__ __forceinline__ float stored(float x, const __nv_bfloat16*) { return __bfloat162float(__float2bfloat16_rn(x)); }

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float siluf_(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float softplusf_(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// 2^x as the one MUFU.EX2 instruction (ex2.approx.ftz: about 2 ulp, subnormal results flushed to 0). Every exponent
// the prefill takes is ≤ 0 (mild chunks' within ±kMildRange), so the flush only drops values below 2^-126 of a term
// of magnitude ≤ 1.
__device__ __forceinline__ float ex2(float x) {
#ifdef KDA_EMULATE
    const float y = std::exp2(x);
    return y < 1.17549435e-38f ? 0.f : y;
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

__device__ __forceinline__ float* smem() {
#ifdef KDA_EMULATE
    return reinterpret_cast<float*>(emu_dynamic_smem);
#else
    extern __shared__ float4 kda_smem_[];
    return reinterpret_cast<float*>(kda_smem_);
#endif
}

#ifdef KDA_EMULATE
__device__ __forceinline__ void grid_dependency_wait() {}
__device__ __forceinline__ void grid_launch_dependents() {}
#else
// Programmatic dependent launch: wait until the preceding kernel has finished and its writes are visible (a no-op when
// launched without the attribute), then let the next kernel start its own prologue.
__device__ __forceinline__ void grid_dependency_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void grid_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
#endif

// cp.async (16 bytes, global → shared, bypassing registers and L1): many copies in flight per thread, completion
// awaited per commit group.
__device__ __forceinline__ void cp_async16(float* dst_shared, const float* src) {
#ifdef KDA_EMULATE
    emu_cp_async16(dst_shared, src);
#else
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst_shared);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
#endif
}
// The same where the 16 bytes may lie past the data: !in zero-fills them and reads nothing (src-size 0).
__device__ __forceinline__ void cp_async16(void* dst_shared, const void* src, bool in) {
#ifdef KDA_EMULATE
    static const unsigned char zeros[16] = {};
    emu_cp_async16(dst_shared, in ? src : zeros);
#else
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst_shared);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(in ? 16 : 0) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef KDA_EMULATE
    emu_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void cp_async_wait() {   // until at most N groups are pending
#ifdef KDA_EMULATE
    emu_cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

// One token of the causal depthwise conv (taps w[0..3], w[3] on the current input x3) + SiLU, as stored.
template <typename Tin>
__device__ __forceinline__ float conv_silu(const Tin* w, float x0, float x1, float x2, float x3) {
    float acc = ld(w[0]) * x0 + ld(w[1]) * x1 + ld(w[2]) * x2 + ld(w[3]) * x3;
    return stored(siluf_(acc), w);
}

// ---------------------------------------------------------------------------------------------------------------------
// Where one sequence's decode state lives: its conv windows cq, ck [3, H·K], cv [3, H·V] and state [H, K, V].
template <typename Tin> struct DecodeSequence {
    Tin* cq;
    Tin* ck;
    Tin* cv;
    float* state;
};

// A warp's four column sums over its rows (lanes with the same column group cg = lane % ncg hold the same columns),
// reduced across its row groups and written as dst[0 .. 4·ncg).
__device__ __forceinline__ void store_column_partials(float4 acc, int ncg, int lane, float* dst) {
    for (int off = ncg; off < 32; off <<= 1) {
        acc.x += __shfl_xor_sync(0xffffffffu, acc.x, off);
        acc.y += __shfl_xor_sync(0xffffffffu, acc.y, off);
        acc.z += __shfl_xor_sync(0xffffffffu, acc.z, off);
        acc.w += __shfl_xor_sync(0xffffffffu, acc.w, off);
    }
    if (lane < ncg) { dst[4 * lane + 0] = acc.x; dst[4 * lane + 1] = acc.y; dst[4 * lane + 2] = acc.z; dst[4 * lane + 3] = acc.w; }
}

// Fused decode steps of N sequences: H·N items (head h of sequence n is item n·H + h). Block b steps items b, b + G,
// b + 2G, ... (G = gridDim.x ≤ H·N), so a grid of one block an SM streams any batch without a partial last wave. The
// block's 512 threads have two sets of jobs:
// - per channel, one role a thread (warps 0-3 q, 4-7 k, 8-11 the gate, 12-15 v): the conv + SiLU of its channel, the
//   gate, the output gate; the role's raw inputs for the next item are loaded into registers while this one is
//   computed, so only the first item waits on them;
// - per state column: group g (warps 4g..4g+3) owns columns [g·V/4, (g+1)·V/4) of the head. The head's state is
//   copied to shared memory one or two items ahead (kDecodeOneAheadItems) by the copy engine, so at large N the step is a
//   stream of the state.
// The RMSNorm over all V columns sums the 4 groups' Σo² in shared memory: one block a head, no cluster.
// q and k are normalised as scalars: r = v − k_scale·Σ_d α_d S_dj k_d, S' = Diag(α)S + k ⊗ (k_scale·β·r),
// o = q_scale·Σ_d S'_dj q_d, with k_scale = 1/‖k‖ and q_scale = 1/(‖q‖·√K).
// The fields hold what was loaded, unconverted: the next item's loads are issued a whole item before their use, and a
// conversion (bf16 → fp32 is an integer shift) placed beside the load would make the thread wait for it there (the
// ncu profile of B = 64: 30 % of the stall samples on those shifts).
template <typename Tin> struct DecodeRoleInputs {   // one thread's raw inputs for an item (see decode_steps)
    Tin x0{}, x1{}, x2{}, x3{};                     // conv window (oldest first) and the new token (q, k, v roles)
    Tin w0{}, w1{}, w2{}, w3{};                     // conv taps (q, k, v roles)
    Tin e0{};                                       // gate role: f; v role: z
    Tin norm_weight{};                              // v role: o_norm weight
    float dt_bias = 0.f, a_log = 0.f;               // gate role
    Tin beta{};                                     // β's pre-sigmoid input (all)
};

template <typename Tin, typename Sequences>
__device__ __forceinline__ void decode_steps(int H, int K, int V, int N, float rms_eps, const Tin* __restrict__ pq,
    const Tin* __restrict__ pk, const Tin* __restrict__ pv, const Tin* __restrict__ pf, const Tin* __restrict__ pb,
    const Tin* __restrict__ pz, const Tin* __restrict__ wq, const Tin* __restrict__ wk, const Tin* __restrict__ wv,
    const float* __restrict__ a_log, const float* __restrict__ dt_bias, const Tin* __restrict__ w_norm,
    Sequences sequence, Tin* __restrict__ y) {
    const int G = gridDim.x, items = H * N;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int role = tid >> 7, c = tid & 127;         // role 0 q, 1 k, 2 gate, 3 v; c its channel or column
    const int group = role, gw = warp & 3;            // state-column group, and the warp's index in it
    const int VS = V / kDecodeGroups, ncg = VS / 4, nrg = 128 / ncg;
    const int cg = c % ncg, rg = c / ncg, j0 = group * VS;
    const int HK = H * K, HV = H * V;
    const bool active = role == 3 ? c < V : c < K;   // the thread has a channel of its role

    float* sm = smem();
    float* sst = sm;                  // [stages][K][V] (buffers 128·128 apart) this item's state and the next ones'
    float* sq = sm + kDecodeStages * 128 * 128;   // [128] conv(q) (raw: q_scale applied to o)
    float* sk = sq + 128;             // [128] conv(k) (raw)
    float* sa = sk + 128;             // [128] α = exp(g)
    float* sv = sa + 128;             // [128] conv(v)
    float* sx = sv + 128;             // [128] k_scale·β·r
    float* so = sx + 128;             // [128] o before the norm
    float* sred = so + 128;           // [16 warps][32] column partial sums
    float* snorm = sred + 512;        // [8] Σq² (warps 0-3) and Σk² (warps 4-7) partials
    float* sgsq = snorm + 8;          // [4] Σo² over each group's columns
    uint64_t* sbar = reinterpret_cast<uint64_t*>(sgsq + 4);   // [stages] a buffer's copy has landed (offset 8-byte aligned)

    // An item's place, sequence n and head h. A block's items are G apart and G = gn·H + gh, so the place moves on
    // without an integer division (~20 instructions each with a runtime divisor, three an item and thread before).
    struct ItemAt { int item, n, h; };
    const int gn = G / H, gh = G % H;
    auto after = [&](ItemAt p) {
        p.item += G, p.n += gn, p.h += gh;
        if (p.h >= H) p.h -= H, ++p.n;
        return p;
    };

    // A thread's state rows in a buffer are d = rg + i·nrg, i < 8, at columns j0 + 4·cg .., row_step floats apart.
    const int row_step = nrg * V;
    // The item's K·V state (contiguous in [N, H, K, V]) as one bulk copy that thread 0 issues, its bytes counted on
    // sbar[buf], once the buffer's last store (the item `stages` before) has read it. As each thread's 16-byte
    // cp.async of its rows (4,096 a block and item) the step was 2.5 % slower at B = 64 (run 114) and took 115
    // registers against 91: the copies and their addresses went through every thread.
    auto copy_state = [&](ItemAt p, int buf) {
        if (tid == 0) {
            bulk_wait_read<0>();
            mbar_arrive_expect_tx(sbar + buf, K * V * 4);
            bulk_load(sst + buf * 128 * 128, sequence(p.n).state + (size_t)p.h * K * V, K * V * 4, sbar + buf);
        }
    };
    // The role's raw inputs of an item: the conv window and taps before the programmatic wait is allowed (earlier
    // launches wrote them), the new token's f and z (the predecessor's outputs) only with `gates`.
    auto load_inputs = [&](ItemAt p, DecodeRoleInputs<Tin>& in, bool windows, bool gates) {
        const int h = p.h, n = p.n;
        const DecodeSequence<Tin> seq = sequence(n);
        if (windows) {
            in.beta = pb[(size_t)n * H + h];
            if (active && role != 2) {
                const int C = role == 3 ? HV : HK, ch = (role == 3 ? V : K) * h + c;
                const Tin* win = role == 0 ? seq.cq : role == 1 ? seq.ck : seq.cv;
                const Tin* tok = role == 0 ? pq : role == 1 ? pk : pv;
                const Tin* w = (role == 0 ? wq : role == 1 ? wk : wv) + 4 * ch;
                in.x0 = win[ch]; in.x1 = win[C + ch]; in.x2 = win[2 * C + ch];
                in.x3 = tok[(size_t)n * C + ch];
                in.w0 = w[0]; in.w1 = w[1]; in.w2 = w[2]; in.w3 = w[3];
            }
            if (active && role == 2) { in.dt_bias = dt_bias[h * K + c]; in.a_log = a_log[h]; }
            if (active && role == 3) in.norm_weight = w_norm[c];
        }
        if (gates && active) {
            if (role == 2) in.e0 = pf[(size_t)n * HK + h * K + c];
            if (role == 3) in.e0 = pz[(size_t)n * HV + h * V + c];
        }
    };

    ItemAt at{(int)blockIdx.x, (int)blockIdx.x / H, (int)blockIdx.x % H}, ahead = at;
    DecodeRoleInputs<Tin> cur;
    if (at.item < items) load_inputs(at, cur, true, false);
    const int stages = items > kDecodeOneAheadItems * G ? kDecodeStages : 2;   // buffers in use: items copied ahead + 1
    if (tid == 0) {
        for (int s = 0; s < stages; ++s) mbar_init(sbar + s, 1);
        fence_mbarrier_init();
    }
    for (int s = 0; s < stages - 1; ++s, ahead = after(ahead))   // the first items' states
        if (ahead.item < items) copy_state(ahead, s);
    __syncthreads();   // no thread polls an mbarrier before it is initialised
    grid_dependency_wait();
    grid_launch_dependents();
    if (at.item < items) load_inputs(at, cur, false, true);

    // b: this item's buffer; parity: the phase its copy there completes (0 for a buffer's first copy, then 1, 0, ...).
    for (int b = 0, parity = 0; at.item < items; at = after(at)) {
        const int h = at.h, n = at.n;
        // Requested first: the next item's inputs.
        DecodeRoleInputs<Tin> next;
        const ItemAt following = after(at);
        if (following.item < items) load_inputs(following, next, true, true);

        // Per channel: conv + SiLU (as stored), the gate, and the q, k sums of squares.
        float u = 0.f;
        if (active) {
            if (role == 2) u = expf(-expf(cur.a_log) * softplusf_(ld(cur.e0) + cur.dt_bias));
            else u = stored(siluf_(ld(cur.w0) * ld(cur.x0) + ld(cur.w1) * ld(cur.x1) + ld(cur.w2) * ld(cur.x2) + ld(cur.w3) * ld(cur.x3)), pq);
        }
        (role == 0 ? sq : role == 1 ? sk : role == 2 ? sa : sv)[c] = u;
        if (role < 2) {
            float uu = u * u;
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) uu += __shfl_xor_sync(0xffffffffu, uu, off);
            if (lane == 0) snorm[warp] = uu;
        }
        mbar_wait(sbar + b, parity);   // this item's state
        __syncthreads();
        // Requested after the barrier: the state stages − 1 items on, into the buffer the item before this one
        // read (all threads have passed that item's reads). Requested at the top of the item instead, before its
        // inputs and the barrier, the same copies (then cp.async) made B = 16 3 % slower than 2 buffers and B = 64
        // only 2.3 % faster (runs 107, 109).
        if (ahead.item < items) copy_state(ahead, b == 0 ? stages - 1 : b - 1);
        ahead = after(ahead);
        const float q_scale = (1.0f / sqrtf(snorm[0] + snorm[1] + snorm[2] + snorm[3] + kL2Eps)) * (1.0f / sqrtf((float)K));
        const float k_scale = 1.0f / sqrtf(snorm[4] + snorm[5] + snorm[6] + snorm[7] + kL2Eps);
        float* st_rows = sst + b * 128 * 128 + rg * V + j0 + 4 * cg;   // this thread's row rg

        // r = v − k_scale·(Diag(α)S)ᵀ k over the group's columns.
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int d = rg + i * nrg;
            if (d < K) {
                const float4 s4 = *reinterpret_cast<const float4*>(st_rows + i * row_step);
                const float a = sa[d], kd = sk[d];
                acc.x += (s4.x * a) * kd; acc.y += (s4.y * a) * kd; acc.z += (s4.z * a) * kd; acc.w += (s4.w * a) * kd;
            }
        }
        store_column_partials(acc, ncg, lane, sred + warp * 32);
        __syncthreads();
        if (c < VS) {
            const float* p = sred + group * 4 * 32;
            const float r = sv[j0 + c] - k_scale * (p[c] + p[32 + c] + p[64 + c] + p[96 + c]);
            sx[j0 + c] = k_scale * (sigmoidf_(ld(cur.beta)) * r);
        }
        __syncthreads();

        // S = Diag(α)S + k ⊗ sx, written back into the buffer, from where one bulk store takes it to global while the
        // block goes on; o = q_scale·Sᵀq. The block's last item writes straight to global instead: nothing follows
        // that the store could overlap, and the block would wait at its end for the store's read (B = 1 was 6 %
        // slower with every item stored in bulk, run 115).
        const bool store_in_bulk = following.item < items;
        const float4 br = reinterpret_cast<const float4*>(sx + j0)[cg];
        acc = make_float4(0.f, 0.f, 0.f, 0.f);
        // Called once for each destination, so each call's stores keep their state space (st.shared, st.global);
        // through one pointer chosen between them they were generic stores (table B = 4 1.2 % slower, run 118).
        auto update_rows = [&](float* new_rows) {   // this thread's row rg of the buffer or of the global state
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int d = rg + i * nrg;
                if (d < K) {
                    float4 s4 = *reinterpret_cast<const float4*>(st_rows + i * row_step);
                    const float a = sa[d], kd = sk[d], qd = sq[d];
                    s4.x = s4.x * a + kd * br.x; s4.y = s4.y * a + kd * br.y; s4.z = s4.z * a + kd * br.z; s4.w = s4.w * a + kd * br.w;
                    *reinterpret_cast<float4*>(new_rows + i * row_step) = s4;
                    acc.x += s4.x * qd; acc.y += s4.y * qd; acc.z += s4.z * qd; acc.w += s4.w * qd;
                }
            }
        };
        if (store_in_bulk) {
            update_rows(st_rows);
            fence_proxy_async();   // this thread's new rows visible to the bulk store's reads
        } else {
            update_rows(sequence(n).state + ((size_t)h * K + rg) * V + j0 + 4 * cg);
        }
        store_column_partials(acc, ncg, lane, sred + warp * 32);
        __syncthreads();
        if (tid == 0 && store_in_bulk) {   // one bulk store, read before the buffer is refilled (copy_state)
            bulk_store(sequence(n).state + (size_t)h * K * V, sst + b * 128 * 128, K * V * 4);
            bulk_commit();
        }

        // Gated RMSNorm over all V columns: each group's first warp sums its columns' o², the v role applies it.
        if (gw == 0) {
            const float* p = sred + group * 4 * 32;
            const float o = c < VS ? q_scale * (p[c] + p[32 + c] + p[64 + c] + p[96 + c]) : 0.f;
            if (c < VS) so[j0 + c] = o;
            float oo = o * o;
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) oo += __shfl_xor_sync(0xffffffffu, oo, off);
            if (lane == 0) sgsq[group] = oo;
        }
        __syncthreads();
        if (active) {   // window shifts by the channel's role; the v role writes y
            const DecodeSequence<Tin> seq = sequence(n);
            if (role == 3) {
                const float total = sgsq[0] + sgsq[1] + sgsq[2] + sgsq[3];
                st(y + (size_t)n * HV + h * V + c, so[c] * (1.0f / sqrtf(total / (float)V + rms_eps)) * (sigmoidf_(ld(cur.e0)) * ld(cur.norm_weight)));
            }
            if (role != 2) {
                const int C = role == 3 ? HV : HK, ch = (role == 3 ? V : K) * h + c;
                Tin* win = role == 0 ? seq.cq : role == 1 ? seq.ck : seq.cv;
                win[ch] = cur.x1; win[C + ch] = cur.x2; win[2 * C + ch] = cur.x3;
            }
        }
        cur = next;
        if (++b == stages) b = 0, parity ^= 1;
    }
    if (tid == 0) bulk_wait_read<0>();   // the last stores have read their buffers before the block's shared memory goes
}

// Tensor-core products (the intra kernel's sub-chunk pairs, the scan): mma.sync m16n8k8 with tf32 operands and fp32
// accumulation, as 3xTF32. tf32 keeps 10 of fp32's 23 mantissa bits (relative rounding 2^-11), which alone misses the
// bf16 checks (1.1e-3 against ≤ 1e-3 on the scan's o, emulator and H100 alike), so each operand x is split into
// big = tf32(x) and small = tf32(x − big) and a product sums small·big + big·small + big·big: what that drops
// (small·small, the rounding of small) is ~2^-22 relative, fp32's accuracy at 3× the tensor-core work.
// tf32(x) as cvt.rna.tf32.f32 rounds a finite x (to nearest, ties away from zero: the magnitude bits plus half an
// ulp, then masked), in two integer instructions: ptxas expands the cvt itself into four (an |x| < ∞ test and a select
// around the same add and mask), and those tests and selects were 18 % of the scan's instructions (run 12's SASS
// profile). Inputs are finite (a precondition), so the result is the cvt's, bit for bit.
__device__ __forceinline__ uint32_t to_tf32(float x) { return (__float_as_uint(x) + 0x1000u) & 0xffffe000u; }
__device__ __forceinline__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef KDA_EMULATE
    emu_mma_m16n8k8_tf32(d, a, b);
#else
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}
// An mma operand fragment of N values, each split into tf32 big and small parts.
template <int N> struct Tf32Frag {
    uint32_t big[N], small[N];
    __device__ __forceinline__ Tf32Frag() {}
    __device__ __forceinline__ explicit Tf32Frag(const float (&x)[N]) {
#pragma unroll
        for (int i = 0; i < N; ++i) split(i, x[i]);
    }
    __device__ __forceinline__ void split(int i, float x) {
        big[i] = to_tf32(x);
        small[i] = to_tf32(x - __uint_as_float(big[i]));
    }
};
__device__ __forceinline__ void mma_acc(float (&d)[4], const Tf32Frag<4>& a, const Tf32Frag<2>& b) {
#ifdef KDA_EMULATE
    emu_mma_m16n8k8_tf32(d, a.big, b.big, a.small, b.small);
#else
    mma_tf32(d, a.small, b.big);
    mma_tf32(d, a.big, b.small);
    mma_tf32(d, a.big, b.big);
#endif
}
// The same with the two correction products accumulated in c (the caller adds c to d once its k loop ends): each
// k-step's three mma then form two dependency chains, d's one mma deep, instead of one three deep.
__device__ __forceinline__ void mma_acc(float (&d)[4], float (&c)[4], const Tf32Frag<4>& a, const Tf32Frag<2>& b) {
#ifdef KDA_EMULATE
    emu_mma_m16n8k8_tf32(d, a.big, b.big, a.small, b.small, c);
#else
    mma_tf32(c, a.small, b.big);
    mma_tf32(c, a.big, b.small);
    mma_tf32(d, a.big, b.big);
#endif
}

// The packed tokens [t0, t0 + len) of chunk c: its sequence is the last one whose first chunk is ≤ c (binary search
// over chunk_offsets, which skips empty sequences).
__device__ __forceinline__ void chunk_span(int c, int num_seqs, const int* __restrict__ cu_seqlens,
    const int* __restrict__ chunk_offsets, int& t0, int& len) {
    int lo = 0, hi = num_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (chunk_offsets[mid] <= c) lo = mid; else hi = mid - 1;
    }
    t0 = cu_seqlens[lo] + (c - chunk_offsets[lo]) * kChunk;
    len = min(kChunk, cu_seqlens[lo + 1] - t0);
}

// Starts copying a [rows][cols] fp32 tile (cols % 4 == 0, cols ≤ 4·nthreads) from global (row stride src_ld) into
// shared (row stride dst_ld) with cp.async; the caller commits and waits.
__device__ __forceinline__ void copy_tile_async(float* dst, int dst_ld, const float* __restrict__ src, int src_ld,
    int rows, int cols, int tid, int nthreads) {
    // Thread = one 16-byte column of rows r0, r0 + step, …: one division by the runtime width, not one per copy.
    const int c4 = cols / 4, c = (tid % c4) * 4, step = nthreads / c4;
    if (tid >= step * c4) return;
    for (int r = tid / c4; r < rows; r += step) cp_async16(dst + r * dst_ld + c, src + (size_t)r * src_ld + c);
}

// Two floats as a bf16 pair (a in the low half), rounded to nearest even: one cvt for both.
__device__ __forceinline__ uint32_t pack_bf16x2(float a, float b) {
#ifdef KDA_EMULATE
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(a)) | ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(b)) << 16);
#else
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
    return r;
#endif
}
// Two floats as bf16 pairs: hi = bf16(a), bf16(b) and lo = bf16(a − hi_a), bf16(b − hi_b) (x − hi is exact in fp32).
__device__ __forceinline__ void split_bf16x2(float a, float b, uint32_t& hi, uint32_t& lo) {
    hi = pack_bf16x2(a, b);
    lo = pack_bf16x2(a - __uint_as_float(hi << 16), b - __uint_as_float(hi & 0xffff0000u));
}
// The low 16 bits of w0 and of w1 (w0's in the low half), or their high 16 bits: a bf16x2 fragment register of the
// channels' split words (chunk_intra's whole-mild operands) in pairs of rows (wu_columns' K̃). One PRMT each.
__device__ __forceinline__ uint32_t low_halves(uint32_t w0, uint32_t w1) { return __byte_perm(w0, w1, 0x5410); }
__device__ __forceinline__ uint32_t high_halves(uint32_t w0, uint32_t w1) { return __byte_perm(w0, w1, 0x7632); }
// How the intra kernel hands the scan its matrix operands W, QG, KG [64][K] and A [64][64]: one block per (chunk,
// head) each. For fp32 inputs, fp32 rows of K (64·K floats a block; the scan splits them into tf32 parts as its
// fragments load). For bf16 inputs, rows padded to KP (zero columns past K) as two bf16 planes, hi then lo, with
// x ≈ hi + lo (hi = bf16(x); x − hi is exact in fp32, and lo = bf16(x − hi) leaves ~2^-17 of x): the scan's bf16
// tensor-core fragments, split once here instead of once per V-slice block and chunk there, in the block's 64·KP
// floats. Each plane is stored in 128-byte-swizzled atoms (atom_swizzled), so that a whole block lands in the scan's
// shared memory by one bulk copy already in the layout its wgmma descriptors (or ldmatrix) read.
template <typename Tin> struct OperandStore;
template <> struct OperandStore<float> {
    using T = float;
    static constexpr int kPlanes = 1;   // a block of rows of n values takes kPlanes·64·n elements of T
    __device__ static int row_length(int K) { return K; }
    __device__ static int at(int r, int c, int n) { return r * n + c; }   // element (r, c) of rows of n
    __device__ static void put(T* p, int, float x) { *p = x; }
    __device__ static void put4(T* p, int, float4 x) { *reinterpret_cast<float4*>(p) = x; }
};
template <> struct OperandStore<__nv_bfloat16> {
    using T = __nv_bfloat16;
    static constexpr int kPlanes = 2;
    __device__ static int row_length(int K) { return chunk_prefill_kpad(K); }
    __device__ static int at(int r, int c, int) { return atom_swizzled(r, c, kChunk); }   // any n: 64-column atoms
    __device__ static void put(T* p, int n, float x) {
        const T hi = __float2bfloat16_rn(x);
        p[0] = hi;
        p[n] = __float2bfloat16_rn(x - __bfloat162float(hi));
    }
    __device__ static void put4(T* p, int n, float4 x) {   // p 8-byte aligned
        uint2 hi, lo;
        split_bf16x2(x.x, x.y, hi.x, lo.x);
        split_bf16x2(x.z, x.w, hi.y, lo.y);
        *reinterpret_cast<uint2*>(p) = hi;
        *reinterpret_cast<uint2*>(p + n) = lo;
    }
};

// (I + L)·x = b solved in place for one column x of N rows (L strictly lower, row r at l + r·kChunk). Row r's sum runs
// as 4 independent chains (s mod 4), so the serial path is ~r/4 FMAs deep, not r.
template <int N>
__device__ __forceinline__ void forward_substitute(float (&x)[N], const float* l) {
#pragma unroll
    for (int r = 1; r < N; ++r) {
        float acc[4] = {x[r], 0.f, 0.f, 0.f};
#pragma unroll
        for (int s = 0; s < r; ++s) acc[s & 3] = fmaf(-l[r * kLdL + s], x[s], acc[s & 3]);
        x[r] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
}

// fp32 inputs: W and U by forward substitution, one column per thread: columns [0, K) solve W, [K, K+V) solve U. The
// right-hand sides: β ⊙ n_k ⊙ (k ⊙ 2^G) from shared memory (k̂ = n_k·k); β ⊙ v with v staged through A's shared memory sa (free once A
// is out) by cp.async, as many rows per pass as fit, so its loads go out together. (Loaded straight into registers,
// ptxas re-issued each read-only load at its use under the 128-register cap: 64 dependent global round trips per U
// column, 30 % of the kernel's stall samples in run 11.) Only the warps holding U columns copy and wait for v,
// meeting at a named barrier, so the W columns' substitution starts while v is in flight. (The bf16 path solves
// for T' and forms W and U on tensor cores instead: solve_t, wu_columns. Its 16-bit split parts keep
// ~2^-17 of each value, too little for the fp32 checks' 1e-5.)
__device__ __forceinline__ void substitute_wu(int K, int V, int H, int h, int t0, int len, int tid,
    const float* __restrict__ v, const float* sk, const float* sg, const float* sb, const float* nk, const float* sl, float* sa,
    float* w_blk, float* u_blk) {
    const bool is_w = tid < K, is_u = tid >= K && tid < K + V;
    const int col = is_w ? tid : tid - K;
    float x[kChunk];
    if (is_w) {   // the column's rows of k and G in 16-byte pieces (channel rows kLdT apart: a quarter-warp hits 32 banks)
#pragma unroll
        for (int r = 0; r < kChunk; r += 4) {
            const int at = transposed_at(col, r);
            const float4 kx = *reinterpret_cast<const float4*>(sk + at), gx = *reinterpret_cast<const float4*>(sg + at);
            x[r] = sb[r] * nk[r] * kx.x * ex2(gx.x);
            x[r + 1] = sb[r + 1] * nk[r + 1] * kx.y * ex2(gx.y);
            x[r + 2] = sb[r + 2] * nk[r + 2] * kx.z * ex2(gx.z);
            x[r + 3] = sb[r + 3] * nk[r + 3] * kx.w * ex2(gx.w);
        }
    }
    const int u_warp0 = K / 32, u_threads = 32 * ((K + V + 31) / 32 - u_warp0);   // the warps with U columns
    if (tid >= 32 * u_warp0 && tid < 32 * u_warp0 + u_threads) {
        const int pass_rows = min(kChunk, kChunk * kChunk / V);   // rows of v that fit in sa (≥ 18: V ≤ 224)
        for (int p0 = 0; p0 < kChunk; p0 += pass_rows) {
            copy_tile_async(sa, V, v + ((size_t)(t0 + p0) * H + h) * V, H * V, max(0, min(pass_rows, len - p0)), V,
                tid - 32 * u_warp0, u_threads);
            cp_async_commit();
            cp_async_wait<0>();
            named_barrier(1, u_threads);   // the pass has landed
            if (is_u && pass_rows == kChunk) {   // one pass (V ≤ 64): no row-range tests
#pragma unroll
                for (int r = 0; r < kChunk; ++r) x[r] = r < len ? sb[r] * sa[r * V + col] : 0.f;
            } else if (is_u) {
#pragma unroll
                for (int r = 0; r < kChunk; ++r)
                    if (r >= p0 && r < p0 + pass_rows) x[r] = r < len ? sb[r] * sa[(r - p0) * V + col] : 0.f;
            }
            if (p0 + pass_rows < kChunk) named_barrier(1, u_threads);   // read before the next pass overwrites it
        }
    }
    if (is_w || is_u) {
        forward_substitute<kChunk>(x, sl);
        if (is_w) {
#pragma unroll
            for (int r = 0; r < kChunk; ++r) w_blk[r * K + col] = x[r];
        } else {   // U slice-major
            float* dst = u_blk + (col / kPrefillCols) * kChunk * kPrefillCols + col % kPrefillCols;
#pragma unroll
            for (int r = 0; r < kChunk; ++r) dst[r * kPrefillCols] = x[r];
        }
    }
}

// bf16 inputs: T' = (I + L)⁻¹·Diag(β) on warps 0-3 by blocks, stored over L once all of it is read, as bf16 hi and lo
// planes [2][64][64] (atom_swizzled; hi = bf16(x), lo = bf16(x − hi)): wu_columns' A operand. A lower block triangular
// [[P, 0], [C, Q]] has the inverse [[P⁻¹, 0], [−Q⁻¹·C·P⁻¹, Q⁻¹]], so: warp w solves (I + L_ww)·x = e_j for the 16-row
// diagonal block w (lanes j < 16; ~120 FMAs a column, the only chain), each inverse in its block's place; the 32-row
// inverses T00, T11 then take two 16×16×16 products each (Y = C·P_upper, then −P_lower·Y), and T' their 32×32×32
// ones (Y = L10·T00, then −T11·Y), all on mma.sync split as wu_columns' products (hi·hi + hi·lo + lo·hi: ~2^-16
// relative, as fine as T' is stored), intermediates through sx [32][33]. (One 64-row solve a column, ~2,000 FMAs,
// held up the whole block (NOTES, intra B1); warp 0's two 32-row solves in turn (B6) still did, and one beside the
// other (B8): intra −9 % at T = 4,096 from B6 to these 16-row ones, B9. The products as FMAs, a column a lane, took
// ~550 instructions a warp each for the 32×32 ones: B13, B14.)
__device__ __forceinline__ void solve_t(int tid, float* sl, const float* sb, float* sx) {
    constexpr int kH = kChunk / 2, kQ = kChunk / 4, kX = kH + 1;   // sx's row stride: column reads and writes hit 32 banks
    const int warp = tid >> 5, lane = tid & 31;
    {   // the diagonal block's inverse over it (each warp reads and writes its own block only)
        float* lw = sl + kQ * warp * (kLdL + 1);
        float x[kQ];
        if (lane < kQ) {
#pragma unroll
            for (int r = 0; r < kQ; ++r) x[r] = r == lane ? 1.f : 0.f;
            forward_substitute<kQ>(x, lw);
        } else {   // zeros above the diagonal blocks inside T00 and T11 (rows 0-15 and 32-47, 16 columns from 16 and 48)
            const int i = kQ * (warp & 1) + lane - kQ, r = kH * (warp >> 1) + (i >> 2), c = kH * (warp >> 1) + kQ + 4 * (i & 3);
            *reinterpret_cast<float4*>(sl + r * kLdL + c) = make_float4(0.f, 0.f, 0.f, 0.f);
            *reinterpret_cast<float4*>(sl + (r + 8) * kLdL + c) = make_float4(0.f, 0.f, 0.f, 0.f);
        }
        __syncwarp();   // every lane's reads of L_ww are done
        if (lane < kQ) {
#pragma unroll
            for (int r = 0; r < kQ; ++r) lw[r * kLdL + lane] = x[r];
        }
    }
    named_barrier(3, 4 * 32);   // the diagonal blocks' inverses P_w are in place
    // The products on mma.sync m16n8k16: lane (g, t) holds rows g, g + 8 and columns 8nt + 2t, + 1 of n-tile nt (the
    // accumulator's layout).
    const int g = lane >> 2, t = lane & 3;
    // acc[nt] = P[g, g + 8 ..][0 .. 16·ksteps)·X[0 .. 16·ksteps)[8nt + g]: P's rows at p (stride kLdL; pairs along k
    // are 8-byte aligned), X's at x (stride ldx).
    auto tile_times = [&](auto ksteps, const float* p, const float* x, int ldx, auto& acc) {
        constexpr int kNTiles = std::extent_v<std::remove_reference_t<decltype(acc)>>;
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
#pragma unroll
        for (int k0 = 0; k0 < 16 * decltype(ksteps)::value; k0 += 16) {
            uint32_t ah[4], al[4];   // A[g][2t..], A[g + 8][2t..], A[g][2t + 8..], A[g + 8][2t + 8..]
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const float2 a = *reinterpret_cast<const float2*>(p + (g + 8 * (i & 1)) * kLdL + k0 + 2 * t + 8 * (i >> 1));
                split_bf16x2(a.x, a.y, ah[i], al[i]);
            }
#pragma unroll
            for (int nt = 0; nt < kNTiles; ++nt) {
                uint32_t bh[2], bl[2];   // B[2t..][g], B[2t + 8..][g]
                const float* xc = x + 8 * nt + g;
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int k = k0 + 2 * t + 8 * e;
                    split_bf16x2(xc[k * ldx], xc[(k + 1) * ldx], bh[e], bl[e]);
                }
                mma(acc[nt], ah, bl[0], bl[1]);
                mma(acc[nt], al, bh[0], bh[1]);
                mma(acc[nt], ah, bh[0], bh[1]);
            }
        }
    };
    {   // The 16×16 products of T00's (warps 0-1) and T11's (warps 2-3) lower-left blocks: warp w the block's columns
        // n0 .. n0 + 7. o: the block's origin in sl (row and column 32 or 0).
        const int o = kH * (warp >> 1) * (kLdL + 1), n0 = 8 * (warp & 1);
        float* sy = sx + kQ * (warp >> 1) * kX;   // [16][kX]: this block's Y
        float q[1][4];
        // Y = C·P_upper, C the block's lower-left 16×16 of L
        tile_times(std::integral_constant<int, 1>{}, sl + o + kQ * kLdL, sl + o + n0, kLdL, q);
#pragma unroll
        for (int e = 0; e < 4; ++e) sy[(g + 8 * (e >> 1)) * kX + n0 + 2 * t + (e & 1)] = q[0][e];
        named_barrier(3, 4 * 32);   // Y is in sx; C is read
        tile_times(std::integral_constant<int, 1>{}, sl + o + kQ * (kLdL + 1), sy + n0, kX, q);   // P_lower·Y
#pragma unroll
        for (int half = 0; half < 2; ++half)   // in C's place
            *reinterpret_cast<float2*>(sl + o + (kQ + g + 8 * half) * kLdL + n0 + 2 * t) = make_float2(-q[0][2 * half], -q[0][2 * half + 1]);
        named_barrier(3, 4 * 32);   // T00 and T11 are in L00's and L11's places; sx is read
    }
    // The 32×32 products: warp w the rows m0 .. m0 + 15 and columns n0 .. n0 + 15 (two n-tiles) of each.
    const int m0 = kQ * (warp >> 1), n0 = kQ * (warp & 1);
    const float* t11 = sl + kH * (kLdL + 1);
    float part[2][4];
    tile_times(std::integral_constant<int, 2>{}, sl + (kH + m0) * kLdL, sl + n0, kLdL, part);   // Y = L10·T00
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) sx[(m0 + g + 8 * (e >> 1)) * kX + n0 + 8 * nt + 2 * t + (e & 1)] = part[nt][e];
    named_barrier(3, 4 * 32);   // Y is in sx
    tile_times(std::integral_constant<int, 2>{}, t11 + m0 * kLdL, sx + n0, kX, part);   // T11·Y
    // Rows rp .. rp + 3 of T00's and T11's columns cp, cp + 1, for the stores below.
    const int cp = 2 * (lane & (kQ - 1)), rp = 8 * warp + 4 * (lane >> 4);
    float2 t00_pairs[4], t11_pairs[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        t00_pairs[i] = *reinterpret_cast<const float2*>(sl + (rp + i) * kLdL + cp);
        t11_pairs[i] = *reinterpret_cast<const float2*>(t11 + (rp + i) * kLdL + cp);
    }
    named_barrier(3, 4 * 32);   // L, T00 and T11 are read: T' may overwrite them
    // T'(r, c), T'(r, c + 1) = x0·β_c, x1·β_{c+1} as a bf16 pair in each plane (c even).
    __nv_bfloat16* st = reinterpret_cast<__nv_bfloat16*>(sl);
    auto put_pair = [&](int r, int c, float x0, float x1) {
        const int x = atom_swizzled(r, c, kChunk);
        uint32_t hi, lo;
        split_bf16x2(x0 * sb[c], x1 * sb[c + 1], hi, lo);
        *reinterpret_cast<uint32_t*>(st + x) = hi;
        *reinterpret_cast<uint32_t*>(st + kChunk * kChunk + x) = lo;
    };
    // T's top-right 32×32 block is zero and never read (wu_columns' row tile i takes the k-steps j ≤ i only), so
    // it is not written.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        put_pair(rp + i, cp, t00_pairs[i].x, t00_pairs[i].y);
        put_pair(kH + rp + i, kH + cp, t11_pairs[i].x, t11_pairs[i].y);
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int half = 0; half < 2; ++half)   // −T11·Y's columns c, c + 1 of row m0 + g + 8·half
            put_pair(kH + m0 + g + 8 * half, n0 + 8 * nt + 2 * t, -part[nt][2 * half], -part[nt][2 * half + 1]);
}

// bf16 inputs: cp.async of the chunk's rows of v into sv [64][V + 8] (16 bytes past each row, so the 8 rows an
// ldmatrix reads fall in 8 bank groups), rows ≥ len zero-filled (T' is 0 there, but 0·NaN is not 0), by `threads`
// threads from `thread` 0 (thread = one 16-byte column of rows r0, r0 + step, …: one division by the width).
__device__ __forceinline__ void stage_v_rows(int V, int H, int h, int t0, int len, int thread, int threads,
    const __nv_bfloat16* __restrict__ v, uint16_t* sv) {
    const int pieces = V / 8, p = thread % pieces, step = threads / pieces;
    if (thread < step * pieces) {
        for (int r = thread / pieces; r < kChunk; r += step)
            cp_async16(sv + r * (V + 8) + 8 * p, v + ((size_t)(t0 + (r < len ? r : 0)) * H + h) * V + 8 * p, r < len);
    }
    cp_async_commit();
    cp_async_wait<0>();
}

// The column of W's 16 that wu_columns puts at column n of n-tile nt of its products: 4⌊n/2⌋ + 2(n mod 2) + nt, so that
// a lane's accumulators (columns 2t, 2t + 1 of both n-tiles) are the 4 consecutive columns 4t .. 4t + 3 of its rows
// (n-tile 0's at 4t, 4t + 2, n-tile 1's at 4t + 1, 4t + 3) and go out as one 8-byte store a plane, a warp's 8 lanes of a
// row filling one 32-byte sector (columns 8nt + n, the plain order, made 4-byte stores, each warp's covering half a
// sector of each of 8 rows); and so that the B columns a k-step's lanes load, 2g + nt, put a half-warp's 8-byte K̃
// reads (rows 2t, 2t + 1 of a channel; the channels 2g + nt of a half-warp share their swizzle) in 16 different bank
// pairs (34·2g + (t ^ const) ≡ 4g + (t ^ const) mod 16).
__device__ __forceinline__ int w_column(int nt, int n) { return 4 * (n >> 1) + 2 * (n & 1) + nt; }

// bf16 inputs: 16 columns from cb of W = T'·K̃ (kW; K̃ = k̂ ⊙ 2^G, formed from sk, nk and sg as its fragments load, or in
// whole-mild chunks read from sk as the split words of channel pairs chunk_intra's units left there: 0 past
// K and past len, so W's padding columns [K, KP) come out 0) or of U = T'·v (v's rows sv [64][V + 8], read by
// ldmatrix), on mma.sync m16n8k16 with fp32 accumulation. T' is lower triangular, so row tile i sums the k-steps
// j ≤ i only. T' enters as its hi and lo planes (st [2][64][64], atom_swizzled); K̃ is split too, so W = hi·hi +
// hi·lo + lo·hi (lo·lo, ~2^-18, dropped); v is bf16 already, so U = T'hi·v + T'lo·v: ~2^-17 relative, within the bf16
// checks' 1e-3 many times over. (The blocked substitution on 3xTF32, intra T2, and T·B on 3xTF32, intra T, each cost
// what the CUDA-core solve did: fragments split as they load and four tf32 mma for each bf16 one here.) W goes out as
// hi and lo planes (OperandStore), U slice-major in fp32.
// KC as chunk_intra's: K a compile-time constant (immediate row offsets into sk, sg) or 0.
template <bool kW, int KC>
__device__ __forceinline__ void wu_columns(int k_any, int V, int cb, int lane, const float* sk, const float* sg, const float* nk,
    bool whole, const uint16_t* st, const uint16_t* sv, __nv_bfloat16* w_blk, int plane_k, float* u_blk) {
    const int K = KC ? KC : k_any;
    const int g = lane >> 2, t = lane & 3;
    const int frag_row = (lane & 7) + (lane & 8), frag_piece = lane >> 4;   // this lane's ldmatrix row and 8-column piece
    float acc[4][2][4];   // [row tile i][n-tile][fragment]
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][nt][e] = 0.f;
    // K̃'s rows r = 16j + 2t + 8e of columns c = cb + w_column(nt, g): columns w_column(0, g), + 1 share a swizzle, which
    // moves rows within their 16 only, so every (j, nt) is an offset from xk[e] (ptxas recomputed each swizzle).
    const int xk[2] = {transposed_at(cb + w_column(0, g), 2 * t), transposed_at(cb + w_column(0, g), 2 * t + 8)};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        uint32_t bh[4], bl[4];   // B of rows 16j .. +16: n-tile nt in registers 2nt (k rows 2t, 2t + 1), 2nt + 1 (+8)
        if (kW && whole) {   // whole-mild chunks: K̃'s split words of channels c, c + 1 in k's place (chunk_intra's units)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                uint2 hi = make_uint2(0u, 0u), lo = hi;   // rows r, r + 1; channel c's part in the low halves, c + 1's high
                if ((KC != 0 && KC % 64 == 0) || cb + w_column(0, g) < K) {   // (K % 4 == 0: c + 1 < K too)
                    hi = *reinterpret_cast<const uint2*>(sk + xk[e] + 16 * j);
                    lo = *reinterpret_cast<const uint2*>(sk + xk[e] + 16 * j + kLdT);
                }
                bh[e] = low_halves(hi.x, hi.y); bh[2 + e] = high_halves(hi.x, hi.y);
                bl[e] = low_halves(lo.x, lo.y); bl[2 + e] = high_halves(lo.x, lo.y);
            }
        } else if (kW) {
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int r = 16 * j + 2 * t + 8 * e, c = cb + w_column(nt, g);
                    float x0 = 0.f, x1 = 0.f;
                    if ((KC != 0 && KC % 64 == 0) || c < K) {   // c < KP: K a multiple of 64 covers every column
                        const float2 n = *reinterpret_cast<const float2*>(nk + r);   // rows r, r + 1 (r even)
                        const int x = xk[e] + 16 * j + nt * kLdT;
                        const float2 kx = *reinterpret_cast<const float2*>(sk + x), gx = *reinterpret_cast<const float2*>(sg + x);
                        x0 = kx.x * n.x * ex2(gx.x);
                        x1 = kx.y * n.y * ex2(gx.y);
                    }
                    split_bf16x2(x0, x1, bh[2 * nt + e], bl[2 * nt + e]);
                }
        } else {
            ldsm_x4_t(bh, sv + (16 * j + frag_row) * (V + 8) + cb + 8 * frag_piece);
        }
#pragma unroll
        for (int i = j; i < 4; ++i) {
            uint32_t ah[4], al[4];
            const int xa = atom_swizzled(16 * i + frag_row, 16 * j + 8 * frag_piece, kChunk);
            ldsm_x4(ah, st + xa);
            ldsm_x4(al, st + kChunk * kChunk + xa);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) {
                if (kW) mma(acc[i][nt], ah, bl[2 * nt], bl[2 * nt + 1]);
                mma(acc[i][nt], al, bh[2 * nt], bh[2 * nt + 1]);
                mma(acc[i][nt], ah, bh[2 * nt], bh[2 * nt + 1]);
            }
        }
    }
    if constexpr (kW) {   // rows g and g + 8 of row tile i, columns 4t .. 4t + 3 (w_column): 8 bytes a plane
        const int x0 = atom_swizzled(g, cb + 4 * t, kChunk);   // row g + 8m lies 8m rows on: its swizzle (row mod 8) is g's
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                uint2 hi, lo;
                split_bf16x2(acc[i][0][2 * half], acc[i][1][2 * half], hi.x, lo.x);
                split_bf16x2(acc[i][0][2 * half + 1], acc[i][1][2 * half + 1], hi.y, lo.y);
                const int x = x0 + 64 * (16 * i + 8 * half);
                *reinterpret_cast<uint2*>(w_blk + x) = hi;
                *reinterpret_cast<uint2*>(w_blk + plane_k + x) = lo;
            }
    } else {   // U slice-major: rows g and g + 8 of row tile i, columns cb + 8nt + 2t, + 1, all in slice cb / 32 (cb % 16 == 0)
        float* u0 = u_blk + (cb / kPrefillCols) * kChunk * kPrefillCols + g * kPrefillCols + cb % kPrefillCols + 2 * t;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half)
                    *reinterpret_cast<float2*>(u0 + (16 * i + 8 * half) * kPrefillCols + 8 * nt) =
                        make_float2(acc[i][nt][2 * half], acc[i][nt][2 * half + 1]);
    }
}

// for (i = begin; i < end; i += step) body(i), unrolled `Unroll` times (1 or 2), or as the compiler likes (0).
template <int Unroll, typename Body>
__device__ __forceinline__ void strided_for(int begin, int end, int step, Body body) {
    if constexpr (Unroll == 2) {
#pragma unroll 2
        for (int i = begin; i < end; i += step) body(i);
    } else if constexpr (Unroll == 1) {
#pragma unroll 1
        for (int i = begin; i < end; i += step) body(i);
    } else {
        for (int i = begin; i < end; i += step) body(i);
    }
}

// One round of a 16×16 block's bf16 products in pair_products: kk[slot + nt] += ak·b[nt] and qk[slot + nt] += aq·b[nt]
// for both n-tiles, four independent mma. A block's products go in rounds (lo·lo on a diagonal block, hi·lo, lo·hi,
// hi·hi), each round on all its accumulators: an accumulator's products depend on each other, and issued an n-tile at a
// time only two chains were in flight (ptxas kept that order; the pair phase's stalls were 36 % "wait", run 183). In
// whole-mild chunks −0.8 to −1.5 % of the prefill (runs 190, 191), in mild ones' intra −0.5 to −1.5 % (run 192); over
// both blocks of a warp at once it spilled (run 189).
__device__ __forceinline__ void mma_round(float (&kk)[4][4], float (&qk)[4][4], int slot, const uint32_t (&ak)[4],
                                          const uint32_t (&aq)[4], const uint32_t (&b)[2][2]) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
        mma(kk[slot + nt], ak, b[nt][0], b[nt][1]);
        mma(qk[slot + nt], aq, b[nt][0], b[nt][1]);
    }
}

// The pair products of chunk_intra: L (times β) and A over the chunk's 64×64 pairs into shared memory (sl, sa, in q's
// place once every warp has read q), one 2^(G_r − G_s) per (r, s, d) shared by both. They sum over the rows of q and k
// as loaded (sk, sq, sg: a channel a row, kLdT); each result is scaled by its rows' norms (snorm: n_q, n_k) as it is
// stored. Only the lower triangle (s ≤ r) is computed: the solve reads L below the diagonal only, and A is written from
// sa with the upper triangle zeroed. Every exponent taken is ≤ 0 (G never increases along a chunk), by factorizing
// through a reference row n with s ≤ n < r: 2^(G_r − G_s) = 2^(G_r − G_n)·2^(G_n − G_s), except in the diagonal
// blocks of mild chunks (below).
//   Pairs of 16-row sub-chunks i > j (6 blocks of 16×16), warps 5-7 with two blocks each: tensor-core products
//   (3xTF32, or three bf16 products for bf16 inputs) of sub-chunk i's rows scaled by 2^(G_r − G_n) with sub-chunk
//   j's rows scaled by 2^(G_n − G_s), n = j's last row (47 for (3,0): below); the scaled operands are formed in
//   registers as the fragments are loaded. A fragment's rows g and g + 8 are the sub-chunk's rows 2g and 2g + 1, and
//   n-tiles 0 and 1 of B take column g from j's rows 2g and 2g + 1, so one 8-byte load brings both rows of a channel.
//   Inside the 4 diagonal 16×16 blocks, 4×4 tiles on warps 0-4 (8 tiles per warp, lane % 8; the d range split 4
//   ways by lane / 8, interleaved, the parts summed by shuffle), each channel's 4 rows of a tile in one 16-byte load
//   (a quarter-warp's 8 lanes share d and hold different row tiles, so their loads hit different banks): warps 0-2
//   take the 24 off-diagonal tiles, which factorize through their last column (7 exponentials per d for 16 pairs,
//   then plain FMAs); warps 3-4 the 16 diagonal tiles, with 2^(G_r − G_s) element-wise for the 6 pairs s < r of each
//   (the running sum G never increases, so those exponents are ≤ 0; the 4 on the diagonal take none, the 6 above stay
//   0 and are never read). Each warp runs one kind only, so no warp diverges between them.
//   Mild chunks (kMildRange, bf16 inputs): the diagonal blocks on tensor cores as well, warp w < 4 block (w, w)
//   through its first row n = 16w, whose factors 2^(G_r − G_n) ≤ 1 and 2^(G_n − G_s) ≤ 2^kMildRange (the only
//   positive exponents, bounded where the chunk was tested); its pairs above the diagonal are finite and never read.
//   The tiles' element-wise exponentials and FMAs were ~11K of the block's ~44K warp instructions (run 86); what
//   FlashKDA and cuDNN take from a lower-bounded gate, this takes from a test of the chunk's own decay.
//   Whole-mild chunks (kWholeMildRange, bf16 inputs): all 10 blocks through the chunk's start, from the operands
//   chunk_intra's units formed once (QG, k̂ ⊙ 2^G, k̂ ⊙ 2^−G as split words): warps 0-3 the diagonal blocks (all four
//   products of the parts, as above), warps 4 and 5 two off-diagonal blocks each that share their B, warps 6 and 7
//   one; no exponentials and no splits here (runs 176-181: intra −3.5 to −6.5 % against M1).
// KC (as chunk_intra's): K as a compile-time constant, so that no channel is tested against K and two unroll counts
// are fixed (the tiles' d loops 2, the bf16 k-steps 1: without them the K = 128 instance gained a third as much, run
// 63; the tiles' loops unrolled 4 (before run 148), 8 or 1 took intra 1 to 4 % longer at T = 4,096, the k-steps
// unrolled 2 7 %, runs 148, 149), or 0 for any K (the compiler's counts).
template <typename Tin, int KC>
__device__ __forceinline__ void pair_products(int k_any, int tid, const float* sk, const float* sg, const float* sq,
    const float* sb, const float* snorm, float* sl, float* sa, bool mild, bool whole) {
    const int K = KC ? KC : k_any;
    static_assert(kIntraThreads == 256, "tiles on warps 0-4, sub-chunk pairs on warps 5-7");
    const int lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3, part = lane >> 3;
    const bool pairs = warp >= 5, diag = warp == 3 || warp == 4;
    auto ld2 = [](const float* p, bool in) { return in ? *reinterpret_cast<const float2*>(p) : make_float2(0.f, 0.f); };
    // Σ kk and Σ qk (times 2^(G_r − G_s)): a tile's 4×4 on warps 0-4; [2·block + n-tile][fragment] of two 16×16 blocks on warps 5-7.
    float kk[4][4], qk[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) { kk[i][j] = 0.f; qk[i][j] = 0.f; }
    int ta, tb;   // warps 0-4: the tile's row and column tiles
    if (!diag) {   // off-diagonal tile o of 24: block o / 6, local (a, b) like the sub-chunk pairs
        const int o = 8 * warp + (lane & 7), lt = o % 6;
        const int a = lt < 1 ? 1 : lt < 3 ? 2 : 3;
        ta = 4 * (o / 6) + a; tb = 4 * (o / 6) + lt - a * (a - 1) / 2;
    } else {
        ta = tb = 8 * (warp - 3) + (lane & 7);
    }
    // The sub-chunk pairs (i, j) of warp 5 + w, pp = 0, 1, and their common reference row n: warp 5 (1,0) (2,0) and warp 6
    // (2,1) (3,1), n = j's last row, so both pairs have the same B (j's rows scaled by 2^(G_n − G_s)); warp 7 (3,0) (3,2)
    // with n = 47 (it lies between sub-chunk 0's rows and 3's as well as 2's), so both have the same A (3's rows scaled
    // by 2^(G_r − G_n)). The bf16 path forms the shared operand once a k-step.
    const int w = warp - 5;
    const int pi[2] = {w == 0 ? 1 : w == 1 ? 2 : 3, w == 0 ? 2 : 3}, pj[2] = {w == 1 ? 1 : 0, w == 2 ? 2 : w};
    // Whole-mild chunks: warps 0-3 block (w, w), 4 (1, 0) and (2, 0), 5 (2, 1) and (3, 1), 6 (3, 0), 7 (3, 2).
    const int whole_blocks = warp == 4 || warp == 5 ? 2 : 1, whole_j = warp < 4 ? warp : warp == 5 ? 1 : warp == 7 ? 2 : 0;
    const int whole_i[2] = {warp < 4 ? warp : warp == 4 ? 1 : warp == 5 ? 2 : 3, warp == 4 ? 2 : 3};
    if (whole) {   // bf16 inputs only (chunk_intra)
        if constexpr (!std::is_same_v<Tin, float>) {
            // The operands as the units left them: rows of i from QG (sq) and k̂ ⊙ 2^G (sk), rows of j from k̂ ⊙ 2^−G (sg),
            // each channel pair's hi and lo words, the fragment registers themselves (a k-step's channels and rows as
            // bf16_pairs': channel 2t's place holds the hi words of channels 2t, 2t + 1, 2t + 1's their lo). Channel
            // 16ks + 8h + 2t (+ 1) has the swizzle 4h + 8(ks mod 2), so a lane's rows 2g, 2g + 1 lie at one of two offsets
            // from its k-step's base, chosen once a k-step (ptxas recomputed each load's swizzle: 40 of a k-step's ~110
            // instructions).
            int lane_at[2][2];   // [ks mod 2][h]
#pragma unroll
            for (int p = 0; p < 2; ++p)
#pragma unroll
                for (int h = 0; h < 2; ++h) lane_at[p][h] = (2 * t + 8 * h) * kLdT + ((2 * g) ^ (4 * h + 8 * p));
            strided_for<KC ? 1 : 0>(0, (K + 15) / 16, 1, [&](int ks) {
                const int at[2] = {16 * ks * kLdT + (ks & 1 ? lane_at[1][0] : lane_at[0][0]),
                                   16 * ks * kLdT + (ks & 1 ? lane_at[1][1] : lane_at[0][1])};
                // Rows 2g, 2g + 1 of `block`'s 16 in channel 16ks + (2t, 2t + 1, 2t + 8, 2t + 9)[q]
                auto words = [&](const float* plane, int block, int q) {
                    const bool in = (KC != 0 && KC % 16 == 0) || 16 * ks + 8 * (q >> 1) + 2 * t + (q & 1) < K;
                    return in ? *reinterpret_cast<const uint2*>(plane + 16 * block + at[q >> 1] + (q & 1) * kLdT) : make_uint2(0u, 0u);
                };
                uint2 wb[4];
#pragma unroll
                for (int q = 0; q < 4; ++q) wb[q] = words(sg, whole_j, q);
                uint32_t bh[2][2], bl[2][2];   // [n-tile nt: row 2g + nt of j][k pair f]
#pragma unroll
                for (int f = 0; f < 2; ++f) {
                    bh[0][f] = wb[2 * f].x; bl[0][f] = wb[2 * f + 1].x;
                    bh[1][f] = wb[2 * f].y; bl[1][f] = wb[2 * f + 1].y;
                }
#pragma unroll
                for (int pp = 0; pp < 2; ++pp) {
                    if (pp == whole_blocks) break;
                    uint2 wq[4], wk[4];
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        wq[q] = words(sq, whole_i[pp], q);
                        wk[q] = words(sk, whole_i[pp], q);
                    }
                    uint32_t akh[4], akl[4], aqh[4], aql[4];   // fragment e: row 2g + (e & 1), k pair e >> 1
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int q = 2 * (e >> 1);
                        aqh[e] = e & 1 ? wq[q].y : wq[q].x; aql[e] = e & 1 ? wq[q + 1].y : wq[q + 1].x;
                        akh[e] = e & 1 ? wk[q].y : wk[q].x; akl[e] = e & 1 ? wk[q + 1].y : wk[q + 1].x;
                    }
                    if (warp < 4) mma_round(kk, qk, 2 * pp, akl, aql, bl);   // lo·lo too on the diagonal, as mild chunks' (below)
                    mma_round(kk, qk, 2 * pp, akh, aqh, bl);
                    mma_round(kk, qk, 2 * pp, akl, aql, bh);
                    mma_round(kk, qk, 2 * pp, akh, aqh, bh);
                }
            });
        }
    } else if (pairs) {
        const int n = w == 2 ? 47 : 16 * w + 15;   // the reference row
        // A k-step's lane (g, t) reads channels c + 2t, c + 2t + 1 (and for bf16 c + 8 + 2t, c + 9 + 2t) of rows 2g, 2g + 1:
        // the 4 channels an instruction reads (t = 0..3) share their swizzle sw, so a half-warp's 8-byte loads (g < 4 or
        // ≥ 4) hit 16 different bank pairs (34·(c + 2t) + (g ^ sw/2) ≡ 4t + (g ^ sw/2) + const mod 16). A product may sum
        // its k in any order, so A and B only need the same channels.
        if constexpr (std::is_same_v<Tin, float>) {   // 3xTF32 (m16n8k8): fp32's accuracy for the 1e-5 checks
#pragma unroll
            for (int pp = 0; pp < 2; ++pp) {
                const int ra = 16 * pi[pp] + 2 * g, rb = 16 * pj[pp] + 2 * g;   // rows 2g, 2g + 1 of i and of j
                for (int ks = 0; ks < (K + 7) / 8; ++ks) {   // k = t: channel 8ks + 2t; k = t + 4: the next
                    float ak[4], aq[4];   // a0 (row 2g, k = t), a1 (2g + 1, t), a2 (2g, t + 4), a3 (2g + 1, t + 4)
                    float bv[2][2];       // [n-tile nt: row 2g + nt of j][k = t, t + 4]
                    const int sw = transposed_swizzle(8 * ks);
#pragma unroll
                    for (int f = 0; f < 2; ++f) {
                        const int d = 8 * ks + 2 * t + f, xa = d * kLdT + (ra ^ sw), xb = d * kLdT + (rb ^ sw);
                        const bool in = d < K;
                        const float gnd = in ? sg[d * kLdT + (n ^ sw)] : 0.f;
                        const float2 kx = ld2(sk + xa, in), qx = ld2(sq + xa, in), gx = ld2(sg + xa, in);
                        const float s0 = in ? ex2(gx.x - gnd) : 0.f, s1 = in ? ex2(gx.y - gnd) : 0.f;
                        ak[2 * f] = kx.x * s0; ak[2 * f + 1] = kx.y * s1;
                        aq[2 * f] = qx.x * s0; aq[2 * f + 1] = qx.y * s1;
                        const float2 kb = ld2(sk + xb, in), gb = ld2(sg + xb, in);
                        bv[0][f] = in ? kb.x * ex2(gnd - gb.x) : 0.f;
                        bv[1][f] = in ? kb.y * ex2(gnd - gb.y) : 0.f;
                    }
                    const Tf32Frag<4> fk(ak), fq(aq);
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt) {
                        const Tf32Frag<2> fb(bv[nt]);
                        mma_acc(kk[2 * pp + nt], fk, fb);
                        mma_acc(qk[2 * pp + nt], fq, fb);
                    }
                }
            }
        } else {   // bf16 inputs: m16n8k16 on bf16 hi/lo parts, half the mma and k-steps (~2^-16 relative)
            auto bf16_pairs = [&](auto share_a) {   // share_a: warp 7's pairs share A, the others' share B
                constexpr bool kShareA = decltype(share_a)::value;
                const int ra[2] = {16 * pi[0] + 2 * g, 16 * pi[1] + 2 * g}, rb[2] = {16 * pj[0] + 2 * g, 16 * pj[1] + 2 * g};
                strided_for<KC ? 1 : 0>(0, (K + 15) / 16, 1, [&](int ks) {
                    // channel q: k = 2t, 2t + 1, 2t + 8, 2t + 9 for q = 0..3
                    const int ch[4] = {16 * ks + 2 * t, 16 * ks + 2 * t + 1, 16 * ks + 8 + 2 * t, 16 * ks + 9 + 2 * t};
                    const int sw[2] = {transposed_swizzle(16 * ks), transposed_swizzle(16 * ks + 8)};   // of ch[0, 1], ch[2, 3]
                    bool in[4];
                    float gnv[4];
#pragma unroll
                    for (int q = 0; q < 4; ++q) {   // with K a constant multiple of 16 every channel is in range
                        in[q] = (KC != 0 && KC % 16 == 0) || ch[q] < K;
                        gnv[q] = in[q] ? sg[ch[q] * kLdT + (n ^ sw[q >> 1])] : 0.f;
                    }
                    uint32_t akh[2][4], akl[2][4], aqh[2][4], aql[2][4];   // [pair][e]: fragment row g + 8(e & 1), the sub-chunk's row 2g + (e & 1); k pair e >> 1
#pragma unroll
                    for (int pp = 0; pp < (kShareA ? 1 : 2); ++pp) {
                        float kv[2][4], qv[2][4];   // [row 2g + half][channel q]
#pragma unroll
                        for (int q = 0; q < 4; ++q) {
                            const int x = ch[q] * kLdT + (ra[pp] ^ sw[q >> 1]);
                            const float2 kx = ld2(sk + x, in[q]), qx = ld2(sq + x, in[q]), gx = ld2(sg + x, in[q]);
                            const float s0 = in[q] ? ex2(gx.x - gnv[q]) : 0.f, s1 = in[q] ? ex2(gx.y - gnv[q]) : 0.f;
                            kv[0][q] = kx.x * s0; kv[1][q] = kx.y * s1;
                            qv[0][q] = qx.x * s0; qv[1][q] = qx.y * s1;
                        }
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            split_bf16x2(kv[e & 1][2 * (e >> 1)], kv[e & 1][2 * (e >> 1) + 1], akh[pp][e], akl[pp][e]);
                            split_bf16x2(qv[e & 1][2 * (e >> 1)], qv[e & 1][2 * (e >> 1) + 1], aqh[pp][e], aql[pp][e]);
                        }
                    }
                    uint32_t bh[2][2][2], bl[2][2][2];   // [pair][n-tile nt: row 2g + nt of j][k pair f]
#pragma unroll
                    for (int pp = 0; pp < (kShareA ? 2 : 1); ++pp) {
                        float bv[2][4];   // [n-tile][channel q]
#pragma unroll
                        for (int q = 0; q < 4; ++q) {
                            const int x = ch[q] * kLdT + (rb[pp] ^ sw[q >> 1]);
                            const float2 kx = ld2(sk + x, in[q]), gx = ld2(sg + x, in[q]);
                            bv[0][q] = in[q] ? kx.x * ex2(gnv[q] - gx.x) : 0.f;
                            bv[1][q] = in[q] ? kx.y * ex2(gnv[q] - gx.y) : 0.f;
                        }
#pragma unroll
                        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                            for (int f = 0; f < 2; ++f) split_bf16x2(bv[nt][2 * f], bv[nt][2 * f + 1], bh[pp][nt][f], bl[pp][nt][f]);
                    }
                    auto round = [&](const uint32_t (&ak)[2][4], const uint32_t (&aq)[2][4], const uint32_t (&bb)[2][2][2]) {
#pragma unroll
                        for (int pp = 0; pp < 2; ++pp)   // both pairs' accumulators (A or B shared: kShareA)
                            mma_round(kk, qk, 2 * pp, ak[kShareA ? 0 : pp], aq[kShareA ? 0 : pp], bb[kShareA ? pp : 0]);
                    };
                    round(akh, aqh, bl);
                    round(akl, aql, bh);
                    round(akh, aqh, bh);
                });
            };
            if (w == 2) bf16_pairs(std::true_type{});
            else bf16_pairs(std::false_type{});
        }
    } else if (mild) {   // bf16 inputs only (chunk_intra)
        if constexpr (!std::is_same_v<Tin, float>) {
            if (warp < 4) {   // diagonal block (w, w) through its first row n: 2^(G_r − G_n) ≤ 1, 2^(G_n − G_s) ≤ 2^kMildRange
                const int n = 16 * warp, ra = n + 2 * g;
                strided_for<KC ? 1 : 0>(0, (K + 15) / 16, 1, [&](int ks) {
                    // As bf16_pairs, with B's rows the A rows' own: one load of a channel's two rows serves both.
                    const int ch[4] = {16 * ks + 2 * t, 16 * ks + 2 * t + 1, 16 * ks + 8 + 2 * t, 16 * ks + 9 + 2 * t};
                    const int sw[2] = {transposed_swizzle(16 * ks), transposed_swizzle(16 * ks + 8)};
                    float kv[2][4], qv[2][4], bv[2][4];   // [row 2g + half][channel q]: A's k, q; B's k (n-tile half)
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        const bool in = (KC != 0 && KC % 16 == 0) || ch[q] < K;
                        const int x = ch[q] * kLdT + (ra ^ sw[q >> 1]);
                        const float gn = in ? sg[ch[q] * kLdT + (n ^ sw[q >> 1])] : 0.f;
                        const float2 kx = ld2(sk + x, in), qx = ld2(sq + x, in), gx = ld2(sg + x, in);
                        const float s0 = ex2(gx.x - gn), s1 = ex2(gx.y - gn), b0 = ex2(gn - gx.x), b1 = ex2(gn - gx.y);
                        kv[0][q] = kx.x * s0; kv[1][q] = kx.y * s1;
                        qv[0][q] = qx.x * s0; qv[1][q] = qx.y * s1;
                        bv[0][q] = kx.x * b0; bv[1][q] = kx.y * b1;
                    }
                    uint32_t akh[4], akl[4], aqh[4], aql[4], bh[2][2], bl[2][2];
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        split_bf16x2(kv[e & 1][2 * (e >> 1)], kv[e & 1][2 * (e >> 1) + 1], akh[e], akl[e]);
                        split_bf16x2(qv[e & 1][2 * (e >> 1)], qv[e & 1][2 * (e >> 1) + 1], aqh[e], aql[e]);
                    }
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                        for (int f = 0; f < 2; ++f) split_bf16x2(bv[nt][2 * f], bv[nt][2 * f + 1], bh[nt][f], bl[nt][f]);
                    // All four products of the parts, lo·lo too: a diagonal block holds each row's largest pairs (those
                    // nearest the row decay least), so it keeps fp32's ~2^-24 where the other blocks take ~2^-16.
                    mma_round(kk, qk, 0, akl, aql, bl);
                    mma_round(kk, qk, 0, akh, aqh, bl);
                    mma_round(kk, qk, 0, akl, aql, bh);
                    mma_round(kk, qk, 0, akh, aqh, bh);
                });
            }
        }
    } else {
        struct TileRows { float kr[4], qr[4], gr[4], ks[4], gs[4]; };   // channel d of the tile's rows (k, q, G) and columns (k, G)
        auto rows4 = [](const float* p, float (&x)[4]) {
            const float4 v = *reinterpret_cast<const float4*>(p);
            x[0] = v.x; x[1] = v.y; x[2] = v.z; x[3] = v.w;
        };
        auto tile_rows = [&](int d) {   // (a diagonal tile's columns are its rows: ks, gs unused there, so never loaded)
            TileRows x;
            const int sw = transposed_swizzle(d), a = d * kLdT + ((4 * ta) ^ sw), b = d * kLdT + ((4 * tb) ^ sw);
            rows4(sk + a, x.kr); rows4(sq + a, x.qr); rows4(sg + a, x.gr);
            rows4(sk + b, x.ks); rows4(sg + b, x.gs);
            return x;
        };
        if (!diag) {
            strided_for<KC ? 2 : 0>(part, K, 4, [&](int d) {
                auto [kr, qr, gr, ks, gs] = tile_rows(d);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const float er = ex2(gr[i] - gs[3]);
                    kr[i] *= er; qr[i] *= er;
                }
#pragma unroll
                for (int j = 0; j < 3; ++j) ks[j] *= ex2(gs[3] - gs[j]);
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) { kk[i][j] += kr[i] * ks[j]; qk[i][j] += qr[i] * ks[j]; }
            });
        } else {
            strided_for<KC ? 2 : 0>(part, K, 4, [&](int d) {
                const TileRows x = tile_rows(d);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
#pragma unroll
                    for (int j = 0; j < i; ++j) {   // s < r: 2^(G_r − G_s); nothing reads the pairs above the diagonal
                        const float e = x.kr[j] * ex2(x.gr[i] - x.gr[j]);
                        kk[i][j] += x.kr[i] * e;
                        qk[i][j] += x.qr[i] * e;
                    }
                    kk[i][i] += x.kr[i] * x.kr[i];   // s = r: 2^0, no exponential
                    qk[i][i] += x.qr[i] * x.kr[i];
                }
            });
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j)   // the 4 parts of a tile (lanes 8 apart) meet by shuffle
#pragma unroll
                for (int m = 8; m <= 16; m <<= 1) {
                    kk[i][j] += __shfl_xor_sync(0xffffffffu, kk[i][j], m);
                    qk[i][j] += __shfl_xor_sync(0xffffffffu, qk[i][j], m);
                }
    }
    __syncthreads();   // q is dead: L and A take its place
    // Block (i, j) from a tensor-core warp's accumulators at pair pp: row 2g + half of i, columns 4t .. 4t + 3 of j (n-tile
    // 0's columns 2t, 2t + 1 are j's rows 4t, 4t + 2, n-tile 1's 4t + 1, 4t + 3); one 16-byte store a plane (a
    // quarter-warp's 8 in 32 banks: 18·(2g + half) + t ≡ 4g + 2half + t mod 8).
    auto store_block = [&](int i, int j, int pp) {   // (whole-mild chunks' operands hold the rows' norms already)
        const int sc = 16 * j + 4 * t;
        const float4 ns = whole ? make_float4(1.f, 1.f, 1.f, 1.f) : *reinterpret_cast<const float4*>(snorm + kChunk + sc);
        const float (&d0)[4] = kk[2 * pp], (&d1)[4] = kk[2 * pp + 1], (&e0)[4] = qk[2 * pp], (&e1)[4] = qk[2 * pp + 1];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int r = 16 * i + 2 * g + half, x = r * kLdL + sc, e = 2 * half;
            const float lr = whole ? sb[r] : sb[r] * snorm[kChunk + r], ar = whole ? 1.f : snorm[r];
            *reinterpret_cast<float4*>(sl + x) = make_float4(lr * ns.x * d0[e], lr * ns.y * d1[e], lr * ns.z * d0[e + 1], lr * ns.w * d1[e + 1]);
            *reinterpret_cast<float4*>(sa + x) = make_float4(ar * ns.x * e0[e], ar * ns.y * e1[e], ar * ns.z * e0[e + 1], ar * ns.w * e1[e + 1]);
        }
    };
    if (whole) {
        store_block(whole_i[0], whole_j, 0);
        if (whole_blocks == 2) store_block(whole_i[1], whole_j, 1);
    } else if (pairs) {
#pragma unroll
        for (int pp = 0; pp < 2; ++pp) store_block(pi[pp], pj[pp], pp);
    } else if (mild) {
        if (warp < 4) store_block(warp, warp, 0);   // above the diagonal too: the solve overwrites it, write_a zeroes it
    } else if (part == 0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {   // a tile row in one 16-byte store (diagonal tiles: the zeros above it too, never read)
            const int r = 4 * ta + i, x = r * kLdL + 4 * tb;
            const float lr = sb[r] * snorm[kChunk + r], ar = snorm[r];
            const float4 ns = *reinterpret_cast<const float4*>(snorm + kChunk + 4 * tb);   // n_k of the tile's columns
            *reinterpret_cast<float4*>(sl + x) = make_float4(lr * ns.x * kk[i][0], lr * ns.y * kk[i][1], lr * ns.z * kk[i][2],
                lr * ns.w * kk[i][3]);
            *reinterpret_cast<float4*>(sa + x) = make_float4(ar * ns.x * qk[i][0], ar * ns.y * qk[i][1], ar * ns.z * qk[i][2],
                ar * ns.w * qk[i][3]);
        }
    }
}

// A hint to L2 to fetch the 128-byte line holding p (common.cuh's prefetch_l2; kda.cu does not include common.cuh,
// whose bf16 helpers it defines its own way). A no-op in the emulator.
__device__ __forceinline__ void prefetch_line_l2(const void* p) {
#ifndef KDA_EMULATE
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
#endif
}

// Intra block `block`'s rows of q, k, g and v requested into L2 (prefetch hints: nothing returns, no register waits).
// Blocks start in index order as others end, so block b + kIntraPrefetchAhead starts some microseconds after block b
// asks (~8 at K = V = 128 on 132 SMs: 264 blocks resident, each living ~32 µs): its loads then hit L2 where they were
// DRAM round trips (a third of the load phase's stall samples, run 79). Issued once this block's own loads are in, by
// its last two warps, a lane a row, every 128-byte line of it: the span lookup and addresses once a row (a thread per
// row and tensor on all 8 warps cost 2 % of the block's instructions, run 86).
template <typename Tin>
__device__ __forceinline__ void prefetch_intra_rows(int block, int H, int K, int V, int num_seqs,
    const int* __restrict__ cu_seqlens, const int* __restrict__ chunk_offsets, const Tin* q, const Tin* k, const Tin* v,
    const float* g, int tid) {
    static_assert(kIntraThreads >= 2 * kChunk, "a lane a row on the last two warps");
    const int r = tid - (kIntraThreads - kChunk);
    if (r < 0 || block >= (int)gridDim.x) return;
    const int c = block / H, h = block - c * H;
    int t0, len;
    chunk_span(c, num_seqs, cu_seqlens, chunk_offsets, t0, len);
    if (r >= len) return;
    const size_t row = (size_t)(t0 + r) * H + h;
    const char* pq = reinterpret_cast<const char*>(q + row * K);
    const char* pk = reinterpret_cast<const char*>(k + row * K);
    const char* pg = reinterpret_cast<const char*>(g + row * K);
    const char* pv = reinterpret_cast<const char*>(v + row * V);
    for (int b = 0; b < K * (int)sizeof(Tin); b += 128) { prefetch_line_l2(pq + b); prefetch_line_l2(pk + b); }
    for (int b = 0; b < K * (int)sizeof(float); b += 128) prefetch_line_l2(pg + b);
    for (int b = 0; b < V * (int)sizeof(Tin); b += 128) prefetch_line_l2(pv + b);
}

// ---------------------------------------------------------------------------------------------------------------------
// Chunk-local work (see MATH). Block (c, h). KC: K as a compile-time constant (128, the model's, for bf16 inputs:
// immediate shared-memory offsets, intra −2 to −7 %, runs 63–66), or 0 for any K (fp32 inputs always: with K constant
// ptxas spilled more there still, 224 bytes against 156; kernels/kda/NOTES.md, intra C1).
template <typename Tin, int KC>
__device__ __forceinline__ void chunk_intra(int H, int k_any, int V, int num_seqs, const int* __restrict__ cu_seqlens,
    const int* __restrict__ chunk_offsets, const Tin* __restrict__ q, const Tin* __restrict__ k,
    const Tin* __restrict__ v, const float* __restrict__ g, const float* __restrict__ beta, float* __restrict__ w_out,
    float* __restrict__ u_out, float* __restrict__ a_out, float* __restrict__ qg_out, float* __restrict__ kg_out,
    float* __restrict__ gamma_out) {
    const int K = KC ? KC : k_any;
    // Consecutive blocks take the heads of one chunk: together they read whole token rows of q, k, v, g and write one
    // contiguous run of scratch, where blocks (c, h), (c + 1, h) were rows H·K apart.
    const int c = blockIdx.x / H, h = blockIdx.x - c * H, tid = threadIdx.x;
    int t0, len;
    chunk_span(c, num_seqs, cu_seqlens, chunk_offsets, t0, len);
    const float beta_t = tid < len ? beta[(size_t)(t0 + tid) * H + h] : 0.f;   // in flight with the loads below
    const size_t cc = (size_t)c * H + h;

    // q is dead once the pair products are summed, so L and A then take its place: 108.9 KiB in all for K = V = 128, which
    // lets 2 blocks share an SM (with ≤ 128 registers, __launch_bounds__ below) and hide each other's serial phases.
    // q and k stay as loaded: the rows' norms (snorm) scale every product's result and QG, KG, W as they are formed, so
    // no pass rewrites them (the products are bilinear in q̂ = n_q·q, k̂ = n_k·k; the pass was 6 % of the instructions).
    float* sk = smem();                  // [K][kLdT] k, a channel a row (transposed_at)
    float* sg = sk + K * kLdT;           // [K][kLdT] g, then G (log2 units); rows ≥ len hold G_last
    float* sq = sg + K * kLdT;           // [K][kLdT] q, until the pair tiles are summed
    float* sl = sq;                      // [64][kLdL] L (below the diagonal), after the pair tiles
    float* sa = sl + kChunk * kLdL;      // [64][kLdL] A (on and below the diagonal), after the pair tiles; then rows of v
    float* sb = sq + chunk_intra_q_floats(K, V);   // [64] β (0 past the end)
    float* snorm = sb + kChunk;          // [128] n_q = 1/‖q_r‖·K^-½, then n_k = 1/‖k_r‖
    float* sglast = sq + K * kLdT;       // [K] G_last, a channel's decay over the chunk (past q: until L and A)

    // Loads in units of 8 rows × 32 channels a warp (unit u: rows 8(u mod 8) .., channels 32⌊u/8⌋ ..; warp w the units
    // w, w + 8, …, all of rows 8w .. 8w + 7): lane (j, p) = (lane mod 8, lane / 8) takes the unit's rows 2p, 2p + 1 and
    // its channels 4j .. 4j + 3 (8 bytes of bf16, 16 of fp32 a row; K % 4 == 0 keeps them aligned), so a load instruction
    // takes 4 rows × 64 or 128 contiguous bytes, and each channel's two rows go to shared memory in one 8-byte store: a
    // half-warp's 16 (j = 0..7, p = 0, 1) hit 16 different bank pairs (34·(4j + i) + (4w ^ 2σ_j) + p ≡ 8(j mod 2) + (4w ^
    // 2⌊j/2⌋) + p + 2i mod 16, σ the swizzle). The loads are kept raw until their stores and all issued before them: 4
    // units a thread for bf16 (one latency round for K = 128, in 64 registers), 2 for fp32 (two rounds: four would take
    // the registers that the second block per SM needs).
    constexpr int kUnits = sizeof(Tin) == 2 ? 4 : 2;
    const int units = 8 * ((K + 31) / 32), lane_quad = tid & 7, lane_pair = (tid >> 3) & 3;
    auto unit_row = [&](int u) { return 8 * (u & 7) + 2 * lane_pair; };         // this lane's first row of unit u
    auto unit_channel = [&](int u) { return 32 * (u >> 3) + 4 * lane_quad; };   // and its first channel
    // The rows' L2 norms are summed on the way: a row's channels all lie in one warp, so this thread sums Σq², Σk² of its
    // channels of its two rows and the row's 8 lanes meet by shuffles below. (A separate pass, one thread a row reading
    // it back from shared memory, was ~10 % of the stall samples.)
    float qss[2] = {0.f, 0.f}, kss[2] = {0.f, 0.f};
    // kFull: a whole chunk (len = 64) at K = KC = 128 for bf16, where every unit, channel and row of this thread's one
    // round is in range, so none is tested (ISETP alone was 595 of the phase's 7.7K warp instructions a block in run
    // 86's profile; without the tests intra −1.3 to −1.5 % at T = 65,536 and B = 8, run 102).
    auto load_rows = [&](auto full) {
        constexpr bool kFull = decltype(full)::value;
        for (int u0 = tid >> 5; kFull || u0 < units; u0 += 8 * kUnits) {
            // Unit u0 + 8i has u0's rows and the channels 32i further on, so a row's loads share one address, and a
            // channel's rows one swizzle (xs): ptxas computed each load's 64-bit address and each store's swizzle anew.
            const int r0 = unit_row(u0), d0 = unit_channel(u0), xs = transposed_at(d0, r0);
            const size_t xr[2] = {((size_t)(t0 + r0) * H + h) * K + d0, ((size_t)(t0 + r0 + 1) * H + h) * K + d0};
            decltype(ld4_raw(k)) kx[kUnits][2], qx[kUnits][2];   // [unit][row]
            float4 gx[kUnits][2];
#pragma unroll
            for (int i = 0; i < kUnits; ++i)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const bool in = kFull || (u0 + 8 * i < units && d0 + 32 * i < K && r0 + e < len);
                    const size_t x = xr[e] + 32 * i;
                    kx[i][e] = in ? ld4_raw(k + x) : decltype(ld4_raw(k)){};
                    qx[i][e] = in ? ld4_raw(q + x) : decltype(ld4_raw(q)){};
                    gx[i][e] = in ? *reinterpret_cast<const float4*>(g + x) : make_float4(0.f, 0.f, 0.f, 0.f);
                }
#pragma unroll
            for (int i = 0; i < kUnits; ++i) {
                if (kFull || (u0 + 8 * i < units && d0 + 32 * i < K)) {
                    const float4 k0 = widen(kx[i][0]), k1 = widen(kx[i][1]), q0 = widen(qx[i][0]), q1 = widen(qx[i][1]);
                    const float4 g0 = gx[i][0], g1 = gx[i][1];
                    auto put = [&](float* a, int ch, float x0, float x1) {   // channel d0 + 32i + ch of rows r0, r0 + 1
                        *reinterpret_cast<float2*>(a + xs + (32 * i + ch) * kLdT) = make_float2(x0, x1);
                    };
                    put(sk, 0, k0.x, k1.x); put(sk, 1, k0.y, k1.y); put(sk, 2, k0.z, k1.z); put(sk, 3, k0.w, k1.w);
                    put(sq, 0, q0.x, q1.x); put(sq, 1, q0.y, q1.y); put(sq, 2, q0.z, q1.z); put(sq, 3, q0.w, q1.w);
                    put(sg, 0, g0.x * kLog2e, g1.x * kLog2e); put(sg, 1, g0.y * kLog2e, g1.y * kLog2e);
                    put(sg, 2, g0.z * kLog2e, g1.z * kLog2e); put(sg, 3, g0.w * kLog2e, g1.w * kLog2e);
                    qss[0] += (q0.x * q0.x + q0.y * q0.y) + (q0.z * q0.z + q0.w * q0.w);
                    qss[1] += (q1.x * q1.x + q1.y * q1.y) + (q1.z * q1.z + q1.w * q1.w);
                    kss[0] += (k0.x * k0.x + k0.y * k0.y) + (k0.z * k0.z + k0.w * k0.w);
                    kss[1] += (k1.x * k1.x + k1.y * k1.y) + (k1.z * k1.z + k1.w * k1.w);
                }
            }
            if constexpr (kFull) break;   // one round: 8 warps × 4 units cover 64 rows × 128 channels
        }
    };
    if constexpr (KC == 128 && sizeof(Tin) == 2) {
        if (len == kChunk) load_rows(std::true_type{});
        else load_rows(std::false_type{});
    } else {
        load_rows(std::false_type{});
    }
    prefetch_intra_rows(blockIdx.x + kIntraPrefetchAhead, H, K, V, num_seqs, cu_seqlens, chunk_offsets, q, k, v, g, tid);
    // L2-normalise the rows (q also scaled by K^-½) in fp32, like the decode step, so prefill and decode agree.
    bool odd_rows = false;   // a row's norm out of kMildNorm*'s range (neither mild nor whole-mild)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
#pragma unroll
        for (int m = 1; m < 8; m <<= 1) {
            qss[e] += __shfl_xor_sync(0xffffffffu, qss[e], m);
            kss[e] += __shfl_xor_sync(0xffffffffu, kss[e], m);
        }
        const int r = 8 * (tid >> 5) + 2 * lane_pair + e;
        if (lane_quad == 0) {
            snorm[r] = 1.0f / sqrtf(qss[e] + kL2Eps) * (1.0f / sqrtf((float)K));
            snorm[kChunk + r] = 1.0f / sqrtf(kss[e] + kL2Eps);
        }
        auto mild_norm = [](float ss) { return ss == 0.f || (ss >= kMildNormSqMin && ss <= kMildNormSqMax); };   // NaN: no
        odd_rows |= !(mild_norm(qss[e]) && mild_norm(kss[e]));
    }
    if (tid < kChunk) sb[tid] = beta_t;
    __syncthreads();
    bool steep = false, wide = false;   // a 16-row block decays by more than kMildRange; the chunk by more than kWholeMildRange
    if (tid < K) {   // G: the channel's running sum, its row read in 16-byte pieces first (channel d's row starts in bank
                     // 4d and its 4-row groups move by one swizzle, so a quarter-warp's 8 channels hit 32 banks), so the
                     // sum waits on no shared-memory load
        float* row = sg + tid * kLdT;
        const int sw = transposed_swizzle(tid);
        // Row r = 16m + 4j lies at 16m + (4j ^ sw): the swizzle (< 16) moves 4-row groups within their 16 only.
        const int low[4] = {0 ^ sw, 4 ^ sw, 8 ^ sw, 12 ^ sw};
        auto at = [&](int r) { return (r & ~15) + low[(r & 15) >> 2]; };
        float col[kChunk];
#pragma unroll
        for (int r = 0; r < kChunk; r += 4) {
            const float4 x = *reinterpret_cast<const float4*>(row + at(r));
            col[r] = x.x; col[r + 1] = x.y; col[r + 2] = x.z; col[r + 3] = x.w;
        }
        float run = 0.f;
#pragma unroll
        for (int r = 0; r < kChunk; ++r) {
            run += col[r];   // rows ≥ len add 0
            col[r] = run;
        }
#pragma unroll
        for (int r = 0; r < kChunk; r += 4)
            *reinterpret_cast<float4*>(row + at(r)) = make_float4(col[r], col[r + 1], col[r + 2], col[r + 3]);
        gamma_out[cc * K + tid] = ex2(run);
        sglast[tid] = run;
        wide = !(-run <= kWholeMildRange);
#pragma unroll
        for (int b = 0; b < kChunk; b += 16) steep |= !(col[b] - col[b + 15] <= kMildRange);
    }
    // Mild (kMildRange): pair_products' diagonal blocks on tensor cores; of those, whole-mild (kWholeMildRange): the
    // units below form every operand once and all products read them. Else the exact element-wise tiles. (bf16 inputs;
    // steep chunks pass one barrier here, as before whole-mild ones existed.)
    bool whole = false, mild = false;
    if constexpr (std::is_same_v<Tin, float>) __syncthreads();
    else {
        mild = !__syncthreads_or(odd_rows || steep);
        whole = mild && !__syncthreads_or(wide);   // (mild is the block's: all or none call it)
        mild = mild && !whole;
    }

    // QG, KG: the tensor-core warps 5-7 take kIntraMmaQgUnits units each (the last ones; fewer where K is small), the
    // tile warps 0-4 the rest (warp w the units w, w + 5, …), so that both kinds of warp end the pair products below
    // together (all 8 sharing them evenly held the tile warps at the barrier, run 13; none on warps 5-7 left those idle
    // since their products share operands, run 76). In the loads' units, each lane's two rows of a channel in one 8-byte
    // read (bank pairs as the stores'), each row out in 8- or 16-byte pieces, a row's 8 lanes writing 64 or 128
    // contiguous bytes.
    // Rows ≥ len are 0 because q, k are.
    using Store = OperandStore<Tin>;
    using Op = typename Store::T;
    const int kn = Store::row_length(K), plane_k = kChunk * kn;   // a [64][K] operand's rows and plane, as stored
    Op* qg_blk = reinterpret_cast<Op*>(qg_out) + cc * Store::kPlanes * plane_k;
    Op* kg_blk = reinterpret_cast<Op*>(kg_out) + cc * Store::kPlanes * plane_k;
    Op* w_blk = reinterpret_cast<Op*>(w_out) + cc * Store::kPlanes * plane_k;
    for (int i = tid; i < kChunk * (kn - K); i += kIntraThreads) {   // bf16 rows padded to KP: zero columns
        const int r = i / (kn - K), x = Store::at(r, K + i % (kn - K), kn);
        Store::put(qg_blk + x, plane_k, 0.f); Store::put(kg_blk + x, plane_k, 0.f);   // W's: wu_columns
    }
    {
        // (In mild chunks the tensor-core warps have more products than the others and take no units. In whole-mild
        // ones all 8 warps take them, 8 apart, and a barrier follows: each unit also puts its elements' operands for
        // every product, QG, k̂ ⊙ 2^G and k̂ ⊙ 2^−G, split, in the places of q, k and G that it alone reads.)
        // One instance for whole-mild chunks, one for the others (whose code then is what it was before them: as one
        // loop with the whole-mild work behind run-time branches, steep chunks' intra ran 1.5-2.5 % slower, run 179).
        auto qg_kg_units = [&](auto whole_tag) {
            constexpr bool kWhole = decltype(whole_tag)::value;
            const int warp = tid >> 5, tile_units = units - (mild ? 0 : 3 * min(kIntraMmaQgUnits, units / 8));
            const int u0 = kWhole ? warp : warp < 5 ? warp : tile_units + warp - 5, step = kWhole ? 8 : warp < 5 ? 5 : 3;
            const int end = kWhole || warp >= 5 ? units : tile_units;
            for (int u = u0; u < end; u += step) {
                const int r = unit_row(u), d = unit_channel(u);
                if (d >= K) continue;
                const float2 nq = *reinterpret_cast<const float2*>(snorm + r), nk = *reinterpret_cast<const float2*>(snorm + kChunk + r);
                float qv[2][4], kv[2][4], ka[2][4], kb[2][4];   // [row r + e][channel d + i]; ka, kb: k̂ ⊙ 2^±G (whole-mild)
                // Channels d .. d + 3 (d % 4 == 0) share their swizzle, so their rows lie kLdT apart: one address for all four
                // (ptxas did not see it, and recomputed each channel's swizzle: ~20 instructions a unit).
                const int x0 = transposed_at(d, r);
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int x = x0 + i * kLdT;
                    const float2 G = *reinterpret_cast<const float2*>(sg + x), qx = *reinterpret_cast<const float2*>(sq + x),
                        kx = *reinterpret_cast<const float2*>(sk + x);
                    const float G_last = sglast[d + i], s0 = ex2(G.x), s1 = ex2(G.y);
                    qv[0][i] = qx.x * nq.x * s0; qv[1][i] = qx.y * nq.y * s1;
                    kv[0][i] = kx.x * nk.x * ex2(G_last - G.x); kv[1][i] = kx.y * nk.y * ex2(G_last - G.y);
                    if constexpr (kWhole) {
                        const float k0 = kx.x * nk.x, k1 = kx.y * nk.y;
                        ka[0][i] = k0 * s0; ka[1][i] = k1 * s1;
                        kb[0][i] = k0 * ex2(-G.x); kb[1][i] = k1 * ex2(-G.y);
                    }
                }
                if constexpr (kWhole) {   // each pair of channels split once, for QG's planes and the products alike
                    // Channels d + 2p, d + 2p + 1 of rows r + e as split_bf16x2's hi and lo words: the products' fragment
                    // registers as they are (pair_products, wu_columns), hi in channel d + 2p's place, lo in the next's.
                    auto put_pairs = [&](float* plane, const float (&x)[2][4], uint32_t (&hi)[2][2], uint32_t (&lo)[2][2]) {
#pragma unroll
                        for (int p = 0; p < 2; ++p) {
#pragma unroll
                            for (int e = 0; e < 2; ++e) split_bf16x2(x[e][2 * p], x[e][2 * p + 1], hi[e][p], lo[e][p]);
                            *reinterpret_cast<uint2*>(plane + x0 + 2 * p * kLdT) = make_uint2(hi[0][p], hi[1][p]);
                            *reinterpret_cast<uint2*>(plane + x0 + (2 * p + 1) * kLdT) = make_uint2(lo[0][p], lo[1][p]);
                        }
                    };
                    uint32_t qh[2][2], ql[2][2], kh[2][2], kl[2][2];   // (k's only stored)
                    put_pairs(sq, qv, qh, ql);
                    put_pairs(sk, ka, kh, kl);
                    put_pairs(sg, kb, kh, kl);
#pragma unroll
                    for (int e = 0; e < 2; ++e) {   // QG's planes are the same words (OperandStore::put4's split)
                        const int x = Store::at(r + e, d, kn);
                        *reinterpret_cast<uint2*>(qg_blk + x) = make_uint2(qh[e][0], qh[e][1]);
                        *reinterpret_cast<uint2*>(qg_blk + plane_k + x) = make_uint2(ql[e][0], ql[e][1]);
                        Store::put4(kg_blk + x, plane_k, make_float4(kv[e][0], kv[e][1], kv[e][2], kv[e][3]));
                    }
                } else {
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int x = Store::at(r + e, d, kn);
                        Store::put4(qg_blk + x, plane_k, make_float4(qv[e][0], qv[e][1], qv[e][2], qv[e][3]));
                        Store::put4(kg_blk + x, plane_k, make_float4(kv[e][0], kv[e][1], kv[e][2], kv[e][3]));
                    }
                }
            }
        };
        if constexpr (std::is_same_v<Tin, float>) qg_kg_units(std::false_type{});
        else if (whole) qg_kg_units(std::true_type{});
        else qg_kg_units(std::false_type{});
    }

    if (whole) __syncthreads();   // every operand formed
    pair_products<Tin, KC>(K, tid, sk, sg, sq, sb, snorm, sl, sa, mild, whole);
    __syncthreads();
    Op* a_blk = reinterpret_cast<Op*>(a_out) + cc * Store::kPlanes * kChunk * kChunk;
    auto write_a = [&](int thread, int threads) {   // A, coalesced, with the upper triangle (s > r) zero
        for (int i = thread; i < kChunk * kChunk / 4; i += threads) {
            const int r = i / (kChunk / 4), s = 4 * (i % (kChunk / 4));
            const float4 x = *reinterpret_cast<const float4*>(sa + r * kLdL + s);   // one 16-byte read: no bank conflicts
            Store::put4(a_blk + Store::at(r, s, kChunk), kChunk * kChunk, make_float4(s <= r ? x.x : 0.f, s + 1 <= r ? x.y : 0.f,
                s + 2 <= r ? x.z : 0.f, s + 3 <= r ? x.w : 0.f));
        }
    };
    float* u_blk = u_out + cc * kChunk * V;   // U slice-major: each scan block's [64][32] contiguous
    if constexpr (std::is_same_v<Tin, float>) {
        write_a(tid, kIntraThreads);
        __syncthreads();
        substitute_wu(K, V, H, h, t0, len, tid, v, sk, sg, sb, snorm + kChunk, sl, sa, w_blk, u_blk);
    } else {
        // bf16 inputs: W = T'·K̃ and U = T'·v as bf16 tensor-core products, T' = (I + L)⁻¹·Diag(β), K̃ = k̂ ⊙ 2^G. Warps 0-3
        // solve for T' while warps 4-7 write A out and stage v's rows in its place (and little else: what they add there
        // slows the solve, which holds up the block; NOTES, intra B3 and B10); then all 8 warps form W and U in units of
        // 16 columns (W's KP/16, then U's V/16; warp w the units w, w + 8, …).
        const int warp = tid >> 5;
        if (warp < 4) {
            solve_t(tid, sl, sb, sq + chunk_intra_t_scratch(V));
        } else {
            write_a(tid - 128, kIntraThreads - 128);
            named_barrier(2, kIntraThreads - 128);   // A is read: v's rows may take its place
            stage_v_rows(V, H, h, t0, len, tid - 128, kIntraThreads - 128, v, reinterpret_cast<uint16_t*>(sa));
        }
        __syncthreads();
        const uint16_t* st = reinterpret_cast<const uint16_t*>(sl);
        const uint16_t* sv = reinterpret_cast<const uint16_t*>(sa);
        const int w_units = kn / 16, units = w_units + V / 16;
        for (int u = warp; u < units; u += kIntraThreads / 32) {
            if (u < w_units) wu_columns<true, KC>(K, V, 16 * u, tid & 31, sk, sg, snorm + kChunk, whole, st, sv, w_blk, plane_k, u_blk);
            else wu_columns<false, KC>(K, V, 16 * (u - w_units), tid & 31, sk, sg, snorm + kChunk, whole, st, sv, w_blk, plane_k, u_blk);
        }
    }
}

// The scan's operands in shared memory, by input dtype (see OperandStore). Each keeps, per block: the state slice
// [KP][32] and Vn [64][32] as split B operands (written once a chunk by the warps that form them), W, QG [64][KP] and
// KG [64][KP] (read transposed) as this chunk's A operands, A [64][64] double-buffered, U [64][32] and γ [KP] in fp32;
// and forms the scan's four products from them, each as three tensor-core products of split parts (d += big·big,
// c += big·small + small·big; the caller adds c to d once its k loop ends, so each k-step's mma form two short
// dependency chains). Rows of K padded to KP: columns [K, KP) of W, QG, KG are zero, so are γ's entries there.
template <typename Tin, int KP> struct ScanOperands;
// The intra kernel's outputs, as the scan reads them (LAYOUTS).
struct ScanInputs { const float *w, *u, *a, *qg, *kg, *gamma; };

// fp32 inputs: the stages in fp32, split into tf32 big and small parts as the fragments load (mma m16n8k8; lane
// = 4g + t); the state and Vn stored split, as tf32 bit patterns. Row strides ≡ 4 mod 32 for A operands, ≡ 8 mod 32
// for B operands and transposed reads: the 32 lanes' loads fall in 32 different banks.
template <int KP> struct ScanOperands<float, KP> {
    static constexpr int LD = kScanLd, ALD = kChunk + 4, XLD = KP + 4, KGLD = KP + 8;
    static constexpr size_t kBytes = sizeof(float) * (2 * KP * LD + 2 * kChunk * XLD + kChunk * KGLD + 2 * kChunk * ALD +
        3 * kChunk * LD + KP);
    uint32_t* ssb;   // [KP][LD] state slice, tf32 big parts (rows ≥ K zero)
    uint32_t* sss;   // [KP][LD] state slice, tf32 small parts
    float* sw;       // [64][XLD] W
    float* sqg;      // [64][XLD] QG
    float* skg;      // [64][KGLD] KG, read transposed
    float* sa2;      // [2][64][ALD] A of this chunk and of the next
    float* su;       // [64][LD] U
    uint32_t* svb;   // [64][LD] Vn, tf32 big parts
    uint32_t* svs;   // [64][LD] Vn, tf32 small parts
    float* sgam;     // [KP] γ

    __device__ ScanOperands(int K, int tid) {
        ssb = reinterpret_cast<uint32_t*>(smem()); sss = ssb + KP * LD;
        sw = reinterpret_cast<float*>(sss + KP * LD); sqg = sw + kChunk * XLD; skg = sqg + kChunk * XLD;
        sa2 = skg + kChunk * KGLD; su = sa2 + 2 * kChunk * ALD;
        svb = reinterpret_cast<uint32_t*>(su + kChunk * LD); svs = svb + kChunk * LD;
        sgam = reinterpret_cast<float*>(svs + kChunk * LD);
        for (int i = tid; i < kChunk * (KP - K); i += kPrefillThreads) {   // cp.async fills columns < K only
            const int r = i / (KP - K), c = K + i % (KP - K);
            sw[r * XLD + c] = 0.f; sqg[r * XLD + c] = 0.f; skg[r * KGLD + c] = 0.f;
        }
    }
    // Chunk ci's W, QG, U (this block's slice) and A (into buffer ci % 2), cc = its chunk·H + head; then its KG and γ.
    // Each thread waits for its own copies, the caller's barrier for everyone's.
    __device__ void prefetch_rows(const ScanInputs& in, size_t cc, int K, int V, int slice, int ci, int tid) {
        copy_tile_async(sw, XLD, in.w + cc * kChunk * K, K, kChunk, K, tid, kPrefillThreads);
        copy_tile_async(sqg, XLD, in.qg + cc * kChunk * K, K, kChunk, K, tid, kPrefillThreads);
        copy_tile_async(su, LD, in.u + cc * kChunk * V + slice * kChunk * kPrefillCols, kPrefillCols, kChunk, kPrefillCols, tid, kPrefillThreads);
        copy_tile_async(sa2 + (ci & 1) * kChunk * ALD, ALD, in.a + cc * kChunk * kChunk, kChunk, kChunk, kChunk, tid, kPrefillThreads);
        cp_async_commit();
    }
    __device__ void prefetch_kg(const ScanInputs& in, size_t cc, int K, int, int tid) {
        copy_tile_async(skg, KGLD, in.kg + cc * kChunk * K, K, kChunk, K, tid, kPrefillThreads);
        for (int i = tid; i < K / 4; i += kPrefillThreads) cp_async16(sgam + 4 * i, in.gamma + cc * K + 4 * i);
        cp_async_commit();
    }
    __device__ void wait_rows(int) const { cp_async_wait<0>(); }
    __device__ void wait_kg(int) const { cp_async_wait<0>(); }
    __device__ float u(int r, int j) const { return su[r * LD + j]; }
    __device__ static void put_split(uint32_t* big, uint32_t* small, int x, float v) {
        big[x] = to_tf32(v);
        small[x] = to_tf32(v - __uint_as_float(big[x]));
    }
    // State (row d, columns j, j + 1) and Vn (row r, the same columns), j even.
    __device__ void store_state(int d, int j, float v0, float v1) { put_split(ssb, sss, d * LD + j, v0); put_split(ssb, sss, d * LD + j + 1, v1); }
    __device__ void store_vn(int r, int j, float v0, float v1) { put_split(svb, svs, r * LD + j, v0); put_split(svb, svs, r * LD + j + 1, v1); }

    // Fragments (lane = 4g + t): A rows g, g + 8 × columns k0 + t, k0 + t + 4 of a row-major tile (or of its transpose:
    // element (m, k) at a[k·lda + m]); B rows k0 + t, k0 + t + 4 × column c + g of a split plane pair.
    __device__ static Tf32Frag<4> a_frag(const float* a, int lda, int k0, int g, int t) {
        return Tf32Frag<4>({a[g * lda + k0 + t], a[(g + 8) * lda + k0 + t], a[g * lda + k0 + t + 4], a[(g + 8) * lda + k0 + t + 4]});
    }
    __device__ static Tf32Frag<4> a_frag_t(const float* a, int lda, int k0, int g, int t) {
        return Tf32Frag<4>({a[(k0 + t) * lda + g], a[(k0 + t) * lda + g + 8], a[(k0 + t + 4) * lda + g], a[(k0 + t + 4) * lda + g + 8]});
    }
    __device__ static Tf32Frag<2> b_frag(const uint32_t* big, const uint32_t* small, int k0, int c, int g, int t) {
        Tf32Frag<2> f;
        f.big[0] = big[(k0 + t) * LD + c + g]; f.big[1] = big[(k0 + t + 4) * LD + c + g];
        f.small[0] = small[(k0 + t) * LD + c + g]; f.small[1] = small[(k0 + t + 4) * LD + c + g];
        return f;
    }
    // acc[nt] += X[r0 .. +16)·S[.., cb + 8nt .. +8) for X = W (qg false) or QG.
    __device__ void rows_times_state(float (&acc)[2][4], float (&cor)[2][4], bool qg, int r0, int cb, int lane) const {
        const int g = lane >> 2, t = lane & 3;
        const float* x = (qg ? sqg : sw) + r0 * XLD;
#pragma unroll 4
        for (int k0 = 0; k0 < KP; k0 += 8) {
            const Tf32Frag<4> fa = a_frag(x, XLD, k0, g, t);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) mma_acc(acc[nt], cor[nt], fa, b_frag(ssb, sss, k0, cb + 8 * nt, g, t));
        }
    }
    // acc[nt] += A[r0 .. +16)·Vn[.., cb + 8nt .. +8) (A is 0 above the diagonal, so k stops at r0 + 16).
    __device__ void a_times_vn(float (&acc)[2][4], float (&cor)[2][4], int buf, int r0, int cb, int lane) const {
        const int g = lane >> 2, t = lane & 3;
        const float* a = sa2 + buf * kChunk * ALD + r0 * ALD;
        for (int k0 = 0; k0 < r0 + 16; k0 += 8) {
            const Tf32Frag<4> fa = a_frag(a, ALD, k0, g, t);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) mma_acc(acc[nt], cor[nt], fa, b_frag(svb, svs, k0, cb + 8 * nt, g, t));
        }
    }
    // acc[m][nt] += KGᵀ[d0 + 16m .. +16)·Vn[.., cb + 8nt .. +8) for the KP/64 m-tiles.
    __device__ void kgt_times_vn(float (&acc)[2][2][4], float (&cor)[2][2][4], int d0, int cb, int lane) const {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll 2
        for (int k0 = 0; k0 < kChunk; k0 += 8) {
            const Tf32Frag<2> fv[2] = {b_frag(svb, svs, k0, cb, g, t), b_frag(svb, svs, k0, cb + 8, g, t)};
#pragma unroll
            for (int m = 0; m < KP / 64; ++m) {
                const Tf32Frag<4> fk = a_frag_t(skg + d0 + 16 * m, KGLD, k0, g, t);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) mma_acc(acc[m][nt], cor[m][nt], fk, fv[nt]);
            }
        }
    }
};

// bf16 inputs, the compute_90 image's scan (the sm_90a image's: WgmmaOperands): every matrix operand as bf16 hi and
// lo planes, loaded by ldmatrix (lanes 8i .. 8i + 7 address the rows of 8×8 matrix i) for mma m16n8k16. W, QG, KG
// [64][KP] and A [64][64] arrive as intra stored them (OperandStore: 128-byte-swizzled atoms), each block by one bulk
// copy of the copy engine, which thread 0 issues and an mbarrier counts (a phase per chunk; its parity is the
// chunk's); U [64][32] and γ [K] the same way. The state and Vn are split as they are stored, in rows padded to an odd
// multiple of 16 bytes. Either way the 8 rows of each ldmatrix matrix fall in 8 different bank groups.
template <int KP> struct ScanOperands<__nv_bfloat16, KP> {
    static constexpr int LD = kScanLd;   // state and Vn rows, in bf16
    static constexpr int kPlaneS = KP * LD, kPlaneX = kChunk * KP, kPlaneA = kChunk * kChunk, kPlaneV = kChunk * LD;
    static constexpr size_t kBytes = 2 * (2 * kPlaneS + 6 * kPlaneX + 4 * kPlaneA + 2 * kPlaneV) +
        sizeof(float) * (kChunk * kPrefillCols + KP) + 2 * sizeof(uint64_t);
    uint16_t* ss;     // [2][KP][LD] state slice hi, lo (rows ≥ K zero)
    uint16_t* sw;     // [2][64][KP] W hi, lo (swizzled)
    uint16_t* sqg;    // [2][64][KP] QG hi, lo (swizzled)
    uint16_t* skg;    // [2][64][KP] KG hi, lo (swizzled), read transposed
    uint16_t* sa2;    // [2][2][64][64] A hi, lo (swizzled) of this chunk and of the next
    uint16_t* sv;     // [2][64][LD] Vn hi, lo
    float* su;        // [64][32] U
    float* sgam;      // [KP] γ
    uint64_t* bars;   // [2] the mbarriers of W, QG, U, A and of KG, γ

    __device__ ScanOperands(int, int tid) {
        ss = reinterpret_cast<uint16_t*>(smem()); sw = ss + 2 * kPlaneS; sqg = sw + 2 * kPlaneX; skg = sqg + 2 * kPlaneX;
        sa2 = skg + 2 * kPlaneX; sv = sa2 + 4 * kPlaneA;
        su = reinterpret_cast<float*>(sv + 2 * kPlaneV); sgam = su + kChunk * kPrefillCols;
        bars = reinterpret_cast<uint64_t*>(sgam + KP);
        if (tid == 0) {
            mbar_init(bars, 1);
            mbar_init(bars + 1, 1);
            fence_mbarrier_init();
        }
        __syncthreads();   // no thread polls an mbarrier before it is initialised (see WgmmaOperands)
    }
    static constexpr uint32_t kStageBytes = 2 * kPlaneX * 2;   // a [64][KP] operand's two planes
    __device__ void prefetch_rows(const ScanInputs& in, size_t cc, int, int V, int slice, int ci, int tid) {
        if (tid != 0) return;
        mbar_arrive_expect_tx(bars, 2 * kStageBytes + 4 * kPlaneA + 4 * kChunk * kPrefillCols);
        bulk_load(sw, in.w + cc * kChunk * KP, kStageBytes, bars);
        bulk_load(sqg, in.qg + cc * kChunk * KP, kStageBytes, bars);
        bulk_load(su, in.u + cc * kChunk * V + slice * kChunk * kPrefillCols, 4 * kChunk * kPrefillCols, bars);
        bulk_load(sa2 + (ci & 1) * 2 * kPlaneA, in.a + cc * kChunk * kChunk, 4 * kPlaneA, bars);
    }
    __device__ void prefetch_kg(const ScanInputs& in, size_t cc, int K, int, int tid) {
        if (tid != 0) return;
        mbar_arrive_expect_tx(bars + 1, kStageBytes + 4 * K);
        bulk_load(skg, in.kg + cc * kChunk * KP, kStageBytes, bars + 1);
        bulk_load(sgam, in.gamma + cc * K, 4 * K, bars + 1);
    }
    __device__ void wait_rows(int ci) { mbar_wait(bars, ci & 1); }
    __device__ void wait_kg(int ci) { mbar_wait(bars + 1, ci & 1); }
    __device__ float u(int r, int j) const { return su[r * kPrefillCols + j]; }

    __device__ static void put_split(uint16_t* plane, int plane_size, int x, float v0, float v1) {
        uint32_t hi, lo;
        split_bf16x2(v0, v1, hi, lo);
        *reinterpret_cast<uint32_t*>(plane + x) = hi;
        *reinterpret_cast<uint32_t*>(plane + plane_size + x) = lo;
    }
    __device__ void store_state(int d, int j, float v0, float v1) { put_split(ss, kPlaneS, d * LD + j, v0, v1); }
    __device__ void store_vn(int r, int j, float v0, float v1) { put_split(sv, kPlaneV, r * LD + j, v0, v1); }

    // d += ah·bh, c += ah·bl + al·bh for one m16n8k16 tile (b: the two registers of one n-tile).
    __device__ static void mma_split(float (&d)[4], float (&c)[4], const uint32_t (&ah)[4], const uint32_t (&al)[4],
        uint32_t bh0, uint32_t bh1, uint32_t bl0, uint32_t bl1) {
        mma(c, ah, bl0, bl1);
        mma(c, al, bh0, bh1);
        mma(d, ah, bh0, bh1);
    }
    // Lane l's ldmatrix row for a 16×16 fragment at (row0, col0), matrices (rows +0, +8) × (cols +0, +8): A (plain):
    // matrix i = rows + 8(i & 1), cols + 8(i >> 1); B (transposed, two n-tiles): rows (= k) + 8(i & 1), cols (= n)
    // + 8(i >> 1), the same address; A transposed (KGᵀ, the plane holds [k][m]): rows + 8(i >> 1), cols + 8(i & 1).
    // In a padded plane (row stride ld) the offset; in an operand plane (atom_swizzled) the element (row, 8·piece).
    __device__ static int frag_offset(int ld, int lane) { return ((lane & 7) + (lane & 8)) * ld + (lane >> 4) * 8; }
    __device__ static int swizzled(int row, int piece) { return atom_swizzled(row, 8 * piece, kChunk); }

    // acc[nt] += X[r0 .. +16)[0 .. k_end)·B[0 .. k_end)[cb + 8nt .. +8): X a swizzled plane pair of rows of N
    // (N / 16 k-steps at most), B a padded one (planes b_plane apart).
    template <int N>
    __device__ static void rows_times(float (&acc)[2][4], float (&cor)[2][4], const uint16_t* x, int r0, const uint16_t* b,
        int b_plane, int cb, int k_end, int lane) {
        const int row = r0 + (lane & 7) + (lane & 8), piece = lane >> 4;
        const uint16_t* pb = b + cb + frag_offset(LD, lane);
#pragma unroll
        for (int k0 = 0; k0 < N; k0 += 16) {
            if (k0 >= k_end) break;
            uint32_t ah[4], al[4], bh[4], bl[4];
            const int ia = swizzled(row, k0 / 8 + piece);
            ldsm_x4(ah, x + ia); ldsm_x4(al, x + kChunk * N + ia);
            ldsm_x4_t(bh, pb + k0 * LD); ldsm_x4_t(bl, pb + b_plane + k0 * LD);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt) mma_split(acc[nt], cor[nt], ah, al, bh[2 * nt], bh[2 * nt + 1], bl[2 * nt], bl[2 * nt + 1]);
        }
    }
    // acc[nt] += X[r0 .. +16)·S[.., cb + 8nt .. +8) for X = W (qg false) or QG.
    __device__ void rows_times_state(float (&acc)[2][4], float (&cor)[2][4], bool qg, int r0, int cb, int lane) const {
        rows_times<KP>(acc, cor, qg ? sqg : sw, r0, ss, kPlaneS, cb, KP, lane);
    }
    // acc[nt] += A[r0 .. +16)·Vn[.., cb + 8nt .. +8) (A is 0 above the diagonal, so k stops at r0 + 16).
    __device__ void a_times_vn(float (&acc)[2][4], float (&cor)[2][4], int buf, int r0, int cb, int lane) const {
        rows_times<kChunk>(acc, cor, sa2 + buf * 2 * kPlaneA, r0, sv, kPlaneV, cb, r0 + 16, lane);
    }
    // acc[m][nt] += KGᵀ[d0 + 16m .. +16)·Vn[.., cb + 8nt .. +8) for the KP/64 m-tiles.
    __device__ void kgt_times_vn(float (&acc)[2][2][4], float (&cor)[2][2][4], int d0, int cb, int lane) const {
        const int piece = (lane >> 3) & 1;
        const uint16_t* pb = sv + cb + frag_offset(LD, lane);
#pragma unroll
        for (int k0 = 0; k0 < kChunk; k0 += 16) {
            const int row = k0 + (lane & 7) + (lane >> 4) * 8;
            uint32_t bh[4], bl[4];
            ldsm_x4_t(bh, pb + k0 * LD); ldsm_x4_t(bl, pb + kPlaneV + k0 * LD);
#pragma unroll
            for (int m = 0; m < KP / 64; ++m) {
                uint32_t ah[4], al[4];
                const int ia = swizzled(row, (d0 + 16 * m) / 8 + piece);
                ldsm_x4_t(ah, skg + ia); ldsm_x4_t(al, skg + kPlaneX + ia);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) mma_split(acc[m][nt], cor[m][nt], ah, al, bh[2 * nt], bh[2 * nt + 1], bl[2 * nt], bl[2 * nt + 1]);
            }
        }
    }
};

// The shared memory a bf16 scan launch provides (chunk_prefill_smem_bytes): the wgmma scan's WgmmaOperands, which is
// more than the mma.sync scan's ScanOperands takes.
__host__ __device__ constexpr size_t wgmma_scan_smem_bytes(int KP) {
    return 1024 + 2 * (6 * 2 * kChunk * KP + 2 * kPrefillCols * KP + 2 * kPrefillCols * kChunk) + sizeof(float) * 2 * KP +
        3 * sizeof(uint64_t);
}

#ifdef KDA_SCAN_WGMMA
// d[64×32] += A[64×16]·B[16×32] on the warpgroup's tensor cores, bf16 operands from shared memory (128-byte-swizzled
// descriptors): B K-major (wgmma_desc); A K-major, or MN-major when TransA (wgmma_desc_mn; imm-trans-a = 1).
template <int TransA>
__device__ __forceinline__ void wgmma_m64n32_bf16(float (&d)[16], uint64_t desc_a, uint64_t desc_b) {
#ifdef KDA_EMULATE
    emu_wgmma_ss(d, 32, false, true, desc_a, desc_b, false, TransA != 0);
#else
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, %16, %17, p, 1, 1, %19, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "l"(desc_a), "l"(desc_b), "r"(1), "n"(TransA));
#endif
}
// d[64×64] += A[64×16]·B[16×64], as above.
template <int TransA>
__device__ __forceinline__ void wgmma_m64n64_bf16(float (&d)[32], uint64_t desc_a, uint64_t desc_b) {
#ifdef KDA_EMULATE
    emu_wgmma_ss(d, 64, false, true, desc_a, desc_b, false, TransA != 0);
#else
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, %35, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(desc_a), "l"(desc_b), "r"(1), "n"(TransA));
#endif
}

// The bf16 scan on warpgroup MMA (the sm_90a image's): each product of a chunk is one warpgroup's chain of m64n64k16
// and m64n32k16 wgmma (split_product) reading both operands straight from shared memory. The state slice and Vn are B
// operands, stored transposed and split by stmatrix (K-major: Sᵀ [KP/64][hi, lo][32][64], Vnᵀ [hi, lo][32][64],
// atom_swizzled) by the warpgroups whose accumulators hold them; KG serves as KGᵀ through an MN-major descriptor (its
// rows of d are KGᵀ's columns). Shared memory bounds it: a chunk's copies (~112 KiB) and the products' reads (~196 KiB).
// The copies come a whole chunk ahead (an ncu profile of the scan with one buffer each showed a third of its warps'
// time waiting for copies issued only a phase ahead): phase 1 reads W and QG, phase 2 KG and A, so each pair takes
// the next slot of two rings of 3 (operand i = 2·chunk for W, QG and 2·chunk + 1 for KG, A lives in slot i mod 3; its
// copies complete phase ⌊i / 3⌋ of mbarrier i mod 3). The slot a copy takes held the pair read in the phase before the
// last barrier, so it can be issued there. U the Vn warpgroup loads into registers a phase ahead; γ has two buffers.
template <int KP> struct WgmmaOperands {
    static constexpr int kSlot = 2 * kChunk * KP;   // a [64][KP] operand's hi and lo planes (A takes half at KP = 128)
    static constexpr int kPlaneX = kChunk * KP, kPlaneA = kChunk * kChunk, kPlaneS = kPrefillCols * KP, kPlaneV = kPrefillCols * kChunk;
    uint16_t* ring_wk;   // [3][kSlot] W, KG
    uint16_t* ring_qa;   // [3][kSlot] QG, A (in the slot of W, KG of the same i)
    uint16_t* sst;       // [KP/64][2][32][64] Sᵀ by 64-column atoms, each hi then lo (atom_swizzled; columns ≥ K zero)
    uint16_t* svn;       // [2][32][64] Vnᵀ hi, lo (atom_swizzled)
    float* sgam;         // [2][KP] γ of even and odd chunks (entries ≥ K zero)
    uint64_t* bars;      // [3] one a slot

    __device__ WgmmaOperands(int K, int tid) {
        // 1,024-byte aligned: the swizzle repeats every 1,024 bytes of address (wgmma_scan_smem_bytes has the slack)
        ring_wk = reinterpret_cast<uint16_t*>(reinterpret_cast<unsigned char*>(smem()) + ((1024 - (shared_address(smem()) & 1023)) & 1023));
        ring_qa = ring_wk + 3 * kSlot; sst = ring_qa + 3 * kSlot; svn = sst + 2 * kPlaneS;
        sgam = reinterpret_cast<float*>(svn + 2 * kPlaneV); bars = reinterpret_cast<uint64_t*>(sgam + 2 * KP);
        for (int i = tid; i < 2 * (KP - K); i += kPrefillThreads) sgam[i / (KP - K) * KP + K + i % (KP - K)] = 0.f;
        if (tid == 0) {
            for (int s = 0; s < 3; ++s) mbar_init(bars + s, 1);
            fence_mbarrier_init();
        }
        // No thread polls an mbarrier before it is initialised: the warps that go straight to the first wait used to
        // reach it first, and polling the uninitialised bytes faulted (an "Unknown Error" at the wait in
        // compute-sanitizer; "unspecified launch failure" in 5 of 8 runs of the harness's checks).
        __syncthreads();
    }
    __device__ static int slot(int i) { return i % 3; }
    // Chunk ci's W, QG (operand 2ci) and KG, A, γ (2ci + 1); cc = its chunk·H + head. Thread 0 issues them.
    __device__ void copy_rows(const ScanInputs& in, size_t cc, int ci) {
        const int s = slot(2 * ci);
        mbar_arrive_expect_tx(bars + s, 2 * 2 * kSlot);
        bulk_load(ring_wk + s * kSlot, in.w + cc * kChunk * KP, 2 * kSlot, bars + s);
        bulk_load(ring_qa + s * kSlot, in.qg + cc * kChunk * KP, 2 * kSlot, bars + s);
    }
    __device__ void copy_kg(const ScanInputs& in, size_t cc, int ci, int K) {
        const int s = slot(2 * ci + 1);
        mbar_arrive_expect_tx(bars + s, 2 * kSlot + 4 * kPlaneA + 4 * K);
        bulk_load(ring_wk + s * kSlot, in.kg + cc * kChunk * KP, 2 * kSlot, bars + s);
        bulk_load(ring_qa + s * kSlot, in.a + cc * kChunk * kChunk, 4 * kPlaneA, bars + s);
        bulk_load(sgam + (ci & 1) * KP, in.gamma + cc * K, 4 * K, bars + s);
    }
    __device__ void wait(int i) { mbar_wait(bars + slot(i), (i / 3) & 1); }
    __device__ float gamma(int ci, int d) const { return sgam[(ci & 1) * KP + d]; }

    // A warpgroup's [64][32] accumulator tile (thread tid: value e at row 16·(tid / 32 mod 4) + g + 8·((e & 3) >> 1),
    // column 8·(e >> 2) + 2t + (e & 1)) stored transposed and split into hi and lo planes, `lo` elements apart: each of
    // a warp's eight 8×8 matrices (n-tile, row half) goes out by stmatrix.trans as 8 rows j of 8 consecutive rows m,
    // 16 bytes at at(j, m) (m a multiple of 8). (Two-byte stores, 32 a thread, held up the phases' ends.)
    template <typename At>
    __device__ static void store_split_t(const float (&acc)[16], int tid, int lo, At at) {
        const int lane = tid & 31, m0 = 16 * ((tid >> 5) & 3), q = lane >> 3;   // q: the matrix this lane addresses
#pragma unroll
        for (int x = 0; x < 2; ++x) {   // n-tiles 2x, 2x + 1
            uint32_t hi[4], lw[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {   // matrix i: n-tile 2x + i / 2, rows + 8·(i % 2)
                const int e = 4 * (2 * x + i / 2) + 2 * (i % 2);
                split_bf16x2(acc[e], acc[e + 1], hi[i], lw[i]);
            }
            uint16_t* p = at(8 * (2 * x + q / 2) + (lane & 7), m0 + 8 * (q % 2));
            stsm_x4_t(hi, p);
            stsm_x4_t(lw, p + lo);
        }
    }
    // The state's rows d0 .. d0 + 63 and Vn as B operands, transposed: in both, an atom's 32 hi rows are followed by its
    // 32 lo rows, so one descriptor reads Bhi as a 32-row B operand and [Bhi | Blo] as a 64-row one.
    static constexpr int kAtomS = kPrefillCols * 64;   // one plane of a 64-column atom
    __device__ void store_state(int d0, const float (&s)[16], int tid) {
        store_split_t(s, tid, kAtomS, [&](int j, int m) { return sst + ((d0 + m) >> 6) * 2 * kAtomS + atom_swizzled(j, (d0 + m) & 63, kPrefillCols); });
    }
    __device__ void store_vn(const float (&vn)[16], int tid) {
        store_split_t(vn, tid, kPlaneV, [&](int j, int r) { return svn + atom_swizzled(j, r, kPrefillCols); });
    }

    // Descriptors of k-step kk (16 values of K) of chunk ci's operands, plane 0 = hi, 1 = lo: inside an atom a k-step
    // is 32 bytes along the row, across atoms a whole atom; KGᵀ's k-steps are 16 rows of KG (2,048 bytes), its 64-row
    // block d0 / 64 one atom of columns.
    __device__ static uint64_t k_major(const uint16_t* p) { return wgmma_desc(shared_address(p)); }
    __device__ uint64_t x_desc(int ci, bool qg, int plane, int kk) const {
        return k_major((qg ? ring_qa : ring_wk) + slot(2 * ci) * kSlot + plane * kPlaneX + atom_swizzled(0, 16 * kk, kChunk));
    }
    __device__ uint64_t kgt_desc(int ci, int plane, int d0, int kk) const {
        const uint16_t* p = ring_wk + slot(2 * ci + 1) * kSlot + plane * kPlaneX + atom_swizzled(16 * kk, d0, kChunk);
        return wgmma_desc_mn(shared_address(p), kChunk * 128);   // LBO: the next 64 columns of d (unused by m64)
    }
    __device__ uint64_t a_desc(int ci, int plane, int kk) const { return k_major(ring_qa + slot(2 * ci + 1) * kSlot + plane * kPlaneA + 16 * kk); }
    __device__ uint64_t s_desc(int kk) const { return k_major(sst + (kk >> 2) * 2 * kAtomS + 16 * (kk & 3)); }
    __device__ uint64_t vn_desc(int kk) const { return k_major(svn + 16 * kk); }

    // X·B over `ksteps` k-steps as three products of split parts, Xhi·Bhi + Xhi·Blo + Xlo·Bhi, in two wgmma a k-step:
    // Xhi·[Bhi | Blo] (n64: acc's first 16 values take Xhi·Bhi, its last 16 Xhi·Blo) and Xlo·Bhi (n32, into cor). b(kk)
    // describes [Bhi | Blo], whose first 32 rows are Bhi. Against three n32 products, Xhi is read from shared memory once
    // a k-step instead of twice. The caller seeds acc's first half, zeroes the rest and sums the three (sum_split).
    template <int TransA, typename XDesc, typename BDesc>
    __device__ static void split_product(float (&acc)[32], float (&cor)[16], int ksteps, XDesc x, BDesc b) {
        pin(acc); pin(cor);   // their writes before the fence
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < ksteps; ++kk) {
            wgmma_m64n64_bf16<TransA>(acc, x(0, kk), b(kk));
            wgmma_m64n32_bf16<TransA>(cor, x(1, kk), b(kk));
        }
        wgmma_commit();
        wgmma_wait<0>();
        pin(acc); pin(cor);   // read only after the wait
    }
    __device__ static float sum_split(const float (&acc)[32], const float (&cor)[16], int e) { return acc[e] + (acc[16 + e] + cor[e]); }
};
#endif  // KDA_SCAN_WGMMA

// The wide scan's launch (sm_90a image, wide_scan): a block per (128 columns of V, head, sequence), one warpgroup for
// each 64 of them.
constexpr int kWideScanThreads = 256;
constexpr int kWideScanCols = 128;

// Its dynamic shared memory (WideScanBuffers): 1 KiB of alignment slack, three operand slots of two [2][64][KP] hi/lo
// planes each, γ twice, one chunk's U for the block's columns, four mbarriers. 226 KiB at KP = 128.
__host__ __device__ constexpr size_t wide_scan_smem_bytes(int KP) {
    return 1024 + 3 * 2 * (4 * kChunk * KP) + sizeof(float) * (2 * KP + kChunk * kWideScanCols) + 4 * sizeof(uint64_t);
}

#ifdef KDA_SCAN_WGMMA
// d[64×N] (+)= A[64×16]·B[16×N] on the warpgroup's tensor cores: A in registers (this warp's 16 rows as the mma.sync
// m16n8k16 A fragment), B bf16 from shared memory through a 128-byte-swizzle descriptor, K-major (wgmma_desc) or,
// with TransB, MN-major (wgmma_desc_mn). accumulate = false overwrites d.
template <int TransB>
__device__ __forceinline__ void wgmma_m64n64_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, bool accumulate) {
#ifdef KDA_EMULATE
    emu_wgmma_rs(d, 64, false, accumulate, a, desc_b, TransB != 0);
#else
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
                   "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
                   "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(static_cast<int>(accumulate)), "n"(TransB));
#endif
}

// The wide scan's operands in shared memory, read by both warpgroups and brought by the copy engine: chunk ci's W, QG
// and its KG, A (as intra stored them: hi/lo planes of 128-byte-swizzled atoms) as operands 2ci and 2ci + 1 of a ring
// of three slots, γ twice, and U once (through shared memory rather than 32 registers a thread, which the wide scan
// does not have: 40 bytes spilled in run 95, none since run 98). When chunk ci is done, its slots and U's buffer take
// chunk ci + 1's KG, A, γ and U and chunk ci + 2's W, QG.
template <int KP> struct WideScanBuffers {
    static constexpr int kPlaneX = kChunk * KP, kPlaneA = kChunk * kChunk;   // elements of a [64][KP] or [64][64] plane
    static constexpr int kOperand = 2 * kPlaneX;                             // W, QG or KG: hi, then lo
    static constexpr int kSlot = 2 * kOperand;                               // (W, QG) or (KG, A)
    uint16_t* ring;   // [3][kSlot] (each operand 1,024-byte aligned)
    float* sgam;      // [2][KP] γ (entries ≥ K zero)
    float* su;        // [kWideScanCols / 32][64][32] the block's U of one chunk (U's layout: LAYOUTS)
    uint64_t* bars;   // [4] one a slot, then U's

    __device__ WideScanBuffers(int K, int tid) {
        ring = reinterpret_cast<uint16_t*>(reinterpret_cast<unsigned char*>(smem()) + ((1024 - (shared_address(smem()) & 1023)) & 1023));
        sgam = reinterpret_cast<float*>(ring + 3 * kSlot);
        su = sgam + 2 * KP;
        bars = reinterpret_cast<uint64_t*>(su + kChunk * kWideScanCols);
        for (int i = tid; i < 2 * (KP - K); i += kWideScanThreads) sgam[i / (KP - K) * KP + K + i % (KP - K)] = 0.f;
        if (tid == 0) {
            for (int b = 0; b < 4; ++b) mbar_init(bars + b, 1);
            fence_mbarrier_init();
        }
        __syncthreads();   // no thread polls an mbarrier before it is initialised
    }
    // Operand i: 2ci = chunk ci's W and QG, 2ci + 1 its KG, A and γ; it lives in slot i mod 3, whose copies complete
    // phase ⌊i / 3⌋ of mbarrier i mod 3.
    __device__ static int slot(int i) { return i % 3; }
    __device__ uint16_t* w(int ci) const { return ring + slot(2 * ci) * kSlot; }
    __device__ uint16_t* qg(int ci) const { return w(ci) + kOperand; }
    __device__ uint16_t* kg(int ci) const { return ring + slot(2 * ci + 1) * kSlot; }
    __device__ uint16_t* a(int ci) const { return kg(ci) + kOperand; }
    __device__ float gamma(int ci, int d) const { return sgam[(ci & 1) * KP + d]; }
    // Thread 0 issues an operand's copies (cc = its chunk·H + head); every thread waits for them.
    __device__ void copy_rows(const ScanInputs& in, size_t cc, int ci) {
        uint64_t* bar = bars + slot(2 * ci);
        mbar_arrive_expect_tx(bar, 2 * 2 * kOperand);
        bulk_load(w(ci), in.w + cc * kChunk * KP, 2 * kOperand, bar);
        bulk_load(qg(ci), in.qg + cc * kChunk * KP, 2 * kOperand, bar);
    }
    __device__ void copy_kg(const ScanInputs& in, size_t cc, int ci, int K) {
        uint64_t* bar = bars + slot(2 * ci + 1);
        mbar_arrive_expect_tx(bar, 2 * kOperand + 4 * kPlaneA + 4 * K);
        bulk_load(kg(ci), in.kg + cc * kChunk * KP, 2 * kOperand, bar);
        bulk_load(a(ci), in.a + cc * kChunk * kChunk, 4 * kPlaneA, bar);
        bulk_load(sgam + (ci & 1) * KP, in.gamma + cc * K, 4 * K, bar);
    }
    __device__ void wait_rows(int ci) { mbar_wait(bars + slot(2 * ci), ((2 * ci) / 3) & 1); }
    __device__ void wait_kg(int ci) { mbar_wait(bars + slot(2 * ci + 1), ((2 * ci + 1) / 3) & 1); }

    // Descriptors of k-step kk of chunk ci's operands as B, plane 0 = hi, 1 = lo. W, QG, A are K-major (N = the chunk's
    // rows, K = d or s: inside an atom a k-step is 32 bytes along the row, across atoms a whole atom); KG is read
    // MN-major (K = the chunk's rows, 16 a k-step of 128-byte rows; N = d, its 64-column atoms 64 rows apart).
    __device__ static uint64_t k_major(const uint16_t* p) { return wgmma_desc(shared_address(p)); }
    __device__ uint64_t w_desc(int ci, int plane, int kk) const { return k_major(w(ci) + plane * kPlaneX + atom_swizzled(0, 16 * kk, kChunk)); }
    __device__ uint64_t qg_desc(int ci, int plane, int kk) const { return k_major(qg(ci) + plane * kPlaneX + atom_swizzled(0, 16 * kk, kChunk)); }
    __device__ uint64_t a_desc(int ci, int plane, int kk) const { return k_major(a(ci) + plane * kPlaneA + 16 * kk); }
    __device__ uint64_t kg_desc(int ci, int plane, int kk) const {
        return wgmma_desc_mn(shared_address(kg(ci) + plane * kPlaneX + atom_swizzled(16 * kk, 0, kChunk)), kChunk * 128);
    }
    // Chunk ci's U for the block's columns j0 .. j0 + kWideScanCols − 1 (those < V: whole 32-column slices, contiguous).
    __device__ void copy_u(const ScanInputs& in, size_t cc, int j0, int V) {
        const uint32_t bytes = 4u * kChunk * static_cast<uint32_t>(min(V - j0, kWideScanCols));
        mbar_arrive_expect_tx(bars + 3, bytes);
        bulk_load(su, in.u + cc * kChunk * V + (size_t)j0 * kChunk, bytes, bars + 3);
    }
    __device__ void wait_u(int ci) { mbar_wait(bars + 3, ci & 1); }
    __device__ float u(int r, int j) const { return su[(j >> 5) * kChunk * 32 + r * 32 + (j & 31)]; }   // j from the block's j0
};

// The A fragments of k-step kk (K = accumulator columns 16kk .. 16kk + 15) from a warpgroup's accumulator, split into
// bf16 hi and lo parts: the accumulator's layout over those 16 columns is the register A operand's, so no value moves
// between lanes (FlashAttention-3 feeds P to P·V the same way).
template <int R>
__device__ __forceinline__ void split_fragments(const float* acc, uint32_t (&hi)[R][4], uint32_t (&lo)[R][4]) {
#pragma unroll
    for (int kk = 0; kk < R; ++kk)
#pragma unroll
        for (int i = 0; i < 4; ++i) split_bf16x2(acc[8 * kk + 2 * i], acc[8 * kk + 2 * i + 1], hi[kk][i], lo[kk][i]);
}
#endif  // KDA_SCAN_WGMMA

// The scan's dynamic shared memory (> 48 KiB: raise the limit): 205 KiB for fp32 inputs at K = 128, 218 KiB for bf16
// (the wgmma scan's; the mma.sync scan takes 167 of it).
template <typename Tin> __host__ __device__ constexpr size_t chunk_prefill_smem_bytes(int K) {
    return std::is_same<Tin, float>::value ? (chunk_prefill_kpad(K) == 64 ? ScanOperands<float, 64>::kBytes : ScanOperands<float, 128>::kBytes)
                                           : wgmma_scan_smem_bytes(chunk_prefill_kpad(K));
}
static_assert(ScanOperands<__nv_bfloat16, 64>::kBytes <= wgmma_scan_smem_bytes(64) &&
              ScanOperands<__nv_bfloat16, 128>::kBytes <= wgmma_scan_smem_bytes(128), "a bf16 launch holds either scan");

// The sequential scan over one sequence's chunks for a 32-column slice of one head's state (see MATH), on tensor cores
// (ScanOperands: 3xTF32 or split bf16, both accumulated in fp32; lane = 4g + t). Only the state's recurrence is a
// chain from chunk to chunk; the output is not, so the 16 warps split by role and the output's products leave the
// chain:
//   state warps 0-7:   phase 1  Vn = U − W·S                  phase 2  S ← Diag(γ)·S + KGᵀ·Vn
//   output warps 8-15: phase 1  O = QG·S (the same S)         phase 2  O += A·Vn, written out
// with two barriers per chunk i: before phase 1 (W_i, QG_i, U_i, A_i and the state have landed; KG_i and γ_i are
// issued then and arrive during phase 1), and between the phases (Vn is complete; W_{i+1}, QG_{i+1}, U_{i+1} and A_{i+1},
// in A's other buffer, are issued then and arrive during phase 2). Each warp's chain per chunk is about half the
// single-role kernel's (v5b: every warp ran all four products, 2 warps per scheduler), at 4 warps per scheduler.
// Within a role, warp w owns output rows 16·(w % 4) .. + 15 and columns 16·(w / 4 % 2) .. + 15 (2 n-tiles); a state
// warp also owns state rows [(w % 4)·KP/4, (w % 4 + 1)·KP/4) (KP/64 m-tiles) × the same columns, held in registers
// (accumulator layout) across chunks. K is padded to KP ∈ {64, 128} with zero stage columns, state rows and γ entries,
// so the k-steps and the row split need no tails.
template <typename Tin, int KP>   // KP = chunk_prefill_kpad(K): compile-time strides fold into the shared-memory offsets
__device__ __forceinline__ void chunk_prefill(int H, int K, int V, const int* __restrict__ cu_seqlens,
    const int* __restrict__ chunk_offsets, const float* __restrict__ w_in, const float* __restrict__ u_in,
    const float* __restrict__ a_in, const float* __restrict__ qg_in, const float* __restrict__ kg_in,
    const float* __restrict__ gamma_in, float* state, Tin* __restrict__ o) {
    constexpr int NT = kPrefillThreads, VC = kPrefillCols;
    static_assert(NT == 512 && VC == 32, "16 warps: 2 roles × 4 row groups × 2 column halves of 16");
    static_assert(KP == 64 || KP == 128, "chunk_prefill_kpad");
    const int slice = blockIdx.x, h = blockIdx.y, n = blockIdx.z, tid = threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int j0 = slice * VC;
    const int tok0 = cu_seqlens[n], T = cu_seqlens[n + 1] - tok0;
    const int c0 = chunk_offsets[n], nchunks = chunk_offsets[n + 1] - c0;
    const ScanInputs in{w_in, u_in, a_in, qg_in, kg_in, gamma_in};
    ScanOperands<Tin, KP> ops(K, tid);   // carves the shared memory, zeroes the stage padding
    for (int i = K + tid; i < KP; i += NT) ops.sgam[i] = 0.f;

    // W, QG, U of chunk ci and its A into buffer ci % 2; then its KG and γ.
    auto chunk_index = [&](int ci) { return (size_t)(c0 + ci) * H + h; };
    if (nchunks > 0) ops.prefetch_rows(in, chunk_index(0), K, V, slice, 0, tid);
    // The two barriers of chunk ci, with the copies each one starts; every thread of both roles passes both, from the
    // one walk below. Each warp meets its own lanes first: an output warp comes from its `r < len` stores with its
    // lanes apart.
    auto before_phase1 = [&](int ci) {
        ops.wait_rows(ci);   // W_ci, QG_ci, U_ci, A_ci
        __syncwarp();
        __syncthreads();     // ... for every thread; the state is stored; chunk ci − 1 no longer reads KG, γ, Vn
        ops.prefetch_kg(in, chunk_index(ci), K, ci, tid);
    };
    auto before_phase2 = [&](int ci) {
        ops.wait_kg(ci);     // KG_ci, γ_ci
        __syncwarp();
        __syncthreads();     // Vn complete; W_ci, QG_ci, U_ci and the stored state no longer read
        if (ci + 1 < nchunks) ops.prefetch_rows(in, chunk_index(ci + 1), K, V, slice, ci + 1, tid);
    };

    const int rq = warp & 3, ch = (warp >> 2) & 1;   // row group, column half (within the role)
    const int r0 = 16 * rq, cb = 16 * ch;             // phases 1-2: rows r0 + g (+ 8), columns cb + 8·nt + 2t (+ 1)
    const bool state_warp = warp < 8;
    // State warps: state rows d0 + 16m + g (+ 8) of the slice, in registers across chunks.
    constexpr int mtiles = KP / 64;
    const int d0 = rq * (KP / 4);
    float* S = state + ((size_t)n * H + h) * K * V + j0;
    float sacc[2][2][4];   // [m-tile][n-tile][fragment]
    auto store_state = [&]() {   // the split state, for the next chunk's phase 1
#pragma unroll
        for (int m = 0; m < mtiles; ++m)
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e2 = 0; e2 < 2; ++e2)
                    ops.store_state(d0 + 16 * m + g + 8 * e2, cb + 8 * nt + 2 * t, sacc[m][nt][2 * e2], sacc[m][nt][2 * e2 + 1]);
    };
    if (state_warp) {
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int d = d0 + 16 * m + g + 8 * (e >> 1);
                    sacc[m][nt][e] = m < mtiles && d < K ? S[(size_t)d * V + cb + 8 * nt + 2 * t + (e & 1)] : 0.f;
                }
        store_state();
    }
    // One walk for both roles, so that every thread reaches each of the chunk's two block barriers at the same place
    // (a __syncthreads called from the roles' own branches is undefined in CUDA C++, and compute-sanitizer's synccheck
    // reported "divergent threads in block" at it); each role's work is a warp-uniform branch between them.
    for (int ci = 0; ci < nchunks; ++ci) {
        float oacc[2][4], ocor[2][4];   // output warps: O, its correction products, from phase 1 to phase 2
        before_phase1(ci);
        if (state_warp) {   // Vn = U − W·S, accumulated as −U + W·S; vcor holds the correction products
            float vacc[2][4], vcor[2][4];
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    vacc[nt][e] = -ops.u(r0 + g + 8 * (e >> 1), cb + 8 * nt + 2 * t + (e & 1));
                    vcor[nt][e] = 0.f;
                }
            ops.rows_times_state(vacc, vcor, false, r0, cb, lane);
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e2 = 0; e2 < 2; ++e2)
                    ops.store_vn(r0 + g + 8 * e2, cb + 8 * nt + 2 * t, -(vacc[nt][2 * e2] + vcor[nt][2 * e2]),
                        -(vacc[nt][2 * e2 + 1] + vcor[nt][2 * e2 + 1]));
        } else {   // O = QG·S
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) { oacc[nt][e] = 0.f; ocor[nt][e] = 0.f; }
            ops.rows_times_state(oacc, ocor, true, r0, cb, lane);
        }
        before_phase2(ci);
        if (state_warp) {   // S ← Diag(γ)·S + KGᵀ·Vn, the correction products in scor
            float scor[2][2][4];
#pragma unroll
            for (int m = 0; m < 2; ++m)
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) scor[m][nt][e] = 0.f;
#pragma unroll
            for (int m = 0; m < mtiles; ++m) {
                const float ga = ops.sgam[d0 + 16 * m + g], gb = ops.sgam[d0 + 16 * m + g + 8];
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    sacc[m][nt][0] *= ga; sacc[m][nt][1] *= ga; sacc[m][nt][2] *= gb; sacc[m][nt][3] *= gb;
                }
            }
            ops.kgt_times_vn(sacc, scor, d0, cb, lane);
#pragma unroll
            for (int m = 0; m < 2; ++m)
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) sacc[m][nt][e] += scor[m][nt][e];
            store_state();   // nobody reads the stored state between the barrier above and the next one
        } else {   // O += A·Vn, then out
            ops.a_times_vn(oacc, ocor, ci & 1, r0, cb, lane);
            const int len = min(kChunk, T - ci * kChunk);
#pragma unroll
            for (int e2 = 0; e2 < 2; ++e2) {
                const int r = r0 + g + 8 * e2;
                if (r < len) {
                    Tin* orow = o + ((size_t)(tok0 + ci * kChunk + r) * H + h) * V + j0 + cb + 2 * t;
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt) {
                        st(orow + 8 * nt, oacc[nt][2 * e2] + ocor[nt][2 * e2]);
                        st(orow + 8 * nt + 1, oacc[nt][2 * e2 + 1] + ocor[nt][2 * e2 + 1]);
                    }
                }
            }
        }
    }
    if (state_warp) {
#pragma unroll
        for (int m = 0; m < mtiles; ++m)
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int d = d0 + 16 * m + g + 8 * (e >> 1);
                    if (d < K) S[(size_t)d * V + cb + 8 * nt + 2 * t + (e & 1)] = sacc[m][nt][e];
                }
    }
}

#ifdef KDA_SCAN_WGMMA
// The bf16 scan on warpgroup MMA (WgmmaOperands): the same walk and two barriers a chunk as chunk_prefill, its 16
// warps as 4 warpgroups by role. Accumulator element e of a thread (warp w of its warpgroup, lane 4g + t) is row
// 16w + g + 8⌊(e mod 4) / 2⌋ of the warpgroup's 64 and column 8⌊e / 4⌋ + 2t + e mod 2 of the product, which is the
// slice's column 8t + 2⌊e / 4⌋ + e mod 2 (col below).
//   warpgroup 0:      phase 1  Vn = U − W·S
//   warpgroup 1:      phase 1  O = QG·S                  phase 2  O += A·Vn, written out
//   warpgroups 2, 3:                                      phase 2  S ← Diag(γ)·S + KGᵀ·Vn, state rows 64(wg − 2) .. + 63
//                                                                  held in registers across chunks (none at KP = 64 for 3)
template <int KP>
__device__ __forceinline__ void chunk_prefill_wgmma(int H, int K, int V, const int* __restrict__ cu_seqlens,
    const int* __restrict__ chunk_offsets, const ScanInputs& in, float* state, __nv_bfloat16* __restrict__ o) {
    using Ops = WgmmaOperands<KP>;
    const int slice = blockIdx.x, h = blockIdx.y, n = blockIdx.z, tid = threadIdx.x;
    const int wg = tid >> 7, lane = tid & 31, t = lane & 3, row0 = 16 * ((tid >> 5) & 3) + (lane >> 2);
    const int j0 = slice * kPrefillCols;
    const int tok0 = cu_seqlens[n], T = cu_seqlens[n + 1] - tok0;
    const int c0 = chunk_offsets[n], nchunks = chunk_offsets[n + 1] - c0;
    Ops ops(K, tid);
    auto chunk_index = [&](int ci) { return (size_t)(c0 + ci) * H + h; };
    if (tid == 0 && nchunks > 0) {
        ops.copy_rows(in, chunk_index(0), 0);
        ops.copy_kg(in, chunk_index(0), 0, K);
    }
    // The two barriers of chunk ci, each issuing the copies of chunk ci + 1 into the slots the phase before it freed.
    // Each warp meets its own lanes first (the output warpgroup comes from its `r < len` stores, warp 0 from thread 0's
    // copies, with lanes apart). Unlike chunk_prefill's, these barriers are reached from each role's own loop, which
    // PTX defines on sm_70 and newer but CUDA C++ does not, and compute-sanitizer's synccheck reports ("divergent
    // threads in block"). One walk for all roles, as there, kept every role's accumulators live across both barriers:
    // 300 bytes spilled and the scan 60 % slower (seventeenth session, kernels/kda/NOTES.md), so it stays this way.
    auto before_phase1 = [&](int ci) {
        ops.wait(2 * ci);    // W_ci, QG_ci
        __syncwarp();
        __syncthreads();     // ... for every thread; the state is stored; chunk ci − 1 no longer reads KG, A, γ, Vn
        if (tid == 0 && ci + 1 < nchunks) ops.copy_rows(in, chunk_index(ci + 1), ci + 1);
    };
    auto before_phase2 = [&](int ci) {
        ops.wait(2 * ci + 1);   // KG_ci, A_ci, γ_ci
        __syncwarp();
        __syncthreads();        // Vn complete; W_ci, QG_ci and the stored state no longer read
        if (tid == 0 && ci + 1 < nchunks) ops.copy_kg(in, chunk_index(ci + 1), ci + 1, K);
    };
    auto row = [&](int e) { return row0 + 8 * ((e & 3) >> 1); };
    // The slice's columns in the order the products hold them: accumulator column 8⌊e/4⌋ + 2t + e mod 2 of every
    // product (and row of the stored Sᵀ, Vnᵀ) is the slice's column 8t + 2⌊e/4⌋ + e mod 2 (the columns never mix, so
    // any order serves), so that a thread's 8 values of a row are 8 consecutive columns: the state, U and O move
    // between registers and global memory in 16- and 32-byte pieces (O's stores fill whole sectors).
    auto col = [&](int e) { return 8 * t + 2 * (e >> 2) + (e & 1); };
    auto elem = [](int half, int c) { return 4 * (c >> 1) + 2 * half + (c & 1); };   // of column 8t + c in row half
    // A row half's 8 values (row(2·half), columns 8t .. 8t + 7) from or to 8 consecutive floats, 16-byte aligned.
    auto load8 = [&](float (&x)[16], int half, const float* p) {
        const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
        x[elem(half, 0)] = a.x; x[elem(half, 1)] = a.y; x[elem(half, 2)] = a.z; x[elem(half, 3)] = a.w;
        x[elem(half, 4)] = b.x; x[elem(half, 5)] = b.y; x[elem(half, 6)] = b.z; x[elem(half, 7)] = b.w;
    };
    auto vn_desc = [&](int kk) { return ops.vn_desc(kk); };
    auto s_desc = [&](int kk) { return ops.s_desc(kk); };

    if (wg >= 2) {   // state warpgroups
        const int d0 = 64 * (wg - 2);
        const bool holds = d0 < KP;
        float* S = state + ((size_t)n * H + h) * K * V + j0;
        float sacc[16];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int d = d0 + row(2 * half);
            if (holds && d < K) {
                load8(sacc, half, S + (size_t)d * V + col(0));
            } else {
#pragma unroll
                for (int c = 0; c < 8; ++c) sacc[elem(half, c)] = 0.f;
            }
        }
        auto store_state = [&]() {   // the split state, for the next chunk's phase 1
            ops.store_state(d0, sacc, tid);
            fence_proxy_async();   // ... visible to the tensor cores' reads
        };
        if (holds) store_state();
        for (int ci = 0; ci < nchunks; ++ci) {
            before_phase1(ci);
            before_phase2(ci);
            if (!holds) continue;
            float snew[32], scor[16];
#pragma unroll
            for (int e = 0; e < 16; ++e) {
                snew[e] = sacc[e] * ops.gamma(ci, d0 + row(e));
                snew[16 + e] = 0.f;
                scor[e] = 0.f;
            }
            Ops::template split_product<1>(snew, scor, kChunk / 16, [&](int plane, int kk) { return ops.kgt_desc(ci, plane, d0, kk); }, vn_desc);
#pragma unroll
            for (int e = 0; e < 16; ++e) sacc[e] = Ops::sum_split(snew, scor, e);
            store_state();   // nobody reads the stored state between the barrier above and the next one
        }
        if (holds)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int d = d0 + row(2 * half);
                float4* p = reinterpret_cast<float4*>(S + (size_t)d * V + col(0));
                if (d < K) {
                    p[0] = make_float4(sacc[elem(half, 0)], sacc[elem(half, 1)], sacc[elem(half, 2)], sacc[elem(half, 3)]);
                    p[1] = make_float4(sacc[elem(half, 4)], sacc[elem(half, 5)], sacc[elem(half, 6)], sacc[elem(half, 7)]);
                }
            }
    } else if (wg == 0) {   // Vn warpgroup
        // U of chunk ci (this slice's [64][32]), loaded into registers while the chunk before runs its phase 2.
        float u[16];
        auto load_u = [&](int ci) {
            const float* uc = in.u + chunk_index(ci) * kChunk * V + slice * kChunk * kPrefillCols;
#pragma unroll
            for (int half = 0; half < 2; ++half) load8(u, half, uc + row(2 * half) * kPrefillCols + col(0));
        };
        if (nchunks > 0) load_u(0);
        for (int ci = 0; ci < nchunks; ++ci) {
            before_phase1(ci);
            // Vn = U − W·S, accumulated as −U + W·S; vcor holds the correction products.
            float vacc[32], vcor[16];
#pragma unroll
            for (int e = 0; e < 16; ++e) {
                vacc[e] = -u[e];
                vacc[16 + e] = 0.f;
                vcor[e] = 0.f;
            }
            Ops::template split_product<0>(vacc, vcor, KP / 16, [&](int plane, int kk) { return ops.x_desc(ci, false, plane, kk); }, s_desc);
            float vn[16];
#pragma unroll
            for (int e = 0; e < 16; ++e) vn[e] = -Ops::sum_split(vacc, vcor, e);
            ops.store_vn(vn, tid);
            fence_proxy_async();
            if (ci + 1 < nchunks) load_u(ci + 1);
            before_phase2(ci);
        }
    } else {   // output warpgroup
        for (int ci = 0; ci < nchunks; ++ci) {
            const int len = min(kChunk, T - ci * kChunk);
            before_phase1(ci);
            float oacc[32], ocor[16];   // O = QG·S (see split_product)
#pragma unroll
            for (int e = 0; e < 32; ++e) oacc[e] = 0.f;
#pragma unroll
            for (int e = 0; e < 16; ++e) ocor[e] = 0.f;
            Ops::template split_product<0>(oacc, ocor, KP / 16, [&](int plane, int kk) { return ops.x_desc(ci, true, plane, kk); }, s_desc);
            before_phase2(ci);
            // O += A·Vn, then out (A is 0 above the diagonal; a wgmma takes all 64 rows, so k runs to 64)
            Ops::template split_product<0>(oacc, ocor, kChunk / 16, [&](int plane, int kk) { return ops.a_desc(ci, plane, kk); }, vn_desc);
#pragma unroll
            for (int half = 0; half < 2; ++half) {   // columns 8t .. 8t + 7 of row(2·half): one 16-byte store
                const int r = row(2 * half);
                auto pair = [&](int c) { return pack_bf16x2(Ops::sum_split(oacc, ocor, elem(half, c)), Ops::sum_split(oacc, ocor, elem(half, c + 1))); };
                if (r < len)
                    *reinterpret_cast<uint4*>(o + ((size_t)(tok0 + ci * kChunk + r) * H + h) * V + j0 + col(0)) =
                        make_uint4(pair(0), pair(2), pair(4), pair(6));
            }
        }
    }
}
#endif  // KDA_SCAN_WGMMA

#ifdef KDA_SCAN_WGMMA
// The wide bf16 scan (warpgroup MMA): each warpgroup walks a 64-column slice of one head's state (columns j0 ..
// j0 + 63) with the state and Vn never leaving its registers: everything is computed transposed, with the slice's
// columns as the 64 rows M of each product, so Sᵀ and Vnᵀ are accumulators and feed the next product as its register
// A operand (as FlashAttention-3 feeds P to P·V).
//   a  Vnᵀ = Uᵀ − Sᵀ·Wᵀ            (N = the chunk's 64 rows, K = d;  B = W, K-major)
//   b  Oᵀ  = Sᵀ·QGᵀ                (the same A fragments;            B = QG, K-major)
//   c  Sᵀ  ← Sᵀ·Diag(γ) + Vnᵀ·KG   (N = KP values of d, K = rows;   B = KG, MN-major)
//   d  Oᵀ += Vnᵀ·Aᵀ                (N = K = the chunk's rows;        B = A, K-major), written out
// Each product is three wgmma a k-step on bf16 hi/lo parts, Xhi·Bhi + Xhi·Blo + Xlo·Bhi, into one fp32 accumulator.
// A wgmma that accumulates into the registers of the one before waits for it (~130 cycles at m64n64k16 against 32 of
// arithmetic, kernels/kda/NOTES.md, scan W1), so a and b, then c and d, are issued interleaved, each waiting on the
// other's predecessor; the two warpgroups' chains interleave on the tensor cores the same way. Accumulator element e
// of a thread (warp w of its warpgroup, lane 4g + t) in n-tile j is row 16w + g + 8⌊(e mod 4)/2⌋ (column 16w + 2g +
// ⌊(e mod 4)/2⌋ of V: column below) and column 8j + 2t + e mod 2 (d for Sᵀ, the chunk's row for Vnᵀ and Oᵀ). Against chunk_prefill_wgmma (32 columns a
// block, state and Vn through shared memory between warpgroups, two block barriers a chunk) each operand is copied
// once per 128 columns and no thread stores to shared memory, but each warpgroup's chunk is 36 dependent wgmma long:
// ~5.2 µs a chunk for the block's 128 columns (H200) where chunk_prefill_wgmma takes ~2.1 for its 32, so it wins only
// where that one's blocks take more than two waves of the card (KdaKernels.TakesWideScan).
template <int KP>
__device__ __forceinline__ void wide_scan(int H, int K, int V, const int* __restrict__ cu_seqlens,
    const int* __restrict__ chunk_offsets, const ScanInputs& in, float* state, __nv_bfloat16* __restrict__ o) {
    static_assert(KP == 64 || KP == 128, "chunk_prefill_kpad");
    constexpr int KS = KP / 16;   // k-steps over d
    using Bufs = WideScanBuffers<KP>;
    const int h = blockIdx.y, n = blockIdx.z, tid = threadIdx.x;
    const int lane = tid & 31, g = lane >> 2, t = lane & 3, j0 = blockIdx.x * kWideScanCols + 64 * (tid >> 7);
    const int tok0 = cu_seqlens[n], T = cu_seqlens[n + 1] - tok0;
    const int c0 = chunk_offsets[n], nchunks = chunk_offsets[n + 1] - c0;
    Bufs bufs(K, tid);
    auto chunk_index = [&](int ci) { return (size_t)(c0 + ci) * H + h; };
    const int jb = blockIdx.x * kWideScanCols;   // the block's first column
    if (tid == 0 && nchunks > 0) {   // operands 0, 1, 2 of the ring (WideScanBuffers) and chunk 0's U
        bufs.copy_rows(in, chunk_index(0), 0);
        bufs.copy_kg(in, chunk_index(0), 0, K);
        if (nchunks > 1) bufs.copy_rows(in, chunk_index(1), 1);
        bufs.copy_u(in, chunk_index(0), jb, V);
    }
    // Column of V of element e: row 16w + g + 8⌊(e mod 4)/2⌋ of the products holds column 16w + 2g + ⌊(e mod 4)/2⌋ (the
    // columns never mix, so any order serves), so a thread's two columns of a token are neighbours and O goes out in
    // 4-byte pieces, a warp's 8 lanes of a token filling one 32-byte sector.
    auto column = [&](int e) { return j0 + 16 * ((tid >> 5) & 3) + 2 * g + ((e & 3) >> 1); };
    auto inner = [&](int e) { return 8 * (e >> 2) + 2 * t + (e & 1); };                  // its column inside the tile

    float* S = state + ((size_t)n * H + h) * K * V;
    float sacc[KP / 2];   // Sᵀ [64 columns][KP]: element e at (column(e), d = inner(e)); rows ≥ V and d ≥ K stay 0
#pragma unroll
    for (int e = 0; e < KP / 2; ++e) sacc[e] = column(e) < V && inner(e) < K ? S[(size_t)inner(e) * V + column(e)] : 0.f;
    uint32_t shi[KS][4], slo[KS][4];   // Sᵀ's A fragments, for a and b
    uint32_t vhi[4][4], vlo[4][4];     // Vnᵀ's, for c and d
    float vacc[32], oacc[32];          // Vnᵀ, Oᵀ [64 columns][64 rows]
    split_fragments(sacc, shi, slo);
    auto store_o = [&](int ci) {
        const int len = min(kChunk, T - ci * kChunk);
#pragma unroll
        for (int e = 0; e < 32; ++e) {
            if (e & 2) continue;   // elements e and e + 2: columns j, j + 1 of token r
            const int j = column(e), r = inner(e);
            if (j < V && r < len)
                *reinterpret_cast<uint32_t*>(o + ((size_t)(tok0 + ci * kChunk + r) * H + h) * V + j) = pack_bf16x2(oacc[e], oacc[e + 2]);
        }
    };

    for (int ci = 0; ci < nchunks; ++ci) {
        bufs.wait_rows(ci);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) {   // a and b, interleaved: neither waits on the other's accumulator
            wgmma_m64n64_rs<0>(vacc, shi[kk], bufs.w_desc(ci, 0, kk), kk > 0);
            wgmma_m64n64_rs<0>(oacc, shi[kk], bufs.qg_desc(ci, 0, kk), kk > 0);
            wgmma_m64n64_rs<0>(vacc, shi[kk], bufs.w_desc(ci, 1, kk), true);
            wgmma_m64n64_rs<0>(oacc, shi[kk], bufs.qg_desc(ci, 1, kk), true);
            wgmma_m64n64_rs<0>(vacc, slo[kk], bufs.w_desc(ci, 0, kk), true);
            wgmma_m64n64_rs<0>(oacc, slo[kk], bufs.qg_desc(ci, 0, kk), true);
        }
        wgmma_commit();
        wgmma_wait<0>();   // a, b
        pin(vacc); pin(oacc); pin(shi); pin(slo);
        bufs.wait_u(ci);
#pragma unroll
        for (int e = 0; e < 32; ++e) vacc[e] = (column(e) < V ? bufs.u(inner(e), column(e) - jb) : 0.f) - vacc[e];   // Vnᵀ
        split_fragments(vacc, vhi, vlo);
        bufs.wait_kg(ci);
#pragma unroll
        for (int e = 0; e < KP / 2; ++e) sacc[e] *= bufs.gamma(ci, inner(e));
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {   // c and d, interleaved
            if constexpr (KP == 128) {
                wgmma_m64n128_bf16_rs_tb(sacc, vhi[kk], bufs.kg_desc(ci, 0, kk));
                wgmma_m64n64_rs<0>(oacc, vhi[kk], bufs.a_desc(ci, 0, kk), true);
                wgmma_m64n128_bf16_rs_tb(sacc, vhi[kk], bufs.kg_desc(ci, 1, kk));
                wgmma_m64n64_rs<0>(oacc, vhi[kk], bufs.a_desc(ci, 1, kk), true);
                wgmma_m64n128_bf16_rs_tb(sacc, vlo[kk], bufs.kg_desc(ci, 0, kk));
                wgmma_m64n64_rs<0>(oacc, vlo[kk], bufs.a_desc(ci, 0, kk), true);
            } else {
                wgmma_m64n64_rs<1>(sacc, vhi[kk], bufs.kg_desc(ci, 0, kk), true);
                wgmma_m64n64_rs<0>(oacc, vhi[kk], bufs.a_desc(ci, 0, kk), true);
                wgmma_m64n64_rs<1>(sacc, vhi[kk], bufs.kg_desc(ci, 1, kk), true);
                wgmma_m64n64_rs<0>(oacc, vhi[kk], bufs.a_desc(ci, 1, kk), true);
                wgmma_m64n64_rs<1>(sacc, vlo[kk], bufs.kg_desc(ci, 0, kk), true);
                wgmma_m64n64_rs<0>(oacc, vlo[kk], bufs.a_desc(ci, 0, kk), true);
            }
        }
        wgmma_commit();
        wgmma_wait<0>();   // c and d: Sᵀ and Oᵀ are complete
        pin(sacc); pin(oacc); pin(vhi); pin(vlo);
        named_barrier(1, kWideScanThreads);   // chunk ci's operands and U are read: their slots take the next ones
        if (tid == 0 && ci + 1 < nchunks) {
            bufs.copy_kg(in, chunk_index(ci + 1), ci + 1, K);                           // operand 2ci + 3
            if (ci + 2 < nchunks) bufs.copy_rows(in, chunk_index(ci + 2), ci + 2);      // operand 2ci + 4
            bufs.copy_u(in, chunk_index(ci + 1), jb, V);
        }
        store_o(ci);
        split_fragments(sacc, shi, slo);
    }
#pragma unroll
    for (int e = 0; e < KP / 2; ++e)
        if (column(e) < V && inner(e) < K) S[(size_t)inner(e) * V + column(e)] = sacc[e];
}
#endif  // KDA_SCAN_WGMMA

// The scan this image runs: for bf16 inputs on wgmma where the build has it (KDA_SCAN_WGMMA), else on mma.sync.
template <typename Tin, int KP>
__device__ __forceinline__ void chunk_scan(int H, int K, int V, const int* __restrict__ cu_seqlens,
    const int* __restrict__ chunk_offsets, const float* __restrict__ w_in, const float* __restrict__ u_in,
    const float* __restrict__ a_in, const float* __restrict__ qg_in, const float* __restrict__ kg_in,
    const float* __restrict__ gamma_in, float* state, Tin* __restrict__ o) {
#ifdef KDA_SCAN_WGMMA
    if constexpr (std::is_same<Tin, __nv_bfloat16>::value)
        chunk_prefill_wgmma<KP>(H, K, V, cu_seqlens, chunk_offsets, ScanInputs{w_in, u_in, a_in, qg_in, kg_in, gamma_in}, state, o);
    else
#endif
        chunk_prefill<Tin, KP>(H, K, V, cu_seqlens, chunk_offsets, w_in, u_in, a_in, qg_in, kg_in, gamma_in, state, o);
}

// ---------------------------------------------------------------------------------------------------------------------
// Prefill pre-kernel: the causal conv (+ SiLU, as stored) of q, k, v from the projection outputs, with the sequence's
// carried window for its first 3 tokens; the gate g in fp32; β = sigmoid(b). Thread = one channel (of q, k and v),
// block y = kPrepareTokens consecutive tokens: the taps are loaded once and each input once, the conv sliding along
// the tokens in registers (a block a token re-read every input 4 times and the taps every token).
// q, k, v go out as Tout: Tin, or bf16 from fp32 projections (the model's prefill, whose activations are fp32, runs the
// core on bf16 q, k, v as FLA does; the conv and everything else stay fp32 and only the stores round).
template <typename Tin, typename Tout>
__device__ __forceinline__ void prepare(int H, int K, int V, int num_seqs, const int* __restrict__ cu_seqlens,
    const Tin* __restrict__ pq, const Tin* __restrict__ pk, const Tin* __restrict__ pv, const Tin* __restrict__ pf,
    const Tin* __restrict__ pb, const Tin* __restrict__ wq, const Tin* __restrict__ wk, const Tin* __restrict__ wv,
    const float* __restrict__ a_log, const float* __restrict__ dt_bias, const Tin* __restrict__ conv_q,
    const Tin* __restrict__ conv_k, const Tin* __restrict__ conv_v, Tout* __restrict__ q, Tout* __restrict__ k,
    Tout* __restrict__ v, float* __restrict__ g, float* __restrict__ beta) {
    const int HK = H * K, HV = H * V;
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int t0 = blockIdx.y * kPrepareTokens, T = cu_seqlens[num_seqs], t1 = min(T, t0 + kPrepareTokens);
    const bool qk = c < HK, vv = c < HV, bt = blockIdx.x == 0 && threadIdx.x < H;
    if (t0 >= T || !(qk || vv || bt)) return;
    int n = 0, hi = num_seqs - 1;   // the last sequence starting at or before t0 (skips empty sequences)
    while (n < hi) {
        const int mid = (n + hi + 1) >> 1;
        if (cu_seqlens[mid] <= t0) n = mid; else hi = mid - 1;
    }
    const int cq = qk ? c : 0, cv = vv ? c : 0;   // channels past a width read channel 0 and store nothing
    const float gate_rate = -expf(a_log[cq / K]), dtb = dt_bias[cq];
    // Input i steps back from token t (position p in sequence n): from the batch, or from window slot 3 + p − i
    // (slot 2 = the newest carried input).
    auto back = [&](const Tin* x, const Tin* win, int C, int ch, int t, int p, int i) {
        return p >= i ? ld(x[(size_t)(t - i) * C + ch]) : ld(win[((size_t)n * 3 + 3 + p - i) * C + ch]);
    };
    // The three inputs before the current token, newest first: hq[0] is 1 back.
    float hq[3], hk[3], hv[3];
    int p = t0 - cu_seqlens[n];
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        hq[i] = back(pq, conv_q, HK, cq, t0, p, i + 1);
        hk[i] = back(pk, conv_k, HK, cq, t0, p, i + 1);
        hv[i] = back(pv, conv_v, HV, cv, t0, p, i + 1);
    }
    for (int t = t0; t < t1; ++t) {
        if (t > t0 && n + 1 < num_seqs && cu_seqlens[n + 1] <= t) {   // a new sequence: its carried window
            while (n + 1 < num_seqs && cu_seqlens[n + 1] <= t) ++n;
#pragma unroll
            for (int i = 0; i < 3; ++i) {
                hq[i] = ld(conv_q[((size_t)n * 3 + 2 - i) * HK + cq]);
                hk[i] = ld(conv_k[((size_t)n * 3 + 2 - i) * HK + cq]);
                hv[i] = ld(conv_v[((size_t)n * 3 + 2 - i) * HV + cv]);
            }
        }
        const float xq = ld(pq[(size_t)t * HK + cq]), xk = ld(pk[(size_t)t * HK + cq]), xv = ld(pv[(size_t)t * HV + cv]);
        if (qk) {
            const size_t x = (size_t)t * HK + c;
            st(q + x, conv_silu(wq + 4 * c, hq[2], hq[1], hq[0], xq));
            st(k + x, conv_silu(wk + 4 * c, hk[2], hk[1], hk[0], xk));
            g[x] = gate_rate * softplusf_(ld(pf[x]) + dtb);
        }
        if (vv) st(v + (size_t)t * HV + c, conv_silu(wv + 4 * c, hv[2], hv[1], hv[0], xv));
        if (bt) beta[(size_t)t * H + threadIdx.x] = sigmoidf_(ld(pb[(size_t)t * H + threadIdx.x]));
        hq[2] = hq[1]; hq[1] = hq[0]; hq[0] = xq;
        hk[2] = hk[1]; hk[1] = hk[0]; hk[0] = xk;
        hv[2] = hv[1]; hv[1] = hv[0]; hv[0] = xv;
    }
}

// After prepare (a separate launch, since prepare reads the old windows): each sequence's window becomes its last 3
// pre-conv inputs, reaching back into the old window when the sequence is shorter than 3. Block (x, n), thread = channel.
template <typename Tin>
__device__ __forceinline__ void conv_window_update(int H, int K, int V, const int* __restrict__ cu_seqlens,
    const Tin* __restrict__ pq, const Tin* __restrict__ pk, const Tin* __restrict__ pv, Tin* conv_q, Tin* conv_k,
    Tin* conv_v) {
    const int n = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    const int t0 = cu_seqlens[n], len = cu_seqlens[n + 1] - t0;
    auto update = [&](const Tin* x, Tin* win, int C) {
        if (c >= C) return;
#pragma unroll
        for (int w = 0; w < 3; ++w) {   // slot w reads slot len + w > w of the old window: not yet overwritten
            const int pos = len - 3 + w;
            const Tin val = pos >= 0 ? x[(size_t)(t0 + pos) * C + c] : win[((size_t)n * 3 + len + w) * C + c];
            win[((size_t)n * 3 + w) * C + c] = val;
        }
    };
    update(pq, conv_q, H * K);
    update(pk, conv_k, H * K);
    update(pv, conv_v, H * V);
}

}  // namespace kda

// ---------------------------------------------------------------------------------------------------------------------
// Entry points: kimi_kda_<op>_<dtype>. bf16 = bf16 activations and weights with fp32 gate parameters, gates and state;
// f32 = everything fp32 (the accuracy reference path); f32_bf16 (prepare only) = fp32 in, bf16 q, k, v out.
#define KDA_DECODE_ENTRY(NAME, T)                                                                                      \
    extern "C" __global__ void __launch_bounds__(kda::kDecodeThreads, 1)                          \
        NAME(int H, int K, int V, int N, float rms_eps, const T* pq, const T* pk, const T* pv, const T* pf,            \
            const T* pb, const T* pz, const T* wq, const T* wk, const T* wv, const float* a_log, const float* dt_bias, \
            const T* w_norm, T* conv_q, T* conv_k, T* conv_v, float* state, T* y) {                                   \
        kda::decode_steps<T>(H, K, V, N, rms_eps, pq, pk, pv, pf, pb, pz, wq, wk, wv, a_log, dt_bias, w_norm,         \
            [=](int n) {                                                                                               \
                return kda::DecodeSequence<T>{conv_q + (size_t)n * 3 * H * K, conv_k + (size_t)n * 3 * H * K,         \
                                              conv_v + (size_t)n * 3 * H * V, state + (size_t)n * H * K * V};          \
            }, y);                                                                                                     \
    }
KDA_DECODE_ENTRY(kimi_kda_decode_step_bf16, __nv_bfloat16)
KDA_DECODE_ENTRY(kimi_kda_decode_step_f32, float)

// The same step for sequences whose windows and states are separate allocations (one per session): their addresses
// come in the launch's parameters, so nothing is gathered or scattered and no device table has to be kept up to date.
// __grid_constant__ keeps the table in the parameter bank, indexed by the sequence, instead of a per-thread local copy.
#define KDA_DECODE_TABLE_ENTRY(NAME, T)                                                                                \
    extern "C" __global__ void __launch_bounds__(kda::kDecodeThreads, 1)                          \
        NAME(int H, int K, int V, int N, float rms_eps, const T* pq, const T* pk, const T* pv, const T* pf,            \
            const T* pb, const T* pz, const T* wq, const T* wk, const T* wv, const float* a_log, const float* dt_bias, \
            const T* w_norm, const __grid_constant__ kda::DecodeTable<T> table, T* y) {                                \
        kda::decode_steps<T>(H, K, V, N, rms_eps, pq, pk, pv, pf, pb, pz, wq, wk, wv, a_log, dt_bias, w_norm,         \
            [&](int n) { return kda::DecodeSequence<T>{table.conv_q[n], table.conv_k[n], table.conv_v[n], table.state[n]}; }, \
            y);                                                                                                        \
    }
KDA_DECODE_TABLE_ENTRY(kimi_kda_decode_step_table_bf16, __nv_bfloat16)
KDA_DECODE_TABLE_ENTRY(kimi_kda_decode_step_table_f32, float)

#define KDA_INTRA_ENTRY(NAME, T)                                                                                       \
    extern "C" __global__ void __launch_bounds__(kda::kIntraThreads, 2) NAME(int H, int K, int V, int num_seqs,       \
        const int* cu_seqlens, const int* chunk_offsets, const T* q, const T* k, const T* v, const float* g,          \
        const float* beta, float* w_out, float* u_out, float* a_out, float* qg_out, float* kg_out, float* gamma_out) { \
        if (K == 128 && sizeof(T) == 2) /* chunk_intra's KC */                                                         \
            kda::chunk_intra<T, 128>(H, K, V, num_seqs, cu_seqlens, chunk_offsets, q, k, v, g, beta, w_out, u_out,     \
                a_out, qg_out, kg_out, gamma_out);                                                                     \
        else                                                                                                           \
            kda::chunk_intra<T, 0>(H, K, V, num_seqs, cu_seqlens, chunk_offsets, q, k, v, g, beta, w_out, u_out,       \
                a_out, qg_out, kg_out, gamma_out);                                                                     \
    }
KDA_INTRA_ENTRY(kimi_kda_chunk_intra_bf16, __nv_bfloat16)
KDA_INTRA_ENTRY(kimi_kda_chunk_intra_f32, float)

#define KDA_PREFILL_ENTRY(NAME, T)                                                                              \
    extern "C" __global__ void __launch_bounds__(kda::kPrefillThreads) NAME(int H, int K, int V,                      \
        const int* cu_seqlens, const int* chunk_offsets, const float* w_in, const float* u_in, const float* a_in,     \
        const float* qg_in, const float* kg_in, const float* gamma_in, float* state, T* o) {                          \
        if (kda::chunk_prefill_kpad(K) == 64)                                                                          \
            kda::chunk_scan<T, 64>(H, K, V, cu_seqlens, chunk_offsets, w_in, u_in, a_in, qg_in, kg_in, gamma_in, state, o); \
        else                                                                                                           \
            kda::chunk_scan<T, 128>(H, K, V, cu_seqlens, chunk_offsets, w_in, u_in, a_in, qg_in, kg_in, gamma_in, state, o); \
    }
KDA_PREFILL_ENTRY(kimi_kda_chunk_prefill_bf16, __nv_bfloat16)
KDA_PREFILL_ENTRY(kimi_kda_chunk_prefill_f32, float)

// The wide bf16 scan (sm_90a image only; a trap elsewhere): the same parameters and scratch as
// kimi_kda_chunk_prefill_bf16, its own launch (LAUNCH GEOMETRY).
extern "C" __global__ void __launch_bounds__(kda::kWideScanThreads, 1) kimi_kda_chunk_prefill_wide_bf16(int H, int K,
    int V, const int* cu_seqlens, const int* chunk_offsets, const float* w_in, const float* u_in, const float* a_in,
    const float* qg_in, const float* kg_in, const float* gamma_in, float* state, __nv_bfloat16* o) {
#ifdef KDA_SCAN_WGMMA
    const kda::ScanInputs in{w_in, u_in, a_in, qg_in, kg_in, gamma_in};
    if (kda::chunk_prefill_kpad(K) == 64) kda::wide_scan<64>(H, K, V, cu_seqlens, chunk_offsets, in, state, o);
    else kda::wide_scan<128>(H, K, V, cu_seqlens, chunk_offsets, in, state, o);
#else
    (void)H, (void)K, (void)V, (void)cu_seqlens, (void)chunk_offsets, (void)w_in, (void)u_in, (void)a_in, (void)qg_in,
        (void)kg_in, (void)gamma_in, (void)state, (void)o;
    __trap();
#endif
}

#define KDA_PREPARE_ENTRY(NAME, T, TOUT)                                                                               \
    extern "C" __global__ void __launch_bounds__(kda::kPrepareThreads) NAME(int H, int K, int V, int num_seqs,        \
        const int* cu_seqlens, const T* pq, const T* pk, const T* pv, const T* pf, const T* pb, const T* wq,          \
        const T* wk, const T* wv, const float* a_log, const float* dt_bias, const T* conv_q, const T* conv_k,         \
        const T* conv_v, TOUT* q, TOUT* k, TOUT* v, float* g, float* beta) {                                          \
        kda::prepare<T, TOUT>(H, K, V, num_seqs, cu_seqlens, pq, pk, pv, pf, pb, wq, wk, wv, a_log, dt_bias, conv_q,   \
            conv_k, conv_v, q, k, v, g, beta);                                                                         \
    }
KDA_PREPARE_ENTRY(kimi_kda_prepare_bf16, __nv_bfloat16, __nv_bfloat16)
KDA_PREPARE_ENTRY(kimi_kda_prepare_f32, float, float)
// fp32 projections in, bf16 q, k, v out: the model's prefill (CudaBackend.KdaMixer).
KDA_PREPARE_ENTRY(kimi_kda_prepare_f32_bf16, float, __nv_bfloat16)

#define KDA_WINDOW_ENTRY(NAME, T)                                                                                      \
    extern "C" __global__ void __launch_bounds__(kda::kPrepareThreads) NAME(int H, int K, int V,                      \
        const int* cu_seqlens, const T* pq, const T* pk, const T* pv, T* conv_q, T* conv_k, T* conv_v) {              \
        kda::conv_window_update<T>(H, K, V, cu_seqlens, pq, pk, pv, conv_q, conv_k, conv_v);                           \
    }
KDA_WINDOW_ENTRY(kimi_kda_conv_window_update_bf16, __nv_bfloat16)
KDA_WINDOW_ENTRY(kimi_kda_conv_window_update_f32, float)
