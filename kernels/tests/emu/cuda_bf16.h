// Stand-in for CUDA's <cuda_bf16.h> when kernel sources are compiled for the CPU emulator (g++ -I kernels/tests/emu):
// kernels/common.cuh includes <cuda_bf16.h>, and the emulator (kernels/kda/tests/cuda_emu.h) provides what the kernels
// use of it and of the rest of the CUDA subset. What only this folder's harnesses need is added here.
#pragma once
#ifndef KDA_EMULATE
#define KDA_EMULATE 1
#endif
#include "../../kda/tests/cuda_emu.h"
