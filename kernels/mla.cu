// MLA (multi-head latent attention) kernels: the absorbed decode path and the expanded prefill path.
// Notation (spec §3): H heads, N = qk_nope_head_dim, P = qk_rope_head_dim (never rotated: NoPE), V = v_head_dim,
// R = kv_lora_rank, D = R + P the latent row. The cache holds per token one bf16 latent row (c | k_pe) [D].
// kv_b_proj's weight kvB [H·(N+V), R] bf16 holds per head N rows of W_UK, then V rows of W_UV.
//
// ABSORBED DECODE (few tokens over a long cache), three steps:
//   kimi_mla_absorb_query   q_lat[t,h,:R] = Σ_n q[t,h,n]·W_UK_h[n,:],  q_lat[t,h,R:] = q[t,h,N:]   (fp32)
//   kimi_mla_decode_partial: MQA over the latent, per token t and head h
//       p_s = softmax_s(scale·q_lat[t,h]·latent[s]) over s ≤ start + t,   out[t,h,:] = Σ_s p_s·latent[s,:R]
//     as flash-decoding: the cache is split into a fixed number of slices (one block each, for all heads of a token,
//     so a row is read once per token); each block keeps an online softmax and writes its unnormalised partial output
//     and (max, sum). Every block reads the length from device memory, so the grid does not depend on it and a
//     captured decode graph replays while the cache grows.
//     kimi_mla_decode_partial_table*: the same for one token of each of N sequences with caches of their own (a batched
//     decode step): grid (S, N), block (s, n) reads sequence n's cache from a table passed as a kernel parameter and
//     its length from starts[n]; its partials go where token n's go, so one merge serves all N.
//     On Hopper the model's shape takes kimi_mla_decode_partial_wgmma_h32_r512_d576 instead (same contract): wgmma
//     from shared memory, a producer warpgroup, q_lat and p as bf16 hi + lo pairs (see there).
//   kimi_mla_combine_absorb_output  merges the slices by log-sum-exp into out[t,h,:], then o[t,h,v] = Σ_r W_UV_h[v,r]·out[t,h,r]
// ONE-LAUNCH DECODE (one token over a cache of at most 1,408 rows, Hopper): kimi_mla_decode_fused_r512_d576 does all
//   three steps in one launch, by thread-block clusters exchanging q_lat and the slices' partials through distributed
//   shared memory (see there); the backend takes it while the cache fits and records the decode step again after.
// EXPANDED PREFILL (kimi_mla_prefill_*): causal flash attention per head with key = (keysValues[s,h,:N] | k_pe[s]),
//   value = keysValues[s,h,N:], keysValues = latent[:, :R]·kvBᵀ (computed by a GEMM before).
//
// Precision: products on the tensor cores (mma.sync m16n8k16, fp32 accumulation). bf16 × bf16 where both operands
// are bf16 (the prefill's q·k). Where one is fp32 (the decode query q_lat, the softmax weights p of both paths) it goes
// in as fp16 (11-bit significand: ~3e-4 relative error, where bf16 would cost ~2e-3) and the bf16 operand it meets is
// converted to fp16 (in registers for the decode, once per tile in shared memory for the prefill's V), exactly for magnitudes in [2^-14, 65504] (the RMS-normalised latent, k_pe and the
// expanded keys/values are far inside; below 2^-14 the absolute error stays under 2^-25). The wgmma decode kernel instead
// splits its fp32 operands into two bf16 parts (x = hi + lo, exact to ~2^-17), which meet the bf16 cache as it is.
// Exponentials are 2^x of scores pre-multiplied by scale·log2(e).
//
// Inputs are finite; rows of the cache past the visible length are never read (they may hold NaN): tiles past the end
// are zero-filled by cp.async without touching memory. Pointers are 16-byte aligned (the C# wrappers check).
#ifdef KDA_EMULATE
#include "kda/tests/cuda_emu.h"
// The common.cuh helpers used here (common.cuh needs the CUDA headers).
inline float bf16_lo(uint32_t pair) { return __uint_as_float(pair << 16); }
inline float bf16_hi(uint32_t pair) { return __uint_as_float(pair & 0xFFFF0000u); }
inline float bf16_to_f32(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }
inline uint16_t f32_to_bf16(float f) { return __bfloat16_as_ushort(__float2bfloat16_rn(f)); }
inline uint32_t pack_bf16x2(float lo, float hi) { return static_cast<uint32_t>(f32_to_bf16(lo)) | (static_cast<uint32_t>(f32_to_bf16(hi)) << 16); }
inline void allow_successor() {}   // one kernel at a time here: nothing to overlap
inline void wait_for_predecessor() {}
#else
#include "common.cuh"
#endif
#include <stdint.h>
#include "hopper.cuh"
#include "fragments.cuh"

namespace mla {

constexpr float kNegInf = -INFINITY;

// ---- primitives (each with its CPU-emulator path) -------------------------------------------------------------------

__device__ __forceinline__ uint16_t* dynamic_smem() {
#ifdef KDA_EMULATE
    return reinterpret_cast<uint16_t*>(emu_dynamic_smem);
#else
    extern __shared__ __align__(128) uint16_t mla_smem_[];
    return mla_smem_;
#endif
}

// 2^x as one MUFU.EX2 (≈ 2 ulp; 2^-inf = 0).
__device__ __forceinline__ float ex2(float x) {
#ifdef KDA_EMULATE
    return std::exp2(x);
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#endif
}

// 16 bytes global → shared; pred false zero-fills without reading global memory.
__device__ __forceinline__ void cp_async16(uint16_t* dst, const uint16_t* src, bool pred) {
#ifdef KDA_EMULATE
    static const uint16_t zeros[8] = {};
    emu_cp_async16(dst, pred ? src : zeros);
#else
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(pred ? 16 : 0) : "memory");
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

// Two floats as an fp16 pair (lo in the low half), rounded to nearest even.
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
#ifdef KDA_EMULATE
    return static_cast<uint32_t>(emu_f32_to_f16(lo)) | (static_cast<uint32_t>(emu_f32_to_f16(hi)) << 16);
#else
    uint32_t r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#endif
}

// A bf16 pair as an fp16 pair (exact inside fp16's normal range), so it can meet an fp16 operand.
__device__ __forceinline__ uint32_t bf16x2_to_f16x2(uint32_t x) { return pack_f16x2(bf16_lo(x), bf16_hi(x)); }
__device__ __forceinline__ void to_f16(uint32_t (&r)[4]) {
#pragma unroll
    for (int i = 0; i < 4; i++) r[i] = bf16x2_to_f16x2(r[i]);
}

