// cuda_emu.h — a tiny CPU emulator of the CUDA subset used by kernels/kda/kda.cu, for developing without a GPU.
//
// Why: nvcc exists only on the lent GPU machine, and device time is scarce. Compiling kda.cu and its harness with
// `g++ -DKDA_EMULATE -x c++` checks the C++ and runs every kernel on the CPU with real CUDA semantics for what the
// kernels use: each CUDA thread is a ucontext fiber; __syncthreads, named barriers and warp shuffles are rendezvous
// points (a fiber blocks until every thread of its block / warp has arrived, so a missing barrier or a divergent
// shuffle shows up as a deadlock report or a wrong result); blocks run one at a time, each with its own dynamic shared
// memory (garbage-filled), except a thread-block cluster's (emu_launch_cluster), whose blocks run together so that
// each can read the others' shared memory (emu_cluster_map) and meet them at the cluster barrier. The fibers of a
// block run first to last and last to first in turn, and an mbarrier touched before its initialisation aborts.
// Not emulated: timing, memory-model races between blocks, anything kda.cu does not use.
#pragma once
#ifdef KDA_EMULATE
#include <ucontext.h>
#include <math.h>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <set>
#include <vector>

using std::min;
using std::max;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __cluster_dims__(...)
#define __grid_constant__
// Static __shared__ arrays (common.cuh's block reductions): one copy, which is right since one block runs at a time
// (no cluster kernel uses them); dynamic shared memory is per block.
#define __shared__ static

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct float4 { float x, y, z, w; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) float2 { float x, y; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
struct alignas(2) __nv_bfloat16 { uint16_t bits; };
inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = uint32_t(h.bits) << 16; float f; std::memcpy(&f, &u, 4); return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u; std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40)};   // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                            // round to nearest even
    return {uint16_t(u >> 16)};
}
inline uint16_t __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// Used by kda.cu, kernels/common.cuh, moe.cu and mla.cu.
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
// Byte n of the result: byte (s >> 4n) & 7 of y:x (x the low four).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const uint64_t v = (uint64_t(y) << 32) | x;
    unsigned r = 0;
    for (int n = 0; n < 4; ++n) r |= unsigned((v >> (8 * ((s >> (4 * n)) & 7))) & 0xffu) << (8 * n);
    return r;
}
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
inline int atomicAdd(int* p, int v) { int old = *p; *p += v; return old; }   // fibers never run at the same time
inline unsigned atomicAdd(unsigned* p, unsigned v) { unsigned old = *p; *p += v; return old; }
inline void __threadfence() {}   // one fiber runs at a time: every write is visible at once
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline void __trap() { std::abort(); }

namespace emu {
enum Wait { None, Block, Warp, Done, Spin, Named, Cluster };   // Spin: polling (an mbarrier), runnable again after progress;
                                                                  // Named: at a named barrier (bar.sync id, count)
struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    dim3 tid, bid;
    int block = 0;        // index of its block inside the running cluster
    Wait wait = None;
    uint32_t shfl_val = 0, shfl_res = 0;
    int shfl_src = 0;
    uint32_t mma_in[2][12] = {};               // this lane's A (4) and B (2) fragments, big then small, per slot
    int mma_slot = 0;                          // the slot of its next mma
    int bar_id = 0, bar_count = 0;             // the named barrier it waits at (Named), and its thread count
    int sync_or_calls = 0;                     // __syncthreads_or calls so far (which of the block's three sums it uses)
    struct Copy { void* dst; const void* src; };
    std::vector<Copy> pending;                 // cp.async issued since the last commit
    std::vector<std::vector<Copy>> groups;     // committed, not yet waited for
    const void* xptr = nullptr;                // what a lane offers the warp in ldmatrix / mma (emu_warp_*)
    uint32_t xregs[8] = {};
    // wgmma (emu_wgmma_*): issued since the last commit, and committed groups not yet retired by a wait.
    struct Wgmma { float* d; int n; bool f16, a_in_regs, accumulate, b_mn_major, a_mn_major; uint32_t a[4]; uint64_t da, db; };
    std::vector<Wgmma> wg_pending;
    std::vector<std::vector<Wgmma>> wg_groups;
};
struct State {
    ucontext_t sched;
    std::vector<Fiber> fibers;
    std::vector<std::vector<unsigned char>> smem;   // the running blocks' dynamic shared memory, one per block of the cluster
    int cur = -1;
    dim3 grid, block;
    std::function<void()> body;
    unsigned long long progress = 0;   // mbarrier arrivals so far: polling fibers may go on only after one
    std::set<const void*> mbarriers;   // the running cluster's initialised mbarriers
    unsigned long long rounds = 0;     // scheduling rounds: odd ones run the fibers in reverse order
    std::vector<std::array<int, 3>> sync_or;   // the running blocks' __syncthreads_or sums, three in turn (below)
};
inline State& st() { static State s; return s; }
inline void yield(Wait w) {
    State& s = st();
    Fiber& f = s.fibers[s.cur];
    f.wait = w;
    swapcontext(&f.ctx, &s.sched);
}
inline void trampoline() {
    st().body();
    yield(Done);
}
}  // namespace emu

