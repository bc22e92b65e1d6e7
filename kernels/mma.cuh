// Tensor-core building blocks shared by gemm.cu and moe.cu: cp.async into shared memory, ldmatrix, mma.sync
// m16n8k16 (bf16 in, fp32 accumulation), and the swizzled layout of a [rows][TILE_K] bf16 shared-memory tile.
// Under KDA_EMULATE (the CPU emulator, kernels/kda/tests/cuda_emu.h) each has an emulated path with the same
// per-lane register layout, so a kernel built on them can be checked on the CPU (kernels/tests/moe_emu_check.sh).
#pragma once
#include "common.cuh"

constexpr int TILE_K = 64; // k extent of a shared-memory tile: 8 chunks of 16 bytes a row

// A shared-memory address as the PTX instructions take it (under emulation: the offset into the dynamic shared memory).
__device__ __forceinline__ uint32_t smem_u32(const void* p)
{
#ifdef KDA_EMULATE
    return static_cast<uint32_t>(reinterpret_cast<const unsigned char*>(p) - emu_dynamic_smem);
#else
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred)
{
#ifdef KDA_EMULATE
    static const unsigned char zeros[16] = {};
    emu_cp_async16(emu_dynamic_smem + dst, pred ? src : zeros);
#else
    // src-size 0 zero-fills the 16 bytes without reading global memory.
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 16 : 0));
#endif
}

__device__ __forceinline__ void cp_async_commit()
{
#ifdef KDA_EMULATE
    emu_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait()
{
#ifdef KDA_EMULATE
    emu_cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 address the rows of matrix i, and lane l receives row l / 4, columns
// 2 (l % 4) and 2 (l % 4) + 1 of each matrix in r[i].
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr)
{
#ifdef KDA_EMULATE
    const int lane = threadIdx.x & 31;
    for (int i = 0; i < 4; i++)
    {
        const uint32_t row = __shfl_sync(0xFFFFFFFFu, addr, 8 * i + lane / 4);
        std::memcpy(&r[i], emu_dynamic_smem + row + 4 * (lane % 4), 4);
    }
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#endif
}

// d += a·b for one m16n8k16 tile. Lane (g = lane / 4, t = lane % 4) holds a = {A[g][2t..], A[g+8][2t..],
// A[g][2t+8..], A[g+8][2t+8..]}, b = {B[2t..][g], B[2t+8..][g]} (pairs of bf16), d = {C[g][2t], C[g][2t+1],
// C[g+8][2t], C[g+8][2t+1]}.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
#ifdef KDA_EMULATE
    const int lane = threadIdx.x & 31, g = lane / 4, t = lane % 4;
    float arow[2][16], bcol[2][16]; // rows g, g + 8 of A; columns 2t, 2t + 1 of B
    for (int q = 0; q < 4; q++)
    {
        // Every lane takes part in every shuffle (the emulator, like the hardware, needs the whole warp).
        const uint32_t a0 = __shfl_sync(0xFFFFFFFFu, a[0], 4 * g + q), a1 = __shfl_sync(0xFFFFFFFFu, a[1], 4 * g + q);
        const uint32_t a2 = __shfl_sync(0xFFFFFFFFu, a[2], 4 * g + q), a3 = __shfl_sync(0xFFFFFFFFu, a[3], 4 * g + q);
        const uint32_t c0b0 = __shfl_sync(0xFFFFFFFFu, b0, 4 * (2 * t) + q), c0b1 = __shfl_sync(0xFFFFFFFFu, b1, 4 * (2 * t) + q);
        const uint32_t c1b0 = __shfl_sync(0xFFFFFFFFu, b0, 4 * (2 * t + 1) + q), c1b1 = __shfl_sync(0xFFFFFFFFu, b1, 4 * (2 * t + 1) + q);
        arow[0][2 * q] = bf16_lo(a0), arow[0][2 * q + 1] = bf16_hi(a0), arow[0][2 * q + 8] = bf16_lo(a2), arow[0][2 * q + 9] = bf16_hi(a2);
        arow[1][2 * q] = bf16_lo(a1), arow[1][2 * q + 1] = bf16_hi(a1), arow[1][2 * q + 8] = bf16_lo(a3), arow[1][2 * q + 9] = bf16_hi(a3);
        bcol[0][2 * q] = bf16_lo(c0b0), bcol[0][2 * q + 1] = bf16_hi(c0b0), bcol[0][2 * q + 8] = bf16_lo(c0b1), bcol[0][2 * q + 9] = bf16_hi(c0b1);
        bcol[1][2 * q] = bf16_lo(c1b0), bcol[1][2 * q + 1] = bf16_hi(c1b0), bcol[1][2 * q + 8] = bf16_lo(c1b1), bcol[1][2 * q + 9] = bf16_hi(c1b1);
    }
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 2; c++)
            for (int k = 0; k < 16; k++) d[2 * r + c] = fmaf(arow[r][k], bcol[c][k], d[2 * r + c]);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Offset (in elements) of chunk `chunk` of row `row` in a swizzled [rows][TILE_K] tile: the 16-byte chunk c of row r
// is stored at position c ^ (r & 7), so the eight row addresses of each ldmatrix phase fall in eight bank groups.
__device__ __forceinline__ int swizzled(int row, int chunk) { return row * TILE_K + ((chunk ^ (row & 7)) << 3); }