// Max / sum over the `width` lanes (a power of two ≤ 32) of an aligned lane group.
__device__ __forceinline__ float group_max(float v, int width) {
    for (int o = 1; o < width; o <<= 1) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
    return v;
}
__device__ __forceinline__ float group_sum(float v, int width) {
    for (int o = 1; o < width; o <<= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}

// ---- absorbed decode: query absorption ------------------------------------------------------------------------------
//
// Both absorptions stream a 4.2 MB weight (W_UK, W_UV: H·128·512 bf16) once per decode step, so they are laid out for
// bandwidth: a block takes one head and 128 weight columns (16 pieces of 16 bytes per row; a half-warp reads one row's
// 256 contiguous bytes), 256 threads hold 8 pieces each, so one block requests its whole 32 KB slice at once and the
// 128 blocks of the model's shape request all 4.2 MB before waiting for the predecessor (the weights do not depend on
// it). After the wait the weights stay in registers for every token.
constexpr int kAbsorbThreads = 256;
constexpr int kAbsorbColumns = 128;                          // weight columns per block
constexpr int kAbsorbPieces = kAbsorbColumns / 8;            // 16-byte pieces per row: a half-warp
constexpr int kAbsorbRowStep = kAbsorbThreads / kAbsorbPieces;   // 16 rows covered per held piece
constexpr int kAbsorbHeld = 8;                               // pieces a thread holds: rows row0 + 16k, k < 8 (128 rows)
constexpr int kAbsorbWarps = kAbsorbThreads / 32;
constexpr int kQueryTokens = 4;                              // tokens per pass of the query absorption

// Dynamic shared memory of the query absorption, bytes: q [4][N] and the per-warp sums [8][4][128].
__host__ __device__ constexpr size_t absorb_query_smem_bytes(int N) {
    return (static_cast<size_t>(kQueryTokens) * N + kAbsorbWarps * kQueryTokens * kAbsorbColumns) * 4;
}

// The 8 bf16 of a piece times 8 floats.
__device__ __forceinline__ float dot8(uint4 w, float4 a, float4 b) {
    return bf16_lo(w.x) * a.x + bf16_hi(w.x) * a.y + bf16_lo(w.y) * a.z + bf16_hi(w.y) * a.w +
           bf16_lo(w.z) * b.x + bf16_hi(w.z) * b.y + bf16_lo(w.w) * b.z + bf16_hi(w.w) * b.w;
}

// q_lat [T, H, D] fp32 from q [T, H·(N+P)] fp32. Grid (ceil(R / 128), H); 256 threads; absorb_query_smem_bytes(N).
// R % 8 == 0. Thread (row0 = tid / 16, piece = tid % 16) accumulates rows row0, row0 + 16, ... of its 8 columns, for 4
// tokens a pass (q staged in shared memory); the two half-warps' sums meet by one exchange (each lane keeps 4 of the
// 8 columns), the 8 warps' sums in shared memory.
// Programmatic launch: q is not its predecessor's output but the projections' before it, and its predecessor (the
// latent-row writer, kimi_write_latent_rows_f32) lets it launch only after its own wait (a precondition): so it reads
// q and writes q_lat without waiting, while the row writer (which normalises the latent too) still runs, and waits
// only at the end, so that its successor's wait still covers the row the writer appends.
extern "C" __global__ void __launch_bounds__(kAbsorbThreads)
kimi_mla_absorb_query(float* __restrict__ q_lat, const float* __restrict__ q, const uint16_t* __restrict__ kvb,
                      int T, int H, int N, int P, int V, int R) {
    allow_successor();
    const int h = blockIdx.y, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int piece = tid % kAbsorbPieces, row0 = tid / kAbsorbPieces;
    const int c0 = blockIdx.x * kAbsorbColumns, col = c0 + piece * 8;
    const int qk = N + P, D = R + P;
    const uint16_t* w_uk = kvb + static_cast<size_t>(h) * (N + V) * R + col;
    auto weights = [&](int n) { return col < R && n < N ? *reinterpret_cast<const uint4*>(w_uk + static_cast<size_t>(n) * R) : make_uint4(0, 0, 0, 0); };
    uint4 held[kAbsorbHeld];
#pragma unroll
    for (int k = 0; k < kAbsorbHeld; k++) held[k] = weights(row0 + k * kAbsorbRowStep);

    float* q_sh = reinterpret_cast<float*>(dynamic_smem());   // [4][N]
    float* sums = q_sh + kQueryTokens * N;                     // [8 warps][4][128]
    const float* q_head = q + h * qk;
    for (int t0 = 0; t0 < T; t0 += kQueryTokens) {
        for (int e = tid; e < kQueryTokens * N; e += kAbsorbThreads) {
            const int i = e / N, n = e - i * N;
            q_sh[e] = t0 + i < T ? q_head[static_cast<size_t>(t0 + i) * H * qk + n] : 0.0f;
        }
        __syncthreads();   // q staged; the previous pass's sums read
        float acc[kQueryTokens][8] = {};
        auto accumulate = [&](uint4 w, int n) {
            const float wf[8] = {bf16_lo(w.x), bf16_hi(w.x), bf16_lo(w.y), bf16_hi(w.y),
                                 bf16_lo(w.z), bf16_hi(w.z), bf16_lo(w.w), bf16_hi(w.w)};
#pragma unroll
            for (int i = 0; i < kQueryTokens; i++) {
                const float x = q_sh[i * N + n];
#pragma unroll
                for (int j = 0; j < 8; j++) acc[i][j] += x * wf[j];
            }
        };
#pragma unroll
        for (int k = 0; k < kAbsorbHeld; k++)
            if (row0 + k * kAbsorbRowStep < N) accumulate(held[k], row0 + k * kAbsorbRowStep);
        for (int n = row0 + kAbsorbHeld * kAbsorbRowStep; n < N; n += kAbsorbRowStep) accumulate(weights(n), n);   // N > 128

        // Lanes l and l ^ 16 hold the same columns: the low half-warp keeps columns 0-3, the high one 4-7.
        const bool high = lane >= 16;
#pragma unroll
        for (int i = 0; i < kQueryTokens; i++) {
            float kept[4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float send = high ? acc[i][j] : acc[i][j + 4];
                kept[j] = (high ? acc[i][j + 4] : acc[i][j]) + __shfl_xor_sync(0xFFFFFFFFu, send, 16);
            }
            *reinterpret_cast<float4*>(sums + (warp * kQueryTokens + i) * kAbsorbColumns + piece * 8 + (high ? 4 : 0)) =
                make_float4(kept[0], kept[1], kept[2], kept[3]);
        }
        __syncthreads();
        for (int e = tid; e < kQueryTokens * kAbsorbColumns; e += kAbsorbThreads) {
            const int i = e / kAbsorbColumns, c = e % kAbsorbColumns;
            if (t0 + i >= T || c0 + c >= R) continue;
            float sum = 0.0f;
#pragma unroll
            for (int w = 0; w < kAbsorbWarps; w++) sum += sums[(w * kQueryTokens + i) * kAbsorbColumns + c];
            q_lat[(static_cast<size_t>(t0 + i) * H + h) * D + c0 + c] = sum;
        }
    }
    if (blockIdx.x == 0)   // the rope part passes through: k_pe is shared by all heads
        for (int e = tid; e < T * P; e += kAbsorbThreads) {
            const int t = e / P, i = e % P;
            q_lat[(static_cast<size_t>(t) * H + h) * D + R + i] = q[static_cast<size_t>(t) * H * qk + h * qk + N + i];
        }
    wait_for_predecessor();
}

// ---- absorbed decode: flash-decoding over the latent cache ----------------------------------------------------------
//
// Block (slice s, token t), W = kDecodeWarps warps. Heads pad to MT = ceil(H/16) m16 tiles (H ≤ 32). Per tile of
// kDecodeRows cache rows, three steps:
//   A. S = Q·Kᵀ [MT·16, rows] on the tensor cores: warp w takes m-tile w / KS and every KS-th k16 step from w % KS
//      (KS = W / MT), holding its q_lat fragments (fp16) in registers for the whole slice; partial S per warp go to
//      shared memory.
//   B. Online softmax, one thread group per head: sums the KS partials, masks rows past the slice, updates (m, l),
//      writes p as fp16 and the rescale factor α.
//   C. O = α·O + P·V [MT·16, R]: warp w owns the 16-column groups w, w + W, ... of the output for all heads.
// Software-pipelined by one tile so that a tile costs two barriers, not three, and the two tensor-core steps share a
// phase: phase Y(i) = B(i) (short, ALU/MUFU), phase X(i) = C(i) and A(i + 1), whose independent mma chains the warp
// interleaves (each alone stalled on the ldmatrix → convert → mma dependency). X(i) reads tiles i and i + 1, so the
// cp.async ring has kDecodeStages ≥ 3 slots: Y(i) refills the slot of tile i − 1 with tile i + stages − 1, which
// then has a whole iteration to arrive. Each warp copies whole rows (lane l the 16-byte pieces l, l + 32, ...): no
// division per piece; rows past the slice are zero-filled.
constexpr int kDecodeWarps = 8, kDecodeThreads = kDecodeWarps * 32;
#ifndef MLA_DECODE_ROWS
#define MLA_DECODE_ROWS 48
#endif
#ifndef MLA_DECODE_STAGES
#define MLA_DECODE_STAGES 3
#endif
constexpr int kDecodeRows = MLA_DECODE_ROWS, kDecodeStages = MLA_DECODE_STAGES;
static_assert(kDecodeRows % 16 == 0 && kDecodeRows % kDecodeWarps == 0 && kDecodeRows <= 64, "rows: whole k16 steps, whole rows per warp");
static_assert(kDecodeStages >= 3, "phase X reads two tiles while a third arrives");
constexpr int kDecodeRowTiles = kDecodeRows / 8;   // n8 tiles of scores per warp
constexpr int kDecodeMaxQSteps = (36 + kDecodeWarps / 2 - 1) / (kDecodeWarps / 2);   // k16 steps of q a warp holds:
                                                                                        // D ≤ 16·steps·KS (576 at H ≤ 32)
constexpr int kDecodeMaxGroups = 512 / 16 / kDecodeWarps;   // 16-column output groups per warp: R ≤ 512
constexpr int kDecodeSRow = kDecodeRows + 8, kDecodePRow = kDecodeRows + 8;   // padded shared rows (bank spread)
constexpr int kDecodeTableSequences = 16;   // sequences one table launch takes (MlaKernels.DecodeTableSequences): the
                                            // decode scratch's tokens, which one merge launch covers

// The table entry points' per-sequence caches, passed by value as a kernel parameter (128 B of the 4 KiB parameter
// space, so nothing on the device has to be kept in step with the sessions): entry n is sequence n = blockIdx.y's
// cache [≥ starts[n] + 1, D]; entries past the grid are not read. The lengths stay in device memory (starts), so a
// captured batched step can replay while the caches grow in place.
struct DecodeTable {
    const uint16_t* latent[kDecodeTableSequences];
};

// Dynamic shared memory, bytes: the ring [stages][rows][D + 8] bf16, S partials [W warps][16][rows + 8] f32,
// P [MT·16][rows + 8] fp16, α [MT·16] f32.
__host__ __device__ constexpr size_t decode_smem_bytes(int D, int MT) {
    return static_cast<size_t>(kDecodeStages) * kDecodeRows * (D + 8) * 2 + kDecodeWarps * 16 * kDecodeSRow * 4 +
           MT * 16 * kDecodePRow * 2 + MT * 16 * 4;
}

// partial_o [T, S, H, R] f32 (unnormalised), partial_ml [T, S, H, 2] (max in log2 units, sum); empty slices write
// max = -inf, sum = 0 and no partial_o. Grid (S, T); kDecodeThreads threads; decode_smem_bytes(D, ceil(H/16)).
// H ≤ 32, D % 16 == 0, D ≤ 16·kDecodeMaxQSteps·(W / ceil(H/16)), R % 64 == 0, R ≤ 512. Programmatic launch: it waits
// for its predecessor before reading anything (the length, q_lat and the newest cache row are all written just before).
// Block (s, t) attends q_lat[t] over rows [0, len) of `latent`: the entry point found both (token t of one cache, or
// sequence t of a table) after that wait, so the two forms run the same code on the same rows.
// H, R, D as compile-time constants (kExact) or runtime values: with constants the guards inside the unrolled loops
// vanish, so each phase is one straight-line block that ptxas can schedule as a whole (interleaving the independent
// ldmatrix → convert → mma chains); with runtime values every guard splits it into blocks of one k16 step.
template <bool kExact, int kH, int kR, int kD>
__device__ __forceinline__ void decode_partial(float* __restrict__ partial_o, float* __restrict__ partial_ml,
                                               const float* __restrict__ q_lat, const uint16_t* __restrict__ latent,
                                               int len, int H_, int R_, int D_, float scale_log2) {
    const int H = kExact ? kH : H_, R = kExact ? kR : R_, D = kExact ? kD : D_;
    const int splits = gridDim.x, s = blockIdx.x, t = blockIdx.y;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
    const int MT = (H + 15) / 16, KS = kDecodeWarps / MT, ksteps = D / 16;
    const int per = ((len + splits - 1) / splits + kDecodeRows - 1) / kDecodeRows * kDecodeRows;
    const int begin = s * per, end = min(len, begin + per);
    float* ml = partial_ml + (static_cast<size_t>(t) * splits + s) * H * 2;
    if (begin >= end) {   // an empty slice (short cache): nothing to merge
        if (tid < H) { ml[2 * tid] = kNegInf; ml[2 * tid + 1] = 0.0f; }
        return;
    }

    const int stride = D + 8;
    uint16_t* ring = dynamic_smem();
    float* s_part = reinterpret_cast<float*>(ring + kDecodeStages * kDecodeRows * stride);   // [W][16][rows + 8]
    uint16_t* p_sh = reinterpret_cast<uint16_t*>(s_part + kDecodeWarps * 16 * kDecodeSRow);    // [MT·16][rows + 8] fp16
    float* alpha_sh = reinterpret_cast<float*>(p_sh + MT * 16 * kDecodePRow);                  // [MT·16]

    const int chunks = D / 8, tiles = (end - begin + kDecodeRows - 1) / kDecodeRows;
    auto slot = [&](int i) { return ring + (i % kDecodeStages) * kDecodeRows * stride; };
    // Rows warp, warp + W, ... of tile i; the rows of the latent are contiguous, D elements apart.
    auto load_tile = [&](int i) {
        uint16_t* dst = slot(i);
        const int row0 = begin + i * kDecodeRows;
#pragma unroll
        for (int k = 0; k < kDecodeRows / kDecodeWarps; k++) {
            const int r = warp + k * kDecodeWarps;
            const bool ok = row0 + r < end;
            const uint16_t* src = ok ? latent + static_cast<size_t>(row0 + r) * D : latent;
            for (int ch = lane; ch < chunks; ch += 32) cp_async16(dst + r * stride + ch * 8, src + (ok ? ch * 8 : 0), ok);
        }
    };
#pragma unroll
    for (int i = 0; i < kDecodeStages - 1; i++) {
        if (i < tiles) load_tile(i);
        cp_async_commit();
    }

    // This warp's q_lat fragments (m-tile mt_w, k16 steps ks0, ks0 + KS, ...), as fp16.
    const int mt_w = warp / KS, ks0 = warp % KS;
    uint32_t qf[kDecodeMaxQSteps][4];
#pragma unroll
    for (int i = 0; i < kDecodeMaxQSteps; i++) {
        const int ks = ks0 + i * KS;
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int head = mt_w * 16 + g + (r & 1) * 8, col = ks * 16 + 2 * c + (r >> 1) * 8;
            float2 x = make_float2(0.0f, 0.0f);
            if (ks < ksteps && head < H) x = *reinterpret_cast<const float2*>(q_lat + (static_cast<size_t>(t) * H + head) * D + col);
            qf[i][r] = pack_f16x2(x.x, x.y);
        }
    }

    // A. partial scores of this warp's k steps over tile i: 16 heads × rows, to s_part.
    auto scores = [&](int i) {
        const uint16_t* tile = slot(i);
        float sacc[kDecodeRowTiles][4] = {};
#pragma unroll
        for (int j = 0; j < kDecodeMaxQSteps; j++) {
            const int ks = ks0 + j * KS;
            if (ks >= ksteps) break;
#pragma unroll
            for (int np = 0; np < kDecodeRowTiles / 2; np++) {
                uint32_t b[4];
                ldsm_x4(b, tile + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * stride + ks * 16 + ((lane >> 3) & 1) * 8);
                to_f16(b);
                mma_f16(sacc[2 * np], qf[j], b[0], b[1]);
                mma_f16(sacc[2 * np + 1], qf[j], b[2], b[3]);
            }
        }
        // As float2: with rows kDecodeSRow floats apart, each half-warp's stores hit 32 distinct banks.
        float* mine = s_part + warp * 16 * kDecodeSRow;
#pragma unroll
        for (int nt = 0; nt < kDecodeRowTiles; nt++) {
            *reinterpret_cast<float2*>(mine + g * kDecodeSRow + nt * 8 + 2 * c) = make_float2(sacc[nt][0], sacc[nt][1]);
            *reinterpret_cast<float2*>(mine + (g + 8) * kDecodeSRow + nt * 8 + 2 * c) = make_float2(sacc[nt][2], sacc[nt][3]);
        }
    };

    // B. online softmax of head hh over tile i's rows. Head hh = tid / TPH; thread sub takes the columns sub, sub + TPH,
    // ...: a warp's loads of one step then cover 32 distinct banks (heads kDecodeSRow floats apart, columns adjacent).
    const int TPH = kDecodeThreads / (MT * 16), CPT = kDecodeRows / TPH, hh = tid / TPH, sub = tid % TPH;
    float m_run = kNegInf, l_run = 0.0f;
    auto softmax = [&](int i) {
        const int mt = hh / 16, r16 = hh % 16, row0 = begin + i * kDecodeRows;
        float x[kDecodeRowTiles];   // CPT ≤ rows / 8
        float mx = kNegInf;
#pragma unroll
        for (int j = 0; j < kDecodeRowTiles; j++) {
            if (j >= CPT) break;
            const int col = sub + j * TPH;
            float v = 0.0f;
            for (int k = 0; k < KS; k++) v += s_part[((mt * KS + k) * 16 + r16) * kDecodeSRow + col];
            x[j] = row0 + col < end ? v * scale_log2 : kNegInf;
            mx = fmaxf(mx, x[j]);
        }
        const float m_new = fmaxf(m_run, group_max(mx, TPH));   // finite: every tile has a visible row
        const float alpha = ex2(m_run - m_new);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < kDecodeRowTiles; j++) {
            if (j >= CPT) break;
            const float p = ex2(x[j] - m_new);
            sum += p;
            p_sh[hh * kDecodePRow + sub + j * TPH] = static_cast<uint16_t>(pack_f16x2(p, 0.0f));
        }
        l_run = l_run * alpha + group_sum(sum, TPH);
        m_run = m_new;
        if (sub == 0) alpha_sh[hh] = alpha;
    };

    // C. O = α·O + P·V over this warp's columns: 16-column groups warp, warp + W, ... (< R / 16), all MT m-tiles.
    const int col_groups = R / 16;
    float acc[2][kDecodeMaxGroups][2][4] = {};
    auto accumulate = [&](int i) {
        const uint16_t* tile = slot(i);
#pragma unroll
        for (int mt = 0; mt < 2; mt++) {
            if (mt >= MT) break;
            const float a0 = alpha_sh[mt * 16 + g], a1 = alpha_sh[mt * 16 + g + 8];
#pragma unroll
            for (int k = 0; k < kDecodeMaxGroups; k++)
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    acc[mt][k][half][0] *= a0; acc[mt][k][half][1] *= a0;
                    acc[mt][k][half][2] *= a1; acc[mt][k][half][3] *= a1;
                }
        }
#pragma unroll
        for (int kk = 0; kk < kDecodeRows / 16; kk++) {
            uint32_t pf[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; mt++) {
                if (mt >= MT) break;
                ldsm_x4(pf[mt], p_sh + (mt * 16 + (lane & 15)) * kDecodePRow + kk * 16 + (lane >> 4) * 8);
            }
            const uint16_t* vrow = tile + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * stride + ((lane >> 4) & 1) * 8;
#pragma unroll
            for (int k = 0; k < kDecodeMaxGroups; k++) {
                const int cg = warp + k * kDecodeWarps;
                if (cg >= col_groups) break;
                uint32_t b[4];
                ldsm_x4_t(b, vrow + cg * 16);
                to_f16(b);
#pragma unroll
                for (int mt = 0; mt < 2; mt++) {
                    if (mt >= MT) break;
                    mma_f16(acc[mt][k][0], pf[mt], b[0], b[1]);
                    mma_f16(acc[mt][k][1], pf[mt], b[2], b[3]);
                }
            }
        }
    };

    cp_async_wait<kDecodeStages - 2>();
    __syncthreads();   // tile 0 landed for every thread
    scores(0);
    __syncthreads();   // S partials of tile 0 complete
    for (int i = 0; i < tiles; i++) {
        // Y(i). The slot refilled here held tile i − 1, last read by phase X(i − 1), which the barrier above closed.
        if (i + kDecodeStages - 1 < tiles) load_tile(i + kDecodeStages - 1);
        cp_async_commit();
        softmax(i);
        cp_async_wait<kDecodeStages - 2>();   // this thread's pieces of tile i + 1 landed
        __syncthreads();                      // P(i), α(i) and tile i + 1 complete; S partials of tile i read
        // X(i), the two products in one block (ptxas interleaves them only within a block).
        if (i + 1 < tiles) {
            accumulate(i);
            scores(i + 1);
            __syncthreads();   // S partials of tile i + 1 complete; P(i) read
        } else {
            accumulate(i);
        }
    }
    cp_async_wait<0>();

    float* out = partial_o + (static_cast<size_t>(t) * splits + s) * H * R;
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
        if (mt >= MT) break;
