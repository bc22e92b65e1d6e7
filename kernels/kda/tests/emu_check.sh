#!/usr/bin/env bash
# CI check of the KDA kernels without a GPU: compiles kda_harness.cu against the CPU emulator (cuda_emu.h) and runs
# its correctness checks (golden kda_ops, packed odd-length batches, decode steps, prefill then decode, NaN poison).
# Prints one PASS/FAIL line per check and "N passed, N failed"; exit status 1 if any check failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp)
trap 'rm -f "$bin"' EXIT
g++ -O1 -std=c++17 -fopenmp -DKDA_EMULATE -x c++ -o "$bin" "$here/kda_harness.cu"
"$bin" --quick "$here/../../../KimiLinear.Tests/Fixtures/kda_ops"
