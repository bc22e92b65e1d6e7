#!/usr/bin/env bash
# CI check of the KDA kernels without a GPU: compiles kda_harness.cu against the CPU emulator (cuda_emu.h) and runs
# its correctness checks (golden kda_ops, packed odd-length batches, decode steps, prefill then decode, NaN poison),
# twice: with the bf16 scans of the sm_90a image (the 32-column one on wgmma, then the bf16 prefill checks again on
# the wide scan) and with that of the compute_90 image (mma.sync, -DKDA_SCAN_MMA_SYNC). Prints one PASS/FAIL line per check and "N passed, N failed" per build; exit status 1 if any
# check failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp)
trap 'rm -f "$bin"' EXIT
for scan in wgmma mma.sync; do
    echo "== the bf16 scan on $scan"
    flags=(); [ "$scan" = mma.sync ] && flags=(-DKDA_SCAN_MMA_SYNC)
    g++ -O1 -std=c++17 -fopenmp -DKDA_EMULATE "${flags[@]}" -x c++ -o "$bin" "$here/kda_harness.cu"
    "$bin" --quick "$here/../../../KimiLinear.Tests/Fixtures/kda_ops"
done