#pragma unroll
        for (int k = 0; k < kDecodeMaxGroups; k++) {
            const int cg = warp + k * kDecodeWarps;
            if (cg >= col_groups) break;
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int col = cg * 16 + half * 8 + 2 * c, h0 = mt * 16 + g;
                const float* a = acc[mt][k][half];
                if (h0 < H) *reinterpret_cast<float2*>(out + static_cast<size_t>(h0) * R + col) = make_float2(a[0], a[1]);
                if (h0 + 8 < H) *reinterpret_cast<float2*>(out + static_cast<size_t>(h0 + 8) * R + col) = make_float2(a[2], a[3]);
            }
        }
    }
    if (sub == 0 && hh < H) { ml[2 * hh] = m_run; ml[2 * hh + 1] = l_run; }
}

}  // namespace mla

// Each decode partial has two entry points sharing its body: T tokens of one cache (token t at position *start_ptr + t,
// the form a session's decode graph captures) and the table form, one token of each of N sequences (sequence n at
// position starts[n] of table.latent[n]: a batched decode step, the sessions' caches used where they lie). The table
// is __grid_constant__, so it stays in the parameter bank, indexed by blockIdx.y, instead of a per-thread local copy.
#define MLA_DECODE_ENTRIES(NAME, TABLE_NAME, THREADS, BODY)                                                            \
    extern "C" __global__ void __launch_bounds__(THREADS, 1)                                                           \
    NAME(float* __restrict__ partial_o, float* __restrict__ partial_ml, const float* __restrict__ q_lat,                \
         const uint16_t* __restrict__ latent, const int* __restrict__ start_ptr, int H, int R, int D, float scale_log2) { \
        allow_successor();                                                                                             \
        wait_for_predecessor();                                                                                        \
        BODY(latent, *start_ptr + static_cast<int>(blockIdx.y) + 1);                                                   \
    }                                                                                                                  \
    extern "C" __global__ void __launch_bounds__(THREADS, 1)                                                           \
    TABLE_NAME(float* __restrict__ partial_o, float* __restrict__ partial_ml, const float* __restrict__ q_lat,         \
               const __grid_constant__ mla::DecodeTable table, const int* __restrict__ starts, int H, int R, int D,    \
               float scale_log2) {                                                                                     \
        allow_successor();                                                                                             \
        wait_for_predecessor();                                                                                        \
        BODY(table.latent[blockIdx.y], starts[blockIdx.y] + 1);                                                        \
    }

// The model's shape (H = 32 heads a GPU, R = 512, D = 576) with every loop bound known at compile time.
#define MLA_DECODE_H32(LATENT, LEN) \
    mla::decode_partial<true, 32, 512, 576>(partial_o, partial_ml, q_lat, LATENT, LEN, H, R, D, scale_log2)
MLA_DECODE_ENTRIES(kimi_mla_decode_partial_h32_r512_d576, kimi_mla_decode_partial_table_h32_r512_d576, mla::kDecodeThreads, MLA_DECODE_H32)

// Any shape within the limits above.
#define MLA_DECODE_ANY(LATENT, LEN) \
    mla::decode_partial<false, 0, 0, 0>(partial_o, partial_ml, q_lat, LATENT, LEN, H, R, D, scale_log2)
MLA_DECODE_ENTRIES(kimi_mla_decode_partial, kimi_mla_decode_partial_table, mla::kDecodeThreads, MLA_DECODE_ANY)

namespace mla {

// ---- absorbed decode: merging the slices and output absorption ------------------------------------------------------

// Dynamic shared memory of kimi_mla_combine_absorb_output, bytes: per-warp column sums [8][128], the merged latent
// chunk [128], reduction scratch [8], slice weights [S] (last: S need not be a multiple of 4, the float4 rows before it are aligned).
__host__ __device__ constexpr size_t absorb_output_smem_bytes(int splits) {
    return (static_cast<size_t>(splits) + kAbsorbWarps * kAbsorbColumns + kAbsorbColumns + kAbsorbWarps) * 4;
}

// Sums v[k] over the 16 lanes of each half-warp for 8 rows k at once by halving exchanges (8 shuffles, where 8
// separate sums would take 32); afterwards lane l holds the whole sum of row k = (l >> 1) & 7.
__device__ __forceinline__ float half_warp_sum8(float (&v)[8], int lane) {
#pragma unroll
    for (int i = 0; i < 4; i++) {   // lanes l and l ^ 8: the low one keeps rows 0-3, the high one rows 4-7
        const bool high = lane & 8;
        const float send = high ? v[i] : v[i + 4], keep = high ? v[i + 4] : v[i];
        v[i] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, 8);
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {   // v[i] is row i + 4·bit3 now
        const bool high = lane & 4;
        const float send = high ? v[i] : v[i + 2], keep = high ? v[i + 2] : v[i];
        v[i] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, 4);
    }
    const bool high = lane & 2;     // v[i] is row i + 2·bit2 + 4·bit3 now
    const float send = high ? v[0] : v[1], keep = high ? v[1] : v[0];
    const float sum = keep + __shfl_xor_sync(0xFFFFFFFFu, send, 2);
    return sum + __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
}

// L2 load (bypassing L1, which is not coherent with the other blocks' writes).
__device__ __forceinline__ float load_l2(const float* p) {
#ifdef KDA_EMULATE
    return *p;
#else
    return __ldcg(p);
#endif
}

// o [T, H·V] fp32 from the decode slices: per token t and head h the log-sum-exp merge
//   out[r] = Σ_s 2^(m_s − M)·O_s[r] / Σ_s 2^(m_s − M)·l_s   (partial_o [T, S, H, R], partial_ml [T, S, H, 2])
// then o[t, h·V + v] = Σ_r W_UV_h[v, r]·out[r]. Grid (G = ceil(R / 128), H); 256 threads; absorb_output_smem_bytes(S).
// Block (j, h) merges only its 128 columns of out (so the slices, up to 2.2 times the bytes of W_UV at 132 slices,
// are read once in all) and multiplies them by the matching 128 columns of every W_UV row it holds: its products are
// partial sums over r. With G > 1 it leaves them in o_parts [T, H, G, V]; the block of the head that arrives last
// (counted in arrivals [H], which it resets to 0 for the next call) adds the G parts in order j = 0 .. G − 1, so the
// result does not depend on which block came last. R % 8 == 0. Programmatic launch: W_UV is requested before the wait.
extern "C" __global__ void __launch_bounds__(kAbsorbThreads)
kimi_mla_combine_absorb_output(float* __restrict__ o, float* __restrict__ o_parts, int* __restrict__ arrivals,
                               const float* __restrict__ partial_o, const float* __restrict__ partial_ml,
                               const uint16_t* __restrict__ kvb, int T, int H, int N, int V, int R, int splits) {
    allow_successor();
    const int j = blockIdx.x, G = gridDim.x, h = blockIdx.y, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int piece = tid % kAbsorbPieces, row0 = tid / kAbsorbPieces;
    const int c0 = j * kAbsorbColumns, col = c0 + piece * 8;
    const uint16_t* w_uv = kvb + (static_cast<size_t>(h) * (N + V) + N) * R + col;
    auto weights = [&](int v) { return col < R && v < V ? *reinterpret_cast<const uint4*>(w_uv + static_cast<size_t>(v) * R) : make_uint4(0, 0, 0, 0); };
    uint4 held[kAbsorbHeld];   // rows row0 + 16k
#pragma unroll
    for (int k = 0; k < kAbsorbHeld; k++) held[k] = weights(row0 + k * kAbsorbRowStep);
    wait_for_predecessor();

    float* sums = reinterpret_cast<float*>(dynamic_smem());     // [8][128]
    float* merged = sums + kAbsorbWarps * kAbsorbColumns;        // [128]
    float* scratch = merged + kAbsorbColumns;                    // [8]
    float* weight = scratch + kAbsorbWarps;                      // [S]
    for (int t = 0; t < T; t++) {
        const float* ml = partial_ml + static_cast<size_t>(t) * splits * H * 2 + h * 2;   // slice s at ml[s·2H]
        float top = kNegInf;
        for (int s = tid; s < splits; s += kAbsorbThreads) top = fmaxf(top, ml[static_cast<size_t>(s) * H * 2]);
        top = group_max(top, 32);
        if (lane == 0) scratch[warp] = top;
        __syncthreads();   // (also: the previous token's scratch, sums and weights are read)
        top = scratch[0];
        for (int w = 1; w < kAbsorbWarps; w++) top = fmaxf(top, scratch[w]);   // finite: at least one slice holds rows
        float denominator = 0.0f;
        for (int s = tid; s < splits; s += kAbsorbThreads) {
            const float m = ml[static_cast<size_t>(s) * H * 2];
            const float w = m == kNegInf ? 0.0f : ex2(m - top);
            weight[s] = w;
            denominator += w * ml[static_cast<size_t>(s) * H * 2 + 1];
        }
        denominator = group_sum(denominator, 32);
        __syncthreads();   // every thread has read the max from scratch; the weights are complete
        if (lane == 0) scratch[warp] = denominator;

        // Warp w sums the slices w, w + 8, ... of the block's 128 columns, a float4 per lane.
        const int col4 = c0 + lane * 4;
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (col4 < R) {
            const float* po = partial_o + static_cast<size_t>(t) * splits * H * R + static_cast<size_t>(h) * R + col4;
#pragma unroll 4
            for (int s = warp; s < splits; s += kAbsorbWarps) {
                const float w = weight[s];
                if (w == 0.0f) continue;   // an empty slice wrote no O
                const float4 x = *reinterpret_cast<const float4*>(po + static_cast<size_t>(s) * H * R);
                acc.x += w * x.x; acc.y += w * x.y; acc.z += w * x.z; acc.w += w * x.w;
            }
        }
        *reinterpret_cast<float4*>(sums + warp * kAbsorbColumns + lane * 4) = acc;
        __syncthreads();
        if (tid < kAbsorbColumns) {
            float total = 0.0f, sum = 0.0f;
#pragma unroll
            for (int w = 0; w < kAbsorbWarps; w++) {
                total += scratch[w];
                sum += sums[w * kAbsorbColumns + tid];
            }
            merged[tid] = sum / total;   // columns past R hold 0: their weight pieces are 0 too
        }
        __syncthreads();

        // This block's share of o: rows v0 + row0 + 16k against the 8 merged columns of the thread's piece.
        const float4 xa = *reinterpret_cast<const float4*>(merged + piece * 8), xb = *reinterpret_cast<const float4*>(merged + piece * 8 + 4);
        float* dst = G == 1 ? o + static_cast<size_t>(t) * H * V + h * V : o_parts + ((static_cast<size_t>(t) * H + h) * G + j) * V;
        auto rows = [&](const uint4 (&w)[kAbsorbHeld], int v0) {
            float d[kAbsorbHeld];
#pragma unroll
            for (int k = 0; k < kAbsorbHeld; k++) d[k] = dot8(w[k], xa, xb);
            const float sum = half_warp_sum8(d, lane);
            const int v = v0 + row0 + ((lane >> 1) & 7) * kAbsorbRowStep;
            if ((lane & 1) == 0 && v < V) dst[v] = sum;
        };
        rows(held, 0);
        for (int v0 = kAbsorbHeld * kAbsorbRowStep; v0 < V; v0 += kAbsorbHeld * kAbsorbRowStep) {   // V > 128
            uint4 more[kAbsorbHeld];
#pragma unroll
            for (int k = 0; k < kAbsorbHeld; k++) more[k] = weights(v0 + row0 + k * kAbsorbRowStep);
            rows(more, v0);
        }
    }
    if (G == 1) return;

    // The last of the head's G blocks adds the parts.
    __threadfence();   // this block's parts are visible device-wide before it counts itself in
    __syncthreads();   // all of them (and the last token's scratch is read)
    if (tid == 0) {
        const bool last = atomicAdd(arrivals + h, 1) == G - 1;
        if (last) arrivals[h] = 0;
        scratch[0] = last ? 1.0f : 0.0f;
    }
    __syncthreads();
    if (scratch[0] == 0.0f) return;
    for (int e = tid; e < T * V; e += kAbsorbThreads) {
        const int t = e / V, v = e - t * V;
        const float* part = o_parts + static_cast<size_t>(t) * H * G * V + static_cast<size_t>(h) * G * V + v;
        float sum = 0.0f;
        for (int k = 0; k < G; k++) sum += load_l2(part + k * V);
        o[static_cast<size_t>(t) * H * V + h * V + v] = sum;
    }
}

// ---- expanded prefill: causal flash attention on the tensor cores ---------------------------------------------------
//
// Block (query tile of 128, head), 8 warps of 16 queries, one block per SM; heavy (late) query tiles first. Per key tile
// of 64: K = (the head's N key columns of keysValues | the P k_pe columns of the latent) and V (the head's V value
// columns) through a 3-stage cp.async ring, so one tile is in flight while another is consumed and one barrier per tile
// suffices. The 128-query tile lets each K/V tile serve twice the queries of a 64-query one (half the cp.async work and
// L2 traffic per FLOP). S = Q·Kᵀ with q fragments held in registers; the online softmax in registers on raw scores
// (scale·log2(e) folded into the exponent's FFMA); p (fp16) reused straight from the S accumulators as the A operand of
// O += P·V. V goes to fp16 once in shared memory, each thread converting the 16-byte pieces it copied itself (its own
// cp.async writes are visible to it after the wait, the barrier then publishes them), instead of every warp converting
// every V fragment it loads. A warp skips key tiles that lie wholly after its last query (the diagonal's far half).
constexpr int kPrefillThreads = 256, kPrefillRows = 128, kPrefillKeys = 64, kPrefillStages = 3;
constexpr int kPrefillMaxQSteps = 12;    // N + P ≤ 192
constexpr int kPrefillMaxVTiles = 16;    // V ≤ 128

// Dynamic shared memory, bytes: 3 stages of K [64][N+P+8] and V [64][V+8] (K bf16, V fp16).
__host__ __device__ constexpr size_t prefill_smem_bytes(int KD, int VD) {
    return 1ull * kPrefillStages * kPrefillKeys * ((KD + 8) + (VD + 8)) * 2;
}