// Per-fiber built-in variables (the scheduler points these at the running fiber's values).
inline dim3 threadIdx, blockIdx, blockDim, gridDim;
inline unsigned char* emu_dynamic_smem = nullptr;

inline void __syncthreads() { emu::yield(emu::Block); }
// The barrier with every thread's predicate ORed and returned to all. Call c of a block ORs into sum c mod 3 and reads
// it after the barrier; it clears sum c + 1 mod 3 before the barrier, which every thread read at call c − 2 (before
// barrier c − 1) and none adds to before call c + 1 (after barrier c).
inline int __syncthreads_or(int p) {
    emu::State& s = emu::st();
    emu::Fiber& f = s.fibers[s.cur];
    const int block = f.block, c = f.sync_or_calls++ % 3;
    s.sync_or[block][(c + 1) % 3] = 0;
    s.sync_or[block][c] |= p != 0;
    __syncthreads();
    return s.sync_or[block][c];
}
// bar.sync id, count: the calling threads of the block meet in groups of `count` (a multiple of 32) at barrier `id`.
inline void emu_named_barrier(int id, int count) {
    emu::Fiber& f = emu::st().fibers[emu::st().cur];
    f.bar_id = id;
    f.bar_count = count;
    emu::yield(emu::Named);
}
template <typename T> inline T emu_shfl(T v, int src) {
    static_assert(sizeof(T) == 4, "4-byte shuffles only");
    emu::Fiber& f = emu::st().fibers[emu::st().cur];
    std::memcpy(&f.shfl_val, &v, 4);
    f.shfl_src = src;
    emu::yield(emu::Warp);
    emu::Fiber& g = emu::st().fibers[emu::st().cur];
    T r; std::memcpy(&r, &g.shfl_res, 4); return r;
}
template <typename T> inline T __shfl_xor_sync(unsigned, T v, int m) { return emu_shfl(v, int(threadIdx.x % 32) ^ m); }
// bar.warp.sync: every lane of the warp reaches it before any goes on (a shuffle meets the warp the same way).
inline void __syncwarp(unsigned = 0xFFFFFFFFu) { (void)emu_shfl(0, int(threadIdx.x % 32)); }
template <typename T> inline T __shfl_sync(unsigned, T v, int l) { return emu_shfl(v, l & 31); }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
// redux.sync (sm_80+): the warp's max / min, as a butterfly of shuffles (every lane takes part, as on the hardware).
inline unsigned __reduce_max_sync(unsigned, unsigned v) { for (int o = 16; o > 0; o >>= 1) v = std::max(v, __shfl_xor_sync(0u, v, o)); return v; }
inline int __reduce_min_sync(unsigned, int v) { for (int o = 16; o > 0; o >>= 1) v = std::min(v, __shfl_xor_sync(0u, v, o)); return v; }

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, d += a·b over the 32 lanes of a warp, with PTX's fragment
// layouts (g = lane / 4, t = lane % 4): a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4) of the 16×8 A;
// b0 (k = t, n = g), b1 (k = t + 4, n = g) of the 8×8 B; d0, d1 (g, 2t + 0/1), d2, d3 (g + 8, 2t + 0/1). Operands are
// tf32 bit patterns (the caller rounds them); products are summed in fp32. With a_small and b_small it is the three
// mma of a 3xTF32 product in their order (small·big, big·small, big·big), at the emulation cost of one; with c as
// well, the two correction products go into c and only big·big into d.
// One warp rendezvous per call: every lane has posted its fragments before any lane reads them. Posts alternate
// between two slots, so a lane that runs ahead into its next mma cannot overwrite what a slower lane is still reading
// (it cannot get two ahead: the next rendezvous waits for the slow lane).
inline void emu_mma_m16n8k8_tf32(float* d, const uint32_t* a, const uint32_t* b, const uint32_t* a_small = nullptr,
    const uint32_t* b_small = nullptr, float* c = nullptr) {
    emu::Fiber& self = emu::st().fibers[emu::st().cur];
    const int slot = self.mma_slot;
    self.mma_slot ^= 1;
    uint32_t* in = self.mma_in[slot];
    std::memcpy(in, a, 16);
    std::memcpy(in + 4, b, 8);
    if (a_small) { std::memcpy(in + 6, a_small, 16); std::memcpy(in + 10, b_small, 8); }
    emu::yield(emu::Warp);
    const int lane = int(threadIdx.x % 32), base = emu::st().cur - lane, g = lane / 4, t = lane % 4;
    auto at = [&](int l, int i) { return __uint_as_float(emu::st().fibers[base + l].mma_in[slot][i]); };
    // A(r, k) of fragment set f (0 big, 1 small) and B(k, c).
    auto A = [&](int f, int r, int k) { return at((r % 8) * 4 + k % 4, 6 * f + (r >= 8) + 2 * (k >= 4)); };
    auto B = [&](int f, int k, int c) { return at(c * 4 + k % 4, 6 * f + 4 + (k >= 4)); };
    for (int i = 0; i < 4; ++i) {
        const int r = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float acc = c ? c[i] : d[i];
        if (a_small) {
            for (int k = 0; k < 8; ++k) acc += A(1, r, k) * B(0, k, col);
            for (int k = 0; k < 8; ++k) acc += A(0, r, k) * B(1, k, col);
        }
        if (c) { c[i] = acc; acc = d[i]; }
        for (int k = 0; k < 8; ++k) acc += A(0, r, k) * B(0, k, col);
        d[i] = acc;
    }
}

