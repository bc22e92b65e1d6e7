#!/usr/bin/env bash
# Builds and runs gemv_sweep.cu on the GPU machine. Usage, from the repository root there:
#   bash <dir>/kernels/tests/gemv_sweep.sh     where <dir>/kernels is a copy of kernels/ (the harness includes ../gemv.cu)
# Writes sweep-build.log (ptxas report) and sweep.log under $OUT.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-/tmp/out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
nvcc -O3 -std=c++17 -arch=sm_90 -Xptxas -v -o /tmp/gemv_sweep "$here/gemv_sweep.cu" > "$out/sweep-build.log" 2>&1 || { tail -40 "$out/sweep-build.log"; exit 1; }
echo "spills: $(grep -c 'bytes spill' "$out/sweep-build.log") reports, $(grep -E '[1-9][0-9]* bytes spill' "$out/sweep-build.log" | wc -l) nonzero"
timeout "${SWEEP_LIMIT:-240}" /tmp/gemv_sweep 2>&1 | tee "$out/sweep.log"