// The online softmax of one 64-key tile for this lane's two query rows, row_a and row_a + 8 (the m16 accumulator layout
// both prefill kernels share): when `masked` (the tile reaches past a query's position or past L) such keys are set to
// −∞, the running max m_run (raw scores; scale > 0 keeps the order) is raised, the scores become p = 2^(s·scale_log2 −
// m) in place, and the per-lane running sums l_run are rescaled and added to. score(nt, e) is the accumulator of key
// k0 + 8nt + 2c + (e & 1) for row row_a + 8(e >> 1). alpha: the factors that rescale each row's O.
template <typename Score>
__device__ __forceinline__ void online_softmax_tile(Score&& score, float (&m_run)[2], float (&l_run)[2], float (&alpha)[2], bool masked,
                                                   int k0, int c, int row_a, int start, int L, float scale_log2) {
    float mx[2] = {kNegInf, kNegInf};
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            if (masked) {
                const int key = k0 + nt * 8 + 2 * c + (e & 1), row = row_a + (e >> 1) * 8;
                if (key > start + row || key >= L) score(nt, e) = kNegInf;
            }
            mx[e >> 1] = fmaxf(mx[e >> 1], score(nt, e));
        }
    float m_scaled[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        // Finite: key 0 (tile 0) is visible to every row, rows past T (zero queries) included.
        const float m_new = fmaxf(m_run[r], group_max(mx[r], 4));
        alpha[r] = ex2((m_run[r] - m_new) * scale_log2);
        m_run[r] = m_new;
        m_scaled[r] = m_new * scale_log2;
    }
    float rowsum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nt = 0; nt < 8; nt++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            score(nt, e) = ex2(fmaf(score(nt, e), scale_log2, -m_scaled[e >> 1]));
            rowsum[e >> 1] += score(nt, e);
        }
#pragma unroll
    for (int r = 0; r < 2; r++) l_run[r] = l_run[r] * alpha[r] + rowsum[r];   // per-lane partial, summed at the end
}

// o [T, H·V] f32; q [T, H·(N+P)] bf16; kv [≥L, H·(N+V)] bf16; latent [≥L, R+P] bf16; L = start + T.
// KD = N + P, VD = V as compile-time constants (kExact) or runtime values ≤ the maxima above.
template <bool kExact, int kKD, int kVD>
__device__ __forceinline__ void prefill(float* __restrict__ o, const uint16_t* __restrict__ q, const uint16_t* __restrict__ kv,
                                        const uint16_t* __restrict__ latent, int start, int T, int H, int N, int P, int V, int R,
                                        float scale_log2) {
    const int KD = kExact ? kKD : N + P, VD = kExact ? kVD : V;
    const int ksteps = KD / 16, vtiles = VD / 8;
    const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, q0 = qt * kPrefillRows;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
    const int L = start + T, kstride = KD + 8, vstride = VD + 8;
    const size_t kv_row = static_cast<size_t>(H) * (N + VD), q_row = static_cast<size_t>(H) * KD;
    uint16_t* smem = dynamic_smem();
    uint16_t* ks_base = smem;                                                // [3][64][KD + 8] bf16
    uint16_t* vs_base = smem + kPrefillStages * kPrefillKeys * kstride;      // [3][64][VD + 8] fp16

    // Three copy loops (key columns from keysValues, from the latent's k_pe, values), each a whole number of 16-byte
    // pieces per row, so a warp's lanes take the same branch.
    const int kn = N / 8, kp = (KD - N) / 8, vn = VD / 8;
    const uint16_t* kv_head = kv + h * (N + VD);
    auto load_tile = [&](int j) {
        uint16_t* kd = ks_base + (j % kPrefillStages) * kPrefillKeys * kstride;
        uint16_t* vd = vs_base + (j % kPrefillStages) * kPrefillKeys * vstride;
        const int k0 = j * kPrefillKeys;
        for (int e = tid; e < kPrefillKeys * kn; e += kPrefillThreads) {
            const int r = e / kn, ch = e - r * kn, key = k0 + r;
            cp_async16(kd + r * kstride + ch * 8, key < L ? kv_head + key * kv_row + ch * 8 : kv, key < L);
        }
        for (int e = tid; e < kPrefillKeys * kp; e += kPrefillThreads) {
            const int r = e / kp, ch = e - r * kp, key = k0 + r;
            cp_async16(kd + r * kstride + N + ch * 8, key < L ? latent + static_cast<size_t>(key) * (R + P) + R + ch * 8 : kv, key < L);
        }
        for (int e = tid; e < kPrefillKeys * vn; e += kPrefillThreads) {
            const int r = e / vn, ch = e - r * vn, key = k0 + r;
            cp_async16(vd + r * vstride + ch * 8, key < L ? kv_head + key * kv_row + N + ch * 8 : kv, key < L);
        }
    };
    // The V pieces this thread copied into stage j, bf16 → fp16 in place (zero fill stays zero).
    auto values_to_f16 = [&](int j) {
        uint16_t* vd = vs_base + (j % kPrefillStages) * kPrefillKeys * vstride;
        for (int e = tid; e < kPrefillKeys * vn; e += kPrefillThreads) {
            const int r = e / vn, ch = e - r * vn;
            uint4* piece = reinterpret_cast<uint4*>(vd + r * vstride + ch * 8);
            uint4 x = *piece;
            x.x = bf16x2_to_f16x2(x.x); x.y = bf16x2_to_f16x2(x.y); x.z = bf16x2_to_f16x2(x.z); x.w = bf16x2_to_f16x2(x.w);
            *piece = x;
        }
    };
    const int last_query = min(q0 + kPrefillRows, T) - 1;
    const int key_tiles = (start + last_query + 1 + kPrefillKeys - 1) / kPrefillKeys;
    load_tile(0);
    cp_async_commit();
    if (1 < key_tiles) load_tile(1);
    cp_async_commit();

    // This warp's 16 queries as A fragments, straight from global memory (rows past T are zero). A warp whose rows
    // all lie past T has no key to visit; otherwise its last visible key is start + its last row below T.
    const int row_a = q0 + warp * 16 + g;
    const int warp_last_key = q0 + warp * 16 < T ? start + min(q0 + warp * 16 + 15, T - 1) : -1;
    uint32_t qf[kPrefillMaxQSteps][4];
#pragma unroll
    for (int ks = 0; ks < kPrefillMaxQSteps; ks++)
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int row = row_a + (r & 1) * 8, col = ks * 16 + 2 * c + (r >> 1) * 8;
            qf[ks][r] = ks < ksteps && row < T ? *reinterpret_cast<const uint32_t*>(q + row * q_row + h * KD + col) : 0u;
        }

    float m_run[2] = {kNegInf, kNegInf}, l_run[2] = {0.0f, 0.0f};   // m_run: raw (unscaled) running max
    float oacc[kPrefillMaxVTiles][4] = {};
    for (int j = 0; j < key_tiles; j++) {
        cp_async_wait<1>();   // tile j landed (only tile j + 1's group may be pending)
        values_to_f16(j);
        __syncthreads();      // tile j is complete and fp16 for all; stage (j + 2) % 3's last reader (iteration j - 1) is done
        if (j + 2 < key_tiles) load_tile(j + 2);
        cp_async_commit();
        const int k0 = j * kPrefillKeys;
        if (k0 > warp_last_key) continue;   // warp-uniform: every key of the tile is masked for this warp's queries
        const uint16_t* kt = ks_base + (j % kPrefillStages) * kPrefillKeys * kstride;
        const uint16_t* vt = vs_base + (j % kPrefillStages) * kPrefillKeys * vstride;

        float sacc[8][4] = {};
#pragma unroll
        for (int ks = 0; ks < kPrefillMaxQSteps; ks++) {
            if (ks >= ksteps) break;
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t b[4];
                ldsm_x4(b, kt + (np * 16 + (lane & 7) + ((lane >> 4) << 3)) * kstride + ks * 16 + ((lane >> 3) & 1) * 8);
                mma(sacc[2 * np], qf[ks], b[0], b[1]);
                mma(sacc[2 * np + 1], qf[ks], b[2], b[3]);
            }
        }
        const bool masked = k0 + kPrefillKeys - 1 > start + q0 + warp * 16 || k0 + kPrefillKeys > L;   // warp-uniform
        float alpha[2];
        online_softmax_tile([&](int nt, int e) -> float& { return sacc[nt][e]; }, m_run, l_run, alpha, masked, k0, c, row_a, start, L, scale_log2);
#pragma unroll
        for (int vt2 = 0; vt2 < kPrefillMaxVTiles; vt2++) {
            oacc[vt2][0] *= alpha[0]; oacc[vt2][1] *= alpha[0];
            oacc[vt2][2] *= alpha[1]; oacc[vt2][3] *= alpha[1];
        }

        // O += P·V, k16 step kk = keys [16kk, 16kk + 16): P's A fragment is S accumulator tiles 2kk and 2kk + 1.
#pragma unroll
        for (int kk = 0; kk < kPrefillKeys / 16; kk++) {
            const uint32_t pf[4] = {pack_f16x2(sacc[2 * kk][0], sacc[2 * kk][1]), pack_f16x2(sacc[2 * kk][2], sacc[2 * kk][3]),
                                    pack_f16x2(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]), pack_f16x2(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3])};
            const uint16_t* vrow = vt + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * vstride + ((lane >> 4) & 1) * 8;
#pragma unroll
            for (int nt = 0; nt < kPrefillMaxVTiles; nt += 2) {
                if (nt >= vtiles) break;
                uint32_t b[4];
                if (nt + 1 < vtiles) ldsm_x4_t(b, vrow + nt * 8);
                else ldsm_x2_t(b, vrow + nt * 8);
                mma_f16(oacc[nt], pf, b[0], b[1]);
                if (nt + 1 < vtiles) mma_f16(oacc[nt + 1], pf, b[2], b[3]);
            }
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int row = row_a + r * 8;
        const float inv = 1.0f / group_sum(l_run[r], 4);   // all lanes shuffle (an idle warp's 1/0 is never stored)
        if (row >= T) continue;
        float* dst = o + static_cast<size_t>(row) * H * VD + h * VD + 2 * c;
#pragma unroll
        for (int nt = 0; nt < kPrefillMaxVTiles; nt++) {
            if (nt >= vtiles) break;
            *reinterpret_cast<float2*>(dst + nt * 8) = make_float2(oacc[nt][2 * r] * inv, oacc[nt][2 * r + 1] * inv);
        }
    }
}

}  // namespace mla

// The model's shape (N + P = 192, V = 128) with every loop bound known at compile time.
extern "C" __global__ void __launch_bounds__(mla::kPrefillThreads, 1)
kimi_mla_prefill_d192_v128(float* __restrict__ o, const uint16_t* __restrict__ q, const uint16_t* __restrict__ kv,
                           const uint16_t* __restrict__ latent, int start, int T, int H, int N, int P, int V, int R, float scale_log2) {
    mla::prefill<true, 192, 128>(o, q, kv, latent, start, T, H, N, P, V, R, scale_log2);
}

// Any N, P, V with N % 8 == 0, P % 8 == 0, (N + P) % 16 == 0, N + P ≤ 192, V % 8 == 0, V ≤ 128.
extern "C" __global__ void __launch_bounds__(mla::kPrefillThreads, 1)
kimi_mla_prefill_general(float* __restrict__ o, const uint16_t* __restrict__ q, const uint16_t* __restrict__ kv,
                         const uint16_t* __restrict__ latent, int start, int T, int H, int N, int P, int V, int R, float scale_log2) {
    mla::prefill<false, 0, 0>(o, q, kv, latent, start, T, H, N, P, V, R, scale_log2);
}