namespace emu {
// Runs the fibers of one cluster of `nblocks` blocks (1 outside cluster launches) until all are done: run every
// runnable fiber until it blocks, then release each barrier whose participants all wait at it (a warp for shuffles, a
// block for __syncthreads, a named barrier's count, the whole cluster for the cluster barrier); if nothing can be
// released, the kernel would hang on a GPU too.
inline void run_cluster(int nblocks, int threads) {
    State& s = st();
    const int n = nblocks * threads;
    for (;;) {
        // Every other round runs the fibers last to first, so that no kernel passes only because its thread 0 ran
        // first (e.g. an mbarrier initialised by thread 0 that other threads poll before any barrier).
        const bool reverse = s.rounds++ & 1;
        for (int k = 0; k < n; ++k) {
            const int i = reverse ? n - 1 - k : k;
            Fiber& f = s.fibers[i];
            if (f.wait != None) continue;
            s.cur = i;
            threadIdx = f.tid; blockIdx = f.bid; blockDim = s.block; gridDim = s.grid;
            emu_dynamic_smem = s.smem[f.block].data();
            swapcontext(&s.sched, &f.ctx);
        }
        int done = 0;
        for (int i = 0; i < n; ++i) done += s.fibers[i].wait == Done;
        if (done == n) return;
        bool released = false;
        for (int w0 = 0; w0 < n; w0 += 32) {
            int waiting = 0;
            for (int i = w0; i < w0 + 32; ++i) waiting += s.fibers[i].wait == Warp;
            if (waiting == 32) {
                for (int i = w0; i < w0 + 32; ++i) s.fibers[i].shfl_res = s.fibers[w0 + s.fibers[i].shfl_src].shfl_val;
                for (int i = w0; i < w0 + 32; ++i) s.fibers[i].wait = None;
                released = true;
            }
        }
        for (int b = 0; b < nblocks; ++b) {
            const int first = b * threads, last = first + threads;
            int at_block_barrier = 0;
            for (int i = first; i < last; ++i) at_block_barrier += s.fibers[i].wait == Block;
            if (at_block_barrier == threads) {
                for (int i = first; i < last; ++i) s.fibers[i].wait = None;
                released = true;
            }
            // A named barrier (bar.sync id, count) releases once `count` threads of the block wait at that id.
            for (int id = 0; id < 16; ++id) {
                int waiting = 0, count = 0;
                for (int i = first; i < last; ++i)
                    if (s.fibers[i].wait == Named && s.fibers[i].bar_id == id) { waiting++; count = s.fibers[i].bar_count; }
                if (waiting == 0 || waiting != count) continue;
                for (int i = first; i < last; ++i)
                    if (s.fibers[i].wait == Named && s.fibers[i].bar_id == id) s.fibers[i].wait = None;
                released = true;
            }
        }
        int at_cluster_barrier = 0;
        for (int i = 0; i < n; ++i) at_cluster_barrier += s.fibers[i].wait == Cluster;
        if (at_cluster_barrier == n) {
            for (int i = 0; i < n; ++i) s.fibers[i].wait = None;
            released = true;
        }
        // Fibers polling an mbarrier run again if anything arrived since they last looked; if nothing did and nothing
        // else can move, they would poll forever on a GPU.
        static unsigned long long seen = ~0ull;
        if (!released && s.progress != seen) {
            seen = s.progress;
            for (int i = 0; i < n; ++i)
                if (s.fibers[i].wait == Spin) { s.fibers[i].wait = None; released = true; }
        }
        if (!released) {
            std::fprintf(stderr, "emu: deadlock (block %u,%u,%u): waits", s.fibers[0].bid.x, s.fibers[0].bid.y, s.fibers[0].bid.z);
            for (int i = 0; i < n; i += 32) std::fprintf(stderr, " %d", int(s.fibers[i].wait));
            std::fprintf(stderr, "\n");
            std::abort();
        }
    }
}
}  // namespace emu

