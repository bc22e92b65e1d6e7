#!/usr/bin/env bash
# Whole-model A/B on one card (docs/gpu.md, "Deciding a change"): the GPU-machine half. Run from the repository root
# there as `bash STAGE/model-ab.sh` after staging with tools/gpu/run-gpu.sh and tools/gpu/stage-base.sh:
#   1. builds the kernels (this checkout's sources) into /tmp/ptx and runs the CUDA test classes TEST_CLASSES against it,
#   2. times the model benchmark alternately for this build (fresh PTX) and for the baseline (STAGE/base.txz: another
#      commit's KimiLinear DLLs with their embedded, committed kernels), ROUNDS times,
#   3. leaves in $OUT: model-{cur,base}-N.md, ptx.tgz and logs.tgz (the device tool returns at most 8 files).
# Environment: TEST_CLASSES (default none), ROUNDS (2), CONTEXTS ("1024 131072"), PREFILLS (the first round's prompt
# lengths, default "1024,32768"; later rounds time decode only), BATCHES (the first round's batched decode sizes,
# default none, e.g. "4,16"), AB_BUDGET (seconds for the benchmark rounds, 300), REUSE_PTX (1: keep /tmp/ptx from an
# earlier A/B of the same call), BASE (the baseline archive, default STAGE/base.txz), MODEL (proxy, or real on an H200).
# Cards differ by several per cent and calls land on different cards: only rows of one call compare.
set -uo pipefail
stage=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out" "$stage/apps" /tmp/dn && tar xJf "$stage/apps.txz" -C "$stage/apps" && tar xf "$stage/dotnet-runtime.txz" -C /tmp/dn
export DOTNET_ROOT=/tmp/dn DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
lt=$(ls /usr/local/cuda/lib64/libcublasLt.so.* 2>/dev/null | head -n 1)
[ -n "$lt" ] && export KIMILINEAR_CUBLASLT=$lt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader

if [ -z "${REUSE_PTX:-}" ] || [ ! -d /tmp/ptx ]; then   # REUSE_PTX=1: a second A/B in the same call keeps the first's build
    rm -rf /tmp/ptx && mkdir -p /tmp/ptx
    sources=$stage/kernels; [ -d "$sources" ] || sources=$stage/../kernels   # a stage's own copy, else the checkout's
    bash "$sources/build.sh" /tmp/ptx > "$out/build.log" 2>&1
    echo "build rc=$?"
fi
tar czf "$out/ptx.tgz" -C /tmp/ptx .
if [ -d "$stage/apps/tests" ] && [ ! -e "$stage/apps/tests/Fixtures" ]; then   # staged with GPU_APPS=bench: no tests
    ln -s "$(cd "$stage/.." && pwd)/KimiLinear.Tests/Fixtures" "$stage/apps/tests/Fixtures"
fi
: > "$out/tests.log"
for class in ${TEST_CLASSES:-}; do
    KIMILINEAR_KERNEL_DIR=/tmp/ptx timeout 150 /tmp/dn/dotnet "$stage/apps/tests/KimiLinear.Tests.dll" -class "KimiLinear.Tests.Cuda.$class" -noColor >> "$out/tests.log" 2>&1
    echo "$class rc=$?"
done
grep -E "\[FAIL\]|Total:" "$out/tests.log"

# The baseline: this build's benchmark folder with the other commit's KimiLinear DLLs over it.
# None with ROUNDS=0 (commit-ab.sh's tests-only use).
if [ "${ROUNDS:-2}" -gt 0 ]; then
    rm -rf /tmp/base-bench /tmp/base-dlls && cp -r "$stage/apps/bench" /tmp/base-bench && mkdir /tmp/base-dlls
    tar xJf "${BASE:-$stage/base.txz}" -C /tmp/base-dlls && cp /tmp/base-dlls/*/*.dll /tmp/base-bench/
fi
start=$(date +%s)
for round in $(seq "${ROUNDS:-2}"); do
    for which in cur base; do
        [ $(( $(date +%s) - start )) -gt "${AB_BUDGET:-300}" ] && break 2
        if [ "$which" = cur ]; then bench=$stage/apps/bench; kernels=/tmp/ptx; else bench=/tmp/base-bench; kernels=; fi
        prefills=""; batches=""; [ "$round" = 1 ] && prefills=${PREFILLS-1024,32768} && batches=${BATCHES-}
        KIMILINEAR_KERNEL_DIR=$kernels KIMI_BENCH_PREFILLS=$prefills KIMI_BENCH_BATCHES=$batches timeout 200 \
            /tmp/dn/dotnet "$bench/KimiLinear.Benchmarks.dll" model "${MODEL:-proxy}" "$out/model-$which-$round.md" ${CONTEXTS:-1024 131072} \
            > "$out/model-$which-$round.log" 2>&1
        echo "== $which, round $round: rc=$?"
        grep -E "^\| (prefill|decode, greedy generation|batched)" "$out/model-$which-$round.md" | cut -c1-120
    done
done
(cd "$out" && tar czf logs.tgz ./*.log && rm -f ./*.log)