// ---- expanded prefill on Hopper: warpgroup MMA (wgmma, sm_90a) ------------------------------------------------------
//
// kimi_mla_prefill_wgmma_d192_v128 computes what kimi_mla_prefill_d192_v128 does (same arguments; N + P = 192,
// V = 128), in the FlashAttention-3 manner: the products are wgmma (a warpgroup of 4 warps multiplies m64 × n × k16 per
// instruction, operands read straight from shared memory by the tensor cores), and the loading is done by warps of
// its own, so the tensor cores are not fed by the same warps that run the softmax.
// Block (query tile of 192, head), 4 warpgroups, one block per SM, heavy (late) query tiles first:
//   warpgroups 0–2 (consumers): 64 queries each, Q in shared memory for the whole block. Per key tile of 64:
//       S [64×64] = Q·Kᵀ (12 wgmma m64n64k16 bf16), the online softmax in registers, O [64×128] += P·V (4 wgmma
//       m64n128k16 bf16 with P as the register A operand, the S accumulators repacked in place: the accumulator and
//       A-fragment layouts coincide; V read MN-major from the tile as it landed, the instruction transposing it).
//       The warpgroups share no barrier inside the loop, so one's softmax runs while another's products keep the
//       tensor cores busy. Three of them (not two) make each K/V tile serve 192 queries.
//   warpgroup 3 (producer, 56 registers a thread; the consumers get 152 by setmaxnreg): one thread hands each key
//       tile to the copy engine (TMA): 5 boxes of 64 keys × 64 columns (K's 128 nope columns from keysValues and 64
//       rope columns from the latent cache, V's 128 columns from keysValues), each landing 128-byte-swizzled as the
//       tensor cores read it, through a 3-stage ring guarded by mbarriers (full: the stage's 40 KB have arrived, counted
//       in bytes by the copy engine; empty: every consumer is done with it). Keys past L are outside the tensor maps'
//       extent and land as zeros. (Copying by cp.async from 128 threads, 2,560 16-byte pieces a tile, set the pace
//       of the version before: run H in docs/performance.md.)
// Operand precision: q·k bf16 × bf16, p·v bf16 × bf16 (the softmax weights rounded to bf16, as the reference's
// bf16 attention rounds them), fp32 accumulation.
// The PTX targets (compute_90, compute_80) cannot express wgmma: there the kernel only traps, and the C# wrapper
// launches it only where the sm_90a cubin is loaded (compute capability 9.0). KIMI_REQUIRES_SM90A: build.sh builds
// this file's cubin too (the whole module then loads from it on Hopper).
namespace mla {

constexpr int kWgConsumers = 3, kWgThreads = 128 * (kWgConsumers + 1), kWgRows = 64 * kWgConsumers, kWgKeys = 64, kWgStages = 3;
constexpr int kWgProducerRegisters = 56, kWgConsumerRegisters = 152;   // 128·56 + 384·152 = the 64K register file
constexpr int kWgKD = 192, kWgVD = 128;   // N + P, V
constexpr int kWgBlockBytes = kWgKeys * 128;                   // one TMA box: [64 keys][64 columns = 128 B] bf16, swizzled
constexpr int kWgQBytes = kWgRows * kWgKD * 2;                  // Q [3 warpgroups][3 k-blocks][64 rows][128 B], bf16
constexpr int kWgKBytes = 3 * kWgBlockBytes;                    // K stage [3 k-blocks][64 keys][128 B]: nope 0–63, 64–127, rope
constexpr int kWgVBytes = 2 * kWgBlockBytes;                    // V stage [2 column blocks][64 keys][128 B]
constexpr int kWgStageBytes = kWgKBytes + kWgVBytes;            // what the copy engine counts into a stage's full barrier
constexpr int kWgBarrierBytes = 2 * kWgStages * 8;              // full[3], empty[3]
static_assert(kWgKD == 192 && kWgVD == 128, "the stage is 3 K boxes and 2 V boxes of 64 columns");

// Dynamic shared memory, bytes: the 1,024-byte alignment the swizzle atoms need, Q, the ring, the mbarriers.
__host__ __device__ constexpr size_t prefill_wgmma_smem_bytes() {
    return 1024 + kWgQBytes + kWgStages * kWgStageBytes + kWgBarrierBytes;
}

// The byte offset of 16-byte chunk `chunk` (of 8) of row `row` in a 128-byte-swizzled K-major block: rows 128 bytes
// apart, chunks XOR-ed with the row's index in its 8-row (1,024-byte) atom, as the tensor cores read it.
__device__ __forceinline__ uint32_t swizzled(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }

// ---- absorbed decode on Hopper (kimi_mla_decode_partial_wgmma_h32_r512_d576; the design is described there) ----------
constexpr int kWdHeads = 32, kWdRank = 512, kWdWidth = 576;   // H, R, D = R + P: the model's shape only
constexpr int kWdRows = 64, kWdStages = 2;                     // cache rows per tile; tiles in the ring
constexpr int kWdThreads = 384;                                // consumer warpgroups 0 and 1, producer warpgroup 2
constexpr int kWdSliceQuantum = 16;                            // slice lengths round up to this many rows
// ... and are at least this many: a slice shorter than a tile still costs its block a whole tile's copy, Q's
// construction and a 64 KB partial for the merge, so a short cache (1K: 16 slices, not 64 of 16 rows) takes fewer blocks.
#ifndef MLA_WD_MIN_SLICE_ROWS
#define MLA_WD_MIN_SLICE_ROWS 64
#endif
constexpr int kWdMinSliceRows = MLA_WD_MIN_SLICE_ROWS;
static_assert(kWdMinSliceRows % kWdSliceQuantum == 0, "whole quanta");
constexpr int kWdProducerRegisters = 56, kWdConsumerRegisters = 224;   // 128·56 + 256·224 ≤ the 64K register file
constexpr int kWdBlockBytes = kWdRows * 128;                   // one 64-column block of a tile [64 rows][128 B]
constexpr int kWdQBytes = 64 * kWdWidth * 2;                   // Q [9 column blocks][64 rows: 32 heads hi, 32 lo][128 B] bf16
constexpr int kWdTileBytes = kWdRows * kWdWidth * 2;           // a stage [9 column blocks][64 cache rows][128 B] bf16
constexpr int kWdPBytes = 64 * kWdRows * 2;                    // P [64 rows: 32 heads hi, 32 lo][64 cache rows] bf16
constexpr int kWdBarrierBytes = (2 * kWdStages + 2) * 8;       // full[2], empty[2], scores_lo, p_ready
static_assert(kWdQBytes == 9 * kWdBlockBytes && kWdTileBytes == 9 * kWdBlockBytes, "576 columns = 9 swizzled blocks of 64");

// Dynamic shared memory, bytes: the 1,024-byte alignment the swizzle atoms need, Q, the ring, P, α [32], the mbarriers.
__host__ __device__ constexpr size_t decode_wgmma_smem_bytes() {
    return 1024 + kWdQBytes + kWdStages * kWdTileBytes + kWdPBytes + kWdHeads * 4 + kWdBarrierBytes;
}

// ---- absorbed decode of one token over a short cache, in one launch (kimi_mla_decode_fused_r512_d576) --------------
//
// Up to kFusedMaxRows·8 cached tokens the three-kernel path (query absorption, flash-decoding over the slices, merge
// with W_UV) is bound by its chain — three launches, q_lat, the slices' partials and the merge's reads through L2 —
// not by the cache's bytes (a 1K cache is 1.2 MB a layer). This kernel computes the same o for one token in one
// launch, by thread-block clusters of 8 blocks: cluster c takes heads 4c .. 4c + 3, its block b (its rank) the cache
// slice [b·per, b·per + per), per = ⌈len / 8⌉, and head j = b / 2 of the four for the absorptions. 512 threads a
// block, one block an SM, H / 4 clusters. (Two heads a cluster took 16 clusters, but an H200 holds only 15 clusters
// of 8 such blocks at once: the 16th ran as a second wave.)
//   Before the wait (nothing here is the predecessor's output): block b requests its 64 KB of W_UK (head j's q_lat
//     columns 256·(b % 2) .. + 255) and of W_UV (head j's value rows 64·(b % 2) .. + 63, all R columns) into
//     registers, copies the slice's cache rows that earlier steps wrote into shared memory (cp.async), forms its 256
//     columns of q_lat from q (complete: the precondition absorb_query has), and the cluster exchanges those through
//     distributed shared memory, so that each block holds the four heads' q_lat [4][576] as bf16 hi + lo pairs.
//   After it (the row this step appends): the slice's scores for the four heads on the tensor cores (mma.sync
//     m16n8k16: A rows 0–3 = the heads' hi parts, 4–7 their lo parts, 8–15 zero; so the fp32 q_lat meets the bf16
//     rows exact to ~2^-17, as the wgmma partial's hi/lo rows do), the softmax within the slice (max, sum), and
//     O [4][512] = P·rows with P as bf16 hi + lo the same way. The cluster then merges the 8 slices by log-sum-exp,
//     each block reading its head's O and (max, sum) from the 8 blocks, and multiplies the merged latent mix by its
//     64 rows of W_UV into o.
// Shared memory: the slice's rows (1,168 bytes apart: 1,152 + 16 keeps ldmatrix's 8 rows on distinct banks), rows past
// the slice up to a multiple of 16 zero-filled (P·rows reads them with p = 0). The grid does not depend on the length
// (read from the device), but the slice must fit: len ≤ 8·kFusedMaxRows, which the caller keeps (the backend records
// the decode step again with the three-kernel path before the cache outgrows it); a longer one traps.
constexpr int kFusedBlocks = 8;                  // the cluster: blocks per four heads, cache slices per token
constexpr int kFusedHeads = 4;                   // heads a cluster
constexpr int kFusedThreads = 512;
constexpr int kFusedMaxRows = 176;               // cache rows a block holds (a multiple of 16)
constexpr int kFusedN = 128, kFusedV = 128, kFusedR = 512, kFusedD = 576;   // the model's N, V, R, R + P
constexpr int kFusedRowBytes = kFusedD * 2 + 16;   // 1,168
constexpr int kFusedPStride = kFusedMaxRows + 8;   // P's rows, bf16 elements apart (368 bytes: conflict-free fragment loads)
constexpr int kFusedScratch = 8 * 256;             // floats: the q_lat sums [8][256], later the scores [4][176] and the merged mix [512]
static_assert(kFusedMaxRows % 16 == 0, "P·rows takes k16 steps of rows");
static_assert(kFusedHeads * kFusedMaxRows + kFusedR <= kFusedScratch, "scores and the merged mix share the q_lat sums' room");
static_assert(kFusedHeads * kFusedR * 4 <= 2 * kFusedHeads * kFusedRowBytes, "O [4][512] fp32 takes q_lat's hi/lo rows' room");

// Dynamic shared memory, bytes.
__host__ __device__ constexpr size_t decode_fused_smem_bytes() {
    return static_cast<size_t>(kFusedMaxRows) * kFusedRowBytes   // rows
           + 2 * kFusedHeads * kFusedRowBytes                    // q_lat hi/lo [8][576] bf16 (same pitch), later O [4][512] fp32
           + 2 * kFusedHeads * kFusedPStride * 2                 // P hi/lo [8][184] bf16
           + (kFusedScratch                                      // q_lat sums, then scores and the merged mix
              + 256                                              // this block's q_lat columns [256]
              + kFusedN                                          // q (head j, nope part) [128]
              + 2 * kFusedHeads                                  // (max, sum) [4][2]
              + 16 * 8) * 4;                                     // per-warp W_UV sums [16][8]
}

// Hopper-only from here on (the wgmma instructions): the emulator or the sm_90a build.
#if defined(KDA_EMULATE) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void sync_warp() {
#ifdef KDA_EMULATE
    emu_warp_meet();
#else
    __syncwarp();
#endif
}

// d[64×128] += A[64×16]·B[16×128], bf16 operands from shared memory: A K-major (wgmma_desc), B MN-major
// (wgmma_desc_mn: the instruction's imm-trans-b = 1).
__device__ __forceinline__ void wgmma_m64n128_bf16_tb(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
#ifdef KDA_EMULATE
    emu_wgmma_ss(d, 128, false, true, desc_a, desc_b, true);
#else
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1, 0, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(desc_a), "l"(desc_b), "r"(1));
#endif
}

// d[64×64] (+)= A[64×16]·B[64×16]ᵀ, bf16 operands from shared memory; accumulate = false overwrites d.
__device__ __forceinline__ void wgmma_m64n64_bf16(float (&d)[32], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
#ifdef KDA_EMULATE
    emu_wgmma_ss(d, 64, false, accumulate, desc_a, desc_b);
#else
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)));
#endif
}

// o [T, H·128] f32; q [T, H·192] bf16; kv_map: keysValues [≥L, H·256] bf16, latent_map: the latent cache [≥L, R+64]
// bf16, both with L rows of extent and boxes of 64 × 64 (MlaKernels.PrefillAttention encodes them); L = start + T.
__device__ __forceinline__ void prefill_wgmma(float* __restrict__ o, const uint16_t* __restrict__ q, const TensorMap* kv_map,
                                              const TensorMap* latent_map, int start, int T, int H, int R, float scale_log2) {
    constexpr int N = 128, kChunks = kWgKD / 8;   // 16-byte pieces per Q row
    const int qt = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, q0 = qt * kWgRows, tid = threadIdx.x;
    const int L = start + T;
    const size_t q_row = static_cast<size_t>(H) * kWgKD;

    unsigned char* raw = reinterpret_cast<unsigned char*>(dynamic_smem());
    unsigned char* smem = raw + ((1024 - shared_address(raw) % 1024) % 1024);   // the swizzle atoms need 1,024-byte alignment
    unsigned char* qs = smem;                                                    // [3][3][64][128 B]
    unsigned char* ring = qs + kWgQBytes;                                        // [3] × (K [3][64][128 B] | V [2][64][128 B])
    uint64_t* full = reinterpret_cast<uint64_t*>(ring + kWgStages * kWgStageBytes); // [3]
    uint64_t* empty = full + kWgStages;                                          // [3]

    const int last_query = min(q0 + kWgRows, T) - 1;
    const int key_tiles = (start + last_query + 1 + kWgKeys - 1) / kWgKeys;
    const int wg = tid / 128, t128 = tid % 128;
    const int qw0 = q0 + wg * 64;   // a consumer warpgroup's first query
    if (tid == 0) {
        for (int s = 0; s < kWgStages; s++) {
            mbar_init(&full[s], 1);                    // the producer's arrival, with the stage's bytes to come
            mbar_init(&empty[s], 128 * kWgConsumers);  // every consumer thread, after its last product reading the stage
        }
    }
    if (wg < kWgConsumers) {   // each consumer warpgroup's 64 queries (rows past T zero), the K layout
        unsigned char* qw = qs + wg * (kWgQBytes / kWgConsumers);
        for (int e = t128; e < 64 * kChunks; e += 128) {
            const int r = e / kChunks, ch = e % kChunks, row = qw0 + r;
            cp_async16(reinterpret_cast<uint16_t*>(qw + (ch / 8) * (64 * 128) + swizzled(r, ch % 8)),
                       row < T ? q + row * q_row + h * kWgKD + ch * 8 : q, row < T);
        }
        cp_async_commit();
        cp_async_wait<0>();
        fence_proxy_async();
    }
    __syncthreads();   // Q complete (each thread wrote pieces others read); barriers initialised

    if (wg == kWgConsumers) {   // ---- producer: one thread issues every copy; the warpgroup's others only give up registers
        setmaxnreg_dec<kWgProducerRegisters>();
        if (t128 != 0) return;
        const int kv_column = h * (N + kWgVD);   // the head's first column in keysValues: nope keys, then values
        for (int j = 0; j < key_tiles; j++) {
            const int s = j % kWgStages, key0 = j * kWgKeys;
            // Stage s was last used by tile j − 3: every consumer must be done with it (its empty phase j / 3 − 1).
            if (j >= kWgStages) mbar_wait(&empty[s], (j / kWgStages + 1) & 1);
            unsigned char* stage = ring + s * kWgStageBytes;
            mbar_arrive_expect_tx(&full[s], kWgStageBytes);
            tma_load_2d(stage, kv_map, kv_column, key0, &full[s]);                                   // K: nope 0–63
            tma_load_2d(stage + kWgBlockBytes, kv_map, kv_column + 64, key0, &full[s]);              //    nope 64–127
            tma_load_2d(stage + 2 * kWgBlockBytes, latent_map, R, key0, &full[s]);                   //    rope
            tma_load_2d(stage + kWgKBytes, kv_map, kv_column + N, key0, &full[s]);                   // V: 0–63
            tma_load_2d(stage + kWgKBytes + kWgBlockBytes, kv_map, kv_column + N + 64, key0, &full[s]); //    64–127
        }
    } else {   // ---- consumers: warpgroup wg owns queries qw0 .. qw0 + 63; warp wq of it rows 16wq .. 16wq + 15 of those.
        setmaxnreg_inc<kWgConsumerRegisters>();
        const int warp = tid / 32, wq = warp % 4, lane = tid % 32, g = lane / 4, c = lane % 4;
        // A warpgroup whose rows all lie past T visits no key; otherwise up to start + its last row below T.
        const int wg_last_key = qw0 < T ? start + min(qw0 + 63, T - 1) : -1;
        const int wg_tiles = (wg_last_key + kWgKeys) / kWgKeys;
        const int row_a = qw0 + wq * 16 + g;   // this thread's rows: row_a, row_a + 8
        const uint32_t q_addr = shared_address(qs + wg * (kWgQBytes / kWgConsumers)), ring_addr = shared_address(ring);

        float m_run[2] = {kNegInf, kNegInf}, l_run[2] = {0.0f, 0.0f};   // m_run: raw (unscaled) running max
        float oacc[64];   // O [64 queries × 128]: d[4i + e] = O(16wq + g + 8(e / 2), 8i + 2c + e % 2)
#pragma unroll
        for (int i = 0; i < 64; i++) oacc[i] = 0.0f;
        for (int j = 0; j < key_tiles; j++) {
            const int s = j % kWgStages;
            mbar_wait(&full[s], (j / kWgStages) & 1);
            if (j < wg_tiles) {   // warpgroup-uniform
                const uint32_t k_addr = ring_addr + s * kWgStageBytes, v_addr = k_addr + kWgKBytes;
                // S [64 × 64 keys] = Q·K_jᵀ, the accumulator layout as oacc: k-block ks / 4 (64 columns), 32 bytes per
                // k16 step inside it.
                float sacc[32];
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < kWgKD / 16; ks++)
                    wgmma_m64n64_bf16(sacc, wgmma_desc(q_addr + (ks / 4) * (64 * 128) + (ks % 4) * 32),
                                      wgmma_desc(k_addr + (ks / 4) * (kWgKeys * 128) + (ks % 4) * 32), ks > 0);
                wgmma_commit();
                wgmma_wait<0>();
                pin(sacc);

                const int k0 = j * kWgKeys;
                const bool masked = k0 + kWgKeys - 1 > start + qw0 + wq * 16 || k0 + kWgKeys > L;   // warp-uniform
                float alpha[2];
                online_softmax_tile([&](int nt, int e) -> float& { return sacc[4 * nt + e]; }, m_run, l_run, alpha, masked, k0, c, row_a, start, L,
                                    scale_log2);
#pragma unroll
                for (int i = 0; i < 16; i++) {
                    oacc[4 * i] *= alpha[0]; oacc[4 * i + 1] *= alpha[0];
                    oacc[4 * i + 2] *= alpha[1]; oacc[4 * i + 3] *= alpha[1];
                }
                // O += P·V: P's A fragment for keys [16kk, 16kk + 16) is S accumulator tiles 2kk and 2kk + 1, as bf16.
                uint32_t pf[4][4];
#pragma unroll
                for (int kk = 0; kk < 4; kk++)
#pragma unroll
                    for (int i = 0; i < 4; i++) pf[kk][i] = pack_bf16x2(sacc[8 * kk + 2 * i], sacc[8 * kk + 2 * i + 1]);
                pin(oacc);   // rescaled and P packed before the fence
                pin(pf);
                wgmma_fence();
#pragma unroll
                // V's 16 keys of step kk: rows 16kk .. 16kk + 15 of both column blocks (LBO apart along the 128 columns).
                for (int kk = 0; kk < 4; kk++)
                    wgmma_m64n128_bf16_rs_tb(oacc, pf[kk], wgmma_desc_mn(v_addr + kk * 16 * 128, kWgBlockBytes));
                wgmma_commit();
                wgmma_wait<0>();
                pin(oacc);
            }
            mbar_arrive(&empty[s]);
        }

#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int row = row_a + r * 8;
            const float inv = 1.0f / group_sum(l_run[r], 4);   // all lanes shuffle (an idle warpgroup's 1/0 is never stored)
            if (row >= T) continue;
            float* dst = o + static_cast<size_t>(row) * H * kWgVD + h * kWgVD + 2 * c;
#pragma unroll
            for (int i = 0; i < 16; i++) *reinterpret_cast<float2*>(dst + i * 8) = make_float2(oacc[4 * i + 2 * r] * inv, oacc[4 * i + 2 * r + 1] * inv);
        }
    }
}