// Launch: the blocks run one cluster of `cluster_x` consecutive blocks along x (grid.x a multiple of it) after another,
// each cluster as one group of fibers.
template <typename... P, typename... A>
inline void emu_launch_cluster(void (*k)(P...), int cluster_x, dim3 grid, dim3 block, size_t smem, A... args) {
    emu::State& s = emu::st();
    const int threads = int(block.x * block.y * block.z);
    s.grid = grid; s.block = block;
    s.body = [&]() { k(P(args)...); };
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx0 = 0; bx0 < grid.x; bx0 += cluster_x) {
                s.fibers.resize(size_t(cluster_x) * threads);
                s.smem.assign(cluster_x, std::vector<unsigned char>(smem + 16, 0xA5));   // garbage, not zeros
                s.mbarriers.clear();
                s.sync_or.assign(cluster_x, {0, 0, 0});
                for (int b = 0; b < cluster_x; ++b)
                    for (int t = 0; t < threads; ++t) {
                        emu::Fiber& f = s.fibers[size_t(b) * threads + t];
                        f.stack.resize(64 * 1024);
                        f.wait = emu::None;
                        f.mma_slot = 0;
                        f.sync_or_calls = 0;
                        f.pending.clear();
                        f.groups.clear();
                        f.wg_pending.clear();
                        f.wg_groups.clear();
                        f.tid = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                        f.bid = dim3(bx0 + b, by, bz);
                        f.block = b;
                        getcontext(&f.ctx);
                        f.ctx.uc_stack.ss_sp = f.stack.data();
                        f.ctx.uc_stack.ss_size = f.stack.size();
                        f.ctx.uc_link = nullptr;
                        makecontext(&f.ctx, emu::trampoline, 0);
                    }
                emu::run_cluster(cluster_x, threads);
            }
}
// Launch: the blocks run one after another, each as a group of fibers.
template <typename... P, typename... A>
inline void emu_launch(void (*k)(P...), dim3 grid, dim3 block, size_t smem, A... args) {
    emu_launch_cluster(k, 1, grid, block, smem, args...);
}

// The cluster API subset: the calling block's rank, the cluster barrier (every thread of every block of the cluster
// arrives and waits: barrier.cluster.arrive + wait), and another block's copy of a shared-memory address (mapa).
inline unsigned emu_cluster_rank() { return unsigned(emu::st().fibers[emu::st().cur].block); }
inline void emu_cluster_sync() { emu::yield(emu::Cluster); }
template <typename T> inline T* emu_cluster_map(T* p, unsigned rank) {
    emu::State& s = emu::st();
    unsigned char* mine = s.smem[s.fibers[s.cur].block].data();
    return reinterpret_cast<T*>(s.smem[rank].data() + (reinterpret_cast<unsigned char*>(p) - mine));
}

// cp.async: copies are deferred until a cp.async.wait_group retires their group, so a kernel that reads shared memory
// before waiting sees stale bytes here too.
inline void emu_cp_async16(void* dst, const void* src) { emu::st().fibers[emu::st().cur].pending.push_back({dst, src}); }
inline void emu_cp_async_commit() {
    emu::Fiber& f = emu::st().fibers[emu::st().cur];
    f.groups.push_back(f.pending);
    f.pending.clear();
}
inline void emu_cp_async_wait(int n) {
    emu::Fiber& f = emu::st().fibers[emu::st().cur];
    while (int(f.groups.size()) > n) {
        for (auto& c : f.groups.front()) std::memcpy(c.dst, c.src, 16);
        f.groups.erase(f.groups.begin());
    }
}

