#!/usr/bin/env bash
# KDA kernel candidates against this checkout in one GPU call, GPU half (run from the repository root after
# kernels/kda/tests/stage-ab.sh): builds the harness of this checkout ("head") and of each staged candidate in parallel,
# then runs them in turn ROUNDS times with MODE (default --bench-decode; --bench-prefill, --bench), so each round
# compares them on one card. Every run checks the kernels first (the harness's checks; a failure prints FAIL).
#   bash kernels/kda/tests/ab.sh STAGE        ROUNDS (2), MODE (--bench-decode), GREP (the lines printed),
#                                             AB_STEP (build: only build; run: only run what an earlier build left)
set -uo pipefail
stage=$(cd "${1:?usage: ab.sh STAGE}" && pwd)
out=${OUT:-/tmp/gpu-out}; mkdir -p "$out" /tmp/kda-ab
nvidia-smi --query-gpu=name,temperature.gpu,clocks_throttle_reasons.active --format=csv,noheader
build() {   # name, checkout root
    nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -Xcompiler -fopenmp -lgomp \
        -o "/tmp/kda-ab/$1" "$2/kernels/kda/tests/kda_harness.cu" > "/tmp/kda-ab/$1.build.log" 2>&1 || echo "BUILD FAILED: $1"
}
names=(head)
for dir in "$stage"/*/; do [ -d "$dir" ] && names+=("$(basename "$dir")"); done
if [ "${AB_STEP:-}" != run ]; then
    build head . &
    for name in "${names[@]:1}"; do build "$name" "$stage/$name" & done
    wait
fi
[ "${AB_STEP:-}" = build ] && exit 0
for name in "${names[@]}"; do
    echo "$name: $(grep -A2 -E 'kimi_kda_(decode_step|chunk_prefill|chunk_prefill_wide|chunk_intra)_bf16' "/tmp/kda-ab/$name.build.log" | grep -oE '[0-9]+ registers|[1-9][0-9]* bytes spill stores' | tr '\n' ' ')"
done
for round in $(seq "${ROUNDS:-2}"); do
    for name in "${names[@]}"; do
        [ -x "/tmp/kda-ab/$name" ] || continue
        echo "== $name, round $round"
        timeout 150 "/tmp/kda-ab/$name" "${MODE:---bench-decode}" KimiLinear.Tests/Fixtures/kda_ops > "/tmp/kda-ab/$name-$round.log" 2>&1
        grep -E "${GREP:-FAIL|passed|BENCH .*(programmatic|separate states)}" "/tmp/kda-ab/$name-$round.log"
    done
done
tar czf "$out/kda-ab.tgz" -C /tmp/kda-ab $(cd /tmp/kda-ab && ls ./*.log)