// Absorbed decode partial on Hopper: what decode_partial computes for the model's shape (H 32, R 512, D 576), same
// arguments, grid (S, T) and outputs; only the slices' lengths round to 16 rows (at least 64) instead of a tile. Block (slice s,
// token t), three warpgroups, one block per SM:
//   warpgroup 2 (producer, 56 registers): one thread streams the slice's cache rows in tiles of 64 through a 2-stage
//       ring by the copy engine (TMA: 9 boxes of 64 rows × 64 columns a tile, each landing in the 128-byte-swizzled
//       K-major layout wgmma reads); a slice's last, partial tile is the 64 rows ending at the slice's end, the rows
//       before it masked. mbarriers hand the stages over: full (the tile's 72 KB have landed, counted in bytes) and
//       empty (every consumer thread is done with it). (It replaced 16-byte cp.async from 128 threads, 36 a thread a
//       tile; the whole model decoded at the same speed with either, so the copies' issue does not bound this kernel.)
//   warpgroup 0 (consumer, 224 registers): S [64 × 64 rows] = Q·Kᵀ, 36 wgmma m64n64k16 with both operands in shared
//       memory. q_lat is fp32: Q's 64 rows hold it as bf16 hi (rows 0–31, head h) and lo = bf16(q − hi) (rows 32–63),
//       so the rows the 32 heads leave free make the product exact to ~2^-17 without a second pass (bf16 q alone
//       would cost ~2e-3 relative). Warps 2–3 hand their lo scores to warps 0–1 through shared memory, which add them,
//       run the online softmax in registers and write P the same way (rows 0–31 bf16(p), rows 32–63 bf16(p − hi)) and
//       the rescale factors α.
//   warpgroups 0 and 1: O = α·O + P·V over their halves of the 512 value columns (warpgroup w columns 256w ..
//       256w + 255: two m64n128 accumulators, 128 registers a thread), 4 k16 steps × 2 wgmma m64n128k16 with P from
//       shared memory and V = the tile's first 512 columns read MN-major (the transposing descriptor): no copy, no
//       conversion. Rows 32–63 accumulate P_lo·V; they are added to rows 0–31 once, at the end.
// Per tile: warpgroup 0's S (36 wgmma) overlaps warpgroup 1's P·V of the tile before, and the producer has the next
// tile in flight while one is consumed. Sketch of the handshakes for tile j (stage j % 2):
//   producer:  wait empty(j − 2) → copy tile j → wait tile j − 1 landed → arrive full(j − 1)
//   wg 0:      wait full(j) → S → [warps 2–3: wait empty(j − 1) (P of j − 1 read by all), store S_lo, arrive scores_lo]
//              [warps 0–1: wait scores_lo → add → softmax → store P, α → arrive p_ready] → P·V
//   wg 1:      wait full(j) → P·V
//   P·V:       wait p_ready(j) → rescale O by α → 8 wgmma → arrive empty(j)
// The lo scores travel through P's own buffer: warp w's partner writes exactly the bytes warp w then overwrites with its
// P rows (16w .. 16w + 15 and 32 + 16w ..), after a __syncwarp, so 8 KB serve both (the ring and Q leave ~10 KB free).
__device__ __forceinline__ void decode_partial_wgmma(float* __restrict__ partial_o, float* __restrict__ partial_ml,
                                                     const float* __restrict__ q_lat, const TensorMap* latent_map,
                                                     int len, int stable, float scale_log2) {
    constexpr int H = kWdHeads, R = kWdRank, D = kWdWidth, kChunks = D / 8;   // 16-byte pieces per row
    const int splits = gridDim.x, s = blockIdx.x, t = blockIdx.y, tid = threadIdx.x;
    const int per = max(kWdMinSliceRows, ((len + splits - 1) / splits + kWdSliceQuantum - 1) / kWdSliceQuantum * kWdSliceQuantum);
    const int begin = s * per, end = min(len, begin + per);
    float* ml = partial_ml + (static_cast<size_t>(t) * splits + s) * H * 2;
    if (begin >= end) {   // an empty slice (short cache): nothing to merge
        wait_for_predecessor();   // the previous layer's merge may still read ml
        if (tid < H) { ml[2 * tid] = kNegInf; ml[2 * tid + 1] = 0.0f; }
        return;
    }
    const int tiles = (end - begin + kWdRows - 1) / kWdRows;   // each starts before end: a visible row in every tile

    unsigned char* raw = reinterpret_cast<unsigned char*>(dynamic_smem());
    unsigned char* smem = raw + ((1024 - shared_address(raw) % 1024) % 1024);   // the swizzle atoms need 1,024-byte alignment
    unsigned char* qs = smem;                                                    // [9][64][128 B]
    unsigned char* ring = qs + kWdQBytes;                                        // [2] × [9][64][128 B]
    unsigned char* ps = ring + kWdStages * kWdTileBytes;                         // [64][128 B]
    float* alpha_sh = reinterpret_cast<float*>(ps + kWdPBytes);                  // [32]
    uint64_t* full = reinterpret_cast<uint64_t*>(alpha_sh + H);                  // [2]
    uint64_t* empty = full + kWdStages;                                          // [2]
    uint64_t* scores_lo = empty + kWdStages;   // warps 2–3 of warpgroup 0 stored their lo scores
    uint64_t* p_ready = scores_lo + 1;         // P and α of the tile are stored
    const int wg = tid / 128, t128 = tid % 128;
    // Tile j covers rows [begin + 64j, end) of the slice. The copy engine takes 64 whole rows a tile, so a slice's last,
    // partial tile is taken as the 64 rows ending at `end` (rows before begin + 64j, already seen or another slice's,
    // and rows before 0, which land as zeros, are masked out of the softmax): no tile reaches a row at or past the
    // cache's length, which may hold anything (NaN included).
    auto first_row = [&](int j) { return min(begin + j * kWdRows, end - kWdRows); };
    auto issue = [&](int j) {   // the producer's one thread: tile j as 9 boxes of 64 rows × 64 columns
        const int stage = j % kWdStages, row0 = first_row(j);
        unsigned char* dst = ring + stage * kWdTileBytes;
        mbar_arrive_expect_tx(&full[stage], kWdTileBytes);
#pragma unroll 1
        for (int b = 0; b < D / 64; b++) tma_load_2d(dst + b * kWdBlockBytes, latent_map, 64 * b, row0, &full[stage]);
    };
    if (wg == 2 && t128 == 0) {   // the producer's thread: the barriers, then both stages' tiles in flight while the consumers build Q
        for (int i = 0; i < kWdStages; i++) {
            mbar_init(&full[i], 1);     // the producer's arrival, with the tile's bytes to come
            mbar_init(&empty[i], 256);
        }
        mbar_init(scores_lo, 64);
        mbar_init(p_ready, 64);
        fence_mbarrier_init();   // the initialised barriers visible to the copy engine, which counts bytes on them
        // Tiles of rows before `stable` (written by earlier steps) are requested while the predecessor still runs; a tile
        // reaching the rows this step appends waits for it.
        const int first = min(tiles, kWdStages);
        int j = 0;
        for (; j < first && first_row(j) + kWdRows <= stable; j++) issue(j);
        wait_for_predecessor();
        for (; j < first; j++) issue(j);
    }
    if (wg < 2) wait_for_predecessor();   // q_lat
    if (wg < 2) {   // Q: head h's q_lat as bf16 hi in row h and lo in row h + 32, 8 columns a piece (all loads issued at once)
        static_assert(H * kChunks % 256 == 0, "whole pieces per consumer thread");
#pragma unroll
        for (int k = 0; k < H * kChunks / 256; k++) {
            const int e = k * 256 + tid, h = e / kChunks, ch = e % kChunks;
            const float* src = q_lat + (static_cast<size_t>(t) * H + h) * D + ch * 8;
            const float4 a = *reinterpret_cast<const float4*>(src), b = *reinterpret_cast<const float4*>(src + 4);
            const float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
            uint32_t hi[4], lo[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                hi[i] = pack_bf16x2(x[2 * i], x[2 * i + 1]);
                lo[i] = pack_bf16x2(x[2 * i] - bf16_lo(hi[i]), x[2 * i + 1] - bf16_hi(hi[i]));
            }
            unsigned char* block = qs + (ch / 8) * kWdBlockBytes;
            *reinterpret_cast<uint4*>(block + swizzled(h, ch % 8)) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
            *reinterpret_cast<uint4*>(block + swizzled(h + H, ch % 8)) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
        }
        fence_proxy_async();
    }
    __syncthreads();   // Q complete (each thread wrote pieces others read); barriers initialised

    if (wg == 2) {   // ---- producer: one thread issues the tiles past the first two; the others only give up registers
        setmaxnreg_dec<kWdProducerRegisters>();
        if (t128 != 0) return;
        for (int j = kWdStages; j < tiles; j++) {
            // Stage j % 2 was last used by tile j − 2: every consumer must be done with it (its empty phase j / 2 − 1).
            mbar_wait(&empty[j % kWdStages], (j / kWdStages + 1) & 1);
            issue(j);
        }
    } else {   // ---- consumers: warp wq of warpgroup wg holds rows 16wq .. 16wq + 15 of every 64-row product
        setmaxnreg_inc<kWdConsumerRegisters>();
        const int wq = t128 / 32, lane = tid % 32, g = lane / 4, c = lane % 4;
        const int head = (16 * wq + g) % H;   // this thread's rows are heads head and head + 8 (hi rows < 32, lo rows ≥ 32)
        const uint32_t q_addr = shared_address(qs), ring_addr = shared_address(ring), p_addr = shared_address(ps);
        // O [64 rows × this warpgroup's 256 columns]: oacc[nb][4i + e] = O(16wq + g + 8(e / 2), 256wg + 128nb + 8i + 2c + e % 2).
        float oacc[2][64];
#pragma unroll
        for (int i = 0; i < 64; i++) oacc[0][i] = oacc[1][i] = 0.0f;
        float m_run[2] = {kNegInf, kNegInf}, l_run[2] = {0.0f, 0.0f};   // warpgroup 0, warps 0–1: max (log2 units), per-lane sum
        for (int j = 0; j < tiles; j++) {
            const int stage = j % kWdStages;
            const uint32_t k_addr = ring_addr + stage * kWdTileBytes;
            mbar_wait(&full[stage], (j / kWdStages) & 1);
            if (wg == 0) {
                // S [64 × 64 cache rows] = Q·K_jᵀ, the accumulator layout as oacc[nb]: column block ks / 4, 32 bytes per k16
                // step inside it.
                float sacc[32];
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < D / 16; ks++)
                    wgmma_m64n64_bf16(sacc, wgmma_desc(q_addr + (ks / 4) * kWdBlockBytes + (ks % 4) * 32),
                                      wgmma_desc(k_addr + (ks / 4) * kWdBlockBytes + (ks % 4) * 32), ks > 0);
                wgmma_commit();
                wgmma_wait<0>();
                pin(sacc);
                // Lane l's 32 lo scores, in the bytes of P its partner lane (warp wq − 2) overwrites with its P rows:
                // float4 i of the lane at 16(32i + l), so that each warp-wide store covers 512 contiguous bytes.
                const int pair = wq % 2;
                float4* x_first = reinterpret_cast<float4*>(ps + 2048 * pair) + lane;           // scores 0–15
                float4* x_second = reinterpret_cast<float4*>(ps + 4096 + 2048 * pair) + lane;   // scores 16–31
                if (wq >= 2) {
                    // P's buffer is free once every consumer has finished tile j − 1's P·V.
                    if (j > 0) mbar_wait(&empty[(j - 1) % kWdStages], ((j - 1) / kWdStages) & 1);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        x_first[32 * i] = make_float4(sacc[4 * i], sacc[4 * i + 1], sacc[4 * i + 2], sacc[4 * i + 3]);
                        x_second[32 * i] = make_float4(sacc[16 + 4 * i], sacc[16 + 4 * i + 1], sacc[16 + 4 * i + 2], sacc[16 + 4 * i + 3]);
                    }
                    mbar_arrive(scores_lo);
                } else {
                    mbar_wait(scores_lo, j & 1);
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        const float4 a = x_first[32 * i], b = x_second[32 * i];
                        sacc[4 * i] += a.x; sacc[4 * i + 1] += a.y; sacc[4 * i + 2] += a.z; sacc[4 * i + 3] += a.w;
                        sacc[16 + 4 * i] += b.x; sacc[16 + 4 * i + 1] += b.y; sacc[16 + 4 * i + 2] += b.z; sacc[16 + 4 * i + 3] += b.w;
                    }
                    sync_warp();   // every lane has read its lo scores before any lane overwrites them with P

                    // Online softmax over the tile's rows (columns of S): in a last, partial tile (taken as the 64 rows
                    // ending at `end`) the rows before begin + 64j are masked.
                    const int first = begin + j * kWdRows, row0 = min(first, end - kWdRows);
                    const bool masked = first + kWdRows > end;   // warp-uniform
                    float mx[2] = {kNegInf, kNegInf};
#pragma unroll
                    for (int i = 0; i < 8; i++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            float x = sacc[4 * i + e] * scale_log2;
                            if (masked && row0 + 8 * i + 2 * c + (e & 1) < first) x = kNegInf;
                            sacc[4 * i + e] = x;
                            mx[e >> 1] = fmaxf(mx[e >> 1], x);
                        }
                    float alpha[2];
#pragma unroll
                    for (int r = 0; r < 2; r++) {
                        const float m_new = fmaxf(m_run[r], group_max(mx[r], 4));   // finite: the tile has a visible row
                        alpha[r] = ex2(m_run[r] - m_new);
                        m_run[r] = m_new;
                    }
                    float rowsum[2] = {0.0f, 0.0f};
#pragma unroll
                    for (int i = 0; i < 8; i++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const float p = ex2(sacc[4 * i + e] - m_run[e >> 1]);
                            sacc[4 * i + e] = p;
                            rowsum[e >> 1] += p;
                        }
#pragma unroll
                    for (int r = 0; r < 2; r++) l_run[r] = l_run[r] * alpha[r] + rowsum[r];   // per-lane partial, summed at the end
                    // P as bf16 hi (row 16wq + g + 8r) and lo (the same row + 32), columns 8i + 2c, +1 (16-byte chunk i).
#pragma unroll
                    for (int i = 0; i < 8; i++)
#pragma unroll
                        for (int r = 0; r < 2; r++) {
                            const float p0 = sacc[4 * i + 2 * r], p1 = sacc[4 * i + 2 * r + 1];
                            const uint32_t hi = pack_bf16x2(p0, p1), lo = pack_bf16x2(p0 - bf16_lo(hi), p1 - bf16_hi(hi));
                            const int row = 16 * wq + g + 8 * r;
                            *reinterpret_cast<uint32_t*>(ps + swizzled(row, i) + 4 * c) = hi;
                            *reinterpret_cast<uint32_t*>(ps + swizzled(row + H, i) + 4 * c) = lo;
                        }
                    if (c == 0) { alpha_sh[head] = alpha[0]; alpha_sh[head + 8] = alpha[1]; }
                    fence_proxy_async();   // P's generic stores, then the tensor cores' reads
                    mbar_arrive(p_ready);
                }
            }
            // O = α·O + P·V over this warpgroup's 256 columns (column blocks 4wg, 4wg + 1 for nb = 0, 2 blocks each).
            mbar_wait(p_ready, j & 1);
            const float a0 = alpha_sh[head], a1 = alpha_sh[head + 8];