// Warp-collective tensor-core instructions (mma.sync m16n8k16 bf16 and ldmatrix), for kernels that wrap them in a
// device function with an emulated path (kernels/mla.cu). Each lane publishes its operand, the warp meets, each lane
// reads what the hardware would hand it, and the warp meets again before anyone publishes the next operand.
inline void emu_warp_meet() {
    emu::Fiber& f = emu::st().fibers[emu::st().cur];
    f.shfl_src = int(threadIdx.x % 32);
    emu::yield(emu::Warp);
}
inline emu::Fiber& emu_lane(int lane) { return emu::st().fibers[(emu::st().cur & ~31) + lane]; }
// ldmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16: lane i supplies the address of row i % 8 of matrix i / 8;
// lane l receives, from each matrix, row l / 4 columns 2(l % 4), +1 (transposed: column l / 4 of rows 2(l % 4), +1).
inline void emu_ldmatrix(uint32_t* r, int count, const void* p, bool trans) {
    emu::st().fibers[emu::st().cur].xptr = p;
    emu_warp_meet();
    const int l = int(threadIdx.x % 32);
    for (int m = 0; m < count; ++m) {
        uint16_t lo, hi;
        if (!trans) {
            const uint16_t* row = static_cast<const uint16_t*>(emu_lane(m * 8 + l / 4).xptr);
            lo = row[2 * (l % 4)]; hi = row[2 * (l % 4) + 1];
        } else {
            lo = static_cast<const uint16_t*>(emu_lane(m * 8 + 2 * (l % 4)).xptr)[l / 4];
            hi = static_cast<const uint16_t*>(emu_lane(m * 8 + 2 * (l % 4) + 1).xptr)[l / 4];
        }
        r[m] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
    emu_warp_meet();
}
// stmatrix.sync.aligned.m8n8.x{count}[.trans].shared.b16 (the inverse of ldmatrix): lane i supplies the address of
// row i % 8 of matrix i / 8; lane l holds, of each matrix, row l / 4 columns 2(l % 4), +1. With trans, stored row i is
// the matrix's column i.
inline void emu_stmatrix(const uint32_t* r, int count, void* p, bool trans = false) {
    emu::Fiber& me = emu::st().fibers[emu::st().cur];
    me.xptr = p;
    for (int m = 0; m < count; ++m) me.xregs[m] = r[m];
    emu_warp_meet();
    const int l = int(threadIdx.x % 32);
    if (l < 8 * count) {
        uint16_t row[8];
        for (int col = 0; col < 8; ++col) {
            const int i = l % 8;   // the stored row: matrix row i, or with trans matrix column i
            const uint32_t v = trans ? emu_lane(col * 4 + i / 2).xregs[l / 8] : emu_lane(i * 4 + col / 2).xregs[l / 8];
            const bool upper = trans ? (i & 1) : (col & 1);
            row[col] = uint16_t(upper ? v >> 16 : v & 0xFFFFu);
        }
        std::memcpy(p, row, 16);
    }
    emu_warp_meet();
}
// fp16 as raw bits (cvt.rn.f16x2.f32 rounds to nearest even, as the compiler's _Float16 does).
inline uint16_t emu_f32_to_f16(float f) { _Float16 h = static_cast<_Float16>(f); uint16_t b; std::memcpy(&b, &h, 2); return b; }
inline float emu_f16_to_f32(uint16_t b) { _Float16 h; std::memcpy(&h, &b, 2); return static_cast<float>(h); }
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32, d += a·b: A row g = l / 4 sits in a0 (k < 8) / a2
// (k ≥ 8) and row g + 8 in a1 / a3 of lanes 4g .. 4g + 3 (k pair 2(l % 4)); B column n in b0 (k < 8) / b1 of lanes
// 4n .. 4n + 3; lane l accumulates rows g, g + 8 at columns 2(l % 4), +1.
template <bool F16> inline void emu_mma_16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
    emu::Fiber& me = emu::st().fibers[emu::st().cur];
    for (int i = 0; i < 4; ++i) me.xregs[i] = a[i];
    me.xregs[4] = b0; me.xregs[5] = b1;
    emu_warp_meet();
    const int l = int(threadIdx.x % 32), g = l / 4, c = 2 * (l % 4);
    auto half = [](uint32_t v, int k) {
        const uint16_t bits = uint16_t(k & 1 ? v >> 16 : v & 0xffffu);
        if (F16) return emu_f16_to_f32(bits);
        uint32_t u = uint32_t(bits) << 16; float f; std::memcpy(&f, &u, 4); return f;
    };
    auto A = [&](int row, int k) { return half(emu_lane((row % 8) * 4 + (k % 8) / 2).xregs[(row >= 8) + 2 * (k >= 8)], k); };
    auto B = [&](int k, int n) { return half(emu_lane(n * 4 + (k % 8) / 2).xregs[4 + (k >= 8)], k); };
    float out[4];
    for (int e = 0; e < 4; ++e) {
        const int row = g + 8 * (e / 2), col = c + e % 2;
        float acc = d[e];
        for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
        out[e] = acc;
    }
    emu_warp_meet();
    for (int e = 0; e < 4; ++e) d[e] = out[e];
}
inline void emu_mma_bf16_16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) { emu_mma_16816<false>(d, a, b0, b1); }
inline void emu_mma_f16_16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) { emu_mma_16816<true>(d, a, b0, b1); }

