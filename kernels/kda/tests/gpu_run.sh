#!/bin/bash
# Builds and runs the KDA harness on the lent GPU machine (nvcc there, none here). Usage, from the repo root:
#   bash <dir>/kernels/kda/tests/gpu_run.sh <dir>    where <dir> holds a staged copy of kernels/kda/
# Writes build.log (ptxas resource report) and run.log under $OUT.
set -o pipefail
D=${1:-.}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total --format=csv,noheader
nvcc --version | tail -1
date -u
B=/tmp/kdabuild; rm -rf $B; mkdir -p $B
time nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -Xcompiler -fopenmp -lgomp \
    -o $B/kda_harness "$D/kernels/kda/tests/kda_harness.cu" > "$OUT/build.log" 2>&1
rc=$?
grep -E "error|Function properties|registers|spill|stack frame" "$OUT/build.log" | grep -B1 -A2 "kimi_kda" | head -60
if [ $rc -ne 0 ]; then tail -60 "$OUT/build.log"; exit 1; fi
cuobjdump --dump-sass $B/kda_harness > $B/sass.txt 2>&1 && echo "local-memory instructions in SASS: $(grep -cE "LDL|STL" $B/sass.txt)"
timeout ${RUN_LIMIT:-170} $B/kda_harness --bench KimiLinear.Tests/Fixtures/kda_ops 2>&1 | tee "$OUT/run.log"
