#!/usr/bin/env bash
# Checks kernels/activations.cu and the fp32-x GEMV of kernels/gemv.cu without a GPU: compiles activations_harness.cu
# for the CPU emulator (kernels/kda/tests/cuda_emu.h, with the stand-in <cuda_bf16.h> of emu/) and runs it.
# Prints one PASS/FAIL line per check and "N passed, N failed"; exit status 1 if any check failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp)
trap 'rm -f "$bin"' EXIT
g++ -O1 -std=c++17 -I "$here/emu" -x c++ -o "$bin" "$here/activations_harness.cu"
"$bin"