// mbarrier (the subset of kernels/mla.cu and kernels/kda/kda.cu): the 8-byte object in shared memory holds the
// pending arrival count, the count a phase expects, the number of completed phases and the transaction count (bytes
// expected but not yet landed, in 16-byte units; it may go below zero when a copy lands before its expect_tx, as on
// the GPU). A phase completes once it has no pending arrivals and no pending bytes. A thread that finds the phase it
// waits for incomplete polls (emu_spin) until another fiber arrives or a copy lands.
struct EmuMbarrier { uint16_t pending, expected, phases; int16_t tx; };
static_assert(sizeof(EmuMbarrier) == 8, "an mbarrier is 8 bytes");
inline void emu_mbarrier_init(void* bar, unsigned count) {
    *static_cast<EmuMbarrier*>(bar) = {uint16_t(count), uint16_t(count), 0, 0};
    emu::st().mbarriers.insert(bar);
}
// The mbarrier at `bar`, which must have been initialised: on the GPU, polling or arriving on the bytes before
// mbarrier.init may fault ("unspecified launch failure"), and here they are garbage.
inline EmuMbarrier& emu_mbarrier(const void* bar) {
    if (!emu::st().mbarriers.count(bar)) {
        std::fprintf(stderr, "emu: an mbarrier used before its initialisation (thread %u of block %u,%u,%u)\n", threadIdx.x,
                     blockIdx.x, blockIdx.y, blockIdx.z);
        std::abort();
    }
    return *static_cast<EmuMbarrier*>(const_cast<void*>(bar));
}
inline void emu_mbarrier_try_complete(EmuMbarrier& b) {
    if (b.pending == 0 && b.tx == 0) { b.phases++; b.pending = b.expected; }
    emu::st().progress++;
}
inline void emu_mbarrier_arrive(void* bar) {
    EmuMbarrier& b = emu_mbarrier(bar);
    if (b.pending == 0) { std::fprintf(stderr, "emu: arrival on an mbarrier whose phase is complete\n"); std::abort(); }
    --b.pending;
    emu_mbarrier_try_complete(b);
}
inline void emu_mbarrier_expect_tx(void* bar, uint32_t bytes) {   // before the arrival it goes with
    if (bytes % 16 != 0 || bytes / 16 > 0x7FFF) { std::fprintf(stderr, "emu: expect_tx of %u bytes\n", bytes); std::abort(); }
    EmuMbarrier& b = emu_mbarrier(bar);
    b.tx = int16_t(b.tx + int(bytes / 16));
}
inline void emu_mbarrier_complete_tx(void* bar, uint32_t bytes) {
    EmuMbarrier& b = emu_mbarrier(bar);
    b.tx = int16_t(b.tx - int((bytes + 15) / 16));
    emu_mbarrier_try_complete(b);
}
// try_wait.parity: true once the phase of that parity has completed (the current phase has the other parity).
inline bool emu_mbarrier_test(const void* bar, unsigned parity) { return (emu_mbarrier(bar).phases & 1u) != (parity & 1u); }
inline void emu_spin() { emu::yield(emu::Spin); }
// cp.async.mbarrier.arrive.noinc: an arrival on `bar` once every cp.async this thread issued before it has landed. Here
// they land at once (committed or not), then the thread arrives; the count the barrier expects includes this arrival.
inline void emu_cp_async_mbarrier_arrive(void* bar) {
    emu::Fiber& f = emu::st().fibers[emu::st().cur];
    for (auto& group : f.groups)
        for (auto& c : group) std::memcpy(c.dst, c.src, 16);
    for (auto& c : f.pending) std::memcpy(c.dst, c.src, 16);
    f.groups.clear();
    f.pending.clear();
    emu_mbarrier_arrive(bar);
}

// cp.async.bulk.tensor.2d (TMA) with a 128-byte swizzle, from a tensor map that emu_encode_tensor_map_2d wrote into the
// 128 bytes a CUtensorMap takes: the box lands at once (an arrive.expect_tx is then a plain arrival), row r of it at
// dst + 128 r with its 16-byte chunks XOR-ed by the shared-memory address's bits 7..9 as the hardware does;
// elements past the map's extent land as zeros.
struct EmuTensorMap { const unsigned char* base; uint64_t columns, rows, row_bytes; uint32_t box_columns, box_rows, element_bytes; };
static_assert(sizeof(EmuTensorMap) <= 128, "a tensor map is 128 bytes");
inline void emu_encode_tensor_map_2d(void* map, const void* base, uint32_t element_bytes, uint64_t columns, uint64_t rows,
                                     uint64_t row_bytes, uint32_t box_columns, uint32_t box_rows) {
    if (box_columns * element_bytes != 128) { std::fprintf(stderr, "emu: only 128-byte box rows (the 128-byte swizzle) are emulated\n"); std::abort(); }
    EmuTensorMap m = {static_cast<const unsigned char*>(base), columns, rows, row_bytes, box_columns, box_rows, element_bytes};
    std::memset(map, 0, 128);
    std::memcpy(map, &m, sizeof m);
}
inline void emu_tma_load_2d(void* dst, const void* map, int column, int row, void* bar) {
    EmuTensorMap m; std::memcpy(&m, map, sizeof m);
    const uint32_t offset = uint32_t(static_cast<unsigned char*>(dst) - emu_dynamic_smem);
    // The hardware's 128-byte swizzle repeats every 1,024 bytes of shared-memory address: a box landing elsewhere would
    // be swizzled differently from what the wgmma descriptors assume.
    if (offset % 1024 != 0) { std::fprintf(stderr, "emu: a 128-byte-swizzled TMA box must land 1,024-byte aligned (offset %u)\n", offset); std::abort(); }
    for (uint32_t r = 0; r < m.box_rows; r++)
        for (uint32_t e = 0; e < m.box_columns; e++) {
            uint32_t addr = offset + r * 128 + e * m.element_bytes;
            addr ^= ((addr >> 7) & 7) << 4;
            const uint64_t gr = uint64_t(row) + r, gc = uint64_t(column) + e;
            if (gr < m.rows && gc < m.columns) std::memcpy(emu_dynamic_smem + addr, m.base + gr * m.row_bytes + gc * m.element_bytes, m.element_bytes);
            else std::memset(emu_dynamic_smem + addr, 0, m.element_bytes);
        }
    emu_mbarrier_complete_tx(bar, m.box_rows * m.box_columns * m.element_bytes);
}

