// Hopper building blocks shared by the kernels that use warpgroup MMA or clusters (mla.cu, moe.cu): mbarriers, the
// copy engine (TMA) with its tensor maps, wgmma's fences, groups and shared-memory descriptors (and the m64n128 product
// with A in registers that mla.cu and kda.cu both issue), register reallocation
// (setmaxnreg), named barriers, and thread-block clusters (rank, barrier, distributed shared memory). Under KDA_EMULATE (the CPU emulator, kernels/kda/tests/cuda_emu.h, included before
// this) each has an emulated path. Named barriers are defined for every build (kda/kda.cu's intra uses one); mbarriers
// and the copy engine are sm_90 instructions, defined for every build from compute_90 on (kda/kda.cu's scan, compute_90
// PTX, uses them); the rest exists only in the sm_90a build, so it is
// defined only there (and in the emulator): the PTX images of compute_80/compute_90 hold trap stubs for the kernels
// that use it.
#pragma once
#include <stdint.h>

// A CUtensorMap (the copy engine's description of a 2-D global array: address, extents, row pitch, box, swizzle),
// opaque here; the host encodes it (cuTensorMapEncodeTiled) and passes it by value as a __grid_constant__ parameter.
struct alignas(64) TensorMap { uint64_t opaque[16]; };

// A shared-memory address as PTX takes it (under emulation: the offset into the dynamic shared memory).
__device__ __forceinline__ uint32_t shared_address(const void* p) {
#ifdef KDA_EMULATE
    return static_cast<uint32_t>(static_cast<const unsigned char*>(p) - emu_dynamic_smem);
#else
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// Matrix descriptor of a K-major 128-byte-swizzled operand starting at shared address `addr` (1,024-byte-aligned atoms;
// a k16 step inside the atom adds 32 bytes): 8-row groups 1,024 bytes apart (SBO), LBO unused for this layout.
__device__ __forceinline__ uint64_t wgmma_desc(uint32_t addr) {
    return static_cast<uint64_t>((addr >> 4) & 0x3FFF) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

// Matrix descriptor of an MN-major 128-byte-swizzled B operand (the instruction transposes it: imm-trans-b = 1), i.e.
// a K-major block read the other way round: 64 consecutive n in each 128-byte row, one row per k. 8-row groups along K
// 1,024 bytes apart (SBO), 64-column blocks along N `lbo` bytes apart (LBO); CUTLASS's canonical MN-major SW128 layout
// ((8, 8, n/64), (8, k/8)) : ((1, 8, LBO), (64, SBO)) in elements.
__device__ __forceinline__ uint64_t wgmma_desc_mn(uint32_t addr, uint32_t lbo) {
    return static_cast<uint64_t>((addr >> 4) & 0x3FFF) | (static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16) | (64ull << 32) | (1ull << 62);
}

// bar.sync on named barrier `id` (1–15; 0 is __syncthreads) for `threads` threads (a multiple of 32), e.g. one warpgroup.
__device__ __forceinline__ void named_barrier(int id, int threads) {
#ifdef KDA_EMULATE
    emu_named_barrier(id, threads);
#else
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
#endif
}

#if defined(KDA_EMULATE) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
// mbarrier: init (one thread), arrive (release), wait for the phase of a parity to complete (acquire).
__device__ __forceinline__ void mbar_init(uint64_t* bar, unsigned count) {
#ifdef KDA_EMULATE
    emu_mbarrier_init(bar, count);
#else
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(bar)), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
#ifdef KDA_EMULATE
    emu_mbarrier_arrive(bar);
#else
    asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0];\n" ::"r"(shared_address(bar)) : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, unsigned parity) {
#ifdef KDA_EMULATE
    while (!emu_mbarrier_test(bar, parity)) emu_spin();
#else
    uint32_t done;
    do {
        asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done) : "r"(shared_address(bar)), "r"(parity) : "memory");
    } while (!done);
#endif
}

// Ordinary (and cp.async) writes to shared memory made visible to the tensor cores' reads (the async proxy).
__device__ __forceinline__ void fence_proxy_async() {
#ifndef KDA_EMULATE
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Barrier initialisations (by this thread) made visible to the copy engine before it first counts bytes on them.
__device__ __forceinline__ void fence_mbarrier_init() {
#ifndef KDA_EMULATE
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// The copy engine (TMA): this thread's arrival on `bar`, which from now on also waits for `bytes` more bytes to land
// (the copies below count them down as they complete) ...
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
#ifdef KDA_EMULATE
    emu_mbarrier_expect_tx(bar, bytes);
    emu_mbarrier_arrive(bar);
#else
    asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;\n" ::"r"(shared_address(bar)), "r"(bytes) : "memory");
#endif
}
// ... and the box of `map` whose first element is (column, row), copied to `dst` (1,024-byte aligned for the 128-byte
// swizzle the map names), its bytes counted on `bar`. Elements past the map's extent land as zeros.
__device__ __forceinline__ void tma_load_2d(void* dst, const TensorMap* map, int column, int row, uint64_t* bar) {
#ifdef KDA_EMULATE
    emu_tma_load_2d(dst, map, column, row, bar);
#else
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
                 ::"r"(shared_address(dst)), "l"(reinterpret_cast<uint64_t>(map)), "r"(column), "r"(row), "r"(shared_address(bar))
                 : "memory");
#endif
}