#pragma unroll
            for (int nb = 0; nb < 2; nb++)
#pragma unroll
                for (int i = 0; i < 16; i++) {
                    oacc[nb][4 * i] *= a0; oacc[nb][4 * i + 1] *= a0;
                    oacc[nb][4 * i + 2] *= a1; oacc[nb][4 * i + 3] *= a1;
                }
            pin(oacc[0]);   // rescaled before the fence
            pin(oacc[1]);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < kWdRows / 16; kk++)
#pragma unroll
                for (int nb = 0; nb < 2; nb++)
                    wgmma_m64n128_bf16_tb(oacc[nb], wgmma_desc(p_addr + kk * 32),
                                          wgmma_desc_mn(k_addr + (4 * wg + 2 * nb) * kWdBlockBytes + kk * 16 * 128, kWdBlockBytes));
            wgmma_commit();
            wgmma_wait<0>();
            pin(oacc[0]);
            pin(oacc[1]);
            mbar_arrive(&empty[stage]);
        }

        // O rows h (P_hi·V) and h + 32 (P_lo·V) meet in the stage that held tile tiles − 2 (or none), which both
        // warpgroups are done with here: warpgroup 0 issued P of the last tile only after every consumer finished
        // tile tiles − 2 (the empty wait before its lo scores), and warpgroup 1 waited for that P. Lane l of the lo
        // warp stores float4 k of its 128 accumulators at 16(32k + l) of its 16 KB; the partner lane of the hi warp adds.
        float4* swap = reinterpret_cast<float4*>(ring + (tiles % kWdStages) * kWdTileBytes + wg * 32768 + (wq % 2) * 16384) + lane;
        if (wq >= 2)
#pragma unroll
            for (int k = 0; k < 32; k++) {
                const float* a = &oacc[k / 16][4 * (k % 16)];
                swap[32 * k] = make_float4(a[0], a[1], a[2], a[3]);
            }
        named_barrier(1 + wg, 128);   // this warpgroup's lo rows stored
        if (wq < 2) {
#pragma unroll
            for (int k = 0; k < 32; k++) {
                const float4 lo = swap[32 * k];
                float* a = &oacc[k / 16][4 * (k % 16)];
                a[0] += lo.x; a[1] += lo.y; a[2] += lo.z; a[3] += lo.w;
            }
            float* out = partial_o + (static_cast<size_t>(t) * splits + s) * H * R + 256 * wg + 2 * c;
#pragma unroll
            for (int nb = 0; nb < 2; nb++)
#pragma unroll
                for (int i = 0; i < 16; i++)
#pragma unroll
                    for (int r = 0; r < 2; r++)
                        *reinterpret_cast<float2*>(out + (head + 8 * r) * R + 128 * nb + 8 * i) =
                            make_float2(oacc[nb][4 * i + 2 * r], oacc[nb][4 * i + 2 * r + 1]);
            if (wg == 0)
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const float l = group_sum(l_run[r], 4);
                    if (c == 0) { ml[2 * (head + 8 * r)] = m_run[r]; ml[2 * (head + 8 * r) + 1] = l; }
                }
        }
    }
}
// Sums v[k] over the whole warp for 8 rows k at once (halving exchanges); afterwards lane l holds row (l >> 2) & 7.
__device__ __forceinline__ float warp_sum8(float (&v)[8], int lane) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const bool high = lane & 16;
        const float send = high ? v[i] : v[i + 4], keep = high ? v[i + 4] : v[i];
        v[i] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, 16);
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const bool high = lane & 8;
        const float send = high ? v[i] : v[i + 2], keep = high ? v[i + 2] : v[i];
        v[i] = keep + __shfl_xor_sync(0xFFFFFFFFu, send, 8);
    }
    const bool high = lane & 4;
    const float send = high ? v[0] : v[1], keep = high ? v[1] : v[0];
    float sum = keep + __shfl_xor_sync(0xFFFFFFFFu, send, 4);
    sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 2);
    return sum + __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
}

__device__ __forceinline__ void decode_fused(float* __restrict__ o, const float* __restrict__ q, const uint16_t* __restrict__ latent,
                                             const uint16_t* __restrict__ kvb, const int* __restrict__ start_ptr, float scale_log2) {
    constexpr int N = kFusedN, V = kFusedV, R = kFusedR, D = kFusedD, QK = kFusedN + (kFusedD - kFusedR), HC = kFusedHeads;
    const int b = static_cast<int>(cluster_rank()), tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int first_head = HC * blockIdx.y, j = b / 2, head = first_head + j, half = b % 2;   // this block's head, its half

    // Weights: W_UK rows n = row0 + 16k of 8 columns (q_lat columns 256·half + 8·piece ..), W_UV rows v = vr + 8k of 8 columns.
    const int piece = tid % 32, row0 = tid / 32, vp = tid % 64, vr = tid / 64;
    const uint16_t* w_uk = kvb + static_cast<size_t>(head) * (N + V) * R + 256 * half + 8 * piece;
    const uint16_t* w_uv = kvb + (static_cast<size_t>(head) * (N + V) + N + 64 * half + vr) * R + 8 * vp;
    uint4 wk[8], wv[8];
#pragma unroll
    for (int k = 0; k < 8; k++) wk[k] = *reinterpret_cast<const uint4*>(w_uk + static_cast<size_t>(row0 + 16 * k) * R);

    unsigned char* smem = reinterpret_cast<unsigned char*>(dynamic_smem());
    unsigned char* rows = smem;                                                  // [176][1,168 B]
    unsigned char* qhl = rows + kFusedMaxRows * kFusedRowBytes;                  // [8][1,168 B]: heads' hi, then lo
    float* opart = reinterpret_cast<float*>(qhl);                                // [4][512], once the scores are formed
    uint16_t* pbuf = reinterpret_cast<uint16_t*>(qhl + 2 * HC * kFusedRowBytes);  // [8][184]: the same rows of P
    float* sums = reinterpret_cast<float*>(pbuf + 2 * HC * kFusedPStride);      // [8][256] q_lat sums, then:
    float* scores = sums;                                                        //   [4][176]
    float* merged = sums + HC * kFusedMaxRows;                                   //   [512]
    float* qpiece = sums + kFusedScratch;                                        // [256] this block's q_lat columns
    float* qn = qpiece + 256;                                                    // [128]
    float* stats = qn + N;                                                       // [4][2]
    float* vsums = stats + 2 * HC;                                               // [16][8]

    // The slice; the rows before the start (earlier steps') are copied now, the start's own after the wait.
    const int start = *start_ptr, len = start + 1;
    const int per = (len + kFusedBlocks - 1) / kFusedBlocks;
    if (per > kFusedMaxRows) __trap();   // the caller's precondition: never a silent overrun
    const int begin = b * per, end = min(len, begin + per), count = max(0, end - begin), padded = (count + 15) & ~15;
    constexpr int kPieces = D / 8;   // 16-byte pieces a row
    const int stable = max(0, min(end, start) - begin);
    for (int e = tid; e < stable * kPieces; e += kFusedThreads) {
        const int r = e / kPieces, c = e - r * kPieces;
        cp_async16(reinterpret_cast<uint16_t*>(rows + r * kFusedRowBytes + 16 * c), latent + static_cast<size_t>(begin + r) * D + 8 * c, true);
    }
    cp_async_commit();
    // W_UV last: it is needed last (the rows right after the wait, W_UK at once).
#pragma unroll
    for (int k = 0; k < 8; k++) wv[k] = *reinterpret_cast<const uint4*>(w_uv + static_cast<size_t>(8 * k) * R);
    for (int e = tid; e < (padded - count) * kPieces; e += kFusedThreads) {
        const int r = count + e / kPieces, c = e % kPieces;
        *reinterpret_cast<uint4*>(rows + r * kFusedRowBytes + 16 * c) = make_uint4(0, 0, 0, 0);
    }

    // This block's 256 columns of head j's q_lat = q_nope·W_UK: warp w holds row group w of all 256 columns; warps 8-15
    // leave theirs in shared memory, warps 0-7 add theirs, then 256 threads add the 8.
    if (tid < N) qn[tid] = q[head * QK + tid];
    __syncthreads();
    float acc[8] = {};
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const float x = qn[row0 + 16 * k];
        const uint4 w = wk[k];
        acc[0] += x * bf16_lo(w.x); acc[1] += x * bf16_hi(w.x); acc[2] += x * bf16_lo(w.y); acc[3] += x * bf16_hi(w.y);
        acc[4] += x * bf16_lo(w.z); acc[5] += x * bf16_hi(w.z); acc[6] += x * bf16_lo(w.w); acc[7] += x * bf16_hi(w.w);
    }
    float* mine = sums + (warp % 8) * 256 + 8 * piece;
    if (warp >= 8) {
        *reinterpret_cast<float4*>(mine) = make_float4(acc[0], acc[1], acc[2], acc[3]);
        *reinterpret_cast<float4*>(mine + 4) = make_float4(acc[4], acc[5], acc[6], acc[7]);
    }
    __syncthreads();
    if (warp < 8)