// wgmma.mma_async (warpgroup MMA, m64nNk16, fp32 accumulators) with K-major operands in shared memory described by
// 128-byte-swizzle matrix descriptors, the A operand optionally in registers (the mma.sync m16n8k16 A layout, warp w
// of the warpgroup holding rows 16w .. 16w + 15). As on the GPU, nothing happens at issue: a commit closes a group and
// a wait retires groups, reading shared memory and the lanes' A registers (snapshotted at issue) then, so a kernel
// that reads its accumulators or overwrites an operand's shared memory before waiting gets wrong results here too.
// The accumulator layout: lane l = 4g + c of warp w holds d[4i + e] = D(16w + g + 8(e / 2), 8i + 2c + e % 2).
namespace emu {
// Element (row, k) of a K-major operand: 8-row groups SBO bytes apart, rows 128 bytes apart, the 16-byte chunks of
// each 128-byte row XOR-ed with the row's index inside its 1024-byte atom (address bits 7..9 into bits 4..6).
inline uint16_t wgmma_element(uint64_t desc, int row, int k) {
    if ((desc >> 62) != 1) { std::fprintf(stderr, "emu: only 128-byte-swizzle wgmma descriptors are emulated\n"); std::abort(); }
    const uint32_t start = uint32_t(desc & 0x3FFF) << 4, sbo = uint32_t((desc >> 32) & 0x3FFF) << 4;
    uint32_t addr = start + uint32_t(row / 8) * sbo + uint32_t(row % 8) * 128 + uint32_t(k) * 2;
    addr ^= ((addr >> 7) & 7) << 4;
    uint16_t v; std::memcpy(&v, emu_dynamic_smem + addr, 2); return v;
}
// Element (n, k) of an MN-major operand (wgmma's transposed B): 64 consecutive n in one 128-byte row, rows k 128 bytes
// apart, 8-row groups SBO bytes apart along K, 64-column blocks LBO bytes apart along N; swizzled as above.
inline uint16_t wgmma_element_mn(uint64_t desc, int n, int k) {
    if ((desc >> 62) != 1) { std::fprintf(stderr, "emu: only 128-byte-swizzle wgmma descriptors are emulated\n"); std::abort(); }
    const uint32_t start = uint32_t(desc & 0x3FFF) << 4, lbo = uint32_t((desc >> 16) & 0x3FFF) << 4, sbo = uint32_t((desc >> 32) & 0x3FFF) << 4;
    uint32_t addr = start + uint32_t(n / 64) * lbo + uint32_t(k / 8) * sbo + uint32_t(k % 8) * 128 + uint32_t(n % 64) * 2;
    addr ^= ((addr >> 7) & 7) << 4;
    uint16_t v; std::memcpy(&v, emu_dynamic_smem + addr, 2); return v;
}
inline float wgmma_value(uint16_t bits, bool f16) {
    if (f16) return emu_f16_to_f32(bits);
    uint32_t u = uint32_t(bits) << 16; float f; std::memcpy(&f, &u, 4); return f;
}
}  // namespace emu
// b_mn_major, a_mn_major: B, A are MN-major (the instruction's imm-trans-b, imm-trans-a = 1), their descriptors read by
// wgmma_element_mn (for A, m in place of n).
inline void emu_wgmma_ss(float* d, int n, bool f16, bool accumulate, uint64_t da, uint64_t db, bool b_mn_major = false,
                         bool a_mn_major = false) {
    emu::st().fibers[emu::st().cur].wg_pending.push_back({d, n, f16, false, accumulate, b_mn_major, a_mn_major, {}, da, db});
}
inline void emu_wgmma_rs(float* d, int n, bool f16, bool accumulate, const uint32_t* a, uint64_t db, bool b_mn_major = false) {
    emu::st().fibers[emu::st().cur].wg_pending.push_back({d, n, f16, true, accumulate, b_mn_major, false, {a[0], a[1], a[2], a[3]}, 0, db});
}
inline void emu_wgmma_commit() {
    emu::Fiber& f = emu::st().fibers[emu::st().cur];
    f.wg_groups.push_back(f.wg_pending);
    f.wg_pending.clear();
}
inline void emu_wgmma_wait(int keep) {
    emu::Fiber& me = emu::st().fibers[emu::st().cur];
    emu_warp_meet();   // every lane has issued what it retires
    const int l = int(threadIdx.x % 32), g = l / 4, c = l % 4, w = int(threadIdx.x / 32) % 4;
    const size_t retire = me.wg_groups.size() > size_t(keep) ? me.wg_groups.size() - size_t(keep) : 0;
    for (size_t grp = 0; grp < retire; ++grp)
        for (size_t i = 0; i < me.wg_groups[grp].size(); ++i) {
            const emu::Fiber::Wgmma& op = me.wg_groups[grp][i];
            for (int j = 0; j < op.n / 8; ++j)
                for (int e = 0; e < 4; ++e) {
                    const int row = g + 8 * (e / 2), col = 8 * j + 2 * c + e % 2;
                    float acc = op.accumulate ? op.d[4 * j + e] : 0.0f;
                    for (int k = 0; k < 16; ++k) {
                        float a;
                        if (op.a_in_regs) {
                            const uint32_t r = emu_lane(row % 8 * 4 + k % 8 / 2).wg_groups[grp][i].a[(row >= 8) + 2 * (k >= 8)];
                            a = emu::wgmma_value(uint16_t(k & 1 ? r >> 16 : r & 0xFFFFu), op.f16);
                        } else {
                            const int m = 16 * w + row;
                            a = emu::wgmma_value(op.a_mn_major ? emu::wgmma_element_mn(op.da, m, k) : emu::wgmma_element(op.da, m, k), op.f16);
                        }
                        const uint16_t b = op.b_mn_major ? emu::wgmma_element_mn(op.db, col, k) : emu::wgmma_element(op.db, col, k);
                        acc += a * emu::wgmma_value(b, op.f16);
                    }
                    op.d[4 * j + e] = acc;
                }
        }
    emu_warp_meet();   // every lane has read the others' A registers
    me.wg_groups.erase(me.wg_groups.begin(), me.wg_groups.begin() + long(retire));
}