// ... or `bytes` (a multiple of 16) contiguous bytes from global `src` to `dst` (both 16-byte aligned), counted on `bar`.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
#ifdef KDA_EMULATE
    std::memcpy(dst, src, bytes);
    emu_mbarrier_complete_tx(bar, bytes);
#else
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n"
                 ::"r"(shared_address(dst)), "l"(src), "r"(bytes), "r"(shared_address(bar)) : "memory");
#endif
}

// The other way: `bytes` (a multiple of 16) contiguous bytes of shared `src` to global `dst` (both 16-byte aligned),
// in this thread's bulk group. Whoever wrote src must first make those writes visible to the copy engine
// (fence_proxy_async, then a barrier); src may be written again once bulk_wait_read says the copy has read it.
__device__ __forceinline__ void bulk_store(void* dst, const void* src, uint32_t bytes) {
#ifdef KDA_EMULATE
    std::memcpy(dst, src, bytes);
#else
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(shared_address(src)), "r"(bytes)
                 : "memory");
#endif
}
__device__ __forceinline__ void bulk_commit() {   // this thread's bulk stores since the last commit, as one group
#ifndef KDA_EMULATE
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void bulk_wait_read() {   // until at most N groups still read their source
#ifndef KDA_EMULATE
    asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
#endif
}
#endif  // KDA_EMULATE || compute_90 and newer

#if defined(KDA_EMULATE) || defined(__CUDA_ARCH_FEAT_SM90_ALL)
// wgmma: fence before the first of a batch (orders earlier register writes of the operands), issue, commit the batch
// as a group, wait until at most N groups are pending. The accumulators belong to the tensor cores from issue to
// wait: `pin` ties them to the wait so the compiler moves no access across it.
__device__ __forceinline__ void wgmma_fence() {
#ifndef KDA_EMULATE
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef KDA_EMULATE
    emu_wgmma_commit();
#else
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
#ifdef KDA_EMULATE
    emu_wgmma_wait(N);
#else
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
template <int R> __device__ __forceinline__ void pin(float (&d)[R]) {
#ifndef KDA_EMULATE
#pragma unroll
    for (int i = 0; i < R; i++) asm volatile("" : "+f"(d[i])::"memory");
#endif
}
template <int R> __device__ __forceinline__ void pin(uint32_t (&a)[R][4]) {
#ifndef KDA_EMULATE
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int k = 0; k < 4; k++) asm volatile("" : "+r"(a[i][k])::"memory");
#endif
}

// Registers per thread of this warpgroup from here on (multiples of 8; the block's total must fit the register file).
template <int R> __device__ __forceinline__ void setmaxnreg_inc() {
#ifndef KDA_EMULATE
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
#endif
}
template <int R> __device__ __forceinline__ void setmaxnreg_dec() {
#ifndef KDA_EMULATE
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
#endif
}

// Thread-block clusters: the calling block's rank in its cluster; the cluster barrier in its two halves (arrive with
// release semantics: this thread's earlier shared-memory writes become visible to the cluster; wait with acquire
// semantics, until every thread of every block of the cluster has arrived; every thread takes part, warps converged);
// and another block's copy of a shared-memory address (distributed shared memory, read with ordinary loads).
// A block's shared memory must outlive the other blocks' reads of it: a block reads its peers' shared memory between a
// cluster_sync that follows the writes and a cluster_arrive, and waits (cluster_wait) before it exits.
__device__ __forceinline__ unsigned cluster_rank() {
#ifdef KDA_EMULATE
    return emu_cluster_rank();
#else
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
#endif
}
__device__ __forceinline__ void cluster_arrive() {
#ifndef KDA_EMULATE   // the emulator's barrier is the wait alone: every thread meets there
    asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_wait() {
#ifdef KDA_EMULATE
    emu_cluster_sync();
#else
    asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void cluster_sync() {
    cluster_arrive();
    cluster_wait();
}
template <typename T> __device__ __forceinline__ T* cluster_map(T* p, unsigned rank) {
#ifdef KDA_EMULATE
    return emu_cluster_map(p, rank);
#else
    uint64_t remote;
    asm volatile("mapa.u64 %0, %1, %2;\n" : "=l"(remote) : "l"(reinterpret_cast<uint64_t>(p)), "r"(rank));
    return reinterpret_cast<T*>(remote);
#endif
}

// d[64×128] += A[64×16]·B[16×128], bf16 operands: A in registers (this warp's 16 rows, the mma.sync A fragment), B
// from shared memory MN-major (wgmma_desc_mn: the instruction's imm-trans-b = 1).
__device__ __forceinline__ void wgmma_m64n128_bf16_rs_tb(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
#ifdef KDA_EMULATE
    emu_wgmma_rs(d, 128, false, true, a, desc_b, true);
#else
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1));
#endif
}

#endif  // KDA_EMULATE || __CUDA_ARCH_FEAT_SM90_ALL
