#!/usr/bin/env bash
# Checks kernels/moe.cu without a GPU: compiles moe_harness.cu against the CPU emulator (kernels/kda/tests/cuda_emu.h,
# mma.sync through mma.cuh's emulated path) and runs its checks. Prints one PASS/FAIL line per check and "N failed";
# exit status 1 if any check failed. Arguments go to the harness: --quick (what CI runs, small shapes, ~50 s on the
# 2-core dev machine: each decode case runs at three grid sizes); without it, ~3 minutes (the emulated tensor-core
# tiles are slow).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp)
trap 'rm -f "$bin"' EXIT
g++ -O1 -std=c++17 -DKDA_EMULATE -I "$here/emu" -x c++ -o "$bin" "$here/moe_harness.cu"
"$bin" "$@"