// Runtime API subset: device memory is host memory; streams, events and graphs are absent (no timing here).
typedef int cudaError_t;
typedef void* cudaStream_t;
enum { cudaSuccess = 0 };
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
inline cudaError_t cudaMalloc(void** p, size_t n) { *p = std::malloc(n ? n : 1); return 0; }
template <typename T> inline cudaError_t cudaMalloc(T** p, size_t n) { return cudaMalloc(reinterpret_cast<void**>(p), n); }
inline cudaError_t cudaFree(void* p) { std::free(p); return 0; }
inline cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { std::memcpy(d, s, n); return 0; }
inline cudaError_t cudaMemset(void* d, int v, size_t n) { std::memset(d, v, n); return 0; }
inline cudaError_t cudaDeviceSynchronize() { return 0; }
inline cudaError_t cudaGetLastError() { return 0; }
inline const char* cudaGetErrorString(cudaError_t) { return "emu"; }
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
template <typename F> inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return 0; }
// Streams, events and graphs exist only so that the benchmark code compiles here; it runs on the GPU alone.
typedef void* cudaEvent_t;
typedef void* cudaGraph_t;
typedef void* cudaGraphExec_t;
enum cudaStreamCaptureMode { cudaStreamCaptureModeGlobal };
inline cudaError_t cudaStreamCreate(cudaStream_t* s) { *s = nullptr; return 0; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return 0; }
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return 0; }
inline cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = nullptr; return 0; }
inline cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t = nullptr) { return 0; }
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return 0; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) { *ms = 0; return 0; }
inline cudaError_t cudaEventDestroy(cudaEvent_t) { return 0; }
inline cudaError_t cudaStreamBeginCapture(cudaStream_t, cudaStreamCaptureMode) { return 0; }
inline cudaError_t cudaStreamEndCapture(cudaStream_t, cudaGraph_t* g) { *g = nullptr; return 0; }
inline cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t, unsigned long long) { *e = nullptr; return 0; }
inline cudaError_t cudaGraphLaunch(cudaGraphExec_t, cudaStream_t) { return 0; }
inline cudaError_t cudaGraphExecDestroy(cudaGraphExec_t) { return 0; }
inline cudaError_t cudaGraphDestroy(cudaGraph_t) { return 0; }
struct cudaDeviceProp { char name[256]; int multiProcessorCount; int l2CacheSize; };
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) { std::strcpy(p->name, "CPU emulator"); p->multiProcessorCount = 1; p->l2CacheSize = 0; return 0; }
#endif
