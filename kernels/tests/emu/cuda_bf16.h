// Stand-in for CUDA's <cuda_bf16.h> when the kernels are compiled for the CPU emulator (g++ -I kernels/tests/emu
// -DKDA_EMULATE): common.cuh includes <cuda_bf16.h>, and the emulator provides what the kernels use of it.
#pragma once
#include "../../kda/tests/cuda_emu.h"
