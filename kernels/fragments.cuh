// Warp-level tensor-core fragments shared by mla.cu and kda/kda.cu: ldmatrix (plain and transposed) from shared
// memory and mma.sync m16n8k16 (bf16 or fp16 in, fp32 accumulation), each with its CPU-emulator path
// (kda/tests/cuda_emu.h, included first under KDA_EMULATE).
#pragma once
#include <stdint.h>

// ldmatrix: lane i addresses row i % 8 of 8×8 matrix i / 8 (16-byte rows in shared memory).
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const uint16_t* p) {
#ifdef KDA_EMULATE
    emu_ldmatrix(r, 4, p, false);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(static_cast<unsigned>(__cvta_generic_to_shared(p))));
#endif
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const uint16_t* p) {
#ifdef KDA_EMULATE
    emu_ldmatrix(r, 4, p, true);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(static_cast<unsigned>(__cvta_generic_to_shared(p))));
#endif
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t (&r)[4], const uint16_t* p) {   // fills r[0], r[1]
#ifdef KDA_EMULATE
    emu_ldmatrix(r, 2, p, true);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(static_cast<unsigned>(__cvta_generic_to_shared(p))));
#endif
}
#if defined(KDA_EMULATE) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
// stmatrix .x4 .trans (the inverse of ldsm_x4_t; sm_90): lane i addresses stored row i % 8 of matrix i / 8, which receives
// the matrix's column i % 8; lane l holds row l / 4, columns 2(l % 4), +1 of matrix j in r[j] (an mma accumulator's
// layout, packed to bf16 pairs).
__device__ __forceinline__ void stsm_x4_t(const uint32_t (&r)[4], uint16_t* p) {
#ifdef KDA_EMULATE
    emu_stmatrix(r, 4, p, true);
#else
    asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};\n"
                 :: "r"(static_cast<unsigned>(__cvta_generic_to_shared(p))), "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3])
                 : "memory");
#endif
}
#endif

// d[16×8] += a[16×16]·b[16×8], bf16 (mma) or fp16 (mma_f16) in, fp32 accumulate. Fragments: lane l = 4g + c holds
// a (rows g, g+8; k pairs 2c and 2c+8), b (column g; k pairs 2c, 2c+8) and d (rows g, g+8; columns 2c, 2c+1).
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef KDA_EMULATE
    emu_mma_bf16_16816(d, a, b0, b1);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef KDA_EMULATE
    emu_mma_f16_16816(d, a, b0, b1);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}
