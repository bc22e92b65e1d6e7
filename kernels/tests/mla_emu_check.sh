#!/usr/bin/env bash
# CI check of the MLA kernels without a GPU: compiles mla_harness.cu against the CPU emulator
# (kernels/kda/tests/cuda_emu.h, which emulates mma.sync and ldmatrix too) and runs its checks against a float64
# reference. Prints one PASS/FAIL line per check and "N failed"; exit status 1 if any check failed. Arguments go to the
# harness: --quick (what CI runs, under a minute) leaves out the two longest wgmma decode cases.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp)
trap 'rm -f "$bin"' EXIT
g++ -O1 -std=c++17 -DKDA_EMULATE -Wno-unknown-pragmas -Wno-psabi -x c++ -o "$bin" "$here/mla_harness.cu"
"$bin" "$@"
