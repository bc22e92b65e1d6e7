// Stand-in for <cuda_bf16.h> when a kernel source is compiled for the CPU emulator (kernels/kda/tests/cuda_emu.h):
// kernels/tests/emu_check.sh puts this folder first on the include path, so kernels/common.cuh and the sources that
// include it compile unchanged with g++. Adds the pieces of the CUDA subset those sources use beyond what kda.cu needs.
#pragma once
#define KDA_EMULATE 1
#include "../../kda/tests/cuda_emu.h"

// Blocks run one at a time in the emulator, so one static array per __shared__ declaration is per-block shared memory
// (holding the previous block's values at entry, as uninitialised shared memory may).
#define __shared__ static

struct uint4 { unsigned x, y, z, w; };
struct float2 { float x, y; };
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return {a, b, c, d}; }
inline uint2 make_uint2(unsigned a, unsigned b) { return {a, b}; }
inline float2 make_float2(float a, float b) { return {a, b}; }
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
inline uint16_t __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