#pragma unroll
        for (int i = 0; i < 8; i++) mine[i] += acc[i];
    __syncthreads();
    if (tid < 256) {
        float sum = 0.0f;
#pragma unroll
        for (int w = 0; w < 8; w++) sum += sums[w * 256 + tid];
        qpiece[tid] = sum;
    }
    cluster_sync();   // every block's q_lat columns are written

    // The four heads' q_lat as bf16 hi and lo: columns < R from the blocks that formed them (all loads first, so that
    // the remote reads overlap), the rope part from q.
    {
        constexpr int kEach = (HC * D + kFusedThreads - 1) / kFusedThreads;
        float x[kEach];
#pragma unroll
        for (int k = 0; k < kEach; k++) {
            const int e = tid + k * kFusedThreads, h = e / D, col = e - h * D;
            x[k] = e >= HC * D ? 0.0f
                 : col < R ? *cluster_map(qpiece + col % 256, static_cast<unsigned>(2 * h + col / 256))
                           : q[(first_head + h) * QK + N + (col - R)];
        }
#pragma unroll
        for (int k = 0; k < kEach; k++) {
            const int e = tid + k * kFusedThreads, h = e / D, col = e - h * D;
            if (e >= HC * D) break;
            const uint16_t hi = f32_to_bf16(x[k]);
            reinterpret_cast<uint16_t*>(qhl + h * kFusedRowBytes)[col] = hi;
            reinterpret_cast<uint16_t*>(qhl + (HC + h) * kFusedRowBytes)[col] = f32_to_bf16(x[k] - bf16_to_f32(hi));
        }
    }

    wait_for_predecessor();   // the row this step appends
    if (start >= begin && start < end)
        for (int c = tid; c < kPieces; c += kFusedThreads)
            cp_async16(reinterpret_cast<uint16_t*>(rows + (start - begin) * kFusedRowBytes + 16 * c), latent + static_cast<size_t>(start) * D + 8 * c, true);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();   // rows, q_lat hi/lo complete

    const int g = lane / 4, c4 = lane % 4;   // fragment row g: head g's hi part (g < 4) or head g − 4's lo part
    if (count > 0) {
        // Scores: warp w takes the 8-row tiles w, w + 16, ...; 36 k16 steps over the 576 columns, two a ldmatrix, into
        // four accumulators (k step mod 4): four chains of 9 dependent mma instead of one of 36.
        for (int nt = warp; nt < padded / 8; nt += 16) {
            float s[4][4] = {};
            const unsigned char* brow = rows + (8 * nt + lane % 8) * kFusedRowBytes + 16 * (lane / 8);
            const uint32_t* arow = reinterpret_cast<const uint32_t*>(qhl + g * kFusedRowBytes);
            static_assert(D / 16 % 4 == 0, "whole groups of four k16 steps");
            for (int ks = 0; ks < D / 16; ks += 4) {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    uint32_t bfrag[4];
                    ldsm_x4(bfrag, reinterpret_cast<const uint16_t*>(brow + 32 * (ks + 2 * h)));
#pragma unroll
                    for (int u = 0; u < 2; u++) {
                        const int k = ks + 2 * h + u;
                        const uint32_t a[4] = {arow[8 * k + c4], 0u, arow[8 * k + 4 + c4], 0u};
                        mma(s[2 * h + u], a, bfrag[2 * u], bfrag[2 * u + 1]);
                    }
                }
            }
            const float t0 = (s[0][0] + s[1][0]) + (s[2][0] + s[3][0]), t1 = (s[0][1] + s[1][1]) + (s[2][1] + s[3][1]);
            // A head's hi and lo rows meet: lanes g and g + 4 are lanes l and l + 16.
            const float s0 = t0 + __shfl_xor_sync(0xFFFFFFFFu, t0, 16), s1 = t1 + __shfl_xor_sync(0xFFFFFFFFu, t1, 16);
            if (g < HC) {
                const int r = 8 * nt + 2 * c4;
                scores[g * kFusedMaxRows + r] = r < count ? s0 * scale_log2 : kNegInf;
                scores[g * kFusedMaxRows + r + 1] = r + 1 < count ? s1 * scale_log2 : kNegInf;
            }
        }
        __syncthreads();   // the scores are complete; q_lat is read (its room takes O below)
        // Softmax within the slice: warp h < 4 takes head h.
        if (warp < HC) {
            float m = kNegInf;
            for (int r = lane; r < count; r += 32) m = fmaxf(m, scores[warp * kFusedMaxRows + r]);
            m = group_max(m, 32);
            float l = 0.0f;
            for (int r = lane; r < padded; r += 32) {
                const float p = ex2(scores[warp * kFusedMaxRows + r] - m);   // 2^-inf = 0 past the slice
                l += p;
                const uint16_t hi = f32_to_bf16(p);
                pbuf[warp * kFusedPStride + r] = hi;
                pbuf[(HC + warp) * kFusedPStride + r] = f32_to_bf16(p - bf16_to_f32(hi));
            }
            l = group_sum(l, 32);
            if (lane == 0) { stats[2 * warp] = m; stats[2 * warp + 1] = l; }
        }
        __syncthreads();
        // O = P·rows: warp w takes columns 32w .. 32w + 31 (4 n8 tiles), padded / 16 k16 steps of rows.
        float acc_o[4][4] = {};
        const uint32_t* prow = reinterpret_cast<const uint32_t*>(pbuf + g * kFusedPStride);
        for (int ks = 0; ks < padded / 16; ks++) {
            const uint32_t a[4] = {prow[8 * ks + c4], 0u, prow[8 * ks + 4 + c4], 0u};
            const unsigned char* vrow = rows + (16 * ks + lane % 8 + 8 * ((lane / 8) & 1)) * kFusedRowBytes + 2 * (32 * warp + 8 * (lane / 16));
#pragma unroll
            for (int np = 0; np < 2; np++) {   // two n8 tiles a ldmatrix
                uint32_t bfrag[4];
                ldsm_x4_t(bfrag, reinterpret_cast<const uint16_t*>(vrow + 32 * np));
                mma(acc_o[2 * np], a, bfrag[0], bfrag[1]);
                mma(acc_o[2 * np + 1], a, bfrag[2], bfrag[3]);
            }
        }
#pragma unroll
        for (int nt = 0; nt < 4; nt++) {
            const float x0 = acc_o[nt][0] + __shfl_xor_sync(0xFFFFFFFFu, acc_o[nt][0], 16);
            const float x1 = acc_o[nt][1] + __shfl_xor_sync(0xFFFFFFFFu, acc_o[nt][1], 16);
            if (g < HC) *reinterpret_cast<float2*>(opart + g * R + 32 * warp + 8 * nt + 2 * c4) = make_float2(x0, x1);
        }
    } else {   // an empty slice (a short cache): weight 0 in the merge, its O zero (the merge reads it regardless)
        for (int e = tid; e < HC * R; e += kFusedThreads) opart[e] = 0.0f;
        if (tid < HC) { stats[2 * tid] = kNegInf; stats[2 * tid + 1] = 0.0f; }
    }
    cluster_sync();   // every block's O and (max, sum) are written

    // Head j's merged latent mix, column tid: out = Σ_s 2^(m_s − M)·O_s / Σ_s 2^(m_s − M)·l_s over the 8 slices.
    {
        float m_s[kFusedBlocks], l_s[kFusedBlocks], o_s[kFusedBlocks], top = kNegInf;
#pragma unroll
        for (int s = 0; s < kFusedBlocks; s++) {
            m_s[s] = *cluster_map(stats + 2 * j, static_cast<unsigned>(s));
            l_s[s] = *cluster_map(stats + 2 * j + 1, static_cast<unsigned>(s));
            o_s[s] = *cluster_map(opart + j * R + tid, static_cast<unsigned>(s));
        }
#pragma unroll
        for (int s = 0; s < kFusedBlocks; s++) top = fmaxf(top, m_s[s]);   // finite: slice 0 holds rows
        float denominator = 0.0f, sum = 0.0f;
#pragma unroll
        for (int s = 0; s < kFusedBlocks; s++) {
            const float w = ex2(m_s[s] - top);   // 0 for an empty slice
            denominator += w * l_s[s];
            sum += w * o_s[s];
        }
        merged[tid] = sum / denominator;
    }
    cluster_arrive();   // done with the other blocks' shared memory
    __syncthreads();

    // o[head, 64·half + vr + 8k] = W_UV rows · merged: each thread 8 rows × its 8 columns, summed over the 64 threads of
    // a row group (warps 2vr and 2vr + 1).
    {
        const float4 xa = *reinterpret_cast<const float4*>(merged + 8 * vp), xb = *reinterpret_cast<const float4*>(merged + 8 * vp + 4);
        float d[8];
#pragma unroll
        for (int k = 0; k < 8; k++) d[k] = dot8(wv[k], xa, xb);
        const float sum = warp_sum8(d, lane);
        if (lane % 4 == 0) vsums[warp * 8 + lane / 4] = sum;
    }
    __syncthreads();
    if (tid < 64) {
        const int group = tid / 8, k = tid % 8;
        o[head * V + 64 * half + group + 8 * k] = vsums[2 * group * 8 + k] + vsums[(2 * group + 1) * 8 + k];
    }
    cluster_wait();   // no block leaves while another still reads its shared memory
}
#endif

}  // namespace mla

// The model's shape on Hopper (sm_90a cubin); a trap in the PTX images, which the wrapper never launches.
extern "C" __global__ void __launch_bounds__(mla::kWgThreads, 1)
kimi_mla_prefill_wgmma_d192_v128(float* __restrict__ o, const uint16_t* __restrict__ q, const __grid_constant__ TensorMap kv_map,
                                 const __grid_constant__ TensorMap latent_map, int start, int T, int H, int N, int P, int V, int R,
                                 float scale_log2) {
#if defined(KDA_EMULATE) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
    (void)N; (void)P; (void)V;
    mla::prefill_wgmma(o, q, &kv_map, &latent_map, start, T, H, R, scale_log2);
#else
    (void)o; (void)q; (void)kv_map; (void)latent_map; (void)start; (void)T; (void)H; (void)N; (void)P; (void)V; (void)R; (void)scale_log2;
    __trap();
#endif
}

// The absorbed decode partial on Hopper for the model's shape (H 32, R 512, D 576): the arguments, grid (S, T) and
// outputs of kimi_mla_decode_partial_h32_r512_d576 (and its table form those of the table form there), kWdThreads
// threads, decode_wgmma_smem_bytes() of dynamic shared memory. A trap in the PTX images, which the wrapper never
// launches. Programmatic launch: the start (a copy or fill queued before the step, never a kernel's output: a
// precondition) and the cache rows before it (earlier steps') are read while the predecessor still runs, so the first
// tiles of a slice that ends before the start are in flight before the wait; q_lat and the rows this call appends (written
// just before) only after it.
// Its cache comes as a tensor map (rows of R + P bf16 values, extent at least the length, boxes of 64 × 64 with the
// 128-byte swizzle; MlaKernels.DecodeAttention encodes it), its table form's as a table of them.
namespace mla {
struct DecodeMaps {
    TensorMap latent[kDecodeTableSequences];
};
}  // namespace mla
#if defined(KDA_EMULATE) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MLA_DECODE_WGMMA(MAP, LEN, STABLE) \
    ((void)H, (void)R, (void)D, mla::decode_partial_wgmma(partial_o, partial_ml, q_lat, MAP, LEN, STABLE, scale_log2))
#else
#define MLA_DECODE_WGMMA(MAP, LEN, STABLE) \
    ((void)MAP, (void)(LEN), (void)(STABLE), (void)partial_o, (void)partial_ml, (void)q_lat, (void)H, (void)R, (void)D, (void)scale_log2, __trap())
#endif
extern "C" __global__ void __launch_bounds__(mla::kWdThreads, 1)
kimi_mla_decode_partial_wgmma_h32_r512_d576(float* __restrict__ partial_o, float* __restrict__ partial_ml, const float* __restrict__ q_lat,
                                            const __grid_constant__ TensorMap latent_map, const int* __restrict__ start_ptr, int H, int R,
                                            int D, float scale_log2) {
    allow_successor();
    const int start = *start_ptr;
    MLA_DECODE_WGMMA(&latent_map, start + static_cast<int>(blockIdx.y) + 1, start);   // waits inside
}
extern "C" __global__ void __launch_bounds__(mla::kWdThreads, 1)
kimi_mla_decode_partial_table_wgmma_h32_r512_d576(float* __restrict__ partial_o, float* __restrict__ partial_ml, const float* __restrict__ q_lat,
                                                  const __grid_constant__ mla::DecodeMaps maps, const int* __restrict__ starts, int H, int R,
                                                  int D, float scale_log2) {
    allow_successor();
    const int start = starts[blockIdx.y];
    MLA_DECODE_WGMMA(&maps.latent[blockIdx.y], start + 1, start);   // waits inside
}

// The absorbed decode of one token for the model's shape (N 128, V 128, R 512, P 64; H a multiple of 4) over a cache of
// at most 8·kFusedMaxRows rows, in one launch: grid (8, H / 4), launched as clusters of 8 blocks along x (the launch's cluster
// attribute), kFusedThreads threads, decode_fused_smem_bytes() of dynamic shared memory. o [1, H·V] fp32, q [1, H·(N + P)]
// fp32, the cache [≥ start + 1, R + P] bf16 with row start (this step's) appended by the predecessor, kv_b_proj's
// weight [H·(N + V), R] bf16, start on the device (a copy or fill queued before the step, as for the decode partial).
// A trap in the PTX images (the sm_90a cubin has it), which the wrapper never launches.
// Programmatic launch: the weights, q (the projections' output, complete before the predecessor lets this launch: the
// absorb_query precondition) and the cache rows before the start are read before the wait; the start's row after it.
extern "C" __global__ void __launch_bounds__(mla::kFusedThreads, 1)
kimi_mla_decode_fused_r512_d576(float* __restrict__ o, const float* __restrict__ q, const uint16_t* __restrict__ latent,
                                const uint16_t* __restrict__ kvb, const int* __restrict__ start_ptr, float scale_log2) {
    allow_successor();
#if defined(KDA_EMULATE) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
    mla::decode_fused(o, q, latent, kvb, start_ptr, scale_log2);
#else
    (void)o; (void)q; (void)latent; (void)kvb; (void)start_ptr; (void)scale_log2;
    __trap();
#endif
}
